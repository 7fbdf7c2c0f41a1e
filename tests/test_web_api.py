"""The JSON API, pages and pilot log server of a running ``apf run`` daemon (Local pilots as real
processes, Sim demand, a Sim-backed cascade with a monthly quota), over real HTTP."""

from __future__ import annotations

import base64
import json
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from tests.helpers import wait_for, write
from tests.webhelpers import (
    APF,
    EVIL,
    POLICY,
    Daemon,
    get,
    get_json,
    kill_local_pilots,
    raw_get,
    start_daemon,
    web_queues,
    write_config,
)

pytestmark = pytest.mark.timeout(180)
SECRET = b"SuperSecretValue-do-not-show-42"


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    base = tmp_path_factory.mktemp("webapi")
    conf = write_config(base, web_queues(base))
    d = start_daemon(conf)
    try:
        # two Local pilots running, the cascade allocated, the escaping queue decided
        wait_for(
            lambda: (
                (s := get_json(f"{d.url}/api/v1/status"))["queues"]["LOCALQ"]["running"] == 2
                and s["queues"]["LOCALQ"]["pilots_by_state"] == {"running": 2}
                and s["queues"]["TB"]["last_n"] is not None
                and s["queues"][EVIL]["decided_at"] is not None
            ),
            60,
            "LOCALQ running 2 and the cascade decided",
        )
        yield d
    finally:
        rc = d.stop()
        kill_local_pilots(base)
        assert rc == 0, d.log.read_text()[-3000:]


