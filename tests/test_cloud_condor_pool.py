"""VMs joining an HTCondor pool: join detection and peaceful drain through the existing collector
interface (``plugins/batch/condor/schedd.ScheddApi``), here the in-process stand-in (no HTCondor
daemons run here), with the VMs themselves on moto's EC2."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from autopyfactory.model import PilotState, PilotTags
from autopyfactory.plugins.batch.condor import schedd as sd
from autopyfactory.plugins.cloud.ec2 import EC2Status, EC2Submit
from autopyfactory.plugins.cloud.lifecycle import NodeState
from autopyfactory.plugins.cloud.pools import CondorPool, PoolKind, PoolSpec
from condor_standin import StandinPool
from tests.components_cloud import EC2Server

COLLECTOR = "cm.example.org:9618"


@pytest.fixture
def pool() -> Iterator[StandinPool]:
    standin = StandinPool()
    standin.add_schedd(sd.Address(collector=COLLECTOR))
    previous = sd.set_connector(standin.connect)
    try:
        yield standin
    finally:
        sd.set_connector(previous)


def busy(pool: StandinPool, slot: str) -> None:
    for ad in pool.startds:
        if ad.eval("Name") == slot:
            ad["State"], ad["Activity"] = "Claimed", "Busy"


def states(found: dict[str, Any]) -> dict[str, tuple[str, NodeState]]:
    return {iid: (n.name, n.state) for iid, n in found.items()}


def test_nodes_drain_and_states_from_the_collector(pool: StandinPool) -> None:
    pool.add_node("vm-1.example.org", "i-1")
    pool.add_node("vm-2.example.org", "i-2", slots=2)
    pool.add_node("static.example.org")  # no instance id: never a VM
    busy(pool, "slot1@vm-2.example.org")
    condor = CondorPool(PoolSpec(PoolKind.CONDOR, collector=COLLECTOR))
    found = condor.nodes(["i-1", "i-2", "i-3"])
    assert states(found) == {
        "i-1": ("vm-1.example.org", NodeState.IDLE),
        "i-2": ("vm-2.example.org", NodeState.BUSY),
    }
    condor.drain(list(found.values()), "apf retire")
    assert pool.peaceful == {"vm-1.example.org", "vm-2.example.org"}
    # the idle startd exited (master only): drained; the busy one finishes its job first
    assert states(condor.nodes(["i-1", "i-2"])) == {
        "i-1": ("vm-1.example.org", NodeState.DRAINED),
        "i-2": ("vm-2.example.org", NodeState.BUSY),
    }
    pool.free_slot("slot1@vm-2.example.org")
    assert condor.nodes(["i-2"])["i-2"].state is NodeState.DRAINED
    pool.terminate("i-1")
    assert condor.nodes(["i-1"]) == {}  # gone from the collector


def test_ec2_vms_in_an_htcondor_pool_leave_through_their_node(
    pool: StandinPool, ec2: EC2Server, make_queue: Any, make_factory: Any
) -> None:
    ctx = make_factory(
        "cloudtest",
        auth={
            "moto": (
                "CloudKey",
                {"cloudkey.access_key_id": "testing", "cloudkey.secret_access_key": "testing"},
            )
        },
    )
    q = make_queue(
        "CONDORVMS",
        {
            "batchsubmit.ec2.endpoint_url": ec2.url,
            "batchsubmit.ec2.region": ec2.region,
            "batchsubmit.ec2.authprofile": "moto",
            "batchsubmit.ec2.ami": ec2.image(),
            "batchsubmit.ec2.instance_type": "t3.micro",
            "batchsubmit.ec2.pool": "condor",
            "batchsubmit.ec2.pool.collectorhost": "cm.example.org",
            "batchsubmit.ec2.pool.attribute": "EC2InstanceID",
        },
        submit="EC2",
    )
    sub = EC2Submit(q, q.batchsubmit.options, ctx)
    status = EC2Status(EC2Status.endpoint(q, ctx), ctx)
    status.register(q)
    a, b = (
        p.backend_id for p in sub.submit(2, PilotTags("cloudtest", "CONDORVMS", "0123456789ab"), time.time())
    )
    assert {p.state for p in status.poll(time.time()).pilots} == {PilotState.PENDING}  # not joined yet
    pool.add_node("vm-a", a)
    pool.add_node("vm-b", b)
    busy(pool, "slot1@vm-b")
    pilots = {p.backend_id: p for p in status.poll(time.time()).pilots}
    assert {k: (p.state, p.node) for k, p in pilots.items()} == {
        a: (PilotState.RUNNING, "vm-a"),
        b: (PilotState.RUNNING, "vm-b"),
    }
    sub.retire([a, b])
    assert pool.peaceful == {"vm-a", "vm-b"}

    def cycle() -> dict[str, str]:
        now = time.time()
        sub.cleanup(list(status.poll(now).pilots), now)
        return {i["InstanceId"]: i["State"]["Name"] for i in ec2.instances()}

    assert cycle() == {a: "terminated", b: "running"}  # vm-a drained at once; vm-b runs a job
    pool.free_slot("slot1@vm-b")
    assert cycle() == {a: "terminated", b: "terminated"}
