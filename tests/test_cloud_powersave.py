"""Slurm's power saving as an integration mode (docs/slurm-powersave.md).

Pure parts first (host lists, the spool, the demand and the pool's plan on recorded
``scontrol show node -o`` lines), then end to end: a real Slurm 22.05 with ``State=CLOUD`` nodes whose
ResumeProgram/SuspendProgram/ResumeFailProgram are examples/powersave/*.sh (-> ``apf powersave``),
the real ``apf run`` daemon, EC2 on moto, and the VM stand-in running each instance's user data
(a real ``slurmd -b`` for the node whose Comment carries the instance id).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from autopyfactory.config.loader import load_factory_config
from autopyfactory.plugins.cloud import powersave as ps
from autopyfactory.plugins.cloud import spool
from autopyfactory.plugins.cloud.hostlist import expand
from autopyfactory.plugins.cloud.lifecycle import EndReason, Instance, VmState
from autopyfactory.plugins.cloud.pools import parse_power_nodes
from autopyfactory.store.api import Store
from tests.components_cloud import EC2Server, PowerSaveCluster, VmBoot
from tests.helpers import factory_conf, wait_for, write

APF = str(Path(sys.executable).parent / "apf")
FACTORY = "cloudtest"  # vmboot_powersave boots this factory's instances

# ---------------------------------------------------------------------------------------------
# host lists


@pytest.mark.parametrize(
    ("text", "names"),
    [
        ("c1", ["c1"]),
        ("c[1-3,5]", ["c1", "c2", "c3", "c5"]),
        ("c[1-2],gpu[08-10]", ["c1", "c2", "gpu08", "gpu09", "gpu10"]),
        ("r[1-2]n[1-2]", ["r1n1", "r1n2", "r2n1", "r2n2"]),
        ("c[1-2],c2,a", ["c1", "c2", "a"]),
        ("node-[7]-x", ["node-7-x"]),
        ("", []),
    ],
)
def test_hostlist_expands_like_scontrol_show_hostnames(text: str, names: list[str]) -> None:
    assert expand(text) == names


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("c[1-", "unmatched '['"),
        ("c1]", "unmatched ']'"),
        ("c[3-1]", "backwards"),
        ("c[a-b]", "bad range"),
        ("c[[1]]", "nested"),
        ("c1,,c2", "empty item"),
        ("c1 c2", "white space"),
        ("c[1-9999999]", "too large"),
    ],
)
def test_hostlist_errors_name_the_problem(text: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem.replace("[", r"\[").replace("]", r"\]")):
        expand(text)


# ---------------------------------------------------------------------------------------------
# the spool and the client


def test_a_request_is_written_whole_and_read_back_oldest_first(tmp_path: Path) -> None:
    first = spool.write(tmp_path, spool.Op.RESUME, "c[1-2]", 100.0)
    spool.write(tmp_path, spool.Op.RESUME, "c3", 200.0)
    spool.write(tmp_path, spool.Op.SUSPEND, "c1", 150.0)
    assert [p.name for p in (tmp_path / "resume").iterdir() if p.name.startswith(".")] == []
    resumes = spool.read(tmp_path, spool.Op.RESUME)
    assert [(r.nodes, r.time, r.hostlist) for r in resumes] == [
        (("c1", "c2"), 100.0, "c[1-2]"),
        (("c3",), 200.0, "c3"),
    ]
    assert resumes[0].path == first
    assert [r.nodes for r in spool.read(tmp_path, spool.Op.SUSPEND)] == [("c1",)]
    assert spool.read(tmp_path, spool.Op.RESUMEFAIL) == []
    spool.remove(resumes[:1])
    assert [r.nodes for r in spool.read(tmp_path, spool.Op.RESUME)] == [("c3",)]


def test_a_file_that_is_no_request_is_set_aside_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "suspend").mkdir()
    (tmp_path / "suspend" / "0001-1-x.json").write_text("{not json")
    (tmp_path / "suspend" / ".0002-1-y.tmp").write_text("half written")
    assert spool.read(tmp_path, spool.Op.SUSPEND) == []
    assert "is not a suspend request" in caplog.text
    assert sorted(p.name for p in (tmp_path / "suspend").iterdir()) == [".0002-1-y.tmp", "0001-1-x.json.bad"]
    caplog.clear()
    assert spool.read(tmp_path, spool.Op.SUSPEND) == [] and caplog.text == ""


def test_the_client_writes_one_request_and_exits_fast(tmp_path: Path) -> None:
    started = time.monotonic()
    out = subprocess.run(
        [APF, "powersave", "resume", "c[1-2]", "--spool", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    took = time.monotonic() - started
    assert out.returncode == 0, out.stderr
    (req,) = spool.read(tmp_path, spool.Op.RESUME)
    assert req.nodes == ("c1", "c2")
    print(f"apf powersave resume: {took * 1000:.0f} ms")
    bad = subprocess.run(
        [APF, "powersave", "suspend", "c[2-1]", "--spool", str(tmp_path)], capture_output=True, text=True
    )
    assert bad.returncode == 2 and "runs backwards" in bad.stderr
    none = subprocess.run(
        [APF, "powersave", "suspend", "c1"], capture_output=True, text=True, env={"PATH": "/usr/bin"}
    )
    assert none.returncode == 2 and "no spool" in none.stderr


# ---------------------------------------------------------------------------------------------
# demand and the pool's plan, on recorded ``scontrol show node -o`` lines (Slurm 22.05.8)

REST = "CoresPerSocket=1 CPUAlloc=0 CPUTot=1 AvailableFeatures=cloud ActiveFeatures=cloud NodeAddr=127.0.0.1"
SCONTROL = f"""
NodeName=c1 {REST} State=ALLOCATED+CLOUD+NOT_RESPONDING+POWERING_UP ThreadsPerCore=1 Partitions=powersave Comment=i-aaa
NodeName=c2 {REST} State=ALLOCATED+CLOUD+NOT_RESPONDING+POWERING_UP ThreadsPerCore=1 Partitions=powersave
NodeName=c3 {REST} State=IDLE+CLOUD ThreadsPerCore=1 Partitions=powersave Comment=i-ccc
NodeName=c4 {REST} State=IDLE+CLOUD+POWERING_DOWN ThreadsPerCore=1 Partitions=powersave Comment=i-ddd
NodeName=c5 {REST} State=DOWN+CLOUD+POWERED_DOWN+NOT_RESPONDING ThreadsPerCore=1 Partitions=powersave Comment=i-eee Reason=ResumeTimeout reached [root@2026-12-02T06:55:15]
NodeName=c6 {REST} State=IDLE+CLOUD+POWERED_DOWN ThreadsPerCore=1 Partitions=powersave
NodeName=g1 {REST} State=ALLOCATED+CLOUD+NOT_RESPONDING+POWERING_UP ThreadsPerCore=1 Partitions=gpu
NodeName=n1 {REST} State=IDLE ThreadsPerCore=1 Partitions=debug
"""


def vm(iid: str, state: VmState = VmState.RUNNING, launched: float = 0.0, **tags: str) -> Instance:
    return Instance(iid, state, tags, launched)


def req(op: spool.Op, *nodes: str, t: float = 0.0) -> spool.Request:
    return spool.Request(op, nodes, t, Path(f"/spool/{op}/{t}-{'-'.join(nodes)}.json"))


def test_node_states_are_read_from_scontrol() -> None:
    nodes = {n.name: n for n in parse_power_nodes(SCONTROL)}
    assert nodes["c1"].powering_up and nodes["c1"].comment == "i-aaa" and not nodes["c1"].up
    assert nodes["c3"].up and nodes["c3"].partitions == ("powersave",)
    assert nodes["c4"].powered_off and not nodes["c4"].failed
    assert nodes["c5"].failed and nodes["c5"].powered_off
    assert nodes["c6"].powered_off and not nodes["c6"].comment
    assert nodes["n1"].up and "CLOUD" not in nodes["n1"].flags


def test_demand_is_the_requested_nodes_still_powering_up() -> None:
    nodes = parse_power_nodes(SCONTROL)
    # c2's request is old news for g1 (another partition); c1 has no request: not ours to serve
    d = ps.demand(nodes, {"c2", "g1", "c3", "c6"})
    assert d["powersave"] == ps.PartitionDemand(waiting=1, up=1, down=1)
    assert d["gpu"] == ps.PartitionDemand(waiting=1)
    assert "debug" not in d  # no CLOUD nodes there
    # a request is removed once its nodes stopped powering up, not within the settle time
    old_c3, new_c3, c2 = (
        req(spool.Op.RESUME, "c3", t=0.0),
        req(spool.Op.RESUME, "c3", t=95.0),
        req(spool.Op.RESUME, "c2"),
    )
    assert ps.handled_resumes([old_c3, new_c3, c2], nodes, now=100.0) == [old_c3]


def test_the_plan_pairs_new_vms_with_waiting_nodes_and_retires_through_the_node() -> None:
    nodes = parse_power_nodes(SCONTROL)
    instances = [
        vm("i-aaa", VmState.PENDING, 10.0),  # already backs c1
        vm("i-new", VmState.PENDING, 20.0),  # new: takes c2
        vm("i-ccc"),  # joined c3
        vm("i-ddd"),  # c4 powering down: terminated (suspended)
        vm("i-eee", VmState.PENDING, 5.0),  # c5 missed ResumeTimeout: written off
        vm("i-spare", VmState.PENDING, 30.0),  # no node left for it: cancelled
    ]
    plan = ps.plan_power(
        nodes, instances, requested={"c1", "c2", "g1"}, partition="powersave", requests=[], now=100.0
    )
    assert plan.assign == (("c2", "i-new"),)
    assert set(plan.terminate) == {
        ("i-ddd", EndReason.SUSPENDED, "c4"),
        ("i-eee", EndReason.RESUME_FAILED, "c5"),
        ("i-spare", EndReason.CANCELLED, ""),
    }
    assert sorted(plan.clear) == ["c4", "c5"]
    # right after a launch nothing is cancelled (the listing may not show every VM yet)
    quiet = ps.plan_power(nodes, instances, requested={"c2"}, partition=None, now=100.0, cancel_surplus=False)
    assert all(reason != EndReason.CANCELLED for _, reason, _ in quiet.terminate)
    # without a partition filter the gpu node is served too (by the oldest spare VM)
    anywhere = ps.plan_power(nodes, instances, requested={"c2", "g1"}, partition=None, now=100.0)
    assert anywhere.assign == (("c2", "i-new"), ("g1", "i-spare"))


def test_a_node_whose_vm_is_gone_waits_again_and_a_request_is_done_once_its_nodes_are_free() -> None:
    nodes = parse_power_nodes(SCONTROL)
    gone = [
        vm("i-aaa", VmState.TERMINATED, 1.0, **{"apf:end": "provisioning-deadline"}),
        vm("i-new", VmState.PENDING, 2.0),
    ]
    plan = ps.plan_power(nodes, gone, requested={"c1"}, partition="powersave", now=100.0)
    assert plan.assign == (("c1", "i-new"),)  # c1's Comment names a VM that is gone
    # requests: c4 (powering down) is handled by this plan; c6 has no VM; c3 is up again (stale)
    # after the settle time; c4 of another queue's VM stays until that queue handles it
    r_c4, r_c6 = req(spool.Op.SUSPEND, "c4", t=90.0), req(spool.Op.SUSPEND, "c6", t=90.0)
    r_c3_stale, r_c3_new = req(spool.Op.SUSPEND, "c3", t=50.0), req(spool.Op.SUSPEND, "c3", t=99.0)
    mine = [vm("i-ddd")]
    plan = ps.plan_power(
        nodes, mine, requested=(), partition=None, requests=[r_c4, r_c6, r_c3_stale, r_c3_new], now=100.0
    )
    assert set(plan.done) == {r_c4, r_c6, r_c3_stale}
    theirs = ps.plan_power(nodes, [], requested=(), partition=None, requests=[r_c4], now=100.0)
    assert theirs.done == () and theirs.terminate == ()
    # a resumefail request classifies a powered-down node's VM as failed
    fail = ps.plan_power(
        nodes, mine, requested=(), partition=None, requests=[req(spool.Op.RESUMEFAIL, "c4")], now=100.0
    )
    assert fail.terminate == (("i-ddd", EndReason.RESUME_FAILED, "c4"),)


# ---------------------------------------------------------------------------------------------
# end to end

AUTH = """
[moto]
plugin = CloudKey
cloudkey.access_key_id = testing
cloudkey.secret_access_key = testing
"""

# What the VM image does (examples/powersave/vm-user-data.sh, minus fetching slurm.conf and munge,
# which the stand-in's host already has): find the node whose Comment is this instance id, start
# its slurmd with -b. -D keeps slurmd in the VM's session, so the stand-in stops it with the VM.
VM = """
#!/bin/sh
# power-saving test VM: queue {{ queue }}, intent {{ intent_id }}, lease {{ max_lifetime_minutes }} min
export SLURM_CONF={{ pool_address }}
node_of() {
  scontrol show node -o 2>/dev/null | awk -v want="Comment=$1" \\
    '{ for (i = 2; i <= NF; i++) if ($i == want) { sub("^NodeName=", "", $1); print $1; exit } }'
}
i=0
until NODE=$(node_of "$APF_VM_INSTANCE_ID"); [ -n "$NODE" ]; do
  i=$((i + 1)); [ "$i" -gt 600 ] && { echo "no node carries $APF_VM_INSTANCE_ID"; exit 1; }; sleep 0.1
