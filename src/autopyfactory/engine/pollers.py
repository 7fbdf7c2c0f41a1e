"""Status pollers: one per endpoint, shared by every queue that uses it.

A poller keeps the last good snapshot with its time; consumers ask for it with ``fresh(now)``,
which is None once it is older than ``maxage`` (AutoPyFactory's staleness rule). A failing
endpoint backs off exponentially and says so in ``state()``; it never stops other pollers.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from autopyfactory.model import BatchSnapshot, WmsSnapshot
from autopyfactory.plugins.base import BatchStatusPlugin, WmsStatusPlugin

log = logging.getLogger("autopyfactory.poller")


@dataclass
class PollState:
    ok_time: float | None = None
    error: str | None = None
    failures: int = 0
    next_attempt: float = 0.0
    polls: int = 0


@dataclass
class Poller:
    kind: str  # "wmsstatus" | "batchstatus"
    label: str  # for logs, metrics and status: e.g. "batchstatus:Slurm:user@head"
    plugin: WmsStatusPlugin | BatchStatusPlugin
    interval: float
    maxage: float
    max_backoff: float = 600.0
    wmsqueues: frozenset[str] = frozenset()
    latest: WmsSnapshot | BatchSnapshot | None = None
    status: PollState = field(default_factory=PollState)
    on_result: Callable[[Poller, bool], None] | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def due(self, now: float) -> bool:
        return now >= self.status.next_attempt

    def poll_once(self, now: float) -> bool:
        """Poll now; keep the last good snapshot on failure. Returns True on success."""
        try:
            if isinstance(self.plugin, WmsStatusPlugin):
                snapshot: WmsSnapshot | BatchSnapshot = self.plugin.poll(now, self.wmsqueues)
            else:
                snapshot = self.plugin.poll(now)
            ok = snapshot.ok
            error = snapshot.error
        except Exception as exc:  # isolation: a poller failure is data, not a crash
            ok, error, snapshot = False, _describe(exc), None  # type: ignore[assignment]
        with self._lock:
            self.status.polls += 1
            if ok and snapshot is not None:
                self.latest = snapshot
                self.status.ok_time = snapshot.time
                self.status.error = None
                self.status.failures = 0
                self.status.next_attempt = now + self.interval
            else:
                self.status.failures += 1
                self.status.error = error or "poll failed"
                backoff = min(self.interval * (2 ** min(self.status.failures - 1, 16)), self.max_backoff)
                self.status.next_attempt = now + max(backoff, self.interval)
                log.warning(
                    "%s: poll failed (%d in a row), next try in %.0fs: %s",
                    self.label,
                    self.status.failures,
                    backoff,
                    self.status.error,
                )
        if self.on_result is not None:
            self.on_result(self, ok)
        return ok

    def fresh(self, now: float) -> WmsSnapshot | BatchSnapshot | None:
        snapshot = self.latest
        if snapshot is None or now - snapshot.time > self.maxage:
            return None
        return snapshot

    def state(self, now: float) -> str:
        if self.status.error is None:
            return "ok" if self.latest is not None else "waiting for first poll"
        return f"backing off for {max(0.0, self.status.next_attempt - now):.0f}s after: {self.status.error}"

    def close(self) -> None:
        try:
            self.plugin.close()
        except Exception:
            log.exception("%s: close failed", self.label)


def _describe(exc: Exception) -> str:
    text = str(exc) or type(exc).__name__
    return text.splitlines()[0][:500]


class PollerThread(threading.Thread):
    """Runs one poller on its interval until stopped (one thread per endpoint, not per queue)."""

    def __init__(self, poller: Poller, clock: Callable[[], float] = time.time) -> None:
        super().__init__(name=f"poller {poller.label}", daemon=True)
        self.poller = poller
        self.clock = clock
        self.stopping = threading.Event()
        self.kick = threading.Event()

    def run(self) -> None:
        while not self.stopping.is_set():
            now = self.clock()
            if self.poller.due(now) or self.kick.is_set():
                self.kick.clear()
                self.poller.poll_once(now)
            wait = max(0.05, self.poller.status.next_attempt - self.clock())
            self.kick.wait(min(wait, 1.0))

    def stop(self) -> None:
        self.stopping.set()
        self.kick.set()
