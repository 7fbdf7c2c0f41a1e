"""``wmsstatusplugin = Slurm``: a Slurm cluster's queue as the workload system.

The demand of a queue is the jobs waiting and running in the Slurm partition its ``wmsqueue``
names (``ANY``: every partition). In the elastic setup, a VM queue watches the partition its
pilot queue submits into: the pilots waiting there are the VM queue's demand (the Slurm
counterpart of ``wmsstatusplugin = Condor``).

* One ``squeue`` per cluster per poll, whatever the number of queues and filters: queues that
  reach the same cluster (``wmsstatus.slurm.host``/``cluster``...) share one poller, and their
  filters (``account``, ``qos``, ``name``) are applied to that one listing, each filtered demand
  under its own key (``demand_key``: ``cloud?account=atlas``).
* Array tasks are expanded (``-r``), so a pending array of 8 is 8 ready jobs; every user's jobs and
  hidden partitions are listed (``-a``). A job pending in several partitions (``-p a,b``) counts in each.
* States: PENDING -> ``ready``, unless held or waiting for a dependency or a begin time
  (``notready``); RUNNING, CONFIGURING (nodes booting), COMPLETING -> ``running``; SUSPENDED,
  STOPPED and the rest squeue lists -> ``notready``. An unknown state is warned about once and
  not counted. The site status is ``online``.
* Commands run through the shared transport (locally or over SSH, like ``batchsubmit.slurm``);
  squeue missing or slurmctld down is a ``BackendError`` that says so, and the poller backs off.

The parser is a pure function, tested on recorded squeue output.
"""

from __future__ import annotations

import fnmatch
import logging
from collections.abc import Hashable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pydantic import Field, field_validator

from autopyfactory.model import Demand, SiteStatus, WmsSnapshot
from autopyfactory.plugins.base import PluginError, WmsStatusPlugin
from autopyfactory.plugins.batch.command import CommandRunner, program
from autopyfactory.plugins.batch.slurm import RULES, SlurmTarget, SlurmTargetOptions

if TYPE_CHECKING:
    from autopyfactory.config.models import QueueConfig
    from autopyfactory.plugins.base import FactoryContext

log = logging.getLogger(__name__)

ANY = "ANY"
# job id | state | reason | partition(s) | account | qos | job name (last: free text)
SQUEUE_FORMAT = "%i|%T|%r|%P|%a|%q|%j"

_READY_UNLESS = frozenset(
    {
        # held, or waiting for something other than resources: more nodes would not start them
        "JobHeldUser",
        "JobHeldAdmin",
        "Dependency",
        "DependencyNeverSatisfied",
        "BeginTime",
    }
)
_RUNNING = frozenset({"RUNNING", "CONFIGURING", "COMPLETING", "SIGNALING", "STAGE_OUT", "RESIZING"})
_NOTREADY = frozenset(
    {"SUSPENDED", "STOPPED", "REQUEUED", "REQUEUE_FED", "REQUEUE_HOLD", "RESV_DEL_HOLD", "SPECIAL_EXIT"}
)
# squeue lists finished jobs only with -t; if it does, they are not demand
_FINISHED = frozenset(
    {
        "COMPLETED", "CANCELLED", "FAILED", "TIMEOUT", "NODE_FAIL", "PREEMPTED", "BOOT_FAIL",
        "DEADLINE", "OUT_OF_MEMORY", "REVOKED",
    }
)  # fmt: skip
_warned: set[str] = set()


class SlurmWmsOptions(SlurmTargetOptions):
    """Where squeue runs (host, user, port, authprofile, timeout, cluster) and what is counted."""

    account: str | None = Field(None, description="count only jobs of these accounts (comma separated)")
    qos: str | None = Field(None, description="count only jobs with these QOS (comma separated)")
    name: str | None = Field(
        None, description="count only jobs whose name matches this shell pattern, e.g. apf:*:PILOTS:*"
    )

    @field_validator("account", "qos")
    @classmethod
    def _names(cls, value: str | None) -> str | None:
        if value is None:
            return None
        items = sorted({v.strip() for v in value.split(",") if v.strip()})
        if not items:
            raise ValueError("give at least one name (comma separated), or leave the key out")
        if any("|" in v or "?" in v or "&" in v for v in items):
            raise ValueError("names may not contain '|', '?' or '&'")
        return ",".join(items)

    @field_validator("name")
    @classmethod
    def _pattern(cls, value: str | None) -> str | None:
        if value is not None and ("&" in value or not value.strip()):
            raise ValueError("the name pattern may not be empty or contain '&'")
        return value


# ---------------------------------------------------------------------------------------------
# parsing and counting (pure)


@dataclass(frozen=True, slots=True)
class WmsJob:
    """One job (or array task) as squeue printed it."""

    job_id: str
    state: str
    reason: str
    partitions: tuple[str, ...]
    account: str
    qos: str
    name: str


def parse_squeue_wms(text: str) -> list[WmsJob]:
    """Rows of ``squeue -h -r -a -o SQUEUE_FORMAT``; malformed lines are skipped with a warning."""
    rows = []
    for line in text.splitlines():
        line = line.rstrip("\r")
        if not line.strip() or line.startswith("CLUSTER:"):
            continue
        parts = line.split("|", 6)
        if len(parts) != 7:
            log.warning("ignoring squeue line %r", line)
            continue
        job_id, state, reason, partitions, account, qos, name = parts
        rows.append(
            WmsJob(
                job_id.strip(),
                state.strip().split()[0].rstrip("+").upper() if state.strip() else "",
                reason.strip(),
                tuple(p for p in partitions.strip().split(",") if p),
                account.strip(),
                qos.strip(),
                name,
            )
        )
    return rows


