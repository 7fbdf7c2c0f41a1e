"""Closing plugins off the decision thread.

A reload drops queues and endpoints; their plugins must be closed, and a close may do transport
I/O (releasing the last user of an SSH connection waits up to 10 s for it to shut down). The loop
hands each close to the ``Closer``: a few daemon threads (started as needed) run them, so the loop
never waits for a backend and one hung close does not hold the others. Shutdown waits for what is
queued, bounded: a close that hangs is left behind (daemon threads do not hold the exit).
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable

log = logging.getLogger("autopyfactory.factory")

CLOSER_THREADS = 4


class Closer:
    def __init__(self, threads: int = CLOSER_THREADS) -> None:
        self._jobs: queue.SimpleQueue[tuple[str, Callable[[], None]] | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._pending = 0  # queued or running
        self._threads = 0
        self._max_threads = threads
        self._closed = False

    def close(self, what: str, fn: Callable[[], None]) -> None:
        """Run ``fn`` (closing ``what``) on one of the closer's threads."""
        with self._lock:
            if self._closed:
                return
            self._pending += 1
            # a thread per close in hand, up to the limit (threads stay for later closes)
            if self._threads < min(self._pending, self._max_threads):
                self._threads += 1
                threading.Thread(target=self._run, name="apf-closer", daemon=True).start()
        self._jobs.put((what, fn))

    def pending(self) -> int:
        with self._lock:
            return self._pending

    def wait(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for every queued close; True when none is left."""
        with self._lock:
            return self._idle.wait_for(lambda: self._pending == 0, timeout)

    def stop(self, timeout: float) -> bool:
        """Take no more closes; wait (bounded) for those queued. True when all finished."""
        done = self.wait(timeout)
        with self._lock:
            self._closed = True
            threads = self._threads
        for _ in range(threads):
            self._jobs.put(None)
        if not done:
            log.warning("closing plugins took more than %.0fs; not waiting for it", timeout)
        return done

    def _run(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            what, fn = job
            try:
                fn()
            except Exception:  # closing is best effort; one failure must not stop the others
                log.exception("%s: close failed", what)
            finally:
                with self._lock:
                    self._pending -= 1
                    self._idle.notify_all()
