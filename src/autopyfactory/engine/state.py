"""Runtime state of the engine: the queues, cascades, pollers and targets it runs, and the small
decision memory the planner reads.

Ownership (docs/internals.md): everything here is written by the decision loop's thread only.
Poller threads write their own ``Poller`` (snapshot, poll state) and nothing else; action threads
write nothing here: they report through ``Completion`` objects that the loop applies.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass, field, replace

from autopyfactory.config.models import FactoryConfig, QueueConfig
from autopyfactory.config.policy import Cascade, Tier
from autopyfactory.decide.base import SchedPlugin
from autopyfactory.decide.cancel_settings import CancelSettings
from autopyfactory.decide.policy import CascadeAllocation
from autopyfactory.engine.pollers import Poller
from autopyfactory.model import Decision, Pilot
from autopyfactory.plugins.base import BatchSubmitPlugin, MonitorPlugin
from autopyfactory.plugins.options import SubmitOptions


@dataclass(frozen=True, slots=True)
class QueueMemory:
    """What the planner remembers of one queue between passes (replaced, never mutated)."""

    decided_once: bool = False
    # the batch snapshot it last decided on (APF: never decide twice on one snapshot)
    last_batch_time: float | None = None
    # the WMS snapshot and its raw ready count at that decision (demand changed: decide at once)
    last_wms_time: float | None = None
    last_ready: int | None = None
    # when its last action finished (a decision waits until the batch status shows it)
    last_action_done: float = 0.0
    next_due: float = 0.0
    decisions: int = 0
    # actions dispatched and not yet completed (the queue does not decide meanwhile)
    inflight: int = 0
    last: Decision | None = None


@dataclass
class QueueRuntime:
    """One configured queue: its plugins, the pollers it reads, and its decision memory."""

    config: QueueConfig
    sched: tuple[SchedPlugin, ...]
    batch_poller: Poller
    wms_poller: Poller | None
    submitter: BatchSubmitPlugin | None
    # why the queue cannot act (its backend could not be set up); it still decides and reports
    error: str | None = None
    monitors: tuple[MonitorPlugin, ...] = ()
    # key of this queue's Demand in its WMS snapshot (the wmsqueue, or a filtered variant)
    demand_key: str = ""
    # APF's retire keys, read once from the submit plugin's options (None: it cannot act)
    retire: SubmitOptions | None = None
    # auth profiles the queue's plugins use (a dead credential stops its submissions)
    credentials: tuple[str, ...] = ()
    # the cascade this queue is a tier of: the cascade's allocation replaces its own chain
    cascade: str | None = None
    memory: QueueMemory = field(default_factory=QueueMemory)
    # (interval, maxtime) when a scheduler plugin reads the pilot history (Throttle)
    history_window: tuple[float, float] | None = field(init=False, default=None)
    # idle cancellation keys (cancel.*), read once
    cancel: CancelSettings = field(init=False, default_factory=CancelSettings)

    def __post_init__(self) -> None:
        self.history_window = next((w for w in (s.history_window() for s in self.sched) if w), None)
        self.cancel = self.config.settings.cancel

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def last(self) -> Decision | None:
        return self.memory.last

    @property
    def decisions(self) -> int:
        return self.memory.decisions

    @property
    def inflight(self) -> int:
        return self.memory.inflight


@dataclass
class CascadeRuntime:
    """One cascade: its tiers (queue runtimes, in fill order) and the memory its allocation reads.

    The planner works on a copy (``copy_memory``) and the loop keeps the copy it returns."""

    cascade: Cascade
    tiers: list[QueueRuntime]
    next_due: float = 0.0
    seen_batch: dict[str, float | None] = field(default_factory=dict)
    backoff_until: dict[str, float] = field(default_factory=dict)
    # running pilots of a tier when it last counted as full (its observed capacity)
    capacity_hint: dict[str, int] = field(default_factory=dict)
    last_scale_up: dict[str, float] = field(default_factory=dict)
    redrive: bool = False  # a tier failed this cycle: allocate again at once
    last: CascadeAllocation | None = None
    last_event_keys: frozenset[tuple[str, str]] = frozenset()
    decisions: int = 0

    @property
    def name(self) -> str:
        return self.cascade.name

    @property
    def label(self) -> str:
        """How the cascade appears among queue names in the store (``apf explain``)."""
        return f"cascade:{self.cascade.name}"

    def tier(self, queue: str) -> Tier:
        return self.cascade.tier(queue)

    def copy_memory(self) -> CascadeRuntime:
        """A copy whose memory can be changed without touching this one (tiers are shared)."""
        return replace(
            self,
            seen_batch=dict(self.seen_batch),
            backoff_until=dict(self.backoff_until),
            capacity_hint=dict(self.capacity_hint),
            last_scale_up=dict(self.last_scale_up),
        )

    def keep_memory(self, other: CascadeRuntime) -> None:
        """Take the memory of ``other`` (a planned copy, or the runtime before a reload)."""
        self.next_due = other.next_due
        self.seen_batch = other.seen_batch
        self.backoff_until = other.backoff_until
        self.capacity_hint = other.capacity_hint
        self.last_scale_up = other.last_scale_up
        self.redrive = other.redrive
        self.last = other.last
        self.last_event_keys = other.last_event_keys
        self.decisions = other.decisions


@dataclass
class TargetState:
    """A target (one Slurm head node, one CE, one cloud region) whose actions failed."""

    failures: int = 0
    until: float = 0.0
    error: str | None = None


@dataclass
class EngineState:
    """Everything the loop's stages share. Built by ``build``, rebuilt on reload."""

    config: FactoryConfig
    queues: dict[str, QueueRuntime] = field(default_factory=dict)
    pollers: dict[Hashable, Poller] = field(default_factory=dict)
    cascades: dict[str, CascadeRuntime] = field(default_factory=dict)
    targets: dict[str, TargetState] = field(default_factory=dict)
    monitors: dict[str, MonitorPlugin] = field(default_factory=dict)
    # each queue's pilots as its batch endpoint last reported them (plus our fresh submissions)
    pilots: dict[str, tuple[Pilot, ...]] = field(default_factory=dict)
    # intents this process opened and has not settled (adoption must not settle them)
    my_intents: set[str] = field(default_factory=set)
    # queues that could not be built at all (a status plugin failed to start), with why
    built_failed: dict[str, str] = field(default_factory=dict)
    # queues left out before the factory was built (their start-up checks failed), with why
    excluded: dict[str, str] = field(default_factory=dict)

    @property
    def failed(self) -> dict[str, str]:
        """Every queue that is configured but does not run, with why."""
        return {**self.excluded, **self.built_failed}

    @property
    def factory_id(self) -> str:
        return self.config.factory_id
