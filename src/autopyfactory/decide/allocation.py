"""The cascade allocation's input and output: what each tier was observed to be (``TierState``),
what it should do now and why (``TierAllocation``, ``CascadeAllocation``), and the events reported
(``PolicyEvent``). Plain frozen data; the allocation itself is ``decide.policy``."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


@dataclass(frozen=True, slots=True)
class TierState:
    """What the caller observed for one tier (its queue's pilots and the factory's memory)."""

    pending: int = 0  # held pilots count as pending
    running: int = 0
    retiring: int = 0  # draining: still hold resources (count against the cap), not supply
    oldest_pending_since: float | None = None  # submit time of the longest-waiting pending pilot
    overdue: int = 0  # pending pilots older than the tier's provisioning deadline
    stale: int = 0  # pending pilots that waited longer than the tier's full.oldest_pending
    backoff_until: float | None = None  # set by the engine after a capacity/quota error
    last_scale_up: float | None = None  # time of the tier's last submission
    # running pilots when the tier last counted as full: its observed capacity (None: unknown)
    capacity_hint: int | None = None
    # conditions reported for this tier that still hold (full, quota, spill, backoff): events are
    # reported when a condition starts to hold
    conditions: frozenset[str] = frozenset()

    @property
    def active(self) -> int:
        return self.pending + self.running + self.retiring


class TierStatus(StrEnum):
    IDLE = "idle"  # nothing asked of it
    TAKING = "taking"  # took all the demand that reached it
    CAPPED = "capped"
    FULL = "full"
    QUOTA = "out of quota"
    BACKOFF = "backed off"
    WAITING = "waiting"  # an earlier tier holds the demand back
    DRAINING = "draining"
    HOLDING = "holding"  # should give capacity back but may not yet (hysteresis, no retire)


# the spill_on name of each stopping condition, strongest first (the status shows that one)
CONDITION_STATUS = {
    "backoff": TierStatus.BACKOFF,
    "full": TierStatus.FULL,
    "quota": TierStatus.QUOTA,
    "capped": TierStatus.CAPPED,
}

# conditions remembered between cycles (events are reported when one starts to hold)
CONDITIONS = ("backoff", "full", "quota", "spill")


@dataclass(frozen=True, slots=True)
class PolicyEvent:
    """A change worth showing: a condition that starts to hold (``spill``, ``full``,
    ``quota_exhausted``, ``backoff``) or pilots given back (``drain``). ``n`` is the number the
    message is about (demand passed on, pilots waiting, pilots given back); ``to_tier`` the tier a
    spill goes to."""

    kind: str
    cascade: str
    tier: str
    n: int
    message: str
    to_tier: str | None = None
    time: float = 0.0

    def as_dict(self) -> dict[str, object]:
        out: dict[str, object] = {"kind": self.kind, "cascade": self.cascade, "tier": self.tier, "n": self.n}
        if self.to_tier is not None:
            out["to"] = self.to_tier
        out["message"] = self.message
        return out


@dataclass(frozen=True, slots=True)
class TierAllocation:
    """What one tier should do now. ``cancel``/``retire`` are counts: the engine picks the pilots
    (longest-waiting pending first, so overdue ones go first; running ones in killorder)."""

    tier: str
    submit: int = 0
    cancel: int = 0
    retire: int = 0
    status: TierStatus = TierStatus.IDLE
    reasons: tuple[str, ...] = ()
    stopped_by: frozenset[str] = frozenset()  # capped / full / quota / backoff
    demand_in: int = 0  # demand that reached this tier (its group)
    cap_room: int | None = None
    quota_left: int | None = None  # pilot quota left before this cycle (None: no pilot quota)
    # set when this cycle backed the tier off (a provisioning deadline passed): the engine stores it
    backoff_until: float | None = None
    # cancel the most recently submitted pending pilots (a full tier withdrawing the ones at the
    # back of its queue) rather than the longest-waiting ones (overdue pilots)
    cancel_newest: bool = False
    # of ``cancel``: pending pilots a full tier withdrew because later tiers took their demand
    withdrawn: int = 0
    # the tier's full condition held on what was observed (its pilots are not starting): its
    # running count is the capacity it showed
    observed_full: bool = False
    # the conditions that hold after this cycle: pass them back as ``TierState.conditions``
    conditions: frozenset[str] = frozenset()

    @property
    def reason(self) -> str:
        return "; ".join(self.reasons)

    def as_dict(self) -> dict[str, object]:
        return {
            "tier": self.tier,
            "status": str(self.status),
            "submit": self.submit,
            "cancel": self.cancel,
            "retire": self.retire,
            "demand_in": self.demand_in,
            "cap_room": self.cap_room,
            "quota_left": self.quota_left,
            "stopped_by": sorted(self.stopped_by),
            "backoff_until": self.backoff_until,
            "conditions": sorted(self.conditions),
            "reasons": list(self.reasons),
        }


@dataclass(frozen=True, slots=True)
class CascadeAllocation:
    cascade: str
    time: float
    demand: int
    supply: int  # pending + running over the tiers (overdue pilots written off)
    unmet: int  # demand + headroom - counted supply; negative: the excess to give back
    tiers: tuple[TierAllocation, ...]  # in fill order
    events: tuple[PolicyEvent, ...] = ()
    unallocated: int = 0  # demand no tier took this cycle (waiting or nowhere to spill)

    def tier(self, name: str) -> TierAllocation:
        for t in self.tiers:
            if t.tier == name:
                return t
        raise KeyError(name)

    @property
    def submits(self) -> dict[str, int]:
        return {t.tier: t.submit for t in self.tiers}

    def as_dict(self) -> dict[str, object]:
        return {
            "cascade": self.cascade,
            "time": self.time,
            "demand": self.demand,
            "supply": self.supply,
            "unmet": self.unmet,
            "unallocated": self.unallocated,
            "tiers": [t.as_dict() for t in self.tiers],
            "events": [e.as_dict() for e in self.events],
        }

    def describe(self) -> list[str]:
        """Human lines for ``apf plan``/``apf explain``."""
        lines = [
            f"cascade {self.cascade}: demand {self.demand}, supply {self.supply}, "
            + (f"unmet {self.unmet}" if self.unmet >= 0 else f"excess {-self.unmet}")
            + (f", unallocated {self.unallocated}" if self.unallocated else "")
        ]
        for t in self.tiers:
            acts = [
                f"{label} {n}"
                for label, n in (("submit", t.submit), ("cancel", t.cancel), ("retire", t.retire))
                if n
            ]
            limits = []
            if t.cap_room is not None:
                limits.append(f"cap room {t.cap_room}")
            if t.quota_left is not None:
                limits.append("out of quota" if t.quota_left <= 0 else f"quota left {t.quota_left}")
            lines.append(
                f"  {t.tier}: {t.status}"
                + (f" -> {', '.join(acts)}" if acts else "")
                + f" ({t.reason})"
                + (f" [{', '.join(limits)}]" if limits else "")
            )
        return lines
