"""``batchsubmitplugin = PBS`` / ``batchstatusplugin = PBS``: pilots as PBS Pro or Torque jobs.

Same shape as the Slurm backend: argv builders, pure parsers, a transport runs them.

* Submit: one ``qsub`` per cycle with the pilot script on stdin; n > 1 pilots are one job array
  (``-J 0-<n-1>`` on PBS Pro, ``-t 0-<n-1>`` on Torque). The tag ``apf:<factory>:<queue>:<intent>``
  travels as the job variable ``APF_TAG`` (PBS job names are short and restricted).
* Status: ``qstat -f -t`` (PBS Pro text, ``-x`` adds finished jobs from the history) or
  ``qstat -f -x -t`` (Torque XML), filtered to this factory's tag.
* Cancel: ``qdel``. PBS has no per-job drain, so a peaceful retire leaves running pilots alone;
  ``kill`` deletes them.

No PBS server runs in this project's tests: the parsers are tested on outputs written by hand
from the documented formats (tests/data/batch/).
"""

from __future__ import annotations

import logging
import re
import time
import xml.etree.ElementTree as ET
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from pydantic import Field, field_validator

from autopyfactory.model import BatchSnapshot, Pilot, PilotState, PilotTags
from autopyfactory.plugins.base import (
    BackendError,
    BatchStatusPlugin,
    BatchSubmitPlugin,
    FactoryContext,
    SubmitOptions,
)
from autopyfactory.plugins.batch import script as pilot_script
from autopyfactory.plugins.transport.base import POOL, RemoteOptions, Result, Transport, transport_for

if TYPE_CHECKING:
    from autopyfactory.config.models import QueueConfig

log = logging.getLogger(__name__)

Flavor = Literal["pbspro", "torque"]
_CHUNK = 200


class PBSTargetOptions(RemoteOptions):
    flavor: Flavor = Field("pbspro", description="pbspro (qsub -J arrays) or torque (qsub -t arrays)")


class PBSSubmitOptions(PBSTargetOptions, SubmitOptions):
    queue: str | None = Field(None, description="PBS queue (-q)")
    account: str | None = Field(None, description="account string (-A)")
    walltime: str | None = Field(None, description="minutes or HH:MM:SS")
    cores: int | None = Field(None, ge=1, le=100_000, description="CPU cores per pilot (ncpus)")
    memory: str | None = Field(None, description="memory per pilot in MB, or with a kb/mb/gb suffix")
    extra: str | None = Field(None, description="extra #PBS options, one per line or ';' separated")
    environ: str | None = Field(None, description="NAME=value items added to the pilot environment")
    workdir: str | None = Field(None, description="pilot working directory on the cluster")
    logdir: str | None = Field(None, description="directory on the cluster for pilot output")
    logurl: str | None = Field(
        None, description="URL that serves logdir (GTAG points at <logurl>/<APFCID>.out)"
    )

    @field_validator("walltime")
    @classmethod
    def _walltime(cls, value: str | None) -> str | None:
        if value is None:
            return None
        pbs_walltime(value)
        return value

    @field_validator("environ")
    @classmethod
    def _environ(cls, value: str | None) -> str | None:
        pilot_script.parse_environ(value)
        return value


class PBSStatusOptions(PBSTargetOptions):
    history: bool = Field(True, description="PBS Pro: qstat -x to see finished jobs (needs job history)")


def pbs_walltime(value: str) -> str:
    """Minutes (``90``) or ``[[HH:]MM:]SS`` -> ``HH:MM:SS``."""
    value = value.strip()
    if value.isdigit():
        minutes = int(value)
        return f"{minutes // 60:02d}:{minutes % 60:02d}:00"
    if re.fullmatch(r"\d+:\d{2}:\d{2}", value):
        return value
    raise ValueError("walltime must be minutes or HH:MM:SS")


def pbs_memory(value: str) -> str:
    value = value.strip().lower()
    return f"{value}mb" if value.isdigit() else value


@dataclass(frozen=True, slots=True)
class PBSTarget:
    host: str | None = None
    user: str | None = None
    port: int = 22
    authprofile: str | None = None
    flavor: Flavor = "pbspro"

    @property
    def label(self) -> str:
        where = "local" if not self.host else f"{self.user + '@' if self.user else ''}{self.host}:{self.port}"
        return f"pbs:{where}"

    def transport(self, factory: FactoryContext, where: str) -> Transport:
        return transport_for(
            factory, self.host, user=self.user, port=self.port, authprofile=self.authprofile, where=where
        )


