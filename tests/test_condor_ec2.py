"""CondorEC2 retirement: node states (pure), peaceful condor_off through the collector, VM jobs
removed only once their node has retired."""

from __future__ import annotations

from pathlib import Path

import classad2
import pytest

from autopyfactory.model import Pilot, PilotState, PilotTags
from autopyfactory.plugins.batch.condor import schedd as sd
from autopyfactory.plugins.batch.condor.ec2 import (
    NodeState,
    group_by_instance,
    node_state,
    vms_to_remove,
)
from condor_standin import FACTORY_ID, StandinPool, context, load_config, status_poller, submitter

DATA = Path(__file__).parent / "data" / "condor"


def slot(activity: str, state: str = "Claimed") -> dict[str, str]:
    return {"Activity": activity, "State": state}


def test_node_state_from_ads() -> None:
    master = {"Name": "vm-1"}
    assert node_state(master, []) is NodeState.RETIRED
    assert node_state(None, []) is NodeState.ABSENT
    assert node_state(master, [slot("Idle", "Unclaimed"), slot("Idle", "Unclaimed")]) is NodeState.IDLE
    assert node_state(master, [slot("Idle", "Unclaimed"), slot("Busy")]) is NodeState.BUSY
    assert node_state(master, [slot("Busy"), slot("Retiring")]) is NodeState.RETIRING
    assert node_state(None, [slot("Busy")]) is NodeState.BUSY  # slots without a master ad yet
    assert node_state(master, [slot("Suspended")]) is NodeState.BUSY


def test_node_states_from_recorded_collector_ads() -> None:
    ads = sd.parse_ads((DATA / "collector.long").read_text())
    masters = group_by_instance([a for a in ads if a.eval("MyType") == "DaemonMaster"])
    slots = group_by_instance([a for a in ads if a.eval("MyType") == "Machine"])
    one, two = "i-0a1b2c3d4e5f60001", "i-0a1b2c3d4e5f60002"
    assert node_state(masters[one][0], slots[one]) is NodeState.BUSY
    assert node_state(masters[two][0], slots.get(two, [])) is NodeState.RETIRED


def vm(job: str, instance: str | None, state: PilotState, started: float | None = 1000.0) -> Pilot:
    return Pilot(job, "CLOUD", state, instance_id=instance, started_at=started)


def test_which_vm_jobs_to_remove() -> None:
    masters = {"i-ret": {"Name": "a"}, "i-busy": {"Name": "b"}, "i-new": {"Name": "c"}}
    slots = {"i-busy": [slot("Busy")]}
    pilots = [
        vm("1.0", "i-ret", PilotState.RETIRING),  # we retired it and it has: remove
        vm("1.1", "i-busy", PilotState.RETIRING),  # still finishing its payload: keep
        vm("1.2", "i-gone", PilotState.RETIRING),  # retired by us and vanished: remove
        vm("1.3", "i-boot", PilotState.RUNNING),  # no ads at all, not retired by us: booting, keep
        vm("1.4", "i-new", PilotState.RUNNING, started=1900.0),  # master before startd: keep
        vm("1.5", "i-ret", PilotState.RUNNING, started=100.0),  # retired on its own long ago: remove
        vm("1.6", None, PilotState.PENDING),  # not started: not a cleanup matter
    ]
    out = vms_to_remove(pilots, masters, slots, now=2000.0, bootgrace=900.0)
    assert out == [("1.0", NodeState.RETIRED), ("1.2", NodeState.ABSENT), ("1.5", NodeState.RETIRED)]


QUEUE = """\
[CLOUD]
enabled = True
wmsqueue = LOCAL
batchstatusplugin = Condor
schedplugin = Ready
batchsubmitplugin = CondorEC2
batchsubmit.condorec2.gridresource = https://ec2.example.org
batchsubmit.condorec2.ami_id = ami-0123
batchsubmit.condorec2.instance_type = m5.large
batchsubmit.condorec2.access_key_id = {access}
batchsubmit.condorec2.secret_access_key = {secret}
batchsubmit.condorec2.peaceful = {peaceful}
"""


@pytest.fixture
def pool() -> StandinPool:
    pool = StandinPool(now=1_709_280_000.0)
    pool.add_schedd()
    previous = sd.set_connector(pool.connect)
    yield pool
    sd.set_connector(previous)


def setup_queue(tmp_path: Path, pool: StandinPool, peaceful: bool = True):  # type: ignore[no-untyped-def]
    (tmp_path / "ak").write_text("AKIA")
    (tmp_path / "sk").write_text("secret")
    text = QUEUE.format(access=tmp_path / "ak", secret=tmp_path / "sk", peaceful=peaceful)
    cfg = load_config(tmp_path, text)
    ctx = context(cfg)
    return submitter(cfg, ctx, "CLOUD"), status_poller(cfg, ctx, "CLOUD")


