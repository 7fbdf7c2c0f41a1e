"""Transports: how a backend runs its command-line tools, locally or on a remote head node.

A backend builds argv lists ("commands as data") and hands them to ``Transport.run``; the same
backend then works unchanged on the local machine and over SSH. Failures to reach a target raise
``BackendError(target, message)`` with text that names the target (and the auth profile) but
never a key, passphrase or token.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydantic import Field

from autopyfactory.plugins.base import BackendError, PluginError, PluginOptions

if TYPE_CHECKING:
    from autopyfactory.plugins.base import FactoryContext

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
    port: int = Field(22, ge=1, le=65535)
    authprofile: str | None = Field(None, description="SSH profile in auth.conf (key and known_hosts)")
    timeout: float = Field(60.0, gt=0, description="seconds one command may take")

    def credential_profiles(self, profiles: Mapping[str, Any]) -> tuple[str, ...]:
        """The SSH profile the commands run with (for the credential gate)."""
        return (self.authprofile,) if self.host and self.authprofile else ()


# ---------------------------------------------------------------------------------------------
# One transport per target, shared by every plugin instance that uses it (one SSH connection for
# all queues and the poller of one head node).


class TransportPool:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._items: dict[Hashable, tuple[Transport, int]] = {}

    def acquire(self, key: Hashable, create: Callable[[], Transport]) -> Transport:
        with self._lock:
            if key in self._items:
                transport, refs = self._items[key]
                self._items[key] = (transport, refs + 1)
                return transport
            transport = create()
            self._items[key] = (transport, 1)
            return transport

    def release(self, transport: Transport) -> None:
        with self._lock:
            for key, (item, refs) in list(self._items.items()):
                if item is transport:
                    if refs > 1:
                        self._items[key] = (item, refs - 1)
                        return
                    del self._items[key]
                    break
            else:
                return
        transport.close()


POOL = TransportPool()


def transport_for(
    factory: FactoryContext,
    host: str | None,
    *,
    user: str | None = None,
    port: int = 22,
    authprofile: str | None = None,
    where: str = "",
) -> Transport:
    """The shared transport for a target: local when ``host`` is empty, else SSH with a profile.

    ``where`` names the config keys in errors (e.g. ``batchsubmit.slurm``). Release the result
    with ``POOL.release`` when the plugin closes.
    """
    if not host:
        from autopyfactory.plugins.transport.local import LocalTransport

        return POOL.acquire(("local",), LocalTransport)
    from autopyfactory.plugins.transport.ssh import SSHTransport

    prefix = f"{where}." if where else ""
    if not authprofile:
        raise PluginError(f"{prefix}host is {host!r} but {prefix}authprofile (an SSH profile) is not set")
    profile = factory.auth(authprofile)
    if profile.plugin != "SSH":
        raise PluginError(
            f"{prefix}authprofile {authprofile!r} is a {profile.plugin} profile; an SSH profile is needed"
        )
    login = user or ""
    key = ("ssh", login, host, port, authprofile, id(profile.options))
    return POOL.acquire(
        key, lambda: SSHTransport(host, port=port, user=user, profile=authprofile, options=profile.options)
    )


def check(result: Result, target: str, what: str) -> Result:
    """Raise a ``BackendError`` naming the command when ``result`` failed."""
    if result.rc != 0:
        raise BackendError(target, f"{what} failed (exit {result.rc}): {result.brief()}")
    return result
