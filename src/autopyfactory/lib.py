"""libapf: the factory's planner as a library, for in-process embedding in larger frameworks
(HEPCloud's decision engine, a workflow system, a notebook).

A framework builds a planner from the same configuration text an ``apf run`` reads (or from
Python dicts; no files needed), feeds it what it observed (demand per WMS queue, pilots or pilot
counts per factory queue, quota left per cascade tier), and gets back every queue's decision with
each step and reason and the actions it implies. The planner is the daemon's own code (scheduler
chains with AutoPyFactory's arithmetic, demand shares, cascades with caps, quotas, spill-over and
reverse drain); it does no I/O and reads no clock. Optionally, ``act`` carries the actions out
through the configured submit plugins.

    from autopyfactory.lib import Observation, Planner

    planner = Planner.from_dicts(
        {"SITE_A": {"schedplugin": "Ready, MaxPerCycle", "sched.maxpercycle.maximum": "50"}},
    )
    result = planner.decide(Observation(time=1_700_000_000, demand={"SITE_A": 120}, supply={"SITE_A": {"pending": 4}}))
    print(result.queues["SITE_A"].n, result.queues["SITE_A"].explain())

Only the names in ``__all__`` are the public API.
"""

from __future__ import annotations

import itertools
import uuid
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from autopyfactory.config.errors import ConfigError, ConfigProblem
from autopyfactory.config.ini import interpolate, read_documents
from autopyfactory.config.loader import build_queues
from autopyfactory.config.models import FactoryConfig, FactorySettings
from autopyfactory.config.policy import PolicyDocument, Tier, parse_policy
from autopyfactory.config.policy_checks import check_queues
from autopyfactory.config.sources import SourceText
from autopyfactory.config.validate import validate_model
from autopyfactory.engine import plan as planner
from autopyfactory.engine.act import Actuator, Job
from autopyfactory.engine.build import Builder
from autopyfactory.engine.executor import Executor
from autopyfactory.engine.observe import SnapshotBuilder
from autopyfactory.engine.state import EngineState
from autopyfactory.model import (
    Action,
    BatchSnapshot,
    Cancel,
    Demand,
    Pilot,
    PilotState,
    Retire,
    Step,
    Submit,
    WmsSnapshot,
)

__all__ = [
    "Action",
    "Cancel",
    "CascadeDecision",
    "ConfigError",
    "Decisions",
    "Demand",
    "Observation",
    "PilotInfo",
    "PilotState",
    "Planner",
    "QueueDecision",
    "Retire",
    "Step",
    "Submit",
]

# A queue section needs plugins named; an embedder that only plans gets the simulated ones.
_QUEUE_DEFAULTS = {
    "enabled": "True",
    "batchstatusplugin": "Sim",
    "batchsubmitplugin": "Sim",
    "wmsstatusplugin": "Sim",
}


@dataclass(frozen=True)
class PilotInfo:
    """One pilot as the framework knows it. ``state``: pending, running, held, retiring, done,
    failed, cancelled or unknown."""

    id: str
    state: str | PilotState
    submitted_at: float | None = None
    started_at: float | None = None
    ended_at: float | None = None


@dataclass(frozen=True)
class Observation:
    """What the framework observed at ``time`` (seconds since the epoch).

    - ``demand``: per WMS queue (a queue's ``wmsqueue``, default its name) the ready (activated)
      job count, or a full ``Demand``. A queue whose WMS queue is missing has no WMS information
      and its status-reading plugins give 0, as in the daemon.
    - ``pilots``: per factory queue, its pilots (needed to choose which ones a scale-down takes);
      or ``supply``: per factory queue, pilot counts by state (``{"pending": 3, "running": 10}``).
      A queue in neither has no batch information.
    - ``quota_left``: per cascade tier, the pilots it may still start under its quotas (the
      framework keeps the accounting); tiers not listed are unlimited.
    """

    time: float
    demand: Mapping[str, int | Demand] = field(default_factory=dict)
    pilots: Mapping[str, Sequence[PilotInfo]] = field(default_factory=dict)
    supply: Mapping[str, Mapping[str, int]] = field(default_factory=dict)
    quota_left: Mapping[str, int | None] = field(default_factory=dict)


@dataclass(frozen=True)
class QueueDecision:
    queue: str
    n: int
    steps: tuple[Step, ...]
    binding: str | None
    actions: tuple[Action, ...]
    cascade: str | None = None

    def explain(self) -> str:
        lines = [f"{self.queue}: n = {self.n} (binding: {self.binding or '-'})"]
        lines += [f"  {s.plugin:<14} {s.n_in:>6} -> {s.n_out:<6} {s.reason}" for s in self.steps]
        return "\n".join(lines)

    def as_dict(self) -> dict[str, Any]:
        return {
            "n": self.n,
            "binding": self.binding,
            "steps": [s.as_dict() for s in self.steps],
            "actions": [_action_dict(a) for a in self.actions],
            "cascade": self.cascade,
        }


