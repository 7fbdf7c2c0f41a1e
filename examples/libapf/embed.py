"""libapf in a framework's loop: decide on what was observed, act through the configured plugins.

Run it: .venv/bin/python examples/libapf/embed.py
"""

from __future__ import annotations

from autopyfactory.lib import Observation, Planner

QUEUES = """
[DEFAULT]
schedplugin = Ready, MaxPerCycle, MaxPending
sched.maxpercycle.maximum = 20
sched.maxpending.maximum = 25

[SITE_A]
wmsqueue = ANALY
share = 3

[SITE_B]
wmsqueue = ANALY
share = 1
"""

POLICY = """
cascades:
  - name: cloud
    demand: ELASTIC
    tiers:
      - {queue: PRIVATE, cap: 50, spill_on: [capped]}
      - {queue: SPOT, cost_per_hour: 0.03, quotas: [{per: month, pilots: 1000}]}
"""

CLOUD = """
[PRIVATE]
wmsqueue = ELASTIC
schedplugin = Ready
[SPOT]
wmsqueue = ELASTIC
schedplugin = Ready
"""


def main() -> None:
    grid = Planner.from_ini(QUEUES)
    now = 1_767_225_600.0  # 2026-01-01T00:00:00Z: the framework's clock, not the planner's
    result = grid.decide(
        Observation(now, demand={"ANALY": 80}, supply={"SITE_A": {"pending": 5, "running": 40}, "SITE_B": {}})
    )
    for decision in result.queues.values():
        print(decision.explain())

    cloud = Planner.from_ini(CLOUD, policy=POLICY)
    result = cloud.decide(
        Observation(
            now,
            demand={"ELASTIC": 120},
            supply={"PRIVATE": {"running": 30}, "SPOT": {}},
            quota_left={"SPOT": 1000},
        )
    )
    for name, cascade in result.cascades.items():
        print(f"cascade {name}: demand {cascade.demand}")
        for tier in cascade.tiers:
            print(f"  {tier.plugin}: {tier.n_out:+d} ({tier.reason})")
    # the simulated backends the planner defaults to can take the actions too
    submitted = cloud.act(result)
    print({queue: len(pilots) for queue, pilots in submitted.items()})


if __name__ == "__main__":
    main()
