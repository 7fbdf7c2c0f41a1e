"""``apf status``: whether the daemon runs, and every queue's state, demand, pilots and last decision.

Locally (``--conf``): read-only from the store (opened so that it cannot be written, and not at
all when it does not exist yet: nothing is created), the daemon file (pid, heartbeat, queues that
failed to set up) and the engine's status file (pollers, targets, dashboard). When the pid is gone
or the heartbeat is stale it says "not running since ..." and shows the pollers only as "last
known". Decisions made by ``apf run --dry-run`` or ``apf plan`` are marked. Remotely (``--url
http://host:9642``) from a running factory's JSON API, which serves the same ``StatusReport``."""

from __future__ import annotations

import argparse
import ast
import json
import re
import ssl
import sys
import time
import urllib.error
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from autopyfactory.cli._common import add_conf, load_or_report
from autopyfactory.cli._daemon import daemon_path, daemon_state, read_json
from autopyfactory.cli._store import StoreUnavailable, open_read_only
from autopyfactory.config.models import FactoryConfig
from autopyfactory.credentials import status_file as credentials_file
from autopyfactory.credentials.health import format_seconds
from autopyfactory.engine.report import status_path
from autopyfactory.plugins.base import endpoint_label
from autopyfactory.web.models import QueueState, QueueSummary, StatusReport


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "status", help="is the daemon running; each queue's demand, pilots, last decision"
    )
    add_conf(parser)
    parser.add_argument("--json", action="store_true")
    remote = parser.add_argument_group("a remote factory (its web address instead of --conf)")
    remote.add_argument("--url", help="the factory's dashboard, e.g. http://apf.example.org:9642")
    remote.add_argument("--token-file", help="file holding the bearer token (the factory's web.tokenfile)")
    remote.add_argument("--cacert", help="CA bundle that signed the factory's HTTPS certificate")
    remote.add_argument("--cert", help="client certificate (PEM) for a factory that asks for one")
    remote.add_argument("--key", help="the client certificate's key (PEM)")
    remote.add_argument("--timeout", type=float, default=30.0, help="seconds (default 30)")
    parser.set_defaults(func=run)


_ENGINE_LABEL = re.compile(r"^(?P<kind>[a-z]+):(?P<name>[A-Za-z0-9_]+):(?P<key>.*)$")


def in_words(label: str) -> str:
    """A poller label as the engine writes it today (``batchstatus:Local:('Local', '/x', 3600.0)``)
    in words (``batchstatus Local at /x``); labels already in words are kept."""
    match = _ENGINE_LABEL.match(label)
    if match is None:
        return label
    kind, name, key = match.group("kind", "name", "key")
    try:
        value = ast.literal_eval(key)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        if not key.startswith("("):
            return f"{kind} {key}" if key.startswith(name) else f"{kind} {name} {key}"
        # a tuple the engine cut at 80 characters: its quoted parts (the last one cut short)
        value = tuple(re.findall(r"'([^']*)'?", key))
    return endpoint_label(kind, name, value if isinstance(value, tuple | str) else str(value))


def _when(t: float | None) -> str:
    if t is None:
        return "-"
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def daemon_store_line(store: dict[str, Any] | None) -> str | None:
    """One line when the daemon cannot write its store (nothing is submitted meanwhile)."""
    if not store or store.get("ok") is not False:
        return None
    since = store.get("failing_since")
    when = f" since {_when(since)}" if isinstance(since, int | float) else ""
    pending = store.get("pending_writes")
    waiting = f", {pending} writes waiting" if isinstance(pending, int) and pending else ""
    return (
        f"store failing{when}{waiting}: nothing is submitted until it works again; "
        f"last error: {store.get('error') or 'unknown'}"
    )


def collect(conf: str, now: float | None = None) -> dict[str, object] | None:
    """The report as a plain dict (``--json`` prints exactly this)."""
    report = local_report(conf, now)
    return None if report is None else report.model_dump(mode="json", by_alias=True)


