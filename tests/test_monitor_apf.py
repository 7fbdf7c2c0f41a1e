"""monitorplugin = APF against a local apfmon receiver: paths, bodies, order, and never blocking."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator

import pytest

from autopyfactory import __version__
from autopyfactory.model import Decision, Pilot, PilotState, Step
from autopyfactory.plugins.base import PluginError, load
from autopyfactory.plugins.monitor.apf import APF, APFOptions, format_label_message, wait_idle
from autopyfactory.plugins.monitor.dummy import Dummy
from fakeapfmon import FakeApfmon
from fakepanda import factory_context

pytestmark = pytest.mark.timeout(60)

BOUND = 0.2  # a monitor call must return within this, whatever the receiver does


@pytest.fixture
def mon() -> Iterator[FakeApfmon]:
    fake = FakeApfmon().start()
    try:
        yield fake
    finally:
        fake.stop()


def make(url: str, **opts: float) -> APF:
    ctx = factory_context(
        "BNL-apf",
        factoryAdminEmail="ops@example.org",
        baseLogDirUrl="http://apf.example.org:25880",
    )
    cls = load("monitor", "APF")
    assert cls is APF
    return APF("apfmon-main", APFOptions(**opts), ctx, url=url)


def pilots(*ids: str) -> list[Pilot]:
    return [Pilot(i, "Q1", PilotState.PENDING) for i in ids]


def timed(fn, *args) -> float:  # type: ignore[no-untyped-def]
    start = time.monotonic()
    fn(*args)
    return time.monotonic() - start


def test_protocol_paths_bodies_and_order(mon: FakeApfmon) -> None:
    plugin = make(mon.url)
    try:
        plugin.register_factory(["Q1", "Q2"])
        plugin.register_pilots("Q1", pilots("101.0", "101.1"))
        plugin.update_label("Q1", "Ready:in=0,ret=2")
        assert mon.wait_for(lambda m: len(m.calls) == 5)
        assert wait_idle(plugin, 5)
        assert mon.summary() == [
            ("PUT", "/api/factories/BNL-apf"),
            ("GET", "/api/labels?factory=BNL-apf"),
            ("PUT", "/api/labels"),
            ("PUT", "/api/jobs"),
            ("POST", "/api/labels/BNL-apf:Q1"),
        ]
        factory, _, labels, jobs, status = mon.calls
        assert factory.content_type == "application/json"
        assert factory.json() == {
            "version": __version__,
            "email": "ops@example.org",
            "url": "http://apf.example.org:25880",
        }
        empty = {"wmsqueue": "", "batchqueue": "", "resource": "", "localqueue": ""}
        assert labels.json() == [
            {"name": "Q1", "factory": "BNL-apf", **empty},
            {"name": "Q2", "factory": "BNL-apf", **empty},
        ]
        assert jobs.json() == [
            {"cid": "101.0", "label": "Q1", "factory": "BNL-apf"},
            {"cid": "101.1", "label": "Q1", "factory": "BNL-apf"},
        ]
        assert status.content_type == "application/x-www-form-urlencoded"
        assert status.form() == {"status": "Ready:in=0,ret=2"}
        assert plugin.stats.registered and plugin.stats.sent == 5
    finally:
        plugin.close()


def test_known_labels_are_not_registered_again_and_new_ones_come_first(mon: FakeApfmon) -> None:
    mon.labels["Q1"] = {"name": "Q1", "factory": "BNL-apf"}
    plugin = make(mon.url)
    try:
        plugin.register_factory(["Q1"])
        assert mon.wait_for(lambda m: len(m.calls) == 2)
        assert wait_idle(plugin, 5)
        # a queue first seen when it submits: its label is registered before its jobs
        plugin.register_pilots("Q9", pilots("7.0"))
        assert mon.wait_for(lambda m: len(m.calls) == 4)
        assert mon.summary()[2:] == [("PUT", "/api/labels"), ("PUT", "/api/jobs")]
        assert [item["name"] for item in mon.calls[2].json()] == ["Q9"]
    finally:
        plugin.close()


def test_calls_return_at_once_while_the_monitor_hangs(mon: FakeApfmon) -> None:
    mon.hang()
    plugin = make(mon.url, timeout=30)
    try:
        worst = max(
            timed(plugin.register_factory, ["Q1"]),
            *(timed(plugin.register_pilots, "Q1", pilots(f"{i}.0")) for i in range(20)),
            *(timed(plugin.update_label, "Q1", f"msg {i}") for i in range(20)),
        )
        assert worst < BOUND
        assert mon.wait_for(lambda m: m.blocked == 1)  # the worker is stuck on the factory PUT
        mon.release()
        assert mon.wait_for(lambda m: sum(1 for c in m.calls if c.path == "/api/jobs") == 20)
        assert wait_idle(plugin, 10)
        statuses = [c.form()["status"] for c in mon.calls if c.method == "POST"]
        assert statuses == ["msg 19"]  # coalesced: only the latest message per label
    finally:
        plugin.close()


def test_monitor_down_at_start_is_registered_when_it_comes_up() -> None:
    mon = FakeApfmon().reserve_port()  # nothing listens there yet
    plugin = make(mon.url, retry=0.05, maxbackoff=0.2, timeout=2)
    try:
        assert timed(plugin.register_factory, ["Q1"]) < BOUND
        assert timed(plugin.register_pilots, "Q1", pilots("1.0")) < BOUND
        assert timed(plugin.update_label, "Q1", "Ready:in=0,ret=1") < BOUND
        deadline = time.monotonic() + 5
        while plugin.stats.failed < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert plugin.stats.failed >= 2 and not plugin.stats.registered  # it kept trying
        mon.start()
        assert mon.wait_for(lambda m: len(m.calls) == 5)
        assert mon.summary()[0] == ("PUT", "/api/factories/BNL-apf")  # registration first
        assert [m for m, _ in mon.summary()] == ["PUT", "GET", "PUT", "PUT", "POST"]
    finally:
        plugin.close()
        mon.stop()


def test_failed_calls_are_retried(mon: FakeApfmon) -> None:
    plugin = make(mon.url, retry=0.05, maxbackoff=0.1)
    try:
        plugin.register_factory(["Q1"])
        assert mon.wait_for(lambda m: len(m.calls) == 3)
        mon.fail_next(2, 503)
        plugin.register_pilots("Q1", pilots("5.0"))
        assert mon.wait_for(lambda m: len(m.calls) == 4)
        assert mon.calls[3].json() == [{"cid": "5.0", "label": "Q1", "factory": "BNL-apf"}]
        assert plugin.stats.failed == 2
        # a call the monitor refuses for good (4xx) is dropped, and the next ones still go
        mon.fail_next(1, 400)
        plugin.register_pilots("Q1", pilots("6.0"))
        plugin.register_pilots("Q1", pilots("7.0"))
        assert mon.wait_for(lambda m: len(m.calls) == 5)
        assert wait_idle(plugin, 5)
        assert mon.calls[4].json()[0]["cid"] == "7.0"
    finally:
        plugin.close()


def test_a_slow_call_times_out_and_is_sent_later(mon: FakeApfmon) -> None:
    plugin = make(mon.url, timeout=0.3, retry=0.05, maxbackoff=0.1)
    try:
        mon.hang()
        plugin.register_factory(["Q1"])
        deadline = time.monotonic() + 5
        while plugin.stats.failed < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert plugin.stats.failed >= 1 and "timed out" in (plugin.stats.last_error or "")
        mon.release()
        assert mon.wait_for(lambda m: ("GET", "/api/labels?factory=BNL-apf") in m.summary())
    finally:
        plugin.close()


def test_queue_is_bounded(mon: FakeApfmon, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    mon.hang()
    plugin = make(mon.url, queuesize=5, timeout=30)
    try:
        plugin.register_factory(["Q1"])
        assert mon.wait_for(lambda m: m.blocked == 1)
        for i in range(50):
            plugin.register_pilots("Q1", pilots(f"{i}.0"))
        assert plugin.pending() == 5
        assert plugin.stats.dropped == 45
        assert "calls dropped" in caplog.text
    finally:
        mon.release()
        plugin.close()


def test_close_is_bounded_when_the_monitor_hangs(mon: FakeApfmon) -> None:
    mon.hang()
    plugin = make(mon.url, timeout=30)
    plugin.register_factory(["Q1"])
    assert mon.wait_for(lambda m: m.blocked == 1)
    assert timed(plugin.close, 0.2) < 2.0
    mon.release()


def test_bad_url_is_a_clear_error() -> None:
    with pytest.raises(PluginError, match=r"monitor.conf \[apfmon-main\]: monitorURL is required"):
        APF("apfmon-main", APFOptions(), factory_context())
    with pytest.raises(PluginError, match="not an http"):
        make("apfmon.example.org/api")


def test_label_message_format() -> None:
    d = Decision("Q1", 20, (Step("Ready", 0, 40, "ready=40"), Step("MaxPerCycle", 40, 20, "max 20")), 0.0)
    assert format_label_message(d) == "Ready:in=0,ret=40;MaxPerCycle:in=40,ret=20"


def test_dummy_logs_calls(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    assert load("monitor", "Dummy") is Dummy
    plugin = Dummy("dummy", Dummy.Options(), factory_context())
    plugin.register_factory(["Q1"])
    plugin.register_pilots("Q1", pilots("3.0"))
    plugin.update_label("Q1", "hello")
    assert list(plugin.calls) == [
        ("register_factory", "test-factory", ("Q1",)),
        ("register_pilots", "Q1", ("3.0",)),
        ("update_label", "Q1", "hello"),
    ]
    assert "Q1: hello" in caplog.text
