"""The VM life cycle's pure parts: pilot states, what to do with each VM, leaks, user data, and the
pool parsers on output recorded from Slurm 22.05."""

from __future__ import annotations

from pathlib import Path

import pytest

from autopyfactory.model import PilotState, PilotTags
from autopyfactory.plugins.cloud import lifecycle as lc
from autopyfactory.plugins.cloud.lifecycle import (
    Instance,
    NodeState,
    PoolNode,
    VmPolicy,
    VmState,
)
from autopyfactory.plugins.cloud.pools import (
    match_nodes,
    parse_scontrol_fields,
    parse_scontrol_nodes,
    parse_sinfo_json,
    slurm_node_state,
)

DATA = Path(__file__).parent / "data" / "cloud"
TAGS = {lc.TAG_FACTORY: "f1", lc.TAG_QUEUE: "Q", lc.TAG_INTENT: "abc123"}
POOLED = VmPolicy(pooled=True, provisioning_deadline=600, retire_grace=3600)


def vm(
    iid: str = "i-1",
    state: VmState = VmState.RUNNING,
    launched: float = 1000.0,
    reason: str = "",
    **tags: str,
) -> Instance:
    return Instance(
        iid, state, {**TAGS, **{k.replace("_", ":"): v for k, v in tags.items()}}, launched, reason
    )


def node(state: NodeState, iid: str = "i-1", name: str = "f1") -> PoolNode:
    return PoolNode(name, iid, state)


# ---------------------------------------------------------------------------------------------
# pilot states


@pytest.mark.parametrize(
    ("inst", "n", "pooled", "expected"),
    [
        (vm(state=VmState.PENDING), None, True, PilotState.PENDING),
        (vm(), None, True, PilotState.PENDING),  # running, node not joined yet
        (vm(), None, False, PilotState.RUNNING),  # no pool: running is running
        (vm(), node(NodeState.BUSY), True, PilotState.RUNNING),
        (vm(), node(NodeState.IDLE), True, PilotState.RUNNING),
        (vm(), node(NodeState.DRAINING), True, PilotState.RETIRING),  # drained by someone: retiring
        (vm(apf_retire="1500"), node(NodeState.BUSY), True, PilotState.RETIRING),
        (vm(apf_retire="1500"), None, False, PilotState.RETIRING),
        (
            vm(apf_end="retired"),
            node(NodeState.DRAINED),
            True,
            PilotState.RETIRING,
        ),  # terminate not taken yet
        (vm(state=VmState.TERMINATED, apf_end="retired"), None, True, PilotState.DONE),
        (vm(state=VmState.TERMINATED, apf_end="cancelled"), None, True, PilotState.CANCELLED),
        (vm(state=VmState.TERMINATED, apf_end="provisioning-deadline"), None, True, PilotState.FAILED),
        (
            vm(state=VmState.TERMINATED, reason="Server.SpotInstanceTermination"),
            None,
            True,
            PilotState.FAILED,
        ),
        (
            vm(state=VmState.STOPPED, reason="Server.InsufficientInstanceCapacity"),
            None,
            False,
            PilotState.FAILED,
        ),
        (
            vm(state=VmState.TERMINATED, reason="Client.InstanceInitiatedShutdown"),
            None,
            False,
            PilotState.DONE,
        ),
        (vm(state=VmState.ERROR, reason="No valid host was found."), None, True, PilotState.FAILED),
        (vm(state=VmState.UNKNOWN), None, True, PilotState.UNKNOWN),
    ],
)
def test_pilot_state(inst: Instance, n: PoolNode | None, pooled: bool, expected: PilotState) -> None:
    assert lc.pilot_state(inst, n, pooled) is expected


