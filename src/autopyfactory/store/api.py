"""The store: pilots, submission intents, decisions and events. SQLite file or PostgreSQL URL.

Every failure to read or write surfaces as ``StoreError`` (locked, full disk, unreachable server,
bad URL), never as a raw driver exception, and never as a backend failure: the engine treats a
store fault as a store fault. Waits are bounded (``timeout``): a locked SQLite file or an
unreachable PostgreSQL fails fast instead of holding the caller.

The daemon writes once per pass (``record_pass``: decisions, intents with their quota
reservations, intent settlements, pilot changes and events in ONE transaction).
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from json.encoder import encode_basestring_ascii
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, create_engine, delete, event, func, insert, select, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError, SQLAlchemyError
from sqlalchemy.pool import StaticPool

from autopyfactory.model import Decision, Pilot, PilotState
from autopyfactory.store import ledger as _ledger  # also registers the ledger tables
from autopyfactory.store.schema import decisions, events, intents, metadata, pilots

if TYPE_CHECKING:
    from autopyfactory.config.policy import Tier

DEFAULT_TIMEOUT = 5.0  # seconds a statement may wait for a lock or a connection


class StoreError(Exception):
    """The store could not be opened, read or written. The message names the store (without
    credentials) and the cause; it is never a backend's fault."""


def redact_url(url: str) -> str:
    """The URL without its password (``postgresql://user:***@host/db``)."""
    return re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", url)


@dataclass(frozen=True)
class IntentRequest:
    """A submission the pass wants to make: recorded (with its quota reservation) before any
    backend call. ``decision`` indexes the pass's decisions."""

    queue: str
    n: int
    decision: int | None = None
    tier: Tier | None = None


@dataclass(frozen=True)
class Settlement:
    """The outcome of an intent: ``release`` quota units are given back (not submitted)."""

    intent_id: str
    status: str  # submitted | failed | adopted | lost
    submitted: int
    time: float
    error: str | None = None
    release: int = 0


@dataclass(frozen=True)
class EventRow:
    time: float
    kind: str
    message: str
    queue: str | None = None


