"""WeightedActivated: Ready with weights on demand and pending (APF's plugin, working)."""

from __future__ import annotations

from pydantic import Field

from autopyfactory.decide.base import SchedContext, SchedPlugin
from autopyfactory.decide.sched._common import NO_BATCH, NO_WMS, pending
from autopyfactory.plugins.options import PluginOptions


class WeightedActivated(SchedPlugin):
    """``max(0, int(A * activated) - int(P * pending))``; a source plugin."""

    name = "WeightedActivated"

    class Options(PluginOptions):
        activated: float = Field(1.0, ge=0, le=1000, allow_inf_nan=False, description="weight of ready jobs")
        pending: float = Field(
            1.0, ge=0, le=1000, allow_inf_nan=False, description="weight of pending pilots"
        )

    options: Options

    def calc(self, ctx: SchedContext, n: int) -> tuple[int, str]:
        if ctx.demand is None:
            return 0, f"{NO_WMS}: 0"
        if ctx.supply is None:
            return 0, f"{NO_BATCH}: 0"
        a = ctx.demand.ready
        p = pending(ctx.supply)
        wa, wp = self.options.activated, self.options.pending
        raw = int(a * wa) - int(p * wp)
        out = max(0, raw)
        reason = f"int(ready={a} * {wa!r}) - int(pending={p} * {wp!r}) = {raw}"
        if out != raw:
            reason += " -> 0"
        return out, reason
