"""The simulated batch backend (sim/batch.py) on a virtual clock, through the real config loader
and plugin registry."""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from pathlib import Path

import pytest

from autopyfactory.config.errors import ConfigError
from autopyfactory.config.loader import load_queue_sections
from autopyfactory.config.models import FactorySettings, QueueConfig
from autopyfactory.model import PilotState, PilotTags
from autopyfactory.plugins.base import BackendError, FactoryContext, load
from autopyfactory.sim.batch import (
    SimStatus,
    SimSubmit,
    SimWorld,
    parse_windows,
    reset_world,
    set_world,
    world,
)
from autopyfactory.sim.clock import VirtualClock

T0 = 1_800_000_000.0

QUEUES = """
[DEFAULT]
enabled = True
wmsqueue = W
batchstatusplugin = Sim
batchsubmitplugin = Sim
schedplugin = Ready

[A]
batchsubmit.sim.capacity = 4
batchsubmit.sim.start_delay = 1m
batchsubmit.sim.runtime = 600
batchsubmit.sim.drain_time = 120

[B]
batchsubmit.sim.capacity = 2
batchsubmit.sim.fail_when_over = 3

[R]
batchsubmit.sim.refuse = 10m-15m, 3600-3660

[S1]
batchsubmit.sim.site = shared
batchsubmit.sim.capacity = 1
[S2]
batchsubmit.sim.site = shared
batchsubmit.sim.capacity = 1
"""


@pytest.fixture
def clock() -> Iterator[VirtualClock]:
    clock = VirtualClock(T0)
    reset_world(clock)
    yield clock
    reset_world()


@pytest.fixture
def queues(tmp_path: Path) -> dict[str, QueueConfig]:
    conf = tmp_path / "queues.conf"
    conf.write_text(QUEUES)
    return load_queue_sections([str(conf)])


def factory(fid: str = "f1") -> FactoryContext:
    return FactoryContext(fid, FactorySettings(factoryId=fid))


def submitter(queue: QueueConfig, fid: str = "f1") -> SimSubmit:
    spec = queue.batchsubmit
    plugin = spec.cls(queue, spec.options, factory(fid))
    assert isinstance(plugin, SimSubmit)
    return plugin


def poller(queue: QueueConfig, fid: str = "f1") -> SimStatus:
    cls = load("batchstatus", "Sim")
    assert cls is SimStatus
    ctx = factory(fid)
    return SimStatus(SimStatus.endpoint(queue, ctx), ctx)


def states(pilots) -> dict[str, int]:  # type: ignore[no-untyped-def]
    out: dict[str, int] = {}
    for p in pilots:
        out[str(p.state)] = out.get(str(p.state), 0) + 1
    return out


def test_capacity_start_delay_and_runtime(clock: VirtualClock, queues: dict[str, QueueConfig]) -> None:
    sub, stat = submitter(queues["A"]), poller(queues["A"])
    tags = PilotTags("f1", "A", "i1")
    created = sub.submit(6, tags, clock.now())
    assert [p.state for p in created] == [PilotState.PENDING] * 6
    assert all(p.queue == "A" and p.intent_id == "i1" for p in created)
    assert len({p.backend_id for p in created}) == 6
    assert states(stat.poll(T0 + 59).pilots) == {"pending": 6}
    snap = stat.poll(T0 + 60)
    assert states(snap.pilots) == {"pending": 2, "running": 4}
    assert snap.time == T0 + 60
    # the first four end at 60 + 600; the last two start in their freed slots at that moment
    snap = stat.poll(T0 + 660)
    assert states(snap.pilots) == {"done": 4, "running": 2}
    started = sorted(p.started_at for p in snap.pilots if p.state is PilotState.RUNNING)
    assert started == [T0 + 660, T0 + 660]
    done = [p for p in snap.pilots if p.state is PilotState.DONE]
    assert all(p.ended_at == T0 + 660 and p.started_at == T0 + 60 for p in done)
    # finished pilots stay visible for an hour of simulated time, then drop out
    assert states(stat.poll(T0 + 1260).pilots) == {"done": 6}
    assert stat.poll(T0 + 1260 + 3601).pilots == ()
    site = world().get("A")
    assert site is not None and site.started == 6 and site.ended == 6
    assert site.pilot_seconds == 6 * 600


def test_pilots_only_of_this_factory(clock: VirtualClock, queues: dict[str, QueueConfig]) -> None:
    submitter(queues["A"], "f1").submit(2, PilotTags("f1", "A", "x"), T0)
    submitter(queues["A"], "f2").submit(3, PilotTags("f2", "A", "y"), T0)
    assert len(poller(queues["A"], "f1").poll(T0).pilots) == 2
    assert {p.intent_id for p in poller(queues["A"], "f2").poll(T0).pilots} == {"y"}


