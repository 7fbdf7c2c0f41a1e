"""The factory: observe (pollers), decide (pure chains), act (executor), report (store, observers).

Two ways to drive it, sharing all the logic:
- ``run()``: the daemon. One poller thread per endpoint, one decision loop woken by new snapshots
  and by each queue's interval, and a bounded action pool serialised per target.
- ``step(now)``: one synchronous cycle (poll, decide, act) — ``apf run --once``, the simulator on
  a virtual clock, and tests.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import Connection

from autopyfactory.config.models import FactoryConfig, QueueConfig
from autopyfactory.decide.base import SchedContext, SchedPlugin, run_chain
from autopyfactory.decide.policy import TierState, allocate, backoff_after_error
from autopyfactory.decide.retire import select_for_retire
from autopyfactory.decide.supply import aggregate
from autopyfactory.engine.cascade import (
    CascadeRuntime,
    cascade_decision,
    learn_capacity,
    new_events,
    tier_actions,
    tier_decision,
    tier_state,
)
from autopyfactory.engine.events import Observer
from autopyfactory.engine.executor import Executor
from autopyfactory.engine.pollers import Poller, PollerThread
from autopyfactory.model import (
    Action,
    BatchSnapshot,
    Cancel,
    Decision,
    Demand,
    Pilot,
    PilotState,
    PilotTags,
    Plan,
    Retire,
    Step,
    Submit,
    Supply,
    ThrottleHistory,
    WmsSnapshot,
)
from autopyfactory.plugins.base import (
    BackendError,
    BatchStatusPlugin,
    BatchSubmitPlugin,
    FactoryContext,
    MonitorPlugin,
    WmsStatusPlugin,
)
from autopyfactory.store import ledger
from autopyfactory.store.api import Store

log = logging.getLogger("autopyfactory.factory")

# Fault injection for crash-safety tests (APF_FAULT=crash-after-submit); unset in production.
_FAULT = os.environ.get("APF_FAULT", "")

DEFAULT_INTERVAL = 60.0
STATUS_INTERVAL = 2.0  # seconds between writes of the daemon's status file
DEFAULT_MAXAGE = 360.0


@dataclass
class QueueRuntime:
    config: QueueConfig
    sched: list[SchedPlugin]
    batch_poller: Poller
    wms_poller: Poller | None
    submitter: BatchSubmitPlugin | None
    error: str | None = None
    monitors: list[MonitorPlugin] = field(default_factory=list)
    # key of this queue's Demand in its WMS snapshot (the wmsqueue, or a filtered variant)
    demand_key: str = ""
    # the cascade this queue is a tier of: the cascade's allocation replaces its own chain
    cascade: str | None = None
    decided_once: bool = False
    last_batch_time: float | None = None
    last_wms_time: float | None = None
    last_ready: int | None = None
    last_action_done: float = 0.0
    next_due: float = 0.0
    decisions: int = 0
    inflight: int = 0
    last: Decision | None = None

    @property
    def name(self) -> str:
        return self.config.name


@dataclass
class TargetState:
    failures: int = 0
    until: float = 0.0
    error: str | None = None


class Factory:
    def __init__(
        self,
        config: FactoryConfig,
        *,
        store: Store | None = None,
        dry_run: bool = False,
        clock: Callable[[], float] = time.time,
        observers: Iterable[Observer] = (),
        record_pilots: bool = True,
    ) -> None:
        """``record_pilots=False`` (the simulator) keeps no per-pilot rows in the store; decisions,
        intents, the quota ledger and events are recorded as always."""
        self.config = config
        self.record_pilots = record_pilots
        self.factory_id = config.factory_id
        self.dry_run = dry_run
        self.clock = clock
        self.store = store or Store(config.settings.database_url())
        self.observers: list[Observer] = list(observers)
        self.executor = Executor(config.settings.executor_workers)
        self.ctx = self._context(config)
        self.pollers: dict[Hashable, Poller] = {}
        self.queues: dict[str, QueueRuntime] = {}
        self.cascades: dict[str, CascadeRuntime] = {}
        self.monitors: dict[str, MonitorPlugin] = {}
        self.targets: dict[str, TargetState] = defaultdict(TargetState)
        self._pilots: dict[str, list[Pilot]] = {}
        self._supply: dict[int, tuple[float, dict[str, Supply], int]] = {}
        # per batch poller: every pilot it last reported (or we just submitted), by (queue, id)
        self._known: dict[int, dict[tuple[str, str], Pilot]] = {}
        # pilot rows to write in the next pass's one transaction (polls, adoption, submissions)
        self._changed: list[Pilot] = []
        self._changed_lock = threading.Lock()
        self._absorbed: dict[int, float] = {}
        self._adopted: set[int] = set()
        self._my_intents: set[str] = set()
        self._lock = threading.RLock()
        self._wake = threading.Condition()
        self._stopping = threading.Event()
        self._threads: dict[int, PollerThread] = {}
        self._inline = True  # actions run inline until the daemon starts its executor threads
        self._reload_requests: list[Callable[[], FactoryConfig | None]] = []
        self._running_by_demand: dict[str, int] | None = None
        self._pass_demands: dict[str, Demand | None] | None = None
        self.metrics_url: str | None = None
        self._next_prune = 0.0
        self._next_status = 0.0
        self._build(config)

    # -- construction ---------------------------------------------------------------------------
    def _context(self, config: FactoryConfig) -> FactoryContext:
        urls = [m.monitorURL for m in config.monitors.values() if m.monitorURL]
        return FactoryContext(
            factory_id=config.factory_id,
            settings=config.settings,
            auth_profiles=dict(config.auth),
            state_dir=config.settings.state_path,
            monitor_url=urls[0] if len(urls) == 1 else None,
        )

    def _running_for(self, demand_key: str) -> int:
        """Running pilots of every queue serving one demand (computed once per decision pass)."""
        if self._running_by_demand is None:
            totals: dict[str, int] = defaultdict(int)
            for rt in self.queues.values():
                snap = rt.batch_poller.latest
                if isinstance(snap, BatchSnapshot):
                    supply = self._supply_for(rt.batch_poller, snap)[0].get(rt.name)
                    totals[rt.demand_key] += supply.running if supply else 0
            self._running_by_demand = totals
        return self._running_by_demand.get(demand_key, 0)

    def _build(self, config: FactoryConfig) -> None:
        """(Re)build queue runtimes; reuse pollers and unchanged queues (reload keeps state)."""
        old = self.queues
        queues: dict[str, QueueRuntime] = {}
        for qc in config.active_queues():
            previous = old.get(qc.name)
            if previous is not None and previous.config.fingerprint() == qc.fingerprint():
                queues[qc.name] = previous
            else:
                queues[qc.name] = self._make_runtime(qc)
        for name, runtime in old.items():
            if queues.get(name) is not runtime:
                self._close_submitter(runtime)
        used = {id(r.batch_poller) for r in queues.values()} | {id(r.wms_poller) for r in queues.values()}
        for key in [k for k, p in self.pollers.items() if id(p) not in used]:
            poller = self.pollers.pop(key)
            thread = self._threads.pop(id(poller), None)
            if thread is not None:
                thread.stop()
            poller.close()
        # every poller learns its queues again (a reload may move queues between endpoints)
        for poller in self.pollers.values():
            if poller.kind == "wmsstatus":
                poller.wmsqueues = frozenset(r.demand_key for r in queues.values() if r.wms_poller is poller)
        for runtime in queues.values():
            runtime.batch_poller.plugin.register(runtime.config)
            if runtime.wms_poller is not None:
                runtime.wms_poller.plugin.register(runtime.config)
        self.queues = queues
        self._build_cascades(config)
        if not self._inline:
            self._start_poller_threads()

    def _build_cascades(self, config: FactoryConfig) -> None:
        old = self.cascades
        self.cascades = {}
        for rt in self.queues.values():
            rt.cascade = None
        if config.policy is None:
            return
        scale_ups: dict[str, float] | None = None
        for cascade in config.policy.cascades:
            tiers = [self.queues[t.queue] for t in cascade.ordered if t.queue in self.queues]
            if not tiers:
                continue
            cr = CascadeRuntime(cascade, tiers)
            previous = old.get(cascade.name)
            if previous is not None:  # a reload keeps the cascade's memory
                cr.backoff_until = previous.backoff_until
                cr.capacity_hint = previous.capacity_hint
                cr.last_scale_up = previous.last_scale_up
                cr.last_event_keys = previous.last_event_keys
            else:
                if scale_ups is None:
                    scale_ups = self.store.last_intent_times(self.factory_id)
                cr.last_scale_up = {rt.name: scale_ups[rt.name] for rt in tiers if rt.name in scale_ups}
            for rt in tiers:
                rt.cascade = cascade.name
            self.cascades[cascade.name] = cr

    def _poller(
        self, kind: str, cls: type[WmsStatusPlugin] | type[BatchStatusPlugin], qc: QueueConfig
    ) -> Poller:
        key = cls.endpoint(qc, self.ctx)
        poller = self.pollers.get(key)
        if poller is None:
            plugin = cls(key, self.ctx)
            interval = self.config.poll_setting(
                kind, cls.name, "sleep", getattr(cls, "default_interval", DEFAULT_INTERVAL)
            )
            maxage = self.config.poll_setting(
                kind, cls.name, "maxage", getattr(cls, "default_maxage", DEFAULT_MAXAGE)
            )
            poller = Poller(kind, f"{kind}:{cls.name}:{_short(key)}", plugin, interval, max(maxage, interval))
            poller.on_result = self._on_poll
            self.pollers[key] = poller
        return poller

    def _make_runtime(self, qc: QueueConfig) -> QueueRuntime:
        sched = [spec.cls(spec.options) for spec in qc.sched]  # type: ignore[call-arg]
        batch_poller = self._poller("batchstatus", qc.batchstatus.cls, qc)  # type: ignore[arg-type]
        wms_poller = self._poller("wmsstatus", qc.wmsstatus.cls, qc) if qc.wmsstatus else None  # type: ignore[arg-type]
        submitter, error = None, None
        try:
            submitter = qc.batchsubmit.cls(qc, qc.batchsubmit.options, self.ctx)  # type: ignore[call-arg]
        except Exception as exc:  # a queue that cannot act still decides and reports why
            error = f"cannot set up {qc.batchsubmit.name}: {exc}"
            log.error("queue %s: %s", qc.name, error)
            self._event("queue-error", error, qc.name)
        monitors = []
        for section in [s.strip() for s in (qc.settings.monitorsection or "").split(",") if s.strip()]:
            monitor = self._monitor(section)
            if monitor is not None:
                monitors.append(monitor)
        demand_key = qc.name
        if qc.wmsstatus is not None:
            demand_key = qc.wmsstatus.cls.demand_key(qc, self.ctx) or qc.wmsqueue or qc.name  # type: ignore[attr-defined]
        return QueueRuntime(qc, sched, batch_poller, wms_poller, submitter, error, monitors, demand_key)

    def _monitor(self, section: str) -> MonitorPlugin | None:
        if section in self.monitors:
            return self.monitors[section]
        ms = self.config.monitors.get(section)
        if ms is None:
            return None
        from autopyfactory.plugins import base as plugins

        try:
            cls = plugins.load("monitor", ms.plugin)
            monitor = cls(section, ms.options, self.ctx, url=ms.monitorURL)  # type: ignore[call-arg]
        except Exception as exc:
            log.error("monitor %s: cannot start: %s", section, exc)
            return None
        self.monitors[section] = monitor  # type: ignore[assignment]
        return monitor  # type: ignore[return-value]

    def _close_submitter(self, runtime: QueueRuntime) -> None:
        if runtime.submitter is not None:
            try:
                runtime.submitter.close()
            except Exception:
                log.exception("queue %s: close failed", runtime.name)

    # -- observe -------------------------------------------------------------------------------
    def _on_poll(self, poller: Poller, ok: bool) -> None:
        for observer in self.observers:
            _safe(observer.on_poll, poller.label, poller.kind, ok, self.clock(), poller.status.error)
        with self._wake:
            self._wake.notify_all()

    def _absorb(self, poller: Poller, snap: BatchSnapshot, now: float) -> None:
        """A new batch snapshot: group pilots by queue, sync the store, adopt after a restart."""
        by_queue: dict[str, list[Pilot]] = defaultdict(list)
        for pilot in snap.pilots:
            by_queue[pilot.queue].append(pilot)
        mine = [r for r in self.queues.values() if r.batch_poller is poller]
        for runtime in mine:
            self._pilots[runtime.name] = by_queue.get(runtime.name, [])
        if not self.dry_run:
            if self.record_pilots:
                self._sync_store(poller, snap)
            if id(poller) not in self._adopted:
                self._settle_open_intents(snap, {r.name for r in mine}, now)
                self._reconcile_store(poller, snap, {r.name for r in mine}, now)
                self._adopted.add(id(poller))
        unknown = sorted(set(by_queue) - set(self.queues))
        if unknown and id(poller) not in self._absorbed:
            self._event(
                "leaked",
                f"{poller.label}: pilots tagged for queues not configured: {', '.join(unknown[:10])}",
            )
        self._absorbed[id(poller)] = snap.time

    def _sync_store(self, poller: Poller, snap: BatchSnapshot) -> None:
        """Compare with the last poll: state changes (and vanished active pilots) go to the store."""
        old = self._known.get(id(poller), {})
        new: dict[tuple[str, str], Pilot] = {}
        changed: list[Pilot] = []
        for pilot in snap.pilots:
            key = (pilot.queue, pilot.backend_id)
            previous = old.get(key)
            if previous is None or previous.state != pilot.state:
                changed.append(pilot)
            new[key] = pilot
        for key, pilot in old.items():
            if key in new:
                continue
            if pilot.submitted_at is not None and pilot.submitted_at >= snap.time:
                new[key] = pilot  # submitted after this poll began: not visible yet
            elif pilot.state.active:
                # an active pilot the backend no longer lists: the backend is the truth
                changed.append(_with_state(pilot, PilotState.UNKNOWN))
        self._known[id(poller)] = new
        with self._changed_lock:
            self._changed.extend(changed)

    def _settle_open_intents(self, snap: BatchSnapshot, queues: set[str], now: float) -> None:
        """After a restart: intents left open by a crash are settled from what the backend shows."""
        by_intent: dict[str, int] = defaultdict(int)
        for pilot in snap.pilots:
            if pilot.intent_id:
                by_intent[pilot.intent_id] += 1
        for intent in self.store.open_intents(self.factory_id):
            if intent.queue not in queues or intent.id in self._my_intents:
                continue
            found = by_intent.get(intent.id, 0)
            status = "adopted" if found else "lost"
            self.store.settle_intent(
                intent.id, status, found, now, error=None if found else "no pilot found under its tag"
            )
            self._event(
                "adopt",
                f"intent {intent.id} ({intent.n} asked): {found} pilots found in the backend, settled as {status}",
                intent.queue,
            )

    def flush(self, now: float | None = None) -> None:
        """Write the pilot changes gathered since the last pass, in one transaction."""
        with self._changed_lock:
            changed, self._changed = (self._changed if self.record_pilots else []), []
        if not changed:
            return
        try:
            self.store.record_pilots(self.factory_id, changed, self.clock() if now is None else now)
        except Exception:
            log.exception("store: recording %d pilot changes failed", len(changed))

    def _reconcile_store(self, poller: Poller, snap: BatchSnapshot, queues: set[str], now: float) -> None:
        """After a restart: pilots the store still thinks active but the backend no longer lists
        are settled by the backend if it can (Slurm: sacct), else marked unknown (never done)."""
        listed = {(p.queue, p.backend_id) for p in snap.pilots}
        active = [s.value for s in PilotState if s.active]
        stale = [  # one query for the factory, not one per queue (start-up with 10,000 queues)
            _pilot_from_row(row)
            for row in self.store.pilots(self.factory_id, states=active)
            if row["queue"] in queues
            and (row["queue"], row["backend_id"]) not in listed
            and (row["submitted_at"] or 0.0) < snap.time
        ]
        if not stale:
            return
        settle = getattr(poller.plugin, "settle", None)
        settled: list[Pilot] = []
        if callable(settle):
            try:
                settled = list(settle(stale, now))
            except Exception as exc:
                log.warning(
                    "%s: cannot settle %d vanished pilots: %s", poller.label, len(stale), _message(exc)
                )
        done = {p.backend_id for p in settled}
        settled += [_with_state(p, PilotState.UNKNOWN) for p in stale if p.backend_id not in done]
        with self._changed_lock:
            self._changed.extend(settled)
        self._event(
            "reconcile", f"{poller.label}: {len(stale)} pilots left the backend while we were away; settled"
        )

    def _supply_for(self, poller: Poller, snap: BatchSnapshot) -> tuple[dict[str, Supply], int]:
        cached = self._supply.get(id(poller))
        if cached is not None and cached[0] == snap.time:
            return cached[1], cached[2]
        supplies = aggregate(snap.pilots, snap.time)
        total = sum(s.active for s in supplies.values())
        self._supply[id(poller)] = (snap.time, supplies, total)
        return supplies, total

    # -- decide ----------------------------------------------------------------------------------
    def _eligible(self, rt: QueueRuntime, now: float, force: bool) -> bool:
        if rt.inflight:
            return False
        snap = rt.batch_poller.latest
        btime = snap.time if snap is not None else None
        if rt.decided_once and btime == rt.last_batch_time:
            return False  # APF: never decide twice on the same batch snapshot
        if btime is not None and rt.last_action_done and btime <= rt.last_action_done:
            return False  # our last action is not visible in the batch status yet
        if force or now >= rt.next_due:
            return True
        wsnap = rt.wms_poller.latest if rt.wms_poller is not None else None
        if wsnap is not None and wsnap.time != rt.last_wms_time:
            demand = wsnap.demands.get(rt.demand_key)
            return (demand.ready if demand else 0) != rt.last_ready  # demand changed: act at once
        return False

    def _demand(self, rt: QueueRuntime, now: float) -> Demand | None:
        if self._pass_demands is None:
            self._pass_demands = self._compute_demands(now)
        return self._pass_demands.get(rt.name)

    def _compute_demands(self, now: float) -> dict[str, Demand | None]:
        """Every queue's part of its WMS demand, once per pass: fresh snapshots only, adjusted by
        the WMS plugin at decision time, then split between the queues that serve one demand."""
        from autopyfactory.decide.share import split_demands

        out: dict[str, Demand | None] = {}
        groups: dict[int, list[QueueRuntime]] = defaultdict(list)
        for rt in self.queues.values():
            if rt.wms_poller is None:
                out[rt.name] = None
            else:
                groups[id(rt.wms_poller)].append(rt)
        for members in groups.values():
            poller = members[0].wms_poller
            assert poller is not None
            snap = poller.fresh(now)
            if not isinstance(snap, WmsSnapshot):
                out.update(dict.fromkeys((r.name for r in members), None))
                continue
            plugin = poller.plugin
            adjust = type(plugin).at_decision is not WmsStatusPlugin.at_decision
            demands: dict[str, Demand] = {}
            for key in {r.demand_key for r in members}:
                demand = snap.demands.get(key) or Demand(key, time=snap.time)
                demands[key] = plugin.at_decision(demand, self._running_for(key)) if adjust else demand  # type: ignore[union-attr]
            keys = {r.name: r.demand_key for r in members}
            out.update(
                split_demands(demands, [r.config for r in members], key_of=lambda q, k=keys: k[q.name])
            )
        return out

    def decide_queue(self, rt: QueueRuntime, now: float) -> Decision:
        demand = self._demand(rt, now)
        snap = rt.batch_poller.fresh(now)
        supply: Supply | None = None
        factory_active: int | None = None
        if isinstance(snap, BatchSnapshot):
            supplies, factory_active = self._supply_for(rt.batch_poller, snap)
            supply = supplies.get(rt.name) or Supply(rt.name, time=snap.time)
        ctx = SchedContext(
            queue=rt.name,
            now=now,
            demand=demand,
            supply=supply,
            site_status=demand.site_status if demand else None,
            factory_active=factory_active,
            factory_max=self.config.settings.maxperfactory_maximum,
            history=self._history(rt, now),
        )
        try:
            n, steps = run_chain(rt.sched, ctx)
        except Exception as exc:  # a broken plugin decides nothing for its queue only
            log.exception("queue %s: scheduler chain failed", rt.name)
            n, steps = 0, (Step("error", 0, 0, f"chain failed: {exc}"),)
        return Decision(
            rt.name,
            n,
            steps,
            now,
            ready=demand.ready if demand else None,
            pending=(supply.pending + supply.held) if supply else None,
            running=supply.running if supply else None,
        )

    def _history(self, rt: QueueRuntime, now: float) -> ThrottleHistory | None:
        throttle = next((s for s in rt.sched if s.name == "Throttle"), None)
        if throttle is None:
            return None
        interval = float(getattr(throttle.options, "interval", 3600))
        maxtime = float(getattr(throttle.options, "maxtime", 10))
        recent = [
            p
            for p in self._pilots.get(rt.name, [])
            if p.started_at is not None and p.started_at > now - interval
        ]
        short = sum(1 for p in recent if p.ended_at is not None and p.ended_at - p.started_at < maxtime)  # type: ignore[operator]
        return ThrottleHistory(len(recent), short)

    def _actions(self, rt: QueueRuntime, decision: Decision, now: float) -> tuple[Action, ...]:
        if not self._may_act(rt, now):
            return ()
        assert rt.submitter is not None
        if decision.n > 0:
            return (Submit(rt.name, decision.n),)
        if decision.n < 0:
            options = rt.submitter.options
            if getattr(options, "overlay_peaceful", True):
                return ()  # APF: negative n retires nothing unless overlay.peaceful = False
            cancel, retire = select_for_retire(
                -decision.n, self._pilots.get(rt.name, []), getattr(options, "overlay_killorder", "newest")
            )
            actions: list[Action] = []
            if cancel:
                actions.append(Cancel(rt.name, tuple(cancel)))
            if retire:
                kill = bool(getattr(options, "overlay_kill_running", False))
                actions.append(Retire(rt.name, tuple(retire), kill=kill))
            return tuple(actions)
        return ()

    def decide_pass(self, now: float, force: bool = False) -> list[Plan]:
        """Decide every eligible queue; record decisions; dispatch actions (unless dry-run)."""
        with self._lock:
            self._running_by_demand = None
            self._pass_demands = None
            for poller in list(self.pollers.values()):
                snap = poller.latest
                if isinstance(snap, BatchSnapshot) and self._absorbed.get(id(poller)) != snap.time:
                    self._absorb(poller, snap, now)
            self.flush(now)
            plans: list[Plan] = []
            for rt in self.queues.values():
                if rt.cascade is not None or not self._eligible(rt, now, force):
                    continue
                decision = self.decide_queue(rt, now)
                wsnap = rt.wms_poller.latest if rt.wms_poller is not None else None
                rt.last_wms_time = wsnap.time if wsnap is not None else None
                raw = wsnap.demands.get(rt.demand_key) if isinstance(wsnap, WmsSnapshot) else None
                rt.last_ready = raw.ready if raw is not None else 0
                self._decided(rt, decision, now)
                plans.append(Plan(rt.name, decision, self._actions(rt, decision, now)))
            tier_plans, summaries = self._decide_cascades(now, force)
            plans += tier_plans
            self._record_and_dispatch(plans, summaries, now)
        if self._inline and not self.dry_run:
            # a tier refused (capacity, quota, unreachable): its demand goes on in this same cycle
            for _ in range(max((len(cr.tiers) for cr in self.cascades.values()), default=0)):
                if not any(cr.redrive for cr in self.cascades.values()):
                    break
                with self._lock:
                    self._pass_demands = None
                    tier_plans, summaries = self._decide_cascades(now, force=True, only_redrive=True)
                    self._record_and_dispatch(tier_plans, summaries, now)
                plans += tier_plans
        return plans

    def _decided(self, rt: QueueRuntime, decision: Decision, now: float) -> None:
        """A queue (or tier) decided on its current batch snapshot: remember it, schedule the next."""
        bsnap = rt.batch_poller.latest
        rt.decided_once = True
        rt.last_batch_time = bsnap.time if bsnap is not None else None
        rt.next_due = now + rt.config.settings.sleep
        rt.decisions += 1
        rt.last = decision

    def _may_act(self, rt: QueueRuntime, now: float) -> bool:
        """A queue acts when it can (its backend was set up) and its target is not backing off."""
        if rt.submitter is None:
            return False
        target = self.targets.get(rt.submitter.target())
        return target is None or target.until <= now

    def _decide_cascades(
        self, now: float, force: bool, only_redrive: bool = False
    ) -> tuple[list[Plan], list[Decision]]:
        plans: list[Plan] = []
        summaries: list[Decision] = []
        for cr in self.cascades.values():
            if (cr.redrive or not only_redrive) and self._cascade_eligible(cr, now, force):
                tier_plans, summary = self._decide_cascade(cr, now)
                plans += tier_plans
                summaries.append(summary)
        return plans, summaries

    def _record_and_dispatch(self, plans: list[Plan], summaries: list[Decision], now: float) -> None:
        """Record the decisions (and cascade summaries), tell observers and monitors, act."""
        if not plans and not summaries:
            return
        try:
            ids = self.store.record_decisions(
                self.factory_id, [p.decision for p in plans] + summaries, self.dry_run
            )[: len(plans)]
        except Exception:
            log.exception("store: recording %d decisions failed", len(plans))
            ids = [None] * len(plans)
        for plan, decision_id in zip(plans, ids, strict=True):
            rt = self.queues[plan.queue]
            for observer in self.observers:
                _safe(observer.on_decision, plan, self._demand(rt, now), self.supply_of(rt, now))
            message = _label_message(plan.decision)
            for monitor in rt.monitors:
                _safe(monitor.update_label, rt.name, message)
            if not self.dry_run:
                self._dispatch(rt, plan, decision_id)

    # -- cascades ---------------------------------------------------------------------------------
    def _cascade_eligible(self, cr: CascadeRuntime, now: float, force: bool) -> bool:
        if any(rt.inflight for rt in cr.tiers):
            return False
        times: dict[str, float | None] = {}
        for rt in cr.tiers:
            snap = rt.batch_poller.latest
            times[rt.name] = snap.time if snap is not None else None
            if snap is not None and rt.last_action_done and snap.time <= rt.last_action_done:
                return False  # our last action on this tier is not visible yet
        if cr.redrive:
            return True
        if cr.decisions and times == cr.seen_batch:
            return False  # nothing new about any tier
        return force or now >= cr.next_due

    def _cascade_demand(self, cr: CascadeRuntime, now: float) -> int | None:
        for rt in cr.tiers:
            if rt.wms_poller is None:
                continue
            snap = rt.wms_poller.fresh(now)
            if not isinstance(snap, WmsSnapshot):
                return None
            demand = snap.demands.get(cr.cascade.demand)
            return demand.ready if demand is not None else 0
        return None

    def _quota_left(self, cr: CascadeRuntime, now: float) -> dict[str, int | None]:
        tiers = [t for t in cr.cascade.tiers if t.quotas]
        if not tiers:
            return {}
        with self.store.engine.connect() as conn:
            return {t.queue: ledger.remaining(conn, t.queue, t.quotas, now) for t in tiers}

    def _decide_cascade(self, cr: CascadeRuntime, now: float) -> tuple[list[Plan], Decision]:
        cr.redrive = False
        cr.decisions += 1
        cr.next_due = now + min(rt.config.settings.sleep for rt in cr.tiers)
        cr.seen_batch = {
            rt.name: (rt.batch_poller.latest.time if rt.batch_poller.latest else None) for rt in cr.tiers
        }
        demand = self._cascade_demand(cr, now)
        states: dict[str, TierState] = {}
        supplies: dict[str, Supply] = {}
        missing = [rt.name for rt in cr.tiers if not isinstance(rt.batch_poller.fresh(now), BatchSnapshot)]
        if demand is None or missing:
            why = (
                "no WMS info (missing or stale)"
                if demand is None
                else f"no batch info for {', '.join(missing)}"
            )
            return [], Decision(cr.label, 0, (Step(f"Cascade:{cr.name}", 0, 0, f"holding: {why}"),), now)
        for rt in cr.tiers:
            supply = self.supply_of(rt, now) or Supply(rt.name, time=now)
            supplies[rt.name] = supply
            states[rt.name] = tier_state(cr.tier(rt.name), supply, self._pilots.get(rt.name, []), now, cr)
        alloc = allocate(cr.cascade, demand, states, self._quota_left(cr, now), now)
        learn_capacity(cr, alloc, states)
        cr.last = alloc
        for t in alloc.tiers:
            if t.backoff_until is not None:
                cr.backoff_until[t.tier] = t.backoff_until
        for event in new_events(cr, alloc.events):
            self._event(event.kind, f"{event.tier}: {event.message}", cr.label)
        plans = []
        for t in alloc.tiers:
            rt = self.queues[t.tier]
            decision = tier_decision(alloc, t, supplies[t.tier], now)
            actions: tuple[Action, ...] = ()
            if self._may_act(rt, now):
                killorder = getattr(rt.submitter.options, "overlay_killorder", "newest")
                actions = tier_actions(t, self._pilots.get(t.tier, []), killorder)
            self._decided(rt, decision, now)
            plans.append(Plan(rt.name, decision, actions))
        return plans, cascade_decision(cr, alloc, states)

    def supply_of(self, rt: QueueRuntime, now: float) -> Supply | None:
        """A queue's pilots by state from its endpoint's fresh snapshot (None if stale or missing)."""
        snap = rt.batch_poller.fresh(now)
        if not isinstance(snap, BatchSnapshot):
            return None
        return self._supply_for(rt.batch_poller, snap)[0].get(rt.name) or Supply(rt.name, time=snap.time)

    # -- act -----------------------------------------------------------------------------------------
    def _dispatch(self, rt: QueueRuntime, plan: Plan, decision_id: int | None) -> None:
        submitter = rt.submitter
        if submitter is None:
            return
        jobs: list[Callable[[], None]] = [
            lambda a=a: self._act(rt, submitter, a, decision_id) for a in plan.actions
        ]
        if type(submitter).cleanup is not BatchSubmitPlugin.cleanup:
            pilots = tuple(self._pilots.get(rt.name, ()))
            jobs.append(lambda: self._cleanup(rt, submitter, pilots))
        for job in jobs:
            rt.inflight += 1
            if self._inline:
                job()
            else:
                self.executor.submit(submitter.target(), job)

    def _act(
        self, rt: QueueRuntime, submitter: BatchSubmitPlugin, action: Action, decision_id: int | None
    ) -> None:
        target = submitter.target()
        try:
            if isinstance(action, Submit):
                self._submit(rt, submitter, action.n, decision_id)
            elif isinstance(action, Cancel):
                submitter.cancel(action.backend_ids)
                self._event("cancel", f"cancelled {len(action.backend_ids)} idle pilots", rt.name)
            elif isinstance(action, Retire):
                submitter.retire(action.backend_ids, kill=action.kill)
                self._event("retire", f"retiring {len(action.backend_ids)} running pilots", rt.name)
            self._target_ok(target)
        except Exception as exc:
            self._target_failed(rt, target, exc)
            self._tier_failed(rt, exc)
            self._action_done(rt, changed=False)
        else:
            self._action_done(rt)

    def _submit(
        self, rt: QueueRuntime, submitter: BatchSubmitPlugin, n: int, decision_id: int | None
    ) -> None:
        now = self.clock()
        cr = self.cascades.get(rt.cascade) if rt.cascade else None
        tier = cr.tier(rt.name) if cr is not None else None
        reserve = None
        if tier is not None:
            # the quota count is written in the same transaction as the intent (crash-safe)
            def reserve(conn: Connection, intent_id: str) -> int:
                return ledger.reserve(conn, tier.queue, tier.quotas, n, now, intent_id)

        intent_id, granted = self.store.open_intent(
            self.factory_id, rt.name, n, now, decision_id, tier=tier.queue if tier else None, reserve=reserve
        )
        if granted <= 0:
            return
        if len(self._adopted) < len(self.pollers):  # only needed until every endpoint adopted
            self._my_intents.add(intent_id)
        tags = PilotTags(self.factory_id, rt.name, intent_id)
        release = None
        if tier is not None:

            def release(conn: Connection, k: int = granted) -> None:
                ledger.release(conn, intent_id, k)

        try:
            pilots = list(submitter.submit(granted, tags, now))
        except Exception as exc:
            self.store.settle_intent(
                intent_id, "failed", 0, self.clock(), error=_message(exc), release=release
            )
            raise
        if _FAULT == "crash-after-submit":
            os._exit(137)  # test hook: die like kill -9 between the backend call and the record
        done = self.clock()
        known = self._known.setdefault(id(rt.batch_poller), {})
        for pilot in pilots:
            known.setdefault((pilot.queue, pilot.backend_id), pilot)
        shortfall = None
        if tier is not None and len(pilots) < granted:

            def shortfall(conn: Connection, k: int = granted - len(pilots)) -> None:
                ledger.release(conn, intent_id, k)

        # the result: the settled intent now; the pilot rows go with the next pass's batch (the
        # backend lists them under their tags anyway, so a crash in between loses nothing)
        self.store.settle_intent(intent_id, "submitted", len(pilots), done, release=shortfall)
        if self.record_pilots:
            with self._changed_lock:
                self._changed.extend(pilots)
        if cr is not None:
            cr.last_scale_up[rt.name] = now
        log.info("queue %s: submitted %d pilots (intent %s)", rt.name, len(pilots), intent_id)
        for observer in self.observers:
            _safe(observer.on_submitted, rt.name, pilots)
        for monitor in rt.monitors:
            _safe(monitor.register_pilots, rt.name, pilots)

    def _cleanup(self, rt: QueueRuntime, submitter: BatchSubmitPlugin, pilots: Sequence[Pilot]) -> None:
        try:
            submitter.cleanup(pilots, self.clock())
        except Exception as exc:
            self._target_failed(rt, submitter.target(), exc)
        finally:
            self._action_done(rt)

    def _tier_failed(self, rt: QueueRuntime, exc: Exception) -> None:
        """A tier whose backend refused (capacity, quota) or failed is skipped for its backoff time,
        and its cascade allocates again at once so the demand moves on."""
        cr = self.cascades.get(rt.cascade) if rt.cascade else None
        if cr is None:
            return
        now = self.clock()
        until = backoff_after_error(cr.tier(rt.name), now)
        cr.backoff_until[rt.name] = until
        cr.redrive = True
        kind = "capacity" if isinstance(exc, BackendError) and exc.capacity else "failure"
        self._event(
            "backoff",
            f"tier {rt.name} backed off until {until:.0f} after a {kind}: {_message(exc)}",
            cr.label,
        )

    def _action_done(self, rt: QueueRuntime, changed: bool = True) -> None:
        rt.inflight -= 1
        if changed:
            rt.last_action_done = self.clock()
        thread = self._threads.get(id(rt.batch_poller))
        if thread is not None:
            thread.kick.set()  # poll soon so the next decision sees what we did
        with self._wake:
            self._wake.notify_all()

    def _target_ok(self, target: str) -> None:
        state = self.targets.get(target)
        if state is not None and state.failures:
            self._event("recovered", f"{target}: actions succeed again")
            self.targets.pop(target, None)

    def _target_failed(self, rt: QueueRuntime, target: str, exc: Exception) -> None:
        state = self.targets[target]
        state.failures += 1
        state.error = _message(exc)
        backoff = min(rt.config.settings.sleep * (2 ** min(state.failures - 1, 10)), 3600.0)
        state.until = self.clock() + backoff
        log.error(
            "queue %s: action on %s failed (%d in a row), backing off %.0fs: %s",
            rt.name,
            target,
            state.failures,
            backoff,
            state.error,
        )
        self._event("action-failed", f"{target}: {state.error} (backing off {backoff:.0f}s)", rt.name)
        for observer in self.observers:
            _safe(observer.on_action_failed, rt.name, target, state.error)

    def _event(self, kind: str, message: str, queue: str | None = None) -> None:
        try:
            self.store.add_event(self.factory_id, self.clock(), kind, message, queue)
        except Exception:
            log.exception("store: cannot record event %s", kind)

    # -- driving -------------------------------------------------------------------------------------
    def step(self, now: float | None = None, poll_all: bool = False) -> list[Plan]:
        """One synchronous cycle: poll due (or all) endpoints, decide, act inline."""
        now = self.clock() if now is None else now
        # batch status first: a WMS that models pilots taking jobs reads it
        for poller in sorted(self.pollers.values(), key=lambda p: p.kind != "batchstatus"):
            if poll_all or poller.due(now):
                poller.poll_once(now)
        plans = self.decide_pass(now, force=poll_all)
        return plans

    def start(self) -> None:
        """Start the daemon machinery (poller threads, executor)."""
        self._inline = False
        self._start_poller_threads()
        queues = list(self.queues)
        for observer in self.observers:
            _safe(observer.on_start, self.factory_id, queues)
        for section, monitor in self.monitors.items():
            names = [r.name for r in self.queues.values() if monitor in r.monitors]
            _safe(monitor.register_factory, names)
            log.debug("monitor %s registered for %d queues", section, len(names))

    def _start_poller_threads(self) -> None:
        for poller in self.pollers.values():
            if id(poller) not in self._threads:
                thread = PollerThread(poller, self.clock)
                self._threads[id(poller)] = thread
                thread.start()

    def run(self, cycles: int | None = None, first_poll_timeout: float = 60.0) -> None:
        """The daemon loop. ``cycles``: stop once every queue has decided that many times."""
        self.start()
        self._wait_first_polls(first_poll_timeout)
        try:
            while not self._stopping.is_set():
                self._handle_reload_requests()
                began = self.clock()
                plans = self.decide_pass(began)
                if plans:
                    duration = self.clock() - began
                    for observer in self.observers:
                        _safe(observer.on_cycle, duration, len(plans), began)
                    self._write_status(began)
                self._prune(began)
                if (
                    cycles is not None
                    and self.queues
                    and all(r.decisions >= cycles for r in self.queues.values())
                ):
                    self.executor.wait_idle(timeout=120)
                    break
                with self._wake:
                    self._wake.wait(timeout=self._next_wait(self.clock()))
        finally:
            self.shutdown()

    def _prune(self, now: float) -> None:
        """Once an hour: forget history older than ``store.keepdays`` (the store must not grow forever)."""
        if now < self._next_prune:
            return
        self._next_prune = now + 3600
        try:
            removed = self.store.prune(self.factory_id, now - self.config.settings.store_keepdays * 86400)
            if removed:
                log.info("store: pruned %d old rows", removed)
        except Exception:
            log.exception("store: pruning failed")

    def _wait_first_polls(self, timeout: float) -> None:
        """Bounded wait (stop-aware) for every endpoint's first answer, as APF waited for info."""
        deadline = self.clock() + timeout
        with self._wake:
            while not self._stopping.is_set() and self.clock() < deadline:
                if all(p.status.polls > 0 for p in self.pollers.values()):
                    return
                self._wake.wait(timeout=0.2)

    def _next_wait(self, now: float) -> float:
        if not self.queues:
            return 1.0
        soonest = min(r.next_due for r in self.queues.values())
        return min(max(soonest - now, 0.05), 1.0)

    def stop(self) -> None:
        self._stopping.set()
        with self._wake:
            self._wake.notify_all()

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    def request_reload(self, load: Callable[[], FactoryConfig | None]) -> None:
        """Ask the loop to reload between passes (safe to call from a signal handler)."""
        self._reload_requests.append(load)
        with self._wake:
            self._wake.notify_all()

    def _handle_reload_requests(self) -> None:
        while self._reload_requests:
            load = self._reload_requests.pop(0)
            try:
                config = load()
            except Exception as exc:  # a bad reload keeps the running config
                config = None
                log.error("reload failed, keeping the running configuration: %s", exc)
            if config is None:
                log.error("reload: the new configuration is invalid; keeping the running configuration")
                self._event("reload-failed", "configuration invalid; the running configuration is kept")
                continue
            self.reload(config)

    def reload(self, config: FactoryConfig) -> None:
        """Swap in a new, already validated config; only changed queues are rebuilt."""
        with self._lock:
            before = {n: r.config.fingerprint() for n, r in self.queues.items()}
            self.config = config
            self.ctx = self._context(config)
            self._build(config)
            after = {n: r.config.fingerprint() for n, r in self.queues.items()}
        added = sorted(set(after) - set(before))
        removed = sorted(set(before) - set(after))
        changed = sorted(n for n in set(before) & set(after) if before[n] != after[n])
        self._event(
            "reload",
            f"config reloaded: added {added or '-'}, removed {removed or '-'}, changed {changed or '-'}",
        )
        log.info("config reloaded: added %s, removed %s, changed %s", added, removed, changed)

    def shutdown(self) -> None:
        for thread in self._threads.values():
            thread.stop()
        self.executor.shutdown(wait=True, timeout=30)
        self.flush()
        for thread in self._threads.values():
            thread.join(timeout=5)
        for runtime in self.queues.values():
            self._close_submitter(runtime)
        for poller in self.pollers.values():
            poller.close()
        for monitor in self.monitors.values():
            _safe(monitor.close)
        for observer in self.observers:
            _safe(observer.on_stop)

    # -- status for operators --------------------------------------------------------------------
    def status(self, now: float | None = None) -> dict[str, object]:
        now = self.clock() if now is None else now
        return {
            "factory": self.factory_id,
            "time": now,
            "metrics": self.metrics_url,
            "pollers": {p.label: _poller_state(p, now) for p in self.pollers.values()},
            "targets": {
                t: f"backing off for {max(0.0, s.until - now):.0f}s after: {s.error}"
                for t, s in self.targets.items()
                if s.failures
            },
            "queues": {
                r.name: {
                    "error": r.error,
                    "decisions": r.decisions,
                    "inflight": r.inflight,
                    "batch": r.batch_poller.label,
                    "wms": r.wms_poller.label if r.wms_poller else None,
                }
                for r in self.queues.values()
            },
            "cascades": {
                c.name: {
                    "backoff_until": {t: u for t, u in c.backoff_until.items() if u > now},
                    "last": c.last.as_dict() if c.last is not None else None,
                }
                for c in self.cascades.values()
            },
        }

    def _write_status(self, now: float) -> None:
        """The daemon's state for ``apf status``, at most every few seconds (it lists every queue)."""
        if now < self._next_status:
            return
        self._next_status = now + STATUS_INTERVAL
        path = status_path(self.config)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(self.status(now)))
            os.replace(tmp, path)
        except OSError:
            log.debug("cannot write %s", path, exc_info=True)


