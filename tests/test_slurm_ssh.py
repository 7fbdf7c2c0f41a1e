"""The Slurm backend over SSH: a non-root user on the real sshd submits into the real cluster."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import pytest

from autopyfactory.model import Pilot, PilotState, PilotTags
from autopyfactory.plugins.base import BackendError
from autopyfactory.plugins.batch.slurm import SlurmStatus, SlurmSubmit
from autopyfactory.plugins.transport.ssh import SSHTransport
from test_slurm import RecordingTransport, cancel_factory, wait_until

pytestmark = [pytest.mark.slurm, pytest.mark.ssh]


@pytest.fixture
def fid(slurm_cluster) -> Iterator[str]:  # type: ignore[no-untyped-def]
    factory_id = f"s{uuid.uuid4().hex[:8]}"
    try:
        yield factory_id
    finally:
        cancel_factory(slurm_cluster, factory_id)


def remote(ssh_target, make_queue, make_factory, fid: str, keys: dict[str, str]):  # type: ignore[no-untyped-def]
    factory = make_factory(
        fid,
        auth={
            "hpc-key": (
                "SSH",
                {
                    "ssh.privatekeyfile": str(ssh_target.key),
                    "ssh.knownhostsfile": str(ssh_target.known_hosts),
                },
            )
        },
    )
    queue = make_queue(
        "hpcq",
        {
            "batchsubmit.slurm.host": ssh_target.host,
            "batchsubmit.slurm.port": str(ssh_target.port),
            "batchsubmit.slurm.user": ssh_target.user,
            "batchsubmit.slurm.authprofile": "hpc-key",
            **keys,
        },
        submit="Slurm",
    )
    sub = SlurmSubmit(queue, queue.batchsubmit.options, factory)
    status = SlurmStatus(SlurmStatus.endpoint(queue, factory), factory)
    return sub, status


def test_pilot_over_ssh_runs_as_the_user_and_finishes(
    slurm_cluster, ssh_target, make_queue, make_factory, fid
) -> None:  # type: ignore[no-untyped-def]
    logdir = ssh_target.workdir / fid
    sub, status = remote(
        ssh_target, make_queue, make_factory, fid,
        {
            "executable": "/bin/sh",
            "executable.arguments": "-c 'echo user=$(id -un) cid=$APFCID; sleep 1'",
            "batchsubmit.slurm.logdir": str(logdir),
            "batchsubmit.slurm.workdir": str(ssh_target.workdir),
            "batchsubmit.slurm.extra": "--begin=now+1",
            "batchstatus.slurm.settle_polls": "50",
        },
    )  # fmt: skip
    try:
        assert sub.target() == f"slurm:apfuser@127.0.0.1:{ssh_target.port}"
        # the submit plugin and the poller share one SSH transport (one connection)
        assert sub.transport is status.transport and isinstance(sub.transport, SSHTransport)
        (pilot,) = sub.submit(1, PilotTags(fid, "hpcq", "r1"), time.time())
        owner = slurm_cluster.run("squeue", "-h", "-j", pilot.backend_id, "-o", "%u").stdout.strip()
        assert owner == "apfuser"
        seen: list[PilotState] = []

        def final() -> Pilot | None:
            p = next(p for p in status.poll(time.time()).pilots if p.backend_id == pilot.backend_id)
            if not seen or seen[-1] is not p.state:
                seen.append(p.state)
            return p if p.state.final else None

        p = wait_until(final, timeout=90, interval=0.25)
        assert seen == [PilotState.PENDING, PilotState.RUNNING, PilotState.DONE]
        assert p.exit_code == 0
        out = (logdir / f"{pilot.backend_id}.out").read_text()
        assert f"user=apfuser cid={pilot.backend_id}" in out
        assert sub.transport.connects == 1
    finally:
        sub.close()
        status.close()


def test_200_pilots_over_ssh_one_sbatch(slurm_cluster, ssh_target, make_queue, make_factory, fid) -> None:  # type: ignore[no-untyped-def]
    sub, status = remote(
        ssh_target, make_queue, make_factory, fid,
        {"executable": "/bin/sleep", "executable.arguments": "300", "batchstatus.slurm.settle_polls": "50"},
    )  # fmt: skip
    rec = RecordingTransport(sub.transport)
    sub.transport = rec
    try:
        pilots = sub.submit(200, PilotTags(fid, "hpcq", "r200"), time.time())
        assert rec.count("sbatch") == 1 and len(rec.calls) == 1
        ids = {p.backend_id for p in pilots}
        snap = status.poll(time.time())
        mine = {p.backend_id for p in snap.pilots}
        assert mine == ids
        sub.cancel(sorted(ids))
        assert rec.count("scancel") == 1

        def all_cancelled() -> bool:
            states = [p.state for p in status.poll(time.time()).pilots if p.backend_id in ids]
            return len(states) == 200 and set(states) == {PilotState.CANCELLED}

        wait_until(all_cancelled, timeout=60, interval=0.5)
    finally:
        sub.close()
        status.close()


def test_drain_needs_slurm_admin_rights(slurm_cluster, ssh_target, make_queue, make_factory, fid) -> None:  # type: ignore[no-untyped-def]
    """A non-root factory cannot drain nodes: the error says so instead of failing silently."""
    sub, status = remote(
        ssh_target, make_queue, make_factory, fid,
        {"executable": "/bin/sleep", "executable.arguments": "300", "batchsubmit.slurm.extra": f"--nodelist={slurm_cluster.nodes[0]}"},
    )  # fmt: skip
    try:
        (pilot,) = sub.submit(1, PilotTags(fid, "hpcq", "r3"), time.time())
        wait_until(
            lambda: any(p.state is PilotState.RUNNING for p in status.poll(time.time()).pilots), timeout=60
        )
        shared = slurm_cluster.run("squeue", "-h", "-w", slurm_cluster.nodes[0], "-o", "%j").stdout.split()
        if any(not name.startswith(f"apf:{fid}:") for name in shared):
            pytest.fail(f"node {slurm_cluster.nodes[0]} is shared with other jobs: {shared}")
        with pytest.raises(BackendError, match=r"scontrol update nodename=.* failed"):
            sub.retire([pilot.backend_id])
        assert "DRAIN" not in slurm_cluster.node_state(slurm_cluster.nodes[0])
    finally:
        slurm_cluster.resume_all()
        sub.close()
        status.close()
