"""Cascades in the engine: observe each tier, allocate the demand (pure), record, act.

The allocation itself is ``decide.policy.allocate`` (pure). This module builds its inputs from
what the engine observed (tier states from batch snapshots, quota left from the ledger, the
factory's memory of backoffs and scale-ups), turns its output into per-tier plans, and keeps the
cascade's memory between cycles.
"""

from __future__ import annotations

from collections.abc import Sequence

from autopyfactory.config.policy import Tier
from autopyfactory.decide.policy import CascadeAllocation, PolicyEvent, TierAllocation, TierState
from autopyfactory.decide.retire import pick_idle, pick_running
from autopyfactory.engine.state import CascadeRuntime
from autopyfactory.model import Action, Cancel, Decision, Pilot, PilotState, Retire, Step, Submit, Supply


def tier_state(
    tier: Tier, supply: Supply, pilots: Sequence[Pilot], now: float, cr: CascadeRuntime
) -> TierState:
    """What the allocation needs to know about one tier, from its batch snapshot and our memory."""
    deadline = tier.provisioning_deadline
    stale_after = tier.full.oldest_pending if tier.full is not None else None
    oldest = supply.oldest_pending_since
    overdue = stale = 0
    if supply.pending + supply.held and (supply.held or deadline is not None or stale_after is not None):
        # per-pilot ages are needed (held pilots wait too; the supply's oldest counts pending ones)
        waiting = [
            p.submitted_at
            for p in pilots
            if p.submitted_at is not None and p.state in (PilotState.PENDING, PilotState.HELD)
        ]
        oldest = min(waiting) if waiting else None
        if deadline is not None:
            overdue = sum(1 for t in waiting if now - t > deadline)
        if stale_after is not None:
            stale = sum(1 for t in waiting if now - t > stale_after)
    elif not supply.pending:
        oldest = None
    backoff = cr.backoff_until.get(tier.queue)
    return TierState(
        pending=supply.pending + supply.held,
        running=supply.running,
        retiring=supply.retiring,
        oldest_pending_since=oldest,
        overdue=overdue,
        stale=stale,
        backoff_until=backoff if backoff is not None and backoff > now else None,
        last_scale_up=cr.last_scale_up.get(tier.queue),
        capacity_hint=_capacity_hint(cr, tier.queue, supply.running),
        conditions=frozenset(c for c, t in cr.last_event_keys if t == tier.queue),
    )


def _capacity_hint(cr: CascadeRuntime, queue: str, running: int) -> int | None:
    hint = cr.capacity_hint.get(queue)
    if hint is not None and running > hint:
        cr.capacity_hint[queue] = hint = running  # more slots than we thought: learn it
    return hint


def learn_capacity(cr: CascadeRuntime, alloc: CascadeAllocation, states: dict[str, TierState]) -> None:
    """Remember what an allocation showed: a tier whose full condition held on what was observed
    (its pilots are not starting) can run what it runs now, whatever combination of conditions
    declared it full; and the conditions that hold now, as (condition, tier) pairs in
    ``last_event_keys`` (the next allocation reports only those that start to hold)."""
    for t in alloc.tiers:
        state = states.get(t.tier)
        if state is not None and t.observed_full and state.running > 0:
            cr.capacity_hint[t.tier] = state.running
    cr.last_event_keys = frozenset((c, t.tier) for t in alloc.tiers for c in t.conditions)


def tier_n(t: TierAllocation) -> int:
    """One number per tier for the decision record: what it gains (+) or gives back (-)."""
    return t.submit if t.submit else -(t.cancel + t.retire)


def tier_decision(alloc: CascadeAllocation, t: TierAllocation, supply: Supply, now: float) -> Decision:
    step = Step(f"Cascade:{alloc.cascade}", t.demand_in, tier_n(t), f"{t.status}: {t.reason}")
    return Decision(
        t.tier,
        tier_n(t),
        (step,),
        now,
        ready=t.demand_in,
        pending=supply.pending + supply.held,
        running=supply.running,
    )


def cascade_decision(cr: CascadeRuntime, alloc: CascadeAllocation, states: dict[str, TierState]) -> Decision:
    steps = tuple(
        Step(t.tier, t.demand_in, tier_n(t), f"{t.status}: {t.reason}" if t.reason else str(t.status))
        for t in alloc.tiers
    )
    return Decision(
        cr.label,
        alloc.unmet,
        steps,
        alloc.time,
        ready=alloc.demand,
        pending=sum(s.pending for s in states.values()),
        running=sum(s.running for s in states.values()),
    )


def tier_actions(t: TierAllocation, pilots: Sequence[Pilot], killorder: str) -> tuple[Action, ...]:
    """Which pilots the counts mean: the longest-waiting pending ones first (overdue go first),
    running ones in the queue's killorder."""
    actions: list[Action] = []
    if t.submit > 0:
        actions.append(Submit(t.tier, t.submit))
    cancel = pick_idle(pilots, t.cancel, newest_first=t.cancel_newest)
    if cancel:
        actions.append(Cancel(t.tier, tuple(cancel)))
    retire = pick_running(pilots, t.retire, killorder)
    if retire:
        actions.append(Retire(t.tier, tuple(retire)))
    return tuple(actions)


def new_events(cr: CascadeRuntime, events: Sequence[PolicyEvent]) -> list[PolicyEvent]:
    """The events to record: the allocation reports each condition once, when it starts to hold
    (it reads the conditions that hold from ``TierState.conditions``, kept by ``learn_capacity``),
    and every drain; each event carries its numbers (``n``, ``to``)."""
    return list(events)