@dataclass(frozen=True)
class CascadeDecision:
    cascade: str
    demand: int | None
    unmet: int
    tiers: tuple[Step, ...]  # one step per tier: demand in, pilots gained (+) or given back (-), why

    def as_dict(self) -> dict[str, Any]:
        return {
            "demand": self.demand,
            "unmet": self.unmet,
            "tiers": [s.as_dict() for s in self.tiers],
        }


@dataclass(frozen=True)
class Decisions:
    time: float
    queues: Mapping[str, QueueDecision]
    cascades: Mapping[str, CascadeDecision]
    # (kind, message, queue or "cascade:<name>"): what changed in the policy's view this time
    events: tuple[tuple[str, str, str | None], ...] = ()

    def as_dict(self) -> dict[str, Any]:
        return {
            "time": self.time,
            "queues": {q: d.as_dict() for q, d in self.queues.items()},
            "cascades": {c: d.as_dict() for c, d in self.cascades.items()},
            "events": [{"kind": k, "message": m, "where": w} for k, m, w in self.events],
        }


class Planner:
    """The planner over a set of queues (and optionally a provisioning policy). Keeps the small
    memory decisions need between calls (cascade backoffs, learned capacities, events already
    reported); one planner per factory, used from one thread at a time."""

    def __init__(self, config: FactoryConfig) -> None:
        self.config = config
        self._events: list[tuple[str, str, str | None]] = []
        self._state = EngineState(config)
        self._quota: Mapping[str, int | None] = {}
        self._builder = Builder(self._state, lambda _p, _r: None, self._event, dict)
        self._builder.build(config)
        self._observe = SnapshotBuilder(self._state, self._quota_left)
        self._actuator: Actuator | None = None

    # -- construction -------------------------------------------------------------------------------
    @classmethod
    def from_config(cls, config: FactoryConfig) -> Planner:
        """From a configuration the daemon's loader returned (``load_factory_config``)."""
        return cls(config)

    @classmethod
    def from_ini(
        cls,
        queues: str,
        factory: str | None = None,
        policy: str | None = None,
        *,
        policy_format: str = "yaml",
    ) -> Planner:
        """From the text of a queues.conf (APF's format: sections, ``[DEFAULT]``, ``%(key)s``), an
        optional ``[Factory]`` text and an optional policy document (YAML or JSON). Queues need
        not name their status and submit plugins when the planner is only asked to decide (the
        simulated ones stand in). Raises ConfigError with one problem per mistake."""
        default_factory = "[Factory]\nfactoryId = libapf\n"
        raw = interpolate(read_documents([SourceText("<factory>", factory or default_factory)]))
        fsection = raw.sections.get("Factory")
        fvalues = dict(fsection.values) if fsection is not None else {}
        fvalues.setdefault("factoryId", "libapf")
        problems: list[ConfigProblem] = list(raw.problems)
        locate = fsection.locate if fsection is not None else (lambda _key: None)
        settings, errs = validate_model(FactorySettings, fvalues, file_of=locate, section="Factory")
        problems += errs
        qraw = interpolate(read_documents([SourceText("<queues>", queues)]))
        for section in qraw.sections.values():
            for key, value in _QUEUE_DEFAULTS.items():
                section.values.setdefault(key, value)
        built, errs = build_queues(qraw)
        problems += errs
        document: PolicyDocument | None = None
        if policy is not None:
            try:
                document = parse_policy(policy, file="<policy>", fmt=policy_format)
                problems += check_queues(document, built, file="<policy>")
            except ConfigError as exc:
                problems += exc.problems
        if settings is None or any(not p.warning for p in problems):
            raise ConfigError([p for p in problems if not p.warning] or problems)
        assert isinstance(settings, FactorySettings)
        return cls(FactoryConfig(settings=settings, queues=built, factory_raw=fvalues, policy=document))

    @classmethod
    def from_dicts(
        cls,
        queues: Mapping[str, Mapping[str, Any]],
        factory: Mapping[str, Any] | None = None,
        policy: Mapping[str, Any] | str | None = None,
    ) -> Planner:
        """Like ``from_ini``, from ``{section: {key: value}}`` dicts (values become config text,
        so keys and values are validated exactly as in a file) and a policy dict or text."""
        import json

        text = "\n".join(_section(name, keys) for name, keys in queues.items())
        ftext = _section("Factory", factory) if factory is not None else None
        ptext = policy if isinstance(policy, str) or policy is None else json.dumps(policy)
        return cls.from_ini(
            text, ftext, ptext, policy_format="json" if isinstance(policy, Mapping) else "yaml"
        )

    @property
    def queues(self) -> list[str]:
        return list(self._state.queues)

    # -- deciding -----------------------------------------------------------------------------------
    def decide(self, observation: Observation) -> Decisions:
        """Every queue's (and cascade's) decision on this observation."""
        now = float(observation.time)
        self._feed(observation)
        self._quota = observation.quota_left
        state = self._state
        times = {name: self._observe.times(rt) for name, rt in state.queues.items()}
        queues = [(rt, times[rt.name]) for rt in state.queues.values() if rt.cascade is None]
        cascades = [(cr, {rt.name: times[rt.name] for rt in cr.tiers}) for cr in state.cascades.values()]
        snapshot = self._observe.snapshot(now, [rt for rt, _ in queues], [cr for cr, _ in cascades], {})
        result = planner.plan_pass(snapshot, queues, cascades)
        for name, memory in result.queue_memory.items():
            state.queues[name].memory = memory
        for name, memory in result.cascade_memory.items():
            state.cascades[name].keep_memory(memory)
        out = {
            p.queue: QueueDecision(
                p.queue,
                p.decision.n,
                p.decision.steps,
                p.decision.binding,
                p.actions,
                state.queues[p.queue].cascade,
            )
            for p in result.plans
        }
        summaries = {
            s.queue.removeprefix("cascade:"): CascadeDecision(
                s.queue.removeprefix("cascade:"), s.ready, s.n, s.steps
            )
            for s in result.summaries
        }
        events = tuple(self._events) + tuple(result.events)
        self._events.clear()
        return Decisions(now, out, summaries, events)

    def act(self, decisions: Decisions) -> dict[str, list[Pilot]]:
        """Carry the decisions out through each queue's configured submit plugin (submit, cancel,
        retire). Returns the pilots submitted per queue. Pilots carry the factory's tags; unlike
        the daemon, nothing is recorded first, so a crash between the call and the embedder's
        own record is the embedder's to reconcile (the daemon's ``Factory`` does it for you)."""
        if self._actuator is None:
            self._actuator = Actuator(self._state, Executor(1), lambda: decisions.time)
        submitted: dict[str, list[Pilot]] = defaultdict(list)
        errors: list[str] = []
        for queue, decision in decisions.queues.items():
            rt = self._state.queues[queue]
            if rt.submitter is None:
                if decision.actions:
                    errors.append(f"{queue}: {rt.error}")
                continue
            for action in decision.actions:
                intent = uuid.uuid4().hex[:12] if isinstance(action, Submit) else None
                done = self._actuator.run(rt, Job(queue, rt.submitter.target(), action, intent))
                if done.error is not None:
                    errors.append(f"{queue}: {done.error}")
                submitted[queue] += done.pilots
        if errors:
            raise RuntimeError("; ".join(errors))
        return dict(submitted)

    # -- inputs -------------------------------------------------------------------------------------
    def _event(self, kind: str, message: str, where: str | None) -> None:
        self._events.append((kind, message, where))

    def _quota_left(self, tiers: Sequence[Tier], _now: float) -> dict[str, int | None]:
        return {t.queue: self._quota.get(t.queue) for t in tiers}

    def _feed(self, obs: Observation) -> None:
        """The observation becomes the pollers' latest snapshots (they never poll here)."""
        now = float(obs.time)
        by_poller: dict[int, list[Pilot]] = defaultdict(list)
        seen: dict[int, bool] = {}
        for rt in self._state.queues.values():
            poller = rt.batch_poller
            seen.setdefault(id(poller), False)
            pilots = _pilots(rt.name, obs)
            if pilots is not None:
                seen[id(poller)] = True
                by_poller[id(poller)] += pilots
                self._state.pilots[rt.name] = tuple(pilots)
        wms: dict[int, dict[str, Demand]] = defaultdict(dict)
        for rt in self._state.queues.values():
            poller = rt.batch_poller
            poller.latest = BatchSnapshot(now, tuple(by_poller[id(poller)])) if seen[id(poller)] else None
            if rt.wms_poller is None:
                continue
            name = rt.config.wmsqueue or rt.name
            given = obs.demand.get(rt.demand_key, obs.demand.get(name))
            if given is not None:
                demand = (
                    given if isinstance(given, Demand) else Demand(rt.demand_key, ready=int(given), time=now)
                )
                wms[id(rt.wms_poller)][rt.demand_key] = demand
        for rt in self._state.queues.values():
            if rt.wms_poller is not None:
                demands = wms.get(id(rt.wms_poller))
                rt.wms_poller.latest = WmsSnapshot(now, demands) if demands else None


def _pilots(queue: str, obs: Observation) -> list[Pilot] | None:
    if queue in obs.pilots:
        return [
            Pilot(
                p.id,
                queue,
                PilotState(p.state),
                submitted_at=p.submitted_at,
                started_at=p.started_at,
                ended_at=p.ended_at,
            )
            for p in obs.pilots[queue]
        ]
    if queue in obs.supply:
        counter = itertools.count()
        return [
            Pilot(f"{queue}#{next(counter)}", queue, PilotState(state))
            for state, count in obs.supply[queue].items()
            for _ in range(int(count))
        ]
    return None


def _section(name: str, keys: Mapping[str, Any]) -> str:
    lines = [f"[{name}]"]
    for key, value in keys.items():
        text = ", ".join(map(str, value)) if isinstance(value, list | tuple) else str(value)
        lines.append(f"{key} = {text.replace(chr(10), ' ')}")
    return "\n".join(lines) + "\n"


def _action_dict(action: Action) -> dict[str, Any]:
    if isinstance(action, Submit):
        return {"action": "submit", "n": action.n}
    if isinstance(action, Cancel):
        return {"action": "cancel", "ids": list(action.backend_ids)}
    return {"action": "retire", "ids": list(action.backend_ids), "kill": action.kill}
