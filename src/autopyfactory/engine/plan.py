"""The plan stage: pure functions from (snapshot, config, memory) to plans.

No store, no clock (the snapshot's time is the time), no backend, no network, no logging, and no
writes: memory comes in and a new memory goes out (``QueueMemory`` is immutable; a cascade's
memory is planned on a copy). Every number is explained by steps and reasons, so ``apf explain``
can show what the factory acted on.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

from autopyfactory.decide.base import SchedContext, run_chain
from autopyfactory.decide.cancel import idle_cancellations, with_idle_cancel
from autopyfactory.decide.policy import TierState, allocate
from autopyfactory.decide.retire import select_for_retire
from autopyfactory.engine.cascade import (
    cascade_decision,
    learn_capacity,
    new_events,
    tier_actions,
    tier_decision,
    tier_state,
)
from autopyfactory.engine.snapshot import CascadeObservation, QueueObservation, QueueTimes, Snapshot
from autopyfactory.engine.state import CascadeRuntime, QueueMemory, QueueRuntime
from autopyfactory.model import Action, Cancel, Decision, Plan, Retire, Step, Submit, Supply
from autopyfactory.plugins.options import SubmitOptions

# (kind, message, queue or cascade label) of an event the plan wants recorded
PlanEvent = tuple[str, str, str | None]


@dataclass
class PassPlan:
    """One pass's result: plans to record and act on, and the memory to keep."""

    plans: list[Plan] = field(default_factory=list)
    # one summary decision per cascade (``cascade:<name>``), with a step per tier
    summaries: list[Decision] = field(default_factory=list)
    queue_memory: dict[str, QueueMemory] = field(default_factory=dict)
    cascade_memory: dict[str, CascadeRuntime] = field(default_factory=dict)
    events: list[PlanEvent] = field(default_factory=list)

    def extend(self, other: PassPlan) -> None:
        self.plans += other.plans
        self.summaries += other.summaries
        self.queue_memory.update(other.queue_memory)
        self.cascade_memory.update(other.cascade_memory)
        self.events += other.events


# -- when to decide --------------------------------------------------------------------------------
def queue_due(memory: QueueMemory, times: QueueTimes, now: float, force: bool = False) -> bool:
    """AutoPyFactory's rules: never twice on one batch snapshot, never before our last action shows
    in the batch status; on the queue's interval, or at once when its demand changed."""
    if memory.inflight:
        return False
    btime = times.batch_time
    if memory.decided_once and btime == memory.last_batch_time:
        return False
    if btime is not None and memory.last_action_done and btime <= memory.last_action_done:
        return False
    if force or now >= memory.next_due:
        return True
    if times.wms_time is not None and times.wms_time != memory.last_wms_time:
        return times.raw_ready != memory.last_ready  # demand changed: act at once
    return False


def cascade_due(cr: CascadeRuntime, times: Mapping[str, QueueTimes], now: float, force: bool = False) -> bool:
    if any(rt.memory.inflight for rt in cr.tiers):
        return False
    seen: dict[str, float | None] = {}
    for rt in cr.tiers:
        btime = times[rt.name].batch_time
        seen[rt.name] = btime
        if btime is not None and rt.memory.last_action_done and btime <= rt.memory.last_action_done:
            return False  # our last action on this tier is not visible yet
    if cr.redrive:
        return True
    if cr.decisions and seen == cr.seen_batch:
        return False  # nothing new about any tier
    return force or now >= cr.next_due


# -- queues ----------------------------------------------------------------------------------------
def decided(
    memory: QueueMemory, times: QueueTimes, decision: Decision, now: float, sleep: float
) -> QueueMemory:
    """The memory after a queue (or tier) decided on its current batch snapshot."""
    return QueueMemory(  # the constructor, not dataclasses.replace: this runs for every queue
        decided_once=True,
        last_batch_time=times.batch_time,
        last_wms_time=times.wms_time,
        last_ready=times.raw_ready if times.raw_ready is not None else 0,
        last_action_done=memory.last_action_done,
        next_due=now + sleep,
        decisions=memory.decisions + 1,
        inflight=memory.inflight,
        last=decision,
    )


