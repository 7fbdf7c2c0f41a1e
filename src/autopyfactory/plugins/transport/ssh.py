"""Run commands on a remote head node over SSH (asyncssh), with a key from an auth.conf profile.

* One connection per target, reused by every call (and every queue) and reopened when lost.
* Host keys are always checked against the profile's known_hosts file: a host whose key is not
  in it, or differs, is refused. There is deliberately no way to turn this off.
* asyncssh runs on one private event-loop thread shared by all SSH transports; callers block
  on their own threads, so the rest of the factory stays synchronous.
* A target that cannot be reached backs off (exponential, capped) and says so in ``state()``.
* Messages name the target and the profile, never the key material or its passphrase.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import shlex
import socket
import threading
from collections.abc import Sequence
from concurrent.futures import TimeoutError as FutureTimeout
from pathlib import Path
from typing import TYPE_CHECKING, Any

from autopyfactory.plugins.base import BackendError
from autopyfactory.plugins.transport.base import DEFAULT_TIMEOUT, Backoff, Result, Transport

if TYPE_CHECKING:
    from autopyfactory.plugins.auth.ssh import SSHOptions

log = logging.getLogger(__name__)


class _LoopThread:
    """The event loop every SSH transport of the process uses."""

    _lock = threading.Lock()
    _loop: asyncio.AbstractEventLoop | None = None

    @classmethod
    def loop(cls) -> asyncio.AbstractEventLoop:
        with cls._lock:
            if cls._loop is None or cls._loop.is_closed():
                loop = asyncio.new_event_loop()
                thread = threading.Thread(target=loop.run_forever, name="apf-ssh-loop", daemon=True)
                thread.start()
                cls._loop = loop
            return cls._loop


class _Unreachable(Exception):
    """Connecting failed; the message is safe to show."""


class SSHTransport(Transport):
    def __init__(
        self,
        host: str,
        *,
        port: int = 22,
        user: str | None = None,
        profile: str,
        options: SSHOptions,
        connect_timeout: float = 15.0,
        max_channels: int = 8,
        backoff: Backoff | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.user = user
        self.profile = profile
        self.options = options
        self.connect_timeout = connect_timeout
        self.max_channels = max_channels
        self.backoff = backoff or Backoff()
        self.name = f"{user + '@' if user else ''}{host}:{port}"
        self._conn: Any = None
        self._lost = True
        self._conn_lock: asyncio.Lock | None = None
        self._channels: asyncio.Semaphore | None = None
        self._loop = _LoopThread.loop()
        self.connects = 0  # how many connections were opened (tests check reuse)

    # -- public API ----------------------------------------------------------------------------

    def run(
        self, argv: Sequence[str], input: bytes | None = None, timeout: float = DEFAULT_TIMEOUT
    ) -> Result:
        argv = list(argv)
        if not argv:
            raise ValueError("empty argv")
        blocked = self.backoff.blocked()
        if blocked:
            raise BackendError(self.name, blocked)
        command = shlex.join(argv)
        future = asyncio.run_coroutine_threadsafe(self._run(command, input, timeout), self._loop)
        try:
            # the coroutine enforces both timeouts itself; this is a safety net
            return future.result(timeout + self.connect_timeout + 10)
        except FutureTimeout:
            future.cancel()
            raise BackendError(self.name, f"{argv[0]} timed out after {timeout:g} s") from None

    def state(self) -> str:
        return self.backoff.state()

    def close(self) -> None:
        if self._loop.is_closed():
            return
        future = asyncio.run_coroutine_threadsafe(self._close(), self._loop)
        try:
            future.result(10)
        except Exception:  # closing is best effort
            pass

    # -- inside the loop -----------------------------------------------------------------------

    async def _close(self) -> None:
        conn, self._conn = self._conn, None
        self._lost = True
        if conn is not None:
            conn.close()
            try:
                await asyncio.wait_for(conn.wait_closed(), 5)
            except Exception:
                pass

    async def _connection(self) -> Any:
        if self._conn_lock is None:
            self._conn_lock = asyncio.Lock()
            self._channels = asyncio.Semaphore(self.max_channels)
        async with self._conn_lock:
            if self._conn is not None and not self._lost:
                return self._conn
            if self._conn is not None:
                self._conn.close()
                self._conn = None
            blocked = self.backoff.blocked()
            if blocked:
                raise _Unreachable(blocked)
            try:
                self._conn = await self._connect()
            except _Unreachable as exc:
                self.backoff.failure(str(exc))
                raise
            self._lost = False
            self.connects += 1
            self.backoff.success()
            return self._conn

    async def _run(self, command: str, input: bytes | None, timeout: float) -> Result:
        import asyncssh

        for attempt in (1, 2):
            try:
                conn = await self._connection()
            except _Unreachable as exc:
                raise BackendError(self.name, str(exc)) from None
            assert self._channels is not None
            async with self._channels:
                try:
                    proc = await conn.run(command, input=input, check=False, timeout=timeout, encoding=None)
                except asyncssh.ChannelOpenError as exc:
                    # the command never started, so trying once more on a new connection is safe
                    self._lost = True
                    if attempt == 1:
                        continue
                    raise BackendError(self.name, f"cannot open a session: {exc.reason}") from None
                except asyncssh.TimeoutError:
                    raise BackendError(
                        self.name, f"{command.split(' ', 1)[0]} timed out after {timeout:g} s"
                    ) from None
                except (asyncssh.ConnectionLost, asyncssh.DisconnectError, OSError) as exc:
                    # the command may have run: do not repeat it (sbatch must never run twice)
                    self._lost = True
                    raise BackendError(self.name, f"connection lost while running a command: {exc}") from None
            rc = proc.returncode if proc.returncode is not None else -1
            return Result(rc, _text(proc.stdout), _text(proc.stderr))
        raise BackendError(self.name, "cannot open a session")  # not reached

    def _load_key(self) -> Any:
        """The profile's private key as an asyncssh key object (errors name the file, not its content)."""
        import asyncssh

        opts = self.options
        passphrase: str | None = None
        where = f"(profile {self.profile})"
        if opts.privkeypass is not None:
            passphrase = opts.privkeypass.get_secret_value()
        elif opts.privkeypassfile:
            path = Path(opts.privkeypassfile).expanduser()
            try:
                passphrase = path.read_text().rstrip("\r\n")
            except OSError as exc:
                raise _Unreachable(f"passphrase file {path} {where} cannot be read: {exc.strerror}") from None
        if opts.privatekey is not None:
            data = opts.privatekey.get_secret_value().strip()
            try:
                raw = (
                    data.encode() if data.startswith("-----BEGIN") else base64.b64decode(data, validate=True)
                )
                return asyncssh.import_private_key(raw, passphrase)
            except Exception:
                raise _Unreachable(
                    f"the inline ssh.privatekey {where} is not a valid private key, or its passphrase is wrong"
                ) from None
        if not opts.privatekeyfile:
            raise _Unreachable(f"profile {self.profile} has neither ssh.privatekeyfile nor ssh.privatekey")
        path = Path(opts.privatekeyfile).expanduser()
        try:
            data_bytes = path.read_bytes()
        except OSError as exc:
            raise _Unreachable(f"private key file {path} {where} cannot be read: {exc.strerror}") from None
        try:
            return asyncssh.import_private_key(data_bytes, passphrase)
        except (asyncssh.KeyImportError, asyncssh.KeyEncryptionError) as exc:
            reason = _key_error(str(exc), passphrase is not None)
            raise _Unreachable(f"private key file {path} {where} {reason}") from None
        except Exception:
            raise _Unreachable(f"private key file {path} {where} is not a valid private key") from None

    def _known_hosts(self) -> Path:
        from autopyfactory.plugins.auth.ssh import SSH

        path = SSH.known_hosts(self.options)
        try:
            path.read_bytes()
        except OSError as exc:
            raise _Unreachable(
                f"known_hosts file {path} (profile {self.profile}) cannot be read: {exc.strerror}; "
                "host keys are always checked"
            ) from None
        return path

    async def _connect(self) -> Any:
        import asyncssh

        key = self._load_key()
        known_hosts = self._known_hosts()
        where = f"(profile {self.profile})"
        transport = self

        class _Client(asyncssh.SSHClient):
            def connection_lost(self, exc: Exception | None) -> None:
                transport._lost = True

        try:
            return await asyncio.wait_for(
                asyncssh.connect(
                    self.host,
                    port=self.port,
                    username=self.user,
                    client_keys=[key],
                    known_hosts=str(known_hosts),
                    client_factory=_Client,
                    agent_path=None,
                    config=None,
                    preferred_auth="publickey",
                    connect_timeout=self.connect_timeout,
                    keepalive_interval=30,
                ),
                self.connect_timeout + 1,
            )
        except asyncssh.HostKeyNotVerifiable:
            raise _Unreachable(self._host_key_message(known_hosts)) from None
        except asyncssh.PermissionDenied:
            raise _Unreachable(
                f"authentication as {self.user or '(default user)'} failed with the key of profile "
                f"{self.profile} (permission denied)"
            ) from None
        except ConnectionRefusedError:
            raise _Unreachable(f"connection to {self.host}:{self.port} refused {where}") from None
        except socket.gaierror as exc:
            raise _Unreachable(f"cannot resolve host {self.host!r} {where}: {exc.strerror}") from None
        except TimeoutError:
            raise _Unreachable(
                f"connecting to {self.host}:{self.port} timed out after {self.connect_timeout:g} s {where}"
            ) from None
        except asyncssh.DisconnectError as exc:
            raise _Unreachable(
                f"{self.host}:{self.port} closed the connection {where}: {exc.reason}"
            ) from None
        except OSError as exc:
            raise _Unreachable(
                f"cannot connect to {self.host}:{self.port} {where}: {exc.strerror or exc}"
            ) from None

    def _host_key_message(self, known_hosts: Path) -> str:
        import asyncssh

        target = f"{self.host}:{self.port}"
        try:
            addr = socket.gethostbyname(self.host)
        except OSError:
            addr = ""
        try:
            trusted = asyncssh.read_known_hosts(str(known_hosts)).match(self.host, addr, self.port)[0]
        except Exception:
            trusted = []
        if trusted:
            return f"host key for {target} does not match known_hosts {known_hosts} (profile {self.profile})"
        return f"host key for {target} is not in known_hosts {known_hosts} (profile {self.profile})"


def _text(data: Any) -> str:
    if data is None:
        return ""
    if isinstance(data, bytes):
        return data.decode("utf-8", "replace")
    return str(data)


def _key_error(text: str, had_passphrase: bool) -> str:
    lowered = text.lower()
    if "bcrypt" in lowered:
        return "is an encrypted OpenSSH key, which needs the bcrypt package (pip install bcrypt)"
    if "passphrase" in lowered and not had_passphrase:
        return "is encrypted and the profile gives no passphrase (ssh.privkeypass or ssh.privkeypassfile)"
    if "passphrase" in lowered or "decrypt" in lowered:
        return "could not be decrypted: the passphrase is wrong"
    return "is not a valid private key"
