"""Helpers shared by subcommands: loading config with clean errors, logging set-up, number options."""

from __future__ import annotations

import argparse
import logging
import logging.handlers
import math
import sys
import time
from collections.abc import Callable

from autopyfactory.config.errors import ConfigError
from autopyfactory.config.loader import load_factory_config
from autopyfactory.config.models import FactoryConfig
from autopyfactory.preflight import PreflightReport
from autopyfactory.service import LogTargetError, log_handler  # noqa: F401 (re-exported)

DEFAULT_CONF = "/etc/autopyfactory/autopyfactory.conf"


def add_conf(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--conf",
        default=DEFAULT_CONF,
        help=f"autopyfactory.conf (comma list allowed; default {DEFAULT_CONF})",
    )


def load_or_report(conf: str) -> FactoryConfig | None:
    """Load the config, or print one line per problem to stderr and return None."""
    try:
        config = load_factory_config(conf)
    except ConfigError as exc:
        print(f"apf: configuration has {len(exc.problems)} problem(s):", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        return None
    for warning in config.warnings:
        print(f"apf: warning: {warning}", file=sys.stderr)
    return config


def print_preflight(report: PreflightReport, stream=None) -> None:  # type: ignore[no-untyped-def]
    out = stream or sys.stderr
    errors = report.errors
    if errors:
        failed = report.failed_queues
        what = []
        if report.factory_errors:
            what.append(f"{len(report.factory_errors)} factory problem(s)")
        if failed:
            what.append(f"{len(failed)} queue(s) cannot be set up")
        print(f"apf: start-up checks failed: {', '.join(what)}:", file=out)
        for finding in errors:
            print(f"  {finding}", file=out)
    for finding in report.findings:
        if finding.warning:
            print(f"apf: warning: {finding}", file=out)


def setup_logging(level: str = "INFO", target: str = "stderr") -> logging.Handler:
    """Log to ``target`` (stderr, stdout, syslog[:address] or a file); raises LogTargetError."""
    handler = log_handler(target)
    if isinstance(handler, logging.handlers.SysLogHandler):
        formatter = logging.Formatter("%(levelname)s %(name)s: %(message)s")
    else:
        formatter = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%Y-%m-%dT%H:%M:%SZ")
        formatter.converter = time.gmtime  # UTC, as AutoPyFactory logged
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(getattr(logging, level.upper(), logging.INFO))
    # asyncssh logs every connection and channel at INFO; its warnings still show
    logging.getLogger("asyncssh").setLevel(max(logging.WARNING, root.level))
    return handler


def bounded(kind: Callable[[str], float], low: float, high: float, what: str) -> Callable[[str], float]:
    """An argparse ``type`` for a finite number in [low, high] (argparse reports the message)."""

    def parse(text: str) -> float:
        try:
            value = kind(text)
        except (ValueError, OverflowError):
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None
        if isinstance(value, float) and not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"{text!r}: must be a finite number")
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{text!r}: must be between {low:g} and {high:g}")
        return value

    return parse


def count(high: int = 1_000_000, low: int = 0) -> Callable[[str], int]:
    """An argparse ``type`` for a whole number in [low, high]."""
    return bounded(int, low, high, "a whole number")  # type: ignore[return-value]
