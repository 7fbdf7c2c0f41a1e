"""Issue 13, "idle cancellation for every queue": decide.cancel cancels pilots pending longer than
cancel.pending_after and pending pilots beyond the demand when it drops (cancel.excess_pending),
newest first, at most cancel.maxpercycle, never a running one; the step shows in apf explain."""

from __future__ import annotations

from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from autopyfactory.config.loader import load_factory_config
from autopyfactory.decide.cancel import IDLE_STATES, idle_cancellations, with_idle_cancel
from autopyfactory.decide.cancel_settings import CancelSettings
from autopyfactory.model import Cancel, Decision, Demand, Pilot, PilotState, Step, Submit
from tests.trustkit import QUEUES, config_tree

NOW = 100_000.0


def pilot(i: int, state: PilotState = PilotState.PENDING, age: float | None = 60.0) -> Pilot:
    return Pilot(f"p{i}", "Q", state, submitted_at=None if age is None else NOW - age)


def demand(ready: int) -> Demand:
    return Demand("Q", ready=ready, time=NOW)


def test_nothing_unless_asked_and_nothing_without_fresh_batch_info() -> None:
    pilots = [pilot(i, age=10_000) for i in range(5)]
    assert idle_cancellations(pilots, demand(0), 0, CancelSettings(), NOW) is None
    on = CancelSettings(pending_after=60, excess_pending=True)
    assert idle_cancellations(None, demand(0), 0, on, NOW) is None  # stale batch snapshot


def test_pending_after_cancels_only_old_idle_pilots_never_running_ones() -> None:
    pilots = [
        pilot(1, age=7200),
        pilot(2, PilotState.HELD, age=7200),
        pilot(3, age=60),
        pilot(4, PilotState.RUNNING, age=90_000),
        pilot(5, PilotState.RETIRING, age=90_000),
        pilot(6, age=None),  # unknown age: never "too old"
    ]
    got = idle_cancellations(pilots, None, 5, CancelSettings(pending_after=1800), NOW)
    assert got is not None
    assert set(got.backend_ids) == {"p1", "p2"}
    assert dict(got.reasons)["p1"] == "pending for 2.0h"
    assert "2 pending longer than cancel.pending_after=30m" in got.step.reason
    assert (got.step.n_in, got.step.n_out) == (5, 5)  # the chain's n is not changed


def test_excess_pending_cancels_newest_beyond_the_demand_when_n_is_not_positive() -> None:
    pilots = [pilot(i, age=1000 - i * 100) for i in range(8)]  # p7 is the newest
    got = idle_cancellations(pilots, demand(5), 0, CancelSettings(excess_pending=True), NOW)
    assert got is not None and got.backend_ids == ("p7", "p6", "p5")
    assert "3 beyond the demand (ready=5, n=0)" in got.step.reason
    # the chain still wants pilots: no excess
    assert idle_cancellations(pilots, demand(5), 2, CancelSettings(excess_pending=True), NOW) is None
    # no fresh demand: never cancel on missing information
    assert idle_cancellations(pilots, None, 0, CancelSettings(excess_pending=True), NOW) is None
    # demand covers them all
    assert idle_cancellations(pilots, demand(8), 0, CancelSettings(excess_pending=True), NOW) is None


def test_both_rules_together_do_not_cancel_twice_and_respect_the_cap() -> None:
    pilots = [pilot(0, age=7200), pilot(1, age=7100)] + [pilot(i, age=100 - i) for i in range(2, 10)]
    cfg = CancelSettings(pending_after=3600, excess_pending=True, maxpercycle=3)
    got = idle_cancellations(pilots, demand(5), -1, cfg, NOW)
    assert got is not None
    # stale: p0, p1; the other 8 against a demand of 5: 3 in excess (p9, p8, p7); 5 in all, 3 this cycle
    assert got.backend_ids == ("p9", "p8", "p7")
    assert "3 of 5 this cycle (cancel.maxpercycle=3)" in got.step.reason
    # pilots the negative decision already takes back are not counted again
    again = idle_cancellations(pilots, demand(5), -1, cfg, NOW, exclude={"p9", "p8", "p7"})
    assert again is not None and set(again.backend_ids) == {"p0", "p1"}


def test_with_idle_cancel_adds_the_step_and_the_action() -> None:
    decision = Decision("Q", 0, (Step("Ready", 0, 0, "ready=5 - pending=8 -> 0"),), NOW, ready=5, pending=8)
    got = idle_cancellations(
        [pilot(i, age=10 * i) for i in range(8)], demand(5), 0, CancelSettings(excess_pending=True), NOW
    )
    new, actions = with_idle_cancel(decision, (Submit("Q", 1),), got)
    assert [s.plugin for s in new.steps] == ["Ready", "Cancel"]
    assert new.binding is None  # cancelling idle pilots does not bind n
    assert actions[-1] == Cancel("Q", got.backend_ids)  # type: ignore[union-attr]
    assert with_idle_cancel(decision, (), None) == (decision, ())


states = st.sampled_from(list(PilotState))


@settings(max_examples=300, deadline=None)
@given(
    items=st.lists(st.tuples(states, st.one_of(st.none(), st.floats(0, 10_000))), max_size=40),
    ready=st.integers(0, 50),
    n=st.integers(-20, 20),
    after=st.one_of(st.none(), st.floats(1, 5000)),
    excess=st.booleans(),
    cap=st.integers(1, 10),
)
def test_properties(items, ready, n, after, excess, cap) -> None:  # type: ignore[no-untyped-def]
    pilots = [
        Pilot(f"p{i}", "Q", s, submitted_at=None if a is None else NOW - a) for i, (s, a) in enumerate(items)
    ]
    got = idle_cancellations(pilots, demand(ready), n, CancelSettings(after, excess, cap), NOW)
    if got is None:
        return
    by_id = {p.backend_id: p for p in pilots}
    chosen = [by_id[i] for i in got.backend_ids]
    assert all(p.state in IDLE_STATES for p in chosen)  # never a running pilot
    assert 0 < len(chosen) <= cap and len(set(got.backend_ids)) == len(chosen)
    times = [p.submitted_at if p.submitted_at is not None else float("-inf") for p in chosen]
    assert times == sorted(times, reverse=True)  # newest first
    idle = [p for p in pilots if p.state in IDLE_STATES]
    if after is None:
        # only the excess rule: never below the demand, and only when the chain wants no more
        assert excess and n <= 0
        assert len(chosen) <= len(idle) - ready


def test_queue_keys_are_declared_and_reach_the_decision_input(tmp_path: Path) -> None:
    conf = config_tree(
        tmp_path,
        QUEUES + "cancel.pending_after = 30m\ncancel.excess_pending = True\ncancel.maxpercycle = 7\n",
    )
    settings_ = load_factory_config(str(conf)).queues["Q1"].settings.cancel
    assert settings_ == CancelSettings(pending_after=1800.0, excess_pending=True, maxpercycle=7)


def test_the_demo_says_what_it_does() -> None:
    text = (Path(__file__).resolve().parents[1] / "examples" / "demo" / "queues.conf").read_text()
    assert "cancel.excess_pending = True" in text
    assert "a drop in demand cancels idle pilots (AutoPyFactory default is peaceful: do nothing)" not in text
