"""The example cascade end to end over the parts that exist without the engine: the real config
loader and Sim plugins, the allocation, and the SQLite quota ledger (reservation in the same
transaction as the intent), on a virtual clock, across a month boundary and a restart.

``Driver`` below is a deliberately small stand-in for the engine's loop (observe, allocate,
reserve + record intent, submit, cancel/retire); the engine's own simulator tests replace it.
"""

from __future__ import annotations

import json
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine, event, func, insert, select

from autopyfactory.config.loader import load_queue_sections
from autopyfactory.config.models import FactorySettings, QueueConfig
from autopyfactory.config.policy import Cascade, parse_policy
from autopyfactory.decide.periods import month_key, parse_time
from autopyfactory.decide.policy import (
    CascadeAllocation,
    TierState,
    TierStatus,
    allocate,
    backoff_after_error,
)
from autopyfactory.model import PilotState, PilotTags
from autopyfactory.plugins.base import BackendError, FactoryContext
from autopyfactory.sim.batch import SimStatus, SimSubmit, SimWorld, reset_world, set_world, world
from autopyfactory.sim.clock import VirtualClock
from autopyfactory.sim.trace import DemandTrace, parse_trace
from autopyfactory.store.ledger import ledger_entries, release, remaining, reserve, use_begin_immediate
from autopyfactory.store.schema import intents, metadata

STEP = 600.0
START = parse_time("2027-01-25T00:00:00Z")
END = parse_time("2027-02-04T00:00:00Z")
Z = 50  # B's monthly quota

POLICY = f"""
cascades:
  - name: analysis
    demand: ANALY
    tiers:
      - {{queue: A, cap: 40, full: {{pending: 5}}, spill_on: [capped, full, backoff], drain: {{retire_running: true}}}}
      - {{queue: B, cap: 20, quotas: [{{per: month, pilots: {Z}}}], spill_on: [quota, backoff],
          drain: {{retire_running: true}}}}
      - {{queue: C, drain: {{retire_running: true, hysteresis: 30m}}}}
"""

QUEUES = """
[DEFAULT]
enabled = True
wmsqueue = ANALY
batchstatusplugin = Sim
batchsubmitplugin = Sim
schedplugin = Ready
batchsubmit.sim.runtime = 2h
[A]
batchsubmit.sim.capacity = 30
batchsubmit.sim.start_delay = 60
[B]
batchsubmit.sim.capacity = 100
batchsubmit.sim.start_delay = 120
batchsubmit.sim.runtime = 1d
[C]
batchsubmit.sim.capacity = 1000
batchsubmit.sim.start_delay = 300
"""

DEMAND = """time,wmsqueue,activated
2027-01-25T00:00:00Z,ANALY,25
2027-01-25T06:00:00Z,ANALY,38
2027-01-26T00:00:00Z,ANALY,100
2027-02-03T06:00:00Z,ANALY,50
2027-02-03T12:00:00Z,ANALY,20
2027-02-03T18:00:00Z,ANALY,0
"""


@dataclass
class Cycle:
    time: float
    demand: int
    alloc: CascadeAllocation
    active: dict[str, int]


