"""MinPending: keep at least ``minimum`` pilots pending."""

from __future__ import annotations

from pydantic import Field

from autopyfactory.config.bounds import COUNT_MAX
from autopyfactory.decide.base import SchedContext, SchedPlugin
from autopyfactory.decide.sched._common import NO_BATCH, pending
from autopyfactory.plugins.options import PluginOptions


class MinPending(SchedPlugin):
    """``max(n, minimum - P)``."""

    name = "MinPending"

    class Options(PluginOptions):
        minimum: int | None = Field(None, ge=0, le=COUNT_MAX, description="keep at least this many pending")

    options: Options

    def calc(self, ctx: SchedContext, n: int) -> tuple[int, str]:
        if ctx.supply is None:
            # APF crashes here and the cycle submits nothing; we say 0 explicitly instead.
            return 0, f"{NO_BATCH}: 0 (APF would abort the cycle here)"
        minimum = self.options.minimum
        if minimum is None:
            return n, f"no minimum set: {n} unchanged"
        p = pending(ctx.supply)
        floor = minimum - p
        out = max(n, floor)
        return out, f"pending={p}, minimum={minimum} -> floor {floor}; max({n}, {floor}) = {out}"
