"""Sharing one WMS queue's demand between the factory queues that serve it. Pure code.

AutoPyFactory let every factory queue compare the *whole* activated count of its PanDA queue with
its *own* pending pilots, so C queues (CEs) serving one PanDA queue each submitted for all of it,
and operators compensated with a static ``Scale`` factor (1 / CEs). Here each queue gets a part:
``share`` (queues.conf, a positive weight; unset = 1, so unset everywhere is an equal split), and
the parts add up exactly to the whole, so the queues together submit for the demand once.

A queue that has ``Scale`` in its chain and no ``share`` keeps AutoPyFactory's behaviour and sees
the whole demand: its factor already does the splitting, and splitting again would under-submit.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import replace
from fractions import Fraction
from typing import TYPE_CHECKING

from autopyfactory.model import Demand

if TYPE_CHECKING:
    from autopyfactory.config.models import QueueConfig

_FIELDS = ("ready", "notready", "running", "done", "failed")


def split_count(total: int, weights: Mapping[str, float]) -> dict[str, int]:
    """Split ``total`` in proportion to ``weights`` (largest remainder); the parts sum to ``total``.

    Exact arithmetic; ties for the leftover units go to the larger weight, then to the name that
    sorts first, so the result is deterministic."""
    if not weights:
        return {}
    if any(w <= 0 for w in weights.values()):
        bad = ", ".join(f"{q}={w}" for q, w in weights.items() if w <= 0)
        raise ValueError(f"shares must be > 0: {bad}")
    exact = {q: Fraction(w) for q, w in weights.items()}
    whole = sum(exact.values())
    quotas = {q: Fraction(total) * w / whole for q, w in exact.items()}
    parts = {q: int(quota) for q, quota in quotas.items()}  # floor: total >= 0
    leftover = total - sum(parts.values())
    order = sorted(quotas, key=lambda q: (-(quotas[q] - parts[q]), -exact[q], q))
    for q in order[:leftover]:
        parts[q] += 1
    return parts


def split_demand(demand: Demand, weights: Mapping[str, float]) -> dict[str, Demand]:
    """One Demand per queue, every count split by ``weights``; site status and time unchanged."""
    columns = {f: split_count(max(0, getattr(demand, f)), weights) for f in _FIELDS}
    return {q: replace(demand, **{f: columns[f][q] for f in _FIELDS}) for q in weights}


def uses_scale(queue: QueueConfig) -> bool:
    return any(spec.name == "Scale" for spec in queue.sched)


def weights_for(queues: Sequence[QueueConfig]) -> tuple[dict[str, float], list[str]]:
    """(weights of the queues that split, names of the queues that see the whole demand)."""
    weights: dict[str, float] = {}
    whole: list[str] = []
    for q in queues:
        share = q.settings.share
        if share is None and uses_scale(q):
            whole.append(q.name)
        else:
            weights[q.name] = 1.0 if share is None else share
    return weights, whole


def split_demands(
    demands: Mapping[str, Demand],
    queues: Iterable[QueueConfig],
    key_of: Callable[[QueueConfig], str | None] = lambda q: q.wmsqueue,
) -> dict[str, Demand | None]:
    """Each factory queue's part of its WMS queue's demand (None where the demand is missing).

    ``key_of`` gives the key of a queue's demand in ``demands`` (the plugin's ``demand_key``);
    queues with the same key share that demand."""
    groups: dict[str, list[QueueConfig]] = {}
    out: dict[str, Demand | None] = {}
    for q in queues:
        key = key_of(q)
        if key is None:
            out[q.name] = None
        else:
            groups.setdefault(key, []).append(q)
    for key, members in groups.items():
        demand = demands.get(key)
        if demand is None:
            out.update(dict.fromkeys((q.name for q in members), None))
            continue
        weights, whole = weights_for(members)
        out.update(split_demand(demand, weights))
        out.update(dict.fromkeys(whole, demand))
    return out


def split_overlapping(
    cells: Mapping[Hashable, Mapping[str, int]],
    members: Mapping[str, tuple[Callable[[Hashable], bool], float]],
) -> dict[str, dict[str, int]]:
    """Counts of cells that several members' filters cover, shared so no job is counted twice.

    ``cells``: e.g. PanDA's ``(resource type, prodSourceLabel) -> {field: n}`` of one PanDA queue;
    ``members``: key -> (does it cover this cell?, weight). A cell's counts go to the members that
    cover it, split by weight (largest remainder: the parts add up to the cell). A label-filtered
    queue and an unfiltered group serving the same PanDA queue thus share the filtered label's
    jobs instead of both submitting for them."""
    out: dict[str, dict[str, int]] = {k: {} for k in members}
    for cell, counts in cells.items():
        covering = {k: w for k, (covers, w) in members.items() if covers(cell)}
        if not covering:
            continue
        for field_name, total in counts.items():
            parts = split_count(max(0, total), covering)
            for k, part in parts.items():
                out[k][field_name] = out[k].get(field_name, 0) + part
    return out


def queue_weight(queue: QueueConfig) -> float:
    """A queue's weight when its demand is shared: its ``share``, 1 when unset."""
    return 1.0 if queue.settings.share is None else queue.settings.share
