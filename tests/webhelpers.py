"""A real ``apf run`` daemon for the web tests, and small HTTP helpers (stdlib only)."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from textwrap import dedent
from typing import Any

from tests.helpers import write

APF = str(Path(sys.executable).parent / "apf")
EVIL = "<script>alert(1)</script>"

POLICY = """
cascades:
  - name: burst
    demand: BURST
    tiers:
      - {queue: TA, cap: 3, spill_on: [capped, full, backoff]}
      - {queue: TB, cap: 5, quotas: [{per: month, pilots: 40}], spill_on: [quota, backoff], cost_per_hour: 0.1}
      - {queue: TC, cost_per_hour: 0.5}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def web_queues(tmp: Path, *, local_demand: int = 2, extra: str = "") -> str:
    pilot = write(
        tmp / "pilot.sh",
        """
        #!/bin/sh
        echo "hello from pilot $APFCID of $FACTORYQUEUE"
        sleep "${1:-60}"
        """,
    )
    pilot.chmod(0o755)
    return f"""
    [DEFAULT]
    enabled = True
    apfqueue.sleep = 1
    wmsstatusplugin = Sim
    # pilots take jobs: activated = level - running pilots (no pilots pile up)
    wmsstatus.sim.consume = True
    batchstatusplugin = Local
    batchsubmitplugin = Local
    executable = {pilot}
    executable.arguments = 120
    schedplugin = Ready, MaxPerCycle
    sched.maxpercycle.maximum = 5

    [LOCALQ]
    wmsqueue = LOCALQ
    wmsstatus.sim.activated = {local_demand}

    [{EVIL}]
    wmsqueue = EVILQ
    wmsstatus.sim.activated = 1

    [BROKEN]
    wmsqueue = BROKEN
    wmsstatus.sim.activated = 1
    executable = None

    [TA]
    wmsqueue = BURST
    wmsstatus.sim.activated = 10
    batchstatusplugin = Sim
    batchsubmitplugin = Sim
    batchsubmit.sim.capacity = 3
    batchsubmit.sim.runtime = 1h

    [TB]
    wmsqueue = BURST
    batchstatusplugin = Sim
    batchsubmitplugin = Sim
    batchsubmit.sim.capacity = 100
    batchsubmit.sim.runtime = 1h

    [TC]
    wmsqueue = BURST
    batchstatusplugin = Sim
    batchsubmitplugin = Sim
    batchsubmit.sim.capacity = 100
    batchsubmit.sim.runtime = 1h
    {extra}
    """


@dataclass
class Daemon:
    proc: subprocess.Popen[str]
    conf: Path
    log: Path
    url: str
    logserver: str | None

    def stop(self, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
                raise AssertionError(f"daemon did not stop on SIGTERM within {timeout}s") from None
        return self.proc.returncode

    def reload(self) -> None:
        self.proc.send_signal(signal.SIGHUP)


def write_config(
    tmp: Path, queues: str, factory_extra: str = "", *, logserver_port: int | None = None
) -> Path:
    write(tmp / "queues.conf", queues)
    write(tmp / "policy.yaml", POLICY)
    write(
        tmp / "auth.conf",
        """
        [mytoken]
        plugin = Token
        token.token = SuperSecretValue-do-not-show-42
        """,
    )
    port = logserver_port if logserver_port is not None else free_port()
    base = dedent(
        f"""
        [Factory]
        factoryId = web-test
        queueConf = queues.conf
        authConf = auth.conf
        policyConf = policy.yaml
        factory.statedir = state
        wmsstatus.sim.sleep = 1
        batchstatus.local.sleep = 0.5
        batchstatus.sim.sleep = 1
        web.address = 127.0.0.1:0
        web.refresh = 1
        baseLogDir = logs
        baseLogDirUrl = http://127.0.0.1:{port}
        logserver.enabled = True
        """
    ).lstrip()
    return write(tmp / "autopyfactory.conf", base + dedent(factory_extra).lstrip())


def start_daemon(conf: Path, *, timeout: float = 60, logserver: bool = True) -> Daemon:
    log = conf.parent / "apf.log"
    proc = subprocess.Popen(
        [APF, "run", "--conf", str(conf), "--no-table", "--log", str(log), "-v"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    deadline = time.monotonic() + timeout
    url = logs = None
    while time.monotonic() < deadline:
        text = log.read_text() if log.exists() else ""
        found = re.search(r"web dashboard at (\S+)", text)
        url = found.group(1) if found else None
        found = re.search(r"pilot log server: .* on ([\d.]+):(\d+)", text)
        logs = f"http://{found.group(1)}:{found.group(2)}" if found else None
        if url and (logs or not logserver):
            return Daemon(proc, conf, log, url, logs)
        if proc.poll() is not None:
            break
        time.sleep(0.1)
    out = proc.stdout.read() if proc.poll() is not None and proc.stdout else ""
    proc.kill()
    text = log.read_text() if log.exists() else ""
    raise AssertionError(f"the daemon's web server did not come up:\n{out}\n--- log ---\n{text[-4000:]}")


def get(
    url: str, *, headers: dict[str, str] | None = None, timeout: float = 30
) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def get_json(url: str, **kw: Any) -> Any:
    status, _, body = get(url, **kw)
    assert status == 200, (url, status, body[:500])
    return json.loads(body)


def raw_get(host: str, port: int, target: str, timeout: float = 10) -> tuple[int, bytes]:
    """An HTTP/1.1 GET with the request target sent byte for byte (clients normalise '../')."""
    with socket.create_connection((host, port), timeout=timeout) as s:
        s.sendall(f"GET {target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    status = int(data.split(b" ", 2)[1])
    return status, data.partition(b"\r\n\r\n")[2]


def kill_local_pilots(base: Path) -> None:
    """Every Local pilot a test daemon started under ``base`` (they outlive the daemon)."""
    for pid_file in (base / "state" / "local").glob("*/*/*/pid"):
        try:
            os.killpg(int(pid_file.read_text()), signal.SIGKILL)
        except (ProcessLookupError, ValueError, PermissionError):
            pass
