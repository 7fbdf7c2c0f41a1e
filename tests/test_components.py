"""The real components the other tests use: each fixture gives a working, reachable service."""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path

import pytest

from conftest import COMPONENTS, _Script


def _wait(predicate, timeout: float = 60.0):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(0.2)


def test_slurm_cluster_is_up_with_accounting(slurm_cluster) -> None:  # type: ignore[no-untyped-def]
    assert slurm_cluster.nodes == ("n1", "n2", "n3") and slurm_cluster.accounting
    out = slurm_cluster.run("sinfo", "-h", "-N", "-o", "%N %T").stdout.split("\n")
    nodes = dict(line.split() for line in out if line.strip())
    assert set(nodes) == {"n1", "n2", "n3"}
    acct = slurm_cluster.run("sacct", "-n", "-X", "-S", "now-1hour")
    assert acct.returncode == 0, acct.stderr
    # a job runs on the fake nodes and reaches accounting
    job = slurm_cluster.run("sbatch", "--parsable", "-o", "/dev/null", "--wrap", "exit 4").stdout.strip()
    _wait(lambda: "FAILED" in slurm_cluster.run("sacct", "-n", "-X", "-j", job, "-o", "State").stdout)
    assert "4:0" in slurm_cluster.run("sacct", "-n", "-X", "-j", job, "-o", "ExitCode").stdout
    # start again is a no-op on a running cluster
    t0 = time.monotonic()
    again = subprocess.run(
        ["bash", str(slurm_cluster.script), "start"],
        env={"APF_SLURM_BASE": str(slurm_cluster.base), "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert again.returncode == 0 and "already running" in again.stdout
    assert time.monotonic() - t0 < 10


def test_slurmctld_stops_and_restarts_with_its_jobs(slurm_cluster, slurmctld_control) -> None:  # type: ignore[no-untyped-def]
    job = slurm_cluster.run("sbatch", "--parsable", "-H", "-o", "/dev/null", "--wrap", "true").stdout.strip()
    try:
        slurmctld_control.stop()
        assert "DOWN" in slurm_cluster.run("scontrol", "ping").stdout
        slurmctld_control.start()
        assert slurmctld_control.running()
        assert "PENDING" in slurm_cluster.run("squeue", "-h", "-j", job, "-o", "%T").stdout
    finally:
        slurm_cluster.run("scancel", job)


def test_ssh_target_user_and_slurm_over_ssh(slurm_cluster, ssh_target) -> None:  # type: ignore[no-untyped-def]
    res = ssh_target.ssh("id -un; echo $SLURM_CONF")
    assert res.returncode == 0, res.stderr
    user, conf = res.stdout.split()
    assert user == "apfuser" and user != "root" and conf == str(slurm_cluster.conf)
    job = ssh_target.ssh(f"cd {ssh_target.workdir} && sbatch --parsable -H -o /dev/null --wrap true")
    assert job.returncode == 0, job.stderr
    owner = slurm_cluster.run("squeue", "-h", "-j", job.stdout.strip(), "-o", "%u").stdout.strip()
    slurm_cluster.run("scancel", job.stdout.strip())
    assert owner == "apfuser"
    # loopback only, and the known_hosts file pins the host key
    assert ssh_target.host == "127.0.0.1"
    assert f"[127.0.0.1]:{ssh_target.port} ssh-ed25519 " in ssh_target.known_hosts.read_text()


def test_postgres(postgres_server, postgres_url) -> None:  # type: ignore[no-untyped-def]
    import sqlalchemy as sa

    engine = sa.create_engine(postgres_url)
    try:
        with engine.connect() as conn:
            version = conn.execute(sa.text("select version()")).scalar_one()
            db = conn.execute(sa.text("select current_database()")).scalar_one()
    finally:
        engine.dispose()
    assert version.startswith("PostgreSQL 15") and db == "apf"
    assert postgres_server.host == "127.0.0.1"


def test_moto_ec2(moto_endpoint) -> None:  # type: ignore[no-untyped-def]
    ec2 = moto_endpoint.client("ec2")
    image = ec2.register_image(Name="apf-test", RootDeviceName="/dev/xvda")["ImageId"]
    run = ec2.run_instances(
        ImageId=image, MinCount=2, MaxCount=2,
        TagSpecifications=[{"ResourceType": "instance", "Tags": [{"Key": "apf", "Value": "test"}]}],
    )  # fmt: skip
    ids = [i["InstanceId"] for i in run["Instances"]]
    found = ec2.describe_instances(Filters=[{"Name": "tag:apf", "Values": ["test"]}])
    assert sorted(i["InstanceId"] for r in found["Reservations"] for i in r["Instances"]) == sorted(ids)
    ec2.terminate_instances(InstanceIds=ids)
    moto_endpoint.reset()
    assert ec2.describe_instances()["Reservations"] == []


def test_a_component_that_cannot_start_fails_with_its_output(tmp_path: Path) -> None:
    script = tmp_path / "broken.sh"
    script.write_text(
        '#!/bin/bash\ncase "$1" in status) exit 1;; start) echo "installing things"; '
        'echo "cannot bind port 4242" >&2; exit 3;; *) exit 0;; esac\n'
    )
    with pytest.raises(pytest.fail.Exception) as info:
        _Script("broken", script, {}).start()
    text = str(info.value)
    assert "broken did not start (broken.sh start exited 3)" in text
    assert "installing things" in text and "cannot bind port 4242" in text


def test_busy_default_port_is_skipped(tmp_path: Path) -> None:
    """pick_port in common.sh moves past a port something already listens on."""
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        out = subprocess.run(
            ["bash", "-c", f'. "{COMPONENTS}/common.sh"; pick_port {port}'],
            capture_output=True, text=True, check=True,
        ).stdout.strip()  # fmt: skip
    assert int(out) > port
