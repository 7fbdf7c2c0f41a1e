"""MaxPending: keep at most ``maximum`` pilots pending at once."""

from __future__ import annotations

from pydantic import Field

from autopyfactory.config.bounds import COUNT_MAX
from autopyfactory.decide.base import SchedContext, SchedPlugin
from autopyfactory.decide.sched._common import NO_BATCH, pending
from autopyfactory.plugins.options import PluginOptions


class MaxPending(SchedPlugin):
    """``min(n, maximum - P)``, except that nothing is capped while no pilot is pending (APF)."""

    name = "MaxPending"

    class Options(PluginOptions):
        maximum: int | None = Field(
            None, ge=0, le=COUNT_MAX, description="pending pilots at most (no cap while none is pending)"
        )
        allow_negative: bool = Field(True, description="above the maximum, a negative n takes pilots back")

    options: Options

    def calc(self, ctx: SchedContext, n: int) -> tuple[int, str]:
        if ctx.supply is None:
            # APF passes n through when batch info is missing (unlike most status-driven plugins)
            return n, f"{NO_BATCH}: {n} unchanged"
        p = pending(ctx.supply)
        if p == 0:
            return n, f"pending=0: no cap while nothing is pending, {n} unchanged"
        maximum = self.options.maximum
        if maximum is None:
            return n, f"no maximum set: {n} unchanged"
        cap = maximum - p
        reason = f"pending={p}, maximum={maximum} -> cap {cap}"
        if cap < 0 and not self.options.allow_negative:
            cap = 0
            reason += ", allow_negative=False -> cap 0"
        out = min(n, cap)
        return out, f"{reason}; min({n}, {cap}) = {out}"
