"""Shared body of StatusTest and StatusOffline: a fixed number when the site has one status."""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field

from autopyfactory.config.bounds import COUNT_MAX
from autopyfactory.decide.base import SchedContext, SchedPlugin
from autopyfactory.decide.sched._common import NO_BATCH, NO_WMS
from autopyfactory.plugins.options import PluginOptions


class StatusPlugin(SchedPlugin):
    """``pilots`` when the site status is ``status``; otherwise n (any other status, e.g.
    ``brokeroff``, counts as online). Any missing info gives 0, as APF."""

    status: ClassVar[str] = ""

    class Options(PluginOptions):
        pilots: int = Field(
            0, ge=0, le=COUNT_MAX, description="pilots per cycle while the site has this status"
        )

    options: Options

    def calc(self, ctx: SchedContext, n: int) -> tuple[int, str]:
        if ctx.demand is None:
            return 0, f"{NO_WMS}: 0"
        if ctx.supply is None:
            return 0, f"{NO_BATCH}: 0"
        if ctx.site_status is None:
            return 0, "no site status: 0"
        if ctx.site_status == self.status:
            pilots = self.options.pilots
            return pilots, f"site status {ctx.site_status!r} -> pilots={pilots}"
        return n, f"site status {ctx.site_status!r}: {n} unchanged"