# ---------------------------------------------------------------------------------------------
# parsing (pure)


@dataclass(frozen=True, slots=True)
class PBSJob:
    job_id: str
    state: str
    tag: str | None
    exit_status: int | None = None
    submitted: float | None = None
    started: float | None = None
    ended: float | None = None
    node: str | None = None
    attrs: dict[str, str] = field(default_factory=dict)


_STATES = {
    "Q": PilotState.PENDING,
    "W": PilotState.PENDING,
    "T": PilotState.PENDING,
    "M": PilotState.PENDING,
    "H": PilotState.HELD,
    "S": PilotState.HELD,
    "U": PilotState.HELD,
    "R": PilotState.RUNNING,
    "E": PilotState.RUNNING,
    "B": PilotState.RUNNING,
}
_warned: set[str] = set()
KILLED_BY_QDEL = 271  # 256 + SIGTERM: what PBS reports for a job deleted while running


def map_state(state: str, exit_status: int | None) -> PilotState:
    state = state.strip().upper()
    if state in _STATES:
        return _STATES[state]
    if state in ("F", "X", "C"):  # finished (Pro history), finished subjob (Pro), completed (Torque)
        if exit_status is None:
            return PilotState.UNKNOWN
        if exit_status == 0:
            return PilotState.DONE
        if exit_status == KILLED_BY_QDEL:
            return PilotState.CANCELLED
        return PilotState.FAILED
    if state not in _warned:
        _warned.add(state)
        log.warning("unknown PBS job state %r: pilots in it are counted as unknown", state)
    return PilotState.UNKNOWN


def _variable(variables: str, name: str) -> str | None:
    for item in variables.split(","):
        key, sep, value = item.strip().partition("=")
        if sep and key == name:
            return value
    return None


def _ctime(text: str | None) -> float | None:
    """PBS Pro text times (``Mon Jan  1 10:00:00 2024``, local time) or Torque epoch seconds."""
    if not text:
        return None
    text = text.strip()
    if text.isdigit():
        return float(text)
    try:
        return time.mktime(time.strptime(" ".join(text.split()), "%a %b %d %H:%M:%S %Y"))
    except ValueError:
        return None


def _int(text: str | None) -> int | None:
    try:
        return int(text.strip()) if text is not None else None
    except ValueError:
        return None


def _job(attrs: dict[str, str]) -> PBSJob:
    job_id = attrs.get("Job_Id", "")
    exit_status = _int(attrs.get("Exit_status", attrs.get("exit_status")))
    host = attrs.get("exec_host")
    return PBSJob(
        job_id=job_id,
        state=attrs.get("job_state", ""),
        tag=_variable(attrs.get("Variable_List", ""), "APF_TAG"),
        exit_status=exit_status,
        submitted=_ctime(attrs.get("ctime") or attrs.get("qtime")),
        started=_ctime(attrs.get("stime") or attrs.get("start_time")),
        ended=_ctime(attrs.get("obittime") or attrs.get("comp_time") or attrs.get("mtime"))
        if attrs.get("job_state") in ("F", "X", "C")
        else None,
        node=host.split("/", 1)[0] if host else None,
        attrs=attrs,
    )


def parse_qstat_full(text: str) -> list[PBSJob]:
    """``qstat -f`` text (PBS Pro): ``Job Id:`` blocks of ``key = value``, tab-continued lines."""
    jobs: list[PBSJob] = []
    attrs: dict[str, str] = {}
    last: str | None = None
    for raw in text.splitlines():
        line = raw.rstrip("\r")
        if line.startswith("Job Id:"):
            if attrs:
                jobs.append(_job(attrs))
            attrs = {"Job_Id": line.split(":", 1)[1].strip()}
            last = None
        elif line.startswith("\t") and last is not None:
            attrs[last] += line.strip()  # continuation of a long value
        elif " = " in line and attrs:
            key, _, value = line.strip().partition(" = ")
            attrs[key] = value
            last = key
    if attrs:
        jobs.append(_job(attrs))
    return jobs


