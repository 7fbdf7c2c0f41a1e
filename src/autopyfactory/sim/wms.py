"""``wmsstatusplugin = Sim``: demand from config keys, for demos, tests and simulation.

``wmsstatus.sim.activated = 40`` gives constant demand; ``wmsstatus.sim.steps = 0:10, 60:50, 180:0``
gives a step function of seconds since the factory started (optionally repeating every
``wmsstatus.sim.period`` seconds); ``wmsstatus.sim.trace = demand.csv`` replays a
``time,wmsqueue,activated`` trace. One poller serves every queue that uses Sim.
"""

from __future__ import annotations

import bisect
from collections.abc import Hashable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from pydantic import Field, field_validator

from autopyfactory.model import Demand, WmsSnapshot
from autopyfactory.plugins.base import FactoryContext, PluginOptions, WmsStatusPlugin

if TYPE_CHECKING:
    from autopyfactory.config.models import QueueConfig
    from autopyfactory.sim.trace import DemandTrace


def parse_steps(text: str) -> tuple[tuple[float, int], ...]:
    """'0:10, 60:50' -> ((0, 10), (60, 50)), sorted by time."""
    points = []
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        when, sep, value = item.partition(":")
        if not sep:
            raise ValueError(f"step {item!r} is not 'seconds:activated'")
        t, v = float(when), int(value)
        if t < 0 or v < 0:
            raise ValueError(f"step {item!r} has a negative time or value")
        points.append((t, v))
    if not points:
        raise ValueError("no steps given")
    return tuple(sorted(points))


class SimWmsOptions(PluginOptions):
    activated: int | None = Field(None, ge=0, le=1_000_000, description="constant ready (activated) jobs")
    steps: str | None = Field(
        None, description="demand over time, 'seconds:activated, ...' from the factory's start"
    )
    period: float | None = Field(
        None, gt=0, le=31_622_400, description="repeat steps every this many seconds"
    )
    trace: str | None = Field(None, description="CSV demand trace (time,wmsqueue,activated)")
    site_status: str = Field("online", description="site status reported: online, test, offline, brokeroff")
    running: int = Field(0, ge=0, le=1_000_000, description="running jobs reported")
    # Model pilots taking jobs: activated = level - pilots the factory sees running for this
    # WMS queue (a real WMS's activated count drops as pilots pick jobs up).
    consume: bool = Field(False, description="pilots take jobs: activated drops by the running pilots")

    @field_validator("steps")
    @classmethod
    def _steps(cls, value: str | None) -> str | None:
        if value is not None:
            parse_steps(value)
        return value

    @field_validator("activated")
    @classmethod
    def _activated(cls, value: int | None) -> int | None:
        if value is not None and value < 0:
            raise ValueError("must be >= 0")
        return value


@dataclass(frozen=True)
class _Source:
    options: SimWmsOptions
    steps: tuple[tuple[float, int], ...] = ()
    times: tuple[float, ...] = ()

    def ready(self, elapsed: float, trace_value: int | None) -> int:
        if trace_value is not None:
            return trace_value
        if self.steps:
            if self.options.period:
                elapsed %= self.options.period
            i = bisect.bisect_right(self.times, elapsed) - 1
            return self.steps[i][1] if i >= 0 else 0
        return self.options.activated or 0


class SimWmsStatus(WmsStatusPlugin):
    name = "Sim"
    Options = SimWmsOptions
    default_interval = 10.0
    default_maxage = 120.0
    adjusts_demand = True  # running pilots take jobs (``consume``)

    @classmethod
    def endpoint(cls, queue: QueueConfig, factory: FactoryContext) -> Hashable:
        return ("Sim",)

    def __init__(self, endpoint: Hashable, factory: FactoryContext) -> None:
        super().__init__(endpoint, factory)
        self.sources: dict[str, _Source] = {}
        self.start: float | None = None
        self._traces: dict[str, object] = {}
        # set by the simulator: one trace (absolute times) for every WMS queue
        self.trace_override: DemandTrace | None = None

    def register(self, queue: QueueConfig) -> None:
        options = queue.plugin_options("wmsstatus")
        assert isinstance(options, SimWmsOptions)
        steps = parse_steps(options.steps) if options.steps else ()
        wmsqueue = queue.wmsqueue or queue.name
        defines = options.activated is not None or options.steps or options.trace
        if wmsqueue in self.sources and not defines:
            return  # another queue serving this WMS queue defines its demand
        self.sources[wmsqueue] = _Source(options, steps, tuple(t for t, _ in steps))
        if options.trace and options.trace not in self._traces:
            from autopyfactory.sim.trace import load_trace

            self._traces[options.trace] = load_trace(options.trace)

    def poll(self, now: float, wmsqueues: frozenset[str]) -> WmsSnapshot:
        if self.start is None:
            self.start = now
        elapsed = now - self.start
        demands = {}
        if self.trace_override is not None:
            for wmsqueue in {*self.trace_override.wmsqueues, *self.sources}:
                source = self.sources.get(wmsqueue)
                demands[wmsqueue] = Demand(
                    wmsqueue=wmsqueue,
                    ready=self.trace_override.at(wmsqueue, now),
                    site_status=source.options.site_status if source else "online",
                    time=now,
                )
            return WmsSnapshot(time=now, demands=demands)
        for wmsqueue, source in self.sources.items():
            trace_value = None
            if source.options.trace:
                trace = self._traces[source.options.trace]
                trace_value = trace.value_at(wmsqueue, elapsed, now)  # type: ignore[attr-defined]
            demands[wmsqueue] = Demand(
                wmsqueue=wmsqueue,
                ready=source.ready(elapsed, trace_value),
                running=source.options.running,
                site_status=source.options.site_status,
                time=now,
            )
        return WmsSnapshot(time=now, demands=demands)

    def at_decision(self, demand: Demand, running: int) -> Demand:
        source = self.sources.get(demand.wmsqueue)
        if source is None or not source.options.consume:
            return demand
        return replace(demand, ready=max(0, demand.ready - running), running=demand.running + running)
