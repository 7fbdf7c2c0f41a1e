"""The record stage: what a pass decided, and what happened since, written in ONE transaction.

Other threads add what must be recorded (pilot changes from the pollers' snapshots, intent
settlements from action results, events from anywhere) to thread-safe buffers; the loop writes the
buffers together with the pass's decisions and intents (and their quota reservations) in one
transaction (``Store.record_pass``). When the store fails, nothing of the pass is written, no
intent exists, so nothing is submitted; the buffers are kept and written as soon as the store
works again, so no pilot record, settlement or event is lost.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from autopyfactory.model import Decision, Pilot
from autopyfactory.store.api import EventRow, IntentRequest, PassResult, Settlement, Store, StoreError

log = logging.getLogger("autopyfactory.store")

# events kept while the store is down; beyond this the oldest are dropped (and counted)
MAX_BUFFERED_EVENTS = 10_000


@dataclass
class StoreHealth:
    ok: bool = True
    error: str | None = None
    failing_since: float | None = None
    failures: int = 0
    dropped_events: int = 0


class Recorder:
    def __init__(
        self,
        store: Store,
        factory_id: str,
        *,
        dry_run: bool,
        record_pilots: bool,
        clock: Callable[[], float],
        on_health: Callable[[StoreHealth], None] | None = None,
    ) -> None:
        self.store = store
        self.factory_id = factory_id
        self.dry_run = dry_run
        self.record_pilots = record_pilots
        self.clock = clock
        self.on_health = on_health
        self.health = StoreHealth()
        self._lock = threading.Lock()
        self._pilots: dict[tuple[str, str], Pilot] = {}
        self._events: list[EventRow] = []
        self._settlements: list[Settlement] = []

    # -- buffers (any thread) ---------------------------------------------------------------------
    def pilots(self, items: Iterable[Pilot]) -> None:
        """Pilot rows to write (the latest report of a pilot wins)."""
        if not self.record_pilots or self.dry_run:
            return
        with self._lock:
            for p in items:
                self._pilots[(p.queue, p.backend_id)] = p

    def event(self, kind: str, message: str, queue: str | None = None, time: float | None = None) -> None:
        row = EventRow(self.clock() if time is None else time, kind, message, queue)
        with self._lock:
            self._events.append(row)
            if len(self._events) > MAX_BUFFERED_EVENTS:
                del self._events[0]
                self.health.dropped_events += 1

    def settle(self, settlement: Settlement) -> None:
        with self._lock:
            self._settlements.append(settlement)

    def pending(self) -> int:
        """Rows waiting to be written (visible in ``apf status`` while the store fails)."""
        with self._lock:
            return len(self._pilots) + len(self._events) + len(self._settlements)

    # -- the write (loop thread) --------------------------------------------------------------------
    def commit(
        self, now: float, decisions: Sequence[Decision] = (), intents: Sequence[IntentRequest] = ()
    ) -> PassResult | None:
        """Write the pass and the buffers in one transaction. None when the store failed: nothing
        was written, and the buffers are kept for the next pass."""
        with self._lock:
            pilots, self._pilots = self._pilots, {}
            events, self._events = self._events, []
            settlements, self._settlements = self._settlements, []
        if not (pilots or events or settlements or decisions or intents):
            return PassResult()
        try:
            result = self.store.record_pass(
                self.factory_id,
                now,
                decisions_=decisions,
                dry_run=self.dry_run,
                intents_=intents if not self.dry_run else (),
                settlements=settlements,
                pilots_=list(pilots.values()),
                events_=events,
            )
        except StoreError as exc:
            with self._lock:  # keep everything; what arrived meanwhile is newer
                self._pilots = {**pilots, **self._pilots}
                self._events = events + self._events
                self._settlements = settlements + self._settlements
            self._failed(str(exc), now)
            return None
        self._ok(now)
        return result

    def _failed(self, error: str, now: float) -> None:
        h = self.health
        first = h.ok
        h.ok, h.error, h.failures = False, error, h.failures + 1
        if first:
            h.failing_since = now
            log.error("store failing, nothing is submitted until it works again: %s", error)
        else:
            log.warning("store still failing (%d passes): %s", h.failures, error)
        if self.on_health is not None:
            self.on_health(h)

    def _ok(self, now: float) -> None:
        h = self.health
        if h.ok:
            return
        since = h.failing_since or now
        log.warning("store works again after %.0fs", now - since)
        self.health = StoreHealth(dropped_events=h.dropped_events)
        self.event("store-recovered", f"the store works again after failing for {now - since:.0f}s", time=now)
        if self.on_health is not None:
            self.on_health(self.health)
