"""Clocks: the system clock, and a virtual clock a simulation advances by hand.

Code that needs "now" outside the pure decision functions takes a ``Clock``; the simulator
passes a ``VirtualClock`` so two simulated months run in seconds.
"""

from __future__ import annotations

import threading
import time
from typing import Protocol


class Clock(Protocol):
    def now(self) -> float: ...

    def sleep(self, seconds: float) -> None: ...


class SystemClock:
    """Wall-clock time."""

    def now(self) -> float:
        return time.time()

    def sleep(self, seconds: float) -> None:
        if seconds > 0:
            time.sleep(seconds)


class VirtualClock:
    """Time that moves only when told. ``sleep`` advances it at once instead of waiting.

    Thread-safe: pollers and the executor may read it while the simulation loop advances it.
    """

    def __init__(self, start: float = 0.0) -> None:
        self._now = float(start)
        self._lock = threading.Lock()

    def now(self) -> float:
        return self._now

    def sleep(self, seconds: float) -> None:
        if seconds > 0:
            self.advance(seconds)

    def advance(self, seconds: float) -> float:
        if seconds < 0:
            raise ValueError(f"a virtual clock cannot go back ({seconds} s)")
        with self._lock:
            self._now += seconds
            return self._now

    def set(self, t: float) -> None:
        """Jump to ``t`` (never backwards: simulated pilots would otherwise end before they start)."""
        with self._lock:
            if t < self._now:
                raise ValueError(f"a virtual clock cannot go back from {self._now} to {t}")
            self._now = float(t)

    def __repr__(self) -> str:
        return f"VirtualClock({self._now})"
