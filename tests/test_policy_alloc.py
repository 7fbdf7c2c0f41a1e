"""Cascade allocation (decide/policy.py): the issue's scenarios as pure unit tests."""

from __future__ import annotations

from typing import Any

import pytest

from autopyfactory.config.policy import Cascade, PolicyDocument, parse_policy
from autopyfactory.decide.policy import (
    TierState,
    TierStatus,
    allocate,
    backoff_after_error,
    enforce_limits,
)

NOW = 1_800_000_000.0

# W = 100 on A, spill to B (up to Y = 50) when A is capped or full; at most Z = 120 pilots a month
# on B; C takes the rest only once B's quota is spent.
EXAMPLE = """
cascades:
  - name: ex
    demand: WMS
    tiers:
      - {queue: A, cap: 100, full: {pending: 5}, spill_on: [capped, full, backoff]}
      - {queue: B, cap: 50, quotas: [{per: month, pilots: 120}], spill_on: [quota, backoff]}
      - {queue: C}
"""


def cascade(text: str = EXAMPLE) -> Cascade:
    return parse_policy(text).cascades[0]


def with_tiers(*tiers: dict[str, Any]) -> Cascade:
    doc = PolicyDocument.model_validate({"cascades": [{"name": "t", "demand": "WMS", "tiers": list(tiers)}]})
    return doc.cascades[0]


def run(
    c: Cascade,
    demand: int,
    states: dict[str, TierState] | None = None,
    quota: dict | None = None,
    now: float = NOW,
):
    return allocate(c, demand, states or {}, quota if quota is not None else {"B": 120}, now)


def test_a_fills_to_w_first() -> None:
    alloc = run(cascade(), 80)
    assert alloc.submits == {"A": 80, "B": 0, "C": 0}
    assert alloc.tier("A").status is TierStatus.TAKING
    alloc = run(cascade(), 100)
    assert alloc.submits == {"A": 100, "B": 0, "C": 0}


def test_a_capped_spills_to_b_up_to_y_and_c_gets_nothing() -> None:
    alloc = run(cascade(), 400)
    assert alloc.submits == {"A": 100, "B": 50, "C": 0}
    assert alloc.tier("A").stopped_by == {"capped"}
    assert alloc.tier("B").status is TierStatus.CAPPED
    assert alloc.tier("C").status is TierStatus.WAITING
    assert "B is capped" in alloc.tier("C").reason
    assert alloc.unallocated == 250
    spill = [e for e in alloc.events if e.kind == "spill"]
    assert [(e.tier, e.to_tier, e.n) for e in spill] == [("A", "B", 300)]


def test_b_starts_only_once_a_counts_as_full() -> None:
    c = cascade()
    # A has fewer slots (60) than W. With no pilot waiting, A takes all the demand (its slots
    # may be free) and B gets nothing.
    alloc = run(c, 90, {"A": TierState(pending=0, running=60)})
    assert alloc.submits == {"A": 30, "B": 0, "C": 0}
    # With pilots waiting, A fills only up to its tolerance (5 pending): more would just wait
    # behind them. At that point A counts as full and the rest goes on to B.
    alloc = run(c, 90, {"A": TierState(pending=2, running=60)})
    assert alloc.submits == {"A": 3, "B": 25, "C": 0}
    assert alloc.tier("A").status is TierStatus.FULL
    alloc = run(c, 90, {"A": TierState(pending=5, running=60)})
    assert alloc.submits == {"A": 0, "B": 25, "C": 0}
    # 30 pending > 5: A is full; the 25 pilots beyond its tolerance are not starting, so their
    # demand goes on to B in the same cycle
    alloc = run(c, 90, {"A": TierState(pending=30, running=60)})
    a = alloc.tier("A")
    assert a.status is TierStatus.FULL and a.submit == 0
    assert alloc.submits == {"A": 0, "B": 25, "C": 0}
    assert any(e.kind == "full" and e.tier == "A" for e in alloc.events)


def test_full_by_oldest_pending_age() -> None:
    c = with_tiers(
        {"queue": "A", "full": {"oldest_pending": "30m"}, "spill_on": ["full"]},
        {"queue": "B"},
    )
    young = TierState(pending=10, running=5, oldest_pending_since=NOW - 600)
    assert run(c, 30, {"A": young}, {}).submits == {"A": 15, "B": 0}
    old = TierState(pending=10, running=5, oldest_pending_since=NOW - 3600, stale=4)
    alloc = run(c, 30, {"A": old}, {})
    assert alloc.tier("A").status is TierStatus.FULL
    # the 4 stale pilots do not count as supply: 30 - (15 - 4) = 19 go to B
    assert alloc.submits == {"A": 0, "B": 19}


