"""The factory: the engine's stages wired together, and its life cycle (start, loop, reload, stop).

A pass is observe -> plan -> record -> act -> report (docs/internals.md):

- observe (``observe.py``): the pollers' latest snapshots, one immutable ``Snapshot``;
- plan (``plan.py``): pure functions of snapshot, config and memory;
- record (``record.py``): ONE store transaction for the pass's decisions, intents (with quota
  reservations), settlements, pilot changes and events;
- act (``act.py``): actions run in the executor; results come back as completions;
- report (``report.py``): observers, monitors, the status file.

Between passes the loop applies completions and reloads and takes in new batch snapshots
(``reconcile.py``). Only the loop's thread writes engine state.

Two ways to drive it, sharing all the logic:
- ``run()``: the daemon. One poller thread per endpoint, one decision loop woken by new snapshots,
  action results and each queue's interval, and a bounded action pool serialised per target.
- ``step(now)``: one synchronous cycle (poll, decide, act inline): ``apf run --once``, the
  simulator on a virtual clock, and tests.
"""

from __future__ import annotations

import gc
import logging
import queue
import threading
import time
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import replace
from typing import Any

from autopyfactory.config.models import FactoryConfig
from autopyfactory.config.policy import Tier
from autopyfactory.credentials.health import CredentialHealth
from autopyfactory.credentials.manager import CredentialManager
from autopyfactory.engine import plan as planner
from autopyfactory.engine.act import Actuator, CompletionHandler, Job, safe
from autopyfactory.engine.build import Builder, close_submitter
from autopyfactory.engine.closer import Closer
from autopyfactory.engine.events import Observer
from autopyfactory.engine.executor import Executor
from autopyfactory.engine.observe import CredentialGate, SnapshotBuilder
from autopyfactory.engine.pollers import Poller, PollerThread, PollResult
from autopyfactory.engine.reconcile import Reconciler
from autopyfactory.engine.record import Recorder, StoreHealth
from autopyfactory.engine.reload import Loader, Reloader, ReloadResult
from autopyfactory.engine.report import Reporter, status_path
from autopyfactory.engine.snapshot import QueueTimes
from autopyfactory.engine.state import CascadeRuntime, EngineState, QueueRuntime, TargetState
from autopyfactory.model import Plan, Submit, Supply
from autopyfactory.plugins.base import Interruption
from autopyfactory.store.api import IntentRequest, PassResult, Store, StoreError

log = logging.getLogger("autopyfactory.factory")

__all__ = ["Factory", "status_path", "tune_gc"]

