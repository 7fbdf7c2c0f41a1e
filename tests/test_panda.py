"""The Panda WMS-status plugin against the local fake PanDA server (real HTTP, no mocks)."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import pickle
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from autopyfactory.config.errors import ConfigError
from autopyfactory.plugins.base import BackendError, PluginError, load
from autopyfactory.plugins.wmsstatus.panda import (
    Panda,
    PandaEndpoint,
    demand_key,
    map_states,
    parse_demand_key,
)
from autopyfactory.plugins.wmsstatus.panda_legacy import UnsafePickle, safe_loads
from fakepanda import (
    FakePanda,
    TlsFiles,
    factory_context,
    make_cert_files,
    panda_queue_section,
    queue_config,
    serving,
)

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def fake_panda() -> Iterator[FakePanda]:
    yield from serving(FakePanda())


@pytest.fixture
def fake_panda_legacy() -> Iterator[FakePanda]:
    yield from serving(FakePanda(version="0.8.1"))


ALL = frozenset({"BNL_TEST", "CERN_TEST"})


def make_poller(tmp_path: Path, url: str, *extra: str, ctx=None, wmsqueue: str = "BNL_TEST") -> Panda:
    q = queue_config(tmp_path, panda_queue_section(url, wmsqueue, *extra))
    ctx = ctx or factory_context()
    cls = load("wmsstatus", "Panda")
    assert cls is Panda
    return Panda(Panda.endpoint(q, ctx), ctx)


# -- mapping ----------------------------------------------------------------------------------


def test_states_map_as_autopyfactory() -> None:
    unknown: set[str] = set()
    counts = {
        "pending": 1, "defined": 2, "assigned": 4, "waiting": 8, "throttled": 16,
        "activated": 32,
        "starting": 64, "sent": 128, "running": 256, "holding": 512, "transferring": 1024,
        "finished": 2048, "failed": 4096, "cancelled": 8192,
        "merging": 7, "weird": 9,
    }  # fmt: skip
    out = map_states(counts, unknown)
    assert out == {
        "notready": 31,
        "ready": 32,
        "running": 64 + 128 + 256 + 512 + 1024,
        "done": 2048,
        "failed": 4096 + 8192,
    }
    assert unknown == {"merging", "weird"}


def test_poll_maps_the_recorded_fixture(tmp_path: Path, fake_panda: FakePanda) -> None:
    fake_panda.load_fixture()
    plugin = make_poller(tmp_path, fake_panda.api_url)
    snap = plugin.poll(1000.0, frozenset({"BNL_TEST", "ABSENT_Q"}))
    assert snap.ok and snap.time == 1000.0
    bnl = snap.demands["BNL_TEST"]
    assert (bnl.ready, bnl.notready, bnl.running, bnl.done, bnl.failed) == (10, 2, 4, 0, 0)
    cern = snap.demands["CERN_TEST"]
    assert (cern.ready, cern.notready, cern.running) == (0, 6, 2)
    # a queue absent from a clean answer has no jobs
    absent = snap.demands["ABSENT_Q"]
    assert (absent.ready, absent.running, absent.notready) == (0, 0, 0)
    stats = [r for r in fake_panda.requests if r.path.endswith("active_job_stats_by_site")]
    assert len(stats) == 1
    assert stats[0].method == "GET"
    assert stats[0].headers["Accept"] == "application/json"
    assert "Authorization" not in stats[0].headers


def test_one_poller_serves_queues_of_one_server(tmp_path: Path, fake_panda: FakePanda) -> None:
    ctx = factory_context()
    url = fake_panda.api_url
    q1 = queue_config(tmp_path, panda_queue_section(url, "BNL_TEST"), name="Q1")
    q2 = queue_config(
        tmp_path,
        panda_queue_section(url, "CERN_TEST", "wmsstatus.panda.prodsourcelabels = managed"),
        name="Q2",
    )
    q3 = queue_config(
        tmp_path, panda_queue_section(url + "/", "CERN_TEST", "wmsstatus.panda.timeout = 5"), name="Q3"
    )
    assert Panda.endpoint(q1, ctx) == Panda.endpoint(q2, ctx)
    assert Panda.endpoint(q1, ctx) != Panda.endpoint(q3, ctx)  # another timeout: another poller
    assert Panda.demand_key(q1, ctx) == "BNL_TEST"
    assert Panda.demand_key(q2, ctx) == "CERN_TEST?prodsourcelabels=managed"
    assert str(Panda.endpoint(q1, ctx)) == f"Panda {url}"


def test_detailed_call_filters_labels_and_resource_types(tmp_path: Path, fake_panda: FakePanda) -> None:
    fake_panda.load_fixture()
    plugin = make_poller(tmp_path, fake_panda.api_url)
    managed = demand_key("BNL_TEST", ["managed"])
    mcore = demand_key("BNL_TEST", None, ["MCORE"])
    user_mcore = demand_key("BNL_TEST", ["user", "rc_test2"], ["MCORE"])
    cern_test = demand_key("CERN_TEST", ["rc_test2"])
    # each filter alone (no other queue serves its PanDA queue) sees its labels' jobs
    snap = plugin.poll(5.0, frozenset({managed, cern_test}))
    assert snap.demands[managed].ready == 7
    assert snap.demands[managed].notready == 2
    assert snap.demands[managed].running == 4
    assert (snap.demands[cern_test].ready, snap.demands[cern_test].running) == (0, 2)
    paths = fake_panda.paths()
    assert any(p.endswith("/active_job_detailed_stats_by_site") for p in paths)
    assert not any(p.endswith("/active_job_stats_by_site") for p in paths)  # one call, not two
    assert plugin.poll(5.0, frozenset({"BNL_TEST"})).demands["BNL_TEST"].ready == 10  # all labels
    mc = plugin.poll(5.0, frozenset({mcore})).demands[mcore]
    assert (mc.ready, mc.notready) == (3, 2)
    assert plugin.poll(5.0, frozenset({user_mcore})).demands[user_mcore].ready == 3
    # several filters over one PanDA queue share its jobs: each job is counted once (issue 13)
    snap = plugin.poll(5.0, frozenset({"BNL_TEST", managed, mcore, user_mcore, cern_test}))
    assert sum(snap.demands[k].ready for k in ("BNL_TEST", managed, mcore, user_mcore)) == 10
    assert snap.demands[cern_test].ready == 0
    assert parse_demand_key(user_mcore) == ("BNL_TEST", frozenset({"rc_test2", "user"}), frozenset({"MCORE"}))


# -- faults: always "no fresh information", never zero jobs ------------------------------------


@pytest.mark.parametrize("fault", ["500", "truncated", "truncated-nolength", "close", "repr"])
def test_faults_raise_backend_error(tmp_path: Path, fake_panda: FakePanda, fault: str) -> None:
    fake_panda.load_fixture()
    plugin = make_poller(tmp_path, fake_panda.api_url, "wmsstatus.panda.sitestatus = none")
    assert plugin.poll(1.0, ALL).demands["BNL_TEST"].ready == 10
    fake_panda.fault = fault
    with pytest.raises(BackendError) as err:
        plugin.poll(2.0, ALL)
    assert str(fake_panda.api_url) in str(err.value)
    expected = {
        "500": "HTTP 500",
        "truncated": "truncated",
        "truncated-nolength": "not valid JSON",
        "close": "closed the connection",
        "repr": "Python repr",
    }[fault]
    assert expected in str(err.value)


def test_success_false_is_not_zero_jobs(tmp_path: Path, fake_panda: FakePanda) -> None:
    plugin = make_poller(tmp_path, fake_panda.api_url)
    with pytest.raises(BackendError, match="Database failure getting the job statistics"):
        plugin.poll(1.0, ALL)


def test_slow_server_times_out(tmp_path: Path, fake_panda: FakePanda) -> None:
    fake_panda.load_fixture()
    fake_panda.fault = "slow"
    plugin = make_poller(tmp_path, fake_panda.api_url, "wmsstatus.panda.timeout = 0.5")
    start = time.monotonic()
    with pytest.raises(BackendError, match=r"timed out after 0\.5s"):
        plugin.poll(1.0, ALL)
    assert time.monotonic() - start < 5  # bounded by the timeout, not by the server


def test_refused_connection(tmp_path: Path, fake_panda: FakePanda) -> None:
    fake_panda.load_fixture()
    plugin = make_poller(tmp_path, fake_panda.api_url, "wmsstatus.panda.sitestatus = none")
    assert plugin.poll(1.0, ALL).ok
    fake_panda.stop()
    with pytest.raises(BackendError, match="connection refused"):
        plugin.poll(2.0, ALL)
    fake_panda.start()  # back on the same port: the same poller recovers
    assert plugin.poll(3.0, ALL).demands["BNL_TEST"].ready == 10


def test_non_200_and_wrong_api_version(tmp_path: Path, fake_panda: FakePanda) -> None:
    fake_panda.load_fixture()
    plugin = make_poller(tmp_path, f"{fake_panda.base}/api/latest")
    with pytest.raises(
        BackendError, match=r"HTTP 403: 'ERROR : method active_job_stats_by_site is forbidden'"
    ):
        plugin.poll(1.0, ALL)


# -- legacy mode -----------------------------------------------------------------------------


def test_legacy_mode_reads_the_pickle(tmp_path: Path, fake_panda_legacy: FakePanda) -> None:
    fake_panda_legacy.load_fixture()
    plugin = make_poller(tmp_path, fake_panda_legacy.legacy_url, "wmsstatus.panda.mode = legacy")
    snap = plugin.poll(1.0, ALL)
    bnl = snap.demands["BNL_TEST"]
    assert (bnl.ready, bnl.notready, bnl.running) == (10, 2, 4)
    assert fake_panda_legacy.paths() == ["/server/panda/getJobStatisticsPerSite"]  # no parameters
    fake_panda_legacy.clear()
    empty = plugin.poll(2.0, ALL)  # the legacy call has no success flag: {} is "no jobs"
    assert empty.demands["BNL_TEST"].ready == 0


def test_legacy_mode_on_a_new_server_is_an_error(tmp_path: Path, fake_panda: FakePanda) -> None:
    plugin = make_poller(tmp_path, fake_panda.legacy_url, "wmsstatus.panda.mode = legacy")
    with pytest.raises(BackendError, match="forbidden"):
        plugin.poll(1.0, ALL)


class _Boom:
    """A pickle payload that would run a shell command when unpickled."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("protocol", [0, 2, 5])
