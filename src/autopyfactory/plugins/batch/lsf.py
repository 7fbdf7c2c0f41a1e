"""``batchsubmitplugin = LSF`` / ``batchstatusplugin = LSF``: pilots as IBM Spectrum LSF jobs.

Same shape as the Slurm backend: argv builders, pure parsers, a transport runs them.

* Submit: one ``bsub`` per cycle with the pilot script on stdin; n > 1 pilots are one job array
  (``-J "<tag>[1-n]"``). The tag is the job name and the job description (``-Jd``).
* Status: ``bjobs -a -o "<fields>" -json`` (LSF 10.1+), filtered to this factory's tag; array
  elements are ``<jobid>[<index>]``.
* Cancel: ``bkill``. LSF has no per-job drain, so a peaceful retire leaves running pilots alone;
  ``kill`` removes them.

No LSF cluster runs in this project's tests: the parsers are tested on outputs written by hand
from the documented formats (tests/data/batch/).
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

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

BJOBS_FIELDS = (
    "jobid jobindex stat job_name job_description exec_host submit_time start_time finish_time exit_code"
)
_CHUNK = 200


class LSFSubmitOptions(RemoteOptions, SubmitOptions):
    queue: str | None = Field(None, description="LSF queue (-q)")
    project: str | None = Field(None, description="project / account (-P)")
    walltime: str | None = Field(None, description="minutes or HH:MM (-W)")
    cores: int | None = Field(None, ge=1, description="slots per pilot (-n)")
    memory: str | None = Field(None, description="memory limit per pilot in MB (-M, -R rusage[mem=...])")
    extra: str | None = Field(None, description="extra #BSUB options, one per line or ';' separated")
    environ: str | None = Field(None, description="NAME=value items added to the pilot environment")
    workdir: str | None = Field(None, description="pilot working directory on the cluster")
    logdir: str | None = Field(None, description="directory on the cluster for pilot output")
    logurl: str | None = Field(
        None, description="URL that serves logdir (GTAG points at <logurl>/<APFCID>.out)"
    )

    @field_validator("walltime")
    @classmethod
    def _walltime(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"\d+|\d+:\d{2}", value.strip()):
            raise ValueError("walltime must be minutes or HH:MM")
        return value

    @field_validator("memory")
    @classmethod
    def _memory(cls, value: str | None) -> str | None:
        if value is not None and not value.strip().isdigit():
            raise ValueError("memory must be a number of MB")
        return value

    @field_validator("environ")
    @classmethod
    def _environ(cls, value: str | None) -> str | None:
        pilot_script.parse_environ(value)
        return value


class LSFStatusOptions(RemoteOptions):
    pass


@dataclass(frozen=True, slots=True)
class LSFTarget:
    host: str | None = None
    user: str | None = None
    port: int = 22
    authprofile: str | None = None

    @property
    def label(self) -> str:
        where = "local" if not self.host else f"{self.user + '@' if self.user else ''}{self.host}:{self.port}"
        return f"lsf:{where}"

    def transport(self, factory: FactoryContext, where: str) -> Transport:
        return transport_for(
            factory, self.host, user=self.user, port=self.port, authprofile=self.authprofile, where=where
        )


# ---------------------------------------------------------------------------------------------
# parsing (pure)

_STATES = {
    "PEND": PilotState.PENDING,
    "WAIT": PilotState.PENDING,
    "PROV": PilotState.PENDING,
    "RUN": PilotState.RUNNING,
    "PSUSP": PilotState.HELD,
    "USUSP": PilotState.HELD,
    "SSUSP": PilotState.HELD,
    "DONE": PilotState.DONE,
    "EXIT": PilotState.FAILED,
    "UNKWN": PilotState.UNKNOWN,
    "ZOMBI": PilotState.UNKNOWN,
}
_warned: set[str] = set()


def map_state(stat: str) -> PilotState:
    stat = stat.strip().upper()
    if stat in _STATES:
        return _STATES[stat]
    if stat not in _warned:
        _warned.add(stat)
        log.warning("unknown LSF job state %r: pilots in it are counted as unknown", stat)
    return PilotState.UNKNOWN


@dataclass(frozen=True, slots=True)
class LSFJob:
    job_id: str  # 123 or 123[4]
    stat: str
    name: str
    description: str
    host: str | None
    submitted: float | None
    started: float | None
    ended: float | None
    exit_code: int | None

    @property
    def tag(self) -> str:
        """The pilot tag: the description, else the name without its array index."""
        return self.description or re.sub(r"\[\d+\]$", "", self.name)


def lsf_time(text: str | None, now: float | None = None) -> float | None:
    """bjobs times: ``Jan  1 10:00`` (this year, or last year if that is in the future),
    ``Jan  1 10:00 2024``, with an optional trailing ``L``/``E``/``X`` marker; ``-`` is none."""
    if not text:
        return None
    words = text.split()
    if words and words[-1] in ("L", "E", "X"):
        words = words[:-1]
    if not words or words == ["-"]:
        return None
    clean = " ".join(words)
    try:
        if len(words) == 4:
            return time.mktime(time.strptime(clean, "%b %d %H:%M %Y"))
        if len(words) == 3:
            now = time.time() if now is None else now
            year = time.localtime(now).tm_year
            stamp = time.mktime(time.strptime(f"{clean} {year}", "%b %d %H:%M %Y"))
            if stamp > now + 86400:
                stamp = time.mktime(time.strptime(f"{clean} {year - 1}", "%b %d %H:%M %Y"))
            return stamp
    except ValueError:
        return None
    return None


def _int(value: object) -> int | None:
    try:
        return int(str(value).strip())
    except ValueError:
        return None


def parse_bjobs_json(text: str, now: float | None = None) -> list[LSFJob]:
    """``bjobs -o "<BJOBS_FIELDS>" -json``: ``{"COMMAND":"bjobs","JOBS":n,"RECORDS":[{...}]}``."""
    text = text.strip()
    if not text:
        return []
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"bjobs JSON does not parse: {exc}") from None
    jobs = []
    for rec in data.get("RECORDS", []):
        if rec.get("ERROR"):
            continue  # e.g. "Job <123> is not found"
        job_id = str(rec.get("JOBID", "")).strip()
        index = _int(rec.get("JOBINDEX", "0")) or 0
        if index:
            job_id = f"{job_id}[{index}]"
        host = str(rec.get("EXEC_HOST", "") or "").strip()
        jobs.append(
            LSFJob(
                job_id=job_id,
                stat=str(rec.get("STAT", "")),
                name=str(rec.get("JOB_NAME", "")),
                description=str(rec.get("JOB_DESCRIPTION", "") or "").strip(),
                # exec_host is "4*hostA:2*hostB" for parallel jobs: keep the first host
                host=host.split(":")[0].split("*")[-1] if host and host != "-" else None,
                submitted=lsf_time(rec.get("SUBMIT_TIME"), now),
                started=lsf_time(rec.get("START_TIME"), now),
                ended=lsf_time(rec.get("FINISH_TIME"), now),
                exit_code=_int(rec.get("EXIT_CODE", "")),
            )
        )
    return jobs


def parse_bsub(text: str) -> str:
    m = re.search(r"Job <(\d+)> is submitted", text)
    if not m:
        raise ValueError(f"no job id in bsub output {text.strip()[:200]!r}")
    return m.group(1)


def to_pilot(job: LSFJob, tags: PilotTags) -> Pilot:
    state = map_state(job.stat)
    exit_code = job.exit_code
    if state is PilotState.DONE and exit_code is None:
        exit_code = 0
    return Pilot(
        backend_id=job.job_id,
        queue=tags.queue,
        state=state,
        intent_id=tags.intent_id,
        submitted_at=job.submitted,
        started_at=job.started if state is not PilotState.PENDING else None,
        # a running job's finish time is LSF's estimate
        ended_at=job.ended if state.final else None,
        node=job.host,
        exit_code=exit_code if state.final else None,
    )


def _error(target: str, what: str, res: Result) -> BackendError:
    return pilot_script.command_failure(
        target, what, res, ("limit", "Pending job threshold reached", "MAX_JOBS")
    )


_NO_JOBS = ("No job found", "No unfinished job found", "No matching job found")


# ---------------------------------------------------------------------------------------------
# plugins


class LSFSubmit(BatchSubmitPlugin):
    name = "LSF"
    Options = LSFSubmitOptions

    def __init__(self, queue: QueueConfig, options: LSFSubmitOptions, factory: FactoryContext) -> None:
        super().__init__(queue, options, factory)
        self.options: LSFSubmitOptions = options
        self.lsf_target = LSFTarget(options.host or None, options.user, options.port, options.authprofile)
        self._pooled = self.lsf_target.transport(factory, "batchsubmit.lsf")
        self.transport: Transport = self._pooled

    def target(self) -> str:
        return self.lsf_target.label

    def directives(self) -> list[str]:
        o = self.options
        out = ["-o /dev/null"]
        if o.queue:
            out.append(f"-q {o.queue}")
        if o.project:
            out.append(f"-P {o.project}")
        if o.walltime:
            out.append(f"-W {o.walltime.strip()}")
        if o.cores:
            out += [f"-n {o.cores}", '-R "span[hosts=1]"']
        if o.memory:
            out += [f"-M {o.memory.strip()}", f'-R "rusage[mem={o.memory.strip()}]"']
        if o.workdir:
            out.append(f"-cwd {o.workdir}")
        for line in pilot_script.split_lines(o.extra):
            out.append(line.removeprefix("#BSUB").strip())
        return out

    def script(self, tags: PilotTags, now: float) -> str:
        if not self.queue.settings.executable:
            raise BackendError(
                self.target(), f"queue {self.queue.name!r} has no 'executable' to run as pilot"
            )
        env = pilot_script.pilot_environment(
            self.queue, self.factory, tags, pilot_script.parse_environ(self.options.environ)
        )
        spec = pilot_script.ScriptSpec(
            directive="#BSUB",
            directives=self.directives(),
            cid_setup=(
                'APFCID="${LSB_JOBID}"\n'
                'if [ "${LSB_JOBINDEX:-0}" != 0 ]; then APFCID="${LSB_JOBID}[${LSB_JOBINDEX}]"; fi'
            ),
            executable=self.queue.settings.executable,
            arguments=self.queue.settings.executable_arguments,
            environment=env,
            gtag_prefix=self.options.logurl or self.options.logdir,
            comment=f"autopyfactory pilot: {tags.job_name()}",
            log_name="${LSB_JOBID}_${LSB_JOBINDEX:-0}",
            redirect_dir=self.options.logdir,
        )
        return pilot_script.render(spec)

    def submit_argv(self, n: int, tags: PilotTags) -> list[str]:
        tag = tags.job_name()
        name = f"{tag}[1-{n}]" if n > 1 else tag
        return ["bsub", "-J", name, "-Jd", tag]

    def cancel_argv(self, job_ids: Sequence[str]) -> list[str]:
        return ["bkill", *job_ids]

    def submit(self, n: int, tags: PilotTags, now: float) -> list[Pilot]:
        if n <= 0:
            return []
        text = self.script(tags, now)
        res = self.transport.run(self.submit_argv(n, tags), input=text.encode(), timeout=self.options.timeout)
        if res.rc != 0:
            raise _error(self.target(), "bsub", res)
        try:
            job_id = parse_bsub(res.stdout)
        except ValueError as exc:
            raise BackendError(self.target(), str(exc)) from None
        ids = [f"{job_id}[{i}]" for i in range(1, n + 1)] if n > 1 else [job_id]
        return [Pilot(i, self.queue.name, PilotState.PENDING, tags.intent_id, submitted_at=now) for i in ids]

    def cancel(self, backend_ids: Sequence[str]) -> None:
        for chunk in pilot_script.chunks(list(backend_ids), _CHUNK):
            res = self.transport.run(self.cancel_argv(chunk), timeout=self.options.timeout)
            if (
                res.rc != 0
                and "Job has already finished" not in res.brief()
                and "No matching job" not in res.brief()
            ):
                raise _error(self.target(), "bkill", res)

    def retire(self, backend_ids: Sequence[str], kill: bool = False) -> None:
        if kill:
            self.cancel(backend_ids)
        elif backend_ids:
            log.info(
                "queue %s: LSF has no per-job drain; %d pilot(s) keep running",
                self.queue.name,
                len(backend_ids),
            )

    def close(self) -> None:
        POOL.release(self._pooled)


@dataclass(frozen=True, slots=True)
class LSFEndpoint:
    target: LSFTarget
    timeout: float = 60.0


class LSFStatus(BatchStatusPlugin):
    name = "LSF"
    Options = LSFStatusOptions

    @classmethod
    def endpoint(cls, queue: QueueConfig, factory: FactoryContext) -> Hashable:
        sub = queue.plugin_options("batchsubmit")
        st = queue.plugin_options("batchstatus")
        src = (
            sub
            if isinstance(sub, LSFSubmitOptions)
            else st
            if isinstance(st, RemoteOptions)
            else RemoteOptions()
        )
        return LSFEndpoint(LSFTarget(src.host or None, src.user, src.port, src.authprofile), src.timeout)

    def __init__(self, endpoint: Hashable, factory: FactoryContext) -> None:
        super().__init__(endpoint, factory)
        self.ep = endpoint if isinstance(endpoint, LSFEndpoint) else LSFEndpoint(LSFTarget())
        self._pooled = self.ep.target.transport(factory, "batchstatus.lsf")
        self.transport: Transport = self._pooled
        self._prefix = f"apf:{factory.factory_id}:"

    def status_argv(self) -> list[str]:
        return ["bjobs", "-a", "-o", BJOBS_FIELDS, "-json"]

    def poll(self, now: float) -> BatchSnapshot:
        res = self.transport.run(self.status_argv(), timeout=self.ep.timeout)
        if res.rc != 0 and not any(m in res.brief() for m in _NO_JOBS):
            raise _error(self.ep.target.label, "bjobs", res)
        try:
            jobs = parse_bjobs_json(res.stdout, now)
        except ValueError as exc:
            raise BackendError(self.ep.target.label, str(exc)) from None
        pilots = []
        for job in jobs:
            if not job.tag.startswith(self._prefix):
                continue
            tags = PilotTags.parse_job_name(job.tag)
            if tags is not None:
                pilots.append(to_pilot(job, tags))
        return BatchSnapshot(now, tuple(pilots))

    def close(self) -> None:
        POOL.release(self._pooled)
