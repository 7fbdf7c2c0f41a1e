"""Cascade allocation: split one demand over ordered tiers. Pure code: no I/O, no clock reads.

Each cycle the caller (the engine, ``apf plan``, the simulator) gives, per cascade:

* the demand (activated jobs of the cascade's WMS queue),
* each tier's observed ``TierState`` (pending, running, oldest pending, overdue pilots, backoff,
  last scale-up),
* each tier's remaining quota in pilots (``None`` = no pilot quota), computed from the ledger,

and ``allocate`` returns what each tier should do now, with the reason for every number:

1. ``unmet = demand - supply``, where supply is pending + running over all tiers. Overdue pilots
   (not started within the provisioning deadline) are written off and the tier backs off; a full
   tier's pending pilots beyond its tolerance (``full.pending``, or those older than
   ``full.oldest_pending``) do not count, so the demand they hold moves on.
2. Scale up (unmet > 0): tiers in fill order; a tier takes pilots until its cap, its quota or its
   ``full`` condition stops it; the rest goes on to the next tier only when one of the conditions
   that stopped it is in the tier's ``spill_on``; otherwise the rest waits. A backed-off tier takes
   nothing and passes its demand on (same cycle) when ``backoff`` is in its ``spill_on``.
3. Scale down (demand below all pending + running): the excess comes back from the LAST tier first. A tier absorbs its share
   of the excess even when it may not act on it (hysteresis, ``retire_running`` off), so an
   earlier (cheaper) tier is never drained while a later one still holds that capacity.
4. ``enforce_limits`` clamps every submission to the tier's cap and quota: the one place where
   limits are applied, after everything else (the engine calls it again after any per-tier
   chain).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from autopyfactory.config.policy import Cascade, Tier


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


# the spill_on name of each stopping condition
_CONDITION_STATUS = {
    "backoff": TierStatus.BACKOFF,
    "full": TierStatus.FULL,
    "quota": TierStatus.QUOTA,
    "capped": TierStatus.CAPPED,
}


@dataclass(frozen=True, slots=True)
class PolicyEvent:
    """A fact worth showing (spill, full, quota_exhausted, backoff, drain). Emitted every cycle the
    fact holds; a recorder that wants transitions compares with the previous cycle."""

    kind: str
    cascade: str
    tier: str
    n: int
    message: str
    to_tier: str | None = None

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
    demand_in: int = 0  # demand that reached this tier
    cap_room: int | None = None
    quota_left: int | None = None  # pilot quota left before this cycle (None: no pilot quota)
    # set when this cycle backed the tier off (a provisioning deadline passed): the engine stores it
    backoff_until: float | None = None
    # cancel the most recently submitted pending pilots (a full tier withdrawing the ones at the
    # back of its queue) rather than the longest-waiting ones (overdue pilots)
    cancel_newest: bool = False
    # of ``cancel``: pending pilots a full tier withdrew because later tiers took their demand
    withdrawn: int = 0

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
            "reasons": list(self.reasons),
        }


@dataclass(frozen=True, slots=True)
class CascadeAllocation:
    cascade: str
    time: float
    demand: int
    supply: int  # pending + running over the tiers (overdue pilots written off)
    unmet: int  # demand - counted supply; negative: the excess to give back
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


class _Events:
    def __init__(self, cascade: str) -> None:
        self.cascade = cascade
        self.items: list[PolicyEvent] = []

    def __call__(self, kind: str, w: _Work, n: int, message: str, to: str | None = None) -> None:
        self.items.append(PolicyEvent(kind, self.cascade, w.tier.queue, n, message, to))


@dataclass
class _Work:
    """Mutable per-tier scratch while allocating (frozen into TierAllocation at the end)."""

    tier: Tier
    state: TierState
    quota_left: int | None
    backed_off: bool = False
    written_off: int = 0
    backoff_until: float | None = None
    full: bool = False
    not_starting: int = 0
    cancel_newest: bool = False
    withdrawn: int = 0
    submit: int = 0
    cancel: int = 0
    retire: int = 0
    status: TierStatus = TierStatus.IDLE
    stopped_by: set[str] = field(default_factory=set)
    reasons: list[str] = field(default_factory=list)
    demand_in: int = 0

    @property
    def cap_room(self) -> int | None:
        if self.tier.cap is None:
            return None
        return max(0, self.tier.cap - self.state.active)

    @property
    def quota_room(self) -> int | None:
        return None if self.quota_left is None else max(0, self.quota_left)

    @property
    def supply(self) -> int:
        """Pilots that will serve demand (overdue ones are written off)."""
        return self.state.pending - self.written_off + self.state.running

    @property
    def counted(self) -> int:
        """Supply that counts when scaling up: a full tier's pending pilots beyond what it
        tolerates are not starting, so the demand they hold goes on to later tiers."""
        return self.supply - self.not_starting


def _min_room(*rooms: int | None) -> int | None:
    known = [r for r in rooms if r is not None]
    return min(known) if known else None


def allocate(
    cascade: Cascade,
    demand: int,
    states: Mapping[str, TierState],
    quota_left: Mapping[str, int | None],
    now: float,
) -> CascadeAllocation:
    """Split ``demand`` over the cascade's tiers (see the module doc). Missing states mean an
    empty tier; a missing ``quota_left`` entry means no pilot quota."""
    demand = max(0, demand)
    work = [_Work(t, states.get(t.queue, TierState()), quota_left.get(t.queue)) for t in cascade.ordered]
    event = _Events(cascade.name)

    for w in work:
        _observe(w, now, event)

    supply = sum(w.supply for w in work)
    unmet = demand - sum(w.counted for w in work)
    unallocated = 0
    if unmet > 0:
        unallocated = _scale_up(work, unmet, event, now)
    elif demand < supply:
        # give back against everything that exists, counted or not, so zero demand empties all
        unmet = demand - supply
        _scale_down(work, supply - demand, now, event)
    else:
        for w in work:
            w.reasons.append(f"demand {demand} is met")

    _enforce(work)
    tiers = tuple(
        TierAllocation(
            tier=w.tier.queue,
            submit=w.submit,
            cancel=w.cancel,
            retire=w.retire,
            status=w.status,
            reasons=tuple(w.reasons),
            stopped_by=frozenset(w.stopped_by),
            demand_in=w.demand_in,
            cap_room=w.cap_room,
            quota_left=w.quota_room,
            backoff_until=w.backoff_until,
            cancel_newest=w.cancel_newest,
            withdrawn=w.withdrawn,
        )
        for w in work
    )
    return CascadeAllocation(cascade.name, now, demand, supply, unmet, tiers, tuple(event.items), unallocated)


def _observe(w: _Work, now: float, event: _Events) -> None:
    """Backoff, overdue pilots and the full condition, from the tier's state alone."""
    tier, state = w.tier, w.state
    overdue = state.overdue
    deadline = tier.provisioning_deadline
    if (
        deadline is not None
        and overdue == 0
        and state.pending > 0
        and state.oldest_pending_since is not None
        and now - state.oldest_pending_since > deadline
    ):
        overdue = 1  # the caller only told us the oldest; at least that one is overdue
    overdue = min(overdue, state.pending)
    if state.backoff_until is not None and state.backoff_until > now:
        w.backed_off = True
        w.reasons.append(f"backed off for {state.backoff_until - now:.0f} s more")
    if overdue > 0:
        w.backed_off = True
        w.written_off = overdue
        if state.backoff_until is None or state.backoff_until <= now:
            w.backoff_until = now + tier.backoff
        w.reasons.append(
            f"{overdue} pilot(s) did not start within {deadline or 0:.0f} s: written off"
            + (", cancelled" if tier.drain.cancel_pending else "")
        )
        if tier.drain.cancel_pending:
            w.cancel = overdue
        event("backoff", w, overdue, f"{overdue} pilot(s) not started within the provisioning deadline")
    full = tier.full
    if full is not None:
        pending = state.pending - w.written_off
        if full.pending is not None and pending > full.pending:
            w.full = True
            w.not_starting = pending - full.pending
            w.reasons.append(f"full: {pending} pending > {full.pending}")
        oldest = state.oldest_pending_since
        if (
            full.oldest_pending is not None
            and oldest is not None
            and pending > 0
            and now - oldest > full.oldest_pending
        ):
            w.full = True
            w.not_starting = max(w.not_starting, min(pending, max(1, state.stale)))
            w.reasons.append(
                f"full: oldest pending waited {now - oldest:.0f} s > {full.oldest_pending:.0f} s"
            )
        if w.not_starting:
            w.reasons.append(f"{w.not_starting} pending pilot(s) not counted as supply")