@dataclass
class PassResult:
    decision_ids: list[int] = field(default_factory=list)
    # (intent id, pilots granted) per IntentRequest, in order; granted may be less than asked (quota)
    intents: list[tuple[str, int]] = field(default_factory=list)


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
    def __init__(
        self, url: str, *, durable: bool = True, timeout: float = DEFAULT_TIMEOUT, readonly: bool = False
    ) -> None:
        """``durable=False`` (the simulator) trades crash durability of the last commits for speed.
        ``readonly``: open an existing store for reading only (``apf status``, ``explain``, ``plan``):
        nothing is created on disk and writes are dropped (``sqlite://`` gives an empty in-memory
        store). Raises StoreError when the store cannot be opened."""
        self.url = url
        self.label = redact_url(url)
        self.timeout = timeout
        self.readonly = readonly
        with self.guard("open"):
            if url in ("sqlite://", "sqlite:///:memory:"):
                # one shared in-memory database (a scratch store: nothing on disk)
                args = {"check_same_thread": False}
                self.engine: Engine = create_engine("sqlite://", connect_args=args, poolclass=StaticPool)
                self.reader: Engine = self.engine
                metadata.create_all(self.engine)
                return
            if url.startswith("sqlite:///"):
                path = Path(url.removeprefix("sqlite:///")).expanduser()
                if readonly:
                    if not path.is_file():
                        raise StoreError(f"store {self.label}: no such database file")
                    # a running daemon keeps a -wal file: read through it (mode=ro); without one
                    # nobody writes, and immutable=1 reads without creating -wal/-shm files
                    flags = "mode=ro" if path.with_name(path.name + "-wal").exists() else "immutable=1"
                    url = f"sqlite:///file:{path}?{flags}&uri=true"
                else:
                    if path.parent.exists() and not path.parent.is_dir():
                        raise StoreError(f"store {self.label}: {path.parent} is not a directory")
                    path.parent.mkdir(parents=True, exist_ok=True)
                args = {"check_same_thread": False, "timeout": timeout}
                pragmas = _sqlite_pragmas(timeout, durable and not readonly, wal=not readonly)
                self.engine = create_engine(url, connect_args=args)
                event.listen(self.engine, "connect", pragmas)
                # reads never take the write lock (a busy writer does not stall `apf status`)
                self.reader = create_engine(url, connect_args=args)
                event.listen(self.reader, "connect", pragmas)
                # take the write lock at BEGIN: read-then-write transactions (quota reservations)
                # serialise instead of failing with 'database is locked' on upgrade
                _ledger.use_begin_immediate(self.engine)
            else:
                args = _server_args(url, timeout, readonly)
                self.engine = create_engine(url, pool_pre_ping=True, connect_args=args)
                self.reader = self.engine
            if readonly:
                with self.reader.connect():
                    pass  # fail now (unreachable server, unreadable file), not on first use
            else:
                # through the reader: when the schema exists this only reads, so a factory (or
                # `apf status`) starts while another process holds the SQLite write lock
                metadata.create_all(self.reader)

    @contextmanager
    def guard(self, what: str) -> Iterator[None]:
        """Turn driver and filesystem failures into StoreError naming the store and the action."""
        try:
            yield
        except StoreError:
            raise
        except NoSuchModuleError as exc:
            raise StoreError(f"store {self.label}: no database driver for this URL ({exc})") from None
        except ArgumentError as exc:
            raise StoreError(f"store {self.label}: bad URL: {exc}") from None
        except ModuleNotFoundError as exc:
            hint = " (pip install 'autopyfactory[postgres]')" if "psycopg" in str(exc) else ""
            raise StoreError(f"store {self.label}: missing database driver: {exc}{hint}") from None
        except SQLAlchemyError as exc:
            raise StoreError(f"store {self.label}: cannot {what}: {_first_line(exc)}") from None
        except OSError as exc:
            raise StoreError(f"store {self.label}: cannot {what}: {exc.strerror or exc}") from None

    def close(self) -> None:
        self.engine.dispose()
        if self.reader is not self.engine:
            self.reader.dispose()

    # -- one pass, one transaction ------------------------------------------------------------------
    def record_pass(
        self,
        factory_id: str,
        now: float,
        *,
        decisions_: Sequence[Decision] = (),
        dry_run: bool = False,
        intents_: Sequence[IntentRequest] = (),
        settlements: Sequence[Settlement] = (),
        pilots_: Sequence[Pilot] = (),
        events_: Sequence[EventRow] = (),
    ) -> PassResult:
        """Write everything a pass produced in ONE transaction: intents are durable (with their
        quota reservations) before any backend call, and a failure writes nothing. Raises
        StoreError; the caller keeps what it could not write and tries again."""
        result = PassResult()
        if self.readonly:  # a read-only command's decisions are not the daemon's: nothing is kept
            return result
        with self.guard("record"), self.engine.begin() as conn:
            if settlements:
                _many(
                    conn,
                    "UPDATE intents SET status = ?, submitted = ?, finished = ?, error = ? WHERE id = ?",
                    [(x.status, x.submitted, x.time, x.error, x.intent_id) for x in settlements],
                )
                for x in settlements:
                    if x.release > 0:
                        _ledger.release(conn, x.intent_id, x.release)
            if pilots_:
                _upsert_pilots(conn, factory_id, pilots_, now)
                # the quota counts pilots started: those that ended without starting give it back
                _ledger.release_unstarted_recorded(conn, factory_id, pilots_, now)
            if events_:
                _many(
                    conn,
                    "INSERT INTO events (factory_id, time, queue, kind, message) VALUES (?, ?, ?, ?, ?)",
                    [(factory_id, e.time, e.queue, e.kind, e.message) for e in events_],
                )
            if decisions_:
                result.decision_ids = self._insert_decisions(conn, factory_id, decisions_, dry_run)
            rows = []
            for req in intents_:
                intent_id = new_intent_id()
                granted = req.n
                if req.tier is not None:
                    reserved = _ledger.reserve(conn, req.tier.queue, req.tier.quotas, req.n, now, intent_id)
                    granted = max(0, min(req.n, reserved))
                decision_id = (
                    result.decision_ids[req.decision]
                    if req.decision is not None and req.decision < len(result.decision_ids)
                    else None
                )
                tier = req.tier.queue if req.tier is not None else None
                status, submitted = ("open", None) if granted else ("settled", 0)
                rows.append(
                    (intent_id, factory_id, req.queue, decision_id, granted, now, status, submitted, tier)
                )
                result.intents.append((intent_id, granted))
            if rows:
                _many(
                    conn,
                    "INSERT INTO intents (id, factory_id, queue, decision_id, n, created, status, submitted, tier)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    rows,
                )
        return result

    def quota_left(self, tiers: Sequence[Tier], now: float) -> dict[str, int | None]:
        """Pilots each tier may still start now under its quotas (None: unlimited), one read."""
        with self.guard("read the quota ledger"), self.reader.connect() as conn:
            return {t.queue: _ledger.remaining(conn, t.queue, t.quotas, now) for t in tiers}

    # -- decisions ----------------------------------------------------------------------------
    def record_decisions(
        self, factory_id: str, items: Sequence[Decision], dry_run: bool = False
    ) -> list[int]:
        if self.readonly:
            return [0] * len(items)
        if not items:
            return []
        with self.guard("record decisions"), self.engine.begin() as conn:
            return self._insert_decisions(conn, factory_id, items, dry_run)

    @staticmethod
    def _insert_decisions(
        conn: Connection, factory_id: str, items: Sequence[Decision], dry_run: bool
    ) -> list[int]:
        """Insert decisions, returning their ids in order. On SQLite the ids are given explicitly
        (the transaction holds the write lock, so max(id) cannot move); elsewhere RETURNING."""
        flag = int(dry_run)
        rows = [
            (
                factory_id,
                d.queue,
                d.time,
                d.n,
                d.ready,
                d.pending,
                d.running,
                d.binding,
                steps_json(d),
                flag,
            )
            for d in items
        ]
        if conn.dialect.name == "sqlite":
            first = (conn.exec_driver_sql("SELECT coalesce(max(id), 0) FROM decisions").scalar() or 0) + 1
            ids = list(range(first, first + len(rows)))
            _many(
                conn,
                "INSERT INTO decisions (id, factory_id, queue, time, n, ready, pending, running, binding, steps,"
                " dry_run) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [(i, *row) for i, row in zip(ids, rows, strict=True)],
            )
            return ids
        names = (
            "factory_id",
            "queue",
            "time",
            "n",
            "ready",
            "pending",
            "running",
            "binding",
            "steps",
            "dry_run",
        )
        stmt = insert(decisions).returning(decisions.c.id, sort_by_parameter_order=True)
        return [r[0] for r in conn.execute(stmt, [dict(zip(names, row, strict=True)) for row in rows])]

    def decisions(self, factory_id: str, queue: str, limit: int = 10) -> list[dict[str, Any]]:
        query = (
            select(decisions)
            .where(decisions.c.factory_id == factory_id, decisions.c.queue == queue)
            .order_by(decisions.c.time.desc(), decisions.c.id.desc())
            .limit(limit)
        )
        with self.guard("read"), self.reader.connect() as conn:
            return [_decision_dict(r._mapping) for r in conn.execute(query)]

    def latest_decisions(self, factory_id: str) -> dict[str, dict[str, Any]]:
        latest = (
            select(decisions.c.queue, func.max(decisions.c.id).label("id"))
            .where(decisions.c.factory_id == factory_id)
            .group_by(decisions.c.queue)
            .subquery()
        )
        query = select(decisions).join(latest, decisions.c.id == latest.c.id)
        with self.guard("read"), self.reader.connect() as conn:
            return {r.queue: _decision_dict(r._mapping) for r in conn.execute(query)}

    def prune(self, factory_id: str, older_than: float) -> int:
        """Forget decisions, events, settled intents and finished pilots older than ``older_than``
        (a busy factory records a decision per queue per cycle). Quota ledger entries are kept."""
        if self.readonly:
            return 0
        final = [s.value for s in PilotState if s.final] + [PilotState.UNKNOWN.value]
        with self.guard("write"), self.engine.begin() as conn:
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
        if self.readonly:
            raise StoreError(f"store {self.label}: opened read-only, nothing can be submitted")
        intent_id = new_intent_id()
        with self.guard("write"), self.engine.begin() as conn:
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
        if self.readonly:
            raise StoreError(f"store {self.label}: opened read-only")
        with self.guard("write"), self.engine.begin() as conn:
            conn.execute(
                update(intents)
                .where(intents.c.id == intent_id)
                .values(status=status, submitted=submitted, finished=now, error=error)
            )
            if release is not None:
                release(conn)

    def open_intents(self, factory_id: str) -> list[IntentRow]:
        query = select(intents).where(intents.c.factory_id == factory_id, intents.c.status == "open")
        with self.guard("read"), self.reader.connect() as conn:
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
        with self.guard("read"), self.reader.connect() as conn:
            return {queue: created for queue, created in conn.execute(query)}

    def intents(self, factory_id: str, queue: str | None = None) -> list[dict[str, Any]]:
        query = select(intents).where(intents.c.factory_id == factory_id)
        if queue is not None:
            query = query.where(intents.c.queue == queue)
        with self.guard("read"), self.reader.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(query.order_by(intents.c.created))]

    # -- pilots ------------------------------------------------------------------------------------
    def record_pilots(self, factory_id: str, items: Iterable[Pilot], now: float) -> int:
        """Insert new pilots and update the state of known ones (by queue + backend id)."""
        if self.readonly:
            return 0
        items = list(items)
        if not items:
            return 0
        with self.guard("write"), self.engine.begin() as conn:
            _upsert_pilots(conn, factory_id, items, now)
        return len(items)

    def pilots(
        self, factory_id: str, queue: str | None = None, states: Sequence[str] | None = None
    ) -> list[dict[str, Any]]:
        query = select(pilots).where(pilots.c.factory_id == factory_id)
        if queue is not None:
            query = query.where(pilots.c.queue == queue)
        if states is not None:
            query = query.where(pilots.c.state.in_(list(states)))
        with self.guard("read"), self.reader.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(query.order_by(pilots.c.id))]

    def pilot_counts(self, factory_id: str) -> dict[str, dict[str, int]]:
        query = (
            select(pilots.c.queue, pilots.c.state, func.count())
            .where(pilots.c.factory_id == factory_id)
            .group_by(pilots.c.queue, pilots.c.state)
        )
        out: dict[str, dict[str, int]] = {}
        with self.guard("read"), self.reader.connect() as conn:
            for queue, state, count in conn.execute(query):
                out.setdefault(queue, {})[state] = count
        return out

    # -- events ------------------------------------------------------------------------------------
    def add_event(
        self, factory_id: str, now: float, kind: str, message: str, queue: str | None = None
    ) -> None:
        if self.readonly:
            return
        with self.guard("write"), self.engine.begin() as conn:
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
        with self.guard("read"), self.reader.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(query)]


