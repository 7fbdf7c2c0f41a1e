"""Cloud queues in the real engine (EC2 on moto): SIGKILL between RunInstances and the record, then a
restart that adopts and launches nothing twice; a cascade of two EC2 endpoints whose first answers
InsufficientInstanceCapacity (through the fault proxy), spilling at the next decision pass and draining the
costlier tier first; two queues on one endpoint sharing one poller (one DescribeInstances per poll)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from autopyfactory.config.loader import load_factory_config
from autopyfactory.engine.factory import Factory
from autopyfactory.store.api import Store
from tests.components_cloud import EC2Server
from tests.helpers import factory_conf, wait_for, write

APF = str(Path(sys.executable).parent / "apf")
FACTORY = "cloudtest"

AUTH = """
[moto]
plugin = CloudKey
cloudkey.access_key_id = testing
cloudkey.secret_access_key = testing
"""


def ec2_keys(ec2: EC2Server, url: str | None = None, region: str | None = None) -> str:
    """EC2 keys for a queue section, indented to sit at a placeholder of the templates below."""
    keys = [
        "batchsubmitplugin = EC2",
        "batchstatusplugin = EC2",
        f"batchsubmit.ec2.endpoint_url = {url or ec2.url}",
        f"batchsubmit.ec2.region = {region or ec2.region}",
        "batchsubmit.ec2.authprofile = moto",
        f"batchsubmit.ec2.ami = {ec2.image()}",
        "batchsubmit.ec2.instance_type = t3.micro",
        "batchsubmit.ec2.retries = 1",
    ]
    return "\n        ".join(keys)


def conf(tmp: Path, queues: str, extra: str = "", poll: float = 0.5) -> Path:
    write(tmp / "auth.conf", AUTH)
    return factory_conf(
        tmp,
        queues,
        extra=f"authConf = auth.conf\nbatchstatus.ec2.sleep = {poll}\n" + extra,
        factory_id=FACTORY,
    )


def by_intent(instances: list[dict[str, Any]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for inst in instances:
        intent = {t["Key"]: t["Value"] for t in inst.get("Tags", [])}.get("apf:intent", "?")
        out[intent] = out.get(intent, 0) + 1
    return out


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_sigkill_between_run_instances_and_the_record_then_restart_adopts(
    ec2: EC2Server, tmp_path: Path
) -> None:
    path = conf(
        tmp_path,
        f"""
        [CLOUD]
        enabled = True
        apfqueue.sleep = 0.5
        wmsqueue = CLOUD
        wmsstatusplugin = Sim
        wmsstatus.sim.activated = 4
        wmsstatus.sim.consume = True
        schedplugin = Ready
        {ec2_keys(ec2)}
        """,
        # no status poll between RunInstances and the crash (it would adopt the VMs before the crash)
        poll=300,
    )
    crashed = subprocess.run(
        [APF, "run", "--conf", str(path), "--no-table", "--log", str(tmp_path / "apf.log")],
        env={**os.environ, "APF_FAULT": "crash-after-submit"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert crashed.returncode == 137, crashed.stdout + crashed.stderr  # died right after RunInstances
    store = Store(load_factory_config(str(path)).settings.database_url())
    (intent,) = store.intents(FACTORY)
    assert intent["status"] == "open" and store.pilots(FACTORY) == []  # the crash came before the record
    assert by_intent(ec2.instances()) == {intent["id"]: 4}
    out = subprocess.run(
        [APF, "run", "--conf", str(path), "--once", "--no-table"], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stdout + out.stderr
    # adopted by their tags; nothing launched twice
    assert by_intent(ec2.instances()) == {intent["id"]: 4}
    assert [(i["status"], i["submitted"]) for i in store.intents(FACTORY)] == [("adopted", 4)]
    assert sorted(p["backend_id"] for p in store.pilots(FACTORY)) == sorted(
        i["InstanceId"] for i in ec2.instances()
    )


POLICY = """
cascades:
  - name: clouds
    demand: W
    tiers:
      - {queue: ACADEMIC, cap: 5, backoff: 1, cost_per_hour: 0.0, drain: {retire_running: true}}
      - {queue: COMMERCIAL, cost_per_hour: 0.10, drain: {retire_running: true}}
