"""The records the dashboard, the JSON API (``/api/v1``) and the CLI's ``--json`` share.

Plain pydantic models, no web framework: ``apf status --json`` prints a ``StatusReport``, ``apf
explain --json`` an ``Explanation``, and the API serves the same models (``/openapi.json``
documents them). Times are POSIX seconds (UTC). Nothing here ever holds a secret: credentials
appear by profile name, store URLs without their password.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class _Record(BaseModel):
    model_config = ConfigDict(populate_by_name=True, frozen=True)


class QueueState(StrEnum):
    """What an operator needs to know about a queue first (the worst that applies)."""

    OK = "ok"
    WAITING = "waiting"  # no decision yet
    STALE = "stale"  # its status inputs are older than maxage: it decides nothing
    CREDENTIAL = "credential expiring"
    BACKOFF = "backing off"
    SETUP_FAILED = "failed to set up"
    DISABLED = "disabled"


# worst first: the overview sorts states by this order
STATE_ORDER = {
    QueueState.SETUP_FAILED: 0,
    QueueState.BACKOFF: 1,
    QueueState.CREDENTIAL: 2,
    QueueState.STALE: 3,
    QueueState.WAITING: 4,
    QueueState.OK: 5,
    QueueState.DISABLED: 6,
}


class StepRecord(_Record):
    """One scheduler plugin's step: its input, output and reason (``apf explain``)."""

    plugin: str
    n_in: int = Field(alias="in")
    n_out: int = Field(alias="out")
    reason: str


class DecisionRecord(_Record):
    id: int | None = None
    time: float
    n: int
    ready: int | None = None
    pending: int | None = None
    running: int | None = None
    binding: str | None = None
    dry_run: bool = False
    steps: list[StepRecord] = Field(default_factory=list)


class EventRecord(_Record):
    id: int | None = None
    time: float
    queue: str | None = None
    kind: str
    message: str


class Explanation(_Record):
    """A queue's (or ``cascade:NAME``'s) last decisions with every step, and its events."""

    queue: str
    decisions: list[DecisionRecord]
    events: list[EventRecord]
    setup_error: str | None = None  # the daemon could not set the queue up


class QueueSummary(_Record):
    """One queue as the overview and ``apf status`` show it (numbers of its last decision)."""

    name: str
    enabled: bool = True
    cascade: str | None = None
    demand: int | None = None
    pending: int | None = None
    running: int | None = None
    last_n: int | None = None
    binding: str | None = None
    decided_at: float | None = None
    dry_run: bool = False  # the last decision was a dry run's (apf run --dry-run, apf plan)
    state: QueueState = QueueState.OK
    state_detail: str | None = None
    pilots_by_state: dict[str, int] = Field(default_factory=dict)


class StatusReport(_Record):
    """What ``apf status --json`` prints and ``GET /api/v1/status`` serves."""

    factory: str
    time: float | None = None
    queues: dict[str, QueueSummary]
    pollers: dict[str, str] = Field(default_factory=dict)
    targets: dict[str, str] = Field(default_factory=dict)
    daemon_status_time: float | None = None
    metrics: str | None = None
    web: str | None = None
    # the daemon: running, pid, heartbeat, not_running_since, dry_run, text (None from the API itself)
    daemon: dict[str, Any] | None = None
    dry_run_daemon: dict[str, Any] | None = None
    store_error: str | None = None
    # the running daemon's own writes to its store: ok, error (no secret: the URL is redacted),
    # failing_since, pending_writes (None when unknown, e.g. the daemon is not running)
    daemon_store: dict[str, Any] | None = None
    failed_queues: dict[str, str] = Field(default_factory=dict)
    # auth profiles' health as the credential manager last wrote it (no secret in it)
    credentials: dict[str, dict[str, Any]] = Field(default_factory=dict)
    # per cloud endpoint: leaked VMs now, adopted / terminated / interrupted totals
    cloud: dict[str, dict[str, int]] = Field(default_factory=dict)


class Series(_Record):
    """A queue's history for charts: parallel lists, ``t`` in POSIX seconds. With ``bucket_s``
    set the points are per interval (demand, pending, running: the largest value seen; n: the
    sum decided)."""

    t: list[float] = Field(default_factory=list)
    demand: list[int | None] = Field(default_factory=list)
    pending: list[int | None] = Field(default_factory=list)
    running: list[int | None] = Field(default_factory=list)
    n: list[int | None] = Field(default_factory=list)
    bucket_s: float | None = None
    start: float | None = None  # the window asked for
    end: float | None = None


class QueuePage(_Record):
    """One page of the overview: queues after filter and sort, with their sparklines."""

    factory: str
    time: float
    total: int  # queues in the factory
    matched: int  # after the filter
    page: int
    per_page: int
    pages: int
    sort: str
    order: str
    filter: str = ""
    state: str = ""
    items: list[QueueSummary]
    sparklines: dict[str, Series] = Field(default_factory=dict)
    counts_by_state: dict[str, int] = Field(default_factory=dict)