def test_b_sits_at_y_with_quota_left_c_gets_nothing() -> None:
    states = {"A": TierState(pending=30, running=70), "B": TierState(running=50)}
    alloc = run(cascade(), 300, states, {"B": 70})
    assert alloc.submits == {"A": 0, "B": 0, "C": 0}
    assert alloc.tier("B").stopped_by == {"capped"}
    assert alloc.tier("C").status is TierStatus.WAITING


def test_b_stops_at_z_and_c_takes_the_rest() -> None:
    states = {"A": TierState(pending=30, running=70), "B": TierState(running=20)}
    alloc = run(cascade(), 300, states, {"B": 10})
    # 300 - (75 counted on A + 20 on B) = 205: B takes its last 10, C the remaining 195
    assert alloc.submits == {"A": 0, "B": 10, "C": 195}
    assert alloc.tier("B").status is TierStatus.QUOTA
    assert any(e.kind == "quota_exhausted" and e.tier == "B" for e in alloc.events)
    assert any(e.kind == "spill" and e.tier == "B" and e.to_tier == "C" and e.n == 195 for e in alloc.events)
    # quota fully spent: B takes nothing, C takes everything left
    alloc = run(cascade(), 300, {**states, "C": TierState(running=195)}, {"B": 0})
    assert alloc.submits == {"A": 0, "B": 0, "C": 10}


def test_next_month_b_is_used_again() -> None:
    states = {"A": TierState(pending=30, running=70), "B": TierState(running=20), "C": TierState(running=100)}
    # the ledger gives B a fresh quota on the first of the month
    alloc = run(cascade(), 300, states, {"B": 120})
    assert alloc.submits == {"A": 0, "B": 30, "C": 0}
    assert alloc.tier("C").status is TierStatus.WAITING


def drainable() -> Cascade:
    drain = {"retire_running": True}
    return with_tiers(
        {"queue": "A", "cap": 100, "drain": drain},
        {"queue": "B", "cap": 50, "drain": drain},
        {"queue": "C", "drain": drain},
    )


def test_demand_drop_drains_c_then_b_then_a() -> None:
    c = drainable()
    states = {"A": TierState(running=100), "B": TierState(running=45, pending=5), "C": TierState(running=30)}
    alloc = run(c, 160, states, {})  # supply 180, excess 20: from C only
    assert [(t.tier, t.cancel, t.retire) for t in alloc.tiers] == [("A", 0, 0), ("B", 0, 0), ("C", 0, 20)]
    alloc = run(c, 100, states, {})  # excess 80: all of C, then B (pending first)
    assert [(t.tier, t.cancel, t.retire) for t in alloc.tiers] == [("A", 0, 0), ("B", 5, 45), ("C", 0, 30)]
    assert alloc.tier("A").status is not TierStatus.DRAINING
    alloc = run(c, 0, states, {})  # zero demand: everything
    assert [(t.tier, t.cancel, t.retire) for t in alloc.tiers] == [("A", 0, 100), ("B", 5, 45), ("C", 0, 30)]
    assert [e.tier for e in alloc.events if e.kind == "drain"] == ["C", "B", "A"]
    assert all(t.submit == 0 for t in alloc.tiers)


def test_tier_that_may_not_retire_still_shields_earlier_tiers() -> None:
    c = with_tiers(
        {"queue": "A", "drain": {"retire_running": True}},
        {"queue": "B"},  # default: cancel pending only
    )
    alloc = run(c, 0, {"A": TierState(running=10), "B": TierState(running=10, pending=4)}, {})
    assert (alloc.tier("B").cancel, alloc.tier("B").retire) == (4, 0)
    assert alloc.tier("A").retire == 10  # zero demand: A gives back too
    alloc = run(c, 10, {"A": TierState(running=10), "B": TierState(running=10, pending=4)}, {})
    # excess 14 is all on B: B cancels its 4 pending, its 10 running end on their own; A keeps all
    assert (alloc.tier("B").cancel, alloc.tier("B").retire) == (4, 0)
    assert alloc.tier("B").status is TierStatus.DRAINING
    assert alloc.tier("A").retire == 0


