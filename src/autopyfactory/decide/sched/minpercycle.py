"""MinPerCycle: at least ``minimum`` per cycle (a negative minimum bounds the scale-down)."""

from __future__ import annotations

from pydantic import Field

from autopyfactory.config.bounds import COUNT_MAX
from autopyfactory.decide.base import SchedContext, SchedPlugin
from autopyfactory.plugins.options import PluginOptions


class MinPerCycle(SchedPlugin):
    name = "MinPerCycle"

    class Options(PluginOptions):
        minimum: int | None = Field(
            None,
            ge=-COUNT_MAX,
            le=COUNT_MAX,
            description="n is at least this (may be negative, as in AutoPyFactory)",
        )

    options: Options

    def calc(self, ctx: SchedContext, n: int) -> tuple[int, str]:
        minimum = self.options.minimum
        if minimum is None:
            return n, f"no minimum set: {n} unchanged"
        if n < minimum:
            return minimum, f"{n} < minimum={minimum} -> {minimum}"
        return n, f"{n} >= minimum={minimum}: unchanged"
