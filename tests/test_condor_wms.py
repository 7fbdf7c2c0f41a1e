"""``wmsstatusplugin = Condor``: payload jobs in a schedd as demand, per MATCH_APF_QUEUE and ANY."""

from __future__ import annotations

from pathlib import Path

import classad2
import pytest

from autopyfactory.config.errors import ConfigError
from autopyfactory.plugins.batch.condor import schedd as sd
from autopyfactory.plugins.wmsstatus.condor import ANY, demands_from_ads, wms_constraint
from condor_standin import StandinPool, context, load_config, wms_poller

QUEUES = """\
[DEFAULT]
enabled = True
batchsubmitplugin = CondorEC2
batchsubmit.condorec2.gridresource = https://ec2.example.org
batchsubmit.condorec2.ami_id = ami-1
batchsubmit.condorec2.instance_type = t3.small
batchstatusplugin = Condor
schedplugin = Ready
wmsstatusplugin = Condor

[CLOUD_A]
wmsqueue = PAYLOAD_A

[CLOUD_B]
wmsqueue = PAYLOAD_B

[CLOUD_ANY]
wmsqueue = ANY
wmsstatus.condor.constraint = JobUniverse != 9

[CLOUD_OTHERKEY]
wmsqueue = gpu
wmsstatus.condor.queueskey = TargetPool
"""


def job(cluster: int, status: int, queue: str | None, universe: int = 5, **extra: object) -> classad2.ClassAd:
    ad = classad2.ClassAd({"ClusterId": cluster, "ProcId": 0, "JobStatus": status, "JobUniverse": universe})
    if queue is not None:
        ad["MATCH_APF_QUEUE"] = queue
    for key, value in extra.items():
        ad[key] = value
    return ad


@pytest.fixture
def pool() -> StandinPool:
    pool = StandinPool(now=1_709_290_000.0)
    schedd = pool.add_schedd()
    statuses = {"PAYLOAD_A": [1, 1, 0, 2, 6, 3, 4, 5, 7], "PAYLOAD_B": [1, 2]}
    n = 0
    for queue, codes in statuses.items():
        for code in codes:
            n += 1
            schedd.load_ads([job(n, code, queue)])
    schedd.load_ads([job(90, 1, None), job(91, 1, "CLOUD_A", universe=9), job(92, 1, None, TargetPool="gpu")])
    previous = sd.set_connector(pool.connect)
    yield pool
    sd.set_connector(previous)


def test_demand_per_queue_and_any(tmp_path: Path, pool: StandinPool) -> None:
    cfg = load_config(tmp_path, QUEUES)
    poller = wms_poller(cfg, context(cfg), "CLOUD_A")
    snap = poller.poll(pool.now, frozenset({"PAYLOAD_A", "PAYLOAD_B"}))
    a = snap.demands["PAYLOAD_A"]
    # 0,1 ready; 2,6 running; 3,4 done; 5 failed; 7 not counted
    assert (a.ready, a.running, a.done, a.failed) == (3, 2, 2, 1)
    assert a.site_status == "online" and a.time == pool.now
    b = snap.demands["PAYLOAD_B"]
    assert (b.ready, b.running) == (1, 1)
    # ANY sums every job carrying the attribute (here also the VM job of queue CLOUD_A)
    assert snap.demands[ANY].ready == 3 + 1 + 1
    assert "CLOUD_A" in snap.demands
    queries = pool.schedds[sd.Address()].queries()
    assert len(queries) == 1
    assert queries[0].constraint == "MATCH_APF_QUEUE =!= undefined"
    assert queries[0].projection == ("MATCH_APF_QUEUE", "JobStatus")


def test_queues_on_one_schedd_share_a_poller_unless_counting_differs(tmp_path: Path) -> None:
    cfg = load_config(tmp_path, QUEUES)
    ctx = context(cfg)
    q = cfg.queues

    def ep(name: str):  # type: ignore[no-untyped-def]
        return q[name].wmsstatus.cls.endpoint(q[name], ctx)  # type: ignore[union-attr]

    assert ep("CLOUD_A") == ep("CLOUD_B")
    assert ep("CLOUD_ANY") != ep("CLOUD_A")
    assert ep("CLOUD_OTHERKEY") != ep("CLOUD_A")


def test_extra_constraint_and_other_queues_key(tmp_path: Path, pool: StandinPool) -> None:
    cfg = load_config(tmp_path, QUEUES)
    ctx = context(cfg)
    snap = wms_poller(cfg, ctx, "CLOUD_ANY").poll(pool.now, frozenset({ANY}))
    assert snap.demands[ANY].ready == 3 + 1  # the grid-universe VM job is excluded
    assert wms_constraint("MATCH_APF_QUEUE", "JobUniverse != 9") == (
        "(MATCH_APF_QUEUE =!= undefined) && (JobUniverse != 9)"
    )
    other = wms_poller(cfg, ctx, "CLOUD_OTHERKEY").poll(pool.now, frozenset({"gpu"}))
    assert other.demands["gpu"].ready == 1 and set(other.demands) == {"gpu", ANY}


def test_queueskey_must_be_an_attribute_name(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(tmp_path, QUEUES + "wmsstatus.condor.queueskey = x == 1\n")
    assert "[CLOUD_OTHERKEY] wmsstatus.condor.queueskey" in str(err.value)


def test_demands_from_plain_mappings() -> None:
    ads = [
        {"MATCH_APF_QUEUE": "q", "JobStatus": 1},
        {"match_apf_queue": "q", "jobstatus": 2},
        {"JobStatus": 1},
    ]
    d = demands_from_ads(ads, "MATCH_APF_QUEUE", 5.0)
    assert (d["q"].ready, d["q"].running, d[ANY].ready) == (1, 1, 1)
