"""Health of a credential profile, and the pure gate a queue's submissions pass through.

States:

* ``ok``        usable, and not due for renewal
* ``renewing``  a renewal is running (the previous health's time left still applies)
* ``expiring``  usable, but below its renewal threshold and not renewed (``renew = False``, a token
                written by another tool, or a VOMS server that grants less than asked)
* ``failing``   the last check or renewal failed (the error says why); submissions stop
* ``expired``   no time left, or no usable credential at all; submissions stop

The error text never holds secret values (passphrases, tokens, keys): it is built from our own
words and tool output that has been scrubbed of the profile's secrets.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, replace
from enum import StrEnum


class HealthState(StrEnum):
    OK = "ok"
    RENEWING = "renewing"
    EXPIRING = "expiring"
    FAILING = "failing"
    EXPIRED = "expired"

    @property
    def usable(self) -> bool:
        """A queue may submit with a credential in this state."""
        return self not in (HealthState.FAILING, HealthState.EXPIRED)


@dataclass(frozen=True, slots=True)
class CredentialHealth:
    """One profile's health at ``checked_at``. ``expires_at`` is None when the credential has no
    end (SSH and cloud keys, opaque tokens)."""

    name: str
    kind: str  # X509, Token, SSH, CloudKey
    state: HealthState
    checked_at: float
    expires_at: float | None = None
    error: str | None = None
    detail: str | None = None  # identity, FQANs, file: facts an operator wants, no secrets
    renewed_at: float | None = None

    def seconds_left(self, now: float) -> float | None:
        return None if self.expires_at is None else self.expires_at - now

    @property
    def usable(self) -> bool:
        return self.state.usable

    def with_state(self, state: HealthState, **changes: object) -> CredentialHealth:
        return replace(self, state=state, **changes)  # type: ignore[arg-type]

    def summary(self, now: float) -> str:
        """One line for status, events and e-mails."""
        left = self.seconds_left(now)
        text = f"{self.name} ({self.kind}): {self.state.value}"
        if left is not None:
            text += f", {format_seconds(left)} left" if left > 0 else f", expired {format_seconds(-left)} ago"
        if self.error:
            text += f": {self.error}"
        return text

    def as_dict(self, now: float) -> dict[str, object]:
        out = asdict(self)
        out["state"] = self.state.value
        out["seconds_left"] = self.seconds_left(now)
        return out


def format_seconds(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    if seconds >= 86400:
        return f"{seconds // 86400}d{(seconds % 86400) // 3600}h"
    if seconds >= 3600:
        return f"{seconds // 3600}h{(seconds % 3600) // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds}s"


def gate(profile_names: Iterable[str], healths: Mapping[str, CredentialHealth], now: float) -> str | None:
    """Why a queue that uses ``profile_names`` must not submit now, or None when it may.

    Pure: the engine calls it with the manager's ``all_health()`` and its snapshot time. A profile
    with no health (not managed, e.g. no manager runs) does not stop the queue; a profile that is
    failing or expired does, and so does any credential with no time left whatever its state.
    """
    reasons = []
    for name in dict.fromkeys(profile_names):
        health = healths.get(name)
        if health is None:
            continue
        left = health.seconds_left(now)
        if not health.usable or (left is not None and left <= 0):
            reasons.append(health.summary(now))
    if not reasons:
        return None
    return "credential " + "; ".join(reasons)
