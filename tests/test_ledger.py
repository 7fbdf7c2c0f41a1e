"""The quota ledger (store/ledger.py) on SQLite: periods, release, pilot-hours, rollback, a crash
between reserve and commit, and two processes reserving against one small quota.

The same worker processes run against PostgreSQL in test_ledger_postgres.py.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine, func, insert, select

from autopyfactory.config.policy import Quota
from autopyfactory.decide.periods import parse_time
from autopyfactory.model import Pilot, PilotState
from autopyfactory.store import ledger
from autopyfactory.store.ledger import (
    ledger_entries,
    never_started,
    release,
    release_unstarted,
    remaining,
    reserve,
    usage,
    use_begin_immediate,
)
from autopyfactory.store.schema import intents, metadata, pilots

REPO = Path(__file__).resolve().parents[1]
JAN15 = parse_time("2027-01-15T12:00:00Z")


def quotas(*items: dict) -> list[Quota]:
    return [Quota.model_validate(i) for i in items]


def make_engine(url: str) -> Engine:
    engine = create_engine(url)
    use_begin_immediate(engine)
    metadata.create_all(engine)
    return engine


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    eng = make_engine(f"sqlite:///{tmp_path / 'apf.db'}")
    yield eng
    eng.dispose()


def tier_name() -> str:
    return f"T-{uuid.uuid4().hex[:8]}"


def test_reserve_grants_at_most_the_quota(engine: Engine) -> None:
    tier, q = tier_name(), quotas({"per": "month", "pilots": 10})
    with engine.begin() as conn:
        assert reserve(conn, tier, q, 4, JAN15, "i1") == 4
        assert reserve(conn, tier, q, 4, JAN15, "i2") == 4
        assert reserve(conn, tier, q, 4, JAN15, "i3") == 2
        assert reserve(conn, tier, q, 1, JAN15, "i4") == 0
        assert reserve(conn, tier, q, 0, JAN15, "i5") == 0
    with engine.connect() as conn:
        (u,) = usage(conn, tier, q, JAN15)
        assert (u.period, u.pilots_used, u.pilots_left, u.exhausted) == ("2027-01", 10, 0, True)
        assert remaining(conn, tier, q, JAN15) == 0
        # another tier has its own count
        assert remaining(conn, tier_name(), q, JAN15) == 10


def test_month_rollover_is_exact(engine: Engine) -> None:
    tier, q = tier_name(), quotas({"per": "month", "pilots": 10})
    last = parse_time("2027-01-31T23:59:59Z")
    first = parse_time("2027-02-01T00:00:00Z")
    with engine.begin() as conn:
        assert reserve(conn, tier, q, 10, last, "jan") == 10
        assert reserve(conn, tier, q, 1, last + 0.999, "jan2") == 0
        assert reserve(conn, tier, q, 12, first, "feb") == 10
    with engine.connect() as conn:
        assert [u.pilots_used for u in usage(conn, tier, q, last)] == [10]
        (feb,) = usage(conn, tier, q, first)
        assert (feb.period, feb.pilots_used, feb.start) == ("2027-02", 10, first)


def test_release_gives_back_to_the_reservations_period(engine: Engine) -> None:
    tier, q = tier_name(), quotas({"per": "month", "pilots": 10})
    last = parse_time("2027-01-31T23:59:00Z")
    with engine.begin() as conn:
        assert reserve(conn, tier, q, 5, last, "i1") == 5
        assert reserve(conn, tier, q, 5, last + 120, "i2") == 5  # February
    # the January submission created only 2 of its 5; settled after the rollover
    with engine.begin() as conn:
        assert release(conn, "i1", 3) == 3
    with engine.begin() as conn:
        assert release(conn, "i1", 10) == 2  # never more than the intent holds
        assert release(conn, "i1", 1) == 0
        assert release(conn, "unknown", 4) == 0
    with engine.connect() as conn:
        assert usage(conn, tier, q, last)[0].pilots_used == 0
        assert usage(conn, tier, q, last + 120)[0].pilots_used == 5
        assert remaining(conn, tier, q, last) == 10


def _ended(intent: str, *ids: int, state: PilotState = PilotState.CANCELLED) -> list[Pilot]:
    return [Pilot(f"job.{i}", "Q", state, intent_id=intent, submitted_at=JAN15) for i in ids]


def pilots_that_never_started_give_their_count_back(engine: Engine) -> None:
    """Shared with the PostgreSQL test: 200 submitted, 0 started must leave the quota whole."""
    tier, q = tier_name(), quotas({"per": "month", "pilots": 10})
    last = parse_time("2027-01-31T23:59:59Z")
    a, b, other = (f"{tier}-{x}" for x in ("a", "b", "other"))
    with engine.begin() as conn:
        assert reserve(conn, tier, q, 10, last, a) == 10
        assert reserve(conn, tier, q, 10, last, b) == 0  # the month is full
    # four of them are cancelled before they start; reported after the month rolled over
    feb = last + 3600
    with engine.begin() as conn:
        assert release_unstarted(conn, _ended(a, 0, 1, 2, 3), feb) == 4
    with engine.connect() as conn:
        assert remaining(conn, tier, q, last) == 4  # back to January, where they were counted
        assert remaining(conn, tier, q, feb) == 10
    with engine.begin() as conn:
        # the same ends reported again (a second poll, a restart): nothing more
        assert release_unstarted(conn, _ended(a, 0, 1, 2, 3), feb) == 0
        # a partial submission gave 2 back already: never more than the intent holds
        assert release(conn, a, 2) == 2
        assert release_unstarted(conn, _ended(a, *range(4, 10), state=PilotState.FAILED), feb) == 4
        assert release_unstarted(conn, _ended(a, 11), feb) == 0
        # pilots of intents without a reservation (queues that are not tiers) are ignored
        assert release_unstarted(conn, _ended(other, 1), feb) == 0
        assert release_unstarted(conn, [Pilot("x", "Q", PilotState.CANCELLED)], feb) == 0
    with engine.connect() as conn:
        assert usage(conn, tier, q, last)[0].pilots_used == 0
        total = conn.execute(
            select(func.sum(ledger_entries.c.count)).where(ledger_entries.c.tier == tier)
        ).scalar_one()
        assert total == 0  # 10 reserved, 2 released for the partial submission, 8 never started


def test_pilots_that_never_started_give_their_count_back(engine: Engine) -> None:
    pilots_that_never_started_give_their_count_back(engine)


def recorded_pilots_that_never_started(engine: Engine) -> None:
    """The engine's hook: reported ends checked against the stored rows (shared with PostgreSQL)."""
    tier, q = tier_name(), quotas({"per": "month", "pilots": 10})
    intent, factory = f"{tier}-i", f"{tier}-f"
    with engine.begin() as conn:
        assert reserve(conn, tier, q, 5, JAN15, intent) == 5
        # the store's rows: job.0 was seen running (it has a start time), the others were not
        conn.execute(
            insert(pilots),
            [
                {
                    "factory_id": factory,
                    "queue": "Q",
                    "backend_id": f"job.{i}",
                    "intent_id": intent,
                    "state": "pending",
                    "submitted_at": JAN15,
                    "started_at": JAN15 + 60 if i == 0 else None,
                    "tier": tier,
                }
                for i in range(5)
            ],
        )
    reports = [
        Pilot("job.0", "Q", PilotState.CANCELLED, intent_id=intent),  # ran: the report lacks its start
        Pilot("job.1", "Q", PilotState.CANCELLED, intent_id=intent),
        Pilot("job.2", "Q", PilotState.FAILED, intent_id=intent),
        Pilot("job.3", "Q", PilotState.RUNNING, intent_id=intent, started_at=JAN15 + 90),
        Pilot("job.4", "Q", PilotState.DONE, intent_id=intent),  # completed: it ran
    ]
    with engine.begin() as conn:
        assert ledger.release_unstarted_recorded(conn, factory, reports, JAN15 + 3600) == 2
        assert ledger.release_unstarted_recorded(conn, factory, reports, JAN15 + 7200) == 0  # once
    with engine.connect() as conn:
        assert remaining(conn, tier, q, JAN15) == 7


