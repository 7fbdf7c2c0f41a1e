"""``apf powersave resume|suspend|resumefail HOSTLIST``: Slurm's power-saving programs.

slurmctld runs ``ResumeProgram``, ``SuspendProgram`` and ``ResumeFailProgram`` with a host list
(``c[1-3,5]``); these clients leave one request for the running factory in its spool and exit 0 at
once (docs/slurm-powersave.md). The spool is ``--spool DIR``, else ``$APF_POWERSAVE_SPOOL``, else
``<factory.statedir>/powersave`` of ``--conf``. ``apf`` starts this subcommand without loading the
rest of the package, so a call takes a few tens of milliseconds.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from autopyfactory.plugins.cloud import spool

OPS = [op.value for op in spool.Op]
HELP = {
    "resume": "ResumeProgram: Slurm wants these nodes powered up (the factory creates their VMs)",
    "suspend": "SuspendProgram: Slurm powers these idle nodes down (the factory terminates their VMs)",
    "resumefail": "ResumeFailProgram: these nodes did not come up (the factory writes their VMs off)",
}


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("op", choices=OPS, help="; ".join(f"{k}: {v}" for k, v in HELP.items()))
    parser.add_argument("hostlist", help="Slurm host list, e.g. c[1-3,5]")
    parser.add_argument("--spool", help="the factory's power-saving spool (default: $APF_POWERSAVE_SPOOL)")
    parser.add_argument("--conf", help="autopyfactory.conf: the spool is <factory.statedir>/powersave")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "powersave",
        help="Slurm power saving: ResumeProgram/SuspendProgram/ResumeFailProgram client",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_arguments(parser)
    parser.set_defaults(func=run)


def spool_dir(args: argparse.Namespace) -> Path | None:
    if args.spool:
        return Path(args.spool).expanduser()
    if os.environ.get("APF_POWERSAVE_SPOOL"):
        return Path(os.environ["APF_POWERSAVE_SPOOL"]).expanduser()
    if args.conf:
        from autopyfactory.config.loader import load_factory_config

        return load_factory_config(args.conf).settings.state_path / "powersave"
    return None


def run(args: argparse.Namespace) -> int:
    try:
        folder = spool_dir(args)
    except Exception as exc:  # a config that does not load: say which, exit non-zero
        print(f"apf powersave: cannot read {args.conf}: {exc}", file=sys.stderr)
        return 1
    if folder is None:
        print("apf powersave: no spool: give --spool DIR, $APF_POWERSAVE_SPOOL or --conf", file=sys.stderr)
        return 2
    try:
        path = spool.write(folder, spool.Op(args.op), args.hostlist, time.time())
    except ValueError as exc:
        print(f"apf powersave: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"apf powersave: cannot write to the spool {folder}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    print(f"{args.op} {args.hostlist}: {path}")
    return 0


def main(argv: Sequence[str]) -> int:
    """The fast path of ``apf powersave ...`` (no other subcommand is imported)."""
    parser = argparse.ArgumentParser(prog="apf powersave", description=__doc__)
    _add_arguments(parser)
    try:
        args = parser.parse_args(list(argv))
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 2
    return run(args)
