"""PBS Pro / Torque backend: script generation and output parsing on hand-written outputs.

No PBS server can run here (tests/data/batch/README.md); the submit/poll flow runs through a
transport that answers with those recorded outputs, standing in for the PBS commands.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import pytest

from autopyfactory.model import PilotState, PilotTags
from autopyfactory.plugins.base import BackendError
from autopyfactory.plugins.batch.pbs import (
    PBSStatus,
    PBSSubmit,
    map_state,
    parse_qstat_full,
    parse_qstat_xml,
    parse_qsub,
    pbs_walltime,
    subjob_ids,
)
from autopyfactory.plugins.transport.base import Result, Transport

DATA = Path(__file__).parent / "data" / "batch"


class ReplayTransport(Transport):
    """Answers each command with a recorded output, by program name; records what it was given."""

    name = "replay"

    def __init__(self, answers: dict[str, Result]) -> None:
        self.answers = answers
        self.calls: list[tuple[list[str], bytes | None]] = []

    def run(self, argv: Sequence[str], input: bytes | None = None, timeout: float = 60) -> Result:
        self.calls.append((list(argv), input))
        return self.answers[argv[0]]


def _local(ctime: str) -> float:
    return time.mktime(time.strptime(ctime, "%a %b %d %H:%M:%S %Y"))


def test_pbspro_qstat_full() -> None:
    jobs = {j.job_id: j for j in parse_qstat_full((DATA / "pbspro_qstat_f.txt").read_text())}
    assert len(jobs) == 10
    done = jobs["1230.pbs01"]
    assert done.tag == "apf:f1:atlas_q:i7"  # from a Variable_List continued over several lines
    assert map_state(done.state, done.exit_status) is PilotState.DONE
    assert done.started == _local("Tue Mar 5 10:00:02 2024") and done.ended == _local(
        "Tue Mar 5 10:00:04 2024"
    )
    assert done.node == "node01"
    # the tag is split across a continuation line inside the variable name
    assert jobs["1231.pbs01"].tag == "apf:f1:atlas_q:i7"
    assert map_state(jobs["1231.pbs01"].state, jobs["1231.pbs01"].exit_status) is PilotState.CANCELLED
    assert map_state(jobs["1232.pbs01"].state, jobs["1232.pbs01"].exit_status) is PilotState.FAILED
    assert map_state(jobs["1233.pbs01"].state, None) is PilotState.HELD
    assert map_state(jobs["1234[0].pbs01"].state, None) is PilotState.RUNNING
    assert jobs["1234[0].pbs01"].node == "node04"
    assert map_state(jobs["1234[2].pbs01"].state, jobs["1234[2].pbs01"].exit_status) is PilotState.DONE
    assert jobs["1240.pbs01"].tag is None


def test_torque_xml() -> None:
    jobs = {j.job_id: j for j in parse_qstat_xml((DATA / "torque_qstat_fx.xml").read_text())}
    assert set(jobs) == {
        "5001.torque01",
        "5002[0].torque01",
        "5002[1].torque01",
        "5003.torque01",
        "5004.torque01",
    }
    assert jobs["5001.torque01"].started == 1709632810.0 and jobs["5001.torque01"].node == "node02"
    assert jobs["5001.torque01"].attrs["Resource_List.walltime"] == "01:00:00"
    c = jobs["5002[1].torque01"]
    assert map_state(c.state, c.exit_status) is PilotState.DONE and c.ended == 1709632960.0
    assert map_state(jobs["5003.torque01"].state, 271) is PilotState.CANCELLED
    with pytest.raises(ValueError, match="XML"):
        parse_qstat_xml("<Data><Job>")


def test_qsub_and_walltime() -> None:
    assert parse_qsub((DATA / "pbspro_qsub.txt").read_text()) == "1235.pbs01"
    assert parse_qsub((DATA / "pbspro_qsub_array.txt").read_text()) == "1234[].pbs01"
    assert subjob_ids("1234[].pbs01", 3) == ["1234[0].pbs01", "1234[1].pbs01", "1234[2].pbs01"]
    with pytest.raises(ValueError):
        parse_qsub("qsub: Unknown queue\n")
    assert pbs_walltime("90") == "01:30:00"
    assert pbs_walltime("12:00:00") == "12:00:00"
    with pytest.raises(ValueError):
        pbs_walltime("tomorrow")


def test_unknown_state_warns(caplog: pytest.LogCaptureFixture) -> None:
    assert map_state("Z", None) is PilotState.UNKNOWN
    assert "unknown PBS job state 'Z'" in caplog.text


@pytest.mark.parametrize("flavor", ["pbspro", "torque"])
def test_submit_script_and_array(flavor: str, make_queue, make_factory) -> None:  # type: ignore[no-untyped-def]
    factory = make_factory("f1")
    queue = make_queue(
        "atlas_q",
        {
            "executable": "/opt/pilot/runpilot",
            "executable.arguments": "-q atlas",
            "batchsubmit.pbs.flavor": flavor,
            "batchsubmit.pbs.queue": "workq",
            "batchsubmit.pbs.account": "atl",
            "batchsubmit.pbs.walltime": "120",
            "batchsubmit.pbs.cores": "8",
            "batchsubmit.pbs.memory": "16000",
            "batchsubmit.pbs.extra": "-l place=scatter",
            "batchsubmit.pbs.logdir": "/scratch/logs",
            "batchsubmit.pbs.environ": "A=1",
        },
        submit="PBS",
    )
    sub = PBSSubmit(queue, queue.batchsubmit.options, factory)
    qsub_out = (
        DATA / ("pbspro_qsub_array.txt" if flavor == "pbspro" else "torque_qsub_array.txt")
    ).read_text()
    replay = ReplayTransport({"qsub": Result(0, qsub_out, "")})
    sub.transport = replay
    pilots = sub.submit(3, PilotTags("f1", "atlas_q", "i9"), 100.0)
    assert len(replay.calls) == 1
    argv, stdin = replay.calls[0]
    assert argv[:5] == ["qsub", "-N", "apf", "-v", "APF_TAG=apf:f1:atlas_q:i9"]
    assert argv[5:] == (["-J", "0-2"] if flavor == "pbspro" else ["-t", "0-2"])
    suffix = ".pbs01" if flavor == "pbspro" else ".torque01"
    head = "1234" if flavor == "pbspro" else "5002"
    assert [p.backend_id for p in pilots] == [f"{head}[{i}]{suffix}" for i in range(3)]
    assert all(p.state is PilotState.PENDING and p.intent_id == "i9" for p in pilots)
    script = (stdin or b"").decode()
    lines = script.splitlines()
    assert "#PBS -q workq" in lines and "#PBS -A atl" in lines and "#PBS -l walltime=02:00:00" in lines
    if flavor == "pbspro":
        assert "#PBS -l select=1:ncpus=8:mem=16000mb" in lines
    else:
        assert "#PBS -l nodes=1:ppn=8" in lines and "#PBS -l mem=16000mb" in lines
    assert "#PBS -l place=scatter" in lines
    assert 'APFCID="${PBS_JOBID}"' in lines
    assert 'export GTAG=/scratch/logs/"${APFCID}.out"' in lines
    assert 'exec >>/scratch/logs/"${APFCID}.out" 2>&1' in lines
    assert lines[-1] == "exec /opt/pilot/runpilot -q atlas"


def test_poll_filters_by_factory_tag(make_queue, make_factory) -> None:  # type: ignore[no-untyped-def]
    factory = make_factory("f1")
    queue = make_queue("atlas_q", {"executable": "/bin/true"}, submit="PBS")
    status = PBSStatus(PBSStatus.endpoint(queue, factory), factory)
    replay = ReplayTransport({"qstat": Result(0, (DATA / "pbspro_qstat_f.txt").read_text(), "")})
    status.transport = replay
    snap = status.poll(5.0)
    assert replay.calls[0][0] == ["qstat", "-f", "-t", "-x"]
    by_id = {p.backend_id: p for p in snap.pilots}
    # not: the array parent 1234[], alice's job, another factory's pilot
    assert set(by_id) == {"1230.pbs01", "1231.pbs01", "1232.pbs01", "1233.pbs01"} | {
        f"1234[{i}].pbs01" for i in range(3)
    }
    assert by_id["1232.pbs01"].queue == "cms_q" and by_id["1232.pbs01"].exit_code == 3
    assert by_id["1234[1].pbs01"].state is PilotState.PENDING
    replay.answers["qstat"] = Result(1, "", "qstat: cannot connect to server pbs01 (errno=111)")
    with pytest.raises(BackendError, match=r"pbs:local: qstat failed .*cannot connect to server"):
        status.poll(6.0)


def test_cancel_and_kill(make_queue, make_factory) -> None:  # type: ignore[no-untyped-def]
    factory = make_factory("f1")
    queue = make_queue("q", {"executable": "/bin/true"}, submit="PBS")
    sub = PBSSubmit(queue, queue.batchsubmit.options, factory)
    replay = ReplayTransport({"qdel": Result(0, "", "")})
    sub.transport = replay
    sub.cancel(["1.s", "2[3].s"])
    sub.retire(["4.s"])  # peaceful: PBS cannot drain one job, nothing is run
    sub.retire(["5.s"], kill=True)
    assert [c[0] for c in replay.calls] == [["qdel", "1.s", "2[3].s"], ["qdel", "5.s"]]
