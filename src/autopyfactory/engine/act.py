"""The act stage: the plan's actions run against the backends, and their results come back.

Actions run in the bounded executor, serialised per target, so a slow or hung backend only delays
its own queues. An action never touches shared state: it returns a ``Completion`` that the loop
applies (``CompletionHandler``) between passes, through one thread-safe queue. Submissions are
two-phase: the intent (and its quota reservation) is already recorded when the job runs; the
pilots carry the intent's tag; the result settles the intent in the next pass's transaction.
"""

from __future__ import annotations

import logging
import os
import queue
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from autopyfactory.decide.policy import backoff_after_error
from autopyfactory.engine.events import Observer
from autopyfactory.engine.executor import Executor
from autopyfactory.engine.reconcile import Reconciler
from autopyfactory.engine.record import Recorder
from autopyfactory.engine.state import EngineState, QueueMemory, QueueRuntime, TargetState
from autopyfactory.model import Action, Cancel, Pilot, PilotTags, Retire, Submit
from autopyfactory.plugins.base import BackendError
from autopyfactory.store.api import Settlement

log = logging.getLogger("autopyfactory.factory")

# Fault injection for crash-safety tests (APF_FAULT=crash-before-submit | crash-after-submit);
# unset in production.
_FAULT = os.environ.get("APF_FAULT", "")

MAX_TARGET_BACKOFF = 3600.0


@dataclass(frozen=True)
class Job:
    """One action for one queue. ``action`` None is the queue's per-cycle cleanup."""

    queue: str
    target: str
    action: Action | None
    intent_id: str | None = None
    tier: bool = False  # the submission reserved quota (a shortfall is released)
    pilots: tuple[Pilot, ...] = ()  # cleanup: the queue's pilots


@dataclass(frozen=True)
class Completion:
    job: Job
    finished: float
    pilots: tuple[Pilot, ...] = ()
    error: str | None = None
    capacity: bool = False


def error_message(exc: BaseException) -> str:
    """One line, bounded; BackendError messages are written to hold no secret."""
    if isinstance(exc, BackendError):
        return str(exc)
    return (str(exc) or type(exc).__name__).splitlines()[0][:500]


class Actuator:
    """Runs jobs (inline in ``step``, or in the executor in the daemon) and posts completions."""

    def __init__(self, state: EngineState, executor: Executor, clock: Callable[[], float]) -> None:
        self.state = state
        self.executor = executor
        self.clock = clock
        self.inline = True
        self.completions: queue.SimpleQueue[Completion] = queue.SimpleQueue()
        self.on_complete: Callable[[], None] | None = None  # wakes the loop

    def dispatch(self, rt: QueueRuntime, jobs: Sequence[Job]) -> None:
        for job in jobs:
            if self.inline:
                self.completions.put(self.run(rt, job))
            else:
                self.executor.submit(job.target, lambda rt=rt, job=job: self._post(self.run(rt, job)))

    def _post(self, completion: Completion) -> None:
        self.completions.put(completion)
        if self.on_complete is not None:
            self.on_complete()

    def run(self, rt: QueueRuntime, job: Job) -> Completion:
        submitter = rt.submitter
        assert submitter is not None  # the planner gives no actions to a queue that cannot act
        action = job.action
        now = self.clock()
        try:
            if isinstance(action, Submit):
                assert job.intent_id is not None
                tags = PilotTags(self.state.factory_id, rt.name, job.intent_id)
                if _FAULT == "crash-before-submit":
                    os._exit(137)  # test hook: die after the intent (and its quota) is recorded
                pilots = tuple(submitter.submit(action.n, tags, now))
                if _FAULT == "crash-after-submit":
                    os._exit(137)  # test hook: die like kill -9 between the backend call and the record
                return Completion(job, self.clock(), pilots)
            if isinstance(action, Cancel):
                submitter.cancel(action.backend_ids)
            elif isinstance(action, Retire):
                submitter.retire(action.backend_ids, kill=action.kill)
            else:
                submitter.cleanup(job.pilots, now)
        except Exception as exc:
            capacity = isinstance(exc, BackendError) and exc.capacity
            return Completion(job, self.clock(), error=error_message(exc), capacity=capacity)
        return Completion(job, self.clock())


