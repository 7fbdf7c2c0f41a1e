"""Each scheduler plugin on its own: APF's formulas, missing info, negative inputs, key parsing."""

from __future__ import annotations

import pytest

from autopyfactory.config.validate import options_from_keys
from autopyfactory.decide.base import SchedContext, SchedPlugin
from autopyfactory.model import Demand, Supply, ThrottleHistory
from autopyfactory.plugins.base import load, names

ALL = [
    "Ready",
    "Scale",
    "MaxPerCycle",
    "MinPerCycle",
    "MaxPending",
    "MinPending",
    "MaxToRun",
    "MaxPerFactory",
    "Fixed",
    "KeepNRunning",
    "StatusTest",
    "StatusOffline",
    "Throttle",
    "Null",
    "WeightedActivated",
]


def plugin(name: str, **keys: str) -> SchedPlugin:
    """Build a plugin the way the config loader does: from string keys of a queue section."""
    cls = load("sched", name)
    prefix = f"sched.{name.lower()}."
    options, problems = options_from_keys(cls, {prefix + k: v for k, v in keys.items()}, section_name="Q")
    assert not problems, problems
    assert isinstance(cls, type) and issubclass(cls, SchedPlugin)
    return cls(options)


def ctx(
    ready: int | None = 0,
    pending: int | None = 0,
    running: int = 0,
    held: int = 0,
    retiring: int = 0,
    site_status: str | None = "online",
    **kw: object,
) -> SchedContext:
    demand = None if ready is None else Demand("WMSQ", ready=ready, site_status=site_status)
    supply = (
        None
        if pending is None
        else Supply("Q", pending=pending, running=running, held=held, retiring=retiring)
    )
    return SchedContext(queue="Q", now=1000.0, demand=demand, supply=supply, site_status=site_status, **kw)


def calc(p: SchedPlugin, c: SchedContext, n: int = 0) -> int:
    out, reason = p.calc(c, n)
    assert isinstance(out, int) and not isinstance(out, bool)
    assert reason
    return out


# --- registry and keys ---------------------------------------------------------------------


def test_every_plugin_is_registered_under_its_apf_name() -> None:
    available = names("sched")
    for name in ALL:
        assert name in available
        cls = load("sched", name)
        assert cls.name == name
        assert cls.kind == "sched"
        assert cls.prefixes() == (f"sched.{name.lower()}.",)


@pytest.mark.parametrize(
    ("name", "keys"),
    [
        ("Ready", {"offset": 0}),
        ("Scale", {"factor": 1.0}),
        ("MaxPerCycle", {"maximum": None}),
        ("MinPerCycle", {"minimum": None}),
        ("MaxPending", {"maximum": None, "allow_negative": True}),
        ("MinPending", {"minimum": None}),
        ("MaxToRun", {"maximum": None}),
        ("MaxPerFactory", {"maximum": None}),
        ("Fixed", {"pilotspercycle": None}),
        ("KeepNRunning", {"keep_running": None}),
        ("StatusTest", {"pilots": 0}),
        ("StatusOffline", {"pilots": 0}),
        ("Throttle", {"interval": 3600, "maxtime": 10, "ratio": 0.5, "submit": 1}),
        ("Null", {}),
        ("WeightedActivated", {"activated": 1.0, "pending": 1.0}),
    ],
)
def test_apf_key_names_and_defaults(name: str, keys: dict[str, object]) -> None:
    opts = plugin(name).options
    assert opts.model_dump() == keys


def test_unknown_key_is_named_with_a_suggestion() -> None:
    cls = load("sched", "MaxPerCycle")
    options, problems = options_from_keys(
        cls, {"sched.maxpercycle.maximun": "5"}, file_of=lambda k: "queues.conf", section_name="Q"
    )
    assert options is None
    text = str(problems[0])
    assert "queues.conf" in text and "[Q]" in text and "sched.maxpercycle.maximun" in text
    assert "did you mean 'sched.maxpercycle.maximum'" in text


def test_bad_value_is_named() -> None:
    cls = load("sched", "Scale")
    options, problems = options_from_keys(cls, {"sched.scale.factor": "quarter"}, section_name="Q")
    assert options is None
    assert problems[0].key == "sched.scale.factor"
    assert "quarter" in problems[0].message


