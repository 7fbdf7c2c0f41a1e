"""What the pages and the API show, computed from a ``FactoryView`` only (no framework here).

The overview filters, sorts and pages the queue summaries in memory (10,000 queues: a few
milliseconds) and asks the store for the sparklines of one page only.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable
from typing import Any

from autopyfactory.web.models import (
    STATE_ORDER,
    Explanation,
    QueueDetail,
    QueuePage,
    QueueState,
    QueueSummary,
    StatusReport,
)
from autopyfactory.web.view import FactoryView, ViewError

SORTS: dict[str, Callable[[QueueSummary], Any]] = {
    "name": lambda q: q.name,
    "state": lambda q: STATE_ORDER.get(q.state, 99),
    "demand": lambda q: q.demand,
    "pending": lambda q: q.pending,
    "running": lambda q: q.running,
    "last_n": lambda q: q.last_n,
    "decided_at": lambda q: q.decided_at,
    "binding": lambda q: q.binding,
    "cascade": lambda q: q.cascade,
}
MAX_PER_PAGE = 500
SPARK_HOURS = 6.0
SPARK_POINTS = 48


def overview(
    view: FactoryView,
    *,
    page: int = 1,
    per_page: int = 50,
    sort: str = "name",
    order: str = "asc",
    text: str = "",
    state: str = "",
    sparklines: bool = True,
) -> QueuePage:
    """One page of queues. ``text`` matches a part of the name (case-insensitive), ``state`` one
    ``QueueState`` value; unknown sort keys fall back to the name."""
    rows = everything = view.summaries()
    counts = Counter(str(q.state) for q in rows)
    needle = text.strip().lower()
    if needle:
        rows = [q for q in rows if needle in q.name.lower()]
    if state:
        rows = [q for q in rows if q.state == state]
    sort = sort if sort in SORTS else "name"
    order = "desc" if order == "desc" else "asc"
    key = SORTS[sort]
    present = [q for q in rows if key(q) is not None]
    missing = [q for q in rows if key(q) is None]  # unknown values always last
    # two stable sorts: ties stay by name ascending, whichever way the key goes
    present.sort(key=lambda q: q.name)
    present.sort(key=key, reverse=order == "desc")
    missing.sort(key=lambda q: q.name)
    ordered = present + missing
    per_page = max(1, min(per_page, MAX_PER_PAGE))
    pages = max(1, math.ceil(len(ordered) / per_page))
    page = max(1, min(page, pages))
    items = ordered[(page - 1) * per_page : page * per_page]
    spark = {}
    if sparklines and items:
        now = view.now()
        try:
            spark = view.history([q.name for q in items], now - SPARK_HOURS * 3600, SPARK_POINTS)
        except ViewError:
            spark = {}
    return QueuePage(
        factory=view.factory_id,
        time=view.now(),
        total=len(everything),
        matched=len(ordered),
        page=page,
        per_page=per_page,
        pages=pages,
        sort=sort,
        order=order,
        filter=text,
        state=state,
        items=items,
        sparklines=spark,
        counts_by_state=dict(counts),
    )


def status_report(view: FactoryView, *, metrics: str | None = None, web: str | None = None) -> StatusReport:
    """``apf status`` of a running factory, as its dashboard knows it."""
    health = view.health()
    return StatusReport(
        factory=view.factory_id,
        time=health.time,
        queues={q.name: q for q in view.summaries()},
        pollers={p.label: p.state for p in health.pollers},
        targets={
            t.target: f"{t.failures} failures, last: {t.error}"
            + (f", backing off until {t.backoff_until:.0f}" if t.backoff_until else "")
            for t in health.targets
        },
        daemon_status_time=health.time,
        # what the running daemon knows of its own store (apf status prints it when failing)
        daemon_store={"ok": health.store.ok, "error": health.store.error},
        metrics=metrics,
        web=web,
    )


def find_summary(view: FactoryView, name: str) -> QueueSummary | None:
    for q in view.summaries():
        if q.name == name:
            return q
    return None


def queue_detail(
    view: FactoryView, name: str, *, decisions: int = 10, events: int = 30, pilots: int = 100
) -> QueueDetail | None:
    summary = find_summary(view, name)
    info = view.queue_info(name)
    if summary is None or info is None:
        return None
    pilot_rows, total = view.pilots(name, pilots)
    return QueueDetail(
        summary=summary,
        info=info,
        decisions=view.decisions(name, decisions),
        events=view.events(name, events),
        pilots=pilot_rows,
        pilots_total=total,
    )


def explanation(view: FactoryView, name: str, limit: int = 5) -> Explanation:
    """What ``apf explain NAME --json`` prints (a cascade as ``cascade:NAME``)."""
    return Explanation(queue=name, decisions=view.decisions(name, limit), events=view.events(name, limit))


def state_values() -> list[str]:
    return [str(s) for s in sorted(QueueState, key=lambda s: STATE_ORDER[s])]
