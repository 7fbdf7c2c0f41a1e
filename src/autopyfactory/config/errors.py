"""Config problems: each names the file (or URL), line, section and key it is about."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import NamedTuple


class Location(NamedTuple):
    """Where a value is written: file or URL, line, and the section the line is in."""

    file: str
    line: int | None = None
    section: str | None = None


@dataclass(frozen=True)
class ConfigProblem:
    file: str | None
    section: str | None
    key: str | None
    message: str
    warning: bool = False
    line: int | None = None

    @classmethod
    def at(
        cls,
        loc: Location | str | None,
        section: str | None,
        key: str | None,
        message: str,
        warning: bool = False,
    ) -> ConfigProblem:
        """A problem about ``key`` of ``section``, located where its value is written.

        A value inherited from ``[DEFAULT]`` is reported there (one problem for every section
        that inherits it, see ``dedupe``)."""
        if isinstance(loc, Location):
            where = section
            if loc.section == "DEFAULT" and section != "DEFAULT":
                where = "DEFAULT"
            return cls(loc.file, where, key, message, warning, loc.line)
        return cls(loc, section, key, message, warning)

    def __str__(self) -> str:
        where = self.file or "configuration"
        if self.line is not None:
            where += f":{self.line}"
        if self.section is not None:
            where += f": [{self.section}]"
        if self.key is not None:
            where += f" {self.key}"
        return f"{where}: {self.message}"


def dedupe(problems: Iterable[ConfigProblem]) -> list[ConfigProblem]:
    """One problem per (file, line, section, key, message): a bad ``[DEFAULT]`` line is reported
    once, saying how many sections inherit it, not once per queue."""
    seen: dict[tuple[object, ...], int] = {}
    counts: list[int] = []
    out: list[ConfigProblem] = []
    for problem in problems:
        ident = (problem.file, problem.line, problem.section, problem.key, problem.message, problem.warning)
        if ident in seen:
            counts[seen[ident]] += 1
            continue
        seen[ident] = len(out)
        out.append(problem)
        counts.append(1)
    return [
        replace(p, message=f"{p.message} (inherited by {n} sections)")
        if n > 1 and p.section == "DEFAULT"
        else p
        for p, n in zip(out, counts, strict=True)
    ]


class ConfigError(Exception):
    """One or more problems; ``str()`` lists one per line."""

    def __init__(self, problems: Iterable[ConfigProblem]) -> None:
        self.problems = dedupe(p for p in problems if not p.warning)
        super().__init__("\n".join(str(p) for p in self.problems))
