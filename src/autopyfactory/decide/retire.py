"""Pure choice of which pilots a negative decision takes back (retire before kill)."""

from __future__ import annotations

from collections.abc import Sequence

from autopyfactory.model import Pilot, PilotState


def pick_idle(pilots: Sequence[Pilot], k: int, newest_first: bool = True) -> list[str]:
    """``k`` pilots that have not started (pending or held), newest or longest-waiting first."""
    if k <= 0:
        return []
    idle = [p for p in pilots if p.state in (PilotState.PENDING, PilotState.HELD)]
    idle.sort(key=lambda p: p.submitted_at or 0.0, reverse=newest_first)
    return [p.backend_id for p in idle[:k]]


def pick_running(pilots: Sequence[Pilot], k: int, killorder: str = "newest") -> list[str]:
    """``k`` running pilots in ``killorder`` (newest or oldest start first)."""
    if k <= 0:
        return []
    running = [p for p in pilots if p.state is PilotState.RUNNING]
    running.sort(key=lambda p: p.started_at or p.submitted_at or 0.0, reverse=(killorder == "newest"))
    return [p.backend_id for p in running[:k]]


def select_for_retire(
    n: int, pilots: Sequence[Pilot], killorder: str = "newest"
) -> tuple[list[str], list[str]]:
    """Take back ``n`` pilots: idle ones first (cancel), then running ones in ``killorder`` (drain).

    Returns (ids to cancel, ids to retire). Pilots already retiring are not counted again.
    """
    if n <= 0:
        return [], []
    cancel = pick_idle(pilots, n)  # newest idle first: the oldest are closest to starting
    return cancel, pick_running(pilots, n - len(cancel), killorder)
