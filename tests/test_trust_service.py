"""Issue 13, "a proper service": the notify protocol without systemd (a unix datagram socket as
$NOTIFY_SOCKET), the shipped unit and sysconfig, --log FILE that logrotate can move (reopened on
replacement and on SIGUSR1), --log syslog to a socket (no file named ./syslog), --runas, and
--dry-run contacting no monitor."""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from autopyfactory.cli import main
from autopyfactory.service import Notifier, watchdog_interval
from tests.fakeapfmon import FakeApfmon
from tests.helpers import wait_for, write
from tests.trustkit import APF, QUEUES, apf, config_tree, no_traceback


class NotifyListener:
    """What systemd does: a unix datagram socket whose path is given as $NOTIFY_SOCKET."""

    def __init__(self, directory: Path) -> None:
        self.path = str(directory / "notify.sock")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.settimeout(0.2)
        self.messages: list[str] = []

    def drain(self, until: float) -> None:
        while time.monotonic() < until:
            try:
                self.messages.append(self.sock.recv(4096).decode())
            except TimeoutError:
                return

    def wait_for(self, field: str, timeout: float = 30) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for message in self.messages:
                if field in message.split("\n"):
                    return message
            self.drain(time.monotonic() + 0.2)
        raise AssertionError(f"no {field} in {self.messages}")

    def close(self) -> None:
        self.sock.close()


def test_notifier_speaks_the_protocol(tmp_path: Path) -> None:
    listener = NotifyListener(tmp_path)
    try:
        notifier = Notifier(listener.path)
        assert notifier.ready("2 queues") and notifier.watchdog() and notifier.stopping()
        listener.drain(time.monotonic() + 1)
        assert listener.messages[0].split("\n")[:2] == ["READY=1", "STATUS=2 queues"]
        assert f"MAINPID={os.getpid()}" in listener.messages[0]
        assert listener.messages[1] == "WATCHDOG=1"
        assert listener.messages[2].startswith("STOPPING=1")
    finally:
        listener.close()
    assert not Notifier("").ready()  # not under systemd: nothing, no error
    assert not Notifier(str(tmp_path / "gone.sock")).ready()  # systemd went away: no error
    assert watchdog_interval({"WATCHDOG_USEC": "10000000"}) == 5.0
    assert watchdog_interval({"WATCHDOG_USEC": "10000000", "WATCHDOG_PID": "1"}) is None  # not ours
    assert watchdog_interval({}) is None


