"""``wmsstatusplugin = SlurmPowerSave``: Slurm's power saving as the workload system.

Slurm calls ``ResumeProgram`` (``apf powersave resume``) with the ``State=CLOUD`` nodes it wants
powered up; the client leaves a request in the spool. The demand of a partition (``wmsqueue`` =
the partition name) is the nodes that have a resume request and that Slurm still shows
``POWERING_UP``: ``ready``, the VMs needed. A request for a node already up, failed or powered
down again counts for nothing and is removed (``powersave.handled_resumes``). ``running`` is the
partition's CLOUD nodes that are up, ``failed`` those marked down. One spool listing and one
``scontrol show node -o`` per poll, locally or on the head node over SSH.

With ``schedplugin = Ready`` the chain asks for ``waiting - pending VMs``; the queue's VMs pair
with the nodes through ``batchsubmit.<cloud>.pool = slurm-powersave`` (docs/slurm-powersave.md).
"""

from __future__ import annotations

import logging
from collections.abc import Hashable
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import Field

from autopyfactory.model import Demand, SiteStatus, WmsSnapshot
from autopyfactory.plugins.base import BackendError, FactoryContext, WmsStatusPlugin
from autopyfactory.plugins.cloud import powersave as ps
from autopyfactory.plugins.cloud import spool
from autopyfactory.plugins.cloud.pools import parse_power_nodes
from autopyfactory.plugins.transport.base import RemoteOptions, Transport
from autopyfactory.plugins.transport.pool import POOL, transport_for

if TYPE_CHECKING:
    from autopyfactory.config.models import QueueConfig

log = logging.getLogger(__name__)


class SlurmPowerSaveOptions(RemoteOptions):
    slurm_conf: str | None = Field(None, description="SLURM_CONF of the cluster; default: Slurm's own")
    spool: str | None = Field(
        None, description="the spool apf powersave writes; default: <factory.statedir>/powersave"
    )


class SlurmPowerSave(WmsStatusPlugin):
    name = "SlurmPowerSave"
    Options = SlurmPowerSaveOptions
    default_interval = 5.0  # a node waits for its VM: look often, it is one local command

    @classmethod
    def endpoint(cls, queue: QueueConfig, factory: FactoryContext) -> Hashable:
        o = queue.plugin_options("wmsstatus")
        assert isinstance(o, SlurmPowerSaveOptions)
        folder = Path(o.spool).expanduser() if o.spool else factory.state_dir / "powersave"
        return (cls.name, o.host or None, o.user, o.port, o.authprofile, o.timeout, o.slurm_conf, str(folder))

    def __init__(self, endpoint: Hashable, factory: FactoryContext) -> None:
        super().__init__(endpoint, factory)
        _, host, user, port, authprofile, timeout, slurm_conf, folder = endpoint  # type: ignore[misc]
        self.slurm_conf: str | None = slurm_conf
        self.timeout: float = timeout
        self.spool = Path(folder)
        self.where = f"{host}:{port}" if host else "local"
        self._transport: Transport = transport_for(
            factory, host, user=user, port=port, authprofile=authprofile, where="wmsstatus.slurmpowersave"
        )

    def describe_endpoint(self) -> str:
        return f"{self.kind} {self.name} at {self.where} ({self.slurm_conf or 'default slurm.conf'}), spool {self.spool}"

    def poll(self, now: float, wmsqueues: frozenset[str]) -> WmsSnapshot:
        resumes = spool.read(self.spool, spool.Op.RESUME)  # before the node states: see plan_power
        prefix = ["env", f"SLURM_CONF={self.slurm_conf}"] if self.slurm_conf else []
        res = self._transport.run([*prefix, "scontrol", "show", "node", "-o"], timeout=self.timeout)
        if not res.ok:
            raise BackendError(
                self.describe_endpoint(), f"scontrol show node failed (exit {res.rc}): {res.brief()}"
            )
        nodes = parse_power_nodes(res.stdout)
        per_partition = ps.demand(nodes, ps.requested_nodes(resumes))
        handled = ps.handled_resumes(resumes, nodes, now)
        if handled:
            spool.remove(handled)
            log.info(
                "%s: %d resume requests handled (%s)",
                self.name,
                len(handled),
                ",".join(sorted({n for r in handled for n in r.nodes})),
            )
        demands = {
            part: Demand(
                wmsqueue=part,
                ready=d.waiting,
                running=d.up,
                failed=d.down,
                site_status=SiteStatus.ONLINE.value,
                time=now,
            )
            for part, d in per_partition.items()
        }
        for q in wmsqueues - demands.keys():
            demands[q] = Demand(wmsqueue=q, site_status=SiteStatus.ONLINE.value, time=now)
        return WmsSnapshot(time=now, demands=demands)

    def close(self) -> None:
        POOL.release(self._transport)
