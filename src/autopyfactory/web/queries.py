"""Store reads for the dashboard, on the tables of ``store/schema.py`` and ``store/ledger.py``.

The web reads through its own small engine (``read_engine``): a web request never holds one of the
factory's pooled connections, and on SQLite it never takes the write lock (the factory's engine
begins every transaction with ``BEGIN IMMEDIATE``; these connections are ``query_only`` and read
in autocommit, so under WAL they never wait for, nor delay, the decision loop's writes).

Every query is bounded: history is bucketed in SQL (``GROUP BY`` on a time bucket), so a chart
or a page of sparklines costs O(points), not O(decisions recorded).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection, Engine, Integer, and_, cast, create_engine, event, func, select
from sqlalchemy.engine import make_url

from autopyfactory.store.ledger import ledger_entries
from autopyfactory.store.schema import decisions, events, pilots

# SQLite limits bound parameters per statement; pages are far smaller, but stay safe
_IN_CHUNK = 500


def read_engine(url: str) -> Engine | None:
    """A read-only engine on the store's URL, or None for an in-memory SQLite store (which only
    its own engine can see)."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database in (None, "", ":memory:") or "mode=memory" in url:
            return None
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 5})

        @event.listens_for(engine, "connect")
        def _read_only(dbapi_conn, _record):  # type: ignore[no-untyped-def]
            dbapi_conn.isolation_level = None  # autocommit: a SELECT opens no transaction
            cursor = dbapi_conn.cursor()
            cursor.execute("PRAGMA query_only=1")
            cursor.execute("PRAGMA busy_timeout=5000")
            cursor.close()

        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=2, max_overflow=2)


def safe_url(url: str) -> str:
    """The store URL for display: the password never shows."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return "(unparseable store URL)"


def recent_decisions(conn: Connection, factory_id: str, queue: str, limit: int) -> list[dict[str, Any]]:
    query = (
        select(decisions)
        .where(decisions.c.factory_id == factory_id, decisions.c.queue == queue)
        .order_by(decisions.c.time.desc(), decisions.c.id.desc())
        .limit(limit)
    )
    out = []
    for row in conn.execute(query):
        item = dict(row._mapping)
        try:
            item["steps"] = json.loads(item["steps"] or "[]")
        except ValueError:
            item["steps"] = []
        out.append(item)
    return out


def recent_events(conn: Connection, factory_id: str, queue: str | None, limit: int) -> list[dict[str, Any]]:
    query = select(events).where(events.c.factory_id == factory_id)
    if queue is not None:
        query = query.where(events.c.queue == queue)
    query = query.order_by(events.c.time.desc(), events.c.id.desc()).limit(limit)
    return [dict(r._mapping) for r in conn.execute(query)]


def recent_pilots(
    conn: Connection, factory_id: str, queue: str, limit: int
) -> tuple[list[dict[str, Any]], int]:
    """A queue's newest pilot records (live and finished, until pruned) and how many there are."""
    where = and_(pilots.c.factory_id == factory_id, pilots.c.queue == queue)
    total = conn.execute(select(func.count()).select_from(pilots).where(where)).scalar_one()
    rows = conn.execute(select(pilots).where(where).order_by(pilots.c.id.desc()).limit(limit))
    return [dict(r._mapping) for r in rows], int(total)


def decision_history(
    conn: Connection, factory_id: str, queues: Sequence[str], since: float, until: float, points: int
) -> dict[str, dict[str, list[Any]]]:
    """Each queue's decisions in [since, until] in at most ``points`` time buckets: per bucket the
    time of its last decision, the largest demand/pending/running seen and the sum of n decided."""
    width = max((until - since) / max(points, 1), 1e-3)
    bucket = cast((decisions.c.time - since) / width, Integer).label("b")
    out: dict[str, dict[str, list[Any]]] = {}
    for i in range(0, len(queues), _IN_CHUNK):
        chunk = list(queues[i : i + _IN_CHUNK])
        query = (
            select(
                decisions.c.queue,
                bucket,
                func.max(decisions.c.time),
                func.max(decisions.c.ready),
                func.max(decisions.c.pending),
                func.max(decisions.c.running),
                func.sum(decisions.c.n),
            )
            .where(
                decisions.c.factory_id == factory_id,
                decisions.c.queue.in_(chunk),
                decisions.c.time >= since,
                decisions.c.time <= until,
            )
            .group_by(decisions.c.queue, bucket)
            .order_by(decisions.c.queue, bucket)
        )
        for queue, _b, t, ready, pending, running, n in conn.execute(query):
            series = out.setdefault(queue, {"t": [], "demand": [], "pending": [], "running": [], "n": []})
            series["t"].append(float(t))
            series["demand"].append(ready)
            series["pending"].append(pending)
            series["running"].append(running)
            series["n"].append(int(n) if n is not None else None)
    return out


def ledger_buckets(
    conn: Connection, tier: str, start: float, end: float, points: int
) -> list[tuple[float, int]]:
    """Net pilot starts reserved for ``tier`` in [start, end), per bucket: (bucket end, count)."""
    width = max((end - start) / max(points, 1), 1.0)
    bucket = cast((ledger_entries.c.time - start) / width, Integer).label("b")
    query = (
        select(bucket, func.sum(ledger_entries.c.count))
        .where(ledger_entries.c.tier == tier, ledger_entries.c.time >= start, ledger_entries.c.time < end)
        .group_by(bucket)
        .order_by(bucket)
    )
    return [(start + (int(b) + 1) * width, int(total or 0)) for b, total in conn.execute(query)]


def ledger_since(conn: Connection, tier: str, since: float, end: float) -> int:
    """Net pilot starts reserved for ``tier`` in [since, end)."""
    query = select(func.coalesce(func.sum(ledger_entries.c.count), 0)).where(
        ledger_entries.c.tier == tier, ledger_entries.c.time >= since, ledger_entries.c.time < end
    )
    return int(conn.execute(query).scalar_one())


def ping(conn: Connection) -> None:
    """Read one row of a store table: ``SELECT 1`` alone touches no file on SQLite, so a store
    whose file cannot be read (not a database, corrupt, unreadable) would still look reachable."""
    conn.execute(select(events.c.id).limit(1)).all()
