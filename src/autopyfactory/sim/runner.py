"""``apf simulate``: the real factory loop (``Factory.step``) with simulated backends on a virtual
clock, fed by a demand trace; reports per tier and calendar month what the policy did.

A simulation can stop at a given time and be resumed later from its state directory (the store,
which holds pilots, intents and the quota ledger, plus the simulated sites' state), the way a
factory restarts mid-month.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import select

from autopyfactory.config.models import FactoryConfig
from autopyfactory.config.policy import PolicyDocument
from autopyfactory.decide.periods import month_key
from autopyfactory.engine.factory import Factory
from autopyfactory.sim.batch import SimWorld, reset_world, set_world, world
from autopyfactory.sim.clock import VirtualClock
from autopyfactory.sim.trace import DemandTrace
from autopyfactory.sim.wms import SimWmsStatus
from autopyfactory.store import ledger
from autopyfactory.store.api import Store

STATE_FILE = "simulation.json"


@dataclass
class MonthStats:
    submitted: int = 0  # quota ledger: pilot starts reserved
    started: int = 0
    peak_running: int = 0
    pilot_hours: float = 0.0
    cost: float = 0.0


@dataclass
class Simulation:
    config: FactoryConfig
    policy: PolicyDocument
    trace: DemandTrace
    start: float
    end: float
    step: float
    state_dir: Path
    per_cycle: bool = False
    progress: Callable[[str], None] | None = None
    cycles: list[dict[str, Any]] = field(default_factory=list)
    peaks: dict[str, dict[str, int]] = field(default_factory=lambda: defaultdict(dict))
    # from the simulated sites as pilots start and end: tier -> month -> count / hours
    started: dict[str, dict[str, int]] = field(default_factory=lambda: defaultdict(dict))
    hours: dict[str, dict[str, float]] = field(default_factory=lambda: defaultdict(dict))

    def _on_pilot(self, _site: str, what: str, pilot: Any) -> None:
        if what == "start" and pilot.started_at is not None:
            month = month_key(pilot.started_at)
            self.started[pilot.queue][month] = self.started[pilot.queue].get(month, 0) + 1
        elif what == "end" and pilot.started_at is not None and pilot.ended_at is not None:
            self._add_hours(pilot.queue, pilot.started_at, pilot.ended_at)

    def _add_hours(self, queue: str, start: float, end: float) -> None:
        for month, h in _split_hours(start, end).items():
            self.hours[queue][month] = self.hours[queue].get(month, 0.0) + h

    def run(self, stop_at: float | None = None, resume: bool = False) -> dict[str, Any]:
        clock = VirtualClock(self.start)
        t = self.start
        state_file = self.state_dir / STATE_FILE
        if resume:
            saved = json.loads(state_file.read_text())
            t = saved["time"]
            clock.set(t)
            set_world(SimWorld.load(saved["world"], clock))
            for name in ("peaks", "started", "hours"):
                for tier, months in saved[name].items():
                    getattr(self, name)[tier].update(months)
        else:
            reset_world(clock)
        world().listeners.append(self._on_pilot)
        store = Store(f"sqlite:///{self.state_dir / 'sim.db'}", durable=False)
        config = dataclasses.replace(self.config, policy=self.policy)
        # per-pilot rows are not kept (the report counts pilots from the simulated sites), unless
        # a pilot-hours quota needs them; decisions, intents, the ledger and events are recorded
        hours_quota = any(
            q.pilot_hours is not None for c in self.policy.cascades for t in c.tiers for q in t.quotas
        )
        factory = Factory(config, store=store, clock=clock.now, record_pilots=hours_quota)
        for poller in factory.pollers.values():
            if isinstance(poller.plugin, SimWmsStatus):
                poller.plugin.trace_override = self.trace
        tiers = [t.queue for c in self.policy.cascades for t in c.tiers]
        limit = self.end if stop_at is None else min(stop_at, self.end)
        began = time.perf_counter()
        steps = 0
        last_report = began
        while t < limit:
            clock.set(t)
            plans = factory.step(t, poll_all=True)
            steps += 1
            self._observe(factory, tiers, t, plans)
            t += self.step
            if self.progress and time.perf_counter() - last_report > 5:
                last_report = time.perf_counter()
                self.progress(f"simulated up to {_iso(t)} ({steps} cycles, {last_report - began:.0f}s)")
        if stop_at is not None and t < self.end:
            saved = {
                "time": t,
                "world": world().dump(),
                "peaks": self.peaks,
                "started": self.started,
                "hours": self.hours,
            }
            state_file.write_text(json.dumps(saved, separators=(",", ":")))
        factory.shutdown()
        report = self._report(store, factory.factory_id, min(t, self.end))
        report["elapsed_s"] = round(time.perf_counter() - began, 3)
        report["cycles_run"] = steps
        report["stopped_at"] = _iso(t) if t < self.end else None
        store.close()
        return report

    def _observe(self, factory: Factory, tiers: list[str], now: float, plans: list[Any]) -> None:
        month = month_key(now)
        row: dict[str, Any] = {"time": _iso(now), "tiers": {}} if self.per_cycle else {}
        decided = {p.queue: p for p in plans}
        for tier in tiers:
            rt = factory.queues.get(tier)
            if rt is None:
                continue
            supply = factory.supply_of(rt, now)
            running = supply.running + supply.retiring if supply else 0
            peaks = self.peaks[tier]
            if running > peaks.get(month, 0):
                peaks[month] = running
            if self.per_cycle:
                plan = decided.get(tier)
                row["tiers"][tier] = {
                    "pending": (supply.pending + supply.held) if supply else None,
                    "running": running,
                    "n": plan.decision.n if plan else None,
                    "reason": plan.decision.steps[0].reason if plan else None,
                }
        if self.per_cycle:
            for cascade in factory.cascades.values():
                if cascade.last is not None and cascade.last.time == now:
                    row.setdefault("demand", {})[cascade.name] = cascade.last.demand
            self.cycles.append(row)

    def _report(self, store: Store, factory_id: str, end: float) -> dict[str, Any]:
        costs = {t.queue: t.cost_per_hour for c in self.policy.cascades for t in c.tiers}
        stats: dict[str, dict[str, MonthStats]] = defaultdict(lambda: defaultdict(MonthStats))
        with store.engine.connect() as conn:
            for row in conn.execute(
                select(
                    ledger.ledger_entries.c.tier, ledger.ledger_entries.c.time, ledger.ledger_entries.c.count
                )
            ):
                if row.tier in costs:
                    stats[row.tier][month_key(row.time)].submitted += row.count
        hours = {tier: dict(months) for tier, months in self.hours.items()}

        for site in world().sites.values():  # pilots still running at the end count up to it
            for pilot in site.snapshot(factory_id, end):
                if pilot.started_at is not None and pilot.ended_at is None:
                    for month, h in _split_hours(pilot.started_at, end).items():
                        hours.setdefault(pilot.queue, {})[month] = (
                            hours.get(pilot.queue, {}).get(month, 0.0) + h
                        )
        for tier in costs:
            for month, n in self.started.get(tier, {}).items():
                stats[tier][month].started = n
            for month, h in hours.get(tier, {}).items():
                stats[tier][month].pilot_hours = h
        tiers: dict[str, Any] = {}
        for tier in costs:
            months = {}
            for month in sorted(set(stats[tier]) | set(self.peaks.get(tier, {}))):
                s = stats[tier][month]
                s.peak_running = self.peaks.get(tier, {}).get(month, 0)
                s.cost = round(s.pilot_hours * costs[tier], 2)
                s.pilot_hours = round(s.pilot_hours, 2)
                months[month] = dataclasses.asdict(s)
            tiers[tier] = {"cost_per_hour": costs[tier], "months": months}
        events = [
            {
                "time": _iso(e["time"]),
                "cascade": (e["queue"] or "").removeprefix("cascade:"),
                "kind": e["kind"],
                "message": e["message"],
            }
            for e in reversed(store.events(factory_id, limit=100_000))
            if (e["queue"] or "").startswith("cascade:")
        ]
        out: dict[str, Any] = {
            "start": _iso(self.start),
            "end": _iso(self.end),
            "step_s": self.step,
            "tiers": tiers,
            "events": events,
        }
        if self.per_cycle:
            out["cycles"] = self.cycles
        return out


def _split_hours(start: float, end: float) -> dict[str, float]:
    """Pilot-hours of [start, end) per UTC calendar month."""
    out: dict[str, float] = {}
    t = start
    while t < end:
        dt = datetime.fromtimestamp(t, UTC)
        nxt = datetime(dt.year + (dt.month == 12), dt.month % 12 + 1, 1, tzinfo=UTC).timestamp()
        stop = min(nxt, end)
        out[month_key(t)] = out.get(month_key(t), 0.0) + (stop - t) / 3600.0
        t = stop
    return out


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
