"""The offline optimum: a lower bound on cost and unserved demand for a demand trace and a set of
tiers, as a linear programme solved by HiGHS (``highspy``). A yardstick for
``apf simulate --compare``, not a policy: it knows the whole trace in advance.

The model is a *fluid relaxation* on blocks of about an hour (a whole number of simulation
steps): every schedule the engine could follow maps to a feasible solution of it with the same
cost and no more unserved demand, so no policy can do better than its answers. Per tier and block:

* ``S[j]``: pilots started in block ``j`` (continuous: a relaxation of whole pilots);
* ``y[j, l]``: pilot-hours those pilots run in block ``j + l``; each pilot runs at most
  ``runtime`` in all and at most the block's length in each block (so pilot counts, which
  quotas limit, stay exact in steady state), and none runs before ``start + start_delay``;
* the pilot-hours in a block stay within the site's ``capacity`` and the policy's ``cap`` (times
  the block length); pilots started per quota period stay within ``quotas[].pilots``, and
  pilot-hours within ``quotas[].pilot_hours`` (a rolling window counts the blocks it covers);
* the unserved job-hours of a block are at least its demand's job-hours minus the pilot-hours of
  the tiers serving that WMS queue (the true integral is never smaller: convexity).

Relaxed against the simulation: pilots may run anywhere within a block (and pause between
blocks), pending pilots do not count against caps, start delays only matter at the beginning,
and quota periods count a pilot where it starts. Stage 1 minimises unserved job-hours; then, for
each level of unserved demand asked (the least possible, and each compared configuration's), the
least cost (pilot-hours times ``cost_per_hour``) that leaves no more unserved than that.
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from autopyfactory.config.models import FactoryConfig
from autopyfactory.config.policy import PolicyDocument, Quota
from autopyfactory.sim.batch import SimSubmitOptions
from autopyfactory.sim.metrics import Months
from autopyfactory.sim.trace import DemandTrace

BLOCK = 3600.0  # about an hour: the relaxation's time resolution near demand changes (whole steps)
COARSE = 4  # blocks through steady demand are this many times longer
TOLERANCE = 1e-6  # relative slack on the unserved level when minimising cost


class OptimumError(Exception):
    """The linear programme could not be built or solved (the message says why)."""


@dataclass(frozen=True)
class TierModel:
    """What the optimum knows of one tier (queue)."""

    name: str
    wmsqueue: str
    site: str
    capacity: int
    start_delay: float
    runtime: float
    cost_per_hour: float = 0.0
    cap: int | None = None
    quotas: tuple[Quota, ...] = ()


def tier_models(
    config: FactoryConfig, policy: PolicyDocument | None, costs: Mapping[str, float] | None = None
) -> list[TierModel]:
    """The tiers of a configuration: every active Sim queue, with the caps, quotas and costs its
    policy gives (queues that are not tiers: no cap, no quota; cost from the Sim backend's
    ``cost_per_hour``, else ``costs``)."""
    out = []
    for qc in config.active_queues():
        options = qc.plugin_options("batchsubmit")
        if not isinstance(options, SimSubmitOptions):
            raise OptimumError(f"queue [{qc.name}] does not use the Sim backend")
        cascade = policy.cascade_of(qc.name) if policy is not None else None
        tier = cascade.tier(qc.name) if cascade is not None else None
        if tier is not None:
            cost = tier.cost_per_hour
        elif options.cost_per_hour is not None:
            cost = options.cost_per_hour
        else:
            cost = (costs or {}).get(qc.name, 0.0)
        out.append(
            TierModel(
                name=qc.name,
                wmsqueue=cascade.demand if cascade is not None else (qc.wmsqueue or qc.name),
                site=options.site or qc.name,
                capacity=options.capacity,
                start_delay=options.start_delay,
                runtime=options.runtime,
                cost_per_hour=cost,
                cap=tier.cap if tier is not None else None,
                quotas=tier.quotas if tier is not None else (),
            )
        )
    return out


@dataclass
class Solution:
    """One point of the optimum: the least cost that leaves at most ``unserved_job_hours``."""

    unserved_job_hours: float
    cost: float
    months: dict[str, dict[str, Any]]

    def as_dict(self) -> dict[str, Any]:
        return {
            "unserved_job_hours": round(self.unserved_job_hours, 2),
            "cost": round(self.cost, 2),
            "months": self.months,
        }


@dataclass
class OptimumResult:
    best: Solution  # the least unserved demand, and the least cost for it
    at: dict[float, Solution] = field(default_factory=dict)  # per asked unserved level
    block_s: float = BLOCK
    solve_s: float = 0.0
    variables: int = 0
    constraints: int = 0

    def cost_at(self, unserved: float) -> Solution:
        """The cheapest solution leaving at most ``unserved`` (one that was asked for)."""
        level = max(unserved, self.best.unserved_job_hours)
        key = min(self.at, key=lambda k: abs(k - level), default=None)
        return self.at[key] if key is not None and abs(key - level) <= 1e-6 * max(1.0, level) else self.best

    def as_dict(self) -> dict[str, Any]:
        return {
            "model": f"fluid relaxation on {self.block_s / 60:g}-minute blocks (a lower bound)",
            "solve_s": round(self.solve_s, 3),
            "variables": self.variables,
            "constraints": self.constraints,
            "best": self.best.as_dict(),
            "at": [{"unserved_limit": round(k, 2)} | v.as_dict() for k, v in sorted(self.at.items())],
        }


class _LP:
    """A sparse LP built row by row (columns by index)."""

    def __init__(self) -> None:
        self.lower: list[float] = []
        self.upper: list[float] = []
        self.rows: list[tuple[list[int], list[float], float, float]] = []

    def var(self, n: int = 1, upper: float = math.inf) -> int:
        first = len(self.lower)
        self.lower += [0.0] * n
        self.upper += [upper] * n
        return first

    def row(
        self, terms: Mapping[int, float] | Sequence[tuple[int, float]], lower: float, upper: float
    ) -> None:
        items = terms.items() if isinstance(terms, Mapping) else terms
        merged: dict[int, float] = defaultdict(float)
        for col, coef in items:
            merged[col] += coef
        cols = [c for c, v in merged.items() if v]
        if cols:
            self.rows.append((cols, [merged[c] for c in cols], lower, upper))


@dataclass
class _Tier:
    model: TierModel
    starts: int  # column of S[0]
    hours: list[list[tuple[int, int]]]  # per block: (column of y, cohort block) running in it


def solve_optimum(
    tiers: Sequence[TierModel],
    trace: DemandTrace,
    start: float,
    end: float,
    step: float,
    levels: Sequence[float] = (),
) -> OptimumResult:
    """Solve stage 1 (least unserved), then the least cost at that level and at each of
    ``levels`` (job-hours of unserved demand, e.g. what each compared configuration left)."""
    model = Optimum(tiers, trace, start, end, step)
    model.least()
    for level in levels:
        model.cheapest(level)
    return model.result


class Optimum:
    """The relaxation built once; ``least()`` solves stage 1, ``cheapest(level)`` the least cost
    leaving at most ``level`` job-hours unserved (warm-started from the previous solve)."""

    def __init__(
        self, tiers: Sequence[TierModel], trace: DemandTrace, start: float, end: float, step: float
    ) -> None:
        try:
            import highspy
            import numpy as np
        except ImportError as exc:  # an optional dependency
            raise OptimumError(
                f"the offline optimum needs highspy ({exc.name} is not installed): pip install 'autopyfactory[sim]'"
            ) from None
        self._highspy, self._np = highspy, np
        began = time.perf_counter()
        if not tiers:
            raise OptimumError("no tiers to schedule")
        block = step * max(1, round(BLOCK / step))
        changes = sorted({t for w in {t.wmsqueue for t in tiers} for t, _ in trace.steps(w, start, end)[1:]})
        edges = _edges(tiers, start, end, block, changes)
        n_blocks = len(edges) - 1
        length = [(edges[j + 1] - edges[j]) / 3600.0 for j in range(n_blocks)]  # hours
        months = Months(start, end)
        lp = _LP()
        inf = math.inf
        built: list[_Tier] = []
        for t in tiers:
            runtime_h = t.runtime / 3600.0
            first_start = start + t.start_delay
            starts = lp.var(n_blocks)
            hours: list[list[tuple[int, int]]] = [[] for _ in range(n_blocks)]
            for j in range(n_blocks):
                if edges[j + 1] <= first_start:
                    lp.upper[starts + j] = 0.0  # nothing can start before its start delay
                    continue
                cohort: dict[int, float] = {}
                # a pilot started in block j runs until the block's end plus its runtime at most
                b = j - 1
                while b + 1 < n_blocks and edges[b + 1] < edges[j + 1] + t.runtime:
                    b += 1
                    y = lp.var()
                    hours[b].append((y, j))
                    cohort[y] = 1.0
                    # a pilot runs at most the block's length in one block (less in its first block
                    # when the start delay ends inside it)
                    usable = (edges[b + 1] - max(edges[b], first_start)) / 3600.0
                    lp.row({y: 1.0, starts + j: -max(0.0, usable)}, -inf, 0.0)
                cohort[starts + j] = -runtime_h  # each pilot runs at most its runtime
                lp.row(cohort, -inf, 0.0)
            for j in range(n_blocks):
                limit = float(t.capacity if t.cap is None else min(t.capacity, t.cap)) * length[j]
                lp.row([(y, 1.0) for y, _ in hours[j]], -inf, limit)
            built.append(_Tier(t, starts, hours))
            for quota in t.quotas:
                _quota_rows(lp, built[-1], quota, edges, block)

        # tiers on one site share its slots
        by_site: dict[str, list[_Tier]] = defaultdict(list)
        for bt in built:
            by_site[bt.model.site].append(bt)
        for members in by_site.values():
            if len(members) > 1:
                capacity = min(bt.model.capacity for bt in members)
                for j in range(n_blocks):
                    lp.row([(y, 1.0) for bt in members for y, _ in bt.hours[j]], -inf, capacity * length[j])

        # unserved job-hours per WMS queue and block
        unserved: list[tuple[int, str]] = []
        by_wms: dict[str, list[_Tier]] = defaultdict(list)
        for bt in built:
            by_wms[bt.model.wmsqueue].append(bt)
        for wmsqueue, members in by_wms.items():
            steps = trace.steps(wmsqueue, start, end)
            for j in range(n_blocks):
                wanted = _job_hours(steps, edges[j], edges[j + 1])
                u = lp.var()
                unserved.append((u, months.key(edges[j])))
                lp.row([(u, 1.0)] + [(y, 1.0) for bt in members for y, _ in bt.hours[j]], wanted, inf)

        n_col, n_row = len(lp.lower), len(lp.rows)
        model = highspy.HighsLp()
        model.num_col_, model.num_row_ = n_col, n_row
        model.col_lower_ = np.array(lp.lower, dtype=np.float64)
        model.col_upper_ = np.array(lp.upper, dtype=np.float64)
        model.row_lower_ = np.array([r[2] for r in lp.rows], dtype=np.float64)
        model.row_upper_ = np.array([r[3] for r in lp.rows], dtype=np.float64)
        counts = np.fromiter((len(r[0]) for r in lp.rows), dtype=np.int32, count=n_row)
        starts_idx = np.zeros(n_row + 1, dtype=np.int32)
        np.cumsum(counts, out=starts_idx[1:])
        model.a_matrix_.format_ = highspy.MatrixFormat.kRowwise
        model.a_matrix_.num_col_, model.a_matrix_.num_row_ = n_col, n_row
        model.a_matrix_.start_ = starts_idx
        model.a_matrix_.index_ = np.fromiter(
            (c for r in lp.rows for c in r[0]), dtype=np.int32, count=int(starts_idx[-1])
        )
        model.a_matrix_.value_ = np.fromiter(
            (v for r in lp.rows for v in r[1]), dtype=np.float64, count=int(starts_idx[-1])
        )
        unserved_cols = np.array([u for u, _ in unserved], dtype=np.int32)
        stage1 = np.zeros(n_col)
        stage1[unserved_cols] = 1.0
        model.col_cost_ = stage1
        h = _quiet_highs(highspy)
        # the interior point method without crossover: several times faster than the simplex method
        # on these long, degenerate time-expanded programmes; only aggregates of the solution are used
        h.setOptionValue("solver", "ipm")
        h.setOptionValue("run_crossover", "off")
        if h.passModel(model) != highspy.HighsStatus.kOk:
            raise OptimumError("the linear programme is malformed")
        self._h = h
        self._built, self._unserved, self._edges, self._months = built, unserved, edges, months
        self._n_col, self._n_row = n_col, n_row
        self._unserved_cols = unserved_cols
        # least cost: pilot-hours times price, and a negligible price on starts (no useless pilots)
        cost = np.zeros(n_col)
        for bt in built:
            for j in range(n_blocks):
                for y, _ in bt.hours[j]:
                    cost[y] = bt.model.cost_per_hour
            cost[bt.starts : bt.starts + n_blocks] = 1e-7
        self._cost = cost
        self.result = OptimumResult(best=Solution(0.0, 0.0, {}), block_s=block)
        self.result.variables, self.result.constraints = n_col, n_row + 1
        self._least: float | None = None
        self.result.solve_s = time.perf_counter() - began

    def least(self) -> Solution:
        """The least unserved demand possible, at its least cost."""
        began = time.perf_counter()
        h, highspy, np = self._h, self._highspy, self._np
        _run(h, highspy, "stage 1 (least unserved demand)")
        least = h.getInfo().objective_function_value
        self._least = least
        h.changeColsCost(self._n_col, np.arange(self._n_col, dtype=np.int32), self._cost)
        cols = self._unserved_cols
        h.addRow(-math.inf, math.inf, len(cols), cols, np.ones(len(cols)))
        self.result.best = self._solve_at(least)
        self.result.solve_s += time.perf_counter() - began
        return self.result.best

    def cheapest(self, level: float) -> Solution:
        """The least cost leaving at most ``level`` job-hours unserved (no less than possible)."""
        if self._least is None:
            self.least()
        assert self._least is not None
        if level <= self._least:
            self.result.at[level] = self.result.best
            return self.result.best
        began = time.perf_counter()
        solution = self._solve_at(level)
        self.result.at[level] = solution
        self.result.solve_s += time.perf_counter() - began
        return solution

    def _solve_at(self, level: float) -> Solution:
        h = self._h
        h.changeRowBounds(self._n_row, -math.inf, level * (1 + TOLERANCE) + TOLERANCE)
        _run(h, self._highspy, "the least cost")
        x = self._np.asarray(h.getSolution().col_value)
        return _solution(self._built, x, self._unserved, self._edges, self._months)


def _quiet_highs(highspy: Any) -> Any:
    """A solver object without its banner: HiGHS prints it on stdout when constructed, whatever the
    options, and stdout carries ``--json`` output."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 1)
            h = highspy.Highs()
            h.setOptionValue("output_flag", False)
    finally:
        os.dup2(saved, 1)
        os.close(saved)
    return h