def test_vm_pilot_carries_instance_node_and_times() -> None:
    p = lc.vm_pilot(vm(), "Q", node(NodeState.BUSY), pooled=True, joined_at=1100.0)
    assert (p.backend_id, p.instance_id, p.node, p.intent_id) == ("i-1", "i-1", "f1", "abc123")
    assert (p.submitted_at, p.started_at, p.ended_at) == (1000.0, 1100.0, None)
    # not joined: pending, not started
    p = lc.vm_pilot(vm(), "Q", None, pooled=True)
    assert p.state is PilotState.PENDING and p.started_at is None
    # no pool: started at launch
    assert lc.vm_pilot(vm(), "Q", None, pooled=False).started_at == 1000.0
    done = lc.vm_pilot(vm(state=VmState.TERMINATED), "Q", None, pooled=False, ended_at=2000.0)
    assert done.state is PilotState.DONE and done.ended_at == 2000.0


def test_interrupted_only_by_the_provider() -> None:
    assert lc.interrupted(vm(state=VmState.TERMINATED, reason="Server.SpotInstanceTermination"))
    assert lc.interrupted(vm(state=VmState.STOPPED, reason="Server.InsufficientInstanceCapacity"))
    assert not lc.interrupted(vm(state=VmState.TERMINATED, reason="Client.UserInitiatedShutdown"))
    assert not lc.interrupted(vm(state=VmState.RUNNING, reason="Server.SpotInstanceTermination"))
    # we terminated it (our end tag) even if the cloud words it otherwise
    assert not lc.interrupted(vm(state=VmState.TERMINATED, reason="Server.X", apf_end="retired"))


# ---------------------------------------------------------------------------------------------
# what to do now


def kinds(actions: list[lc.VmAction]) -> list[tuple[str, str, str]]:
    return [(a.kind.value, a.instance_id, str(a.reason)) for a in actions]


def test_never_joined_vm_is_terminated_after_the_deadline_only() -> None:
    insts = [vm("i-young", launched=1000.0), vm("i-old", launched=300.0)]
    assert kinds(lc.plan_vm_actions(insts, {}, POOLED, now=1000.0)) == [
        ("terminate", "i-old", "provisioning-deadline")
    ]
    # joined: no deadline any more
    joined = {"i-old": node(NodeState.BUSY, "i-old")}
    assert lc.plan_vm_actions(insts, joined, POOLED, now=1000.0) == []
    # without a pool the deadline is for leaving 'pending'
    nopool = VmPolicy(pooled=False, provisioning_deadline=600, retire_grace=3600)
    assert lc.plan_vm_actions(insts, {}, nopool, now=1000.0) == []
    pending = [vm("i-p", state=VmState.PENDING, launched=100.0)]
    assert kinds(lc.plan_vm_actions(pending, {}, nopool, now=1000.0)) == [
        ("terminate", "i-p", "provisioning-deadline")
    ]
    # no deadline configured: never
    assert lc.plan_vm_actions(insts, {}, VmPolicy(True, None, 3600), now=1e9) == []


def test_retiring_vm_is_terminated_only_when_its_node_is_quiet() -> None:
    r = vm(apf_retire="1000")
    assert lc.plan_vm_actions([r], {"i-1": node(NodeState.DRAINING)}, POOLED, now=2000.0) == []
    assert kinds(lc.plan_vm_actions([r], {"i-1": node(NodeState.DRAINED)}, POOLED, now=2000.0)) == [
        ("terminate", "i-1", "retired")
    ]
    assert kinds(lc.plan_vm_actions([r], {"i-1": node(NodeState.DOWN)}, POOLED, now=2000.0)) == [
        ("terminate", "i-1", "retired")
    ]
    assert kinds(lc.plan_vm_actions([r], {}, POOLED, now=2000.0)) == [("terminate", "i-1", "retired")]  # gone
    # an idle node that is not draining (the drain did not take): drain it first, never terminate
    assert kinds(lc.plan_vm_actions([r], {"i-1": node(NodeState.IDLE)}, POOLED, now=2000.0)) == [
        ("drain", "i-1", "retiring, node not draining")
    ]
    # retire.grace passed with work still running: terminate anyway
    assert kinds(lc.plan_vm_actions([r], {"i-1": node(NodeState.DRAINING)}, POOLED, now=4600.0)) == [
        ("terminate", "i-1", "retire-grace")
    ]