def test_capacity_error(clock: VirtualClock, queues: dict[str, QueueConfig]) -> None:
    sub = submitter(queues["B"])
    sub.submit(3, PilotTags("f1", "B", "i"), T0)
    with pytest.raises(BackendError) as info:
        sub.submit(1, PilotTags("f1", "B", "j"), T0)
    assert info.value.capacity is True
    assert info.value.target == sub.target() == "sim:B"
    assert "at most 3" in str(info.value)
    # nothing of the refused request exists
    assert len(poller(queues["B"]).poll(T0).pilots) == 3


def test_refusal_windows_count_from_the_sites_start(
    clock: VirtualClock, queues: dict[str, QueueConfig]
) -> None:
    sub = submitter(queues["R"])  # the site comes up now (T0): the windows count from here
    assert len(sub.submit(1, PilotTags("f1", "R", "a"), T0 + 599)) == 1
    for t in (T0 + 600, T0 + 899, T0 + 3600):
        with pytest.raises(BackendError) as info:
            sub.submit(2, PilotTags("f1", "R", "b"), t)
        assert info.value.capacity is True and "refusal window" in str(info.value)
    assert len(sub.submit(1, PilotTags("f1", "R", "c"), T0 + 900)) == 1  # half-open: [600, 900)
    assert len(sub.submit(1, PilotTags("f1", "R", "d"), T0 + 3660)) == 1
    assert len(poller(queues["R"]).poll(T0 + 3660).pilots) == 3  # nothing of a refused request exists
    # the origin survives a stop and resume
    restored = set_world(SimWorld.load(json.loads(json.dumps(world().dump())), VirtualClock(T0 + 3600)))
    site = restored.site("R")
    assert site.origin == T0 and site.params.refuse == ((600.0, 900.0), (3600.0, 3660.0))
    with pytest.raises(BackendError):
        site.submit(1, PilotTags("f1", "R", "e"), T0 + 3630)


@pytest.mark.parametrize(
    ("text", "message"),
    [("10m", "is not 'from-to'"), ("15m-10m", "ends before it starts"), ("a-b", "not a duration")],
)
def test_bad_refusal_windows_name_the_key(tmp_path: Path, text: str, message: str) -> None:
    assert parse_windows(" 1h-2h ,, 60-90") == ((60.0, 90.0), (3600.0, 7200.0))
    conf = tmp_path / "queues.conf"
    conf.write_text(
        f"[Q]\nbatchsubmitplugin = Sim\nbatchstatusplugin = Sim\nbatchsubmit.sim.refuse = {text}\n"
    )
    with pytest.raises(ConfigError) as info:
        load_queue_sections([str(conf)])
    assert "refuse" in str(info.value) and message in str(info.value)


def test_cancel_and_retire(clock: VirtualClock, queues: dict[str, QueueConfig]) -> None:
    sub, stat = submitter(queues["A"]), poller(queues["A"])
    ids = [p.backend_id for p in sub.submit(6, PilotTags("f1", "A", "i"), T0)]
    clock.set(T0 + 100)
    running = [p.backend_id for p in stat.poll(clock.now()).pilots if p.state is PilotState.RUNNING]
    pending = [i for i in ids if i not in running]
    sub.cancel(pending[:1])
    by_id = {p.backend_id: p for p in stat.poll(clock.now()).pilots}
    assert by_id[pending[0]].state is PilotState.CANCELLED
    # peaceful retire: the pilot drains for drain_time (120 s), then ends; its slot goes to a pending one
    sub.retire(running[:1])
    by_id = {p.backend_id: p for p in stat.poll(clock.now()).pilots}
    assert by_id[running[0]].state is PilotState.RETIRING
    clock.set(T0 + 220)
    by_id = {p.backend_id: p for p in stat.poll(clock.now()).pilots}
    assert by_id[running[0]].state is PilotState.DONE and by_id[running[0]].ended_at == T0 + 220
    assert by_id[pending[1]].state is PilotState.RUNNING and by_id[pending[1]].started_at == T0 + 220
    sub.retire(running[1:2], kill=True)
    by_id = {p.backend_id: p for p in stat.poll(clock.now()).pilots}
    assert by_id[running[1]].state is PilotState.CANCELLED
    sub.cancel(["A.999"])  # unknown ids are already gone: no error


def test_queues_sharing_a_site_share_slots_and_one_poller(
    clock: VirtualClock, queues: dict[str, QueueConfig]
) -> None:
    ctx = factory()
    assert SimStatus.endpoint(queues["S1"], ctx) == SimStatus.endpoint(queues["S2"], ctx) == ("Sim", "shared")
    assert SimStatus.endpoint(queues["A"], ctx) != SimStatus.endpoint(queues["S1"], ctx)
    submitter(queues["S1"]).submit(1, PilotTags("f1", "S1", "a"), T0)
    submitter(queues["S2"]).submit(1, PilotTags("f1", "S2", "b"), T0)
    pilots = poller(queues["S1"]).poll(T0).pilots
    assert {(p.queue, p.state) for p in pilots} == {("S1", PilotState.RUNNING), ("S2", PilotState.PENDING)}


