"""``batchstatusplugin = Condor``: this factory's pilots in one schedd, one query per poll.

The query is constrained to pilots tagged with this factory's id (``APF_FACTORY_ID``, compared
case-sensitively with ``=?=``) and projected to the attributes read below; with
``batchstatus.condor.legacy = True`` it also takes untagged pilots that carry ``MATCH_APF_QUEUE``
(pilots an AutoPyFactory 2.x submitted, for a switch-over). It never scans the whole schedd.

JobStatus mapping (APF's ``mappings.conf`` with the held state kept apart; the scheduler chain
counts held as pending, as APF does):

====  ====================  ============================================================
code  HTCondor              pilot state
====  ====================  ============================================================
0     Unexpanded            pending
1     Idle                  pending
2     Running               running (``retiring`` once we sent ``condor_off``: APF_RETIRING)
3     Removed               cancelled (APF: done)
4     Completed             done, or failed when ExitCode is non-zero (APF: done)
5     Held                  held
6     Transferring output   running
7     Suspended             held: the pilot keeps its claim and may resume, so it is counted
                            with the pending ones (APF ignored it, which let a queue submit
                            replacements for capacity that comes back)
====  ====================  ============================================================

Any other value becomes ``unknown`` with a warning. Queues on the same schedd and collector
share one poller (``endpoint``). Staleness is the engine's: ``batchstatus.condor.maxage`` in
[Factory], as in APF.
"""

from __future__ import annotations

import logging
from collections.abc import Hashable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from pydantic import Field

from autopyfactory.model import BatchSnapshot, Pilot, PilotState, ThrottleHistory
from autopyfactory.plugins.base import BatchStatusPlugin, FactoryContext
from autopyfactory.plugins.batch.condor.schedd import ScheddApi, ScheddKeys, attr_value, connect, quote
from autopyfactory.plugins.keys import HTCONDOR, NeedsModules

if TYPE_CHECKING:
    from autopyfactory.config.models import QueueConfig

log = logging.getLogger(__name__)

JOB_STATES: Mapping[int, PilotState] = {
    0: PilotState.PENDING,
    1: PilotState.PENDING,
    2: PilotState.RUNNING,
    3: PilotState.CANCELLED,
    4: PilotState.DONE,
    5: PilotState.HELD,
    6: PilotState.RUNNING,
    7: PilotState.HELD,
}

PROJECTION: tuple[str, ...] = (
    "ClusterId",
    "ProcId",
    "JobStatus",
    "MATCH_APF_QUEUE",
    "APF_INTENT_ID",
    "APF_RETIRING",
    "QDate",
    "EnteredCurrentStatus",
    "JobCurrentStartDate",
    "JobStartDate",
    "CompletionDate",
    "ExitCode",
    "EC2InstanceName",
    "RemoteHost",
)


class CondorStatusOptions(ScheddKeys):
    legacy: bool = Field(False, description="also count untagged pilots that carry MATCH_APF_QUEUE")


def factory_constraint(factory_id: str, legacy: bool = False) -> str:
    """This factory's pilots, and nothing else."""
    mine = f"APF_FACTORY_ID =?= {quote(factory_id)}"
    if legacy:
        return f"({mine}) || (APF_FACTORY_ID =?= undefined && MATCH_APF_QUEUE =!= undefined)"
    return mine


def job_state(status: Any, exit_code: Any = None, retiring: bool = False) -> PilotState:
    try:
        code = int(status)
    except (TypeError, ValueError):
        return PilotState.UNKNOWN
    state = JOB_STATES.get(code, PilotState.UNKNOWN)
    if state is PilotState.RUNNING and retiring:
        return PilotState.RETIRING
    if state is PilotState.DONE and exit_code not in (None, 0):
        return PilotState.FAILED
    return state


def _num(value: Any) -> float | None:
    try:
        return float(value) if value is not None and float(value) > 0 else None
    except (TypeError, ValueError):
        return None


