"""Idle cancellation for any queue: which pending pilots to cancel this cycle, and why. Pure code.

Two rules, each off unless its key is set (queues.conf, see ``config.models.QueueSettings``):

- ``cancel.pending_after = 30m``: a pilot still pending (or held) that long after submission has
  not found a slot; cancel it so the demand can be served elsewhere (the roadmap's "cancel pilots
  that haven't started yet, so we can submit more elsewhere").
- ``cancel.excess_pending = True``: when the chain decided no more pilots (n <= 0) and more pilots
  are pending than the queue's current demand (its share of the WMS queue's ready jobs), cancel
  the difference. AutoPyFactory never did this: its Ready plugin stops at 0 and pending pilots
  wait forever when the demand drops.

Together they cancel at most ``cancel.maxpercycle`` pilots per cycle, newest first (the oldest
are the closest to starting), and never a pilot that runs: only ``pending`` and ``held`` ones.
Nothing is cancelled without a fresh batch snapshot (``pilots is None``); the excess rule also needs
fresh demand. Pilots whose submission time is unknown are never "too old".
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass, replace

from autopyfactory.decide.cancel_settings import CancelSettings
from autopyfactory.model import Action, Cancel, Decision, Demand, Pilot, PilotState, Step

IDLE_STATES = frozenset({PilotState.PENDING, PilotState.HELD})
STEP_NAME = "Cancel"


@dataclass(frozen=True)
class IdleCancel:
    """What to cancel: backend ids (newest first), why each, and the step ``apf explain`` shows."""

    backend_ids: tuple[str, ...]
    reasons: tuple[tuple[str, str], ...]  # (backend id, why)
    step: Step

    def message(self) -> str:
        """One line for the event log."""
        return f"cancelling {len(self.backend_ids)} idle pilots: {self.step.reason}"


def _age_text(seconds: float) -> str:
    if seconds >= 3600:
        return f"{seconds / 3600:.1f}h"
    if seconds >= 60:
        return f"{seconds / 60:.0f}m"
    return f"{seconds:.0f}s"


def idle_cancellations(
    pilots: Sequence[Pilot] | None,
    demand: Demand | None,
    n: int,
    settings: CancelSettings,
    now: float,
    exclude: Collection[str] = (),
) -> IdleCancel | None:
    """The pending pilots of one queue to cancel now, or None.

    ``pilots``: the queue's pilots from a fresh batch snapshot (None when stale or missing);
    ``demand``: the queue's part of its WMS demand (None when stale or missing); ``n``: the chain's
    decision; ``exclude``: ids already taken back this cycle (a negative decision's cancellations)."""
    if not settings.enabled or pilots is None:
        return None
    taken = set(exclude)
    idle = [p for p in pilots if p.state in IDLE_STATES and p.backend_id not in taken]
    if not idle:
        return None

    def newest_first(items: list[Pilot]) -> list[Pilot]:
        return sorted(
            items,
            key=lambda p: (p.submitted_at if p.submitted_at is not None else float("-inf"), p.backend_id),
            reverse=True,
        )

    why: dict[str, str] = {}
    stale: list[Pilot] = []
    if settings.pending_after is not None:
        for p in idle:
            if p.submitted_at is not None and now - p.submitted_at >= settings.pending_after:
                stale.append(p)
                why[p.backend_id] = f"pending for {_age_text(now - p.submitted_at)}"
    excess: list[Pilot] = []
    ready = None
    if settings.excess_pending and demand is not None and n <= 0:
        ready = max(0, demand.ready)
        fresh = [p for p in idle if p.backend_id not in why]
        count = len(fresh) - ready
        if count > 0:
            excess = newest_first(fresh)[:count]
            for p in excess:
                why[p.backend_id] = f"beyond demand (ready={ready})"
    chosen = newest_first(stale + excess)
    if not chosen:
        return None
    capped = chosen[: settings.maxpercycle]
    parts = [f"pending={len(idle)}"]
    if stale:
        parts.append(
            f"{len(stale)} pending longer than cancel.pending_after={_age_text(settings.pending_after or 0)}"
        )
    if excess:
        parts.append(f"{len(excess)} beyond the demand (ready={ready}, n={n})")
    if len(capped) < len(chosen):
        parts.append(f"{len(capped)} of {len(chosen)} this cycle (cancel.maxpercycle={settings.maxpercycle})")
    parts.append(f"cancel {len(capped)}, newest first")
    # the chain's n passes through unchanged (cancelling idle pilots is not a decision about n)
    step = Step(STEP_NAME, n, n, "; ".join(parts))
    ids = tuple(p.backend_id for p in capped)
    return IdleCancel(ids, tuple((i, why[i]) for i in ids), step)


def with_idle_cancel(
    decision: Decision, actions: tuple[Action, ...], cancel: IdleCancel | None
) -> tuple[Decision, tuple[Action, ...]]:
    """The decision with the Cancel step appended (for ``apf explain``) and the Cancel action added."""
    if cancel is None:
        return decision, actions
    steps = (*decision.steps, cancel.step)
    return replace(decision, steps=steps), (*actions, Cancel(decision.queue, cancel.backend_ids))