def test_recorded_pilots_that_never_started(engine: Engine) -> None:
    recorded_pilots_that_never_started(engine)


def test_never_started() -> None:
    assert never_started(PilotState.CANCELLED, None)
    assert never_started(PilotState.FAILED, None, PilotState.PENDING)
    assert never_started(PilotState.UNKNOWN, None, PilotState.HELD)  # lost while waiting
    assert not never_started(PilotState.CANCELLED, 1.0)  # it started
    assert not never_started(PilotState.CANCELLED, None, PilotState.RUNNING)  # seen running
    assert not never_started(PilotState.DONE, None)  # it completed: it ran
    assert not never_started(PilotState.PENDING, None)  # not over


def test_rolling_window(engine: Engine) -> None:
    tier, q = tier_name(), quotas({"per": "1d", "pilots": 5})
    with engine.begin() as conn:
        assert reserve(conn, tier, q, 5, JAN15, "a") == 5
        assert reserve(conn, tier, q, 5, JAN15 + 86399, "b") == 0
        assert reserve(conn, tier, q, 5, JAN15 + 86400, "c") == 5
        (u,) = usage(conn, tier, q, JAN15 + 86400)
        assert (u.period, u.pilots_used) == ("rolling-1d", 5)


def test_several_quotas_all_hold(engine: Engine) -> None:
    tier = tier_name()
    q = quotas({"per": "day", "pilots": 3}, {"per": "week", "pilots": 5})
    day1 = parse_time("2027-01-04T10:00:00Z")  # a Monday
    with engine.begin() as conn:
        assert reserve(conn, tier, q, 10, day1, "a") == 3
        assert reserve(conn, tier, q, 10, day1 + 86400, "b") == 2  # the week binds now
        assert reserve(conn, tier, q, 10, day1 + 2 * 86400, "c") == 0
        assert reserve(conn, tier, q, 10, day1 + 7 * 86400, "d") == 3  # next ISO week