def test_hysteresis_blocks_scale_down_right_after_scale_up() -> None:
    c = with_tiers(
        {"queue": "A", "drain": {"retire_running": True}},
        {"queue": "B", "drain": {"retire_running": True, "hysteresis": "30m"}},
    )
    states = {"A": TierState(running=10), "B": TierState(running=10, last_scale_up=NOW - 600)}
    alloc = run(c, 12, states, {})  # excess 8, all of it on B
    b = alloc.tier("B")
    assert (b.cancel, b.retire, b.status) == (0, 0, TierStatus.HOLDING)
    assert "hysteresis" in b.reason
    # B's share shields A: A is not drained in B's place
    assert alloc.tier("A").retire == 0
    # excess 15, more than B holds: B's hysteresis holds the whole scale-down, A is not drained
    # while B, the costlier tier, keeps pilots it will give back later
    alloc = run(c, 5, states, {})
    assert (alloc.tier("B").retire, alloc.tier("A").retire) == (0, 0)
    assert alloc.tier("A").status is TierStatus.HOLDING
    assert "B holds the scale-down" in alloc.tier("A").reason
    assert not [e for e in alloc.events if e.kind == "drain"]
    later = {"A": TierState(running=10), "B": TierState(running=10, last_scale_up=NOW - 1801)}
    alloc = run(c, 12, later, {})
    assert (alloc.tier("B").retire, alloc.tier("A").retire) == (8, 0)
    alloc = run(c, 5, later, {})  # once B may give back: all of B, then A the rest
    assert (alloc.tier("B").retire, alloc.tier("A").retire) == (10, 5)


def test_backoff_redrives_demand_to_next_tier_same_cycle() -> None:
    c = cascade()
    backed = {"A": TierState(backoff_until=NOW + 100)}
    alloc = run(c, 30, backed)
    assert alloc.submits == {"A": 0, "B": 30, "C": 0}
    assert alloc.tier("A").status is TierStatus.BACKOFF
    # the backoff ends: A is used again
    assert run(c, 30, {"A": TierState(backoff_until=NOW - 1)}).submits == {"A": 30, "B": 0, "C": 0}


def test_backoff_not_in_spill_on_waits() -> None:
    c = with_tiers({"queue": "A", "spill_on": ["capped"]}, {"queue": "B"})
    alloc = run(c, 30, {"A": TierState(backoff_until=NOW + 100)}, {})
    assert alloc.submits == {"A": 0, "B": 0}
    assert alloc.tier("B").status is TierStatus.WAITING


def test_provisioning_deadline_writes_off_and_backs_off() -> None:
    c = with_tiers(
        {"queue": "A", "provisioning_deadline": "1h", "backoff": "2h"},
        {"queue": "B"},
    )
    # 10 pilots submitted 2 h ago never started: A backs off, they are cancelled and their demand
    # goes to B in the same cycle
    state = TierState(pending=10, oldest_pending_since=NOW - 7200, overdue=10)
    alloc = run(c, 10, {"A": state}, {})
    a = alloc.tier("A")
    assert a.status is TierStatus.BACKOFF
    assert a.cancel == 10 and a.submit == 0
    assert a.backoff_until == NOW + 7200
    assert alloc.submits["B"] == 10
    assert any(e.kind == "backoff" and e.tier == "A" for e in alloc.events)
    # already backed off: the engine keeps its own backoff_until, the allocation sets none
    again = TierState(pending=10, oldest_pending_since=NOW - 7200, overdue=10, backoff_until=NOW + 60)
    assert run(c, 10, {"A": again}, {}).tier("A").backoff_until is None


def test_capacity_error_backoff_helper() -> None:
    tier = cascade().tier("A")
    assert backoff_after_error(tier, NOW) == NOW + 1800


def test_quota_and_cap_both_bind() -> None:
    c = with_tiers({"queue": "A", "cap": 10, "quotas": [{"per": "day", "pilots": 4}]}, {"queue": "B"})
    alloc = run(c, 50, {}, {"A": 4})
    assert alloc.submits == {"A": 4, "B": 46}
    assert alloc.tier("A").stopped_by == {"quota"}
    alloc = run(c, 50, {"A": TierState(running=6)}, {"A": 4})
    assert alloc.tier("A").stopped_by == {"quota", "capped"}


