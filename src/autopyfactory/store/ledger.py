"""The quota ledger: durable per-tier counts of pilots started, per UTC period.

A pilot counts from its submission (a reservation, so factories sharing the ledger can never
exceed a quota together) and stops counting if it ends without ever starting (cancelled, failed
or lost while pending: ``release_unstarted``). Net of those releases, the count is the pilots
started plus those still pending.

Every function works INSIDE the caller's transaction, so a reservation commits or rolls back
together with the submission intent it belongs to: a crash between ``reserve`` and commit leaves
no count, and a committed intent always has its count.

Concurrency: ``reserve`` first locks the tier's row in ``ledger_tiers``. On PostgreSQL that is
``SELECT ... FOR UPDATE`` (plus an UPDATE of the row), so several factory processes sharing one
database serialise per tier and each sees the others' committed entries (READ COMMITTED takes a
fresh snapshot per statement). On SQLite the UPDATE makes the transaction a write transaction,
and SQLite allows one writer at a time; the store should begin transactions with
``BEGIN IMMEDIATE`` (``use_begin_immediate``) so a transaction never reads before it holds the
write lock.

Counts: a reservation is an entry ``(tier, time, +n, intent_id, 'reserve')``. A submission that
failed or created fewer pilots is settled with ``release``: a ``'release'`` entry of ``-k``
stamped with the reservation's time, so it comes off the period the reservation was counted in,
even when the release happens after a month rollover.

Pilots that never started: when the engine records a pilot's final state and the pilot never
ran, ``release_unstarted`` gives its count back (a ``'unstarted'`` entry of ``-1`` per pilot,
stamped with the reservation's time). Each pilot is released at most once (the
``ledger_unstarted`` table remembers which), and never more than its intent still holds, so
reporting the same end twice, or after a partial-submission release, cannot go negative.

Pilot-hours: they are not known when a pilot is submitted, so they are accounted from the
``pilots`` table: each pilot of the tier (``pilots.tier``, or ``pilots.queue`` when no tier is
recorded) contributes the overlap of ``[started_at, ended_at or now]`` with the period. A
pilot-hours quota stops new submissions once the hours used in the period reach the limit; it
does not reserve hours ahead.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from sqlalchemy import (
    Column,
    Connection,
    Engine,
    Float,
    Index,
    Integer,
    String,
    Table,
    bindparam,
    event,
    func,
    or_,
    select,
)
from sqlalchemy import insert as sa_insert
from sqlalchemy.exc import IntegrityError

from autopyfactory.config.policy import Quota
from autopyfactory.decide.periods import Period
from autopyfactory.model import Pilot, PilotState
from autopyfactory.store.schema import metadata, pilots

# One row per tier: the lock every reservation for that tier takes first.
ledger_tiers = Table(
    "ledger_tiers",
    metadata,
    Column("tier", String(512), primary_key=True),
    Column("updated", Float, nullable=False),
)

# Reservations (+n) and releases (-n) per tier, stamped with the time they count at.
ledger_entries = Table(
    "ledger_entries",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("tier", String(512), nullable=False),
    Column("time", Float, nullable=False),
    Column("count", Integer, nullable=False),
    Column("intent_id", String(64)),
    Column("kind", String(16), nullable=False),  # reserve | release | unstarted
    Index("ix_ledger_entries_tier_time", "tier", "time"),
    Index("ix_ledger_entries_intent", "intent_id"),
)

# Pilots whose count was given back because they ended without starting (each at most once).
ledger_unstarted = Table(
    "ledger_unstarted",
    metadata,
    Column("intent_id", String(64), primary_key=True),
    Column("backend_id", String(256), primary_key=True),
    Column("time", Float, nullable=False),  # when the release was recorded
)

# states in which a pilot that never ran is over (UNKNOWN: it left the backend while pending);
# DONE is not among them: a pilot that completed ran, whether or not its start time was reported
_ENDED = frozenset({PilotState.CANCELLED, PilotState.FAILED, PilotState.UNKNOWN})
_RAN = frozenset({PilotState.RUNNING, PilotState.RETIRING, PilotState.RETIRED})


class EndedPilot(Protocol):
    """What ``release_unstarted`` needs of a pilot (``model.Pilot`` has it)."""

    @property
    def intent_id(self) -> str | None: ...

    @property
    def backend_id(self) -> str: ...


@dataclass(frozen=True, slots=True)
class QuotaUsage:
    """One quota's state in the period containing ``now``."""

    quota: Quota
    period: str  # 2027-01, 2027-W05, 2027-01-31, rolling-7d
    start: float
    end: float
    pilots_used: int
    pilot_hours_used: float | None  # None when the quota has no pilot-hours limit

    @property
    def pilots_left(self) -> int | None:
        if self.quota.pilots is None:
            return None
        return max(0, self.quota.pilots - self.pilots_used)

    @property
    def hours_left(self) -> float | None:
        if self.quota.pilot_hours is None or self.pilot_hours_used is None:
            return None
        return max(0.0, self.quota.pilot_hours - self.pilot_hours_used)

    @property
    def exhausted(self) -> bool:
        return self.pilots_left == 0 or self.hours_left == 0.0

    def as_dict(self) -> dict[str, object]:
        return {
            "per": self.quota.per,
            "period": self.period,
            "pilots": self.quota.pilots,
            "pilots_used": self.pilots_used,
            "pilot_hours": self.quota.pilot_hours,
            "pilot_hours_used": self.pilot_hours_used,
            "exhausted": self.exhausted,
        }