# SIGTERM is honoured within 10 s: what shutdown may spend on each part
SHUTDOWN_ACTIONS_S = 3.0
SHUTDOWN_FLUSH_S = 2.0
SHUTDOWN_CLOSE_S = 2.0
PRUNE_INTERVAL = 3600.0


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
        credentials: CredentialGate | None = None,
        failed_queues: Mapping[str, str] | None = None,
    ) -> None:
        """``record_pilots=False`` (the simulator) keeps no per-pilot rows in the store; decisions,
        intents, the quota ledger and events are recorded as always. ``credentials``: the
        credential manager the planner asks before a queue submits. Raises StoreError when the
        store cannot be opened. ``failed_queues``: queues left out before start (their start-up
        checks failed), with why; status and the web show them."""
        self.dry_run = dry_run
        self.clock = clock
        self.record_pilots = record_pilots
        self.store = store or Store(config.settings.database_url())
        self.observers: list[Observer] = list(observers)
        self.state = EngineState(config)
        self.state.excluded = dict(failed_queues or {})
        self.recorder = Recorder(
            self.store,
            config.factory_id,
            dry_run=dry_run,
            record_pilots=record_pilots,
            clock=clock,
            on_health=self._store_health,
        )
        self.reconciler = Reconciler(
            self.state,
            self.store,
            self.recorder,
            run_action=self._run_action,
            on_interrupted=self._interrupted,
        )
        self.executor = Executor(config.settings.executor_workers)
        self.actuator = Actuator(self.state, self.executor, clock)
        self.actuator.on_complete = self._wake_loop
        self.completions = CompletionHandler(
            self.state, self.recorder, self.reconciler, self.observers, self._kick_poller
        )
        self.reporter = Reporter(self.state, self.recorder, self.observers, dry_run=dry_run, clock=clock)
        # the credential manager keeps every auth profile valid; the planner asks it before a
        # queue submits (a manager of our own unless the caller gives one)
        self.credentials: CredentialGate | None = credentials
        self._manager: CredentialManager | None = None
        if credentials is None and config.auth:
            self._manager = self._credential_manager(config)
            self.credentials = self._manager
        self.observe = SnapshotBuilder(self.state, self.store.quota_left, self.credentials)
        # plugins a reload drops are closed on the closer's thread: a close may do transport I/O
        self.closer = Closer()
        self.builder = Builder(
            self.state, self._on_poll, self.recorder.event, self._last_intent_times, close=self.closer.close
        )
        self.reloader = Reloader(self._reloaded)
        self._reloads: queue.SimpleQueue[ReloadResult] = queue.SimpleQueue()
        self._wake = threading.Condition()
        self._stopping = threading.Event()
        self._threads: dict[int, PollerThread] = {}
        self._next_prune = 0.0
        self._closed = False
        # monotonic time of the loop's last iteration (a service watchdog reads it)
        self.heartbeat = time.monotonic()
        self.builder.build(config)

    # -- what others read ----------------------------------------------------------------------------
    @property
    def config(self) -> FactoryConfig:
        return self.state.config

    @property
    def factory_id(self) -> str:
        return self.state.factory_id

    @property
    def queues(self) -> dict[str, QueueRuntime]:
        return self.state.queues

    @property
    def pollers(self) -> dict[Hashable, Poller]:
        return self.state.pollers

    @property
    def cascades(self) -> dict[str, CascadeRuntime]:
        return self.state.cascades

    @property
    def targets(self) -> dict[str, TargetState]:
        return self.state.targets

    @property
    def metrics_url(self) -> str | None:
        return self.reporter.metrics_url

    @metrics_url.setter
    def metrics_url(self, url: str | None) -> None:
        self.reporter.metrics_url = url

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    def supply_of(self, rt: QueueRuntime, now: float) -> Supply | None:
        """A queue's pilots by state from its endpoint's fresh snapshot (None if stale or missing)."""
        return self.observe.supply_of(rt, now)

    def status(self, now: float | None = None) -> dict[str, Any]:
        """The factory's state for operators. From another thread while the daemon runs, the
        status the loop last published."""
        if not self.actuator.inline and self.reporter.published:
            return self.reporter.published
        return self.reporter.status(self.clock() if now is None else now)

    # -- one pass -----------------------------------------------------------------------------------
    def step(self, now: float | None = None, poll_all: bool = False) -> list[Plan]:
        """One synchronous cycle: poll due (or all) endpoints, decide, act inline."""
        now = self.clock() if now is None else now
        self._credentials_ready()
        # batch status first: a WMS that models pilots taking jobs reads it
        for poller in sorted(self.state.pollers.values(), key=lambda p: p.kind != "batchstatus"):
            if poll_all or poller.due(now):
                poller.poll_once(now)
        return self.decide_pass(now, force=poll_all)

    def decide_pass(self, now: float, force: bool = False) -> list[Plan]:
        """Take in what happened, decide every due queue and cascade, record, act, report."""
        self._apply_completions()
        self.reconciler.absorb(now)
        plans = self._pass(now, force)
        if self.actuator.inline and not self.dry_run:
            self._apply_completions()
            # a tier refused (capacity, quota, unreachable): its demand goes on in this same cycle
            for _ in range(max((len(cr.tiers) for cr in self.state.cascades.values()), default=0)):
                if not any(cr.redrive for cr in self.state.cascades.values()):
                    break
                plans += self._pass(now, force=True, only_redrive=True)
                self._apply_completions()
        return plans

    def _pass(self, now: float, force: bool, only_redrive: bool = False) -> list[Plan]:
        state = self.state
        times = self.observe.times
        due_queues: list[tuple[QueueRuntime, QueueTimes]] = []
        if not only_redrive:
            for rt in state.queues.values():
                if rt.cascade is None:
                    t = times(rt)
                    if planner.queue_due(rt.memory, t, now, force):
                        due_queues.append((rt, t))
        due_cascades: list[tuple[CascadeRuntime, Mapping[str, QueueTimes]]] = []
        for cr in state.cascades.values():
            if only_redrive and not cr.redrive:
                continue
            tier_times = {rt.name: times(rt) for rt in cr.tiers}
            if planner.cascade_due(cr, tier_times, now, force):
                due_cascades.append((cr, tier_times))
        if not due_queues and not due_cascades:
            self.recorder.commit(now)  # what the pollers and actions reported meanwhile
            return []
        snapshot = self.observe.snapshot(
            now, [rt for rt, _ in due_queues], [cr for cr, _ in due_cascades], self._blocked_targets(now)
        )
        result = planner.plan_pass(snapshot, due_queues, due_cascades)
        for name, memory in result.queue_memory.items():
            state.queues[name].memory = memory
        for name, cascade_memory in result.cascade_memory.items():
            state.cascades[name].keep_memory(cascade_memory)
        for kind, message, where in result.events:
            self.recorder.event(kind, message, where, time=now)
        intents = [
            IntentRequest(plan.queue, action.n, index, self._tier_of(plan.queue))
            for index, plan in enumerate(result.plans)
            for action in plan.actions
            if isinstance(action, Submit)
        ]
        recorded = self.recorder.commit(now, [p.decision for p in result.plans] + result.summaries, intents)
        self.reporter.decisions(result.plans, snapshot)
        if not self.dry_run:
            self._dispatch(result.plans, recorded)
        return result.plans

    def _tier_of(self, queue_name: str) -> Tier | None:
        rt = self.state.queues[queue_name]
        if rt.cascade is None:
            return None
        return self.state.cascades[rt.cascade].tier(queue_name)

    def _blocked_targets(self, now: float) -> dict[str, str]:
        return {
            target: f"target {target} backing off for {t.until - now:.0f}s after: {t.error}"
            for target, t in self.state.targets.items()
            if t.until > now
        }

    def _dispatch(self, plans: list[Plan], recorded: PassResult | None) -> None:
        """Act on the plans. Without a recorded intent (the store failed) nothing is submitted."""
        granted = iter(recorded.intents) if recorded is not None else iter(())
        for plan in plans:
            rt = self.state.queues[plan.queue]
            submitter = rt.submitter
            if submitter is None:
                continue
            target = submitter.target()
            jobs: list[Job] = []
            for action in plan.actions:
                if isinstance(action, Submit):
                    if recorded is None:
                        continue
                    intent_id, n = next(granted)
                    if n <= 0:
                        continue  # the quota granted nothing
                    if self.reconciler.adopting:
                        self.state.my_intents.add(intent_id)
                    self.state.inflight_intents.add(intent_id)
                    jobs.append(
                        Job(rt.name, target, Submit(rt.name, n), intent_id, tier=rt.cascade is not None)
                    )
                else:
                    jobs.append(Job(rt.name, target, action))
            if submitter.has_cleanup:
                jobs.append(Job(rt.name, target, None, pilots=self.state.pilots.get(rt.name, ())))
            if jobs:
                rt.memory = replace(rt.memory, inflight=rt.memory.inflight + len(jobs))
                self.actuator.dispatch(rt, jobs)

    def _apply_completions(self) -> None:
        completions = self.actuator.completions
        while True:
            try:
                completion = completions.get_nowait()
            except queue.Empty:
                return
            self.completions.apply(completion)

    def flush(self, now: float | None = None) -> None:
        """Apply finished actions and write everything buffered, now."""
        self._apply_completions()
        self.recorder.commit(self.clock() if now is None else now)

    # -- credentials ---------------------------------------------------------------------------------
    def credential_health(self) -> dict[str, CredentialHealth]:
        """Every managed profile's health (any thread; empty without a manager)."""
        return self._manager.all_health() if self._manager is not None else {}

    def _credential_manager(self, config: FactoryConfig) -> CredentialManager:
        return CredentialManager(
            config.auth,
            factory_id=config.factory_id,
            state_dir=config.settings.state_path,
            on_change=self._credential_changed,
            clock=self.clock,
            period=config.settings.authmanager_sleep,
        )

    def _credential_changed(self, name: str, old: CredentialHealth | None, new: CredentialHealth) -> None:
        """On the manager's threads: record the change (a credential event), tell the observers and
        wake the loop."""
        now = self.clock()
        self.recorder.event("credential", new.summary(now))
        if not new.usable or (old is not None and not old.usable):
            log.warning("credential %s", new.summary(now))
        for observer in self.observers:  # e-mail alerts use this same health
            safe(observer.on_credential, new)
        self._wake_loop()

    def _credentials_ready(self) -> None:
        """Before a one-shot cycle: every profile's health from disk (a dead proxy stops submissions
        even in ``apf run --once``); the daemon's manager checks and renews on its own thread."""
        if self._manager is not None and not self._manager.started:
            self._manager.inspect_all()

    # -- callbacks from other threads ----------------------------------------------------------------
    def _wake_loop(self) -> None:
        with self._wake:
            self._wake.notify_all()

    def _on_poll(self, poller: Poller, result: PollResult) -> None:
        """On the poller's thread: observers, the recovery event, and wake the loop."""
        now = self.clock()
        for observer in self.observers:
            safe(observer.on_poll, poller.label, poller.kind, result.ok, now, result.error)
        if result.recovered_after is not None:
            self.recorder.event(
                "recovered",
                f"{poller.label}: answers again after failing for {now - result.recovered_after:.0f}s",
            )
        self._wake_loop()

    def _run_action(self, target: str, fn: Callable[[], None]) -> None:
        """Backend work the loop wants done off its thread (in ``step``: now)."""
        if self.actuator.inline:
            fn()
        else:
            self.executor.submit(target, fn)

    def _interrupted(self, item: Interruption) -> None:
        for observer in self.observers:
            safe(observer.on_interrupted, item.queue, item.instance_id, item.reason, item.spot)

    def _kick_poller(self, rt: QueueRuntime) -> None:
        thread = self._threads.get(id(rt.batch_poller))
        if thread is not None:
            thread.kick.set()

    def _store_health(self, health: StoreHealth) -> None:
        for observer in self.observers:
            safe(observer.on_store, health.ok, health.error)

    def _last_intent_times(self) -> dict[str, float]:
        return self.store.last_intent_times(self.factory_id)

    # -- the daemon ---------------------------------------------------------------------------------
    def start(self) -> None:
        """Start the daemon machinery (poller threads, executor)."""
        self.actuator.inline = False
        if self._manager is not None:
            if self.dry_run:
                self._manager.inspect_all()  # a dry run renews nothing: it only looks
            else:
                self._manager.start()
        self._start_poller_threads(self.state.pollers.values())
        queues = list(self.state.queues)
        for observer in self.observers:
            safe(observer.on_start, self.factory_id, queues)
        if self.dry_run:
            return  # a dry run contacts no monitor
        for section, monitor in self.state.monitors.items():
            names = [r.name for r in self.state.queues.values() if monitor in r.monitors]
            safe(monitor.register_factory, names)
            log.debug("monitor %s registered for %d queues", section, len(names))

    def _start_poller_threads(self, pollers: Iterable[Poller]) -> None:
        for poller in pollers:
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
                self.heartbeat = time.monotonic()
                self._apply_reloads()
                began = self.clock()
                plans = self.decide_pass(began)
                if plans:
                    duration = self.clock() - began
                    for observer in self.observers:
                        safe(observer.on_cycle, duration, len(plans), began)
                self.reporter.publish(began)
                self._prune(began)
                if (
                    cycles is not None
                    and self.state.queues
                    and all(r.memory.decisions >= cycles for r in self.state.queues.values())
                ):
                    self._wait_actions(120.0)
                    break
                with self._wake:
                    self._wake.wait(timeout=self._next_wait(self.clock()))
        finally:
            self.shutdown()

    def _wait_actions(self, timeout: float) -> None:
        """Wait (stop-aware) until every dispatched action finished."""
        deadline = time.monotonic() + timeout
        while not self._stopping.is_set() and time.monotonic() < deadline:
            if self.executor.wait_idle(timeout=0.2):
                return

    def _prune(self, now: float) -> None:
        """Once an hour: forget history older than ``store.keepdays`` (the store must not grow forever)."""
        if now < self._next_prune or self.dry_run:
            return
        self._next_prune = now + PRUNE_INTERVAL
        try:
            removed = self.store.prune(self.factory_id, now - self.config.settings.store_keepdays * 86400)
            if removed:
                log.info("store: pruned %d old rows", removed)
        except StoreError as exc:
            log.error("store: pruning failed: %s", exc)

    def _wait_first_polls(self, timeout: float) -> None:
        """Bounded wait (stop-aware) for every endpoint's first answer, as APF waited for info."""
        deadline = self.clock() + timeout
        with self._wake:
            while not self._stopping.is_set() and self.clock() < deadline:
                if all(p.status.polls > 0 for p in self.state.pollers.values()):
                    return
                self._wake.wait(timeout=0.2)

    def _next_wait(self, now: float) -> float:
        if not self.state.queues:
            return 1.0
        soonest = min(r.memory.next_due for r in self.state.queues.values())
        return min(max(soonest - now, 0.05), 1.0)

    def stop(self) -> None:
        self._stopping.set()
        self._wake_loop()

    # -- reload -------------------------------------------------------------------------------------
    def request_reload(self, load: Loader, why: str = "SIGHUP") -> None:
        """Read and validate a new configuration on its own thread (safe from a signal handler);
        the loop swaps it in between passes."""
        self.reloader.request(load, why)

    def report_reload_failure(self, reasons: Sequence[str], why: str = "reload") -> None:
        """A reload refused before it reached the engine (e.g. its start-up checks failed):
        recorded like any failed reload, and the running configuration stays."""
        self._reloaded(ReloadResult(None, "; ".join(reasons) or "configuration invalid", why))

    def _reloaded(self, result: ReloadResult) -> None:
        self._reloads.put(result)
        self._wake_loop()

    def _apply_reloads(self) -> None:
        while True:
            try:
                result = self._reloads.get_nowait()
            except queue.Empty:
                return
            if result.config is None:
                log.error(
                    "reload (%s) failed, keeping the running configuration: %s", result.why, result.error
                )
                self.recorder.event(
                    "reload-failed", f"{result.why}: {result.error}; the running configuration is kept"
                )
                continue
            self.reload(result.config)

    def reload(self, config: FactoryConfig) -> None:
        """Swap in a new, already validated config; only changed queues are rebuilt."""
        before = {n: r.config.fingerprint() for n, r in self.state.queues.items()}
        if self._manager is not None or config.auth:
            self._replace_credential_manager(config)
        added, removed = self.builder.build(config)
        for poller in removed:
            thread = self._threads.pop(id(poller), None)
            if thread is not None:
                thread.stop()
            self.closer.close(poller.label, poller.close)
        self.observe.forget(removed)
        self.reconciler.forget(removed)
        if not self.actuator.inline:
            self._start_poller_threads(added)
        after = {n: r.config.fingerprint() for n, r in self.state.queues.items()}
        new = sorted(set(after) - set(before))
        gone = sorted(set(before) - set(after))
        changed = sorted(n for n in set(before) & set(after) if before[n] != after[n])
        self.recorder.event(
            "reload", f"config reloaded: added {new or '-'}, removed {gone or '-'}, changed {changed or '-'}"
        )
        log.info("config reloaded: added %s, removed %s, changed %s", new, gone, changed)

    def _replace_credential_manager(self, config: FactoryConfig) -> None:
        """A reload brings its auth.conf: a new manager (starting it only reads files)."""
        old = self._manager
        if old is not None and dict(config.auth) == dict(self.config.auth):
            return
        if old is not None:
            old.stop(timeout=1.0)
        self._manager = self._credential_manager(config) if config.auth else None
        self.credentials = self._manager
        self.observe.credentials = self._manager
        if self._manager is not None and not self.actuator.inline:
            if self.dry_run:
                self._manager.inspect_all()
            else:
                self._manager.start()

    # -- stopping -----------------------------------------------------------------------------------
    def shutdown(self) -> None:
        """Stop within a bounded time whatever a backend or the store is doing: actions still
        running are left to the next start's adoption."""
        if self._closed:
            return
        self._closed = True
        self.reloader.stop()
        if self._manager is not None:
            self._manager.stop(timeout=1.0)  # kills renewal tools still running
        for thread in self._threads.values():
            thread.stop()
        self.executor.shutdown(wait=True, timeout=SHUTDOWN_ACTIONS_S)
        now = self.clock()
        if self.recorder.health.ok:
            self.flush(now)
        else:
            # a locked or full store must not hold the stop: what is not written now is found
            # again by the next start's adoption (pilots re-read from the backend, intents by tag)
            self._apply_completions()
            _bounded(lambda: self.recorder.commit(now), SHUTDOWN_FLUSH_S, "writing the failing store")
        # the plugins still in use and those a reload dropped close side by side, in one bounded wait
        deadline = time.monotonic() + SHUTDOWN_CLOSE_S
        closing = threading.Thread(target=self._close_all, name="closing plugins", daemon=True)
        closing.start()
        self.closer.stop(SHUTDOWN_CLOSE_S)
        closing.join(max(0.0, deadline - time.monotonic()))
        if closing.is_alive():
            log.warning("closing plugins took more than %.0fs; not waiting for it", SHUTDOWN_CLOSE_S)
        for observer in self.observers:
            safe(observer.on_stop)
        if not self.actuator.inline:
            self.reporter.stopped(now)

    def _close_all(self) -> None:
        for runtime in self.state.queues.values():
            close_submitter(runtime)
        for poller in self.state.pollers.values():
            poller.close()
        for monitor in self.state.monitors.values():
            safe(monitor.close)


def tune_gc() -> None:
    """For a daemon process, after start-up: the configuration, plugins and caches built so far
    live as long as the process, so they leave the collector's generations (``gc.freeze``), and
    collections run less often. A pass creates many short-lived objects; with the default
    thresholds, full collections over a large factory's state cost more than the pass itself."""
    gc.freeze()
    gc.set_threshold(100_000, 50, 100)


def _bounded(fn: Callable[[], None], seconds: float, what: str) -> None:
    """Run ``fn`` on a daemon thread and wait at most ``seconds`` (a hung close must not hold a stop)."""
    thread = threading.Thread(target=fn, name=what, daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        log.warning("%s took more than %.0fs; not waiting for it", what, seconds)