def test_retiring_without_a_pool_waits_for_the_grace() -> None:
    nopool = VmPolicy(pooled=False, provisioning_deadline=None, retire_grace=600)
    r = vm(apf_retire="1000")
    assert lc.plan_vm_actions([r], {}, nopool, now=1500.0) == []
    assert kinds(lc.plan_vm_actions([r], {}, nopool, now=1600.0)) == [("terminate", "i-1", "retired")]


def test_stopped_error_and_unfinished_terminations_are_terminated_and_nodes_released() -> None:
    insts = [
        vm("i-stopped", state=VmState.STOPPED),
        vm("i-error", state=VmState.ERROR, reason="No valid host was found."),
        vm("i-again", apf_end="cancelled"),
        vm("i-gone", state=VmState.TERMINATED, apf_end="retired"),
        vm("i-going", state=VmState.TERMINATING),
    ]
    nodes = {"i-gone": node(NodeState.DRAINED, "i-gone", "f3")}
    got = lc.plan_vm_actions(insts, nodes, POOLED, now=1000.0)
    assert kinds(got) == [
        ("terminate", "i-stopped", "stopped"),
        ("terminate", "i-error", "error"),
        ("terminate", "i-again", "cancelled"),
        ("release", "i-gone", "instance terminated"),
    ]
    assert got[-1].node is not None and got[-1].node.name == "f3"


# ---------------------------------------------------------------------------------------------
# leaks


def test_leaks_adopt_known_queues_and_terminate_the_rest_after_the_grace() -> None:
    mine = vm("i-known")
    inflight = vm("i-inflight", **{"apf:intent": "open1"})
    adoptable = vm("i-adopt")
    orphan = Instance(
        "i-orphan", VmState.RUNNING, {lc.TAG_FACTORY: "f1", lc.TAG_QUEUE: "GONE", lc.TAG_INTENT: "x"}
    )
    untagged_queue = Instance("i-noqueue", VmState.PENDING, {lc.TAG_FACTORY: "f1"})
    dead = vm("i-dead", state=VmState.TERMINATED, **{"apf:queue": "GONE"})
    insts = [mine, inflight, adoptable, orphan, untagged_queue, dead]
    first = {"i-orphan": 100.0, "i-noqueue": 950.0}
    adopt, terminate = lc.leaks(insts, {"i-known"}, {"open1"}, {"Q"}, first, now=1000.0, leak_grace=600)
    assert [i.id for i in adopt] == ["i-adopt"]
    assert [i.id for i in terminate] == ["i-orphan"]  # i-noqueue is still within its grace
    adopt, terminate = lc.leaks(insts, {"i-known"}, set(), {"Q"}, first, now=1600.0, leak_grace=600)
    assert [i.id for i in adopt] == ["i-inflight", "i-adopt"]  # the intent is settled now
    assert [i.id for i in terminate] == ["i-orphan", "i-noqueue"]


# ---------------------------------------------------------------------------------------------
# user data


def test_user_data_renders_every_variable_and_names_unknown_ones() -> None:
    tags = PilotTags("fac", "QUEUE_A", "0123456789ab")
    values = lc.template_values(
        tags,
        pool_address="ctl.example.org:6817",
        max_lifetime=7200.5,
        cloud="ec2",
        pilot_environment={"APFFID": "fac", "FACTORYQUEUE": "QUEUE_A"},
        extra={"site": "CERN"},
    )
    template = (
        "#!/bin/sh\n# {{ factory_id }} {{queue}} {{ intent_id }} {{ cloud }} {{ var.site }}\n"
        "{{ pilot_environment }}\nJOIN={{ pool_address }} $HOME ${X:-1}\n"
        "shutdown -h +{{ max_lifetime_minutes }} # {{ max_lifetime }}\n"
    )
    out = lc.render_user_data(template, values)
    assert "# fac QUEUE_A 0123456789ab ec2 CERN" in out
    assert "export APFFID=fac\nexport FACTORYQUEUE=QUEUE_A" in out
    assert "JOIN=ctl.example.org:6817 $HOME ${X:-1}" in out  # shell variables are left alone
    assert "shutdown -h +121 # 7200" in out
    assert lc.uses_lease(template) and lc.uses_lease(lc.DEFAULT_USER_DATA)
    with pytest.raises(lc.TemplateError, match=r"vm\.tpl, line 3: unknown variable \{\{ pool_adress \}\}"):
        lc.render_user_data("a\nb\nx={{ pool_adress }}\n", values, "vm.tpl")


