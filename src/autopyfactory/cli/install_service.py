"""``apf install-service``: install the systemd unit, the sysconfig example and a logrotate file.

The unit (``Type=notify``) runs ``apf run`` with the variables of ``/etc/sysconfig/autopyfactory``
(or ``/etc/default/autopyfactory``): CONFFILE, OPTIONS, GRIDSETUP, as AutoPyFactory's init
script did. Existing sysconfig and logrotate files are kept; the unit is replaced only with
``--force``. ``--print`` shows the unit instead of writing anything.
"""

from __future__ import annotations

import argparse
import grp
import pwd
import shutil
import sys
from pathlib import Path

from autopyfactory.service import data_file

UNIT = "etc/systemd/system/autopyfactory.service"
LOGROTATE = "etc/logrotate.d/autopyfactory"


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("install-service", help="install the systemd unit and sysconfig example")
    parser.add_argument("--root", default="/", help="install under this root (default /; for packaging)")
    parser.add_argument("--user", default="autopyfactory", help="the account the factory runs as")
    parser.add_argument("--group", help="its group (default: the user's primary group)")
    parser.add_argument("--apf", help="path of the apf command (default: this one)")
    parser.add_argument("--force", action="store_true", help="replace an existing unit file")
    parser.add_argument("--print", dest="show", action="store_true", help="print the unit; write nothing")
    parser.set_defaults(func=run)


def apf_path() -> str:
    here = Path(sys.argv[0]).resolve() if sys.argv and sys.argv[0] else None
    if here is not None and here.name == "apf" and here.is_file():
        return str(here)
    beside = Path(sys.executable).parent / "apf"
    if beside.is_file():
        return str(beside)
    return shutil.which("apf") or "/usr/bin/apf"


def render_unit(apf: str, user: str, group: str) -> str:
    text = data_file("autopyfactory.service")
    return text.replace("@APF@", apf).replace("@USER@", user).replace("@GROUP@", group)


def run(args: argparse.Namespace) -> int:
    group = args.group
    warnings = []
    if group is None:
        try:
            group = grp.getgrgid(pwd.getpwnam(args.user).pw_gid).gr_name
        except KeyError:
            group = args.user
            warnings.append(
                f"user {args.user!r} does not exist here yet: create it before starting the service"
            )
    for char in "\n\"'$ ":
        if char in args.user + group:
            print(f"apf install-service: --user/--group may not contain {char!r}", file=sys.stderr)
            return 2
    apf = args.apf or apf_path()
    unit = render_unit(apf, args.user, group)
    if args.show:
        print(unit, end="")
        return 0
    root = Path(args.root)
    if not root.is_dir():
        print(f"apf install-service: --root {root} is not a directory", file=sys.stderr)
        return 2
    sysconfig_dir = root / "etc/sysconfig" if (root / "etc/sysconfig").is_dir() else root / "etc/default"
    files = [
        (root / UNIT, unit, args.force),
        (sysconfig_dir / "autopyfactory", data_file("autopyfactory.sysconfig"), False),
        (root / LOGROTATE, data_file("autopyfactory.logrotate"), False),
    ]
    for path, text, replace in files:
        if path.exists() and not replace:
            print(
                f"kept {path} (exists{'; --force replaces the unit' if path.name.endswith('.service') else ''})"
            )
            continue
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
        except OSError as exc:
            print(f"apf install-service: cannot write {path}: {exc.strerror}", file=sys.stderr)
            return 1
        print(f"wrote {path}")
    for warning in warnings:
        print(f"apf install-service: warning: {warning}", file=sys.stderr)
    print("next: systemctl daemon-reload && systemctl enable --now autopyfactory")
    print(
        "      (journalctl -u autopyfactory for the log; systemctl reload autopyfactory re-reads the config)"
    )
    return 0
