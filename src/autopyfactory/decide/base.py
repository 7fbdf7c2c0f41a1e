"""The scheduler-plugin contract and the chain runner: pure code, no I/O, no clock reads."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from autopyfactory.model import Demand, Step, Supply, ThrottleHistory
from autopyfactory.plugins.options import Plugin, PluginOptions


@dataclass(frozen=True, slots=True)
class SchedContext:
    """What a scheduler plugin may read. ``None`` means missing or stale (older than maxage)."""

    queue: str
    now: float
    demand: Demand | None = None
    supply: Supply | None = None
    site_status: str | None = None
    # Active pilots (pending + running) of every queue at the same batch endpoint (MaxPerFactory)
    factory_active: int | None = None
    # [Factory] maxperfactory.maximum
    factory_max: int | None = None
    history: ThrottleHistory | None = None


class SchedPlugin(Plugin):
    """``calc(ctx, n) -> (n, reason)``; the first plugin of a chain gets n = 0."""

    kind = "sched"

    def __init__(self, options: PluginOptions | None = None) -> None:
        self.options = options if options is not None else self.Options()

    def calc(self, ctx: SchedContext, n: int) -> tuple[int, str]:
        raise NotImplementedError

    def history_window(self) -> tuple[float, float] | None:
        """(interval, maxtime) in seconds when the plugin reads ``ctx.history``: the engine then
        counts the queue's pilots started in the last ``interval`` and those that ran less than
        ``maxtime``. None (the default): the plugin needs no history."""
        return None


def run_chain(plugins: Sequence[SchedPlugin], ctx: SchedContext) -> tuple[int, tuple[Step, ...]]:
    """APF chain semantics: start at 0, each output feeds the next, no clamping anywhere."""
    n = 0
    steps: list[Step] = []
    for plugin in plugins:
        out, reason = plugin.calc(ctx, n)
        steps.append(Step(plugin.name, n, out, reason))
        n = out
    return n, tuple(steps)
