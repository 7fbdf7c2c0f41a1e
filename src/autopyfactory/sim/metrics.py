"""How well a simulated run served its demand, per WMS queue and calendar month (UTC).

The demand of a WMS queue is a level ``D(t)`` (jobs waiting for a pilot: the trace); the pilots
of every queue serving it that are running at ``t`` are ``R(t)``. Both are step functions, so the
measures below are exact integrals over the run, not samples at cycle times:

* **unserved job-hours**: ``∫ max(0, D - R) dt`` (demand not covered by running pilots);
* **time to a running pilot**: the uncovered units ``U = max(0, D - R)`` form a first-in,
  first-out queue. A unit joins when ``U`` grows (demand rises, or a pilot ends while demand
  stays), and is served, oldest first, when a pilot starts; when demand falls, the newest
  waiting units leave unserved (their jobs went elsewhere). Mean and 95th percentile are over
  the units served, by the month they joined; units still waiting at the end are counted apart.
"""

from __future__ import annotations

import bisect
from collections import defaultdict, deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime


class Months:
    """Calendar months (UTC) around a time range: month of a time, and splitting intervals."""

    def __init__(self, start: float, end: float) -> None:
        first = datetime.fromtimestamp(start, UTC)
        year, month = first.year, first.month
        self.starts: list[float] = []
        self.keys: list[str] = []
        while True:
            t = datetime(year, month, 1, tzinfo=UTC).timestamp()
            self.starts.append(t)
            self.keys.append(f"{year:04d}-{month:02d}")
            if t > end:
                break
            year, month = (year + 1, 1) if month == 12 else (year, month + 1)

    def index(self, t: float) -> int:
        return max(0, bisect.bisect_right(self.starts, t) - 1)

    def key(self, t: float) -> str:
        return self.keys[self.index(t)]

    def split(self, a: float, b: float) -> Iterable[tuple[str, float]]:
        """(month, seconds) of ``[a, b)``."""
        i = self.index(a)
        while a < b:
            nxt = self.starts[i + 1] if i + 1 < len(self.starts) else float("inf")
            stop = min(b, nxt)
            yield self.keys[i], stop - a
            a, i = stop, i + 1


@dataclass
class ServiceMonth:
    demand_job_hours: float = 0.0
    unserved_job_hours: float = 0.0
    served: int = 0  # units that waited and got a running pilot
    wait_seconds: float = 0.0  # their total wait
    waits: list[tuple[float, int]] = field(default_factory=list)  # (wait, units)

    @property
    def mean_wait_s(self) -> float | None:
        return self.wait_seconds / self.served if self.served else None

    @property
    def p95_wait_s(self) -> float | None:
        return percentile(self.waits, 0.95)

    def as_dict(self) -> dict[str, object]:
        mean, p95 = self.mean_wait_s, self.p95_wait_s
        return {
            "demand_job_hours": round(self.demand_job_hours, 2),
            "unserved_job_hours": round(self.unserved_job_hours, 2),
            "served": self.served,
            "mean_wait_s": None if mean is None else round(mean, 1),
            "p95_wait_s": None if p95 is None else round(p95, 1),
        }

    def add(self, other: ServiceMonth) -> None:
        self.demand_job_hours += other.demand_job_hours
        self.unserved_job_hours += other.unserved_job_hours
        self.served += other.served
        self.wait_seconds += other.wait_seconds
        self.waits.extend(other.waits)


def combine(reports: Iterable[ServiceReport]) -> tuple[dict[str, ServiceMonth], ServiceMonth, int]:
    """Several WMS queues' reports as one: per month, over the whole run, and units still
    waiting at the end."""
    months: dict[str, ServiceMonth] = defaultdict(ServiceMonth)
    total = ServiceMonth()
    waiting = 0
    for report in reports:
        waiting += report.waiting_at_end
        for month, m in report.months.items():
            months[month].add(m)
            total.add(m)
    return dict(sorted(months.items())), total, waiting


def percentile(weighted: Iterable[tuple[float, int]], q: float) -> float | None:
    """The ``q`` quantile of values with integer weights (the smallest value whose cumulative
    weight reaches ``q`` of the total)."""
    items = sorted(weighted)
    total = sum(n for _, n in items)
    if total == 0:
        return None
    need = q * total
    seen = 0
    for value, n in items:
        seen += n
        if seen >= need:
            return value
    return items[-1][0]


@dataclass
class ServiceReport:
    months: dict[str, ServiceMonth]
    waiting_at_end: int

    def as_dict(self) -> dict[str, object]:
        return {
            "months": {m: s.as_dict() for m, s in self.months.items()},
            "waiting_at_end": self.waiting_at_end,
        }


class ServiceMeter:
    """Collects running-pilot changes of one WMS queue during a run; ``report`` integrates."""

    def __init__(self) -> None:
        self.changes: list[tuple[float, int]] = []  # (time, +1 start / -1 end)

    def running(self, t: float, delta: int) -> None:
        self.changes.append((t, delta))

    def report(
        self, demand: list[tuple[float, int]], start: float, end: float, months: Months
    ) -> ServiceReport:
        """``demand``: (time, level) steps, the first at or before ``start``."""
        out: dict[str, ServiceMonth] = defaultdict(ServiceMonth)
        # pilot changes sort before demand changes at the same time (kind 0 before 1): demand a
        # pilot covers the moment it appears never waited
        events = [(t, 1, level) for t, level in demand if t < end]
        events += [(t, 0, delta) for t, delta in self.changes if t < end]
        events.sort(key=lambda e: (e[0], e[1]))
        queue: deque[list[float]] = deque()  # [joined, units], oldest first
        d = r = 0
        uncovered = 0
        t_prev = start
        for t, kind, value in events:
            t = max(t, start)
            if t > t_prev:
                _integrate(out, months, t_prev, t, d, uncovered)
                t_prev = t
            if kind == 1:
                d = value
            else:
                r += value
            now = max(0, d - r)
            if now > uncovered:
                queue.append([t, now - uncovered])
            elif now < uncovered:
                gone = uncovered - now
                if kind == 1:
                    _drop_newest(queue, gone)
                else:
                    _serve_oldest(queue, gone, t, out, months)
            uncovered = now
        if end > t_prev:
            _integrate(out, months, t_prev, end, d, uncovered)
        return ServiceReport(dict(sorted(out.items())), int(sum(units for _, units in queue)))


def _integrate(out: dict[str, ServiceMonth], months: Months, a: float, b: float, d: int, u: int) -> None:
    if d == 0 and u == 0:
        return
    for month, seconds in months.split(a, b):
        m = out[month]
        m.demand_job_hours += d * seconds / 3600.0
        m.unserved_job_hours += u * seconds / 3600.0


def _drop_newest(queue: deque[list[float]], n: int) -> None:
    while n > 0 and queue:
        last = queue[-1]
        take = min(n, int(last[1]))
        last[1] -= take
        n -= take
        if last[1] == 0:
            queue.pop()


def _serve_oldest(
    queue: deque[list[float]], n: int, t: float, out: dict[str, ServiceMonth], months: Months
) -> None:
    while n > 0 and queue:
        first = queue[0]
        take = min(n, int(first[1]))
        wait = t - first[0]
        m = out[months.key(first[0])]
        m.served += take
        m.wait_seconds += wait * take
        m.waits.append((wait, take))
        first[1] -= take
        n -= take
        if first[1] == 0:
            queue.popleft()
