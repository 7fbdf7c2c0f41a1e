"""Running as a system service: systemd's notify protocol, log targets, dropping privileges.

- ``Notifier``: sd_notify without a dependency. The protocol is one datagram per message to the
  unix socket named by ``$NOTIFY_SOCKET`` (a path, or ``@name`` for the abstract namespace):
  ``READY=1`` once the factory runs, ``STOPPING=1`` when it stops, ``WATCHDOG=1`` every half
  ``$WATCHDOG_USEC`` while the factory's loop is alive, ``STATUS=...`` in between.
- ``log_handler``: stderr (the journal under systemd), ``stdout``, ``syslog`` (``/dev/log``, or
  ``syslog:/path/to/socket``, or ``syslog:host:port`` over UDP), or a file that logrotate may
  move away: the file is reopened when it is replaced (a WatchedFileHandler) and on SIGUSR1.
- ``drop_privileges``: ``--runas USER`` when started as root (AutoPyFactory's option).
"""

from __future__ import annotations

import logging
import logging.handlers
import os
import pwd
import socket
import sys
import threading
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger("autopyfactory.service")


class Notifier:
    """Sends sd_notify messages when ``$NOTIFY_SOCKET`` is set; does nothing otherwise."""

    def __init__(self, socket_path: str | None = None) -> None:
        self.address = socket_path if socket_path is not None else os.environ.get("NOTIFY_SOCKET")
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return bool(self.address)

    def send(self, *fields: str) -> bool:
        """Send ``KEY=value`` fields as one datagram. Never raises: a service manager that went
        away must not stop the factory."""
        if not self.address:
            return False
        address = self.address
        if address.startswith("@"):
            address = "\0" + address[1:]  # the abstract namespace
        payload = "\n".join(fields).encode()
        try:
            with self._lock, socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                sock.settimeout(1.0)
                sock.connect(address)
                sock.sendall(payload)
            return True
        except OSError as exc:
            log.debug("sd_notify to %s failed: %s", self.address, exc)
            return False

    def ready(self, status: str = "") -> bool:
        return self.send("READY=1", *([f"STATUS={status}"] if status else []), f"MAINPID={os.getpid()}")

    def stopping(self, status: str = "stopping") -> bool:
        return self.send("STOPPING=1", f"STATUS={status}")

    def status(self, text: str) -> bool:
        return self.send(f"STATUS={text}")

    def watchdog(self) -> bool:
        return self.send("WATCHDOG=1")


def watchdog_interval(environ: dict[str, str] | None = None) -> float | None:
    """Seconds between watchdog pings (half of ``$WATCHDOG_USEC``), or None when no watchdog is
    asked for this process (``$WATCHDOG_PID``, when set, must be ours)."""
    env = os.environ if environ is None else environ
    usec = env.get("WATCHDOG_USEC")
    pid = env.get("WATCHDOG_PID")
    if not usec:
        return None
    if pid and pid.isdigit() and int(pid) != os.getpid():
        return None
    try:
        value = int(usec)
    except ValueError:
        return None
    return value / 2e6 if value > 0 else None


class Watchdog(threading.Thread):
    """Pings the watchdog while ``alive()`` says the factory still makes progress."""

    def __init__(self, notifier: Notifier, interval: float, alive: Callable[[], bool]) -> None:
        super().__init__(name="apf-watchdog", daemon=True)
        self.notifier = notifier
        self.interval = interval
        self.alive = alive
        self._stop = threading.Event()

    def run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                healthy = self.alive()
            except Exception:
                healthy = False
            if healthy:
                self.notifier.watchdog()
            else:
                log.warning("watchdog: the factory loop makes no progress; not pinging systemd")

    def stop(self) -> None:
        self._stop.set()


# -- logging ------------------------------------------------------------------------------------


class LogTargetError(Exception):
    pass


class ReopenableFileHandler(logging.handlers.WatchedFileHandler):
    """Reopens the file when it is moved or deleted (logrotate), and on demand (SIGUSR1)."""

    def reopen(self) -> None:
        self.acquire()
        try:
            if self.stream is not None:
                self.stream.flush()
                self.stream.close()
                self.stream = None  # type: ignore[assignment]
            self.stream = self._open()
            self._statstream()
        finally:
            self.release()


