"""Fault tools for the engine's fault tests and the kill soak: a real ``apf run`` daemon under
test, the Local backend's pilots as the backend's truth, the store-versus-backend check, a
process holding the SQLite write lock, a TCP server that accepts and never answers, and a small
tmpfs.

Everything here drives real processes and real files; nothing stands in for the engine.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from autopyfactory.model import Pilot
from autopyfactory.plugins.batch.local import read_pilot
from autopyfactory.store.api import Store

APF = str(Path(sys.executable).parent / "apf")


# -- the daemon ----------------------------------------------------------------------------------
class Daemon:
    """``apf run --conf <conf>`` as a child process (its own process group), logging to a file."""

    def __init__(
        self,
        conf: Path,
        *args: str,
        factory_id: str = "test-factory",
        statedir: Path | None = None,
        env: dict[str, str] | None = None,
        log: Path | None = None,
    ) -> None:
        self.conf = conf
        self.factory_id = factory_id
        self.statedir = statedir or conf.parent / "state"
        self.log = log or conf.parent / "apf.log"
        self.proc = subprocess.Popen(
            [APF, "run", "--conf", str(conf), "--no-table", "--log", str(self.log), "-v", *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, **(env or {})},
            start_new_session=True,
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def status(self) -> dict[str, Any]:
        """The status file the daemon publishes ({} until it wrote one)."""
        path = self.statedir / f"status-{self.factory_id}.json"
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            return {}

    def deciding(self) -> bool:
        """True once this process published its status (its loop runs)."""
        if self.proc.poll() is not None:
            raise AssertionError(f"apf run exited with {self.proc.returncode}: {self.stderr()}")
        return self.status().get("pid") == self.pid

    def terminate(self, timeout: float = 30.0) -> float:
        """SIGTERM; returns the seconds from the signal to the process's exit (status 0 required)."""
        began = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"apf run ignored SIGTERM for {timeout:.0f}s") from None
        took = time.monotonic() - began
        assert rc == 0, f"apf run exited with {rc} after SIGTERM: {self.stderr()}"
        return took

    def kill(self) -> None:
        """SIGKILL (like a crash or the OOM killer); its pilots run on in their own sessions."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=30)

    def stderr(self) -> str:
        if self.proc.poll() is None or self.proc.stderr is None:
            return ""
        return self.proc.stderr.read()[-2000:]

    def __enter__(self) -> Daemon:
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill()


# -- the backend's truth and the store -------------------------------------------------------------
def local_pilots(statedir: Path, factory_id: str = "test-factory") -> list[Pilot]:
    """Every pilot the Local backend holds for the factory, read as its status plugin reads it."""
    root = statedir / "local" / factory_id
    found = []
    for tags in sorted(root.glob("*/*/tags")):
        pilot = read_pilot(tags.parent)
        if pilot is not None:
            found.append(pilot)
    return found


@dataclass
class Mismatch:
    """What differs between the backend and the store (empty lists: they match)."""

    unrecorded: list[str] = field(default_factory=list)  # pilots the store does not know
    without_intent: list[str] = field(default_factory=list)  # pilots whose intent is not in the store
    wrong_state: list[str] = field(default_factory=list)  # store state != backend state
    vanished: list[str] = field(default_factory=list)  # store says active, backend has no such pilot
    open_intents: list[str] = field(default_factory=list)
    miscounted: list[str] = field(default_factory=list)  # intent.submitted != pilots under its tag
    overfilled: list[str] = field(default_factory=list)  # more pilots under an intent than it asked for
    duplicates: list[str] = field(default_factory=list)  # one backend pilot recorded twice

    def problems(self) -> dict[str, list[str]]:
        return {k: v for k, v in self.__dict__.items() if v}

    def __bool__(self) -> bool:
        return bool(self.problems())


def compare(
    store: Store, pilots: list[Pilot], factory_id: str = "test-factory", *, states: bool = True
) -> Mismatch:
    """The store against the backend's pilots. ``states``: also compare each pilot's state."""
    out = Mismatch()
    rows = store.pilots(factory_id)
    by_key: dict[tuple[str, str], dict[str, Any]] = {}
    counts = Counter((r["queue"], r["backend_id"]) for r in rows)
    out.duplicates = sorted(f"{q}/{b}" for (q, b), n in counts.items() if n > 1)
    for r in rows:
        by_key[(r["queue"], r["backend_id"])] = r
    intents = {i["id"]: i for i in store.intents(factory_id)}
    listed = {(p.queue, p.backend_id) for p in pilots}
    for p in pilots:
        row = by_key.get((p.queue, p.backend_id))
        if row is None:
            out.unrecorded.append(p.backend_id)
        elif states and row["state"] != p.state.value:
            out.wrong_state.append(f"{p.backend_id}: store {row['state']}, backend {p.state.value}")
        if p.intent_id not in intents:
            out.without_intent.append(p.backend_id)
    active = {"pending", "running", "retiring"}
    out.vanished = sorted(b for (q, b), r in by_key.items() if r["state"] in active and (q, b) not in listed)
    per_intent = Counter(p.intent_id for p in pilots)
    for intent in intents.values():
        found = per_intent.get(intent["id"], 0)
        if found > intent["n"]:
            out.overfilled.append(f"{intent['id']}: {found} pilots for {intent['n']} asked")
        if intent["status"] == "open":
            out.open_intents.append(intent["id"])
        elif (intent["submitted"] or 0) != per_intent.get(intent["id"], 0):
            out.miscounted.append(
                f"{intent['id']}: {intent['submitted']} recorded, {per_intent.get(intent['id'], 0)} in the backend"
            )
    return out


def intents_cover(store: Store, pilots: list[Pilot], factory_id: str = "test-factory") -> list[str]:
    """Pilots in the backend whose intent the store does not hold (must always be empty)."""
    known = {i["id"] for i in store.intents(factory_id)}
    return [p.backend_id for p in pilots if p.intent_id not in known]


# -- a process holding the SQLite write lock ---------------------------------------------------------
_LOCKER = r"""
import sqlite3, sys, time
con = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=60)
con.execute("BEGIN EXCLUSIVE")
print(f"locked {time.time()}", flush=True)
time.sleep(float(sys.argv[2]))
con.execute("ROLLBACK")
con.close()
print(f"released {time.time()}", flush=True)
"""


class SqliteLocker:
    """Another process that holds ``BEGIN EXCLUSIVE`` on a SQLite file for ``seconds``."""

    def __init__(self, path: Path, seconds: float) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _LOCKER, str(path), str(seconds)],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().split()
        assert line and line[0] == "locked", f"the locker could not lock {path}: {line}"
        self.locked_at = float(line[1])
        self.released_at: float | None = None

    def wait_released(self, timeout: float) -> float:
        assert self.proc.stdout is not None
        self.proc.wait(timeout=timeout)
        line = self.proc.stdout.readline().split()
        assert line and line[0] == "released", line
        self.released_at = float(line[1])
        return self.released_at

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)


# -- an endpoint that accepts and never answers ------------------------------------------------------
class SilentServer:
    """Listens on 127.0.0.1, accepts every connection and never sends a byte (a hung web server)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        self._conns: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="silent-server", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        self.sock.settimeout(0.2)
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.accepted += 1
            self._conns.append(conn)  # kept open, never read, never answered

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}/{path.lstrip('/')}"

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        for conn in self._conns:
            conn.close()
        self.sock.close()


