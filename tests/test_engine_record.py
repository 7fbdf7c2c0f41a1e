"""The record stage: one store transaction per pass, however many queues submit (issue 9, "the
shape"). The real engine (``Factory.step``) with Sim WMS and Sim batch, on a real SQLite file and a
real PostgreSQL server; SQLAlchemy's own events count the transactions."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event
from sqlalchemy.engine import Engine

from autopyfactory.config.loader import load_factory_config
from autopyfactory.engine.factory import Factory
from autopyfactory.sim.batch import reset_world
from autopyfactory.store.api import Store
from tests.helpers import factory_conf

pytestmark = pytest.mark.timeout(180)

QUEUES = 120
WRITES = ("INSERT", "UPDATE", "DELETE")


@dataclass
class Transactions:
    """What one engine's connections did: commits, rollbacks, and the writes in each transaction."""

    commits: int = 0
    rollbacks: int = 0
    writes: list[int] = field(default_factory=list)  # write statements per committed transaction
    _open: dict[int, int] = field(default_factory=dict)  # id(connection) -> writes so far

    def reset(self) -> None:
        self.commits, self.rollbacks, self.writes = 0, 0, []


@contextmanager
def counting(engine: Engine) -> Iterator[Transactions]:
    seen = Transactions()

    def on_execute(conn: Any, cursor: Any, statement: str, *_: Any) -> None:
        if statement.lstrip().upper().startswith(WRITES):
            seen._open[id(conn)] = seen._open.get(id(conn), 0) + 1

    def on_commit(conn: Any) -> None:
        seen.commits += 1
        seen.writes.append(seen._open.pop(id(conn), 0))

    def on_rollback(conn: Any) -> None:
        seen.rollbacks += 1
        # a rolled-back transaction that wrote would be a second write transaction (and a lost one)
        assert seen._open.pop(id(conn), 0) == 0, "a transaction with writes was rolled back"

    hooks = (("before_cursor_execute", on_execute), ("commit", on_commit), ("rollback", on_rollback))
    for name, fn in hooks:
        event.listen(engine, name, fn)
    try:
        yield seen
    finally:
        for name, fn in hooks:
            event.remove(engine, name, fn)


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _busy_factory(tmp: Path, url: str, factory_id: str, clock: Clock) -> Factory:
    """QUEUES queues on 12 Sim sites, each submitting one pilot every cycle (demand is never met)."""
    reset_world()
    sections = "\n".join(
        f"[R{i:03d}]\nwmsqueue = W{i % 10}\nbatchsubmit.sim.site = S{i % 12}\n" for i in range(QUEUES)
    )
    conf = factory_conf(
        tmp,
        f"""
        [DEFAULT]
        enabled = True
        apfqueue.sleep = 1
        wmsstatusplugin = Sim
        wmsstatus.sim.activated = 100000
        batchstatusplugin = Sim
        batchsubmitplugin = Sim
        batchsubmit.sim.capacity = 100000
        schedplugin = Ready, MaxPerCycle
        sched.maxpercycle.maximum = 1
        {sections}
        """,
        extra=f"store.url = {url}\n",
        factory_id=factory_id,
    )
    return Factory(load_factory_config(str(conf)), clock=clock)


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_one_write_transaction_per_pass_with_every_queue_submitting(
    tmp_path: Path, backend: str, request: pytest.FixtureRequest
) -> None:
    sqlite = f"sqlite:///{tmp_path}/apf.db"
    url = request.getfixturevalue("postgres_url") if backend == "postgres" else sqlite
    factory_id = f"one-txn-{backend}-{tmp_path.name}"[:60]
    clock = Clock(1_000_000.0)
    factory = _busy_factory(tmp_path, url, factory_id, clock)
    store = Store(url)
    try:
        with counting(factory.store.engine) as seen:
            for cycle in range(3):
                seen.reset()
                clock.now += 2  # past every queue's interval
                plans = factory.step(poll_all=True)
                submitting = [p for p in plans if p.decision.n > 0]
                assert len(submitting) == QUEUES, f"cycle {cycle}: {len(submitting)} queues submitted"
                # the pass's decisions and intents (and, from the second cycle, the previous
                # pass's settlements and the pilots seen since) in ONE write transaction
                print(f"{backend} cycle {cycle}: {seen.commits} commits, writes per commit {seen.writes}")
                assert seen.commits == 1, f"cycle {cycle}: {seen.commits} write transactions"
                assert seen.writes[0] >= 2, seen.writes  # it wrote the decisions and the intents
        factory.flush()
        intents = store.intents(factory_id)
        assert len(intents) == 3 * QUEUES
        assert all(i["status"] == "submitted" and i["submitted"] == 1 for i in intents), intents[:3]
        assert len(store.pilots(factory_id)) >= 2 * QUEUES  # the third cycle's are seen next poll
    finally:
        factory.shutdown()
        store.close()
