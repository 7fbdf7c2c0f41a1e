"""The reconcile stage: what the batch endpoints report, against what the store remembers.

Each new batch snapshot is grouped by queue (the planner's pilots), compared with the previous one
(state changes go to the store), and, the first time an endpoint answers after a start, used to
adopt: intents a crash left open are settled from the pilots found under their tag, and pilots the
store thinks active but the endpoint no longer lists are handed to the endpoint's poller to settle
(Slurm: sacct) on its own thread. The backend is the truth.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import replace
from typing import Any

from autopyfactory.engine.pollers import Poller
from autopyfactory.engine.record import Recorder
from autopyfactory.engine.state import EngineState
from autopyfactory.model import BatchSnapshot, Pilot, PilotState
from autopyfactory.plugins.base import BatchStatusPlugin, Interruption
from autopyfactory.store.api import Settlement, Store, StoreError

log = logging.getLogger("autopyfactory.factory")

_ACTIVE = [s.value for s in PilotState if s.active]


class Reconciler:
    def __init__(
        self,
        state: EngineState,
        store: Store,
        recorder: Recorder,
        run_action: Callable[[str, Callable[[], None]], None] | None = None,
        on_interrupted: Callable[[Interruption], None] | None = None,
    ) -> None:
        """``run_action(target, fn)`` runs backend work off the loop (removing leaked resources);
        ``on_interrupted`` hears of resources the provider stopped (metrics)."""
        self.state = state
        self.store = store
        self.recorder = recorder
        self.run_action = run_action or (lambda _target, fn: fn())
        self.on_interrupted = on_interrupted
        # per batch poller: every pilot it last reported (or we just submitted), by (queue, id)
        self._known: dict[int, dict[tuple[str, str], Pilot]] = {}
        # per batch poller: when we recorded pilots it has not listed yet (our clock, after the
        # submission returned); a cloud's submitted_at is its own launch time, whole seconds
        self._recorded: dict[int, dict[tuple[str, str], float]] = {}
        self._absorbed: dict[int, float] = {}
        self._adopted: set[int] = set()
        self._leaks_reported: set[int] = set()

    @property
    def adopting(self) -> bool:
        """True until every batch endpoint has been adopted after the start."""
        return any(
            p.kind == "batchstatus" and id(p) not in self._adopted for p in self.state.pollers.values()
        )

    def forget(self, pollers: Iterable[Poller]) -> None:
        for poller in pollers:
            for memo in (self._known, self._absorbed, self._recorded):
                memo.pop(id(poller), None)
            self._adopted.discard(id(poller))
            self._leaks_reported.discard(id(poller))

    def absorb(self, now: float) -> None:
        """Take in every batch snapshot and settled pilot that arrived since the last pass."""
        for poller in list(self.state.pollers.values()):
            if poller.kind != "batchstatus":
                continue
            settled = poller.take_settled()
            if settled:
                self.recorder.pilots(settled)
            snap = poller.latest
            if isinstance(snap, BatchSnapshot) and self._absorbed.get(id(poller)) != snap.time:
                self._absorb(poller, snap, now)
            elif id(poller) not in self._adopted and isinstance(snap, BatchSnapshot):
                self._adopt(poller, snap, now)  # the store failed last time: try again

    def submitted(self, poller: Poller, pilots: Sequence[Pilot], at: float | None = None) -> None:
        """Pilots we just created (``at``: when the submission returned): known before the endpoint
        lists them."""
        known = self._known.setdefault(id(poller), {})
        recorded = self._recorded.setdefault(id(poller), {})
        for pilot in pilots:
            known.setdefault((pilot.queue, pilot.backend_id), pilot)
            if at is not None:
                recorded[(pilot.queue, pilot.backend_id)] = at
        self.recorder.pilots(pilots)

    def _queues_of(self, poller: Poller) -> set[str]:
        return {r.name for r in self.state.queues.values() if r.batch_poller is poller}

    def _absorb(self, poller: Poller, snap: BatchSnapshot, now: float) -> None:
        by_queue: dict[str, list[Pilot]] = defaultdict(list)
        for pilot in snap.pilots:
            by_queue[pilot.queue].append(pilot)
        mine = self._queues_of(poller)
        for name in mine:
            self.state.pilots[name] = tuple(by_queue.get(name, ()))
        if not self.recorder.dry_run:
            plugin = poller.plugin
            if isinstance(plugin, BatchStatusPlugin) and plugin.reconciles_leaks:
                self._leaks(poller, plugin, now)  # against what we knew before this poll
            self.recorder.pilots(self._changes(poller, snap))
            if id(poller) not in self._adopted:
                self._adopt(poller, snap, now)
        unknown = sorted(set(by_queue) - set(self.state.queues))
        if unknown and id(poller) not in self._leaks_reported:
            self._leaks_reported.add(id(poller))
            self.recorder.event(
                "leaked",
                f"{poller.label}: pilots tagged for queues not configured: {', '.join(unknown[:10])}",
            )
        self._absorbed[id(poller)] = snap.time

    def _leaks(self, poller: Poller, plugin: BatchStatusPlugin, now: float) -> None:
        """Tagged resources nobody recorded: adopted when their queue exists, else terminated after
        the plugin's grace (an action, off the loop); provider interruptions become events."""
        queues = set(self.state.queues)
        known = {bid for (queue, bid) in self._known.get(id(poller), {}) if queue in queues}
        open_ids = self.state.my_intents | self.state.inflight_intents
        report = plugin.reconcile_leaks(known, open_ids, queues, now)
        if report.adopt:
            self.recorder.pilots(report.adopt)
            for queue in sorted({p.queue for p in report.adopt}):
                ids = [p.backend_id for p in report.adopt if p.queue == queue]
                self.recorder.event(
                    "adopt",
                    f"{poller.label}: adopted {len(ids)} tagged resources nobody recorded: {', '.join(ids[:10])}",
                    queue,
                )
        if report.terminate:
            ids = list(report.terminate)
            self.recorder.event(
                "leak",
                f"{poller.label}: terminating {len(ids)} leaked resources (their queue is gone): {', '.join(ids[:10])}",
            )

            def remove(ids: list[str] = ids) -> None:
                try:
                    plugin.terminate_leaked(ids)
                except Exception as exc:
                    self.recorder.event("leak", f"{poller.label}: cannot terminate leaked resources: {exc}")

            self.run_action(f"leaks:{poller.label}", remove)
        for item in plugin.take_interruptions():
            kind = "spot interruption" if item.spot else "stopped by the provider"
            self.recorder.event(
                "interrupted", f"{item.instance_id}: {kind}: {item.reason}", item.queue, time=item.time
            )
            if self.on_interrupted is not None:
                self.on_interrupted(item)

    def _changes(self, poller: Poller, snap: BatchSnapshot) -> list[Pilot]:
        """Compared with the last poll: state changes, and active pilots the endpoint dropped."""
        old = self._known.get(id(poller), {})
        recorded = self._recorded.get(id(poller), {})
        new: dict[tuple[str, str], Pilot] = {}
        changed: list[Pilot] = []
        for pilot in snap.pilots:
            key = (pilot.queue, pilot.backend_id)
            previous = old.get(key)
            if previous is None or previous.state != pilot.state:
                changed.append(pilot)
            new[key] = pilot
            recorded.pop(key, None)  # listed: no longer waiting to be
        for key, pilot in old.items():
            if key in new:
                continue
            since = max(pilot.submitted_at or 0.0, recorded.get(key, 0.0))
            if since >= snap.time:
                new[key] = pilot  # submitted after this poll began: not visible yet
                continue
            recorded.pop(key, None)
            if pilot.state.active:
                # an active pilot the backend no longer lists: the backend is the truth
                changed.append(replace(pilot, state=PilotState.UNKNOWN))
        self._known[id(poller)] = new
        return changed

    def _adopt(self, poller: Poller, snap: BatchSnapshot, now: float) -> None:
        """After a start: settle intents a crash left open, and pilots that left while we were away.
        Reads the store; if it fails, the next pass tries again."""
        mine = self._queues_of(poller)
        try:
            open_intents = self.store.open_intents(self.state.factory_id)
            rows = self.store.pilots(self.state.factory_id, states=_ACTIVE)
        except StoreError as exc:
            log.warning("%s: cannot adopt yet, the store fails: %s", poller.label, exc)
            return
        self._adopted.add(id(poller))
        by_intent: dict[str, int] = defaultdict(int)
        for pilot in snap.pilots:
            if pilot.intent_id:
                by_intent[pilot.intent_id] += 1
        for intent in open_intents:
            if intent.queue not in mine or intent.id in self.state.my_intents:
                continue
            found = by_intent.get(intent.id, 0)
            status = "adopted" if found else "lost"
            # a lost intent (the crash came before the submission) gives its quota back; an adopted
            # one keeps it (pilots that ran and ended while we were away are not listed any more)
            release = intent.n if not found and intent.tier else 0
            self.recorder.settle(
                Settlement(
                    intent.id, status, found, now, None if found else "no pilot found under its tag", release
                )
            )
            self.recorder.event(
                "adopt",
                f"intent {intent.id} ({intent.n} asked): {found} pilots found in the backend, settled as {status}",
                intent.queue,
            )
        listed = {(p.queue, p.backend_id) for p in snap.pilots}
        stale = [
            pilot_from_row(row)
            for row in rows
            if row["queue"] in mine
            and (row["queue"], row["backend_id"]) not in listed
            and (row["submitted_at"] or 0.0) < snap.time
        ]
        if not stale:
            return
        plugin = poller.plugin
        if isinstance(plugin, BatchStatusPlugin) and plugin.settles:
            poller.request_settle(stale)  # its thread asks the backend (e.g. sacct)
        else:
            self.recorder.pilots(replace(p, state=PilotState.UNKNOWN) for p in stale)
        self.recorder.event(
            "reconcile", f"{poller.label}: {len(stale)} pilots left the backend while we were away; settled"
        )


def pilot_from_row(row: Mapping[str, Any]) -> Pilot:
    """A pilot as the store remembers it (a row of ``Store.pilots``)."""

    def text(key: str) -> str | None:
        value = row[key]
        return None if value is None else str(value)

    def number(key: str) -> float | None:
        value = row[key]
        return None if value is None else float(value)

    code = row["exit_code"]
    return Pilot(
        backend_id=str(row["backend_id"]),
        queue=str(row["queue"]),
        state=PilotState(str(row["state"])),
        intent_id=text("intent_id"),
        submitted_at=number("submitted_at"),
        started_at=number("started_at"),
        ended_at=number("ended_at"),
        instance_id=text("instance_id"),
        node=text("node"),
        tier=text("tier"),
        exit_code=None if code is None else int(code),
    )
