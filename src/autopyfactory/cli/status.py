"""``apf status``: every queue's demand, pending, running and last decision (from the store)."""

from __future__ import annotations

import argparse
import json
import time

from autopyfactory.cli._common import add_conf, load_or_report
from autopyfactory.engine.factory import status_path
from autopyfactory.store.api import Store


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("status", help="show each queue's demand, pilots and last decision")
    add_conf(parser)
    parser.add_argument("--json", action="store_true")
    parser.set_defaults(func=run)


def collect(conf: str) -> dict[str, object] | None:
    config = load_or_report(conf)
    if config is None:
        return None
    store = Store(config.settings.database_url())
    latest = store.latest_decisions(config.factory_id)
    counts = store.pilot_counts(config.factory_id)
    daemon: dict[str, object] = {}
    path = status_path(config)
    if path.exists():
        try:
            daemon = json.loads(path.read_text())
        except (OSError, ValueError):
            daemon = {}
    queues = {}
    for name, queue in config.queues.items():
        d = latest.get(name)
        queues[name] = {
            "enabled": queue.enabled and config.settings.enablequeues,
            "demand": d["ready"] if d else None,
            "pending": d["pending"] if d else None,
            "running": d["running"] if d else None,
            "last_n": d["n"] if d else None,
            "binding": d["binding"] if d else None,
            "decided_at": d["time"] if d else None,
            "pilots_by_state": counts.get(name, {}),
        }
    store.close()
    return {
        "factory": config.factory_id,
        "queues": queues,
        "pollers": daemon.get("pollers", {}),
        "targets": daemon.get("targets", {}),
        "daemon_status_time": daemon.get("time"),
        "metrics": daemon.get("metrics"),
        # per cloud endpoint: leaked VMs now, adopted/terminated/interrupted totals (CloudStatus.counters)
        "cloud": daemon.get("cloud", {}),
    }


def run(args: argparse.Namespace) -> int:
    info = collect(args.conf)
    if info is None:
        return 1
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    now = time.time()
    header = ("queue", "demand", "pending", "running", "last n", "binding", "age")
    rows = [header]
    for name, q in info["queues"].items():  # type: ignore[union-attr]
        age = "-" if q["decided_at"] is None else f"{now - q['decided_at']:.0f}s"
        cells = [q["demand"], q["pending"], q["running"], q["last_n"], q["binding"], age]
        rows.append(
            (name + ("" if q["enabled"] else " (disabled)"), *("-" if c is None else str(c) for c in cells))
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    print(f"factory {info['factory']}")
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)))
    if info.get("metrics"):
        print(f"metrics: {info['metrics']}")
    for label, c in (info.get("cloud") or {}).items():  # type: ignore[union-attr]
        print(
            f"cloud {label}: {c.get('leaked', 0)} leaked VMs (tagged, unknown, their queue gone); "
            f"{c.get('adopted', 0)} adopted, {c.get('terminated_leaks', 0)} leaks terminated, "
            f"{c.get('interrupted', 0)} interrupted by the provider"
        )
    for label, state in info["pollers"].items():  # type: ignore[union-attr]
        print(f"poller {label}: {state}")
    for target, state in info["targets"].items():  # type: ignore[union-attr]
        print(f"target {target}: {state}")
    return 0