def test_restricted_unpickler_never_executes(tmp_path: Path, protocol: int) -> None:
    marker = tmp_path / "pwned"
    payload = pickle.dumps({"BNL_TEST": {"activated": _Boom(marker)}}, protocol=protocol)
    with pytest.raises(UnsafePickle, match="not allowed"):
        safe_loads(payload)
    assert not marker.exists()
    # the plain unpickler would have run it: the payload is real
    pickle.loads(payload)
    assert marker.exists()


def test_restricted_unpickler_rejects_other_types() -> None:
    for data in ([1, 2], {"Q": [1]}, {"Q": {"activated": 1.5}}, {"Q": {"activated": None}}, {1: {"a": 1}}):
        with pytest.raises(UnsafePickle):
            safe_loads(pickle.dumps(data, protocol=0))
    with pytest.raises(UnsafePickle, match="not a valid pickle"):
        safe_loads(b"(dp0\nVBNL_TEST\np1\n(dp2\nVactiv")  # truncated
    assert safe_loads(pickle.dumps({"Q": {"activated": 3}}, protocol=4)) == {"Q": {"activated": 3}}
    # Python 2 str (S opcode) and booleans-as-ints are what old servers may send
    assert safe_loads(b"(dp0\nS'Q'\np1\n(dp2\nS'activated'\np3\nI7\nss.") == {"Q": {"activated": 7}}


