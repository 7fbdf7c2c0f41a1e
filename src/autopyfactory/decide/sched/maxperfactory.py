"""MaxPerFactory: keep the pilots of every queue at one batch endpoint under a factory-wide cap."""

from __future__ import annotations

from pydantic import Field

from autopyfactory.config.bounds import COUNT_MAX
from autopyfactory.decide.base import SchedContext, SchedPlugin
from autopyfactory.plugins.options import PluginOptions


class MaxPerFactory(SchedPlugin):
    """T = pending + running of all queues at this queue's batch endpoint (``ctx.factory_active``).
    ``T > max`` -> 0; ``n + T > max`` -> ``max - T``; else n."""

    name = "MaxPerFactory"

    class Options(PluginOptions):
        # Our own per-queue override; APF reads only [Factory] maxperfactory.maximum
        maximum: int | None = Field(
            None,
            ge=0,
            le=COUNT_MAX,
            description="active pilots at the batch endpoint at most ([Factory] maxperfactory.maximum)",
        )

    options: Options

    def calc(self, ctx: SchedContext, n: int) -> tuple[int, str]:
        maximum = self.options.maximum
        source = "sched.maxperfactory.maximum"
        if maximum is None:
            maximum = ctx.factory_max
            source = "[Factory] maxperfactory.maximum"
        if maximum is None:
            # APF compares int > None here (always True in Python 2) and so always gives 0; an
            # unset cap means no cap.
            return n, f"no maximum set: {n} unchanged"
        total = ctx.factory_active
        if total is None:
            return 0, "no factory-wide batch info (missing or stale): 0"
        if total > maximum:
            return 0, f"factory active={total} > {source}={maximum} -> 0"
        if n + total > maximum:
            out = maximum - total
            return out, f"{n} + factory active={total} > {source}={maximum} -> {maximum} - {total} = {out}"
        return n, f"{n} + factory active={total} <= {source}={maximum}: unchanged"
