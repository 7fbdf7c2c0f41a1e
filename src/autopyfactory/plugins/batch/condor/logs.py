"""The pilot log tree ``<baseLogDir>/<YYYY-MM-DD UTC>/<queue>/`` with its URL twin, and retention.

Selection of what to delete is pure (``expired``); ``clean_queue_logs`` is the small I/O wrapper
that lists the tree and removes the expired ``<date>/<queue>`` directories.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Iterable
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

log = logging.getLogger(__name__)

DATE_FORMAT = "%Y-%m-%d"


def queue_dir_name(queue: str) -> str:
    """APF's directory name for a queue: '/' and ':' become '_'."""
    return queue.replace("/", "_").replace(":", "_")


def day(now: float) -> str:
    return datetime.fromtimestamp(now, UTC).strftime(DATE_FORMAT)


def log_location(base_dir: str, base_url: str, queue: str, now: float) -> tuple[str, str]:
    """(directory, URL) of today's (UTC) logs for ``queue``."""
    rel = f"{day(now)}/{queue_dir_name(queue)}"
    return f"{base_dir.rstrip('/')}/{rel}", f"{base_url.rstrip('/')}/{rel}"


def expired(entries: Iterable[tuple[str, str]], today: date, keepdays: int) -> list[tuple[str, str]]:
    """The (date dir, queue dir) pairs older than ``keepdays`` days; names that are not dates are
    not ours and are never selected."""
    cutoff = today - timedelta(days=keepdays)
    out = []
    for date_name, queue_name in entries:
        try:
            when = datetime.strptime(date_name, DATE_FORMAT).date()
        except ValueError:
            continue
        if when < cutoff:
            out.append((date_name, queue_name))
    return sorted(out)


def clean_queue_logs(base_dir: Path, queue: str, keepdays: int, now: float) -> list[Path]:
    """Delete ``<base>/<date>/<queue>`` older than ``keepdays``; drop date dirs left empty."""
    qname = queue_dir_name(queue)
    if not base_dir.is_dir():
        return []
    entries = [(d.name, qname) for d in base_dir.iterdir() if d.is_dir() and (d / qname).is_dir()]
    today = datetime.fromtimestamp(now, UTC).date()
    removed = []
    for date_name, queue_name in expired(entries, today, keepdays):
        target = base_dir / date_name / queue_name
        shutil.rmtree(target, ignore_errors=True)
        removed.append(target)
        try:
            (base_dir / date_name).rmdir()  # only succeeds when empty
        except OSError:
            pass
    if removed:
        log.info("queue %s: removed %d log directories older than %d days", queue, len(removed), keepdays)
    return removed
