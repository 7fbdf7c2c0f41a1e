"""``EngineView``: ``FactoryView`` for today's ``engine.Factory`` (the one adapter module).

It reads the factory's in-memory state without its lock (the loop replaces whole objects - the
last ``Decision``, poller snapshots - and the view copies what it shows; dicts are copied with one
``list(...)`` call, which is atomic under the GIL) and the store through its own read-only engine
(``web.queries``). The restructured engine can implement ``FactoryView`` itself and drop this
module.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from sqlalchemy.exc import DBAPIError, SQLAlchemyError

from autopyfactory.decide.periods import Period, month_key
from autopyfactory.plugins.batch.condor.logs import day, queue_dir_name
from autopyfactory.plugins.monitor.apf import MonitorStats
from autopyfactory.store import ledger
from autopyfactory.web import queries
from autopyfactory.web.credentials import check_profile
from autopyfactory.web.models import (
    CascadeView,
    CredentialHealth,
    DecisionRecord,
    EventRecord,
    Health,
    LoopHealth,
    MonitorHealth,
    PilotRecord,
    PollerHealth,
    QueueInfo,
    QueueState,
    QueueSummary,
    QuotaBurn,
    Series,
    StoreHealth,
    TargetHealth,
    TierCost,
    TierView,
)
from autopyfactory.web.view import ViewError

if TYPE_CHECKING:
    from autopyfactory.config.policy import Quota, Tier
    from autopyfactory.engine.cascade import CascadeRuntime
    from autopyfactory.engine.factory import Factory, QueueRuntime

CREDENTIAL_CHECK_INTERVAL = 60.0
BAD_CREDENTIAL = ("expiring", "expired", "unreadable")
BURN_POINTS = 60
_NONE: dict[str, int] = {}


@runtime_checkable
class MonitorWithStats(Protocol):
    """A monitor plugin that counts its calls (the APF monitor does)."""

    stats: MonitorStats


class EngineView:
    """Implements ``web.view.FactoryView`` over a running ``Factory``."""

    def __init__(self, factory: Factory, *, log_root: Path | None = None, cache_s: float = 1.0) -> None:
        self._factory = factory
        self._log_root = log_root.resolve() if log_root is not None else None
        self._cache_s = cache_s
        self._read = queries.read_engine(factory.store.url) or factory.store.engine
        # this view's own caches (never the factory's lock)
        self._build_lock = threading.Lock()
        self._cascade_lock = threading.Lock()
        self._summaries: tuple[float, list[QueueSummary]] | None = None
        self._cascades: tuple[float, list[CascadeView]] | None = None
        self._counts: dict[str, tuple[tuple[Any, ...], dict[str, int]]] = {}
        self._rows: dict[str, tuple[Any, ...]] = {}  # name -> (inputs..., QueueSummary)
        self._creds: tuple[float, int, list[CredentialHealth]] | None = None

    def close(self) -> None:
        if self._read is not self._factory.store.engine:
            self._read.dispose()

    # -- FactoryView ------------------------------------------------------------------------------
    @property
    def factory_id(self) -> str:
        return self._factory.factory_id

    def now(self) -> float:
        return self._factory.clock()

    def summaries(self) -> list[QueueSummary]:
        with self._build_lock:  # one builder; concurrent requests take its result
            mono = time.monotonic()
            if self._summaries is not None and mono - self._summaries[0] < self._cache_s:
                return self._summaries[1]
            rows = self._build_summaries(self.now())
            self._summaries = (mono, rows)
            return rows

    def queue_info(self, name: str) -> QueueInfo | None:
        rt = self._factory.queues.get(name)
        if rt is None:
            return None
        qc = rt.config
        return QueueInfo(
            name=name,
            wmsqueue=qc.wmsqueue,
            wmsstatus=qc.wmsstatus.name if qc.wmsstatus else None,
            batchstatus=qc.batchstatus.name,
            batchsubmit=qc.batchsubmit.name,
            sched=[s.name for s in qc.sched],
            batch_poller=rt.batch_poller.label,
            wms_poller=rt.wms_poller.label if rt.wms_poller else None,
            target=rt.submitter.target() if rt.submitter is not None else None,
            interval=qc.settings.sleep,
            inflight=rt.inflight,
            decisions=rt.decisions,
            error=rt.error,
            credentials=list(rt.credentials),
        )

    def decisions(self, queue: str, limit: int) -> list[DecisionRecord]:
        with self._connect() as conn:
            rows = queries.recent_decisions(conn, self.factory_id, queue, limit)
        return [
            DecisionRecord(
                id=r["id"],
                time=r["time"],
                n=r["n"],
                ready=r["ready"],
                pending=r["pending"],
                running=r["running"],
                binding=r["binding"],
                dry_run=bool(r["dry_run"]),
                steps=r["steps"],
            )
            for r in rows
        ]

    def events(self, queue: str | None, limit: int) -> list[EventRecord]:
        with self._connect() as conn:
            rows = queries.recent_events(conn, self.factory_id, queue, limit)
        return [EventRecord(**r) for r in _without(rows, "factory_id")]

    def pilots(self, queue: str, limit: int) -> tuple[list[PilotRecord], int]:
        with self._connect() as conn:
            rows, total = queries.recent_pilots(conn, self.factory_id, queue, limit)
        out = []
        for r in rows:
            out.append(
                PilotRecord(
                    backend_id=r["backend_id"],
                    state=r["state"],
                    submitted_at=r["submitted_at"],
                    started_at=r["started_at"],
                    ended_at=r["ended_at"],
                    node=r["node"],
                    instance_id=r["instance_id"],
                    exit_code=r["exit_code"],
                    tier=r["tier"],
                    log=self._pilot_log(queue, r["backend_id"], r["submitted_at"]),
                )
            )
        return out, total

    def history(self, queues: Sequence[str], since: float, points: int) -> dict[str, Series]:
        now = self.now()
        with self._connect() as conn:
            raw = queries.decision_history(conn, self.factory_id, queues, since, now, points)
        width = (now - since) / max(points, 1)
        return {q: Series(**s, bucket_s=width, start=since, end=now) for q, s in raw.items()}

    def cascades(self) -> list[CascadeView]:
        with self._cascade_lock:
            mono = time.monotonic()
            if self._cascades is not None and mono - self._cascades[0] < self._cache_s:
                return self._cascades[1]
            now = self.now()
            with self._connect() as conn:
                views = [self._cascade(conn, cr, now) for cr in list(self._factory.cascades.values())]
            self._cascades = (mono, views)
            return views

    def health(self) -> Health:
        f = self._factory
        now = self.now()
        queues = list(f.queues.values())
        users: dict[int, int] = defaultdict(int)
        for rt in queues:
            users[id(rt.batch_poller)] += 1
            if rt.wms_poller is not None:
                users[id(rt.wms_poller)] += 1
        pollers = []
        for p in list(f.pollers.values()):
            st = p.status
            pollers.append(
                PollerHealth(
                    label=p.label,
                    kind=p.kind,
                    state=p.state(now),
                    ok_time=st.ok_time,
                    age_s=(now - st.ok_time) if st.ok_time is not None else None,
                    error=st.error,
                    failures=st.failures,
                    next_attempt=st.next_attempt or None,
                    polls=st.polls,
                    interval=p.interval,
                    maxage=p.maxage,
                    queues=users.get(id(p), 0),
                )
            )
        targets = [
            TargetHealth(target=t, failures=s.failures, error=s.error, backoff_until=s.until or None)
            for t, s in list(f.targets.items())
            if s.failures
        ]
        creds = self._credentials(now)
        monitors = []
        for section, monitor in list(f.state.monitors.items()):
            conf = f.config.monitors.get(section)
            stats = monitor.stats if isinstance(monitor, MonitorWithStats) else None
            monitors.append(
                MonitorHealth(
                    section=section,
                    plugin=type(monitor).name,
                    url=_hide_userinfo(conf.monitorURL) if conf is not None and conf.monitorURL else None,
                    queues=sum(1 for rt in queues if monitor in rt.monitors),
                    sent=stats.sent if stats else None,
                    failed=stats.failed if stats else None,
                    dropped=stats.dropped if stats else None,
                    last_error=stats.last_error if stats else None,
                )
            )
        return Health(
            factory=self.factory_id,
            time=now,
            loop=LoopHealth(
                queues=len(queues),
                cascades=len(f.cascades),
                decisions=sum(rt.decisions for rt in queues),
                inflight=sum(rt.inflight for rt in queues),
            ),
            pollers=pollers,
            targets=targets,
            credentials=creds,
            store=self._store_health(),
            monitors=monitors,
        )

    # -- summaries ---------------------------------------------------------------------------------
    def _build_summaries(self, now: float) -> list[QueueSummary]:
        f = self._factory
        bad = {c.name: c for c in self._credentials(now) if c.status in BAD_CREDENTIAL}
        counts = self._pilot_counts()
        tier_backoff: dict[str, float] = {}
        for cr in list(f.cascades.values()):
            for tier, until in list(cr.backoff_until.items()):
                if until > now:
                    tier_backoff[tier] = until
        rows = []
        previous = self._rows
        current: dict[str, tuple[Any, ...]] = {}
        for name, rt in list(f.queues.items()):
            state, detail = self._state(rt, now, tier_backoff, bad)
            d = rt.last
            by_state = counts.get(name, _NONE)
            # a queue's row is rebuilt only when its decision, state or pilot counts changed (a
            # queue decides every apfqueue.sleep seconds; pages refresh far more often)
            cached = previous.get(name)
            if (
                cached is not None
                and cached[0] is d
                and cached[1] == state
                and cached[2] == detail
                and cached[3] == by_state
                and cached[4] == rt.cascade
            ):
                row = cached[5]
            else:
                row = QueueSummary(
                    name=name,
                    cascade=rt.cascade,
                    demand=d.ready if d else None,
                    pending=d.pending if d else None,
                    running=d.running if d else None,
                    last_n=d.n if d else None,
                    binding=d.binding if d else None,
                    decided_at=d.time if d else None,
                    state=state,
                    state_detail=detail,
                    pilots_by_state=by_state,
                )
            current[name] = (d, state, detail, by_state, rt.cascade, row)
            rows.append(row)
        for name, error in list(f.state.failed.items()):  # queues the daemon could not set up
            if name not in f.queues:
                rows.append(
                    QueueSummary(
                        name=name,
                        state=QueueState.SETUP_FAILED,
                        state_detail=error,
                        pilots_by_state=counts.get(name, _NONE),
                    )
                )
        self._rows = current
        return rows

    def _state(
        self,
        rt: QueueRuntime,
        now: float,
        tier_backoff: dict[str, float],
        bad: dict[str, CredentialHealth],
    ) -> tuple[QueueState, str | None]:
        if rt.error:
            return QueueState.SETUP_FAILED, rt.error
        if rt.submitter is not None:
            target = self._factory.targets.get(rt.submitter.target())
            if target is not None and target.failures and target.until > now:
                return QueueState.BACKOFF, f"{target.error} (until {_iso(target.until)})"
        if rt.name in tier_backoff:
            return QueueState.BACKOFF, f"cascade tier backed off until {_iso(tier_backoff[rt.name])}"
        if rt.credentials:
            gate = self._factory.observe.credentials  # the credential manager, when one is attached
            blocked = gate.blocked(rt.credentials) if gate is not None else None
            if blocked:
                return QueueState.CREDENTIAL, blocked
            for name in rt.credentials:
                cred = bad.get(name)
                if cred is not None:
                    return QueueState.CREDENTIAL, f"{cred.name}: {cred.status}" + (
                        f" ({cred.detail})" if cred.status == "unreadable" and cred.detail else ""
                    )
        if rt.batch_poller.fresh(now) is None:
            return QueueState.STALE, f"no fresh batch status ({rt.batch_poller.state(now)})"
        if rt.wms_poller is not None and rt.wms_poller.fresh(now) is None:
            return QueueState.STALE, f"no fresh WMS status ({rt.wms_poller.state(now)})"
        if rt.last is None:
            return QueueState.WAITING, "no decision yet"
        return QueueState.OK, None

    def _pilot_counts(self) -> dict[str, dict[str, int]]:
        """Pilots by queue and state, from the pilots the engine holds for each queue (as its batch
        endpoint last reported them, plus fresh submissions); counted again only for queues whose
        tuple the loop replaced."""
        previous = self._counts
        current: dict[str, tuple[tuple[Any, ...], dict[str, int]]] = {}
        for name, pilots in list(self._factory.state.pilots.items()):
            cached = previous.get(name)
            if cached is not None and cached[0] is pilots:
                current[name] = cached
                continue
            counts: dict[str, int] = defaultdict(int)
            for p in pilots:
                counts[p.state.value] += 1
            current[name] = (pilots, dict(counts))
        self._counts = current
        return {name: counts for name, (_, counts) in current.items()}

    def _credentials(self, now: float) -> list[CredentialHealth]:
        """Every auth profile's health (files re-read at most once a minute)."""
        config = self._factory.config
        cached = self._creds
        if (
            cached is not None
            and cached[1] == id(config)
            and time.monotonic() - cached[0] < CREDENTIAL_CHECK_INTERVAL
        ):
            return cached[2]
        used: dict[str, int] = defaultdict(int)
        for rt in list(self._factory.queues.values()):
            for name in rt.credentials:
                used[name] += 1
        profiles = dict(config.auth)
        health = [check_profile(name, profiles[name], now, used.get(name, 0)) for name in sorted(profiles)]
        self._creds = (time.monotonic(), id(config), health)
        return health

    # -- cascades -------------------------------------------------------------------------------------
    def _cascade(self, conn: Any, cr: CascadeRuntime, now: float) -> CascadeView:
        alloc = cr.last
        tiers = []
        quotas: list[QuotaBurn] = []
        costs: list[TierCost] = []
        for position, tier in enumerate(cr.cascade.ordered, start=1):
            rt = self._factory.queues.get(tier.queue)
            last = rt.last if rt is not None else None
            t = None
            if alloc is not None:
                try:
                    t = alloc.tier(tier.queue)
                except KeyError:
                    t = None
            until = cr.backoff_until.get(tier.queue)
            tiers.append(
                TierView(
                    queue=tier.queue,
                    position=position,
                    status=str(t.status) if t is not None else "no decision yet",
                    reason=t.reason if t is not None else "",
                    submit=t.submit if t is not None else 0,
                    cancel=t.cancel if t is not None else 0,
                    retire=t.retire if t is not None else 0,
                    demand_in=t.demand_in if t is not None else 0,
                    cap=tier.cap,
                    cap_room=t.cap_room if t is not None else None,
                    quota_left=t.quota_left if t is not None else None,
                    pending=last.pending if last is not None else None,
                    running=last.running if last is not None else None,
                    backoff_until=until if until is not None and until > now else None,
                    cost_per_hour=tier.cost_per_hour,
                    quotas=[q.describe() for q in tier.quotas],
                )
            )
            for quota in tier.quotas:
                quotas.append(_burn(conn, tier, quota, now))
            costs.append(_costs(conn, tier, now))
        events = self.events(cr.label, 20)
        return CascadeView(
            name=cr.name,
            demand_queue=cr.cascade.demand,
            time=alloc.time if alloc is not None else None,
            demand=alloc.demand if alloc is not None else None,
            supply=alloc.supply if alloc is not None else None,
            unmet=alloc.unmet if alloc is not None else None,
            unallocated=alloc.unallocated if alloc is not None else None,
            tiers=tiers,
            quotas=quotas,
            costs=costs,
            events=events,
        )

    # -- store -----------------------------------------------------------------------------------------
    def _connect(self) -> Any:
        try:
            return _Guard(self._read.connect())
        except SQLAlchemyError as exc:
            raise ViewError(f"store unavailable: {_brief(exc)}") from None

    def _store_health(self) -> StoreHealth:
        url = queries.safe_url(self._factory.store.url)
        writes = self._factory.recorder.health
        write_error = None
        if not writes.ok:
            since = f" since {_iso(writes.failing_since)}" if writes.failing_since else ""
            write_error = f"writes failing{since} ({writes.failures} passes): {writes.error}"
        began = time.perf_counter()
        try:
            with self._connect() as conn:
                queries.ping(conn)
        except ViewError as exc:
            return StoreHealth(
                url=url,
                dialect=self._read.dialect.name,
                ok=False,
                error="; ".join(e for e in (str(exc), write_error) if e),
                dropped_events=writes.dropped_events,
            )
        return StoreHealth(
            url=url,
            dialect=self._read.dialect.name,
            ok=writes.ok,
            latency_ms=round((time.perf_counter() - began) * 1000, 2),
            error=write_error,
            dropped_events=writes.dropped_events,
        )

    def _pilot_log(self, queue: str, backend_id: str, submitted: float | None) -> str | None:
        """The pilot's output in APF's log tree ``<day>/<queue>/<id>.out``, if the file is there."""
        if self._log_root is None or submitted is None:
            return None
        rel = f"{day(submitted)}/{queue_dir_name(queue)}/{backend_id}.out"
        return rel if (self._log_root / rel).is_file() else None


