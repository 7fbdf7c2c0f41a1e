"""Slurm parsers and argv builders on output recorded from the real cluster (tests/data/batch/)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from autopyfactory.model import PilotState, PilotTags
from autopyfactory.plugins.batch.slurm import (
    SlurmStatus,
    SlurmSubmit,
    command_error,
    expand_hostlist,
    expand_job_ids,
    map_state,
    parse_exit_code,
    parse_sacct,
    parse_sbatch,
    parse_squeue,
    plan_retire,
)
from autopyfactory.plugins.transport.base import Result

DATA = Path(__file__).parent / "data" / "batch"


def test_squeue_rows_states_and_times() -> None:
    rows = {r.job_id: r for r in parse_squeue((DATA / "slurm_squeue.txt").read_text())}
    assert len(rows) == 14
    assert rows["12_6"].state == "RUNNING" and rows["12_6"].nodes == "n1"
    assert rows["12_6"].submitted == 1795304666.0 and rows["12_6"].started == 1795304669.0
    # a pending job's start time is Slurm's estimate: not a start
    assert rows["12_7"].started is None
    assert map_state(rows["15"].state, rows["15"].reason) is PilotState.HELD
    assert map_state(rows["13"].state, rows["13"].reason) is PilotState.PENDING
    assert rows["13"].name == "apf:rec:cms:q:i101"
    tags = PilotTags.parse_job_name(rows["13"].name)
    assert tags == PilotTags("rec", "cms:q", "i101")


def test_sacct_final_states_exit_codes_and_ranges() -> None:
    rows = {r.job_id: r for r in parse_sacct((DATA / "slurm_sacct_final.txt").read_text())}
    assert map_state(rows["13"].state) is PilotState.DONE and rows["13"].exit_code == 0
    assert map_state(rows["14"].state) is PilotState.FAILED and rows["14"].exit_code == 3
    assert map_state(rows["12_0"].state) is PilotState.CANCELLED  # "CANCELLED by 0"
    # 12_6 has its own row and is also inside the range 12_[6-7]: its own row wins
    assert rows["12_6"].started == 1795304669.0 and rows["12_6"].nodes == "n1"
    assert rows["12_7"].started is None and map_state(rows["12_7"].state) is PilotState.CANCELLED
    assert {"17_0", "17_2", "17_3"} <= set(rows) and "17_1" not in rows
    assert rows["15"].nodes == "" and rows["15"].started is None


def test_sacct_while_running_lags() -> None:
    rows = {r.job_id: r for r in parse_sacct((DATA / "slurm_sacct.txt").read_text())}
    assert map_state(rows["12_1"].state) is PilotState.RUNNING
    assert rows["12_1"].ended is None
    assert map_state(rows["12_7"].state) is PilotState.PENDING


def test_sbatch_output() -> None:
    assert parse_sbatch("42\n") == "42"
    assert parse_sbatch((DATA / "slurm_sbatch_clusters.txt").read_text()) == "25"
    with pytest.raises(ValueError, match="no job id"):
        parse_sbatch("sbatch: error: something\n")


@pytest.mark.parametrize(
    ("state", "reason", "expected"),
    [
        ("PENDING", "Priority", PilotState.PENDING),
        ("PENDING", "JobHeldAdmin", PilotState.HELD),
        ("CONFIGURING", "", PilotState.PENDING),
        ("REQUEUED", "", PilotState.PENDING),
        ("RUNNING", "", PilotState.RUNNING),
        ("COMPLETING", "", PilotState.RUNNING),
        ("SUSPENDED", "", PilotState.HELD),
        ("COMPLETED", "", PilotState.DONE),
        ("FAILED", "", PilotState.FAILED),
        ("TIMEOUT", "", PilotState.FAILED),
        ("NODE_FAIL", "", PilotState.FAILED),
        ("OUT_OF_MEMORY", "", PilotState.FAILED),
        ("BOOT_FAIL", "", PilotState.FAILED),
        ("DEADLINE", "", PilotState.FAILED),
        ("PREEMPTED", "", PilotState.FAILED),
        ("CANCELLED", "", PilotState.CANCELLED),
        ("CANCELLED+", "", PilotState.CANCELLED),
    ],
)
def test_state_map(state: str, reason: str, expected: PilotState) -> None:
    assert map_state(state, reason) is expected


def test_unknown_state_is_unknown_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        assert map_state("TELEPORTED_XYZ") is PilotState.UNKNOWN
    assert "TELEPORTED_XYZ" in caplog.text


def test_exit_codes_and_id_expansion() -> None:
    assert parse_exit_code("0:0") == 0
    assert parse_exit_code("3:0") == 3
    assert parse_exit_code("0:9") == 137
    assert parse_exit_code("") is None
    assert expand_job_ids("12_[1-3,7]") == ["12_1", "12_2", "12_3", "12_7"]
    assert expand_job_ids("12_[0-6:2%3]") == ["12_0", "12_2", "12_4", "12_6"]
    assert expand_job_ids("99") == ["99"]
    assert expand_hostlist("n[1-3,5],gpu01") == ["n1", "n2", "n3", "n5", "gpu01"]
    assert expand_hostlist("node[08-10]") == ["node08", "node09", "node10"]
    assert expand_hostlist("") == []


def test_retire_plan_drains_only_exclusive_nodes() -> None:
    rows = parse_squeue(
        "1_0|RUNNING|None|n1|100|110|apf:f1:q:i1\n"
        "1_1|RUNNING|None|n1|100|110|apf:f1:q:i1\n"
        "1_2|RUNNING|None|n2|100|110|apf:f1:q:i1\n"
        "7|RUNNING|None|n2|100|110|somebody-else\n"
        "1_3|PENDING|Resources||100|N/A|apf:f1:q:i1\n"
        "8|RUNNING|None|n3|100|110|apf:f2:q:i1\n"
    )
    plan = plan_retire(rows, {"1_0", "1_2", "1_3"}, "apf:f1:")
    assert plan.cancel == ["1_3"]
    assert plan.drain == ["n1"]
    assert plan.drained == ["1_0"]
    assert plan.shared == ["n2"] and plan.kept == ["1_2"]


def test_controller_down_message_is_clear() -> None:
    stderr = (DATA / "slurm_squeue_ctld_down.stderr").read_text()
    err = command_error("slurm:local", "squeue", Result(1, "", stderr))
    assert "cannot contact slurmctld" in str(err) and str(err).startswith("slurm:local: ")
    stderr = (DATA / "slurm_sbatch_ctld_down.stderr").read_text()
    assert "cannot contact slurmctld" in str(command_error("slurm:local", "sbatch", Result(1, "", stderr)))
    err = command_error("slurm:x", "sbatch", Result(1, "", "sbatch: error: QOSMaxSubmitJobPerUserLimit"))
    assert err.capacity


def test_argv_builders(make_queue, make_factory) -> None:  # type: ignore[no-untyped-def]
    factory = make_factory("f1")
    queue = make_queue(
        "atlas_q",
        {
            "executable": "/usr/bin/runpilot",
            "executable.arguments": "--queue $FACTORYQUEUE -w 'a b'",
            "batchsubmit.slurm.partition": "debug",
            "batchsubmit.slurm.account": "atlas",
            "batchsubmit.slurm.qos": "pilot",
            "batchsubmit.slurm.walltime": "1-12:00:00",
            "batchsubmit.slurm.cores": "8",
            "batchsubmit.slurm.memory": "16G",
            "batchsubmit.slurm.extra": "--constraint=haswell; #SBATCH --exclusive\n--gres=gpu:1",
            "batchsubmit.slurm.environ": "X509_CERT_DIR=/etc/grid-security/certificates MSG='hello world'",
            "batchsubmit.slurm.logdir": "/scratch/apf/logs",
            "batchsubmit.slurm.logurl": "https://apf.example.org/logs",
            "batchsubmit.slurm.array.throttle": "50",
            "batchsubmit.slurm.cluster": "hpc1",
        },
        submit="Slurm",
    )
    sub = SlurmSubmit(queue, queue.batchsubmit.options, factory)
    try:
        tags = PilotTags("f1", "atlas_q", "i42")
        argv = sub.submit_argv(200, tags, 0.0)
        assert argv[:3] == ["sbatch", "--clusters=hpc1", "--parsable"]
        assert "--job-name=apf:f1:atlas_q:i42" in argv and "--comment=apf:f1:atlas_q:i42" in argv
        assert "--array=0-199%50" in argv and "--output=/scratch/apf/logs/%A_%a.out" in argv
        assert "--export=NONE" in argv
        single = sub.submit_argv(1, tags, 0.0)
        assert (
            not any(a.startswith("--array") for a in single) and "--output=/scratch/apf/logs/%j.out" in single
        )
        text = sub.script(tags, 0.0)
        lines = text.splitlines()
        assert lines[0] == "#!/bin/bash"
        for directive in (
            "--partition=debug",
            "--account=atlas",
            "--qos=pilot",
            "--time=1-12:00:00",
            "--cpus-per-task=8",
            "--mem=16G",
            "--constraint=haswell",
            "--exclusive",
            "--gres=gpu:1",
        ):
            assert f"#SBATCH {directive}" in lines
        # every #SBATCH line comes before the first command (sbatch stops reading them there)
        first_cmd = next(i for i, ln in enumerate(lines) if ln and not ln.startswith("#"))
        assert all(i < first_cmd for i, ln in enumerate(lines) if ln.startswith("#SBATCH"))
        assert "export APFFID=f1" in lines and "export PANDA_JSID=f1" in lines
        assert "export FACTORYQUEUE=atlas_q" in lines
        assert "export MSG='hello world'" in lines
        assert 'export GTAG=https://apf.example.org/logs/"${APFCID}.out"' in lines
        assert lines[-1] == "exec /usr/bin/runpilot --queue $FACTORYQUEUE -w 'a b'"
        assert sub.cancel_argv(["5_1", "6"]) == ["scancel", "--clusters=hpc1", "5_1", "6"]
        assert sub.drain_argv(["n1", "n2"]) == [
            "scontrol", "--clusters=hpc1", "update", "nodename=n1,n2", "state=DRAIN", "reason=apf retire",
        ]  # fmt: skip
        assert sub.sacct_argv(["12_1", "12_2", "9"])[-4:] == [
            "-j",
            "9,12",
            "-o",
            "JobID,State,ExitCode,Submit,Start,End,NodeList,JobName",
        ]
        status = SlurmStatus(SlurmStatus.endpoint(queue, factory), factory)
        assert status.status_argv() == [
            "env", "SLURM_TIME_FORMAT=%s", "squeue", "--clusters=hpc1", "--me", "-h", "-r",
            "-o", "%i|%T|%r|%N|%V|%S|%j",
        ]  # fmt: skip
        status.close()
    finally:
        sub.close()


def test_bad_keys_are_named(make_factory) -> None:  # type: ignore[no-untyped-def]
    from autopyfactory.config.validate import options_from_keys

    section = {
        "batchsubmit.slurm.walltime": "soon",
        "batchsubmit.slurm.memory": "lots",
        "batchsubmit.slurm.partiton": "debug",
    }
    options, problems = options_from_keys(
        SlurmSubmit, section, section_name="q1", file_of=lambda k: "queues.conf"
    )
    assert options is None
    text = "\n".join(str(p) for p in problems)
    assert "queues.conf: [q1] batchsubmit.slurm.partiton: unknown key" in text
    assert "did you mean 'batchsubmit.slurm.partition'" in text
    options, problems = options_from_keys(
        SlurmSubmit, {k: v for k, v in section.items() if "partiton" not in k}, section_name="q1"
    )
    text = "\n".join(str(p) for p in problems)
    assert "batchsubmit.slurm.walltime" in text and "batchsubmit.slurm.memory" in text


def test_queues_on_one_cluster_share_one_poller(make_queue, make_factory) -> None:  # type: ignore[no-untyped-def]
    factory = make_factory("f1")
    a = make_queue("a", {"executable": "/bin/true", "batchsubmit.slurm.partition": "p1"}, submit="Slurm")
    b = make_queue("b", {"executable": "/bin/true", "batchsubmit.slurm.partition": "p2"}, submit="Slurm")
    c = make_queue("c", {"executable": "/bin/true", "batchsubmit.slurm.cluster": "other"}, submit="Slurm")
    ea, eb, ec = (SlurmStatus.endpoint(q, factory) for q in (a, b, c))
    assert ea == eb and hash(ea) == hash(eb)
    assert ea != ec