def parse_qstat_xml(text: str) -> list[PBSJob]:
    """``qstat -f -x`` XML (Torque): ``<Data><Job><Job_Id>..</Job_Id>...</Job></Data>``."""
    text = text.strip()
    if not text:
        return []
    try:
        root = ET.fromstring(text)
    except ET.ParseError as exc:
        raise ValueError(f"qstat XML does not parse: {exc}") from None
    jobs = []
    for job in root.iter("Job"):
        attrs: dict[str, str] = {}
        for child in job:
            if len(child):  # nested (resource lists): flatten as parent.child
                for sub in child:
                    attrs[f"{child.tag}.{sub.tag}"] = (sub.text or "").strip()
            else:
                attrs[child.tag] = (child.text or "").strip()
        jobs.append(_job(attrs))
    return jobs


def parse_qsub(text: str) -> str:
    for line in reversed(text.strip().splitlines()):
        line = line.strip()
        if re.fullmatch(r"\d+(\[\])?(\.[\w.\-]+)?", line):
            return line
    raise ValueError(f"no job id in qsub output {text.strip()[:200]!r}")


def subjob_ids(job_id: str, n: int) -> list[str]:
    """``123[].server`` -> ``123[0].server`` ... ``123[n-1].server``."""
    head, sep, tail = job_id.partition("[]")
    if not sep:
        return [job_id]
    return [f"{head}[{i}]{tail}" for i in range(n)]


def to_pilot(job: PBSJob, tags: PilotTags) -> Pilot:
    return Pilot(
        backend_id=job.job_id,
        queue=tags.queue,
        state=map_state(job.state, job.exit_status),
        intent_id=tags.intent_id,
        submitted_at=job.submitted,
        started_at=job.started,
        ended_at=job.ended,
        node=job.node,
        exit_code=job.exit_status if job.state in ("F", "X", "C") else None,
    )


def _error(target: str, what: str, res: Result) -> BackendError:
    return pilot_script.command_failure(
        target, what, res, ("would exceed", "Maximum number of jobs", "max_queued")
    )


# ---------------------------------------------------------------------------------------------
# plugins


class PBSSubmit(BatchSubmitPlugin):
    name = "PBS"
    Options = PBSSubmitOptions

    def __init__(self, queue: QueueConfig, options: PBSSubmitOptions, factory: FactoryContext) -> None:
        super().__init__(queue, options, factory)
        self.options: PBSSubmitOptions = options
        self.pbs_target = PBSTarget(
            options.host or None, options.user, options.port, options.authprofile, options.flavor
        )
        self._pooled = self.pbs_target.transport(factory, "batchsubmit.pbs")
        self.transport: Transport = self._pooled

    def target(self) -> str:
        return self.pbs_target.label

    def directives(self) -> list[str]:
        o = self.options
        out = ["-j oe", "-o /dev/null"]
        if o.queue:
            out.append(f"-q {o.queue}")
        if o.account:
            out.append(f"-A {o.account}")
        if o.walltime:
            out.append(f"-l walltime={pbs_walltime(o.walltime)}")
        if o.flavor == "pbspro":
            select = "select=1"
            if o.cores:
                select += f":ncpus={o.cores}"
            if o.memory:
                select += f":mem={pbs_memory(o.memory)}"
            out.append(f"-l {select}")
        else:
            out.append(f"-l nodes=1:ppn={o.cores or 1}")
            if o.memory:
                out.append(f"-l mem={pbs_memory(o.memory)}")
        for line in pilot_script.split_lines(o.extra):
            out.append(line.removeprefix("#PBS").strip())
        return out

    def script(self, tags: PilotTags, now: float) -> str:
        if not self.queue.settings.executable:
            raise BackendError(
                self.target(), f"queue {self.queue.name!r} has no 'executable' to run as pilot"
            )
        env = pilot_script.pilot_environment(
            self.queue, self.factory, tags, pilot_script.parse_environ(self.options.environ)
        )
        cd = f"cd {self.options.workdir}\n" if self.options.workdir else 'cd "${PBS_O_WORKDIR:-$HOME}"\n'
        spec = pilot_script.ScriptSpec(
            directive="#PBS",
            directives=self.directives(),
            # PBS_JOBID already names the subjob: 123[4].server
            cid_setup=cd + 'APFCID="${PBS_JOBID}"',
            executable=self.queue.settings.executable,
            arguments=self.queue.settings.executable_arguments,
            environment=env,
            gtag_prefix=self.options.logurl or self.options.logdir,
            comment=f"autopyfactory pilot: {tags.job_name()}",
            redirect_dir=self.options.logdir,
        )
        return pilot_script.render(spec)

    def submit_argv(self, n: int, tags: PilotTags) -> list[str]:
        argv = ["qsub", "-N", "apf", "-v", f"APF_TAG={tags.job_name()}"]
        if n > 1:
            argv += ["-J" if self.options.flavor == "pbspro" else "-t", f"0-{n - 1}"]
        return argv

    def cancel_argv(self, job_ids: Sequence[str]) -> list[str]:
        return ["qdel", *job_ids]

    def submit(self, n: int, tags: PilotTags, now: float) -> list[Pilot]:
        if n <= 0:
            return []
        text = self.script(tags, now)
        res = self.transport.run(self.submit_argv(n, tags), input=text.encode(), timeout=self.options.timeout)
        if res.rc != 0:
            raise _error(self.target(), "qsub", res)
        try:
            job_id = parse_qsub(res.stdout)
        except ValueError as exc:
            raise BackendError(self.target(), str(exc)) from None
        ids = subjob_ids(job_id, n) if n > 1 else [job_id]
        return [Pilot(i, self.queue.name, PilotState.PENDING, tags.intent_id, submitted_at=now) for i in ids]

    def cancel(self, backend_ids: Sequence[str]) -> None:
        for chunk in pilot_script.chunks(list(backend_ids), _CHUNK):
            res = self.transport.run(self.cancel_argv(chunk), timeout=self.options.timeout)
            if res.rc != 0 and "Unknown Job Id" not in res.brief() and "finished" not in res.brief():
                raise _error(self.target(), "qdel", res)

    def retire(self, backend_ids: Sequence[str], kill: bool = False) -> None:
        if kill:
            self.cancel(backend_ids)
        elif backend_ids:
            log.info(
                "queue %s: PBS has no per-job drain; %d pilot(s) keep running",
                self.queue.name,
                len(backend_ids),
            )

    def close(self) -> None:
        POOL.release(self._pooled)