def test_retire_peacefully_then_remove_when_retired(tmp_path: Path, pool: StandinPool) -> None:
    plugin, status = setup_queue(tmp_path, pool)
    plugin.submit(3, PilotTags(FACTORY_ID, "CLOUD", "i1"), pool.now)
    schedd = pool.schedds[sd.Address()]
    machines = {job: schedd.boot_vm(job, f"i-{n}") for n, job in enumerate(["1.0", "1.1"])}
    # a payload job (its Requirements pick the first VM) keeps 1.0's node busy; 1.1's is idle
    payload = classad2.ClassAd({"ClusterId": 9, "ProcId": 0, "JobStatus": 1, "JobUniverse": 5})
    payload["Requirements"] = classad2.ExprTree('TARGET.EC2InstanceID =?= "i-0"')
    schedd.load_ads([payload])
    assert schedd.negotiate() == [("9.0", f"slot1@{machines['1.0']}")]

    pool.now += 600
    plugin.retire(["1.0", "1.1"])
    assert sorted(c.args[0] for c in pool.calls if c.op == "condor_off") == sorted(machines.values())
    pilots = {p.backend_id: p for p in status.poll(pool.now).pilots}
    assert pilots["1.0"].state is PilotState.RETIRING and pilots["1.1"].state is PilotState.RETIRING
    assert pilots["1.2"].state is PilotState.PENDING

    # 1.1's idle startd exited at once: its VM job goes; 1.0 still runs a payload: it stays
    plugin.cleanup(list(pilots.values()), pool.now)
    assert set(schedd.jobs) == {"1.0", "1.2", "9.0"}
    assert pool.terminated == ["i-1"]

    schedd.complete("9.0")
    pilots = {p.backend_id: p for p in status.poll(pool.now).pilots}
    plugin.cleanup(list(pilots.values()), pool.now)
    assert set(schedd.jobs) == {"1.2"}
    assert pool.terminated == ["i-1", "i-0"]
    # the collector was asked about our instances only, with a projection
    for call in [c for c in pool.calls if c.op.startswith("collector:")]:
        assert call.constraint.startswith("member(EC2InstanceID, {") and call.projection


def test_retire_skips_a_vm_without_a_node_yet(tmp_path: Path, pool: StandinPool) -> None:
    plugin, status = setup_queue(tmp_path, pool)
    plugin.submit(1, PilotTags(FACTORY_ID, "CLOUD", "i1"), pool.now)
    schedd = pool.schedds[sd.Address()]
    schedd.start("1.0")  # Condor-G started the instance; its startd has not joined yet
    schedd.jobs["1.0"]["EC2InstanceName"] = "i-slow"
    plugin.retire(["1.0"])
    assert not [c for c in pool.calls if c.op in ("condor_off", "edit")]
    (pilot,) = status.poll(pool.now).pilots
    assert pilot.state is PilotState.RUNNING
    plugin.cleanup([pilot], pool.now)
    assert "1.0" in schedd.jobs  # booting VMs are never removed by cleanup


def test_kill_or_not_peaceful_removes_vm_jobs(tmp_path: Path, pool: StandinPool) -> None:
    plugin, _ = setup_queue(tmp_path, pool)
    plugin.submit(2, PilotTags(FACTORY_ID, "CLOUD", "i1"), pool.now)
    schedd = pool.schedds[sd.Address()]
    schedd.boot_vm("1.0", "i-a")
    plugin.retire(["1.0"], kill=True)
    assert "1.0" not in schedd.jobs and pool.terminated == ["i-a"]
    assert not [c for c in pool.calls if c.op == "condor_off"]

    other = tmp_path / "not-peaceful"
    other.mkdir()
    plugin2, _ = setup_queue(other, pool, peaceful=False)
    schedd.boot_vm("1.1", "i-b")
    plugin2.retire(["1.1"])
    assert "1.1" not in schedd.jobs and pool.terminated == ["i-a", "i-b"]


def test_usessh_is_refused(tmp_path: Path, pool: StandinPool) -> None:
    from autopyfactory.plugins.base import PluginError

    (tmp_path / "ak").write_text("AKIA")
    (tmp_path / "sk").write_text("secret")
    text = QUEUE.format(access=tmp_path / "ak", secret=tmp_path / "sk", peaceful=True)
    cfg = load_config(tmp_path, text + "batchsubmit.condorec2.usessh = True\n")
    with pytest.raises(PluginError, match=r"\[CLOUD\] batchsubmit.condorec2.usessh = True is not supported"):
        submitter(cfg, context(cfg), "CLOUD")
