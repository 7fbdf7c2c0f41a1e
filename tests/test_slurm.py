"""The Slurm backend against the real local cluster (scripts/components/slurm.sh), no mocks."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from autopyfactory.model import Pilot, PilotState, PilotTags
from autopyfactory.plugins.base import BackendError
from autopyfactory.plugins.batch.slurm import SlurmStatus, SlurmSubmit
from autopyfactory.plugins.transport.base import Result, Transport
from autopyfactory.plugins.transport.local import LocalTransport

pytestmark = pytest.mark.slurm


class RecordingTransport(Transport):
    """Wraps a real transport and records every argv it runs."""

    def __init__(self, inner: Transport) -> None:
        self.inner = inner
        self.name = inner.name
        self.calls: list[list[str]] = []

    def run(self, argv: Sequence[str], input: bytes | None = None, timeout: float = 60) -> Result:
        self.calls.append(list(argv))
        return self.inner.run(argv, input=input, timeout=timeout)

    def count(self, program: str) -> int:
        return sum(1 for argv in self.calls if program in argv[:3])


def wait_until(predicate, timeout: float = 60.0, interval: float = 0.2):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(interval)


def cancel_factory(cluster, factory_id: str) -> None:  # type: ignore[no-untyped-def]
    """Remove every job a test's factory left (by tag), whoever owns it."""
    out = cluster.run("squeue", "-h", "-o", "%A|%j").stdout
    ids = sorted({line.split("|", 1)[0] for line in out.splitlines() if f"|apf:{factory_id}:" in line})
    if ids:
        cluster.run("scancel", *ids)


@pytest.fixture
def fid(slurm_cluster) -> Iterator[str]:  # type: ignore[no-untyped-def]
    """A factory id of this test's own, so tests never see each other's pilots."""
    factory_id = f"t{uuid.uuid4().hex[:8]}"
    try:
        yield factory_id
    finally:
        cancel_factory(slurm_cluster, factory_id)


def plugins(make_queue, make_factory, fid: str, keys: dict[str, str], name: str = "q1"):  # type: ignore[no-untyped-def]
    factory = make_factory(fid)
    queue = make_queue(name, keys, submit="Slurm")
    sub = SlurmSubmit(queue, queue.batchsubmit.options, factory)
    status = SlurmStatus(SlurmStatus.endpoint(queue, factory), factory)
    return factory, queue, sub, status


def states_of(snapshot_pilots: Sequence[Pilot], ids: set[str]) -> dict[str, PilotState]:
    return {p.backend_id: p.state for p in snapshot_pilots if p.backend_id in ids}


