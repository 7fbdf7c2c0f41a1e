"""A queue's idle-cancellation keys (``cancel.*`` in queues.conf), as plain data for ``decide.cancel``."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class CancelSettings:
    """A queue's idle-cancellation keys (``cancel.*``), for ``decide.cancel``."""

    pending_after: float | None = None
    excess_pending: bool = False
    maxpercycle: int = 100

    @property
    def enabled(self) -> bool:
        return self.pending_after is not None or self.excess_pending
