"""Cascades in the real loop: Local tiers with real pilot processes; apf plan / apf explain; two
factory processes sharing one PostgreSQL quota ledger."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from sqlalchemy import create_engine, func, select

from autopyfactory.config.loader import load_factory_config
from autopyfactory.engine.factory import Factory
from autopyfactory.store.api import Store
from autopyfactory.store.ledger import ledger_entries
from tests.helpers import factory_conf, wait_for, write

APF = str(Path(sys.executable).parent / "apf")

POLICY = """
cascades:
  - name: analysis
    demand: W
    tiers:
      - {queue: A, cap: 4, full: {pending: 1}, spill_on: [capped, full]}
      - {queue: B, cap: 2, quotas: [{per: month, pilots: 2}], spill_on: [quota]}
      - {queue: C, drain: {retire_running: true}}
"""


def _local_cascade(tmp: Path, demand: int) -> Path:
    write(tmp / "pilot.sh", "#!/bin/sh\nsleep 120\n").chmod(0o755)
    write(tmp / "policy.yaml", POLICY)
    return factory_conf(
        tmp,
        f"""
        [DEFAULT]
        enabled = True
        apfqueue.sleep = 0.5
        wmsqueue = W
        wmsstatusplugin = Sim
        wmsstatus.sim.activated = {demand}
        batchstatusplugin = Local
        batchsubmitplugin = Local
        executable = {tmp / "pilot.sh"}
        schedplugin = Ready
        [A]
        # two slots: A's further pilots wait, so A fills up and counts as full
        batchsubmit.local.slots = 2
        [B]
        [C]
        """,
        extra="policyConf = policy.yaml\n",
    )


def _active(factory: Factory, queue: str) -> int:
    supply = factory.supply_of(factory.queues[queue], factory.clock())
    return 0 if supply is None else supply.pending + supply.held + supply.running


def test_cascade_spills_in_the_real_loop_and_plan_explain_show_why(tmp: Path) -> None:
    conf = _local_cascade(tmp, demand=6)
    config = load_factory_config(str(conf))
    factory = Factory(config)
    assert set(factory.cascades) == {"analysis"}
    plans = {p.queue: p for p in factory.step(poll_all=True)}
    # A takes up to its cap (4) and passes the rest on; B takes its 2 (its cap and its quota)
    assert plans["A"].decision.n == 4 and plans["B"].decision.n == 2 and plans["C"].decision.n == 0

    # A's two slots take a moment to start its first pilots: decided before that, all four look
    # pending (not starting), and the policy would rightly move three of them on to C
    wait_for(
        lambda: len(list((tmp / "state" / "local").glob("*/A/*/started"))) >= 2,
        30,
        "A's first pilots to start",
    )

    def settled() -> bool:
        factory.step(poll_all=True)
        return _active(factory, "C") == 1 and _active(factory, "A") + _active(factory, "B") + 1 == 6

    # A has 2 slots: 2 pilots wait (> 1 tolerated) -> full; B's quota is spent -> C takes the rest
    wait_for(settled, 60, "the cascade to settle with one pilot on C")
    assert _active(factory, "B") == 2
    store = Store(config.settings.database_url())
    with store.engine.connect() as conn:
        used = conn.execute(
            select(func.sum(ledger_entries.c.count)).where(ledger_entries.c.tier == "B")
        ).scalar()
    assert used == 2  # the monthly quota, reserved with the intents
    factory.shutdown()

    plan = subprocess.run([APF, "plan", "--conf", str(conf)], capture_output=True, text=True, timeout=60)
    assert plan.returncode == 0, plan.stderr
    assert "cascade analysis: demand 6, supply 6" in plan.stdout
    assert "B: idle (demand 6 is met) [cap room 0, out of quota]" in plan.stdout
    explain = subprocess.run(
        [APF, "explain", "analysis", "--conf", str(conf)], capture_output=True, text=True, timeout=60
    )
    assert explain.returncode == 0, explain.stderr
    assert "spill" in explain.stdout and "quota_exhausted" in explain.stdout
    assert "B " in explain.stdout and "out of quota" in explain.stdout
    # a tier queue's own explanation names the cascade that decided for it
    explain = subprocess.run(
        [APF, "explain", "C", "--conf", str(conf)], capture_output=True, text=True, timeout=60
    )
    assert "Cascade:analysis" in explain.stdout


def test_demand_drop_drains_the_last_tier_first_in_the_real_loop(tmp: Path) -> None:
    conf = _local_cascade(tmp, demand=6)
    factory = Factory(load_factory_config(str(conf)))
    wait_for(lambda: factory.step(poll_all=True) is not None and _active(factory, "C") == 1, 60, "C in use")
    factory.shutdown()
    write(
        tmp / "queues.conf",
        (tmp / "queues.conf")
        .read_text()
        .replace("wmsstatus.sim.activated = 6", "wmsstatus.sim.activated = 5"),
    )
    factory = Factory(load_factory_config(str(conf)))
    plans = {p.queue: p for p in factory.step(poll_all=True)}
    # one pilot too many: it comes back from C (the last tier), not from A or B
    assert plans["C"].decision.n == -1 and plans["A"].decision.n == 0 and plans["B"].decision.n == 0
    wait_for(lambda: factory.step(poll_all=True) is not None and _active(factory, "C") == 0, 60, "C drained")
    assert _active(factory, "A") + _active(factory, "B") == 5
    factory.shutdown()


QUOTA_POLICY = """
cascades:
  - name: shared
    demand: W
    tiers:
      - {queue: B, quotas: [{per: month, pilots: 7}]}
