"""Batch status ``Condor``: real ClassAd text, the state mapping, one constrained and projected
query per poll against the stand-in with real classad2 evaluation, endpoints."""

from __future__ import annotations

from pathlib import Path

import classad2
import pytest

from autopyfactory.decide.supply import aggregate
from autopyfactory.model import PilotState
from autopyfactory.plugins.base import BackendError
from autopyfactory.plugins.batch.condor import schedd as sd
from autopyfactory.plugins.batch.condor.status import (
    PROJECTION,
    factory_constraint,
    job_state,
    pilots_from_ads,
    throttle_counts,
)
from condor_standin import FACTORY_ID, StandinPool, context, load_config, status_poller

DATA = Path(__file__).parent / "data" / "condor"

QUEUES = """\
[DEFAULT]
enabled = True
batchsubmitplugin = CondorLocal
schedplugin = Ready
executable = /bin/true
batchstatusplugin = Condor

[ANALY_TEST-ce01]
wmsqueue = ANALY_TEST

[LOCAL_POOL]
wmsqueue = LOCAL
batchstatus.condor.legacy = False

[REMOTE]
wmsqueue = R
batchstatus.condor.scheddhost = schedd02.example.org
batchstatus.condor.collectorhost = cm.example.org

[REMOTE_LEGACY]
wmsqueue = R
batchstatus.condor.queryargs = -name schedd02.example.org -pool cm.example.org:9618

[LEGACY]
wmsqueue = L
batchstatus.condor.legacy = True
"""


@pytest.fixture
def pool() -> StandinPool:
    pool = StandinPool(now=1_709_290_000.0)
    pool.add_schedd()
    previous = sd.set_connector(pool.connect)
    yield pool
    sd.set_connector(previous)


@pytest.fixture
def cfg(tmp_path: Path):  # type: ignore[no-untyped-def]
    return load_config(tmp_path, QUEUES)


def test_job_status_mapping() -> None:
    expected = {
        0: PilotState.PENDING,
        1: PilotState.PENDING,
        2: PilotState.RUNNING,
        3: PilotState.CANCELLED,
        4: PilotState.DONE,
        5: PilotState.HELD,
        6: PilotState.RUNNING,
        7: PilotState.HELD,
        9: PilotState.UNKNOWN,
    }
    assert {code: job_state(code) for code in expected} == expected
    assert job_state(4, exit_code=1) is PilotState.FAILED
    assert job_state(2, retiring=True) is PilotState.RETIRING
    assert job_state(None) is PilotState.UNKNOWN and job_state("x") is PilotState.UNKNOWN


def test_parse_old_form_text() -> None:
    ads = sd.parse_ads((DATA / "jobs.long").read_text())
    assert len(ads) == 11
    pilots = {p.backend_id: p for p in pilots_from_ads(ads)}
    # the user's own job (no MATCH_APF_QUEUE) is not a pilot
    assert "200.0" not in pilots
    p = pilots["101.0"]
    assert (p.queue, p.state, p.intent_id, p.submitted_at) == (
        "ANALY_TEST-ce01",
        PilotState.PENDING,
        "i-0001",
        1709280000.0,
    )
    running = pilots["101.1"]
    assert running.state is PilotState.RUNNING and running.started_at == 1709280400.0
    assert running.node == "ce01.example.org"
    assert pilots["101.2"].state is PilotState.HELD
    assert pilots["102.0"].state is PilotState.DONE and pilots["102.0"].ended_at == 1709290000.0
    assert pilots["102.0"].exit_code == 0
    assert pilots["102.1"].state is PilotState.FAILED and pilots["102.1"].exit_code == 1
    assert pilots["103.0"].state is PilotState.HELD  # suspended
    assert pilots["104.0"].state is PilotState.CANCELLED


