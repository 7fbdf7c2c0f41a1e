"""A factory queue fed by the fake PanDA server, with real local pilots; metrics vs apf status."""

from __future__ import annotations

import json
import logging
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from autopyfactory.config.loader import load_factory_config
from autopyfactory.engine.factory import Factory
from autopyfactory.store.api import Store
from fakepanda import FakePanda
from tests.helpers import factory_conf, wait_for, write

APF = str(Path(sys.executable).parent / "apf")


@pytest.fixture
def panda() -> Iterator[FakePanda]:
    with FakePanda() as fake:
        yield fake


def _conf(tmp: Path, panda: FakePanda, extra_factory: str = "", chain: str = "Ready, MaxPerCycle") -> Path:
    write(tmp / "pilot.sh", "#!/bin/sh\nsleep 120\n").chmod(0o755)
    return factory_conf(
        tmp,
        f"""
        [DEFAULT]
        enabled = True
        apfqueue.sleep = 1
        wmsstatusplugin = Panda
        wmsstatus.panda.url = {panda.api_url}
        wmsstatus.panda.timeout = 1
        batchstatusplugin = Local
        batchsubmitplugin = Local
        executable = {tmp / "pilot.sh"}
        schedplugin = {chain}
        sched.maxpercycle.maximum = 20
        sched.maxtorun.maximum = 4

        [BNL_PROD-ce01]
        wmsqueue = BNL_PROD
        """,
        extra=f"wmsstatus.panda.sleep = 1\nwmsstatus.panda.maxage = 3\n{extra_factory}",
    )


def _active(tmp: Path) -> int:
    return len(list((tmp / "state" / "local").glob("*/*/*/started")))


def test_pilots_follow_panda_activated_and_faults_submit_nothing(tmp: Path, panda: FakePanda) -> None:
    clock = [1000.0]
    factory = Factory(load_factory_config(str(_conf(tmp, panda))), clock=lambda: clock[0])
    panda.set_jobs("BNL_PROD", "running", 10)  # other jobs exist, so activated=0 is a real answer

    def cycle(ready_in_panda: int, fault: str | None = None, advance: float = 1.0) -> int:
        panda.fault = fault
        panda.set_activated("BNL_PROD", ready_in_panda)
        clock[0] += advance
        plans = factory.step(clock[0], poll_all=True)
        assert len(plans) == 1
        n = plans[0].decision.n
        # pilots are real processes: wait until every submitted one runs (Ready counts pending)
        total = sum(1 for _ in (tmp / "state" / "local").glob("*/*/*/tags"))
        wait_for(lambda: _active(tmp) == total, 20, "pilots to start")
        return n

    assert cycle(5) == 5
    assert cycle(0) == 0  # the pilots took the jobs: activated dropped
    assert cycle(3) == 3
    assert cycle(0) == 0  # taken again
    for fault in ("500", "truncated", "close"):
        # no fresh information: the last good value (0) holds until maxage, never a guess
        assert cycle(7, fault=fault) == 0, fault
    # after maxage without a good poll, the demand is missing: Ready gives 0, never a guess
    assert cycle(7, fault="500", advance=5) == 0
    assert factory.queues["BNL_PROD-ce01"].last.steps[0].reason.startswith("no WMS info")
    assert cycle(2) == 2  # recovered
    assert _active(tmp) == 10
    factory.shutdown()