def _run(h: Any, highspy: Any, what: str) -> None:
    h.run()
    status = h.getModelStatus()
    if status != highspy.HighsModelStatus.kOptimal:
        raise OptimumError(f"{what} did not solve: {h.modelStatusToString(status)}")


def _edges(
    tiers: Sequence[TierModel], start: float, end: float, block: float, changes: Sequence[float] = ()
) -> list[float]:
    """Block boundaries: every ``block`` seconds around demand changes (within a pilot runtime and
    a block of one), ``COARSE`` blocks through steady demand (any partition is a valid
    relaxation: coarse blocks only where demand is constant lose nothing in steady state and keep
    the programme small), plus the times the tiers' first pilots can start and the quota periods'
    boundaries, so no block straddles one of those."""
    margin = max((t.runtime for t in tiers), default=0.0) + block
    coarse = block * COARSE
    cuts = {start, end}
    t0, i = start, 0
    while t0 < end:
        while i < len(changes) and changes[i] < t0 - margin:
            i += 1
        near = i < len(changes) and changes[i] <= t0 + coarse + margin
        if near:
            t0 += block
        else:
            nxt = changes[i] - margin if i < len(changes) else end
            t0 += max(block, min(coarse, block * math.floor((nxt - t0) / block)))
        if t0 < end:
            cuts.add(t0)
    cuts |= {start + t.start_delay for t in tiers if start < start + t.start_delay < end}
    for period in {q.period for t in tiers for q in t.quotas if q.period.kind != "rolling"}:
        t1 = start
        while t1 < end:
            _, nxt = period.bounds(t1)
            if nxt < end:
                cuts.add(nxt)
            t1 = nxt
    return sorted(c for c in cuts if start <= c <= end)


