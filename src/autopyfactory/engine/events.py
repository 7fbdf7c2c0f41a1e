"""Observers of the engine: monitors, metrics and alerts subscribe here.

The engine calls these hooks synchronously from its own threads; an observer must return
quickly and never raise into the engine (slow work goes to the observer's own thread).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from autopyfactory.model import Demand, Pilot, Plan, Supply

if TYPE_CHECKING:
    from autopyfactory.credentials.health import CredentialHealth


class Observer:
    def on_start(self, factory_id: str, queues: Sequence[str]) -> None:
        pass

    def on_poll(self, endpoint: str, kind: str, ok: bool, time: float, error: str | None) -> None:
        """A poller finished a poll (kind is 'wmsstatus' or 'batchstatus')."""

    def on_decision(self, plan: Plan, demand: Demand | None, supply: Supply | None) -> None:
        pass

    def on_submitted(self, queue: str, pilots: Sequence[Pilot]) -> None:
        pass

    def on_action_failed(self, queue: str, target: str, error: str) -> None:
        pass

    def on_cycle(self, duration: float, queues_decided: int, now: float) -> None:
        pass

    def on_store(self, ok: bool, error: str | None) -> None:
        """The store started failing (``ok`` False) or works again."""

    def on_credential(self, health: CredentialHealth) -> None:
        """A credential profile's health changed (on the credential manager's threads)."""

    def on_interrupted(self, queue: str, instance_id: str, reason: str, spot: bool) -> None:
        """The provider stopped one of the queue's VMs (a spot interruption, capacity)."""

    def on_stop(self) -> None:
        pass
