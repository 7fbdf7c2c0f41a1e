"""The quota ledger against the real PostgreSQL (fixture ``postgres_url``): two factory processes
reserving concurrently never exceed a shared quota, a crash before commit counts nothing, and
pilots that ended without starting give their count back (once)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine

from autopyfactory.decide.periods import parse_time
from autopyfactory.store.ledger import release, remaining, reserve, usage
from tests.test_ledger import (
    JAN15,
    check_shared_quota,
    crash_between_reserve_and_commit,
    make_engine,
    pilots_that_never_started_give_their_count_back,
    quotas,
    recorded_pilots_that_never_started,
    run_two_workers,
    tier_name,
)


@pytest.fixture
def pg(postgres_url: str) -> Iterator[Engine]:
    engine = make_engine(postgres_url)
    yield engine
    engine.dispose()


def test_two_processes_share_one_quota_postgres(pg: Engine, postgres_url: str, tmp_path: Path) -> None:
    tier, granted = run_two_workers(postgres_url, tmp_path, quota=50, rounds=30)
    check_shared_quota(pg, tier, granted, 50)


def test_crash_between_reserve_and_commit_postgres(pg: Engine, postgres_url: str, tmp_path: Path) -> None:
    crash_between_reserve_and_commit(pg, postgres_url, tmp_path)


def test_periods_and_release_postgres(pg: Engine) -> None:
    tier, q = tier_name(), quotas({"per": "month", "pilots": 10})
    last = parse_time("2027-01-31T23:59:59Z")
    first = parse_time("2027-02-01T00:00:00Z")
    with pg.begin() as conn:
        assert reserve(conn, tier, q, 8, last, "pg-a") == 8
        assert reserve(conn, tier, q, 8, last, "pg-b") == 2
        assert reserve(conn, tier, q, 8, first, "pg-c") == 8
    with pg.begin() as conn:
        assert release(conn, "pg-a", 5) == 5
    with pg.connect() as conn:
        assert remaining(conn, tier, q, last) == 5
        assert remaining(conn, tier, q, first) == 2
        assert [u.period for u in usage(conn, tier, q, JAN15)] == ["2027-01"]


def test_pilots_that_never_started_give_their_count_back_postgres(pg: Engine) -> None:
    pilots_that_never_started_give_their_count_back(pg)


def test_recorded_pilots_that_never_started_postgres(pg: Engine) -> None:
    recorded_pilots_that_never_started(pg)
