"""Ready: as many pilots as there are ready (activated) jobs, minus those already pending."""

from __future__ import annotations

from pydantic import Field

from autopyfactory.config.bounds import COUNT_MAX
from autopyfactory.decide.base import SchedContext, SchedPlugin
from autopyfactory.decide.sched._common import NO_BATCH, NO_WMS, pending
from autopyfactory.plugins.options import PluginOptions


class Ready(SchedPlugin):
    """``max(0, (A - offset) - P)``; a source plugin: its input is ignored."""

    name = "Ready"

    class Options(PluginOptions):
        offset: int = Field(
            0, ge=-COUNT_MAX, le=COUNT_MAX, description="ready jobs not to cover (negative: extra pilots)"
        )

    options: Options

    def calc(self, ctx: SchedContext, n: int) -> tuple[int, str]:
        if ctx.demand is None:
            return 0, f"{NO_WMS}: 0"
        if ctx.supply is None:
            return 0, f"{NO_BATCH}: 0"
        ready = ctx.demand.ready
        offset = self.options.offset
        p = pending(ctx.supply)
        raw = (ready - offset) - p
        out = max(0, raw)
        reason = f"ready={ready} - offset={offset} - pending={p} = {raw}"
        if out != raw:
            reason += " -> 0"
        return out, reason
