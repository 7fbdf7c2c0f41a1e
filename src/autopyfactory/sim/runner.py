"""``apf simulate``: the real factory loop (``Factory.step``) with simulated backends on a virtual
clock, fed by a demand trace; reports per queue (tier) and calendar month what the policy did and
how well the demand was served.

A simulation can stop at a given time and be resumed later from its state directory (the store,
which holds intents, the quota ledger and events, plus the simulated sites' state), the way a
factory restarts mid-month.

The simulator uses the engine only through ``Factory(...)``, ``step(now)``, ``store`` and
``cascades``. What the engine does not record in simulation (no per-pilot rows) comes from the
simulated sites, which report every submission, start and end: pilot counts and hours, running
pilots against demand (``sim.metrics``), and pilots that ended without starting, whose quota count
the simulator gives back through ``ledger.release_unstarted`` as the engine does when it records
a pilot's final state.
"""

from __future__ import annotations

import dataclasses
import json
import re
import time
from collections import defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import select

from autopyfactory.config.models import FactoryConfig
from autopyfactory.config.policy import PolicyDocument
from autopyfactory.engine.factory import Factory
from autopyfactory.model import Pilot
from autopyfactory.sim.batch import SimSubmitOptions, SimWorld, reset_world, set_world, world
from autopyfactory.sim.clock import VirtualClock
from autopyfactory.sim.metrics import Months, ServiceMeter, combine
from autopyfactory.sim.trace import DemandTrace
from autopyfactory.sim.wms import SimWmsStatus
from autopyfactory.store import ledger
from autopyfactory.store.api import Store

STATE_FILE = "simulation.json"


@dataclass
class MonthStats:
    submitted: int = 0  # pilots created at the simulated site
    started: int = 0
    never_started: int = 0  # ended (cancelled) without starting, by the month they were submitted
    quota_used: int | None = None  # the ledger's count (net of releases), for tiers with quotas
    peak_running: int = 0
    pilot_hours: float = 0.0
    cost: float = 0.0


def _counter() -> defaultdict[str, defaultdict[str, int]]:
    return defaultdict(lambda: defaultdict(int))


