"""The VM life cycle with a real pool: EC2 on moto, a real Slurm cluster with State=FUTURE slots, and
the VM stand-in (scripts/components/vmboot.py) running each instance's user data, which starts a real
slurmd for a slot and advertises the instance id on the node. The factory sees only EC2 and Slurm."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from autopyfactory.model import Pilot, PilotState, PilotTags
from autopyfactory.plugins.cloud.ec2 import EC2Status, EC2Submit
from tests.components_cloud import CloudPool, EC2Server, VmBoot
from tests.helpers import wait_for, write

FACTORY = "cloudtest"  # the vmboot fixture boots this factory's instances

# What a VM image's contextualisation would do: start the worker for the pool and advertise the
# instance id (read from the metadata service; the stand-in passes it in the environment).
JOINING_VM = """
#!/bin/sh
# autopyfactory test VM: queue {{ queue }}, intent {{ intent_id }}, lease {{ max_lifetime_minutes }} min
export SLURM_CONF={{ pool_address }}
slurmd -D -N "$APF_VM_HOSTNAME" >/dev/null 2>&1 &
i=0
until scontrol show node "$APF_VM_HOSTNAME" >/dev/null 2>&1; do
  i=$((i + 1)); [ "$i" -gt 300 ] && exit 1; sleep 0.1
