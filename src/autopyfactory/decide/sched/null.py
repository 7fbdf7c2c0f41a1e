"""Null: never submit (a source plugin that gives 0)."""

from __future__ import annotations

from autopyfactory.decide.base import SchedContext, SchedPlugin


class Null(SchedPlugin):
    name = "Null"

    def calc(self, ctx: SchedContext, n: int) -> tuple[int, str]:
        return 0, "always 0"
