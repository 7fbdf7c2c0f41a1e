"""The action executor: a bounded thread pool, serialised per target.

Actions on one target (one Slurm head node, one CE, one cloud region) run one at a time and in
order; different targets run in parallel, so a slow or hung backend only delays its own queues.
An action that runs longer than ``stuck_after`` seconds stops counting against the pool: while
work for other targets waits, a spare thread takes it, so hung targets, however many, never
hold the actions of the others (a spare thread exits when nothing waits).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

log = logging.getLogger("autopyfactory.executor")

STUCK_AFTER_S = 10.0  # an action running this long no longer holds one of the pool's threads
_WATCH_S = 0.5  # how often the watchdog looks for stuck actions


class Executor:
    def __init__(self, workers: int = 8, stuck_after: float = STUCK_AFTER_S) -> None:
        self.stuck_after = stuck_after
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="apf-action")
        self._lock = threading.Lock()
        self._queues: dict[str, deque[Callable[[], None]]] = {}
        self._busy: set[str] = set()
        # busy targets no thread drains yet (a pool task or a spare thread takes each one)
        self._ready: deque[str] = deque()
        # target -> when its running action began
        self._running: dict[str, float] = {}
        self._spares = 0
        self._idle = threading.Condition(self._lock)
        self._work = threading.Condition(self._lock)  # spare threads wait here for ready targets
        self._closed = threading.Event()
        self._watchdog: threading.Thread | None = None  # started with the first action

    def submit(self, target: str, job: Callable[[], None]) -> None:
        with self._lock:
            if self._closed.is_set():
                return
            self._queues.setdefault(target, deque()).append(job)
            if self._watchdog is None:
                self._watchdog = threading.Thread(target=self._watch, name="apf-action-watchdog", daemon=True)
                self._watchdog.start()
            if target in self._busy:
                return
            self._busy.add(target)
            self._ready.append(target)
            self._work.notify()
        self._pool.submit(self._take)

    def _take(self) -> bool:
        """Drain the next ready target, if any is left (pool tasks and spare threads)."""
        with self._lock:
            if not self._ready:
                return False
            target = self._ready.popleft()
        self._drain(target)
        return True

    def _drain(self, target: str) -> None:
        while True:
            with self._lock:
                queue = self._queues.get(target)
                if not queue:
                    self._busy.discard(target)
                    self._queues.pop(target, None)
                    self._idle.notify_all()
                    return
                job = queue.popleft()
                self._running[target] = time.monotonic()
            try:
                job()
            except Exception:  # jobs handle their own errors; this is the last line of defence
                log.exception("action on %s failed", target)
            finally:
                with self._lock:
                    self._running.pop(target, None)

    def _stuck(self, now: float) -> list[str]:
        return sorted(t for t, began in self._running.items() if now - began > self.stuck_after)

    def _watch(self) -> None:
        """Keep one spare thread per stuck action while other targets' work waits."""
        while not self._closed.wait(_WATCH_S):
            with self._lock:
                stuck = self._stuck(time.monotonic())
                start = bool(self._ready) and self._spares < len(stuck)
                if start:
                    self._spares += 1
                    first = self._spares == 1
            if start:
                if first:
                    log.warning(
                        "actions on %s running for more than %.0fs; other targets' actions go on spare threads",
                        ", ".join(stuck[:5]) + (" ..." if len(stuck) > 5 else ""),
                        self.stuck_after,
                    )
                threading.Thread(target=self._spare, name="apf-action-spare", daemon=True).start()

    def _spare(self) -> None:
        """Take ready work until the stuck actions it stands in for have finished."""
        while True:
            if not self._closed.is_set() and self._take():
                continue
            with self._lock:
                if self._closed.is_set() or self._spares > len(self._stuck(time.monotonic())):
                    self._spares -= 1
                    if not self._spares:
                        log.info("no action is stuck any more; spare threads stopped")
                    return
                if not self._ready:
                    self._work.wait(_WATCH_S)

    def busy(self, target: str) -> bool:
        with self._lock:
            return target in self._busy

    def pending(self) -> int:
        with self._lock:
            return sum(len(q) for q in self._queues.values()) + len(self._busy)

    def wait_idle(self, timeout: float | None = None) -> bool:
        with self._lock:
            return self._idle.wait_for(lambda: not self._busy, timeout)

    def shutdown(self, wait: bool = True, timeout: float = 30.0) -> None:
        """Take no more actions; wait up to ``timeout`` for those under way. Targets no thread
        took yet are dropped (their intents stay open: the next start adopts them)."""
        self._closed.set()
        with self._lock:
            self._work.notify_all()
        if wait:
            self.wait_idle(timeout)
        self._pool.shutdown(wait=False, cancel_futures=True)