def test_no_quota_grants_everything_and_still_counts(engine: Engine) -> None:
    tier = tier_name()
    with engine.begin() as conn:
        assert reserve(conn, tier, [], 7, JAN15, "a") == 7
        assert remaining(conn, tier, [], JAN15) is None
        total = conn.execute(
            select(func.sum(ledger_entries.c.count)).where(ledger_entries.c.tier == tier)
        ).scalar_one()
        assert total == 7


def test_pilot_hours_from_pilot_start_and_end(engine: Engine) -> None:
    tier = tier_name()
    q = quotas({"per": "day", "pilot_hours": 10})
    day = parse_time("2027-01-15T00:00:00Z")
    rows = [
        # 2 h the day before + 3 h on the day: only the 3 h count
        (day - 2 * 3600, day + 3 * 3600, tier),
        # 4 h inside the day
        (day + 3600, day + 5 * 3600, tier),
        # still running since 06:00; at 08:00 that is 2 h
        (day + 6 * 3600, None, tier),
        # not yet started: nothing
        (None, None, tier),
        # another tier: nothing
        (day, day + 8 * 3600, "other"),
    ]
    with engine.begin() as conn:
        for i, (started, ended, t) in enumerate(rows):
            conn.execute(
                insert(pilots).values(
                    factory_id="f",
                    queue=t,
                    backend_id=f"p{i}",
                    state="running",
                    started_at=started,
                    ended_at=ended,
                    tier=t,
                )
            )
    with engine.begin() as conn:
        now = day + 8 * 3600
        (u,) = usage(conn, tier, q, now)
        assert u.pilot_hours_used == pytest.approx(9.0)
        assert remaining(conn, tier, q, now) is None  # hours left, no pilot-count limit
        assert reserve(conn, tier, q, 5, now, "a") == 5
        later = day + 9 * 3600  # the running pilot reached 3 h: 10 h used
        assert usage(conn, tier, q, later)[0].exhausted
        assert reserve(conn, tier, q, 5, later, "b") == 0


def test_rollback_leaves_no_count(engine: Engine) -> None:
    tier, q = tier_name(), quotas({"per": "month", "pilots": 5})
    intent = uuid.uuid4().hex
    with pytest.raises(RuntimeError), engine.begin() as conn:
        conn.execute(
            insert(intents).values(id=intent, factory_id="f", queue=tier, n=5, created=JAN15, status="open")
        )
        assert reserve(conn, tier, q, 5, JAN15, intent) == 5
        raise RuntimeError("the submission intent could not be written")
    with engine.connect() as conn:
        assert remaining(conn, tier, q, JAN15) == 5
        assert conn.execute(select(intents.c.id).where(intents.c.id == intent)).first() is None


# ---------------------------------------------------------------------------------------------
# Separate processes (shared with test_ledger_postgres.py)


def _worker() -> None:
    """Child process: reserve in rounds, each in its own transaction together with an intent row."""
    url, tier, quota_json, rounds, go, out = sys.argv[1:7]
    engine = make_engine(url)
    q = quotas(*json.loads(quota_json))
    with engine.connect() as conn:  # connected and warmed up before the start signal
        remaining(conn, tier, q, JAN15)
    Path(out + ".ready").write_text("ready")
    deadline = time.monotonic() + 60
    while not Path(go).exists():  # start together with the other worker
        if time.monotonic() > deadline:
            raise SystemExit("no go signal")
        time.sleep(0.001)
    granted = []
    for r in range(int(rounds)):
        intent = f"{os.getpid()}-{r}"
        with engine.begin() as conn:
            conn.execute(
                insert(intents).values(
                    id=intent,
                    factory_id=f"f{os.getpid()}",
                    queue=tier,
                    n=3,
                    created=JAN15,
                    status="open",
                    tier=tier,
                )
            )
            got = reserve(conn, tier, q, 3, JAN15, intent)
            # hold the transaction a moment so the two processes overlap: the other one must wait
            # for the tier lock (without the lock both would read the same count and overshoot)
            time.sleep(0.005)
            conn.execute(
                intents.update().where(intents.c.id == intent).values(submitted=got, status="submitted")
            )
        granted.append(got)
    Path(out).write_text(json.dumps(granted))


