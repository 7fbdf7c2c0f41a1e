"""``apf simulate --compare``: the same demand trace through several configurations, side by side
per calendar month, and against the offline optimum (``sim.optimum``).

A configuration is either a policy file (run with the base configuration's queues) or an
autopyfactory.conf (its own queues, and its own policy if it names one: an AutoPyFactory-style set
of independent queues with static scheduler chains is one with no policy). Each runs in its own
process (``jobs`` at once) through the real engine on a virtual clock (``sim.runner``); the
optimum's linear programme is solved meanwhile in this process.

Per configuration and month: cost, pilot-hours per queue, unserved job-hours, mean and 95th
percentile time from demand to a running pilot, pilots submitted that never started, quota used,
events; and the distance from the optimum: cost against the cheapest schedule that leaves no more
demand unserved, and unserved job-hours against the least possible.
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import os
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from autopyfactory.config.errors import ConfigError, ConfigProblem
from autopyfactory.config.loader import load_factory_config
from autopyfactory.config.models import FactoryConfig
from autopyfactory.config.policy import PolicyDocument, load_policy
from autopyfactory.sim.batch import SimSubmitOptions
from autopyfactory.sim.trace import DemandTrace, read_trace

CONF_SUFFIXES = (".conf", ".ini", ".cfg")


@dataclass(frozen=True)
class Configuration:
    label: str
    item: str  # as given on the command line
    conf_path: str  # the autopyfactory.conf it runs with
    policy_file: str | None
    config: FactoryConfig
    policy: PolicyDocument | None

    @property
    def kind(self) -> str:
        if self.policy is not None and self.policy.cascades:
            return "cascade policy"
        return "independent queues (their own scheduler chains)"


def is_factory_conf(path: str) -> bool:
    """An autopyfactory.conf (INI with a [Factory] section) rather than a policy document."""
    if path.lower().endswith(CONF_SUFFIXES):
        return True
    if path.lower().endswith((".yaml", ".yml", ".json")):
        return False
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            head = handle.read(65536)
    except OSError:
        return False
    return any(line.strip().lower() == "[factory]" for line in head.splitlines())


def load_configurations(items: Sequence[str], base_conf: str | None) -> list[Configuration]:
    """Load every configuration (ConfigError naming the file on a bad one)."""
    out: list[Configuration] = []
    base: FactoryConfig | None = None
    labels: set[str] = set()
    for item in items:
        if is_factory_conf(item):
            config = load_factory_config(item)
            policy_file = config.settings.policyConf or None
            policy = config.policy
            conf_path = item
            path = Path(item)
            label = path.parent.name if path.stem == "autopyfactory" and path.parent.name else path.stem
        else:
            if base_conf is None:
                raise ConfigError(
                    [ConfigProblem(item, None, None, "a policy file needs --conf (the queues it runs with)")]
                )
            if base is None:
                base = load_factory_config(base_conf)
            config, conf_path, policy_file = base, base_conf, item
            policy = load_policy(item)
            label = Path(item).stem
        unique, n = label, 2
        while unique in labels:
            unique, n = f"{label}#{n}", n + 1
        labels.add(unique)
        out.append(Configuration(unique, item, conf_path, policy_file, config, policy))
    return out


def site_differences(configurations: Sequence[Configuration]) -> list[str]:
    """Simulated sites that two configurations describe differently (their comparison would be
    of different resources, not of policies)."""
    seen: dict[str, tuple[str, tuple[object, ...]]] = {}
    out = []
    for cfg in configurations:
        for qc in cfg.config.active_queues():
            options = qc.plugin_options("batchsubmit")
            if not isinstance(options, SimSubmitOptions):
                continue
            site = options.site or qc.name
            params = (
                options.capacity,
                options.start_delay,
                options.runtime,
                options.fail_when_over,
                options.refuse,
            )
            if site in seen and seen[site][1] != params:
                out.append(
                    f"site {site}: {cfg.label} has capacity/start_delay/runtime/fail_when_over/refuse {params}, "
                    f"{seen[site][0]} has {seen[site][1]}"
                )
            seen.setdefault(site, (cfg.label, params))
    return out


def _costs(configurations: Sequence[Configuration]) -> dict[str, float]:
    """A price per queue name from every policy (a queue without one in its own configuration is
    priced like the same-named tier elsewhere: same site, same price)."""
    costs: dict[str, float] = {}
    for cfg in configurations:
        if cfg.policy is None:
            continue
        for cascade in cfg.policy.cascades:
            for tier in cascade.tiers:
                costs.setdefault(tier.queue, tier.cost_per_hour)
    return costs


def _quota_limits(configurations: Sequence[Configuration]) -> dict[str, int]:
    """Monthly pilot quotas per tier name (shown next to every configuration's use)."""
    limits: dict[str, int] = {}
    for cfg in configurations:
        if cfg.policy is None:
            continue
        for cascade in cfg.policy.cascades:
            for tier in cascade.tiers:
                for quota in tier.quotas:
                    if quota.per == "month" and quota.pilots is not None:
                        limits.setdefault(tier.queue, quota.pilots)
    return limits


def _simulate(task: tuple[str, str | None, str, float, float, float, dict[str, float]]) -> dict[str, Any]:
    """One configuration in a worker process (loads its own config: nothing unpicklable crosses)."""
    from autopyfactory.sim.runner import Simulation

    conf_path, policy_file, trace_path, start, end, step, costs = task
    config = load_factory_config(conf_path)
    policy = load_policy(policy_file) if policy_file else None
    trace = read_trace(trace_path, start)
    with tempfile.TemporaryDirectory(prefix="apf-compare-") as tmp:
        sim = Simulation(config, policy, trace, start, end, step, Path(tmp), costs=costs)
        return sim.run()


def compare(
    configurations: Sequence[Configuration],
    trace: DemandTrace,
    trace_path: str,
    start: float,
    end: float,
    step: float,
    *,
    jobs: int | None = None,
    optimum: bool = True,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run every configuration (in parallel processes) and the optimum; the side-by-side result."""
    say = progress or (lambda _msg: None)
    began = time.perf_counter()
    costs = _costs(configurations)
    # all at once up to twice the CPUs: three runs on two cores end together (1.5 runs' time)
    # instead of two, then the third alone (two runs' time)
    workers = max(1, min(len(configurations), jobs or 2 * (os.cpu_count() or 1)))
    tasks = [(c.conf_path, c.policy_file, trace_path, start, end, step, costs) for c in configurations]
    reports: dict[str, dict[str, Any]] = {}
    model = None
    optimum_error = None
    context = multiprocessing.get_context("spawn")  # no state (engines, threads) shared with workers
    with concurrent.futures.ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        futures = {pool.submit(_simulate, task): cfg for task, cfg in zip(tasks, configurations, strict=True)}
        say(f"simulating {len(configurations)} configuration(s), {workers} at a time")
        if optimum:
            model, optimum_error = _start_optimum(configurations, trace, start, end, step, costs, say)
        for future in concurrent.futures.as_completed(futures):
            cfg = futures[future]
            reports[cfg.label] = future.result()
            say(f"{cfg.label}: simulated in {reports[cfg.label]['elapsed_s']:.1f} s")
    limits = _quota_limits(configurations)
    summaries = {c.label: summarize(reports[c.label], limits) for c in configurations}
    result: dict[str, Any] = {
        "start": reports[configurations[0].label]["start"],
        "end": reports[configurations[0].label]["end"],
        "step_s": step,
        "configurations": [
            {"label": c.label, "item": c.item, "kind": c.kind} | summaries[c.label] for c in configurations
        ],
        "quota_limits": limits,
        "warnings": site_differences(configurations),
    }
    if model is not None:
        for summary in summaries.values():
            model.cheapest(summary["total"]["unserved_job_hours"])
        opt = model.result
        result["optimum"] = opt.as_dict() | {"summary": _optimum_summary(opt.best.months, opt.best)}
        for entry in result["configurations"]:
            total = entry["total"]
            at = opt.cost_at(total["unserved_job_hours"])
            entry["vs_optimum"] = {
                "cheapest_cost_at_this_unserved": round(at.cost, 2),
                "cost_over_cheapest": _ratio(total["cost"], at.cost),
                "least_unserved_job_hours": round(opt.best.unserved_job_hours, 2),
                "unserved_over_least": round(total["unserved_job_hours"] - opt.best.unserved_job_hours, 2),
                "cost_over_least_unserved_optimum": _ratio(total["cost"], opt.best.cost),
            }
    elif optimum_error:
        result["optimum_error"] = optimum_error
    result["elapsed_s"] = round(time.perf_counter() - began, 2)
    return result


def _start_optimum(
    configurations: Sequence[Configuration],
    trace: DemandTrace,
    start: float,
    end: float,
    step: float,
    costs: dict[str, float],
    say: Callable[[str], None],
) -> tuple[Any, str | None]:
    """Build the optimum for the first configuration with a cascade policy (its tiers' caps,
    quotas and costs; else the first configuration's queues) and solve its stage 1."""
    from autopyfactory.sim.optimum import Optimum, OptimumError, tier_models

    reference = next(
        (c for c in configurations if c.policy is not None and c.policy.cascades), configurations[0]
    )
    try:
        model = Optimum(tier_models(reference.config, reference.policy, costs), trace, start, end, step)
        model.least()
    except OptimumError as exc:
        say(f"optimum: {exc}")
        return None, str(exc)
    say(f"optimum (tiers of {reference.label}): solved in {model.result.solve_s:.1f} s")
    return model, None


def _ratio(value: float, reference: float) -> float | None:
    if reference <= 0:
        return None if value > 0 else 0.0
    return round(value / reference - 1, 4)


def summarize(report: dict[str, Any], limits: dict[str, int]) -> dict[str, Any]:
    """A simulation report as the comparison's rows: per month and in total."""
    months: dict[str, dict[str, Any]] = defaultdict(_empty_month)
    total = _empty_month()
    for queue, info in report["tiers"].items():
        for month, m in info["months"].items():
            row = months[month]
            used = m["quota_used"] if m["quota_used"] is not None else m["submitted"] - m["never_started"]
            for target in (row, total):
                target["cost"] += m["cost"]
                target["pilot_hours"][queue] = target["pilot_hours"].get(queue, 0.0) + m["pilot_hours"]
                target["submitted"] += m["submitted"]
                target["never_started"] += m["never_started"]
                if queue in limits:
                    target["quota_used"][queue] = target["quota_used"].get(queue, 0) + used
    service = report["service_all"]
    for month, s in service["months"].items():
        row = months[month]
        row["unserved_job_hours"] = s["unserved_job_hours"]
        row["demand_job_hours"] = s["demand_job_hours"]
        row["mean_wait_s"], row["p95_wait_s"] = s["mean_wait_s"], s["p95_wait_s"]
    t = service["total"]
    total["unserved_job_hours"], total["demand_job_hours"] = t["unserved_job_hours"], t["demand_job_hours"]
    total["mean_wait_s"], total["p95_wait_s"] = t["mean_wait_s"], t["p95_wait_s"]
    total["waiting_at_end"] = service["waiting_at_end"]
    for event in report["events"]:
        month = event["time"][:7]
        months[month]["events"] += 1
        total["events"] += 1
    for row in [*months.values(), total]:
        row["cost"] = round(row["cost"], 2)
        row["pilot_hours"] = {q: round(h, 2) for q, h in sorted(row["pilot_hours"].items())}
    return {
        "months": dict(sorted(months.items())),
        "total": total,
        "elapsed_s": report["elapsed_s"],
        "cycles": report["cycles_run"],
    }


def _empty_month() -> dict[str, Any]:
    return {
        "cost": 0.0,
        "pilot_hours": {},
        "unserved_job_hours": 0.0,
        "demand_job_hours": 0.0,
        "mean_wait_s": None,
        "p95_wait_s": None,
        "submitted": 0,
        "never_started": 0,
        "quota_used": {},
        "events": 0,
    }


def _optimum_summary(months: dict[str, dict[str, Any]], best: Any) -> dict[str, Any]:
    rows = {
        month: _empty_month()
        | {
            "cost": m["cost"],
            "pilot_hours": m["pilot_hours"],
            "unserved_job_hours": m["unserved_job_hours"],
            "quota_used": {q: round(n) for q, n in m["started"].items()},
            "events": None,
            "submitted": None,
            "never_started": None,
        }
        for month, m in months.items()
    }
    total = _empty_month() | {
        "cost": round(best.cost, 2),
        "unserved_job_hours": round(best.unserved_job_hours, 2),
        "events": None,
        "submitted": None,
        "never_started": None,
    }
    hours: dict[str, float] = defaultdict(float)
    for m in months.values():
        for q, h in m["pilot_hours"].items():
            hours[q] += h
    total["pilot_hours"] = {q: round(h, 2) for q, h in sorted(hours.items())}
    return {"months": rows, "total": total}


# -- text ----------------------------------------------------------------------------------------


def describe_comparison(result: dict[str, Any]) -> str:
    """The comparison as tables: one column per configuration (and the optimum), per month."""
    configs = result["configurations"]
    columns = [(c["label"], c) for c in configs]
    optimum = result.get("optimum")
    if optimum is not None:
        columns.append(("optimum", optimum["summary"]))
    months = sorted({m for _, c in columns for m in c["months"]})
    queues = sorted(
        {q for _, c in columns for m in [*c["months"].values(), c["total"]] for q in m["pilot_hours"]}
    )
    limits: dict[str, int] = result["quota_limits"]
    width = max(12, *(len(label) + 2 for label, _ in columns))
    lines = [f"apf simulate --compare: {result['start']} .. {result['end']}, step {result['step_s']:g} s"]
    for c in configs:
        lines.append(
            f"  {c['label']}: {c['item']} ({c['kind']}; {c['cycles']} cycles in {c['elapsed_s']:.1f} s)"
        )
    if optimum is not None:
        lines.append(
            f"  optimum: {optimum['model']}, {optimum['variables']} variables, solved in {optimum['solve_s']:.1f} s"
        )
    elif "optimum_error" in result:
        lines.append(f"  optimum: not computed: {result['optimum_error']}")
    for warning in result["warnings"]:
        lines.append(f"  warning: {warning}")
    header = f"{'':<34}" + "".join(f"{label:>{width}}" for label, _ in columns)

    def table(title: str, rows: list[dict[str, Any]]) -> None:
        lines.append("")
        lines.append(f"{title:<34}" + header[34:])
        metrics: list[tuple[str, Callable[[dict[str, Any]], str]]] = [
            ("cost", lambda r: f"{r['cost']:.2f}"),
            *[(f"pilot-hours {q}", lambda r, q=q: f"{r['pilot_hours'].get(q, 0.0):.0f}") for q in queues],
            ("unserved job-hours", lambda r: f"{r['unserved_job_hours']:.1f}"),
            ("to a running pilot, mean (min)", lambda r: _minutes(r["mean_wait_s"])),
            ("to a running pilot, p95 (min)", lambda r: _minutes(r["p95_wait_s"])),
            (
                "pilots never started",
                lambda r: "-" if r["never_started"] is None else str(r["never_started"]),
            ),
            *[
                (f"quota used {q} (of {limit}/month)", lambda r, q=q: _count(r["quota_used"].get(q)))
                for q, limit in sorted(limits.items())
            ],
            ("events", lambda r: "-" if r["events"] is None else str(r["events"])),
        ]
        for name, fmt in metrics:
            lines.append(f"  {name:<32}" + "".join(f"{fmt(r):>{width}}" for r in rows))

    for month in months:
        table(month, [c["months"].get(month, _empty_month()) for _, c in columns])
    table("total", [c["total"] for _, c in columns])
    if optimum is not None:
        lines.append("")
        lines.append("distance from the optimum (a lower bound: no policy can do better):")
        best = optimum["best"]
        lines.append(
            f"  least unserved possible: {best['unserved_job_hours']:.1f} job-hours, at cost {best['cost']:.2f}"
        )
        for c in configs:
            v = c["vs_optimum"]
            over = v["cost_over_cheapest"]
            lines.append(
                f"  {c['label']}: cost {c['total']['cost']:.2f} vs {v['cheapest_cost_at_this_unserved']:.2f} "
                f"for the cheapest schedule leaving no more unserved "
                f"({'n/a' if over is None else f'{over:+.1%}'}); unserved {v['unserved_over_least']:+.1f} "
                "job-hours over the least possible"
            )
    return "\n".join(lines)


def _minutes(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds / 60:.1f}"


def _count(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"
