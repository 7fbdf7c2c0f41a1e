"""Pure choice of which pilots a negative decision takes back (retire before kill)."""

from __future__ import annotations

from collections.abc import Sequence

from autopyfactory.model import Pilot, PilotState


def select_for_retire(
    n: int, pilots: Sequence[Pilot], killorder: str = "newest"
) -> tuple[list[str], list[str]]:
    """Take back ``n`` pilots: idle ones first (cancel), then running ones in ``killorder`` (drain).

    Returns (ids to cancel, ids to retire). Pilots already retiring are not counted again.
    """
    if n <= 0:
        return [], []
    idle = [p for p in pilots if p.state in (PilotState.PENDING, PilotState.HELD)]
    # newest idle first: the oldest are closest to starting
    idle.sort(key=lambda p: p.submitted_at or 0.0, reverse=True)
    cancel = [p.backend_id for p in idle[:n]]
    left = n - len(cancel)
    retire: list[str] = []
    if left > 0:
        running = [p for p in pilots if p.state is PilotState.RUNNING]
        running.sort(key=lambda p: p.started_at or p.submitted_at or 0.0, reverse=(killorder == "newest"))
        retire = [p.backend_id for p in running[:left]]
    return cancel, retire
