"""MaxToRun: at most ``maximum`` pilots pending plus running; negative means scale down."""

from __future__ import annotations

from pydantic import Field

from autopyfactory.config.bounds import COUNT_MAX
from autopyfactory.decide.base import SchedContext, SchedPlugin
from autopyfactory.decide.sched._common import NO_BATCH, pending, running
from autopyfactory.plugins.options import PluginOptions


class MaxToRun(SchedPlugin):
    """``min(n, maximum - (P + R))``, which may be negative."""

    name = "MaxToRun"

    class Options(PluginOptions):
        maximum: int | None = Field(
            None, ge=0, le=COUNT_MAX, description="pending + running pilots at most (can give a negative n)"
        )

    options: Options

    def calc(self, ctx: SchedContext, n: int) -> tuple[int, str]:
        maximum = self.options.maximum
        if maximum is None:
            return n, f"no maximum set: {n} unchanged"
        if ctx.supply is None:
            return 0, f"{NO_BATCH}: 0"
        p = pending(ctx.supply)
        r = running(ctx.supply)
        cap = maximum - (p + r)
        out = min(n, cap)
        return out, f"maximum={maximum} - (pending={p} + running={r}) = cap {cap}; min({n}, {cap}) = {out}"