class CompletionHandler:
    """Applies action results on the loop's thread: memory, targets, cascades, store buffers."""

    def __init__(
        self,
        state: EngineState,
        recorder: Recorder,
        reconciler: Reconciler,
        observers: list[Observer],
        kick_poller: Callable[[QueueRuntime], None],
    ) -> None:
        self.state = state
        self.recorder = recorder
        self.reconciler = reconciler
        self.observers = observers
        self.kick_poller = kick_poller

    def apply(self, completion: Completion) -> None:
        job = completion.job
        rt = self.state.queues.get(job.queue)
        action = job.action
        if isinstance(action, Submit):
            self._settle(rt, completion, action)
        if rt is None:  # removed by a reload meanwhile
            return
        # a cleanup changes no pilot the next decision counts: it must not delay a cascade's re-drive
        changed = completion.error is None and job.action is not None
        m = rt.memory
        rt.memory = QueueMemory(  # the constructor, not dataclasses.replace: once per action
            m.decided_once,
            m.last_batch_time,
            m.last_wms_time,
            m.last_ready,
            completion.finished if changed else m.last_action_done,
            m.next_due,
            m.decisions,
            max(0, m.inflight - 1),
            m.last,
        )
        if completion.error is not None:
            self._target_failed(rt, job.target, completion)
            self._tier_failed(rt, completion)
        else:
            self._target_ok(job.target)
            if isinstance(action, Cancel):
                self.recorder.event("cancel", f"cancelled {len(action.backend_ids)} idle pilots", rt.name)
            elif isinstance(action, Retire):
                verb = "removing" if action.kill else "retiring"
                self.recorder.event("retire", f"{verb} {len(action.backend_ids)} running pilots", rt.name)
        self.kick_poller(rt)  # poll soon so the next decision sees what we did

    def _settle(self, rt: QueueRuntime | None, completion: Completion, action: Submit) -> None:
        job = completion.job
        assert job.intent_id is not None
        self.state.inflight_intents.discard(job.intent_id)
        pilots = completion.pilots
        if completion.error is not None:
            settlement = Settlement(
                job.intent_id,
                "failed",
                0,
                completion.finished,
                error=completion.error,
                release=action.n if job.tier else 0,
            )
        else:
            shortfall = max(0, action.n - len(pilots))
            settlement = Settlement(
                job.intent_id,
                "submitted",
                len(pilots),
                completion.finished,
                release=shortfall if job.tier else 0,
            )
        self.recorder.settle(settlement)
        if rt is None or completion.error is not None:
            return
        self.reconciler.submitted(rt.batch_poller, pilots, completion.finished)
        cr = self.state.cascades.get(rt.cascade) if rt.cascade else None
        if cr is not None:
            cr.last_scale_up[rt.name] = completion.finished
        log.info("queue %s: submitted %d pilots (intent %s)", rt.name, len(pilots), job.intent_id)
        for observer in self.observers:
            safe(observer.on_submitted, rt.name, pilots)
        for monitor in rt.monitors:
            safe(monitor.register_pilots, rt.name, pilots)

    def _target_ok(self, target: str) -> None:
        state = self.state.targets.get(target)
        if state is not None and state.failures:
            self.recorder.event("recovered", f"{target}: actions succeed again")
            log.warning("%s: actions succeed again after %d failures", target, state.failures)
            self.state.targets.pop(target, None)

    def _target_failed(self, rt: QueueRuntime, target: str, completion: Completion) -> None:
        state = self.state.targets.setdefault(target, TargetState())
        state.failures += 1
        state.error = completion.error
        backoff = min(rt.config.settings.sleep * (2 ** min(state.failures - 1, 10)), MAX_TARGET_BACKOFF)
        state.until = completion.finished + backoff
        log.error(
            "queue %s: action on %s failed (%d in a row), backing off %.0fs: %s",
            rt.name,
            target,
            state.failures,
            backoff,
            state.error,
        )
        self.recorder.event(
            "action-failed",
            f"{target}: {state.error} (backing off {backoff:.0f}s)",
            rt.name,
            time=completion.finished,
        )
        for observer in self.observers:
            safe(observer.on_action_failed, rt.name, target, state.error or "")

    def _tier_failed(self, rt: QueueRuntime, completion: Completion) -> None:
        """A tier whose backend refused (capacity, quota) or failed is skipped for its backoff time,
        and its cascade allocates again at once so the demand moves on."""
        cr = self.state.cascades.get(rt.cascade) if rt.cascade else None
        if cr is None or completion.job.action is None:  # a failed cleanup does not move demand
            return
        until = backoff_after_error(cr.tier(rt.name), completion.finished)
        cr.backoff_until[rt.name] = until
        cr.redrive = True
        kind = "capacity" if completion.capacity else "failure"
        # stamped when the backend refused, not when the loop took the news: the spill this
        # causes is recorded at the start of a later pass and must not sort before its cause
        self.recorder.event(
            "backoff",
            f"tier {rt.name} backed off until {until:.0f} after a {kind}: {completion.error}",
            cr.label,
            time=completion.finished,
        )


def safe(fn: Callable[..., object], *args: object) -> None:
    """Observers and monitors must never break the engine."""
    try:
        fn(*args)
    except Exception:
        log.exception("observer %r failed", fn)
