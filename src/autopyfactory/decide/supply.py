"""Pure aggregation of observed pilots into per-queue Supply (the hot path for large factories)."""

from __future__ import annotations

from collections.abc import Iterable

from autopyfactory.model import Pilot, PilotState, Supply

# index into the per-queue counter list
_SLOT = {
    PilotState.PENDING: 0,
    PilotState.RUNNING: 1,
    PilotState.HELD: 2,
    PilotState.RETIRING: 3,
    PilotState.RETIRED: 3,
    PilotState.DONE: 4,
    PilotState.FAILED: 5,
    PilotState.CANCELLED: 5,
    PilotState.UNKNOWN: 6,
}


def aggregate(pilots: Iterable[Pilot], time: float) -> dict[str, Supply]:
    """Count pilots per queue and state; remember each queue's oldest pending submission."""
    counts: dict[str, list[int]] = {}
    oldest: dict[str, float] = {}
    slot = _SLOT
    pending = PilotState.PENDING
    for p in pilots:
        c = counts.get(p.queue)
        if c is None:
            c = counts[p.queue] = [0, 0, 0, 0, 0, 0, 0]
        c[slot[p.state]] += 1
        if p.state is pending and p.submitted_at is not None:
            current = oldest.get(p.queue)
            if current is None or p.submitted_at < current:
                oldest[p.queue] = p.submitted_at
    return {
        q: Supply(q, c[0], c[1], c[2], c[3], c[4], c[5], c[6], time, oldest.get(q)) for q, c in counts.items()
    }
