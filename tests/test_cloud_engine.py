"""Cloud queues in the real engine (EC2 on moto): SIGKILL between RunInstances and the record, then a
restart that adopts and launches nothing twice; a cascade of two EC2 endpoints whose first answers
InsufficientInstanceCapacity (through the fault proxy), spilling at the next decision pass and draining the
costlier tier first."""

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
