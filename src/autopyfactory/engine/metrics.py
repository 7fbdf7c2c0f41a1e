"""Prometheus metrics: an engine Observer that keeps per-queue and per-poller numbers in its own
``CollectorRegistry``; the daemon's web server (``web.address``) serves them at ``/metrics``.

Each factory gets its own registry (never the process-global one), so two factories in one
process, or tests, do not mix their numbers. The hooks only update in-memory values and never
raise.

Metrics (label ``queue`` unless noted):

* ``apf_queue_ready`` — the WMS ready (activated) count the queue decided on
* ``apf_queue_pilots_pending``, ``apf_queue_pilots_running`` — its pilots at decision time
* ``apf_queue_decision`` — the chain's last n (negative: scale down)
* ``apf_queue_decision_binding`` — 1 for the plugin that bound the last decision (label ``plugin``,
  ``none`` when no plugin changed the number)
* ``apf_queue_decisions_total``, ``apf_queue_pilots_submitted_total``, ``apf_queue_action_failures_total``
* ``apf_poller_up``, ``apf_poller_last_success_timestamp_seconds``, ``apf_poller_age_seconds``
  (computed at scrape time), ``apf_poller_errors_total``, ``apf_poller_polls_total`` —
  labels ``endpoint`` and ``kind``
* ``apf_cycle_duration_seconds`` (histogram), ``apf_cycle_last_duration_seconds``,
  ``apf_cycle_queues_decided``
* ``apf_factory_info`` — label ``factory``, value 1
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from autopyfactory.engine.events import Observer
from autopyfactory.model import Demand, Pilot, Plan, Supply

log = logging.getLogger("autopyfactory.metrics")


class _PollerCollector(Collector):
    """Poller numbers whose value depends on the time of the scrape (age)."""

    def __init__(self, owner: Metrics) -> None:
        self.owner = owner

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        now = self.owner.clock()
        labels = ["endpoint", "kind"]
        up = GaugeMetricFamily(
            "apf_poller_up", "1 if the last poll of this endpoint succeeded", labels=labels
        )
        last = GaugeMetricFamily(
            "apf_poller_last_success_timestamp_seconds", "time of the last successful poll", labels=labels
        )
        age = GaugeMetricFamily(
            "apf_poller_age_seconds",
            "seconds since the last successful poll (since start if none)",
            labels=labels,
        )
        errors = CounterMetricFamily("apf_poller_errors", "failed polls", labels=labels)
        polls = CounterMetricFamily("apf_poller_polls", "polls", labels=labels)
        with self.owner.lock:
            items = list(self.owner.pollers.items())
        for (endpoint, kind), p in items:
            key = [endpoint, kind]
            up.add_metric(key, 1.0 if p["ok"] else 0.0)
            if p["last_ok"] is not None:
                last.add_metric(key, p["last_ok"])
            age.add_metric(key, max(0.0, now - (p["last_ok"] if p["last_ok"] is not None else p["first"])))
            errors.add_metric(key, p["errors"])
            polls.add_metric(key, p["polls"])
        yield from (up, last, age, errors, polls)


class Metrics(Observer):
    def __init__(
        self,
        factory_id: str,
        *,
        clock: Callable[[], float] = time.time,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.factory_id = factory_id
        self.clock = clock
        self.registry = registry or CollectorRegistry(auto_describe=True)
        self.lock = threading.Lock()
        self.pollers: dict[tuple[str, str], dict[str, float | int | bool | None]] = {}
        self._binding: dict[str, str] = {}
        r = self.registry
        q = ["queue"]
        self.info = Gauge("apf_factory_info", "this factory", ["factory"], registry=r)
        self.ready = Gauge(
            "apf_queue_ready", "WMS ready (activated) jobs the queue decided on", q, registry=r
        )
        self.pending = Gauge("apf_queue_pilots_pending", "pending pilots at decision time", q, registry=r)
        self.running = Gauge("apf_queue_pilots_running", "running pilots at decision time", q, registry=r)
        self.decision = Gauge("apf_queue_decision", "the scheduler chain's last n", q, registry=r)
        self.binding = Gauge(
            "apf_queue_decision_binding",
            "1 for the plugin that bound the last decision",
            ["queue", "plugin"],
            registry=r,
        )
        self.decisions = Counter("apf_queue_decisions", "decisions made", q, registry=r)
        self.submitted = Counter("apf_queue_pilots_submitted", "pilots submitted", q, registry=r)
        self.failures = Counter(
            "apf_queue_action_failures", "failed actions (submit, cancel, retire)", q, registry=r
        )
        self.cycle = Histogram(
            "apf_cycle_duration_seconds",
            "duration of a decision cycle",
            registry=r,
            buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60),
        )
        self.cycle_last = Gauge(
            "apf_cycle_last_duration_seconds", "duration of the last decision cycle", registry=r
        )
        self.cycle_queues = Gauge("apf_cycle_queues_decided", "queues decided in the last cycle", registry=r)
        r.register(_PollerCollector(self))
        self.info.labels(factory=factory_id).set(1)

    # -- Observer hooks (fast, never raise) -----------------------------------------------------

    def on_start(self, factory_id: str, queues: Sequence[str]) -> None:
        try:
            for q in queues:  # every queue shows up at once, with zero counts
                self.decisions.labels(queue=q)
                self.submitted.labels(queue=q)
                self.failures.labels(queue=q)
        except Exception:
            log.exception("metrics on_start")

    def on_poll(self, endpoint: str, kind: str, ok: bool, time: float, error: str | None) -> None:
        try:
            with self.lock:
                p = self.pollers.setdefault(
                    (str(endpoint), kind),
                    {"ok": False, "last_ok": None, "first": time, "errors": 0, "polls": 0},
                )
                p["polls"] = int(p["polls"] or 0) + 1
                p["ok"] = ok
                if ok:
                    p["last_ok"] = time
                else:
                    p["errors"] = int(p["errors"] or 0) + 1
        except Exception:
            log.exception("metrics on_poll")

    def on_decision(self, plan: Plan, demand: Demand | None, supply: Supply | None) -> None:
        try:
            d = plan.decision
            q = plan.queue
            ready = d.ready if d.ready is not None else (demand.ready if demand is not None else None)
            if ready is not None:
                self.ready.labels(queue=q).set(ready)
            pending = (
                d.pending if d.pending is not None else (supply.pending + supply.held if supply else None)
            )
            if pending is not None:
                self.pending.labels(queue=q).set(pending)
            running = d.running if d.running is not None else (supply.running if supply else None)
            if running is not None:
                self.running.labels(queue=q).set(running)
            self.decision.labels(queue=q).set(d.n)
            self.decisions.labels(queue=q).inc()
            binding = d.binding or "none"
            with self.lock:
                previous = self._binding.get(q)
                self._binding[q] = binding
            if previous is not None and previous != binding:
                try:
                    self.binding.remove(q, previous)
                except KeyError:
                    pass
            self.binding.labels(queue=q, plugin=binding).set(1)
        except Exception:
            log.exception("metrics on_decision")

    def on_submitted(self, queue: str, pilots: Sequence[Pilot]) -> None:
        try:
            self.submitted.labels(queue=queue).inc(len(pilots))
        except Exception:
            log.exception("metrics on_submitted")

    def on_action_failed(self, queue: str, target: str, error: str) -> None:
        try:
            self.failures.labels(queue=queue).inc()
        except Exception:
            log.exception("metrics on_action_failed")

    def on_cycle(self, duration: float, queues_decided: int, now: float) -> None:
        try:
            self.cycle.observe(duration)
            self.cycle_last.set(duration)
            self.cycle_queues.set(queues_decided)
        except Exception:
            log.exception("metrics on_cycle")
