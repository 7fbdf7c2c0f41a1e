"""Config problems: each names the file, section and key it is about."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class ConfigProblem:
    file: str | None
    section: str | None
    key: str | None
    message: str
    warning: bool = False

    def __str__(self) -> str:
        where = self.file or "<config>"
        if self.section is not None:
            where += f": [{self.section}]"
        if self.key is not None:
            where += f" {self.key}"
        return f"{where}: {self.message}"


class ConfigError(Exception):
    """One or more problems; ``str()`` lists one per line."""

    def __init__(self, problems: Iterable[ConfigProblem]) -> None:
        self.problems = [p for p in problems if not p.warning]
        super().__init__("\n".join(str(p) for p in self.problems))
