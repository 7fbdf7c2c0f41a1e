"""``apf plan``: what every cascade and queue would do now, and why (nothing is acted on)."""

from __future__ import annotations

import argparse
import json
import time
from datetime import UTC, datetime

from autopyfactory.cli._common import add_conf, load_or_report, setup_logging
from autopyfactory.engine.factory import Factory


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("plan", help="show what each cascade and queue would do now, and why")
    add_conf(parser)
    parser.add_argument("--json", action="store_true")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    setup_logging("WARNING")
    config = load_or_report(args.conf)
    if config is None:
        return 1
    factory = Factory(config, dry_run=True)
    now = time.time()
    try:
        plans = factory.step(now, poll_all=True)
    finally:
        factory.shutdown()
    tiers = {rt.name for cr in factory.cascades.values() for rt in cr.tiers}
    doc = {
        "time": now,
        "cascades": {
            name: {
                "allocation": cr.last.as_dict() if cr.last is not None else None,
                "backoff_until": {t: u for t, u in cr.backoff_until.items() if u > now},
            }
            for name, cr in factory.cascades.items()
        },
        "queues": {
            p.queue: p.decision.as_dict() | {"binding": p.decision.binding}
            for p in plans
            if p.queue not in tiers
        },
        "pollers": {p.label: p.state(now) for p in factory.pollers.values()},
    }
    if args.json:
        print(json.dumps(doc, indent=2))
        return 0
    print(f"plan at {datetime.fromtimestamp(now, UTC):%Y-%m-%d %H:%M:%S} UTC (dry run: nothing is acted on)")
    for name, cr in factory.cascades.items():
        if cr.last is None:
            print(f"cascade {name}: cannot decide now (missing demand or batch status; see pollers)")
            continue
        for line in cr.last.describe():
            print(line)
        for tier, until in doc["cascades"][name]["backoff_until"].items():
            print(f"  {tier}: backed off for {until - now:.0f}s more")
    for plan in plans:
        if plan.queue in tiers:
            continue
        d = plan.decision
        print(f"queue {plan.queue}: n = {d.n} (binding: {d.binding or '-'})")
        for step in d.steps:
            print(f"    {step.plugin:<14} {step.n_in:>6} -> {step.n_out:<6} {step.reason}")
    for label, state in doc["pollers"].items():
        if state != "ok":
            print(f"poller {label}: {state}")
    return 0
