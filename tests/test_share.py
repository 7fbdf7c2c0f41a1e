"""decide/share.py: one WMS queue's demand split between the factory queues that serve it."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from autopyfactory.decide.base import SchedContext, run_chain
from autopyfactory.decide.share import split_count, split_demand, split_demands, weights_for
from autopyfactory.model import Demand, Supply
from autopyfactory.plugins.base import load
from fakepanda import panda_queue_section, queue_config

pytestmark = pytest.mark.timeout(60)


def test_equal_split_adds_up() -> None:
    assert split_count(10, {"a": 1, "b": 1, "c": 1}) == {"a": 4, "b": 3, "c": 3}
    assert split_count(2, {"c": 1, "b": 1, "a": 1}) == {"a": 1, "b": 1, "c": 0}
    assert split_count(0, {"a": 1, "b": 1}) == {"a": 0, "b": 0}
    assert split_count(7, {"only": 0.3}) == {"only": 7}
    assert split_count(5, {}) == {}


def test_weighted_split() -> None:
    assert split_count(100, {"a": 2, "b": 1, "c": 1}) == {"a": 50, "b": 25, "c": 25}
    assert split_count(3, {"a": 0.5, "b": 0.25, "c": 0.25}) == {"a": 1, "b": 1, "c": 1}  # 1.5, .75, .75
    assert split_count(5, {"a": 0.5, "b": 0.25, "c": 0.25}) == {"a": 3, "b": 1, "c": 1}  # 2.5, 1.25, 1.25
    # leftover goes to the bigger remainder, whatever the order of the mapping
    assert split_count(10, {"z": 0.7, "a": 0.3}) == {"z": 7, "a": 3}
    with pytest.raises(ValueError, match="shares must be > 0: b=0"):
        split_count(3, {"a": 1, "b": 0})


@given(
    total=st.integers(min_value=0, max_value=10**6),
    weights=st.dictionaries(
        st.text(min_size=1, max_size=5), st.floats(min_value=1e-3, max_value=1e3), min_size=1, max_size=12
    ),
)
def test_split_is_exact_and_fair(total: int, weights: dict[str, float]) -> None:
    parts = split_count(total, weights)
    assert sum(parts.values()) == total
    whole = sum(weights.values())
    for q, w in weights.items():
        assert abs(parts[q] - total * w / whole) < 1 + 1e-9  # never more than one unit off


def test_split_demand_keeps_site_status_and_time() -> None:
    d = Demand("BNL", ready=9, notready=3, running=30, done=1, failed=0, site_status="test", time=5.0)
    parts = split_demand(d, {"CE1": 1, "CE2": 2})
    assert parts["CE1"] == Demand(
        "BNL", ready=3, notready=1, running=10, done=0, failed=0, site_status="test", time=5.0
    )
    assert parts["CE2"].ready == 6 and parts["CE2"].running == 20 and parts["CE2"].done == 1


def queues(tmp_path: Path) -> list:
    url = "http://127.0.0.1:1/api/v1"
    return [
        queue_config(tmp_path, panda_queue_section(url, "BNL"), name="CE1"),
        queue_config(tmp_path, panda_queue_section(url, "BNL"), name="CE2"),
        queue_config(tmp_path, panda_queue_section(url, "BNL", "share = 2"), name="CE3"),
        # an APF-style config with a Scale factor and no share: sees the whole demand, as in APF
        queue_config(
            tmp_path,
            panda_queue_section(url, "BNL", "sched.scale.factor = 0.25", sched="Ready, Scale"),
            name="OLD",
        ),
        queue_config(tmp_path, panda_queue_section(url, "CERN"), name="CERN1"),
        queue_config(tmp_path, panda_queue_section(url, "GONE"), name="GONE1"),
    ]


def test_split_demands_groups_by_wms_queue(tmp_path: Path) -> None:
    qs = queues(tmp_path)
    weights, whole = weights_for(qs[:4])
    assert weights == {"CE1": 1.0, "CE2": 1.0, "CE3": 2.0}
    assert whole == ["OLD"]
    demands = {"BNL": Demand("BNL", ready=101), "CERN": Demand("CERN", ready=7)}
    out = split_demands(demands, qs)
    assert {q: d.ready for q, d in out.items() if d is not None} == {
        "CE1": 25,
        "CE2": 25,
        "CE3": 51,
        "OLD": 101,
        "CERN1": 7,  # alone on its WMS queue: the whole demand
    }
    assert out["GONE1"] is None  # no demand at all (missing or stale) stays missing


def test_together_they_submit_for_the_demand_once(tmp_path: Path) -> None:
    qs = queues(tmp_path)[:3]
    demand = {"BNL": Demand("BNL", ready=90)}
    ready = load("sched", "Ready")()
    pending = {"CE1": 5, "CE2": 0, "CE3": 10}
    total_before = sum(pending.values())
    parts = split_demands(demand, qs)
    submitted = 0
    for q in qs:
        ctx = SchedContext(q.name, 0.0, demand=parts[q.name], supply=Supply(q.name, pending=pending[q.name]))
        n, _ = run_chain([ready], ctx)  # type: ignore[list-item]
        submitted += n
    assert submitted + total_before == 90  # not 3 x 90
    # with APF semantics (everyone sees the whole demand) they would have submitted 255
    apf = sum(max(0, 90 - p) for p in pending.values())
    assert apf == 255
