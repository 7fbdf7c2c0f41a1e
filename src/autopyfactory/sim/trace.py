"""Demand traces for the simulator: CSV rows ``time,wmsqueue,activated``.

``time`` is ISO 8601 (``2027-01-05T12:00:00Z``; no zone means UTC) or seconds from the start of
the simulation. A value holds until the next row for the same WMS queue; before its first row a
queue's demand is 0. A header line ``time,wmsqueue,activated``, blank lines and lines starting
with ``#`` are skipped. Bad rows raise ``ConfigError`` naming the file, line and column; a value
above ``MAX_ACTIVATED`` is refused (a simulation submits pilots for it).

``read_trace(path, start)`` gives a trace on absolute time; ``load_trace(path)`` keeps relative
rows relative until a start is known (``value_at(wmsqueue, elapsed, now)``, as the Sim WMS
plugin asks).
"""

from __future__ import annotations

import bisect
import csv
import io
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from autopyfactory.config.errors import ConfigError, ConfigProblem
from autopyfactory.decide.periods import parse_time

HEADER = ("time", "wmsqueue", "activated")
MAX_ACTIVATED = 1_000_000  # per WMS queue: more is a typo, and would be simulated pilot by pilot
MAX_FIELD = 1024  # characters per field

Row = tuple[float, bool, int]  # (time, relative?, activated), in file order


class DemandTrace:
    """Step functions of demand per WMS queue."""

    def __init__(self, rows: Mapping[str, Sequence[Row]], start: float | None = None) -> None:
        self.rows = {q: list(r) for q, r in rows.items()}
        self.start = start
        self.has_relative = any(rel for r in self.rows.values() for _, rel, _ in r)
        self.has_absolute = any(not rel for r in self.rows.values() for _, rel, _ in r)
        self._index: dict[str, tuple[list[float], list[int]]] | None = None
        self._resolved: dict[float, DemandTrace] = {}

    def resolve(self, start: float) -> DemandTrace:
        """This trace with relative rows counted from ``start``."""
        return DemandTrace(self.rows, start)

    def _build(self) -> dict[str, tuple[list[float], list[int]]]:
        if self._index is None:
            if self.has_relative and self.start is None:
                raise ValueError("this trace has times relative to the start; resolve(start) it first")
            start = self.start or 0.0
            index = {}
            for queue, rows in self.rows.items():
                by_time: dict[float, int] = {}
                for t, rel, value in rows:
                    by_time[start + t if rel else t] = value  # same time: the later line wins
                times = sorted(by_time)
                index[queue] = (times, [by_time[t] for t in times])
            self._index = index
        return self._index

    @property
    def wmsqueues(self) -> list[str]:
        return sorted(self.rows)

    def at(self, wmsqueue: str, t: float) -> int:
        """Activated jobs of ``wmsqueue`` at time ``t`` (O(log rows))."""
        entry = self._build().get(wmsqueue)
        if entry is None:
            return 0
        times, values = entry
        i = bisect.bisect_right(times, t) - 1
        return values[i] if i >= 0 else 0

    def value_at(self, wmsqueue: str, elapsed: float, now: float) -> int:
        """The value ``elapsed`` seconds after the start, which is ``now``."""
        if not self.has_relative:
            return self.at(wmsqueue, now)
        if not self.has_absolute:
            return self._relative().at(wmsqueue, elapsed)
        start = round(now - elapsed, 3)  # one cached resolution per start, whatever float noise
        trace = self._resolved.get(start)
        if trace is None:
            trace = self._resolved[start] = self.resolve(start)
        return trace.at(wmsqueue, now)

    def _relative(self) -> DemandTrace:
        trace = self._resolved.get(0.0)
        if trace is None:
            trace = self._resolved[0.0] = self.resolve(0.0)
        return trace

    def snapshot(self, t: float) -> dict[str, int]:
        return {q: self.at(q, t) for q in self.rows}

    def next_change(self, t: float) -> float | None:
        """The first time after ``t`` at which some queue's demand changes (event-driven loops)."""
        best: float | None = None
        for times, _ in self._build().values():
            i = bisect.bisect_right(times, t)
            if i < len(times) and (best is None or times[i] < best):
                best = times[i]
        return best

    def steps(self, wmsqueue: str, start: float, end: float) -> list[tuple[float, int]]:
        """The demand of ``wmsqueue`` on ``[start, end)`` as (time, level) steps, the first at
        ``start`` (the level then)."""
        times, values = self._build().get(wmsqueue, ([], []))
        out = [(start, self.at(wmsqueue, start))]
        i = bisect.bisect_right(times, start)
        while i < len(times) and times[i] < end:
            out.append((times[i], values[i]))
            i += 1
        return out

    @property
    def end(self) -> float | None:
        last = [times[-1] for times, _ in self._build().values() if times]
        return max(last) if last else None