def test_literal_none_for_an_optional_int_means_unset() -> None:
    assert plugin("MaxPerCycle", maximum="None").options.maximum is None


# --- Ready -----------------------------------------------------------------------------------


def test_ready_is_activated_minus_pending() -> None:
    out, reason = plugin("Ready").calc(ctx(ready=120, pending=20), 0)
    assert out == 100
    assert reason == "ready=120 - offset=0 - pending=20 = 100"


def test_ready_ignores_its_input_and_never_goes_negative() -> None:
    p = plugin("Ready")
    assert calc(p, ctx(ready=120, pending=20), n=-7) == 100
    assert calc(p, ctx(ready=120, pending=20), n=999) == 100
    out, reason = p.calc(ctx(ready=5, pending=20), 0)
    assert out == 0
    assert "-15 -> 0" in reason


def test_ready_counts_held_as_pending_and_applies_offset() -> None:
    assert calc(plugin("Ready"), ctx(ready=100, pending=10, held=5)) == 85
    assert calc(plugin("Ready", offset="30"), ctx(ready=100, pending=10)) == 60
    # running pilots do not reduce Ready
    assert calc(plugin("Ready"), ctx(ready=100, pending=10, running=500)) == 90


@pytest.mark.parametrize(("ready", "pending"), [(None, 0), (100, None), (None, None)])
def test_ready_gives_zero_without_info(ready: int | None, pending: int | None) -> None:
    out, reason = plugin("Ready").calc(ctx(ready=ready, pending=pending), 7)
    assert out == 0
    assert "missing or stale" in reason


# --- Scale -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("factor", "n", "expected"),
    [
        ("0.25", 73, 19),  # ceil(18.25)
        ("0.25", 1, 1),  # the 2013 fix: a small n does not scale to 0
        ("0.25", 0, 0),
        ("0.25", 4, 1),
        ("1.0", 37, 37),
        ("2", 5, 10),
        ("0.0277777777778", 36, 2),  # float quirk: ceil(1.0000000000008)
        ("0.25", -5, -1),  # ceil(-1.25)
        ("0.5", -1, 0),  # ceil(-0.5) is 0, not -1
        ("0", 100, 0),
    ],
)
def test_scale_rounds_up(factor: str, n: int, expected: int) -> None:
    out, reason = plugin("Scale", factor=factor).calc(ctx(), n)
    assert out == expected
    assert str(expected) in reason


def test_scale_default_is_identity() -> None:
    assert calc(plugin("Scale"), ctx(), 41) == 41


# --- MaxPerCycle / MinPerCycle --------------------------------------------------------------


def test_maxpercycle() -> None:
    assert calc(plugin("MaxPerCycle", maximum="50"), ctx(), 290) == 50
    assert calc(plugin("MaxPerCycle", maximum="50"), ctx(), 20) == 20
    assert calc(plugin("MaxPerCycle", maximum="50"), ctx(), -8) == -8
    assert calc(plugin("MaxPerCycle"), ctx(), 290) == 290
    # a negative maximum would turn the factory into a canceller: refused at load (issue 13)
    _, problems = options_from_keys(load("sched", "MaxPerCycle"), {"sched.maxpercycle.maximum": "-3"})
    assert problems and "greater than or equal to 0" in problems[0].message


def test_minpercycle() -> None:
    assert calc(plugin("MinPerCycle", minimum="2"), ctx(), 0) == 2
    assert calc(plugin("MinPerCycle", minimum="2"), ctx(), 9) == 9
    assert calc(plugin("MinPerCycle", minimum="-2"), ctx(), -5) == -2
    assert calc(plugin("MinPerCycle", minimum="-2"), ctx(), -1) == -1
    assert calc(plugin("MinPerCycle"), ctx(), -5) == -5


# --- MaxPending ------------------------------------------------------------------------------


def test_maxpending_caps_at_maximum_minus_pending() -> None:
    out, reason = plugin("MaxPending", maximum="100").calc(ctx(pending=40), 460)
    assert out == 60
    assert "pending=40, maximum=100 -> cap 60" in reason


def test_maxpending_has_no_cap_while_nothing_is_pending() -> None:
    out, reason = plugin("MaxPending", maximum="100").calc(ctx(pending=0), 500)
    assert out == 500
    assert "pending=0" in reason


