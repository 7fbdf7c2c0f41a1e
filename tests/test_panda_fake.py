"""The fake PanDA server itself: it must answer byte for byte what the real server answered."""

from __future__ import annotations

import json
import pickle
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest

from fakepanda import (
    FIXTURE_JOBS,
    RECORDED_403_LEGACY,
    RECORDED_BY_SITE,
    RECORDED_DETAILED,
    RECORDED_EMPTY,
    RECORDED_LEGACY,
    RECORDED_LEGACY_EMPTY,
    RECORDED_REPR,
    FakePanda,
    serving,
)

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def fake_panda() -> Iterator[FakePanda]:
    yield from serving(FakePanda())


@pytest.fixture
def fake_panda_legacy() -> Iterator[FakePanda]:
    yield from serving(FakePanda(version="0.8.1"))


def get(url: str, *, accept_json: bool = True, data: bytes | None = None) -> tuple[int, str, bytes]:
    headers = {"Accept": "application/json"} if accept_json else {}
    req = urllib.request.Request(url, headers=headers, data=data)
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, resp.headers["Content-Type"], resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers["Content-Type"], exc.read()


def load_recorded(fake: FakePanda) -> None:
    # the recordings fix the key order the real DB happened to return
    fake.raw_by_site = json.loads(RECORDED_BY_SITE)["data"]
    fake.raw_detailed = json.loads(RECORDED_DETAILED)["data"]


def test_by_site_json_is_byte_exact(fake_panda: FakePanda) -> None:
    load_recorded(fake_panda)
    status, ctype, body = get(f"{fake_panda.api_url}/statistics/active_job_stats_by_site")
    assert (status, ctype) == (200, "text/plain")
    assert body.decode() == RECORDED_BY_SITE


def test_detailed_json_is_byte_exact(fake_panda: FakePanda) -> None:
    load_recorded(fake_panda)
    status, ctype, body = get(f"{fake_panda.api_url}/statistics/active_job_detailed_stats_by_site")
    assert (status, ctype) == (200, "text/plain")
    assert body.decode() == RECORDED_DETAILED


def test_without_accept_header_the_body_is_a_python_repr(fake_panda: FakePanda) -> None:
    load_recorded(fake_panda)
    status, ctype, body = get(f"{fake_panda.api_url}/statistics/active_job_stats_by_site", accept_json=False)
    assert (status, ctype) == (200, "text/plain")
    assert body.decode() == RECORDED_REPR


def test_fixture_jobs_give_the_recorded_data(fake_panda: FakePanda) -> None:
    """Zero-filling, dropping 'merging' and summing labels, as the server does."""
    fake_panda.load_fixture()
    assert len(FIXTURE_JOBS) == 7
    assert fake_panda.by_site() == json.loads(RECORDED_BY_SITE)["data"]
    assert fake_panda.detailed() == json.loads(RECORDED_DETAILED)["data"]
    # and the repr with Decimal for active-table counts (order as the fixture rows give it)
    _, _, body = get(f"{fake_panda.api_url}/statistics/active_job_stats_by_site", accept_json=False)
    assert body.decode() == RECORDED_REPR


def test_empty_data_is_success_false_with_the_server_message(fake_panda: FakePanda) -> None:
    status, _, body = get(f"{fake_panda.api_url}/statistics/active_job_stats_by_site")
    assert status == 200
    assert body.decode() == RECORDED_EMPTY
    _, _, body = get(f"{fake_panda.api_url}/statistics/active_job_detailed_stats_by_site")
    assert json.loads(body) == {
        "success": False,
        "message": "Database failure getting the job statistics with resource_type and prodsourcelabel",
        "data": {},
    }


def test_post_is_refused_in_the_envelope(fake_panda: FakePanda) -> None:
    fake_panda.load_fixture()
    status, _, body = get(f"{fake_panda.api_url}/statistics/active_job_stats_by_site", data=b"")
    assert status == 200
    assert body == b'{"success": false, "message": "expecting GET, received POST", "data": null}'


def test_unknown_methods_and_latest_are_forbidden(fake_panda: FakePanda) -> None:
    status, ctype, body = get(f"{fake_panda.base}/server/panda/getJobStatisticsPerSite")
    assert (status, ctype, body.decode()) == (403, "text/plain", RECORDED_403_LEGACY)
    status, _, body = get(f"{fake_panda.base}/api/latest/statistics/active_job_stats_by_site")
    assert (status, body) == (403, b"ERROR : method active_job_stats_by_site is forbidden")
    status, _, body = get(f"{fake_panda.api_url}/statistics/no_such_call")
    assert (status, body) == (403, b"ERROR : method no_such_call is forbidden")
    status, _, body = get(f"{fake_panda.api_url}/system/is_alive")
    assert (status, body) == (200, b'{"success": true, "message": "", "data": null}')


def test_legacy_pickle_is_byte_exact(fake_panda_legacy: FakePanda) -> None:
    url = f"{fake_panda_legacy.legacy_url}/getJobStatisticsPerSite"
    status, ctype, body = get(url, accept_json=False)
    assert (status, ctype, body) == (200, "text/plain", RECORDED_LEGACY_EMPTY)
    fake_panda_legacy.raw_by_site = json.loads(RECORDED_BY_SITE)["data"]
    status, _, body = get(url, accept_json=False)
    assert body == RECORDED_LEGACY
    status, _, post_body = get(url, accept_json=False, data=b"")
    assert (status, post_body) == (200, RECORDED_LEGACY)
    assert pickle.loads(body) == json.loads(RECORDED_BY_SITE)["data"]


def test_legacy_parameters_give_the_server_500(fake_panda_legacy: FakePanda) -> None:
    status, _, body = get(
        f"{fake_panda_legacy.legacy_url}/getJobStatisticsPerSite?predefined=False", accept_json=False
    )
    assert status == 500
    assert body == b"getJobStatisticsPerSite() got an unexpected keyword argument 'predefined'"


def test_counts_follow_the_test(fake_panda: FakePanda) -> None:
    fake_panda.set_activated("Q", 5)
    assert fake_panda.by_site()["Q"] == {"activated": 5, "assigned": 0, "running": 0}
    fake_panda.set_activated("Q", 0)
    assert fake_panda.by_site() == {}
