"""The elastic pool on real components, for tests/test_elastic.py and bench/elastic.py.

Queue PILOTS takes its demand from the fake PanDA server and submits pilots into the Slurm
partition of FUTURE slots (no node exists there yet). Queue VMS watches that partition as its WMS
(``wmsstatusplugin = Slurm``), launches EC2 VMs on moto (``PoolDemand``: as many VMs as the
partition's jobs need), and contracts by draining the nodes matched by instance id and terminating
instances whose nodes are drained and idle. vmboot (the VM stand-in) runs each VM's user data:
a real slurmd for a slot, the instance id in the node's Comment.

``Sampler`` watches moto, Slurm and PanDA from outside the factory every 0.2 s and keeps the first
time each event was seen, for the figures (demand -> first VM request, VM running -> node joined,
demand -> first pilot running, last pilot done -> last instance terminated).
"""

from __future__ import annotations

import os
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.helpers import factory_conf, write

APF = str(Path(sys.executable).parent / "apf")
FACTORY = "cloudtest"  # the vmboot fixture boots this factory's instances
SITE = "CLOUD_SITE"

AUTH = """
[moto]
plugin = CloudKey
cloudkey.access_key_id = testing
cloudkey.secret_access_key = testing
"""

# What the VM image's contextualisation does: the shipped example's user data (start slurmd for the
# slot it was given, advertise its instance id), so the tests run what operators copy.
USER_DATA = (Path(__file__).resolve().parents[1] / "examples" / "elastic" / "vm-user-data.sh").read_text()

# A pilot that "runs its job" until released: a file named after its job id (or "all") in FLAGS.
PILOT = """#!/bin/sh
me="${SLURM_ARRAY_JOB_ID:+${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}}"
me="${me:-$SLURM_JOB_ID}"
while [ ! -e "{flags}/all" ] && [ ! -e "{flags}/$me" ]; do sleep 0.2; done
echo "pilot $me done on $SLURMD_NODENAME"
"""


def write_config(
    tmp: Path, *, ec2: Any, pool: Any, panda_url: str, pilots: int, ec2_url: str | None = None
) -> Path:
    """The factory's config in ``tmp``; ``ec2_url`` replaces moto's URL (e.g. the fault proxy's)."""
    flags = tmp / "flags"
    flags.mkdir(parents=True, exist_ok=True)
    write(tmp / "pilot.sh", PILOT.replace("{flags}", str(flags))).chmod(0o755)
    write(tmp / "vm-user-data.sh", USER_DATA)
    write(tmp / "auth.conf", AUTH)
    conf = pool.cluster.conf
    return factory_conf(
        tmp,
        f"""
        [DEFAULT]
        enabled = True
        apfqueue.sleep = 1

        # pilots for the PanDA queue, into the partition whose nodes do not exist yet
        [PILOTS]
        wmsqueue = {SITE}
        wmsstatusplugin = Panda
        wmsstatus.panda.url = {panda_url}
        wmsstatus.panda.timeout = 5
        schedplugin = Ready, MaxToRun
        sched.maxtorun.maximum = {pilots}
        batchsubmitplugin = Slurm
        batchstatusplugin = Slurm
        batchsubmit.slurm.partition = {pool.partition}
        batchsubmit.slurm.sacct = False
        batchsubmit.slurm.logdir = {tmp / "pilot-logs"}
        executable = {tmp / "pilot.sh"}

        # VMs for the pilots waiting in that partition: the partition is this queue's WMS
        [VMS]
        wmsqueue = {pool.partition}
        wmsstatusplugin = Slurm
        wmsstatus.slurm.name = apf:{FACTORY}:PILOTS:*
        schedplugin = PoolDemand, MaxToRun
        sched.maxtorun.maximum = {len(pool.slots)}
        batchsubmitplugin = EC2
        batchstatusplugin = EC2
        batchsubmit.ec2.endpoint_url = {ec2_url or ec2.url}
        batchsubmit.ec2.region = {ec2.region}
        batchsubmit.ec2.authprofile = moto
        batchsubmit.ec2.ami = {ec2.image()}
        batchsubmit.ec2.instance_type = t3.micro
        batchsubmit.ec2.retries = 1
        batchsubmit.ec2.user_data_file = vm-user-data.sh
        batchsubmit.ec2.pool = slurm
        batchsubmit.ec2.pool.address = {conf}
        batchsubmit.ec2.pool.slurm_conf = {conf}
        batchsubmit.ec2.pool.attribute = comment
        batchsubmit.ec2.pool.release = future
        # scale-down cancels VMs that have not joined, drains the others by instance id
        batchsubmit.ec2.overlay.peaceful = False
        """,
        extra=(
            "authConf = auth.conf\n"
            "wmsstatus.panda.sleep = 1\nwmsstatus.slurm.sleep = 1\n"
            "batchstatus.slurm.sleep = 1\nbatchstatus.ec2.sleep = 1\n"
        ),
        factory_id=FACTORY,
    )


def polled_again(panda: Any, timeout: float = 60) -> None:
    """Wait until the factory has polled PanDA twice more: the second poll began after the first
    one's answer (taken after a change made before this call) was published, so the factory now
    decides on the new counts. Pilots released earlier could be seen gone while the factory still
    saw their jobs activated, and it would submit for them again (the test's PanDA does not move
    jobs when pilots start, as the real one does)."""
    seen = len(panda.requests)
    deadline = time.monotonic() + timeout
    while len(panda.requests) < seen + 2:
        if time.monotonic() > deadline:
            raise AssertionError("the factory did not poll PanDA again")
        time.sleep(0.05)


