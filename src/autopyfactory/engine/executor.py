"""The action executor: a bounded thread pool, serialised per target.

Actions on one target (one Slurm head node, one CE, one cloud region) run one at a time and in
order; different targets run in parallel, so a slow or hung backend only delays its own queues.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

log = logging.getLogger("autopyfactory.executor")


class Executor:
    def __init__(self, workers: int = 8) -> None:
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="apf-action")
        self._lock = threading.Lock()
        self._queues: dict[str, deque[Callable[[], None]]] = {}
        self._busy: set[str] = set()
        self._idle = threading.Condition(self._lock)
        self._closed = False

    def submit(self, target: str, job: Callable[[], None]) -> None:
        with self._lock:
            if self._closed:
                return
            self._queues.setdefault(target, deque()).append(job)
            if target in self._busy:
                return
            self._busy.add(target)
        self._pool.submit(self._drain, target)

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
            try:
                job()
            except Exception:  # jobs handle their own errors; this is the last line of defence
                log.exception("action on %s failed", target)

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
        with self._lock:
            self._closed = True
        if wait:
            self.wait_idle(timeout)
        self._pool.shutdown(wait=False, cancel_futures=True)
