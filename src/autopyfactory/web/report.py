"""``apf simulate --html``: the simulation report as one self-contained page.

Input: the structure ``apf simulate --json`` prints (with ``cycles``, i.e. ``--per-cycle``, for
the time series). Output: an HTML string that loads nothing: uPlot, its CSS, the data and the
drawing code are inline, so the file can be mailed, archived, or dropped into the daemon's
reports directory (``web.reportsdir``) for the dashboard to list.

Charts: demand per cascade; running and pending pilots per tier; pilots submitted per tier,
cumulative within each calendar month (the quota use), with the monthly pilot quota when the
policy is given; cumulative cost per tier. Tables: per tier and month (from the report's exact
figures) and every event.

``apf simulate --compare --html``: the comparison's structure (``--compare --json``) as one page
built the same way: bar charts per month (cost, unserved job-hours, pilot-hours per queue, quota
used, pilots never started), one bar per configuration and the optimum; the text output's tables
and each configuration's distance from the optimum.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, select_autoescape
from markupsafe import Markup

from autopyfactory.decide.periods import month_key, parse_time

HERE = Path(__file__).parent
MAX_POINTS = 3000
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf")


def _pages() -> Environment:
    """The self-contained pages' templates (both extend ``_selfcontained.html``), HTML-escaped."""
    return Environment(loader=FileSystemLoader(HERE / "templates"), autoescape=select_autoescape(["html"]))


def render_report(report: Mapping[str, Any], *, policy: Any = None, title: str | None = None) -> str:
    """The page for one simulation report (``policy``: the ``PolicyDocument``, for quota lines)."""
    cycles = list(report.get("cycles") or [])
    tiers = list(report.get("tiers") or {})
    data = _series(cycles, tiers, report)
    limits = _monthly_limits(policy, tiers)
    template = _pages().get_template("report.html")
    vendor = HERE / "static" / "vendor"
    return template.render(
        title=title
        or f"Simulation {report.get('start', '?')} .. {report.get('stopped_at') or report.get('end', '?')}",
        report=report,
        tiers=tiers,
        months=sorted({m for t in tiers for m in report["tiers"][t].get("months", {})}),
        has_series=bool(cycles),
        data_json=_script_json({"series": data, "limits": limits, "palette": PALETTE}),
        uplot_js=_inline_js((vendor / "uPlot.iife.min.js").read_text()),
        uplot_css=Markup((vendor / "uPlot.min.css").read_text()),
        quotas=_quota_lines(policy),
    )


def _series(cycles: list[dict[str, Any]], tiers: list[str], report: Mapping[str, Any]) -> dict[str, Any]:
    step_h = float(report.get("step_s") or 0) / 3600.0
    costs = {t: float(report["tiers"][t].get("cost_per_hour") or 0.0) for t in tiers}
    cascades = sorted({c for row in cycles for c in (row.get("demand") or {})})
    t: list[float] = []
    demand: dict[str, list[Any]] = {c: [] for c in cascades}
    running: dict[str, list[Any]] = {x: [] for x in tiers}
    pending: dict[str, list[Any]] = {x: [] for x in tiers}
    submitted: dict[str, list[Any]] = {x: [] for x in tiers}
    cost: dict[str, list[Any]] = {x: [] for x in tiers}
    month_total = dict.fromkeys(tiers, 0)
    cost_total = dict.fromkeys(tiers, 0.0)
    current_month = None
    for row in cycles:
        when = parse_time(row["time"])
        month = month_key(when)
        if month != current_month:
            current_month = month
            month_total = dict.fromkeys(tiers, 0)
        t.append(when)
        for c in cascades:
            demand[c].append((row.get("demand") or {}).get(c))
        for tier in tiers:
            info = (row.get("tiers") or {}).get(tier) or {}
            run = info.get("running")
            running[tier].append(run)
            pending[tier].append(info.get("pending"))
            n = info.get("n")
            if isinstance(n, int) and n > 0:
                month_total[tier] += n
            submitted[tier].append(month_total[tier])
            cost_total[tier] += (run or 0) * step_h * costs[tier]
            cost[tier].append(round(cost_total[tier], 4))
    keep = _thin(len(t))
    pick = lambda values: [values[i] for i in keep]  # noqa: E731
    return {
        "t": pick(t),
        "demand": {c: pick(v) for c, v in demand.items()},
        "running": {x: pick(v) for x, v in running.items()},
        "pending": {x: pick(v) for x, v in pending.items()},
        "submitted": {x: pick(v) for x, v in submitted.items()},
        "cost": {x: pick(v) for x, v in cost.items()},
    }


