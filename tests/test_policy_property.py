"""Property tests: the allocation driven cycle by cycle against a tiny pure model of the tiers.

Over random policies and demand traces: caps and quotas always hold; no cycle submits to a later
tier while an earlier one could still take pilots (under cap and quota, not full, not backed off);
scale-down always takes from the last tier first, and no earlier tier gives anything back while a
later tier holds pilots under its hysteresis (no exemption); zero demand drains everything.
Tiers may share a priority (a group splitting demand by weight).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from autopyfactory.config.policy import Cascade, PolicyDocument, Tier
from autopyfactory.decide.periods import parse_time
from autopyfactory.decide.policy import CascadeAllocation, TierState, allocate, backoff_after_error

STEP = 600.0
# two hours before a month boundary, so calendar quotas roll over inside most traces
T0 = parse_time("2027-01-31T22:00:00Z")


@dataclass
class ModelTier:
    """A batch system in miniature: FIFO pending, `capacity` slots, fixed start delay and runtime."""

    capacity: int
    delay: float
    runtime: float
    fail_cycles: frozenset[int]
    pending: list[float] = field(default_factory=list)  # submit times, oldest first
    running: list[float] = field(default_factory=list)  # end times
    backoff_until: float | None = None
    last_scale_up: float | None = None
    starts: list[float] = field(default_factory=list)  # submission times (the quota ledger)

    def advance(self, now: float) -> None:
        self.running = [end for end in self.running if end > now]
        while self.pending and len(self.running) < self.capacity and self.pending[0] + self.delay <= now:
            self.pending.pop(0)
            self.running.append(now + self.runtime)

    def state(self, tier: Tier, now: float) -> TierState:
        deadline = tier.provisioning_deadline
        stale_after = tier.full.oldest_pending if tier.full is not None else None
        return TierState(
            pending=len(self.pending),
            running=len(self.running),
            oldest_pending_since=self.pending[0] if self.pending else None,
            overdue=sum(1 for t in self.pending if deadline is not None and now - t > deadline),
            stale=sum(1 for t in self.pending if stale_after is not None and now - t > stale_after),
            backoff_until=self.backoff_until,
            last_scale_up=self.last_scale_up,
        )

    def quota_left(self, tier: Tier, now: float) -> int | None:
        left: int | None = None
        for quota in tier.quotas:
            if quota.pilots is None:
                continue
            used = sum(1 for t in self.starts if quota.period.contains(now, t))
            left = quota.pilots - used if left is None else min(left, quota.pilots - used)
        return left


@st.composite
def tier_dicts(draw: st.DrawFn, index: int) -> dict[str, Any]:
    tier: dict[str, Any] = {"queue": f"T{index}"}
    if draw(st.booleans()):
        tier["cap"] = draw(st.integers(0, 40))
    if draw(st.booleans()):
        full: dict[str, Any] = {}
        if draw(st.booleans()):
            full["pending"] = draw(st.integers(0, 8))
        if draw(st.booleans()) or not full:
            full["oldest_pending"] = draw(st.sampled_from([600, 1200, 3000]))
        tier["full"] = full
    tier["spill_on"] = draw(st.lists(st.sampled_from(["capped", "full", "quota", "backoff"]), unique=True))
    if draw(st.booleans()):
        tier["quotas"] = [
            {"per": draw(st.sampled_from(["month", "day", "2h"])), "pilots": draw(st.integers(0, 60))}
        ]
    tier["drain"] = {
        "cancel_pending": draw(st.booleans()),
        "retire_running": draw(st.booleans()),
        "hysteresis": draw(st.sampled_from([0, 0, 1200, 3000])),
    }
    if draw(st.booleans()):
        tier["provisioning_deadline"] = draw(st.sampled_from([1200, 3600]))
    tier["backoff"] = draw(st.sampled_from([600, 1800]))
    if draw(st.booleans()):
        tier["priority"] = draw(st.integers(0, 2))
        tier["weight"] = draw(st.sampled_from([1, 1, 2, 3, 0.5]))
    return tier


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[Cascade, dict[str, ModelTier], list[int]]:
    n = draw(st.integers(1, 4))
    tiers = [draw(tier_dicts(i)) for i in range(n)]
    headroom = draw(st.sampled_from([0, 0, 3, "10%"]))
    doc = PolicyDocument.model_validate(
        {"cascades": [{"name": "p", "demand": "W", "tiers": tiers, "headroom": headroom}]}
    )
    cycles = draw(st.integers(5, 40))
    models = {
        t["queue"]: ModelTier(
            capacity=draw(st.integers(0, 30)),
            delay=draw(st.sampled_from([0, 300, 900])),
            runtime=draw(st.sampled_from([600, 1800, 7200])),
            fail_cycles=frozenset(draw(st.lists(st.integers(0, cycles), max_size=3))),
        )
        for t in tiers
    }
    trace = draw(st.lists(st.integers(0, 120), min_size=cycles, max_size=cycles))
    return doc.cascades[0], models, trace


def _written_off(tier: Tier, s: TierState, now: float) -> int:
    overdue = s.overdue
    if (
        tier.provisioning_deadline is not None
        and overdue == 0
        and s.pending
        and s.oldest_pending_since is not None
        and now - s.oldest_pending_since > tier.provisioning_deadline
    ):
        overdue = 1
    return min(overdue, s.pending)


def _backed_off(tier: Tier, s: TierState, now: float) -> bool:
    return (s.backoff_until is not None and s.backoff_until > now) or _written_off(tier, s, now) > 0


def _full(tier: Tier, s: TierState, now: float) -> bool:
    if tier.full is None:
        return False
    pending = s.pending - _written_off(tier, s, now)
    if tier.full.pending is not None and pending > tier.full.pending:
        return True
    return (
        tier.full.oldest_pending is not None
        and s.oldest_pending_since is not None
        and pending > 0
        and now - s.oldest_pending_since > tier.full.oldest_pending
    )


def _blocked_by_hysteresis(tier: Tier, s: TierState, now: float) -> bool:
    h = tier.drain.hysteresis
    return h > 0 and s.last_scale_up is not None and now - s.last_scale_up < h


def check_allocation(
    cascade: Cascade,
    alloc: CascadeAllocation,
    states: dict[str, TierState],
    quota: dict[str, int | None],
    now: float,
) -> None:
    tiers = cascade.ordered
    could_take: list[bool] = []
    stopped: list[set[str]] = []
    for tier in tiers:
        a, s, left = alloc.tier(tier.queue), states[tier.queue], quota[tier.queue]
        assert a.submit >= 0 and a.cancel >= 0 and a.retire >= 0
        # caps and quotas hold
        if tier.cap is not None:
            assert s.active + a.submit <= max(tier.cap, s.active), (tier.queue, s, a)
            if s.active >= tier.cap:
                assert a.submit == 0
        if left is not None:
            assert a.submit <= max(0, left)
        if _backed_off(tier, s, now):
            assert a.submit == 0
        # never more given back than exists, nor in a way the tier does not allow
        assert a.cancel <= s.pending and a.retire <= s.running
        assert tier.drain.cancel_pending or a.cancel == 0
        assert tier.drain.retire_running or a.retire == 0
        conditions = set()
        if _backed_off(tier, s, now):
            conditions.add("backoff")
        if _full(tier, s, now):
            conditions.add("full")
        waiting = s.pending - _written_off(tier, s, now)
        threshold = tier.full.pending if tier.full is not None else None
        if threshold is not None and waiting > 0 and waiting + a.submit >= threshold:
            conditions.add("full")  # a tier with pilots waiting fills only to its threshold
        if tier.cap is not None and s.active + a.submit >= tier.cap:
            conditions.add("capped")
        if left is not None and left - a.submit <= 0:
            conditions.add("quota")
        stopped.append(conditions)
        could_take.append(not conditions)
        if _blocked_by_hysteresis(tier, s, now):
            # within the hysteresis time only written-off pilots go
            assert a.retire == 0 and a.cancel - a.withdrawn <= _written_off(tier, s, now), (
                tier.queue,
                alloc.describe(),
            )
    # a group (tiers of one priority) is reached by demand only through groups whose every tier
    # stopped on a condition it passes on
    group_of = {t.queue: g for g, group in enumerate(cascade.groups) for t in group}
    index = {t.queue: i for i, t in enumerate(tiers)}
    groups = [[index[t.queue] for t in group] for group in cascade.groups]
    passes = [all(stopped[k] & set(tiers[k].spill_on) for k in g) for g in groups]
    reached = [all(passes[: group_of[t.queue]]) for t in tiers]
    for j, tier in enumerate(tiers):
        if alloc.tier(tier.queue).submit > 0:
            earlier = [k for g in groups[: group_of[tier.queue]] for k in g]
            # no submission to a later group while a tier of an earlier group could still take ...
            assert not any(could_take[k] for k in earlier), (j, could_take, alloc.describe())
            # ... nor past a group that holds the demand back
            assert reached[j], (j, stopped, alloc.describe())
    if alloc.unmet > 0:
        # every unit of unmet demand is either placed or reported as left over
        assert sum(alloc.tier(t.queue).submit for t in tiers) + alloc.unallocated == alloc.unmet
        if alloc.unallocated:
            # and only left over when no tier the demand can reach could take it
            assert not any(c and r for c, r in zip(could_take, reached, strict=True)), alloc.describe()
    else:
        assert alloc.unallocated == 0 and all(alloc.tier(t.queue).submit == 0 for t in tiers)
    # scale up and scale down never mix, except cancelling written-off pilots
    if any(alloc.tier(t.queue).submit for t in tiers):
        assert all(alloc.tier(t.queue).retire == 0 for t in tiers)
    # scale-down takes from the last group first: once an earlier tier gives back capacity beyond
    # its written-off pilots, every tier of a later group gives back all its drain settings allow,
    # and none of them is held by hysteresis (no exemption: a held tier holds the whole scale-down)
    for tier in tiers:
        a, s = alloc.tier(tier.queue), states[tier.queue]
        # (pending pilots a full tier withdrew because later tiers took their demand are a move,
        # not a scale-down)
        gives = (
            a.cancel
            - a.withdrawn
            - (_written_off(tier, s, now) if tier.drain.cancel_pending else 0)
            + a.retire
        )
        if gives <= 0:
            continue
        for later in tiers:
            if group_of[later.queue] <= group_of[tier.queue]:
                continue
            la, ls = alloc.tier(later.queue), states[later.queue]
            if later.drain.cancel_pending:
                assert la.cancel == ls.pending, (later.queue, alloc.describe())
            if later.drain.retire_running:
                assert la.retire == ls.running, (later.queue, alloc.describe())
            if ls.pending - _written_off(later, ls, now) + ls.running > 0:
                assert not _blocked_by_hysteresis(later, ls, now), (later.queue, alloc.describe())
    if alloc.demand == 0:
        assert all(alloc.tier(t.queue).submit == 0 for t in tiers)
        for tier in tiers:
            a, s = alloc.tier(tier.queue), states[tier.queue]
            held_later = any(
                _blocked_by_hysteresis(t, states[t.queue], now)
                and states[t.queue].pending - _written_off(t, states[t.queue], now) + states[t.queue].running
                for t in tiers
                if group_of[t.queue] > group_of[tier.queue]
            )
            if _blocked_by_hysteresis(tier, s, now) or held_later:
                continue
            if tier.drain.cancel_pending:
                assert a.cancel == s.pending
            if tier.drain.retire_running:
                assert a.retire == s.running


def apply(
    cascade: Cascade, models: dict[str, ModelTier], alloc: CascadeAllocation, k: int, now: float
) -> bool:
    """Act on an allocation like the engine; True when a backend refused (capacity error)."""
    refused = False
    for tier in cascade.ordered:
        a, m = alloc.tier(tier.queue), models[tier.queue]
        if a.backoff_until is not None:
            m.backoff_until = a.backoff_until
        del m.pending[: a.cancel]  # longest-waiting first
        if a.retire:
            m.running.sort()
            del m.running[len(m.running) - a.retire :]  # newest first
        if a.submit:
            if k in m.fail_cycles:
                m.backoff_until = backoff_after_error(tier, now)
                refused = True
                continue
            m.pending.extend([now] * a.submit)
            m.starts.extend([now] * a.submit)
            m.last_scale_up = now
    return refused


def cycle(cascade: Cascade, models: dict[str, ModelTier], demand: int, k: int) -> None:
    now = T0 + k * STEP
    for m in models.values():
        m.advance(now)
    # a refusal re-drives the demand in the same cycle: allocate again with the tier backed off
    for _ in range(len(models) + 1):
        states = {t.queue: models[t.queue].state(t, now) for t in cascade.tiers}
        quota = {t.queue: models[t.queue].quota_left(t, now) for t in cascade.tiers}
        alloc = allocate(cascade, demand, states, quota, now)
        check_allocation(cascade, alloc, states, quota, now)
        if not apply(cascade, models, alloc, k, now):
            break
    # caps and quotas hold after acting
    for tier in cascade.tiers:
        m = models[tier.queue]
        if tier.cap is not None and m.last_scale_up == now:
            assert len(m.pending) + len(m.running) <= tier.cap
        for quota in tier.quotas:
            if quota.pilots is not None:
                assert sum(1 for t in m.starts if quota.period.contains(now, t)) <= quota.pilots


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios())
def test_cascade_invariants_over_random_traces(
    scenario: tuple[Cascade, dict[str, ModelTier], list[int]],
) -> None:
    cascade, models, trace = scenario
    for k, demand in enumerate(trace):
        cycle(cascade, models, demand, k)
    # then demand stops: after the longest hysteresis everything drains that may be drained
    longest = max(t.drain.hysteresis for t in cascade.tiers)
    zero_cycles = int(longest // STEP) + 2
    start = len(trace)
    for k in range(start, start + zero_cycles):
        cycle(cascade, models, 0, k)
    for tier in cascade.tiers:
        m = models[tier.queue]
        if tier.drain.cancel_pending:
            assert not m.pending, tier.queue
        if tier.drain.retire_running:
            assert not m.running, tier.queue
