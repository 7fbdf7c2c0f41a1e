"""libapf through its public API only (``autopyfactory.lib``): what an embedding framework sees."""

from __future__ import annotations

import pytest

from autopyfactory.lib import (
    Cancel,
    ConfigError,
    Demand,
    Observation,
    PilotInfo,
    Planner,
    Retire,
    Submit,
)

T0 = 1_700_000_000.0

QUEUES = """
[DEFAULT]
schedplugin = Ready, MaxPerCycle, MaxPending
sched.maxpercycle.maximum = 50
sched.maxpending.maximum = 30

[CE1]
wmsqueue = ANALY_X
share = 2

[CE2]
wmsqueue = ANALY_X
share = 1
"""


def test_chain_arithmetic_and_shares_from_ini_text() -> None:
    planner = Planner.from_ini(QUEUES)
    result = planner.decide(
        Observation(T0, demand={"ANALY_X": 90}, supply={"CE1": {"pending": 10}, "CE2": {"pending": 0}})
    )
    ce1, ce2 = result.queues["CE1"], result.queues["CE2"]
    # 90 jobs split 2:1 -> 60 and 30; CE1: 60 - 10 pending = 50, MaxPending 30 - 10 = 20
    assert [(s.plugin, s.n_in, s.n_out) for s in ce1.steps] == [
        ("Ready", 0, 50),
        ("MaxPerCycle", 50, 50),
        ("MaxPending", 50, 20),
    ]
    assert ce1.n == 20 and ce1.binding == "MaxPending" and ce1.actions == (Submit("CE1", 20),)
    assert ce2.n == 30 and ce2.actions == (Submit("CE2", 30),)
    assert "MaxPending" in ce1.explain() and "20" in ce1.explain()
    assert result.as_dict()["queues"]["CE1"]["actions"] == [{"action": "submit", "n": 20}]


def test_missing_observations_decide_nothing_as_in_the_daemon() -> None:
    planner = Planner.from_ini(QUEUES)
    result = planner.decide(Observation(T0, demand={}, supply={"CE1": {}}))  # no WMS info, no CE2 info
    assert result.queues["CE1"].n == 0 and result.queues["CE1"].actions == ()
    assert "no WMS info" in result.queues["CE1"].steps[0].reason or result.queues["CE1"].steps[0].n_out == 0
    assert result.queues["CE2"].n == 0


def test_scale_down_takes_idle_pilots_when_the_queue_allows_it() -> None:
    planner = Planner.from_dicts(
        {
            "Q": {
                "schedplugin": ["Ready", "MaxPending"],
                "sched.maxpending.maximum": 0,
                "sched.maxpending.allow_negative": True,
                "batchsubmit.sim.overlay.peaceful": "False",
            }
        }
    )
    pilots = [
        PilotInfo("1", "running", submitted_at=T0 - 900, started_at=T0 - 800),
        PilotInfo("2", "pending", submitted_at=T0 - 600),
        PilotInfo("3", "pending", submitted_at=T0 - 300),
    ]
    result = planner.decide(Observation(T0, demand={"Q": Demand("Q", ready=0)}, pilots={"Q": pilots}))
    decision = result.queues["Q"]
    assert decision.n == -2
    # idle pilots first, newest first; the running one is not touched
    assert decision.actions == (Cancel("Q", ("3", "2")),)
    assert not any(isinstance(a, Retire) for a in decision.actions)


CASCADE = {
    "cascades": [
        {
            "name": "c",
            "demand": "W",
            "tiers": [
                {"queue": "CHEAP", "cap": 10, "spill_on": ["capped"]},
                {"queue": "DEAR", "cost_per_hour": 0.1, "quotas": [{"per": "month", "pilots": 5}]},
            ],
        }
    ]
}


def test_cascade_fills_cheap_first_spills_and_respects_the_quota_the_framework_reports() -> None:
    queues = {
        "CHEAP": {"wmsqueue": "W", "schedplugin": "Ready"},
        "DEAR": {"wmsqueue": "W", "schedplugin": "Ready"},
    }
    planner = Planner.from_dicts(queues, policy=CASCADE)
    result = planner.decide(
        Observation(T0, demand={"W": 30}, supply={"CHEAP": {}, "DEAR": {}}, quota_left={"DEAR": 3})
    )
    assert result.queues["CHEAP"].actions == (Submit("CHEAP", 10),)
    assert result.queues["DEAR"].actions == (Submit("DEAR", 3),)  # the quota left, not the demand
    assert result.queues["CHEAP"].cascade == "c"
    summary = result.cascades["c"]
    assert summary.demand == 30 and summary.unmet == 30  # before this cycle's submissions
    assert [(s.plugin, s.n_out) for s in summary.tiers] == [("CHEAP", 10), ("DEAR", 3)]
    assert "17 left unmet" in summary.tiers[1].reason
    # the next observation: the quota is spent; DEAR takes nothing more
    result = planner.decide(
        Observation(
            T0 + 60,
            demand={"W": 30},
            supply={"CHEAP": {"pending": 10}, "DEAR": {"pending": 3}},
            quota_left={"DEAR": 0},
        )
    )
    assert result.queues["DEAR"].actions == ()
    assert "quota" in result.queues["DEAR"].steps[0].reason


def test_bad_configuration_is_a_config_error_naming_section_and_key() -> None:
    with pytest.raises(ConfigError) as info:
        Planner.from_dicts({"Q": {"schedplugin": "Ready, MaxPerCycle", "sched.maxpercycle.maximun": "5"}})
    text = "\n".join(str(p) for p in info.value.problems)
    assert "[Q]" in text and "sched.maxpercycle.maximun" in text and "maximum" in text


def test_act_submits_through_the_configured_plugin() -> None:
    from autopyfactory.sim.batch import reset_world

    reset_world()
    planner = Planner.from_dicts({"Q": {"schedplugin": "Ready", "batchsubmit.sim.capacity": "2"}})
    result = planner.decide(Observation(T0, demand={"Q": 3}, supply={"Q": {}}))
    submitted = planner.act(result)
    assert [p.queue for p in submitted["Q"]] == ["Q", "Q", "Q"]
    assert all(p.intent_id for p in submitted["Q"])


def test_the_documented_example_runs() -> None:
    import subprocess
    import sys
    from pathlib import Path

    example = Path(__file__).resolve().parents[1] / "examples" / "libapf" / "embed.py"
    out = subprocess.run([sys.executable, str(example)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "SITE_A: n = 20 (binding: MaxPerCycle)" in out.stdout
    assert "{'PRIVATE': 20, 'SPOT': 70}" in out.stdout