def test_enforce_limits_is_the_last_word() -> None:
    c = cascade()
    states = {"A": TierState(running=95), "B": TierState(running=10), "C": TierState()}
    out = enforce_limits(c, states, {"B": 3}, {"A": 20, "B": 20, "C": 7, "X": 5}, NOW)
    assert out["A"][0] == 5 and "cap 100" in (out["A"][1] or "")
    assert out["B"][0] == 3 and "quota" in (out["B"][1] or "")
    assert out["C"] == (7, None)
    assert out["X"][0] == 0
    backed = {"A": TierState(backoff_until=NOW + 5)}
    assert enforce_limits(c, backed, {}, {"A": 5}, NOW)["A"][0] == 0
    assert enforce_limits(c, {}, {}, {"A": -3}, NOW)["A"][0] == 0


def test_priority_orders_tiers() -> None:
    c = with_tiers({"queue": "X", "priority": 2}, {"queue": "Y", "priority": 1, "cap": 3})
    assert [t.queue for t in c.ordered] == ["Y", "X"]
    alloc = run(c, 10, {}, {})
    assert alloc.submits == {"Y": 3, "X": 7}


def test_demand_met_does_nothing() -> None:
    alloc = run(cascade(), 50, {"A": TierState(running=50)})
    assert all((t.submit, t.cancel, t.retire) == (0, 0, 0) for t in alloc.tiers)
    assert alloc.unmet == 0


def test_allocation_explains_itself() -> None:
    alloc = run(cascade(), 400)
    lines = alloc.describe()
    assert lines[0].startswith("cascade ex: demand 400")
    assert any("A: capped -> submit 100" in line for line in lines)
    data = alloc.as_dict()
    assert data["tiers"][1]["status"] == "capped"  # type: ignore[index]
    assert data["events"][0]["kind"] == "spill"  # type: ignore[index]


@pytest.mark.parametrize("demand", [-5, 0])
def test_no_demand_no_submissions(demand: int) -> None:
    alloc = run(cascade(), demand)
    assert alloc.submits == {"A": 0, "B": 0, "C": 0}


# -- the findings (each failed before the fix) ------------------------------------------

PROJECT_EXAMPLE = """
cascades:
  - name: analysis
    demand: ANALY_EXAMPLE
    tiers:
      - {queue: A, cap: 200, full: {pending: 20}, spill_on: [capped, full, backoff]}
      - {queue: B, cap: 100, quotas: [{per: month, pilots: 3000}], spill_on: [quota, backoff]}
      - {queue: C, drain: {retire_running: true, hysteresis: 30m}}
"""


def test_hysteresis_on_the_last_tier_never_drains_an_earlier_tier_in_its_place() -> None:
    # the project's example: C scaled up 10 minutes ago; demand falls by more than C holds
    c = cascade(PROJECT_EXAMPLE)
    states = {
        "A": TierState(running=150),
        "B": TierState(running=80, pending=20),
        "C": TierState(running=150, last_scale_up=NOW - 600),
    }
    alloc = run(c, 230, states, {"B": 2000})  # excess 170: C's 150 and 20 more
    assert alloc.tier("C").status is TierStatus.HOLDING
    assert (alloc.tier("B").cancel, alloc.tier("B").retire) == (0, 0)  # was: B cancels 20
    assert (alloc.tier("A").cancel, alloc.tier("A").retire) == (0, 0)
    assert "C holds the scale-down" in alloc.tier("B").reason
    # once C may give back, C goes first and B gives the rest
    states["C"] = TierState(running=150, last_scale_up=NOW - 1801)
    alloc = run(c, 230, states, {"B": 2000})
    assert (alloc.tier("C").retire, alloc.tier("B").cancel, alloc.tier("A").cancel) == (150, 20, 0)


def _cycle(c: Cascade, demand: int, states: dict[str, TierState], quota: dict, held: dict, now: float = NOW):
    """One allocation with the previous cycle's conditions passed back, as the engine does."""
    states = {
        q: TierState(**{**_fields(s), "conditions": held.get(q, frozenset())}) for q, s in states.items()
    }
    alloc = run(c, demand, states, quota, now)
    held.clear()
    held.update({t.tier: t.conditions for t in alloc.tiers})
    return alloc


def _fields(s: TierState) -> dict[str, Any]:
    return {name: getattr(s, name) for name in TierState.__slots__}


