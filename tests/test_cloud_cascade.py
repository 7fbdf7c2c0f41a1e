"""The poster's cascade of clouds in the real daemon (``apf run``): "first to a private,
facility-based cloud, then a free academic cloud, then spot-priced EC2 resources, and finally
on-demand commercial clouds".

Four tiers on separate endpoints, so a fault on one touches no other:

* PRIVATE: the OpenStack wire stub (Keystone + Nova), cap 2;
* ACADEMIC: moto directly, region us-east-1, a monthly quota of 3 VMs;
* SPOT: moto through the fault proxy, region us-east-2, ``market = spot`` with a max price;
* ONDEMAND: moto directly, region us-west-2, the costliest.

Demand comes from the fake PanDA server (the real wire format), which the test turns up and down.
The same policy and demand shape then run in ``apf simulate`` (Sim backends, a capacity-refusal
window on SPOT) and the order of the key events must agree with the live run.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from autopyfactory.config.loader import load_factory_config
from autopyfactory.store.api import Store
from tests.components_cloud import EC2Server, OpenStackStub
from tests.fakepanda import FakePanda
from tests.helpers import factory_conf, wait_for, write

APF = str(Path(sys.executable).parent / "apf")
FACTORY = "cloudtest"
SITE = "CLOUD_SITE"  # the PanDA queue whose activated jobs are the demand
TIERS = ("PRIVATE", "ACADEMIC", "SPOT", "ONDEMAND")
CASCADE = "cascade:clouds"

POLICY = """\
version: 1
cascades:
  - name: clouds
    demand: CLOUD_SITE
    tiers:
      - queue: PRIVATE        # the facility's OpenStack: used first, as far as it goes
        cap: 2
        cost_per_hour: 0.0
        drain: {retire_running: true}
      - queue: ACADEMIC       # a free academic cloud with a monthly allocation
        quotas: [{per: month, pilots: 3}]
        cost_per_hour: 0.0
        drain: {retire_running: true}
      - queue: SPOT           # EC2 spot
        cost_per_hour: 0.03
        backoff: 10s
        drain: {retire_running: true}
      - queue: ONDEMAND       # EC2 on demand: the last resort
        cost_per_hour: 0.10
        drain: {retire_running: true}
"""

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
        "batchsubmit.ec2.retire.grace = 0",
        *extra,
    ]
    return "\n        ".join(keys)


def live_conf(tmp: Path, ec2: EC2Server, openstack: OpenStackStub, panda: FakePanda) -> Path:
    write(tmp / "auth.conf", AUTH)
    write(tmp / "policy.yaml", POLICY)
    return factory_conf(
        tmp,
        f"""
        [DEFAULT]
        enabled = True
        apfqueue.sleep = 0.5
        wmsqueue = {SITE}
        wmsstatusplugin = Panda
        wmsstatus.panda.url = {panda.api_url}
        wmsstatus.panda.timeout = 2
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
        {ec2_tier(ec2, ec2.url, "us-east-1")}

        [SPOT]
        # the fault proxy in front of moto: capacity errors hit this tier only
        {ec2_tier(ec2, ec2.proxy_url, "us-east-2", "batchsubmit.ec2.market = spot",
                  "batchsubmit.ec2.spot_max_price = 0.05")}

        [ONDEMAND]
        {ec2_tier(ec2, ec2.url, "us-west-2")}
        """,
        extra=(
            "authConf = auth.conf\npolicyConf = policy.yaml\n"
            "wmsstatus.panda.sleep = 0.5\nwmsstatus.panda.maxage = 30\n"
            "batchstatus.ec2.sleep = 0.5\nbatchstatus.openstack.sleep = 0.5\n"
        ),
        factory_id=FACTORY,
    )


REGIONS = {"ACADEMIC": "us-east-1", "SPOT": "us-east-2", "ONDEMAND": "us-west-2"}


def vms(ec2: EC2Server, openstack: OpenStackStub) -> dict[str, list[str]]:
    """Live VMs (pending or running) per tier, as the clouds report them."""
    out: dict[str, list[str]] = {t: [] for t in TIERS}
    for s in openstack.servers():
        if s["status"] in ("BUILD", "ACTIVE"):
            out[s["metadata"].get("apf:queue", "?")].append(s["id"])
    for tier, region in REGIONS.items():
        for i in ec2.instances(region=region):
            if i["State"]["Name"] in ("pending", "running"):
                out[tier].append(i["InstanceId"])
    return out


def counts(ec2: EC2Server, openstack: OpenStackStub) -> dict[str, int]:
    return {t: len(v) for t, v in vms(ec2, openstack).items()}


@pytest.fixture
def panda() -> Iterator[FakePanda]:
    with FakePanda() as fake:
        fake.set_jobs(SITE, "running", 1)  # other jobs exist: activated 0 is an answer, not "no data"
        yield fake


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_cascade_of_clouds_in_the_daemon(
    ec2: EC2Server, openstack: OpenStackStub, panda: FakePanda, tmp_path: Path
) -> None:
    path = live_conf(tmp_path, ec2, openstack, panda)
    panda.set_activated(SITE, 2)
    proc = subprocess.Popen(
        [APF, "run", "--conf", str(path), "--no-table", "--log", str(tmp_path / "apf.log")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:

        def reach(want: dict[str, int], what: str) -> None:
            wait_for(lambda: counts(ec2, openstack) == want, 90, what)
            print(time.time(), want)

        reach({"PRIVATE": 2, "ACADEMIC": 0, "SPOT": 0, "ONDEMAND": 0}, "PRIVATE filled")
        panda.set_activated(SITE, 4)
        reach({"PRIVATE": 2, "ACADEMIC": 2, "SPOT": 0, "ONDEMAND": 0}, "ACADEMIC takes the rest")
        ec2.fault("RunInstances", "InsufficientInstanceCapacity", status=500, times=-1)
        panda.set_activated(SITE, 7)
        reach({"PRIVATE": 2, "ACADEMIC": 3, "SPOT": 0, "ONDEMAND": 2}, "ONDEMAND takes the spill")
        ec2.clear_faults()
        time.sleep(12)
        panda.set_activated(SITE, 9)
        reach({"PRIVATE": 2, "ACADEMIC": 3, "SPOT": 2, "ONDEMAND": 2}, "SPOT takes more")
        panda.set_activated(SITE, 7)
        reach({"PRIVATE": 2, "ACADEMIC": 3, "SPOT": 2, "ONDEMAND": 0}, "ONDEMAND drained")
        panda.set_activated(SITE, 5)
        reach({"PRIVATE": 2, "ACADEMIC": 3, "SPOT": 0, "ONDEMAND": 0}, "SPOT drained")
        panda.set_activated(SITE, 2)
        reach({"PRIVATE": 2, "ACADEMIC": 0, "SPOT": 0, "ONDEMAND": 0}, "ACADEMIC drained")
        panda.set_activated(SITE, 0)
        reach({"PRIVATE": 0, "ACADEMIC": 0, "SPOT": 0, "ONDEMAND": 0}, "PRIVATE drained")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
        store = Store(load_factory_config(str(path)).settings.database_url())
        for e in reversed(store.events(FACTORY, limit=1000)):
            print(f"{e['time']:.2f}", e["queue"], e["kind"], e["message"][:150])
        for d in reversed(store.decisions(FACTORY, CASCADE, limit=1000)):
            print(f"{d['time']:.2f}", d["n"], d["ready"], json.dumps(d["steps"])[:400])