# -- a small filesystem ------------------------------------------------------------------------------
def can_mount() -> str | None:
    """Why a tmpfs cannot be mounted here (None when it can)."""
    if os.geteuid() != 0:
        return "mounting a tmpfs needs root"
    return None


@contextmanager
def small_tmpfs(path: Path, size: str) -> Iterator[Path]:
    """Mount a tmpfs of ``size`` (e.g. '2m') on ``path``; always unmounted afterwards."""
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise PermissionError(done.stderr.strip() or f"mount exited with {done.returncode}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True, check=False)


def fill(directory: Path, name: str = "filler") -> Path:
    """Write zeros into ``directory/name`` until its filesystem has no space left."""
    target = directory / name
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        for size in (1 << 20, 65536, 4096, 512, 1):
            block = b"\0" * size
            try:
                while os.write(fd, block) > 0:
                    pass
            except OSError:
                continue
    finally:
        os.close(fd)
    return target


# -- timing ------------------------------------------------------------------------------------------
def mean_interval(times: list[float]) -> float:
    """Mean spacing of sorted event times (span / gaps): exact for a periodic series, and
    insensitive to where a window happens to start."""
    times = sorted(times)
    assert len(times) >= 2, times
    return (times[-1] - times[0]) / (len(times) - 1)


def signal_name(sig: int) -> str:
    return signal.Signals(sig).name
