"""Cascade allocation: split one demand over ordered tiers. Pure code: no I/O, no clock reads.

Each cycle the caller (the engine, ``apf plan``, the simulator) gives, per cascade:

* the demand (activated jobs of the cascade's WMS queue),
* each tier's observed ``TierState`` (pending, running, oldest pending, overdue pilots, backoff,
  last scale-up, learned capacity, and the conditions already reported for it),
* each tier's remaining quota in pilots (``None`` = no pilot quota), computed from the ledger,

and ``allocate`` returns what each tier should do now, with the reason for every number:

1. ``unmet = demand + headroom - supply``, where supply is pending + running over all tiers and
   the headroom (``Cascade.headroom``, none without demand) covers pilots ending between cycles. Overdue pilots
   (not started within the provisioning deadline) are written off and the tier backs off; a full
   tier's pending pilots beyond its tolerance (``full.pending``, or those older than
   ``full.oldest_pending``) do not count, so the demand they hold moves on.
2. Scale up (unmet > 0): tiers in fill order, tiers of equal priority as one group that splits
   the demand by ``weight`` (largest remainder). A tier takes pilots until its cap, its quota or
   its ``full`` condition stops it (a tier found full takes only up to the capacity it showed).
   The rest goes on to the next group once every tier of the group stopped on a condition in its
   ``spill_on``; otherwise the rest waits. A backed-off tier takes nothing (same cycle re-drive
   when ``backoff`` is in its ``spill_on``).
3. Scale down (demand below all pending + running): the excess comes back from the LAST group
   first. A tier gives back only what its ``drain`` allows; what it may never give back (running
   pilots without ``retire_running``) ends on its own and still shields earlier tiers. A tier held
   by ``drain.hysteresis`` holds the whole scale-down: no earlier tier gives anything back in its
   place until it may give its share.
4. ``enforce_limits`` clamps every submission to the tier's cap and quota: the one place where
   limits are applied, after everything else (the engine calls it again after any per-tier
   chain).

Events (``spill``, ``full``, ``quota_exhausted``, ``backoff``) are reported when a condition
starts to hold, not every cycle it holds: the caller passes the conditions that hold from the
previous cycle (``TierState.conditions``) and keeps the new ones (``TierAllocation.conditions``).
A condition is re-evaluated only when the allocation sees it: a tier that demand did not reach
this cycle keeps its conditions. ``drain`` is an action and is reported whenever pilots are given
back.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from fractions import Fraction

from autopyfactory.config.policy import Cascade, Tier
from autopyfactory.decide.allocation import (
    CONDITION_STATUS,
    CascadeAllocation,
    PolicyEvent,
    TierAllocation,
    TierState,
    TierStatus,
)


class _Events:
    def __init__(self, cascade: str, now: float) -> None:
        self.cascade = cascade
        self.now = now
        self.items: list[PolicyEvent] = []

    def __call__(self, kind: str, w: _Work, n: int, message: str, to: str | None = None) -> None:
        self.items.append(PolicyEvent(kind, self.cascade, w.tier.queue, n, message, to, self.now))


@dataclass
class _Work:
    """Mutable per-tier scratch while allocating (frozen into TierAllocation at the end)."""

    tier: Tier
    state: TierState
    quota_left: int | None
    backed_off: bool = False
    written_off: int = 0
    backoff_until: float | None = None
    full: bool = False  # the full condition holds on what was observed
    not_starting: int = 0
    cancel_newest: bool = False
    withdrawn: int = 0
    submit: int = 0
    cancel: int = 0
    retire: int = 0
    status: TierStatus = TierStatus.IDLE
    stopped_by: set[str] = field(default_factory=set)
    # limits this cycle's take reached (a tier may reach one and still take all that reached it)
    at_limit: set[str] = field(default_factory=set)
    full_why: str = ""  # what the full stop means, for the event
    reasons: list[str] = field(default_factory=list)
    demand_in: int = 0
    spilled: int = 0  # demand passed on to the next group this cycle
    spill_to: str | None = None

    @property
    def cap_room(self) -> int | None:
        if self.tier.cap is None:
            return None
        return max(0, self.tier.cap - self.state.active)

    @property
    def quota_room(self) -> int | None:
        return None if self.quota_left is None else max(0, self.quota_left)

    @property
    def waiting(self) -> int:
        """Pending pilots not written off."""
        return self.state.pending - self.written_off

    @property
    def supply(self) -> int:
        """Pilots that will serve demand (overdue ones are written off)."""
        return self.waiting + self.state.running

    @property
    def counted(self) -> int:
        """Supply that counts when scaling up: a full tier's pending pilots beyond what it
        tolerates are not starting, so the demand they hold goes on to later tiers."""
        return self.supply - self.not_starting

    def held_by_hysteresis(self, now: float) -> bool:
        since, hysteresis = self.state.last_scale_up, self.tier.drain.hysteresis
        return hysteresis > 0 and since is not None and now - since < hysteresis


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
    groups = [
        [_Work(t, states.get(t.queue, TierState()), quota_left.get(t.queue)) for t in group]
        for group in cascade.groups
    ]
    work = [w for group in groups for w in group]
    event = _Events(cascade.name, now)

    for w in work:
        _observe(w, now)

    supply = sum(w.supply for w in work)
    # the pilots wanted: the demand plus the cascade's headroom (none without demand)
    headroom = cascade.headroom_for(demand)
    target = demand + headroom
    unmet = target - sum(w.counted for w in work)
    unallocated = 0
    if unmet > 0:
        unallocated = _scale_up(groups, unmet, now)
    elif target < supply:
        # give back against everything that exists, counted or not, so zero demand empties all
        unmet = target - supply
        _scale_down(groups, supply - target, now, event)
    else:
        met = f"demand {demand}" + (f" + headroom {headroom}" if headroom else "")
        for w in work:
            w.reasons.append(f"{met} is met")

    _enforce(work)
    conditions = _conditions(work, event)
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
            observed_full=w.full,
            conditions=held,
        )
        for w, held in zip(work, conditions, strict=True)
    )
    return CascadeAllocation(cascade.name, now, demand, supply, unmet, tiers, tuple(event.items), unallocated)


def _observe(w: _Work, now: float) -> None:
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
    full = tier.full
    if full is not None:
        pending = w.waiting
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


def refill_tolerance(tier: Tier) -> int:
    """Pending pilots a tier found full may hold beyond the capacity it showed. Only a pure
    ``full.pending`` condition tolerates waiting pilots; with ``full.oldest_pending`` any pilot
    that cannot start soon makes the tier full again, so it is refilled to its capacity only
    (otherwise it churns: refilled, found full, withdrawn, refilled)."""
    full = tier.full
    if full is None or full.oldest_pending is not None:
        return 0
    return full.pending or 0


def _limits(w: _Work) -> tuple[set[str], dict[str, int | None]]:
    """(conditions that stop the tier before it takes anything, each limit's room)."""
    cap_room, quota_room = w.cap_room, w.quota_room
    blocked: set[str] = set()
    if w.backed_off:
        blocked.add("backoff")
    if w.full:
        blocked.add("full")
        w.full_why = "observed"
    if quota_room == 0:
        blocked.add("quota")
    if cap_room == 0:
        blocked.add("capped")
    # A tier that already has pilots waiting takes no more than its full condition tolerates:
    # filling it past that only makes it full next cycle and moves the demand then (churn).
    pending_room = None
    waiting = w.waiting
    full = w.tier.full
    if full is not None and full.pending is not None and waiting > 0:
        pending_room = max(0, full.pending - waiting)
        if pending_room == 0 and not w.full_why:
            w.full_why = "tolerance"
    hint = w.state.capacity_hint
    if full is not None and hint is not None:
        # the tier filled up at ``hint`` running before: fill it to what it showed it can start,
        # not to its cap (which only makes it full again and moves the demand: churn)
        hint_room = max(0, hint + refill_tolerance(w.tier) - (w.state.running + waiting))
        if pending_room is None or hint_room < pending_room:
            pending_room = hint_room
            if hint_room == 0 and w.full_why != "observed":
                w.full_why = "capacity"
    if pending_room == 0:
        blocked.add("full")
    return blocked, {"capped": cap_room, "quota": quota_room, "full": pending_room}


def _scale_up(groups: list[list[_Work]], unmet: int, now: float) -> int:
    remaining = unmet
    work = [w for g in groups for w in g]
    for gi, group in enumerate(groups):
        if remaining <= 0:
            for w in group:
                w.reasons.append("no demand left for this tier")
            continue
        limits = []
        for w in group:
            w.demand_in = remaining
            blocked, rooms = _limits(w)
            room = 0 if blocked else _min_room(*rooms.values())
            limits.append((blocked, rooms, room))
        takes = weighted_split(
            remaining, [(w.tier.weight, room) for w, (_, _, room) in zip(group, limits, strict=True)]
        )
        for w, take, (blocked, rooms, _) in zip(group, takes, limits, strict=True):
            w.submit = take
            w.at_limit = set(blocked) | {c for c, r in rooms.items() if r is not None and r == take}
            if take:
                share = f" (weight {w.tier.weight:g} of {sum(x.tier.weight for x in group):g})"
                w.reasons.append(f"takes {take} of {remaining}" + (share if len(group) > 1 else ""))
                if "full" in w.at_limit and w.full_why != "observed":
                    w.reasons.append(f"filled to what it can start: {w.waiting + take} pending")
        remaining -= sum(takes)
        if remaining <= 0:
            for w, (blocked, _, _) in zip(group, limits, strict=True):
                if blocked:
                    _stop(w, blocked)
                else:
                    w.status = TierStatus.TAKING
            continue
        # the group is stopped: every tier of it is at one of its limits
        for w in group:
            _stop(w, w.at_limit)
        nxt = groups[gi + 1][0] if gi + 1 < len(groups) else None
        if all(w.stopped_by & set(w.tier.spill_on) for w in group):
            for w in group:
                spills = ", ".join(sorted(w.stopped_by & set(w.tier.spill_on)))
                if nxt is None:
                    w.reasons.append(f"{remaining} left unmet: no tier after this one")
                    continue
                w.spilled, w.spill_to = remaining, nxt.tier.queue
                w.reasons.append(f"passes {remaining} on to {nxt.tier.queue} ({spills})")
            continue
        holders = [w for w in group if not w.stopped_by & set(w.tier.spill_on)]
        for w in holders:
            held = ", ".join(sorted(w.stopped_by))
            w.reasons.append(f"holds {remaining} back: {held} is not in spill_on")
        names = ", ".join(f"{w.tier.queue} is {', '.join(sorted(w.stopped_by))}" for w in holders)
        for later in (w for g in groups[gi + 1 :] for w in g):
            later.status = TierStatus.WAITING
            later.reasons.append(f"waiting: {names} and does not pass demand on")
        _withdraw_not_starting(work, now)
        return remaining
    _withdraw_not_starting(work, now)
    return max(0, remaining)


def _stop(w: _Work, conditions: set[str]) -> None:
    w.stopped_by = set(conditions)
    # the status shows the strongest condition: backoff, then full, quota, cap
    w.status = next(CONDITION_STATUS[c] for c in CONDITION_STATUS if c in conditions)
    if "capped" in conditions:
        w.reasons.append(f"capped at {w.tier.cap} ({w.state.active + w.submit} active)")
    if "quota" in conditions:
        w.reasons.append("quota spent for this period")


def weighted_split(total: int, members: Sequence[tuple[float, int | None]]) -> list[int]:
    """Split ``total`` over ``members`` (weight, room; room None = unlimited) in proportion to the
    weights, largest remainder, ties to the earlier member; a member never gets more than its
    room, and what it cannot take goes to the others by weight. Takes less than ``total`` only
    when every member is at its room."""
    out = [0] * len(members)
    open_ = [i for i, (_, room) in enumerate(members) if room is None or room > 0]
    left = total
    while left > 0 and open_:
        weights = [Fraction(members[i][0]) for i in open_]
        whole = sum(weights)
        exact = [left * w / whole for w in weights]
        parts = [int(e) for e in exact]
        for k in sorted(range(len(open_)), key=lambda k: (parts[k] - exact[k], k))[: left - sum(parts)]:
            parts[k] += 1
        saturated = set()
        for k, i in enumerate(open_):
            room = members[i][1]
            give = parts[k] if room is None else min(parts[k], room - out[i])
            out[i] += give
            left -= give
            if room is not None and out[i] >= room:
                saturated.add(i)
        if not saturated:
            break
        open_ = [i for i in open_ if i not in saturated]
    return out


def _withdraw_not_starting(work: list[_Work], now: float) -> None:
    """A full tier's pending pilots that are not starting, whose demand later tiers took this
    cycle, are cancelled: kept, they would start later on top of the later tiers' pilots and
    the cascade would over-provision, then drain the costlier tiers again (flapping)."""
    for i, w in enumerate(work):
        if not (w.full and w.not_starting and w.tier.drain.cancel_pending):
            continue
        if w.held_by_hysteresis(now):
            continue  # no scale-down of any kind right after a scale-up
        later = sum(x.submit for x in work[i + 1 :])
        k = min(w.not_starting, later)
        if k > 0:
            w.cancel += k
            w.withdrawn = k
            w.cancel_newest = True
            w.reasons.append(f"withdraws {k} pending pilot(s) that are not starting (their demand moved on)")


def _scale_down(groups: list[list[_Work]], excess: int, now: float, ev: _Events) -> None:
    held_by: list[str] = []  # later tiers held by hysteresis: earlier ones give nothing back
    for group in reversed(groups):
        if excess <= 0:
            for w in group:
                w.reasons.append("keeps its pilots (the excess is taken from later tiers)")
            continue
        if held_by:
            for w in group:
                if w.supply:
                    w.status = TierStatus.HOLDING
                w.reasons.append(f"keeps its pilots: {', '.join(held_by)} holds the scale-down (hysteresis)")
            continue
        supplies = [w.supply for w in group]
        give = min(excess, sum(supplies))
        if give == 0:
            continue
        excess -= give
        # what the group keeps is split by weight, so its tiers stay in proportion
        keeps = weighted_split(
            sum(supplies) - give, [(w.tier.weight, s) for w, s in zip(group, supplies, strict=True)]
        )
        for w, supply, keep in zip(group, supplies, keeps, strict=True):
            share = supply - keep
            if share == 0:
                continue
            if w.held_by_hysteresis(now):
                since = w.state.last_scale_up or now
                w.status = TierStatus.HOLDING
                w.reasons.append(
                    f"gives back {share} later: scaled up {now - since:.0f} s ago "
                    f"(< hysteresis {w.tier.drain.hysteresis:.0f} s)"
                )
                held_by.append(w.tier.queue)
                continue
            _give_back(w, share, ev)


def _give_back(w: _Work, share: int, ev: _Events) -> None:
    drain = w.tier.drain
    cancel = min(share, w.waiting) if drain.cancel_pending else 0
    retire = min(share - cancel, w.state.running) if drain.retire_running else 0
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


def _conditions(work: list[_Work], ev: _Events) -> list[frozenset[str]]:
    """The conditions that hold after this cycle, per tier, reporting each that starts to hold.

    A condition is cleared only on evidence: a tier reached by demand that took it with room to
    spare, or a tier left with no pilots. A tier the demand did not reach keeps its conditions
    (its pilots ending and being replaced is not a change)."""
    out = []
    for i, w in enumerate(work):
        before = w.state.conditions
        now: set[str] = set(before)
        reached = w.demand_in > 0
        empty = w.state.active == 0 and w.submit == 0
        later_empty = all(x.state.active == 0 and x.submit == 0 for x in work[i + 1 :])

        if w.backed_off:
            if "backoff" not in before and w.written_off:
                ev(
                    "backoff",
                    w,
                    w.written_off,
                    f"{w.written_off} pilot(s) not started within the provisioning deadline",
                )
            now.add("backoff")
        else:
            now.discard("backoff")

        quota = w.quota_room
        if quota is not None and quota - w.submit <= 0:
            if "quota" not in before:
                turned_away = max(0, w.demand_in - w.submit)
                ev("quota_exhausted", w, turned_away, "quota spent for this period")
            now.add("quota")
        else:
            now.discard("quota")

        if w.full or "full" in w.stopped_by:
            if "full" not in before:
                if w.full_why == "capacity":
                    hint = w.state.capacity_hint or 0
                    ev("full", w, hint, f"tier is at the capacity it showed ({hint} running)")
                elif w.full_why == "tolerance":
                    ev(
                        "full",
                        w,
                        w.waiting + w.submit,
                        f"tier has {w.waiting + w.submit} pending, the most it tolerates",
                    )
                else:
                    ev(
                        "full",
                        w,
                        w.waiting,
                        f"tier is full: {w.waiting} pending, its pilots are not starting",
                    )
            now.add("full")
        elif (reached and "full" not in w.at_limit) or empty:
            now.discard("full")

        if w.spilled:
            if "spill" not in before:
                ev(
                    "spill",
                    w,
                    w.spilled,
                    f"{w.spilled} spill from {w.tier.queue} ({', '.join(sorted(w.stopped_by & set(w.tier.spill_on)))})",
                    w.spill_to,
                )
            now.add("spill")
        elif (reached and not (w.at_limit & set(w.tier.spill_on))) or (not reached and later_empty):
            now.discard("spill")
        out.append(frozenset(now))
    return out


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