_PILOT_COLUMNS = (
    "factory_id", "queue", "backend_id", "intent_id", "state", "submitted_at", "started_at",
    "ended_at", "updated_at", "instance_id", "node", "tier", "exit_code",
)  # fmt: skip

# One statement for new pilots and state changes (SQLite >= 3.24 and PostgreSQL): what the backend
# did not report this time keeps its stored value; what a pilot was born with never changes.
_UPSERT_PILOT = (
    f"INSERT INTO pilots ({', '.join(_PILOT_COLUMNS)}) VALUES ({', '.join('?' * len(_PILOT_COLUMNS))})"
    " ON CONFLICT (factory_id, queue, backend_id) DO UPDATE SET"
    " state = excluded.state,"
    " updated_at = excluded.updated_at,"
    " started_at = coalesce(excluded.started_at, pilots.started_at),"
    " ended_at = coalesce(excluded.ended_at, pilots.ended_at),"
    " node = coalesce(excluded.node, pilots.node),"
    " instance_id = coalesce(excluded.instance_id, pilots.instance_id),"
    " exit_code = coalesce(excluded.exit_code, pilots.exit_code),"
    " intent_id = coalesce(pilots.intent_id, excluded.intent_id),"
    " submitted_at = coalesce(pilots.submitted_at, excluded.submitted_at),"
    " tier = coalesce(pilots.tier, excluded.tier)"
)