done
echo "backing $NODE"
exec /usr/sbin/slurmd -b -D -N "$NODE"
"""


def powersave_conf(tmp: Path, ec2: EC2Server, cluster: PowerSaveCluster) -> Path:
    write(tmp / "auth.conf", AUTH)
    write(tmp / "vm.sh", VM)
    conf = cluster.cluster.conf
    return factory_conf(
        tmp,
        f"""
        [PS]
        enabled = True
        apfqueue.sleep = 0.5
        wmsqueue = {cluster.partition}
        wmsstatusplugin = SlurmPowerSave
        wmsstatus.slurmpowersave.slurm_conf = {conf}
        wmsstatus.slurmpowersave.spool = {cluster.spool}
        schedplugin = Ready
        batchsubmitplugin = EC2
        batchstatusplugin = EC2
        batchsubmit.ec2.endpoint_url = {ec2.url}
        batchsubmit.ec2.region = {ec2.region}
        batchsubmit.ec2.authprofile = moto
        batchsubmit.ec2.ami = {ec2.image()}
        batchsubmit.ec2.instance_type = t3.micro
        batchsubmit.ec2.retries = 1
        batchsubmit.ec2.user_data_file = vm.sh
        batchsubmit.ec2.pool = slurm-powersave
        batchsubmit.ec2.pool.address = {conf}
        batchsubmit.ec2.pool.slurm_conf = {conf}
        batchsubmit.ec2.pool.spool = {cluster.spool}
        batchsubmit.ec2.pool.partition = {cluster.partition}
        batchsubmit.ec2.pool.attribute = comment
        """,
        extra="authConf = auth.conf\nbatchstatus.ec2.sleep = 0.5\nwmsstatus.slurmpowersave.sleep = 0.5\n",
        factory_id=FACTORY,
    )


def tags(inst: dict[str, Any]) -> dict[str, str]:
    return {t["Key"]: t["Value"] for t in inst.get("Tags", [])}


def vms(ec2: EC2Server) -> dict[str, dict[str, Any]]:
    """The queue's instances by id."""
    return {i["InstanceId"]: i for i in ec2.instances() if tags(i).get("apf:queue") == "PS"}


