"""Kill soak: ``apf run`` (Local backend, SQLite) SIGKILLed at random moments of its cycles, 100
times or more, in rounds of 20 (``tests/killsoak.py``: half the kills land at a random moment,
half a few milliseconds after a submission began). After each round one more start converges and
the round is checked: exactly the demanded pilots exist, every one recorded, no intent open, none
submitted twice.

Last line: ``kills=<n> rounds=<n> in_flight=<n> adopted=<n> pilots=<alive>/<demanded>
never_started=<n> lost=<n> doubled=<n> problems=<n> elapsed_s=<s>``. Goal: lost = doubled =
problems = 0. ``never_started`` counts pilot directories a kill left without their process (the
Local backend reports them failed; the factory replaced them). Exit status 1 when a round failed
(its problems are printed and its directory kept).
"""

from __future__ import annotations

import argparse
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository's tests package

from tests.killsoak import kill_pilots, run_round


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=100, help="at least this many kills (default 100)")
    parser.add_argument("--per-round", type=int, default=20, help="kills per round (default 20)")
    parser.add_argument("--seed", type=int, default=None, help="random seed (default: random)")
    parser.add_argument("-v", "--verbose", action="store_true", help="a line per kill")
    args = parser.parse_args()
    seed = args.seed if args.seed is not None else random.randrange(1 << 30)
    rng = random.Random(seed)
    print(f"seed={seed}", flush=True)
    began = time.monotonic()
    totals = {
        "kills": 0,
        "rounds": 0,
        "in_flight": 0,
        "adopted": 0,
        "pilots": 0,
        "demand": 0,
        "never_started": 0,
    }
    lost = doubled = problems = 0
    while totals["kills"] < args.kills:
        tmp = Path(tempfile.mkdtemp(prefix="apf-soak-"))
        try:
            result = run_round(tmp, args.per_round, rng, progress=print if args.verbose else None)
        finally:
            kill_pilots(tmp / "state")
        if result.ok:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            print(f"  kept {tmp} for inspection; pilots by state: {result.states}", flush=True)
        totals["rounds"] += 1
        totals["kills"] += result.kills
        totals["in_flight"] += result.kills_in_flight
        totals["adopted"] += result.adopted
        totals["pilots"] += result.active
        totals["never_started"] += result.never_started
        totals["demand"] += result.demand
        lost += max(0, result.demand - result.active)
        doubled += max(0, result.active - result.demand)
        # pilots that started and ended: none should (they sleep for 15 minutes)
        problems += sum(len(v) for v in result.problems.values())
        problems += result.pilots - result.active - result.never_started
        print(
            f"round {totals['rounds']}: {result.kills} kills ({result.kills_in_flight} with an intent in "
            f"flight), {result.adopted} intents adopted, {result.active}/{result.demand} pilots alive, "
            f"{result.never_started} never started, "
            f"{result.seconds:.0f}s{'' if result.ok else ' FAILED'}",
            flush=True,
        )
        for kind, items in result.problems.items():
            print(f"  {kind}: {items[:10]}", flush=True)
    print(
        f"kills={totals['kills']} rounds={totals['rounds']} in_flight={totals['in_flight']} "
        f"adopted={totals['adopted']} pilots={totals['pilots']}/{totals['demand']} "
        f"never_started={totals['never_started']} lost={lost} "
        f"doubled={doubled} problems={problems} elapsed_s={time.monotonic() - began:.0f}"
    )
    return 0 if lost == doubled == problems == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
