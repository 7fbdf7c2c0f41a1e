"""``apf check --conf autopyfactory.conf``: validate, run every start-up check ``apf run`` runs, then
print the effective per-queue settings. Exit status 1 when anything would stop a queue.

``apf check --migrate`` prints the configuration rewritten with current key names (AutoPyFactory
2.4 aliases renamed, obsolete keys commented out with the reason); ``--migrate-to DIR`` writes
those files into DIR instead (the originals are never touched).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from autopyfactory.cli._common import add_conf, load_or_report, print_preflight
from autopyfactory.config.models import FactoryConfig, QueueConfig
from autopyfactory.config.sources import SourceError
from autopyfactory.preflight import check_factory, redact_db_url


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "check", help="validate a configuration, run the start-up checks, show effective queue settings"
    )
    add_conf(parser)
    parser.add_argument("--queue", action="append", help="show only this queue (repeatable)")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.add_argument(
        "--no-store",
        action="store_true",
        help="skip the store check (e.g. PostgreSQL not reachable from here)",
    )
    migrate = parser.add_mutually_exclusive_group()
    migrate.add_argument(
        "--migrate", action="store_true", help="print the configuration with AutoPyFactory 2.4 keys migrated"
    )
    migrate.add_argument("--migrate-to", metavar="DIR", help="write the migrated files into DIR")
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
        "store": redact_db_url(config.settings.database_url()),
        "auth_profiles": {n: p.plugin for n, p in config.auth.items()},
        "monitors": {n: m.plugin for n, m in config.monitors.items()},
        "queues": queues,
    }


def run_migrate(args: argparse.Namespace) -> int:
    from autopyfactory.config.migrate import migrate_configuration

    try:
        files = migrate_configuration(args.conf)
    except SourceError as exc:
        print(f"apf check --migrate: {exc}", file=sys.stderr)
        return 1
    target = Path(args.migrate_to) if args.migrate_to else None
    if target is not None:
        if target.exists() and not target.is_dir():
            print(f"apf check --migrate-to: {target} is not a directory", file=sys.stderr)
            return 2
        target.mkdir(parents=True, exist_ok=True)
    changed = 0
    for item in files:
        changed += bool(item.changes)
        for change in item.changes:
            print(f"apf: {item.path}: {change}", file=sys.stderr)
        if target is None:
            text = item.shown()
            print(
                f"# ==> {item.path} <=="
                + (" (secret values hidden; --migrate-to writes them)" if item.sensitive else "")
            )
            print(text, end="" if text.endswith("\n") else "\n")
            continue
        out = target / Path(item.path).name
        if out.resolve() == Path(item.path).resolve():
            print(f"apf check --migrate-to: refusing to overwrite {item.path}", file=sys.stderr)
            return 2
        if item.sensitive:  # it holds secrets: owner-only, created so (never briefly readable)
            fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            os.fchmod(fd, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(item.text)
        else:
            out.write_text(item.text, encoding="utf-8")
    if target is not None:
        print(
            f"wrote {len(files)} file(s) to {target} ({changed} changed); check them with apf check",
            file=sys.stderr,
        )
    elif not changed:
        print("apf: nothing to migrate", file=sys.stderr)
    return 0


def run(args: argparse.Namespace) -> int:
    if args.migrate or args.migrate_to:
        return run_migrate(args)
    config = load_or_report(args.conf)
    if config is None:
        return 1
    report = check_factory(config, store=not args.no_store)
    info = describe(config, args.queue)
    info["failed_queues"] = report.failed_queues
    info["factory_problems"] = [str(f) for f in report.factory_errors]
    if args.json:
        print(json.dumps(info, indent=2, default=str))
        return 0 if report.ok else 1
    print_preflight(report)
    failed = report.failed_queues
    if report.ok:
        print(f"configuration OK: factory {info['factoryId']}, {len(config.queues)} queue(s)")
    else:
        usable = len(config.active_queues()) - len(failed)
        print(
            f"configuration NOT OK: factory {info['factoryId']}, {len(config.queues)} queue(s), "
            f"{len(failed)} cannot be set up, {len(report.factory_errors)} factory problem(s); "
            f"{usable} would run"
        )
    print(f"files: {', '.join(config.files)}")
    print(f"store: {info['store']}")
    for name, q in info["queues"].items():  # type: ignore[union-attr]
        state = "enabled" if q["enabled"] else "DISABLED"
        if name in failed:
            state = "CANNOT BE SET UP"
        print(f"\n[{name}] ({state})")
        for line in failed.get(name, []):
            print(f"  ! {line}")
        print(f"  chain: {', '.join(q['chain'])}")
        for key, value in q["settings"].items():
            if value is not None:
                print(f"  {key} = {value}")
        for plugin, keys in q["plugins"].items():
            print(f"  # {plugin}")
            for key, value in keys.items():
                print(f"  {key} = {value}")
    return 0 if report.ok else 1