def only_instance(ec2: EC2Server) -> dict[str, Any] | None:
    found = list(vms(ec2).values())
    assert len(found) <= 1, list(vms(ec2))
    return found[0] if found else None


def job_state(cluster: PowerSaveCluster, job: str) -> str:
    out = cluster.run("scontrol", "show", "job", "-o", job)
    for word in out.stdout.split():
        if word.startswith("JobState="):
            return word.split("=", 1)[1]
    return ""


def calls(cluster: PowerSaveCluster, op: str) -> list[str]:
    text = cluster.calls.read_text() if cluster.calls.exists() else ""
    return [line for line in text.splitlines() if line.startswith(f"{op} ")]


def start_daemon(path: Path, tmp: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen([APF, "run", "--conf", str(path), "--no-table", "--log", str(tmp / "apf.log")])


def stop_daemon(daemon: subprocess.Popen[bytes]) -> None:
    daemon.terminate()
    daemon.wait(timeout=60)


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_a_job_powers_a_node_up_through_the_factory_and_the_idle_node_down_again(
    ec2: EC2Server, slurm_powersave: PowerSaveCluster, vmboot_powersave: VmBoot, tmp_path: Path
) -> None:
    cluster = slurm_powersave
    path = powersave_conf(tmp_path, ec2, cluster)
    store = Store(load_factory_config(str(path)).settings.database_url())
    daemon = start_daemon(path, tmp_path)
    marks: dict[str, float] = {}

    def mark(name: str, value: object) -> object:
        if value and name not in marks:
            marks[name] = time.time()
        return value

    try:
        wait_for(lambda: store.latest_decisions(FACTORY).get("PS"), 60, "the queue's first decision")
        before = len(calls(cluster, "resume"))
        out = cluster.run(
            "sbatch", "--parsable", "-p", cluster.partition, "-o", str(tmp_path / "job-%j.out"),
            "--wrap", "echo on $SLURMD_NODENAME; sleep 2",
        )  # fmt: skip
        assert out.returncode == 0, out.stderr
        job = out.stdout.strip()
        t0 = time.time()
        wait_for(
            lambda: mark("resume", len(calls(cluster, "resume")) > before), 60, "Slurm to call ResumeProgram"
        )
        wait_for(lambda: mark("vm", vms(ec2)), 60, "the factory to create a VM")
        paired = wait_for(
            lambda: mark(
                "paired",
                next(
                    ((n, c) for n in cluster.nodes if (c := cluster.node(n).get("Comment")) in vms(ec2)), None
                ),
            ),
            60,
            "a VM's id in a node's Comment",
        )
        assert isinstance(paired, tuple)
        node, iid = paired
        wait_for(lambda: mark("joined", "POWERING_UP" not in cluster.state(node)), 60, f"{node} to register")
        wait_for(
            lambda: mark("running", job_state(cluster, job) in ("RUNNING", "COMPLETED")), 90, "the job to run"
        )
        wait_for(lambda: mark("done", job_state(cluster, job) == "COMPLETED"), 60, "the job to finish")
        assert (tmp_path / f"job-{job}.out").read_text().strip() == f"on {node}"
        wait_for(
            lambda: [p for p in store.pilots(FACTORY, "PS", states=["running"]) if p["backend_id"] == iid],
            30,
            "the VM's pilot running",
        )
        # idle for SuspendTime: Slurm calls SuspendProgram, the factory terminates the VM
        wait_for(
            lambda: mark("suspend", any(node in c for c in calls(cluster, "suspend"))), 60, "SuspendProgram"
        )

        wait_for(
            lambda: mark("terminated", vms(ec2)[iid]["State"]["Name"] == "terminated"),
            60,
            "the VM to be terminated",
        )
        assert tags(vms(ec2)[iid]).get("apf:end") == EndReason.SUSPENDED
        wait_for(cluster.powered_down, 60, "every node powered down with no Comment")
        wait_for(lambda: "gone " + iid in vmboot_powersave.log(), 30, "the VM stand-in to stop the VM")
        wait_for(
            lambda: [p for p in store.pilots(FACTORY, "PS", states=["done"]) if p["backend_id"] == iid],
            30,
            "the pilot recorded done",
        )
        # one node, one VM; a VM launched on a demand snapshot older than the node's registration
        # (the two polls are independent) backs no node and is cancelled
        others = {i: v for i, v in vms(ec2).items() if i != iid}
        wait_for(
            lambda: all(v["State"]["Name"] == "terminated" for v in vms(ec2).values()), 60, "every VM gone"
        )
        assert {tags(v).get("apf:end") for i, v in vms(ec2).items() if i != iid} <= {EndReason.CANCELLED}
        assert list(cluster.spool.glob("*/*.json")) == []  # every request handled
        assert daemon.poll() is None
        figures = {k: round(v - t0, 1) for k, v in sorted(marks.items(), key=lambda kv: kv[1])}
        print(
            "power-save figures (s after sbatch):",
            json.dumps(figures),
            f"surplus VMs cancelled: {len(others)}",
        )
    finally:
        stop_daemon(daemon)


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_a_node_that_misses_resume_timeout_has_its_vm_written_off(
    ec2: EC2Server, slurm_powersave: PowerSaveCluster, vmboot_powersave: VmBoot, tmp_path: Path
) -> None:
    cluster = slurm_powersave
    ec2.control(boot_seconds=600)  # the VM never finishes booting: its slurmd never registers
    path = powersave_conf(tmp_path, ec2, cluster)
    store = Store(load_factory_config(str(path)).settings.database_url())
    daemon = start_daemon(path, tmp_path)
    try:
        out = cluster.run("sbatch", "--parsable", "-p", cluster.partition, "--wrap", "true")
        assert out.returncode == 0, out.stderr
        t0 = time.time()
        inst = wait_for(lambda: only_instance(ec2), 60, "the factory to create a VM")
        assert isinstance(inst, dict) and inst["State"]["Name"] == "pending"
        iid = inst["InstanceId"]
        node = wait_for(
            lambda: next((n for n in cluster.nodes if cluster.node(n).get("Comment") == iid), None),
            60,
            "pairing",
        )
        assert isinstance(node, str)
        # ResumeTimeout (30 s): Slurm marks the node down and calls ResumeFailProgram
        wait_for(lambda: any(node in c for c in calls(cluster, "resumefail")), 90, "ResumeFailProgram")
        t_fail = time.time()

        def written_off() -> bool:
            inst = only_instance(ec2)
            return inst is not None and inst["State"]["Name"] == "terminated"

        wait_for(written_off, 60, "the VM to be terminated")
        t_off = time.time()
        assert tags(only_instance(ec2) or {}).get("apf:end") == EndReason.RESUME_FAILED
        wait_for(lambda: store.pilots(FACTORY, "PS", states=["failed"]), 30, "the pilot recorded failed")
        wait_for(lambda: not cluster.node(node).get("Comment"), 30, "the Comment cleared")
        assert "DOWN" in cluster.state(node)  # Slurm's verdict stands: the node waits for an admin
        assert f"boot {iid}" not in vmboot_powersave.log()  # the VM never booted
        print(
            f"resume failure: sbatch -> resumefail {t_fail - t0:.1f} s, resumefail -> VM terminated {t_off - t_fail:.1f} s"
        )
    finally:
        stop_daemon(daemon)


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_the_pool_ignores_nodes_still_powering_up_and_powers_down_a_node_whose_vm_is_gone(
    slurm_powersave: PowerSaveCluster, make_factory: Any, tmp_path: Path
) -> None:
    """Plugin level on the real cluster: a node carrying a VM's id while POWERING_UP has not
    joined; a node that is up when its VM is gone is released with POWER_DOWN_FORCE."""
    from autopyfactory.plugins.cloud.pools import PoolKind, PoolSpec, PowerSavePool

    cluster = slurm_powersave
    cluster.reset()
    a, b = cluster.nodes[0], cluster.nodes[1]
    pool = PowerSavePool(
        PoolSpec(
            PoolKind.SLURM_POWERSAVE,
            "comment",
            slurm_conf=str(cluster.cluster.conf),
            spool=str(cluster.spool),
        ),
        make_factory(FACTORY),
    )
    slurmd = None
    try:
        # a: Slurm powers it up (ResumeProgram writes a request); it carries i-a but has not joined
        assert cluster.run("scontrol", "update", f"nodename={a}", "state=POWER_UP").returncode == 0
        wait_for(lambda: "POWERING_UP" in cluster.state(a), 30, f"{a} powering up")
        cluster.run("scontrol", "update", f"nodename={a}", "comment=i-0aaaaaaaaaaaaaaaa")
        # b: a slurmd started by hand registers as if booted; it carries i-b
        slurmd = subprocess.Popen(
            ["/usr/sbin/slurmd", "-b", "-D", "-N", b],
            env={**cluster.cluster.env, "PATH": "/usr/sbin:/usr/bin:/bin"},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        wait_for(lambda: {"IDLE", "CLOUD"} == cluster.state(b), 30, f"{b} up")
        cluster.run("scontrol", "update", f"nodename={b}", "comment=i-0bbbbbbbbbbbbbbbb")
        found = pool.nodes(["i-0aaaaaaaaaaaaaaaa", "i-0bbbbbbbbbbbbbbbb"])
        assert list(found) == ["i-0bbbbbbbbbbbbbbbb"] and found["i-0bbbbbbbbbbbbbbbb"].name == b
        pool.release([found["i-0bbbbbbbbbbbbbbbb"]])
        assert not cluster.node(b).get("Comment")
        wait_for(lambda: any(b in c for c in calls(cluster, "suspend")), 30, f"SuspendProgram for {b}")
        assert {"POWERING_DOWN", "POWERED_DOWN"} & cluster.state(b)
    finally:
        if slurmd is not None:
            slurmd.terminate()
            slurmd.wait(timeout=30)
        pool.close()
        cluster.reset()