def test_maxpending_held_counts_as_pending() -> None:
    # pending 0 but held 40: something is pending, so the cap applies
    assert calc(plugin("MaxPending", maximum="100"), ctx(pending=0, held=40), 500) == 60


def test_maxpending_goes_negative_unless_forbidden() -> None:
    assert calc(plugin("MaxPending", maximum="100"), ctx(pending=150), 350) == -50
    p = plugin("MaxPending", maximum="100", allow_negative="False")
    out, reason = p.calc(ctx(pending=150), 350)
    assert out == 0
    assert "allow_negative" in reason
    # allow_negative does not lift a negative input
    assert calc(p, ctx(pending=150), -4) == -4


def test_maxpending_passes_through_without_info_or_maximum() -> None:
    assert calc(plugin("MaxPending", maximum="100"), ctx(pending=None), 500) == 500
    assert calc(plugin("MaxPending"), ctx(pending=30), 500) == 500


# --- MinPending ------------------------------------------------------------------------------


def test_minpending() -> None:
    assert calc(plugin("MinPending", minimum="10"), ctx(pending=3), 0) == 7
    assert calc(plugin("MinPending", minimum="10"), ctx(pending=3, held=2), 0) == 5
    assert calc(plugin("MinPending", minimum="10"), ctx(pending=3), 9) == 9
    assert calc(plugin("MinPending", minimum="10"), ctx(pending=30), -4) == -4
    assert calc(plugin("MinPending"), ctx(pending=3), -4) == -4


def test_minpending_without_batch_info_is_zero() -> None:
    out, reason = plugin("MinPending", minimum="10").calc(ctx(pending=None), 25)
    assert out == 0
    assert "missing or stale" in reason


# --- MaxToRun --------------------------------------------------------------------------------


def test_maxtorun_may_go_negative() -> None:
    out, reason = plugin("MaxToRun", maximum="100").calc(ctx(pending=20, running=90), 60)
    assert out == -10
    assert "cap -10" in reason
    assert calc(plugin("MaxToRun", maximum="100"), ctx(pending=20, running=30), 60) == 50
    assert calc(plugin("MaxToRun", maximum="100"), ctx(pending=20, running=30), 10) == 10


def test_maxtorun_counts_held_and_retiring() -> None:
    # held pilots wait for a slot, retiring ones still hold one: both count against the cap
    assert calc(plugin("MaxToRun", maximum="100"), ctx(pending=10, held=10, running=70, retiring=5), 60) == 5


def test_maxtorun_missing_info_and_unset() -> None:
    assert calc(plugin("MaxToRun", maximum="100"), ctx(pending=None), 60) == 0
    assert calc(plugin("MaxToRun"), ctx(pending=None), 60) == 60
    assert calc(plugin("MaxToRun"), ctx(pending=500, running=500), 60) == 60


# --- MaxPerFactory ---------------------------------------------------------------------------


def test_maxperfactory_uses_factory_maximum() -> None:
    p = plugin("MaxPerFactory")
    assert calc(p, ctx(factory_active=50, factory_max=100), 20) == 20
    assert calc(p, ctx(factory_active=90, factory_max=100), 20) == 10
    assert calc(p, ctx(factory_active=100, factory_max=100), 20) == 0
    assert calc(p, ctx(factory_active=120, factory_max=100), 20) == 0
    # APF: over the cap gives 0, even for a negative input
    assert calc(p, ctx(factory_active=120, factory_max=100), -5) == 0
    assert calc(p, ctx(factory_active=50, factory_max=100), -5) == -5


def test_maxperfactory_own_key_overrides_factory_setting() -> None:
    out, reason = plugin("MaxPerFactory", maximum="60").calc(ctx(factory_active=50, factory_max=100), 20)
    assert out == 10
    assert "sched.maxperfactory.maximum=60" in reason


def test_maxperfactory_without_maximum_passes_through() -> None:
    out, reason = plugin("MaxPerFactory").calc(ctx(factory_active=5000), 20)
    assert out == 20
    assert "no maximum" in reason


def test_maxperfactory_without_factory_counts_is_zero() -> None:
    assert calc(plugin("MaxPerFactory"), ctx(factory_active=None, factory_max=100), 20) == 0


# --- Fixed / Null ----------------------------------------------------------------------------


