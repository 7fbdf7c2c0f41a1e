"""The dashboard in a real headless browser (Playwright + Debian's Chromium) against a running
``apf run`` daemon: every page loads with nothing leaving 127.0.0.1, charts are really drawn,
live parts update without a reload after the factory submits, names from configs stay text,
pilot logs open, and the simulation report works from a file. The screenshots in
``docs/screenshots/`` are made here."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from playwright.sync_api import expect

from autopyfactory.web.app import REPORT_CSP
from tests.browser import browser, open_page, painted, screenshot  # noqa: F401 (fixture)
from tests.helpers import wait_for, write
from tests.test_simulate import DEMAND, POLICY, QUEUES
from tests.webhelpers import (
    APF,
    EVIL,
    Daemon,
    get_json,
    kill_local_pilots,
    start_daemon,
    web_queues,
    write_config,
)

pytestmark = [pytest.mark.timeout(240), pytest.mark.browser]
BLUE = (31, 119, 180)  # demand / remaining quota
RED = (179, 38, 30)  # the quota forecast


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    base = tmp_path_factory.mktemp("webbrowser")
    conf = write_config(base, web_queues(base))
    d = start_daemon(conf)
    try:
        wait_for(
            lambda: (
                (s := get_json(f"{d.url}/api/v1/status"))["queues"]["LOCALQ"]["running"] == 2
                and s["queues"]["TB"]["last_n"] is not None
                and get_json(f"{d.url}/api/v1/cascades/burst")["quotas"][0]["used_pilots"] > 0
            ),
            60,
            "LOCALQ running and the cascade using TB's quota",
        )
        yield d
    finally:
        rc = d.stop()
        kill_local_pilots(base)
        assert rc == 0


@pytest.fixture(scope="module")
def sim_report(daemon: Daemon, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``apf simulate --html`` over two days of the cascade example, stored where the daemon
    lists reports."""
    base = tmp_path_factory.mktemp("simreport")
    write(base / "policy.yaml", POLICY)
    write(base / "queues.conf", QUEUES)
    write(base / "demand.csv", DEMAND)
    conf = write(
        base / "autopyfactory.conf",
        "[Factory]\nfactoryId = sim-test\nqueueConf = queues.conf\npolicyConf = policy.yaml\n"
        f"factory.statedir = {base / 'state'}\n",
    )
    target = daemon.conf.parent / "state" / "reports" / "cascade-2027-01.html"
    out = subprocess.run(
        [APF, "simulate", "--conf", str(conf), "--demand", str(base / "demand.csv"),
         "--start", "2027-01-31T00:00:00Z", "--days", "2", "--step", "10m", "--html", str(target), "--json"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "cycles" not in json.loads(out.stdout)  # --html alone does not put every cycle in the JSON
    return target


PAGES = {
    "overview": "/",
    "queue": "/queues/LOCALQ?hours=0.25",
    "cascades": "/cascades",
    "health": "/health",
    "reports": "/reports",
}


def test_every_page_loads_offline_with_screenshots(browser, daemon: Daemon, sim_report: Path) -> None:  # noqa: F811
    for name, path in PAGES.items():
        page, watch = open_page(browser)
        try:
            response = page.goto(daemon.url + path)
            assert response is not None and response.status == 200, path
            page.wait_for_selector("main h1")
            if name == "queue":
                page.wait_for_selector("#queue-chart[data-rendered='1'] canvas", timeout=15_000)
            if name == "cascades":
                page.wait_for_selector(".chart.burn[data-rendered='1'] canvas", timeout=15_000)
            if name == "overview":
                expect(page.locator("svg.spark polyline.spark-demand[points*=' ']").first).to_be_attached()
            page.wait_for_timeout(1500)  # at least one htmx refresh (web.refresh = 1) ran
            screenshot(page, name)
            watch.clean()
            assert any(u.endswith("/static/vendor/htmx.min.js") for u in watch.requests)
            if name != "reports":
                assert any("/partials/" in u for u in watch.requests), f"{path}: no live update request"
        finally:
            page.context.close()


def test_queue_chart_is_drawn_with_data(browser, daemon: Daemon) -> None:  # noqa: F811
    page, watch = open_page(browser)
    try:
        page.goto(f"{daemon.url}/queues/LOCALQ?hours=1")
        page.wait_for_selector("#queue-chart[data-rendered='1'] canvas", timeout=15_000)
        box = page.locator("#queue-chart canvas").bounding_box()
        assert box is not None and box["width"] > 300 and box["height"] > 150, box
        assert painted(page, "#queue-chart canvas") > 2000
        assert painted(page, "#queue-chart canvas", BLUE) > 30  # the demand line itself
        assert int(page.get_attribute("#queue-chart", "data-points") or 0) >= 1
        legend = page.locator("#queue-chart .u-legend").inner_text()
        for label in ("demand", "pending", "running", "decided n"):
            assert label in legend
        watch.clean()
    finally:
        page.context.close()


def test_cascade_page_shows_the_quota_burn_down(browser, daemon: Daemon) -> None:  # noqa: F811
    page, watch = open_page(browser)
    try:
        page.goto(f"{daemon.url}/cascades")
        page.wait_for_selector(".chart.burn[data-rendered='1'] canvas", timeout=15_000)
        caption = page.locator("figure.quota figcaption").first.inner_text()
        assert caption.startswith("TB:") and "of 40 pilots used in" in caption
        assert painted(page, ".chart.burn canvas", BLUE) > 30
        # the live refresh (every second here) swaps the section in again: the chart is redrawn
        page.wait_for_timeout(2500)
        expect(page.locator(".chart.burn[data-rendered='1'] canvas")).to_have_count(1)
        assert painted(page, ".chart.burn canvas", BLUE) > 30
        statuses = page.locator("table.tiers .status").all_inner_texts()
        assert len(statuses) == 3
        allowed = {
            "taking",
            "capped",
            "full",
            "out of quota",
            "backed off",
            "waiting",
            "draining",
            "holding",
            "idle",
        }
        assert set(statuses) <= allowed, statuses
        assert statuses[0] == "capped"  # TA: demand 10 against its cap of 3
        # the forecast: the dashed red line from now, and its date when the quota runs out this month
        assert painted(page, ".chart.burn canvas", RED) > 10
        burn = get_json(f"{daemon.url}/api/v1/cascades/burst")["quotas"][0]
        forecast = page.locator("figure.quota figcaption .forecast")
        if burn["runs_out_at"] is not None:
            assert forecast.count() == 1 and forecast.inner_text().startswith(
                time.strftime("%Y-%m-%d", time.gmtime(burn["runs_out_at"]))
            )
        else:
            assert forecast.count() == 0 and "it lasts the period" in caption
        assert page.locator("table.costs tbody tr").count() == 3
        watch.clean()
    finally:
        page.context.close()


def test_queue_name_with_script_renders_as_text(browser, daemon: Daemon) -> None:  # noqa: F811
    page, watch = open_page(browser)
    try:
        page.goto(f"{daemon.url}/?q={quote('<script>')}")
        link = page.locator("a.queue")
        assert link.count() == 1 and link.inner_text() == EVIL
        link.click()
        page.wait_for_selector("#queue-name")
        assert page.locator("#queue-name").inner_text() == EVIL
        page.wait_for_timeout(1500)  # a live refresh swapped the partial in: still text
        assert page.evaluate("document.querySelectorAll('main script').length") == 0
        assert page.evaluate("window.__pwned === undefined")
        watch.clean()  # no dialog (alert) was opened
    finally:
        page.context.close()


def test_pilot_log_opens_and_traversal_is_refused(browser, daemon: Daemon) -> None:  # noqa: F811
    page, watch = open_page(browser)
    try:
        page.goto(f"{daemon.url}/queues/LOCALQ")
        link = page.locator("#pilots a.log").first
        link.wait_for()
        href = link.get_attribute("href")
        assert href is not None and href.startswith("/logs/")

        def output() -> str | None:
            page.goto(daemon.url + href)
            text = page.text_content("body") or ""
            return text if "hello from pilot" in text else None

        assert "of LOCALQ" in str(wait_for(output, 30, "the pilot's output"))
        assert daemon.logserver is not None
        # the browser resolves dot segments itself (the raw requests are in test_web_api.py)
        response = page.goto(daemon.logserver + "/%2e%2e/%2e%2e/%2e%2e/etc/passwd")
        assert response is not None and response.status in (403, 404)
        assert "root:" not in (page.text_content("body") or "")
        response = page.goto(daemon.logserver + "/robots.txt")
        assert response is not None and "Disallow: /" in (page.text_content("body") or "")
        watch.errors = [e for e in watch.errors if "40" not in e]  # the refused request logs itself
        watch.clean()
    finally:
        page.context.close()


def test_pages_work_without_javascript(browser, daemon: Daemon) -> None:  # noqa: F811
    page, watch = open_page(browser, javascript=False)
    try:
        page.goto(f"{daemon.url}/?per=2")
        assert page.locator("table.queues tbody tr").count() == 2
        page.click("nav.pager a[rel=next]")
        assert "page=2" in page.url and page.locator("table.queues tbody tr").count() == 2
        page.click("th a:has-text('Demand')")
        assert "sort=demand" in page.url
        page.fill("input[name=q]", "localq")
        page.click("form.filters button")
        assert page.locator("a.queue").all_inner_texts() == ["LOCALQ"]
        page.click("a.queue")
        assert page.locator("#queue-name").inner_text() == "LOCALQ"
        assert page.locator("#decisions article.decision").count() >= 1
        assert "The chart needs JavaScript" in page.inner_text("main")
        watch.clean()
    finally:
        page.context.close()


def test_live_update_after_the_factory_submits(browser, tmp_path: Path) -> None:  # noqa: F811
    conf = write_config(tmp_path, web_queues(tmp_path, local_demand=0))
    d = start_daemon(conf)
    page, watch = open_page(browser)
    try:
        page.goto(f"{d.url}/queues/LOCALQ")
        assert page.locator("#pilots td.empty").inner_text() == "No pilots recorded."
        page.evaluate("window.__marker = 42")  # gone if the page reloads
        overview, overview_watch = open_page(browser)
        overview.goto(f"{d.url}/?q=LOCALQ")
        overview.evaluate("window.__marker = 7")
        # demand appears: the factory reloads its config and submits two pilots
        write(tmp_path / "queues.conf", web_queues(tmp_path, local_demand=2))
        d.reload()
        # locators poll from Playwright's own world (the page's CSP forbids eval'd predicates)
        running = page.locator("#pilots tr.pilot-running, #pilots tr.pilot-pending")
        expect(running).to_have_count(2, timeout=45_000)
        expect(page.locator("#queue-running")).to_have_text("2", timeout=45_000)
        assert page.evaluate("window.__marker") == 42
        expect(overview.locator("table.queues tbody tr td:nth-child(5)")).to_have_text(["2"], timeout=45_000)
        assert overview.evaluate("window.__marker") == 7
        watch.clean()
        overview_watch.clean()
        overview.context.close()
    finally:
        page.context.close()
        assert d.stop() == 0
        kill_local_pilots(tmp_path)


def _report_drawn(page: Any) -> None:
    for chart in ("demand", "pilots", "quota", "cost"):
        page.wait_for_selector(f"#chart-{chart}[data-rendered='1'] canvas", timeout=15_000)
        assert painted(page, f"#chart-{chart} canvas") > 2000, chart
    assert page.locator("#months tbody tr").count() >= 3
    assert page.locator("#events tbody tr").count() >= 1


def test_simulation_report_is_self_contained(browser, daemon: Daemon, sim_report: Path) -> None:  # noqa: F811
    page, watch = open_page(browser)
    try:
        page.goto(sim_report.as_uri())
        _report_drawn(page)
        assert watch.requests == [sim_report.as_uri()]  # nothing else, from anywhere
        screenshot(page, "report")
        watch.clean()
    finally:
        page.context.close()
    # the same file stored in the daemon's report directory, served under the report CSP (a
    # blocked script or style would be a console error, and the charts would not draw)
    page, watch = open_page(browser)
    try:
        url = f"{daemon.url}/reports/{sim_report.name}"
        response = page.goto(url)
        assert response is not None and response.status == 200
        assert response.headers["content-security-policy"] == REPORT_CSP
        _report_drawn(page)
        assert watch.requests == [url]
        watch.clean()
    finally:
        page.context.close()
