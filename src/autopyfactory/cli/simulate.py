"""``apf simulate``: run the real factory loop with simulated backends on a virtual clock; with
``--compare``, run several configurations on the same demand and compare them side by side (and
with the offline optimum)."""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
from pathlib import Path
from typing import Any

from autopyfactory.cli._common import load_or_report
from autopyfactory.config.errors import ConfigError
from autopyfactory.config.models import FactoryConfig
from autopyfactory.config.policy import PolicyDocument, load_policy
from autopyfactory.config.policy_checks import check_queues
from autopyfactory.decide.periods import parse_duration, parse_time
from autopyfactory.sim.runner import Simulation
from autopyfactory.sim.trace import DemandTrace, read_trace

MAX_DAYS = 3660.0  # ten years
MIN_STEP = 1.0  # seconds
MAX_CYCLES = 1_000_000  # about 40 minutes of simulation; more is a mistake in --days or --step


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "simulate", help="replay a demand trace through the real loop with simulated backends"
    )
    parser.add_argument(
        "--conf",
        help="autopyfactory.conf whose queues use the Sim backends (needed unless --compare names only .conf files)",
    )
    parser.add_argument(
        "--policy", help="policy file (default: the config's policyConf; none: the queues' own chains)"
    )
    parser.add_argument("--demand", required=True, help="CSV trace: time,wmsqueue,activated")
    parser.add_argument("--start", required=True, help="ISO 8601 UTC start, e.g. 2027-01-01T00:00:00Z")
    parser.add_argument("--days", required=True, help=f"how many days to simulate (at most {MAX_DAYS:g})")
    parser.add_argument("--step", default="10m", help="cycle length (seconds or 10m, 1h; default 10m)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--per-cycle", action="store_true", help="include every cycle in the report")
    parser.add_argument(
        "--html",
        metavar="FILE",
        help="also write the report (with --compare: the comparison) as a self-contained web page",
    )
    parser.add_argument("--state", help="directory for the simulation's store and state (default: temporary)")
    parser.add_argument("--stop-at", help="stop at this ISO time and save the state (resume with --resume)")
    parser.add_argument("--resume", action="store_true", help="continue a stopped simulation from --state")
    parser.add_argument(
        "--compare",
        nargs="+",
        metavar="POLICY_OR_CONF",
        help="run each configuration on the same demand and compare them: a policy file (run with "
        "--conf's queues) or an autopyfactory.conf (its own queues and policy, if any)",
    )
    parser.add_argument(
        "--no-optimum",
        action="store_true",
        help="with --compare: skip the offline optimum (linear programme)",
    )
    parser.add_argument(
        "--jobs",
        type=int,
        help="with --compare: simulations run at once (default: all, up to twice the CPUs)",
    )
    parser.set_defaults(func=run)


class UsageError(Exception):
    """A bad command-line value: printed as one line, exit status 2."""


def run_span(start_text: str, days_text: str, step_text: str) -> tuple[float, float, float]:
    """(start, end, step) from the command line, bounded: finite, positive, a step of at least
    ``MIN_STEP`` and at most ``MAX_CYCLES`` cycles."""
    try:
        start = parse_time(start_text)
    except (ValueError, OverflowError, OSError):
        raise UsageError(
            f"--start {start_text!r} is not an ISO 8601 time (e.g. 2027-01-01T00:00:00Z)"
        ) from None
    try:
        days = float(days_text)
    except ValueError:
        raise UsageError(f"--days {days_text!r} is not a number") from None
    if not math.isfinite(days) or days <= 0 or days > MAX_DAYS:
        raise UsageError(f"--days must be a number of days > 0 and <= {MAX_DAYS:g} (got {days_text})")
    try:
        step = parse_duration(step_text)
    except ValueError as exc:
        raise UsageError(f"--step: {exc}") from None
    if step < MIN_STEP:
        raise UsageError(f"--step must be at least {MIN_STEP:g} s (got {step_text})")
    cycles = days * 86400 / step
    if cycles > MAX_CYCLES:
        raise UsageError(
            f"{days:g} days at a {step:g} s step is {cycles:,.0f} cycles, more than {MAX_CYCLES:,}: "
            "use a longer --step or fewer --days"
        )
    return start, start + days * 86400, step


def check_simulatable(config: FactoryConfig, policy: PolicyDocument | None, policy_file: str | None) -> None:
    """Every active queue must be simulated (a simulation must never reach a real backend), and
    every tier must name a queue section. Raises UsageError/ConfigError."""
    if policy is not None:
        problems = [
            p for p in check_queues(policy, config.queues, file=policy_file or "<policy>") if not p.warning
        ]
        if problems:
            raise ConfigError(problems)
    for qc in config.active_queues():
        for kind, spec in (
            ("batchsubmit", qc.batchsubmit),
            ("batchstatus", qc.batchstatus),
            ("wmsstatus", qc.wmsstatus),
        ):
            if spec is None or spec.name != "Sim":
                raise UsageError(
                    f"queue [{qc.name}] must use {kind}plugin = Sim to be simulated "
                    f"(it uses {spec.name if spec else 'none'}); disable it (enabled = False) or switch it to Sim"
                )


