"""The poster's cascade of clouds in the real daemon (``apf run``): "first to a private,
facility-based cloud, then a free academic cloud, then spot-priced EC2 resources, and finally
on-demand commercial clouds" (examples/cloud-cascade/).

Four tiers on separate endpoints, so a fault on one touches no other:

* PRIVATE: the OpenStack wire stub (Keystone + Nova), cap 2;
* ACADEMIC: moto directly, region us-east-1, a monthly quota of 3 VMs;
* SPOT: moto through the fault proxy, region us-east-2, ``market = spot`` with a max price;
* ONDEMAND: moto directly, region us-west-2, the costliest.

Demand comes from the fake PanDA server (the real wire format), which the test moves through the
levels of examples/cloud-cascade/demand.csv as each one settles. SPOT answers
InsufficientInstanceCapacity when the demand first reaches it. Then the same policy runs in
``apf simulate`` on the same demand shape (Sim sites, SPOT refusing in the same phase through
``batchsubmit.sim.refuse``) and the order of the key events must be the same as in the live run.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from autopyfactory.config.loader import load_factory_config
from autopyfactory.sim.trace import load_trace
from autopyfactory.store.api import Store
from tests.components_cloud import EC2Server, OpenStackStub
from tests.fakepanda import FakePanda
from tests.helpers import factory_conf, wait_for, write

APF = str(Path(sys.executable).parent / "apf")
EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "cloud-cascade"
FACTORY = "cloudtest"
SITE = "CLOUD_SITE"  # the PanDA queue whose activated jobs are the demand
TIERS = ("PRIVATE", "ACADEMIC", "SPOT", "ONDEMAND")
REGIONS = {"ACADEMIC": "us-east-1", "SPOT": "us-east-2", "ONDEMAND": "us-west-2"}
CASCADE = "cascade:clouds"
# the example's policy with a backoff the test can wait out (the example's is 10 minutes)
POLICY = (EXAMPLE / "cascade.yaml").read_text().replace("backoff: 10m ", "backoff: 10s ")
assert "backoff: 10s " in POLICY
TRACE = load_trace(EXAMPLE / "demand.csv").resolve(0.0)
LEVELS = [level for _, level in TRACE.steps(SITE, 0.0, 1e9)]
# VMs per tier once each level of the trace has settled (PRIVATE, ACADEMIC, SPOT, ONDEMAND)
SETTLED = {
    2: (2, 0, 0, 0),  # the private cloud first, up to its cap
    4: (2, 2, 0, 0),  # then the academic cloud
    7: (2, 3, 0, 2),  # its quota (3) spent; spot refuses for capacity: on demand takes the rest
    9: (2, 3, 2, 2),  # spot has capacity again: the new demand goes there, not to on demand
}
DRAIN = [(7, (2, 3, 2, 0)), (5, (2, 3, 0, 0)), (2, (2, 0, 0, 0)), (0, (0, 0, 0, 0))]
# the key events, in order: each tier first asked, quota spent, refused for capacity, drained
EXPECTED = [
    ("fill", "PRIVATE"),
    ("fill", "ACADEMIC"),
    ("quota", "ACADEMIC"),
    ("fill", "SPOT"),
    ("refused", "SPOT"),
    ("fill", "ONDEMAND"),
    ("drain", "ONDEMAND"),
    ("drain", "SPOT"),
    ("drain", "ACADEMIC"),
    ("drain", "PRIVATE"),
]
EVENTS = [
    ("spill", "PRIVATE"),
    ("quota_exhausted", "ACADEMIC"),
    ("spill", "ACADEMIC"),
    ("backoff", "SPOT"),
    ("spill", "SPOT"),
    ("drain", "ONDEMAND"),
    ("drain", "SPOT"),
    ("drain", "ACADEMIC"),
    ("drain", "PRIVATE"),
]

AUTH = """
[moto]
plugin = CloudKey
cloudkey.access_key_id = testing
cloudkey.secret_access_key = testing
"""


def ec2_tier(ec2: EC2Server, url: str, region: str, *extra: str) -> str:
    keys = [
        "batchsubmitplugin = EC2",
        "batchstatusplugin = EC2",
        f"batchsubmit.ec2.endpoint_url = {url}",
        f"batchsubmit.ec2.region = {region}",
        "batchsubmit.ec2.authprofile = moto",
        f"batchsubmit.ec2.ami = {ec2.image()}",
        "batchsubmit.ec2.instance_type = t3.micro",
        "batchsubmit.ec2.retries = 1",
        "batchsubmit.ec2.retire.grace = 0",  # no pool: a retired VM is terminated at once
        *extra,
    ]
    return "\n        ".join(keys)


def live_conf(tmp: Path, ec2: EC2Server, openstack: OpenStackStub, panda: FakePanda) -> Path:
    write(tmp / "auth.conf", AUTH)
    write(tmp / "policy.yaml", POLICY)
    spot = ec2_tier(
        ec2,
        ec2.proxy_url,
        REGIONS["SPOT"],
        "batchsubmit.ec2.market = spot",
        "batchsubmit.ec2.spot_max_price = 0.05",
    )
    return factory_conf(
        tmp,
        f"""
        [DEFAULT]
        enabled = True
        apfqueue.sleep = 0.5
        wmsqueue = {SITE}
        wmsstatusplugin = Panda
        wmsstatus.panda.url = {panda.api_url}
        wmsstatus.panda.timeout = 5
        schedplugin = Ready

        [PRIVATE]
        batchsubmitplugin = OpenStack
        batchstatusplugin = OpenStack
        batchsubmit.openstack.cloud = {openstack.cloud}
        batchsubmit.openstack.clouds_file = {openstack.clouds_yaml}
        batchsubmit.openstack.flavor = m1.small
        batchsubmit.openstack.image = pilot-image
        batchsubmit.openstack.retire.grace = 0

        [ACADEMIC]
        {ec2_tier(ec2, ec2.url, REGIONS["ACADEMIC"])}

        [SPOT]
        # the fault proxy in front of moto: capacity errors hit this tier only
        {spot}

        [ONDEMAND]
        {ec2_tier(ec2, ec2.url, REGIONS["ONDEMAND"])}
        """,
        extra=(
            "authConf = auth.conf\npolicyConf = policy.yaml\n"
            "wmsstatus.panda.sleep = 0.5\nwmsstatus.panda.maxage = 60\n"
            "batchstatus.ec2.sleep = 0.5\nbatchstatus.openstack.sleep = 0.5\n"
        ),
        factory_id=FACTORY,
    )


def vm_counts(ec2: EC2Server, openstack: OpenStackStub) -> tuple[int, ...]:
    """Live VMs (pending or running) per tier, as the clouds report them."""
    out = dict.fromkeys(TIERS, 0)
    for s in openstack.servers():
        if s["status"] in ("BUILD", "ACTIVE"):
            out[s["metadata"].get("apf:queue", "?")] += 1
    for tier, region in REGIONS.items():
        out[tier] += sum(
            1 for i in ec2.instances(region=region) if i["State"]["Name"] in ("pending", "running")
        )
    return tuple(out[t] for t in TIERS)


def key_events(store: Store, factory_id: str) -> list[tuple[str, str]]:
    """What each cascade decision did, first occurrence of each (kind, tier), in decision order:
    a tier first asked for VMs (fill), out of quota, refused (backed off), first giving back."""
    seen: list[tuple[str, str]] = []
    for d in reversed(store.decisions(factory_id, CASCADE, limit=1_000_000)):
        for step in d["steps"]:
            tier, n, reason = step["plugin"], step["out"], step["reason"]
            kinds = [
                kind
                for kind, holds in (
                    ("fill", n > 0),
                    ("quota", reason.startswith("out of quota")),
                    ("refused", reason.startswith("backed off")),
                    ("drain", n < 0),
                )
                if holds
            ]
            seen += [(k, tier) for k in kinds if (k, tier) not in seen]
    return seen


def cascade_events(store: Store, factory_id: str) -> list[tuple[str, str]]:
    """The cascade's recorded events (spill, quota, backoff, drain) as (kind, tier), in order."""
    out = []
    for e in reversed(store.events(factory_id, CASCADE, limit=100_000)):
        tier = e["message"].removeprefix("tier ").split(":")[0].split(" ")[0]
        out.append((e["kind"], tier))
    return out