def _poller_state(poller: Poller, now: float) -> str:
    state = poller.state(now)
    transport = getattr(poller.plugin, "transport", None)  # SSH targets say whether they back off
    if transport is not None and callable(getattr(transport, "state", None)):
        tstate = transport.state()
        if tstate and tstate != "ok":
            state += f" (transport: {tstate})"
    return state


def status_path(config: FactoryConfig) -> Path:
    return config.settings.state_path / f"status-{config.factory_id}.json"


def _label_message(decision: Decision) -> str:
    """APF's monitor message: one ``Name:in=..,out=..`` item per step, ';'-joined."""
    return ";".join(f"{s.plugin}:in={s.n_in},ret={s.n_out}" for s in decision.steps)


def _pilot_from_row(row: dict[str, object]) -> Pilot:
    return Pilot(
        backend_id=str(row["backend_id"]),
        queue=str(row["queue"]),
        state=PilotState(str(row["state"])),
        intent_id=row["intent_id"],  # type: ignore[arg-type]
        submitted_at=row["submitted_at"],  # type: ignore[arg-type]
        started_at=row["started_at"],  # type: ignore[arg-type]
        ended_at=row["ended_at"],  # type: ignore[arg-type]
        instance_id=row["instance_id"],  # type: ignore[arg-type]
        node=row["node"],  # type: ignore[arg-type]
        tier=row["tier"],  # type: ignore[arg-type]
        exit_code=row["exit_code"],  # type: ignore[arg-type]
    )


def _with_state(pilot: Pilot, state: PilotState) -> Pilot:
    from dataclasses import replace

    return replace(pilot, state=state)


def _message(exc: Exception) -> str:
    if isinstance(exc, BackendError):
        return str(exc)
    return (str(exc) or type(exc).__name__).splitlines()[0][:500]


def _short(key: Hashable) -> str:
    text = str(key)
    return text if len(text) <= 80 else text[:77] + "..."


def _safe(fn: Callable[..., object], *args: object) -> None:
    try:
        fn(*args)
    except Exception:
        log.exception("observer %s failed", getattr(fn, "__qualname__", fn))