def reserve(conn: Connection, tier: str, quotas: Sequence[Quota], n: int, now: float, intent_id: str) -> int:
    """Reserve up to ``n`` pilot starts for ``tier`` at ``now``; return how many fit every quota.

    Call it in the same transaction that records the submission intent, then submit at most the
    granted number. Tiers without quotas are granted ``n`` and the start is still recorded.
    """
    if n <= 0:
        return 0
    _lock_tier(conn, tier, now)
    room = remaining(conn, tier, quotas, now)
    granted = n if room is None else max(0, min(n, room))
    if granted > 0:
        conn.execute(
            _ADD_ENTRY,
            {"tier": tier, "time": now, "count": granted, "intent_id": intent_id, "kind": "reserve"},
        )
    return granted


def release(conn: Connection, intent_id: str, n_not_submitted: int) -> int:
    """Give back pilots an intent reserved but did not submit. Returns how many were released
    (never more than the intent still holds, so settling twice cannot go negative)."""
    if n_not_submitted <= 0:
        return 0
    rows = conn.execute(
        select(ledger_entries.c.tier, ledger_entries.c.time, ledger_entries.c.count, ledger_entries.c.kind)
        .where(ledger_entries.c.intent_id == intent_id)
        .order_by(ledger_entries.c.id)
    ).all()
    reserved = [r for r in rows if r.kind == "reserve"]
    if not reserved:
        return 0
    tier, when = reserved[0].tier, reserved[0].time
    _lock_tier(conn, tier, when)
    # re-read under the lock: a concurrent release of the same intent has committed by now
    held = conn.execute(_HELD, {"intent": intent_id}).scalar_one()
    give = min(int(n_not_submitted), int(held))
    if give <= 0:
        return 0
    conn.execute(
        _ADD_ENTRY, {"tier": tier, "time": when, "count": -give, "intent_id": intent_id, "kind": "release"}
    )
    return give


def never_started(state: PilotState, started_at: float | None, previous: PilotState | None = None) -> bool:
    """Whether a pilot's report says it ended without ever running: cancelled, failed or lost, no
    start time, and not last seen running (``previous``: its state before this
    report, when known). The engine asks this for every pilot change it records."""
    return state in _ENDED and started_at is None and previous not in _RAN


def release_unstarted(conn: Connection, ended: Iterable[EndedPilot], now: float) -> int:
    """Give back the quota count of pilots that ended without starting; returns how many.

    Call it in the transaction that records those pilots' final state. The tier and period come
    from each pilot's intent (its reservation), so pilots of queues that are not tiers (no
    reservation) are ignored. Idempotent per pilot; never more than an intent still holds."""
    by_intent: dict[str, set[str]] = defaultdict(set)
    for pilot in ended:
        if pilot.intent_id:
            by_intent[pilot.intent_id].add(pilot.backend_id)
    if not by_intent:
        return 0
    reservations: dict[str, tuple[str, float]] = {}
    intents = sorted(by_intent)
    for i in range(0, len(intents), 500):
        rows = conn.execute(
            select(ledger_entries.c.intent_id, ledger_entries.c.tier, ledger_entries.c.time).where(
                ledger_entries.c.intent_id.in_(intents[i : i + 500]), ledger_entries.c.kind == "reserve"
            )
        )
        for intent_id, tier, when in rows:
            reservations.setdefault(intent_id, (tier, when))
    by_tier: dict[str, list[str]] = defaultdict(list)
    for intent_id, (tier, _) in reservations.items():
        by_tier[tier].append(intent_id)
    released = 0
    for tier in sorted(by_tier):  # one lock order for every caller: no deadlock between factories
        _lock_tier(conn, tier, now)
        for intent_id in by_tier[tier]:
            released += _release_pilots(
                conn, tier, intent_id, reservations[intent_id][1], by_intent[intent_id], now
            )
    return released


