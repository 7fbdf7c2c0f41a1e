"""The store: pruning old history keeps open intents, live pilots and the quota ledger."""

from __future__ import annotations

from pathlib import Path

from autopyfactory.model import Decision, Pilot, PilotState, Step
from autopyfactory.store.api import Store


def test_prune_forgets_only_old_settled_history(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'apf.db'}")
    old, new = 1_000.0, 100_000.0
    store.record_decisions("f", [Decision("q", 1, (Step("Ready", 0, 1, "r"),), old)])
    store.record_decisions("f", [Decision("q", 2, (Step("Ready", 0, 2, "r"),), new)])
    store.add_event("f", old, "x", "old event")
    open_id, _ = store.open_intent("f", "q", 3, old)
    done_id, _ = store.open_intent("f", "q", 1, old)
    store.settle_intent(done_id, "submitted", 1, old)
    store.record_pilots(
        "f", [Pilot("1", "q", PilotState.DONE, done_id), Pilot("2", "q", PilotState.RUNNING)], old
    )
    removed = store.prune("f", older_than=50_000.0)
    assert removed == 4  # one decision, one event, one settled intent, one finished pilot
    assert [d["n"] for d in store.decisions("f", "q")] == [2]
    assert [i["id"] for i in store.intents("f")] == [open_id]  # an open intent is never forgotten
    assert [p["backend_id"] for p in store.pilots("f")] == ["2"]  # nor a live pilot
