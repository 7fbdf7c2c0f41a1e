"""The store: pilots, submission intents, decisions and events. SQLite file or PostgreSQL URL."""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, bindparam, create_engine, delete, event, func, insert, select, update
from sqlalchemy.engine import Engine

from autopyfactory.model import Decision, Pilot, PilotState
from autopyfactory.store import ledger as _ledger  # also registers the ledger tables
from autopyfactory.store.schema import decisions, events, intents, metadata, pilots


@dataclass(frozen=True)
class IntentRow:
    id: str
    queue: str
    n: int
    created: float
    status: str
    submitted: int | None
    tier: str | None


def new_intent_id() -> str:
    """Short, unique, and free of ':' (it ends every pilot tag)."""
    return uuid.uuid4().hex[:12]


class Store:
    def __init__(self, url: str, *, durable: bool = True) -> None:
        """``durable=False`` (the simulator) trades crash durability of the last commits for speed."""
        self.url = url
        if url.startswith("sqlite:///"):
            Path(url.removeprefix("sqlite:///")).expanduser().parent.mkdir(parents=True, exist_ok=True)
            self.engine: Engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 60})
            event.listen(self.engine, "connect", _sqlite_pragmas if durable else _sqlite_fast_pragmas)
            # take the write lock at BEGIN: read-then-write transactions (quota reservations)
            # serialise instead of failing with 'database is locked' on upgrade
            _ledger.use_begin_immediate(self.engine)
        else:
            self.engine = create_engine(url, pool_pre_ping=True)
        self._cache_lock = threading.Lock()
        self._pilot_rows: dict[tuple[str, str, str], tuple[int, str]] = {}
        metadata.create_all(self.engine)

    def close(self) -> None:
        self.engine.dispose()

    # -- decisions ----------------------------------------------------------------------------
    def record_decisions(
        self, factory_id: str, items: Sequence[Decision], dry_run: bool = False
    ) -> list[int]:
        if not items:
            return []
        rows = [
            {
                "factory_id": factory_id,
                "queue": d.queue,
                "time": d.time,
                "n": d.n,
                "ready": d.ready,
                "pending": d.pending,
                "running": d.running,
                "binding": d.binding,
                "steps": json.dumps([s.as_dict() for s in d.steps]),
                "dry_run": int(dry_run),
            }
            for d in items
        ]
        stmt = insert(decisions).returning(decisions.c.id, sort_by_parameter_order=True)
        with self.engine.begin() as conn:
            return [r[0] for r in conn.execute(stmt, rows)]

    def decisions(self, factory_id: str, queue: str, limit: int = 10) -> list[dict[str, Any]]:
        query = (
            select(decisions)
            .where(decisions.c.factory_id == factory_id, decisions.c.queue == queue)
            .order_by(decisions.c.time.desc(), decisions.c.id.desc())
            .limit(limit)
        )
        with self.engine.connect() as conn:
            return [_decision_dict(r._mapping) for r in conn.execute(query)]

    def latest_decisions(self, factory_id: str) -> dict[str, dict[str, Any]]:
        latest = (
            select(decisions.c.queue, func.max(decisions.c.id).label("id"))
            .where(decisions.c.factory_id == factory_id)
            .group_by(decisions.c.queue)
            .subquery()
        )
        query = select(decisions).join(latest, decisions.c.id == latest.c.id)
        with self.engine.connect() as conn:
            return {r.queue: _decision_dict(r._mapping) for r in conn.execute(query)}

    def prune(self, factory_id: str, older_than: float) -> int:
        """Forget decisions, events, settled intents and finished pilots older than ``older_than``
        (a busy factory records a decision per queue per cycle). Quota ledger entries are kept."""
        final = [s.value for s in PilotState if s.final] + [PilotState.UNKNOWN.value]
        with self.engine.begin() as conn:
            removed = conn.execute(
                delete(decisions).where(decisions.c.factory_id == factory_id, decisions.c.time < older_than)
            ).rowcount
            removed += conn.execute(
                delete(events).where(events.c.factory_id == factory_id, events.c.time < older_than)
            ).rowcount
            removed += conn.execute(
                delete(intents).where(
                    intents.c.factory_id == factory_id,
                    intents.c.status != "open",
                    intents.c.created < older_than,
                )
            ).rowcount
            removed += conn.execute(
                delete(pilots).where(
                    pilots.c.factory_id == factory_id,
                    pilots.c.state.in_(final),
                    pilots.c.updated_at < older_than,
                )
            ).rowcount
        return removed or 0

    # -- intents (two-phase submission) ----------------------------------------------------------
    def open_intent(
        self,
        factory_id: str,
        queue: str,
        n: int,
        now: float,
        decision_id: int | None = None,
        tier: str | None = None,
        reserve: Callable[[Connection, str], int] | None = None,
    ) -> tuple[str, int]:
        """Write the intent before anything is submitted. ``reserve(conn, intent_id)`` runs in the
        same transaction (the quota ledger) and may grant fewer than n; returns (id, granted)."""
        intent_id = new_intent_id()
        with self.engine.begin() as conn:
            granted = n if reserve is None else max(0, min(n, reserve(conn, intent_id)))
            conn.execute(
                insert(intents).values(
                    id=intent_id,
                    factory_id=factory_id,
                    queue=queue,
                    decision_id=decision_id,
                    n=granted,
                    created=now,
                    status="open" if granted else "settled",
                    submitted=None if granted else 0,
                    tier=tier,
                )
            )
        return intent_id, granted

    def settle_intent(
        self,
        intent_id: str,
        status: str,
        submitted: int,
        now: float,
        error: str | None = None,
        release: Callable[[Connection], None] | None = None,
    ) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                update(intents)
                .where(intents.c.id == intent_id)
                .values(status=status, submitted=submitted, finished=now, error=error)
            )
            if release is not None:
                release(conn)

    def open_intents(self, factory_id: str) -> list[IntentRow]:
        query = select(intents).where(intents.c.factory_id == factory_id, intents.c.status == "open")
        with self.engine.connect() as conn:
            return [
                IntentRow(r.id, r.queue, r.n, r.created, r.status, r.submitted, r.tier)
                for r in conn.execute(query)
            ]

    def last_intent_times(self, factory_id: str) -> dict[str, float]:
        """Each queue's latest submission intent (a tier's last scale-up, after a restart)."""
        query = (
            select(intents.c.queue, func.max(intents.c.created))
            .where(intents.c.factory_id == factory_id, intents.c.submitted > 0)
            .group_by(intents.c.queue)
        )
        with self.engine.connect() as conn:
            return {queue: created for queue, created in conn.execute(query)}

    def intents(self, factory_id: str, queue: str | None = None) -> list[dict[str, Any]]:
        query = select(intents).where(intents.c.factory_id == factory_id)
        if queue is not None:
            query = query.where(intents.c.queue == queue)
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(query.order_by(intents.c.created))]

    # -- pilots ------------------------------------------------------------------------------------
    def record_pilots(self, factory_id: str, items: Iterable[Pilot], now: float) -> int:
        """Insert new pilots and update the state of known ones (by queue + backend id)."""
        items = list(items)
        if not items:
            return 0
        with self.engine.begin() as conn:
            commit = self._record_pilots(conn, factory_id, items, now)
        commit()
        return len(items)

    def _record_pilots(
        self, conn: Connection, factory_id: str, items: Sequence[Pilot], now: float
    ) -> Callable[[], None]:
        """Write pilots in ``conn``'s transaction; returns what to remember once it committed.

        Row ids of this factory's live pilots are cached (only this factory writes its rows), so a
        state change is one UPDATE by id; unknown ones are looked up (after a restart)."""
        cache = self._pilot_rows
        # one row per pilot: the latest report wins (a submission then a poll in one batch)
        items = list({(p.queue, p.backend_id): p for p in items}.values())
        known: dict[tuple[str, str], tuple[int, str]] = {}
        missing: dict[str, list[str]] = {}
        for p in items:
            hit = cache.get((factory_id, p.queue, p.backend_id))
            if hit is not None:
                known[(p.queue, p.backend_id)] = hit
            else:
                missing.setdefault(p.queue, []).append(p.backend_id)
        for queue, ids in missing.items():
            for i in range(0, len(ids), 500):  # only the rows in question: O(changes), not O(history)
                rows = conn.execute(
                    select(pilots.c.id, pilots.c.backend_id, pilots.c.state).where(
                        pilots.c.factory_id == factory_id,
                        pilots.c.queue == queue,
                        pilots.c.backend_id.in_(ids[i : i + 500]),
                    )
                )
                known.update({(queue, r.backend_id): (r.id, r.state) for r in rows})
        new_rows: list[Pilot] = []
        changes: list[dict[str, Any]] = []
        remember: dict[tuple[str, str, str], tuple[int, str] | None] = {}
        for p in items:
            key = (p.queue, p.backend_id)
            existing = known.get(key)
            state = p.state.value
            if existing is None:
                new_rows.append(p)
            elif existing[1] != state:
                changes.append(
                    {
                        "row_id": existing[0],
                        "new_state": state,
                        "new_started": p.started_at,
                        "new_ended": p.ended_at,
                        "new_updated": now,
                        "new_node": p.node,
                        "new_instance": p.instance_id,
                        "new_exit": p.exit_code,
                    }
                )
                remember[(factory_id, *key)] = None if p.state.final else (existing[0], state)
            else:
                remember[(factory_id, *key)] = None if p.state.final else existing
        if new_rows:
            _insert_pilots(conn, factory_id, new_rows, now)
        if changes:
            conn.execute(_UPDATE_PILOT, changes)  # one executemany, not a statement per pilot

        def commit() -> None:
            with self._cache_lock:
                for k, v in remember.items():
                    if v is None:
                        cache.pop(k, None)
                    else:
                        cache[k] = v

        return commit

    def pilots(
        self, factory_id: str, queue: str | None = None, states: Sequence[str] | None = None
    ) -> list[dict[str, Any]]:
        query = select(pilots).where(pilots.c.factory_id == factory_id)
        if queue is not None:
            query = query.where(pilots.c.queue == queue)
        if states is not None:
            query = query.where(pilots.c.state.in_(list(states)))
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(query.order_by(pilots.c.id))]

    def pilot_counts(self, factory_id: str) -> dict[str, dict[str, int]]:
        query = (
            select(pilots.c.queue, pilots.c.state, func.count())
            .where(pilots.c.factory_id == factory_id)
            .group_by(pilots.c.queue, pilots.c.state)
        )
        out: dict[str, dict[str, int]] = {}
        with self.engine.connect() as conn:
            for queue, state, count in conn.execute(query):
                out.setdefault(queue, {})[state] = count
        return out

    # -- events ------------------------------------------------------------------------------------
    def add_event(
        self, factory_id: str, now: float, kind: str, message: str, queue: str | None = None
    ) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                insert(events).values(
                    factory_id=factory_id, time=now, queue=queue, kind=kind, message=message
                )
            )

    def events(self, factory_id: str, queue: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
        query = select(events).where(events.c.factory_id == factory_id)
        if queue is not None:
            query = query.where(events.c.queue == queue)
        query = query.order_by(events.c.time.desc(), events.c.id.desc()).limit(limit)
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(query)]


