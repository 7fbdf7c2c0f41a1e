"""``apf simulate --compare --html``: the comparison page's contents and escaping (rendered from a
hand-made result), and the page written by a real comparison run, opened from its file in
Playwright + Debian's Chromium: every chart painted, nothing requested from anywhere. The
screenshot ``docs/screenshots/compare.png`` is made here."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest

from autopyfactory.web.report import render_comparison
from tests.browser import browser, open_page, painted, screenshot  # noqa: F401 (fixture)
from tests.helpers import write
from tests.test_simulate import APF, DEMAND, POLICY, QUEUES, START

EVIL = "</script><script>alert(1)</script>"


def _month(cost: float, unserved: float, never: int | None, used: int | None) -> dict[str, Any]:
    return {
        "cost": cost,
        "pilot_hours": {"A<b>": 10.0},
        "unserved_job_hours": unserved,
        "demand_job_hours": 100.0,
        "mean_wait_s": 600.0 if never is not None else None,
        "p95_wait_s": 1200.0 if never is not None else None,
        "submitted": 5 if never is not None else None,
        "never_started": never,
        "quota_used": {} if used is None else {"A<b>": used},
        "events": 2 if never is not None else None,
    }


def _result() -> dict[str, Any]:
    months = {"2027-01": _month(3.5, 40.0, 1, 7), "2027-02": _month(1.25, 0.0, 0, 3)}
    config = {
        "label": EVIL,
        "item": f"/tmp/{EVIL}.yaml",
        "kind": "cascade policy",
        "months": months,
        "total": _month(4.75, 40.0, 1, 10) | {"waiting_at_end": 0},
        "elapsed_s": 0.5,
        "cycles": 10,
        "vs_optimum": {
            "cheapest_cost_at_this_unserved": 4.0,
            "cost_over_cheapest": 0.1875,
            "least_unserved_job_hours": 2.0,
            "unserved_over_least": 38.0,
            "cost_over_least_unserved_optimum": -0.05,
        },
    }
    optimum_months = {"2027-01": _month(4.0, 2.0, None, 6), "2027-02": _month(1.0, 0.0, None, 2)}
    return {
        "start": "2027-01-31T00:00:00Z",
        "end": "2027-02-02T00:00:00Z",
        "step_s": 600.0,
        "configurations": [config],
        "quota_limits": {"A<b>": 100},
        "warnings": [f"site {EVIL}: differs"],
        "optimum": {
            "model": "fluid relaxation",
            "solve_s": 0.1,
            "variables": 12,
            "constraints": 20,
            "best": {"unserved_job_hours": 2.0, "cost": 5.0},
            "summary": {"months": optimum_months, "total": _month(5.0, 2.0, None, 8)},
        },
        "elapsed_s": 1.0,
    }


def test_comparison_page_shows_the_figures_and_escapes_what_it_embeds() -> None:
    page = render_comparison(_result())
    assert page.count("<script") == 3  # uPlot, the data, the drawing code: nothing from the configs
    assert EVIL not in page and "&lt;/script&gt;&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "A<b>" not in page and "pilot-hours A&lt;b&gt;" in page and "Pilot-hours of A&lt;b&gt;" in page
    assert "Content-Security-Policy" in page and "default-src 'none'" in page
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page)  # nothing to fetch
    # the tables: one per month and the total, a column per configuration and the optimum
    assert re.findall(r"<thead><tr><th>([^<]*)</th>", page)[-3:] == ["2027-01", "2027-02", "total"]
    assert page.count('<th class="num">optimum</th>') == 3
    assert "quota used A&lt;b&gt; (of 100/month)" in page
    assert "+18.8%" in page and "+38.0" in page  # the distance from the optimum
    assert "Warning: site &lt;/script&gt;" in page
    data = re.search(r'id="compare-data">(.*?)</script>', page, re.S)
    assert data is not None
    doc = json.loads(data.group(1))
    assert doc["months"] == ["2027-01", "2027-02"]
    assert [s["label"] for s in doc["series"]] == [EVIL, "optimum"]
    charts = {c["id"]: c for c in doc["charts"]}
    assert list(charts) == [
        "chart-cost",
        "chart-unserved",
        "chart-hours-0",
        "chart-quota-0",
        "chart-never",
    ]
    assert charts["chart-cost"]["values"] == [[3.5, 1.25], [4.0, 1.0]]
    assert charts["chart-quota-0"]["values"] == [[7, 3], [6, 2]] and charts["chart-quota-0"]["limit"] == 100
    assert charts["chart-never"]["values"] == [[1, 0], [None, None]]  # the optimum has no such figure


@pytest.fixture(scope="module")
def compare_page(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real ``apf simulate --compare --html``: the example cascade, an eager variant and
    AutoPyFactory-style static chains over two days at a coarse step, with the optimum."""
    base = tmp_path_factory.mktemp("comparepage")
    write(base / "cascade.yaml", POLICY)
    write(
        base / "cascade-eager.yaml",
        POLICY.replace("spill_on: [quota, backoff]", "spill_on: [capped, quota, backoff]"),
    )
    write(base / "queues.conf", QUEUES)
    write(base / "demand.csv", DEMAND)
    conf = write(base / "autopyfactory.conf", "[Factory]\nfactoryId = sim-test\nqueueConf = queues.conf\n")
    write(
        base / "static" / "queues.conf",
        QUEUES.replace(
            "schedplugin = Ready", "schedplugin = Ready, Scale, MaxPending\nwmsstatus.sim.consume = True"
        )
        .replace("[B]\n", "[B]\nsched.ready.offset = 5\nbatchsubmit.sim.cost_per_hour = 0.02\n")
        .replace("[C]\n", "[C]\nsched.ready.offset = 10\nbatchsubmit.sim.cost_per_hour = 0.1\n"),
    )
    static = write(
        base / "static" / "autopyfactory.conf", "[Factory]\nfactoryId = static\nqueueConf = queues.conf\n"
    )
    target = base / "out" / "compare.html"
    out = subprocess.run(
        [APF, "simulate", "--compare", "cascade.yaml", "cascade-eager.yaml", str(static.relative_to(base)),
         "--conf", conf.name, "--demand", "demand.csv", "--start", START, "--days", "2",
         "--step", "30m", "--html", str(target), "--json"],
        capture_output=True, text=True, timeout=180, cwd=base,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)  # --html does not change what is printed
    assert [c["label"] for c in result["configurations"]] == ["cascade", "cascade-eager", "static"]
    assert "optimum" in result
    return target


