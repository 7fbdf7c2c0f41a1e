"""``FactoryView``: the read interface the dashboard and the JSON API are written against.

The pages and the API call nothing else of the factory. A factory (today's ``engine.Factory``
through ``web.engine_view.EngineView``; the restructured engine directly) implements it.

Contract for implementers:

* Every method is called from web worker threads, concurrently with the decision loop. It must
  not take the decision loop's locks, must not call a backend, a transport or the network, and
  should return within milliseconds: read the factory's in-memory state (snapshots, the last
  decision of each queue, backoffs) and bounded store queries (``web.queries``).
* What it returns is a copy: the web never mutates factory state (read-only by construction).
* Nothing it returns holds a secret: credentials by profile name, URLs without passwords.
* A store failure raises ``ViewError`` (the page still shows what memory holds).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from autopyfactory.web.models import (
    CascadeView,
    DecisionRecord,
    EventRecord,
    Health,
    PilotRecord,
    QueueInfo,
    QueueSummary,
    Series,
)


class ViewError(Exception):
    """The store (or another read source) failed; the message holds no secret."""


@runtime_checkable
class FactoryView(Protocol):
    @property
    def factory_id(self) -> str: ...

    def now(self) -> float:
        """The factory's clock (a virtual one under simulation)."""
        ...

    def summaries(self) -> Sequence[QueueSummary]:
        """Every configured queue with the numbers of its last decision and its state, in config
        order. Called for every overview page: keep it O(queues) on memory, cache for a second."""
        ...

    def queue_info(self, name: str) -> QueueInfo | None:
        """One queue's plugins, pollers and in-flight actions; None if there is no such queue."""
        ...

    def decisions(self, queue: str, limit: int) -> list[DecisionRecord]:
        """A queue's (or ``cascade:NAME``'s) last decisions, newest first, every step."""
        ...

    def events(self, queue: str | None, limit: int) -> list[EventRecord]:
        """Events of a queue (or of the factory when ``queue`` is None), newest first."""
        ...

    def pilots(self, queue: str, limit: int) -> tuple[list[PilotRecord], int]:
        """A queue's newest pilots (with ``log`` set where the pilot log server has the file) and
        the total number of pilot records the queue has."""
        ...

    def history(self, queues: Sequence[str], since: float, points: int) -> dict[str, Series]:
        """Decisions of each queue since ``since`` in at most ``points`` buckets (charts and
        sparklines); queues without decisions are missing from the result."""
        ...

    def cascades(self) -> list[CascadeView]:
        """Every cascade: tiers in fill order with their status, quota burn-down, cost per month."""
        ...

    def health(self) -> Health:
        """Pollers, targets, credentials, store, monitors, the decision loop."""
        ...