def test_malicious_legacy_answer_is_refused(tmp_path: Path, fake_panda_legacy: FakePanda) -> None:
    marker = tmp_path / "pwned"
    fake_panda_legacy.legacy_body = pickle.dumps({"Q": {"activated": _Boom(marker)}}, protocol=0)
    plugin = make_poller(tmp_path, fake_panda_legacy.legacy_url, "wmsstatus.panda.mode = legacy")
    with pytest.raises(BackendError, match="refused the answer"):
        plugin.poll(1.0, ALL)
    assert not marker.exists()


# -- site status ----------------------------------------------------------------------------


def test_site_status_from_the_panda_server(tmp_path: Path, fake_panda: FakePanda) -> None:
    fake_panda.load_fixture()
    fake_panda.set_site("BNL_TEST", "test")
    fake_panda.set_site("CERN_TEST", "offline", type="analysis")
    plugin = make_poller(tmp_path, fake_panda.api_url, "wmsstatus.panda.sitestatus.interval = 100")
    snap = plugin.poll(0.0, ALL | {"NEW_Q"})
    assert snap.demands["BNL_TEST"].site_status == "test"
    assert snap.demands["CERN_TEST"].site_status == "offline"
    assert snap.demands["NEW_Q"].site_status is None
    assert any(r.path.endswith("/metaconfig/get_site_specs?type=all") for r in fake_panda.requests)
    # refreshed on its own interval, not every poll
    fake_panda.set_site("BNL_TEST", "online")
    assert plugin.poll(50.0, ALL).demands["BNL_TEST"].site_status == "test"
    assert plugin.poll(100.0, ALL).demands["BNL_TEST"].site_status == "online"