def test_metrics_match_apf_status_during_a_run(tmp: Path, panda: FakePanda) -> None:
    panda.set_activated("BNL_PROD", 10)
    conf = _conf(tmp, panda, chain="Ready, MaxPerCycle, MaxToRun")  # settles at 4 running
    proc = subprocess.Popen(
        [APF, "run", "--conf", str(conf), "--no-table", "--log", str(tmp / "apf.log")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:

        def status() -> dict:
            out = subprocess.run(
                [APF, "status", "--conf", str(conf), "--json"], capture_output=True, text=True, timeout=30
            )
            return json.loads(out.stdout)

        def settled() -> dict | None:
            info = status()
            q = info["queues"]["BNL_PROD-ce01"]
            return info if info.get("metrics") and q["running"] == 4 else None

        info = wait_for(settled, 60, "4 running pilots in apf status")
        assert isinstance(info, dict)

        def scrape() -> dict[str, float]:
            text = urllib.request.urlopen(info["metrics"], timeout=10).read().decode()
            return {
                line.split(" ")[0]: float(line.split(" ")[1])
                for line in text.splitlines()
                if line.startswith("apf_queue_") and 'queue="BNL_PROD-ce01"' in line
            }

        def same() -> bool:
            # two separate reads of a live daemon: compare them when no decision fell in between
            keys = ("running", "pending", "demand", "last_n")
            before = status()["queues"]["BNL_PROD-ce01"]
            metrics = scrape()
            after = status()["queues"]["BNL_PROD-ce01"]
            if [before[k] for k in keys] != [after[k] for k in keys]:
                return False
            assert metrics['apf_queue_pilots_running{queue="BNL_PROD-ce01"}'] == after["running"] == 4
            assert metrics['apf_queue_pilots_pending{queue="BNL_PROD-ce01"}'] == after["pending"]
            assert metrics['apf_queue_ready{queue="BNL_PROD-ce01"}'] == after["demand"]
            assert metrics['apf_queue_decision{queue="BNL_PROD-ce01"}'] == after["last_n"]
            assert metrics['apf_queue_pilots_submitted_total{queue="BNL_PROD-ce01"}'] >= 4
            return True

        wait_for(same, 60, "a quiet moment to compare /metrics with apf status")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)


def test_maxbackoff_key_bounds_the_poller_backoff_and_recovery_is_an_event_and_a_log_line(
    tmp: Path, panda: FakePanda, caplog: pytest.LogCaptureFixture
) -> None:
    """``wmsstatus.panda.maxbackoff`` caps the retry delay of a failing PanDA endpoint (the default
    is 3 poll intervals); when it answers again the poller logs it and a "recovered" event is
    recorded. A virtual clock: each step happens when the poller's next attempt is due."""
    default = Factory(load_factory_config(str(_conf(tmp / "default", panda))))
    [wms] = [p for p in default.pollers.values() if p.kind == "wmsstatus"]
    assert (wms.interval, wms.max_backoff) == (1.0, 3.0)  # 3 intervals
    default.shutdown()

    clock = [1000.0]
    conf = _conf(tmp, panda, extra_factory="wmsstatus.panda.maxbackoff = 2.5\n")
    factory = Factory(load_factory_config(str(conf)), clock=lambda: clock[0])
    [wms] = [p for p in factory.pollers.values() if p.kind == "wmsstatus"]
    assert wms.max_backoff == 2.5
    panda.set_jobs("BNL_PROD", "running", 10)
    panda.set_activated("BNL_PROD", 0)
    try:
        factory.step(clock[0], poll_all=True)
        assert wms.status.error is None
        panda.fault = "500"
        delays = []
        for _ in range(6):
            clock[0] = wms.status.next_attempt
            factory.step(clock[0])
            delays.append(wms.status.next_attempt - clock[0])
        # the interval twice (a blip costs one interval), then doubling, capped by the key
        assert delays == [1.0, 1.0, 2.0, 2.5, 2.5, 2.5], delays
        assert wms.status.failures == 6 and wms.status.failing_since is not None
        outage_began = wms.status.failing_since
        panda.fault = None
        caplog.set_level(logging.WARNING, logger="autopyfactory.poller")
        clock[0] = wms.status.next_attempt
        factory.step(clock[0])
        factory.flush()
        assert wms.status.error is None and wms.status.next_attempt == clock[0] + 1.0
        took = clock[0] - outage_began
        logged = [r.getMessage() for r in caplog.records if "answers again" in r.getMessage()]
        assert logged == [f"{wms.label}: answers again after failing for {took:.0f}s"], logged
        store = Store(load_factory_config(str(conf)).settings.database_url())
        try:
            recovered = [e for e in store.events("test-factory") if e["kind"] == "recovered"]
        finally:
            store.close()
        assert [e["message"] for e in recovered] == [
            f"{wms.label}: answers again after failing for {took:.0f}s"
        ], recovered
    finally:
        panda.fault = None
        factory.shutdown()