@dataclass
class Driver:
    cascade: Cascade
    queues: dict[str, QueueConfig]
    engine: Engine
    trace: DemandTrace
    clock: VirtualClock
    fid: str = "sim-test"
    cycles: list[Cycle] = field(default_factory=list)
    last_scale_up: dict[str, float] = field(default_factory=dict)
    backoff_until: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        ctx = FactoryContext(self.fid, FactorySettings(factoryId=self.fid))
        self.submit = {}
        self.status = {}
        for tier in self.cascade.tiers:
            q = self.queues[tier.queue]
            self.submit[tier.queue] = SimSubmit(q, q.batchsubmit.options, ctx)
            self.status[tier.queue] = SimStatus(SimStatus.endpoint(q, ctx), ctx)
        # a restarted factory remembers when each tier last scaled up from its intents
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(intents.c.queue, func.max(intents.c.created)).group_by(intents.c.queue)
            )
            self.last_scale_up.update({q: t for q, t in rows})

    def observe(self, now: float) -> dict[str, tuple[TierState, list[str], list[str]]]:
        out = {}
        for tier in self.cascade.tiers:
            pilots = self.status[tier.queue].poll(now).pilots
            pending = sorted(
                (p for p in pilots if p.state is PilotState.PENDING), key=lambda p: p.submitted_at or 0
            )
            running = [p for p in pilots if p.state is PilotState.RUNNING]
            state = TierState(
                pending=len(pending),
                running=len(running),
                retiring=sum(1 for p in pilots if p.state is PilotState.RETIRING),
                oldest_pending_since=pending[0].submitted_at if pending else None,
                backoff_until=self.backoff_until.get(tier.queue),
                last_scale_up=self.last_scale_up.get(tier.queue),
            )
            newest_first = sorted(running, key=lambda p: -(p.started_at or 0))
            out[tier.queue] = (state, [p.backend_id for p in pending], [p.backend_id for p in newest_first])
        return out

    def step(self, now: float) -> None:
        self.clock.set(now)
        observed = self.observe(now)
        states = {name: s for name, (s, _, _) in observed.items()}
        demand = self.trace.at(self.cascade.demand, now)
        with self.engine.connect() as conn:
            quota_left = {t.queue: remaining(conn, t.queue, t.quotas, now) for t in self.cascade.tiers}
        alloc = allocate(self.cascade, demand, states, quota_left, now)
        for tier in self.cascade.ordered:
            a = alloc.tier(tier.queue)
            _, pending, running = observed[tier.queue]
            if a.cancel:
                self.submit[tier.queue].cancel(pending[: a.cancel])
            if a.retire:
                self.submit[tier.queue].retire(running[: a.retire])
            if a.submit:
                self.do_submit(tier.queue, a.submit, now)
        active = {name: s.active for name, (s, _, _) in self.observe(now).items()}
        self.cycles.append(Cycle(now, demand, alloc, active))

    def do_submit(self, queue: str, n: int, now: float) -> None:
        tier = self.cascade.tier(queue)
        intent = uuid.uuid4().hex[:16]
        with self.engine.begin() as conn:  # the intent and its quota reservation commit together
            granted = reserve(conn, queue, tier.quotas, n, now, intent)
            conn.execute(
                insert(intents).values(
                    id=intent,
                    factory_id=self.fid,
                    queue=queue,
                    n=granted,
                    created=now,
                    status="open",
                    tier=queue,
                )
            )
        if granted == 0:
            return
        try:
            made = len(self.submit[queue].submit(granted, PilotTags(self.fid, queue, intent), now))
        except BackendError as exc:
            assert exc.capacity
            made = 0
            self.backoff_until[queue] = backoff_after_error(tier, now)
        with self.engine.begin() as conn:
            if made < granted:
                release(conn, intent, granted - made)
            conn.execute(
                intents.update().where(intents.c.id == intent).values(submitted=made, status="submitted")
            )
        self.last_scale_up[queue] = now

    def run(self, until: float) -> None:
        now = self.cycles[-1].time + STEP if self.cycles else START
        while now < until:
            self.step(now)
            now += STEP


def make_driver(tmp_path: Path, world: SimWorld, clock: VirtualClock) -> Driver:
    conf = tmp_path / "queues.conf"
    conf.write_text(QUEUES)
    engine = create_engine(f"sqlite:///{tmp_path / 'apf.db'}")
    use_begin_immediate(engine)

    @event.listens_for(engine, "connect")
    def _fast(dbapi_conn, _record):  # type: ignore[no-untyped-def]
        dbapi_conn.execute("PRAGMA synchronous = OFF")  # a test database: no fsync per commit

    metadata.create_all(engine)
    set_world(world)
    return Driver(
        cascade=parse_policy(POLICY).cascades[0],
        queues=load_queue_sections([str(conf)]),
        engine=engine,
        trace=parse_trace(DEMAND, START),
        clock=clock,
    )


def started_per_month(engine: Engine) -> dict[tuple[str, str], int]:
    out: dict[tuple[str, str], int] = defaultdict(int)
    with engine.connect() as conn:
        for queue, created, submitted in conn.execute(
            select(intents.c.queue, intents.c.created, intents.c.submitted)
        ):
            out[(queue, month_key(created))] += submitted or 0
    return dict(out)


@pytest.fixture(scope="module")
def straight(tmp_path_factory: pytest.TempPathFactory) -> Driver:
    clock = VirtualClock(START)
    driver = make_driver(tmp_path_factory.mktemp("straight"), SimWorld(clock), clock)
    driver.run(END)
    reset_world()
    return driver


def phase(driver: Driver, start: str, end: str) -> list[Cycle]:
    t0, t1 = parse_time(start), parse_time(end)
    return [c for c in driver.cycles if t0 <= c.time < t1]


def test_a_fills_first_and_b_starts_only_once_a_is_full(straight: Driver) -> None:
    first = phase(straight, "2027-01-25T00:00:00Z", "2027-01-25T06:00:00Z")
    assert first[0].alloc.submits == {"A": 25, "B": 0, "C": 0}
    assert all(c.active["B"] == 0 and c.active["C"] == 0 for c in first)
    second = phase(straight, "2027-01-25T06:00:00Z", "2027-01-26T00:00:00Z")
    # demand 38 fits A's cap (40) but not its 30 slots: A takes it all, then counts as full
    assert second[0].alloc.submits == {"A": 13, "B": 0, "C": 0}
    b_cycles = [c for c in second if c.alloc.tier("B").submit > 0]
    assert b_cycles, "B never started"
    for c in second:
        if c.alloc.tier("B").submit > 0:
            assert c.alloc.tier("A").status is TierStatus.FULL
    before = [c for c in second if c.time < b_cycles[0].time]
    assert all(c.alloc.tier("A").status is not TierStatus.FULL for c in before)
    assert all(c.active["C"] == 0 for c in second)


