"""``apf run``: the daemon (SIGTERM stops, SIGHUP reloads), or one cycle with ``--once``."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import time

from autopyfactory.cli._common import add_conf, load_or_report, setup_logging
from autopyfactory.config.errors import ConfigError
from autopyfactory.config.loader import load_factory_config
from autopyfactory.config.models import FactoryConfig
from autopyfactory.engine.console import ConsoleTable
from autopyfactory.engine.factory import Factory

log = logging.getLogger("autopyfactory.run")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("run", help="run the factory")
    add_conf(parser)
    parser.add_argument(
        "--once", action="store_true", help="poll every endpoint, decide and act once, then exit"
    )
    parser.add_argument("--oneshot", dest="once", action="store_true", help=argparse.SUPPRESS)  # APF's name
    parser.add_argument("--cycles", type=int, help="stop after every queue has decided N times")
    parser.add_argument("--dry-run", action="store_true", help="decide and report, act on nothing")
    parser.add_argument(
        "--json", action="store_true", help="with --once: print each queue's decision as JSON"
    )
    parser.add_argument(
        "--table", dest="table", action="store_true", default=None, help="live table of queues"
    )
    parser.add_argument("--no-table", dest="table", action="store_false")
    parser.add_argument("--log", default="stderr", help="stderr, stdout or a file path")
    level = parser.add_mutually_exclusive_group()
    level.add_argument("-d", "--debug", dest="level", action="store_const", const="DEBUG")
    level.add_argument("-v", "--info", dest="level", action="store_const", const="INFO")
    level.add_argument("--quiet", dest="level", action="store_const", const="WARNING")
    parser.set_defaults(func=run, level=None)


def run(args: argparse.Namespace) -> int:
    table = args.table if args.table is not None else (sys.stdout.isatty() and not args.json)
    setup_logging(args.level or ("WARNING" if table or args.json else "INFO"), args.log)
    config = load_or_report(args.conf)
    if config is None:
        return 1
    observers = [ConsoleTable(sys.stdout, live=sys.stdout.isatty())] if table and not args.json else []
    factory = Factory(config, dry_run=args.dry_run, observers=observers)
    if not args.once:
        attach_reporters(factory)
    if args.once:
        plans = factory.step(time.time(), poll_all=True)
        factory.shutdown()
        if args.json:
            print(json.dumps({"queues": {p.queue: p.decision.as_dict() for p in plans}}))
        elif not table:
            for plan in plans:
                acts = ", ".join(type(a).__name__.lower() for a in plan.actions) or "no action"
                print(f"{plan.queue}: n={plan.decision.n} ({acts}) binding={plan.decision.binding}")
        return 0

    def on_term(signum: int, _frame: object) -> None:
        log.info("signal %s: stopping", signal.Signals(signum).name)
        factory.stop()

    def on_hup(_signum: int, _frame: object) -> None:
        log.info("SIGHUP: reloading %s", args.conf)
        factory.request_reload(lambda: _reload(args.conf))

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    signal.signal(signal.SIGHUP, on_hup)
    log.info("factory %s starting with %d queue(s)", config.factory_id, len(factory.queues))
    factory.run(cycles=args.cycles)
    log.info("factory %s stopped", config.factory_id)
    return 0


def attach_reporters(factory: Factory) -> None:
    """Prometheus metrics and e-mail alerts for the daemon; a failure to start one is logged."""
    from autopyfactory.engine.alerts import Alerts
    from autopyfactory.engine.metrics import Metrics

    settings = factory.config.settings
    if settings.metrics_address:
        metrics = Metrics(factory.factory_id, address=settings.metrics_address)
        try:
            metrics.start()
            factory.observers.append(metrics)
            factory.metrics_url = metrics.url
        except OSError as exc:
            log.error(
                "metrics: cannot listen on %s: %s (continuing without metrics)", settings.metrics_address, exc
            )
    alerts = Alerts(settings, factory.config.auth, maxage=_maxages(factory))
    if alerts.enabled:
        alerts.start()
        factory.observers.append(alerts)


def _maxages(factory: Factory) -> dict[str, float]:
    out: dict[str, float] = {}
    for poller in factory.pollers.values():
        out[poller.kind] = max(out.get(poller.kind, 0.0), poller.maxage)
    return out


def _reload(conf: str) -> FactoryConfig:
    """Read the new configuration (on the reload thread). Its problems are logged one per line and
    raised, so the reload-failed event says what was wrong (e.g. which queueConf URL timed out)."""
    try:
        return load_factory_config(conf)
    except ConfigError as exc:
        for problem in exc.problems:
            log.error("reload: %s", problem)
        raise
