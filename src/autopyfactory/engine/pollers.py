"""Status pollers: one per endpoint, shared by every queue that uses it (the observe stage's I/O).

A poller keeps the last good snapshot with its time; consumers ask for it with ``fresh(now)``,
which is None once it is older than ``maxage`` (AutoPyFactory's staleness rule). A failing
endpoint is retried at the poll interval, then less often, never more than ``max_backoff``
apart, and says so in ``state()``; when it answers again the poller reports the recovery. It
never stops other pollers.

The poller owns its backend's I/O: besides polling, it settles pilots the store thinks active but
the endpoint no longer lists (``BatchStatusPlugin.settle``, e.g. Slurm's sacct), so the decision
loop never runs a backend command. The loop hands such pilots over with ``request_settle`` and
collects the answers with ``take_settled``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

from autopyfactory.model import BatchSnapshot, Pilot, PilotState, WmsSnapshot
from autopyfactory.plugins.base import BatchStatusPlugin, WmsStatusPlugin

log = logging.getLogger("autopyfactory.poller")


@dataclass
class PollState:
    ok_time: float | None = None
    error: str | None = None
    failures: int = 0
    next_attempt: float = 0.0
    polls: int = 0
    # when the current run of failures began (None while the endpoint answers)
    failing_since: float | None = None


@dataclass(frozen=True)
class PollResult:
    """What one poll told: handed to the factory's callback (on the poller's thread)."""

    ok: bool
    error: str | None
    # the endpoint answered again after failing since this time
    recovered_after: float | None = None


@dataclass
class Poller:
    kind: str  # "wmsstatus" | "batchstatus"
    label: str  # for logs, metrics and status, in words: "batch status Slurm at user@head"
    plugin: WmsStatusPlugin | BatchStatusPlugin
    interval: float
    maxage: float
    max_backoff: float = 600.0
    wmsqueues: frozenset[str] = frozenset()
    latest: WmsSnapshot | BatchSnapshot | None = None
    status: PollState = field(default_factory=PollState)
    on_result: Callable[[Poller, PollResult], None] | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _to_settle: list[Pilot] = field(default_factory=list)
    _settled: list[Pilot] = field(default_factory=list)

    def due(self, now: float) -> bool:
        return now >= self.status.next_attempt or bool(self._to_settle)

    def retry_delay(self, failures: int) -> float:
        """Seconds until the next attempt after ``failures`` failures in a row: the interval for
        the first two (a blip costs one interval), then growing, capped at ``max_backoff``."""
        if failures <= 2:
            return self.interval
        return max(self.interval, min(self.interval * 2 ** (failures - 2), self.max_backoff))

    def poll_once(self, now: float) -> bool:
        """Poll now (and settle what the loop handed over); keep the last good snapshot on
        failure. Returns True on success."""
        snapshot: WmsSnapshot | BatchSnapshot | None = None
        try:
            if isinstance(self.plugin, WmsStatusPlugin):
                snapshot = self.plugin.poll(now, self.wmsqueues)
            else:
                snapshot = self.plugin.poll(now)
            ok, error = snapshot.ok, snapshot.error
        except Exception as exc:  # isolation: a poller failure is data, not a crash
            ok, error = False, _describe(exc)
        if ok and isinstance(self.plugin, BatchStatusPlugin):
            self._settle(now)
        recovered_after = None
        with self._lock:
            self.status.polls += 1
            if ok and snapshot is not None:
                if self.status.failing_since is not None:
                    recovered_after = self.status.failing_since
                self.latest = snapshot
                self.status.ok_time = snapshot.time
                self.status.error = None
                self.status.failures = 0
                self.status.failing_since = None
                self.status.next_attempt = now + self.interval
            else:
                self.status.failures += 1
                self.status.error = error or "poll failed"
                if self.status.failing_since is None:
                    self.status.failing_since = now
                delay = self.retry_delay(self.status.failures)
                self.status.next_attempt = now + delay
                log.warning(
                    "%s: poll failed (%d in a row), next try in %.0fs: %s",
                    self.label,
                    self.status.failures,
                    delay,
                    self.status.error,
                )
        if recovered_after is not None:
            log.warning("%s: answers again after failing for %.0fs", self.label, now - recovered_after)
        if self.on_result is not None:
            self.on_result(self, PollResult(ok, error, recovered_after))
        return ok

    def request_settle(self, pilots: Sequence[Pilot]) -> None:
        """Ask this poller's thread to settle pilots its endpoint no longer lists."""
        with self._lock:
            self._to_settle.extend(pilots)

    def take_settled(self) -> list[Pilot]:
        with self._lock:
            out, self._settled = self._settled, []
        return out

    def _settle(self, now: float) -> None:
        with self._lock:
            asked, self._to_settle = self._to_settle, []
        if not asked:
            return
        assert isinstance(self.plugin, BatchStatusPlugin)
        settled: list[Pilot] = []
        try:
            settled = list(self.plugin.settle(asked, now))
        except Exception as exc:
            log.warning("%s: cannot settle %d vanished pilots: %s", self.label, len(asked), _describe(exc))
        done = {p.backend_id for p in settled}
        # the backend is the truth: what it cannot account for is unknown (never done)
        settled += [replace(p, state=PilotState.UNKNOWN) for p in asked if p.backend_id not in done]
        with self._lock:
            self._settled.extend(settled)

    def fresh(self, now: float) -> WmsSnapshot | BatchSnapshot | None:
        snapshot = self.latest
        if snapshot is None or now - snapshot.time > self.maxage:
            return None
        return snapshot

    def state(self, now: float) -> str:
        if self.status.error is None:
            state = "ok" if self.latest is not None else "waiting for first poll"
        else:
            wait = max(0.0, self.status.next_attempt - now)
            state = (
                f"backing off for {wait:.0f}s after {self.status.failures} failed polls: {self.status.error}"
            )
        transport = self.plugin.transport_state()
        return f"{state} (transport: {transport})" if transport else state

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
