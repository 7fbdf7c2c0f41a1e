"""``batchsubmitplugin = PBS`` / ``batchstatusplugin = PBS``: pilots as PBS Pro or Torque jobs.

The flow, targets, transports and error handling are the shared command base (``command.py``);
this module has PBS's argv builders, state table, parsers and error texts.

* Submit: one ``qsub`` per cycle with the pilot script on stdin; n > 1 pilots are one job array
  (``-J 0-<n-1>`` on PBS Pro, ``-t 0-<n-1>`` on Torque). The tag ``apf:<factory>:<queue>:<intent>``
  travels as the job variable ``APF_TAG`` (PBS job names are short and restricted).
* Status: ``qstat -f -t`` (PBS Pro text, ``-x`` adds finished jobs from the history) or
  ``qstat -f -x -t`` (Torque XML), filtered to this factory's tag.
* Cancel: ``qdel``; a job that has already finished or is unknown is not an error. PBS has no
  per-job drain, so a peaceful retire leaves running pilots alone; ``kill`` deletes them.

No PBS server runs in this project's tests: the parsers are tested on outputs written by hand
from the documented formats (tests/data/batch/).
"""

from __future__ import annotations

import re
import time
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from pydantic import Field, field_validator

from autopyfactory.model import Pilot, PilotState, PilotTags
from autopyfactory.plugins.batch import script as pilot_script
from autopyfactory.plugins.batch.command import (
    CommandEndpoint,
    CommandRules,
    CommandStatus,
    CommandSubmit,
    CommandSubmitOptions,
    StateTable,
    parse_int,
)
from autopyfactory.plugins.transport.base import RemoteOptions

Flavor = Literal["pbspro", "torque"]


class PBSTargetOptions(RemoteOptions):
    flavor: Flavor = Field("pbspro", description="pbspro (qsub -J arrays) or torque (qsub -t arrays)")


class PBSSubmitOptions(PBSTargetOptions, CommandSubmitOptions):
    queue: str | None = Field(None, description="PBS queue (-q)")
    account: str | None = Field(None, description="account string (-A)")
    walltime: str | None = Field(None, description="minutes or HH:MM:SS")
    cores: int | None = Field(None, ge=1, le=100_000, description="CPU cores per pilot (ncpus)")
    memory: str | None = Field(None, description="memory per pilot in MB, or with a kb/mb/gb suffix")

    @field_validator("walltime")
    @classmethod
    def _walltime(cls, value: str | None) -> str | None:
        if value is None:
            return None
        pbs_walltime(value)
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
class PBSEndpoint(CommandEndpoint):
    flavor: Flavor = "pbspro"
    history: bool = True


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


STATES = StateTable(
    "PBS",
    {
        PilotState.PENDING: "Q W T M",
        PilotState.HELD: "H S U",
        PilotState.RUNNING: "R E B",
    },
)
FINISHED = ("F", "X", "C")  # finished (Pro history), finished subjob (Pro), completed (Torque)
KILLED_BY_QDEL = 271  # 256 + SIGTERM: what PBS reports for a job deleted while running


def map_state(state: str, exit_status: int | None) -> PilotState:
    state = state.strip().upper()
    if state not in FINISHED:
        return STATES(state)
    if exit_status is None:
        return PilotState.UNKNOWN
    if exit_status == 0:
        return PilotState.DONE
    return PilotState.CANCELLED if exit_status == KILLED_BY_QDEL else PilotState.FAILED


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


def _job(attrs: dict[str, str]) -> PBSJob:
    job_id = attrs.get("Job_Id", "")
    exit_status = parse_int(attrs.get("Exit_status", attrs.get("exit_status")))
    host = attrs.get("exec_host")
    return PBSJob(
        job_id=job_id,
        state=attrs.get("job_state", ""),
        tag=_variable(attrs.get("Variable_List", ""), "APF_TAG"),
        exit_status=exit_status,
        submitted=_ctime(attrs.get("ctime") or attrs.get("qtime")),
        started=_ctime(attrs.get("stime") or attrs.get("start_time")),
        ended=_ctime(attrs.get("obittime") or attrs.get("comp_time") or attrs.get("mtime"))
        if attrs.get("job_state") in FINISHED
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
        exit_code=job.exit_status if job.state in FINISHED else None,
    )


def is_array_parent(job: PBSJob) -> bool:
    """An array's own record (``123[].server``): its subjobs are listed on their own."""
    return job.job_id.split(".")[0].endswith("[]")


RULES = CommandRules(
    system="PBS",
    capacity=("would exceed", "Maximum number of jobs", "max_queued"),
    # qdel of a job that is gone: "Unknown Job Id <id>" (Pro), "Unknown Job Id Error <id>" and
    # "nonexistent job id: <id>" (Torque), "Job <id> has finished" (Pro with job history),
    # "invalid state for job - COMPLETE <id>" (Torque keeping completed jobs)
    gone=re.compile(
        r"^qdel: (Unknown Job Id( Error)? \S+|nonexistent job id: \S+|Job (\S+ )?has finished"
        r"|Request invalid for state of job MSG=invalid state for job - COMPLETE \S+)$"
    ),
)


# ---------------------------------------------------------------------------------------------
# plugins


class PBSSubmit(CommandSubmit):
    name = "PBS"
    Options = PBSSubmitOptions
    rules = RULES
    directive = "#PBS"
    options: PBSSubmitOptions

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

    def cid_setup(self) -> str:
        cd = f"cd {self.options.workdir}" if self.options.workdir else 'cd "${PBS_O_WORKDIR:-$HOME}"'
        # PBS_JOBID already names the subjob: 123[4].server
        return cd + '\nAPFCID="${PBS_JOBID}"'

    def submit_argv(self, n: int, tags: PilotTags, now: float) -> list[str]:
        argv = ["qsub", "-N", "apf", "-v", f"APF_TAG={tags.job_name()}"]
        if n > 1:
            argv += ["-J" if self.options.flavor == "pbspro" else "-t", f"0-{n - 1}"]
        return argv

    def submitted_ids(self, output: str, n: int) -> list[str]:
        job_id = parse_qsub(output)
        return subjob_ids(job_id, n) if n > 1 else [job_id]

    def cancel_argv(self, job_ids: Sequence[str]) -> list[str]:
        return ["qdel", *job_ids]


class PBSStatus(CommandStatus):
    name = "PBS"
    Options = PBSStatusOptions
    Submit = PBSSubmit
    Endpoint = PBSEndpoint
    rules = RULES
    ep: PBSEndpoint

    def status_argv(self) -> list[str]:
        if self.ep.flavor == "torque":
            return ["qstat", "-f", "-x", "-t"]
        return ["qstat", "-f", "-t", *(["-x"] if self.ep.history else [])]

    def pilots(self, output: str, now: float) -> list[Pilot]:
        jobs = parse_qstat_xml(output) if self.ep.flavor == "torque" else parse_qstat_full(output)
        return [
            to_pilot(job, tags)
            for job in jobs
            if not is_array_parent(job) and (tags := self.own_tags(job.tag)) is not None
        ]
