"""The nouns of the factory (see DESIGN.md section 3).

Everything here is plain immutable data: pollers produce it, the pure decision code reads it,
the executor and store persist it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum


class PilotState(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    HELD = "held"
    RETIRING = "retiring"
    RETIRED = "retired"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"
    UNKNOWN = "unknown"

    @property
    def active(self) -> bool:
        """Counts against caps: the pilot holds or may soon hold a resource."""
        return self in _ACTIVE

    @property
    def final(self) -> bool:
        return self in _FINAL


_ACTIVE = frozenset(
    {PilotState.PENDING, PilotState.RUNNING, PilotState.HELD, PilotState.RETIRING, PilotState.RETIRED}
)
_FINAL = frozenset({PilotState.DONE, PilotState.FAILED, PilotState.CANCELLED})


class SiteStatus(StrEnum):
    ONLINE = "online"
    TEST = "test"
    OFFLINE = "offline"
    BROKEROFF = "brokeroff"


@dataclass(frozen=True, slots=True)
class PilotTags:
    """What every pilot carries so the factory can find and adopt it: factory, queue, intent."""

    factory_id: str
    queue: str
    intent_id: str

    def job_name(self) -> str:
        """A compact form for backends with one free-text field (Slurm job name, comment)."""
        return f"apf:{self.factory_id}:{self.queue}:{self.intent_id}"

    @staticmethod
    def parse_job_name(text: str) -> PilotTags | None:
        if not text.startswith("apf:"):
            return None
        # queue names may contain ':'; the intent id never does, so split from the right
        _, factory_id, rest = text.split(":", 2)
        queue, sep, intent_id = rest.rpartition(":")
        if not sep or not queue or not intent_id:
            return None
        return PilotTags(factory_id, queue, intent_id)


@dataclass(frozen=True, slots=True)
class Pilot:
    """One unit of capacity the factory created, as a backend reports it."""

    backend_id: str
    queue: str
    state: PilotState
    intent_id: str | None = None
    submitted_at: float | None = None
    started_at: float | None = None
    ended_at: float | None = None
    instance_id: str | None = None
    node: str | None = None
    tier: str | None = None
    exit_code: int | None = None


@dataclass(frozen=True, slots=True)
class Demand:
    """Per WMS queue: what the workload system says is waiting and running."""

    wmsqueue: str
    ready: int = 0
    notready: int = 0
    running: int = 0
    done: int = 0
    failed: int = 0
    site_status: str | None = None
    time: float = 0.0


@dataclass(frozen=True, slots=True)
class Supply:
    """Per factory queue: the pilots it has, by state."""

    queue: str
    pending: int = 0
    running: int = 0
    held: int = 0
    retiring: int = 0
    done: int = 0
    failed: int = 0
    unknown: int = 0
    time: float = 0.0
    oldest_pending_since: float | None = None

    @property
    def active(self) -> int:
        """Pilots that hold or wait for a resource (APF's P + R, with held counted as pending)."""
        return self.pending + self.running + self.held + self.retiring


@dataclass(frozen=True, slots=True)
class WmsSnapshot:
    """What one WMS poll returned. ``ok`` False means no fresh information (never 'zero jobs')."""

    time: float
    demands: Mapping[str, Demand]
    ok: bool = True
    error: str | None = None


@dataclass(frozen=True, slots=True)
class BatchSnapshot:
    """All pilots of this factory at one batch endpoint, at poll start time ``time``."""

    time: float
    pilots: tuple[Pilot, ...]
    ok: bool = True
    error: str | None = None


@dataclass(frozen=True, slots=True)
class ThrottleHistory:
    """Recently started pilots of a queue, for the Throttle plugin."""

    total: int
    short: int


@dataclass(frozen=True, slots=True)
class Step:
    plugin: str
    n_in: int
    n_out: int
    reason: str

    def as_dict(self) -> dict[str, object]:
        return {"plugin": self.plugin, "in": self.n_in, "out": self.n_out, "reason": self.reason}


@dataclass(frozen=True, slots=True)
class Decision:
    """The chain's result for one queue."""

    queue: str
    n: int
    steps: tuple[Step, ...]
    time: float
    ready: int | None = None
    pending: int | None = None
    running: int | None = None

    @property
    def binding(self) -> str | None:
        """The last plugin that changed the number: the constraint that bound the decision."""
        for step in reversed(self.steps):
            if step.n_in != step.n_out:
                return step.plugin
        return None

    def as_dict(self) -> dict[str, object]:
        return {"n": self.n, "steps": [s.as_dict() for s in self.steps]}


@dataclass(frozen=True, slots=True)
class Submit:
    queue: str
    n: int


@dataclass(frozen=True, slots=True)
class Cancel:
    """Remove pilots that have not started."""

    queue: str
    backend_ids: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Retire:
    """Drain running pilots (peaceful), or remove them when ``kill`` is set."""

    queue: str
    backend_ids: tuple[str, ...]
    kill: bool = False


Action = Submit | Cancel | Retire


@dataclass(frozen=True, slots=True)
class Plan:
    queue: str
    decision: Decision
    actions: tuple[Action, ...] = field(default_factory=tuple)
