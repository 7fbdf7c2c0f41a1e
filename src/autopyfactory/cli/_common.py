"""Helpers shared by subcommands: loading config with clean errors, logging set-up."""

from __future__ import annotations

import argparse
import logging
import sys

from autopyfactory.config.errors import ConfigError
from autopyfactory.config.loader import load_factory_config
from autopyfactory.config.models import FactoryConfig

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


def setup_logging(level: str = "INFO", target: str = "stderr") -> None:
    handler: logging.Handler
    if target in ("stderr", "stdout"):
        handler = logging.StreamHandler(sys.stdout if target == "stdout" else sys.stderr)
    else:
        handler = logging.FileHandler(target)
    formatter = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%Y-%m-%dT%H:%M:%SZ")
    formatter.converter = __import__("time").gmtime  # UTC, as AutoPyFactory logged
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(getattr(logging, level.upper(), logging.INFO))
    # asyncssh logs every connection and channel at INFO; its warnings still show
    logging.getLogger("asyncssh").setLevel(max(logging.WARNING, root.level))