def local_report(conf: str, now: float | None = None) -> StatusReport | None:
    config = load_or_report(conf)
    if config is None:
        return None
    now = time.time() if now is None else now
    store_error = None
    latest: dict[str, Any] = {}
    counts: dict[str, Any] = {}
    try:
        store = open_read_only(config.settings.database_url())
    except StoreUnavailable as exc:
        store, store_error = None, str(exc)
    if store is not None:
        try:
            latest = store.latest_decisions(config.factory_id)
            counts = store.pilot_counts(config.factory_id)
        except Exception as exc:
            store_error = f"store: cannot read: {str(exc).splitlines()[0][:200]}"
        finally:
            store.close()
    engine = read_json(status_path(config))
    daemon = read_json(daemon_path(config))
    stale_after = 3 * config.settings.factory_sleep + 30
    state = daemon_state(daemon, engine, now, stale_after=stale_after)
    dry = read_json(daemon_path(config, dry_run=True))
    dry_state = daemon_state(dry, {}, now, stale_after=stale_after) if dry else None
    failed = dict(state.failed_queues or {})
    for source in (engine.get("failed_queues"), engine.get("queues")):
        for name, info in (source or {}).items() if isinstance(source, dict) else ():
            error = info.get("error") if isinstance(info, dict) else info
            if error and name not in failed:
                failed[str(name)] = str(error)
    queues = {}
    for name, queue in config.queues.items():
        d = latest.get(name)
        enabled = queue.enabled and config.settings.enablequeues
        error = failed.get(name)
        if not enabled:
            qstate, detail = QueueState.DISABLED, None
        elif error:
            qstate, detail = QueueState.SETUP_FAILED, error
        elif d is None:
            qstate, detail = QueueState.WAITING, "no decision recorded"
        else:
            qstate, detail = QueueState.OK, None
        queues[name] = QueueSummary(
            name=name,
            enabled=enabled,
            cascade=_cascade_of(config, name),
            demand=d["ready"] if d else None,
            pending=d["pending"] if d else None,
            running=d["running"] if d else None,
            last_n=d["n"] if d else None,
            binding=d["binding"] if d else None,
            decided_at=d["time"] if d else None,
            dry_run=bool(d["dry_run"]) if d else False,
            state=qstate,
            state_detail=detail,
            pilots_by_state=counts.get(name, {}),
        )
    credentials: dict[str, dict[str, Any]] = {}
    profiles = read_json(credentials_file(config.settings.state_path, config.factory_id)).get("profiles")
    if isinstance(profiles, dict):
        credentials = {str(k): v for k, v in profiles.items() if isinstance(v, dict)}
    metrics = engine.get("metrics") if state.running else None
    pollers = engine.get("pollers") if isinstance(engine.get("pollers"), dict) else {}
    targets = engine.get("targets") if isinstance(engine.get("targets"), dict) else {}
    # the daemon's store health as its loop last published it (only while it runs: it is live)
    daemon_store = engine.get("store") if state.running and isinstance(engine.get("store"), dict) else None
    return StatusReport(
        factory=config.factory_id,
        time=now,
        queues=queues,
        pollers={in_words(str(k)): str(v) for k, v in (pollers or {}).items()},
        targets={str(k): str(v) for k, v in (targets or {}).items()},
        daemon_status_time=engine.get("time") if isinstance(engine.get("time"), int | float) else None,
        metrics=metrics if isinstance(metrics, str) else None,
        web=metrics.removesuffix("/metrics") if isinstance(metrics, str) else None,
        daemon=state.as_dict(),
        dry_run_daemon=dry_state.as_dict() if dry_state is not None and dry_state.running else None,
        store_error=store_error,
        daemon_store=daemon_store,
        failed_queues=failed,
        credentials=credentials,
        # per cloud endpoint: leaked VMs now, adopted/terminated/interrupted totals
        cloud=engine.get("cloud", {}) if isinstance(engine.get("cloud"), dict) else {},
    )


def _cascade_of(config: FactoryConfig, queue: str) -> str | None:
    policy = config.policy
    if policy is None:
        return None
    cascade = policy.cascade_of(queue)
    return cascade.name if cascade is not None else None


class RemoteError(Exception):
    pass