"""


def cascade_conf(tmp: Path, ec2: EC2Server, demand: int) -> Path:
    write(tmp / "policy.yaml", POLICY)
    return conf(
        tmp,
        f"""
        [DEFAULT]
        enabled = True
        apfqueue.sleep = 0.5
        wmsqueue = W
        wmsstatusplugin = Sim
        wmsstatus.sim.activated = {demand}
        schedplugin = Ready
        batchsubmit.ec2.retire.grace = 0

        [ACADEMIC]
        # the first tier's endpoint: the fault proxy in front of moto, region us-east-1
        {ec2_keys(ec2, url=ec2.proxy_url, region="us-east-1")}

        [COMMERCIAL]
        {ec2_keys(ec2, region="us-west-2")}
        """,
        extra="policyConf = policy.yaml\n",
    )


def live(ec2: EC2Server, region: str) -> list[str]:
    return [
        i["InstanceId"] for i in ec2.instances(region=region) if i["State"]["Name"] in ("pending", "running")
    ]


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_cascade_spills_on_capacity_in_the_same_cycle_and_drains_the_costlier_tier_first(
    ec2: EC2Server, tmp_path: Path
) -> None:
    path = cascade_conf(tmp_path, ec2, demand=3)
    ec2.fault("RunInstances", "InsufficientInstanceCapacity", status=500, times=-1)
    factory = Factory(load_factory_config(str(path)))
    try:
        plans = factory.step(poll_all=True)
        first = next(p for p in plans if p.queue == "ACADEMIC")
        # the cheap tier is asked first and refuses for capacity (one RunInstances: not retried)
        assert first.decision.n == 3 and ec2.fault_hits() == {"RunInstances": 1}
        events = [e["message"] for e in factory.store.events(FACTORY)]
        assert any("tier ACADEMIC backed off" in m and "InsufficientInstanceCapacity" in m for m in events), (
            events
        )
        # in the same cycle the cascade allocates again: the second tier gets the demand
        assert [p.decision.n for p in plans if p.queue == "ACADEMIC"] == [3, 0]
        assert [p.decision.n for p in plans if p.queue == "COMMERCIAL"] == [0, 3]
        assert live(ec2, "us-east-1") == [] and len(live(ec2, "us-west-2")) == 3
        assert ec2.fault_hits() == {"RunInstances": 1}  # the backed-off tier was not asked again

        # capacity is back: once the backoff is over, more demand goes to the cheap tier first
        ec2.clear_faults()
        cascade = factory.cascades["clouds"]
        wait_for(
            lambda: cascade.backoff_until.get("ACADEMIC", 0.0) <= time.time(), 30, "the tier's backoff to end"
        )
        write(
            tmp_path / "queues.conf",
            (tmp_path / "queues.conf").read_text().replace("activated = 3", "activated = 5"),
        )
        factory.reload(load_factory_config(str(path)))
        wait_for(
            lambda: factory.step(poll_all=True) is not None and len(live(ec2, "us-east-1")) == 2,
            60,
            "the academic tier to take the new demand",
        )
        assert len(live(ec2, "us-west-2")) == 3
        academic = live(ec2, "us-east-1")

        # demand drops to 2: the commercial tier's VMs are drained and terminated, the academic ones stay
        write(
            tmp_path / "queues.conf",
            (tmp_path / "queues.conf").read_text().replace("activated = 5", "activated = 2"),
        )
        factory.reload(load_factory_config(str(path)))
        wait_for(
            lambda: factory.step(poll_all=True) is not None and live(ec2, "us-west-2") == [],
            60,
            "the commercial tier to drain",
        )
        assert sorted(live(ec2, "us-east-1")) == sorted(academic)
        ends = {
            {t["Key"]: t["Value"] for t in i["Tags"]}.get("apf:end")
            for i in ec2.instances(region="us-west-2")
        }
        assert ends == {"retired"}  # retired (no pool: it ends at retire.grace = 0), never killed outright
    finally:
        factory.shutdown()


def behind_our_back(ec2: EC2Server, queue: str) -> str:
    """An instance carrying this factory's tags, launched directly with boto3: no intent we know."""
    tags = [{"Key": "apf:factory", "Value": FACTORY}, {"Key": "apf:queue", "Value": queue},
            {"Key": "apf:intent", "Value": "000000000000"}]  # fmt: skip
    run = ec2.client().run_instances(
        ImageId=ec2.image(),
        MinCount=1,
        MaxCount=1,
        TagSpecifications=[{"ResourceType": "instance", "Tags": tags}],
    )
    return str(run["Instances"][0]["InstanceId"])


