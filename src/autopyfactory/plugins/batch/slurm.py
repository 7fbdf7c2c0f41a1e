"""``batchsubmitplugin = Slurm`` / ``batchstatusplugin = Slurm``: pilots as Slurm batch jobs.

The flow, targets, transports and error handling are the shared command base (``command.py``);
this module has Slurm's argv builders (``submit_argv``, ``status_argv``, ``cancel_argv``,
``drain_argv``, ``sacct_argv``), state table, pure parsers (tested on recorded output), error
texts, and what only Slurm does: draining nodes and settling finished pilots from sacct.

* Submit: one ``sbatch --parsable`` per cycle, a job array (``--array=0-<n-1>``) when n > 1, the
  pilot script on stdin. Every pilot carries ``apf:<factory>:<queue>:<intent>`` as its job name
  and comment, so status matches pilots by tag and adopts them after a restart.
* Status: one ``squeue --me -r`` per cluster per poll (array tasks expanded), filtered to this
  factory's tag. A pilot that leaves squeue is settled from ``sacct`` (state, exit code) when
  accounting is on, and reported ``unknown`` (never ``done``) when it is off.
* Cancel: ``scancel``. Retire: drain the nodes that only this factory's pilots occupy
  (``scontrol update nodename=... state=DRAIN``); with ``kill`` the pilots are cancelled.
"""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Hashable, Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from pydantic import Field, field_validator

from autopyfactory.model import BatchSnapshot, Pilot, PilotState, PilotTags
from autopyfactory.plugins.base import BackendError
from autopyfactory.plugins.batch import script as pilot_script
from autopyfactory.plugins.batch.command import (
    CommandEndpoint,
    CommandRules,
    CommandStatus,
    CommandSubmit,
    CommandSubmitOptions,
    CommandTarget,
    StateTable,
    chunks,
)
from autopyfactory.plugins.transport.base import RemoteOptions, Result

if TYPE_CHECKING:
    from autopyfactory.plugins.base import FactoryContext

log = logging.getLogger(__name__)

# squeue/sacct print times as epoch seconds with this in their environment
_EPOCH_ENV = ["env", "SLURM_TIME_FORMAT=%s"]
# job name last: it is free text and may hold the separator
SQUEUE_FORMAT = "%i|%T|%r|%N|%V|%S|%j"
SACCT_FIELDS = "JobID,State,ExitCode,Submit,Start,End,NodeList,JobName"
_CHUNK = 500  # ids per scancel/sacct call (keeps argv short)

_TIME = re.compile(r"^(\d+|\d+:\d{1,2}|\d+:\d{1,2}:\d{1,2}|\d+-\d+|\d+-\d+:\d{1,2}|\d+-\d+:\d{1,2}:\d{1,2})$")
_MEMORY = re.compile(r"^\d+[KMGT]?$", re.IGNORECASE)


# ---------------------------------------------------------------------------------------------
# config


class SlurmTargetOptions(RemoteOptions):
    """Where the Slurm commands run: this machine (no host) or a head node over SSH."""

    cluster: str | None = Field(None, description="Slurm cluster name, passed as --clusters when set")


class SlurmSubmitOptions(SlurmTargetOptions, CommandSubmitOptions):
    partition: str | None = Field(None, description="Slurm partition (--partition)")
    account: str | None = Field(None, description="account charged (--account)")
    qos: str | None = Field(None, description="quality of service (--qos)")
    walltime: str | None = Field(None, description="minutes, or a Slurm time such as 1-12:00:00")
    cores: int | None = Field(None, ge=1, le=100_000, description="CPUs per pilot (--cpus-per-task)")
    memory: str | None = Field(None, description="memory per pilot: MB, or with a K/M/G/T suffix")
    export: str = Field("NONE", description="sbatch --export: NONE keeps the factory's environment out")
    workdir: str | None = Field(None, description="pilot working directory on the cluster (--chdir)")
    logdir: str | None = Field(
        None,
        description="directory on the cluster for pilot output; default: APF's baseLogDir tree when local",
    )
    sacct: bool = Field(True, description="settle finished pilots from sacct (needs Slurm accounting)")
    array_throttle: int | None = Field(
        None, alias="array.throttle", ge=1, description="most array tasks running at once (--array=...%N)"
    )

    @field_validator("walltime")
    @classmethod
    def _walltime(cls, value: str | None) -> str | None:
        if value is None:
            return None
        value = value.strip()
        if value.upper() in ("UNLIMITED", "INFINITE") or _TIME.match(value):
            return value
        raise ValueError("walltime must be minutes or a Slurm time ([days-]hours:minutes:seconds, ...)")

    @field_validator("memory")
    @classmethod
    def _memory(cls, value: str | None) -> str | None:
        if value is None or _MEMORY.match(value.strip()):
            return value.strip() if value else value
        raise ValueError("memory must be MB or a number with a K/M/G/T suffix, e.g. 4000 or 4G")


