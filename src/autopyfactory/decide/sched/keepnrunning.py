"""KeepNRunning: hold the queue at a target number of pilots, scaling down past it."""

from __future__ import annotations

from pydantic import Field

from autopyfactory.config.bounds import COUNT_MAX
from autopyfactory.decide.base import SchedContext, SchedPlugin
from autopyfactory.decide.sched._common import NO_BATCH, pending
from autopyfactory.plugins.options import PluginOptions


class KeepNRunning(SchedPlugin):
    """``keep_running - (R + P)``; without ``keep_running`` the chain's n is the target, so an
    absolute number from upstream becomes a delta. Retiring pilots are not subtracted (APF)."""

    name = "KeepNRunning"

    class Options(PluginOptions):
        keep_running: int | None = Field(
            None,
            ge=0,
            le=COUNT_MAX,
            description="pilots to keep (pending + running); unset: the input is the target",
        )

    options: Options

    def calc(self, ctx: SchedContext, n: int) -> tuple[int, str]:
        if ctx.supply is None:
            return 0, f"{NO_BATCH}: 0"
        # a bogus negative count must not inflate the result
        r = max(0, ctx.supply.running)
        p = max(0, pending(ctx.supply))
        keep = self.options.keep_running
        if keep is None:
            target, label = n, f"target {n} (from the chain)"
        else:
            target, label = keep, f"keep_running={keep}"
        out = target - (r + p)
        return out, f"{label} - (running={r} + pending={p}) = {out}"