def apf_status(path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [APF, "status", "--conf", str(path), *args], capture_output=True, text=True, timeout=60
    )


def scrape(url: str) -> dict[str, float]:
    import urllib.request

    text = urllib.request.urlopen(url, timeout=10).read().decode()
    return {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("apf_vm_")
    }


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_the_daemon_adopts_and_terminates_leaks_and_reports_an_interruption(
    ec2: EC2Server, tmp_path: Path
) -> None:
    import json
    import signal

    # before the factory starts: one tagged VM of a configured queue, one of a queue that is gone
    adoptable, orphan = behind_our_back(ec2, "CLOUD"), behind_our_back(ec2, "REMOVED")
    path = conf(
        tmp_path,
        f"""
        [CLOUD]
        enabled = True
        apfqueue.sleep = 0.5
        wmsqueue = CLOUD
        wmsstatusplugin = Sim
        # no consume: Ready launches 2 VMs every cycle, so polls often overlap a launch
        wmsstatus.sim.activated = 2
        schedplugin = Ready
        {ec2_keys(ec2)}
        batchsubmit.ec2.market = spot
        batchstatus.ec2.leak_grace = 2
        """,
    )
    proc = subprocess.Popen(
        [APF, "run", "--conf", str(path), "--no-table", "--log", str(tmp_path / "apf.log")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:

        def status() -> dict[str, Any]:
            out = apf_status(path, "--json")
            assert out.returncode == 0, out.stderr
            return dict(json.loads(out.stdout))

        def reconciled() -> dict[str, Any] | None:
            info = status()
            cloud = info.get("cloud") or {}
            counts = next(iter(cloud.values()), {})
            done = counts.get("adopted") == 1 and counts.get("terminated_leaks") == 1
            return info if done and info.get("metrics") else None

        info = wait_for(reconciled, 120, "the engine to adopt one VM and terminate the other")
        assert isinstance(info, dict)
        # a few more cycles of launches that the polls overlap
        launches = len(ec2.launches())
        wait_for(lambda: len(ec2.launches()) >= launches + 10, 60, "ten more launches")
        info = status()
        (label,) = info["cloud"]
        assert label == f"batchstatus EC2 at ec2:{ec2.region}@{ec2.url}"
        # the factory's own VMs are never taken for leaks (a poll that began before their launch
        # returned does not list them; the cloud's launch time has whole seconds)
        assert info["cloud"][label] == {"leaked": 0, "adopted": 1, "terminated_leaks": 1, "interrupted": 0}
        # the orphan is terminated with the reason tagged; the adopted VM lives on as a pilot of CLOUD
        ends = {i["InstanceId"]: (i["State"]["Name"], dict((t["Key"], t["Value"]) for t in i["Tags"]).get("apf:end"))
                for i in ec2.instances()}  # fmt: skip
        assert ends[orphan] == ("terminated", "leaked") and ends[adoptable] == ("running", None)
        store = Store(load_factory_config(str(path)).settings.database_url())
        pilots = {p["backend_id"]: p for p in store.pilots(FACTORY)}
        assert pilots[adoptable]["queue"] == "CLOUD" and pilots[orphan]["queue"] == "REMOVED"  # as tagged
        events = {(e["kind"], e["queue"]): e["message"] for e in store.events(FACTORY, limit=500)}
        assert (
            adoptable in events[("adopt", "CLOUD")]
            and "adopted 1 tagged resources" in events[("adopt", "CLOUD")]
        )
        assert orphan in events[("leak", None)] and "their queue is gone" in events[("leak", None)]
        text = apf_status(path)
        assert f"cloud {label}: 0 leaked VMs (tagged, unknown, their queue gone); 1 adopted, 1 leaks terminated, " \
            "0 interrupted by the provider" in text.stdout, text.stdout  # fmt: skip

        # the provider takes back a spot VM the factory launched
        def launched() -> list[str]:
            return [i["InstanceId"] for i in ec2.instances(**{"tag_apf:queue": "CLOUD"})
                    if i["State"]["Name"] == "running" and i["InstanceId"] != adoptable]  # fmt: skip

        victim = wait_for(lambda: launched()[:1], 60, "a VM the factory launched")[0]
        assert ec2.interrupt([victim], "Server.SpotInstanceTermination") == [victim]
        metric = 'apf_vm_interruptions_total{queue="CLOUD",reason="Server.SpotInstanceTermination"}'
        wait_for(lambda: scrape(info["metrics"]).get(metric) == 1.0, 60, "the interruption on /metrics")
        interrupted = [e for e in store.events(FACTORY, limit=500) if e["kind"] == "interrupted"]
        assert [(e["queue"], e["message"]) for e in interrupted] == [
            ("CLOUD", f"{victim}: spot interruption: Server.SpotInstanceTermination")
        ]
        wait_for(lambda: next(iter(status()["cloud"].values())).get("interrupted") == 1, 30, "apf status")
        assert (
            store.pilots(FACTORY)
            and {p["backend_id"]: p["state"] for p in store.pilots(FACTORY)}[victim] == "failed"
        )
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_two_queues_on_one_endpoint_share_one_status_poll(ec2: EC2Server, tmp_path: Path) -> None:
    # A and B: the same endpoint (the fault proxy, which counts requests by action), region and auth
    # profile; C: another region of the same moto (directly, not through the proxy): its own poller
    path = conf(
        tmp_path,
        f"""
        [DEFAULT]
        enabled = True
        apfqueue.sleep = 0.5
        wmsstatusplugin = Sim
        wmsstatus.sim.activated = 2
        wmsstatus.sim.consume = True
        schedplugin = Ready

        [A]
        wmsqueue = A
        {ec2_keys(ec2, url=ec2.proxy_url)}

        [B]
        wmsqueue = B
        {ec2_keys(ec2, url=ec2.proxy_url)}

        [C]
        wmsqueue = C
        {ec2_keys(ec2, region="us-west-2")}
        """,
    )
    factory = Factory(load_factory_config(str(path)))
    try:
        queues = factory.state.queues
        shared = queues["A"].batch_poller
        assert queues["B"].batch_poller is shared and queues["C"].batch_poller is not shared
        batch = [p for p in factory.pollers.values() if p.kind == "batchstatus"]
        assert len(batch) == 2 and shared in batch
        before = shared.status.polls

        def both_listed() -> bool:
            factory.step(poll_all=True)
            queues_seen = {p.queue for p in (shared.latest.pilots if shared.latest else ())}
            return queues_seen == {"A", "B"}

        wait_for(both_listed, 60, "one poll to list the VMs of both queues")
        polls = shared.status.polls - before
        assert polls >= 1
        # one DescribeInstances per poll of that endpoint serves both queues (and no other call lists them)
        assert ec2.requests().get("DescribeInstances") == polls, ec2.requests()
        assert ec2.requests().get("RunInstances") == 2  # one launch per queue
        assert len(ec2.instances(**{"tag_apf:queue": "A"})) == 2
        assert len(ec2.instances(**{"tag_apf:queue": "B"})) == 2
        assert len(ec2.instances(region="us-west-2", **{"tag_apf:queue": "C"})) == 2
    finally:
        factory.shutdown()
