"""Demand trace CSV (sim/trace.py): ISO or relative times, step semantics, clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from autopyfactory.config.errors import ConfigError
from autopyfactory.decide.periods import parse_time
from autopyfactory.sim.trace import load_trace, parse_trace, read_trace

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "policy"
START = parse_time("2027-01-01T00:00:00Z")


def test_values_hold_until_the_next_row() -> None:
    trace = parse_trace(
        "time,wmsqueue,activated\n# comment\n0,Q,10\n3600,Q,40\n\n2027-01-01T02:00:00Z,Q,0\n1800,R,5\n",
        START,
    )
    assert trace.wmsqueues == ["Q", "R"]
    assert trace.at("Q", START - 1) == 0  # before the first row
    assert trace.at("Q", START) == 10
    assert trace.at("Q", START + 3599) == 10
    assert trace.at("Q", START + 3600) == 40
    assert trace.at("Q", START + 7200) == 0
    assert trace.at("R", START + 1799) == 0 and trace.at("R", START + 1800) == 5
    assert trace.at("nothing", START) == 0
    assert trace.snapshot(START + 3600) == {"Q": 40, "R": 5}
    assert trace.next_change(START) == START + 1800
    assert trace.next_change(START + 7200) is None
    assert trace.end == START + 7200


def test_rows_in_any_order() -> None:
    trace = parse_trace("100,Q,2\n0,Q,1\n", START)
    assert trace.at("Q", START + 50) == 1 and trace.at("Q", START + 100) == 2


def test_relative_rows_follow_the_start() -> None:
    raw = parse_trace("0,Q,3\n600,Q,7\n")
    assert raw.value_at("Q", 0, 123.0) == 3
    assert raw.value_at("Q", 600, 723.0) == 7
    later = read_trace(EXAMPLES / "demand.csv", START)
    assert later.at("ANALY_EXAMPLE", START) == 400
    assert later.at("ANALY_EXAMPLE", parse_time("2027-03-01T00:00:00Z")) == 0
    with pytest.raises(ValueError, match="resolve"):
        raw.at("Q", 0)
    # an absolute-only trace needs no start
    absolute = load_trace(EXAMPLES / "demand.csv")
    assert absolute.value_at("ANALY_EXAMPLE", 5.0, parse_time("2027-02-20T00:00:00Z")) == 200


def test_mixed_rows_resolve_against_the_start() -> None:
    raw = parse_trace("0,Q,1\n2027-01-01T01:00:00Z,Q,2\n")
    assert raw.value_at("Q", 1800, START + 1800) == 1
    assert raw.value_at("Q", 3600, START + 3600) == 2


def test_bad_rows_name_file_line_and_column() -> None:
    with pytest.raises(ConfigError) as info:
        parse_trace(
            "time,wmsqueue,activated\nsoon,Q,1\n0,,1\n0,Q,-4\n0,Q\n10,Q,1\n10,Q,2\nnan,Q,1\n",
            START,
            file="d.csv",
        )
    errors = [str(p) for p in info.value.problems]
    assert errors == [
        "d.csv: [line 2] time: not ISO 8601 or seconds from start: 'soon'",
        "d.csv: [line 3] wmsqueue: empty WMS queue name",
        "d.csv: [line 4] activated: not a whole number >= 0: '-4'",
        "d.csv: [line 5]: expected 3 fields time,wmsqueue,activated, got 2",
        "d.csv: [line 7] time: a second value for Q at the same time (first on line 6)",
        "d.csv: [line 8] time: not ISO 8601 or seconds from start: 'nan'",
    ]


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read demand trace"):
        read_trace(tmp_path / "none.csv", START)


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        (
            b"time,wmsqueue,activated\n0,Q,99999999999999999999\n",
            "[line 2] activated: 99999999999999999999 is more than",
        ),
        (b"time,wmsqueue,activated\n0,Q,5\x00\n", "line 2 contains a NUL byte"),
        (b"time,wmsqueue,activated\n0,Q," + b"9" * 200_000 + b"\n", "line 2"),
        (
            b"time,wmsqueue,activated\n0,Q," + b"9" * 2000 + b"\n",
            "[line 2]: a field is longer than 1024 characters",
        ),
        (b"\xfc\x80\x81binary", "not a UTF-8 text file"),
        (b"time,wmsqueue,activated\n99999-01-01T00:00:00Z,Q,5\n", "[line 2] time: not ISO 8601"),
        (b"time,wmsqueue,activated\nnan,Q,5\n", "[line 2] time: not ISO 8601"),
    ],
)
def test_huge_or_malformed_values_are_clear_errors(tmp_path: Path, content: bytes, fragment: str) -> None:
    path = tmp_path / "t.csv"
    path.write_bytes(content)
    with pytest.raises(ConfigError) as info:
        load_trace(path)
    text = "\n".join(str(p) for p in info.value.problems)
    assert str(path) in text and fragment in text


def test_steps_give_the_levels_over_a_range() -> None:
    trace = parse_trace("0,Q,10\n3600,Q,40\n7200,Q,0\n", START)
    assert trace.steps("Q", START + 1800, START + 7200) == [(START + 1800, 10), (START + 3600, 40)]
    assert trace.steps("none", START, START + 10) == [(START, 0)]