def _thin(n: int) -> list[int]:
    """At most MAX_POINTS indexes, always the last (cumulative series end right)."""
    if n <= MAX_POINTS:
        return list(range(n))
    step = n / MAX_POINTS
    keep = sorted({int(i * step) for i in range(MAX_POINTS)} | {n - 1})
    return keep


def _monthly_limits(policy: Any, tiers: list[str]) -> dict[str, int]:
    out: dict[str, int] = {}
    if policy is None:
        return out
    for cascade in policy.cascades:
        for tier in cascade.tiers:
            for quota in tier.quotas:
                if tier.queue in tiers and quota.per == "month" and quota.pilots is not None:
                    out[tier.queue] = min(out.get(tier.queue, quota.pilots), quota.pilots)
    return out


def _quota_lines(policy: Any) -> dict[str, list[str]]:
    if policy is None:
        return {}
    return {t.queue: [q.describe() for q in t.quotas] for c in policy.cascades for t in c.tiers if t.quotas}


def _script_json(value: Any) -> Markup:
    """JSON that is safe inside <script>: '<', '>', '&' escaped, so no '</script>' can close it."""
    text = json.dumps(value, separators=(",", ":"))
    return Markup(text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026"))


def _inline_js(text: str) -> Markup:
    """A vendored script inlined into <script>: nothing in it may end the element early."""
    return Markup(re.sub(r"</(script)", r"<\\/\1", text, flags=re.IGNORECASE))


def write_report(path: str | Path, report: Mapping[str, Any], *, policy: Any = None) -> Path:
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(render_report(report, policy=policy))
    return target


# -- apf simulate --compare --html ----------------------------------------------------------------

OPTIMUM_COLOR = "#555555"


def render_comparison(result: Mapping[str, Any], *, title: str | None = None) -> str:
    """The page for one ``apf simulate --compare`` result (the structure ``--json`` prints): bar
    charts per month of cost, unserved job-hours, pilot-hours per queue, quota used and pilots
    never started, one bar per configuration (and the optimum, where it has the figure), then
    the same tables as the text output and each configuration's distance from the optimum."""
    configs = list(result.get("configurations") or [])
    columns: list[tuple[str, Mapping[str, Any], str]] = [
        (c["label"], c, PALETTE[i % len(PALETTE)]) for i, c in enumerate(configs)
    ]
    optimum = result.get("optimum")
    if optimum is not None:
        columns.append(("optimum", optimum["summary"], OPTIMUM_COLOR))
    months = sorted({m for _, c, _ in columns for m in c["months"]})
    queues = sorted(
        {q for _, c, _ in columns for row in [*c["months"].values(), c["total"]] for q in row["pilot_hours"]}
    )
    limits: dict[str, int] = dict(result.get("quota_limits") or {})
    charts = _comparison_charts(columns, months, queues, limits)
    vendor = HERE / "static" / "vendor"
    return (
        _pages()
        .get_template("compare.html")
        .render(
            title=title or f"Comparison {result.get('start', '?')} .. {result.get('end', '?')}",
            result=result,
            configs=configs,
            optimum=optimum,
            charts=charts,
            header=[label for label, _, _ in columns],
            tables=[
                (m, _metric_rows([c["months"].get(m) for _, c, _ in columns], queues, limits)) for m in months
            ]
            + [("total", _metric_rows([c["total"] for _, c, _ in columns], queues, limits))],
            data_json=_script_json(
                {
                    "months": months,
                    "series": [{"label": label, "color": color} for label, _, color in columns],
                    "charts": [{k: v for k, v in chart.items() if k != "title"} for chart in charts],
                }
            ),
            uplot_js=_inline_js((vendor / "uPlot.iife.min.js").read_text()),
            uplot_css=Markup((vendor / "uPlot.min.css").read_text()),
        )
    )


def _comparison_charts(
    columns: list[tuple[str, Mapping[str, Any], str]],
    months: list[str],
    queues: list[str],
    limits: dict[str, int],
) -> list[dict[str, Any]]:
    """One chart per measure: per series (column) its value in each month (None: no figure).
    Ids are numbered, never made of names from configs."""

    def values(pick: Any) -> list[list[Any]]:
        return [[(pick(c["months"][m]) if m in c["months"] else None) for m in months] for _, c, _ in columns]

    charts = [
        {"id": "chart-cost", "title": "Cost", "unit": "cost", "values": values(lambda r: r["cost"])},
        {
            "id": "chart-unserved",
            "title": "Unserved job-hours",
            "unit": "job-hours",
            "values": values(lambda r: r["unserved_job_hours"]),
        },
    ]
    for i, q in enumerate(queues):
        charts.append(
            {
                "id": f"chart-hours-{i}",
                "title": f"Pilot-hours of {q}",
                "unit": "pilot-hours",
                "values": values(lambda r, q=q: r["pilot_hours"].get(q, 0.0)),
            }
        )
    for i, (q, limit) in enumerate(sorted(limits.items())):
        charts.append(
            {
                "id": f"chart-quota-{i}",
                "title": f"Quota used of {q} (of {limit} pilots a month)",
                "unit": "pilots",
                "values": values(lambda r, q=q: r["quota_used"].get(q)),
                "limit": limit,
            }
        )
    charts.append(
        {
            "id": "chart-never",
            "title": "Pilots never started",
            "unit": "pilots",
            "values": values(lambda r: r["never_started"]),
        }
    )
    return charts


def _metric_rows(
    rows: list[Mapping[str, Any] | None], queues: list[str], limits: dict[str, int]
) -> list[tuple[str, list[str]]]:
    """The text output's table rows (``sim.compare.describe_comparison``): a name and one cell
    per column ("-": no figure)."""

    def cells(fmt: Any) -> list[str]:
        return [fmt(r) if r is not None else "-" for r in rows]

    def number(value: Any, digits: int) -> str:
        return "-" if value is None else f"{value:,.{digits}f}"

    out = [("cost", cells(lambda r: number(r["cost"], 2)))]
    out += [
        (f"pilot-hours {q}", cells(lambda r, q=q: number(r["pilot_hours"].get(q, 0.0), 0))) for q in queues
    ]
    out += [
        ("unserved job-hours", cells(lambda r: number(r["unserved_job_hours"], 1))),
        ("to a running pilot, mean (min)", cells(lambda r: _minutes(r["mean_wait_s"]))),
        ("to a running pilot, p95 (min)", cells(lambda r: _minutes(r["p95_wait_s"]))),
        ("pilots never started", cells(lambda r: number(r["never_started"], 0))),
    ]
    out += [
        (f"quota used {q} (of {limit}/month)", cells(lambda r, q=q: number(r["quota_used"].get(q), 0)))
        for q, limit in sorted(limits.items())
    ]
    out.append(("events", cells(lambda r: number(r["events"], 0))))
    return out


def _minutes(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds / 60:.1f}"


def write_comparison(path: str | Path, result: Mapping[str, Any]) -> Path:
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(render_comparison(result))
    return target