def test_site_status_from_a_json_file(tmp_path: Path, fake_panda: FakePanda) -> None:
    fake_panda.load_fixture()
    dump = tmp_path / "pandaqueues.json"
    dump.write_text(
        json.dumps({"BNL_TEST": {"status": "brokeroff", "cloud": "US"}, "CERN_TEST": {"status": "Test"}})
    )
    plugin = make_poller(tmp_path, fake_panda.api_url, f"wmsstatus.panda.sitestatus = {dump}")
    snap = plugin.poll(0.0, ALL)
    assert snap.demands["BNL_TEST"].site_status == "brokeroff"
    assert snap.demands["CERN_TEST"].site_status == "test"
    none = make_poller(tmp_path, fake_panda.api_url, "wmsstatus.panda.sitestatus = none")
    assert none.poll(0.0, ALL).demands["BNL_TEST"].site_status is None


def test_site_status_failure_keeps_last_until_its_maxage(tmp_path: Path, fake_panda: FakePanda) -> None:
    fake_panda.load_fixture()
    dump = tmp_path / "sites.json"
    dump.write_text('[{"name": "BNL_TEST", "status": "test"}]')
    plugin = make_poller(
        tmp_path,
        fake_panda.api_url,
        f"wmsstatus.panda.sitestatus = file://{dump}",
        "wmsstatus.panda.sitestatus.interval = 10",
        "wmsstatus.panda.sitestatus.maxage = 100",
    )
    assert plugin.poll(0.0, ALL).demands["BNL_TEST"].site_status == "test"
    dump.write_text("{not json")
    assert plugin.poll(50.0, ALL).demands["BNL_TEST"].site_status == "test"  # kept
    assert plugin.poll(150.0, ALL).demands["BNL_TEST"].site_status is None  # too old now


def test_status_plugins_see_the_site_status(tmp_path: Path, fake_panda: FakePanda) -> None:
    from autopyfactory.decide.base import SchedContext, run_chain
    from autopyfactory.model import Supply

    fake_panda.set_activated("BNL_TEST", 40)
    fake_panda.set_site("BNL_TEST", "test")
    plugin = make_poller(tmp_path, fake_panda.api_url)
    demand = plugin.poll(0.0, ALL).demands["BNL_TEST"]
    chain = [
        load("sched", "Ready")(),
        load("sched", "StatusTest")(load("sched", "StatusTest").Options(pilots=2)),
    ]
    ctx = SchedContext("Q1", 0.0, demand=demand, supply=Supply("Q1"), site_status=demand.site_status)
    n, _ = run_chain(chain, ctx)  # type: ignore[arg-type]
    assert n == 2


