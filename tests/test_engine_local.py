"""The engine end to end with the Local backend: real pilot processes, real SQLite store."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from autopyfactory.config.loader import load_factory_config
from autopyfactory.engine.factory import Factory
from autopyfactory.model import Cancel, Submit
from autopyfactory.store.api import Store
from tests.helpers import factory_conf, wait_for, write

APF = str(Path(sys.executable).parent / "apf")


def queues(tmp: Path, activated: int = 3, chain: str = "Ready, MaxPerCycle", extra: str = "") -> str:
    pilot = write(
        tmp / "pilot.sh",
        """
        #!/bin/sh
        env | grep -E '^(APFFID|APFCID|FACTORYQUEUE|PANDA_JSID|GTAG|FACTORY_JOBID)=' | sort > "$APFCID.env"
        sleep "${1:-60}"
        """,
    )
    pilot.chmod(0o755)
    return f"""
    [DEFAULT]
    enabled = True
    apfqueue.sleep = 0.5
    wmsstatusplugin = Sim
    wmsstatus.sim.consume = True
    batchstatusplugin = Local
    batchsubmitplugin = Local
    executable = {pilot}
    executable.arguments = 60
    schedplugin = {chain}
    sched.maxpercycle.maximum = 50

    [LOCALQ]
    wmsqueue = LOCALQ
    wmsstatus.sim.activated = {activated}
    {extra}
    """


def pilot_dirs(tmp: Path) -> list[Path]:
    return sorted(p.parent for p in (tmp / "state" / "local").glob("*/*/*/tags"))


def test_demand_gets_real_pilot_processes_with_apf_environment(tmp: Path) -> None:
    config = load_factory_config(str(factory_conf(tmp, queues(tmp, activated=3))))
    factory = Factory(config)
    plans = factory.step(poll_all=True)
    assert [p.actions for p in plans] == [(Submit("LOCALQ", 3),)]
    dirs = pilot_dirs(tmp)
    assert len(dirs) == 3
    wait_for(
        lambda: all((d / f"{d.name}.env").exists() for d in dirs), 20, "pilots to start and write their env"
    )
    env = dict(line.split("=", 1) for line in (dirs[0] / f"{dirs[0].name}.env").read_text().splitlines())
    assert env["APFFID"] == env["PANDA_JSID"] == "test-factory"
    assert env["FACTORYQUEUE"] == "LOCALQ"
    assert env["APFCID"] == dirs[0].name
    assert env["GTAG"].endswith(f"{dirs[0].name}/out")
    # the next cycle sees them running (consumed demand) and submits nothing more
    wait_for(
        lambda: factory.step(poll_all=True) and factory.queues["LOCALQ"].last.running == 3, 20, "3 running"
    )
    assert factory.queues["LOCALQ"].last.n == 0
    store = Store(config.settings.database_url())
    assert {p["state"] for p in store.pilots("test-factory", "LOCALQ")} == {"running"}
    assert [i["status"] for i in store.intents("test-factory")] == ["submitted"]
    factory.shutdown()


def test_dry_run_starts_nothing_and_prints_json(tmp: Path) -> None:
    conf = factory_conf(tmp, queues(tmp, activated=5))
    out = subprocess.run(
        [APF, "run", "--conf", str(conf), "--once", "--dry-run", "--json"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    doc = json.loads(out.stdout)
    assert doc["queues"]["LOCALQ"]["n"] == 5
    assert [s["plugin"] for s in doc["queues"]["LOCALQ"]["steps"]] == ["Ready", "MaxPerCycle"]
    assert set(doc["queues"]["LOCALQ"]["steps"][0]) == {"plugin", "in", "out", "reason"}
    assert pilot_dirs(tmp) == []
    assert Store(load_factory_config(str(conf)).settings.database_url()).intents("test-factory") == []


def test_negative_decision_is_a_noop_unless_the_queue_allows_it(tmp: Path) -> None:
    extra = "batchsubmit.local.slots = 1\nsched.keepnrunning.keep_running = 0\n"
    conf = factory_conf(tmp, queues(tmp, activated=3, extra=extra))
    factory = Factory(load_factory_config(str(conf)))
    factory.step(poll_all=True)
    wait_for(
        lambda: factory.step(poll_all=True) is not None and factory.queues["LOCALQ"].last.pending == 2,
        20,
        "1 running + 2 pending",
    )
    factory.shutdown()
    # same pilots, a chain that asks for none: APF's default (peaceful) keeps them
    write(tmp / "queues.conf", queues(tmp, activated=3, chain="KeepNRunning", extra=extra))
    factory = Factory(load_factory_config(str(conf)))
    plans = factory.step(poll_all=True)
    assert plans[0].decision.n == -3 and plans[0].actions == ()
    factory.shutdown()
    write(
        tmp / "queues.conf",
        queues(
            tmp,
            activated=3,
            chain="KeepNRunning",
            extra=extra + "batchsubmit.local.overlay.peaceful = False\n",
        ),
    )
    factory = Factory(load_factory_config(str(conf)))
    plans = factory.step(poll_all=True)
    cancels = [a for a in plans[0].actions if isinstance(a, Cancel)]
    assert len(cancels) == 1 and len(cancels[0].backend_ids) == 2  # idle pilots go first
    wait_for(
        lambda: factory.step(poll_all=True) is not None and factory.queues["LOCALQ"].last.pending == 0,
        20,
        "idle pilots cancelled",
    )
    factory.shutdown()


def test_idle_cancellation_through_the_engine_cancels_pending_keeps_running_and_is_explained(
    tmp: Path,
) -> None:
    """``cancel.excess_pending`` on a peaceful queue, through the real engine: when demand drops to
    0, the two pilots still pending are cancelled in the backend, the running one is kept, a
    ``cancel-idle`` event is stored and ``apf explain`` shows the Cancel step."""
    extra = "batchsubmit.local.slots = 1\n"
    conf = factory_conf(tmp, queues(tmp, activated=3, extra=extra))
    factory = Factory(load_factory_config(str(conf)))
    factory.step(poll_all=True)
    wait_for(
        lambda: factory.step(poll_all=True) is not None and factory.queues["LOCALQ"].last.pending == 2,
        90,  # generous: a loaded machine starts processes slowly
        "1 running + 2 pending",
    )
    factory.shutdown()
    write(tmp / "queues.conf", queues(tmp, activated=0, extra=extra + "cancel.excess_pending = True\n"))
    config = load_factory_config(str(conf))
    factory = Factory(config)
    plans = factory.step(poll_all=True)
    cancels = [a for a in plans[0].actions if isinstance(a, Cancel)]
    assert len(cancels) == 1 and len(cancels[0].backend_ids) == 2
    assert [s.plugin for s in plans[0].decision.steps][-1] == "Cancel"
    wait_for(
        lambda: factory.step(poll_all=True) is not None and factory.queues["LOCALQ"].last.pending == 0,
        90,  # generous: a loaded machine starts processes slowly
        "the idle pilots cancelled",
    )
    assert factory.queues["LOCALQ"].last.running == 1  # the running pilot is never cancelled
    factory.shutdown()
    store = Store(config.settings.database_url(), readonly=True)
    kinds = [e["kind"] for e in store.events("test-factory", "LOCALQ")]
    assert kinds.count("cancel-idle") == 1
    explained = subprocess.run(
        [APF, "explain", "LOCALQ", "--conf", str(conf)], capture_output=True, text=True, timeout=60
    )
    assert explained.returncode == 0, explained.stdout + explained.stderr
    assert "Cancel" in explained.stdout and "cancel-idle" in explained.stdout


def _daemon(conf: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [APF, "run", "--conf", str(conf), "--no-table", "--log", str(conf.parent / "apf.log"), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, **(env or {})},
    )


def test_sighup_with_a_broken_file_keeps_running_then_reloads(tmp: Path) -> None:
    conf = factory_conf(tmp, queues(tmp, activated=2))
    store = Store(load_factory_config(str(conf)).settings.database_url())
    proc = _daemon(conf)
    try:
        wait_for(lambda: store.latest_decisions("test-factory"), 30, "a first decision")
        good = (tmp / "queues.conf").read_text()
        write(tmp / "queues.conf", good.replace("schedplugin = Ready", "schedplugin = Redy"))
        proc.send_signal(signal.SIGHUP)
        wait_for(
            lambda: any(e["kind"] == "reload-failed" for e in store.events("test-factory")),
            30,
            "reload-failed event",
        )
        assert proc.poll() is None
        write(tmp / "queues.conf", good + "\n[SECOND]\nwmsqueue = SECOND\nwmsstatus.sim.activated = 1\n")
        proc.send_signal(signal.SIGHUP)
        wait_for(lambda: "SECOND" in store.latest_decisions("test-factory"), 30, "the added queue to decide")
        log = (tmp / "apf.log").read_text()
        assert "Redy" in log and "keeping the running configuration" in log
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()


def _check_invariants(conf: Path, tmp: Path) -> tuple[int, list[dict[str, object]]]:
    """No pilot lost from the store, every intent settled, counts agree with the backend."""
    config = load_factory_config(str(conf))
    store = Store(config.settings.database_url())
    dirs = pilot_dirs(tmp)
    recorded = {p["backend_id"] for p in store.pilots("test-factory")}
    assert {d.name for d in dirs} <= recorded, "a pilot exists in the backend but not in the store"
    intents = store.intents("test-factory")
    assert all(i["status"] != "open" for i in intents), intents
    for intent in intents:
        found = sum(1 for d in dirs if d.name.startswith(f"{intent['id']}."))
        assert found == (intent["submitted"] or 0), intent
    return len(dirs), intents


def test_kill_9_between_submit_and_record_then_restart_adopts_and_submits_nothing_twice(tmp: Path) -> None:
    conf = factory_conf(tmp, queues(tmp, activated=4))
    proc = _daemon(conf, env={"APF_FAULT": "crash-after-submit"})
    assert proc.wait(timeout=60) == 137  # died right after the backend accepted 4 pilots
    store = Store(load_factory_config(str(conf)).settings.database_url())
    assert [i["status"] for i in store.intents("test-factory")] == ["open"]
    assert store.pilots("test-factory") == []  # the crash came before the record
    wait_for(
        lambda: len(pilot_dirs(tmp)) == 4 and all((d / "started").exists() for d in pilot_dirs(tmp)),
        30,
        "pilots running",
    )
    out = subprocess.run(
        [APF, "run", "--conf", str(conf), "--once", "--no-table"], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stdout + out.stderr
    count, intents = _check_invariants(conf, tmp)
    assert count == 4
    assert [(i["status"], i["submitted"]) for i in intents] == [("adopted", 4)]


@pytest.mark.parametrize("seed", [1, 2])
def test_random_kill_9_during_cycles_never_loses_or_doubles(tmp: Path, seed: int) -> None:
    import random

    rng = random.Random(seed)
    conf = factory_conf(
        tmp, queues(tmp, activated=6, chain="Ready, MaxPerCycle", extra="sched.maxpercycle.maximum = 2\n")
    )
    for _ in range(4):
        proc = _daemon(conf)
        time.sleep(
            rng.uniform(0.3, 2.0)
        )  # chaos: the kill lands anywhere in a cycle (not a timing assertion)
        proc.kill()
        proc.wait(timeout=30)
    out = subprocess.run(
        [APF, "run", "--conf", str(conf), "--cycles", "6", "--no-table"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    count, _ = _check_invariants(conf, tmp)
    assert count == 6  # demand was 6 throughout: exactly 6 pilots, none twice


def test_queues_serving_one_wms_queue_split_its_demand_by_share(tmp: Path) -> None:
    conf = factory_conf(
        tmp,
        queues(tmp, activated=9)
        + """
    share = 2

    [LOCALQ-ce2]
    wmsqueue = LOCALQ
    share = 1
    """,
    )
    factory = Factory(load_factory_config(str(conf)), dry_run=True)
    plans = {p.queue: p.decision for p in factory.step(poll_all=True)}
    # 9 activated jobs, shares 2:1: together they ask for the demand once, not twice
    assert (plans["LOCALQ"].n, plans["LOCALQ-ce2"].n) == (6, 3)
    assert (plans["LOCALQ"].ready, plans["LOCALQ-ce2"].ready) == (6, 3)
    factory.shutdown()


def test_a_pilot_whose_wrapper_is_writing_its_pid_file_is_pending_not_failed(tmp: Path) -> None:
    """Found by bench/soak_kill.py: the poll that follows a submission at once could see the pid
    file created but still empty, report the live pilot failed, and the factory submitted again."""
    from autopyfactory.plugins.batch.local import read_pilot

    pdir = tmp / "intent.0"
    write(pdir / "tags", f"test-factory\nLOCALQ\nintent\n{time.time()}\n")
    (pdir / "pid").write_text("")  # the shell's `> pid` opened it; the pid is not written yet
    pilot = read_pilot(pdir)
    assert pilot is not None and pilot.state.value == "pending"
    write(pdir / "tags", f"test-factory\nLOCALQ\nintent\n{time.time() - 60}\n")
    assert read_pilot(pdir).state.value == "failed"  # type: ignore[union-attr]  # never came up
