"""The web side's parts at their boundaries: store reads beside the factory's writes (real SQLite
in WAL, real PostgreSQL), history bucketing, path resolution of the log server, credential
expiry, the report page's escaping."""

from __future__ import annotations

import base64
import datetime as dt
import http.client
import json
import re
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.exc import OperationalError

from autopyfactory.model import Decision, Step
from autopyfactory.store.api import Store
from autopyfactory.web import queries
from autopyfactory.web.app import sparkline_svg
from autopyfactory.web.config import LogSettings
from autopyfactory.web.credentials import check_profile, jwt_expiry
from autopyfactory.web.logserver import Forbidden, log_app, media_type, safe_path
from autopyfactory.web.models import Series
from autopyfactory.web.report import render_report
from autopyfactory.web.server import WebServer

pytestmark = pytest.mark.timeout(120)


def decisions(store: Store, queue: str, start: float, count: int, step: float) -> None:
    items = [
        Decision(
            queue, i % 3, (Step("Ready", 0, i % 3, "r"),), start + i * step, ready=i, pending=1, running=2
        )
        for i in range(count)
    ]
    store.record_decisions("f", items)


def test_web_reads_never_wait_for_the_factory_write_lock(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'apf.db'}")
    decisions(store, "Q", 1000.0, 10, 1.0)
    read = queries.read_engine(store.url)
    assert read is not None
    with store.engine.connect() as writer:
        writer.begin()  # BEGIN IMMEDIATE: the factory holds SQLite's write lock
        writer.execute(text("INSERT INTO events (factory_id, time, kind, message) VALUES ('f', 1, 'k', 'm')"))
        began = time.monotonic()
        with read.connect() as conn:
            rows = queries.recent_decisions(conn, "f", "Q", 5)
        assert len(rows) == 5 and time.monotonic() - began < 2.0
        writer.commit()
    # and a web read in progress does not stop the factory from writing
    with read.connect() as conn:
        cursor = conn.execute(text("SELECT id FROM decisions"))
        cursor.fetchone()  # a read transaction is open mid-result
        done = threading.Event()

        def write() -> None:
            decisions(store, "Q", 2000.0, 5, 1.0)
            done.set()

        worker = threading.Thread(target=write)
        worker.start()
        assert done.wait(10), "the factory's write waited for a web read"
        worker.join()
        cursor.close()
    with read.connect() as conn, pytest.raises(OperationalError, match=r"readonly|query_only|read-only"):
        conn.execute(text("DELETE FROM decisions"))
    read.dispose()
    store.close()


def _history_checks(url: str) -> None:
    store = Store(url)
    decisions(store, "A", 10_000.0, 600, 6.0)  # one hour, a decision every 6 s
    decisions(store, "B", 10_000.0, 60, 60.0)
    read = queries.read_engine(url) or store.engine
    with read.connect() as conn:
        out = queries.decision_history(conn, "f", ["A", "B", "C"], 10_000.0, 13_600.0, 10)
    assert set(out) == {"A", "B"}
    a = out["A"]
    assert 9 <= len(a["t"]) <= 11
    assert sum(a["n"]) == sum(i % 3 for i in range(600))
    assert max(a["demand"]) == 599 and a["t"] == sorted(a["t"])
    assert len(out["B"]["t"]) <= 11
    read.dispose()
    store.close()


def test_history_is_bucketed_in_sql_sqlite(tmp_path: Path) -> None:
    _history_checks(f"sqlite:///{tmp_path / 'apf.db'}")


def test_history_is_bucketed_in_sql_postgres(postgres_url: str) -> None:
    store = Store(postgres_url)
    with store.engine.begin() as conn:
        conn.execute(text("DELETE FROM decisions WHERE factory_id = 'f'"))
    store.close()
    _history_checks(postgres_url)


def test_store_urls_are_shown_without_password() -> None:
    shown = queries.safe_url("postgresql+psycopg://apf:s3cret-pw@db.example:5432/apf")
    assert "s3cret-pw" not in shown and "db.example" in shown


