"""The observe stage: from what the pollers last saw (and the quota ledger), one immutable
``Snapshot`` per pass, the only input of the planner besides config and memory.

Nothing here calls a backend: the pollers already did, on their threads. The only I/O is one read
of the quota ledger per pass, and only when a cascade with quotas is due.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Protocol

from autopyfactory.decide.share import split_demands
from autopyfactory.decide.supply import aggregate
from autopyfactory.engine.pollers import Poller
from autopyfactory.engine.snapshot import CascadeObservation, QueueObservation, QueueTimes, Snapshot
from autopyfactory.engine.state import CascadeRuntime, EngineState, QueueRuntime
from autopyfactory.model import (
    BatchSnapshot,
    Demand,
    Pilot,
    Supply,
    ThrottleHistory,
    WmsSnapshot,
)
from autopyfactory.plugins.base import WmsStatusPlugin
from autopyfactory.store.api import StoreError

if TYPE_CHECKING:
    from autopyfactory.config.policy import Tier

# pilots each tier may still start under its quotas (the store's ledger, or an embedder's count)
QuotaReader = Callable[[Sequence["Tier"], float], dict[str, int | None]]


class CredentialGate(Protocol):
    """What the engine asks the credential manager before a queue acts (any thread may ask)."""

    def gate(self, profile_names: Iterable[str], now: float | None = None) -> str | None:
        """Why a queue using these profiles must not submit now (expired, failing), or None."""
        ...


class SnapshotBuilder:
    """Builds snapshots; caches per-endpoint aggregates by snapshot time (10,000 queues share few)."""

    def __init__(
        self, state: EngineState, quota_left: QuotaReader, credentials: CredentialGate | None = None
    ) -> None:
        self.state = state
        self.quota_left = quota_left
        self.credentials = credentials
        self._supply: dict[int, tuple[float, dict[str, Supply], int]] = {}

    def forget(self, pollers: Iterable[Poller]) -> None:
        """Drop caches of pollers that no longer exist (reload)."""
        for poller in pollers:
            self._supply.pop(id(poller), None)

    # -- cheap per-queue facts ----------------------------------------------------------------------
    @staticmethod
    def times(rt: QueueRuntime) -> QueueTimes:
        bsnap = rt.batch_poller.latest
        wsnap = rt.wms_poller.latest if rt.wms_poller is not None else None
        raw = wsnap.demands.get(rt.demand_key) if isinstance(wsnap, WmsSnapshot) else None
        return QueueTimes(
            bsnap.time if bsnap is not None else None,
            wsnap.time if wsnap is not None else None,
            raw.ready if raw is not None else (0 if wsnap is not None else None),
        )

    # -- the snapshot -------------------------------------------------------------------------------
    def snapshot(
        self,
        now: float,
        queues: Sequence[QueueRuntime],
        cascades: Sequence[CascadeRuntime],
        targets_blocked: Mapping[str, str],
    ) -> Snapshot:
        """Observations for the queues and cascades that are due (tiers included)."""
        wanted = list(queues) + [rt for cr in cascades for rt in cr.tiers]
        demands = self._demands(now, wanted)
        observed: dict[str, QueueObservation] = {}
        for rt in wanted:
            if rt.name not in observed:
                observed[rt.name] = self._queue(rt, now, demands.get(rt.name), targets_blocked)
        return Snapshot(
            now,
            observed,
            self._cascades(now, cascades),
            self.state.config.settings.maxperfactory_maximum,
        )

    def supply_of(self, rt: QueueRuntime, now: float) -> Supply | None:
        """A queue's pilots by state from its endpoint's fresh snapshot (None if stale or missing)."""
        snap = rt.batch_poller.fresh(now)
        if not isinstance(snap, BatchSnapshot):
            return None
        return self._supplies(rt.batch_poller, snap)[0].get(rt.name) or Supply(rt.name, time=snap.time)

    def _supplies(self, poller: Poller, snap: BatchSnapshot) -> tuple[dict[str, Supply], int]:
        cached = self._supply.get(id(poller))
        if cached is not None and cached[0] == snap.time:
            return cached[1], cached[2]
        supplies = aggregate(snap.pilots, snap.time)
        total = sum(s.active for s in supplies.values())
        self._supply[id(poller)] = (snap.time, supplies, total)
        return supplies, total

    def _queue(
        self, rt: QueueRuntime, now: float, demand: Demand | None, targets_blocked: Mapping[str, str]
    ) -> QueueObservation:
        snap = rt.batch_poller.fresh(now)
        supply: Supply | None = None
        factory_active: int | None = None
        if isinstance(snap, BatchSnapshot):
            supplies, factory_active = self._supplies(rt.batch_poller, snap)
            supply = supplies.get(rt.name) or Supply(rt.name, time=snap.time)
        pilots = self.state.pilots.get(rt.name, ())
        blocked = None
        if rt.submitter is None:
            blocked = rt.error or "its backend could not be set up"
        else:
            blocked = targets_blocked.get(rt.submitter.target())
        credential = None
        if rt.credentials and self.credentials is not None:
            credential = self.credentials.gate(rt.credentials, now)
        return QueueObservation(
            demand, supply, pilots, factory_active, _history(rt, pilots, now), blocked, credential
        )

    def _demands(self, now: float, queues: Sequence[QueueRuntime]) -> dict[str, Demand | None]:
        """Each queue's part of its WMS demand: fresh snapshots only, adjusted by the WMS plugin
        when it models pilots taking jobs, then split between the queues that serve one demand.
        Splitting needs every queue of a demand key, due or not."""
        wanted = {rt.demand_key for rt in queues if rt.wms_poller is not None}
        out: dict[str, Demand | None] = {rt.name: None for rt in queues if rt.wms_poller is None}
        groups: dict[int, list[QueueRuntime]] = defaultdict(list)
        for rt in self.state.queues.values():
            if rt.wms_poller is not None and rt.demand_key in wanted:
                groups[id(rt.wms_poller)].append(rt)
        running: dict[str, int] | None = None
        for members in groups.values():
            poller = members[0].wms_poller
            assert poller is not None
            snap = poller.fresh(now)
            if not isinstance(snap, WmsSnapshot):
                out.update(dict.fromkeys((r.name for r in members), None))
                continue
            plugin = poller.plugin
            adjusting = plugin if isinstance(plugin, WmsStatusPlugin) and plugin.adjusts_demand else None
            by_key: dict[str, list[QueueRuntime]] = defaultdict(list)
            for rt in members:
                by_key[rt.demand_key].append(rt)
            for key, serving in by_key.items():
                demand = snap.demands.get(key) or Demand(key, time=snap.time)
                if adjusting is not None:
                    running = self._running_by_demand() if running is None else running
                    demand = adjusting.at_decision(demand, running.get(key, 0))
                if len(serving) == 1:  # the common case: one queue, the whole demand
                    out[serving[0].name] = demand
                else:
                    out.update(
                        split_demands({key: demand}, [r.config for r in serving], key_of=lambda _q, k=key: k)
                    )
        return out

    def _running_by_demand(self) -> dict[str, int]:
        """Running pilots of every queue serving each demand (a simulated WMS's jobs they took)."""
        totals: dict[str, int] = defaultdict(int)
        for rt in self.state.queues.values():
            snap = rt.batch_poller.latest
            if isinstance(snap, BatchSnapshot):
                supply = self._supplies(rt.batch_poller, snap)[0].get(rt.name)
                totals[rt.demand_key] += supply.running if supply else 0
        return totals

    def _cascades(self, now: float, cascades: Sequence[CascadeRuntime]) -> dict[str, CascadeObservation]:
        out: dict[str, CascadeObservation] = {}
        quota_tiers = [(cr, t) for cr in cascades for t in cr.cascade.tiers if t.quotas]
        quota_left: dict[str, int | None] = {}
        store_error = None
        if quota_tiers:
            try:
                quota_left = self.quota_left([t for _, t in quota_tiers], now)
            except StoreError as exc:
                store_error = str(exc)
        for cr in cascades:
            missing = tuple(
                rt.name for rt in cr.tiers if not isinstance(rt.batch_poller.fresh(now), BatchSnapshot)
            )
            left = {t.queue: quota_left.get(t.queue) for t in cr.cascade.tiers if t.quotas}
            out[cr.name] = CascadeObservation(
                _cascade_demand(cr, now),
                left,
                missing,
                store_error if any(t.quotas for t in cr.cascade.tiers) else None,
            )
        return out


def _cascade_demand(cr: CascadeRuntime, now: float) -> int | None:
    for rt in cr.tiers:
        if rt.wms_poller is None:
            continue
        snap = rt.wms_poller.fresh(now)
        if not isinstance(snap, WmsSnapshot):
            return None
        demand = snap.demands.get(cr.cascade.demand)
        return demand.ready if demand is not None else 0
    return None


def _history(rt: QueueRuntime, pilots: Sequence[Pilot], now: float) -> ThrottleHistory | None:
    """Recently started pilots for the scheduler plugins that read them (Throttle)."""
    window = rt.history_window
    if window is None:
        return None
    interval, maxtime = window
    total = short = 0
    for p in pilots:
        if p.started_at is not None and p.started_at > now - interval:
            total += 1
            if p.ended_at is not None and p.ended_at - p.started_at < maxtime:
                short += 1
    return ThrottleHistory(total, short)