def decide_queue(rt: QueueRuntime, obs: QueueObservation, now: float, factory_max: int | None) -> Decision:
    """The queue's scheduler chain on its observation (APF's exact arithmetic), then the
    credential gate: a dead credential stops submissions, and says so as the binding step."""
    demand = obs.demand
    ctx = SchedContext(
        queue=rt.name,
        now=now,
        demand=demand,
        supply=obs.supply,
        site_status=demand.site_status if demand else None,
        factory_active=obs.factory_active,
        factory_max=factory_max,
        history=obs.history,
    )
    try:
        n, steps = run_chain(rt.sched, ctx)
    except Exception as exc:  # a broken plugin decides nothing for its queue only
        n, steps = 0, (Step("error", 0, 0, f"chain failed: {type(exc).__name__}: {exc}"),)
    if obs.credential is not None and n > 0:
        steps += (Step("Credential", n, 0, f"no submission: {obs.credential}"),)
        n = 0
    supply = obs.supply
    return Decision(
        rt.name,
        n,
        steps,
        now,
        ready=demand.ready if demand else None,
        pending=(supply.pending + supply.held) if supply else None,
        running=supply.running if supply else None,
    )


def queue_actions(
    retire: SubmitOptions | None, decision: Decision, obs: QueueObservation
) -> tuple[Action, ...]:
    """What a queue's decision means for its pilots (nothing while it may not act)."""
    if retire is None or obs.blocked is not None:
        return ()
    if decision.n > 0:
        return (Submit(decision.queue, decision.n),)
    if decision.n < 0 and not retire.overlay_peaceful:
        # APF: a negative n retires nothing unless overlay.peaceful = False
        cancel, running = select_for_retire(-decision.n, obs.pilots, retire.overlay_killorder)
        actions: list[Action] = []
        if cancel:
            actions.append(Cancel(decision.queue, tuple(cancel)))
        if running:
            actions.append(Retire(decision.queue, tuple(running), kill=retire.overlay_kill_running))
        return tuple(actions)
    return ()


def plan_queue(
    rt: QueueRuntime, obs: QueueObservation, times: QueueTimes, now: float, factory_max: int | None
) -> tuple[Plan, QueueMemory, PlanEvent | None]:
    decision = decide_queue(rt, obs, now, factory_max)
    actions = queue_actions(rt.retire, decision, obs)
    event: PlanEvent | None = None
    settings = rt.cancel
    if settings.enabled and rt.retire is not None and obs.blocked is None:
        # idle cancellation (cancel.*): pending pilots too old, or beyond a dropped demand
        taken = {i for a in actions if isinstance(a, Cancel | Retire) for i in a.backend_ids}
        pilots = obs.pilots if obs.supply is not None else None
        cancel = idle_cancellations(pilots, obs.demand, decision.n, settings, now, exclude=taken)
        if cancel is not None:
            decision, actions = with_idle_cancel(decision, actions, cancel)
            event = ("cancel-idle", cancel.message(), rt.name)
    memory = decided(rt.memory, times, decision, now, rt.config.settings.sleep)
    return Plan(rt.name, decision, actions), memory, event


