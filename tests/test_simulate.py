"""``apf simulate``: the real factory loop with Sim backends on a virtual clock, against the
issue's example policy (scaled down so it runs in seconds)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import write

APF = str(Path(sys.executable).parent / "apf")

POLICY = """
cascades:
  - name: analysis
    demand: ANALY
    tiers:
      - {queue: A, cap: 40, full: {pending: 5}, spill_on: [capped, full, backoff],
         drain: {retire_running: true}}
      - {queue: B, cap: 20, quotas: [{per: month, pilots: 100}], spill_on: [quota, backoff],
         cost_per_hour: 0.02, drain: {retire_running: true}}
      - {queue: C, cost_per_hour: 0.1, drain: {retire_running: true}}
"""

QUEUES = """
[DEFAULT]
enabled = True
wmsqueue = ANALY
wmsstatusplugin = Sim
batchstatusplugin = Sim
batchsubmitplugin = Sim
schedplugin = Ready
apfqueue.sleep = 600
batchsubmit.sim.runtime = 2h
batchsubmit.sim.start_delay = 60
[A]
batchsubmit.sim.capacity = 30
[B]
batchsubmit.sim.capacity = 1000
[C]
batchsubmit.sim.capacity = 10000
"""

# 20 (A alone, below its 30 slots) -> 38 (between A's slots and its cap W = 40: A fills up and
# counts as full, then B starts) -> 60 (B at its cap, then out of quota: C) ->
# a new month (B again) -> demand falls in steps to 0 (C goes first, then B, then A)
DEMAND = """time,wmsqueue,activated
2027-01-31T00:00:00Z,ANALY,20
2027-01-31T02:00:00Z,ANALY,38
2027-01-31T04:00:00Z,ANALY,60
2027-02-01T12:00:00Z,ANALY,45
2027-02-01T13:00:00Z,ANALY,30
2027-02-01T14:00:00Z,ANALY,10
2027-02-01T15:00:00Z,ANALY,0
"""

START = "2027-01-31T00:00:00Z"


@pytest.fixture
def example(tmp_path: Path) -> Path:
    write(tmp_path / "policy.yaml", POLICY)
    write(tmp_path / "queues.conf", QUEUES)
    write(tmp_path / "demand.csv", DEMAND)
    return write(
        tmp_path / "autopyfactory.conf",
        "[Factory]\nfactoryId = sim-test\nqueueConf = queues.conf\npolicyConf = policy.yaml\n"
        f"factory.statedir = {tmp_path / 'state'}\n",
    )


def simulate(conf: Path, *extra: str, days: float = 2) -> dict[str, Any]:
    out = subprocess.run(
        [
            APF,
            "simulate",
            "--conf",
            str(conf),
            "--demand",
            str(conf.parent / "demand.csv"),
            "--start",
            START,
            "--days",
            str(days),
            "--step",
            "10m",
            "--json",
            *extra,
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def series(report: dict[str, Any], tier: str, what: str) -> list[tuple[str, Any]]:
    return [(c["time"], c["tiers"][tier][what]) for c in report["cycles"]]


def test_example_policy_in_the_simulator(example: Path) -> None:
    report = simulate(example, "--per-cycle")
    cycles = report["cycles"]
    active = {t: [(c["tiers"][t]["pending"] or 0) + c["tiers"][t]["running"] for c in cycles] for t in "ABC"}
    n = {t: [c["tiers"][t]["n"] or 0 for c in cycles] for t in "ABC"}
    times = [c["time"] for c in cycles]
    first_b = next(i for i, v in enumerate(n["B"]) if v > 0)
    # A fills first: with demand 20 (below its 30 slots) only A is used
    assert all(n["B"][i] == 0 and n["C"][i] == 0 for i in range(times.index("2027-01-31T02:00:00Z")))
    assert max(active["A"][: times.index("2027-01-31T02:00:00Z")]) == 20
    # B starts only once A counts as full: demand 38 is below A's cap (40), but A has 30 slots,
    # so its extra pilots wait; B gets demand in the cycle A is found full, not before
    assert times.index("2027-01-31T02:00:00Z") < first_b < times.index("2027-01-31T04:00:00Z")
    a = cycles[first_b]["tiers"]["A"]
    assert "full" in a["reason"] and a["running"] == 30 and a["pending"] > 5
    assert all("full" not in (c["tiers"]["A"]["reason"] or "") for c in cycles[:first_b])
    # while B sits at its cap with quota left, C gets nothing
    quota_out = next(i for i, c in enumerate(cycles) if "out of quota" in (c["tiers"]["B"]["reason"] or ""))
    assert all(v == 0 for v in n["C"][:quota_out])
    assert any("capped" in (c["tiers"]["B"]["reason"] or "") for c in cycles[first_b:quota_out])
    # B stops at its quota in January and C takes the rest
    months = report["tiers"]["B"]["months"]
    assert months["2027-01"]["submitted"] == 100
    assert report["tiers"]["C"]["months"]["2027-01"]["submitted"] > 0
    # on the first of the next month B is used again (within the first cycle or two)
    feb = times.index("2027-02-01T00:00:00Z")
    assert max(n["B"][feb : feb + 2]) > 0 and months["2027-02"]["submitted"] > 0
    # when demand falls, capacity comes back from the last tier first: no tier gives back while
    # a later one still holds pilots it does not give back in the same cycle
    drop = times.index("2027-02-01T12:00:00Z")
    order = "ABC"
    gave_back = []
    for i in range(drop, len(cycles)):
        for j, tier in enumerate(order):
            if n[tier][i] < 0:
                gave_back.append(tier)
                for later in order[j + 1 :]:
                    assert n[later][i] < 0 or active[later][i] == 0, (times[i], tier, later)
    assert set(gave_back) == set(order)  # every tier gave something back
    assert all(active[t][-1] == 0 for t in order)  # and zero demand emptied them all
    kinds = {e["kind"] for e in report["events"]}
    assert {"full", "spill", "quota_exhausted", "drain"} <= kinds
    # costs follow pilot-hours
    c_jan = report["tiers"]["C"]["months"]["2027-01"]
    assert c_jan["cost"] == pytest.approx(c_jan["pilot_hours"] * 0.1, abs=0.01)


def test_quota_holds_across_a_restart_mid_month(example: Path, tmp_path: Path) -> None:
    straight = simulate(example, days=3)
    state = tmp_path / "simstate"
    first = simulate(example, "--state", str(state), "--stop-at", "2027-01-31T09:00:00Z", days=3)
    assert first["stopped_at"] == "2027-01-31T09:00:00Z"
    resumed = simulate(example, "--state", str(state), "--resume", days=3)
    for report in (straight, resumed):
        for month, m in report["tiers"]["B"]["months"].items():
            assert m["submitted"] <= 100, (month, m)
    # the restart changes nothing: same quota use per month as the uninterrupted run
    assert {m: v["submitted"] for m, v in resumed["tiers"]["B"]["months"].items()} == {
        m: v["submitted"] for m, v in straight["tiers"]["B"]["months"].items()
    }


def test_bad_inputs_give_clear_errors(example: Path) -> None:
    write(example.parent / "bad.csv", "time,wmsqueue,activated\nnot-a-time,ANALY,3\n")
    out = subprocess.run(
        [
            APF,
            "simulate",
            "--conf",
            str(example),
            "--demand",
            str(example.parent / "bad.csv"),
            "--start",
            START,
            "--days",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode != 0 and "bad.csv" in out.stderr and "Traceback" not in out.stderr
    write(
        example.parent / "queues.conf",
        QUEUES.replace("batchsubmitplugin = Sim", "batchsubmitplugin = Local\nexecutable = /bin/true"),
    )
    out = subprocess.run(
        [
            APF,
            "simulate",
            "--conf",
            str(example),
            "--demand",
            str(example.parent / "demand.csv"),
            "--start",
            START,
            "--days",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2 and "must use batchsubmitplugin = Sim" in out.stderr


def test_a_pilot_hours_quota_holds_in_the_simulator(example: Path) -> None:
    # B may use 40 pilot-hours a month: with 2-hour pilots that is far fewer than its 100 pilots
    policy = POLICY.replace("quotas: [{per: month, pilots: 100}]", "quotas: [{per: month, pilot_hours: 40}]")
    write(example.parent / "policy.yaml", policy)
    report = simulate(example, days=1)
    b = report["tiers"]["B"]["months"]["2027-01"]
    # submissions stop once the hours used reach the limit; pilots already running finish
    assert 0 < b["submitted"] <= 40
    assert b["pilot_hours"] <= 40 + b["submitted"] * 2
    assert report["tiers"]["C"]["months"]["2027-01"]["submitted"] > 0  # the rest went on to C


def _run(args: list[str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([APF, "simulate", *args], capture_output=True, text=True, timeout=timeout)


def test_text_report_shows_events_with_their_numbers(example: Path) -> None:
    # crashed with KeyError: 'tier' as soon as the run had an event
    out = _run(
        [
            "--conf",
            str(example),
            "--demand",
            str(example.parent / "demand.csv"),
            "--start",
            START,
            "--days",
            "1",
        ]
    )
    assert out.returncode == 0, out.stderr
    assert "Traceback" not in out.stderr
    assert "A spill n=" in out.stdout and "-> B" in out.stdout
    assert "unserved" in out.stdout and "time to a running pilot" in out.stdout


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--days", "nan", "--days must be a number of days > 0"),
        ("--days", "inf", "--days must be a number of days > 0"),
        ("--days", "1e6", "--days must be a number of days > 0 and <= 3660"),
        ("--days", "0", "--days must be"),
        ("--days", "-2", "--days must be"),
        ("--days", "two", "--days 'two' is not a number"),
        ("--step", "1e-9", "--step must be at least 1 s"),
        ("--step", "-5", "--step: "),
        ("--step", "1s", "more than 1,000,000: use a longer --step or fewer --days"),
        ("--start", "yesterday", "--start 'yesterday' is not an ISO 8601 time"),
        ("--stop-at", "2026-01-01T00:00:00Z", "--stop-at must lie after --start"),
    ],
)
def test_command_line_values_are_checked(example: Path, option: str, value: str, message: str) -> None:
    args = {"--conf": str(example), "--demand": str(example.parent / "demand.csv"), "--start": START}
    args |= {"--days": "20", "--step": "10m"}
    args[option] = value
    out = _run([f"{k}={v}" for k, v in args.items()], timeout=60)
    assert out.returncode == 2, (out.stdout[-500:], out.stderr)
    assert message in out.stderr and "Traceback" not in out.stderr


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (
            "time,wmsqueue,activated\n0,ANALY,100000000000000000000\n",
            "[line 2] activated: 100000000000000000000 is more",
        ),
        ("time,wmsqueue,activated\n0,ANALY,5\x00\n", "line 2 contains a NUL byte"),
        ("time,wmsqueue,activated\n0,ANALY," + "7" * 300_000 + "\n", "not a valid CSV file: line 2"),
    ],
)
def test_huge_or_malformed_trace_values_are_refused(example: Path, content: str, message: str) -> None:
    write(example.parent / "bad.csv", content)
    out = _run(
        ["--conf", str(example), "--demand", str(example.parent / "bad.csv"), "--start", START, "--days", "1"]
    )
    assert out.returncode == 1 and "bad.csv" in out.stderr and message in out.stderr, out.stderr
    assert "Traceback" not in out.stderr


def test_events_are_reported_once_per_change_with_n_and_to(example: Path) -> None:
    report = simulate(example, days=2)
    events = report["events"]
    # each condition is reported when it starts to hold, not every cycle it holds (the run
    # before: 65 events, A full 16 times, B's quota exhausted 14 times in two days); drains are
    # actions. B's quota runs out once a month; A is found full once.
    conditions = [(e["kind"], e["tier"]) for e in events if e["kind"] != "drain"]
    assert conditions.count(("quota_exhausted", "B")) == 2  # January, February
    assert conditions.count(("full", "A")) == 1
    assert len(conditions) <= 8, conditions
    assert all(isinstance(e["n"], int) for e in events)
    spills = [e for e in events if e["kind"] == "spill"]
    assert spills and all(e["to"] in ("B", "C") for e in spills)
    assert not [e for e in events if e["kind"] == "full" and "not starting" in e["message"] and e["n"] == 0]


CHURN_POLICY = """
cascades:
  - name: c
    demand: ANALY
    tiers:
      - {queue: A, cap: 40, full: {pending: 5, oldest_pending: 40m}, spill_on: [capped, full, backoff]}
      - {queue: C, cost_per_hour: 0.1, drain: {retire_running: true, hysteresis: 30m}}