def _scale_up(work: list[_Work], unmet: int, ev: _Events, now: float) -> int:
    remaining = unmet
    for i, w in enumerate(work):
        if remaining <= 0:
            w.reasons.append("no demand left for this tier")
            continue
        w.demand_in = remaining
        cap_room, quota_room = w.cap_room, w.quota_room
        blocked: set[str] = set()
        if w.backed_off:
            blocked.add("backoff")
        if w.full:
            blocked.add("full")
        if quota_room == 0:
            blocked.add("quota")
        if cap_room == 0:
            blocked.add("capped")
        # A tier that already has pilots waiting takes no more than its full condition tolerates:
        # filling it past that only makes it full next cycle and moves the demand then (churn).
        pending_room = None
        waiting = w.state.pending - w.written_off
        full = w.tier.full
        if full is not None and full.pending is not None and waiting > 0:
            pending_room = max(0, full.pending - waiting)
        hint = w.state.capacity_hint
        if full is not None and hint is not None:
            # the tier filled up at ``hint`` running before: fill it to that plus what it tolerates
            # waiting, not to its cap (which only makes it full again and moves the demand: churn)
            tolerated = full.pending or 0
            hint_room = max(0, hint + tolerated - (w.state.running + waiting))
            pending_room = hint_room if pending_room is None else min(pending_room, hint_room)
        if pending_room == 0:
            blocked.add("full")
        if blocked:
            take = 0
        else:
            room = _min_room(cap_room, quota_room, pending_room)
            take = remaining if room is None else min(remaining, room)
            if take < remaining:
                if cap_room is not None and cap_room == take:
                    blocked.add("capped")
                if quota_room is not None and quota_room == take:
                    blocked.add("quota")
                if pending_room is not None and pending_room == take:
                    blocked.add("full")
                    w.reasons.append(f"filled to what it can start: {waiting + take} pending")
        w.submit = take
        remaining -= take
        if take:
            w.reasons.append(f"takes {take} of {w.demand_in}")
        if not blocked:
            w.status = TierStatus.TAKING
            continue
        w.stopped_by = blocked
        # the status shows the strongest condition: backoff, then full, quota, cap
        w.status = next(_CONDITION_STATUS[c] for c in _CONDITION_STATUS if c in blocked)
        if "capped" in blocked:
            w.reasons.append(f"capped at {w.tier.cap} ({w.state.active + take} active)")
        if "quota" in blocked:
            w.reasons.append("quota spent for this period")
            ev("quota_exhausted", w, remaining, "quota spent for this period")
        if "full" in blocked:
            ev("full", w, w.state.pending, "tier is full: its pilots are not starting")
        spills = sorted(blocked & set(w.tier.spill_on))
        nxt = work[i + 1] if i + 1 < len(work) else None
        if spills and nxt is not None:
            w.reasons.append(f"passes {remaining} on to {nxt.tier.queue} ({', '.join(spills)})")
            ev(
                "spill",
                w,
                remaining,
                f"{remaining} spill from {w.tier.queue} ({', '.join(spills)})",
                nxt.tier.queue,
            )
            continue
        if spills:
            w.reasons.append(f"{remaining} left unmet: no tier after this one")
        else:
            held = ", ".join(sorted(blocked))
            w.reasons.append(f"holds {remaining} back: {held} is not in spill_on")
            for later in work[i + 1 :]:
                later.status = TierStatus.WAITING
                later.reasons.append(f"waiting: {w.tier.queue} is {held} and does not pass demand on")
            _withdraw_not_starting(work, now)
            return remaining
    _withdraw_not_starting(work, now)
    return max(0, remaining)


