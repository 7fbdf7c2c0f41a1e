"""``wmsstatusplugin = Slurm``: the parser on recorded squeue output, the PoolDemand chain step, the
poller against the real Slurm (one squeue per cluster, filters), and its errors."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest

from autopyfactory.config.loader import load_queue_sections
from autopyfactory.config.models import QueueConfig
from autopyfactory.decide.base import SchedContext
from autopyfactory.model import Demand, Supply
from autopyfactory.plugins.base import BackendError, load
from autopyfactory.plugins.transport.base import Result, Transport
from autopyfactory.plugins.wmsstatus.slurm import (
    SlurmWms,
    WmsFilter,
    count_demands,
    job_field,
    parse_squeue_wms,
)
from tests.components_cloud import CloudPool
from tests.fakepanda import factory_context
from tests.helpers import wait_for, write

DATA = Path(__file__).parent / "data" / "batch"


def recorded() -> str:
    return (DATA / "slurm_wms_squeue.txt").read_text()


# --- parser and counting (pure) ---------------------------------------------------------------


def test_recorded_squeue_parses_every_line() -> None:
    jobs = parse_squeue_wms(recorded())
    assert len(jobs) == 10
    by_id = {j.job_id: j for j in jobs}
    assert by_id["5"].partitions == ("debug", "cloud") and by_id["5"].name == "two|parts"
    assert by_id["1_0"].state == "RUNNING" and by_id["1_0"].account == "(null)"
    assert [job_field(by_id[i]) for i in ("1_1", "7", "8", "2", "1_0")] == [
        "ready", "notready", "notready", "notready", "running",
    ]  # fmt: skip


def test_demand_per_partition_with_any_and_filters() -> None:
    jobs = parse_squeue_wms(recorded())
    pilots = WmsFilter(name="apf:cloudtest:PILOTS:*").key("cloud")
    d = count_demands(jobs, ["cloud", "debug", "ANY", pilots, "nowhere"], 5.0)
    # cloud: 2 pilots waiting + the two-partition job; dependency, begin time and held: not ready
    assert (d["cloud"].ready, d["cloud"].notready, d["cloud"].running) == (3, 3, 1)
    assert (d["debug"].ready, d["debug"].running) == (2, 2)
    assert (d["ANY"].ready, d["ANY"].notready, d["ANY"].running) == (4, 3, 3)  # each job once
    assert (d[pilots].ready, d[pilots].running, d[pilots].notready) == (2, 1, 0)
    assert d["nowhere"] == Demand("nowhere", site_status="online", time=5.0)
    assert d["cloud"].site_status == "online" and d["cloud"].time == 5.0


def test_filter_keys_round_trip_and_match_account_and_qos() -> None:
    flt = WmsFilter(frozenset({"b", "a"}), frozenset({"normal"}), "apf:*")
    key = flt.key("cloud")
    assert key == "cloud?account=a,b&qos=normal&name=apf:*"
    assert WmsFilter.parse_key(key) == ("cloud", flt)
    assert WmsFilter.parse_key("cloud") == ("cloud", WmsFilter())
    line = "9|PENDING|Resources|cloud|b|normal|apf:x:Q:1\n10|PENDING|Resources|cloud|c|normal|apf:x:Q:2\n"
    assert count_demands(parse_squeue_wms(line), [key], 0)[key].ready == 1


def test_odd_lines_and_unknown_states_are_not_counted(caplog: pytest.LogCaptureFixture) -> None:
    text = "CLUSTER: c1\n\nnot a row\n11|WEIRD_STATE|None|cloud|a|q|n\n12|COMPLETED|None|cloud|a|q|n\n"
    jobs = parse_squeue_wms(text)
    assert [j.job_id for j in jobs] == ["11", "12"]
    assert count_demands(jobs, ["cloud"], 0)["cloud"] == Demand("cloud", site_status="online")
    assert "not a row" in caplog.text and "WEIRD_STATE" in caplog.text


# --- the chain step ------------------------------------------------------------------------------


def pool_ctx(ready: int, jobs_running: int, **vms: int) -> SchedContext:
    """The pool's jobs (ready, running) and the queue's VMs by state."""
    return SchedContext("VMS", 0.0, Demand("cloud", ready=ready, running=jobs_running), Supply("VMS", **vms))


def test_pool_demand_grows_holds_while_booting_and_shrinks() -> None:
    plugin = load("sched", "PoolDemand")()
    assert plugin.calc(pool_ctx(3, 0), 0)[0] == 3  # 3 pilots wait, no VM: ask for 3
    assert plugin.calc(pool_ctx(3, 0, pending=3), 0)[0] == 0  # the 3 VMs boot: hold
    assert plugin.calc(pool_ctx(1, 2, pending=1, running=2), 0)[0] == 0  # 2 pilots run on 2 nodes
    assert plugin.calc(pool_ctx(0, 1, running=3), 0)[0] == -2  # demand dropped: take back 2
    # a pilot still runs on a draining node: no new VM to replace it
    assert plugin.calc(pool_ctx(0, 1, retiring=1), 0)[0] == 0
    out, reason = plugin.calc(pool_ctx(0, 0, running=1), 0)
    assert out == -1 and "need ready=0 + running=0 = 0" in reason
    missing = SchedContext("VMS", 0.0, None, Supply("VMS", running=4))
    assert plugin.calc(missing, 0) == (0, "no WMS info (missing or stale): 0")  # never retire blind


def test_pool_demand_jobs_per_pilot_rounds_up() -> None:
    cls = load("sched", "PoolDemand")
    plugin = cls(cls.Options(jobs_per_pilot=4))
    out, reason = plugin.calc(pool_ctx(5, 0), 0)
    assert out == 2 and "ceil((ready=5 + running=0) / 4) = 2" in reason


# --- the poller -----------------------------------------------------------------------------------


def queues(tmp_path: Path, body: str) -> dict[str, QueueConfig]:
    return load_queue_sections([str(write(tmp_path / "queues.conf", body))])


SECTIONS = """
[DEFAULT]
enabled = True
wmsstatusplugin = Slurm
batchsubmitplugin = Local
batchstatusplugin = Local
schedplugin = PoolDemand