def start_factory(conf: Path, pool: Any, log: Path) -> subprocess.Popen[bytes]:
    """``apf run`` as a daemon would run it (its own process group), reaching the pool's Slurm."""
    return subprocess.Popen(
        [APF, "run", "--conf", str(conf), "--no-table", "--log", str(log)],
        env={**os.environ, "SLURM_CONF": str(pool.cluster.conf)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


def stop_factory(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


# ---------------------------------------------------------------------------------------------
# watching from outside


@dataclass
class View:
    """One look at the world: instances, pool nodes, pilots."""

    time: float
    instances: dict[str, dict[str, str]]  # id -> {"state": ..., tags...}
    nodes: dict[str, dict[str, str]]  # visible slot -> scontrol fields
    pilots: dict[str, tuple[str, str]]  # job id -> (state, node)


def look(ec2: Any, pool: Any) -> View:
    now = time.time()
    instances = {
        i["InstanceId"]: {"state": i["State"]["Name"], **{t["Key"]: t["Value"] for t in i.get("Tags", [])}}
        for i in ec2.instances()
    }
    nodes = {s: f for s in pool.slots if (f := pool.node(s))}
    out = pool.run("squeue", "-h", "-r", "-o", "%i|%T|%N|%j").stdout
    pilots = {}
    for line in out.splitlines():
        job, state, node, name = line.split("|", 3)
        if name.startswith(f"apf:{FACTORY}:PILOTS:"):
            pilots[job] = (state, node)
    return View(now, instances, nodes, pilots)


@dataclass
class Sampler:
    """Looks every ``interval`` seconds on a thread; keeps the latest view and first-seen times."""

    ec2: Any
    pool: Any
    interval: float = 0.2
    first: dict[tuple[str, str], float] = field(default_factory=dict)
    latest: View | None = None
    seen_pilots: set[str] = field(default_factory=set)
    errors: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def mark(self, what: str, key: str = "", at: float | None = None) -> None:
        self.first.setdefault((what, key), time.time() if at is None else at)

    def when(self, what: str, key: str = "") -> float | None:
        return self.first.get((what, key))

    def whens(self, what: str) -> dict[str, float]:
        return {k: t for (w, k), t in self.first.items() if w == what}

    def sample(self) -> View:
        v = look(self.ec2, self.pool)
        for iid, inst in v.instances.items():
            self.mark("vm requested", iid, v.time)
            if inst["state"] == "running":
                self.mark("vm running", iid, v.time)
            if "apf:retire" in inst:
                self.mark("vm retiring", iid, v.time)
            if inst["state"] in ("shutting-down", "terminated"):
                self.mark("vm terminated", iid, v.time)
        for name, fields in v.nodes.items():
            comment = fields.get("Comment", "")
            if comment in v.instances:
                self.mark("node joined", comment, v.time)
            if "DRAIN" in fields.get("State", ""):
                self.mark("node draining", comment or name, v.time)
        for job, (state, _node) in v.pilots.items():
            self.seen_pilots.add(job)
            self.mark("pilot pending", job, v.time)
            if state == "RUNNING":
                self.mark("pilot running", job, v.time)
        for job in self.seen_pilots - set(v.pilots):
            self.mark("pilot gone", job, v.time)
        self.latest = v
        return v

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.sample()
            except Exception as exc:  # a component busy for a moment: look again
                self.errors.append(str(exc))
            self._stop.wait(self.interval)

    def __enter__(self) -> Sampler:
        self._thread = threading.Thread(target=self._run, name="elastic-sampler", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def wait(self, condition: Callable[[View], object], timeout: float, what: str) -> View:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            v = self.latest
            if v is not None and condition(v):
                return v
            time.sleep(0.1)
        raise AssertionError(f"timed out after {timeout}s waiting for {what}; last view: {self.latest}")

    # -- the figures -------------------------------------------------------------------------------

    def figures(self, demand_at: float, demand_dropped_at: float | None = None) -> dict[str, float]:
        requested = self.whens("vm requested")
        running = self.whens("vm running")
        joined = self.whens("node joined")
        pilot_running = self.whens("pilot running")
        gone = self.whens("pilot gone")
        terminated = self.whens("vm terminated")
        joins = [joined[i] - running[i] for i in joined if i in running]
        out = {
            "demand_to_first_vm_request_s": min(requested.values()) - demand_at,
            "vm_running_to_node_joined_median_s": statistics.median(joins) if joins else float("nan"),
            "vm_running_to_node_joined_max_s": max(joins) if joins else float("nan"),
            "demand_to_first_pilot_running_s": min(pilot_running.values()) - demand_at,
            "last_pilot_done_to_last_instance_terminated_s": max(terminated.values()) - max(gone.values()),
        }
        if demand_dropped_at is not None:
            out["demand_dropped_to_last_instance_terminated_s"] = max(terminated.values()) - demand_dropped_at
        return {k: round(v, 2) for k, v in out.items()}


def print_figures(title: str, figures: dict[str, float]) -> None:
    print(f"\n{title}")
    for key, value in figures.items():
        print(f"  {key:50s} {value:7.2f}")


def slot_slurmds(pool: Any) -> list[str]:
    """Command lines of slurmd processes still serving one of the pool's VM slots."""
    out = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
            env = (proc / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        words = [a.decode(errors="replace") for a in argv if a]
        if not words or not words[0].endswith("slurmd"):
            continue
        if f"SLURM_CONF={pool.cluster.conf}".encode() in env and any(s in words for s in pool.slots):
            out.append(" ".join(words))
    return out