def _quota_rows(lp: _LP, bt: _Tier, quota: Quota, edges: list[float], block: float) -> None:
    """Pilots started and pilot-hours run per quota period. A rolling window counts the blocks
    that lie wholly inside it (a relaxation: never stricter than the true window)."""
    n_blocks = len(edges) - 1
    period = quota.period
    groups: list[list[int]]
    if period.kind == "rolling":
        groups = []
        first = 0
        for j in range(n_blocks):
            while edges[first] < edges[j + 1] - period.seconds - 1e-6:
                first += 1
            if first <= j:
                groups.append(list(range(first, j + 1)))
    else:
        by_key: dict[str, list[int]] = defaultdict(list)
        for j in range(n_blocks):
            by_key[period.key(edges[j])].append(j)
        groups = list(by_key.values())
    for js in groups:
        if quota.pilots is not None:
            lp.row([(bt.starts + j, 1.0) for j in js], -math.inf, float(quota.pilots))
        if quota.pilot_hours is not None:
            lp.row([(y, 1.0) for j in js for y, _ in bt.hours[j]], -math.inf, float(quota.pilot_hours))


def _job_hours(steps: list[tuple[float, int]], a: float, z: float) -> float:
    """Demand job-hours over [a, z) from (time, level) steps (the first at or before a)."""
    total = 0.0
    for i, (t, level) in enumerate(steps):
        nxt = steps[i + 1][0] if i + 1 < len(steps) else math.inf
        lo, hi = max(t, a), min(nxt, z)
        if hi > lo:
            total += level * (hi - lo)
        if nxt >= z:
            break
    return total / 3600.0