def test_client_token_is_short_stable_and_per_intent() -> None:
    a = lc.client_token(PilotTags("f" * 128, "Q", "0123456789ab"))
    assert len(a) <= 64 and a == lc.client_token(PilotTags("f" * 128, "OTHER", "0123456789ab"))
    assert a != lc.client_token(PilotTags("f" * 128, "Q", "0123456789ac"))
    assert a != lc.client_token(PilotTags("g", "Q", "0123456789ab"))


# ---------------------------------------------------------------------------------------------
# pools


@pytest.mark.parametrize(
    ("base", "flags", "expected"),
    [
        ("idle", [], NodeState.IDLE),
        ("IDLE", ["DRAIN"], NodeState.DRAINED),
        ("allocated", ["DRAIN"], NodeState.DRAINING),
        ("MIXED", [], NodeState.BUSY),
        ("completing", [], NodeState.BUSY),
        ("IDLE*", [], NodeState.DOWN),
        ("idle", ["NOT_RESPONDING"], NodeState.DOWN),
        ("down", ["DRAIN"], NodeState.DOWN),
        ("idle", ["POWERED_DOWN"], NodeState.DOWN),
        ("future", [], None),
        ("reserved_new_word", [], NodeState.BUSY),  # unknown: assume work may run
    ],
)
def test_slurm_node_states(base: str, flags: list[str], expected: NodeState | None) -> None:
    assert slurm_node_state(base, flags) is expected


def test_sinfo_json_and_scontrol_from_slurm_22_05_agree() -> None:
    ids = ["i-0aaa1111bbbb2222c", "i-0ddd3333eeee4444f", "i-0fff5555aaaa6666b", "i-0unknown"]
    from_json = match_nodes(parse_sinfo_json((DATA / "sinfo-22.05.json").read_text()), ids)
    from_scontrol = match_nodes(
        parse_scontrol_nodes((DATA / "scontrol-show-node-22.05.txt").read_text()), ids
    )
    expected = {
        "i-0aaa1111bbbb2222c": ("f1", NodeState.IDLE),  # Comment and Extra (JSON)
        "i-0ddd3333eeee4444f": ("f2", NodeState.DRAINING),  # free text Comment, a job still running
        "i-0fff5555aaaa6666b": ("f3", NodeState.DRAINED),  # a Feature
    }
    for found in (from_json, from_scontrol):
        assert {k: (v.name, v.state) for k, v in found.items()} == expected
    # one attribute only: the features-advertised VM is not seen through comment
    only_comment = match_nodes(parse_sinfo_json((DATA / "sinfo-22.05.json").read_text(), "comment"), ids)
    assert set(only_comment) == {"i-0aaa1111bbbb2222c", "i-0ddd3333eeee4444f"}


def test_sinfo_json_of_later_slurm_with_state_lists() -> None:
    text = '{"nodes": [{"name": "c1", "state": ["IDLE", "DRAIN"], "comment": "i-1", "extra": "", "features": ""}]}'
    assert match_nodes(parse_sinfo_json(text), ["i-1"]) == {
        "i-1": PoolNode("c1", "i-1", NodeState.DRAINED, "IDLE+DRAIN")
    }


