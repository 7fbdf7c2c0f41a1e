"""Random SIGKILLs of a real ``apf run`` during its cycles, then the crash-safety check.

One round: a factory with two Local queues and steady demand (pilots run for minutes, so every
pilot that ever existed is still there to count), started and killed ``kills`` times at a random
moment after its loop began, then started once more and left to converge. Afterwards exactly the
demanded pilots exist, every one recorded, no intent open, none submitted twice.

Shared by ``tests/test_engine_faults.py`` (one round of 20 kills) and ``bench/soak_kill.py``
(rounds until 100 or more kills).
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from autopyfactory.store.api import Store
from tests.faults import APF, Daemon, compare, local_pilots
from tests.helpers import factory_conf, wait_for, write

QUEUES = ("KQ1", "KQ2")


def soak_conf(tmp: Path, demand: int, maxpercycle: int = 1) -> Path:
    pilot = write(tmp / "pilot.sh", "#!/bin/sh\nsleep 900\n")
    pilot.chmod(0o755)
    sections = "".join(f"[{q}]\nwmsqueue = {q}\n\n" for q in QUEUES)
    return factory_conf(
        tmp,
        f"""
        [DEFAULT]
        enabled = True
        apfqueue.sleep = 0.5
        wmsstatusplugin = Sim
        wmsstatus.sim.activated = {demand}
        wmsstatus.sim.consume = True
        batchstatusplugin = Local
        batchsubmitplugin = Local
        executable = {pilot}
        schedplugin = Ready, MaxPerCycle
        sched.maxpercycle.maximum = {maxpercycle}

        {sections}
        """,
    )


@dataclass
class RoundResult:
    kills: int = 0
    # kills after which the store held an open intent: the kill fell between recording an intent
    # and recording its outcome (the window crash safety is about)
    kills_in_flight: int = 0
    demand: int = 0  # pilots wanted in all
    pilots: int = 0  # pilots in the backend at the end
    active: int = 0
    problems: dict[str, list[str]] = field(default_factory=dict)
    # pilots by backend state at the end (a pilot whose process never started, because the kill
    # fell between its directory and its process, is 'failed' there: the backend's truth)
    states: dict[str, int] = field(default_factory=dict)
    never_started: int = 0  # of them: directories without a process (the kill fell in between)
    adopted: int = 0  # intents settled by adoption after a kill
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        """Exactly the demanded pilots alive; anything else is a pilot that never started."""
        return (
            not self.problems
            and self.active == self.demand
            and self.pilots - self.active == self.never_started
        )


def kill_pilots(statedir: Path) -> None:
    """Stop every Local pilot under ``statedir`` (each runs in its own process group)."""
    for pid_file in (statedir / "local").glob("*/*/*/pid"):
        try:
            os.killpg(int(pid_file.read_text()), signal.SIGKILL)
        except (ProcessLookupError, ValueError, PermissionError, OSError):
            pass


def _wait_for_a_submission(statedir: Path, rng: random.Random, timeout: float = 3.0) -> None:
    """Return a random few milliseconds after a new pilot directory appears (a submission is under
    way: its intent is recorded, its outcome not yet), or after ``timeout``."""
    root = statedir / "local" / "test-factory"
    before = len(list(root.glob("*/*/tags")))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if len(list(root.glob("*/*/tags"))) > before:
            time.sleep(rng.uniform(0.0, 0.03))
            return
        time.sleep(0.005)


def run_round(
    tmp: Path,
    kills: int,
    rng: random.Random,
    demand: int | None = None,
    progress: Callable[[str], None] | None = None,
) -> RoundResult:
    """``kills`` random SIGKILLs, a converging run, and the checks (in ``RoundResult``).
    ``demand`` per queue defaults to twice ``kills``: one pilot per queue per cycle, so the
    factory is still submitting when the last kills land."""
    began = time.monotonic()
    demand = 2 * kills if demand is None else demand
    conf = soak_conf(tmp, demand)
    statedir = tmp / "state"
    result = RoundResult(demand=demand * len(QUEUES))
    store: Store | None = None
    for i in range(kills):
        daemon = Daemon(conf)
        try:
            wait_for(daemon.deciding, 60, "the daemon's loop to start")
            if i % 2:
                time.sleep(rng.uniform(0.0, 1.0))  # chaos: the kill lands anywhere in a cycle
            else:
                _wait_for_a_submission(statedir, rng)
        finally:
            daemon.kill()
        result.kills += 1
        store = store or Store(f"sqlite:///{statedir / 'apf.db'}")
        if any(i["status"] == "open" for i in store.intents("test-factory")):
            result.kills_in_flight += 1
        if progress is not None:
            progress(f"kill {i + 1}/{kills}: {len(local_pilots(statedir))} pilots")
    # a last start converges: adopts what the kills left open and fills the rest of the demand
    daemon = Daemon(conf)
    store = store or Store(f"sqlite:///{statedir / 'apf.db'}")
    try:

        def converged() -> bool:
            pilots = local_pilots(statedir)
            per_queue = Counter(p.queue for p in pilots if p.state.active)
            return all(per_queue[q] >= demand for q in QUEUES) and not compare(store, pilots, states=False)

        wait_for(daemon.deciding, 60, "the daemon's loop to start")
        wait_for(converged, 90, "the factory to converge after the kills", interval=0.5)
        daemon.terminate()
    finally:
        daemon.kill()
    # one more full cycle must find nothing to do
    once = subprocess.run(
        [APF, "run", "--conf", str(conf), "--once", "--no-table"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if once.returncode != 0:
        result.problems["apf run --once"] = [once.stdout + once.stderr]
    pilots = local_pilots(statedir)
    result.pilots = len(pilots)
    result.active = sum(1 for p in pilots if p.state.active)
    result.states = dict(Counter(p.state.value for p in pilots))
    root = statedir / "local" / "test-factory"
    result.never_started = sum(
        1 for p in pilots if not p.state.active and not (root / p.queue / p.backend_id / "pid").exists()
    )
    result.problems.update(compare(store, pilots, states=False).problems())
    result.adopted = sum(1 for i in store.intents("test-factory") if i["status"] == "adopted")
    store.close()
    result.seconds = time.monotonic() - began
    return result
