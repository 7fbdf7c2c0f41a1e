"""Prometheus view of credential health, computed at scrape time.

* ``apf_credential_seconds_left`` (labels ``profile``, ``kind``): time left; absent for keys
  without an end (SSH, cloud keys, opaque tokens)
* ``apf_credential_state`` (labels ``profile``, ``state``): 1 for the profile's current state
* ``apf_credential_usable`` (label ``profile``): 1 when a queue may submit with it

Register on the factory's own registry: ``registry.register(CredentialCollector(manager))``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from autopyfactory.credentials.health import CredentialHealth, HealthState


class CredentialCollector(Collector):
    def __init__(
        self, source: Callable[[], Mapping[str, CredentialHealth]], clock: Callable[[], float]
    ) -> None:
        self.source = source
        self.clock = clock

    def collect(self) -> Iterator[GaugeMetricFamily]:
        now = self.clock()
        left = GaugeMetricFamily(
            "apf_credential_seconds_left", "seconds until the credential expires", labels=["profile", "kind"]
        )
        state = GaugeMetricFamily(
            "apf_credential_state", "1 for the credential's current health state", labels=["profile", "state"]
        )
        usable = GaugeMetricFamily(
            "apf_credential_usable", "1 when queues may submit with this credential", labels=["profile"]
        )
        for name, health in sorted(self.source().items()):
            seconds = health.seconds_left(now)
            if seconds is not None:
                left.add_metric([name, health.kind], seconds)
            for s in HealthState:
                state.add_metric([name, s.value], 1.0 if s is health.state else 0.0)
            usable.add_metric([name], 1.0 if health.usable and (seconds is None or seconds > 0) else 0.0)
        yield left
        yield state
        yield usable
