"""``apf run``: the daemon (SIGTERM stops, SIGHUP reloads, SIGUSR1 reopens the log file), or one
cycle with ``--once``.

Start-up runs the same checks as ``apf check`` (``autopyfactory.preflight``): a factory-level
problem (store, state directory) stops the start with exit status 1; a queue that cannot be set up
is left out, reported, listed in the daemon file for ``apf status``, and makes ``--once`` exit 1.
Under systemd (``Type=notify``) it sends READY, STOPPING, STATUS and WATCHDOG over ``$NOTIFY_SOCKET``.
A supervisor thread (period ``factory.sleep``) refreshes the heartbeat, re-reads the configuration
(``config.reconfig``, SIGHUP) off the decision path and stops the factory when no queue is left
and ``abort_no_queues`` is set. ``--dry-run`` builds no monitor and sends no alert.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

from autopyfactory import __version__
from autopyfactory.cli._common import add_conf, bounded, count, load_or_report, print_preflight, setup_logging
from autopyfactory.cli._daemon import DaemonFile, daemon_path
from autopyfactory.config.models import FactoryConfig
from autopyfactory.config.reload import ConfigWatcher
from autopyfactory.engine.console import ConsoleTable
from autopyfactory.engine.factory import Factory, tune_gc
from autopyfactory.preflight import PreflightReport, check_factory
from autopyfactory.service import (
    LogTargetError,
    Notifier,
    PrivilegeError,
    ReopenableFileHandler,
    Watchdog,
    drop_privileges,
    watchdog_interval,
)
from autopyfactory.web.service import WebService

log = logging.getLogger("autopyfactory.run")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("run", help="run the factory")
    add_conf(parser)
    parser.add_argument(
        "--once", action="store_true", help="poll every endpoint, decide and act once, then exit"
    )
    parser.add_argument("--oneshot", dest="once", action="store_true", help=argparse.SUPPRESS)  # APF's name
    parser.add_argument(
        "--cycles",
        type=count(1_000_000),
        help="stop after every queue has decided N times (default: [Factory] cycles; 0 runs no queue)",
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="decide and report; submit, cancel, monitor and alert nothing"
    )
    parser.add_argument(
        "--json", action="store_true", help="with --once: print each queue's decision as JSON"
    )
    parser.add_argument(
        "--table", dest="table", action="store_true", default=None, help="live table of queues"
    )
    parser.add_argument("--no-table", dest="table", action="store_false")
    parser.add_argument(
        "--log",
        default="stderr",
        help="stderr (default; the journal under systemd), stdout, syslog[:/dev/log | :host:port], "
        "or a file (reopened when logrotate moves it, and on SIGUSR1)",
    )
    parser.add_argument("--runas", metavar="USER", help="started as root: become USER (name or uid) first")
    parser.add_argument(
        "--first-poll-timeout",
        type=bounded(float, 0.0, 3600.0, "a number of seconds"),
        default=60.0,
        help=argparse.SUPPRESS,
    )
    level = parser.add_mutually_exclusive_group()
    level.add_argument("-d", "--debug", dest="level", action="store_const", const="DEBUG")
    level.add_argument("-v", "--info", dest="level", action="store_const", const="INFO")
    level.add_argument("--quiet", dest="level", action="store_const", const="WARNING")
    parser.set_defaults(func=run, level=None)


def runnable(config: FactoryConfig, report: PreflightReport, *, dry_run: bool) -> FactoryConfig:
    """The config the engine gets: queues that failed their checks left out; no monitor in dry-run."""
    failed = report.failed_queues
    out = replace(config, queues={n: q for n, q in config.queues.items() if n not in failed})
    if dry_run:
        out = replace(out, monitors={})
    return out


def run(args: argparse.Namespace) -> int:
    table = args.table if args.table is not None else (sys.stdout.isatty() and not args.json)
    try:
        handler = setup_logging(args.level or ("WARNING" if table or args.json else "INFO"), args.log)
    except LogTargetError as exc:
        print(f"apf run: {exc}", file=sys.stderr)
        return 2
    if args.runas:
        try:
            owned = [Path(handler.baseFilename)] if isinstance(handler, ReopenableFileHandler) else []
            entry = drop_privileges(args.runas, chown=owned)
        except PrivilegeError as exc:
            print(f"apf run: {exc}", file=sys.stderr)
            return 2
        log.info("running as %s (uid %d)", entry.pw_name, entry.pw_uid)
    notifier = Notifier()
    config = load_or_report(args.conf)
    if config is None:
        notifier.status("configuration invalid; see the log")
        return 1
    report = check_factory(config)
    print_preflight(report)
    for finding in report.errors:
        log.error("start-up check: %s", finding)
    if report.factory_errors:
        notifier.status("start-up checks failed; see the log")
        return 1
    failed = {name: "; ".join(lines) for name, lines in report.failed_queues.items()}
    settings = config.settings
    to_run = runnable(config, report, dry_run=args.dry_run)
    if not to_run.active_queues() and settings.abort_no_queues:
        log.error("no queue can run and abort_no_queues = True: exiting")
        return 1 if failed else 0
    observers = [ConsoleTable(sys.stdout, live=sys.stdout.isatty())] if table and not args.json else []
    try:
        factory = Factory(to_run, dry_run=args.dry_run, observers=observers, failed_queues=failed)
    except Exception as exc:  # the store or a poller failed in a way the checks did not foresee
        print(f"apf run: cannot start the factory: {startup_error(exc, to_run)}", file=sys.stderr)
        log.debug("factory construction failed", exc_info=True)
        return 1
    tune_gc()
    for runtime in factory.queues.values():
        if runtime.error:
            failed[runtime.name] = runtime.error
    log.info(
        "autopyfactory %s: factory %s from %s: %d queue(s) set up, %d not%s",
        __version__,
        config.factory_id,
        args.conf,
        len(factory.queues) - len([n for n in failed if n in factory.queues]),
        len(failed),
        " (dry run)" if args.dry_run else "",
    )
    if args.once:
        return _once(factory, args, failed, table)
    return _daemon(factory, config, args, failed, notifier, handler)


def startup_error(exc: Exception, config: FactoryConfig) -> str:
    """One line for an exception at start-up; store errors name the store (without a password)."""
    from sqlalchemy.exc import SQLAlchemyError

    from autopyfactory.preflight import redact_db_url

    detail = str(getattr(exc, "orig", None) or exc) or type(exc).__name__
    first = detail.strip().splitlines()[0][:300]
    if isinstance(exc, SQLAlchemyError):
        hint = " (is the disk full or read-only?)" if "disk" in first or "readonly" in first else ""
        return f"store {redact_db_url(config.settings.database_url())}: {first}{hint}"
    return f"{type(exc).__name__}: {first}"


def _once(factory: Factory, args: argparse.Namespace, failed: dict[str, str], table: bool) -> int:
    try:
        plans = factory.step(time.time(), poll_all=True)
    finally:
        factory.shutdown()
    if args.json:
        print(json.dumps({"queues": {p.queue: p.decision.as_dict() for p in plans}, "failed_queues": failed}))
    elif not table:
        for plan in plans:
            acts = ", ".join(type(a).__name__.lower() for a in plan.actions) or "no action"
            print(f"{plan.queue}: n={plan.decision.n} ({acts}) binding={plan.decision.binding}")
        for name, error in failed.items():
            print(f"{name}: NOT SET UP: {error}")
    return 1 if failed else 0


class Supervisor(threading.Thread):
    """Heartbeat, config re-reads (config.reconfig, SIGHUP) and abort_no_queues, every factory.sleep."""

    def __init__(
        self,
        factory: Factory,
        watcher: ConfigWatcher,
        daemon: DaemonFile,
        *,
        dry_run: bool,
        clock=time.time,  # type: ignore[no-untyped-def]
    ) -> None:
        super().__init__(name="apf-supervisor", daemon=True)
        self.factory = factory
        self.watcher = watcher
        self.daemon = daemon
        self.dry_run = dry_run
        self.clock = clock
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._reload_asked = False
        settings = factory.config.settings
        self.next_reconfig = clock() + settings.config_reconfig_interval if settings.config_reconfig else None

    def request_reload(self) -> None:
        """From a signal handler: re-read the configuration soon (on this thread)."""
        self._reload_asked = True
        self._wake.set()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()

    def run(self) -> None:
        while not self._stop.is_set():
            try:
                self.tick()
            except Exception:
                log.exception("supervisor: unexpected error (continuing)")
            self._wake.wait(self.factory.config.settings.factory_sleep)
            self._wake.clear()

    def tick(self) -> None:
        now = self.clock()
        settings = self.factory.config.settings
        if not self.daemon.heartbeat(now, settings.factory_sleep):
            log.warning("cannot write %s", self.daemon.path)
        log.debug("supervisor: heartbeat, %d queue(s)", len(self.factory.queues))
        due = self.next_reconfig is not None and now >= self.next_reconfig
        if self._reload_asked or due:
            self._reload_asked = False
            if settings.config_reconfig:
                self.next_reconfig = now + settings.config_reconfig_interval
            self.reload()
        if settings.abort_no_queues and not self.factory.queues:
            log.error("no queue is left and abort_no_queues = True: stopping")
            self.factory.stop()

    def reload(self) -> None:
        result = self.watcher.poll()
        if result.unchanged:
            log.info("reload: configuration unchanged")
            return
        if result.config is None:
            for problem in result.problems:
                log.error("reload refused, the running configuration is kept: %s", problem)
            self.refused([str(p) for p in result.problems])
            return
        report = check_factory(result.config)
        for finding in report.errors:
            log.error("reload: start-up check: %s", finding)
        if report.factory_errors:
            log.error("reload refused (factory-level problems); the running configuration is kept")
            self.refused([str(f) for f in report.factory_errors])
            return
        new = runnable(result.config, report, dry_run=self.dry_run)
        self.daemon.doc["failed_queues"] = {n: "; ".join(v) for n, v in report.failed_queues.items()}
        self.daemon.write()
        self.factory.request_reload(lambda config=new: config)
        self.watcher.remember(result.config)

    def refused(self, reasons: list[str]) -> None:
        """Let the engine record the refusal (its reload-failed event) between passes."""
        self.factory.report_reload_failure(reasons)


def _daemon(
    factory: Factory,
    config: FactoryConfig,
    args: argparse.Namespace,
    failed: dict[str, str],
    notifier: Notifier,
    handler: logging.Handler,
) -> int:
    settings = config.settings
    cycles = args.cycles if args.cycles is not None else settings.cycles
    daemon = DaemonFile(
        daemon_path(config, args.dry_run),
        conf=args.conf,
        dry_run=args.dry_run,
        failed_queues=failed,
        now=time.time(),
    )
    if not daemon.write():
        log.warning("cannot write %s (apf status will not know about this daemon)", daemon.path)
    watcher = ConfigWatcher(args.conf)
    watcher.remember(config)
    supervisor = Supervisor(factory, watcher, daemon, dry_run=args.dry_run)
    stopped = threading.Event()

    def on_term(signum: int, _frame: object) -> None:
        log.info("signal %s: stopping", signal.Signals(signum).name)
        stopped.set()
        factory.stop()

    def on_hup(_signum: int, _frame: object) -> None:
        log.info("SIGHUP: re-reading %s", args.conf)
        supervisor.request_reload()

    def on_usr1(_signum: int, _frame: object) -> None:
        if isinstance(handler, ReopenableFileHandler):
            handler.reopen()

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    signal.signal(signal.SIGHUP, on_hup)
    signal.signal(signal.SIGUSR1, on_usr1)
    web = attach_reporters(factory, alerts=not args.dry_run)
    if args.dry_run:
        log.info("dry run: no monitor, no alert, no submission, no cancellation")
    n_queues = len(factory.queues)
    status = (
        f"{n_queues} queue(s)"
        + (f", {len(failed)} not set up" if failed else "")
        + (" (dry run)" if args.dry_run else "")
    )
    log.info("factory %s starting with %s", config.factory_id, status)
    supervisor.start()
    interval = watchdog_interval()
    loop = threading.current_thread()
    watchdog = (
        Watchdog(
            notifier,
            interval,
            lambda: (
                loop.is_alive()
                and not factory.stopping
                and time.monotonic() - factory.heartbeat < 2 * interval
            ),
        )
        if interval
        else None
    )
    if watchdog is not None:
        watchdog.start()
    notifier.ready(status)
    code = 0
    try:
        if cycles == 0:
            # AutoPyFactory: cycles = 0 starts no queue; the factory idles (or exits with abort_no_queues)
            log.warning("cycles = 0: no queue runs")
            if not settings.abort_no_queues:
                stopped.wait()
            factory.shutdown()
        else:
            factory.run(cycles=cycles, first_poll_timeout=args.first_poll_timeout)
    except Exception:
        log.exception("the factory loop failed")
        code = 1
    finally:
        notifier.stopping()
        web.stop()
        supervisor.stop()
        if watchdog is not None:
            watchdog.stop()
        daemon.stopped(time.time())
    log.info("factory %s stopped", config.factory_id)
    return code


def attach_reporters(factory: Factory, *, alerts: bool = True) -> WebService:
    """Prometheus metrics, the web dashboard (which serves /metrics) with the pilot log server,
    and (unless ``alerts`` is False: a dry run) e-mail alerts for the daemon; a failure to start
    one is logged. Stop the returned web service after ``factory.run``."""
    from autopyfactory.engine.alerts import Alerts
    from autopyfactory.engine.metrics import Metrics

    metrics = Metrics(factory.factory_id)
    factory.observers.append(metrics)
    from autopyfactory.credentials.metrics import CredentialCollector

    metrics.registry.register(CredentialCollector(factory.credential_health, time.time))
    web = WebService(factory, metrics.registry).start()
    if not alerts:
        return web
    mailer = Alerts(factory.config.settings, factory.credential_health, maxage=_maxages(factory))
    if mailer.enabled:
        mailer.start()
        factory.observers.append(mailer)
    return web


def _maxages(factory: Factory) -> dict[str, float]:
    out: dict[str, float] = {}
    for poller in factory.pollers.values():
        out[poller.kind] = max(out.get(poller.kind, 0.0), poller.maxage)
    return out
