"""What every managed credential provides to the manager, and file helpers they share."""

from __future__ import annotations

import contextlib
import grp
import os
import pwd
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

from autopyfactory.credentials.commands import Runner
from autopyfactory.credentials.health import CredentialHealth, HealthState


class ManagedCredential(ABC):
    """One auth.conf profile under the manager's care.

    ``inspect`` is cheap (reads files, no tools, no network) and runs at start so health is known
    at once; ``check`` may renew and runs on the manager's workers, one at a time per profile.
    """

    kind: ClassVar[str] = ""

    def __init__(self, name: str, options: Any, runner: Runner, period: float = 3600.0) -> None:
        self.name = name
        self.options = options
        self.runner = runner
        self.period = period  # [Factory] authmanager.sleep, for kinds without a checktime

    @abstractmethod
    def inspect(self, now: float) -> CredentialHealth:
        """Health from what is on disk now."""

    def check(self, now: float) -> CredentialHealth:
        """Inspect, renew when due and possible, and return the resulting health."""
        return self.inspect(now)

    def renewal_due(self, health: CredentialHealth, now: float) -> bool:
        """Whether ``check`` would renew (the manager shows ``renewing`` meanwhile)."""
        return False

    def next_check(self, health: CredentialHealth, now: float) -> float:
        """When to check again: every ``period`` unless the kind has a schedule of its own."""
        return now + self.period

    def secrets(self) -> tuple[str, ...]:
        """Values that must never appear in output or errors (scrubbed from tool output)."""
        return ()

    def health(self, state: HealthState, now: float, **fields: Any) -> CredentialHealth:
        return CredentialHealth(name=self.name, kind=self.kind, state=state, checked_at=now, **fields)


def expand(path: str | None) -> Path | None:
    return Path(path).expanduser() if path else None


@contextlib.contextmanager
def staged_file(target: Path) -> Iterator[Path]:
    """A private temporary path next to ``target`` (same file system, so ``os.replace`` is atomic);
    removed unless the caller moved it into place."""
    target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".new", dir=target.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def resolve_owner(owner: str) -> tuple[int, int]:
    """``user``, ``user:group``, or numeric ids -> (uid, gid). Raises ValueError naming the unknown one."""
    user, _, group = owner.partition(":")
    try:
        entry = pwd.getpwuid(int(user)) if user.isdigit() else pwd.getpwnam(user)
    except KeyError:
        raise ValueError(f"owner {user!r} is not a user on this machine") from None
    gid = entry.pw_gid
    if group:
        try:
            gid = int(group) if group.isdigit() else grp.getgrnam(group).gr_gid
        except KeyError:
            raise ValueError(f"group {group!r} does not exist on this machine") from None
    return entry.pw_uid, gid


def install_private(tmp: Path, target: Path, owner: str | None) -> None:
    """Mode 0600, optional chown, then an atomic rename over ``target``. Raises OSError/ValueError."""
    os.chmod(tmp, 0o600)
    if owner:
        uid, gid = resolve_owner(owner)
        os.chown(tmp, uid, gid)
    os.replace(tmp, target)
