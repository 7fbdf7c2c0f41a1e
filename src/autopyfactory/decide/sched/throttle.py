"""Throttle: back off to a trickle when most recent pilots die young (a broken site)."""

from __future__ import annotations

from pydantic import Field

from autopyfactory.config.bounds import COUNT_MAX, SECONDS_MAX
from autopyfactory.decide.base import SchedContext, SchedPlugin
from autopyfactory.plugins.options import PluginOptions


class Throttle(SchedPlugin):
    """If more than ``ratio`` of the pilots started in the last ``interval`` seconds ran less than
    ``maxtime`` seconds, give ``submit``; else n. The engine counts them into ``ctx.history``
    using ``interval`` and ``maxtime``."""

    name = "Throttle"

    class Options(PluginOptions):
        interval: int = Field(
            3600, ge=1, le=int(SECONDS_MAX), description="seconds of pilot history looked at"
        )
        maxtime: int = Field(10, ge=0, le=int(SECONDS_MAX), description="a pilot that ran less is short")
        ratio: float = Field(
            0.5, ge=0, le=1, allow_inf_nan=False, description="above this share of short pilots, throttle"
        )
        submit: int = Field(1, ge=0, le=COUNT_MAX, description="pilots per cycle while throttled")

    options: Options

    def history_window(self) -> tuple[float, float]:
        return float(self.options.interval), float(self.options.maxtime)

    def calc(self, ctx: SchedContext, n: int) -> tuple[int, str]:
        history = ctx.history
        if history is None:
            return n, f"no pilot history: {n} unchanged"
        opts = self.options
        if history.total == 0:
            return n, f"no pilots started in the last {opts.interval} s: {n} unchanged"
        frac = history.short / history.total
        counts = (
            f"{history.short} of {history.total} pilots ran < {opts.maxtime} s "
            f"({frac:.2f}, ratio={opts.ratio!r})"
        )
        if frac > opts.ratio:
            return opts.submit, f"{counts} -> submit={opts.submit}"
        return n, f"{counts}: {n} unchanged"