def pilot_from_ad(ad: Mapping[str, Any]) -> Pilot | None:
    """One job ad as a Pilot; None when the ad is not an APF pilot (no queue or job id)."""
    queue = attr_value(ad, "MATCH_APF_QUEUE")
    cluster, proc = attr_value(ad, "ClusterId"), attr_value(ad, "ProcId")
    if not queue or cluster is None or proc is None:
        return None
    status = attr_value(ad, "JobStatus")
    exit_code = attr_value(ad, "ExitCode")
    state = job_state(status, exit_code, retiring=attr_value(ad, "APF_RETIRING") is not None)
    if state is PilotState.UNKNOWN:
        log.warning("job %s.%s of queue %s has unknown JobStatus %r", cluster, proc, queue, status)
    started = _num(attr_value(ad, "JobCurrentStartDate")) or _num(attr_value(ad, "JobStartDate"))
    if started is None and state in (PilotState.RUNNING, PilotState.RETIRING):
        started = _num(attr_value(ad, "EnteredCurrentStatus"))
    ended = None
    if state.final:
        ended = _num(attr_value(ad, "CompletionDate")) or _num(attr_value(ad, "EnteredCurrentStatus"))
    intent = attr_value(ad, "APF_INTENT_ID")
    instance = attr_value(ad, "EC2InstanceName")
    node = attr_value(ad, "RemoteHost")
    return Pilot(
        backend_id=f"{int(cluster)}.{int(proc)}",
        queue=str(queue),
        state=state,
        intent_id=str(intent) if intent else None,
        submitted_at=_num(attr_value(ad, "QDate")),
        started_at=started,
        ended_at=ended,
        instance_id=str(instance) if instance else None,
        node=str(node) if node else None,
        exit_code=int(exit_code) if state.final and isinstance(exit_code, int) else None,
    )


def pilots_from_ads(ads: Iterable[Mapping[str, Any]]) -> tuple[Pilot, ...]:
    return tuple(p for p in (pilot_from_ad(ad) for ad in ads) if p is not None)


def throttle_counts(ads: Iterable[Mapping[str, Any]], maxtime: float) -> dict[str, ThrottleHistory]:
    """Per queue: finished pilots, and how many ran shorter than ``maxtime`` (APF's Throttle)."""
    total: dict[str, int] = {}
    short: dict[str, int] = {}
    for ad in ads:
        queue = attr_value(ad, "MATCH_APF_QUEUE")
        if not queue:
            continue
        total[queue] = total.get(queue, 0) + 1
        wall = attr_value(ad, "RemoteWallClockTime")
        if wall is not None and float(wall) < maxtime:
            short[queue] = short.get(queue, 0) + 1
    return {q: ThrottleHistory(total=t, short=short.get(q, 0)) for q, t in total.items()}


class CondorStatus(NeedsModules, BatchStatusPlugin):
    requires = (HTCONDOR,)
    name = "Condor"
    Options = CondorStatusOptions

    @classmethod
    def endpoint(cls, queue: QueueConfig, factory: FactoryContext) -> Hashable:
        opts = queue.plugin_options("batchstatus")
        assert isinstance(opts, CondorStatusOptions)
        # keyed on where the schedd is (and which pilots count), so every queue there shares it
        return (cls.name, opts.address(), opts.legacy)

    def __init__(self, endpoint: Hashable, factory: FactoryContext) -> None:
        super().__init__(endpoint, factory)
        _, self.address, self.legacy = endpoint  # type: ignore[misc]
        self.constraint = factory_constraint(factory.factory_id, self.legacy)
        self._schedd: ScheddApi | None = None

    @property
    def schedd(self) -> ScheddApi:
        if self._schedd is None:
            self._schedd = connect(self.address)
        return self._schedd

    def poll(self, now: float) -> BatchSnapshot:
        ads = self.schedd.query(self.constraint, list(PROJECTION))
        return BatchSnapshot(time=now, pilots=pilots_from_ads(ads))

    def throttle_history(self, now: float, interval: float, maxtime: float) -> dict[str, ThrottleHistory]:
        """For ``Throttle``: this factory's pilots that started in the last ``interval`` seconds
        and have finished. The scan stops at the first job that completed before the window."""
        start = int(now - interval)
        ads = self.schedd.history(
            f"({self.constraint}) && JobStartDate > {start}",
            ["MATCH_APF_QUEUE", "RemoteWallClockTime"],
            since=f"CompletionDate < {start}",
        )
        return throttle_counts(ads, maxtime)


def counts(pilots: Sequence[Pilot]) -> dict[str, dict[PilotState, int]]:
    """Per queue, pilots by state (for display and tests)."""
    out: dict[str, dict[PilotState, int]] = {}
    for p in pilots:
        by_state = out.setdefault(p.queue, {})
        by_state[p.state] = by_state.get(p.state, 0) + 1
    return out