class SlurmStatusOptions(SlurmTargetOptions):
    """Status keys; keys the queue does not set come from its batchsubmit.slurm.* keys (StatusKeys)."""

    sacct: bool | None = Field(None, description="default: batchsubmit.slurm.sacct")
    settle_polls: int = Field(3, ge=1, description="polls to wait for sacct to know a finished pilot")
    keep: float = Field(3600.0, ge=0, description="seconds a settled pilot stays in snapshots")


@dataclass(frozen=True, slots=True)
class SlurmTarget(CommandTarget):
    cluster: str | None = None

    @property
    def label(self) -> str:
        return f"{self.system}:{self.where}" + (f"/{self.cluster}" if self.cluster else "")


@dataclass(frozen=True, slots=True)
class SlurmEndpoint(CommandEndpoint):
    sacct: bool = True
    settle_polls: int = 3
    keep: float = 3600.0


# ---------------------------------------------------------------------------------------------
# parsing (pure)


@dataclass(frozen=True, slots=True)
class JobRow:
    """One job (or array task) as squeue or sacct printed it."""

    job_id: str
    state: str
    reason: str = ""
    nodes: str = ""
    submitted: float | None = None
    started: float | None = None
    ended: float | None = None
    exit_code: int | None = None
    name: str = ""


STATES = StateTable(
    "Slurm",
    {
        PilotState.PENDING: "PENDING CONFIGURING REQUEUED REQUEUE_FED POWER_UP_NODE",
        PilotState.RUNNING: "RUNNING COMPLETING SIGNALING STAGE_OUT RESIZING",
        PilotState.HELD: "SUSPENDED STOPPED REQUEUE_HOLD RESV_DEL_HOLD",
        PilotState.DONE: "COMPLETED",
        PilotState.FAILED: "FAILED TIMEOUT NODE_FAIL OUT_OF_MEMORY BOOT_FAIL DEADLINE PREEMPTED",
        PilotState.CANCELLED: "CANCELLED REVOKED",
    },
)
_HELD_REASONS = {"JobHeldUser", "JobHeldAdmin"}


def map_state(state: str, reason: str = "") -> PilotState:
    """Slurm job state (+ pending reason) -> pilot state; an unknown state is ``unknown`` with a warning."""
    word = state.split()[0].rstrip("+").upper() if state.strip() else ""
    if word == "PENDING" and reason in _HELD_REASONS:
        return PilotState.HELD
    return STATES(word)


def _epoch(text: str) -> float | None:
    text = text.strip()
    return float(text) if text.isdigit() and text != "0" else None


def parse_exit_code(text: str) -> int | None:
    """sacct's ``rc:signal``; a signal becomes 128 + signal, as a shell reports it."""
    rc, sep, sig = text.strip().partition(":")
    if not rc.isdigit():
        return None
    if sep and sig.isdigit() and int(sig):
        return 128 + int(sig)
    return int(rc)


def _lines(text: str) -> Iterator[str]:
    for line in text.splitlines():
        line = line.rstrip("\r")
        # with --clusters, squeue and sacct print a "CLUSTER: name" header
        if line.strip() and not line.startswith("CLUSTER:"):
            yield line


def parse_squeue(text: str) -> list[JobRow]:
    """Rows of ``squeue -h -r -o SQUEUE_FORMAT`` (times as epoch seconds).

    Written for speed: a poll of a big cluster parses tens of thousands of lines.
    """
    rows = []
    append = rows.append
    for line in text.splitlines():
        parts = line.rstrip("\r").split("|", 6)
        if len(parts) != 7:
            if line.strip() and not line.startswith("CLUSTER:"):
                log.warning("ignoring squeue line %r", line)
            continue
        job_id, state, reason, nodes, submitted, started, name = parts
        mapped = _state(state, reason)
        append(
            JobRow(
                job_id,
                state,
                reason,
                nodes,
                float(submitted) if submitted.isdigit() else None,
                # for a pending job squeue's start time is an estimate
                float(started) if started.isdigit() and mapped not in _NOT_STARTED else None,
                None,
                None,
                name,
            )
        )
    return rows


