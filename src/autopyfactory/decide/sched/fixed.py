"""Fixed: the same number of pilots every cycle."""

from __future__ import annotations

from pydantic import Field

from autopyfactory.config.bounds import COUNT_MAX
from autopyfactory.decide.base import SchedContext, SchedPlugin
from autopyfactory.plugins.options import PluginOptions


class Fixed(SchedPlugin):
    """A source plugin: ``pilotspercycle`` when set and non-zero, else 0; its input is ignored."""

    name = "Fixed"

    class Options(PluginOptions):
        pilotspercycle: int | None = Field(
            None, ge=0, le=COUNT_MAX, description="pilots every cycle (input ignored); unset or 0 gives 0"
        )

    options: Options

    def calc(self, ctx: SchedContext, n: int) -> tuple[int, str]:
        value = self.options.pilotspercycle
        if not value:
            return 0, f"pilotspercycle={value}: 0"
        return value, f"pilotspercycle={value}"
