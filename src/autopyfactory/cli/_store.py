"""The store for commands that only read (``status``, ``explain``, ``plan``): nothing is created.

``open_read_only(url)`` gives a ``Store`` whose connections cannot write (SQLite ``mode=ro``,
PostgreSQL ``default_transaction_read_only``), or ``None`` when the SQLite file does not exist yet.
``scratch_store()`` is an in-memory store for ``apf plan`` when there is no state yet. Their
write methods record nothing: the decisions ``apf plan`` makes are not the daemon's.

(The lead may replace this with ``Store(url, read_only=True)``; the contract is the same.)
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.pool import StaticPool

from autopyfactory.store.api import Store
from autopyfactory.store.schema import metadata


class StoreUnavailable(Exception):
    """The store exists but cannot be read (message names it without a password)."""


class ReadOnlyStore(Store):
    """A Store over an engine that cannot write; writes are dropped."""

    def __init__(self, url: str, engine: Engine) -> None:  # no super().__init__: it creates things
        self.url = url
        self.engine = engine
        self._cache_lock = threading.Lock()
        self._pilot_rows: dict[tuple[str, str, str], tuple[int, str]] = {}

    def record_decisions(self, factory_id: str, items: Sequence[Any], dry_run: bool = False) -> list[int]:
        return [0] * len(items)

    def add_event(self, *args: Any, **kwargs: Any) -> None:
        return None

    def record_pilots(self, *args: Any, **kwargs: Any) -> None:
        return None

    def prune(self, *args: Any, **kwargs: Any) -> int:
        return 0

    def open_intent(self, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("read-only store: no submission from a read-only command")

    def settle_intent(self, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("read-only store: no submission from a read-only command")


def sqlite_path(url: str) -> Path | None:
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    return Path(parsed.database).expanduser()


def open_read_only(url: str) -> ReadOnlyStore | None:
    """The store at ``url`` opened read-only; None when it is an SQLite file that does not exist."""
    from sqlalchemy.exc import SQLAlchemyError

    path = sqlite_path(url)
    try:
        if path is not None:
            if not path.exists():
                return None
            # a running daemon keeps a -wal file: read through it (mode=ro); without one nobody
            # writes, and immutable=1 reads without creating -wal/-shm files next to the database
            flags = "mode=ro" if path.with_name(path.name + "-wal").exists() else "immutable=1"
            engine = create_engine(
                f"sqlite:///file:{path}?{flags}&uri=true",
                connect_args={"check_same_thread": False, "timeout": 30},
            )
        elif make_url(url).get_backend_name() == "postgresql":
            engine = create_engine(
                url,
                connect_args={"options": "-c default_transaction_read_only=on", "connect_timeout": 10},
            )
        else:
            engine = create_engine(url)
        with engine.connect():
            pass
    except (SQLAlchemyError, ImportError, OSError) as exc:
        from autopyfactory.preflight import redact_db_url

        detail = str(getattr(exc, "orig", None) or exc).strip().splitlines()
        raise StoreUnavailable(
            f"store {redact_db_url(url)}: cannot open: {detail[0][:300] if detail else type(exc).__name__}"
        ) from None
    return ReadOnlyStore(url, engine)


def scratch_store() -> ReadOnlyStore:
    """An empty in-memory store (``apf plan`` before the daemon ever ran): nothing on disk."""
    engine = create_engine("sqlite://", poolclass=StaticPool, connect_args={"check_same_thread": False})
    metadata.create_all(engine)
    return ReadOnlyStore("sqlite://", engine)