def _upsert_pilots(conn: Connection, factory_id: str, items: Iterable[Pilot], now: float) -> None:
    """Write pilot reports through the driver's executemany: a cycle may create thousands of
    pilots, and per-row statement building would cost more than the batch system's submission.
    One row per pilot: the latest report wins (a submission then a poll in one batch)."""
    latest = {(p.queue, p.backend_id): p for p in items}
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
        for p in latest.values()
    ]  # fmt: skip  (the order of _PILOT_COLUMNS)
    _many(conn, _UPSERT_PILOT, rows)


def _many(conn: Connection, sql: str, rows: Sequence[tuple[Any, ...]]) -> None:
    """executemany with ``?`` placeholders, in the driver's own parameter style."""
    if not rows:
        return
    style = conn.dialect.paramstyle
    if style in ("format", "pyformat"):
        sql = sql.replace("?", "%s")
    elif style != "qmark":
        raise StoreError(f"unsupported database driver parameter style {style!r}")
    conn.exec_driver_sql(sql, list(rows))


def steps_json(decision: Decision) -> str:
    """A decision's steps as the JSON list ``apf explain`` reads: ``[{"plugin", "in", "out",
    "reason"}, ...]``, built directly (a factory writes one per queue per pass)."""
    enc = encode_basestring_ascii
    return (
        "["
        + ",".join(
            f'{{"plugin":{enc(s.plugin)},"in":{s.n_in},"out":{s.n_out},"reason":{enc(s.reason)}}}'
            for s in decision.steps
        )
        + "]"
    )