def test_a_node_advertising_two_wanted_ids_matches_neither() -> None:
    rows = [("f1", NodeState.IDLE, "IDLE", ["i-1 i-2"]), ("f2", NodeState.IDLE, "IDLE", ["i-10"])]
    assert match_nodes(rows, ["i-1", "i-2", "i-3"]) == {}  # i-10 is not i-1: whole tokens only


def test_scontrol_fields_keep_values_with_spaces() -> None:
    fields = parse_scontrol_fields(
        "NodeName=f2 OS=Linux 6.1 #1 SMP State=IDLE+DRAIN Reason=apf retire [root@2024] Comment=a b"
    )
    assert fields["OS"] == "Linux 6.1 #1 SMP" and fields["Reason"] == "apf retire [root@2024]"
    assert fields["Comment"] == "a b" and fields["State"] == "IDLE+DRAIN"


def test_the_cloud_example_queues_set_up_and_render_their_user_data() -> None:
    from autopyfactory.config.loader import load_factory_config
    from autopyfactory.plugins.base import FactoryContext

    config = load_factory_config(
        str(Path(__file__).resolve().parents[1] / "examples" / "cloud" / "autopyfactory.conf")
    )
    ctx = FactoryContext(config.factory_id, config.settings, dict(config.auth))
    assert {q.batchsubmit.name for q in config.queues.values()} == {"EC2", "OpenStack", "Script"}
    for q in config.queues.values():
        sub = q.batchsubmit.cls(q, q.batchsubmit.options, ctx)  # type: ignore[call-arg]
        try:
            text = sub.user_data(PilotTags(config.factory_id, q.name, "0123456789ab"))  # type: ignore[attr-defined]
        finally:
            sub.close()
        assert "shutdown -h +" in text and "{{" not in text
        if q.batchsubmit.name != "Script":
            assert "https://pool.example.org/slurm.conf" in text and f"export FACTORYQUEUE={q.name}" in text


@pytest.mark.parametrize(
    ("tier_deadline", "warned"),
    [(None, "not set"), ("20m", "1200 s"), ("10m", None), ("15m", None)],
)
def test_a_tier_whose_vms_are_written_off_before_it_backs_off_is_a_config_warning(
    tmp_path: Path, tier_deadline: str | None, warned: str | None
) -> None:
    """The queue terminates a VM that never joined at its provisioning_deadline (pilot failed, no
    longer pending); the tier backs off only on its own deadline over pending pilots: a longer (or
    no) tier deadline means VMs that never join never back the tier off."""
    from autopyfactory.config.loader import load_factory_config
    from tests.helpers import factory_conf, write

    deadline = f"\n                provisioning_deadline: {tier_deadline}" if tier_deadline else ""
    write(
        tmp_path / "policy.yaml",
        f"""
        cascades:
          - name: clouds
            demand: W
            tiers:
              - queue: POOLED{deadline}
              - queue: NOPOOL
        """,
    )
    ec2 = """
        batchsubmitplugin = EC2
        batchstatusplugin = EC2
        batchsubmit.ec2.region = us-east-1
        batchsubmit.ec2.ami = ami-12345678
        batchsubmit.ec2.instance_type = t3.micro
        batchsubmit.ec2.provisioning_deadline = 15m
    """
    path = factory_conf(
        tmp_path,
        f"""
        [DEFAULT]
        wmsqueue = W
        wmsstatusplugin = Sim
        schedplugin = Ready
        {ec2}

        [POOLED]
        batchsubmit.ec2.pool = slurm

        [NOPOOL]
        # no pool: nothing tells a joined VM from one that is not, no VM is written off
        """,
        extra="policyConf = policy.yaml\n",
    )
    warnings = [w for w in load_factory_config(str(path)).warnings if "provisioning_deadline" in w]
    if warned is None:
        assert warnings == []
    else:
        (message,) = warnings
        assert "policy.yaml" in message and "tier POOLED" in message
        assert "cascades[0].tiers[0].provisioning_deadline" in message
        assert f"{warned}, but queue [POOLED] terminates VMs whose node has not joined after 900 s" in message