def remote_report(
    url: str,
    *,
    token_file: str | None = None,
    cacert: str | None = None,
    cert: str | None = None,
    key: str | None = None,
    timeout: float = 30.0,
) -> StatusReport:
    """``GET <url>/api/v1/status`` of a running factory. Raises RemoteError with a clear message."""
    base = url.rstrip("/")
    if not base.startswith(("http://", "https://")):
        raise RemoteError(f"--url: not an http(s) URL: {url!r}")
    endpoint = f"{base}/api/v1/status"
    headers = {"Accept": "application/json"}
    if token_file:
        try:
            token = Path(token_file).expanduser().read_text().strip()
        except OSError as exc:
            raise RemoteError(f"--token-file: cannot read {token_file}: {exc.strerror}") from None
        headers["Authorization"] = f"Bearer {token}"
    context = None
    if base.startswith("https://"):
        try:
            context = ssl.create_default_context(cafile=cacert)
            if cert:
                context.load_cert_chain(cert, key)
        except (OSError, ssl.SSLError) as exc:
            raise RemoteError(f"TLS set-up: {exc}") from None
    request = urllib.request.Request(endpoint, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout, context=context) as response:
            body = response.read()
    except urllib.error.HTTPError as exc:
        hint = " (give --token-file)" if exc.code == 401 else ""
        raise RemoteError(f"{endpoint}: HTTP {exc.code} {exc.reason}{hint}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
        raise RemoteError(f"cannot reach {endpoint}: {reason}") from None
    try:
        return StatusReport.model_validate_json(body)
    except ValidationError as exc:
        raise RemoteError(
            f"{endpoint}: not an autopyfactory status report ({exc.error_count()} problems)"
        ) from None


def run(args: argparse.Namespace) -> int:
    if args.url:
        try:
            report = remote_report(
                args.url,
                token_file=args.token_file,
                cacert=args.cacert,
                cert=args.cert,
                key=args.key,
                timeout=args.timeout,
            )
        except RemoteError as exc:
            print(f"apf status: {exc}", file=sys.stderr)
            return 1
    else:
        local = local_report(args.conf)
        if local is None:
            return 1
        report = local
    if args.json:
        print(json.dumps(report.model_dump(mode="json", by_alias=True), indent=2))
        return 0
    print_table(report)
    return 0


def print_table(report: StatusReport) -> None:
    now = time.time()
    daemon = report.daemon or {}
    print(f"factory {report.factory}")
    if daemon.get("text"):
        print(daemon["text"])
    if report.dry_run_daemon:
        print(f"also: a dry-run daemon: {report.dry_run_daemon.get('text')}")
    if report.store_error:
        print(f"warning: {report.store_error}", file=sys.stderr)
    store_line = daemon_store_line(report.daemon_store)
    if store_line:
        print(store_line)
    header = ("queue", "state", "demand", "pending", "running", "last n", "binding", "age")
    rows = [header]
    marked = False
    for name, q in report.queues.items():
        age = "-" if q.decided_at is None else f"{now - q.decided_at:.0f}s"
        last_n = "-" if q.last_n is None else str(q.last_n) + ("*" if q.dry_run else "")
        marked = marked or q.dry_run
        cells = [q.demand, q.pending, q.running, last_n, q.binding, age]
        label = name + (" (NOT SET UP)" if q.state is QueueState.SETUP_FAILED else "")
        rows.append((label, str(q.state), *("-" if c is None else str(c) for c in cells)))
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    if marked:
        print("* a dry-run decision (apf run --dry-run or apf plan): nothing was acted on")
    for name, error in report.failed_queues.items():
        print(f"queue {name} failed to set up: {error}")
    running = bool(daemon.get("running", True))  # a remote report comes from a running factory
    if running and report.web:
        print(f"dashboard: {report.web}")
    if running and report.metrics:
        print(f"metrics: {report.metrics}")
    for label, c in report.cloud.items():
        print(
            f"cloud {label}: {c.get('leaked', 0)} leaked VMs (tagged, unknown, their queue gone); "
            f"{c.get('adopted', 0)} adopted, {c.get('terminated_leaks', 0)} leaks terminated, "
            f"{c.get('interrupted', 0)} interrupted by the provider"
        )
    if (report.pollers or report.targets) and not running:
        print(f"last known at {_when(report.daemon_status_time)} (the daemon is not running):")
    prefix = "" if running else "  "
    for label, state in report.pollers.items():
        print(f"{prefix}poller {label}: {state}")
    for target, state in report.targets.items():
        print(f"{prefix}target {target}: {state}")
    for name, c in report.credentials.items():
        expires = c.get("expires_at")
        left = ""
        if isinstance(expires, int | float):
            left = (
                f", {format_seconds(expires - now)} left"
                if expires > now
                else f", expired {format_seconds(now - expires)} ago"
            )
        error = f": {c['error']}" if c.get("error") else ""
        print(f"credential {name} ({c.get('kind')}): {c.get('state')}{left}{error}")
