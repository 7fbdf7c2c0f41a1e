"""The engine with the real Slurm cluster: locally and over SSH, arrays, crash adoption, and a
slurmctld outage that must not stall a Local queue."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from autopyfactory.config.loader import load_factory_config
from autopyfactory.engine.factory import Factory, status_path
from autopyfactory.store.api import Store
from test_slurm import cancel_factory
from tests.helpers import factory_conf, wait_for, write

APF = str(Path(sys.executable).parent / "apf")
pytestmark = pytest.mark.slurm


@pytest.fixture
def fid(slurm_cluster) -> Iterator[str]:  # type: ignore[no-untyped-def]
    factory_id = f"e{uuid.uuid4().hex[:8]}"
    try:
        yield factory_id
    finally:
        cancel_factory(slurm_cluster, factory_id)


def slurm_conf(
    tmp: Path, fid: str, activated: int, extra_queue: str = "", extra_factory: str = "", seconds: int = 3
) -> Path:
    return factory_conf(
        tmp,
        f"""
        [DEFAULT]
        enabled = True
        apfqueue.sleep = 0.5
        wmsstatusplugin = Sim
        wmsstatus.sim.consume = True
        batchstatusplugin = Slurm
        batchsubmitplugin = Slurm
        executable = /bin/sleep
        executable.arguments = {seconds}
        schedplugin = Ready, MaxPerCycle
        sched.maxpercycle.maximum = 500
        batchsubmit.slurm.logdir = {tmp / "logs"}
        batchstatus.slurm.settle_polls = 50
        [HPC]
        wmsqueue = HPC
        wmsstatus.sim.activated = {activated}
        {extra_queue}
        """,
        extra=f"batchstatus.slurm.sleep = 0.5\n{extra_factory}",
        factory_id=fid,
    )


def states(store: Store, fid: str, queue: str = "HPC") -> dict[str, int]:
    out: dict[str, int] = {}
    for p in store.pilots(fid, queue):
        out[p["state"]] = out.get(p["state"], 0) + 1
    return out


def test_pilots_run_in_slurm_and_the_counts_follow(tmp_path: Path, fid: str) -> None:
    conf = slurm_conf(tmp_path, fid, activated=3)
    config = load_factory_config(str(conf))
    factory = Factory(config)
    store = Store(config.settings.database_url())
    plans = factory.step(poll_all=True)
    assert plans[0].decision.n == 3
    factory.flush()  # pilot rows are written with the next pass, or now
    # one array: three tasks of one job
    ids = [p["backend_id"] for p in store.pilots(fid)]
    assert len(ids) == 3 and len({i.split("_")[0] for i in ids}) == 1

    def finished() -> bool:
        factory.step(poll_all=True)
        return states(store, fid).get("done") == 3

    wait_for(finished, 120, "three pilots to run and finish (settled from sacct)")
    assert {p["exit_code"] for p in store.pilots(fid)} <= {0, None}  # squeue may report COMPLETED first
    factory.shutdown()


def test_two_hundred_pilots_are_one_sbatch_and_all_tracked(tmp_path: Path, fid: str, slurm_cluster) -> None:  # type: ignore[no-untyped-def]
    conf = slurm_conf(tmp_path, fid, activated=200, seconds=600)
    factory = Factory(load_factory_config(str(conf)))
    plans = factory.step(poll_all=True)
    assert plans[0].decision.n == 200
    jobs = slurm_cluster.run("squeue", "-h", "-r", "-o", "%A|%j").stdout.splitlines()
    mine = [j for j in jobs if f"|apf:{fid}:" in j]
    assert len(mine) == 200 and len({j.split("|")[0] for j in mine}) == 1  # one sbatch --array
    factory.step(poll_all=True)
    supply = factory.supply_of(factory.queues["HPC"], factory.clock())
    assert supply is not None and supply.pending + supply.running + supply.held == 200
    factory.shutdown()


def test_over_ssh_as_the_non_root_user(tmp_path: Path, fid: str, ssh_target, slurm_cluster) -> None:  # type: ignore[no-untyped-def]
    write(
        tmp_path / "auth.conf",
        f"""
        [hpc-key]
        plugin = SSH
        ssh.privatekeyfile = {ssh_target.key}
        ssh.knownhostsfile = {ssh_target.known_hosts}
        """,
    )
    extra = (
        f"batchsubmit.slurm.host = {ssh_target.host}\nbatchsubmit.slurm.port = {ssh_target.port}\n"
        f"batchsubmit.slurm.user = {ssh_target.user}\nbatchsubmit.slurm.authprofile = hpc-key\n"
        f"batchsubmit.slurm.logdir = {ssh_target.workdir / fid}\nbatchsubmit.slurm.workdir = {ssh_target.workdir}\n"
    )
    conf = slurm_conf(tmp_path, fid, activated=2, extra_queue=extra, extra_factory="authConf = auth.conf\n")
    config = load_factory_config(str(conf))
    factory = Factory(config)
    store = Store(config.settings.database_url())
    factory.step(poll_all=True)
    owners = slurm_cluster.run("squeue", "-h", "-r", "-o", "%u|%j").stdout.splitlines()
    assert sorted(o.split("|")[0] for o in owners if f"|apf:{fid}:" in o) == ["apfuser", "apfuser"]
    wait_for(
        lambda: factory.step(poll_all=True) is not None and states(store, fid).get("done") == 2,
        120,
        "done over SSH",
    )
    factory.shutdown()


def test_sigkill_between_submit_and_record_then_restart_adopts(
    tmp_path: Path, fid: str, slurm_cluster
) -> None:  # type: ignore[no-untyped-def]
    conf = slurm_conf(tmp_path, fid, activated=5, seconds=600)
    proc = subprocess.run(
        [APF, "run", "--conf", str(conf), "--no-table"],
        env={**__import__("os").environ, "APF_FAULT": "crash-after-submit"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 137
    store = Store(load_factory_config(str(conf)).settings.database_url())
    assert [i["status"] for i in store.intents(fid)] == ["open"] and store.pilots(fid) == []
    out = subprocess.run(
        [APF, "run", "--conf", str(conf), "--once", "--no-table"], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    intents = store.intents(fid)
    assert [(i["status"], i["submitted"]) for i in intents] == [("adopted", 5)]  # nothing submitted twice
    jobs = [
        j
        for j in slurm_cluster.run("squeue", "-h", "-r", "-o", "%j").stdout.splitlines()
        if j.startswith(f"apf:{fid}:")
    ]
    assert len(jobs) == 5
    assert len(store.pilots(fid)) == 5  # all adopted into the store


def test_slurmctld_outage_backs_off_without_stalling_a_local_queue(
    tmp_path: Path, fid: str, slurmctld_control
) -> None:  # type: ignore[no-untyped-def]
    write(tmp_path / "pilot.sh", "#!/bin/sh\nsleep 30\n").chmod(0o755)
    extra = f"""
        [LOCALQ]
        wmsqueue = LOCALQ
        wmsstatus.sim.activated = 1
        batchstatusplugin = Local
        batchsubmitplugin = Local
        executable = {tmp_path / "pilot.sh"}
        executable.arguments =
        """
    conf = slurm_conf(
        tmp_path,
        fid,
        activated=2,
        seconds=600,
        extra_queue=extra,
        extra_factory="batchstatus.local.sleep = 0.5\n",
    )
    config = load_factory_config(str(conf))
    store = Store(config.settings.database_url())
    daemon = subprocess.Popen(
        [APF, "run", "--conf", str(conf), "--no-table", "--log", str(tmp_path / "apf.log")]
    )
    try:
        wait_for(lambda: {"HPC", "LOCALQ"} <= set(store.latest_decisions(fid)), 60, "both queues to decide")
        slurmctld_control.stop()
        stopped_at = time.time()

        def local_decisions_since(t: float) -> int:
            return sum(1 for d in store.decisions(fid, "LOCALQ", limit=500) if d["time"] > t)

        # the Local queue keeps its cadence while Slurm is down ...
        wait_for(lambda: local_decisions_since(stopped_at) >= 5, 60, "the Local queue to keep deciding")

        def slurm_backing_off() -> bool:
            path = status_path(config)
            if not path.exists():
                return False
            pollers = json.loads(path.read_text())["pollers"]
            return any("Slurm" in k and "backing off" in v for k, v in pollers.items())

        wait_for(slurm_backing_off, 60, "the Slurm poller to report it is backing off")
        slurmctld_control.start()
        restarted = time.time()
        # ... and the Slurm queue recovers by itself once slurmctld is back
        wait_for(
            lambda: any(d["time"] > restarted for d in store.decisions(fid, "HPC", limit=5)),
            120,
            "Slurm recovery",
        )
        assert daemon.poll() is None
    finally:
        daemon.terminate()
        daemon.wait(timeout=60)
