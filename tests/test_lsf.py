"""LSF backend: script generation and output parsing on hand-written outputs.

No LSF cluster can run here (tests/data/batch/README.md); the submit/poll flow runs through a
transport that answers with those recorded outputs, standing in for the LSF commands.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import pytest

from autopyfactory.model import PilotState, PilotTags
from autopyfactory.plugins.base import BackendError
from autopyfactory.plugins.batch.lsf import (
    LSFStatus,
    LSFSubmit,
    lsf_time,
    map_state,
    parse_bjobs_json,
    parse_bsub,
)
from autopyfactory.plugins.transport.base import Result, Transport

DATA = Path(__file__).parent / "data" / "batch"


class ReplayTransport(Transport):
    name = "replay"

    def __init__(self, answers: dict[str, Result]) -> None:
        self.answers = answers
        self.calls: list[tuple[list[str], bytes | None]] = []

    def run(self, argv: Sequence[str], input: bytes | None = None, timeout: float = 60) -> Result:
        self.calls.append((list(argv), input))
        return self.answers[argv[0]]


NOW = time.mktime(time.strptime("Mar 5 12:00 2024", "%b %d %H:%M %Y"))


def test_bjobs_json() -> None:
    jobs = {j.job_id: j for j in parse_bjobs_json((DATA / "lsf_bjobs.json").read_text(), NOW)}
    assert set(jobs) == {"7001[1]", "7001[2]", "7001[3]", "7002", "7003", "7004", "7005"}
    run = jobs["7001[1]"]
    assert run.tag == "apf:f1:atlas_q:i11" and map_state(run.stat) is PilotState.RUNNING
    assert run.started == time.mktime(time.strptime("Mar 5 10:01 2024", "%b %d %H:%M %Y"))
    assert jobs["7001[3]"].host == "hostB"  # first host of "4*hostB:4*hostC"
    assert jobs["7002"].exit_code == 2 and map_state(jobs["7002"].stat) is PilotState.FAILED
    # no description: the tag comes from the job name
    assert jobs["7003"].tag == "apf:f1:cms_q:i13" and map_state(jobs["7003"].stat) is PilotState.HELD
    assert parse_bjobs_json((DATA / "lsf_bjobs_empty.json").read_text()) == []
    with pytest.raises(ValueError, match="JSON"):
        parse_bjobs_json("{not json")


def test_times() -> None:
    assert lsf_time("-") is None and lsf_time("") is None
    assert lsf_time("Mar  5 11:01 E", NOW) == time.mktime(time.strptime("Mar 5 11:01 2024", "%b %d %H:%M %Y"))
    # a date later than now without a year is last year's
    assert lsf_time("Dec 31 23:00", NOW) == time.mktime(time.strptime("Dec 31 23:00 2023", "%b %d %H:%M %Y"))


def test_bsub_output() -> None:
    assert parse_bsub((DATA / "lsf_bsub.txt").read_text()) == "7001"
    with pytest.raises(ValueError):
        parse_bsub("Request aborted by esub. Job not submitted.\n")


def test_submit_array_and_script(make_queue, make_factory) -> None:  # type: ignore[no-untyped-def]
    factory = make_factory("f1", factoryUser="apf")
    queue = make_queue(
        "atlas_q",
        {
            "executable": "/opt/pilot/runpilot",
            "batchsubmit.lsf.queue": "normal",
            "batchsubmit.lsf.project": "atlas",
            "batchsubmit.lsf.walltime": "2:00",
            "batchsubmit.lsf.cores": "4",
            "batchsubmit.lsf.memory": "8000",
            "batchsubmit.lsf.logdir": "/scratch/logs",
            "batchsubmit.lsf.logurl": "https://logs.example.org/apf",
        },
        submit="LSF",
    )
    sub = LSFSubmit(queue, queue.batchsubmit.options, factory)
    replay = ReplayTransport({"bsub": Result(0, (DATA / "lsf_bsub.txt").read_text(), "")})
    sub.transport = replay
    pilots = sub.submit(3, PilotTags("f1", "atlas_q", "i11"), 1.0)
    assert len(replay.calls) == 1
    argv, stdin = replay.calls[0]
    assert argv == ["bsub", "-J", "apf:f1:atlas_q:i11[1-3]", "-Jd", "apf:f1:atlas_q:i11"]
    assert [p.backend_id for p in pilots] == ["7001[1]", "7001[2]", "7001[3]"]
    lines = (stdin or b"").decode().splitlines()
    for d in ("-q normal", "-P atlas", "-W 2:00", "-n 4", "-M 8000", "-o /dev/null"):
        assert f"#BSUB {d}" in lines
    assert "export FACTORYUSER=apf" in lines
    assert 'export GTAG=https://logs.example.org/apf/"${LSB_JOBID}_${LSB_JOBINDEX:-0}.out"' in lines
    assert sub.submit(1, PilotTags("f1", "atlas_q", "i12"), 1.0)[0].backend_id == "7001"
    assert replay.calls[1][0] == ["bsub", "-J", "apf:f1:atlas_q:i12", "-Jd", "apf:f1:atlas_q:i12"]


def test_poll_and_errors(make_queue, make_factory, caplog: pytest.LogCaptureFixture) -> None:  # type: ignore[no-untyped-def]
    factory = make_factory("f1")
    queue = make_queue("atlas_q", {"executable": "/bin/true"}, submit="LSF")
    status = LSFStatus(LSFStatus.endpoint(queue, factory), factory)
    replay = ReplayTransport({"bjobs": Result(0, (DATA / "lsf_bjobs.json").read_text(), "")})
    status.transport = replay
    snap = status.poll(NOW)
    by_id = {p.backend_id: p for p in snap.pilots}
    assert set(by_id) == {"7001[1]", "7001[2]", "7001[3]", "7002", "7003", "7005"}
    assert by_id["7001[1]"].ended_at is None  # the estimate of a running job is no end time
    assert by_id["7001[3]"].state is PilotState.DONE and by_id["7001[3]"].exit_code == 0
    assert by_id["7005"].state is PilotState.UNKNOWN and "WEIRD" in caplog.text
    replay.answers["bjobs"] = Result(255, "", "No job found\n")
    assert status.poll(NOW).pilots == ()
    replay.answers["bjobs"] = Result(255, "", "LSF is down. Please wait ...\n")
    with pytest.raises(BackendError, match=r"lsf:local: bjobs failed .*LSF is down"):
        status.poll(NOW)


def test_cancel(make_queue, make_factory) -> None:  # type: ignore[no-untyped-def]
    factory = make_factory("f1")
    queue = make_queue("q", {"executable": "/bin/true"}, submit="LSF")
    sub = LSFSubmit(queue, queue.batchsubmit.options, factory)
    replay = ReplayTransport({"bkill": Result(0, "Job <7001[2]> is being terminated\n", "")})
    sub.transport = replay
    sub.cancel(["7001[2]"])
    sub.retire(["7002"])
    assert [c[0] for c in replay.calls] == [["bkill", "7001[2]"]]
