"""StatusTest: a fixed number of pilots while the site is in test."""

from __future__ import annotations

from autopyfactory.decide.sched._status import StatusPlugin


class StatusTest(StatusPlugin):
    name = "StatusTest"
    status = "test"
