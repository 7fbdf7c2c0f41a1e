"""``wmsstatusplugin = Condor``: an HTCondor schedd as the workload system.

Payload jobs are counted per value of their queue attribute (``wmsstatus.condor.queueskey``,
default ``MATCH_APF_QUEUE``; APF read this key but always used MATCH_APF_QUEUE), mapped as APF's
``CONDORWMSSTATUS-JOBSTATUS2INFO``: 0,1 -> ready; 2,6 -> running; 3,4 -> done; 5 -> failed
(7, suspended, is not counted). The ``ANY`` bucket sums every job that has the attribute, so a
queue with ``wmsqueue = ANY`` serves them all. One query per poll, constrained to jobs that carry
the attribute (plus ``wmsstatus.condor.constraint`` when set: a queue watching ``ANY`` in the
schedd its own VM jobs live in should exclude them, e.g. ``JobUniverse != 9``) and projected to
the two attributes needed. The site status is always ``online`` (APF: "ok").
"""

from __future__ import annotations

import re
from collections.abc import Hashable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from pydantic import Field, field_validator

from autopyfactory.model import Demand, SiteStatus, WmsSnapshot
from autopyfactory.plugins.base import FactoryContext, WmsStatusPlugin
from autopyfactory.plugins.batch.condor.schedd import ScheddApi, ScheddKeys, attr_value, connect
from autopyfactory.plugins.keys import HTCONDOR, NeedsModules

if TYPE_CHECKING:
    from autopyfactory.config.models import QueueConfig

ANY = "ANY"
# JobStatus -> Demand field
WMS_STATES: Mapping[int, str] = {
    0: "ready",
    1: "ready",
    2: "running",
    6: "running",
    3: "done",
    4: "done",
    5: "failed",
}

_ATTR = re.compile(r"^[A-Za-z_][A-Za-z0-9_.]*$")


class CondorWmsOptions(ScheddKeys):
    queueskey: str = Field("MATCH_APF_QUEUE", description="the job attribute naming the WMS queue")
    constraint: str | None = Field(None, description="extra ClassAd constraint on the counted jobs")

    @field_validator("queueskey")
    @classmethod
    def _attr_name(cls, value: str) -> str:
        if not _ATTR.match(value):
            raise ValueError(f"{value!r} is not a ClassAd attribute name")
        return value


def wms_constraint(queueskey: str, extra: str | None = None) -> str:
    base = f"{queueskey} =!= undefined"
    return f"({base}) && ({extra})" if extra else base


def demands_from_ads(ads: Iterable[Mapping[str, Any]], queueskey: str, now: float) -> dict[str, Demand]:
    """Per queue value, jobs by mapped state, plus the ``ANY`` bucket (pure)."""
    buckets: dict[str, dict[str, int]] = {}
    total = dict.fromkeys(("ready", "running", "done", "failed"), 0)
    for ad in ads:
        queue = attr_value(ad, queueskey)
        status = attr_value(ad, "JobStatus")
        field = WMS_STATES.get(status) if isinstance(status, int) else None
        if not queue or field is None:
            continue
        bucket = buckets.setdefault(str(queue), dict.fromkeys(total, 0))
        bucket[field] += 1
        total[field] += 1
    out = {
        q: Demand(wmsqueue=q, site_status=SiteStatus.ONLINE.value, time=now, **c) for q, c in buckets.items()
    }
    # a real queue literally named ANY is folded into the synthetic bucket (APF did the same)
    out[ANY] = Demand(wmsqueue=ANY, site_status=SiteStatus.ONLINE.value, time=now, **total)
    return out


class CondorWms(NeedsModules, WmsStatusPlugin):
    requires = (HTCONDOR,)
    name = "Condor"
    Options = CondorWmsOptions

    @classmethod
    def endpoint(cls, queue: QueueConfig, factory: FactoryContext) -> Hashable:
        opts = queue.plugin_options("wmsstatus")
        assert isinstance(opts, CondorWmsOptions)
        return (cls.name, opts.address(), opts.queueskey, opts.constraint)

    def __init__(self, endpoint: Hashable, factory: FactoryContext) -> None:
        super().__init__(endpoint, factory)
        _, self.address, self.queueskey, extra = endpoint  # type: ignore[misc]
        self.constraint = wms_constraint(self.queueskey, extra)
        self._schedd: ScheddApi | None = None

    @property
    def schedd(self) -> ScheddApi:
        if self._schedd is None:
            self._schedd = connect(self.address)
        return self._schedd

    def poll(self, now: float, wmsqueues: frozenset[str]) -> WmsSnapshot:
        ads = self.schedd.query(self.constraint, [self.queueskey, "JobStatus"])
        return WmsSnapshot(time=now, demands=demands_from_ads(ads, self.queueskey, now))