def _decision_dict(row: Any) -> dict[str, Any]:
    out = dict(row)
    out["steps"] = json.loads(out["steps"])
    return out


def _sqlite_pragmas(timeout: float, durable: bool, wal: bool = True) -> Callable[[Any, Any], None]:
    def pragmas(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        if wal:
            cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA synchronous={'NORMAL' if durable else 'OFF'}")
        cursor.execute(f"PRAGMA busy_timeout={int(timeout * 1000)}")
        cursor.close()

    return pragmas


def _server_args(url: str, timeout: float, readonly: bool = False) -> dict[str, Any]:
    """Bounded waits on a database server: connecting, and waiting for a lock."""
    if url.startswith(("postgresql", "postgres")):
        ms = int(timeout * 1000)
        options = f"-c lock_timeout={ms}" + (" -c default_transaction_read_only=on" if readonly else "")
        return {"connect_timeout": max(1, int(timeout)), "options": options}
    return {}


def _first_line(exc: BaseException) -> str:
    """A driver error's cause without SQL text or parameters (they may hold anything)."""
    orig: BaseException = exc.orig if isinstance(exc, DBAPIError) and exc.orig is not None else exc
    text = (str(orig) or type(orig).__name__).strip().splitlines()
    return redact_url(text[0][:300]) if text else type(orig).__name__
