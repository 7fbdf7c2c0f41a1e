"""PoolDemand: as many VMs as the pool's jobs need, taking VMs back when they need fewer.

For a queue whose WMS is a batch pool it feeds with VMs (``wmsstatusplugin = Slurm`` on the
partition its pilots wait in): the jobs waiting and running there need
``ceil((ready + running) / jobs_per_pilot)`` VMs; the queue has APF's R + P of them (running,
retiring and pending VMs). The difference is the decision, negative when the pool's demand drops,
so that with ``overlay.peaceful = False`` the factory cancels VMs that have not joined and
drains the rest (each is terminated once its node is drained and idle).

Why not ``Ready, KeepNRunning`` (the HTCondor example's chain): Ready subtracts the pending VMs
from the waiting jobs, so while VMs boot it gives 0 and KeepNRunning then takes the booting VMs
back; and once pilots run, nothing waits, so every running VM is retired. The jobs that run on
the pool count as demand here, and VMs still booting count as capacity.
"""

from __future__ import annotations

import math

from pydantic import Field

from autopyfactory.config.bounds import COUNT_MAX
from autopyfactory.decide.base import SchedContext, SchedPlugin
from autopyfactory.decide.sched._common import NO_BATCH, NO_WMS, pending, running
from autopyfactory.plugins.options import PluginOptions


class PoolDemand(SchedPlugin):
    """``ceil((ready + running jobs) / jobs_per_pilot) - (R + P)``; a source plugin (its input is
    ignored); 0 when demand or supply is missing or stale, so nothing is taken back blind."""

    name = "PoolDemand"

    class Options(PluginOptions):
        jobs_per_pilot: int = Field(
            1, ge=1, le=COUNT_MAX, description="jobs one VM runs at once (its node's job slots)"
        )
        running: bool = Field(
            True, description="count the jobs running in the pool as demand (False: waiting jobs only)"
        )

    options: Options

    def calc(self, ctx: SchedContext, n: int) -> tuple[int, str]:
        if ctx.demand is None:
            return 0, f"{NO_WMS}: 0"
        if ctx.supply is None:
            return 0, f"{NO_BATCH}: 0"
        ready = max(0, ctx.demand.ready)
        jobs_running = max(0, ctx.demand.running) if self.options.running else 0
        per = self.options.jobs_per_pilot
        need = math.ceil((ready + jobs_running) / per)
        p, r = pending(ctx.supply), running(ctx.supply)
        out = need - (r + p)
        jobs = f"ready={ready} + running={jobs_running}" if self.options.running else f"ready={ready}"
        need_text = f"ceil(({jobs}) / {per})" if per != 1 else jobs
        return out, f"need {need_text} = {need} - (running={r} + pending={p}) = {out}"