class PilotRecord(_Record):
    backend_id: str
    state: str
    submitted_at: float | None = None
    started_at: float | None = None
    ended_at: float | None = None
    node: str | None = None
    instance_id: str | None = None
    exit_code: int | None = None
    tier: str | None = None
    log: str | None = None  # path under the pilot log server (baseLogDir), when the file exists


class QueueInfo(_Record):
    """What the factory holds in memory about one queue (no secrets: plugin names only)."""

    name: str
    wmsqueue: str | None = None
    wmsstatus: str | None = None
    batchstatus: str
    batchsubmit: str
    sched: list[str]
    batch_poller: str | None = None
    wms_poller: str | None = None
    target: str | None = None
    interval: float | None = None
    inflight: int = 0
    decisions: int = 0
    error: str | None = None
    credentials: list[str] = Field(default_factory=list)


class QueueDetail(_Record):
    summary: QueueSummary
    info: QueueInfo
    decisions: list[DecisionRecord]
    events: list[EventRecord]
    pilots: list[PilotRecord]
    pilots_total: int


class TierView(_Record):
    queue: str
    position: int
    status: str  # taking, capped, full, out of quota, backed off, draining, ... (or "no decision yet")
    reason: str = ""
    submit: int = 0
    cancel: int = 0
    retire: int = 0
    demand_in: int = 0
    cap: int | None = None
    cap_room: int | None = None
    quota_left: int | None = None
    pending: int | None = None
    running: int | None = None
    backoff_until: float | None = None
    cost_per_hour: float = 0.0
    quotas: list[str] = Field(default_factory=list)  # "3000 pilots per month"


class QuotaBurn(_Record):
    """One tier quota in the current period: use so far, a burn-down series and a forecast."""

    tier: str
    per: str
    period: str
    start: float
    end: float
    limit_pilots: int | None = None
    used_pilots: int = 0
    limit_hours: float | None = None
    used_hours: float | None = None
    exhausted: bool = False
    # remaining pilots (or hours, for an hours-only quota) at the end of each bucket up to now
    t: list[float] = Field(default_factory=list)
    remaining: list[float] = Field(default_factory=list)
    unit: str = "pilots"
    rate_per_hour: float | None = None  # recent use rate (last 24 h of the period)
    runs_out_at: float | None = None  # at that rate; None when it lasts the period (or no use)


class TierCost(_Record):
    tier: str
    cost_per_hour: float
    months: dict[str, dict[str, float]] = Field(default_factory=dict)  # month -> pilot_hours, cost


class CascadeView(_Record):
    name: str
    demand_queue: str
    time: float | None = None  # of the last allocation
    demand: int | None = None
    supply: int | None = None
    unmet: int | None = None
    unallocated: int | None = None
    tiers: list[TierView]
    quotas: list[QuotaBurn] = Field(default_factory=list)
    costs: list[TierCost] = Field(default_factory=list)
    events: list[EventRecord] = Field(default_factory=list)


class PollerHealth(_Record):
    label: str
    kind: str
    state: str
    ok_time: float | None = None
    age_s: float | None = None
    error: str | None = None
    failures: int = 0
    next_attempt: float | None = None
    polls: int = 0
    interval: float
    maxage: float
    queues: int = 0


class TargetHealth(_Record):
    target: str
    failures: int
    error: str | None = None
    backoff_until: float | None = None


class CredentialHealth(_Record):
    name: str
    plugin: str
    status: str  # ok, expiring, expired, unreadable, no expiry known
    expires_at: float | None = None
    seconds_left: float | None = None
    detail: str | None = None
    queues: int = 0


class StoreHealth(_Record):
    url: str  # password hidden
    dialect: str
    ok: bool  # reachable, and the factory's last write succeeded
    latency_ms: float | None = None
    error: str | None = None
    dropped_events: int = 0  # events the factory could not keep while the store failed


class MonitorHealth(_Record):
    section: str
    plugin: str
    url: str | None = None  # user:password hidden
    queues: int = 0
    sent: int | None = None
    failed: int | None = None
    dropped: int | None = None
    last_error: str | None = None


class LoopHealth(_Record):
    queues: int
    cascades: int
    decisions: int  # queue decisions since start
    inflight: int  # actions queued or running


class Health(_Record):
    factory: str
    time: float
    loop: LoopHealth
    pollers: list[PollerHealth]
    targets: list[TargetHealth]
    credentials: list[CredentialHealth]
    store: StoreHealth
    monitors: list[MonitorHealth]
    logserver: dict[str, Any] = Field(default_factory=dict)


class ReportInfo(_Record):
    name: str
    size: int
    modified: float
