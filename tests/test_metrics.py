"""Prometheus metrics: feed the Observer hooks real model objects, scrape /metrics over HTTP."""

from __future__ import annotations

import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from starlette.applications import Starlette

from autopyfactory.config.models import parse_address
from autopyfactory.credentials import CredentialManager, HealthState
from autopyfactory.credentials.metrics import CredentialCollector
from autopyfactory.engine.events import Observer
from autopyfactory.engine.metrics import Metrics
from autopyfactory.model import Decision, Demand, Pilot, PilotState, Plan, Step, Submit, Supply
from autopyfactory.web.app import metrics_route
from autopyfactory.web.server import WebServer
from fakepanda import factory_context
from tests.helpers import make_jwt

pytestmark = pytest.mark.timeout(60)


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


_URLS: dict[int, str] = {}  # id(Metrics) -> its /metrics URL while served


@contextmanager
def served(m: Metrics) -> Iterator[str]:
    """Serve ``m`` at /metrics on the daemon's web server (the route the dashboard mounts)."""
    server = WebServer(Starlette(routes=[metrics_route(m.registry)]), "127.0.0.1", 0).start()
    _URLS[id(m)] = f"{server.url}/metrics"
    try:
        yield _URLS[id(m)]
    finally:
        _URLS.pop(id(m), None)
        assert server.stop()


@pytest.fixture
def metrics() -> Iterator[tuple[Metrics, Clock]]:
    clock = Clock(1_000.0)
    m = Metrics("BNL-apf", clock=clock)
    with served(m):
        yield m, clock


