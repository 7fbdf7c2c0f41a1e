"""Contract tier: the same Panda plugin assertions against the fake and against a real panda-server.

The real server (1.0.4, PostgreSQL, loopback) runs only with ``APF_PANDA_CONTRACT=1``: it is
installed and started by ``scripts/components/panda-contract.sh`` (a few minutes and ~600 MB the
first time). The fake variant always runs. The raw-body comparisons keep the fake honest: when
PanDA changes its envelope or its ``success`` semantics, they fail.
"""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from autopyfactory.plugins.base import BackendError
from autopyfactory.plugins.wmsstatus.panda import Panda, demand_key
from fakepanda import (
    FIXTURE_JOBS,
    RECORDED_EMPTY,
    FakePanda,
    factory_context,
    panda_queue_section,
    queue_config,
)

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "components" / "panda-contract.sh"
REAL = os.environ.get("APF_PANDA_CONTRACT") == "1"
ACTIVE = {"activated", "sent", "starting", "running", "holding", "transferring", "merging"}

pytestmark = pytest.mark.timeout(1800)

Jobs = list[tuple[str, str, str, str, int]]  # (site, resource_type, label, status, count)


class FakeServer:
    name = "fake"

    def __init__(self) -> None:
        self.fake = FakePanda().start()
        self.base = self.fake.base
        self.api_url = self.fake.api_url

    def load(self, jobs: Jobs) -> None:
        self.fake.clear()
        for site, rtype, label, status, n in jobs:
            self.fake.set_jobs(site, status, n, label=label, rtype=rtype)

    def close(self) -> None:
        self.fake.stop()


class RealServer:
    """panda-server 1.0.4 started by the component script; jobs go straight into its tables."""

    name = "real"

    def __init__(self, env: dict[str, str]) -> None:
        import psycopg

        self.base = env["APF_PANDA_BASE_URL"]
        self.api_url = env["APF_PANDA_URL"]
        self.conn = psycopg.connect(env["APF_PANDA_DB_URL"], autocommit=True)

    def load(self, jobs: Jobs) -> None:
        with self.conn.cursor() as cur:
            cur.execute(
                "TRUNCATE doma_panda.jobsactive4, doma_panda.jobsdefined4, doma_panda.mv_jobsactive4_stats"
            )
            pandaid = 1
            for site, rtype, label, status, n in jobs:
                table = "jobsactive4" if status in ACTIVE else "jobsdefined4"
                for _ in range(n):
                    cur.execute(
                        f"INSERT INTO doma_panda.{table} (pandaid, computingsite, jobstatus, prodsourcelabel, resource_type)"
                        " VALUES (%s, %s, %s, %s, %s)",
                        (pandaid, site, status, label, rtype),
                    )
                    pandaid += 1
                if status in ACTIVE:
                    # the summary table a DB job refreshes every minute in production
                    cur.execute(
                        "INSERT INTO doma_panda.mv_jobsactive4_stats"
                        " (computingsite, jobstatus, prodsourcelabel, resource_type, num_of_jobs) VALUES (%s, %s, %s, %s, %s)",
                        (site, status, label, rtype, n),
                    )

    def close(self) -> None:
        self.conn.close()


@pytest.fixture(scope="module")
def real_env() -> Iterator[dict[str, str]]:
    proc = subprocess.run([str(SCRIPT), "start"], capture_output=True, text=True, timeout=1500, check=False)
    if proc.returncode != 0:
        pytest.fail(f"panda-contract.sh start failed:\n{proc.stdout}\n{proc.stderr}")
    env = dict(
        line.split("=", 1)
        for line in proc.stdout.splitlines()
        if "=" in line and line.startswith("APF_PANDA_")
    )
    try:
        yield env
    finally:
        subprocess.run([str(SCRIPT), "stop"], capture_output=True, timeout=120, check=False)


@pytest.fixture(
    params=[
        "fake",
        pytest.param(
            "real",
            marks=[
                pytest.mark.panda_contract,
                pytest.mark.skipif(
                    not REAL, reason="set APF_PANDA_CONTRACT=1 to run against a real panda-server"
                ),
            ],
        ),
    ]
)
def server(request: pytest.FixtureRequest) -> Iterator[FakeServer | RealServer]:
    srv: FakeServer | RealServer
    srv = FakeServer() if request.param == "fake" else RealServer(request.getfixturevalue("real_env"))
    try:
        yield srv
    finally:
        srv.close()


def http(url: str, *, accept_json: bool = True, data: bytes | None = None) -> tuple[int, str, bytes]:
    headers = {"Accept": "application/json"} if accept_json else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers, data=data), timeout=30) as r:
            return r.status, r.headers.get("Content-Type", ""), r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers.get("Content-Type", ""), exc.read()


def plugin(tmp_path: Path, srv: FakeServer | RealServer, *extra: str) -> Panda:
    ctx = factory_context()
    q = queue_config(
        tmp_path, panda_queue_section(srv.api_url, "BNL_TEST", "wmsstatus.panda.sitestatus = none", *extra)
    )
    return Panda(Panda.endpoint(q, ctx), ctx)


