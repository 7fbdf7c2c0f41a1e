"""Checks of a provisioning policy beyond its schema: against the queues it names
(``check_queues``: errors, and warnings where a tier's settings defeat a queue's) and against what
is known of the sites (``policy_warnings``: combinations that defeat the policy's intent)."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any

from autopyfactory.config.errors import ConfigProblem
from autopyfactory.config.policy import PolicyDocument, Tier, location_of
from autopyfactory.hints import did_you_mean


def check_queues(doc: PolicyDocument, queues: Mapping[str, Any], *, file: str) -> list[ConfigProblem]:
    """Cross-check against queues.conf: every tier names a queue section (errors); a tier queue
    whose ``wmsqueue`` differs from its cascade's demand, and a tier whose queue's backend writes
    off pilots (VMs past their provisioning_deadline) before the tier's own deadline would back it
    off, are warnings."""
    from autopyfactory.plugins.options import SubmitOptions

    problems: list[ConfigProblem] = []
    known: Collection[str] = list(queues)
    for ci, cascade in enumerate(doc.cascades):
        for ti, tier in enumerate(cascade.tiers):
            where = location_of(cascade.name, tier.queue)
            key = f"cascades[{ci}].tiers[{ti}].queue"
            if tier.queue not in queues:
                hint = did_you_mean(tier.queue, list(known))
                problems.append(
                    ConfigProblem(file, where, key, f"no queue section [{tier.queue}] in queues.conf{hint}")
                )
                continue
            wmsqueue = getattr(queues[tier.queue], "wmsqueue", None)
            if wmsqueue is not None and wmsqueue != cascade.demand:
                problems.append(
                    ConfigProblem(
                        file,
                        where,
                        key,
                        f"queue [{tier.queue}] has wmsqueue = {wmsqueue}, but the cascade's demand is "
                        f"{cascade.demand}",
                        warning=True,
                    )
                )
            submit = queues[tier.queue].plugin_options("batchsubmit")
            backend = submit.join_deadline() if isinstance(submit, SubmitOptions) else None
            mine = tier.provisioning_deadline
            if backend is not None and (mine is None or mine > backend):
                # the backend terminates the VM (its pilot failed, no longer pending) before the
                # tier counts it overdue: the tier would never back off for VMs that do not join
                problems.append(
                    ConfigProblem(
                        file,
                        where,
                        f"cascades[{ci}].tiers[{ti}].provisioning_deadline",
                        f"{'not set' if mine is None else f'{mine:g} s'}, but queue [{tier.queue}] terminates "
                        f"VMs whose node has not joined after {backend:g} s (provisioning_deadline): the tier "
                        f"never backs off for them; set it to at most {backend:g} s",
                        warning=True,
                    )
                )
    return problems


@dataclass(frozen=True)
class SiteFacts:
    """What is known of a tier queue's resource without running it (a simulated site's settings;
    ``None`` = unknown): used to warn about conditions that defeat the policy's intent."""

    capacity: int | None = None  # slots: pilots beyond them wait
    start_delay: float | None = None  # the shortest wait before a pilot can start


def policy_warnings(
    doc: PolicyDocument, *, file: str, sites: Mapping[str, SiteFacts] | None = None
) -> list[ConfigProblem]:
    """Combinations that are valid but defeat the intent (warnings, see docs/policy.md "Which
    conditions make sense together")."""
    out: list[ConfigProblem] = []
    sites = sites or {}
    for ci, cascade in enumerate(doc.cascades):
        index = {t.queue: ti for ti, t in enumerate(cascade.tiers)}
        ordered = cascade.ordered
        groups = cascade.groups
        for gi, group in enumerate(groups):
            for tier in group:
                ti = index[tier.queue]

                def warn(
                    key: str,
                    message: str,
                    tier: Tier = tier,
                    ti: int = ti,
                    ci: int = ci,
                    name: str = cascade.name,
                ) -> None:
                    out.append(
                        ConfigProblem(
                            file,
                            location_of(name, tier.queue),
                            f"cascades[{ci}].tiers[{ti}].{key}",
                            message,
                            warning=True,
                        )
                    )

                _tier_warnings(tier, gi == len(groups) - 1, len(group), sites.get(tier.queue), warn)
        for earlier, later in itertools.pairwise(ordered):
            if later.cost_per_hour < earlier.cost_per_hour and earlier.priority == later.priority is None:
                out.append(
                    ConfigProblem(
                        file,
                        location_of(cascade.name, later.queue),
                        f"cascades[{ci}].tiers[{index[later.queue]}].cost_per_hour",
                        f"{later.queue} ({later.cost_per_hour:g}/h) is cheaper than {earlier.queue} "
                        f"({earlier.cost_per_hour:g}/h), which is filled first; if that is not what you "
                        "mean, list the cheaper tier first",
                        warning=True,
                    )
                )
    return out


def _tier_warnings(
    tier: Tier, last: bool, group_size: int, site: SiteFacts | None, warn: Callable[[str, str], None]
) -> None:
    explicit = tier.model_fields_set
    spill = set(tier.spill_on)
    full = tier.full
    capacity = site.capacity if site is not None else None
    if tier.cap is not None and capacity is not None and tier.cap > capacity and "capped" in spill:
        warn(
            "cap",
            f"cap {tier.cap} is more than the {capacity} slots of [{tier.queue}], with 'capped' in spill_on: "
            f"{tier.queue} is filled to {tier.cap} and the demand above that spills in the very first cycle, "
            f"while {tier.cap - capacity} of its pilots wait for slots; set cap to at most {capacity}, or "
            "drop 'capped' from spill_on and let a full condition move the demand on",
        )
    if "spill_on" in explicit:
        if last and spill:
            warn("spill_on", "the last tier has nothing to spill to: spill_on has no effect here")
        if "capped" in spill and tier.cap is None:
            warn("spill_on", "'capped' in spill_on, but the tier has no cap: it never applies")
        if "quota" in spill and not tier.quotas:
            warn("spill_on", "'quota' in spill_on, but the tier has no quotas: it never applies")
        if "full" in spill and full is None:
            warn("spill_on", "'full' in spill_on, but the tier has no full condition: it never applies")
    if full is not None and "full" not in spill and not last:
        warn(
            "spill_on",
            "the tier has a full condition but 'full' is not in spill_on: while it is full, the demand "
            "waits for it and later tiers get nothing",
        )
    if full is not None and full.oldest_pending is not None:
        deadline = tier.provisioning_deadline
        if deadline is not None and deadline <= full.oldest_pending:
            warn(
                "full.oldest_pending",
                f"provisioning_deadline ({deadline:g} s) is not longer than full.oldest_pending "
                f"({full.oldest_pending:g} s): pilots are written off before the tier can count as full",
            )
        delay = site.start_delay if site is not None else None
        if delay is not None and delay >= full.oldest_pending:
            warn(
                "full.oldest_pending",
                f"every pilot of [{tier.queue}] waits at least {delay:g} s to start, not less than "
                f"full.oldest_pending ({full.oldest_pending:g} s): the tier counts as full after every submission",
            )
    if "weight" in explicit and group_size == 1:
        warn("weight", "no other tier has this priority: weight has no effect")