@dataclass(frozen=True, slots=True)
class PBSEndpoint:
    target: PBSTarget
    history: bool = True
    timeout: float = 60.0


class PBSStatus(BatchStatusPlugin):
    name = "PBS"
    Options = PBSStatusOptions

    @classmethod
    def endpoint(cls, queue: QueueConfig, factory: FactoryContext) -> Hashable:
        sub = queue.plugin_options("batchsubmit")
        st = queue.plugin_options("batchstatus")
        st = st if isinstance(st, PBSStatusOptions) else PBSStatusOptions()
        src = sub if isinstance(sub, PBSTargetOptions) else st
        target = PBSTarget(src.host or None, src.user, src.port, src.authprofile, src.flavor)
        return PBSEndpoint(target, st.history, src.timeout)

    def __init__(self, endpoint: Hashable, factory: FactoryContext) -> None:
        super().__init__(endpoint, factory)
        self.ep = endpoint if isinstance(endpoint, PBSEndpoint) else PBSEndpoint(PBSTarget())
        self._pooled = self.ep.target.transport(factory, "batchstatus.pbs")
        self.transport: Transport = self._pooled
        self._prefix = f"apf:{factory.factory_id}:"

    def status_argv(self) -> list[str]:
        if self.ep.target.flavor == "torque":
            return ["qstat", "-f", "-x", "-t"]
        return ["qstat", "-f", "-t", *(["-x"] if self.ep.history else [])]

    def parse(self, text: str) -> list[PBSJob]:
        return parse_qstat_xml(text) if self.ep.target.flavor == "torque" else parse_qstat_full(text)

    def poll(self, now: float) -> BatchSnapshot:
        res = self.transport.run(self.status_argv(), timeout=self.ep.timeout)
        if res.rc != 0:
            raise _error(self.ep.target.label, "qstat", res)
        try:
            jobs = self.parse(res.stdout)
        except ValueError as exc:
            raise BackendError(self.ep.target.label, str(exc)) from None
        pilots = []
        for job in jobs:
            if not job.tag or not job.tag.startswith(self._prefix) or job.job_id.split(".")[0].endswith("[]"):
                continue  # not ours, or an array's parent record (its subjobs are listed)
            tags = PilotTags.parse_job_name(job.tag)
            if tags is not None:
                pilots.append(to_pilot(job, tags))
        return BatchSnapshot(now, tuple(pilots))

    def close(self) -> None:
        POOL.release(self._pooled)
