"""The report stage: observers and monitors hear of every decision; ``status()`` tells operators
what the daemon is doing (``apf status`` reads it from the status file, the web from memory).

The status is built on the loop's thread after a pass and published as an immutable dict, so
readers on other threads (web, metrics) never iterate state the loop is changing.
"""

from __future__ import annotations

import json
import logging
import os
import socket
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from autopyfactory.config.models import FactoryConfig
from autopyfactory.engine.act import safe
from autopyfactory.engine.events import Observer
from autopyfactory.engine.record import Recorder
from autopyfactory.engine.snapshot import Snapshot
from autopyfactory.engine.state import EngineState
from autopyfactory.model import Decision, Plan
from autopyfactory.plugins.base import BatchStatusPlugin

log = logging.getLogger("autopyfactory.factory")

STATUS_INTERVAL = 2.0  # seconds between writes of the status file while the factory decides
HEARTBEAT_INTERVAL = 15.0  # ... and while it is idle (``apf status`` reads liveness from it)


def label_message(decision: Decision) -> str:
    """APF's monitor message: one ``Name:in=..,out=..`` item per step, ';'-joined."""
    return ";".join(f"{s.plugin}:in={s.n_in},ret={s.n_out}" for s in decision.steps)


def status_path(config: FactoryConfig, dry_run: bool = False) -> Path:
    """The daemon's status file (a dry run writes its own, never the real daemon's)."""
    suffix = "-dry-run" if dry_run else ""
    return config.settings.state_path / f"status-{config.factory_id}{suffix}.json"


class Reporter:
    def __init__(
        self,
        state: EngineState,
        recorder: Recorder,
        observers: list[Observer],
        *,
        dry_run: bool,
        clock: Callable[[], float],
    ) -> None:
        self.state = state
        self.recorder = recorder
        self.observers = observers
        self.dry_run = dry_run
        self.clock = clock
        self.metrics_url: str | None = None
        self.published: dict[str, Any] = {}
        self._next_write = 0.0
        self._changed = False
        self.started = clock()
        self.host = socket.gethostname()

    def decisions(self, plans: Sequence[Plan], snapshot: Snapshot) -> None:
        """Tell observers and each queue's monitors (monitors queue the post on their own thread)."""
        for plan in plans:
            obs = snapshot.queues.get(plan.queue)
            demand = obs.demand if obs is not None else None
            supply = obs.supply if obs is not None else None
            for observer in self.observers:
                safe(observer.on_decision, plan, demand, supply)
            rt = self.state.queues.get(plan.queue)
            if rt is not None and rt.monitors and not self.dry_run:
                message = label_message(plan.decision)
                for monitor in rt.monitors:
                    safe(monitor.update_label, rt.name, message)
        if plans:
            self._changed = True

    def status(self, now: float) -> dict[str, Any]:
        state = self.state
        health = self.recorder.health
        return {
            "factory": state.factory_id,
            "time": now,
            "pid": os.getpid(),
            "host": self.host,
            "started": self.started,
            "heartbeat": now,
            "dry_run": self.dry_run,
            "metrics": self.metrics_url,
            "store": {
                "ok": health.ok,
                "error": health.error,
                "failing_since": health.failing_since,
                "pending_writes": self.recorder.pending(),
                "dropped_events": health.dropped_events,
            },
            "pollers": {p.label: p.state(now) for p in state.pollers.values()},
            "targets": {
                t: f"backing off for {max(0.0, s.until - now):.0f}s after: {s.error}"
                for t, s in state.targets.items()
                if s.failures
            },
            "queues": {
                r.name: {
                    "error": r.error,
                    "decisions": r.memory.decisions,
                    "inflight": r.memory.inflight,
                    "batch": r.batch_poller.label,
                    "wms": r.wms_poller.label if r.wms_poller else None,
                    "cascade": r.cascade,
                }
                for r in state.queues.values()
            },
            # per cloud endpoint: leaked resources now, adopted / terminated / interrupted totals
            "cloud": {
                p.label: p.plugin.counters()
                for p in state.pollers.values()
                if isinstance(p.plugin, BatchStatusPlugin) and p.plugin.reconciles_leaks
            },
            "failed_queues": {**state.failed, **{r.name: r.error for r in state.queues.values() if r.error}},
            "cascades": {
                c.name: {
                    "backoff_until": {t: u for t, u in c.backoff_until.items() if u > now},
                    "last": c.last.as_dict() if c.last is not None else None,
                }
                for c in state.cascades.values()
            },
        }

    def publish(self, now: float, force: bool = False) -> None:
        """Refresh the published status and the status file: after passes that decided something
        (at most every STATUS_INTERVAL), and as a heartbeat while idle."""
        if not force and now < self._next_write:
            return
        if not force and not self._changed and now < self._next_write + HEARTBEAT_INTERVAL - STATUS_INTERVAL:
            return
        self._changed = False
        self._next_write = now + STATUS_INTERVAL
        self.published = self.status(now)
        path = status_path(self.state.config, self.dry_run)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(self.published))
            os.replace(tmp, path)
        except OSError:
            log.debug("cannot write %s", path, exc_info=True)

    def stopped(self, now: float) -> None:
        """The daemon stops: say so in the status file (``apf status``: not running since ...)."""
        self.published = self.status(now) | {"stopped": now}
        path = status_path(self.state.config, self.dry_run)
        try:
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(self.published))
            os.replace(tmp, path)
        except OSError:
            log.debug("cannot write %s", path, exc_info=True)