def test_the_daemon_notifies_ready_watchdog_and_stopping(tmp: Path) -> None:
    listener = NotifyListener(tmp)
    conf = config_tree(tmp)
    env = dict(os.environ, NOTIFY_SOCKET=listener.path, WATCHDOG_USEC="1000000")
    proc = subprocess.Popen(
        [APF, "run", "--conf", str(conf), "--no-table"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        ready = listener.wait_for("READY=1")
        assert "STATUS=1 queue(s)" in ready and f"MAINPID={proc.pid}" in ready
        listener.wait_for("WATCHDOG=1", timeout=10)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        listener.wait_for("STOPPING=1", timeout=5)
    finally:
        if proc.poll() is None:
            proc.kill()
        listener.close()


def test_log_file_is_reopened_after_rotation_and_on_sigusr1(tmp: Path) -> None:
    conf = config_tree(tmp, factory_extra="factory.sleep = 1\n")
    log = tmp / "logs" / "apf.log"
    log.parent.mkdir()
    proc = subprocess.Popen(
        [APF, "run", "--conf", str(conf), "--no-table", "--log", str(log), "--debug"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        wait_for(lambda: log.exists() and "starting with" in log.read_text(), 30, "the first log lines")
        os.rename(log, tmp / "logs" / "apf.log.1")  # what logrotate does
        wait_for(lambda: log.exists() and log.stat().st_size > 0, 30, "a new log file after the move")
        os.rename(log, tmp / "logs" / "apf.log.2")
        Path(log).write_text("")  # logrotate's create: an empty file in place already
        size = log.stat().st_size
        proc.send_signal(signal.SIGUSR1)
        wait_for(lambda: log.stat().st_size > size, 30, "lines in the recreated file")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        assert "stopped" in log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()


def test_log_syslog_goes_to_the_socket_not_a_file(tmp: Path) -> None:
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = str(tmp / "log.sock")
    receiver.bind(path)
    receiver.settimeout(30)
    conf = config_tree(tmp)
    try:
        result = apf(
            "run",
            "--conf",
            str(conf),
            "--once",
            "--no-table",
            "--log",
            f"syslog:{path}",
            "--info",
            cwd=str(tmp),
        )
        assert result.returncode == 0, result.stderr
        message = receiver.recv(65536).decode()
        assert "autopyfactory: " in message and "<" in message[:5]  # a syslog priority
        assert not (tmp / "syslog").exists()  # AutoPyFactory wrote a file named ./syslog
    finally:
        receiver.close()
    result = apf("run", "--conf", str(conf), "--once", "--log", f"syslog:{tmp / 'nothing-here.sock'}")
    no_traceback(result.stdout, result.stderr)
    assert result.returncode == 2 and "cannot reach syslog" in result.stderr
    result = apf("run", "--conf", str(conf), "--once", "--log", str(tmp / "missing-dir" / "apf.log"))
    assert result.returncode == 2 and "does not exist" in result.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="only root can drop privileges (the CI runs as root)")
def test_runas_drops_privileges_before_anything_is_written() -> None:
    base = Path(tempfile.mkdtemp(prefix="apf-runas-", dir="/tmp"))
    try:
        base.chmod(0o777)
        conf = config_tree(base)
        log = base / "apf.log"
        result = apf(
            "run",
            "--conf",
            str(conf),
            "--once",
            "--no-table",
            "--runas",
            "nobody",
            "--log",
            str(log),
            cwd=str(base),
        )
        no_traceback(result.stdout, result.stderr)
        assert result.returncode == 0, result.stderr
        nobody = pwd.getpwnam("nobody").pw_uid
        assert (base / "state" / "apf.db").stat().st_uid == nobody
        assert log.stat().st_uid == nobody  # the log file was given to the user first
        result = apf("run", "--conf", str(conf), "--once", "--runas", "no-such-user-here")
        assert result.returncode == 2 and "no such user" in result.stderr
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_shipped_unit_and_install_service(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "etc").mkdir()
    assert main(["install-service", "--root", str(tmp_path), "--user", "root", "--apf", "/usr/bin/apf"]) == 0
    capsys.readouterr()
    unit = tmp_path / "etc/systemd/system/autopyfactory.service"
    text = unit.read_text()
    assert "Type=notify" in text and "WatchdogSec=" in text and "ExecReload=/bin/kill -HUP $MAINPID" in text
    assert "exec /usr/bin/apf run --conf" in text and "User=root" in text
    assert (tmp_path / "etc/default/autopyfactory").read_text().count("OPTIONS=") == 1
    assert "postrotate" in (tmp_path / "etc/logrotate.d/autopyfactory").read_text()
    # systemd's own parser accepts it (systemd-analyze works without a running systemd)
    check = subprocess.run(
        ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60
    )
    assert check.returncode == 0, check.stdout + check.stderr
    # an existing sysconfig is kept; the unit only with --force
    write(tmp_path / "etc/default/autopyfactory", "OPTIONS=--debug\n")
    assert main(["install-service", "--root", str(tmp_path), "--user", "root"]) == 0
    assert "kept" in capsys.readouterr().out
    assert (tmp_path / "etc/default/autopyfactory").read_text() == "OPTIONS=--debug\n"


def test_dry_run_contacts_no_monitor(tmp: Path) -> None:
    apfmon = FakeApfmon().start()
    try:
        write(tmp / "monitor.conf", f"[mon]\nmonitorplugin = APF\nmonitorURL = {apfmon.url}\n")
        conf = config_tree(
            tmp,
            QUEUES + "monitorsection = mon\n",
            factory_extra="monitorConf = monitor.conf\nfactory.sleep = 1\n",
        )
        result = apf("run", "--conf", str(conf), "--once", "--dry-run", "--no-table")
        assert result.returncode == 0, result.stderr
        proc = subprocess.Popen(
            [APF, "run", "--conf", str(conf), "--dry-run", "--no-table"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            # the daemon has decided (and would have reported to the monitor) at least once
            wait_for(
                lambda: (tmp / "state" / "status-trust-dry-run.json").exists(), 30, "a dry-run decision pass"
            )
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=30) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
        assert apfmon.summary() == [], apfmon.summary()
        # the same without --dry-run does talk to the monitor (the fake works)
        assert apf("run", "--conf", str(conf), "--once", "--no-table").returncode == 0
        assert apfmon.wait_for(lambda fake: len(fake.calls) > 0, timeout=30)
    finally:
        apfmon.stop()