def parse_sacct(text: str) -> list[JobRow]:
    """Rows of ``sacct -X -n -P -o SACCT_FIELDS``.

    Pending array ranges (``12_[3-9]``) are expanded; a task's own row wins over a range that
    still lists it (sacct prints both while a range is being split up).
    """
    own: dict[str, JobRow] = {}
    ranged: dict[str, JobRow] = {}
    for line in _lines(text):
        parts = line.split("|", 7)
        if len(parts) != 8:
            log.warning("ignoring sacct line %r", line)
            continue
        job_id, state, exit_code, submitted, started, ended, nodes, name = parts
        nodes = "" if nodes.strip() in ("None assigned", "") else nodes.strip()
        ids = expand_job_ids(job_id.strip())
        for one in ids:
            row = JobRow(
                one,
                state.strip(),
                "",
                nodes,
                _epoch(submitted),
                _epoch(started),
                _epoch(ended),
                parse_exit_code(exit_code),
                name,
            )
            (own if ids == [job_id.strip()] else ranged)[one] = row
    return list(own.values()) + [row for key, row in ranged.items() if key not in own]


def parse_sbatch(text: str) -> str:
    """The job id from ``sbatch --parsable`` (``123`` or ``123;cluster``)."""
    for line in reversed(text.strip().splitlines()):
        job_id = line.strip().split(";", 1)[0]
        if job_id.isdigit():
            return job_id
    raise ValueError(f"no job id in sbatch output {text.strip()[:200]!r}")


def _ranges(spec: str) -> Iterator[int]:
    """``1-3,7`` (an optional ``%throttle`` ignored) -> 1, 2, 3, 7."""
    spec = spec.split("%", 1)[0]
    for part in spec.split(","):
        if not part:
            continue
        lo, sep, hi = part.partition("-")
        step = 1
        if ":" in hi:
            hi, step_text = hi.split(":", 1)
            step = int(step_text)
        yield from range(int(lo), int(hi if sep else lo) + 1, step)


def expand_job_ids(job_id: str) -> list[str]:
    """``12_[1-3]`` -> ``12_1 12_2 12_3``; anything else is returned as is."""
    m = re.fullmatch(r"(\d+)_\[([0-9,\-:%]+)\]", job_id)
    if not m:
        return [job_id]
    return [f"{m.group(1)}_{i}" for i in _ranges(m.group(2))]


def expand_hostlist(text: str) -> list[str]:
    """Slurm host lists: ``n[1-3,5],gpu01`` -> ``n1 n2 n3 n5 gpu01`` (zero padding kept)."""
    hosts: list[str] = []
    for item in re.findall(r"[^,\[]+(?:\[[^\]]*\])?[^,\[]*", text.strip()):
        m = re.fullmatch(r"([^\[]*)\[([^\]]*)\](.*)", item)
        if not m:
            if item:
                hosts.append(item)
            continue
        prefix, spec, suffix = m.groups()
        for part in spec.split(","):
            lo, sep, hi = part.partition("-")
            if not sep:
                hosts.append(f"{prefix}{lo}{suffix}")
                continue
            width = len(lo) if lo.startswith("0") else 0
            hosts += [f"{prefix}{i:0{width}d}{suffix}" for i in range(int(lo), int(hi) + 1)]
    return hosts


_NOT_STARTED = frozenset({PilotState.PENDING, PilotState.HELD})


@functools.lru_cache(maxsize=1024)
def _state(state: str, reason: str) -> PilotState:
    """``map_state`` memoised: a poll sees few distinct (state, reason) pairs."""
    return map_state(state, reason)


def row_to_pilot(row: JobRow, tags: PilotTags) -> Pilot:
    state = _state(row.state, row.reason)
    return Pilot(
        backend_id=row.job_id,
        queue=tags.queue,
        state=state,
        intent_id=tags.intent_id,
        submitted_at=row.submitted,
        started_at=row.started,
        ended_at=row.ended,
        node=row.nodes or None,
        exit_code=row.exit_code,
    )


