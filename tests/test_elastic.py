"""The elastic pool end to end through the real daemon (``apf run``): PanDA demand -> pilots waiting
in a Slurm partition of FUTURE slots -> the VM queue watching that partition launches EC2 VMs
(moto) -> vmboot boots them (a real slurmd per slot, the instance id on the node) -> the pilots run
and finish -> demand drops -> the nodes are drained by instance id, the instances terminated and
the slots released. The setup is tests/elastic.py; run with -s to see the measured figures."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest

from autopyfactory.config.loader import load_factory_config
from autopyfactory.store.api import Store
from tests.components_cloud import CloudPool, EC2Server, VmBoot
from tests.elastic import (
    FACTORY,
    SITE,
    Sampler,
    View,
    polled_again,
    print_figures,
    slot_slurmds,
    start_factory,
    stop_factory,
    write_config,
)
from tests.fakepanda import FakePanda
from tests.helpers import wait_for


def running_on_joined_nodes(v: View) -> int:
    """Pilots running on nodes that advertise one of our instances (a job may start on a node in
    the moment before its VM has written its instance id there)."""
    joined = {name for name, f in v.nodes.items() if f.get("Comment") in v.instances}
    return sum(state == "RUNNING" and node in joined for state, node in v.pilots.values())


def contracted(v: View) -> bool:
    """Every instance terminated, every slot back to FUTURE (hidden), no pilot left."""
    return (
        bool(v.instances)
        and all(i["state"] == "terminated" for i in v.instances.values())
        and not v.nodes
        and not v.pilots
    )


def check_the_end(pool: CloudPool, ec2: EC2Server, conf: Path, sampler: Sampler, n: int) -> None:
    """What must hold once the pool has contracted."""
    # 0 pilots killed: every pilot completed with exit 0 (Slurm keeps finished jobs for MinJobAge)
    assert len(sampler.seen_pilots) == n
    for job in sampler.seen_pilots:
        shown = pool.run("scontrol", "show", "job", "-o", job).stdout
        assert "JobState=COMPLETED" in shown and "ExitCode=0:0" in shown, shown
    # 0 instances left running, each ended as retired (drained and idle), never killed
    instances = {i["InstanceId"]: i for i in ec2.instances()}
    assert len(instances) == n
    for inst in instances.values():
        tags = {t["Key"]: t["Value"] for t in inst["Tags"]}
        assert (inst["State"]["Name"], tags.get("apf:end")) == ("terminated", "retired"), inst
    # 0 slots dirty: hidden again (State=FUTURE), and a FUTURE slot shown with -F has no comment left
    assert all(pool.node(s) == {} for s in pool.slots)
    future = pool.run("scontrol", "-F", "show", "node", "-o", ",".join(pool.slots)).stdout
    assert future.count("State=FUTURE") == len(pool.slots), future
    assert "Comment=i-" not in future and "Extra=i-" not in future, future
    # no slurmd of a VM left
    wait_for(lambda: not slot_slurmds(pool), 30, "the VMs' slurmd to be gone")
    # the store agrees with moto and Slurm
    store = Store(load_factory_config(str(conf)).settings.database_url(), readonly=True)
    try:
        recorded = store.pilots(FACTORY)
    finally:
        store.close()
    vms = {p["backend_id"]: p for p in recorded if p["queue"] == "VMS"}
    assert set(vms) == set(instances)
    assert {p["state"] for p in vms.values()} == {"done"}
    assert {p["instance_id"] for p in vms.values()} == set(instances)
    pilots = {p["backend_id"] for p in recorded if p["queue"] == "PILOTS"}
    assert pilots == sampler.seen_pilots


def wait_until_polled(conf: Path, timeout: float = 60) -> None:
    """The daemon is up and has decided for both queues (its status file says so)."""
    status = conf.parent / "state" / f"status-{FACTORY}.json"

    def decided() -> bool:
        try:
            queues = json.loads(status.read_text())["queues"]
        except (OSError, ValueError, KeyError):
            return False
        return all(queues.get(q, {}).get("decisions", 0) > 0 for q in ("PILOTS", "VMS"))

    wait_for(decided, timeout, f"the factory's first decisions ({status})")


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_elastic_pool_grows_for_the_pilots_and_contracts_when_demand_drops(
    ec2: EC2Server, slurm_cloud: CloudPool, vmboot: VmBoot, tmp_path: Path
) -> None:
    n = 3
    with FakePanda() as panda, Sampler(ec2, slurm_cloud) as sampler:
        panda.set_jobs("OTHER_SITE", "running", 1)  # a real answer even when CLOUD_SITE has no jobs
        conf = write_config(tmp_path, ec2=ec2, pool=slurm_cloud, panda_url=panda.api_url, pilots=n)
        log = tmp_path / "apf.log"
        proc = start_factory(conf, slurm_cloud, log)
        try:
            wait_until_polled(conf)
            assert not sampler.whens("vm requested")
            demand_at = time.time()
            panda.set_activated(SITE, n)
            v = sampler.wait(
                lambda v: running_on_joined_nodes(v) == n, 180, f"{n} pilots running on new nodes"
            )
            assert len(v.instances) == n and len(sampler.whens("node joined")) == n
            assert {node for _, node in v.pilots.values()} == {
                name for name, f in v.nodes.items() if f.get("Comment") in v.instances
            }  # each pilot on a node of one of our VMs
            # the pilots took their jobs, then finish them: the pool's demand drops to 0
            panda.set_activated(SITE, 0)
            panda.set_jobs(SITE, "running", n)
            dropped_at = time.time()
            polled_again(panda)
            (tmp_path / "flags" / "all").touch()
            sampler.wait(lambda v: not v.pilots, 60, "the pilots to finish")
            panda.set_jobs(SITE, "running", 0)
            sampler.wait(contracted, 120, "the pool to contract")
            assert len(sampler.whens("node draining")) == n  # each left through its drained node
        finally:
            stop_factory(proc)
    check_the_end(slurm_cloud, ec2, conf, sampler, n)
    print_figures(
        f"elastic pool, {n} pilots (real Slurm, moto, vmboot)", sampler.figures(demand_at, dropped_at)
    )
    print(vmboot.log())


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_sigkill_while_vms_boot_and_while_nodes_drain_then_restarts_adopt_and_finish(
    ec2: EC2Server, slurm_cloud: CloudPool, vmboot: VmBoot, tmp_path: Path
) -> None:
    n = 2
    ec2.control(boot_seconds=6)  # the VMs stay pending (booting) for a while
    with FakePanda() as panda, Sampler(ec2, slurm_cloud) as sampler:
        panda.set_jobs("OTHER_SITE", "running", 1)
        # the VM queue reaches EC2 through the fault proxy, so a test can make terminations fail
        conf = write_config(
            tmp_path, ec2=ec2, pool=slurm_cloud, panda_url=panda.api_url, pilots=n, ec2_url=ec2.proxy_url
        )
        log = tmp_path / "apf.log"
        proc = start_factory(conf, slurm_cloud, log)
        try:
            wait_until_polled(conf)
            demand_at = time.time()
            panda.set_activated(SITE, n)
            v = sampler.wait(lambda v: len(v.instances) == n, 60, "the VMs to be requested")
            assert all(i["state"] == "pending" for i in v.instances.values()) and not v.nodes
            os.killpg(proc.pid, signal.SIGKILL)  # 1: the factory dies while its VMs boot
            proc.wait(timeout=30)
            proc = start_factory(conf, slurm_cloud, log)
            v = sampler.wait(
                lambda v: running_on_joined_nodes(v) == n, 180, f"{n} pilots running after the restart"
            )
            assert len(v.instances) == n  # adopted: nothing launched twice

            ec2.fault("TerminateInstances", "InternalError", status=500, times=-1)
            panda.set_activated(SITE, 0)
            panda.set_jobs(SITE, "running", n)
            polled_again(panda)
            (tmp_path / "flags" / "all").touch()
            sampler.wait(lambda v: not v.pilots, 60, "the pilots to finish")
            panda.set_jobs(SITE, "running", 0)
            v = sampler.wait(
                lambda v: (
                    len(v.nodes) == n
                    and all("DRAIN" in f["State"] for f in v.nodes.values())
                    and all("apf:retire" in i for i in v.instances.values())
                ),
                120,
                "the nodes to be drained (terminations refused)",
            )
            assert all(i["state"] == "running" for i in v.instances.values())
            os.killpg(proc.pid, signal.SIGKILL)  # 2: the factory dies with its nodes drained, VMs up
            proc.wait(timeout=30)
            ec2.clear_faults()
            proc = start_factory(conf, slurm_cloud, log)
            sampler.wait(contracted, 120, "the pool to contract after the second restart")
        finally:
            stop_factory(proc)
    check_the_end(slurm_cloud, ec2, conf, sampler, n)
    print_figures(f"elastic pool with two SIGKILLs, {n} pilots", sampler.figures(demand_at))