def _repr_data(body: bytes) -> Any:
    # the repr body is not JSON; read it without executing anything (Decimal('n') -> n)
    return ast.literal_eval(re.sub(r"Decimal\('(\d+)'\)", r"\1", body.decode()))


# -- the plugin, same assertions on both -----------------------------------------------------


def test_mapping(tmp_path: Path, server: FakeServer | RealServer) -> None:
    server.load(list(FIXTURE_JOBS))
    snap = plugin(tmp_path, server).poll(1.0, frozenset({"BNL_TEST", "NOT_THERE"}))
    bnl, cern = snap.demands["BNL_TEST"], snap.demands["CERN_TEST"]
    assert (bnl.ready, bnl.notready, bnl.running) == (10, 2, 4)
    assert (cern.ready, cern.notready, cern.running) == (0, 6, 2)
    assert snap.demands["NOT_THERE"].ready == 0


def test_detailed_filters(tmp_path: Path, server: FakeServer | RealServer) -> None:
    server.load(list(FIXTURE_JOBS))
    managed, mcore = demand_key("BNL_TEST", ["managed"]), demand_key("BNL_TEST", None, ["MCORE"])
    # each filter alone (polled together, overlapping filters share their jobs: test_trust_panda)
    p = plugin(tmp_path, server)
    assert p.poll(1.0, frozenset({managed})).demands[managed].ready == 7
    mc = p.poll(1.0, frozenset({mcore})).demands[mcore]
    assert (mc.ready, mc.notready) == (3, 2)


def test_demand_up_and_down(tmp_path: Path, server: FakeServer | RealServer) -> None:
    p = plugin(tmp_path, server)
    for activated in (5, 40, 12):
        server.load([("BNL_TEST", "SCORE", "managed", "activated", activated)])
        assert p.poll(1.0, frozenset({"BNL_TEST"})).demands["BNL_TEST"].ready == activated


def test_empty_server_is_no_information(tmp_path: Path, server: FakeServer | RealServer) -> None:
    server.load([])
    with pytest.raises(BackendError, match="Database failure getting the job statistics"):
        plugin(tmp_path, server).poll(1.0, frozenset({"BNL_TEST"}))


def test_legacy_call_is_gone_in_1_0(tmp_path: Path, server: FakeServer | RealServer) -> None:
    server.load(list(FIXTURE_JOBS))
    ctx = factory_context()
    q = queue_config(
        tmp_path,
        panda_queue_section(f"{server.base}/server/panda", "BNL_TEST", "wmsstatus.panda.mode = legacy"),
    )
    with pytest.raises(BackendError, match="HTTP 403"):
        Panda(Panda.endpoint(q, ctx), ctx).poll(1.0, frozenset({"BNL_TEST"}))


# -- raw answers: what the fake reproduces -----------------------------------------------------


def test_raw_answers(server: FakeServer | RealServer) -> None:
    server.load(list(FIXTURE_JOBS))
    status, ctype, body = http(f"{server.api_url}/statistics/active_job_stats_by_site")
    assert (status, ctype) == (200, "text/plain")
    doc = json.loads(body)
    assert list(doc) == ["success", "message", "data"]
    assert doc["data"] == {
        "BNL_TEST": {"activated": 10, "running": 4, "defined": 2, "assigned": 0},
        "CERN_TEST": {"starting": 2, "assigned": 6, "activated": 0, "running": 0},
    }
    _, _, raw = http(f"{server.api_url}/statistics/active_job_stats_by_site", accept_json=False)
    assert raw.startswith(b"{'success': True, 'message': '', 'data': {") and b"Decimal('10')" in raw
    assert _repr_data(raw) == doc
    _, _, body = http(f"{server.api_url}/statistics/active_job_detailed_stats_by_site")
    assert json.loads(body)["data"]["BNL_TEST"]["MCORE"]["user"] == {
        "activated": 3,
        "assigned": 0,
        "running": 0,
    }
    assert http(f"{server.api_url}/statistics/active_job_stats_by_site", data=b"")[2] == (
        b'{"success": false, "message": "expecting GET, received POST", "data": null}'
    )
    assert http(f"{server.base}/server/panda/getJobStatisticsPerSite")[:3:2] == (
        403,
        b"ERROR : method getJobStatisticsPerSite is forbidden",
    )
    assert http(f"{server.base}/api/latest/statistics/active_job_stats_by_site")[0] == 403
    assert http(f"{server.api_url}/system/is_alive")[2] == b'{"success": true, "message": "", "data": null}'
    # the site-status source the plugin uses by default: unauthenticated, the usual envelope
    status, _, body = http(f"{server.api_url}/metaconfig/get_site_specs?type=all")
    specs = json.loads(body)
    assert status == 200 and specs["success"] is True and isinstance(specs["data"], dict)
    server.load([])
    assert http(f"{server.api_url}/statistics/active_job_stats_by_site")[2].decode() == RECORDED_EMPTY
