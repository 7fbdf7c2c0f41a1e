"""StatusOffline: a fixed number of pilots (usually 0) while the site is offline."""

from __future__ import annotations

from autopyfactory.decide.sched._status import StatusPlugin


class StatusOffline(StatusPlugin):
    name = "StatusOffline"
    status = "offline"