def _withdraw_not_starting(work: list[_Work], now: float) -> None:
    """A full tier's pending pilots that are not starting, whose demand later tiers took this
    cycle, are cancelled: kept, they would start later on top of the later tiers' pilots and
    the cascade would over-provision, then drain the costlier tiers again (flapping)."""
    for i, w in enumerate(work):
        if not (w.full and w.not_starting and w.tier.drain.cancel_pending):
            continue
        since, hysteresis = w.state.last_scale_up, w.tier.drain.hysteresis
        if hysteresis > 0 and since is not None and now - since < hysteresis:
            continue  # no scale-down of any kind right after a scale-up
        later = sum(x.submit for x in work[i + 1 :])
        k = min(w.not_starting, later)
        if k > 0:
            w.cancel += k
            w.withdrawn = k
            w.cancel_newest = True
            w.reasons.append(f"withdraws {k} pending pilot(s) that are not starting (their demand moved on)")


def _scale_down(work: list[_Work], excess: int, now: float, ev: _Events) -> None:
    for w in reversed(work):
        if excess <= 0:
            w.reasons.append("keeps its pilots (the excess is taken from later tiers)")
            continue
        pending = w.state.pending - w.written_off
        running = w.state.running
        share = min(excess, pending + running)
        if share == 0:
            continue
        excess -= share  # absorbed here even when not acted on: earlier tiers keep theirs
        drain = w.tier.drain
        since = w.state.last_scale_up
        if drain.hysteresis > 0 and since is not None and now - since < drain.hysteresis:
            w.status = TierStatus.HOLDING
            w.reasons.append(
                f"gives back {share} later: scaled up {now - since:.0f} s ago (< hysteresis {drain.hysteresis:.0f} s)"
            )
            continue
        cancel = min(share, pending) if drain.cancel_pending else 0
        retire = min(share - cancel, running) if drain.retire_running else 0
        w.cancel += cancel
        w.retire += retire
        left = share - cancel - retire
        parts = [f"{label} {n}" for label, n in (("cancels", cancel), ("retires", retire)) if n]
        if parts:
            w.status = TierStatus.DRAINING
            w.reasons.append(f"demand below supply: {' and '.join(parts)}")
            ev("drain", w, cancel + retire, f"gives back {cancel + retire} ({', '.join(parts)})")
        if left:
            if not parts:
                w.status = TierStatus.HOLDING
            why = "retire_running is off" if not drain.retire_running else "cancel_pending is off"
            w.reasons.append(f"{left} pilot(s) end on their own ({why})")