def test_log_paths_cannot_leave_the_root(tmp_path: Path) -> None:
    root = tmp_path / "logs"
    (root / "2027-01-05" / "Q").mkdir(parents=True)
    (root / "2027-01-05" / "Q" / "1.0.out").write_text("pilot output")
    (root / "out").symlink_to(tmp_path)
    assert safe_path(root, "2027-01-05/Q/1.0.out") == (root / "2027-01-05/Q/1.0.out").resolve()
    assert safe_path(root, "") == root.resolve()
    assert safe_path(root, "./2027-01-05//Q/") == (root / "2027-01-05/Q").resolve()
    for bad in ("../x", "2027-01-05/../../x", "a\\..\\b", "x\x00y", "out/secret", "out"):
        with pytest.raises(Forbidden):
            safe_path(root, bad)
    assert media_type(Path("1.0.out")).startswith("text/plain")
    assert media_type(Path("page.html")).startswith("text/plain")  # a log never becomes a page
    assert media_type(Path("x.bin")) == "application/octet-stream"


def test_credentials_time_left(tmp_path: Path) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    from autopyfactory.config.models import AuthProfile
    from autopyfactory.plugins.auth.token import TokenOptions
    from autopyfactory.plugins.auth.x509 import X509Options

    now = dt.datetime.now(dt.UTC)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "proxy")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(hours=2))
        .sign(key, hashes.SHA256())
    )
    proxy = tmp_path / "proxy.pem"
    proxy.write_bytes(
        cert.public_bytes(serialization.Encoding.PEM)
        + key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    t = time.time()
    x509_profile = AuthProfile(name="atlas", plugin="X509", options=X509Options(proxyfile=str(proxy)))
    health = check_profile("atlas", x509_profile, t)
    assert health.status == "expiring" and 7000 < (health.seconds_left or 0) < 7300  # minlife 3 days
    assert "PRIVATE" not in (health.detail or "") and str(proxy) in (health.detail or "")
    missing = AuthProfile(name="gone", plugin="X509", options=X509Options(proxyfile=str(tmp_path / "none")))
    assert check_profile("gone", missing, t).status == "unreadable"
    claims = base64.urlsafe_b64encode(json.dumps({"exp": int(t) + 30 * 86400}).encode()).decode().rstrip("=")
    token_file = tmp_path / "token"
    token_file.write_text(f"eyJhbGciOiJub25lIn0.{claims}.sig")
    assert jwt_expiry(token_file.read_text()) == int(t) + 30 * 86400
    token = AuthProfile(name="tok", plugin="Token", options=TokenOptions(tokenfile=str(token_file)))
    assert check_profile("tok", token, t).status == "ok"
    assert jwt_expiry("not-a-jwt") is None


def test_sparkline_shows_a_single_point_and_stays_numbers_only() -> None:
    svg = sparkline_svg(Series(t=[100.0], demand=[3], running=[1], start=0.0, end=100.0))
    points = re.findall(r'points="([^"]*)"', svg)
    assert [len(p.split()) for p in points] == [2, 2]
    assert re.fullmatch(r"[\d. ,]+", points[0])
    assert "no history" in sparkline_svg(None)


def test_report_page_escapes_what_it_embeds() -> None:
    evil = "</script><script>alert(1)</script>"
    report = {
        "start": "2027-01-01T00:00:00Z",
        "end": "2027-01-02T00:00:00Z",
        "step_s": 600,
        "stopped_at": None,
        "elapsed_s": 0.1,
        "cycles_run": 2,
        "tiers": {"A<b>": {"cost_per_hour": 0.5, "months": {"2027-01": {"submitted": 1, "started": 1,
                  "peak_running": 1, "pilot_hours": 2.0, "cost": 1.0}}}},
        "events": [{"time": "2027-01-01T00:10:00Z", "cascade": "c", "kind": "spill", "message": evil}],
        "cycles": [
            {"time": "2027-01-01T00:00:00Z", "demand": {evil: 5}, "tiers": {"A<b>": {"pending": 1, "running": 0, "n": 1}}},
            {"time": "2027-01-01T00:10:00Z", "demand": {evil: 5}, "tiers": {"A<b>": {"pending": 0, "running": 1, "n": 0}}},
        ],
    }  # fmt: skip
    page = render_report(report)
    assert page.count("<script") == 3  # uPlot, the data, the drawing code: nothing from the report
    assert evil not in page and "&lt;/script&gt;&lt;script&gt;alert(1)" in page
    assert "A&lt;b&gt;" in page and "<td>A<b>" not in page
    data = re.search(r'id="report-data">(.*?)</script>', page, re.S)
    assert data is not None and json.loads(data.group(1))["series"]["submitted"]["A<b>"] == [1, 1]


def test_vendored_front_end_files_match_their_checksums() -> None:
    import hashlib

    import autopyfactory.web

    vendor = Path(autopyfactory.web.__file__).parent / "static" / "vendor"
    sums = (vendor / "SHA256SUMS").read_text().splitlines()
    assert {line.split()[1] for line in sums} == {"uPlot.iife.min.js", "uPlot.min.css", "htmx.min.js"}
    for line in sums:
        digest, name = line.split()
        assert hashlib.sha256((vendor / name).read_bytes()).hexdigest() == digest, name
    assert (vendor / "VERSIONS").read_text().split() == ["uplot", "1.6.32", "htmx.org", "2.0.11"]


def _log_tree(root: Path) -> None:
    (root / "2027-01-05" / "Q<1>").mkdir(parents=True)
    (root / "2027-01-05" / "Q<1>" / "7.0.out").write_text("pilot 7 output\n")
    (root / "2027-01-05" / "a&b.log").write_text("x\n")


def test_log_server_with_listings_robots_and_a_path_prefix(tmp_path: Path) -> None:
    """``logserver.index`` and ``allowrobots`` on, ``baseLogDirUrl`` with a path: the standalone
    log server (``log_app``, as the daemon runs it) over real HTTP."""
    from tests.webhelpers import get, raw_get

    root = tmp_path / "logs"
    _log_tree(root)
    settings = LogSettings(
        enabled=True, root=root, url="http://127.0.0.1:25880/apf/logs/", index=True, allowrobots=True
    )
    host, port, prefix = settings.listen()
    assert (host, port, prefix) == ("127.0.0.1", 25880, "/apf/logs")
    server = WebServer(log_app(settings, prefix), "127.0.0.1", 0, name="logserver test").start()
    try:
        url = server.url
        # files under the prefix, nothing outside it
        status, headers, body = get(f"{url}/apf/logs/2027-01-05/Q%3C1%3E/7.0.out")
        assert (
            status == 200 and body == b"pilot 7 output\n" and headers["x-content-type-options"] == "nosniff"
        )
        assert get(f"{url}/2027-01-05/Q%3C1%3E/7.0.out")[0] == 404
        assert get(f"{url}/apf/2027-01-05/a%26b.log")[0] == 404
        # listings: escaped names, quoted links, a directory without its slash is redirected
        status, headers, body = get(f"{url}/apf/logs/2027-01-05/")
        page = body.decode()
        assert status == 200 and headers["content-type"].startswith("text/html")
        assert headers["content-security-policy"].startswith("sandbox")
        assert "<title>Index of /apf/logs/2027-01-05/</title>" in page
        assert '<a href="Q%3C1%3E/">Q&lt;1&gt;/</a>' in page and '<a href="a%26b.log">a&amp;b.log</a>' in page
        assert "<1>" not in page
        assert get(f"{url}/apf/logs/")[0] == 200 and b'href="2027-01-05/"' in get(f"{url}/apf/logs/")[2]
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
        conn.request("GET", "/apf/logs/2027-01-05/Q%3C1%3E")
        moved = conn.getresponse()
        assert moved.status == 301 and moved.getheader("Location") == "/apf/logs/2027-01-05/Q%3C1%3E/"
        conn.close()
        # robots allowed: the site's own robots.txt, at the root and under the prefix; 404 without
        assert get(f"{url}/robots.txt")[0] == 404
        (root / "robots.txt").write_text("User-agent: *\nAllow: /\n")
        for path in ("/robots.txt", "/apf/logs/robots.txt"):
            status, headers, body = get(url + path)
            assert status == 200 and body == b"User-agent: *\nAllow: /\n", path
            assert headers["content-type"].startswith("text/plain")
        # traversal stays refused under the prefix
        for target in (
            "/apf/logs/../../etc/passwd",
            "/apf/logs/%2e%2e/%2e%2e/etc/passwd",
            "/apf/logs/..%2f..%2fetc%2fpasswd",
            "/apf/logs/2027-01-05/..\\..\\..\\etc\\passwd",
        ):
            status, body = raw_get("127.0.0.1", server.port, target)
            assert status in (403, 404) and b"root:" not in body, (target, status)
    finally:
        assert server.stop()


def test_log_server_defaults_refuse_listings_and_robots(tmp_path: Path) -> None:
    from tests.webhelpers import get

    root = tmp_path / "logs"
    _log_tree(root)
    (root / "robots.txt").write_text("User-agent: *\nAllow: /\n")  # not served: robots are not allowed
    settings = LogSettings(enabled=True, root=root, url="http://127.0.0.1:25880")
    assert settings.listen() == ("127.0.0.1", 25880, "")
    server = WebServer(log_app(settings), "127.0.0.1", 0, name="logserver test").start()
    try:
        assert get(f"{server.url}/robots.txt")[2] == b"User-agent: *\nDisallow: /\n"
        assert get(f"{server.url}/2027-01-05/")[0] == 403
        assert get(f"{server.url}/2027-01-05/a%26b.log")[2] == b"x\n"
    finally:
        assert server.stop()


def test_health_shows_a_store_whose_file_cannot_be_read(tmp_path: Path) -> None:
    """The factory's SQLite file replaced by one that is not a database (its own connections keep
    the old file): health, its API and its page say the store is unreachable and why, and say it
    is reachable again once the file is back."""
    from autopyfactory.config.loader import load_factory_config
    from autopyfactory.engine.factory import Factory
    from autopyfactory.web.app import create_app
    from autopyfactory.web.engine_view import EngineView
    from tests.helpers import factory_conf
    from tests.webhelpers import get, get_json

    conf = factory_conf(
        tmp_path,
        """
        [Q]
        wmsqueue = Q
        wmsstatusplugin = Sim
        wmsstatus.sim.activated = 0
        batchstatusplugin = Sim
        batchsubmitplugin = Sim
        schedplugin = Ready
        """,
    )
    factory = Factory(load_factory_config(str(conf)))
    view = EngineView(factory)
    server = WebServer(create_app(view), "127.0.0.1", 0, name="health test").start()
    state = tmp_path / "state"
    try:
        assert (tmp_path / "state" / "apf.db").is_file()
        state.rename(tmp_path / "state.away")
        state.mkdir()
        (state / "apf.db").write_bytes(b"this is not an SQLite database\n" * 200)
        store = get_json(f"{server.url}/api/v1/health")["store"]
        assert store["ok"] is False and store["latency_ms"] is None
        assert store["error"] == "store query failed: file is not a database"
        assert store["url"] == f"sqlite:///{state / 'apf.db'}"
        page = get(f"{server.url}/health")[2].decode()
        shown = page.split('id="store"', 1)[1].split("</table>", 1)[0]
        assert '<td class="bad">unreachable: store query failed: file is not a database</td>' in shown
        # the file back: reachable again (a failed read leaves no broken connection behind)
        for leftover in state.iterdir():
            leftover.unlink()
        state.rmdir()
        (tmp_path / "state.away").rename(state)
        store = get_json(f"{server.url}/api/v1/health")["store"]
        assert store["ok"] is True and store["error"] is None and store["latency_ms"] is not None
        assert '<td class="good">reachable, ' in get(f"{server.url}/health")[2].decode()
    finally:
        server.stop()
        view.close()
        factory.shutdown()
