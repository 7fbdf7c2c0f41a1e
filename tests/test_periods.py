"""UTC period math for quotas: exact month/week/day rollover and rolling windows."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from autopyfactory.decide.periods import (
    Period,
    format_duration,
    format_time,
    month_key,
    parse_duration,
    parse_period,
    parse_time,
)


def ts(text: str) -> float:
    return parse_time(text)


def test_month_rollover_is_exact() -> None:
    month = Period("month")
    last = ts("2027-01-31T23:59:59Z")
    first = ts("2027-02-01T00:00:00Z")
    assert month.key(last) == "2027-01"
    assert month.key(first) == "2027-02"
    # a fraction of a second before midnight is still January
    assert month.key(first - 1e-6) == "2027-01"
    assert month.bounds(last) == (ts("2027-01-01T00:00:00Z"), first)
    assert month.bounds(first) == (first, ts("2027-03-01T00:00:00Z"))
    assert month.contains(last, first - 0.5)
    assert not month.contains(last, first)


def test_month_bounds_across_year_and_leap_february() -> None:
    month = Period("month")
    assert month.bounds(ts("2027-12-31T12:00:00Z")) == (
        ts("2027-12-01T00:00:00Z"),
        ts("2028-01-01T00:00:00Z"),
    )
    start, end = month.bounds(ts("2028-02-29T23:00:00Z"))
    assert (end - start) / 86400 == 29
    start, end = month.bounds(ts("2027-02-10T00:00:00Z"))
    assert (end - start) / 86400 == 28


def test_iso_week_starts_monday() -> None:
    week = Period("week")
    # 2027-01-04 is a Monday; 2027-01-03 a Sunday that belongs to ISO week 2026-W53
    assert week.key(ts("2027-01-03T23:59:59Z")) == "2026-W53"
    assert week.key(ts("2027-01-04T00:00:00Z")) == "2027-W01"
    assert week.bounds(ts("2027-01-06T12:00:00Z")) == (ts("2027-01-04T00:00:00Z"), ts("2027-01-11T00:00:00Z"))


def test_day() -> None:
    day = Period("day")
    assert day.key(ts("2027-03-01T00:00:00Z")) == "2027-03-01"
    assert day.key(ts("2027-02-28T23:59:59Z")) == "2027-02-28"
    assert day.bounds(ts("2027-03-01T10:00:00Z")) == (ts("2027-03-01T00:00:00Z"), ts("2027-03-02T00:00:00Z"))


def test_rolling_window() -> None:
    window = parse_period("7d")
    assert window == Period("rolling", 7 * 86400)
    now = ts("2027-01-10T00:00:00Z")
    assert window.bounds(now) == (now - 7 * 86400, now)
    assert window.contains(now, now)
    assert window.contains(now, now - 7 * 86400 + 1)
    assert not window.contains(now, now - 7 * 86400)
    assert window.key(now) == "rolling-7d"


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90", 90),
        (90, 90),
        ("10m", 600),
        ("1h30m", 5400),
        ("1h 30m", 5400),
        ("7d", 604800),
        ("2w", 1209600),
        ("1.5h", 5400),
        ("0", 0),
    ],
)
def test_parse_duration(text: str | int, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "abc", "10x", "m10", "-5", "10m garbage", True])
def test_parse_duration_rejects(text: object) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)  # type: ignore[arg-type]


def test_parse_period() -> None:
    assert parse_period("Month") == Period("month")
    assert parse_period("week").kind == "week"
    with pytest.raises(ValueError, match="not a period"):
        parse_period("fortnight")
    with pytest.raises(ValueError):
        parse_period("0")


def test_format_helpers() -> None:
    assert format_duration(604800) == "7d"
    assert format_duration(86400 * 3) == "3d"
    assert format_duration(90) == "90s"
    assert format_duration(5400) == "90m"
    assert format_time(ts("2027-01-31T23:59:59Z") + 0.9) == "2027-01-31T23:59:59Z"
    assert month_key(ts("2027-02-01T00:00:00Z")) == "2027-02"
    assert parse_time("2027-01-01T01:00:00+01:00") == ts("2027-01-01T00:00:00Z")
    assert parse_time("2027-01-01T00:00:00") == ts("2027-01-01T00:00:00Z")


@given(st.integers(min_value=0, max_value=4_102_444_800), st.sampled_from(["month", "week", "day"]))
def test_calendar_bounds_contain_time_and_agree_with_datetime(t: int, kind: str) -> None:
    period = Period(kind)  # type: ignore[arg-type]
    start, end = period.bounds(t)
    assert start <= t < end
    # the period just before `start` is a different one, and `end` starts the next
    assert period.key(start - 1) != period.key(start)
    assert period.key(end) != period.key(end - 1)
    assert period.key(start) == period.key(end - 1) == period.key(t)
    stamp = datetime.fromtimestamp(t, UTC)
    if kind == "month":
        assert period.key(t) == f"{stamp.year:04d}-{stamp.month:02d}"
    elif kind == "day":
        assert period.key(t) == stamp.date().isoformat()
    else:
        assert datetime.fromtimestamp(start, UTC).weekday() == 0