@pytest.mark.browser
@pytest.mark.timeout(240)
def test_comparison_page_is_self_contained_and_draws_every_chart(browser, compare_page: Path) -> None:  # noqa: F811
    page, watch = open_page(browser)
    try:
        page.goto(compare_page.as_uri())
        charts = [
            "cost",
            "unserved",
            "hours-0",
            "hours-1",
            "hours-2",
            "quota-0",
            "never",
        ]  # A, B, C; B's quota
        for chart in charts:
            page.wait_for_selector(f"#chart-{chart}[data-rendered='1'] canvas", timeout=15_000)
            assert painted(page, f"#chart-{chart} canvas") > 2000, chart
        assert page.locator(".chart").count() == len(charts)
        # every configuration and the optimum in the legend of the cost chart
        legend = page.locator("#chart-cost").inner_text()
        for label in ("cascade", "cascade-eager", "static", "optimum"):
            assert label in legend
        # the bars are drawn in the configurations' colours (the first: blue)
        assert painted(page, "#chart-cost canvas", (31, 119, 180)) > 500
        assert page.locator("#distance tbody tr").count() == 3
        assert page.locator("table.figures").count() == 3  # 2027-01, 2027-02, total
        assert watch.requests == [compare_page.as_uri()]  # nothing else, from anywhere
        screenshot(page, "compare")
        watch.clean()
    finally:
        page.context.close()


@pytest.mark.browser
@pytest.mark.timeout(120)
def test_comparison_page_keeps_its_tables_without_javascript(browser, compare_page: Path) -> None:  # noqa: F811
    page, watch = open_page(browser, javascript=False)
    try:
        page.goto(compare_page.as_uri())
        assert page.locator("table.figures").count() == 3
        assert page.locator("#configurations tbody tr").count() == 4  # three and the optimum
        assert page.locator(".chart canvas").count() == 0
        watch.clean()
    finally:
        page.context.close()
