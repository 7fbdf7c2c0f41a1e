"""Many queues in one process: pollers are shared per endpoint, no thread per queue."""

from __future__ import annotations

import threading
from pathlib import Path

from autopyfactory.config.loader import load_factory_config
from autopyfactory.engine.factory import Factory
from tests.helpers import factory_conf


def test_thousands_of_queues_share_pollers_and_need_no_thread_per_queue(tmp_path: Path) -> None:
    sections = "\n".join(
        f"[Q{i:05d}]\nwmsqueue = W{i % 500}\nwmsstatus.sim.activated = {i % 3}\n" for i in range(3000)
    )
    conf = factory_conf(
        tmp_path,
        f"""
[DEFAULT]
enabled = True
wmsstatusplugin = Sim
batchstatusplugin = Local
batchsubmitplugin = Local
executable = /bin/true
schedplugin = Ready, Scale, MaxPerCycle, MinPerCycle, StatusTest, StatusOffline, MaxPending
sched.maxpercycle.maximum = 5
{sections}
""",
    )
    factory = Factory(load_factory_config(str(conf)), dry_run=True)
    assert len(factory.queues) == 3000
    assert len(factory.pollers) == 2  # one Sim WMS endpoint, one Local batch endpoint
    before = threading.active_count()
    factory.start()
    try:
        assert threading.active_count() - before == 2  # one thread per endpoint, none per queue
        plans = factory.step(poll_all=True)
        assert len(plans) == 3000
        assert {p.decision.n for p in plans} == {0, 1, 2}
        assert all(p.actions for p in plans if p.decision.n > 0)
    finally:
        factory.stop()
        factory.shutdown()
