"""The two-queue cloud setup (APF's local-pool WMS + CondorEC2), through the scheduler chain.

Queue PAYLOAD (CondorLocal) submits pilots into the local schedd (the stand-in). Queue CLOUD
watches that schedd as its WMS (``wmsstatusplugin = Condor``, ``wmsqueue = PAYLOAD``) and
submits CondorEC2 VM jobs into the same schedd. The VMs join the pool and run the payload; when
no payload waits any more, the chain goes negative, the nodes are retired peacefully, and each
VM job is removed only once its node reports retired.

Everything here is the real code: config loader, plugins, sched plugins (``load("sched", ...)``),
``run_chain``, ``aggregate`` and ``select_for_retire``; only the pool is the stand-in.
TODO(lead): an engine-level version (Factory.step with the stand-in connector) belongs with the
engine tests.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from autopyfactory.decide.base import SchedContext, run_chain
from autopyfactory.decide.retire import select_for_retire
from autopyfactory.decide.supply import aggregate
from autopyfactory.model import Demand, PilotState, PilotTags, Supply
from autopyfactory.plugins.base import load
from autopyfactory.plugins.batch.condor import schedd as sd
from condor_standin import FACTORY_ID, StandinPool, context, load_config, status_poller, submitter, wms_poller

QUEUES = """\
[DEFAULT]
enabled = True
batchstatusplugin = Condor
executable = /usr/libexec/apf-wrapper.sh

[PAYLOAD]
wmsqueue = SITE_A
batchsubmitplugin = CondorLocal
schedplugin = Ready, MaxPerCycle
sched.maxpercycle.maximum = 10

[CLOUD]
wmsqueue = PAYLOAD
wmsstatusplugin = Condor
batchsubmitplugin = CondorEC2
batchsubmit.condorec2.gridresource = https://ec2.us-east-1.amazonaws.com
batchsubmit.condorec2.ami_id = ami-0123456789abcdef0
batchsubmit.condorec2.instance_type = m5.large
batchsubmit.condorec2.access_key_id = {access}
batchsubmit.condorec2.secret_access_key = {secret}
batchsubmit.condorec2.overlay.peaceful = False
schedplugin = Ready, KeepNRunning
"""


class Cycle:
    """One queue's decide-and-act step, the way the engine composes it."""

    def __init__(self, cfg, ctx, name: str) -> None:  # type: ignore[no-untyped-def]
        self.qc = cfg.queues[name]
        self.name = name
        self.sched = [load("sched", spec.name)(spec.options) for spec in self.qc.sched]  # type: ignore[call-arg]
        self.status = status_poller(cfg, ctx, name)
        self.wms = wms_poller(cfg, ctx, name) if self.qc.wmsstatus else None
        self.plugin = submitter(cfg, ctx, name)
        self.intents = 0

    def run(self, now: float, demand: Demand | None = None) -> tuple[int, list]:  # type: ignore[type-arg]
        if self.wms is not None:
            snap = self.wms.poll(now, frozenset({self.qc.wmsqueue}))
            demand = snap.demands.get(self.qc.wmsqueue) or Demand(self.qc.wmsqueue, time=now)
        bsnap = self.status.poll(now)
        pilots = [p for p in bsnap.pilots if p.queue == self.name]
        supply = aggregate(pilots, bsnap.time).get(self.name) or Supply(self.name, time=bsnap.time)
        ctx = SchedContext(self.name, now, demand, supply, demand.site_status if demand else None)
        n, _steps = run_chain(self.sched, ctx)
        if n > 0:
            self.intents += 1
            self.plugin.submit(n, PilotTags(FACTORY_ID, self.name, f"{self.name}-{self.intents}"), now)
        elif n < 0 and not self.plugin.options.overlay_peaceful:
            cancel, retire = select_for_retire(-n, pilots, self.plugin.options.overlay_killorder)
            if cancel:
                self.plugin.cancel(cancel)
            if retire:
                self.plugin.retire(retire)
        self.plugin.cleanup(pilots, now)
        return n, pilots


@pytest.fixture
def pool() -> StandinPool:
    pool = StandinPool(now=1_709_280_000.0)
    pool.add_schedd()
    previous = sd.set_connector(pool.connect)
    yield pool
    sd.set_connector(previous)


def test_local_pool_as_wms_drives_ec2_vms_retired_peacefully(tmp_path: Path, pool: StandinPool) -> None:
    (tmp_path / "ak").write_text("AKIAEXAMPLE")
    (tmp_path / "sk").write_text("secret")
    cfg = load_config(tmp_path, QUEUES.format(access=tmp_path / "ak", secret=tmp_path / "sk"))
    ctx = context(cfg)
    payload, cloud = Cycle(cfg, ctx, "PAYLOAD"), Cycle(cfg, ctx, "CLOUD")
    schedd = pool.schedds[sd.Address()]

    def jobs_of(queue: str) -> list[str]:
        return sorted(j for j, ad in schedd.jobs.items() if ad.eval("MATCH_APF_QUEUE") == queue)

    # 1. four ready jobs upstream: the payload queue submits four pilots into the local pool
    n, _ = payload.run(pool.now, Demand("SITE_A", ready=4, site_status="online"))
    assert n == 4 and len(jobs_of("PAYLOAD")) == 4
    pool.now += 60
    n, _ = payload.run(pool.now, Demand("SITE_A", ready=4, site_status="online"))
    assert n == 0  # they are pending now

    # 2. the cloud queue sees four idle payload jobs as demand and starts four VMs
    n, _ = cloud.run(pool.now)
    assert n == 4
    vms = jobs_of("CLOUD")
    assert len(vms) == 4 and all(schedd.jobs[v].eval("GridResource").startswith("ec2 ") for v in vms)

    # 3. the VMs boot and join the pool; the payload runs on them
    for i, vm in enumerate(vms):
        schedd.boot_vm(vm, f"i-{i:04d}")
    matched = schedd.negotiate()
    assert len(matched) == 4
    pool.now += 300
    n, pilots = cloud.run(pool.now)
    assert n == -4  # no payload waits: Ready 0, KeepNRunning 0 - 4 running
    assert len(pool.peaceful) == 4  # condor_off -peaceful sent to every node
    assert all(p.state is PilotState.RUNNING for p in pilots)  # as polled before the retire
    assert pool.terminated == [] and jobs_of("CLOUD") == vms  # busy nodes: nothing removed

    # 4. the next cycle sees them retiring and asks for nothing more
    pool.now += 60
    n, pilots = cloud.run(pool.now)
    assert n == 0 and {p.state for p in pilots} == {PilotState.RETIRING}
    assert len([c for c in pool.calls if c.op == "condor_off"]) == 4

    # 5. two payloads finish: their nodes retire; only those two VM jobs are removed
    finished = [job for job, _ in matched[:2]]
    for job in finished:
        schedd.complete(job)
    gone = {schedd.jobs[v].eval("EC2InstanceName") for v in vms[:2]}
    pool.now += 60
    cloud.run(pool.now)
    assert set(pool.terminated) == gone
    assert jobs_of("CLOUD") == vms[2:]

    # 6. the rest finish; every VM job goes, the payload queue is empty
    for job, _ in matched[2:]:
        schedd.complete(job)
    pool.now += 60
    cloud.run(pool.now)
    assert jobs_of("CLOUD") == [] and len(pool.terminated) == 4
    assert jobs_of("PAYLOAD") == []
    assert pool.masters == [] and pool.startds == []

    # every schedd query was constrained and projected
    for call in schedd.queries():
        assert call.constraint not in (None, "", "true", "True") and call.projection
