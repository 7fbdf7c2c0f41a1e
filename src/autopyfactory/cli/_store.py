"""The store for commands that only read (``status``, ``explain``, ``plan``): nothing is created.

``open_read_only(url)`` gives a ``Store`` opened read-only (SQLite ``mode=ro`` or ``immutable=1``,
PostgreSQL ``default_transaction_read_only``; its writes are dropped), or ``None`` when the SQLite
file does not exist yet. ``scratch_store()`` is an empty in-memory store for ``apf plan`` before the
daemon ever ran. The decisions ``apf plan`` makes are not the daemon's: nothing is kept.
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from autopyfactory.store.api import Store, StoreError


class StoreUnavailable(Exception):
    """The store exists but cannot be read (the message names it without a password)."""


def sqlite_path(url: str) -> Path | None:
    try:
        parsed = make_url(url)
    except ArgumentError:
        return None
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    return Path(parsed.database).expanduser()


def open_read_only(url: str) -> Store | None:
    """The store at ``url`` opened read-only; None when it is an SQLite file that does not exist."""
    path = sqlite_path(url)
    if path is not None and not path.exists():
        return None
    try:
        return Store(url, readonly=True)
    except StoreError as exc:
        raise StoreUnavailable(str(exc)) from None


def scratch_store() -> Store:
    """An empty in-memory store (``apf plan`` before the daemon ever ran): nothing on disk."""
    return Store("sqlite://", readonly=True)
