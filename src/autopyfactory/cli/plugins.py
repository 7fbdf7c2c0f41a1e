"""``apf plugins``: every installed plugin by kind; ``apf plugins NAME``: its keys with type,
default, bounds and description; ``--factory`` / ``--queue``: the section keys; ``--markdown``:
the whole reference (docs/keys.md)."""

from __future__ import annotations

import argparse
import sys

from autopyfactory.config import reference
from autopyfactory.plugins import base as plugins


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("plugins", help="list installed plugins, or show one plugin's keys")
    parser.add_argument("name", nargs="?", help="a plugin name, e.g. MaxPerCycle, CondorOSGCE, Panda")
    parser.add_argument(
        "--kind", choices=list(reference.KIND_TITLES), help="when NAME exists for several kinds"
    )
    what = parser.add_mutually_exclusive_group()
    what.add_argument("--factory", action="store_true", help="the [Factory] keys of autopyfactory.conf")
    what.add_argument("--queue", action="store_true", help="the generic keys of a queues.conf section")
    what.add_argument("--markdown", action="store_true", help="the whole key reference as Markdown")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from autopyfactory.config.models import FactorySettings, QueueSettings

    if args.markdown:
        print(reference.markdown(), end="")
        return 0
    if args.factory:
        print(reference.settings_text(FactorySettings, "[Factory] keys (autopyfactory.conf):"))
        return 0
    if args.queue:
        print(
            reference.settings_text(QueueSettings, "queue section keys (queues.conf), besides plugin keys:")
        )
        return 0
    if not args.name:
        print(reference.listing())
        return 0
    kinds = [args.kind] if args.kind else list(reference.KIND_TITLES)
    found = [k for k in kinds if args.name in plugins.names(k)]
    if not found:
        everything = sorted({n for k in kinds for n in plugins.names(k)})
        hint = plugins.did_you_mean(args.name, everything)
        print(f"apf plugins: no plugin {args.name!r}{hint}", file=sys.stderr)
        return 2
    for i, kind in enumerate(found):
        if i:
            print()
        try:
            print(reference.plugin_text(kind, args.name))
        except plugins.PluginError as exc:
            print(f"{kind} plugin {args.name}: {exc}")
    return 0