def read_trace(path: str | Path, start: float) -> DemandTrace:
    """Read a trace file; relative times count from ``start`` (POSIX seconds)."""
    return load_trace(path).resolve(start)


def load_trace(path: str | Path) -> DemandTrace:
    file = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(
            [ConfigProblem(file, None, None, f"cannot read demand trace: {exc.strerror}")]
        ) from None
    except UnicodeDecodeError as exc:
        raise ConfigError(
            [
                ConfigProblem(
                    file, None, None, f"not a UTF-8 text file (byte {exc.start}): a CSV trace is text"
                )
            ]
        ) from None
    return parse_trace(text, file=file)


def parse_trace(text: str, start: float | None = None, *, file: str = "<trace>") -> DemandTrace:
    problems: list[ConfigProblem] = []
    rows: dict[str, list[Row]] = {}
    seen: dict[tuple[str, float, bool], int] = {}

    def bad(line: int, column: str | None, message: str) -> None:
        problems.append(ConfigProblem(file, f"line {line}", column, message))

    try:
        parsed = list(_rows(text))
    except csv.Error as exc:
        raise ConfigError([ConfigProblem(file, None, None, f"not a valid CSV file: {exc}")]) from None
    for line, fields in parsed:
        if [f.strip().lower() for f in fields] == list(HEADER):
            continue
        if len(fields) != 3:
            bad(line, None, f"expected 3 fields time,wmsqueue,activated, got {len(fields)}")
            continue
        if any(len(f) > MAX_FIELD for f in fields):
            bad(line, None, f"a field is longer than {MAX_FIELD} characters")
            continue
        raw_time, queue, raw_value = (f.strip() for f in fields)
        when = _time(raw_time)
        if when is None:
            bad(line, "time", f"not ISO 8601 or seconds from start: {raw_time!r}")
        if not queue:
            bad(line, "wmsqueue", "empty WMS queue name")
        try:
            value = int(raw_value)
            if value < 0:
                raise ValueError
        except ValueError:
            bad(line, "activated", f"not a whole number >= 0: {raw_value!r}")
            continue
        if value > MAX_ACTIVATED:
            bad(line, "activated", f"{value} is more than {MAX_ACTIVATED:,} activated jobs")
            continue
        if when is None or not queue:
            continue
        key = (queue, *when)
        if key in seen:
            bad(line, "time", f"a second value for {queue} at the same time (first on line {seen[key]})")
            continue
        seen[key] = line
        rows.setdefault(queue, []).append((when[0], when[1], value))
    if problems:
        raise ConfigError(problems)
    return DemandTrace(rows, start)


def _rows(text: str) -> Iterable[tuple[int, list[str]]]:
    if "\x00" in text:
        line = text.count("\n", 0, text.index("\x00")) + 1
        raise csv.Error(f"line {line} contains a NUL byte")
    reader = csv.reader(io.StringIO(text))
    while True:
        try:
            fields = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            raise csv.Error(f"line {reader.line_num}: {exc}") from None
        line = reader.line_num
        if not fields or not "".join(fields).strip() or fields[0].lstrip().startswith("#"):
            continue
        yield line, fields


def _time(raw: str) -> tuple[float, bool] | None:
    """(time, relative?) or None."""
    try:
        seconds = float(raw)
    except ValueError:
        pass
    else:
        return (seconds, True) if math.isfinite(seconds) and seconds >= 0 else None
    try:
        return parse_time(raw), False
    except (ValueError, OverflowError, OSError):
        return None