def test_status_is_what_apf_status_prints_locally_and_remotely(daemon: Daemon) -> None:
    api = get_json(f"{daemon.url}/api/v1/status")
    assert api["factory"] == "web-test"
    assert set(api["queues"]) == {"LOCALQ", EVIL, "BROKEN", "TA", "TB", "TC"}
    local = api["queues"]["LOCALQ"]
    assert local["state"] == "ok" and local["demand"] == 0 and local["running"] == 2
    assert local["pilots_by_state"] == {"running": 2}
    assert api["queues"]["BROKEN"]["state"] == "failed to set up"
    assert "executable" in api["queues"]["BROKEN"]["state_detail"]
    assert api["queues"]["TA"]["cascade"] == "burst"
    assert api["metrics"] == f"{daemon.url}/metrics" and api["web"] == daemon.url
    assert api["daemon_store"]["ok"] is True  # the daemon's own writes, as apf status shows them
    remote = subprocess.run(
        [APF, "status", "--url", daemon.url, "--json"], capture_output=True, text=True, timeout=60, check=True
    )
    doc = json.loads(remote.stdout)
    assert set(doc) == set(api) and doc["queues"]["LOCALQ"]["running"] == 2
    table = subprocess.run(
        [APF, "status", "--url", daemon.url], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    assert "LOCALQ" in table and "failed to set up" in table and f"dashboard: {daemon.url}" in table
    # the same model from the store and the daemon's status file (no web involved)
    offline = json.loads(
        subprocess.run(
            [APF, "status", "--conf", str(daemon.conf), "--json"],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout
    )
    assert set(offline) == set(api)
    assert set(offline["queues"]["LOCALQ"]) == set(api["queues"]["LOCALQ"])
    assert offline["queues"]["LOCALQ"]["running"] == 2


def test_apf_status_url_errors_are_one_clear_line(daemon: Daemon) -> None:
    port = daemon.url.rsplit(":", 1)[1]
    dead = subprocess.run(
        [APF, "status", "--url", "http://127.0.0.1:1"], capture_output=True, text=True, timeout=60
    )
    assert dead.returncode == 1 and "cannot reach http://127.0.0.1:1/api/v1/status" in dead.stderr
    assert "Traceback" not in dead.stderr
    wrong = subprocess.run(
        [APF, "status", "--url", f"http://127.0.0.1:{port}/nothing"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert wrong.returncode == 1 and "HTTP 404" in wrong.stderr


def test_overview_pages_filters_and_sorts(daemon: Daemon) -> None:
    page = get_json(f"{daemon.url}/api/v1/queues?per_page=2&sort=name")
    assert page["total"] == 6 and page["matched"] == 6 and page["pages"] == 3
    assert [q["name"] for q in page["items"]] == sorted(["LOCALQ", EVIL, "BROKEN", "TA", "TB", "TC"])[:2]
    page3 = get_json(f"{daemon.url}/api/v1/queues?per_page=2&page=3")
    assert len(page3["items"]) == 2 and page3["page"] == 3
    only_t = get_json(f"{daemon.url}/api/v1/queues?q=t&sort=name&order=desc")
    assert [q["name"] for q in only_t["items"]] == ["TC", "TB", "TA", EVIL]  # "t" in "<script>" too
    failed = get_json(f"{daemon.url}/api/v1/queues?state={quote('failed to set up')}")
    assert [q["name"] for q in failed["items"]] == ["BROKEN"]
    assert failed["counts_by_state"]["failed to set up"] == 1
    by_demand = get_json(f"{daemon.url}/api/v1/queues?sort=demand&order=desc&sparklines=true")
    demands = [q["demand"] for q in by_demand["items"] if q["demand"] is not None]
    assert demands == sorted(demands, reverse=True)
    assert max(by_demand["sparklines"]["LOCALQ"]["demand"]) == 2
    # the binding constraint: the plugin that set the last decision's n (TA's is its cascade)
    ta = get_json(f"{daemon.url}/api/v1/queues?q=TA")["items"][0]
    assert ta["binding"] == "Cascade:burst"
    assert get_json(f"{daemon.url}/api/v1/decisions/TA?last=1")["decisions"][0]["binding"] == "Cascade:burst"
    row = get(f"{daemon.url}/?q=TA")[2].decode().split('class="queue"', 1)[1].split("</tr>", 1)[0]
    assert ">TA</a>" in row and re.findall(r"<td>([^<]*)</td>", row) == ["Cascade:burst"]
    assert get(f"{daemon.url}/api/v1/queues?sort=nonsense")[0] == 422
    assert get(f"{daemon.url}/api/v1/queues?per_page=100000")[0] == 422


def test_queue_detail_decisions_are_apf_explain(daemon: Daemon) -> None:
    detail = get_json(f"{daemon.url}/api/v1/queues/LOCALQ")
    assert detail["info"]["batchsubmit"] == "Local" and detail["info"]["sched"] == ["Ready", "MaxPerCycle"]
    assert detail["info"]["wmsstatus"] == "Sim"
    first = detail["decisions"][-1]
    assert {s["plugin"] for s in first["steps"]} == {"Ready", "MaxPerCycle"}
    assert set(first["steps"][0]) == {"plugin", "in", "out", "reason"}
    assert detail["pilots_total"] == 2 and {p["state"] for p in detail["pilots"]} == {"running"}
    api = get_json(f"{daemon.url}/api/v1/decisions/LOCALQ?last=3")
    cli = json.loads(
        subprocess.run(
            [APF, "explain", "LOCALQ", "--conf", str(daemon.conf), "--json", "-n", "3"],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout
    )
    assert set(api) == set(cli) == {"queue", "decisions", "events", "setup_error"}
    assert set(api["decisions"][0]) == set(cli["decisions"][0])
    assert cli["decisions"][0]["id"] >= api["decisions"][0]["id"]  # newest first in both
    cascade = get_json(f"{daemon.url}/api/v1/decisions/cascade:burst")
    assert [s["plugin"] for s in cascade["decisions"][0]["steps"]] == ["TA", "TB", "TC"]
    assert get(f"{daemon.url}/api/v1/queues/NOPE")[0] == 404
    assert json.loads(get(f"{daemon.url}/api/v1/decisions/NOPE")[2])["detail"] == "no queue or cascade 'NOPE'"


def test_series_is_bucketed_history(daemon: Daemon) -> None:
    series = get_json(f"{daemon.url}/api/v1/series/LOCALQ?hours=1&points=10")
    assert 1 <= len(series["t"]) <= 11
    assert len(series["t"]) == len(series["demand"]) == len(series["running"]) == len(series["n"])
    assert max(series["demand"]) == 2 and sum(n for n in series["n"] if n) == 2
    assert series["end"] - series["start"] == pytest.approx(3600, abs=1)


def test_cascade_tiers_quota_burn_down_and_costs(daemon: Daemon) -> None:
    def allocated() -> dict | None:
        c = get_json(f"{daemon.url}/api/v1/cascades/burst")
        return c if c["demand"] == 10 and c["quotas"][0]["used_pilots"] >= 5 else None

    c = wait_for(allocated, 60, "the cascade to allocate its demand of 10")
    assert [t["queue"] for t in c["tiers"]] == ["TA", "TB", "TC"]
    ta, tb, tc = c["tiers"]
    assert ta["cap"] == 3 and tb["quotas"] == ["40 pilots per month"]
    assert tb["cost_per_hour"] == 0.1 and tc["cost_per_hour"] == 0.5
    quota = c["quotas"][0]
    assert quota["tier"] == "TB" and quota["limit_pilots"] == 40 and quota["unit"] == "pilots"
    assert quota["remaining"][0] == 40 and quota["remaining"][-1] == 40 - quota["used_pilots"]
    # the burn rate: TB's pilots (all started by this daemon) over the last day, or since the
    # month began when that is shorter; the forecast extrapolates it from now
    now, left = quota["t"][-1], quota["limit_pilots"] - quota["used_pilots"]
    span_h = max((now - max(quota["start"], now - 86400)) / 3600, 1 / 60)
    assert quota["rate_per_hour"] == pytest.approx(quota["used_pilots"] / span_h, abs=0.001)
    runs_out = now + left / quota["rate_per_hour"] * 3600
    if quota["runs_out_at"] is not None:
        assert quota["runs_out_at"] < quota["end"]
        assert quota["runs_out_at"] - now == pytest.approx(runs_out - now, rel=0.01)
    else:  # at this rate the quota lasts the month
        assert runs_out - now >= (quota["end"] - now) * 0.99
    assert not quota["exhausted"]
    page = get(f"{daemon.url}/cascades")[2].decode()
    caption = page.split('<figure class="quota">', 1)[1].split("</figcaption>", 1)[0]
    forecast = re.search(r'<b class="forecast">([^<]+)</b>', caption)
    if quota["runs_out_at"] is not None:
        assert forecast is not None, caption
        shown = time.mktime(time.strptime(forecast.group(1), "%Y-%m-%d %H:%M:%SZ")) - time.timezone
        assert shown == pytest.approx(quota["runs_out_at"], abs=60)  # the page is rendered seconds later
    else:
        assert forecast is None and "it lasts the period" in caption
    # a tier at its cap says so
    assert ta["status"] == "capped" and ta["cap_room"] == 0 and ta["running"] == 3
    assert ta["reason"].startswith("capped at 3")
    assert re.search(r'<tr class="tier tier-capped">\s*<td>1</td>\s*<td><a [^>]*>TA</a>', page)
    assert {t["tier"] for t in c["costs"]} == {"TA", "TB", "TC"}
    assert all(len(t["months"]) == 2 for t in c["costs"])
    assert get_json(f"{daemon.url}/api/v1/cascades")[0]["name"] == "burst"
    assert get(f"{daemon.url}/api/v1/cascades/none")[0] == 404


def test_health_and_no_secret_anywhere(daemon: Daemon) -> None:
    health = get_json(f"{daemon.url}/api/v1/health")
    assert {p["kind"] for p in health["pollers"]} == {"wmsstatus", "batchstatus"}
    assert all(p["state"] == "ok" for p in health["pollers"])
    assert health["store"]["ok"] and health["store"]["dialect"] == "sqlite"
    assert [(c["name"], c["plugin"], c["status"]) for c in health["credentials"]] == [
        ("mytoken", "Token", "no expiry known")
    ]
    # BROKEN failed its start-up checks: it is listed as such, not run by the loop
    assert health["loop"]["queues"] == 5 and health["loop"]["cascades"] == 1
    for path in (
        "/",
        "/health",
        "/cascades",
        "/api/v1/health",
        "/api/v1/status",
        "/openapi.json",
        "/metrics",
    ):
        status, _, body = get(daemon.url + path)
        assert status == 200 and SECRET not in body, path


def test_openapi_documents_the_api_and_swagger_ui_is_off(daemon: Daemon) -> None:
    doc = get_json(f"{daemon.url}/openapi.json")
    for path in (
        "/api/v1/status",
        "/api/v1/queues",
        "/api/v1/queues/{name}",
        "/api/v1/decisions/{name}",
        "/api/v1/series/{name}",
        "/api/v1/cascades",
        "/api/v1/cascades/{name}",
        "/api/v1/health",
        "/api/v1/events",
        "/api/v1/reports",
    ):
        assert path in doc["paths"], path
    assert "StatusReport" in doc["components"]["schemas"]
    assert get(f"{daemon.url}/docs")[0] == 404 and get(f"{daemon.url}/redoc")[0] == 404


def test_read_only_and_metrics_moved_here(daemon: Daemon) -> None:
    import urllib.request

    request = urllib.request.Request(f"{daemon.url}/api/v1/status", data=b"{}", method="POST")
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(request, timeout=10)
    assert info.value.code == 405
    status, headers, body = get(f"{daemon.url}/metrics")
    assert status == 200 and headers["content-type"].startswith("text/plain")
    assert b'apf_queue_decisions_total{queue="LOCALQ"}' in body


def test_pages_escape_names_from_configs(daemon: Daemon) -> None:
    status, headers, body = get(daemon.url + "/")
    assert status == 200 and "script-src 'self'" in headers["content-security-policy"]
    assert b"&lt;script&gt;alert(1)&lt;/script&gt;" in body and EVIL.encode() not in body
    status, _, body = get(daemon.url + "/queues/" + quote(EVIL, safe=""))
    assert status == 200 and EVIL.encode() not in body and b"&lt;script&gt;" in body
    status, _, body = get(daemon.url + "/queues/" + quote("<b>nope</b>", safe=""))
    assert status == 404 and b"&lt;b&gt;nope&lt;/b&gt;" in body and b"<b>nope</b>" not in body
    for path in ("/cascades", "/health", "/reports", "/partials/queues", "/partials/health"):
        assert get(daemon.url + path)[0] == 200, path


def test_log_server_serves_pilot_logs_and_refuses_traversal(daemon: Daemon) -> None:
    assert daemon.logserver is not None
    detail = get_json(f"{daemon.url}/api/v1/queues/LOCALQ")
    logs = [p["log"] for p in detail["pilots"] if p["log"]]
    assert len(logs) == 2, detail["pilots"]

    def written() -> bytes | None:
        status, _, body = get(f"{daemon.logserver}/{logs[0]}")
        return body if status == 200 and b"hello from pilot" in body else None

    body = wait_for(written, 30, "the pilot's output in the log server")
    assert b"of LOCALQ" in body
    status, headers, _ = get(f"{daemon.logserver}/{logs[0]}")
    assert headers["content-type"].startswith("text/plain") and headers["x-content-type-options"] == "nosniff"
    # the same file through the dashboard (the queue page links there)
    assert get(f"{daemon.url}/logs/{logs[0]}")[2] == body
    host, port = daemon.logserver.removeprefix("http://").split(":")
    for target in (
        "/../../../../etc/passwd",
        "/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
        "/..%2f..%2f..%2fetc%2fpasswd",
        "/" + logs[0].split("/")[0] + "/../../../etc/passwd",
        "/..\\..\\etc\\passwd",
    ):
        status, body = raw_get(host, int(port), target)
        assert status in (403, 404) and b"root:" not in body, (target, status, body[:200])
    # a symlink inside baseLogDir that points outside is refused too
    root = daemon.conf.parent / "logs"
    (root / "escape").symlink_to("/etc")
    status, body = raw_get(host, int(port), "/escape/passwd")
    assert status == 403 and b"root:" not in body
    # no listings (logserver.index is off), and robots are told to stay away
    assert get(f"{daemon.logserver}/")[0] == 403
    assert get(f"{daemon.logserver}/robots.txt")[2] == b"User-agent: *\nDisallow: /\n"
    assert get(f"{daemon.logserver}/no/such.out")[0] == 404


def test_stored_reports_are_listed_and_served(daemon: Daemon) -> None:
    reports = daemon.conf.parent / "state" / "reports"
    reports.mkdir(parents=True, exist_ok=True)
    (reports / "jan.html").write_text("<!doctype html><title>jan</title><p>report</p>")
    listed = get_json(f"{daemon.url}/api/v1/reports")
    assert [r["name"] for r in listed] == ["jan.html"]
    status, headers, body = get(f"{daemon.url}/reports/jan.html")
    assert status == 200 and body.endswith(b"<p>report</p>")
    assert headers["content-security-policy"].startswith("default-src 'none'")
    assert get(f"{daemon.url}/reports/..%2f..%2fautopyfactory.conf")[0] == 404
    assert b"jan.html" in get(f"{daemon.url}/reports")[2]


def test_sigterm_stops_the_daemon_and_its_web_server(tmp_path: Path) -> None:
    conf = write_config(tmp_path, web_queues(tmp_path, local_demand=0))
    d = start_daemon(conf)
    try:
        assert get(d.url + "/api/v1/health")[0] == 200
    finally:
        assert d.stop(timeout=15) == 0
        kill_local_pilots(tmp_path)
    with pytest.raises(OSError):
        get(d.url + "/api/v1/health", timeout=5)


def _jwt(exp: float) -> str:
    claims = base64.urlsafe_b64encode(json.dumps({"exp": int(exp)}).encode()).decode().rstrip("=")
    return f"eyJhbGciOiJub25lIn0.{claims}.sig"


MONITOR_PW = "MonitorPw-77"
TIGHT = """
  - name: tight
    demand: TIGHT
    tiers:
      - {queue: QA, quotas: [{per: month, pilots: 2}], spill_on: [quota], cost_per_hour: 36.0}
      - {queue: QB, cap: 1}
  - name: refused
    demand: REFUSED
    tiers:
      - {queue: RA, spill_on: [backoff]}
      - {queue: RB, cap: 1}
  - name: shrink
    demand: SHRINK
    tiers:
      - {queue: SA}
"""


@pytest.fixture(scope="module")
def troubled(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    """A daemon whose things go wrong: FAILQ's Local submissions fail (its log directory cannot
    be made: a file is in the way), SOONQ's and PASTQ's PanDA server is unreachable and their
    Token profiles expire soon or expired, the monitor's URL carries user:password, and cascade
    "tight" has a tier whose monthly quota (2 pilots) is spent before its demand (4) is met.
    Cascade "refused": RA's Sim site refuses every submission for its first hour (a capacity
    error), so RA is backed off and RB takes what its cap of 1 allows (1 of the demand of 2 stays
    unmet, so the demand keeps reaching RA). Cascade "shrink": SA's demand is 2 for
    20 s, then 0 for 20 s, over and over; its site has no slots, so its pilots stay pending and
    are cancelled (the tier drains) each time the demand drops."""
    base = tmp_path_factory.mktemp("webtrouble")
    extra = """
    [FAILQ]
    wmsqueue = FAILQ
    wmsstatus.sim.activated = 2
    # the target's backoff is the queue's interval doubled per failure: long enough that FAILQ is
    # still backing off when the last test of this module reads it
    apfqueue.sleep = 120
    monitorsection = apfmon

    [SOONQ]
    wmsqueue = SOONQ
    wmsstatusplugin = Panda
    wmsstatus.panda.url = http://127.0.0.1:1/api/v1
    wmsstatus.panda.auth = soon

    [PASTQ]
    wmsqueue = PASTQ
    wmsstatusplugin = Panda
    wmsstatus.panda.url = http://127.0.0.1:1/api/v1
    wmsstatus.panda.auth = past

    [QA]
    wmsqueue = TIGHT
    wmsstatus.sim.activated = 4
    batchstatusplugin = Sim
    batchsubmitplugin = Sim
    batchsubmit.sim.runtime = 1h

    [QB]
    wmsqueue = TIGHT
    batchstatusplugin = Sim
    batchsubmitplugin = Sim
    batchsubmit.sim.runtime = 1h

    [RA]
    wmsqueue = REFUSED
    wmsstatus.sim.activated = 2
    batchstatusplugin = Sim
    batchsubmitplugin = Sim
    batchsubmit.sim.refuse = 0-1h
    batchsubmit.sim.runtime = 1h

    [RB]
    wmsqueue = REFUSED
    batchstatusplugin = Sim
    batchsubmitplugin = Sim
    # no slots: RB's pilots stay pending and take no jobs, so the demand keeps reaching RA
    batchsubmit.sim.capacity = 0

    [SA]
    wmsqueue = SHRINK
    wmsstatus.sim.steps = 0:2, 20:0
    wmsstatus.sim.period = 40
    # the cascade decides every 8 s: "draining" stays shown until the decision after the drop
    apfqueue.sleep = 8
    batchstatusplugin = Sim
    batchsubmitplugin = Sim
    batchsubmit.sim.capacity = 0
    """
    conf = write_config(base, web_queues(base, extra=extra), "monitorConf = monitor.conf\n")
    write(base / "policy.yaml", POLICY + TIGHT)
    now = time.time()
    write(base / "soon.jwt", _jwt(now + 300))  # token.minlife is 600 s: expiring
    write(base / "past.jwt", _jwt(now - 300))
    write(
        base / "auth.conf",
        f"""
        [soon]
        plugin = Token
        token.tokenfile = {base / "soon.jwt"}

        [past]
        plugin = Token
        token.tokenfile = {base / "past.jwt"}
        """,
    )
    write(
        base / "monitor.conf",
        f"[apfmon]\nmonitorplugin = APF\nmonitorURL = http://apfuser:{MONITOR_PW}@127.0.0.1:1/api\n",
    )
    for when in (now, now + 86400):  # today's and tomorrow's (UTC) log directory of FAILQ
        day = base / "logs" / time.strftime("%Y-%m-%d", time.gmtime(when))
        day.mkdir(parents=True, exist_ok=True)
        (day / "FAILQ").write_text("a file where the log directory should be\n")
    d = start_daemon(conf)
    try:
        wait_for(
            lambda: (
                get_json(f"{d.url}/api/v1/status")["queues"]["FAILQ"]["state"] == "backing off"
                and get_json(f"{d.url}/api/v1/health")["monitors"][0]["failed"]
            ),
            60,
            "FAILQ backing off and the monitor failing",
        )
        wait_for(
            lambda: (
                [(t["status"], t["quota_left"]) for t in get_json(f"{d.url}/api/v1/cascades/tight")["tiers"]]
                == [("out of quota", 0), ("capped", None)]
            ),
            60,
            "QA out of its quota of 2 (in a cycle after the one that spent it), QB at its cap of 1",
        )
        yield d
    finally:
        rc = d.stop()
        kill_local_pilots(base)
        assert rc == 0, d.log.read_text()[-3000:]


def test_a_failing_target_backs_its_queue_off(troubled: Daemon) -> None:
    failq = get_json(f"{troubled.url}/api/v1/queues/FAILQ")["summary"]
    assert failq["state"] == "backing off"
    assert failq["state_detail"].startswith("local:FAILQ: cannot create the log directory")
    assert re.search(r"\(until \d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ\)$", failq["state_detail"])
    assert failq["binding"] == "Ready" and failq["last_n"] == 2  # the decision was made; the action failed
    listed = get_json(f"{troubled.url}/api/v1/queues?state={quote('backing off')}&sort=name")
    assert [q["name"] for q in listed["items"]] == ["FAILQ", "RA"]  # RA: a backed-off cascade tier
    status, _, body = get(f"{troubled.url}/?state={quote('backing off')}")
    assert status == 200 and b'<tr class="state-backing-off">' in body
    assert b"cannot create the log directory" in body and b">FAILQ</a>" in body
    assert b"<td>Ready</td>" in body  # the binding column: Ready set n (MaxPerCycle allows 5)
    health = get_json(f"{troubled.url}/api/v1/health")
    (target,) = [t for t in health["targets"] if t["target"] == "local:FAILQ"]
    assert target["failures"] >= 1
    assert "cannot create the log directory" in target["error"] and target["backoff_until"] > 0
    page = get(f"{troubled.url}/health")[2].decode()
    targets = page.split('id="targets"', 1)[1].split("</table>", 1)[0]
    assert "local:FAILQ" in targets and "cannot create the log directory" in targets


def test_events_are_stored_numbered_and_on_the_queue_page(troubled: Daemon) -> None:
    events = get_json(f"{troubled.url}/api/v1/events?queue=FAILQ&limit=5")
    assert events and all(e["queue"] == "FAILQ" for e in events)
    failed = [e for e in events if e["kind"] == "action-failed"]
    assert failed and "cannot create the log directory" in failed[0]["message"]
    ids = [e["id"] for e in events]
    assert all(isinstance(i, int) for i in ids) and ids == sorted(ids, reverse=True)  # newest first
    assert get_json(f"{troubled.url}/api/v1/events?queue=NOPE") == []
    everything = get_json(f"{troubled.url}/api/v1/events?limit=1000")
    assert {e["id"] for e in failed} <= {e["id"] for e in everything}
    assert get(f"{troubled.url}/api/v1/events?limit=0")[0] == 422
    # the queue's API detail and page show the same events
    detail = get_json(f"{troubled.url}/api/v1/queues/FAILQ")
    assert failed[0]["id"] in {e["id"] for e in detail["events"]}
    page = get(f"{troubled.url}/queues/FAILQ")[2].decode()
    shown = page.split('id="events"', 1)[1].split("</table>", 1)[0]
    assert '<span class="kind">action-failed</span>' in shown and "cannot create the log directory" in shown


def test_expiring_and_expired_credentials_mark_their_queues(troubled: Daemon) -> None:
    queues = get_json(f"{troubled.url}/api/v1/status")["queues"]
    assert queues["SOONQ"]["state"] == "credential expiring"
    assert queues["SOONQ"]["state_detail"] == "soon: expiring"
    assert queues["PASTQ"]["state"] == "credential expiring"
    assert "past" in queues["PASTQ"]["state_detail"] and "expired" in queues["PASTQ"]["state_detail"]
    health = get_json(f"{troubled.url}/api/v1/health")
    creds = {c["name"]: c for c in health["credentials"]}
    assert creds["soon"]["status"] == "expiring" and 0 < creds["soon"]["seconds_left"] <= 300
    assert creds["past"]["status"] == "expired" and creds["past"]["seconds_left"] < 0
    assert creds["soon"]["queues"] == creds["past"]["queues"] == 1
    status, _, body = get(f"{troubled.url}/?state={quote('credential expiring')}&sort=name")
    rows = re.findall(rb'<tr class="state-credential-expiring">.*?<a [^>]*>(\w+)</a>', body, re.S)
    assert status == 200 and rows == [b"PASTQ", b"SOONQ"]
    page = get(f"{troubled.url}/health")[2].decode()
    assert '<tr class="cred-expiring"><td>soon</td>' in page
    assert '<tr class="cred-expired"><td>past</td>' in page


def test_health_shows_failing_pollers_and_the_monitor_without_its_password(troubled: Daemon) -> None:
    health = get_json(f"{troubled.url}/api/v1/health")
    panda = [p for p in health["pollers"] if p["label"].startswith("wmsstatus Panda")]
    assert panda and all(p["failures"] >= 1 and "connection refused" in p["error"] for p in panda)
    assert all(p["state"].startswith("backing off for ") for p in panda)
    assert all(p["next_attempt"] > health["time"] and p["ok_time"] is None for p in panda)
    (monitor,) = health["monitors"]
    assert monitor["section"] == "apfmon" and monitor["plugin"] == "APF" and monitor["queues"] == 1
    assert monitor["url"] == "http://127.0.0.1:1/api" and monitor["failed"] >= 1
    assert monitor["last_error"] and "PUT /factories/web-test" in monitor["last_error"]
    page = get(f"{troubled.url}/health")[2].decode()
    pollers = page.split('id="pollers"', 1)[1].split("</table>", 1)[0]
    assert "backing off for" in pollers and "connection refused" in pollers
    monitors = page.split('id="monitors"', 1)[1].split("</table>", 1)[0]
    assert "<td>http://127.0.0.1:1/api</td>" in monitors and "PUT /factories/web-test" in monitors
    for path in ("/health", "/api/v1/health", "/partials/health", "/api/v1/status", "/"):
        assert MONITOR_PW.encode() not in get(troubled.url + path)[2], path
    assert MONITOR_PW not in troubled.log.read_text()  # nor in the daemon's log


def test_a_tier_out_of_quota_and_what_its_pilots_cost(troubled: Daemon) -> None:
    c = get_json(f"{troubled.url}/api/v1/cascades/tight")
    qa, qb = c["tiers"]
    # demand 4: QA's quota of 2 is spent, QB's cap of 1 reached, 1 left unmet
    assert (qa["status"], qa["quota_left"], qb["status"]) == ("out of quota", 0, "capped")
    assert qa["reason"].startswith("quota spent for this period") and c["unmet"] == 1
    (quota,) = c["quotas"]
    assert quota["tier"] == "QA" and quota["used_pilots"] == 2 and quota["exhausted"]
    now = quota["t"][-1]
    assert quota["remaining"][-1] == 0 and quota["runs_out_at"] == now  # it has run out: now
    # QA's cost this month: its two pilots' hours so far (they run for 1h) at 36 per hour
    pilots = get_json(f"{troubled.url}/api/v1/queues/QA")["pilots"]
    started = [p["started_at"] for p in pilots if p["started_at"] is not None]
    assert len(started) == 2
    hours = sum(now - t for t in started) / 3600
    (costs,) = [t for t in c["costs"] if t["tier"] == "QA"]
    month = costs["months"][quota["period"]]
    assert costs["cost_per_hour"] == 36.0 and month["pilots"] == 2
    assert month["pilot_hours"] == pytest.approx(hours, abs=0.006)  # shown to 2 decimals
    assert month["cost"] == pytest.approx(hours * 36.0, abs=0.01) and month["cost"] > 0
    page = get(f"{troubled.url}/cascades")[2].decode()
    tight = page.split('id="cascade-tight"', 1)[1]
    assert re.search(r'<tr class="tier tier-out-of-quota">\s*<td>1</td>\s*<td><a [^>]*>QA</a>', tight)
    assert '<span class="bad">exhausted</span>' in tight.split("</figcaption>", 1)[0]


def _tier_row(page: str, cascade: str, queue: str) -> str:
    """The tier row of ``queue`` in cascade ``cascade`` on the cascade page."""
    section = page.split(f'id="cascade-{cascade}"', 1)[1].split("</table>", 1)[0]
    (row,) = [r for r in section.split("<tr ")[1:] if f">{queue}</a>" in r]
    return "<tr " + row.split("</tr>", 1)[0]


def test_a_refused_tier_is_backed_off_and_its_demand_moves_on(troubled: Daemon) -> None:
    url = f"{troubled.url}/api/v1/cascades/refused"
    # RB's Sim pilots show up in a batch poll after the spill: wait for the cascade to see them
    wait_for(lambda: get_json(url)["supply"] == 1, 60, "RB holding 1 pilot of the 2 RA refused")
    c = get_json(url)
    ra, rb = c["tiers"]
    assert (ra["queue"], ra["status"], rb["queue"]) == ("RA", "backed off", "RB")
    assert ra["backoff_until"] > c["time"] and ra["submit"] == 0 and c["unmet"] == 1
    assert "backed off for" in ra["reason"]
    assert rb["status"] == "capped" and (rb["pending"], rb["running"]) == (1, 0)
    # the refusal is the cascade's event, with the site's own words
    refusals = [e["message"] for e in c["events"] if e["kind"] == "backoff"]
    assert any("tier RA backed off" in m and "no capacity" in m for m in refusals), refusals
    ra_queue = get_json(f"{troubled.url}/api/v1/queues/RA")["summary"]
    assert ra_queue["state"] == "backing off"
    page = get(f"{troubled.url}/cascades")[2].decode()
    row = _tier_row(page, "refused", "RA")
    assert row.startswith('<tr class="tier tier-backed-off">')
    assert '<span class="status">backed off</span>' in row and '<div class="detail">until ' in row
    assert '<tr class="tier tier-capped">' in _tier_row(page, "refused", "RB")


def test_a_tier_whose_demand_dropped_is_draining(troubled: Daemon) -> None:
    url = f"{troubled.url}/api/v1/cascades/shrink"

    def draining() -> tuple[dict[str, Any], str] | None:
        # SA drains for one decision (8 s) in every 40 s period: both reads must see that one
        before = get_json(url)
        page = get(f"{troubled.url}/cascades")[2].decode()
        after = get_json(url)
        if before["time"] != after["time"] or before["tiers"][0]["status"] != "draining":
            return None
        return after, page

    c, page = wait_for(draining, 150, "tier SA draining when its demand dropped", interval=0.5)
    (sa,) = c["tiers"]
    assert c["demand"] == 0 and sa["queue"] == "SA"
    assert sa["cancel"] == 2 and sa["submit"] == 0 and sa["retire"] == 0
    assert sa["reason"].startswith("demand below supply: cancels 2")
    drains = [e for e in c["events"] if e["kind"] == "drain"]
    assert drains and "SA: gives back 2 (cancels 2)" in drains[0]["message"]
    row = _tier_row(page, "shrink", "SA")
    assert row.startswith('<tr class="tier tier-draining">')
    assert '<span class="status">draining</span>' in row and "demand below supply: cancels 2" in row
