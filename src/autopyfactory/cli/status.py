"""``apf status``: every queue's demand, pending, running and last decision.

Locally (``--conf``) from the store and the daemon's status file; or from a running factory's
JSON API (``--url http://host:9642``), which serves the same ``StatusReport``.
"""

from __future__ import annotations

import argparse
import json
import ssl
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from pydantic import ValidationError

from autopyfactory.cli._common import add_conf, load_or_report
from autopyfactory.engine.factory import status_path
from autopyfactory.store.api import Store
from autopyfactory.web.models import QueueState, QueueSummary, StatusReport


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("status", help="show each queue's demand, pilots and last decision")
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


def collect(conf: str) -> dict[str, object] | None:
    """The report as a plain dict (``--json`` prints exactly this)."""
    report = local_report(conf)
    return None if report is None else report.model_dump(mode="json", by_alias=True)


def local_report(conf: str) -> StatusReport | None:
    config = load_or_report(conf)
    if config is None:
        return None
    store = Store(config.settings.database_url())
    try:
        latest = store.latest_decisions(config.factory_id)
        counts = store.pilot_counts(config.factory_id)
    finally:
        store.close()
    daemon: dict[str, object] = {}
    path = status_path(config)
    if path.exists():
        try:
            daemon = json.loads(path.read_text())
        except (OSError, ValueError):
            daemon = {}
    running_queues = daemon.get("queues") if isinstance(daemon.get("queues"), dict) else {}
    queues = {}
    for name, queue in config.queues.items():
        d = latest.get(name)
        enabled = queue.enabled and config.settings.enablequeues
        error = (running_queues.get(name) or {}).get("error") if running_queues else None  # type: ignore[union-attr]
        if not enabled:
            state, detail = QueueState.DISABLED, None
        elif error:
            state, detail = QueueState.SETUP_FAILED, str(error)
        elif d is None:
            state, detail = QueueState.WAITING, "no decision recorded"
        else:
            state, detail = QueueState.OK, None
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
            state=state,
            state_detail=detail,
            pilots_by_state=counts.get(name, {}),
        )
    metrics = daemon.get("metrics")
    return StatusReport(
        factory=config.factory_id,
        time=time.time(),
        queues=queues,
        pollers=daemon.get("pollers", {}),  # type: ignore[arg-type]
        targets=daemon.get("targets", {}),  # type: ignore[arg-type]
        daemon_status_time=daemon.get("time"),  # type: ignore[arg-type]
        metrics=metrics,  # type: ignore[arg-type]
        web=str(metrics).removesuffix("/metrics") if metrics else None,
    )


def _cascade_of(config: object, queue: str) -> str | None:
    policy = config.policy  # type: ignore[attr-defined]
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
    header = ("queue", "state", "demand", "pending", "running", "last n", "binding", "age")
    rows = [header]
    for name, q in report.queues.items():
        age = "-" if q.decided_at is None else f"{now - q.decided_at:.0f}s"
        cells = [q.demand, q.pending, q.running, q.last_n, q.binding, age]
        rows.append((name, str(q.state), *("-" if c is None else str(c) for c in cells)))
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    print(f"factory {report.factory}")
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    if report.web:
        print(f"dashboard: {report.web}")
    if report.metrics:
        print(f"metrics: {report.metrics}")
    for label, state in report.pollers.items():
        print(f"poller {label}: {state}")
    for target, state in report.targets.items():
        print(f"target {target}: {state}")
