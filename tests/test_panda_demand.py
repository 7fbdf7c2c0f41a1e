"""Demand driven up and down through the fake PanDA server, the Panda plugin, the engine's poller
(last good snapshot until maxage) and the real scheduler plugins."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from autopyfactory.decide.base import SchedContext, SchedPlugin, run_chain
from autopyfactory.decide.share import split_demands
from autopyfactory.engine.pollers import Poller
from autopyfactory.model import Supply
from autopyfactory.plugins.base import load
from autopyfactory.plugins.wmsstatus.panda import Panda
from fakepanda import (
    FakePanda,
    factory_context,
    panda_queue_section,
    queue_config,
    serving,
)

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def fake_panda() -> Iterator[FakePanda]:
    yield from serving(FakePanda())


MAXAGE = 360.0


def chain(*names: str) -> list[SchedPlugin]:
    return [load("sched", n)() for n in names]  # type: ignore[misc]


def decide(poller: Poller, key: str, now: float, pending: int, plugins: list[SchedPlugin]) -> int:
    snap = poller.fresh(now)
    demand = snap.demands.get(key) if snap is not None else None  # type: ignore[union-attr]
    ctx = SchedContext("Q1", now, demand=demand, supply=Supply("Q1", pending=pending, time=now))
    n, _ = run_chain(plugins, ctx)
    return n


def make(tmp_path: Path, fake: FakePanda, *extra: str) -> tuple[Poller, str]:
    ctx = factory_context()
    q = queue_config(
        tmp_path, panda_queue_section(fake.api_url, "BNL_TEST", "wmsstatus.panda.sitestatus = none", *extra)
    )
    plugin = Panda(Panda.endpoint(q, ctx), ctx)
    key = Panda.demand_key(q, ctx)
    assert key is not None
    interval, maxage = Panda.timing({"wmsstatus.panda.maxage": str(MAXAGE)})
    poller = Poller(
        "wmsstatus", str(plugin.ep), plugin, interval=interval, maxage=maxage, wmsqueues=frozenset({key})
    )
    return poller, key


def test_submissions_follow_activated(tmp_path: Path, fake_panda: FakePanda) -> None:
    poller, key = make(tmp_path, fake_panda)
    plugins = chain("Ready")
    pending = 0
    submitted = []
    # activated goes up, then down, then to nothing; the factory's pending pilots absorb it
    for t, activated in enumerate([30, 50, 50, 10, 0]):
        now = 1000.0 + 150 * t
        fake_panda.set_activated("BNL_TEST", activated)
        fake_panda.set_jobs("BNL_TEST", "running", 5)  # keeps the answer non-empty when activated = 0
        assert poller.poll_once(now)
        n = decide(poller, key, now, pending, plugins)
        submitted.append(n)
        pending += n
        pending = min(pending, activated)  # pilots pick up jobs and stop being pending
    assert submitted == [30, 20, 0, 0, 0]


def test_faults_submit_nothing_extra_and_zero_after_maxage(tmp_path: Path, fake_panda: FakePanda) -> None:
    poller, key = make(tmp_path, fake_panda)
    plugins = chain("Ready", "MaxPerCycle")
    fake_panda.set_activated("BNL_TEST", 40)
    t0 = 10_000.0
    assert poller.poll_once(t0)
    assert decide(poller, key, t0, pending=0, plugins=plugins) == 40
    # from now on the server misbehaves in every way it can; the pilots from t0 are pending
    for i, fault in enumerate(["500", "truncated", "repr", "close", "truncated-nolength"]):
        fake_panda.fault = fault
        now = t0 + 60 * (i + 1)
        assert not poller.poll_once(now)
        # still the last good value (40 activated, 40 pending): nothing extra
        assert decide(poller, key, now, pending=40, plugins=plugins) == 0
    fake_panda.clear()
    fake_panda.fault = None  # success:false for an empty server is also "no information"
    assert not poller.poll_once(t0 + 350)
    assert decide(poller, key, t0 + 350, pending=0, plugins=plugins) == 40  # last good, within maxage
    assert decide(poller, key, t0 + MAXAGE + 1, pending=0, plugins=plugins) == 0  # stale: Ready gives 0
    fake_panda.stop()  # refused
    assert not poller.poll_once(t0 + 400)
    assert decide(poller, key, t0 + 400, pending=0, plugins=plugins) == 0
    fake_panda.start()
    fake_panda.set_activated("BNL_TEST", 12)
    assert poller.poll_once(t0 + 500)
    assert decide(poller, key, t0 + 500, pending=0, plugins=plugins) == 12


def test_filtered_queue_follows_its_label(tmp_path: Path, fake_panda: FakePanda) -> None:
    poller, key = make(tmp_path, fake_panda, "wmsstatus.panda.prodsourcelabels = managed")
    assert key == "BNL_TEST?prodsourcelabels=managed"
    fake_panda.set_activated("BNL_TEST", 8, label="managed")
    fake_panda.set_activated("BNL_TEST", 100, label="user")
    assert poller.poll_once(1.0)
    assert decide(poller, key, 1.0, pending=3, plugins=chain("Ready")) == 5


def test_queues_sharing_a_panda_queue_split_its_demand(tmp_path: Path, fake_panda: FakePanda) -> None:
    """Three CEs serve BNL_TEST: together they submit for the activated jobs once."""
    ctx = factory_context()
    queues = [
        queue_config(tmp_path, panda_queue_section(fake_panda.api_url, "BNL_TEST", "share = 2"), name="CE1"),
        queue_config(tmp_path, panda_queue_section(fake_panda.api_url, "BNL_TEST", "share = 1"), name="CE2"),
        queue_config(tmp_path, panda_queue_section(fake_panda.api_url, "BNL_TEST", "share = 1"), name="CE3"),
    ]
    plugin = Panda(Panda.endpoint(queues[0], ctx), ctx)
    fake_panda.set_activated("BNL_TEST", 100)
    snap = plugin.poll(1.0, frozenset({"BNL_TEST"}))
    per_queue = split_demands(snap.demands, queues, key_of=lambda q: Panda.demand_key(q, ctx))
    total = 0
    for q in queues:
        ctx_q = SchedContext(q.name, 1.0, demand=per_queue[q.name], supply=Supply(q.name))
        n, _ = run_chain(chain("Ready"), ctx_q)
        total += n
    assert [per_queue[q.name].ready for q in queues] == [50, 25, 25]  # type: ignore[union-attr]
    assert total == 100
