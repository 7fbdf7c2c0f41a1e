"""A daemon with 10,000 queues (Sim backends): the overview pages, filters and sorts them
correctly, over HTTP and in Chromium. How fast it is and whether the decision loop keeps its
cadence while a browser polls is measured in ``bench/web.py`` (no timing asserted here)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.browser import browser, open_page  # noqa: F401 (fixture)
from tests.helpers import wait_for, write
from tests.webhelpers import Daemon, get, get_json, start_daemon

pytestmark = pytest.mark.timeout(300)
QUEUES = 10_000


def scale_config(base: Path, queues: int = QUEUES, sleep: float = 30.0) -> Path:
    """``queues`` Sim queues over 500 WMS queues and 20 simulated sites (shared pollers)."""
    sections = "".join(
        f"[Q{i:05d}]\nwmsqueue = W{i % 500:03d}\nwmsstatus.sim.activated = {i % 7}\n"
        f"batchsubmit.sim.site = S{i % 20:02d}\n"
        for i in range(queues)
    )
    write(
        base / "queues.conf",
        f"""
[DEFAULT]
enabled = True
apfqueue.sleep = {sleep}
wmsstatusplugin = Sim
wmsstatus.sim.consume = True
batchstatusplugin = Sim
batchsubmitplugin = Sim
batchsubmit.sim.capacity = 100000
batchsubmit.sim.runtime = 2h
schedplugin = Ready, MaxPerCycle
sched.maxpercycle.maximum = 3
{sections}
""",
    )
    return write(
        base / "autopyfactory.conf",
        """
        [Factory]
        factoryId = scale-test
        queueConf = queues.conf
        factory.statedir = state
        wmsstatus.sim.sleep = 5
        batchstatus.sim.sleep = 5
        web.address = 127.0.0.1:0
        web.refresh = 2
        """,
    )


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    base = tmp_path_factory.mktemp("webscale")
    d = start_daemon(scale_config(base), timeout=180, logserver=False)
    try:
        wait_for(
            lambda: get_json(f"{d.url}/api/v1/queues?state=waiting&per_page=1")["matched"] == 0,
            180,
            "every one of 10,000 queues to decide once",
            interval=1,
        )
        yield d
    finally:
        assert d.stop(timeout=60) == 0


def test_overview_first_page_of_ten_thousand_queues(daemon: Daemon) -> None:
    first = get_json(f"{daemon.url}/api/v1/queues?sparklines=true")
    assert first["total"] == QUEUES and first["matched"] == QUEUES and first["pages"] == 200
    assert [q["name"] for q in first["items"]] == [f"Q{i:05d}" for i in range(50)]
    assert all(q["state"] == "ok" and q["decided_at"] is not None for q in first["items"])
    assert set(first["sparklines"]) == {f"Q{i:05d}" for i in range(50)}
    last = get_json(f"{daemon.url}/api/v1/queues?page=200")
    assert [q["name"] for q in last["items"]][-1] == f"Q{QUEUES - 1:05d}"
    found = get_json(f"{daemon.url}/api/v1/queues?q=q0999")
    assert [q["name"] for q in found["items"]] == [f"Q0999{i}" for i in range(10)]
    busiest = get_json(f"{daemon.url}/api/v1/queues?sort=last_n&order=desc&per_page=500")
    ns = [q["last_n"] for q in busiest["items"]]
    assert ns == sorted(ns, reverse=True)
    status, _, body = get(f"{daemon.url}/?per=50")
    assert status == 200 and body.count(b'<a class="queue"') == 50
    assert b'<span id="total">10000</span>' in body


def test_overview_in_the_browser(browser, daemon: Daemon) -> None:  # noqa: F811
    page, watch = open_page(browser)
    try:
        page.goto(f"{daemon.url}/")
        assert page.locator("table.queues tbody tr").count() == 50
        assert page.locator("#total").inner_text() == "10000"
        page.click("nav.pager a[rel=next]")
        assert page.locator("a.queue").first.inner_text() == "Q00050"
        page.fill("input[name=q]", "Q09999")
        page.click("form.filters button")
        assert page.locator("a.queue").all_inner_texts() == ["Q09999"]
        page.click("a.queue")
        assert page.locator("#queue-name").inner_text() == "Q09999"
        watch.clean()
    finally:
        page.context.close()
