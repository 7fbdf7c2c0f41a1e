"""Building the engine's runtime state from a validated config, and rebuilding it on reload.

Queues whose effective keys did not change keep their runtime (and decision memory); pollers are
shared per endpoint and kept while any queue uses them; a cascade keeps its memory across reloads.
Construction does no backend I/O: plugins connect lazily, on their own threads.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Hashable
from typing import TypeVar

from autopyfactory.config.models import FactoryConfig, PluginSpec, QueueConfig
from autopyfactory.credentials.resolve import queue_profiles
from autopyfactory.decide.base import SchedPlugin
from autopyfactory.engine.pollers import Poller, PollResult
from autopyfactory.engine.state import CascadeRuntime, EngineState, QueueRuntime
from autopyfactory.plugins.base import (
    BatchStatusPlugin,
    BatchSubmitPlugin,
    FactoryContext,
    MonitorPlugin,
    PluginError,
    WmsStatusPlugin,
)
from autopyfactory.plugins.registry import load

log = logging.getLogger("autopyfactory.factory")

P = TypeVar("P")

# (kind, message, queue) for events the build wants recorded
EventSink = Callable[[str, str, str | None], None]
# (what, close) for plugins the build drops: the daemon closes them off its loop (engine/closer.py)
CloseSink = Callable[[str, Callable[[], None]], None]


def close_now(what: str, close: Callable[[], None]) -> None:
    close()


def plugin_class(spec: PluginSpec, base: type[P]) -> type[P]:
    """The spec's class, checked to be of the expected kind."""
    cls: type = spec.cls
    if not issubclass(cls, base):
        raise PluginError(f"{spec.kind} plugin {spec.name!r} is not a {base.__name__}")
    return cls