_PILOT_COLUMNS = (
    "factory_id", "queue", "backend_id", "intent_id", "state", "submitted_at", "started_at",
    "ended_at", "updated_at", "instance_id", "node", "tier", "exit_code",
)  # fmt: skip


def _insert_pilots(conn: Connection, factory_id: str, items: Sequence[Pilot], now: float) -> None:
    """Bulk insert through the driver's executemany: a cycle may create thousands of pilots, and
    per-row statement building would cost more than the batch system's own submission."""
    style = conn.dialect.paramstyle
    mark = "?" if style == "qmark" else "%s" if style in ("format", "pyformat") else None
    if mark is None:  # an unusual driver: the portable (slower) path
        conn.execute(insert(pilots), [_pilot_row(factory_id, p, now) for p in items])
        return
    sql = (
        f"INSERT INTO pilots ({', '.join(_PILOT_COLUMNS)}) VALUES ({', '.join([mark] * len(_PILOT_COLUMNS))})"
    )
    rows = [
        (
            factory_id,
            p.queue,
            p.backend_id,
            p.intent_id,
            p.state.value,
            p.submitted_at,
            p.started_at,
            p.ended_at,
            now,
            p.instance_id,
            p.node,
            p.tier,
            p.exit_code,
        )
        for p in items
    ]  # fmt: skip  (the order of _PILOT_COLUMNS)
    conn.exec_driver_sql(sql, rows)


