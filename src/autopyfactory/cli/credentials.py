"""``apf credentials``: every auth.conf/proxy.conf profile's health; ``--check`` also renews what
is due (the credential manager's check, run once in the foreground), for setting a site up."""

from __future__ import annotations

import argparse
import json
import time

from autopyfactory.cli._common import add_conf, load_or_report, setup_logging


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("credentials", help="show (or check and renew) every credential profile")
    add_conf(parser)
    parser.add_argument(
        "--check", action="store_true", help="run each profile's check now (renews what is due)"
    )
    parser.add_argument("--json", action="store_true")
    parser.add_argument("profiles", nargs="*", help="only these profiles")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from autopyfactory.credentials import CredentialManager

    config = load_or_report(args.conf)
    if config is None:
        return 1
    setup_logging("ERROR")  # the summary lines below say it all
    manager = CredentialManager(config.auth, factory_id=config.factory_id)
    names = args.profiles or manager.names
    unknown = [n for n in names if n not in manager.names]
    if unknown:
        print(
            f"apf: not a managed profile: {', '.join(unknown)} (profiles: {', '.join(manager.names) or 'none'})"
        )
        return 2
    now = time.time()
    healths = {}
    for name in names:
        healths[name] = manager.check_now(name) if args.check else manager.inspect_now(name)
    if args.json:
        print(json.dumps({n: h.as_dict(now) for n, h in healths.items()}, indent=2))
    else:
        for health in healths.values():
            print(health.summary(now) + (f" [{health.detail}]" if health.detail else ""))
    return 0 if all(h.usable for h in healths.values()) else 1
