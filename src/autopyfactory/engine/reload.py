"""Reloading the configuration off the decision path.

A reload (SIGHUP, or ``config.reconfig`` every ``config.reconfig.interval`` seconds) reads and
validates the new configuration on its own thread, with a deadline: a queueConf URL that never
answers, or a source that blocks, fails the reload and keeps the running configuration while
every queue goes on deciding. A valid result is handed to the loop, which swaps it in between
passes.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass

from autopyfactory.config.models import FactoryConfig

log = logging.getLogger("autopyfactory.reload")

DEFAULT_DEADLINE = 120.0

Loader = Callable[[], FactoryConfig | None]


@dataclass(frozen=True)
class ReloadResult:
    config: FactoryConfig | None
    error: str | None
    why: str


class Reloader:
    def __init__(self, deliver: Callable[[ReloadResult], None], deadline: float = DEFAULT_DEADLINE) -> None:
        self.deliver = deliver
        self.deadline = deadline
        self._lock = threading.Lock()
        self._running: threading.Thread | None = None
        self._again: tuple[Loader, str] | None = None
        self._timer: threading.Thread | None = None
        self._stopping = threading.Event()

    def request(self, load: Loader, why: str = "SIGHUP") -> None:
        """Start a reload now (safe from a signal handler: it only starts a thread). While one runs,
        one more is remembered and runs after it."""
        with self._lock:
            if self._running is not None and self._running.is_alive():
                self._again = (load, why)
                return
            self._running = threading.Thread(target=self._run, args=(load, why), name="reload", daemon=True)
            self._running.start()

    def every(self, interval: float, load: Loader) -> None:
        """Reload periodically (APF's ``config.reconfig``)."""

        def tick() -> None:
            while not self._stopping.wait(interval):
                self.request(load, "config.reconfig")

        self._timer = threading.Thread(target=tick, name="reconfig", daemon=True)
        self._timer.start()

    def stop(self) -> None:
        self._stopping.set()

    def _run(self, load: Loader, why: str) -> None:
        box: list[ReloadResult] = []

        def work() -> None:
            try:
                config = load()
                box.append(ReloadResult(config, None if config is not None else "configuration invalid", why))
            except Exception as exc:  # a bad reload keeps the running config
                problems = "; ".join(str(exc).splitlines())  # one line per config problem
                box.append(ReloadResult(None, f"{type(exc).__name__}: {problems}", why))

        worker = threading.Thread(target=work, name="reload-read", daemon=True)
        worker.start()
        worker.join(self.deadline)
        if worker.is_alive():  # the thread stays blocked on its source; nothing waits for it
            result = ReloadResult(None, f"reading the configuration took more than {self.deadline:.0f}s", why)
        else:
            result = box[0]
        if not self._stopping.is_set():
            self.deliver(result)
        with self._lock:
            again, self._again = self._again, None
            self._running = None
        if again is not None and not self._stopping.is_set():
            self.request(*again)
