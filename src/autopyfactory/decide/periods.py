"""Quota periods in UTC: calendar month, ISO week, day, and rolling windows. Pure code.

Times are POSIX seconds (float). Calendar boundaries are whole seconds, so a time belongs to the
period of ``floor(t)``: 2027-01-31T23:59:59.999Z is January, 2027-02-01T00:00:00Z is February.
Calendar periods are half-open ``[start, end)``; a rolling window of length ``w`` at ``now`` is
``(now - w, now]``.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Literal

CALENDAR = ("month", "week", "day")

_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*([smhdw])")


def parse_duration(value: str | float | int) -> float:
    """Seconds from ``90``, ``"90"``, ``"10m"``, ``"1h30m"``, ``"7d"``, ``"2w"``. Raises ValueError."""
    if isinstance(value, bool):
        raise ValueError("a duration is a number of seconds or a string like '10m', '1h30m', '7d'")
    if isinstance(value, int | float):
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"a duration must be a finite number >= 0 (got {value!r})")
        return float(value)
    text = str(value).strip().lower()
    try:
        seconds = float(text)
    except ValueError:
        pass
    else:
        return parse_duration(seconds)
    pos = 0
    total = 0.0
    for match in _DURATION.finditer(text):
        if text[pos : match.start()].strip():
            break
        total += float(match.group(1)) * _UNITS[match.group(2)]
        pos = match.end()
    if pos == 0 or text[pos:].strip():
        raise ValueError(
            f"not a duration: {value!r} (use seconds or a number with a unit s, m, h, d, w, e.g. '10m', '7d')"
        )
    return total


def format_duration(seconds: float) -> str:
    """An exact short form: ``7d``, ``90m``, ``45s`` (for keys and messages)."""
    if seconds > 0 and seconds == int(seconds):
        for unit in ("d", "h", "m"):
            size = _UNITS[unit]
            if seconds % size == 0:
                return f"{int(seconds // size)}{unit}"
        return f"{int(seconds)}s"
    return f"{seconds:g}s"


@dataclass(frozen=True, slots=True)
class Period:
    """``kind`` is month, week or day (calendar, UTC) or rolling (``seconds`` long)."""

    kind: Literal["month", "week", "day", "rolling"]
    seconds: float = 0.0

    def __post_init__(self) -> None:
        if self.kind == "rolling" and not self.seconds > 0:
            raise ValueError("a rolling window needs a length > 0")

    @property
    def label(self) -> str:
        return self.kind if self.kind != "rolling" else format_duration(self.seconds)

    def bounds(self, now: float) -> tuple[float, float]:
        """The period containing ``now``: ``[start, end)`` for calendar, ``(start, end]`` for rolling."""
        if self.kind == "rolling":
            return now - self.seconds, now
        day = _utc_day(now)
        if self.kind == "day":
            first, nxt = day, day + timedelta(days=1)
        elif self.kind == "week":
            first = day - timedelta(days=day.weekday())  # ISO weeks start on Monday
            nxt = first + timedelta(days=7)
        else:
            first = day.replace(day=1)
            nxt = date(first.year + 1, 1, 1) if first.month == 12 else first.replace(month=first.month + 1)
        return _epoch(first), _epoch(nxt)

    def key(self, now: float) -> str:
        """A stable name of the period containing ``now``: ``2027-01``, ``2027-W05``, ``2027-01-31``."""
        if self.kind == "rolling":
            return f"rolling-{self.label}"
        day = _utc_day(now)
        if self.kind == "day":
            return day.isoformat()
        if self.kind == "week":
            year, week, _ = day.isocalendar()
            return f"{year}-W{week:02d}"
        return f"{day.year:04d}-{day.month:02d}"

    def contains(self, now: float, t: float) -> bool:
        """Does time ``t`` fall in the period that contains ``now``?"""
        start, end = self.bounds(now)
        if self.kind == "rolling":
            return start < t <= end
        return start <= math.floor(t) < end


def parse_period(text: str | float | int) -> Period:
    """``month``, ``week``, ``day`` (calendar, UTC) or a rolling window length (``7d``, ``12h``)."""
    if isinstance(text, str) and text.strip().lower() in CALENDAR:
        return Period(text.strip().lower())  # type: ignore[arg-type]
    try:
        seconds = parse_duration(text)
    except ValueError:
        raise ValueError(
            f"not a period: {text!r} (use month, week, day, or a rolling window like '7d', '12h')"
        ) from None
    if seconds <= 0:
        raise ValueError(f"a rolling window must be longer than 0 s (got {text!r})")
    return Period("rolling", seconds)


def month_key(now: float) -> str:
    """``YYYY-MM`` of ``now`` in UTC (reports group by calendar month)."""
    return Period("month").key(now)


def parse_time(text: str) -> float:
    """POSIX seconds from ISO 8601 (``2027-01-01T00:00:00Z``); a time without zone is UTC."""
    value = text.strip()
    if value.endswith(("Z", "z")):
        value = value[:-1] + "+00:00"
    stamp = datetime.fromisoformat(value)
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=UTC)
    return stamp.timestamp()


def format_time(t: float) -> str:
    """``2027-01-31T23:59:59Z`` (whole seconds, UTC)."""
    return datetime.fromtimestamp(math.floor(t), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _utc_day(t: float) -> date:
    # floor first: every calendar boundary is a whole second, and this avoids float rounding
    # carrying 23:59:59.9999999 over into the next day
    return datetime.fromtimestamp(math.floor(t), UTC).date()


def _epoch(d: date) -> float:
    return float(datetime(d.year, d.month, d.day, tzinfo=UTC).timestamp())