def log_handler(target: str) -> logging.Handler:
    """The handler for ``--log TARGET``; ``LogTargetError`` with a clear message if unusable."""
    if target in ("stderr", "stdout"):
        return logging.StreamHandler(sys.stdout if target == "stdout" else sys.stderr)
    if target == "syslog" or target.startswith("syslog:"):
        return _syslog_handler(target)
    path = Path(target).expanduser()
    if path.is_dir():
        raise LogTargetError(f"--log {target}: is a directory; give a file path")
    if not path.parent.is_dir():
        raise LogTargetError(f"--log {target}: the directory {path.parent} does not exist")
    try:
        return ReopenableFileHandler(path, encoding="utf-8")
    except OSError as exc:
        raise LogTargetError(f"--log {target}: cannot open: {exc.strerror or exc}") from None


class SyslogHandler(logging.handlers.SysLogHandler):
    """A syslog handler that reports a lost syslog once on stderr instead of a traceback per line."""

    _complained = False

    def handleError(self, record: logging.LogRecord) -> None:
        if not self._complained:
            self._complained = True
            sys.stderr.write(f"autopyfactory: cannot write to syslog at {self.address}; log lines are lost\n")


def _syslog_handler(target: str) -> logging.Handler:
    rest = target.partition(":")[2]
    address: str | tuple[str, int]
    if not rest:
        address = "/dev/log"
    elif rest.startswith("/"):
        address = rest
    else:
        host, _, port = rest.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise LogTargetError(
                f"--log {target}: expected syslog, syslog:/path/to/socket or syslog:host:port"
            )
        address = (host, int(port))
    where = address if isinstance(address, str) else f"{address[0]}:{address[1]}"
    if isinstance(address, str):
        # the handler would connect lazily and then print a traceback per line: check now
        for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
            with socket.socket(socket.AF_UNIX, kind) as probe:
                try:
                    probe.connect(address)
                    break
                except OSError as exc:
                    error = exc
        else:
            raise LogTargetError(
                f"--log {target}: cannot reach syslog at {where}: {error.strerror or error} "
                "(under systemd, stderr already goes to the journal)"
            ) from None
    try:
        handler = SyslogHandler(address=address, facility=logging.handlers.SysLogHandler.LOG_DAEMON)
    except OSError as exc:
        raise LogTargetError(
            f"--log {target}: cannot reach syslog at {where}: {exc.strerror or exc}"
        ) from None
    handler.ident = "autopyfactory: "
    return handler


# -- privileges -------------------------------------------------------------------------------


class PrivilegeError(Exception):
    pass


def drop_privileges(user: str, *, chown: list[Path] | None = None) -> pwd.struct_passwd:
    """Become ``user`` (name or uid) when running as root: groups, gid, uid, HOME, USER.

    Files in ``chown`` (the log file) are given to the user first, as AutoPyFactory did.
    Not root: allowed only if we already are that user."""
    try:
        entry = pwd.getpwuid(int(user)) if user.isdigit() else pwd.getpwnam(user)
    except KeyError:
        raise PrivilegeError(f"--runas {user}: no such user") from None
    if os.geteuid() != 0:
        if os.geteuid() == entry.pw_uid:
            return entry
        raise PrivilegeError(f"--runas {user}: only root can change user (running as uid {os.geteuid()})")
    for path in chown or []:
        try:
            os.chown(path, entry.pw_uid, entry.pw_gid)
        except OSError as exc:
            raise PrivilegeError(f"--runas {user}: cannot give {path} to {user}: {exc.strerror}") from None
    try:
        os.initgroups(entry.pw_name, entry.pw_gid)
        os.setgid(entry.pw_gid)
        os.setuid(entry.pw_uid)
    except OSError as exc:
        raise PrivilegeError(f"--runas {user}: cannot switch user: {exc.strerror}") from None
    os.environ["HOME"] = entry.pw_dir
    os.environ["USER"] = os.environ["LOGNAME"] = entry.pw_name
    return entry


# -- shipped service files ----------------------------------------------------------------------


def data_file(name: str) -> str:
    """A file shipped in the package's ``data`` directory (the unit, the sysconfig example)."""
    from importlib.resources import files

    return files("autopyfactory").joinpath("data", name).read_text(encoding="utf-8")
