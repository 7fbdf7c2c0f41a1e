"""Issue 13, "status tells the truth" and "read-only commands never create files": apf status says
whether the daemon runs (pid, heartbeat, "not running since"), marks dry-run decisions, lists
queues that failed to set up, names pollers in words; status, explain and plan create nothing."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import pytest

from autopyfactory.cli import main
from autopyfactory.cli._daemon import daemon_state
from autopyfactory.plugins.base import endpoint_label
from autopyfactory.plugins.wmsstatus.panda import PandaEndpoint
from tests.helpers import wait_for
from tests.trustkit import APF, QUEUES, apf, config_tree, no_traceback


def tree_files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def status(conf: Path, capsys: pytest.CaptureFixture[str]) -> str:
    assert main(["status", "--conf", str(conf)]) == 0
    out = capsys.readouterr()
    no_traceback(out.out, out.err)
    return out.out


def test_read_only_commands_create_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    conf = config_tree(tmp_path)
    before = tree_files(tmp_path)

    def read_only_commands() -> None:
        for argv in (["status", "--conf", str(conf)], ["explain", "Q1", "--conf", str(conf)]):
            assert main(argv) == 0
            no_traceback(*capsys.readouterr())
        result = apf("plan", "--conf", str(conf))
        no_traceback(result.stdout, result.stderr)
        assert result.returncode == 0, result.stderr

    read_only_commands()
    assert tree_files(tmp_path) == before, tree_files(tmp_path) - before
    assert "no record of a daemon" in status(conf, capsys)
    # after the daemon ran: still nothing new (no -wal/-shm next to the store, no decision rows)
    assert apf("run", "--conf", str(conf), "--once", "--no-table").returncode == 0
    db = tmp_path / "state" / "apf.db"
    size, files = db.stat().st_size, tree_files(tmp_path)
    read_only_commands()
    assert tree_files(tmp_path) == files, tree_files(tmp_path) ^ files
    assert db.stat().st_size == size
    assert main(["explain", "Q1", "--conf", str(conf)]) == 0
    assert "n = 0" in capsys.readouterr().out


def test_status_running_stopped_and_killed(tmp: Path, capsys: pytest.CaptureFixture[str]) -> None:
    conf = config_tree(
        tmp,
        QUEUES + "[BROKEN]\nwmsqueue = B\nexecutable = None\n",
        factory_extra="factory.sleep = 1\nmetrics.address = 127.0.0.1:0\n",
    )
    proc = subprocess.Popen(
        [APF, "run", "--conf", str(conf), "--no-table"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        wait_for(lambda: "running (pid" in status(conf, capsys), 30, "the daemon to be running")
        wait_for(lambda: (tmp / "state" / "status-trust.json").exists(), 30, "the engine's status file")
        text = status(conf, capsys)
        assert f"daemon: running (pid {proc.pid}" in text
        assert "queue BROKEN failed to set up:" in text and "no 'executable'" in text
        assert "BROKEN (NOT SET UP)" in text
        assert "metrics: http://127.0.0.1:" in text
        assert "poller batchstatus Local at /" in text  # (the engine cuts long keys at 80 characters)
        assert "poller wmsstatus Sim: ok" in text and "('" not in text  # words, not Python tuples
        info = json.loads(_json_status(conf, capsys))
        assert info["daemon"]["running"] is True and info["daemon"]["pid"] == proc.pid
        assert "BROKEN" in info["failed_queues"]
        proc.terminate()
        assert proc.wait(timeout=30) == 0
        text = status(conf, capsys)
        assert "daemon: not running since" in text and "(stopped cleanly)" in text
        assert "metrics:" not in text
        assert "last known at" in text  # pollers are not shown as current
    finally:
        if proc.poll() is None:
            proc.kill()
    # killed: the pid is gone, the file still says "running"
    proc = subprocess.Popen(
        [APF, "run", "--conf", str(conf), "--no-table"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        wait_for(lambda: f"pid {proc.pid}" in status(conf, capsys), 30, "the second daemon")
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        text = status(conf, capsys)
        assert "daemon: not running since" in text and f"pid {proc.pid} is gone" in text
    finally:
        if proc.poll() is None:
            proc.kill()


def _json_status(conf: Path, capsys: pytest.CaptureFixture[str]) -> str:
    assert main(["status", "--conf", str(conf), "--json"]) == 0
    return capsys.readouterr().out


def test_daemon_state_rules() -> None:
    now = 10_000.0
    alive = {"pid": os.getpid(), "heartbeat": now - 5, "started": now - 100}
    assert daemon_state(alive, {}, now, stale_after=60).running
    stale = daemon_state({**alive, "heartbeat": now - 600}, {}, now, stale_after=60)
    assert not stale.running and "has given no heartbeat since" in stale.text
    other_host = daemon_state({**alive, "host": "elsewhere", "heartbeat": now - 600}, {}, now, stale_after=60)
    assert not other_host.running and "not running since" in other_host.text
    assert daemon_state({}, {"time": now - 5}, now, stale_after=60).running  # an engine status file alone
    assert not daemon_state({}, {}, now, stale_after=60).running


def test_dry_run_decisions_are_marked(tmp: Path, capsys: pytest.CaptureFixture[str]) -> None:
    conf = config_tree(tmp, QUEUES.replace("wmsstatus.sim.activated = 0", "wmsstatus.sim.activated = 3"))
    result = apf("run", "--conf", str(conf), "--once", "--dry-run", "--no-table")
    assert result.returncode == 0, result.stderr
    text = status(conf, capsys)
    assert "3*" in text and "* a dry-run decision" in text
    assert not list((tmp / "state").glob("local/*/*/*/tags"))  # and nothing was submitted


def test_pollers_and_targets_are_named_in_words() -> None:
    assert (
        endpoint_label("batchstatus", "Local", ("Local", "/var/lib/apf/local/f1", 3600.0))
        == "batchstatus Local at /var/lib/apf/local/f1"
    )
    slurm = (
        "Slurm",
        json.dumps({"host": "hpc.example.org", "user": "apf", "port": 22, "cluster": "c1", "timeout": 60.0}),
    )
    assert (
        endpoint_label("batchstatus", "Slurm", slurm)
        == "batchstatus Slurm at apf@hpc.example.org (cluster=c1, timeout=60.0)"
    )
    panda = PandaEndpoint(
        "https://panda.example.org/api/v1", "api", "tok", 60.0, None, None, "panda", 600.0, 3600.0
    )
    assert endpoint_label("wmsstatus", "Panda", panda) == "wmsstatus Panda https://panda.example.org/api/v1"
    assert endpoint_label("wmsstatus", "Sim", ("Sim",)) == "wmsstatus Sim"
    assert "(" not in endpoint_label("batchstatus", "Local", ("Local", "/x", 1.0)).replace("(cluster", "")
    secret = ("X", json.dumps({"host": "h", "secret_key": "s3cr3t", "password": "pw"}))
    assert "s3cr3t" not in endpoint_label("batchstatus", "X", secret) and "pw" not in endpoint_label(
        "batchstatus", "X", secret
    )


def test_status_json_has_daemon_fields(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    conf = config_tree(tmp_path)
    info = json.loads(_json_status(conf, capsys))
    assert info["daemon"]["running"] is False
    assert set(info["daemon"]) >= {
        "running",
        "pid",
        "heartbeat",
        "not_running_since",
        "dry_run",
        "failed_queues",
    }
    assert info["queues"]["Q1"]["dry_run"] is False
