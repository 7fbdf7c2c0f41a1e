"""``batchsubmitplugin = LSF`` / ``batchstatusplugin = LSF``: pilots as IBM Spectrum LSF jobs.

The flow, targets, transports and error handling are the shared command base (``command.py``);
this module has LSF's argv builders, state table, parsers and error texts.

* Submit: one ``bsub`` per cycle with the pilot script on stdin; n > 1 pilots are one job array
  (``-J "<tag>[1-n]"``). The tag is the job name and the job description (``-Jd``).
* Status: ``bjobs -a -o "<fields>" -json`` (LSF 10.1+), filtered to this factory's tag; array
  elements are ``<jobid>[<index>]``.
* Cancel: ``bkill``; a job that has already finished is not an error. LSF has no per-job drain,
  so a peaceful retire leaves running pilots alone; ``kill`` removes them.

No LSF cluster runs in this project's tests: the parsers are tested on outputs written by hand
from the documented formats (tests/data/batch/).
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass

from pydantic import Field, field_validator

from autopyfactory.model import Pilot, PilotState, PilotTags
from autopyfactory.plugins.batch import script as pilot_script
from autopyfactory.plugins.batch.command import (
    CommandRules,
    CommandStatus,
    CommandSubmit,
    CommandSubmitOptions,
    StateTable,
    parse_int,
)
from autopyfactory.plugins.transport.base import RemoteOptions

BJOBS_FIELDS = (
    "jobid jobindex stat job_name job_description exec_host submit_time start_time finish_time exit_code"
)


class LSFSubmitOptions(CommandSubmitOptions):
    queue: str | None = Field(None, description="LSF queue (-q)")
    project: str | None = Field(None, description="project / account (-P)")
    walltime: str | None = Field(None, description="minutes or HH:MM (-W)")
    cores: int | None = Field(None, ge=1, le=100_000, description="slots per pilot (-n)")
    memory: str | None = Field(None, description="memory limit per pilot in MB (-M, -R rusage[mem=...])")

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


class LSFStatusOptions(RemoteOptions):
    pass


# ---------------------------------------------------------------------------------------------
# parsing (pure)

STATES = StateTable(
    "LSF",
    {
        PilotState.PENDING: "PEND WAIT PROV",
        PilotState.RUNNING: "RUN",
        PilotState.HELD: "PSUSP USUSP SSUSP",
        PilotState.DONE: "DONE",
        PilotState.FAILED: "EXIT",
        PilotState.UNKNOWN: "UNKWN ZOMBI",
    },
)


def map_state(stat: str) -> PilotState:
    return STATES(stat.strip().upper())


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
        index = parse_int(rec.get("JOBINDEX", "0")) or 0
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
                exit_code=parse_int(rec.get("EXIT_CODE", "")),
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


def bsub_ids(job_id: str, n: int) -> list[str]:
    """The elements of the array ``bsub -J "name[1-n]"`` made (or the one job)."""
    return [f"{job_id}[{i}]" for i in range(1, n + 1)] if n > 1 else [job_id]


RULES = CommandRules(
    system="LSF",
    # bsub refused by a pending-job threshold (MAX_PEND_JOBS/MAX_PEND_SLOTS) or a job limit
    capacity=(
        "Pending job threshold reached",
        "MAX_PEND_JOBS",
        "MAX_PEND_SLOTS",
        "MAX_JOBS",
        "limit reached",
    ),
    gone=re.compile(r"^Job <[^>]+>: (Job has already finished|No matching job found)$"),
    no_jobs=re.compile(r"^No (unfinished |matching )?job found$"),
)


# ---------------------------------------------------------------------------------------------
# plugins


class LSFSubmit(CommandSubmit):
    name = "LSF"
    Options = LSFSubmitOptions
    rules = RULES
    directive = "#BSUB"
    log_name = "${LSB_JOBID}_${LSB_JOBINDEX:-0}"
    options: LSFSubmitOptions

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

    def cid_setup(self) -> str:
        return (
            'APFCID="${LSB_JOBID}"\n'
            'if [ "${LSB_JOBINDEX:-0}" != 0 ]; then APFCID="${LSB_JOBID}[${LSB_JOBINDEX}]"; fi'
        )

    def submit_argv(self, n: int, tags: PilotTags, now: float) -> list[str]:
        tag = tags.job_name()
        name = f"{tag}[1-{n}]" if n > 1 else tag
        return ["bsub", "-J", name, "-Jd", tag]

    def submitted_ids(self, output: str, n: int) -> list[str]:
        return bsub_ids(parse_bsub(output), n)

    def cancel_argv(self, job_ids: Sequence[str]) -> list[str]:
        return ["bkill", *job_ids]


class LSFStatus(CommandStatus):
    name = "LSF"
    Options = LSFStatusOptions
    Submit = LSFSubmit
    rules = RULES

    def status_argv(self) -> list[str]:
        return ["bjobs", "-a", "-o", BJOBS_FIELDS, "-json"]

    def pilots(self, output: str, now: float) -> list[Pilot]:
        jobs = parse_bjobs_json(output, now)
        return [to_pilot(job, tags) for job in jobs if (tags := self.own_tags(job.tag)) is not None]