"""


def test_a_tier_full_by_pending_and_age_does_not_churn(example: Path) -> None:
    write(example.parent / "policy.yaml", CHURN_POLICY)
    write(example.parent / "queues.conf", QUEUES.replace("[B]\nbatchsubmit.sim.capacity = 1000\n", ""))
    write(example.parent / "demand.csv", "time,wmsqueue,activated\n2027-01-31T00:00:00Z,ANALY,100\n")
    report = simulate(example, days=4)
    a = report["tiers"]["A"]["months"]
    never = sum(m["never_started"] for m in a.values())
    # filled once to its cap (40 for 30 slots): those 10 are withdrawn; afterwards A is refilled
    # only to the 30 it showed it can run (the run before: refilled and withdrawn all along)
    assert never <= 10, a
    assert [e["kind"] for e in report["events"] if e["tier"] == "A"].count("full") == 1
    assert sum(m["peak_running"] for m in a.values()) >= 30


def test_quota_counts_pilots_started_not_submitted(example: Path) -> None:
    # B's pilots need two hours to start; the demand is gone after half an hour: B submitted 30,
    # none started, all cancelled: B's monthly quota is whole again
    write(
        example.parent / "policy.yaml",
        "cascades: [{name: c, demand: ANALY, tiers: [{queue: B, quotas: [{per: month, pilots: 100}]}]}]\n",
    )
    queues = QUEUES.replace("[B]\nbatchsubmit.sim.capacity = 1000", "[B]\nbatchsubmit.sim.start_delay = 2h")
    write(example.parent / "queues.conf", queues.replace("[A]\nbatchsubmit.sim.capacity = 30\n", ""))
    write(
        example.parent / "demand.csv",
        "time,wmsqueue,activated\n2027-01-31T00:00:00Z,ANALY,30\n2027-01-31T00:30:00Z,ANALY,0\n",
    )
    report = simulate(example, days=0.5)
    b = report["tiers"]["B"]["months"]["2027-01"]
    assert (b["submitted"], b["started"], b["never_started"]) == (30, 0, 30)
    assert b["quota_used"] == 0  # reserved at submission, given back when they ended unstarted


def test_weights_split_demand_in_the_engine(example: Path) -> None:
    write(
        example.parent / "policy.yaml",
        "cascades: [{name: c, demand: ANALY, tiers: ["
        "{queue: A, priority: 1, weight: 3}, {queue: B, priority: 1, weight: 1}, {queue: C, priority: 2}]}]\n",
    )
    write(
        example.parent / "queues.conf",
        QUEUES.replace("batchsubmit.sim.runtime = 2h", "batchsubmit.sim.runtime = 1d"),
    )
    write(example.parent / "demand.csv", "time,wmsqueue,activated\n2027-01-31T00:00:00Z,ANALY,24\n")
    report = simulate(example, days=0.5)
    submitted = {t: report["tiers"][t]["months"]["2027-01"]["submitted"] for t in "AB"}
    assert submitted == {"A": 18, "B": 6}
    assert report["tiers"]["C"]["months"] == {}


def test_compare_runs_configurations_side_by_side_against_the_optimum(example: Path, tmp_path: Path) -> None:
    # an AutoPyFactory-style configuration of the same sites: independent queues, static chains
    static = tmp_path / "static"
    write(
        static / "queues.conf",
        QUEUES.replace(
            "schedplugin = Ready", "schedplugin = Ready, Scale, MaxPending\nwmsstatus.sim.consume = True"
        )
        .replace("[B]\n", "[B]\nsched.ready.offset = 5\nbatchsubmit.sim.cost_per_hour = 0.02\n")
        .replace("[C]\n", "[C]\nsched.ready.offset = 10\nbatchsubmit.sim.cost_per_hour = 0.1\n"),
    )
    write(static / "autopyfactory.conf", "[Factory]\nfactoryId = static\nqueueConf = queues.conf\n")
    policy = example.parent / "policy.yaml"
    out = _run(
        [
            "--compare",
            str(policy),
            str(static / "autopyfactory.conf"),
            "--conf",
            str(example),
            "--demand",
            str(example.parent / "demand.csv"),
            "--start",
            START,
            "--days",
            "2",
            "--json",
        ],
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    configs = {c["label"]: c for c in result["configurations"]}
    assert set(configs) == {"policy", "static"}
    optimum = result["optimum"]
    least = optimum["best"]["unserved_job_hours"]
    for c in configs.values():
        total = c["total"]
        assert total["demand_job_hours"] == pytest.approx(20 * 2 + 38 * 2 + 60 * 32 + 45 + 30 + 10, rel=1e-6)
        assert set(total["pilot_hours"]) <= {"A", "B", "C"} and total["cost"] > 0
        assert total["mean_wait_s"] is not None and total["p95_wait_s"] >= total["mean_wait_s"] * 0.5
        # the optimum is a lower bound: never more unserved, never dearer at the same unserved
        assert least <= total["unserved_job_hours"] + 1e-6
        vs = c["vs_optimum"]
        assert vs["cheapest_cost_at_this_unserved"] <= total["cost"] * 1.0001 + 0.01
        assert vs["unserved_over_least"] == pytest.approx(total["unserved_job_hours"] - least, abs=0.01)
    # B's quota (100 a month) shows for both; the static chains cannot hold it
    assert configs["policy"]["total"]["quota_used"]["B"] <= 200
    assert "B" in configs["static"]["total"]["quota_used"]
    text = _run(
        [
            "--compare",
            str(policy),
            str(static / "autopyfactory.conf"),
            "--conf",
            str(example),
            "--demand",
            str(example.parent / "demand.csv"),
            "--start",
            START,
            "--days",
            "1",
            "--no-optimum",
        ]
    )
    assert text.returncode == 0, text.stderr
    assert "unserved job-hours" in text.stdout and "quota used B (of 100/month)" in text.stdout
    # a policy file needs the queues it runs with
    out = _run(
        [
            "--compare",
            str(policy),
            "--demand",
            str(example.parent / "demand.csv"),
            "--start",
            START,
            "--days",
            "1",
        ]
    )
    assert out.returncode == 1 and "a policy file needs --conf" in out.stderr