# -- auth -----------------------------------------------------------------------------------


def test_bearer_token_and_origin_are_sent_and_never_logged(
    tmp_path: Path, fake_panda: FakePanda, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    secret = "s3cr3t-t0ken-value"
    tokenfile = tmp_path / "token"
    tokenfile.write_text(secret + "\n")
    fake_panda.load_fixture()
    fake_panda.token = secret
    ctx = factory_context(auth={"panda-token": ("Token", {"tokenfile": str(tokenfile), "origin": "atlas"})})
    plugin = make_poller(tmp_path, fake_panda.api_url, "wmsstatus.panda.auth = panda-token", ctx=ctx)
    assert plugin.poll(1.0, ALL).demands["BNL_TEST"].ready == 10
    headers = fake_panda.requests[0].headers
    assert headers["Authorization"] == f"Bearer {secret}"
    assert headers["Origin"] == "atlas"
    # a rotated, now wrong, token: the server says no; the error does not carry the token
    tokenfile.write_text("another-wrong-token")
    with pytest.raises(BackendError) as err:
        plugin.poll(2.0, ALL)
    assert "Token authentication failed" in str(err.value)
    for text in (str(err.value), caplog.text, repr(plugin.factory.auth("panda-token"))):
        assert secret not in text and "another-wrong-token" not in text


def test_inline_token_profile_is_not_printed(tmp_path: Path, fake_panda: FakePanda) -> None:
    fake_panda.load_fixture()
    ctx = factory_context(auth={"tok": ("Token", {"token": "inline-secret-123"})})
    plugin = make_poller(tmp_path, fake_panda.api_url, "wmsstatus.panda.auth = tok", ctx=ctx)
    plugin.poll(1.0, ALL)
    assert fake_panda.requests[0].headers["Authorization"] == "Bearer inline-secret-123"
    assert "inline-secret-123" not in repr(ctx.auth_profiles["tok"].options)


def test_token_over_plain_http_to_a_remote_host_is_refused(tmp_path: Path) -> None:
    ctx = factory_context(auth={"tok": ("Token", {"token": "x"})})
    with pytest.raises(PluginError, match="refusing to send it over plain http"):
        make_poller(
            tmp_path, "http://pandaserver.example.org:25080/api/v1", "wmsstatus.panda.auth = tok", ctx=ctx
        )
    with pytest.raises(PluginError, match="is SSH; Panda takes X509 or Token"):
        make_poller(
            tmp_path,
            "https://pandaserver.example.org/api/v1",
            "wmsstatus.panda.auth = key",
            ctx=factory_context(auth={"key": ("SSH", {})}),
        )
    with pytest.raises(PluginError, match=r"not defined in auth\.conf"):
        make_poller(tmp_path, "https://pandaserver.example.org/api/v1", "wmsstatus.panda.auth = nope")


def test_x509_proxy_over_https(tmp_path: Path) -> None:
    certs = make_cert_files(tmp_path)
    fake = FakePanda(tls=TlsFiles(certs.server_cert, certs.server_key, certs.ca_cert)).start()
    try:
        fake.load_fixture()
        ctx = factory_context(auth={"atlas-prod": ("X509", {"proxyfile": certs.proxy})})
        plugin = make_poller(
            tmp_path,
            fake.api_url,
            "wmsstatus.panda.auth = atlas-prod",
            f"wmsstatus.panda.cafile = {certs.ca_cert}",
            ctx=ctx,
        )
        assert fake.api_url.startswith("https://")
        assert plugin.poll(1.0, ALL).demands["BNL_TEST"].ready == 10
        assert "apf-test pilot factory" in (fake.requests[0].client_cert_subject or "")
        # a server certificate we do not trust is an error, not a silent fallback
        untrusted = make_poller(tmp_path, fake.api_url, "wmsstatus.panda.sitestatus = none")
        with pytest.raises(BackendError, match=r"CERTIFICATE_VERIFY_FAILED|certificate verify failed"):
            untrusted.poll(1.0, ALL)
        # a missing proxy file names the file
        Path(certs.proxy).unlink()
        with pytest.raises(BackendError, match="x509up"):
            plugin.poll(2.0, ALL)
    finally:
        fake.stop()


# -- config ---------------------------------------------------------------------------------


def test_bad_keys_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"\[Q1\] wmsstatus.panda.url: .*http:// or https://"):
        queue_config(tmp_path, panda_queue_section("ftp://x/api", "Q"))
    with pytest.raises(
        ConfigError, match=r"wmsstatus.panda.moed: unknown key.*did you mean 'wmsstatus.panda.mode'"
    ):
        queue_config(tmp_path, panda_queue_section("http://x/api/v1", "Q", "wmsstatus.panda.moed = api"))
    with pytest.raises(ConfigError, match="need mode = api"):
        queue_config(
            tmp_path,
            panda_queue_section(
                "http://x/server/panda",
                "Q",
                "wmsstatus.panda.mode = legacy",
                "wmsstatus.panda.prodsourcelabels = managed",
            ),
        )


