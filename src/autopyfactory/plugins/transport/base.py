"""Transports: how a backend runs its command-line tools, locally or on a remote head node.

A backend builds argv lists ("commands as data") and hands them to ``Transport.run``; the same
backend then works unchanged on the local machine and over SSH. Failures to reach a target raise
``BackendError(target, message)`` with text that names the target (and the auth profile) but
never a key, passphrase or token.

This module holds the contract only; ``pool.transport_for`` picks and shares the implementations
(``local``, ``ssh``), so they import this module and never the other way round.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from pydantic import Field

from autopyfactory.plugins.base import PluginOptions
from autopyfactory.plugins.keys import auth_field

DEFAULT_TIMEOUT = 60.0


@dataclass(frozen=True, slots=True)
class Result:
    """What one command returned (text decoded as UTF-8, undecodable bytes replaced)."""

    rc: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.rc == 0

    def brief(self, limit: int = 400) -> str:
        """The stderr (or stdout) text worth putting in an error message, shortened."""
        text = (self.stderr.strip() or self.stdout.strip()).replace("\n", " | ")
        return text if len(text) <= limit else text[: limit - 3] + "..."


class Transport:
    """Runs one argv at a time on a target; thread-safe, so several threads may call ``run``."""

    #: the target as shown in messages: ``local`` or ``user@host:port``
    name: str = "transport"

    def run(
        self, argv: Sequence[str], input: bytes | None = None, timeout: float = DEFAULT_TIMEOUT
    ) -> Result:
        """Run argv (no shell), feed ``input`` on stdin, wait at most ``timeout`` seconds.

        A non-zero exit is a normal ``Result``; failing to run the command at all (target
        unreachable, command missing, timeout) raises ``BackendError``.
        """
        raise NotImplementedError

    def makedirs(self, path: str, timeout: float = DEFAULT_TIMEOUT) -> Result:
        """Create a directory (and its parents) on the target."""
        return self.run(["mkdir", "-p", path], timeout=timeout)

    def state(self) -> str:
        """``ok``, or what is wrong (e.g. ``backing off until 12:00:03 after: <error>``)."""
        return "ok"

    def close(self) -> None:
        pass

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name})"


class Backoff:
    """Exponential, capped backoff for a target that cannot be reached.

    After a failure, calls fail fast (without touching the network) until the delay has passed;
    each further failure doubles the delay up to ``cap``. A success resets it.
    """

    def __init__(
        self,
        base: float = 1.0,
        cap: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
        wallclock: Callable[[], float] = time.time,
    ) -> None:
        self.base = base
        self.cap = cap
        self._clock = clock
        self._wallclock = wallclock
        self._lock = threading.Lock()
        self.failures = 0
        self.error: str | None = None
        self._until = 0.0  # monotonic
        self._until_wall = 0.0

    def blocked(self) -> str | None:
        """The reason to fail fast now, or None when a new attempt is allowed."""
        with self._lock:
            if self.error is not None and self._clock() < self._until:
                return self._describe()
            return None

    def failure(self, error: str) -> float:
        """Record a failed attempt; returns the delay before the next one."""
        with self._lock:
            delay = min(self.cap, self.base * (2**self.failures))
            self.failures += 1
            self.error = error
            self._until = self._clock() + delay
            self._until_wall = self._wallclock() + delay
            return delay

    def success(self) -> None:
        with self._lock:
            self.failures = 0
            self.error = None
            self._until = 0.0

    def _describe(self) -> str:
        until = time.strftime("%H:%M:%S", time.localtime(self._until_wall))
        return f"backing off until {until} after: {self.error}"

    def state(self) -> str:
        with self._lock:
            if self.error is None:
                return "ok"
            if self._clock() < self._until:
                return self._describe()
            return f"retrying after: {self.error}"


class RemoteOptions(PluginOptions):
    """Keys of a backend that drives command-line tools: where the commands run."""

    host: str | None = Field(None, description="head node to reach over SSH; empty = run commands locally")
    user: str | None = Field(None, description="login user on the head node")
    port: int = Field(22, ge=1, le=65535, description="SSH port of the head node")
    authprofile: str | None = auth_field(
        None, "SSH", description="SSH profile in auth.conf (key and known_hosts); needed with host"
    )
    timeout: float = Field(60.0, gt=0, le=3600, description="seconds one command may take")