def _crash_worker() -> None:
    """Child process: reserve, say so, and wait to be killed before committing."""
    url, tier, quota_json, ready = sys.argv[1:5]
    engine = make_engine(url)
    with engine.connect() as conn:
        conn.begin()
        conn.execute(
            insert(intents).values(
                id=f"crash-{tier}", factory_id="f", queue=tier, n=4, created=JAN15, status="open"
            )
        )
        got = reserve(conn, tier, quotas(*json.loads(quota_json)), 4, JAN15, f"crash-{tier}")
        Path(ready).write_text(str(got))
        time.sleep(600)


def spawn(func: str, *args: str) -> subprocess.Popen[bytes]:
    code = f"import sys; sys.path.insert(0, {str(REPO)!r}); from tests.test_ledger import {func}; {func}()"
    return subprocess.Popen([sys.executable, "-c", code, *args], cwd=REPO)


def wait_for(path: Path, procs: list[subprocess.Popen[bytes]], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        for p in procs:
            assert p.poll() is None, f"worker exited early with {p.returncode}"
        assert time.monotonic() < deadline, f"{path} did not appear"
        time.sleep(0.01)


def run_two_workers(url: str, tmp_path: Path, quota: int, rounds: int) -> tuple[str, list[int]]:
    tier = tier_name()
    quota_json = json.dumps([{"per": "month", "pilots": quota}])
    go = tmp_path / "go"
    outs = [tmp_path / f"out{i}.json" for i in range(2)]
    procs = [spawn("_worker", url, tier, quota_json, str(rounds), str(go), str(out)) for out in outs]
    for out in outs:  # a barrier: both connected, then both start at once
        wait_for(Path(f"{out}.ready"), procs)
    go.write_text("go")
    for p in procs:
        assert p.wait(timeout=120) == 0
    granted = [g for out in outs for g in json.loads(out.read_text())]
    return tier, granted


def check_shared_quota(engine: Engine, tier: str, granted: list[int], quota: int) -> None:
    # together the two processes got exactly the quota: never more, and nothing lost
    assert sum(granted) == quota
    with engine.connect() as conn:
        assert remaining(conn, tier, quotas({"per": "month", "pilots": quota}), JAN15) == 0
        recorded = conn.execute(
            select(func.sum(intents.c.submitted)).where(intents.c.tier == tier)
        ).scalar_one()
        assert recorded == quota  # every intent row agrees with the ledger
        in_ledger = conn.execute(
            select(func.sum(ledger_entries.c.count)).where(ledger_entries.c.tier == tier)
        ).scalar_one()
        assert in_ledger == quota


def test_two_processes_share_one_quota_sqlite(engine: Engine, tmp_path: Path) -> None:
    url = str(engine.url)
    tier, granted = run_two_workers(url, tmp_path, quota=50, rounds=30)
    check_shared_quota(engine, tier, granted, 50)


def crash_between_reserve_and_commit(engine: Engine, url: str, tmp_path: Path) -> None:
    tier = tier_name()
    q_json = json.dumps([{"per": "month", "pilots": 6}])
    ready = tmp_path / f"ready-{tier}"
    proc = spawn("_crash_worker", url, tier, q_json, str(ready))
    try:
        wait_for(ready, [proc])
        assert ready.read_text() == "4"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    q = quotas({"per": "month", "pilots": 6})
    with engine.begin() as conn:
        # the killed transaction counted nothing, and its lock is gone: the full quota is there
        assert reserve(conn, tier, q, 10, JAN15, "after") == 6
        assert conn.execute(select(intents.c.id).where(intents.c.id == f"crash-{tier}")).first() is None


def test_crash_between_reserve_and_commit_sqlite(engine: Engine, tmp_path: Path) -> None:
    crash_between_reserve_and_commit(engine, str(engine.url), tmp_path)


def test_ledger_tables_are_in_the_shared_metadata() -> None:
    assert ledger.ledger_tiers.name in metadata.tables and ledger.ledger_entries.name in metadata.tables
