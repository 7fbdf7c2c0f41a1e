"""The ``apf`` command. Each subcommand is a module of this package with ``register(subparsers)``."""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
from collections.abc import Sequence

from autopyfactory import __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="apf", description="autopyfactory: pilot and resource factory")
    parser.add_argument("--version", action="version", version=f"autopyfactory {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        register = getattr(module, "register", None)
        if register is not None:
            register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list[:1] == ["powersave"]:
        # Slurm's ResumeProgram/SuspendProgram: start in milliseconds, load no other subcommand
        from autopyfactory.cli import powersave

        return powersave.main(args_list[1:])
    from autopyfactory.store.api import StoreError

    parser = build_parser()
    try:
        args = parser.parse_args(args_list)
    except SystemExit as exc:  # usage errors (status 2) and --help/--version (0), already printed
        return exc.code if isinstance(exc.code, int) else 2
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return 2
    try:
        return int(args.func(args) or 0)
    except StoreError as exc:  # names the store and the cause (never its password)
        print(f"apf: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