# -- cascades --------------------------------------------------------------------------------------
def plan_cascade(
    cr: CascadeRuntime,
    obs: CascadeObservation,
    tiers: Mapping[str, QueueObservation],
    times: Mapping[str, QueueTimes],
    now: float,
) -> PassPlan:
    """Allocate a cascade's demand over its tiers (``decide.policy.allocate``) and turn the
    allocation into per-tier plans. ``cr`` is left unchanged: its new memory is in the result."""
    mem = cr.copy_memory()
    mem.redrive = False
    mem.decisions += 1
    mem.next_due = now + min(rt.config.settings.sleep for rt in cr.tiers)
    mem.seen_batch = {rt.name: times[rt.name].batch_time for rt in cr.tiers}
    out = PassPlan(cascade_memory={cr.name: mem})
    hold = None
    if obs.demand is None:
        hold = "no WMS info (missing or stale)"
    elif obs.missing_batch:
        hold = f"no batch info for {', '.join(obs.missing_batch)}"
    elif obs.store_error is not None:
        hold = f"the quota ledger cannot be read: {obs.store_error}"
    if hold is not None or obs.demand is None:
        step = Step(f"Cascade:{cr.name}", 0, 0, f"holding: {hold}")
        out.summaries.append(Decision(cr.label, 0, (step,), now))
        return out
    states: dict[str, TierState] = {}
    supplies: dict[str, Supply] = {}
    dead: dict[str, Step] = {}  # tiers whose credential stops them, and why (for apf explain)
    for rt in cr.tiers:
        tobs = tiers[rt.name]
        supply = tobs.supply or Supply(rt.name, time=now)
        supplies[rt.name] = supply
        state = tier_state(cr.tier(rt.name), supply, tobs.pilots, now, mem)
        if tobs.credential is not None:  # a dead credential: the tier cannot take pilots now
            until = now + rt.config.settings.sleep
            state = replace(state, backoff_until=max(state.backoff_until or 0.0, until))
            dead[rt.name] = Step("Credential", 0, 0, f"{rt.name} backed off: {tobs.credential}")
        states[rt.name] = state
    alloc = allocate(cr.cascade, obs.demand, states, obs.quota_left, now)
    learn_capacity(mem, alloc, states)
    mem.last = alloc
    for t in alloc.tiers:
        if t.backoff_until is not None:
            mem.backoff_until[t.tier] = t.backoff_until
    for event in new_events(mem, alloc.events):
        out.events.append((event.kind, f"{event.tier}: {event.message}", cr.label))
    for t in alloc.tiers:
        rt = next(r for r in cr.tiers if r.name == t.tier)
        tobs = tiers[rt.name]
        decision = tier_decision(alloc, t, supplies[t.tier], now)
        if t.tier in dead:  # the tier's binding constraint: the demand that reached it, none taken
            step = replace(dead[t.tier], n_in=t.demand_in)
            decision = replace(decision, steps=(*decision.steps, step))
        actions: tuple[Action, ...] = ()
        if rt.retire is not None and tobs.blocked is None:
            actions = tier_actions(t, tobs.pilots, rt.retire.overlay_killorder)
        out.queue_memory[rt.name] = decided(
            rt.memory, times[rt.name], decision, now, rt.config.settings.sleep
        )
        out.plans.append(Plan(rt.name, decision, actions))
    summary = cascade_decision(mem, alloc, states)
    if dead:
        summary = replace(summary, steps=(*summary.steps, *dead.values()))
    out.summaries.append(summary)
    return out


# -- a pass ----------------------------------------------------------------------------------------
def plan_pass(
    snapshot: Snapshot,
    queues: Sequence[tuple[QueueRuntime, QueueTimes]],
    cascades: Sequence[tuple[CascadeRuntime, Mapping[str, QueueTimes]]],
) -> PassPlan:
    """Plans for the due queues and cascades of one pass."""
    out = PassPlan()
    now = snapshot.time
    for rt, times in queues:
        plan, memory, event = plan_queue(rt, snapshot.queues[rt.name], times, now, snapshot.factory_max)
        out.plans.append(plan)
        out.queue_memory[rt.name] = memory
        if event is not None:
            out.events.append(event)
    for cr, times_by_tier in cascades:
        out.extend(plan_cascade(cr, snapshot.cascades[cr.name], snapshot.queues, times_by_tier, now))
    return out