def array_parent(job_id: str) -> str:
    return job_id.split("_", 1)[0]


# ---------------------------------------------------------------------------------------------
# errors

RULES = CommandRules(
    system="Slurm",
    controller="slurmctld",
    unreachable=(
        "Unable to contact slurm controller",
        "Socket timed out on send/recv",
        "Zero Bytes were transmitted or received",
        "Connection refused",
    ),
    capacity=(
        "QOSMaxSubmitJob",
        "AssocMaxSubmitJob",
        "MaxSubmitJobs",
        "Job violates accounting/QOS policy",
        "temporarily unable to accept job",
        "MaxJobCount",
        "Resource temporarily unavailable",
    ),
    # scancel of a job that is gone (printed by older Slurm, or by any with -v)
    gone=re.compile(
        r"^scancel: error: Kill job error on job id \S+: "
        r"(Invalid job id specified|Job/step already completing or completed)$"
    ),
)


def command_error(target: str, what: str, result: Result) -> BackendError:
    """A clear BackendError for a failed Slurm command."""
    return RULES.error(target, what, result)


# ---------------------------------------------------------------------------------------------
# commands (data)


class SlurmCommands:
    """The argv builders both plugins share."""

    command_target: SlurmTarget

    def _clusters(self) -> list[str]:
        cluster = self.command_target.cluster
        return [f"--clusters={cluster}"] if cluster else []

    def status_argv(self, all_users: bool = False) -> list[str]:
        """One squeue for every pilot of the cluster: array tasks expanded, times as epochs."""
        who = [] if all_users else ["--me"]
        return [*_EPOCH_ENV, "squeue", *self._clusters(), *who, "-h", "-r", "-o", SQUEUE_FORMAT]

    def sacct_argv(self, job_ids: Sequence[str]) -> list[str]:
        parents = sorted({array_parent(j) for j in job_ids}, key=lambda s: (len(s), s))
        return [
            *_EPOCH_ENV, "sacct", *self._clusters(), "-X", "-n", "-P",
            "-j", ",".join(parents), "-o", SACCT_FIELDS,
        ]  # fmt: skip

    def cancel_argv(self, job_ids: Sequence[str]) -> list[str]:
        return ["scancel", *self._clusters(), *job_ids]

    def drain_argv(self, nodes: Sequence[str], reason: str = "apf retire") -> list[str]:
        return [
            "scontrol", *self._clusters(), "update", f"nodename={','.join(nodes)}",
            "state=DRAIN", f"reason={reason}",
        ]  # fmt: skip


# ---------------------------------------------------------------------------------------------
# submit


