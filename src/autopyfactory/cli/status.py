"""``apf status``: whether the daemon runs, and every queue's demand, pilots and last decision.

Read-only: the store is opened so that it cannot be written (and not at all when it does not
exist yet); nothing is created. The daemon's state comes from its daemon file (pid, heartbeat,
queues that failed to set up) and the engine's status file (pollers, targets, metrics): when the
pid is gone or the heartbeat is stale, it says "not running since ..." and shows the pollers only
as "last known". Decisions made by ``apf run --dry-run`` or ``apf plan`` are marked.
"""

from __future__ import annotations

import argparse
import ast
import json
import re
import sys
import time
from datetime import UTC, datetime
from typing import Any

from autopyfactory.cli._common import add_conf, load_or_report
from autopyfactory.cli._daemon import daemon_path, daemon_state, read_json
from autopyfactory.cli._store import StoreUnavailable, open_read_only
from autopyfactory.config.models import FactoryConfig
from autopyfactory.plugins.base import endpoint_label


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "status", help="is the daemon running; each queue's demand, pilots, last decision"
    )
    add_conf(parser)
    parser.add_argument("--json", action="store_true")
    parser.set_defaults(func=run)


def status_file(config: FactoryConfig) -> Any:
    """The engine's status file (the same path as ``engine.factory.status_path``)."""
    return config.settings.state_path / f"status-{config.factory_id}.json"


_ENGINE_LABEL = re.compile(r"^(?P<kind>[a-z]+):(?P<name>[A-Za-z0-9_]+):(?P<key>.*)$")


def in_words(label: str) -> str:
    """A poller label as the engine writes it today (``batchstatus:Local:('Local', '/x', 3600.0)``)
    in words (``batchstatus Local at /x``); labels already in words are kept."""
    match = _ENGINE_LABEL.match(label)
    if match is None:
        return label
    kind, name, key = match.group("kind", "name", "key")
    try:
        value = ast.literal_eval(key)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        if not key.startswith("("):
            return f"{kind} {key}" if key.startswith(name) else f"{kind} {name} {key}"
        # a tuple the engine cut at 80 characters: its quoted parts (the last one cut short)
        value = tuple(re.findall(r"'([^']*)'?", key))
    return endpoint_label(kind, name, value if isinstance(value, tuple | str) else str(value))


def _when(t: float | None) -> str:
    if t is None:
        return "-"
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def collect(conf: str, now: float | None = None) -> dict[str, object] | None:
    config = load_or_report(conf)
    if config is None:
        return None
    now = time.time() if now is None else now
    store_error = None
    latest: dict[str, Any] = {}
    counts: dict[str, Any] = {}
    try:
        store = open_read_only(config.settings.database_url())
    except StoreUnavailable as exc:
        store, store_error = None, str(exc)
    if store is not None:
        try:
            latest = store.latest_decisions(config.factory_id)
            counts = store.pilot_counts(config.factory_id)
        except Exception as exc:
            store_error = f"store: cannot read: {str(exc).splitlines()[0][:200]}"
        finally:
            store.close()
    engine = read_json(status_file(config))
    daemon = read_json(daemon_path(config))
    stale_after = 3 * config.settings.factory_sleep + 30
    state = daemon_state(daemon, engine, now, stale_after=stale_after)
    dry = read_json(daemon_path(config, dry_run=True))
    dry_state = daemon_state(dry, {}, now, stale_after=stale_after) if dry else None
    failed = dict(state.failed_queues or {})
    engine_queues = engine.get("queues") if isinstance(engine.get("queues"), dict) else {}
    for name, info in (engine_queues or {}).items():
        if isinstance(info, dict) and info.get("error") and name not in failed:
            failed[str(name)] = str(info["error"])
    queues = {}
    for name, queue in config.queues.items():
        d = latest.get(name)
        queues[name] = {
            "enabled": queue.enabled and config.settings.enablequeues,
            "setup_error": failed.get(name),
            "demand": d["ready"] if d else None,
            "pending": d["pending"] if d else None,
            "running": d["running"] if d else None,
            "last_n": d["n"] if d else None,
            "binding": d["binding"] if d else None,
            "decided_at": d["time"] if d else None,
            "dry_run": bool(d["dry_run"]) if d else False,
            "pilots_by_state": counts.get(name, {}),
        }
    return {
        "factory": config.factory_id,
        "daemon": state.as_dict(),
        "dry_run_daemon": dry_state.as_dict() if dry_state is not None and dry_state.running else None,
        "store_error": store_error,
        "queues": queues,
        "failed_queues": failed,
        "pollers": {in_words(str(k)): v for k, v in engine.get("pollers", {}).items()}
        if isinstance(engine.get("pollers"), dict)
        else {},
        "targets": engine.get("targets", {}) if isinstance(engine.get("targets"), dict) else {},
        "daemon_status_time": engine.get("time"),
        "metrics": engine.get("metrics") if state.running else None,
        # per cloud endpoint: leaked VMs now, adopted/terminated/interrupted totals (CloudStatus.counters)
        "cloud": engine.get("cloud", {}) if isinstance(engine.get("cloud"), dict) else {},
    }


def run(args: argparse.Namespace) -> int:
    info = collect(args.conf)
    if info is None:
        return 1
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    now = time.time()
    daemon = info["daemon"]
    assert isinstance(daemon, dict)
    print(f"factory {info['factory']}")
    print(daemon["text"])
    if info.get("dry_run_daemon"):
        print(f"also: a dry-run daemon: {info['dry_run_daemon']['text']}")  # type: ignore[index]
    if info.get("store_error"):
        print(f"warning: {info['store_error']}", file=sys.stderr)
    header = ("queue", "demand", "pending", "running", "last n", "binding", "age")
    rows = [header]
    marked = False
    for name, q in info["queues"].items():  # type: ignore[union-attr]
        age = "-" if q["decided_at"] is None else f"{now - q['decided_at']:.0f}s"
        last_n = "-" if q["last_n"] is None else str(q["last_n"]) + ("*" if q["dry_run"] else "")
        marked = marked or q["dry_run"]
        cells = [q["demand"], q["pending"], q["running"], last_n, q["binding"], age]
        label = name
        if q["setup_error"]:
            label += " (NOT SET UP)"
        elif not q["enabled"]:
            label += " (disabled)"
        rows.append((label, *("-" if c is None else str(c) for c in cells)))
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)))
    if marked:
        print("* a dry-run decision (apf run --dry-run or apf plan): nothing was acted on")
    for name, error in info["failed_queues"].items():  # type: ignore[union-attr]
        print(f"queue {name} failed to set up: {error}")
    running = bool(daemon["running"])
    if running and info.get("metrics"):
        print(f"metrics: {info['metrics']}")
    for label, c in (info.get("cloud") or {}).items():  # type: ignore[union-attr]
        print(
            f"cloud {label}: {c.get('leaked', 0)} leaked VMs (tagged, unknown, their queue gone); "
            f"{c.get('adopted', 0)} adopted, {c.get('terminated_leaks', 0)} leaks terminated, "
            f"{c.get('interrupted', 0)} interrupted by the provider"
        )
    pollers = info["pollers"]
    targets = info["targets"]
    if (pollers or targets) and not running:
        print(f"last known at {_when(info.get('daemon_status_time'))} (the daemon is not running):")  # type: ignore[arg-type]
    prefix = "" if running else "  "
    for label, state in pollers.items():  # type: ignore[union-attr]
        print(f"{prefix}poller {label}: {state}")
    for target, state in targets.items():  # type: ignore[union-attr]
        print(f"{prefix}target {target}: {state}")
    return 0