def release_unstarted_recorded(
    conn: Connection, factory_id: str, reported: Iterable[Pilot], now: float
) -> int:
    """The engine's hook, for the transaction that writes pilot reports (after the rows are
    written): of the ``reported`` pilots, those that are over (cancelled, failed, lost) whose row
    has never had a start time (a pilot once seen running keeps its ``started_at``) give their
    quota count back. Returns how many were released."""
    candidates = [p for p in reported if p.intent_id and never_started(p.state, p.started_at)]
    if not candidates:
        return 0
    by_queue: dict[str, list[Pilot]] = defaultdict(list)
    for p in candidates:
        by_queue[p.queue].append(p)
    ended: list[Pilot] = []
    for queue, items in by_queue.items():
        ids = [p.backend_id for p in items]
        for i in range(0, len(ids), 500):
            started = set(
                conn.execute(
                    select(pilots.c.backend_id).where(
                        pilots.c.factory_id == factory_id,
                        pilots.c.queue == queue,
                        pilots.c.backend_id.in_(ids[i : i + 500]),
                        pilots.c.started_at.is_not(None),
                    )
                ).scalars()
            )
            ended += [p for p in items[i : i + 500] if p.backend_id not in started]
    return release_unstarted(conn, ended, now)


def _release_pilots(
    conn: Connection, tier: str, intent_id: str, when: float, ids: set[str], now: float
) -> int:
    done = set(conn.execute(_RELEASED, {"intent": intent_id}).scalars())
    fresh = sorted(ids - done)
    if not fresh:
        return 0
    conn.execute(
        sa_insert(ledger_unstarted),
        [{"intent_id": intent_id, "backend_id": b, "time": now} for b in fresh],
    )
    held = conn.execute(
        select(func.coalesce(func.sum(ledger_entries.c.count), 0)).where(
            ledger_entries.c.intent_id == intent_id
        )
    ).scalar_one()
    give = min(len(fresh), int(held))
    if give > 0:
        conn.execute(
            sa_insert(ledger_entries).values(
                tier=tier, time=when, count=-give, intent_id=intent_id, kind="unstarted"
            )
        )
    return max(0, give)


def usage(conn: Connection, tier: str, quotas: Sequence[Quota], now: float) -> list[QuotaUsage]:
    """Each quota's use in the period that contains ``now``."""
    out = []
    for quota in quotas:
        period = quota.period
        start, end = period.bounds(now)
        used = pilots_started(conn, tier, period, now)
        hours = pilot_hours(conn, tier, start, end, now) if quota.pilot_hours is not None else None
        out.append(QuotaUsage(quota, period.key(now), start, end, used, hours))
    return out


def remaining(conn: Connection, tier: str, quotas: Sequence[Quota], now: float) -> int | None:
    """Pilots the tier may still start now under all its quotas; ``None`` when none limits it.
    This is the ``quota_left`` the allocation takes (a spent pilot-hours quota gives 0)."""
    left: int | None = None
    for u in usage(conn, tier, quotas, now):
        if u.hours_left == 0.0:
            return 0
        if u.pilots_left is not None:
            left = u.pilots_left if left is None else min(left, u.pilots_left)
    return left


# Statements built once (every cycle asks each tier's quota: building them each time costs more
# than running them)
_COUNT = select(func.coalesce(func.sum(ledger_entries.c.count), 0))
# calendar bounds are whole seconds, so this is the floor(t) rule of decide.periods
_STARTED_CALENDAR = _COUNT.where(
    ledger_entries.c.tier == bindparam("tier"),
    ledger_entries.c.time >= bindparam("lo"),
    ledger_entries.c.time < bindparam("hi"),
)
# no upper bound: an entry stamped slightly ahead by another factory's clock still counts
_STARTED_ROLLING = _COUNT.where(
    ledger_entries.c.tier == bindparam("tier"), ledger_entries.c.time > bindparam("lo")
)
_HELD = _COUNT.where(ledger_entries.c.intent_id == bindparam("intent"))
_ADD_ENTRY = sa_insert(ledger_entries)
_TOUCH_TIER = (
    ledger_tiers.update().where(ledger_tiers.c.tier == bindparam("key")).values(updated=bindparam("now"))
)
_LOCK_TIER = select(ledger_tiers.c.tier).where(ledger_tiers.c.tier == bindparam("key")).with_for_update()
_RELEASED = select(ledger_unstarted.c.backend_id).where(ledger_unstarted.c.intent_id == bindparam("intent"))


