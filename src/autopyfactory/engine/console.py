"""A live terminal table of queues (the demo's view); plain lines when not on a terminal."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TextIO

from autopyfactory.engine.events import Observer
from autopyfactory.model import Demand, Pilot, Plan, Supply


class ConsoleTable(Observer):
    def __init__(self, out: TextIO, live: bool = True) -> None:
        self.out = out
        self.live = live
        self.rows: dict[str, tuple[str, ...]] = {}
        self.changed: list[str] = []
        self.submitted: dict[str, int] = {}
        self.started = time.time()

    def on_decision(self, plan: Plan, demand: Demand | None, supply: Supply | None) -> None:
        d = plan.decision
        self.rows[plan.queue] = (
            plan.queue,
            "-" if demand is None else str(demand.ready),
            "-" if supply is None else str(supply.pending + supply.held),
            "-" if supply is None else str(supply.running),
            "-" if supply is None else str(supply.done),
            str(d.n),
            d.binding or "-",
        )
        self.changed.append(plan.queue)

    def on_submitted(self, queue: str, pilots: Sequence[Pilot]) -> None:
        self.submitted[queue] = self.submitted.get(queue, 0) + len(pilots)

    def on_cycle(self, duration: float, queues_decided: int, now: float) -> None:
        header = ("queue", "demand", "pending", "running", "done", "last n", "binding")
        if self.live:
            rows = [header, *(self.rows[q] for q in sorted(self.rows))]
            widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
            lines = [
                "  ".join(
                    c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True))
                )
                for r in rows
            ]
            elapsed = now - self.started
            total = sum(self.submitted.values())
            self.out.write("\x1b[H\x1b[2J")
            self.out.write(
                f"autopyfactory  t={elapsed:6.0f}s  cycle {duration * 1000:.0f} ms  submitted {total} pilots\n\n"
            )
            self.out.write("\n".join(lines) + "\n")
        else:
            for queue in self.changed:
                row = self.rows[queue]
                self.out.write(" ".join(f"{k}={v}" for k, v in zip(header, row, strict=True)) + "\n")
        self.changed.clear()
        self.out.flush()
