"""``monitorplugin = Dummy``: logs what a monitor would be told (and keeps the last calls)."""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Sequence

from autopyfactory.model import Pilot
from autopyfactory.plugins.base import FactoryContext, MonitorPlugin, PluginOptions

log = logging.getLogger("autopyfactory.monitor.dummy")


class Dummy(MonitorPlugin):
    name = "Dummy"

    def __init__(
        self, section: str, options: PluginOptions, factory: FactoryContext, *, url: str | None = None
    ) -> None:
        super().__init__(section, options, factory)
        self.url = url
        # the last calls, for `apf status` and tests; bounded so a long run uses constant memory
        self.calls: deque[tuple[str, str, object]] = deque(maxlen=1000)

    def register_factory(self, queues: Sequence[str]) -> None:
        self.calls.append(("register_factory", self.factory.factory_id, tuple(queues)))
        log.info(
            "[%s] register factory %s with queues %s",
            self.section,
            self.factory.factory_id,
            ", ".join(queues),
        )

    def register_pilots(self, queue: str, pilots: Sequence[Pilot]) -> None:
        ids = tuple(p.backend_id for p in pilots)
        self.calls.append(("register_pilots", queue, ids))
        log.info("[%s] %s: %d new pilots %s", self.section, queue, len(ids), " ".join(ids[:20]))

    def update_label(self, queue: str, message: str) -> None:
        self.calls.append(("update_label", queue, message))
        log.info("[%s] %s: %s", self.section, queue, message)