def pilots_started(conn: Connection, tier: str, period: Period, now: float) -> int:
    """Net reserved starts of ``tier`` in the period of ``period`` containing ``now``."""
    start, end = period.bounds(now)
    if period.kind == "rolling":
        total = conn.execute(_STARTED_ROLLING, {"tier": tier, "lo": start}).scalar_one()
    else:
        total = conn.execute(_STARTED_CALENDAR, {"tier": tier, "lo": start, "hi": end}).scalar_one()
    return int(total)


def pilot_hours(conn: Connection, tier: str, start: float, end: float, now: float) -> float:
    """Pilot-hours of ``tier`` inside ``[start, end)``, from pilot start/end times (a pilot still
    running counts up to ``now``)."""
    limit = min(end, now)
    rows = conn.execute(
        select(pilots.c.started_at, pilots.c.ended_at).where(
            or_(pilots.c.tier == tier, (pilots.c.tier.is_(None)) & (pilots.c.queue == tier)),
            pilots.c.started_at.is_not(None),
            pilots.c.started_at < limit,
            or_(pilots.c.ended_at.is_(None), pilots.c.ended_at > start),
        )
    ).all()
    seconds = 0.0
    for started, ended in rows:
        stop = limit if ended is None else min(ended, limit)
        seconds += max(0.0, stop - max(started, start))
    return seconds / 3600.0


_CREATE_TIER: dict[str, Any] = {}  # per dialect: INSERT ... ON CONFLICT DO NOTHING


def _create_tier(dialect: str) -> Any:
    stmt = _CREATE_TIER.get(dialect)
    if stmt is None:
        if dialect == "postgresql":
            from sqlalchemy.dialects.postgresql import insert as pg_insert

            stmt = pg_insert(ledger_tiers).on_conflict_do_nothing()
        else:
            from sqlalchemy.dialects.sqlite import insert as sqlite_insert

            stmt = sqlite_insert(ledger_tiers).on_conflict_do_nothing()
        _CREATE_TIER[dialect] = stmt
    return stmt


def _lock_tier(conn: Connection, tier: str, now: float) -> None:
    dialect = conn.dialect.name
    if dialect == "postgresql":
        conn.execute(_create_tier(dialect), {"tier": tier, "updated": now})
        conn.execute(_LOCK_TIER, {"key": tier})
    elif dialect == "sqlite":
        conn.execute(_create_tier(dialect), {"tier": tier, "updated": now})
    else:
        exists = conn.execute(select(ledger_tiers.c.tier).where(ledger_tiers.c.tier == tier)).first()
        if exists is None:
            try:
                with conn.begin_nested():
                    conn.execute(sa_insert(ledger_tiers).values(tier=tier, updated=now))
            except IntegrityError:
                pass  # another process created it first
        conn.execute(select(ledger_tiers.c.tier).where(ledger_tiers.c.tier == tier).with_for_update())
    # a write to the row: the row lock on PostgreSQL, the database write lock on SQLite
    conn.execute(_TOUCH_TIER, {"key": tier, "now": now})


def use_begin_immediate(engine: Engine) -> None:
    """Make an SQLite engine start every transaction with ``BEGIN IMMEDIATE`` (take the write lock
    first), the SQLite equivalent of the ledger's row lock. No-op for other databases."""
    if engine.dialect.name != "sqlite":
        return

    @event.listens_for(engine, "connect")
    def _no_implicit_begin(dbapi_conn, _record):  # type: ignore[no-untyped-def]
        # let SQLAlchemy's "begin" event issue BEGIN instead of pysqlite's implicit one
        dbapi_conn.isolation_level = None

    @event.listens_for(engine, "begin")
    def _begin_immediate(conn):  # type: ignore[no-untyped-def]
        conn.exec_driver_sql("BEGIN IMMEDIATE")
