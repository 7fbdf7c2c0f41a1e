"""What the comparison measures, on cases worked out by hand: service (unserved job-hours, time
to a running pilot) and the offline optimum's linear programme (sim/metrics.py, sim/optimum.py)."""

from __future__ import annotations

import pytest

from autopyfactory.config.policy import Quota
from autopyfactory.decide.periods import parse_time
from autopyfactory.sim.metrics import Months, ServiceMeter, combine, percentile
from autopyfactory.sim.optimum import Optimum, TierModel, solve_optimum
from autopyfactory.sim.trace import parse_trace

START = parse_time("2027-01-31T20:00:00Z")  # four hours before a month boundary
HOUR = 3600.0


def test_unserved_job_hours_and_time_to_a_running_pilot() -> None:
    months = Months(START, START + 10 * HOUR)
    meter = ServiceMeter()
    # 10 jobs from the start; 5 pilots start after 10 minutes, 5 more after 20
    for t in (600.0, 1200.0):
        for _ in range(5):
            meter.running(START + t, +1)
    # at 2h the demand falls to 4: 6 pilots too many, nobody waits
    demand = [(START, 10), (START + 2 * HOUR, 4)]
    report = meter.report(demand, START, START + 3 * HOUR, months)
    (month,) = report.months.values()
    assert month.unserved_job_hours == pytest.approx((10 * 600 + 5 * 600) / 3600)
    assert month.demand_job_hours == pytest.approx(10 * 2 + 4 * 1)
    assert month.served == 10
    assert month.mean_wait_s == pytest.approx(900) and month.p95_wait_s == 1200
    assert report.waiting_at_end == 0


def test_pilots_ending_make_demand_wait_again_and_months_split() -> None:
    months = Months(START, START + 10 * HOUR)
    meter = ServiceMeter()
    meter.running(START, +2)  # two pilots from the start ...
    meter.running(START + 3 * HOUR, -1)  # ... one ends an hour before midnight
    meter.running(START + 5 * HOUR, +1)  # replaced an hour after it
    report = meter.report([(START, 2)], START, START + 6 * HOUR, months)
    assert list(report.months) == ["2027-01", "2027-02"]
    jan, feb = report.months["2027-01"], report.months["2027-02"]
    assert jan.unserved_job_hours == pytest.approx(1.0) and feb.unserved_job_hours == pytest.approx(1.0)
    assert jan.served == 1 and jan.mean_wait_s == pytest.approx(2 * HOUR)  # joined in January
    assert feb.served == 0
    _, total, waiting = combine([report, report])
    assert total.unserved_job_hours == pytest.approx(4.0) and total.served == 2 and waiting == 0
    # a unit still waiting at the end is counted apart, not as served
    meter2 = ServiceMeter()
    assert meter2.report([(START, 3)], START, START + HOUR, months).waiting_at_end == 3


def test_percentile_is_weighted() -> None:
    assert percentile([(10.0, 94), (100.0, 6)], 0.95) == 100.0
    assert percentile([(10.0, 95), (100.0, 5)], 0.95) == 10.0
    assert percentile([], 0.95) is None


def tier(name: str, **kw: object) -> TierModel:
    base: dict = {"wmsqueue": "W", "site": name, "capacity": 1000, "start_delay": 0.0, "runtime": HOUR}
    return TierModel(name=name, **(base | kw))  # type: ignore[arg-type]


def trace(level: int, hours: float) -> object:
    return parse_trace(f"0,W,{level}\n{int(hours * HOUR)},W,0\n", START)


def test_optimum_serves_everything_at_the_least_cost() -> None:
    opt = solve_optimum([tier("A", cost_per_hour=1.0)], trace(5, 10), START, START + 10 * HOUR, 600)
    assert opt.best.unserved_job_hours == pytest.approx(0, abs=1e-4)
    assert opt.best.cost == pytest.approx(50, rel=1e-4)
    # pilots of one hour: 50 job-hours need at least 50 of them
    started = sum(v["started"].get("A", 0.0) for v in opt.best.months.values())
    assert started >= 50 - 0.1


def test_optimum_respects_capacity_cheap_tiers_first_and_caps() -> None:
    tiers = [tier("A", capacity=3, cost_per_hour=0.0), tier("C", cost_per_hour=1.0, cap=1)]
    opt = solve_optimum(tiers, trace(5, 10), START, START + 10 * HOUR, 600)
    # A's 3 slots are free, C takes 1 (its cap): 1 job unserved for 10 hours
    assert opt.best.unserved_job_hours == pytest.approx(10, rel=1e-4)
    assert opt.best.cost == pytest.approx(10, rel=1e-4)


def test_optimum_quota_and_start_delay() -> None:
    quota = (Quota(per="month", pilots=4),)
    # 1 job for 10 hours within one month, one-hour pilots, 4 a month: 6 job-hours unserved
    start = parse_time("2027-01-10T00:00:00Z")
    t = parse_trace("0,W,1\n36000,W,0\n", start)
    opt = solve_optimum([tier("B", quotas=quota, cost_per_hour=1.0)], t, start, start + 10 * HOUR, 600)
    assert opt.best.unserved_job_hours == pytest.approx(6, rel=1e-4)
    # a 30-minute start delay: nothing runs in the first half hour
    opt = solve_optimum([tier("A", start_delay=1800.0)], trace(1, 2), START, START + 2 * HOUR, 600)
    assert opt.best.unserved_job_hours == pytest.approx(0.5, rel=1e-4)


def test_cheapest_schedule_at_a_given_level_of_unserved_demand() -> None:
    tiers = [tier("A", capacity=2, cost_per_hour=0.0), tier("C", cost_per_hour=1.0)]
    model = Optimum(tiers, trace(5, 10), START, START + 10 * HOUR, 600)
    assert model.least().cost == pytest.approx(30, rel=1e-4)  # 3 jobs on C for 10 hours
    assert model.cheapest(10.0).cost == pytest.approx(20, rel=1e-4)  # 10 job-hours left: C does 20
    assert model.cheapest(0.0).cost == pytest.approx(30, rel=1e-4)  # no less than possible
    assert model.result.cost_at(10.0).cost == pytest.approx(20, rel=1e-4)