class _Guard:
    """A connection whose SQLAlchemy errors become ``ViewError`` (no traceback reaches a page)."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn

    def __enter__(self) -> Any:
        return self.conn

    def __exit__(self, kind: Any, exc: Any, tb: Any) -> None:
        self.conn.close()
        if isinstance(exc, SQLAlchemyError):
            raise ViewError(f"store query failed: {_brief(exc)}") from None


def _burn(conn: Any, tier: Tier, quota: Quota, now: float) -> QuotaBurn:
    period: Period = quota.period
    usage = ledger.usage(conn, tier.queue, [quota], now)[0]
    start, end = usage.start, usage.end
    if quota.pilots is not None:
        unit, limit = "pilots", float(quota.pilots)
        points = [(start, 0), *queries.ledger_buckets(conn, tier.queue, start, end + 1e-06, BURN_POINTS)]
        t, remaining, used = [], [], 0.0
        for when, count in points:
            used += count
            if when > now:
                break
            t.append(when)
            remaining.append(limit - used)
        t.append(now)
        remaining.append(limit - usage.pilots_used)
        window_start = max(start, now - 86400.0)
        recent = queries.ledger_since(conn, tier.queue, window_start, now + 1e-6)
        left = usage.pilots_left or 0
    else:
        unit, limit = "pilot-hours", float(quota.pilot_hours or 0.0)
        hours = usage.pilot_hours_used or 0.0
        t, remaining = [start, now], [limit, limit - hours]
        window_start = start
        recent = hours
        left = usage.hours_left or 0.0
    span_h = max((now - window_start) / 3600.0, 1 / 60)
    rate = recent / span_h if recent > 0 else 0.0
    runs_out = None
    if rate > 0 and left > 0:
        when = now + left / rate * 3600.0
        horizon = end if period.kind != "rolling" else now + period.seconds
        runs_out = when if when < horizon else None
    elif left <= 0:
        runs_out = now
    return QuotaBurn(
        tier=tier.queue,
        per=quota.per,
        period=usage.period,
        start=start,
        end=end,
        limit_pilots=quota.pilots,
        used_pilots=usage.pilots_used,
        limit_hours=quota.pilot_hours,
        used_hours=usage.pilot_hours_used,
        exhausted=usage.exhausted,
        t=t,
        remaining=remaining,
        unit=unit,
        rate_per_hour=round(rate, 3),
        runs_out_at=runs_out,
    )


def _costs(conn: Any, tier: Tier, now: float) -> TierCost:
    """Pilot-hours and cost of the current and the previous calendar month (from pilot records,
    which the store keeps for ``store.keepdays``)."""
    month = Period("month")
    start, end = month.bounds(now)
    prev_start, _ = month.bounds(start - 1)
    months = {}
    for m_start, m_end in ((prev_start, start), (start, end)):
        hours = ledger.pilot_hours(conn, tier.queue, m_start, m_end, now)
        started = queries.ledger_since(conn, tier.queue, m_start, m_end)
        months[month_key(m_start)] = {
            "pilots": float(started),
            "pilot_hours": round(hours, 2),
            "cost": round(hours * tier.cost_per_hour, 2),
        }
    return TierCost(tier=tier.queue, cost_per_hour=tier.cost_per_hour, months=months)


def _without(rows: list[dict[str, Any]], key: str) -> list[dict[str, Any]]:
    return [{k: v for k, v in r.items() if k != key} for r in rows]


def _hide_userinfo(url: str) -> str:
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))


def _brief(exc: Exception) -> str:
    text = str(exc.orig if isinstance(exc, DBAPIError) and exc.orig is not None else exc)
    return text.splitlines()[0][:300] if text else type(exc).__name__


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))