def scrape(m: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(_URLS[id(m)], timeout=10) as resp:
        assert resp.status == 200
        text = resp.read().decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def q(name: str, **labels: str) -> tuple[str, tuple[tuple[str, str], ...]]:
    return name, tuple(sorted(labels.items()))


def plan(queue: str, n: int, steps: tuple[Step, ...], **kw: int) -> Plan:
    d = Decision(queue, n, steps, time=1_000.0, **kw)
    return Plan(queue, d, (Submit(queue, n),) if n > 0 else ())


def test_is_an_observer_and_serves_on_a_picked_port(metrics: tuple[Metrics, Clock]) -> None:
    m, _ = metrics
    assert isinstance(m, Observer)
    assert _URLS[id(m)].startswith("http://127.0.0.1:") and not _URLS[id(m)].startswith("http://127.0.0.1:0/")
    assert scrape(m)[q("apf_factory_info", factory="BNL-apf")] == 1


def test_queue_numbers(metrics: tuple[Metrics, Clock]) -> None:
    m, _ = metrics
    m.on_start("BNL-apf", ["Q1", "Q2"])
    steps = (Step("Ready", 0, 40, "ready=50 - pending=10"), Step("MaxPerCycle", 40, 20, "max 20"))
    m.on_decision(
        plan("Q1", 20, steps, ready=50, pending=10, running=7),
        Demand("BNL", ready=50),
        Supply("Q1", pending=10, running=7),
    )
    m.on_submitted("Q1", [Pilot(f"1.{i}", "Q1", PilotState.PENDING) for i in range(20)])
    m.on_action_failed("Q2", "Local", "boom")
    m.on_action_failed("Q2", "Local", "boom")
    # the decision carries no counts: they come from demand and supply (held counts as pending)
    m.on_decision(
        plan("Q2", 0, (Step("Ready", 0, 0, "nothing"),)),
        Demand("CERN", ready=3),
        Supply("Q2", pending=2, held=1, running=4),
    )
    s = scrape(m)
    assert s[q("apf_queue_ready", queue="Q1")] == 50
    assert s[q("apf_queue_pilots_pending", queue="Q1")] == 10
    assert s[q("apf_queue_pilots_running", queue="Q1")] == 7
    assert s[q("apf_queue_decision", queue="Q1")] == 20
    assert s[q("apf_queue_decision_binding", queue="Q1", plugin="MaxPerCycle")] == 1
    assert s[q("apf_queue_pilots_submitted_total", queue="Q1")] == 20
    assert s[q("apf_queue_decisions_total", queue="Q1")] == 1
    assert s[q("apf_queue_action_failures_total", queue="Q1")] == 0
    assert s[q("apf_queue_action_failures_total", queue="Q2")] == 2
    assert s[q("apf_queue_pilots_submitted_total", queue="Q2")] == 0  # present from on_start
    assert s[q("apf_queue_ready", queue="Q2")] == 3
    assert s[q("apf_queue_pilots_pending", queue="Q2")] == 3
    assert s[q("apf_queue_pilots_running", queue="Q2")] == 4
    assert s[q("apf_queue_decision_binding", queue="Q2", plugin="none")] == 1


def test_binding_follows_the_last_decision(metrics: tuple[Metrics, Clock]) -> None:
    m, _ = metrics
    m.on_decision(plan("Q1", 5, (Step("Ready", 0, 50, ""), Step("MaxPerCycle", 50, 5, ""))), None, None)
    m.on_decision(plan("Q1", 50, (Step("Ready", 0, 50, ""), Step("MaxPerCycle", 50, 50, ""))), None, None)
    s = scrape(m)
    assert s[q("apf_queue_decision_binding", queue="Q1", plugin="Ready")] == 1
    assert q("apf_queue_decision_binding", queue="Q1", plugin="MaxPerCycle") not in s
    assert s[q("apf_queue_decisions_total", queue="Q1")] == 2
    assert q("apf_queue_ready", queue="Q1") not in s  # unknown: not invented


def test_poller_age_and_errors(metrics: tuple[Metrics, Clock]) -> None:
    m, clock = metrics
    ep = "Panda http://127.0.0.1:25080/api/v1"
    m.on_poll(ep, "wmsstatus", True, 900.0, None)
    m.on_poll(ep, "wmsstatus", False, 950.0, "HTTP 500")
    m.on_poll(ep, "wmsstatus", False, 990.0, "HTTP 500")
    m.on_poll("Local", "batchstatus", False, 995.0, "down")
    s = scrape(m)
    assert s[q("apf_poller_up", endpoint=ep, kind="wmsstatus")] == 0
    assert s[q("apf_poller_last_success_timestamp_seconds", endpoint=ep, kind="wmsstatus")] == 900
    assert s[q("apf_poller_age_seconds", endpoint=ep, kind="wmsstatus")] == 100
    assert s[q("apf_poller_errors_total", endpoint=ep, kind="wmsstatus")] == 2
    assert s[q("apf_poller_polls_total", endpoint=ep, kind="wmsstatus")] == 3
    assert s[q("apf_poller_age_seconds", endpoint="Local", kind="batchstatus")] == 5  # never succeeded
    clock.now = 1_200.0
    m.on_poll(ep, "wmsstatus", True, 1_150.0, None)
    s = scrape(m)
    assert s[q("apf_poller_up", endpoint=ep, kind="wmsstatus")] == 1
    assert s[q("apf_poller_age_seconds", endpoint=ep, kind="wmsstatus")] == 50


def test_cycle_duration(metrics: tuple[Metrics, Clock]) -> None:
    m, _ = metrics
    m.on_cycle(0.02, 3, 1_000.0)
    m.on_cycle(2.0, 4, 1_030.0)
    s = scrape(m)
    assert s[q("apf_cycle_duration_seconds_count")] == 2
    assert s[q("apf_cycle_duration_seconds_sum")] == pytest.approx(2.02)
    assert s[q("apf_cycle_duration_seconds_bucket", le="0.05")] == 1
    assert s[q("apf_cycle_last_duration_seconds")] == 2.0
    assert s[q("apf_cycle_queues_decided")] == 4


def test_private_registries_do_not_mix() -> None:
    a, b = Metrics("A"), Metrics("B")  # the global registry would refuse the second set of names
    a.on_submitted("Q", [Pilot("1", "Q", PilotState.PENDING)])
    with served(a) as url_a, served(b) as url_b:
        assert url_a != url_b
        assert scrape(a)[q("apf_queue_pilots_submitted_total", queue="Q")] == 1
        assert q("apf_queue_pilots_submitted_total", queue="Q") not in scrape(b)


def test_hooks_never_raise() -> None:
    m = Metrics("X")
    m.on_decision(None, None, None)  # type: ignore[arg-type]
    m.on_submitted("Q", None)  # type: ignore[arg-type]
    m.on_cycle("slow", 1, 0.0)  # type: ignore[arg-type]


def test_parse_address() -> None:
    assert parse_address("9100") == ("127.0.0.1", 9100)
    assert parse_address(":9100") == ("127.0.0.1", 9100)
    assert parse_address("0.0.0.0:9100") == ("0.0.0.0", 9100)
    assert parse_address("[::1]:9100") == ("::1", 9100)
    assert parse_address("localhost") == ("localhost", 0)
    with pytest.raises(ValueError, match=r"bad port"):
        parse_address("host:http")
    with pytest.raises(ValueError, match="out of range"):
        parse_address("host:70000")


def test_credential_health_on_metrics_follows_a_failing_refresh(
    metrics: tuple[Metrics, Clock], tmp_path: Path
) -> None:
    """The credential manager's health (real Token profiles, a real refresh command that fails)
    through ``CredentialCollector`` on the served /metrics: seconds left, state, usable."""
    m, _ = metrics
    now = time.time()
    jwt = tmp_path / "jwt"
    jwt.write_text(make_jwt(now + 3600) + "\n")
    opaque = tmp_path / "opaque"
    opaque.write_text("not-a-jwt\n")
    ctx = factory_context(
        auth={
            "tok": (
                "Token",
                {
                    "tokenfile": str(jwt),
                    "minlife": 600,
                    "refresh": f"{sys.executable} -c 'import sys; sys.exit(3)'",
                },
            ),
            "opaque": ("Token", {"tokenfile": str(opaque)}),
        }
    )
    manager = CredentialManager(ctx.auth_profiles, factory_id="BNL-apf")
    m.registry.register(CredentialCollector(manager.all_health, time.time))
    try:
        manager.inspect_all()
        got = scrape(m)
        assert 3500 < got[q("apf_credential_seconds_left", profile="tok", kind="Token")] <= 3600
        assert got[q("apf_credential_state", profile="tok", state="ok")] == 1.0
        assert got[q("apf_credential_state", profile="tok", state="failing")] == 0.0
        assert got[q("apf_credential_usable", profile="tok")] == 1.0
        # a token without a known end: no seconds-left series, still usable
        assert q("apf_credential_seconds_left", profile="opaque", kind="Token") not in got
        assert got[q("apf_credential_usable", profile="opaque")] == 1.0

        # below minlife: the manager runs the refresh command, which fails
        jwt.write_text(make_jwt(now + 120) + "\n")
        assert manager.check_now("tok").state is HealthState.FAILING
        got = scrape(m)
        assert 0 < got[q("apf_credential_seconds_left", profile="tok", kind="Token")] <= 120
        assert got[q("apf_credential_state", profile="tok", state="failing")] == 1.0
        assert got[q("apf_credential_state", profile="tok", state="ok")] == 0.0
        assert got[q("apf_credential_usable", profile="tok")] == 0.0  # time left, but failing

        # gone: expired
        jwt.unlink()
        assert manager.check_now("tok").state is HealthState.EXPIRED
        got = scrape(m)
        assert got[q("apf_credential_state", profile="tok", state="expired")] == 1.0
        assert q("apf_credential_seconds_left", profile="tok", kind="Token") not in got
        assert got[q("apf_credential_usable", profile="opaque")] == 1.0
    finally:
        manager.stop(timeout=5)