def test_fixed_is_a_source() -> None:
    assert calc(plugin("Fixed", pilotspercycle="5"), ctx(), 0) == 5
    assert calc(plugin("Fixed", pilotspercycle="5"), ctx(ready=None, pending=None), -9) == 5
    assert calc(plugin("Fixed", pilotspercycle="0"), ctx(), 9) == 0
    assert calc(plugin("Fixed"), ctx(), 9) == 0


def test_null_is_always_zero() -> None:
    assert calc(plugin("Null"), ctx(ready=900), 44) == 0
    assert calc(plugin("Null"), ctx(ready=None, pending=None), -3) == 0


# --- KeepNRunning ----------------------------------------------------------------------------


def test_keepnrunning_with_target() -> None:
    p = plugin("KeepNRunning", keep_running="20")
    out, reason = p.calc(ctx(running=12, pending=3), 999)
    assert out == 5
    assert "keep_running=20" in reason
    assert calc(p, ctx(running=25, pending=0), 0) == -5
    assert calc(p, ctx(running=12, pending=3, held=5), 0) == 0


def test_keepnrunning_without_target_turns_upstream_number_into_a_delta() -> None:
    assert calc(plugin("KeepNRunning"), ctx(running=12, pending=3), 20) == 5
    assert calc(plugin("KeepNRunning"), ctx(running=12, pending=3), 0) == -15


def test_keepnrunning_ignores_retiring_and_bogus_negative_counts() -> None:
    p = plugin("KeepNRunning", keep_running="20")
    assert calc(p, ctx(running=12, pending=3, retiring=10), 0) == 5
    assert calc(p, ctx(running=-4, pending=3), 0) == 17


def test_keepnrunning_without_batch_info_is_zero() -> None:
    assert calc(plugin("KeepNRunning", keep_running="20"), ctx(pending=None), 7) == 0


# --- StatusTest / StatusOffline --------------------------------------------------------------


@pytest.mark.parametrize(("name", "status"), [("StatusTest", "test"), ("StatusOffline", "offline")])
def test_status_plugins(name: str, status: str) -> None:
    p = plugin(name, pilots="2")
    out, reason = p.calc(ctx(site_status=status), 40)
    assert out == 2
    assert status in reason
    assert calc(plugin(name), ctx(site_status=status), 40) == 0
    for other in ("online", "brokeroff", "test" if status == "offline" else "offline"):
        assert calc(p, ctx(site_status=other), 40) == 40
        assert calc(p, ctx(site_status=other), -3) == -3


@pytest.mark.parametrize("name", ["StatusTest", "StatusOffline"])
@pytest.mark.parametrize(
    "missing",
    [{"ready": None}, {"pending": None}, {"site_status": None}],
)
def test_status_plugins_give_zero_when_any_info_is_missing(name: str, missing: dict[str, None]) -> None:
    assert calc(plugin(name, pilots="2"), ctx(**missing), 40) == 0  # type: ignore[arg-type]


# --- Throttle --------------------------------------------------------------------------------


def test_throttle() -> None:
    p = plugin("Throttle")
    out, reason = p.calc(ctx(history=ThrottleHistory(total=10, short=6)), 40)
    assert out == 1
    assert "6 of 10" in reason
    assert calc(p, ctx(history=ThrottleHistory(total=10, short=5)), 40) == 40  # ratio not exceeded
    assert calc(p, ctx(history=ThrottleHistory(total=0, short=0)), 40) == 40
    assert calc(p, ctx(history=None), 40) == 40
    p2 = plugin("Throttle", ratio="0.2", submit="3")
    assert calc(p2, ctx(history=ThrottleHistory(total=10, short=3)), 40) == 3


# --- WeightedActivated -----------------------------------------------------------------------


def test_weightedactivated() -> None:
    assert calc(plugin("WeightedActivated"), ctx(ready=100, pending=10)) == 90
    p = plugin("WeightedActivated", activated="0.5", pending="2.0")
    assert calc(p, ctx(ready=101, pending=10)) == 30  # int(50.5) - int(20.0)
    assert calc(p, ctx(ready=10, pending=10)) == 0
    assert calc(p, ctx(ready=None), 5) == 0
    assert calc(p, ctx(pending=None), 5) == 0
