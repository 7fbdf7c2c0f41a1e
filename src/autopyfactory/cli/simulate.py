"""``apf simulate``: run the real factory loop with simulated backends on a virtual clock."""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from autopyfactory.cli._common import load_or_report
from autopyfactory.config.errors import ConfigError
from autopyfactory.config.policy import check_queues, load_policy
from autopyfactory.decide.periods import parse_duration, parse_time
from autopyfactory.sim.runner import Simulation
from autopyfactory.sim.trace import read_trace


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "simulate", help="replay a demand trace through the real loop with simulated backends"
    )
    parser.add_argument(
        "--conf", required=True, help="autopyfactory.conf whose tier queues use the Sim backend"
    )
    parser.add_argument("--policy", help="policy file (default: the config's policyConf)")
    parser.add_argument("--demand", required=True, help="CSV trace: time,wmsqueue,activated")
    parser.add_argument("--start", required=True, help="ISO 8601 UTC start, e.g. 2027-01-01T00:00:00Z")
    parser.add_argument("--days", type=float, required=True, help="how many days to simulate")
    parser.add_argument("--step", default="10m", help="cycle length (seconds or 10m, 1h; default 10m)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--per-cycle", action="store_true", help="include every cycle in the report")
    parser.add_argument("--html", metavar="FILE", help="also write the report as a self-contained web page")
    parser.add_argument("--state", help="directory for the simulation's store and state (default: temporary)")
    parser.add_argument("--stop-at", help="stop at this ISO time and save the state (resume with --resume)")
    parser.add_argument("--resume", action="store_true", help="continue a stopped simulation from --state")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    config = load_or_report(args.conf)
    if config is None:
        return 1
    policy_path = args.policy or config.settings.policyConf
    if not policy_path:
        print("apf simulate: no policy: give --policy or set policyConf", file=sys.stderr)
        return 2
    try:
        policy = load_policy(policy_path)
        problems = [p for p in check_queues(policy, config.queues, file=policy_path) if not p.warning]
        if problems:
            raise ConfigError(problems)
        start = parse_time(args.start)
        step = parse_duration(args.step)
        stop_at = parse_time(args.stop_at) if args.stop_at else None
        trace = read_trace(args.demand, start)
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"apf simulate: {problem}", file=sys.stderr)
        return 1
    except (OSError, ValueError) as exc:
        print(f"apf simulate: {exc}", file=sys.stderr)
        return 2
    if step <= 0 or args.days <= 0:
        print("apf simulate: --step and --days must be positive", file=sys.stderr)
        return 2
    if args.resume and not args.state:
        print("apf simulate: --resume needs --state DIR", file=sys.stderr)
        return 2
    for queue in policy.tier_queues:
        if config.queues[queue].batchsubmit.name != "Sim":
            print(f"apf simulate: tier queue [{queue}] must use batchsubmitplugin = Sim", file=sys.stderr)
            return 2
    with tempfile.TemporaryDirectory(prefix="apf-sim-") as tmp:
        state = Path(args.state) if args.state else Path(tmp)
        state.mkdir(parents=True, exist_ok=True)
        sim = Simulation(
            config,
            policy,
            trace,
            start,
            start + args.days * 86400,
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
    print(
        f"simulated {report['start']} .. {report['stopped_at'] or report['end']}: {report['cycles_run']} cycles in {report['elapsed_s']}s"
    )
    for tier, info in report["tiers"].items():
        print(f"tier {tier} (cost/h {info['cost_per_hour']}):")
        for month, m in info["months"].items():
            print(
                f"  {month}: submitted {m['submitted']}, started {m['started']}, peak running {m['peak_running']}, "
                f"{m['pilot_hours']} pilot-hours, cost {m['cost']}"
            )
    for event in report["events"][:50]:
        print(f"{event['time']} {event['cascade']} {event['kind']}: {event['message']}")
    if len(report["events"]) > 50:
        print(f"... {len(report['events']) - 50} more events (use --json)")
    return 0
