"""MaxPerCycle: submit at most ``maximum`` pilots per cycle."""

from __future__ import annotations

from pydantic import Field

from autopyfactory.config.bounds import COUNT_MAX
from autopyfactory.decide.base import SchedContext, SchedPlugin
from autopyfactory.plugins.options import PluginOptions


class MaxPerCycle(SchedPlugin):
    name = "MaxPerCycle"

    class Options(PluginOptions):
        maximum: int | None = Field(
            None, ge=0, le=COUNT_MAX, description="pilots submitted per cycle at most"
        )

    options: Options

    def calc(self, ctx: SchedContext, n: int) -> tuple[int, str]:
        maximum = self.options.maximum
        if maximum is None:
            return n, f"no maximum set: {n} unchanged"
        if n > maximum:
            return maximum, f"{n} > maximum={maximum} -> {maximum}"
        return n, f"{n} <= maximum={maximum}: unchanged"