def run(args: argparse.Namespace) -> int:
    try:
        start, end, step = run_span(args.start, args.days, args.step)
        stop_at = parse_time(args.stop_at) if args.stop_at else None
        if stop_at is not None and not start < stop_at <= end:
            raise UsageError("--stop-at must lie after --start and within --days")
        if args.resume and not args.state:
            raise UsageError("--resume needs --state DIR")
        if args.jobs is not None and args.jobs < 1:
            raise UsageError("--jobs must be at least 1")
        if args.compare:
            if args.state or args.stop_at or args.resume or args.per_cycle or args.policy:
                raise UsageError(
                    "--compare runs whole simulations of the configurations it names: "
                    "no --policy, --state, --stop-at, --resume or --per-cycle"
                )
            configurations, trace = _load_compare(args, start)
        elif not args.conf:
            raise UsageError("give --conf")
        else:
            config = load_or_report(args.conf)
            if config is None:
                return 1
            policy_path = args.policy or config.settings.policyConf
            policy = load_policy(policy_path) if policy_path else None
            check_simulatable(config, policy, policy_path)
            trace = read_trace(args.demand, start)
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"apf simulate: {problem}", file=sys.stderr)
        return 1
    except (UsageError, ValueError, OverflowError) as exc:
        print(f"apf simulate: {exc}", file=sys.stderr)
        return 2
    if args.compare:
        return _compare(args, configurations, trace, start, end, step)
    with tempfile.TemporaryDirectory(prefix="apf-sim-") as tmp:
        state = Path(args.state) if args.state else Path(tmp)
        state.mkdir(parents=True, exist_ok=True)
        sim = Simulation(
            config,
            policy,
            trace,
            start,
            end,
            step,
            state,
            per_cycle=args.per_cycle or bool(args.html),  # the page's charts need every cycle
            progress=None if args.json else lambda msg: print(msg, file=sys.stderr),
        )
        report = sim.run(stop_at=stop_at, resume=args.resume)
    if args.html:
        from autopyfactory.web.report import write_report

        try:
            write_report(args.html, report, policy=policy)
        except OSError as exc:
            print(f"apf simulate: --html {args.html}: {exc.strerror or exc}", file=sys.stderr)
            return 1
        if not args.per_cycle:
            report.pop("cycles", None)  # asked for the page, not for every cycle in the output
    if args.json:
        print(json.dumps(report))
        return 0
    print(describe_report(report))
    return 0


def describe_report(report: dict[str, Any], max_events: int = 50) -> str:
    lines = [
        f"simulated {report['start']} .. {report['stopped_at'] or report['end']}: "
        f"{report['cycles_run']} cycles in {report['elapsed_s']}s"
    ]
    for tier, info in report["tiers"].items():
        lines.append(f"tier {tier} (cost/h {info['cost_per_hour']:g}):")
        for month, m in info["months"].items():
            quota = f", quota used {m['quota_used']}" if m["quota_used"] is not None else ""
            lines.append(
                f"  {month}: submitted {m['submitted']}, started {m['started']}, never started "
                f"{m['never_started']}{quota}, peak running {m['peak_running']}, "
                f"{m['pilot_hours']} pilot-hours, cost {m['cost']}"
            )
    for wmsqueue, service in report["service"].items():
        lines.append(f"demand {wmsqueue}:")
        for month, s in service["months"].items():
            mean, p95 = s["mean_wait_s"], s["p95_wait_s"]
            waits = f"{mean / 60:.1f} / {p95 / 60:.1f} min" if mean is not None and p95 is not None else "-"
            lines.append(
                f"  {month}: {s['demand_job_hours']} job-hours wanted, {s['unserved_job_hours']} unserved; "
                f"time to a running pilot mean / p95 {waits}"
            )
    events = report["events"]
    lines.append(f"{len(events)} event(s):")
    for event in events[:max_events]:
        to = f" -> {event['to']}" if event.get("to") else ""
        n = f" n={event['n']}" if event.get("n") is not None else ""
        lines.append(f"  {event['time']} {event['tier'] or '-'} {event['kind']}{n}{to}: {event['message']}")
    if len(events) > max_events:
        lines.append(f"  ... {len(events) - max_events} more events (use --json)")
    return "\n".join(lines)


def _load_compare(args: argparse.Namespace, start: float) -> tuple[list[Any], DemandTrace]:
    from autopyfactory.sim.compare import load_configurations

    configurations = load_configurations(args.compare, args.conf)
    for cfg in configurations:
        check_simulatable(cfg.config, cfg.policy, cfg.policy_file)
    return configurations, read_trace(args.demand, start)


def _compare(
    args: argparse.Namespace,
    configurations: list[Any],
    trace: DemandTrace,
    start: float,
    end: float,
    step: float,
) -> int:
    from autopyfactory.sim.compare import compare, describe_comparison

    result = compare(
        configurations,
        trace,
        args.demand,
        start,
        end,
        step,
        jobs=args.jobs,
        optimum=not args.no_optimum,
        progress=None if args.json else lambda msg: print(msg, file=sys.stderr),
    )
    if args.html:
        from autopyfactory.web.report import write_comparison

        try:
            write_comparison(args.html, result)
        except OSError as exc:
            print(f"apf simulate: --html {args.html}: {exc.strerror or exc}", file=sys.stderr)
            return 1
    print(json.dumps(result) if args.json else describe_comparison(result))
    return 0
