"""``apf simulate --compare`` benchmark: two months at a 10-minute step, three configurations
(the example cascade, the eager cascade, AutoPyFactory-style static chains) and the optimum.

Measured side by side in one run: the whole comparison (wall and CPU, the simulations run in
parallel processes), one simulation alone, and the optimum alone, with the machine's load average
(the machine is shared: a loaded machine stretches wall time, CPU time much less).

Goal: the comparison in under 60 s wall on the 2-core test machine (``compare_s / 60 <= 1``).
Prints as its last line:
compare_s=<s> compare_cpu_s=<s> single_s=<s> optimum_s=<s> goal_ratio=<compare_s/60> load=<1-min avg>
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
POLICY = REPO / "examples" / "policy"
APF = str(Path(sys.executable).parent / "apf")
GOAL_S = 60.0


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _run(args: list[str]) -> tuple[dict, float, float]:
    cpu0, t0 = _children_cpu(), time.perf_counter()
    out = subprocess.run([APF, "simulate", *args, "--json"], capture_output=True, text=True, check=True)
    return json.loads(out.stdout), time.perf_counter() - t0, _children_cpu() - cpu0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--demand", default=str(POLICY / "demand.csv"))
    parser.add_argument("--days", default="62")
    args = parser.parse_args()
    span = ["--demand", args.demand, "--start", "2027-01-01T00:00:00Z", "--days", args.days, "--step", "10m"]
    load_before = os.getloadavg()[0]
    result, compare_s, compare_cpu = _run(
        [
            "--compare",
            str(POLICY / "cascade.yaml"),
            str(POLICY / "cascade-eager.yaml"),
            str(POLICY / "static" / "autopyfactory.conf"),
            "--conf",
            str(POLICY / "autopyfactory.conf"),
            *span,
        ]
    )
    single, single_s, single_cpu = _run(["--conf", str(POLICY / "autopyfactory.conf"), *span])
    load = max(load_before, os.getloadavg()[0])
    for c in result["configurations"]:
        print(f"{c['label']}: {c['cycles']} cycles simulated in {c['elapsed_s']:.1f} s (in parallel)")
    print(
        f"optimum: {result['optimum']['variables']} variables, solved in {result['optimum']['solve_s']:.1f} s"
    )
    print(
        f"one simulation alone: {single['cycles_run']} cycles in {single_s:.1f} s wall, {single_cpu:.1f} s CPU"
    )
    print(
        f"comparison: {compare_s:.1f} s wall, {compare_cpu:.1f} s CPU "
        f"(goal {GOAL_S:.0f} s wall on 2 cores: ratio {compare_s / GOAL_S:.2f}; load average {load:.1f})"
    )
    print(
        f"compare_s={compare_s:.1f} compare_cpu_s={compare_cpu:.1f} single_s={single_s:.1f} "
        f"optimum_s={result['optimum']['solve_s']:.1f} goal_ratio={compare_s / GOAL_S:.2f} load={load:.1f}"
    )


if __name__ == "__main__":
    main()