def test_parse_json_form_text(caplog: pytest.LogCaptureFixture) -> None:
    ads = sd.parse_ads((DATA / "jobs.json").read_text())
    pilots = {p.backend_id: p for p in pilots_from_ads(ads)}
    assert pilots["500.0"].state is PilotState.RUNNING
    assert pilots["500.0"].instance_id == "i-0a1b2c3d4e5f60001"
    assert pilots["500.1"].state is PilotState.RETIRING  # APF_RETIRING set by our retire
    assert pilots["501.0"].state is PilotState.PENDING and pilots["501.0"].instance_id is None
    assert pilots["502.0"].state is PilotState.UNKNOWN
    assert "unknown JobStatus 9" in caplog.text
    supply = aggregate(pilots.values(), 0.0)["CLOUD_EC2"]
    assert (supply.running, supply.retiring, supply.pending, supply.unknown) == (1, 1, 1, 1)


def test_one_constrained_projected_query_per_poll(cfg, pool) -> None:  # type: ignore[no-untyped-def]
    schedd = pool.schedds[sd.Address()]
    schedd.load_ads(sd.parse_ads((DATA / "jobs.long").read_text()))
    poller = status_poller(cfg, context(cfg), "ANALY_TEST-ce01")
    snap = poller.poll(pool.now)
    queries = schedd.queries()
    assert len(queries) == 1
    assert queries[0].constraint == f'APF_FACTORY_ID =?= "{FACTORY_ID}"'
    assert queries[0].projection == PROJECTION
    ids = sorted(p.backend_id for p in snap.pilots)
    # ours only: not the user's job, not another factory's, not the look-alike factory id
    # 'TEST-FACTORY' (ClassAd == on strings ignores case; =?= does not), not an untagged pilot
    assert ids == ["101.0", "101.1", "101.2", "102.0", "102.1", "103.0", "104.0"]
    assert snap.time == pool.now
    poller.poll(pool.now + 60)
    assert len(schedd.queries()) == 2


def test_a_wrong_constraint_would_fail(pool) -> None:  # type: ignore[no-untyped-def]
    """The stand-in evaluates constraints for real: the naive '==' picks up another factory's
    pilots, a misspelt attribute matches nothing, a syntax error is refused."""
    schedd = pool.schedds[sd.Address()]
    schedd.load_ads(sd.parse_ads((DATA / "jobs.long").read_text()))
    right = {f"{a.eval('ClusterId')}" for a in schedd.query(factory_constraint(FACTORY_ID), ["ClusterId"])}
    naive = {
        f"{a.eval('ClusterId')}" for a in schedd.query(f'APF_FACTORY_ID == "{FACTORY_ID}"', ["ClusterId"])
    }
    assert "301" in naive and "301" not in right
    assert schedd.query('APF_FACTORYID =?= "test-factory"', ["ClusterId"]) == []
    with pytest.raises(BackendError, match="invalid constraint"):
        schedd.query("APF_FACTORY_ID =?= ", ["ClusterId"])
    # and a projection drops what it does not name: a plugin reading more gets nothing
    ad = schedd.query(factory_constraint(FACTORY_ID), ["ClusterId"])[0]
    assert list(ad.keys()) == ["ClusterId"]


def test_legacy_pilots_only_when_asked(cfg, pool) -> None:  # type: ignore[no-untyped-def]
    schedd = pool.schedds[sd.Address()]
    schedd.load_ads(sd.parse_ads((DATA / "jobs.long").read_text()))
    poller = status_poller(cfg, context(cfg), "LEGACY")
    ids = {p.backend_id for p in poller.poll(pool.now).pilots}
    assert "400.0" in ids  # untagged, carries MATCH_APF_QUEUE
    assert "300.0" not in ids and "301.0" not in ids  # tagged by other factories


def test_endpoints_shared_by_schedd(cfg) -> None:  # type: ignore[no-untyped-def]
    ctx = context(cfg)
    q = cfg.queues

    def ep(name: str):  # type: ignore[no-untyped-def]
        return q[name].batchstatus.cls.endpoint(q[name], ctx)

    assert ep("ANALY_TEST-ce01") == ep("LOCAL_POOL")
    remote = ep("REMOTE")
    assert remote == ep("REMOTE_LEGACY")  # the legacy queryargs name the same schedd
    assert remote != ep("ANALY_TEST-ce01")
    assert remote[1] == sd.Address(schedd="schedd02.example.org", collector="cm.example.org:9618")
    assert ep("LEGACY") != ep("ANALY_TEST-ce01")  # counts other pilots, so its own poller


