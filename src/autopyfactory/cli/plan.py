"""``apf plan``: what every cascade and queue would do now, and why.

Nothing is acted on and nothing is written: the store is opened read-only (an empty in-memory one
when the daemon never ran), no monitor is built, the decisions are not recorded.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from datetime import UTC, datetime

from autopyfactory.cli._common import add_conf, load_or_report, print_preflight, setup_logging
from autopyfactory.cli._store import StoreUnavailable, open_read_only, scratch_store
from autopyfactory.engine.factory import Factory
from autopyfactory.preflight import check_factory


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
    try:
        store = open_read_only(config.settings.database_url()) or scratch_store()
    except StoreUnavailable as exc:
        print(f"apf plan: {exc}", file=sys.stderr)
        return 1
    report = check_factory(config, store=False, dirs=False)
    print_preflight(report)
    if report.factory_errors:
        return 1
    failed = report.failed_queues
    config = replace(config, queues={n: q for n, q in config.queues.items() if n not in failed}, monitors={})
    try:
        factory = Factory(config, store=store, dry_run=True)
    except Exception as exc:
        print(
            f"apf plan: cannot set up: {type(exc).__name__}: {str(exc).splitlines()[0][:300]}",
            file=sys.stderr,
        )
        return 1
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
        "failed_queues": {n: "; ".join(v) for n, v in failed.items()},
    }
    if args.json:
        print(json.dumps(doc, indent=2))
        return 1 if failed else 0
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
    for name in failed:
        print(f"queue {name}: cannot be set up (see above)")
    return 1 if failed else 0