@dataclass
class Simulation:
    config: FactoryConfig
    policy: PolicyDocument | None
    trace: DemandTrace
    start: float
    end: float
    step: float
    state_dir: Path
    per_cycle: bool = False
    progress: Callable[[str], None] | None = None
    # cost of a pilot-hour per queue where neither the policy nor the Sim backend gives one
    costs: Mapping[str, float] = field(default_factory=dict)
    cycles: list[dict[str, Any]] = field(default_factory=list)
    # from the simulated sites as pilots are submitted, start and end: queue -> month -> n
    submitted: defaultdict[str, defaultdict[str, int]] = field(default_factory=_counter)
    started: defaultdict[str, defaultdict[str, int]] = field(default_factory=_counter)
    never_started: defaultdict[str, defaultdict[str, int]] = field(default_factory=_counter)
    peaks: defaultdict[str, defaultdict[str, int]] = field(default_factory=_counter)
    hours: dict[str, dict[str, float]] = field(default_factory=lambda: defaultdict(dict))
    running: defaultdict[str, int] = field(default_factory=lambda: defaultdict(int))
    events: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.months = Months(self.start, self.end)
        self.queues = [q.name for q in self.config.active_queues()]
        self.wmsqueue_of = {q.name: (q.wmsqueue or q.name) for q in self.config.active_queues()}
        self.meters: dict[str, ServiceMeter] = {w: ServiceMeter() for w in self.wmsqueue_of.values()}
        self._unstarted: list[Pilot] = []

    # -- what the simulated sites report --------------------------------------------------------
    def _on_pilot(self, _site: str, what: str, pilot: Any) -> None:
        queue = pilot.queue
        if what == "start":
            t = pilot.started_at
            month = self.months.key(t)
            self.started[queue][month] += 1
            self.running[queue] += 1
            if self.running[queue] > self.peaks[queue][month]:
                self.peaks[queue][month] = self.running[queue]
            meter = self.meters.get(self.wmsqueue_of.get(queue, ""))
            if meter is not None:
                meter.running(t, +1)
        elif what == "end":
            if pilot.started_at is None:
                self.never_started[queue][self.months.key(pilot.submitted_at or pilot.ended_at)] += 1
                self._unstarted.append(pilot)
                return
            self.running[queue] -= 1
            self._add_hours(queue, pilot.started_at, pilot.ended_at)
            meter = self.meters.get(self.wmsqueue_of.get(queue, ""))
            if meter is not None:
                meter.running(pilot.ended_at, -1)
        elif what == "submit":
            self.submitted[queue][self.months.key(pilot.submitted_at)] += 1

    def _add_hours(self, queue: str, start: float, end: float) -> None:
        hours = self.hours[queue]
        for month, seconds in self.months.split(start, end):
            hours[month] = hours.get(month, 0.0) + seconds / 3600.0

    # -- the run ---------------------------------------------------------------------------------
    def run(self, stop_at: float | None = None, resume: bool = False) -> dict[str, Any]:
        clock = VirtualClock(self.start)
        t = self.start
        state_file = self.state_dir / STATE_FILE
        if resume:
            t = self._restore(json.loads(state_file.read_text()), clock)
        else:
            reset_world(clock)
        world().listeners.append(self._on_pilot)
        store = Store(f"sqlite:///{self.state_dir / 'sim.db'}", durable=False)
        config = dataclasses.replace(self.config, policy=self.policy)
        # per-pilot rows are not kept (the report counts pilots from the simulated sites), unless
        # a pilot-hours quota needs them; decisions, intents, the ledger and events are recorded
        policy = self.policy
        hours_quota = policy is not None and any(
            q.pilot_hours is not None for c in policy.cascades for tier in c.tiers for q in tier.quotas
        )
        throttle = any(spec.name == "Throttle" for qc in config.active_queues() for spec in qc.sched)
        if not hours_quota and not throttle:
            # nothing reads finished pilots after the poll that sees them end (no pilot rows, no
            # Throttle history): polls, which run every step, stay small
            world().keep_finished = self.step
        factory = Factory(config, store=store, clock=clock.now, record_pilots=hours_quota)
        for poller in factory.pollers.values():
            if isinstance(poller.plugin, SimWmsStatus):
                poller.plugin.trace_override = self.trace
        limit = self.end if stop_at is None else min(stop_at, self.end)
        began = time.perf_counter()
        steps = 0
        last_report = began
        while t < limit:
            clock.set(t)
            plans = factory.step(t, poll_all=True)
            steps += 1
            self._after_step(factory, store, t, plans)
            t += self.step
            if self.progress and time.perf_counter() - last_report > 5:
                last_report = time.perf_counter()
                self.progress(f"simulated up to {_iso(t)} ({steps} cycles, {last_report - began:.0f}s)")
        if stop_at is not None and t < self.end:
            state_file.write_text(json.dumps(self._state(t), separators=(",", ":")))
        factory.shutdown()
        self._release_unstarted(store, t)
        report = self._report(store, factory.factory_id, min(t, self.end))
        report["elapsed_s"] = round(time.perf_counter() - began, 3)
        report["cycles_run"] = steps
        report["stopped_at"] = _iso(t) if t < self.end else None
        store.close()
        world().listeners.remove(self._on_pilot)
        return report

    def _after_step(self, factory: Factory, store: Store, now: float, plans: list[Any]) -> None:
        self._release_unstarted(store, now)
        for cascade in factory.cascades.values():
            alloc = cascade.last
            if alloc is None or alloc.time != now:
                continue
            # the numbers of each event (the store keeps its words); an allocation the engine
            # redid in the same cycle (a backend refused) leaves only the last one's here, the
            # store has them all (_all_events)
            for e in alloc.events:
                self.events.append(
                    {"time": _iso(e.time or now), "cascade": cascade.name}
                    | e.as_dict()
                    | {"message": f"{e.tier}: {e.message}"}
                )
        if self.per_cycle:
            self._record_cycle(factory, now, plans)

    def _release_unstarted(self, store: Store, now: float) -> None:
        """Pilots that ended without starting give their quota count back (the engine's hook
        when it records a pilot's final state; the simulator keeps no pilot rows)."""
        if not self._unstarted:
            return
        ended, self._unstarted = self._unstarted, []
        with store.engine.begin() as conn:
            ledger.release_unstarted(conn, ended, now)

    def _record_cycle(self, factory: Factory, now: float, plans: list[Any]) -> None:
        row: dict[str, Any] = {"time": _iso(now), "tiers": {}}
        decided = {p.queue: p for p in plans}
        for name in self.queues:
            rt = factory.queues.get(name)
            if rt is None:
                continue
            supply = factory.supply_of(rt, now)
            plan = decided.get(name)
            row["tiers"][name] = {
                "pending": (supply.pending + supply.held) if supply else None,
                "running": (supply.running + supply.retiring) if supply else None,
                "n": plan.decision.n if plan else None,
                "reason": plan.decision.steps[0].reason if plan and plan.decision.steps else None,
            }
        for cascade in factory.cascades.values():
            if cascade.last is not None and cascade.last.time == now:
                row.setdefault("demand", {})[cascade.name] = cascade.last.demand
        self.cycles.append(row)

    # -- stop and resume -------------------------------------------------------------------------
    def _state(self, t: float) -> dict[str, Any]:
        return {
            "time": t,
            "world": world().dump(),
            "counts": {
                name: getattr(self, name)
                for name in ("submitted", "started", "never_started", "peaks", "hours", "running")
            },
            "meters": {w: m.changes for w, m in self.meters.items()},
            "events": self.events,
        }

    def _restore(self, saved: dict[str, Any], clock: VirtualClock) -> float:
        t = float(saved["time"])
        clock.set(t)
        set_world(SimWorld.load(saved["world"], clock))
        for name, values in saved["counts"].items():
            target = getattr(self, name)
            if name == "running":
                target.update(values)
                continue
            for queue, months in values.items():
                target[queue].update(months)
        for wmsqueue, changes in saved["meters"].items():
            self.meters.setdefault(wmsqueue, ServiceMeter()).changes.extend((a, b) for a, b in changes)
        self.events.extend(saved["events"])
        return t

    # -- the report ------------------------------------------------------------------------------
    def cost_per_hour(self, queue: str) -> float:
        """The policy's price of a tier, else the Sim backend's ``cost_per_hour``, else ``costs``."""
        policy = self.policy
        if policy is not None:
            cascade = policy.cascade_of(queue)
            if cascade is not None:
                return cascade.tier(queue).cost_per_hour
        qc = self.config.queues.get(queue)
        options = qc.plugin_options("batchsubmit") if qc is not None else None
        if isinstance(options, SimSubmitOptions) and options.cost_per_hour is not None:
            return options.cost_per_hour
        return self.costs.get(queue, 0.0)

    def _quota_counts(self, store: Store) -> dict[str, dict[str, int]]:
        """The ledger's net count per tier with quotas and month."""
        policy = self.policy
        with_quota = {t.queue for c in policy.cascades for t in c.tiers if t.quotas} if policy else set()
        out: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
        if not with_quota:
            return out
        entries = ledger.ledger_entries
        with store.engine.connect() as conn:
            for tier, when, count in conn.execute(
                select(entries.c.tier, entries.c.time, entries.c.count).where(entries.c.tier.in_(with_quota))
            ):
                out[tier][self.months.key(when)] += count
        for tier in with_quota:
            out.setdefault(tier, defaultdict(int))
        return out

    def _report(self, store: Store, factory_id: str, end: float) -> dict[str, Any]:
        hours = {queue: dict(months) for queue, months in self.hours.items()}
        for site in world().sites.values():  # pilots still running at the end count up to it
            for pilot in site.snapshot(factory_id, end):
                if pilot.started_at is not None and pilot.ended_at is None:
                    for month, seconds in self.months.split(pilot.started_at, end):
                        hours.setdefault(pilot.queue, {})
                        hours[pilot.queue][month] = hours[pilot.queue].get(month, 0.0) + seconds / 3600.0
        quota = self._quota_counts(store)
        tiers: dict[str, Any] = {}
        for queue in self.queues:
            price = self.cost_per_hour(queue)
            months = {}
            keys = {
                *self.submitted.get(queue, {}),
                *self.started.get(queue, {}),
                *hours.get(queue, {}),
                *self.never_started.get(queue, {}),
            }
            if queue in quota:
                keys |= set(quota[queue])
            for month in sorted(keys):
                h = hours.get(queue, {}).get(month, 0.0)
                s = MonthStats(
                    submitted=self.submitted.get(queue, {}).get(month, 0),
                    started=self.started.get(queue, {}).get(month, 0),
                    never_started=self.never_started.get(queue, {}).get(month, 0),
                    quota_used=quota[queue].get(month, 0) if queue in quota else None,
                    peak_running=self.peaks.get(queue, {}).get(month, 0),
                    pilot_hours=round(h, 2),
                    cost=round(h * price, 2),
                )
                months[month] = dataclasses.asdict(s)
            tiers[queue] = {"cost_per_hour": price, "wmsqueue": self.wmsqueue_of[queue], "months": months}
        reports = {
            wmsqueue: meter.report(self.trace.steps(wmsqueue, self.start, end), self.start, end, self.months)
            for wmsqueue, meter in sorted(self.meters.items())
        }
        service = {wmsqueue: r.as_dict() for wmsqueue, r in reports.items()}
        per_month, total, waiting = combine(reports.values())
        out: dict[str, Any] = {
            "start": _iso(self.start),
            "end": _iso(self.end),
            "step_s": self.step,
            "tiers": tiers,
            "service": service,
            # every WMS queue together: what a comparison shows
            "service_all": {
                "months": {m: s.as_dict() for m, s in per_month.items()},
                "total": total.as_dict(),
                "waiting_at_end": waiting,
            },
            "events": self._all_events(store, factory_id),
        }
        if self.per_cycle:
            out["cycles"] = self.cycles
        return out

    def _all_events(self, store: Store, factory_id: str) -> list[dict[str, Any]]:
        """Every event the engine recorded for a cascade (the store), with the numbers (``n``,
        ``to``) of those the allocation reported; events the engine itself recorded (a tier backed
        off after a backend refused, ...) name their tier and have no number."""
        numbered = {(e["time"], e["kind"], e["message"]): e for e in self.events}
        out = []
        for e in reversed(store.events(factory_id, limit=1_000_000)):
            label = e["queue"] or ""
            if not label.startswith("cascade:"):
                continue
            key = (_iso(e["time"]), e["kind"], e["message"])
            known = numbered.get(key)
            if known is not None:
                out.append(known)
                continue
            tier = re.match(r"(?:tier )?([^\s:]+)[: ]", e["message"])
            out.append(
                {
                    "time": key[0],
                    "cascade": label.removeprefix("cascade:"),
                    "kind": e["kind"],
                    "tier": tier.group(1) if tier else None,
                    "n": None,
                    "message": e["message"],
                }
            )
        return out


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