def test_defaults_and_factory_timing(tmp_path: Path) -> None:
    q = queue_config(
        tmp_path,
        panda_queue_section("http://x:25080/api/v1", "Q").replace(
            "wmsstatus.panda.url = http://x:25080/api/v1\n", ""
        ),
    )
    ep = Panda.endpoint(q, factory_context())
    assert isinstance(ep, PandaEndpoint)
    assert ep.url == "http://pandaserver.cern.ch:25080/api/v1"
    assert ep.sitestatus == "panda"
    legacy = dataclasses.replace(ep, mode="legacy")
    assert legacy.mode == "legacy"
    assert Panda.timing({}) == (150.0, 360.0)
    assert Panda.timing({"wmsstatus.panda.sleep": "60", "wmsstatus.panda.maxage": "300"}) == (60.0, 300.0)
    with pytest.raises(ValueError, match=r"\[Factory\] wmsstatus.panda.maxage"):
        Panda.timing({"wmsstatus.panda.maxage": "soon"})


def test_example_config(tmp_path: Path) -> None:
    """examples/panda validates; its queues share one poller; its monitor section builds."""
    from autopyfactory.config.loader import load_factory_config
    from autopyfactory.decide.share import split_demands
    from autopyfactory.model import Demand
    from autopyfactory.plugins.base import FactoryContext
    from autopyfactory.plugins.monitor.apf import APF

    conf = Path(__file__).resolve().parent.parent / "examples" / "panda" / "autopyfactory.conf"
    cfg = load_factory_config(str(conf))
    ctx = FactoryContext(cfg.factory_id, cfg.settings, cfg.auth)
    queues = list(cfg.queues.values())
    assert len(queues) == 3
    assert len({Panda.endpoint(q, ctx) for q in queues}) == 1
    keys = [Panda.demand_key(q, ctx) for q in queues]
    assert keys == ["EXAMPLE_PROD", "EXAMPLE_PROD", "EXAMPLE_PROD?prodsourcelabels=rc_test2"]
    demands = {"EXAMPLE_PROD": Demand("EXAMPLE_PROD", ready=90), keys[2]: Demand(keys[2], ready=4)}
    parts = split_demands(demands, queues, key_of=lambda q: Panda.demand_key(q, ctx))
    assert [p.ready for p in parts.values() if p is not None] == [60, 30, 4]
    assert Panda.timing(cfg.factory_raw) == (150.0, 360.0)
    section = cfg.monitors["apfmon-lancs"]
    monitor = APF(section.name, section.options, ctx, url=section.monitorURL)
    try:
        assert monitor.url == "http://apfmon.lancs.ac.uk/api"
        assert monitor.opts.timeout == 10
    finally:
        monitor.close(0)
