"""Small helpers shared by tests: write config trees, wait for conditions with a deadline."""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from textwrap import dedent
from typing import Any


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(dedent(text).lstrip())
    return path


def wait_for(condition: Callable[[], object], timeout: float, what: str, interval: float = 0.1) -> object:
    """Poll ``condition`` until it is truthy; fail with ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def factory_conf(tmp: Path, queues: str, extra: str = "", factory_id: str = "test-factory") -> Path:
    """A minimal autopyfactory.conf + queues.conf in ``tmp``; returns the factory conf path."""
    write(tmp / "queues.conf", queues)
    base = dedent(
        f"""
        [Factory]
        factoryId = {factory_id}
        queueConf = queues.conf
        factory.statedir = state
        wmsstatus.sim.sleep = 1
        batchstatus.local.sleep = 0.5
        metrics.address = 127.0.0.1:0
        """
    ).lstrip()
    return write(tmp / "autopyfactory.conf", base + dedent(extra).lstrip())


def serve(server: Any, name: str) -> threading.Thread:
    """Serve a stdlib HTTP server from a daemon thread (the tests' local fakes)."""
    server.daemon_threads = True
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, name=name, daemon=True
    )
    thread.start()
    return thread


def shut_down(server: Any | None, thread: threading.Thread | None) -> None:
    """Stop a server started with ``serve`` and close its port (connections are then refused)."""
    if server is not None:
        server.shutdown()
        server.server_close()
    if thread is not None:
        thread.join(timeout=5)


def make_jwt(exp: float, subject: str = "pilot") -> str:
    """An unsigned JWT whose ``exp`` claim is ``exp`` (the credential manager reads only that)."""

    def part(obj: object) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'none', 'typ': 'JWT'})}.{part({'sub': subject, 'exp': int(exp)})}.c2ln"