def test_remote_schedd_by_key(cfg, pool) -> None:  # type: ignore[no-untyped-def]
    ctx = context(cfg)
    poller = status_poller(cfg, ctx, "REMOTE")
    with pytest.raises(
        BackendError, match=r"schedd schedd02\.example\.org via collector cm\.example\.org:9618"
    ):
        poller.poll(pool.now)
    remote = pool.add_schedd(sd.Address(schedd="schedd02.example.org", collector="cm.example.org:9618"))
    sd.set_connector(pool.connect)  # forget the failed connection
    remote.load_ads(sd.parse_ads((DATA / "jobs.json").read_text()))
    poller = status_poller(cfg, ctx, "REMOTE")
    assert len(poller.poll(pool.now).pilots) == 4


def test_bad_queryargs_is_a_config_error(tmp_path: Path) -> None:
    from autopyfactory.config.errors import ConfigError

    bad = QUEUES + "\n[BAD]\nwmsqueue = B\nbatchstatus.condor.queryargs = -global -name x\n"
    with pytest.raises(ConfigError) as err:
        load_config(tmp_path, bad)
    assert "[BAD] batchstatus.condor.queryargs" in str(err.value)
    assert "cannot use '-global'" in str(err.value)


def test_make_address_forms() -> None:
    assert sd.make_address() == sd.Address()
    assert sd.make_address("localhost", 9618, "localhost", 9618) == sd.Address()
    assert sd.make_address(collectorhost="cm", collectorport=9620) == sd.Address(None, "cm:9620")
    assert sd.make_address(queryargs="-pool cm") == sd.Address(None, "cm:9618")
    assert sd.make_address("s1", queryargs="-name s2 -pool cm:1") == sd.Address("s1", "cm:1")
    assert sd.Address().label() == "local schedd"


def test_throttle_history_is_bounded_and_constrained(cfg, pool) -> None:  # type: ignore[no-untyped-def]
    schedd = pool.schedds[sd.Address()]
    for cluster, (start, end) in enumerate([(100, 105), (200, 2000), (9000, 9005), (9100, 12000)], start=1):
        ad = classad2.ClassAd(
            {
                "ClusterId": cluster,
                "ProcId": 0,
                "JobStatus": 4,
                "MATCH_APF_QUEUE": "LOCAL_POOL",
                "APF_FACTORY_ID": FACTORY_ID,
                "JobStartDate": start,
                "CompletionDate": end,
                "RemoteWallClockTime": float(end - start),
            }
        )
        schedd.history_ads.insert(0, ad)
    schedd.history_ads.insert(
        0,
        classad2.ClassAd(
            {"ClusterId": 99, "ProcId": 0, "MATCH_APF_QUEUE": "LOCAL_POOL", "JobStartDate": 9500}
        ),
    )
    poller = status_poller(cfg, context(cfg), "LOCAL_POOL")
    hist = poller.throttle_history(now=10_000, interval=3600, maxtime=10)
    assert hist["LOCAL_POOL"].total == 2 and hist["LOCAL_POOL"].short == 1
    call = next(c for c in pool.calls if c.op == "history")
    assert call.args == ("CompletionDate < 6400",)
    assert FACTORY_ID in (call.constraint or "")
    assert throttle_counts([], 10) == {}


def test_parse_forms_agree() -> None:
    """The same ads in old, new and JSON forms (condor_q -long / -json / new ClassAds) parse alike,
    including an expression and braces and quotes inside strings."""
    old = 'A = 1 + 2\nS = "a}b{\\"c"\n\nA = 5\nS = "x"\n'
    new = '[ A = 1 + 2; S = "a}b{\\"c" ] [ A = 5; S = "x" ]'
    json_text = '[\n{\n  "A": "\\/Expr(1 + 2)\\/",\n  "S": "a}b{\\"c"\n}\n,\n{\n  "A": 5,\n  "S": "x"\n}\n]\n'
    for text in (old, new, json_text):
        ads = sd.parse_ads(text)
        assert [(ad.eval("A"), ad.eval("S")) for ad in ads] == [(3, 'a}b{"c'), (5, "x")], text
