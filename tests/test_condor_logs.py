"""The per-day, per-queue log tree and its retention."""

from __future__ import annotations

from datetime import date
from pathlib import Path

from autopyfactory.plugins.batch.condor import logs
from autopyfactory.plugins.batch.condor import schedd as sd
from condor_standin import StandinPool, context, load_config, submitter


def test_log_location_and_queue_names() -> None:
    d, u = logs.log_location("/var/log/apf/", "http://f.example.org:25880/", "SITE/x:y", 1_709_280_000.0)
    assert d == "/var/log/apf/2024-03-01/SITE_x_y"
    assert u == "http://f.example.org:25880/2024-03-01/SITE_x_y"


def test_expired_selection_is_by_date_only() -> None:
    entries = [
        ("2024-02-20", "Q"),
        ("2024-02-21", "Q"),
        ("2024-03-01", "Q"),
        ("lost+found", "Q"),
        ("2024-02-01", "R"),
    ]
    out = logs.expired(entries, today=date(2024, 3, 1), keepdays=9)
    assert out == [("2024-02-01", "R"), ("2024-02-20", "Q")]
    assert logs.expired(entries, today=date(2024, 3, 1), keepdays=0) == [
        ("2024-02-01", "R"),
        ("2024-02-20", "Q"),
        ("2024-02-21", "Q"),
    ]


def test_clean_queue_logs_removes_only_this_queue(tmp_path: Path) -> None:
    for day, queue in [
        ("2024-02-01", "Q"),
        ("2024-02-01", "OTHER"),
        ("2024-02-02", "Q"),
        ("2024-02-28", "Q"),
    ]:
        (tmp_path / day / queue).mkdir(parents=True)
        (tmp_path / day / queue / "1.0.out").write_text("x")
    (tmp_path / "notes").mkdir()
    removed = logs.clean_queue_logs(tmp_path, "Q", keepdays=7, now=1_709_280_000.0)  # 2024-03-01
    assert sorted(p.relative_to(tmp_path).as_posix() for p in removed) == ["2024-02-01/Q", "2024-02-02/Q"]
    assert (tmp_path / "2024-02-01" / "OTHER" / "1.0.out").exists()
    assert not (tmp_path / "2024-02-02").exists()  # emptied date directories go too
    assert (tmp_path / "2024-02-28" / "Q").exists() and (tmp_path / "notes").exists()
    assert logs.clean_queue_logs(tmp_path / "missing", "Q", 7, 0.0) == []


def test_cleanup_applies_per_queue_keepdays_hourly(tmp_path: Path) -> None:
    queues = """\
[DEFAULT]
enabled = True
batchstatusplugin = Condor
schedplugin = Ready
executable = /bin/true
wmsqueue = W
batchsubmitplugin = CondorLocal

[SHORT]
cleanlogs.keepdays = 2

[LONG]
"""
    cfg = load_config(tmp_path, queues)
    ctx = context(cfg)
    base = tmp_path / "logs"
    for queue in ("SHORT", "LONG"):
        (base / "2024-02-25" / queue).mkdir(parents=True)
    pool = StandinPool()
    previous = sd.set_connector(pool.connect)
    try:
        now = 1_709_280_000.0  # 2024-03-01; the factory default keeps 14 days
        short, long_ = submitter(cfg, ctx, "SHORT"), submitter(cfg, ctx, "LONG")
        short.cleanup([], now)
        long_.cleanup([], now)
        assert not (base / "2024-02-25" / "SHORT").exists()
        assert (base / "2024-02-25" / "LONG").exists()
        (base / "2024-02-26" / "SHORT").mkdir(parents=True)
        short.cleanup([], now + 60)  # within the hour: no second scan
        assert (base / "2024-02-26" / "SHORT").exists()
        short.cleanup([], now + 3600)
        assert not (base / "2024-02-26" / "SHORT").exists()
    finally:
        sd.set_connector(previous)
