"""Cloud benchmark against moto's EC2 server (scripts/components/moto.sh), in one run:

  * the factory path: the real engine's decide-and-act pass (after its polls: the scheduler chain,
    the decision and intent records, ONE RunInstances with MaxCount=100, the settled intent) for an
    EC2 queue whose demand is 100 VMs (median of 5 samples);
  * the naive loop: 100 single-instance RunInstances calls with the same parameters;
  * the floor: one bare RunInstances with MaxCount=100 (median of 5);
  * the status path: with 1,000 tagged instances (10 queues) at the endpoint, one EC2 status poll
    (one paginated DescribeInstances, VMs as pilots) plus the leak reconciler over it, against the
    bare paginated DescribeInstances with the same filter (medians of 5).

moto is started when it is not running (``APF_MOTO_BASE``, default /tmp/apf-bench-moto) and stopped
again if this run started it. Times are moto's on this machine: an emulator, not AWS.

moto spends milliseconds per instance in every call (creating and serialising it), so the loop
cannot be much slower than one call for 100 here; the floor and the bare listing show what is moto's.

Prints as its LAST line:
  factory_vs_loop=<loop / factory> factory_vs_floor=<factory / one bare call>
  poll_reconcile_1k_s=<seconds> describe_1k_s=<seconds of the bare listing> own_1k_ms=<the factory's
  own processing of the 1,000 listed instances>
Goals: factory_vs_loop > 1 (one call instead of 100 wins even on moto), factory_vs_floor <= 1.5 (the
engine adds little to the one call), poll_reconcile_1k_s <= 1.2 x describe_1k_s (the factory adds
little to the one listing; own_1k_ms < 50).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from autopyfactory.config.loader import load_factory_config
from autopyfactory.engine.factory import Factory
from autopyfactory.model import PilotTags
from autopyfactory.plugins.base import FactoryContext
from autopyfactory.plugins.cloud import lifecycle as lc
from autopyfactory.plugins.cloud.ec2 import EC2Status, EC2Submit, to_instance

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "components" / "moto.sh"


def log(msg: str) -> None:
    print(msg, flush=True)


def ensure_moto(base: str) -> tuple[bool, str]:
    """(started here, moto URL)."""
    env = {**os.environ, "APF_MOTO_BASE": base}
    started = False
    if subprocess.run(["bash", str(SCRIPT), "status"], env=env, capture_output=True).returncode != 0:
        t0 = time.perf_counter()
        proc = subprocess.run(["bash", str(SCRIPT), "start"], env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            sys.exit(f"moto.sh start failed:\n{proc.stdout}\n{proc.stderr}")
        log(f"started moto in {time.perf_counter() - t0:.2f} s")
        started = True
    info = subprocess.run(["bash", str(SCRIPT), "env"], env=env, capture_output=True, text=True, check=True)
    url = next(line.split("=", 1)[1] for line in info.stdout.splitlines() if line.startswith("APF_MOTO_URL="))
    return started, url


def reset(url: str) -> None:
    urllib.request.urlopen(
        urllib.request.Request(f"{url}/moto-api/reset", data=b"", method="POST"), timeout=30
    )


def client(url: str) -> Any:
    import boto3

    return boto3.client(
        "ec2",
        endpoint_url=url,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


def image(url: str) -> str:
    return str(client(url).register_image(Name="bench", RootDeviceName="/dev/xvda")["ImageId"])


def write_config(tmp: Path, url: str, ami: str, fid: str, n: int, queues: int = 1) -> Path:
    (tmp / "auth.conf").write_text(
        "[moto]\nplugin = CloudKey\ncloudkey.access_key_id = testing\ncloudkey.secret_access_key = testing\n"
    )
    sections = [
        "[DEFAULT]\nenabled = True\nwmsstatusplugin = Sim\nschedplugin = Ready\n"
        "batchsubmitplugin = EC2\nbatchstatusplugin = EC2\n"
        f"batchsubmit.ec2.endpoint_url = {url}\nbatchsubmit.ec2.region = us-east-1\n"
        f"batchsubmit.ec2.authprofile = moto\nbatchsubmit.ec2.ami = {ami}\n"
        "batchsubmit.ec2.instance_type = t3.micro\n"
    ]
    for i in range(queues):
        sections.append(f"[BENCH{i}]\nwmsqueue = BENCH{i}\nwmsstatus.sim.steps = 0:0, 1:{n}\n")
    (tmp / "queues.conf").write_text("\n".join(sections))
    (tmp / "autopyfactory.conf").write_text(
        f"[Factory]\nfactoryId = {fid}\nqueueConf = queues.conf\nauthConf = auth.conf\n"
        f"factory.statedir = {tmp / 'state'}\nmetrics.address = None\n"
    )
    return tmp / "autopyfactory.conf"


def engine_cycle(url: str, ami: str, fid: str, n: int) -> float:
    """One real factory cycle for an EC2 queue that wants ``n`` VMs; returns its seconds."""
    with tempfile.TemporaryDirectory(prefix="apf-bench-cloud-") as d:
        factory = Factory(load_factory_config(str(write_config(Path(d), url, ami, fid, n))))
        try:
            # a running factory is warm: one cycle with no demand first, then the demand arrives
            assert factory.step(poll_all=True)[0].decision.n == 0
            time.sleep(1.1)
            now = time.time()
            for poller in factory.pollers.values():  # observing is not launching: poll first
                poller.poll_once(now)
            t0 = time.perf_counter()
            plans = factory.decide_pass(now, force=True)  # decide, intent, RunInstances, settle
            seconds = time.perf_counter() - t0
            factory.decide_pass(time.time())
            intents = factory.store.intents(fid)
        finally:
            factory.shutdown()
    assert plans and plans[0].decision.n == n, plans
    assert [(i["status"], i["submitted"]) for i in intents if i["submitted"]] == [("submitted", n)], intents
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("-n", type=int, default=100, help="VMs per submission test")
    parser.add_argument("--poll-instances", type=int, default=1000, help="tagged instances for the poll test")
    parser.add_argument("--queues", type=int, default=10, help="queues the poll-test instances belong to")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    base = os.environ.get("APF_MOTO_BASE", "/tmp/apf-bench-moto")
    started, url = ensure_moto(base)
    fid = f"bench{os.getpid()}"
    try:
        reset(url)
        ami = image(url)
        client(url).describe_instances()  # moto builds its region's backend on first use

        samples = []
        for r in range(args.repeat):
            samples.append(engine_cycle(url, ami, f"{fid}e{r}", args.n))
        t_factory = statistics.median(samples)
        log(
            f"factory: the engine decided and launched {args.n} VMs in {t_factory:.4f} s "
            f"(median of {args.repeat}: " + ", ".join(f"{t:.4f}" for t in samples) + ")"
        )

        ec2 = client(url)
        tags = [{"ResourceType": "instance", "Tags": [{"Key": "apf:factory", "Value": "bench-loop"}]}]
        t0 = time.perf_counter()
        for _ in range(args.n):
            ec2.run_instances(
                ImageId=ami, InstanceType="t3.micro", MinCount=1, MaxCount=1, TagSpecifications=tags,
                UserData="#!/bin/sh\n", InstanceInitiatedShutdownBehavior="terminate",
            )  # fmt: skip
        t_loop = time.perf_counter() - t0
        log(
            f"loop: {args.n} single-instance RunInstances calls in {t_loop:.3f} s ({t_loop / args.n * 1000:.1f} ms each)"
        )

        samples = []
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            ec2.run_instances(
                ImageId=ami, InstanceType="t3.micro", MinCount=1, MaxCount=args.n, TagSpecifications=tags,
                UserData="#!/bin/sh\n", InstanceInitiatedShutdownBehavior="terminate",
            )  # fmt: skip
            samples.append(time.perf_counter() - t0)
            reset(url)
            ami = image(url)
        t_floor = statistics.median(samples)
        log(
            f"floor: one RunInstances with MaxCount={args.n} in {t_floor:.4f} s (median of {args.repeat}: "
            + ", ".join(f"{t:.4f}" for t in samples)
            + ")"
        )

        reset(url)
        ami = image(url)
        with tempfile.TemporaryDirectory(prefix="apf-bench-cloud-") as d:
            conf = load_factory_config(str(write_config(Path(d), url, ami, fid, 0, queues=args.queues)))
            ctx = FactoryContext(
                factory_id=fid,
                settings=conf.settings,
                auth_profiles=dict(conf.auth),
                state_dir=Path(d) / "state",
            )
            queues = list(conf.queues.values())
            per_queue = args.poll_instances // len(queues)
            t0 = time.perf_counter()
            for i, q in enumerate(queues):
                sub = EC2Submit(q, q.batchsubmit.options, ctx)
                for k in range(0, per_queue, 100):
                    sub.submit(
                        min(100, per_queue - k), PilotTags(fid, q.name, f"p{i:03d}{k:07d}"), time.time()
                    )
                sub.close()
            log(
                f"launched {per_queue * len(queues)} tagged instances of {len(queues)} queues in {time.perf_counter() - t0:.2f} s"
            )
            # side by side, one of each per round: the machine's load moves between rounds
            timings, bare = [], []
            for _ in range(args.repeat):
                status = EC2Status(EC2Status.endpoint(queues[0], ctx), ctx)
                for q in queues:
                    status.register(q)
                t0 = time.perf_counter()
                snap = status.poll(time.time())
                report = status.reconcile_leaks(set(), set(), {q.name for q in queues}, time.time())
                timings.append(time.perf_counter() - t0)
                status.close()
                assert len(snap.pilots) == per_queue * len(queues), len(snap.pilots)
                assert len(report.adopt) == len(snap.pilots)  # an empty store: every VM is adopted
                t0 = time.perf_counter()
                pages = ec2.get_paginator("describe_instances").paginate(
                    Filters=[{"Name": "tag:apf:factory", "Values": [fid]}],
                    PaginationConfig={"PageSize": 1000},
                )
                found = sum(len(r["Instances"]) for p in pages for r in p["Reservations"])
                bare.append(time.perf_counter() - t0)
                assert found == len(snap.pilots), found
            poll_s, describe_s = statistics.median(timings), statistics.median(bare)
            log(
                f"poll + reconcile: {len(snap.pilots)} VMs, {len(queues)} queues: "
                + ", ".join(f"{t:.3f}" for t in timings)
                + " s"
            )
            log("bare DescribeInstances of the same: " + ", ".join(f"{t:.3f}" for t in bare) + " s")
            # what the factory itself adds: the same 1,000 instances as VMs, pilots and leaks
            raw = [i for p in ec2.get_paginator("describe_instances").paginate(
                Filters=[{"Name": "tag:apf:factory", "Values": [fid]}], PaginationConfig={"PageSize": 1000}
            ) for r in p["Reservations"] for i in r["Instances"]]  # fmt: skip
            names = {q.name for q in queues}
            t0 = time.perf_counter()
            insts = [to_instance(i) for i in raw]
            pilots = [lc.vm_pilot(i, i.queue or "", None, pooled=False) for i in insts]
            adopt, _ = lc.leaks(insts, set(), set(), names, {}, time.time(), 600.0)
            processing_s = time.perf_counter() - t0
            assert len(pilots) == len(adopt) == len(raw)
            log(f"the factory's own processing of them (VMs, pilots, leaks): {processing_s * 1000:.1f} ms")
        reset(url)
    finally:
        if started:
            subprocess.run(
                ["bash", str(SCRIPT), "stop"], env={**os.environ, "APF_MOTO_BASE": base}, check=False
            )
    figures = {
        "factory_s": t_factory,
        "loop_s": t_loop,
        "floor_s": t_floor,
        "poll_s": poll_s,
        "describe_s": describe_s,
        "processing_s": processing_s,
    }
    log(json.dumps({k: round(v, 4) for k, v in figures.items()}))
    print(
        f"factory_vs_loop={t_loop / t_factory:.1f} factory_vs_floor={t_factory / t_floor:.2f} "
        f"poll_reconcile_1k_s={poll_s:.3f} describe_1k_s={describe_s:.3f} own_1k_ms={processing_s * 1000:.1f}",
        flush=True,
    )


if __name__ == "__main__":
    main()
