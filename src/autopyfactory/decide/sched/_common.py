"""Helpers shared by the scheduler plugins: APF's P and R, and the 'missing info' wording."""

from __future__ import annotations

from autopyfactory.model import Supply

NO_WMS = "no WMS info (missing or stale)"
NO_BATCH = "no batch info (missing or stale)"


def pending(supply: Supply) -> int:
    """APF's P: held pilots count as pending (mappings.conf maps HTCondor JobStatus 5 to pending)."""
    return supply.pending + supply.held


def running(supply: Supply) -> int:
    """APF's R. A retiring pilot still holds its slot (HTCondor keeps a draining job in JobStatus 2)."""
    return supply.running + supply.retiring
