"""The schedd interface itself: helpers evaluated with real classad2, and the real
htcondor2-backed implementation failing cleanly (no daemons exist on this machine)."""

from __future__ import annotations

import classad2
import htcondor2
import pytest

from autopyfactory.plugins.base import BackendError
from autopyfactory.plugins.batch.condor import schedd as sd


def test_ids_constraint_selects_exactly_the_ids() -> None:
    expr = classad2.ExprTree(sd.ids_constraint(["12.0", "12.3", "7.1", "12.0"]))
    for cluster, proc, expected in [
        (12, 0, True),
        (12, 3, True),
        (7, 1, True),
        (12, 1, False),
        (7, 0, False),
    ]:
        ad = classad2.ClassAd({"ClusterId": cluster, "ProcId": proc})
        assert (expr.eval(ad) is True) is expected, (cluster, proc)
    assert sd.ids_constraint([]) == "false"
    with pytest.raises(ValueError, match="not an HTCondor job id"):
        sd.ids_constraint(["12"])


def test_attr_value_hides_undefined_and_errors() -> None:
    ad = classad2.ClassAd({"A": 1})
    ad["U"] = classad2.ExprTree("Missing + 1")
    ad["E"] = classad2.ExprTree('"x" + 1')
    assert sd.attr_value(ad, "a") == 1
    assert sd.attr_value(ad, "U") is None and sd.attr_value(ad, "E") is None
    assert sd.attr_value(ad, "Nope") is None
    assert sd.attr_value({"jobstatus": 2}, "JobStatus") == 2


@pytest.mark.timeout(60)
def test_real_bindings_fail_cleanly_without_a_schedd() -> None:
    """The htcondor2 path is exercised up to the point a daemon is needed: the error is a
    BackendError naming the endpoint, and the lock is released (a second call fails too, it
    does not hang as APF's did)."""
    previous = sd.set_connector(None)
    try:
        conn = sd.connect(sd.Address())
        assert isinstance(conn, sd.HTCondorSchedd)
        assert sd.connect(sd.Address()) is conn  # one connection per address
        for _ in range(2):
            with pytest.raises(BackendError) as err:
                conn.query('APF_FACTORY_ID =?= "f"', ["ClusterId"])
            assert err.value.target == "local schedd" and "query failed" in str(err.value)
        with pytest.raises(BackendError, match="local schedd: submit failed"):
            conn.submit(htcondor2.Submit({"executable": "/bin/true"}), 1)
        remote = sd.connect(sd.Address("schedd02.example.org", "127.0.0.1:9"))
        with pytest.raises(BackendError, match=r"schedd schedd02\.example\.org via collector 127\.0\.0\.1:9"):
            remote.collector_query("startd", "true", ["Name"])
    finally:
        sd.set_connector(previous)
