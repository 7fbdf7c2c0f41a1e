"""The PSI/J adapter with PSI/J's real ``local`` executor and its ``slurm`` executor on the real cluster."""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from autopyfactory.model import Pilot, PilotState, PilotTags
from autopyfactory.plugins.batch.psij import PSIJStatus, PSIJSubmit
from test_slurm import cancel_factory, wait_until


def plugins(make_queue, make_factory, keys: dict[str, str], fid: str | None = None):  # type: ignore[no-untyped-def]
    factory = make_factory(fid or f"p{uuid.uuid4().hex[:8]}")
    queue = make_queue("pq", keys, submit="PSIJ")
    sub = PSIJSubmit(queue, queue.batchsubmit.options, factory)
    status = PSIJStatus(PSIJStatus.endpoint(queue, factory), factory)
    return factory, sub, status


def final_states(status: PSIJStatus, ids: set[str]) -> dict[str, Pilot] | None:
    now = {p.backend_id: p for p in status.poll(time.time()).pilots if p.backend_id in ids}
    return now if len(now) == len(ids) and all(p.state.final for p in now.values()) else None


def test_backend_modules_import_no_optional_library() -> None:
    """Loading the plugins (as ``apf check`` does) must not import psij, htcondor or boto3."""
    code = (
        "import sys\n"
        "import autopyfactory.plugins.batch.psij, autopyfactory.plugins.batch.slurm\n"
        "import autopyfactory.plugins.batch.pbs, autopyfactory.plugins.batch.lsf\n"
        "import autopyfactory.plugins.transport.ssh\n"
        "bad = [m for m in ('psij', 'htcondor2', 'classad2', 'boto3', 'asyncssh') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr


def test_local_executor_submit_status_cancel(make_queue, make_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    logdir = tmp_path / "logs"
    factory, sub, status = plugins(
        make_queue,
        make_factory,
        {
            "executable": "/bin/sh",
            "executable.arguments": "-c 'echo fid=$APFFID q=$FACTORYQUEUE cid=$APFCID; exit $CODE'",
            "batchsubmit.psij.environ": "CODE=3",
            "batchsubmit.psij.logdir": str(logdir),
            "batchsubmit.psij.executor": "local",
        },
    )
    pilots = sub.submit(2, PilotTags(factory.factory_id, "pq", "i1"), time.time())
    assert len(pilots) == 2 and all(p.state is PilotState.PENDING for p in pilots)
    done = wait_until(lambda: final_states(status, {p.backend_id for p in pilots}), timeout=60)
    assert {p.state for p in done.values()} == {PilotState.FAILED}
    assert {p.exit_code for p in done.values()} == {3}
    assert all(p.queue == "pq" and p.intent_id == "i1" for p in done.values())
    outs = sorted(f.read_text() for f in logdir.glob("*.out"))
    assert len(outs) == 2 and all(o.startswith(f"fid={factory.factory_id} q=pq cid=") for o in outs)

    _, sub2, status2 = plugins(
        make_queue, make_factory,
        {"executable": "/bin/sleep", "executable.arguments": "60", "batchsubmit.psij.executor": "local"},
        fid=factory.factory_id,
    )  # fmt: skip
    (sleeper,) = sub2.submit(1, PilotTags(factory.factory_id, "pq", "i2"), time.time())
    wait_until(
        lambda: (
            next(p for p in status2.poll(time.time()).pilots if p.backend_id == sleeper.backend_id).state
            is PilotState.RUNNING
        ),
        timeout=30,
    )
    sub2.cancel([sleeper.backend_id])
    gone = wait_until(lambda: final_states(status2, {sleeper.backend_id}), timeout=30)
    assert gone[sleeper.backend_id].state is PilotState.CANCELLED


@pytest.mark.slurm
def test_slurm_executor_on_the_real_cluster(slurm_cluster, make_queue, make_factory) -> None:  # type: ignore[no-untyped-def]
    fid = f"p{uuid.uuid4().hex[:8]}"
    _factory, sub, status = plugins(
        make_queue,
        make_factory,
        {
            "executable": "/bin/sh",
            "executable.arguments": "-c 'sleep 1; exit 0'",
            "batchsubmit.psij.executor": "slurm",
            "batchsubmit.psij.queue": slurm_cluster.partition,
            "batchsubmit.psij.walltime": "5",
            "batchsubmit.psij.polling": "1",
        },
        fid=fid,
    )
    try:
        (pilot,) = sub.submit(1, PilotTags(fid, "pq", "s1"), time.time())
        # the native id is the Slurm job id, and the job carries the tag as its name
        name = slurm_cluster.run("squeue", "-h", "-j", pilot.backend_id, "-o", "%j").stdout.strip()
        assert name == f"apf:{fid}:pq:s1"
        done = wait_until(lambda: final_states(status, {pilot.backend_id}), timeout=90)
        assert done[pilot.backend_id].state is PilotState.DONE and done[pilot.backend_id].exit_code == 0

        _, sub2, status2 = plugins(
            make_queue, make_factory,
            {"executable": "/bin/sleep", "executable.arguments": "120", "batchsubmit.psij.executor": "slurm",
             "batchsubmit.psij.polling": "1"},
            fid=fid,
        )  # fmt: skip
        (sleeper,) = sub2.submit(1, PilotTags(fid, "pq", "s2"), time.time())
        sub2.cancel([sleeper.backend_id])
        gone = wait_until(lambda: final_states(status2, {sleeper.backend_id}), timeout=90)
        assert gone[sleeper.backend_id].state is PilotState.CANCELLED
    finally:
        cancel_factory(slurm_cluster, fid)