# A state change; fields the backend did not report this time keep their stored value.
_UPDATE_PILOT = (
    update(pilots)
    .where(pilots.c.id == bindparam("row_id"))
    .values(
        state=bindparam("new_state"),
        started_at=func.coalesce(bindparam("new_started"), pilots.c.started_at),
        ended_at=func.coalesce(bindparam("new_ended"), pilots.c.ended_at),
        updated_at=bindparam("new_updated"),
        node=func.coalesce(bindparam("new_node"), pilots.c.node),
        instance_id=func.coalesce(bindparam("new_instance"), pilots.c.instance_id),
        exit_code=func.coalesce(bindparam("new_exit"), pilots.c.exit_code),
    )
)


def _pilot_row(factory_id: str, p: Pilot, now: float) -> dict[str, Any]:
    return {
        "factory_id": factory_id,
        "queue": p.queue,
        "backend_id": p.backend_id,
        "intent_id": p.intent_id,
        "state": p.state.value,
        "submitted_at": p.submitted_at,
        "started_at": p.started_at,
        "ended_at": p.ended_at,
        "updated_at": now,
        "instance_id": p.instance_id,
        "node": p.node,
        "tier": p.tier,
        "exit_code": p.exit_code,
    }


def _decision_dict(row: Any) -> dict[str, Any]:
    out = dict(row)
    out["steps"] = json.loads(out["steps"])
    return out


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=60000")
    cursor.close()


def _sqlite_fast_pragmas(dbapi_connection: Any, record: Any) -> None:
    _sqlite_pragmas(dbapi_connection, record)
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA synchronous=OFF")
    cursor.close()