done
scontrol update nodename="$APF_VM_HOSTNAME" comment="$APF_VM_INSTANCE_ID"
echo "joined as $APF_VM_HOSTNAME"
wait
"""
BROKEN_VM = """
#!/bin/sh
# an image whose worker never starts (lease {{ max_lifetime }} s)
echo "no worker here"
"""


def setup(
    ec2: EC2Server,
    pool: CloudPool,
    make_queue: Any,
    make_factory: Any,
    template: Path,
    name: str = "VMQ",
    **keys: str,
) -> tuple[EC2Submit, EC2Status]:
    ctx = make_factory(
        FACTORY,
        auth={
            "moto": (
                "CloudKey",
                {"cloudkey.access_key_id": "testing", "cloudkey.secret_access_key": "testing"},
            )
        },
    )
    q = make_queue(
        name,
        {
            "batchsubmit.ec2.endpoint_url": ec2.url,
            "batchsubmit.ec2.region": ec2.region,
            "batchsubmit.ec2.authprofile": "moto",
            "batchsubmit.ec2.ami": ec2.image(),
            "batchsubmit.ec2.instance_type": "t3.micro",
            "batchsubmit.ec2.user_data_file": str(template),
            "batchsubmit.ec2.pool": "slurm",
            "batchsubmit.ec2.pool.slurm_conf": str(pool.cluster.conf),
            "batchsubmit.ec2.pool.address": str(pool.cluster.conf),
            "batchsubmit.ec2.pool.attribute": "comment",
            **{f"batchsubmit.ec2.{k}": v for k, v in keys.items()},
        },
        submit="EC2",
    )
    sub = EC2Submit(q, q.batchsubmit.options, ctx)
    status = EC2Status(EC2Status.endpoint(q, ctx), ctx)
    status.register(q)
    return sub, status


def cycle(sub: EC2Submit, status: EC2Status, now: float | None = None) -> dict[str, Pilot]:
    """What the engine does each cycle: poll, then clean up (on its action thread)."""
    now = time.time() if now is None else now
    snap = status.poll(now)
    sub.cleanup(list(snap.pilots), now)
    return {p.backend_id: p for p in snap.pilots}


def instance(ec2: EC2Server, iid: str) -> dict[str, Any]:
    (found,) = (i for i in ec2.instances() if i["InstanceId"] == iid)
    return {"state": found["State"]["Name"], **{t["Key"]: t["Value"] for t in found.get("Tags", [])}}


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_vm_joins_is_drained_and_terminated_only_once_idle(
    ec2: EC2Server, slurm_cloud: CloudPool, vmboot: VmBoot, make_queue: Any, make_factory: Any, tmp_path: Path
) -> None:
    sub, status = setup(ec2, slurm_cloud, make_queue, make_factory, write(tmp_path / "vm.tpl", JOINING_VM))
    (launched,) = sub.submit(1, PilotTags(FACTORY, "VMQ", "0123456789ab"), time.time())
    iid = launched.backend_id
    assert launched.state is PilotState.PENDING

    def joined() -> Pilot | None:
        p = cycle(sub, status).get(iid)
        return p if p is not None and p.state is PilotState.RUNNING else None

    pilot = wait_for(joined, 60, f"the VM's node to join (vmboot log: {vmboot.log()})")
    assert isinstance(pilot, Pilot)
    node = pilot.node
    assert node in slurm_cloud.slots and slurm_cloud.node(node)["Comment"] == iid
    assert pilot.started_at is not None

    # work lands on the VM's node
    flag = tmp_path / "release-the-job"
    job = slurm_cloud.run(
        "sbatch", "--parsable", "-p", slurm_cloud.partition, "-w", node, "-o", "/dev/null",
        "--wrap", f"while [ ! -e {flag} ]; do sleep 0.2; done",
    ).stdout.strip()  # fmt: skip
    assert job.isdigit()
    wait_for(
        lambda: slurm_cloud.run("squeue", "-h", "-j", job, "-o", "%T").stdout.strip() == "RUNNING",
        60,
        "the job to run",
    )

    sub.retire([iid])
    assert "DRAIN" in slurm_cloud.node(node)["State"]
    assert instance(ec2, iid)["apf:retire"].isdigit()
    # while the job runs the VM is retiring, never terminated (even far past the deadline)
    for k in range(5):
        pilots = cycle(sub, status, time.time() + 3600 * k)
        assert pilots[iid].state is PilotState.RETIRING
        assert instance(ec2, iid)["state"] == "running"
    flag.touch()
    wait_for(
        lambda: cycle(sub, status) and instance(ec2, iid)["state"] == "terminated", 60, "the drained VM to go"
    )
    assert instance(ec2, iid)["apf:end"] == "retired"
    assert slurm_cloud.run("squeue", "-h", "-j", job).stdout.strip() == ""  # the job finished on its own
    # the VM is gone (vmboot stops its slurmd); the slot goes back to FUTURE with no comment
    wait_for(lambda: f"gone {iid}" in vmboot.log(), 30, "vmboot to stop the VM")
    wait_for(
        lambda: cycle(sub, status) is not None and slurm_cloud.node(node) == {}, 30, "the slot to be released"
    )
    assert cycle(sub, status)[iid].state is PilotState.DONE


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_a_vm_whose_node_never_joins_is_terminated_after_the_deadline(
    ec2: EC2Server, slurm_cloud: CloudPool, vmboot: VmBoot, make_queue: Any, make_factory: Any, tmp_path: Path
) -> None:
    deadline = 600.0
    sub, status = setup(
        ec2, slurm_cloud, make_queue, make_factory, write(tmp_path / "broken.tpl", BROKEN_VM),
        provisioning_deadline=str(deadline),
    )  # fmt: skip
    (launched,) = sub.submit(1, PilotTags(FACTORY, "VMQ", "bbbbbbbbbbbb"), time.time())
    iid = launched.backend_id
    wait_for(
        lambda: "no worker here" in vmboot.console(iid), 30, "the VM to boot (and its worker not to start)"
    )
    launched_at = launched.submitted_at
    assert launched_at is not None
    # before the deadline: pending (running in EC2, no node), left alone
    pilots = cycle(sub, status, launched_at + deadline - 5)
    assert pilots[iid].state is PilotState.PENDING and instance(ec2, iid)["state"] == "running"
    # past it: terminated as a failed provisioning
    cycle(sub, status, launched_at + deadline + 1)
    got = instance(ec2, iid)
    assert (got["state"], got["apf:end"]) == ("terminated", "provisioning-deadline")
    assert cycle(sub, status)[iid].state is PilotState.FAILED


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_cancelling_a_vm_that_joined_since_the_decision_drains_it_instead(
    ec2: EC2Server, slurm_cloud: CloudPool, vmboot: VmBoot, make_queue: Any, make_factory: Any, tmp_path: Path
) -> None:
    """The engine cancels VMs it last saw pending (not joined); one may have joined since and taken
    a job. The cancel asks the pool again and sends that VM out through its node: drained, never
    terminated under its job."""
    sub, status = setup(ec2, slurm_cloud, make_queue, make_factory, write(tmp_path / "vm.tpl", JOINING_VM))
    (launched,) = sub.submit(1, PilotTags(FACTORY, "VMQ", "cccccccccccc"), time.time())
    iid = launched.backend_id
    # the node joins; no status poll runs, so the factory's last view still has the VM pending
    wait_for(
        lambda: any(slurm_cloud.node(s).get("Comment") == iid for s in slurm_cloud.slots),
        60,
        f"the VM's node to join (vmboot log: {vmboot.log()})",
    )
    (node,) = (s for s in slurm_cloud.slots if slurm_cloud.node(s).get("Comment") == iid)
    sub.cancel([iid])  # what a scale-down decision taken on that view asks
    assert instance(ec2, iid)["state"] == "running"
    assert instance(ec2, iid)["apf:retire"].isdigit() and "apf:end" not in instance(ec2, iid)
    assert "DRAIN" in slurm_cloud.node(node)["State"]
    # drained and idle: the life cycle terminates it as retired
    wait_for(
        lambda: cycle(sub, status) and instance(ec2, iid)["state"] == "terminated", 60, "the drained VM to go"
    )
    assert instance(ec2, iid)["apf:end"] == "retired"
    wait_for(
        lambda: cycle(sub, status) is not None and slurm_cloud.node(node) == {}, 30, "the slot to be released"
    )
