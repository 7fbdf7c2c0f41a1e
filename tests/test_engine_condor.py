"""The two-queue cloud setup through the real engine (Factory.step), against the schedd stand-in.

Queue PAYLOAD (Sim WMS, CondorLocal) puts pilots into the local pool; queue CLOUD watches that
pool as its WMS (``wmsstatusplugin = Condor``) and runs CondorEC2 VMs for the idle payload. When
no payload waits any more the engine retires the nodes peacefully, and removes each VM job only
after its node reports retired.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from autopyfactory.engine.factory import Factory
from autopyfactory.plugins.batch.condor import schedd as sd
from autopyfactory.store.api import Store
from condor_standin import FACTORY_ID, StandinPool, load_config

QUEUES = """\
[DEFAULT]
enabled = True
apfqueue.sleep = 30
batchstatusplugin = Condor
executable = /usr/libexec/apf-wrapper.sh

[PAYLOAD]
wmsqueue = SITE_A
wmsstatusplugin = Sim
# four payload jobs wanted for the first 200 s, then none
wmsstatus.sim.steps = 0:4, 200:0
wmsstatus.sim.consume = True
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


@pytest.fixture
def pool() -> Iterator[StandinPool]:
    pool = StandinPool(now=1_709_280_000.0)
    pool.add_schedd()
    previous = sd.set_connector(pool.connect)
    yield pool
    sd.set_connector(previous)


def test_engine_drives_local_pool_wms_and_ec2_vms(tmp_path: Path, pool: StandinPool) -> None:
    (tmp_path / "ak").write_text("AKIAEXAMPLE")
    (tmp_path / "sk").write_text("secret")
    config = load_config(tmp_path, QUEUES.format(access=tmp_path / "ak", secret=tmp_path / "sk"))
    factory = Factory(config, clock=lambda: pool.now)
    assert len(factory.pollers) == 3  # one schedd poller shared by both queues, two WMS pollers
    schedd = pool.schedds[sd.Address()]

    def jobs_of(queue: str) -> list[str]:
        return sorted(j for j, ad in schedd.jobs.items() if ad.eval("MATCH_APF_QUEUE") == queue)

    def step(seconds: float) -> dict[str, int]:
        pool.now += seconds
        return {p.queue: p.decision.n for p in factory.step(poll_all=True)}

    assert step(0)["PAYLOAD"] == 4 and len(jobs_of("PAYLOAD")) == 4
    decided = step(60)
    assert decided == {"PAYLOAD": 0, "CLOUD": 4}  # four idle payload jobs -> four VMs
    vms = jobs_of("CLOUD")
    assert len(vms) == 4

    for i, vm in enumerate(vms):
        schedd.boot_vm(vm, f"i-{i:04d}")
    matched = schedd.negotiate()
    assert len(matched) == 4
    decided = step(300)
    assert decided["CLOUD"] == -4 and decided["PAYLOAD"] == 0  # payload runs: nothing waits
    assert len(pool.peaceful) == 4 and pool.terminated == []  # drained, not killed

    assert step(60)["CLOUD"] == 0  # retiring nodes are not counted again
    for job, _ in matched[:2]:
        schedd.complete(job)
    step(60)
    assert len(pool.terminated) == 2 and len(jobs_of("CLOUD")) == 2  # only retired nodes go
    for job, _ in matched[2:]:
        schedd.complete(job)
    step(60)
    assert jobs_of("CLOUD") == [] and len(pool.terminated) == 4

    step(60)  # the removed VM jobs are gone from the schedd: the store no longer counts them active
    store = Store(config.settings.database_url())
    cloud = [p["state"] for p in store.pilots(FACTORY_ID, "CLOUD")]
    assert len(cloud) == 4 and not {"pending", "running", "retiring"} & set(cloud)
    assert [i["status"] for i in store.intents(FACTORY_ID)] == ["submitted", "submitted"]
    factory.shutdown()