def test_pilot_runs_and_status_follows_it_to_done(
    slurm_cluster, make_queue, make_factory, fid, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    logdir = tmp_path / "logs"
    _factory, _queue, sub, status = plugins(
        make_queue,
        make_factory,
        fid,
        {
            "executable": "/bin/sh",
            "executable.arguments": "-c 'echo cid=$APFCID fid=$APFFID q=$FACTORYQUEUE gtag=$GTAG x=$EXTRA; sleep 2'",
            "batchsubmit.slurm.walltime": "5",
            "batchsubmit.slurm.cores": "1",
            "batchsubmit.slurm.memory": "100",
            # a start 2 s from now keeps the pilot visibly pending first
            "batchsubmit.slurm.extra": "--begin=now+2",
            "batchsubmit.slurm.logdir": str(logdir),
            "batchsubmit.slurm.environ": "EXTRA=yes",
            "batchstatus.slurm.settle_polls": "50",
        },
    )
    try:
        (pilot,) = sub.submit(1, PilotTags(fid, "q1", "i1"), time.time())
        assert pilot.state is PilotState.PENDING and pilot.intent_id == "i1"
        seen: list[PilotState] = []

        def settled() -> Pilot | None:
            snap = status.poll(time.time())
            mine = [p for p in snap.pilots if p.backend_id == pilot.backend_id]
            assert len(mine) == 1, snap.pilots
            if not seen or seen[-1] is not mine[0].state:
                seen.append(mine[0].state)
            return mine[0] if mine[0].state.final else None

        final = wait_until(settled, timeout=90, interval=0.25)
        assert seen == [PilotState.PENDING, PilotState.RUNNING, PilotState.DONE]
        assert final.exit_code == 0 and final.node in slurm_cluster.nodes
        assert final.queue == "q1" and final.intent_id == "i1"
        assert final.started_at and final.ended_at and final.ended_at >= final.started_at
        out = (logdir / f"{pilot.backend_id}.out").read_text()
        assert f"cid={pilot.backend_id} fid={fid} q=q1 gtag={logdir}/{pilot.backend_id}.out x=yes" in out
        # a settled pilot stays in later snapshots (keep), so the engine cannot miss it
        assert status.poll(time.time()).pilots == (final,)
    finally:
        sub.close()
        status.close()


def test_failed_pilot_gets_its_exit_code_from_sacct(slurm_cluster, make_queue, make_factory, fid) -> None:  # type: ignore[no-untyped-def]
    _, _, sub, status = plugins(
        make_queue, make_factory, fid,
        {"executable": "/bin/sh", "executable.arguments": "-c 'exit 3'", "batchstatus.slurm.settle_polls": "50"},
    )  # fmt: skip
    try:
        (pilot,) = sub.submit(1, PilotTags(fid, "q1", "i2"), time.time())

        def final() -> Pilot | None:
            p = next(p for p in status.poll(time.time()).pilots if p.backend_id == pilot.backend_id)
            return p if p.state.final else None

        p = wait_until(final, timeout=60)
        assert p.state is PilotState.FAILED and p.exit_code == 3
    finally:
        sub.close()
        status.close()


def test_200_pilots_are_one_sbatch_and_one_poll(slurm_cluster, make_queue, make_factory, fid) -> None:  # type: ignore[no-untyped-def]
    _, _, sub, status = plugins(
        make_queue, make_factory, fid,
        {"executable": "/bin/sleep", "executable.arguments": "300", "batchstatus.slurm.settle_polls": "50"},
    )  # fmt: skip
    sub.transport = RecordingTransport(sub.transport)
    status.transport = RecordingTransport(status.transport)
    try:
        pilots = sub.submit(200, PilotTags(fid, "q1", "i200"), time.time())
        assert sub.transport.count("sbatch") == 1 and len(sub.transport.calls) == 1
        argv = sub.transport.calls[0]
        assert "--array=0-199" in argv
        ids = {p.backend_id for p in pilots}
        job = pilots[0].backend_id.split("_")[0]
        assert ids == {f"{job}_{i}" for i in range(200)}
        snap = status.poll(time.time())
        assert len(status.transport.calls) == 1
        mine = states_of(snap.pilots, ids)
        assert set(mine) == ids
        assert all(s in (PilotState.PENDING, PilotState.RUNNING) for s in mine.values())
        assert all(p.queue == "q1" and p.intent_id == "i200" for p in snap.pilots if p.backend_id in ids)

        sub.cancel(sorted(ids))
        assert sub.transport.count("scancel") == 1

        def all_cancelled() -> bool:
            now = states_of(status.poll(time.time()).pilots, ids)
            return len(now) == 200 and all(s is PilotState.CANCELLED for s in now.values())

        wait_until(all_cancelled, timeout=60, interval=0.5)
        # every poll was one squeue (plus sacct for pilots that left it)
        assert status.transport.count("squeue") == sum(1 for c in status.transport.calls if "squeue" in c)
    finally:
        sub.close()
        status.close()


def test_adoption_after_poller_restart(slurm_cluster, make_queue, make_factory, fid) -> None:  # type: ignore[no-untyped-def]
    factory, queue, sub, status = plugins(
        make_queue,
        make_factory,
        fid,
        {"executable": "/bin/sleep", "executable.arguments": "120"},
        name="atlas:prod",
    )
    pilots = sub.submit(3, PilotTags(fid, "atlas:prod", "intent-7"), time.time())
    status.close()
    sub.close()
    # a new factory process: new plugin instances, nothing in memory
    fresh = SlurmStatus(SlurmStatus.endpoint(queue, factory), make_factory(fid))
    other = SlurmStatus(SlurmStatus.endpoint(queue, factory), make_factory(fid + "x"))
    try:
        snap = fresh.poll(time.time())
        found = {p.backend_id: p for p in snap.pilots}
        assert set(found) == {p.backend_id for p in pilots}
        assert all(p.queue == "atlas:prod" and p.intent_id == "intent-7" for p in found.values())
        # another factory's poller does not see them
        assert other.poll(time.time()).pilots == ()
    finally:
        fresh.close()
        other.close()


def test_cancel_and_drain(
    slurm_cluster, make_queue, make_factory, fid, caplog: pytest.LogCaptureFixture
) -> None:  # type: ignore[no-untyped-def]
    node = slurm_cluster.nodes[-1]
    shared = slurm_cluster.nodes[-2]
    _, _, sub, status = plugins(
        make_queue, make_factory, fid,
        {"executable": "/bin/sleep", "executable.arguments": "300", "batchsubmit.slurm.extra": f"--nodelist={node}"},
    )  # fmt: skip
    _, _, sub2, _ = plugins(
        make_queue, make_factory, fid,
        {"executable": "/bin/sleep", "executable.arguments": "300", "batchsubmit.slurm.extra": f"--nodelist={shared}"},
    )  # fmt: skip
    foreign = None
    try:
        (p1,) = sub.submit(1, PilotTags(fid, "q1", "d1"), time.time())
        (p2,) = sub2.submit(1, PilotTags(fid, "q1", "d2"), time.time())
        foreign = slurm_cluster.run(
            "sbatch", "--parsable", f"--nodelist={shared}", "-o", "/dev/null", "-J", "not-a-pilot",
            "--wrap", "sleep 300",
        ).stdout.strip()  # fmt: skip

        def running() -> bool:
            now = states_of(status.poll(time.time()).pilots, {p1.backend_id, p2.backend_id})
            foreign_up = "RUNNING" in slurm_cluster.run("squeue", "-h", "-j", foreign, "-o", "%T").stdout
            return foreign_up and set(now.values()) == {PilotState.RUNNING}

        wait_until(running, timeout=60)
        caplog.set_level(logging.WARNING)
        sub.retire([p1.backend_id, p2.backend_id])
        # the node only our pilot uses is draining; the pilot keeps running (peaceful)
        assert "DRAIN" in slurm_cluster.node_state(node)
        assert "Reason=apf retire" in slurm_cluster.run("scontrol", "show", "node", node).stdout
        assert "DRAIN" in slurm_cluster.run("sinfo", "-h", "-n", node, "-o", "%T").stdout.upper()
        # a node shared with someone else's job is left alone, with a warning
        assert "DRAIN" not in slurm_cluster.node_state(shared)
        assert f"not draining {shared}" in caplog.text
        assert (
            states_of(status.poll(time.time()).pilots, {p1.backend_id})[p1.backend_id] is PilotState.RUNNING
        )
        # kill = cancel outright
        sub.retire([p1.backend_id], kill=True)
        sub.cancel([p2.backend_id])

        def gone() -> bool:
            out = slurm_cluster.run(
                "squeue", "-h", "-j", f"{p1.backend_id},{p2.backend_id}", "-o", "%i"
            ).stdout
            return out.strip() == ""

        wait_until(gone, timeout=60)
    finally:
        if foreign:
            slurm_cluster.run("scancel", foreign)
        slurm_cluster.resume_all()
        sub.close()
        sub2.close()
        status.close()


def test_sacct_off_makes_vanished_pilots_unknown(slurm_cluster, make_queue, make_factory, fid) -> None:  # type: ignore[no-untyped-def]
    _, _, sub, status = plugins(
        make_queue, make_factory, fid,
        {"executable": "/bin/true", "batchsubmit.slurm.sacct": "False"},
    )  # fmt: skip
    status.transport = RecordingTransport(status.transport)
    try:
        (pilot,) = sub.submit(1, PilotTags(fid, "q1", "i3"), time.time())
        assert status.poll(time.time()).pilots[0].backend_id == pilot.backend_id

        def vanished() -> Pilot | None:
            snap = status.poll(time.time())
            return next((p for p in snap.pilots if p.state is PilotState.UNKNOWN), None)

        p = wait_until(vanished, timeout=60)
        assert p.backend_id == pilot.backend_id and p.exit_code is None
        assert status.transport.count("sacct") == 0
    finally:
        sub.close()
        status.close()


def test_cluster_without_accounting_reports_unknown(  # type: ignore[no-untyped-def]
    slurm_cluster_noacct, make_queue, make_factory, caplog: pytest.LogCaptureFixture
) -> None:
    fid = f"t{uuid.uuid4().hex[:8]}"
    _, _, sub, status = plugins(make_queue, make_factory, fid, {"executable": "/bin/true"})
    # this second cluster is reached through its own SLURM_CONF
    sub.transport = status.transport = LocalTransport(env=dict(slurm_cluster_noacct.env))
    try:
        (pilot,) = sub.submit(1, PilotTags(fid, "q1", "i4"), time.time())
        assert status.poll(time.time()).pilots[0].state in (PilotState.PENDING, PilotState.RUNNING)

        def vanished() -> Pilot | None:
            snap = status.poll(time.time())
            active = (PilotState.PENDING, PilotState.RUNNING)
            return next((p for p in snap.pilots if p.state not in active), None)

        p = wait_until(vanished, timeout=60)
        # sacct cannot say how it ended: unknown, never done
        assert p.backend_id == pilot.backend_id and p.state is PilotState.UNKNOWN
        assert "accounting is disabled" in caplog.text
    finally:
        cancel_factory(slurm_cluster_noacct, fid)


def test_slurmctld_down_is_a_clear_error_and_recovers(  # type: ignore[no-untyped-def]
    slurm_cluster, slurmctld_control, make_queue, make_factory, fid
) -> None:
    _, _, sub, status = plugins(
        make_queue, make_factory, fid, {"executable": "/bin/sleep", "executable.arguments": "120"}
    )
    try:
        (pilot,) = sub.submit(1, PilotTags(fid, "q1", "i5"), time.time())
        slurmctld_control.stop()
        with pytest.raises(BackendError) as info:
            status.poll(time.time())
        assert str(info.value).startswith("slurm:local: squeue: cannot contact slurmctld (is it running?)")
        with pytest.raises(BackendError, match="sbatch: cannot contact slurmctld"):
            sub.submit(1, PilotTags(fid, "q1", "i6"), time.time())
        slurmctld_control.start()
        # back by itself, with the pilot it had before
        snap = wait_until(lambda: _poll_ok(status), timeout=60)
        assert pilot.backend_id in {p.backend_id for p in snap.pilots}
    finally:
        sub.close()
        status.close()


def _poll_ok(status: SlurmStatus):  # type: ignore[no-untyped-def]
    try:
        return status.poll(time.time())
    except BackendError:
        return None


def test_missing_executable_is_a_clear_error(slurm_cluster, make_queue, make_factory, fid) -> None:  # type: ignore[no-untyped-def]
    _, _, sub, status = plugins(make_queue, make_factory, fid, {})
    try:
        with pytest.raises(BackendError, match="queue 'q1' has no 'executable'"):
            sub.submit(1, PilotTags(fid, "q1", "i"), time.time())
    finally:
        sub.close()
        status.close()