def test_status_before_any_submit_is_empty(clock: VirtualClock, queues: dict[str, QueueConfig]) -> None:
    snap = poller(queues["A"]).poll(T0)
    assert snap.ok and snap.pilots == ()


Plan = list[tuple[int, float | None, float | None]]


def make_plan(seed: int, steps: int) -> Plan:
    """Per step: pilots to submit, and which live pilot to cancel / retire (a fraction of the list)."""
    rng = random.Random(seed)
    return [
        (
            rng.randint(1, 5) if rng.random() < 0.5 else 0,
            rng.random() if rng.random() < 0.2 else None,
            rng.random() if rng.random() < 0.2 else None,
        )
        for _ in range(steps)
    ]


def drive(world_: SimWorld, steps: range, plan: Plan) -> None:
    """Apply the plan one step a minute, as an engine would."""
    site = world_.site("A")
    for k in steps:
        now = T0 + 60 * k
        world_.clock.set(now)  # type: ignore[attr-defined]
        n, cancel, retire = plan[k]
        with world_.lock:
            if n:
                site.submit(n, PilotTags("f1", "A", f"i{k}"), now)
            live = sorted(site.pilots, key=lambda i: int(i.split(".")[1]))
            if live and cancel is not None:
                site.cancel([live[int(cancel * len(live))]], now)
            live = sorted(site.pilots, key=lambda i: int(i.split(".")[1]))
            if live and retire is not None:
                site.retire([live[int(retire * len(live))]], False, now)


def test_dump_and_load_continue_exactly(queues: dict[str, QueueConfig]) -> None:
    plan = make_plan(7, 400)
    straight = reset_world(VirtualClock(T0))
    submitter(queues["A"])  # creates site A with the queue's parameters
    params = straight.site("A").params
    drive(straight, range(0, 400), plan)
    end = T0 + 60 * 400
    reference = straight.site("A").snapshot("f1", end)

    first = set_world(SimWorld(VirtualClock(T0)))
    first.site("A", params)
    drive(first, range(0, 150), plan)
    saved = json.dumps(first.dump())
    # a new process would start here: only the JSON survives
    restored = set_world(SimWorld.load(json.loads(saved), VirtualClock(T0 + 60 * 149)))
    drive(restored, range(150, 400), plan)
    site, ref_site = restored.site("A"), straight.site("A")
    assert site.snapshot("f1", end) == reference
    assert (site.started, site.ended, site.cancelled, site.pilot_seconds) == (
        ref_site.started,
        ref_site.ended,
        ref_site.cancelled,
        ref_site.pilot_seconds,
    )
    assert ref_site.started > 100 and ref_site.cancelled > 0
    reset_world()


def test_plugins_follow_a_reset_world(queues: dict[str, QueueConfig]) -> None:
    first = reset_world(VirtualClock(T0))
    sub = submitter(queues["A"])
    sub.submit(1, PilotTags("f1", "A", "i"), T0)
    assert first.get("A") is not None
    second = reset_world(VirtualClock(T0))
    assert poller(queues["A"]).poll(T0).pilots == ()
    sub.submit(2, PilotTags("f1", "A", "j"), T0)
    assert second.get("A") is not None and len(second.get("A").pilots) == 2  # type: ignore[union-attr]
    reset_world()


def test_many_pilots_many_steps_stay_consistent(clock: VirtualClock, queues: dict[str, QueueConfig]) -> None:
    """Thousands of pilots over a simulated month at a 10-minute step: counts always add up."""
    sub, stat = submitter(queues["A"]), poller(queues["A"])
    site = world().get("A")
    assert site is not None
    site.params = site.params.__class__(capacity=300, start_delay=120, runtime=4 * 3600)
    submitted = 0
    for k in range(31 * 144):
        now = T0 + 600 * k
        clock.set(now)
        pilots = stat.poll(now).pilots
        live = [p for p in pilots if not p.state.final]
        running = sum(1 for p in live if p.state is PilotState.RUNNING)
        assert running <= 300
        assert len(live) == site.counts()["pending"] + site.counts()["running"]
        want = 400 if (k // 144) % 2 == 0 else 100  # demand alternates daily
        if len(live) < want:
            sub.submit(want - len(live), PilotTags("f1", "A", f"i{k}"), now)
            submitted += want - len(live)
    assert site.started + site.counts()["pending"] + site.cancelled == submitted
    assert submitted > 5000