def test_events_are_reported_once_per_change_with_their_numbers() -> None:
    c = cascade(PROJECT_EXAMPLE)
    held: dict = {}
    full_a = TierState(pending=50, running=150, capacity_hint=150)
    states = {"A": full_a, "B": TierState(running=100), "C": TierState()}
    first = _cycle(c, 400, states, {"B": 0}, held)
    kinds = [(e.kind, e.tier, e.n, e.to_tier) for e in first.events]
    assert ("full", "A", 50, None) in kinds
    # 400 - (150 running + 20 tolerated pending on A + 100 on B) = 130 passed on
    assert ("spill", "A", 130, "B") in kinds
    assert ("quota_exhausted", "B", 130, None) in kinds
    assert ("spill", "B", 130, "C") in kinds
    assert first.events[0].as_dict()["n"] == first.events[0].n
    assert first.tier("A").withdrawn == 30 and first.tier("C").submit == 130
    # the same facts on the next cycles: nothing new to report
    states["A"] = TierState(pending=20, running=150, capacity_hint=150)
    states["C"] = TierState(pending=130)
    for _ in range(3):
        assert _cycle(c, 400, states, {"B": 0}, held).events == ()
    # demand met for a while (pilots ending and being replaced is not a change): still nothing
    states["A"] = TierState(pending=20, running=150, capacity_hint=150)
    states["C"] = TierState(running=130)
    assert _cycle(c, 400, states, {"B": 0}, held).events == ()
    states["C"] = TierState(running=100)  # 30 C pilots ended: demand reaches A, B and C again
    assert _cycle(c, 400, states, {"B": 0}, held).events == ()
    # a new month: B's quota is back; it is no longer exhausted and (at its cap, which it does
    # not spill on) no longer spills: both end silently. Exhausting it again is a change again.
    assert _cycle(c, 400, states, {"B": 3000}, held).events == ()
    assert "quota" not in held["B"] and "spill" not in held["B"]
    again = _cycle(c, 400, states, {"B": 0}, held)
    assert [(e.kind, e.tier) for e in again.events] == [("quota_exhausted", "B"), ("spill", "B")]


def test_a_tier_stopped_at_its_learned_capacity_is_not_reported_as_not_starting() -> None:
    c = cascade(PROJECT_EXAMPLE)
    alloc = run(c, 400, {"A": TierState(pending=0, running=150, capacity_hint=150)}, {"B": 0})
    assert alloc.tier("A").submit == 20  # the 20 pending it tolerates
    alloc = run(c, 400, {"A": TierState(pending=20, running=150, capacity_hint=150)}, {"B": 0})
    full = [e for e in alloc.events if e.kind == "full"]
    assert len(full) == 1 and "not starting" not in full[0].message
    assert not alloc.tier("A").observed_full  # stopped at its limit, not observed full
    with_zero = run(c, 400, {"A": TierState(pending=0, running=150, capacity_hint=130)}, {"B": 0})
    assert with_zero.tier("A").submit == 0
    assert "150 running" not in with_zero.events[0].message


@pytest.mark.parametrize(
    ("full", "refill"),
    [
        ({"pending": 20}, 20),  # pending pilots up to 20 never make it full: it may hold them
        ({"oldest_pending": "40m"}, 0),
        ({"pending": 20, "oldest_pending": "40m"}, 0),  # churned 172 times in two months
    ],
)
def test_a_tier_found_full_is_refilled_only_to_what_it_showed_it_can_start(full: dict, refill: int) -> None:
    c = with_tiers({"queue": "A", "cap": 200, "full": full, "spill_on": ["full", "capped"]}, {"queue": "C"})
    # found full before at 150 running; now its pending pilots have started or been withdrawn
    alloc = run(c, 400, {"A": TierState(running=150, capacity_hint=150)}, {})
    assert alloc.tier("A").submit == refill
    assert alloc.tier("C").submit == 250 - refill
    # one pilot ended: it is replaced, and no more
    alloc = run(
        c,
        400,
        {"A": TierState(running=149 + refill, capacity_hint=150), "C": TierState(running=250 - refill)},
        {},
    )
    assert alloc.tier("A").submit == 1 and alloc.tier("C").submit == 0


def test_equal_priority_tiers_split_demand_by_weight() -> None:
    c = with_tiers(
        {"queue": "X", "priority": 1, "weight": 2},
        {"queue": "Y", "priority": 1, "weight": 1},
        {"queue": "Z", "priority": 2},
    )
    assert c.groups == ((c.tier("X"), c.tier("Y")), (c.tier("Z"),))
    assert run(c, 30, {}, {}).submits == {"X": 20, "Y": 10, "Z": 0}
    # largest remainder, ties to the earlier tier: deterministic
    assert run(c, 31, {}, {}).submits == {"X": 21, "Y": 10, "Z": 0}
    assert run(c, 32, {}, {}).submits == {"X": 21, "Y": 11, "Z": 0}
    assert run(c, 1, {}, {}).submits == {"X": 1, "Y": 0, "Z": 0}
    equal = with_tiers({"queue": "X", "priority": 0}, {"queue": "Y", "priority": 0})
    assert run(equal, 5, {}, {}).submits == {"X": 3, "Y": 2}
    # what is split is the demand the group takes now (existing pilots count as supply):
    # 20 by 2:1 is 13.3 and 6.7, the larger remainder goes to Y
    assert run(c, 30, {"X": TierState(running=10)}, {}).submits == {"X": 13, "Y": 7, "Z": 0}