def passes_to_next_tier(store: Store, factory_id: str) -> tuple[int, float]:
    """Cascade decisions (allocation passes) from the one whose SPOT request was refused to the
    first that gave ONDEMAND VMs, and the time between them."""
    decisions = list(reversed(store.decisions(factory_id, CASCADE, limit=1_000_000)))

    def out(d: dict[str, Any], tier: str) -> int:
        return next(s["out"] for s in d["steps"] if s["plugin"] == tier)

    asked = next(i for i, d in enumerate(decisions) if out(d, "SPOT") > 0)
    first = next(i for i, d in enumerate(decisions) if out(d, "ONDEMAND") > 0)
    return first - asked, decisions[first]["time"] - decisions[asked]["time"]


@dataclass
class LiveRun:
    path: Path
    store: Store
    key_events: list[tuple[str, str]]
    events: list[tuple[str, str]]
    passes: int
    pass_seconds: float
    refused_requests: int
    spot_backoff_s: float
    ever: tuple[int, ...]  # VMs ever created per tier (the store's rows)
    academic_instances: int  # every instance the academic endpoint ever launched (moto)
    ec2_ends: dict[str, set[str | None]]  # the apf:end tags of the EC2 instances, per region


def run_live(ec2: EC2Server, openstack: OpenStackStub, panda: FakePanda, tmp: Path) -> LiveRun:
    assert [*SETTLED, *(level for level, _ in DRAIN)] == LEVELS, LEVELS  # the example's demand shape
    path = live_conf(tmp, ec2, openstack, panda)
    store = Store(load_factory_config(str(path)).settings.database_url())
    panda.set_activated(SITE, LEVELS[0])
    proc = subprocess.Popen(
        [APF, "run", "--conf", str(path), "--no-table", "--log", str(tmp / "apf.log")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:

        def settle(level: int, want: tuple[int, ...], what: str) -> None:
            panda.set_activated(SITE, level)
            wait_for(lambda: vm_counts(ec2, openstack) == want, 90, f"demand {level}: {what} {want}")

        settle(2, SETTLED[2], "the private cloud takes it")
        settle(4, SETTLED[4], "the academic cloud takes what the private one's cap leaves")
        # spot has no capacity: armed until cleared (RunInstances is sent once, never retried)
        ec2.fault("RunInstances", "InsufficientInstanceCapacity", status=500, times=-1)
        settle(7, SETTLED[7], "on demand takes what spot refused")
        refused = ec2.fault_hits().get("RunInstances", 0)
        ec2.clear_faults()

        def spot_back() -> bool:  # the daemon's own word that SPOT's backoff is over
            (last,) = store.decisions(FACTORY, CASCADE, limit=1)
            return not any(s["plugin"] == "SPOT" and "backed off" in s["reason"] for s in last["steps"])

        wait_for(spot_back, 60, "the SPOT tier's backoff to end")
        settle(9, SETTLED[9], "spot takes the new demand")
        for level, want in DRAIN:
            settle(level, want, "the costliest tier with VMs gives them back")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    assert proc.returncode == 0
    passes, seconds = passes_to_next_tier(store, FACTORY)
    backoff = next(e for e in store.events(FACTORY, CASCADE, limit=1000) if e["kind"] == "backoff")
    return LiveRun(
        path,
        store,
        key_events(store, FACTORY),
        cascade_events(store, FACTORY),
        passes,
        seconds,
        refused,
        backoff["time"],
        tuple(sum(1 for p in store.pilots(FACTORY) if p["queue"] == t) for t in TIERS),
        len(ec2.instances(region=REGIONS["ACADEMIC"])),
        {
            region: {
                {t["Key"]: t["Value"] for t in i["Tags"]}.get("apf:end") for i in ec2.instances(region=region)
            }
            for region in REGIONS.values()
        },
    )


@pytest.fixture(scope="module")
def live_run(
    ec2_server: EC2Server, openstack_stub: OpenStackStub, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveRun]:
    """One live run of the cascade for the tests of this module (clean clouds before and after)."""
    ec2_server.reset()
    openstack_stub.reset()
    try:
        with FakePanda() as panda:
            panda.set_jobs(SITE, "running", 1)  # other jobs exist: activated 0 is an answer
            yield run_live(ec2_server, openstack_stub, panda, tmp_path_factory.mktemp("live"))
    finally:
        ec2_server.reset()
        openstack_stub.reset()


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_cascade_of_clouds_in_the_daemon(live_run: LiveRun) -> None:
    run = live_run
    # cheap first, spill on cap, quota and capacity; drain from the costliest tier: the decisions
    assert run.key_events == EXPECTED
    assert run.events == EVENTS
    assert run.refused_requests >= 1
    print(
        f"\ncascade live: capacity error on SPOT -> ONDEMAND's first VM request: {run.passes} allocation "
        f"pass(es), {run.pass_seconds:.2f} s (cycle 0.5 s; {run.refused_requests} refused RunInstances)"
    )
    assert run.passes == 1  # the very next allocation pass: within one cycle

    # the quota: never more than 3 VMs on the academic cloud, and the ledger agrees
    config = load_factory_config(str(run.path))
    assert config.policy is not None
    assert run.ever == (2, 3, 2, 2)  # every VM ever created, per tier
    assert run.academic_instances == 3
    assert run.store.quota_left(config.policy.cascades[0].tiers, time.time())["ACADEMIC"] == 0

    # contraction in reverse order, by the VMs' end times in the store: every VM of a costlier
    # tier ended before any VM of a cheaper one
    pilots = run.store.pilots(FACTORY)
    ended: dict[str, list[float]] = {t: [] for t in TIERS}
    for p in pilots:
        assert p["ended_at"] is not None, p
        ended[p["queue"]].append(p["ended_at"])
    for costlier, cheaper in zip(TIERS[::-1], TIERS[::-1][1:], strict=False):
        assert max(ended[costlier]) < min(ended[cheaper]), (costlier, cheaper, ended)
    # ... and the first VM of each tier came in fill order (ONDEMAND before SPOT: spot refused);
    # the intents carry the factory's own times (EC2 launch times have whole seconds)
    intents = {t: run.store.intents(FACTORY, t) for t in TIERS}
    created = {t: next(i["finished"] for i in intents[t] if i["status"] != "failed") for t in TIERS}
    assert created["PRIVATE"] < created["ACADEMIC"] < created["ONDEMAND"] < created["SPOT"]
    (refused,) = [i for i in intents["SPOT"] if i["status"] == "failed"]
    assert "InsufficientInstanceCapacity" in refused["error"]
    assert refused["finished"] <= run.spot_backoff_s < created["ONDEMAND"]
    print(
        "cascade live: SPOT refused -> first ONDEMAND VMs created "
        f"{created['ONDEMAND'] - refused['finished']:.2f} s later"
    )
    # retired, never killed: the EC2 VMs carry the end the factory gave them
    assert run.ec2_ends == {region: {"retired"} for region in REGIONS.values()}


def simulate(tmp: Path, policy: Path, step: str) -> tuple[Store, dict[str, Any]]:
    state = tmp / "sim"
    state.mkdir()
    out = subprocess.run(
        [
            APF, "simulate", "--conf", str(EXAMPLE / "simulate" / "autopyfactory.conf"),
            "--policy", str(policy), "--demand", str(EXAMPLE / "demand.csv"),
            "--start", "2027-01-01T00:00:00Z", "--days", "0.25", "--step", step,
            "--state", str(state), "--json",
        ],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    return Store(f"sqlite:///{state / 'sim.db'}"), json.loads(out.stdout)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_apf_simulate_of_the_same_cascade_agrees_on_the_order_of_events(
    live_run: LiveRun, tmp_path: Path
) -> None:
    # the live run's policy, the example's Sim sites (SPOT refusing from 1h to 1h20m, when the
    # demand first reaches it) and the same demand shape, one level every 30 simulated minutes
    policy = write(tmp_path / "policy.yaml", POLICY)
    store, report = simulate(tmp_path, policy, "5s")
    sim_factory = "cloud-cascade-sim"
    assert key_events(store, sim_factory) == live_run.key_events == EXPECTED
    assert cascade_events(store, sim_factory) == live_run.events == EVENTS
    passes, seconds = passes_to_next_tier(store, sim_factory)
    print(
        f"\ncascade simulated: capacity error on SPOT -> ONDEMAND's first VM request: {passes} "
        f"allocation pass(es), {seconds:.0f} simulated s (step 5 s); live: {live_run.passes}, "
        f"{live_run.pass_seconds:.2f} s"
    )
    # the engine allocates again once the academic tier's new VMs (asked in the same pass) are
    # seen: the next poll in the daemon, the next step in the simulator
    assert passes == live_run.passes == 1
    tiers = report["tiers"]
    submitted = tuple(sum(m["submitted"] for m in tiers[t]["months"].values()) for t in TIERS)
    assert submitted == live_run.ever == (2, 3, 2, 2)
    assert tiers["ACADEMIC"]["months"]["2027-01"]["quota_used"] == 3


@pytest.mark.timeout(120)
def test_the_examples_own_simulation_has_the_same_order(tmp_path: Path) -> None:
    """The example as documented (10-minute spot backoff, 1-minute steps) tells the same story."""
    store, _ = simulate(tmp_path, EXAMPLE / "cascade.yaml", "1m")
    assert key_events(store, "cloud-cascade-sim") == EXPECTED
    assert cascade_events(store, "cloud-cascade-sim") == EVENTS


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_a_full_private_cloud_spills_to_the_academic_one_within_a_cycle(
    ec2: EC2Server, openstack: OpenStackStub, tmp_path: Path
) -> None:
    """The first tier's capacity error: Nova answers 403 "Quota exceeded" (armed for more calls
    than the factory makes), the private tier backs off and the academic cloud gets the demand."""
    openstack.fault(create="quota", times=5)
    with FakePanda() as panda:
        panda.set_jobs(SITE, "running", 1)
        panda.set_activated(SITE, 2)
        path = live_conf(tmp_path, ec2, openstack, panda)
        proc = subprocess.Popen(
            [APF, "run", "--conf", str(path), "--no-table", "--log", str(tmp_path / "apf.log")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            wait_for(lambda: vm_counts(ec2, openstack) == (0, 2, 0, 0), 90, "the academic cloud to take 2")
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=60)
    store = Store(load_factory_config(str(path)).settings.database_url())
    decisions = list(reversed(store.decisions(FACTORY, CASCADE, limit=1000)))
    outs = [{s["plugin"]: s["out"] for s in d["steps"]} for d in decisions]
    asked = next(i for i, o in enumerate(outs) if o["PRIVATE"] > 0)
    first = next(i for i, o in enumerate(outs) if o["ACADEMIC"] > 0)
    print(f"\ncascade live: capacity error on PRIVATE (Nova 403 quota) -> ACADEMIC: {first - asked} pass(es)")
    assert first - asked == 1
    # the cause before its effect (the backoff is stamped when Nova refused, the spill later)
    assert cascade_events(store, FACTORY)[:2] == [("backoff", "PRIVATE"), ("spill", "PRIVATE")]
    (refused,) = store.intents(FACTORY, "PRIVATE")
    assert refused["status"] == "failed" and "quota exceeded (HTTP 403)" in refused["error"]
    assert sum(1 for r in openstack.requests() if r == "POST /compute/v2.1/servers") == 1  # not retried