class SlurmSubmit(SlurmCommands, CommandSubmit):
    name = "Slurm"
    Options = SlurmSubmitOptions
    Target = SlurmTarget
    rules = RULES
    directive = "#SBATCH"
    chunk_size = _CHUNK
    options: SlurmSubmitOptions

    # -- data ----------------------------------------------------------------------------------

    def log_dir(self, now: float) -> str | None:
        if self.options.logdir:
            return self.options.logdir
        if self.command_target.host:
            return None  # baseLogDir is a path on the factory's machine, not on the head node
        return pilot_script.log_dir(self.factory, self.queue.name, now, self.factory.settings.baseLogDir)

    def log_url(self, now: float) -> str | None:
        if self.options.logurl:
            return self.options.logurl
        if self.options.logdir or self.command_target.host:
            return None
        return pilot_script.log_dir(self.factory, self.queue.name, now, self.factory.settings.baseLogDirUrl)

    def gtag_prefix(self, now: float) -> str | None:
        return self.log_url(now) or self.log_dir(now)

    def output_dir(self, now: float) -> str | None:
        return self.log_dir(now)  # sbatch --output needs it to exist

    def script_output_dir(self) -> str | None:
        return None  # sbatch --output names the file after the job id: no redirect needed

    def directives(self) -> list[str]:
        o = self.options
        out = ["--nodes=1"]
        if o.partition:
            out.append(f"--partition={o.partition}")
        if o.account:
            out.append(f"--account={o.account}")
        if o.qos:
            out.append(f"--qos={o.qos}")
        if o.walltime:
            out.append(f"--time={o.walltime}")
        if o.cores:
            out += ["--ntasks=1", f"--cpus-per-task={o.cores}"]
        if o.memory:
            out.append(f"--mem={o.memory}")
        if o.workdir:
            out.append(f"--chdir={o.workdir}")
        for line in pilot_script.split_lines(o.extra):
            out.append(line.removeprefix("#SBATCH").strip())
        return out

    def cid_setup(self) -> str:
        return (
            'APFCID="${SLURM_JOB_ID}"\n'
            'if [ -n "${SLURM_ARRAY_JOB_ID:-}" ]; then APFCID="${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}"; fi'
        )

    def submit_argv(self, n: int, tags: PilotTags, now: float) -> list[str]:
        tag = tags.job_name()
        argv = [
            "sbatch", *self._clusters(), "--parsable",
            f"--job-name={tag}", f"--comment={tag}", f"--export={self.options.export}",
        ]  # fmt: skip
        logdir = self.log_dir(now)
        if n > 1:
            throttle = f"%{self.options.array_throttle}" if self.options.array_throttle else ""
            argv.append(f"--array=0-{n - 1}{throttle}")
            argv.append(f"--output={logdir}/%A_%a.out" if logdir else "--output=/dev/null")
        else:
            argv.append(f"--output={logdir}/%j.out" if logdir else "--output=/dev/null")
        return argv

    def submitted_ids(self, output: str, n: int) -> list[str]:
        job_id = parse_sbatch(output)
        return [job_id] if n == 1 else [f"{job_id}_{i}" for i in range(n)]

    # -- actions -------------------------------------------------------------------------------

    def retire(self, backend_ids: Sequence[str], kill: bool = False) -> None:
        """Drain the nodes the pilots hold alone; cancel pilots that have not started; kill = scancel."""
        if not backend_ids:
            return
        if kill:
            self.cancel(backend_ids)
            return
        rows = parse_squeue(self.check(self.status_argv(all_users=True)).stdout)
        plan = plan_retire(rows, set(backend_ids), f"apf:{self.factory.factory_id}:")
        if plan.cancel:
            self.cancel(plan.cancel)
        if plan.shared:
            log.warning(
                "queue %s: not draining %s: other jobs run there too (pilots %s keep running)",
                self.queue.name,
                ",".join(plan.shared),
                ",".join(plan.kept),
            )
        if plan.drain:
            self.check(self.drain_argv(plan.drain), what=f"scontrol update nodename={','.join(plan.drain)}")
            log.info(
                "queue %s: draining %s for pilots %s", self.queue.name, ",".join(plan.drain), plan.drained
            )


@dataclass(frozen=True, slots=True)
class RetirePlan:
    cancel: list[str]  # not started: cancel outright
    drain: list[str]  # nodes only this factory's pilots occupy
    drained: list[str]  # the pilots on those nodes
    shared: list[str]  # nodes shared with other jobs: left alone
    kept: list[str]  # the pilots on shared nodes


def plan_retire(rows: Iterable[JobRow], wanted: set[str], own_prefix: str) -> RetirePlan:
    """Pure: which pilots to cancel and which nodes to drain, from an all-users squeue."""
    on_node: dict[str, list[JobRow]] = {}
    cancel, running = [], []
    for row in rows:
        state = map_state(row.state, row.reason)
        if row.job_id in wanted and state in (PilotState.PENDING, PilotState.HELD):
            cancel.append(row.job_id)
        if state is PilotState.RUNNING:
            for node in expand_hostlist(row.nodes):
                on_node.setdefault(node, []).append(row)
            if row.job_id in wanted:
                running.append(row)
    drain, shared, drained, kept = set(), set(), [], []
    for row in running:
        nodes = expand_hostlist(row.nodes)
        if nodes and all(r.name.startswith(own_prefix) for n in nodes for r in on_node[n]):
            drain.update(nodes)
            drained.append(row.job_id)
        else:
            shared.update(nodes)
            kept.append(row.job_id)
    return RetirePlan(sorted(cancel), sorted(drain), drained, sorted(shared - drain), kept)


# ---------------------------------------------------------------------------------------------
# status


