"""Properties of chains that start with Ready: no demand never submits, and a last cap holds."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from autopyfactory.decide.base import SchedContext, SchedPlugin, run_chain
from autopyfactory.decide.sched.maxpending import MaxPending
from autopyfactory.decide.sched.maxpercycle import MaxPerCycle
from autopyfactory.decide.sched.maxtorun import MaxToRun
from autopyfactory.decide.sched.minpercycle import MinPerCycle
from autopyfactory.decide.sched.ready import Ready
from autopyfactory.decide.sched.scale import Scale
from autopyfactory.decide.sched.statusoffline import StatusOffline
from autopyfactory.decide.sched.statustest import StatusTest
from autopyfactory.model import Demand, Supply

counts = st.integers(min_value=0, max_value=10_000)
# maxima are >= 0 (a negative maximum is refused at load, issue 13)
maybe_int = st.none() | st.integers(min_value=0, max_value=10_000)

ready = st.builds(lambda off: Ready(Ready.Options(offset=off)), st.integers(0, 1000))
scale = st.builds(
    lambda f: Scale(Scale.Options(factor=f)), st.floats(min_value=0.0, max_value=1.0, allow_nan=False)
)
maxpercycle = st.builds(lambda m: MaxPerCycle(MaxPerCycle.Options(maximum=m)), maybe_int)
minpercycle = st.builds(
    lambda m: MinPerCycle(MinPerCycle.Options(minimum=m)), st.none() | st.integers(-1000, 0)
)
maxpending = st.builds(
    lambda m, neg: MaxPending(MaxPending.Options(maximum=m, allow_negative=neg)), maybe_int, st.booleans()
)
maxtorun = st.builds(lambda m: MaxToRun(MaxToRun.Options(maximum=m)), maybe_int)
status = st.sampled_from([StatusTest, StatusOffline]).map(lambda cls: cls(cls.Options(pilots=0)))
filters = st.one_of(scale, maxpercycle, minpercycle, maxpending, maxtorun, status)
chains = st.builds(lambda first, rest: [first, *rest], ready, st.lists(filters, max_size=8))
site_statuses = st.none() | st.sampled_from(["online", "test", "offline", "brokeroff"])


@st.composite
def supplies(draw: st.DrawFn) -> Supply:
    return Supply("Q", pending=draw(counts), running=draw(counts), held=draw(counts), retiring=draw(counts))


def context(ready_jobs: int | None, supply: Supply | None, site: str | None) -> SchedContext:
    demand = None if ready_jobs is None else Demand("WMSQ", ready=ready_jobs, site_status=site)
    return SchedContext(queue="Q", now=0.0, demand=demand, supply=supply, site_status=site)


@pytest.mark.timeout(120)
@settings(max_examples=500, deadline=None)
@given(
    plugins=chains,
    ready_jobs=st.sampled_from([0, None]),
    supply=st.none() | supplies(),
    site=site_statuses,
)
def test_no_demand_never_submits(
    plugins: list[SchedPlugin], ready_jobs: int | None, supply: Supply | None, site: str | None
) -> None:
    n, steps = run_chain(plugins, context(ready_jobs, supply, site))
    assert n <= 0, steps
    # and no intermediate step turned "nothing" into a positive number either
    assert all(s.n_out <= 0 for s in steps), steps


@pytest.mark.timeout(120)
@settings(max_examples=500, deadline=None)
@given(
    plugins=chains,
    maximum=st.integers(0, 10_000),
    ready_jobs=st.none() | counts,
    supply=st.none() | supplies(),
    site=site_statuses,
)
def test_last_maxpercycle_bounds_the_result(
    plugins: list[SchedPlugin],
    maximum: int,
    ready_jobs: int | None,
    supply: Supply | None,
    site: str | None,
) -> None:
    n, steps = run_chain(
        [*plugins, MaxPerCycle(MaxPerCycle.Options(maximum=maximum))], context(ready_jobs, supply, site)
    )
    assert n <= maximum, steps


@pytest.mark.timeout(120)
@settings(max_examples=500, deadline=None)
@given(
    plugins=chains,
    maximum=st.integers(0, 10_000),
    ready_jobs=st.none() | counts,
    supply=supplies(),
    site=site_statuses,
)
def test_last_maxtorun_bounds_pending_plus_running(
    plugins: list[SchedPlugin], maximum: int, ready_jobs: int | None, supply: Supply, site: str | None
) -> None:
    n, steps = run_chain(
        [*plugins, MaxToRun(MaxToRun.Options(maximum=maximum))], context(ready_jobs, supply, site)
    )
    p = supply.pending + supply.held
    r = supply.running
    assert n <= maximum - (p + r), steps
    # retiring pilots still hold their slots, so they count too: acting on n keeps the queue
    # within the maximum
    assert p + r + supply.retiring + n <= maximum, steps


@pytest.mark.timeout(120)
@settings(max_examples=300, deadline=None)
@given(plugins=chains, ready_jobs=st.none() | counts, supply=st.none() | supplies(), site=site_statuses)
def test_chain_is_pure(
    plugins: list[SchedPlugin], ready_jobs: int | None, supply: Supply | None, site: str | None
) -> None:
    c = context(ready_jobs, supply, site)
    first = run_chain(plugins, c)
    assert run_chain(plugins, c) == first
    # steps link up: each input is the previous output, starting from 0
    n_in = [s.n_in for s in first[1]]
    assert n_in == [0] + [s.n_out for s in first[1][:-1]]
