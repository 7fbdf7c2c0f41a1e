"""xRSL job descriptions for ARC CEs, built as data (pure, no I/O).

A description is a list of relations ``(attribute = value)``; values are quoted xRSL strings or
lists of them. ``multi_job`` joins several descriptions into one ``+(&...)(&...)`` document so
that n pilots go to the CE in one request.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

Value = str | int | Sequence["Value"]

# attributes the factory sets itself; a queue key may not set them a second time
OWNED = frozenset(
    {"executable", "arguments", "jobname", "stdout", "stderr", "environment", "delegationid", "inputfiles",
     "outputfiles"}
)  # fmt: skip
_ATTRIBUTE = re.compile(r"\(\s*([A-Za-z_][A-Za-z0-9_]*)\s*(?:=|!=|<|>)")


def quote(value: str) -> str:
    """An xRSL string literal (a quote inside is doubled)."""
    return '"' + value.replace('"', '""') + '"'


def render_value(value: Value) -> str:
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return quote(value)
    return "(" + " ".join(render_value(v) for v in value) + ")"


@dataclass
class Description:
    """One job: ordered relations plus raw relation text from the operator's RSL keys."""

    relations: list[tuple[str, list[Value]]] = field(default_factory=list)
    raw: str = ""

    def add(self, attribute: str, *values: Value) -> Description:
        self.relations.append((attribute, list(values)))
        return self

    def get(self, attribute: str) -> list[Value] | None:
        for name, values in self.relations:
            if name == attribute:
                return values
        return None

    def render(self) -> str:
        body = "".join(
            f"({name}={' '.join(render_value(v) for v in values)})" for name, values in self.relations
        )
        return "&" + body + self.raw


def multi_job(descriptions: Sequence[Description]) -> str:
    """One document for many jobs (A-REX answers with one result per job, in order)."""
    if len(descriptions) == 1:
        return descriptions[0].render()
    return "+" + "".join(f"({d.render()})" for d in descriptions)


def attributes_in(raw: str) -> set[str]:
    """Attribute names of relations in raw xRSL text (lower case)."""
    return {m.group(1).lower() for m in _ATTRIBUTE.finditer(raw)}


def environment(pairs: Mapping[str, str]) -> list[Value]:
    """``(environment=("A" "1")("B" "2"))``."""
    return [[name, value] for name, value in pairs.items()]