class SlurmStatus(SlurmCommands, CommandStatus):
    name = "Slurm"
    Options = SlurmStatusOptions
    Submit = SlurmSubmit
    Target = SlurmTarget
    Endpoint = SlurmEndpoint
    rules = RULES
    settles = True  # sacct knows what became of pilots that left squeue
    ep: SlurmEndpoint

    def __init__(self, endpoint: Hashable, factory: FactoryContext) -> None:
        super().__init__(endpoint, factory)
        self._live: dict[str, Pilot] = {}  # last poll's pilots
        self._settling: dict[str, tuple[Pilot, int]] = {}  # left squeue, not settled yet
        self._settled: dict[str, tuple[Pilot, float]] = {}  # final, reported until keep expires
        self._accounting_off = False

    def pilots(self, output: str, now: float) -> list[Pilot]:
        pilots = []
        tags_of: dict[str, PilotTags | None] = {}  # the pilots of one array share one name
        prefix = self._own_prefix
        for row in parse_squeue(output):
            name = row.name
            if not name.startswith(prefix):
                continue
            if name not in tags_of:
                tags_of[name] = PilotTags.parse_job_name(name)
            tags = tags_of[name]
            if tags is not None:
                pilots.append(row_to_pilot(row, tags))
        return pilots

    def poll(self, now: float) -> BatchSnapshot:
        current = {p.backend_id: p for p in super().poll(now).pilots}
        for job_id, pilot in self._live.items():
            if job_id not in current and job_id not in self._settled:
                self._settling.setdefault(job_id, (pilot, 0))
        for job_id in current:
            self._settling.pop(job_id, None)  # back in squeue (e.g. requeued)
            self._settled.pop(job_id, None)
        self._live = current
        if self._settling:
            self._settle(now)
        if self.ep.keep >= 0:
            self._settled = {k: v for k, v in self._settled.items() if now - v[1] <= self.ep.keep}
        pilots = list(current.values())
        pilots += [p for p, _ in self._settled.values()]
        pilots += [p for p, _ in self._settling.values()]
        return BatchSnapshot(now, tuple(pilots))

    def settle(self, pilots: Sequence[Pilot], now: float) -> list[Pilot]:
        """Final state of pilots no longer in squeue (e.g. the store's open pilots after a restart).

        Returns them settled from sacct, or ``unknown`` when accounting is off or sacct has no record.
        """
        for pilot in pilots:
            self._settling.setdefault(pilot.backend_id, (pilot, self.ep.settle_polls - 1))
        self._settle(now)
        return [self._settled[p.backend_id][0] for p in pilots if p.backend_id in self._settled] + [
            self._settling[p.backend_id][0] for p in pilots if p.backend_id in self._settling
        ]

    def _settle(self, now: float) -> None:
        ids = sorted(self._settling)
        found: dict[str, JobRow] = {}
        if self.ep.sacct and not self._accounting_off:
            for chunk in chunks(ids, _CHUNK):
                res = self.run(self.sacct_argv(chunk))
                if res.rc != 0:
                    if "accounting storage is disabled" in res.brief().lower():
                        self._accounting_off = True
                        log.warning(
                            "%s: Slurm accounting is disabled; finished pilots are reported unknown",
                            self.target_name,
                        )
                    else:
                        log.warning("%s: sacct failed, will retry: %s", self.target_name, res.brief())
                    break
                found.update({r.job_id: r for r in parse_sacct(res.stdout)})
        for job_id in ids:
            pilot, attempts = self._settling[job_id]
            row = found.get(job_id)
            if row is None and "_" in job_id:
                # array tasks cancelled before they were split off have no row of their own:
                # sacct shows only the array's record (e.g. "26 CANCELLED")
                row = found.get(array_parent(job_id))
            state = map_state(row.state) if row else None
            if (
                row is not None
                and state is PilotState.FAILED
                and row.exit_code == 0
                and attempts + 1 < self.ep.settle_polls
            ):
                # slurmdbd can record FAILED before the exit code (0:0 for a moment): ask again
                self._settling[job_id] = (pilot, attempts + 1)
                continue
            if row is not None and state is not None and state.final:
                settled = replace(
                    pilot,
                    state=state,
                    exit_code=row.exit_code,
                    started_at=row.started or pilot.started_at,
                    ended_at=row.ended,
                    node=row.nodes or pilot.node,
                )
            elif (not self.ep.sacct or self._accounting_off) or attempts + 1 >= self.ep.settle_polls:
                settled = replace(pilot, state=PilotState.UNKNOWN)
            else:
                self._settling[job_id] = (pilot, attempts + 1)
                continue
            del self._settling[job_id]
            self._settled[job_id] = (settled, now)
