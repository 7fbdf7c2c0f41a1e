"""What the planner sees: the observed snapshot of one pass, as plain frozen data.

Apart from ``observe`` (which builds it from the pollers, the store and the credential manager) so
that the planner's imports reach no store, database driver or subprocess."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from autopyfactory.model import Demand, Pilot, Supply, ThrottleHistory


@dataclass(frozen=True, slots=True)
class QueueTimes:
    """The cheap facts that say whether a queue is due (read for every queue, every pass)."""

    batch_time: float | None  # the latest batch snapshot, fresh or not
    wms_time: float | None
    raw_ready: int | None  # the whole ready count of its demand key in that WMS snapshot


@dataclass(frozen=True, slots=True)
class QueueObservation:
    """What the planner sees of one queue. ``None`` means missing or stale (older than maxage)."""

    demand: Demand | None
    supply: Supply | None
    pilots: tuple[Pilot, ...]
    # active pilots of every queue at the same batch endpoint (MaxPerFactory)
    factory_active: int | None
    history: ThrottleHistory | None
    # why the queue may not act now (no backend, target backing off); it still decides
    blocked: str | None = None
    # why its credential stops submissions (binding constraint "Credential")
    credential: str | None = None


@dataclass(frozen=True, slots=True)
class CascadeObservation:
    demand: int | None  # ready count of the cascade's demand; None when missing or stale
    quota_left: Mapping[str, int | None]
    missing_batch: tuple[str, ...]  # tiers without fresh batch status
    store_error: str | None = None  # the quota ledger could not be read


@dataclass(frozen=True)
class Snapshot:
    time: float
    queues: Mapping[str, QueueObservation]
    cascades: Mapping[str, CascadeObservation]
    factory_max: int | None = None
