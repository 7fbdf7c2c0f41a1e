"""``apf sched``: run a scheduler chain on numbers you give, and show every step.

Either name the chain and its keys on the command line::

    apf sched --chain "Ready, Scale, MaxPerCycle" --set sched.scale.factor=0.25 \\
        --set sched.maxpercycle.maximum=50 --activated 83 --pending 10 --running 17

or take them from a queues.conf section (``--set`` still overrides)::

    apf sched --conf queues.conf --queue ANALY_X --activated 83 --pending 10
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from autopyfactory.cli._common import count
from autopyfactory.config.errors import ConfigError, ConfigProblem
from autopyfactory.config.validate import options_from_keys
from autopyfactory.decide.base import SchedContext, SchedPlugin, run_chain
from autopyfactory.model import Demand, SiteStatus, Step, Supply, ThrottleHistory
from autopyfactory.plugins.base import PluginError, did_you_mean, load

_SET_SOURCE = "--set"


class UsageError(Exception):
    """Bad arguments: printed as one message, exit status 2."""


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "sched",
        help="run a scheduler chain on given numbers and explain each step",
        description="Run a scheduler-plugin chain (AutoPyFactory semantics) on the numbers given "
        "and print each plugin's input, output and reason.",
    )
    src = p.add_argument_group("chain and keys")
    src.add_argument("--chain", help='plugin names, e.g. "Ready, Scale, MaxPerCycle"')
    src.add_argument("--conf", help="queues.conf to take the chain and keys from (with --queue)")
    src.add_argument("--queue", help="section of --conf")
    src.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a plugin key, e.g. sched.maxpercycle.maximum=50 (repeatable; overrides --conf)",
    )
    obs = p.add_argument_group("observed state")
    obs.add_argument("--activated", type=count(), default=0, help="ready (activated) jobs in the WMS queue")
    obs.add_argument("--pending", type=count(), default=0, help="pending pilots")
    obs.add_argument("--running", type=count(), default=0, help="running pilots")
    obs.add_argument("--held", type=count(), default=0, help="held pilots (count as pending)")
    obs.add_argument("--retiring", type=count(), default=0, help="retiring (draining) pilots")
    obs.add_argument(
        "--site-status",
        choices=[s.value for s in SiteStatus],
        help="WMS site status (default online; none with --no-wms-info)",
    )
    obs.add_argument("--no-wms-info", action="store_true", help="WMS status missing or stale")
    obs.add_argument("--no-batch-info", action="store_true", help="batch status missing or stale")
    obs.add_argument(
        "--factory-active",
        type=count(),
        help="pending + running pilots of all queues at this batch endpoint "
        "(default: this queue's own, unless --no-batch-info)",
    )
    obs.add_argument("--factory-max", type=count(), help="[Factory] maxperfactory.maximum")
    obs.add_argument("--history-total", type=count(), help="Throttle: pilots started in its interval")
    obs.add_argument("--history-short", type=count(), help="Throttle: of those, how many ran < maxtime")
    p.add_argument("--json", action="store_true", help='print {"steps": [...], "n": N}')
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        plugins = _build_chain(args)
        ctx = _context(args)
    except (UsageError, PluginError, ConfigError) as exc:
        print(f"apf sched: error: {exc}", file=sys.stderr)
        return 2
    n, steps = run_chain(plugins, ctx)
    if args.json:
        print(json.dumps({"steps": [s.as_dict() for s in steps], "n": n}))
    else:
        print(format_steps(steps, n))
    return 0


def format_steps(steps: Sequence[Step], n: int) -> str:
    rows = [("plugin", "in", "out", "reason")]
    rows += [(s.plugin, str(s.n_in), str(s.n_out), s.reason) for s in steps]
    w0 = max(len(r[0]) for r in rows)
    w1 = max(len(r[1]) for r in rows)
    w2 = max(len(r[2]) for r in rows)
    lines = [f"{r[0]:<{w0}}  {r[1]:>{w1}}  {r[2]:>{w2}}  {r[3]}" for r in rows]
    lines.append(f"n = {n}")
    return "\n".join(lines)


def _parse_sets(items: Sequence[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise UsageError(f"--set {item!r}: expected KEY=VALUE, e.g. sched.maxpercycle.maximum=50")
        out[key] = value.strip()
    return out


def _split_chain(text: str) -> list[str]:
    names = [part.strip() for part in text.split(",")]
    if any(not name for name in names):
        raise UsageError(f"--chain {text!r}: empty plugin name (use commas between names)")
    return names


def _build_chain(args: argparse.Namespace) -> list[SchedPlugin]:
    sets = _parse_sets(args.set)
    keys: dict[str, str] = {}
    origin: Mapping[str, str] = {}
    section: str | None = None
    conf_file: str | None = None
    chain: list[str] | None = _split_chain(args.chain) if args.chain is not None else None

    if args.conf is not None:
        queue = _queue_from_conf(args.conf, args.queue)
        section, conf_file = queue.name, args.conf
        keys.update(queue.raw)
        origin = queue.origin
        if chain is None:
            chain = [spec.name for spec in queue.sched]
    elif args.queue is not None:
        raise UsageError("--queue needs --conf")
    if not chain:
        raise UsageError("give --chain, or --conf with --queue")
    keys.update(sets)

    def file_of(key: str) -> str | None:
        if key in sets:
            return _SET_SOURCE
        return origin.get(key, conf_file)

    classes: list[type[SchedPlugin]] = []
    for name in chain:
        cls = load("sched", name)
        if not issubclass(cls, SchedPlugin):
            raise PluginError(f"sched plugin {name!r} is not a scheduler plugin")
        classes.append(cls)

    problems: list[ConfigProblem] = []
    # a --set key that no plugin in the chain reads is a mistake, not something to ignore
    prefixes = tuple(prefix for cls in classes for prefix in cls.prefixes())
    for key in sets:
        if not key.startswith(prefixes):
            hint = did_you_mean(key, _known_keys(classes))
            problems.append(
                ConfigProblem(
                    _SET_SOURCE,
                    section,
                    key,
                    f"no plugin in the chain ({', '.join(chain)}) reads this key{hint}",
                )
            )

    plugins: list[SchedPlugin] = []
    built: dict[type[SchedPlugin], Any] = {}
    for cls in classes:
        if cls not in built:
            options, found = options_from_keys(cls, keys, file_of=file_of, section_name=section)
            problems.extend(found)
            built[cls] = options
        if built[cls] is not None:
            plugins.append(cls(built[cls]))
    if problems:
        raise ConfigError(problems)
    return plugins


def _known_keys(classes: Sequence[type[SchedPlugin]]) -> list[str]:
    out = []
    for cls in classes:
        for name, info in cls.Options.model_fields.items():
            out.append(cls.prefixes()[0] + (info.alias or name))
    return out


def _queue_from_conf(path: str, name: str | None) -> Any:
    try:
        from autopyfactory.config.loader import load_queue_sections
    except ImportError as exc:  # the loader ships with the config package
        raise UsageError(f"--conf is not available in this build: {exc}") from None
    try:
        queues = load_queue_sections([path])
    except OSError as exc:
        raise UsageError(f"{path}: {exc.strerror or exc}") from None
    if name is None:
        if len(queues) == 1:
            return next(iter(queues.values()))
        listed = ", ".join(sorted(queues)) or "none"
        raise UsageError(f"{path}: --queue is required (sections: {listed})")
    if name not in queues:
        listed = ", ".join(sorted(queues)) or "none"
        hint = did_you_mean(name, list(queues))
        raise UsageError(f"{path}: no queue section [{name}]{hint} (sections: {listed})")
    return queues[name]


def _context(args: argparse.Namespace) -> SchedContext:
    counts = {
        "--activated": args.activated,
        "--pending": args.pending,
        "--running": args.running,
        "--held": args.held,
        "--retiring": args.retiring,
    }
    for flag, value in counts.items():
        if value < 0:
            raise UsageError(f"{flag} {value}: must be >= 0")
    if args.factory_active is not None and args.factory_active < 0:
        raise UsageError(f"--factory-active {args.factory_active}: must be >= 0")
    if (args.history_total is None) != (args.history_short is None):
        raise UsageError("--history-total and --history-short go together")
    history = None
    if args.history_total is not None:
        if not 0 <= args.history_short <= args.history_total:
            raise UsageError("--history-short must be between 0 and --history-total")
        history = ThrottleHistory(total=args.history_total, short=args.history_short)

    queue = args.queue or "cli"
    site_status = args.site_status
    if site_status is None and not args.no_wms_info:
        site_status = SiteStatus.ONLINE.value
    demand = None
    if not args.no_wms_info:
        demand = Demand(wmsqueue=queue, ready=args.activated, site_status=site_status)
    supply = None
    factory_active = args.factory_active
    if not args.no_batch_info:
        supply = Supply(
            queue=queue,
            pending=args.pending,
            running=args.running,
            held=args.held,
            retiring=args.retiring,
        )
        if factory_active is None:
            # with one queue in view, the endpoint's total is this queue's own
            factory_active = supply.active
    return SchedContext(
        queue=queue,
        now=0.0,
        demand=demand,
        supply=supply,
        site_status=site_status,
        factory_active=factory_active,
        factory_max=args.factory_max,
        history=history,
    )
