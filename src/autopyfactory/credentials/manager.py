"""The credential manager: one component owning every profile of auth.conf (and proxy.conf).

It runs off the decision path: one scheduler thread keeps each profile's next check time and hands
due checks to a small pool of workers, so a slow ``voms-proxy-init`` or MyProxy server delays only
its own profile. Each profile has its own schedule (``checktime``, and sooner when it nears
``minlife`` or its end, or after a failure). ``start`` first inspects every profile from disk, so
health is known before the first decision; ``stop`` kills running tools and returns within its
timeout (SIGTERM always works).

Health changes go to ``on_change(name, old, new)`` (the engine records them as store events and
alerts), to a JSON status file in the state directory (``apf status`` reads it) and to the
Prometheus collector in ``credentials.metrics``. Nothing here logs or stores a secret value.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from autopyfactory.credentials.base import ManagedCredential
from autopyfactory.credentials.commands import Runner
from autopyfactory.credentials.health import CredentialHealth, HealthState, gate
from autopyfactory.credentials.keys import CloudKeyCredential, SSHKeyCredential
from autopyfactory.credentials.token import TokenCredential
from autopyfactory.credentials.x509 import X509Credential

if TYPE_CHECKING:
    from autopyfactory.config.models import AuthProfile

log = logging.getLogger("autopyfactory.credentials")

OnChange = Callable[[str, CredentialHealth | None, CredentialHealth], None]

KINDS: dict[str, type[ManagedCredential]] = {
    "X509": X509Credential,
    "Token": TokenCredential,
    "SSH": SSHKeyCredential,
    "CloudKey": CloudKeyCredential,
}


class CredentialError(Exception):
    """A profile that is unknown, of the wrong kind, or not usable now (message free of secrets)."""


def status_file(state_dir: Path, factory_id: str) -> Path:
    return Path(state_dir).expanduser() / f"credentials-{factory_id}.json"


class CredentialManager:
    def __init__(
        self,
        profiles: Mapping[str, AuthProfile],
        *,
        factory_id: str = "",
        state_dir: Path | str | None = None,
        on_change: OnChange | None = None,
        clock: Callable[[], float] = time.time,
        workers: int = 4,
        period: float = 3600.0,
    ) -> None:
        self.factory_id = factory_id
        self.state_dir = Path(state_dir).expanduser() if state_dir is not None else None
        self.on_change = on_change
        self.clock = clock
        self.runner = Runner()
        self._creds: dict[str, ManagedCredential] = {}
        for name, profile in profiles.items():
            cls = KINDS.get(profile.plugin)
            if cls is None:
                log.warning("auth profile %s: plugin %s is not managed (no health)", name, profile.plugin)
                continue
            self._creds[name] = cls(name, profile.options, self.runner, period)
        self._health: dict[str, CredentialHealth] = {}
        self._due: dict[str, float] = {}
        self._running: set[str] = set()
        self._profile_locks = {name: threading.Lock() for name in self._creds}
        self._cond = threading.Condition()
        self._status_lock = threading.Lock()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._pool = ThreadPoolExecutor(
            max_workers=max(1, min(workers, len(self._creds) or 1)), thread_name_prefix="apf-credential"
        )

    # -- public interface ----------------------------------------------------------------------

    @property
    def names(self) -> list[str]:
        return list(self._creds)

    def inspect_all(self) -> None:
        """Every profile's health from disk alone (no tool runs): what a one-shot run gates on."""
        now = self.clock()
        for name, cred in self._creds.items():
            self._store(name, self._safe(cred.inspect, name, now))

    @property
    def started(self) -> bool:
        return self._thread is not None

    def start(self) -> None:
        """Inspect every profile now (no tools run), then check and renew on the manager's thread."""
        self.inspect_all()
        now = self.clock()
        for name in self._creds:
            self._due[name] = now
        self._thread = threading.Thread(target=self._loop, name="apf-credentials", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stopping.set()
        self.runner.cancel_all()
        with self._cond:
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
        self._pool.shutdown(wait=False, cancel_futures=True)

    def health(self, name: str) -> CredentialHealth:
        with self._cond:
            health = self._health.get(name)
        if health is None:
            raise CredentialError(self._unknown(name))
        return health

    def all_health(self) -> dict[str, CredentialHealth]:
        with self._cond:
            return dict(self._health)

    def gate(self, profile_names: Iterable[str], now: float | None = None) -> str | None:
        """``health.gate`` over this manager's current health."""
        return gate(profile_names, self.all_health(), self.clock() if now is None else now)

    def proxy_path(self, name: str) -> str:
        cred = self._cred(name, X509Credential)
        return str(cred.path)

    def token(self, name: str) -> str:
        """The bearer token of a Token profile now (raises CredentialError without the value)."""
        cred = self._cred(name, TokenCredential)
        try:
            return cred.read()
        except (OSError, ValueError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise CredentialError(f"token profile {name!r}: {reason}") from None

    def check_now(self, name: str) -> CredentialHealth:
        """Check (and renew if due) one profile synchronously, on the caller's thread."""
        cred = self._cred(name, ManagedCredential)
        with self._profile_locks[name]:
            health = self._check(name, cred)
        return health

    def inspect_now(self, name: str) -> CredentialHealth:
        """Health from disk alone (no tool runs), without changing the manager's state."""
        cred = self._cred(name, ManagedCredential)
        return self._safe(cred.inspect, name, self.clock())

    def wake(self) -> None:
        """Check every profile as soon as possible (e.g. after a reload or an operator's request)."""
        with self._cond:
            now = self.clock()
            for name in self._due:
                self._due[name] = now
            self._cond.notify_all()

    # -- scheduling ----------------------------------------------------------------------------

    def _loop(self) -> None:
        while not self._stopping.is_set():
            with self._cond:
                now = self.clock()
                due = [n for n, t in self._due.items() if t <= now and n not in self._running]
                for name in due:
                    self._running.add(name)
                if not due:
                    waiting = [t for n, t in self._due.items() if n not in self._running]
                    delay = min(waiting) - now if waiting else 60.0
                    self._cond.wait(timeout=min(max(delay, 0.05), 60.0))
                    continue
            for name in due:
                try:
                    self._pool.submit(self._scheduled_check, name)
                except RuntimeError:  # the pool is shut down: we are stopping
                    return

    def _scheduled_check(self, name: str) -> None:
        cred = self._creds[name]
        try:
            with self._profile_locks[name]:
                if not self._stopping.is_set():
                    self._check(name, cred, scheduled=True)
        finally:
            with self._cond:
                self._running.discard(name)
                self._cond.notify_all()

    def _check(self, name: str, cred: ManagedCredential, scheduled: bool = False) -> CredentialHealth:
        before = self._health.get(name)
        if before is not None and self._safe(lambda now: cred.renewal_due(before, now), name, self.clock()):
            self._store(name, before.with_state(HealthState.RENEWING, checked_at=self.clock()))
        health = self._safe(cred.check, name, self.clock())
        if scheduled and self._stopping.is_set() and before is not None:
            return before  # a renewal killed by stop() is not a failure of the credential
        self._store(name, health)
        with self._cond:
            self._due[name] = cred.next_check(health, self.clock())
            self._cond.notify_all()
        return health

    def _safe(self, fn: Callable[[float], object], name: str, now: float):  # type: ignore[no-untyped-def]
        """Run a credential method; a bug there becomes a failing health, not a dead thread."""
        try:
            return fn(now)
        except Exception as exc:
            log.error("credential %s: check failed: %s", name, type(exc).__name__)
            log.debug("credential %s: check failed", name, exc_info=True)
            cred = self._creds[name]
            return cred.health(HealthState.FAILING, now, error=f"internal error ({type(exc).__name__})")

    def _store(self, name: str, health: CredentialHealth) -> None:
        with self._cond:
            old = self._health.get(name)
            if old is not None and health.renewed_at is None and old.renewed_at is not None:
                health = replace(health, renewed_at=old.renewed_at)  # the last renewal stays known
            self._health[name] = health
        if not _changed(old, health):
            return
        now = self.clock()
        level = logging.INFO if health.usable else logging.WARNING
        log.log(level, "credential %s", health.summary(now))
        self._write_status(now)
        if self.on_change is not None:
            try:
                self.on_change(name, old, health)
            except Exception:
                log.exception("credential %s: on_change callback failed", name)

    def _write_status(self, now: float) -> None:
        if self.state_dir is None:
            return
        path = status_file(self.state_dir, self.factory_id)
        doc = {
            "factory": self.factory_id,
            "time": now,
            "profiles": {n: h.as_dict(now) for n, h in self.all_health().items()},
        }
        try:
            with self._status_lock:  # workers report at the same time
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = path.with_name(path.name + ".tmp")
                tmp.write_text(json.dumps(doc, indent=1))
                os.replace(tmp, path)
        except OSError as exc:
            log.debug("cannot write %s: %s", path, exc)

    # -- helpers -------------------------------------------------------------------------------

    def _unknown(self, name: str) -> str:
        known = ", ".join(sorted(self._creds)) or "none"
        return f"auth profile {name!r} is not managed (managed: {known})"

    def _cred(self, name: str, kind: type[ManagedCredential]):  # type: ignore[no-untyped-def]
        cred = self._creds.get(name)
        if cred is None:
            raise CredentialError(self._unknown(name))
        if not isinstance(cred, kind):
            raise CredentialError(f"auth profile {name!r} is {cred.kind}, not {kind.kind or kind.__name__}")
        return cred


def _changed(old: CredentialHealth | None, new: CredentialHealth) -> bool:
    """Worth an event: a new state, a new error, or a renewal."""
    if old is None:
        return True
    return old.state != new.state or old.error != new.error or old.renewed_at != new.renewed_at