class Builder:
    """Turns a config into queue runtimes, pollers, cascades and monitors inside an EngineState."""

    def __init__(
        self,
        state: EngineState,
        on_poll: Callable[[Poller, PollResult], None],
        event: EventSink,
        last_intent_times: Callable[[], dict[str, float]],
        close: CloseSink = close_now,
    ) -> None:
        """``close``: where dropped submit plugins go to be closed (a close may do transport I/O,
        so the daemon hands it to another thread; pollers are returned to the caller)."""
        self.state = state
        self.close = close
        self.on_poll = on_poll
        self.event = event
        self.last_intent_times = last_intent_times
        self.ctx = FactoryContext.of(state.config)

    def build(self, config: FactoryConfig) -> tuple[list[Poller], list[Poller]]:
        """(Re)build for ``config``. Returns (pollers added, pollers removed) so the caller can start
        and stop their threads."""
        state = self.state
        state.config = config
        self.ctx = FactoryContext.of(config)
        before = set(state.pollers)
        old = state.queues
        queues: dict[str, QueueRuntime] = {}
        state.built_failed = {}
        for qc in config.active_queues():
            previous = old.get(qc.name)
            if previous is not None and previous.config.fingerprint() == qc.fingerprint():
                queues[qc.name] = previous
                continue
            try:
                queues[qc.name] = self._queue(qc)
            except Exception as exc:  # one queue's status plugin must not stop the others
                error = f"cannot set up: {type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"
                state.built_failed[qc.name] = error
                log.error("queue %s: %s", qc.name, error)
                self.event("queue-error", error, qc.name)
        for name, runtime in old.items():
            if queues.get(name) is not runtime and runtime.submitter is not None:
                submitter = runtime.submitter
                self.close(f"queue {name}", lambda s=submitter: close_submitter_plugin(s))
        used = {id(r.batch_poller) for r in queues.values()} | {
            id(r.wms_poller) for r in queues.values() if r.wms_poller is not None
        }
        removed = []
        for key in [k for k, p in state.pollers.items() if id(p) not in used]:
            poller = state.pollers.pop(key)
            removed.append(poller)
        # every poller learns its queues again (a reload may move queues between endpoints)
        for poller in state.pollers.values():
            if poller.kind == "wmsstatus":
                poller.wmsqueues = frozenset(r.demand_key for r in queues.values() if r.wms_poller is poller)
        for runtime in queues.values():
            runtime.batch_poller.plugin.register(runtime.config)
            if runtime.wms_poller is not None:
                runtime.wms_poller.plugin.register(runtime.config)
        state.queues = queues
        state.pilots = {name: state.pilots.get(name, ()) for name in queues}
        self._cascades(config)
        added = [p for k, p in state.pollers.items() if k not in before]
        return added, removed

    def _cascades(self, config: FactoryConfig) -> None:
        state = self.state
        old = state.cascades
        state.cascades = {}
        for rt in state.queues.values():
            rt.cascade = None
        if config.policy is None:
            return
        scale_ups: dict[str, float] | None = None
        for cascade in config.policy.cascades:
            tiers = [state.queues[t.queue] for t in cascade.ordered if t.queue in state.queues]
            if not tiers:
                continue
            cr = CascadeRuntime(cascade, tiers)
            previous = old.get(cascade.name)
            if previous is not None:  # a reload keeps the cascade's memory
                cr.keep_memory(previous)
                cr.seen_batch = {}
            else:
                if scale_ups is None:
                    try:
                        scale_ups = self.last_intent_times()
                    except Exception as exc:  # the store is down: start without the memory
                        log.error("cascade %s: cannot read past scale-ups: %s", cascade.name, exc)
                        scale_ups = {}
                cr.last_scale_up = {rt.name: scale_ups[rt.name] for rt in tiers if rt.name in scale_ups}
            for rt in tiers:
                rt.cascade = cascade.name
            state.cascades[cascade.name] = cr

    def _poller(self, cls: type[WmsStatusPlugin] | type[BatchStatusPlugin], qc: QueueConfig) -> Poller:
        kind = cls.kind
        key: Hashable = cls.endpoint(qc, self.ctx)
        poller = self.state.pollers.get(key)
        if poller is not None:
            return poller
        plugin = cls(key, self.ctx)
        config = self.state.config
        interval = config.poll_setting(kind, cls.name, "sleep", cls.default_interval)
        maxage = config.poll_setting(kind, cls.name, "maxage", cls.default_maxage)
        max_backoff = config.poll_setting(
            kind, cls.name, "maxbackoff", interval * cls.default_maxbackoff_intervals
        )
        label = plugin.describe_endpoint()
        poller = Poller(kind, label, plugin, interval, max(maxage, interval), max(max_backoff, interval))
        poller.on_result = self.on_poll
        self.state.pollers[key] = poller
        return poller

    def _queue(self, qc: QueueConfig) -> QueueRuntime:
        sched = tuple(plugin_class(spec, SchedPlugin)(spec.options) for spec in qc.sched)
        batch_poller = self._poller(plugin_class(qc.batchstatus, BatchStatusPlugin), qc)
        wms_poller = None
        demand_key = qc.name
        if qc.wmsstatus is not None:
            wms_cls = plugin_class(qc.wmsstatus, WmsStatusPlugin)
            wms_poller = self._poller(wms_cls, qc)
            demand_key = wms_cls.demand_key(qc, self.ctx) or qc.wmsqueue or qc.name
        submitter, error = None, None
        try:
            submit_cls = plugin_class(qc.batchsubmit, BatchSubmitPlugin)
            submitter = submit_cls(qc, qc.batchsubmit.options, self.ctx)
        except Exception as exc:  # a queue that cannot act still decides and reports why
            error = f"cannot set up {qc.batchsubmit.name}: {exc}"
            log.error("queue %s: %s", qc.name, error)
            self.event("queue-error", error, qc.name)
        monitors = []
        for section in [s.strip() for s in (qc.settings.monitorsection or "").split(",") if s.strip()]:
            monitor = self._monitor(section)
            if monitor is not None:
                monitors.append(monitor)
        # the auth profiles its plugins' keys name (their options declare them)
        credentials: tuple[str, ...] = ()
        try:
            credentials = queue_profiles(qc, self.ctx.auth_profiles)
        except PluginError as exc:  # a profile name that is not defined: the queue cannot act
            error = error or str(exc)
            if submitter is not None:
                self.close(f"queue {qc.name}", lambda s=submitter: close_submitter_plugin(s))
                submitter = None
        return QueueRuntime(
            qc,
            sched,
            batch_poller,
            wms_poller,
            submitter,
            error,
            tuple(monitors),
            demand_key,
            retire=submitter.retire_options if submitter is not None else None,
            credentials=credentials,
        )

    def _monitor(self, section: str) -> MonitorPlugin | None:
        state = self.state
        if section in state.monitors:
            return state.monitors[section]
        ms = state.config.monitors.get(section)
        if ms is None:
            return None
        try:
            cls = load("monitor", ms.plugin)
            if not issubclass(cls, MonitorPlugin):
                raise PluginError(f"monitor plugin {ms.plugin!r} is not a MonitorPlugin")
            monitor = cls(section, ms.options, self.ctx, url=ms.monitorURL)
        except Exception as exc:
            log.error("monitor %s: cannot start: %s", section, exc)
            return None
        state.monitors[section] = monitor
        return monitor


def close_submitter(runtime: QueueRuntime) -> None:
    if runtime.submitter is not None:
        close_submitter_plugin(runtime.submitter)


def close_submitter_plugin(submitter: BatchSubmitPlugin) -> None:
    try:
        submitter.close()
    except Exception:
        log.exception("queue %s: close failed", submitter.queue.name)