[ALL]
wmsqueue = {partition}

[MINE]
wmsqueue = {partition}
wmsstatus.slurm.name = {pattern}

[EVERYWHERE]
wmsqueue = ANY
"""


class Recording(Transport):
    """The real local transport, recording each argv."""

    def __init__(self, inner: Transport) -> None:
        self.inner = inner
        self.argvs: list[list[str]] = []

    def run(self, argv: Any, input: bytes | None = None, timeout: float = 60) -> Result:
        self.argvs.append(list(argv))
        return self.inner.run(argv, input=input, timeout=timeout)


@pytest.mark.timeout(120)
def test_one_squeue_per_poll_serves_every_queue_of_the_cluster(
    slurm_cloud: CloudPool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SLURM_CONF", str(slurm_cloud.cluster.conf))
    tag = f"wmstest-{uuid.uuid4().hex[:8]}"
    qs = queues(tmp_path, SECTIONS.format(partition=slurm_cloud.partition, pattern=f"{tag}-*"))
    ctx = factory_context("cloudtest")
    endpoints = {SlurmWms.endpoint(q, ctx) for q in qs.values()}
    assert len(endpoints) == 1  # filters do not split the poller
    (endpoint,) = endpoints
    keys = frozenset(str(SlurmWms.demand_key(q, ctx)) for q in qs.values())
    assert keys == {slurm_cloud.partition, f"{slurm_cloud.partition}?name={tag}-*", "ANY"}
    poller = SlurmWms(endpoint, ctx)
    recorder = Recording(poller.transport)
    poller.transport = recorder
    # 3 array tasks and a held job wait in the partition of FUTURE slots (no node exists there)
    submit = ["sbatch", "--parsable", "-p", slurm_cloud.partition, "-o", "/dev/null"]
    array = slurm_cloud.run(*submit, "--array=0-2", "-J", f"{tag}-a", "--wrap", "true").stdout.strip()
    held = slurm_cloud.run(*submit, "-H", "-J", f"{tag}-h", "--wrap", "true").stdout.strip()
    try:
        assert array.isdigit() and held.isdigit()
        snap = wait_for(
            lambda: (
                (s := poller.poll(1.0, keys)).demands[f"{slurm_cloud.partition}?name={tag}-*"].ready == 3
                and s
            ),
            30,
            "the array to be listed",
        )
        mine = snap.demands[f"{slurm_cloud.partition}?name={tag}-*"]  # type: ignore[union-attr]
        assert (mine.ready, mine.notready, mine.running) == (3, 1, 0)
        every = snap.demands[slurm_cloud.partition]  # type: ignore[union-attr]
        assert every.ready >= 3 and snap.demands["ANY"].ready >= every.ready  # type: ignore[union-attr]
        assert all(argv[0] == "squeue" and "-r" in argv for argv in recorder.argvs)
        before = len(recorder.argvs)
        poller.poll(2.0, keys)
        assert len(recorder.argvs) == before + 1  # one squeue per poll, whatever the queues
    finally:
        slurm_cloud.run("scancel", array, held)
        poller.close()


def test_clear_errors_when_squeue_is_missing_or_slurmctld_is_down(
    slurm_cloud: CloudPool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    qs = queues(tmp_path, SECTIONS.format(partition="cloud", pattern="x*"))
    ctx = factory_context("cloudtest")
    poller = SlurmWms(SlurmWms.endpoint(qs["ALL"], ctx), ctx)
    try:
        # a configuration whose controller does not listen: what a stopped slurmctld looks like
        conf = slurm_cloud.cluster.conf.read_text()
        port = next(line for line in conf.splitlines() if line.startswith("SlurmctldPort="))
        dead = write(tmp_path / "slurm.conf", conf.replace(port, "SlurmctldPort=9"))
        monkeypatch.setenv("SLURM_CONF", str(dead))
        with pytest.raises(BackendError, match=r"squeue: cannot contact slurmctld \(is it running\?\)"):
            poller.poll(1.0, frozenset({"cloud"}))
        monkeypatch.setenv("PATH", str(tmp_path / "empty"))
        with pytest.raises(BackendError, match="command 'squeue' not found"):
            poller.poll(1.0, frozenset({"cloud"}))
    finally:
        poller.close()


def test_bad_filter_keys_are_named(tmp_path: Path) -> None:
    from autopyfactory.config.loader import ConfigError

    with pytest.raises(ConfigError, match=r"wmsstatus\.slurm\.account"):
        queues(tmp_path, "[Q]\nwmsqueue = cloud\nwmsstatusplugin = Slurm\nwmsstatus.slurm.account = ,\n"
               "batchsubmitplugin = Local\nbatchstatusplugin = Local\n")  # fmt: skip
