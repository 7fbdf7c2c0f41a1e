"""Shared pieces of the operator-trust tests (issue 13): a minimal valid configuration, running
``apf`` in a subprocess, and a raw HTTP server that can answer anything (garbage status lines,
UTF-16 bodies, conditional GETs, or nothing at all)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path

from tests.helpers import write

APF = str(Path(sys.executable).parent / "apf")

QUEUES = """
[DEFAULT]
enabled = True
apfqueue.sleep = 0.5
wmsstatusplugin = Sim
batchstatusplugin = Local
batchsubmitplugin = Local
executable = /bin/true
schedplugin = Ready, MaxPerCycle
sched.maxpercycle.maximum = 5

[Q1]
wmsqueue = Q1
wmsstatus.sim.activated = 0
"""

FACTORY = """
[Factory]
factoryId = trust
queueConf = queues.conf
factory.statedir = state
metrics.address = None
wmsstatus.sim.sleep = 0.5
batchstatus.local.sleep = 0.5
"""


def config_tree(tmp: Path, queues: str = QUEUES, factory_extra: str = "", factory: str = FACTORY) -> Path:
    """autopyfactory.conf + queues.conf under ``tmp``; returns the factory conf."""
    write(tmp / "queues.conf", queues)
    return write(tmp / "autopyfactory.conf", factory + factory_extra)


def apf(
    *args: str, env: dict[str, str] | None = None, timeout: float = 60, **kw: object
) -> subprocess.CompletedProcess[str]:
    full = dict(os.environ)
    full.update(env or {})
    return subprocess.run(
        [APF, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=full,
        **kw,  # type: ignore[arg-type]
    )


def no_traceback(*texts: str) -> None:
    for text in texts:
        assert "Traceback" not in text, text
        assert 'File "' not in text, text


@dataclass
class RawHTTP:
    """Answers each connection with ``responses[path]`` bytes verbatim (``None``: never answer).

    Records the request heads it saw (for conditional-GET checks)."""

    responses: dict[str, bytes | None] = field(default_factory=dict)
    requests: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self._stop = threading.Event()
        self._held: list[socket.socket] = []
        self.thread = threading.Thread(target=self._serve, daemon=True, name="raw-http")
        self.thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def _serve(self) -> None:
        self.sock.settimeout(0.2)
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        conn.settimeout(5)
        data = b""
        try:
            while b"\r\n\r\n" not in data:
                chunk = conn.recv(4096)
                if not chunk:
                    break
                data += chunk
        except OSError:
            conn.close()
            return
        head = data.decode("latin-1")
        self.requests.append(head)
        path = head.split(" ", 2)[1] if head.count(" ") >= 2 else "/"
        answer = self.responses.get(path, b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
        if answer is None:
            self._held.append(conn)  # never answer: the client's deadline must fire
            return
        if callable(answer):
            answer = answer(head)
        try:
            conn.sendall(answer)
        finally:
            conn.close()

    def close(self) -> None:
        self._stop.set()
        self.sock.close()
        for conn in self._held:
            conn.close()
        self.thread.join(timeout=5)


def http_ok(body: bytes, content_type: str = "text/plain", extra: str = "") -> bytes:
    head = f"HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\nContent-Length: {len(body)}\r\n{extra}Connection: close\r\n\r\n"
    return head.encode() + body