"""


def test_two_factories_share_one_postgres_ledger_and_never_exceed_the_quota(
    tmp_path: Path, postgres_url: str
) -> None:
    engine = create_engine(postgres_url)
    with engine.begin() as conn:  # a clean ledger for this test's tier
        from autopyfactory.store.schema import metadata

        metadata.create_all(conn)
        conn.execute(ledger_entries.delete().where(ledger_entries.c.tier == "B"))
    procs = []
    for name in ("f1", "f2"):
        d = tmp_path / name
        write(d / "policy.yaml", QUOTA_POLICY)
        conf = factory_conf(
            d,
            """
            [B]
            enabled = True
            apfqueue.sleep = 0.2
            wmsqueue = W
            wmsstatusplugin = Sim
            wmsstatus.sim.activated = 100
            batchstatusplugin = Sim
            batchsubmitplugin = Sim
            batchsubmit.sim.start_delay = 3600
            schedplugin = Ready
            """,
            extra=f"policyConf = policy.yaml\nstore.url = {postgres_url}\nbatchstatus.sim.sleep = 0.2\nwmsstatus.sim.sleep = 0.2\n",
            factory_id=name,
        )
        procs.append(
            subprocess.Popen(
                [APF, "run", "--conf", str(conf), "--cycles", "8", "--no-table"],
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    for proc in procs:
        out, _ = proc.communicate(timeout=120)
        assert proc.returncode == 0, out
    store = Store(postgres_url)
    with store.engine.connect() as conn:
        reserved = conn.execute(
            select(func.sum(ledger_entries.c.count)).where(ledger_entries.c.tier == "B")
        ).scalar()
    submitted = sum(i["submitted"] or 0 for f in ("f1", "f2") for i in store.intents(f))
    assert reserved == submitted == 7  # together exactly the quota, never more
    assert all(sum(i["submitted"] or 0 for i in store.intents(f)) > 0 for f in ("f1", "f2")) or submitted == 7


UNSTARTED_POLICY = """
cascades:
  - name: only
    demand: W
    tiers:
      - {queue: B, quotas: [{per: month, pilots: 5}]}
"""


def test_pilots_cancelled_before_they_start_give_their_quota_back(tmp: Path) -> None:
    """The monthly quota counts pilots started: the engine reserves at submission (so two factories
    can never exceed it) and, when it records that a pilot ended without starting, releases it."""
    from autopyfactory.config.policy import Quota
    from autopyfactory.sim.batch import reset_world
    from autopyfactory.sim.clock import VirtualClock
    from autopyfactory.store.ledger import remaining

    write(tmp / "policy.yaml", UNSTARTED_POLICY)
    queues = """
        [B]
        enabled = True
        apfqueue.sleep = 60
        wmsqueue = W
        wmsstatusplugin = Sim
        wmsstatus.sim.steps = 0:5, 600:0
        batchstatusplugin = Sim
        batchsubmitplugin = Sim
        # no slot: the pilots wait and never start
        batchsubmit.sim.capacity = 0
        schedplugin = Ready
        """
    conf = factory_conf(tmp, queues, extra="policyConf = policy.yaml\n")
    clock = VirtualClock(1_767_225_600.0)  # 2026-01-01
    reset_world(clock)
    factory = Factory(load_factory_config(str(conf)), clock=clock.now)
    quota = [Quota.model_validate({"per": "month", "pilots": 5})]

    def left() -> int | None:
        with factory.store.engine.connect() as conn:
            return remaining(conn, "B", quota, clock.now())

    try:
        t = clock.now()
        for _ in range(3):  # demand 5: five pilots submitted, the quota spent by the reservation
            clock.set(t)
            factory.step(t, poll_all=True)
            t += 120
        assert left() == 0
        for _ in range(8):  # demand 0: the waiting pilots are cancelled and never started
            clock.set(t)
            factory.step(t, poll_all=True)
            t += 120
        states = [p["state"] for p in factory.store.pilots(factory.factory_id, "B")]
        assert states.count("cancelled") == 5, states
        assert left() == 5  # all five given back: none of them started
    finally:
        factory.shutdown()


def test_an_intent_lost_in_a_crash_gives_its_quota_back(tmp: Path) -> None:
    """The factory dies after recording its intents (reserving B's monthly quota of 2) and before
    asking the backend. On restart the intents are settled as lost and B's reservation released:
    the ledger counts only what live intents reserved."""
    import os

    conf = _local_cascade(tmp, demand=6)
    crashed = subprocess.run(
        [APF, "run", "--conf", str(conf), "--once", "--no-table", "--log", str(tmp / "apf.log")],
        capture_output=True, text=True, timeout=120,
        env={**os.environ, "APF_FAULT": "crash-before-submit"},
    )  # fmt: skip
    assert crashed.returncode == 137, crashed.stdout + crashed.stderr
    config = load_factory_config(str(conf))
    store = Store(config.settings.database_url())

    def b_reserved() -> int:
        with store.engine.connect() as conn:
            used = conn.execute(
                select(func.sum(ledger_entries.c.count)).where(ledger_entries.c.tier == "B")
            ).scalar()
        return int(used or 0)

    assert [(i["queue"], i["status"]) for i in store.intents("test-factory") if i["queue"] == "B"] == [
        ("B", "open")
    ]
    assert b_reserved() == 2
    factory = Factory(config)
    try:
        for _ in range(3):
            factory.step(poll_all=True)  # the first pass adopts: nothing was submitted
    finally:
        factory.shutdown()
    b_intents = [i for i in store.intents("test-factory") if i["queue"] == "B"]
    assert b_intents[0]["status"] == "lost"
    assert b_reserved() == sum(i["n"] for i in b_intents if i["status"] != "lost")
