"""Scale: multiply by a factor, rounding up (a small n never scales to 0)."""

from __future__ import annotations

import math

from pydantic import Field

from autopyfactory.decide.base import SchedContext, SchedPlugin
from autopyfactory.plugins.options import PluginOptions


class Scale(SchedPlugin):
    """``ceil(n * factor)`` in plain float arithmetic, so results match APF to the last quirk
    (factor 0.0277777777778 with n = 36 gives 2)."""

    name = "Scale"

    class Options(PluginOptions):
        factor: float = Field(
            1.0, ge=0, le=1000, allow_inf_nan=False, description="n is multiplied by this and rounded up"
        )

    options: Options

    def calc(self, ctx: SchedContext, n: int) -> tuple[int, str]:
        factor = self.options.factor
        out = math.ceil(n * factor)
        return out, f"ceil({n} * {factor!r}) = {out}"
