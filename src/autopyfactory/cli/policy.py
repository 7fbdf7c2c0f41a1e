"""``apf policy schema`` and ``apf policy check [FILE] [--conf CONF]``: the provisioning policy."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from autopyfactory.config.errors import ConfigError, ConfigProblem
from autopyfactory.config.policy import (
    PolicyDocument,
    load_policy,
    policy_json_schema,
)
from autopyfactory.config.policy_checks import SiteFacts, check_queues, policy_warnings


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("policy", help="the provisioning policy: JSON Schema, validation")
    sub = parser.add_subparsers(dest="policy_command", metavar="ACTION")
    schema = sub.add_parser("schema", help="print the policy document's JSON Schema")
    schema.set_defaults(func=run_schema)
    check = sub.add_parser("check", help="validate a policy document (and its queues, with --conf)")
    check.add_argument("file", nargs="?", help="policy file, YAML or JSON (default: policyConf of --conf)")
    check.add_argument("--conf", help="autopyfactory.conf: check that every tier names a queue section")
    check.add_argument("--json", action="store_true", help="print the validated document as JSON")
    check.set_defaults(func=run_check)
    parser.set_defaults(func=lambda args: _usage(parser))


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return 2


def run_schema(args: argparse.Namespace) -> int:
    print(json.dumps(policy_json_schema(), indent=2))
    return 0


def _report(problems: list[ConfigProblem], what: str) -> None:
    errors = [p for p in problems if not p.warning]
    if errors:
        print(f"apf: {what} has {len(errors)} problem(s):", file=sys.stderr)
        for problem in errors:
            print(f"  {problem}", file=sys.stderr)
    for problem in problems:
        if problem.warning:
            print(f"apf: warning: {problem}", file=sys.stderr)


def run_check(args: argparse.Namespace) -> int:
    config = None
    if args.conf:
        try:
            from autopyfactory.config.loader import load_factory_config
        except ImportError:  # a stripped-down install without the INI loader
            print("apf: warning: config loader unavailable; queue sections not checked", file=sys.stderr)
        else:
            try:
                config = load_factory_config(args.conf)
            except ConfigError as exc:
                _report(exc.problems, f"configuration {args.conf}")
                return 1
    file = args.file
    if file is None:
        file = config.settings.policyConf if config is not None else None
        if not file:
            print("apf: give a policy FILE, or --conf with policyConf set in [Factory]", file=sys.stderr)
            return 2
    try:
        doc = load_policy(file)
    except ConfigError as exc:
        _report(exc.problems, f"policy {file}")
        return 1
    problems: list[ConfigProblem] = []
    if config is not None:
        problems = check_queues(doc, config.queues, file=str(file))
        if any(not p.warning for p in problems):
            _report(problems, f"policy {file}")
            return 1
    problems += policy_warnings(
        doc, file=str(file), sites=_site_facts(config) if config is not None else None
    )
    _report(problems, f"policy {file}")
    if args.json:
        print(doc.model_dump_json(indent=2))
        return 0
    print(_summary(doc, str(file), checked=config is not None))
    return 0


def _site_facts(config: Any) -> dict[str, SiteFacts]:
    """Capacity and start delay of simulated tier queues (other backends: unknown until observed)."""
    from autopyfactory.sim.batch import SimSubmitOptions

    out = {}
    for name, queue in config.queues.items():
        options = queue.plugin_options("batchsubmit")
        if isinstance(options, SimSubmitOptions):
            capacity = options.capacity
            if options.fail_when_over is not None:
                capacity = min(capacity, options.fail_when_over)
            out[name] = SiteFacts(capacity=capacity, start_delay=options.start_delay)
    return out


def _summary(doc: PolicyDocument, file: str, *, checked: bool) -> str:
    tiers = sum(len(c.tiers) for c in doc.cascades)
    lines = [
        f"policy OK: {file}: {len(doc.cascades)} cascade(s), {tiers} tier(s)"
        + (", every tier is a queue section" if checked else "")
    ]
    for cascade in doc.cascades:
        lines.append(f"cascade {cascade.name} (demand {cascade.demand}):")
        for tier in cascade.ordered:
            bits = [f"cap {tier.cap}" if tier.cap is not None else "no cap"]
            bits += [q.describe() for q in tier.quotas]
            if tier.full is not None:
                full = []
                if tier.full.pending is not None:
                    full.append(f"> {tier.full.pending} pending")
                if tier.full.oldest_pending is not None:
                    full.append(f"oldest pending > {tier.full.oldest_pending:g} s")
                bits.append("full when " + " or ".join(full))
            bits.append("spills on " + (", ".join(tier.spill_on) or "nothing"))
            if tier.cost_per_hour:
                bits.append(f"{tier.cost_per_hour:g}/pilot-hour")
            lines.append(f"  {tier.queue}: " + "; ".join(bits))
    return "\n".join(lines)
