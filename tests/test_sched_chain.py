"""Whole chains with APF's semantics, including the worked examples of apf-reference section 3.3."""

from __future__ import annotations

from collections.abc import Mapping

import pytest

from autopyfactory.config.validate import options_from_keys
from autopyfactory.decide.base import SchedContext, SchedPlugin, run_chain
from autopyfactory.model import Decision, Demand, Supply
from autopyfactory.plugins.base import load


def chain(text: str, keys: Mapping[str, str] | None = None) -> list[SchedPlugin]:
    """Build a chain as a queues.conf section would: ``schedplugin`` plus ``sched.*`` keys."""
    section = dict(keys or {})
    plugins = []
    for name in [p.strip() for p in text.split(",")]:
        cls = load("sched", name)
        assert issubclass(cls, SchedPlugin)
        options, problems = options_from_keys(cls, section, section_name="Q")
        assert not problems, problems
        plugins.append(cls(options))
    return plugins


def ctx(
    ready: int = 0, pending: int = 0, running: int = 0, site_status: str = "online", **kw: object
) -> SchedContext:
    return SchedContext(
        queue="Q",
        now=0.0,
        demand=Demand("WMSQ", ready=ready, site_status=site_status),
        supply=Supply("Q", pending=pending, running=running),
        site_status=site_status,
        **kw,
    )


def outs(steps: tuple) -> list[int]:
    return [s.n_out for s in steps]


def test_example_1_ready_maxpercycle() -> None:
    n, steps = run_chain(chain("Ready, MaxPerCycle", {"sched.maxpercycle.maximum": "50"}), ctx(300, 10))
    assert outs(steps) == [290, 50]
    assert n == 50


def test_example_2_production_chain() -> None:
    keys = {"sched.scale.factor": "0.25", "sched.maxpercycle.maximum": "50", "sched.maxpending.maximum": "10"}
    plugins = chain("Ready, Scale, MaxPerCycle, MinPerCycle, StatusTest, StatusOffline, MaxPending", keys)
    n, steps = run_chain(plugins, ctx(ready=83, pending=10, running=17))
    assert outs(steps) == [73, 19, 19, 19, 19, 19, 0]
    assert n == 0
    # each step's input is the previous output, and the chain starts at 0
    assert [s.n_in for s in steps] == [0, 73, 19, 19, 19, 19, 19]
    assert [s.plugin for s in steps][-1] == "MaxPending"
    decision = Decision("Q", n, steps, 0.0)
    assert decision.binding == "MaxPending"


@pytest.mark.parametrize(("pending", "expected"), [(0, 500), (40, 60), (150, -50)])
def test_example_3_maxpending(pending: int, expected: int) -> None:
    n, _ = run_chain(chain("Ready, MaxPending", {"sched.maxpending.maximum": "100"}), ctx(500, pending))
    assert n == expected


def test_example_4_maxtorun_scales_down() -> None:
    n, steps = run_chain(chain("Ready, MaxToRun", {"sched.maxtorun.maximum": "100"}), ctx(80, 20, 90))
    assert outs(steps) == [60, -10]
    assert n == -10


@pytest.mark.parametrize(("running", "pending", "expected"), [(12, 3, 5), (25, 0, -5)])
def test_example_5_keepnrunning(running: int, pending: int, expected: int) -> None:
    plugins = chain("KeepNRunning", {"sched.keepnrunning.keep_running": "20"})
    assert run_chain(plugins, ctx(running=running, pending=pending))[0] == expected


def test_example_6_negatives_propagate_through_the_chain() -> None:
    keys = {
        "sched.keepnrunning.keep_running": "5",
        "sched.minpercycle.minimum": "-2",
        "sched.maxpercycle.maximum": "2",
        "sched.maxpending.maximum": "3",
    }
    plugins = chain("KeepNRunning, MinPerCycle, MaxPerCycle, MaxPending", keys)
    n, steps = run_chain(plugins, ctx(running=10, pending=0))
    assert outs(steps) == [-5, -2, -2, -2]
    assert n == -2


def test_example_7_scale_float_quirk() -> None:
    plugins = chain(
        "Fixed, Scale", {"sched.fixed.pilotspercycle": "36", "sched.scale.factor": "0.0277777777778"}
    )
    assert run_chain(plugins, ctx())[0] == 2


def test_example_8_fixed_maxpending() -> None:
    keys = {"sched.fixed.pilotspercycle": "5", "sched.maxpending.maximum": "10"}
    assert run_chain(chain("Fixed, MaxPending", keys), ctx(pending=8))[0] == 2


def test_source_plugin_after_filters_discards_their_work() -> None:
    keys = {"sched.maxpercycle.maximum": "5"}
    n, steps = run_chain(chain("Ready, MaxPerCycle, Ready", keys), ctx(ready=100))
    assert outs(steps) == [100, 5, 100]
    assert n == 100


def test_duplicates_are_allowed_and_share_keys() -> None:
    keys = {"sched.scale.factor": "0.5"}
    n, steps = run_chain(chain("Ready, Scale, Scale", keys), ctx(ready=10))
    assert outs(steps) == [10, 5, 3]
    assert n == 3


def test_empty_chain_is_zero() -> None:
    assert run_chain([], ctx(ready=100)) == (0, ())


def test_missing_wms_info_stops_submission_but_not_a_fixed_source() -> None:
    no_wms = SchedContext(queue="Q", now=0.0, demand=None, supply=Supply("Q"), site_status=None)
    keys = {"sched.maxpercycle.maximum": "50"}
    assert run_chain(chain("Ready, MaxPerCycle", keys), no_wms)[0] == 0
    # status plugins refuse to pass a number through when status is missing
    fixed = chain("Fixed, StatusTest", {"sched.fixed.pilotspercycle": "5"})
    assert run_chain(fixed, no_wms)[0] == 0


def test_test_site_gets_test_pilots() -> None:
    keys = {"sched.statustest.pilots": "2", "sched.statusoffline.pilots": "0"}
    plugins = chain("Ready, StatusTest, StatusOffline", keys)
    assert run_chain(plugins, ctx(ready=100, site_status="test"))[0] == 2
    assert run_chain(plugins, ctx(ready=100, site_status="offline"))[0] == 0
    assert run_chain(plugins, ctx(ready=100, site_status="brokeroff"))[0] == 100


def test_factory_cap_after_per_queue_limits() -> None:
    keys = {"sched.maxpercycle.maximum": "50"}
    plugins = chain("Ready, MaxPerCycle, MaxPerFactory", keys)
    n, steps = run_chain(plugins, ctx(ready=300, factory_active=980, factory_max=1000))
    assert outs(steps) == [300, 50, 20]
    assert n == 20
