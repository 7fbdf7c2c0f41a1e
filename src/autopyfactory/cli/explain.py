"""``apf explain QUEUE``: the last decisions of a queue, every step with its reason (read-only)."""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime

from autopyfactory.cli._common import add_conf, count, load_or_report
from autopyfactory.cli._daemon import daemon_path, read_json
from autopyfactory.cli._store import StoreUnavailable, open_read_only
from autopyfactory.plugins.base import did_you_mean
from autopyfactory.web.models import Explanation


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("explain", help="show a queue's or cascade's recent decisions and why")
    parser.add_argument("queue", help="a queue section, or a cascade name from the policy")
    add_conf(parser)
    parser.add_argument(
        "-n", "--last", type=count(10_000, 1), default=5, help="how many decisions (default 5)"
    )
    parser.add_argument("--json", action="store_true")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    config = load_or_report(args.conf)
    if config is None:
        return 1
    cascades = [c.name for c in config.policy.cascades] if config.policy is not None else []
    name = args.queue
    if name in cascades:
        name = f"cascade:{name}"
    elif name not in config.queues and name.removeprefix("cascade:") not in cascades:
        known = list(config.queues) + cascades
        print(f"apf explain: no queue or cascade {args.queue!r}{did_you_mean(args.queue, known)}")
        return 2
    args.queue = name
    try:
        store = open_read_only(config.settings.database_url())
    except StoreUnavailable as exc:
        print(f"apf explain: {exc}", file=sys.stderr)
        return 1
    rows: list[dict[str, object]] = []
    events: list[dict[str, object]] = []
    failed = read_json(daemon_path(config)).get("failed_queues") or {}
    if store is not None:
        try:
            rows = store.decisions(config.factory_id, args.queue, args.last)
            events = store.events(config.factory_id, args.queue, limit=args.last)
        finally:
            store.close()
    setup_error = failed.get(args.queue) if isinstance(failed, dict) else None
    if args.json:
        # the model GET /api/v1/decisions/<queue> serves
        doc = Explanation(queue=args.queue, decisions=rows, events=events, setup_error=setup_error)  # type: ignore[arg-type]
        print(json.dumps(doc.model_dump(mode="json", by_alias=True), indent=2))
        return 0
    if setup_error:
        print(f"{args.queue}: NOT SET UP by the daemon: {setup_error}")
    if not rows:
        where = "" if store is not None else " (no store yet: the daemon has not run)"
        print(f"{args.queue}: no decisions recorded yet{where}")
    for row in rows:
        when = datetime.fromtimestamp(row["time"], UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
        dry = " (dry run)" if row["dry_run"] else ""
        print(
            f"{when}{dry}: n = {row['n']}  (ready={row['ready']}, pending={row['pending']}, running={row['running']}, binding={row['binding']})"
        )
        for step in row["steps"]:
            print(f"    {step['plugin']:<14} {step['in']:>6} -> {step['out']:<6} {step['reason']}")
    for event in events:
        when = datetime.fromtimestamp(event["time"], UTC).strftime("%Y-%m-%d %H:%M:%S")
        print(f"event {when} {event['kind']}: {event['message']}")
    return 0