def test_b_at_its_cap_with_quota_left_gives_c_nothing(straight: Driver) -> None:
    at_cap = [c for c in straight.cycles if c.alloc.tier("B").stopped_by == {"capped"}]
    assert len(at_cap) > 100, "B never sat at its cap with quota left"
    for c in at_cap:
        assert c.alloc.tier("C").submit == 0
        assert c.alloc.tier("C").status is TierStatus.WAITING
    # C only ever gets pilots when B's quota is spent
    for c in straight.cycles:
        if c.alloc.tier("C").submit > 0:
            assert "quota" in c.alloc.tier("B").stopped_by


def test_b_stops_at_z_and_c_takes_the_rest_then_b_again_next_month(straight: Driver) -> None:
    per_month = started_per_month(straight.engine)
    assert per_month[("B", "2027-01")] == Z  # spent, never exceeded
    assert per_month[("B", "2027-02")] == Z
    jan = phase(straight, "2027-01-26T00:00:00Z", "2027-02-01T00:00:00Z")
    spent = next(c for c in jan if "quota" in c.alloc.tier("B").stopped_by)
    first_c = next(c for c in jan if c.alloc.tier("C").submit > 0)
    # the cycle that spends B's last pilots passes the rest on to C at once
    assert first_c.time == spent.time
    assert any(e.kind == "quota_exhausted" and e.tier == "B" for e in spent.alloc.events)
    assert any(e.kind == "spill" and e.tier == "B" and e.to_tier == "C" for e in spent.alloc.events)
    # C keeps the demand met while B is out of quota
    late_jan = phase(straight, "2027-01-31T00:00:00Z", "2027-02-01T00:00:00Z")
    assert all(c.active["C"] > 0 for c in late_jan)
    assert all(c.active["A"] + c.active["B"] + c.active["C"] >= 100 for c in late_jan[1:])
    # on the first of the month B is used again
    feb = phase(straight, "2027-02-01T00:00:00Z", "2027-02-02T00:00:00Z")
    assert feb[0].alloc.tier("B").quota_left == Z
    assert any(c.alloc.tier("B").submit > 0 for c in feb)
    with straight.engine.connect() as conn:
        assert conn.execute(select(func.min(ledger_entries.c.count))).scalar_one() > -Z


def test_demand_drop_drains_c_then_b_then_a(straight: Driver) -> None:
    drop = phase(straight, "2027-02-03T06:00:00Z", "2027-02-04T00:00:00Z")
    assert all(drop[0].active[t] > 0 for t in "ABC")  # all three in use when demand falls

    def empty_from(tier: str) -> float:
        """The time from which the tier stays empty."""
        last_busy = max(i for i, c in enumerate(drop) if c.active[tier] > 0)
        return drop[last_busy + 1].time

    assert empty_from("C") <= empty_from("B") < empty_from("A")
    for c in drop:
        drains = [e.tier for e in c.alloc.events if e.kind == "drain"]
        assert drains == sorted(drains, reverse=True)  # C before B before A within a cycle
    assert drop[-1].active == {"A": 0, "B": 0, "C": 0}
    assert all(c.alloc.tier(t).submit == 0 for c in drop if c.demand == 0 for t in "ABC")


def test_restart_mid_month_continues_from_the_store(tmp_path: Path, straight: Driver) -> None:
    clock = VirtualClock(START)
    first = make_driver(tmp_path, SimWorld(clock), clock)
    stop = parse_time("2027-01-26T12:00:00Z")  # B's January quota is partly spent here
    first.run(stop)
    with first.engine.connect() as conn:
        left = remaining(conn, "B", first.cascade.tier("B").quotas, stop)
    assert left is not None and 0 < left < Z
    saved = json.dumps(world().dump())
    last = first.cycles[-1].time
    first.engine.dispose()
    reset_world()

    # a new process: the sim world from its saved state, the factory from the store
    clock2 = VirtualClock(last)
    second = make_driver(tmp_path, SimWorld.load(json.loads(saved), clock2), clock2)
    second.cycles = [first.cycles[-1]]
    second.run(END)
    reset_world()
    per_month = started_per_month(second.engine)
    assert per_month[("B", "2027-01")] == Z and per_month[("B", "2027-02")] == Z
    # the restarted run did exactly what the uninterrupted one did
    assert per_month == started_per_month(straight.engine)
