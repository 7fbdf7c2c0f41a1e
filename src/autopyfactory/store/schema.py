"""Tables of the factory's store (SQLAlchemy Core). SQLite by default, PostgreSQL by URL.

One ``metadata`` holds every table so ``create_all`` makes the whole schema; other modules
(the quota ledger) add their tables to it.
"""

from __future__ import annotations

from sqlalchemy import (
    Column,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)

metadata = MetaData()

# Every decision a queue's chain (or a cascade) took, with its steps: `apf explain` reads this.
decisions = Table(
    "decisions",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("factory_id", String(128), nullable=False),
    Column("queue", String(512), nullable=False),
    Column("time", Float, nullable=False),
    Column("n", Integer, nullable=False),
    Column("ready", Integer),
    Column("pending", Integer),
    Column("running", Integer),
    Column("binding", String(128)),
    Column("steps", Text, nullable=False),  # JSON list of {"plugin","in","out","reason"}
    Column("dry_run", Integer, nullable=False, default=0),
    Index("ix_decisions_queue_time", "factory_id", "queue", "time"),
)

# Two-phase submission: an intent is written (with its quota reservation) before the backend is
# called, and settled after. An intent is never retried: a crash leaves it open, and the next
# start settles it from what the backend shows under its tag.
intents = Table(
    "intents",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("factory_id", String(128), nullable=False),
    Column("queue", String(512), nullable=False),
    Column("decision_id", Integer),
    Column("n", Integer, nullable=False),
    Column("created", Float, nullable=False),
    Column("status", String(16), nullable=False),  # open | submitted | failed | settled
    Column("submitted", Integer),
    Column("finished", Float),
    Column("error", Text),
    Column("tier", String(512)),
    Index("ix_intents_status", "factory_id", "status"),
)

# Every pilot the factory created or adopted, as last observed.
pilots = Table(
    "pilots",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("factory_id", String(128), nullable=False),
    Column("queue", String(512), nullable=False),
    Column("backend_id", String(256), nullable=False),
    Column("intent_id", String(64)),
    Column("state", String(16), nullable=False),
    Column("submitted_at", Float),
    Column("started_at", Float),
    Column("ended_at", Float),
    Column("updated_at", Float),
    Column("instance_id", String(256)),
    Column("node", String(256)),
    Column("tier", String(512)),
    Column("exit_code", Integer),
    UniqueConstraint("factory_id", "queue", "backend_id", name="uq_pilot"),
    Index("ix_pilots_queue_state", "factory_id", "queue", "state"),
)

# Free-form events worth showing an operator (backoffs, adoptions, reload results, spills).
events = Table(
    "events",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("factory_id", String(128), nullable=False),
    Column("time", Float, nullable=False),
    Column("queue", String(512)),
    Column("kind", String(64), nullable=False),
    Column("message", Text, nullable=False),
    Index("ix_events_time", "factory_id", "time"),
)