def job_field(job: WmsJob) -> str | None:
    """The Demand field a job counts in, or None (finished, or a state we do not know)."""
    state = job.state
    if state == "PENDING":
        return "notready" if job.reason in _READY_UNLESS else "ready"
    if state in _RUNNING:
        return "running"
    if state in _NOTREADY:
        return "notready"
    if state not in _FINISHED and state not in _warned:
        _warned.add(state)
        log.warning("unknown Slurm job state %r: jobs in it are not counted as demand", state)
    return None


def _names(text: str | None) -> frozenset[str] | None:
    return frozenset(text.split(",")) if text else None


@dataclass(frozen=True, slots=True)
class WmsFilter:
    """A queue's filter on the listing; the empty filter counts every job of the partition."""

    accounts: frozenset[str] | None = None
    qos: frozenset[str] | None = None
    name: str | None = None

    def key(self, wmsqueue: str) -> str:
        """The demand key: ``cloud`` or ``cloud?account=a,b&qos=q&name=apf:*``."""
        params = []
        if self.accounts:
            params.append("account=" + ",".join(sorted(self.accounts)))
        if self.qos:
            params.append("qos=" + ",".join(sorted(self.qos)))
        if self.name:
            params.append("name=" + self.name)
        return wmsqueue + ("?" + "&".join(params) if params else "")

    @classmethod
    def parse_key(cls, key: str) -> tuple[str, WmsFilter]:
        wmsqueue, sep, query = key.partition("?")
        if not sep:
            return key, cls()
        fields = dict(p.partition("=")[::2] for p in query.split("&") if p)
        return wmsqueue, cls(_names(fields.get("account")), _names(fields.get("qos")), fields.get("name"))

    def __call__(self, job: WmsJob) -> bool:
        if self.accounts is not None and job.account not in self.accounts:
            return False
        if self.qos is not None and job.qos not in self.qos:
            return False
        return self.name is None or fnmatch.fnmatchcase(job.name, self.name)


def count_demands(jobs: Iterable[WmsJob], keys: Iterable[str], now: float) -> dict[str, Demand]:
    """One Demand per key (``partition[?filter]``, ``ANY`` for every partition)."""
    wanted = [(key, *WmsFilter.parse_key(key)) for key in keys]
    counts = {key: dict.fromkeys(("ready", "notready", "running"), 0) for key, _, _ in wanted}
    for job in jobs:
        field = job_field(job)
        if field is None:
            continue
        for key, partition, flt in wanted:
            if (partition == ANY or partition in job.partitions) and flt(job):
                counts[key][field] += 1
    return {
        key: Demand(wmsqueue=key, site_status=SiteStatus.ONLINE.value, time=now, **c)
        for key, c in counts.items()
    }


# ---------------------------------------------------------------------------------------------
# the poller


@dataclass(frozen=True, slots=True)
class SlurmWmsEndpoint:
    """The cluster squeue reaches; queues whose endpoints compare equal share one poller."""

    target: SlurmTarget
    timeout: float = 60.0

    def __str__(self) -> str:
        return f"Slurm at {self.target.label}"


class SlurmWms(CommandRunner, WmsStatusPlugin):
    name = "Slurm"
    Options = SlurmWmsOptions
    rules = RULES

    @classmethod
    def _options(cls, queue: QueueConfig) -> SlurmWmsOptions:
        opts = queue.plugin_options("wmsstatus")
        return opts if isinstance(opts, SlurmWmsOptions) else SlurmWmsOptions()

    @classmethod
    def endpoint(cls, queue: QueueConfig, factory: FactoryContext) -> Hashable:
        """The cluster only: filters do not split the poller (one squeue per cluster per poll)."""
        o = cls._options(queue)
        target = SlurmTarget.from_keys("slurm", lambda key: getattr(o, key))
        return SlurmWmsEndpoint(target, o.timeout)  # type: ignore[arg-type]

    @classmethod
    def demand_key(cls, queue: QueueConfig, factory: FactoryContext) -> str | None:
        """The queue's partition (its wmsqueue), plus its filter."""
        if not queue.wmsqueue:
            return None
        o = cls._options(queue)
        return WmsFilter(_names(o.account), _names(o.qos), o.name).key(queue.wmsqueue)

    def __init__(self, endpoint: Hashable, factory: FactoryContext) -> None:
        super().__init__(endpoint, factory)
        if not isinstance(endpoint, SlurmWmsEndpoint):
            raise PluginError(f"Slurm WMS poller needs a SlurmWmsEndpoint, got {type(endpoint).__name__}")
        self._connect(factory, endpoint.target, endpoint.timeout, "wmsstatus.slurm")

    def describe_endpoint(self) -> str:
        return f"{self.kind} {self.name} at {self.command_target.label}"

    def transport_state(self) -> str | None:
        state = self.transport.state()
        return None if state == "ok" else state

    def status_argv(self) -> list[str]:
        clusters = [f"--clusters={self.command_target.cluster}"] if self.command_target.cluster else []
        return ["squeue", *clusters, "-h", "-r", "-a", "-o", SQUEUE_FORMAT]

    def poll(self, now: float, wmsqueues: frozenset[str]) -> WmsSnapshot:
        argv = self.status_argv()
        result = self.run(argv)
        if result.rc != 0:
            raise self.rules.error(self.command_target.label, program(argv), result)
        jobs = parse_squeue_wms(result.stdout)
        return WmsSnapshot(time=now, demands=count_demands(jobs, wmsqueues | {ANY}, now))

    def close(self) -> None:
        CommandRunner.close(self)