def test_a_weighted_tier_is_bounded_by_its_cap_quota_and_full_and_the_rest_goes_to_its_peers() -> None:
    c = with_tiers(
        {"queue": "X", "priority": 1, "weight": 3, "cap": 10, "spill_on": ["capped"]},
        {"queue": "Y", "priority": 1, "weight": 1, "quotas": [{"per": "month", "pilots": 50}]},
        {"queue": "Z", "priority": 2},
    )
    alloc = run(c, 40, {}, {"Y": 50})
    assert alloc.submits == {"X": 10, "Y": 30, "Z": 0}  # X capped at 10: Y takes the rest
    assert alloc.tier("Z").status is TierStatus.IDLE
    # spill goes on only once the whole group is stopped: Y's quota too
    alloc = run(c, 100, {}, {"Y": 50})
    assert alloc.submits == {"X": 10, "Y": 50, "Z": 40}
    assert {e.tier for e in alloc.events if e.kind == "spill"} == {"X", "Y"}
    assert all(e.to_tier == "Z" for e in alloc.events if e.kind == "spill")
    # a full tier of the group takes nothing; its peer takes its part
    full = with_tiers(
        {"queue": "X", "priority": 1, "full": {"pending": 2}},
        {"queue": "Y", "priority": 1},
    )
    assert run(full, 20, {"X": TierState(pending=5)}, {}).submits == {"X": 0, "Y": 18}


def test_a_group_member_that_does_not_spill_holds_the_rest_back() -> None:
    c = with_tiers(
        {"queue": "X", "priority": 1, "cap": 5, "spill_on": ["capped"]},
        {"queue": "Y", "priority": 1, "cap": 5, "spill_on": []},
        {"queue": "Z", "priority": 2},
    )
    alloc = run(c, 30, {}, {})
    assert alloc.submits == {"X": 5, "Y": 5, "Z": 0}
    assert alloc.tier("Z").status is TierStatus.WAITING
    assert alloc.unallocated == 20


def test_a_group_gives_back_so_that_its_tiers_stay_in_proportion() -> None:
    drain = {"retire_running": True}
    c = with_tiers(
        {"queue": "X", "priority": 1, "weight": 1, "drain": drain},
        {"queue": "Y", "priority": 1, "weight": 1, "drain": drain},
    )
    alloc = run(c, 20, {"X": TierState(running=20), "Y": TierState(running=10)}, {})
    assert (alloc.tier("X").retire, alloc.tier("Y").retire) == (10, 0)
    alloc = run(c, 10, {"X": TierState(running=20), "Y": TierState(running=10)}, {})
    assert (alloc.tier("X").retire, alloc.tier("Y").retire) == (15, 5)


def test_headroom_keeps_pilots_above_the_demand_while_there_is_demand() -> None:
    c = parse_policy(
        "cascades: [{name: h, demand: W, headroom: 10, tiers: [{queue: A, cap: 50}, {queue: C}]}]"
    ).cascades[0]
    assert run(c, 45, {}, {}).submits == {"A": 50, "C": 5}
    # met with its headroom: nothing to do; below it: the excess comes back from C first
    met = {"A": TierState(running=50), "C": TierState(running=5, pending=0)}
    assert run(c, 45, met, {}).submits == {"A": 0, "C": 0}
    alloc = run(c, 30, {"A": TierState(running=50), "C": TierState(pending=5)}, {})
    assert (alloc.tier("C").cancel, alloc.tier("A").cancel) == (5, 0)
    # no demand, no headroom: everything drains
    assert run(c, 0, {"C": TierState(pending=3)}, {}).tier("C").cancel == 3
    pct = parse_policy("cascades: [{name: h, demand: W, headroom: '5%', tiers: [{queue: A}]}]").cascades[0]
    assert pct.headroom_for(400) == 20 and pct.headroom_for(1) == 1 and pct.headroom_for(0) == 0
    assert run(pct, 400, {}, {}).submits == {"A": 420}
