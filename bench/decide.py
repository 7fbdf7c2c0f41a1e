"""Decision-pass benchmark: 10,000 queues, 1,000,000 pilot records, a 7-plugin chain per queue.

Prints as its last line: decide_s=<seconds> aggregate_s=<seconds> peak_mb=<MB>
Goals on a 2-core machine: decide_s <= 0.5, aggregate_s <= 1.5, peak_mb < 1500.
"""

from __future__ import annotations

import argparse
import random
import resource
import time

from autopyfactory.config.validate import options_from_keys
from autopyfactory.decide.base import SchedContext, run_chain
from autopyfactory.decide.supply import aggregate
from autopyfactory.model import Demand, Pilot, PilotState
from autopyfactory.plugins.base import load

CHAIN = ["Ready", "Scale", "MaxPerCycle", "MinPerCycle", "StatusTest", "StatusOffline", "MaxPending"]
KEYS = {
    "sched.scale.factor": "0.5",
    "sched.maxpercycle.maximum": "50",
    "sched.minpercycle.minimum": "0",
    "sched.statustest.pilots": "2",
    "sched.maxpending.maximum": "100",
}
STATES = [PilotState.PENDING, PilotState.RUNNING, PilotState.RUNNING, PilotState.HELD, PilotState.DONE]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--queues", type=int, default=10_000)
    parser.add_argument("--pilots", type=int, default=1_000_000)
    args = parser.parse_args()
    rng = random.Random(7)
    names = [f"SITE_{i:05d}-ce{i % 7}" for i in range(args.queues)]
    t0 = time.perf_counter()
    pilots = [
        Pilot(f"{i}.0", names[rng.randrange(args.queues)], STATES[i % 5], "bench", submitted_at=float(i))
        for i in range(args.pilots)
    ]
    build_s = time.perf_counter() - t0
    chain = []
    for name in CHAIN:
        cls = load("sched", name)
        options, problems = options_from_keys(cls, KEYS)
        assert not problems, problems
        chain.append(cls(options))
    now = time.time()
    demands = {n: Demand(n, ready=rng.randrange(0, 400), site_status="online", time=now) for n in names}

    t0 = time.perf_counter()
    supplies = aggregate(pilots, now)
    aggregate_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    total = 0
    for name in names:
        demand = demands[name]
        ctx = SchedContext(name, now, demand, supplies.get(name), demand.site_status)
        n, _steps = run_chain(chain, ctx)
        total += n
    decide_s = time.perf_counter() - t0
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"queues={args.queues} pilots={args.pilots} built_in={build_s:.2f}s pilots_to_submit={total}")
    print(f"decide_s={decide_s:.3f} aggregate_s={aggregate_s:.3f} peak_mb={peak_mb:.0f}")


if __name__ == "__main__":
    main()
