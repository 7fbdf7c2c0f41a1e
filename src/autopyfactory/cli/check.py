"""``apf check --conf autopyfactory.conf``: validate, then print the effective per-queue settings."""

from __future__ import annotations

import argparse
import json

from autopyfactory.cli._common import add_conf, load_or_report
from autopyfactory.config.models import FactoryConfig, QueueConfig


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("check", help="validate a configuration and show effective queue settings")
    add_conf(parser)
    parser.add_argument("--queue", action="append", help="show only this queue (repeatable)")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.set_defaults(func=run)


def _plugin_keys(queue: QueueConfig) -> dict[str, dict[str, object]]:
    out: dict[str, dict[str, object]] = {}
    specs = [queue.wmsstatus, queue.batchstatus, queue.batchsubmit, *queue.sched]
    for spec in specs:
        if spec is None:
            continue
        prefix = spec.cls.prefixes()[0]
        values = spec.options.model_dump(by_alias=True, mode="json")
        out[f"{spec.kind}:{spec.name}"] = {f"{prefix}{k}": v for k, v in values.items()}
    return out


def describe(config: FactoryConfig, only: list[str] | None = None) -> dict[str, object]:
    queues = {}
    for name, queue in config.queues.items():
        if only and name not in only:
            continue
        enabled = queue.enabled and config.settings.enablequeues
        queues[name] = {
            "enabled": enabled,
            "settings": queue.settings.model_dump(by_alias=True, mode="json"),
            "chain": [s.name for s in queue.sched],
            "plugins": _plugin_keys(queue),
        }
    return {
        "factoryId": config.factory_id,
        "files": list(config.files),
        "store": _redact_url(config.settings.database_url()),
        "auth_profiles": {n: p.plugin for n, p in config.auth.items()},
        "monitors": {n: m.plugin for n, m in config.monitors.items()},
        "queues": queues,
    }


def _redact_url(url: str) -> str:
    """Never print a database password."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return "<unparseable URL>"


def run(args: argparse.Namespace) -> int:
    config = load_or_report(args.conf)
    if config is None:
        return 1
    info = describe(config, args.queue)
    if args.json:
        print(json.dumps(info, indent=2, default=str))
        return 0
    print(f"configuration OK: factory {info['factoryId']}, {len(config.queues)} queue(s)")
    print(f"files: {', '.join(config.files)}")
    print(f"store: {info['store']}")
    for name, q in info["queues"].items():  # type: ignore[union-attr]
        state = "enabled" if q["enabled"] else "DISABLED"
        print(f"\n[{name}] ({state})")
        print(f"  chain: {', '.join(q['chain'])}")
        for key, value in q["settings"].items():
            if value is not None:
                print(f"  {key} = {value}")
        for plugin, keys in q["plugins"].items():
            print(f"  # {plugin}")
            for key, value in keys.items():
                print(f"  {key} = {value}")
    return 0