def _enforce(work: list[_Work]) -> None:
    for w in work:
        n, why = limit(w.tier, w.state, w.quota_left, w.submit, backed_off=w.backed_off)
        if n != w.submit:
            w.reasons.append(why or "limited")
            w.submit = n


def limit(
    tier: Tier, state: TierState, quota_left: int | None, n: int, *, backed_off: bool = False
) -> tuple[int, str | None]:
    """Clamp one tier's submission to its cap, quota and backoff. Returns (n, reason if clamped)."""
    if n <= 0:
        return 0, None if n == 0 else "no negative submissions"
    if backed_off:
        return 0, "limit: tier is backed off"
    out, why = n, None
    if tier.cap is not None and state.active + out > tier.cap:
        out = max(0, tier.cap - state.active)
        why = f"limit: cap {tier.cap} ({state.active} active)"
    if quota_left is not None and out > quota_left:
        out = max(0, quota_left)
        why = f"limit: {quota_left} left in quota"
    return out, why


def enforce_limits(
    cascade: Cascade,
    states: Mapping[str, TierState],
    quota_left: Mapping[str, int | None],
    submits: Mapping[str, int],
    now: float,
) -> dict[str, tuple[int, str | None]]:
    """The final step: clamp proposed submissions (from the allocation, or a tier's own sched
    chain applied on top of it) so no cap, quota or backoff is ever exceeded. Returns, per tier
    in ``submits``, (allowed n, reason when it was clamped)."""
    out: dict[str, tuple[int, str | None]] = {}
    tiers = {t.queue: t for t in cascade.tiers}
    for name, n in submits.items():
        tier = tiers.get(name)
        if tier is None:
            out[name] = (0, f"limit: {name} is not a tier of cascade {cascade.name}")
            continue
        state = states.get(name, TierState())
        backed_off = state.backoff_until is not None and state.backoff_until > now
        out[name] = limit(tier, state, quota_left.get(name), n, backed_off=backed_off)
    return out


def backoff_after_error(tier: Tier, now: float) -> float:
    """When a backend refuses for capacity or quota, the tier is skipped until this time."""
    return now + tier.backoff