def _solution(
    built: list[_Tier], x: Any, unserved: list[tuple[int, str]], edges: list[float], months: Months
) -> Solution:
    out: dict[str, dict[str, Any]] = defaultdict(
        lambda: {
            "cost": 0.0,
            "pilot_hours": defaultdict(float),
            "unserved_job_hours": 0.0,
            "started": defaultdict(float),
        }
    )
    total_cost = 0.0
    for bt in built:
        name, price = bt.model.name, bt.model.cost_per_hour
        for j, cols in enumerate(bt.hours):
            month = months.key(edges[j])
            hours = sum(float(x[y]) for y, _ in cols)
            if hours > 1e-9:
                out[month]["pilot_hours"][name] += hours
                out[month]["cost"] += hours * price
                total_cost += hours * price
            started = float(x[bt.starts + j])
            if started > 1e-9:
                out[month]["started"][name] += started
    total_unserved = 0.0
    for u, month in unserved:
        value = float(x[u])
        total_unserved += value
        out[month]["unserved_job_hours"] += value
    months_out = {
        month: {
            "cost": round(v["cost"], 2),
            "pilot_hours": {n: round(h, 2) for n, h in sorted(v["pilot_hours"].items())},
            "unserved_job_hours": round(v["unserved_job_hours"], 2),
            "started": {n: round(s, 1) for n, s in sorted(v["started"].items())},
        }
        for month, v in sorted(out.items())
    }
    return Solution(total_unserved, total_cost, months_out)
