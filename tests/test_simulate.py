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
