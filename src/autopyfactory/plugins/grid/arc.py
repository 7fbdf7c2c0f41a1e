"""``batchsubmitplugin = ARC`` / ``batchstatusplugin = ARC``: pilots to an ARC CE over its REST
interface, without HTCondor.

* Submit: one delegation of the queue's proxy per CE (renewed when the credential manager renews
  the proxy), then n pilots in one request (a multi-job xRSL), each named
  ``apf:<factory>:<queue>:<intent>`` so that status finds and adopts them after a restart. The
  pilot wrapper (the queue's ``executable``) is uploaded into each job's session directory, or
  fetched by the CE when it is a URL, or taken as a path on the CE (``remote_executable``).
* Status: one ``GET /jobs`` for the ids of our identity at the CE, one ``action=info`` for ids not
  seen before (name, times), one ``action=status`` for all of this factory's jobs, and one
  ``action=info`` for jobs that just ended (exit code).
* Cancel/retire: ``action=kill`` (a grid pilot cannot be drained). Cleanup: finished pilots'
  stdout/stderr are fetched into the factory's log tree, then the jobs are cleaned on the CE.

xRSL comes from the queue's keys: ``batchsubmit.arc.*`` (queue, walltime, memory, cpus, runtime
environments, environ, input and output files) plus APF's CondorNordugrid RSL keys
(``nordugridrsl.<attribute>``, ``nordugridrsl.nordugridrsl``, ``nordugridrsl.nordugridrsladd``,
``nordugridrsl.addenv.<VAR>``). A refusal for capacity (``New job submission is not allowed``,
limits, HTTP 503/429) is a capacity error: a cascade spills to its next tier.
"""

from __future__ import annotations

import datetime
import logging
import shlex
import socket
import threading
from collections.abc import Hashable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from pydantic import Field, field_validator

from autopyfactory.credentials import resolve
from autopyfactory.model import BatchSnapshot, Pilot, PilotState, PilotTags
from autopyfactory.plugins.base import (
    BackendError,
    BatchStatusPlugin,
    BatchSubmitPlugin,
    FactoryContext,
    PluginError,
    PluginOptions,
    SubmitOptions,
)
from autopyfactory.plugins.batch import script as pilot_script
from autopyfactory.plugins.batch.script import resolve_executable
from autopyfactory.plugins.grid import xrsl
from autopyfactory.plugins.grid.arcrest import (
    ArcClient,
    ArcEndpoint,
    JobResult,
    ce_url,
    client_for,
    is_capacity,
)

if TYPE_CHECKING:
    from autopyfactory.config.models import AuthProfile, QueueConfig

log = logging.getLogger(__name__)

# APF's CondorNordugrid queue keys
RSL_PREFIX = "nordugridrsl."
ADDENV = "nordugridrsl.addenv."
_URL_SCHEMES = ("http://", "https://", "gsiftp://", "srm://", "root://", "davs://", "file://")


# ---------------------------------------------------------------------------------------------
# config


class ArcSubmitOptions(SubmitOptions):
    ce: str | None = Field(None, description="the CE: host, host:port or https://host:port/arex")
    gridresource: str | None = Field(None, description="APF CondorNordugrid spelling of ce (the CE host)")
    proxy: str | None = Field(
        None, description="auth profiles, comma list: the first defined X509 one is used"
    )
    queue: str | None = Field(None, description="the CE queue (xRSL queue)")
    walltime: int | None = Field(None, ge=1, description="minutes")
    cputime: int | None = Field(None, ge=1, description="minutes (all cores)")
    memory: int | None = Field(None, ge=1, description="MB per core")
    cpus: int | None = Field(None, ge=1, description="cores per pilot (count, on one node)")
    runtimeenvironment: str | None = Field(None, description="comma list of runtime environments")
    environ: str | None = Field(None, description="NAME=value items added to the pilot environment")
    inputfiles: str | None = Field(
        None, description="comma list of local files or URLs staged with each pilot"
    )
    outputfiles: str | None = Field(None, description="comma list of files kept on the CE for fetching")
    remote_executable: bool = Field(False, description="executable is a path on the CE (nothing staged)")
    maxperrequest: int = Field(200, ge=1, description="pilots per submission request")
    timeout: float = Field(60.0, gt=0, description="seconds to wait for an answer of the CE")
    fetchoutput: bool = Field(True, description="fetch finished pilots' stdout/stderr into the log tree")
    outputlimit: int = Field(10_000_000, ge=0, description="bytes kept of each fetched file")
    clean: bool = Field(True, description="clean finished jobs on the CE (after fetching their output)")

    @field_validator("environ")
    @classmethod
    def _environ(cls, value: str | None) -> str | None:
        pilot_script.parse_environ(value)
        return value

    def credential_profiles(self, profiles: Mapping[str, AuthProfile]) -> tuple[str, ...]:
        name = resolve.proxy_profile(self.proxy, profiles, where="batchsubmit.arc.proxy")
        return (name,) if name else ()


class ArcStatusOptions(PluginOptions):
    """Status takes the CE and proxy from the queue's batchsubmit.arc.* keys."""

    keep: float = Field(3600.0, ge=0, description="seconds an ended pilot stays in snapshots if not cleaned")


def split_list(text: str | None) -> list[str]:
    return [item.strip() for item in (text or "").split(",") if item.strip()]


def endpoint_of(queue: QueueConfig, factory: FactoryContext) -> ArcEndpoint:
    """The CE and proxy of a queue whose batchsubmit plugin is ARC (PluginError otherwise)."""
    options = queue.plugin_options("batchsubmit")
    if not isinstance(options, ArcSubmitOptions):
        raise PluginError(f"[{queue.name}] batchstatusplugin = ARC needs batchsubmitplugin = ARC")
    where = f"[{queue.name}] batchsubmit.arc"
    target = options.ce or options.gridresource
    if not target:
        raise PluginError(f"{where}.ce is required (the ARC CE: host or https://host:port/arex)")
    try:
        url = ce_url(target)
    except ValueError as exc:
        raise PluginError(f"{where}.ce: {exc}") from None
    profile = resolve.proxy_profile(options.proxy, factory.auth_profiles, where=f"{where}.proxy")
    if profile is None:
        raise PluginError(f"{where}.proxy is required: an X509 profile of auth.conf (the client certificate)")
    auth = factory.auth_profiles[profile]
    return ArcEndpoint(
        url=url,
        proxy=str(Path(auth.options.proxyfile).expanduser()),
        cadir=resolve.ca_directory(auth),
        timeout=options.timeout,
        profile=profile,
    )


# ---------------------------------------------------------------------------------------------
# states (pure)

UPLOADS_AT_ONCE = 8
_PENDING = {"ACCEPTING", "ACCEPTED", "PREPARING", "PREPARED", "SUBMITTING", "QUEUING"}
_RUNNING = {"RUNNING", "EXITINGLRMS", "EXECUTED", "FINISHING"}
_warned: set[str] = set()


def map_state(state: str | None, exit_code: int | None = None) -> PilotState | None:
    """ARC REST state -> pilot state; None for ``OTHER`` (transient: keep what we knew)."""
    word = (state or "").strip().upper()
    if word in ("", "NONE"):
        return None  # no information (a job being cleaned): keep what we knew
    if word in _PENDING:
        return PilotState.PENDING
    if word in _RUNNING:
        return PilotState.RUNNING
    if word == "HELD":
        return PilotState.HELD
    if word == "KILLING":
        return PilotState.RETIRING
    if word == "FINISHED":
        return PilotState.FAILED if exit_code not in (None, 0) else PilotState.DONE
    if word == "FAILED":
        return PilotState.FAILED
    if word in ("KILLED", "WIPED"):
        return PilotState.CANCELLED
    if word == "OTHER":
        return None
    if word not in _warned:
        _warned.add(word)
        log.warning("unknown ARC job state %r: pilots in it are counted as unknown", state)
    return PilotState.UNKNOWN


def _time(text: object) -> float | None:
    if not isinstance(text, str) or not text:
        return None
    try:
        value = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=datetime.UTC)
    return value.timestamp()


def _exit_code(value: object) -> int | None:
    try:
        return int(str(value)) if value not in (None, "") else None
    except ValueError:
        return None


def _info_state(info: Mapping[str, object]) -> str | None:
    states = info.get("State")
    for item in states if isinstance(states, list) else [states]:
        if isinstance(item, str) and item.startswith("arcrest:"):
            return item.split(":", 1)[1]
    return None


# ---------------------------------------------------------------------------------------------
# submit


class ArcSubmit(BatchSubmitPlugin):
    name = "ARC"
    Options: ClassVar[type[PluginOptions]] = ArcSubmitOptions
    options: ArcSubmitOptions
    has_cleanup = True  # each cycle: fetch ended pilots' output, clean them on the CE

    def __init__(self, queue: QueueConfig, options: PluginOptions, factory: FactoryContext) -> None:
        super().__init__(queue, options, factory)
        if not queue.settings.executable:
            raise PluginError(
                f"[{queue.name}] batchsubmitplugin = ARC needs 'executable' (the pilot or wrapper)"
            )
        self.endpoint = endpoint_of(queue, factory)
        self.hostname = socket.gethostname()
        self.rsl_raw, self.rsl_env = self._operator_rsl()
        # a relative path is looked up beside the config file that set it
        self.executable = (
            resolve_executable(queue) if not self.options.remote_executable else queue.settings.executable
        )
        self._staged = self._stage_plan()
        self._cleaned: set[str] = set()
        self._warned_no_drain = False
        self.client: ArcClient = client_for(self.endpoint, factory.state_dir)
        # fail at load, not at the first submission, when the description cannot be built
        self.descriptions(1, PilotTags(factory.factory_id, queue.name, "check"), 0.0, "check")

    def key(self, suffix: str) -> str:
        return f"batchsubmit.arc.{suffix}"

    def target(self) -> str:
        return self.endpoint.label

    # -- description ------------------------------------------------------------------------

    def _operator_rsl(self) -> tuple[str, dict[str, str]]:
        """The queue's nordugridrsl.* keys as raw relations and extra environment."""
        raw = self.queue.raw

        def value(key: str) -> str:
            text = (raw.get(key) or "").strip()
            return "" if text in ("None", "none") else text

        # APF: the whole RSL replaces the per-attribute keys; nordugridrsladd is appended
        parts: list[str] = [value("nordugridrsl.nordugridrsl")]
        if not parts[0]:
            for key in raw:
                attr = key[len(RSL_PREFIX) :]
                if (
                    not key.startswith(RSL_PREFIX)
                    or key.startswith(ADDENV)
                    or attr in ("nordugridrsl", "nordugridrsladd")
                ):
                    continue
                if value(key):
                    parts.append(f"({attr} = {value(key)})")
        parts.append(value("nordugridrsl.nordugridrsladd"))
        text = "".join(parts)
        owned = xrsl.attributes_in(text) & (xrsl.OWNED | self._typed_attributes())
        if owned:
            raise PluginError(
                f"[{self.queue.name}] nordugridrsl.* sets {', '.join(sorted(owned))}, which ARC pilots get from "
                "the queue's keys (executable, executable.arguments, batchsubmit.arc.*)"
            )
        env = {k[len(ADDENV) :]: v.strip() for k, v in raw.items() if k.startswith(ADDENV) and v.strip()}
        return text, env

    def _typed_attributes(self) -> set[str]:
        o = self.options
        names = {
            "queue": o.queue,
            "walltime": o.walltime,
            "cputime": o.cputime,
            "memory": o.memory,
            "count": o.cpus,
        }
        return {k for k, v in names.items() if v is not None} | (
            {"runtimeenvironment"} if o.runtimeenvironment else set()
        )

    def _stage_plan(self) -> tuple[str, str | None, bytes | None]:
        """(executable name in the job, URL the CE fetches it from, bytes we upload)."""
        exe = self.executable or ""
        if self.options.remote_executable:
            return exe, None, None
        name = exe.rstrip("/").rsplit("/", 1)[-1]
        if exe.startswith(_URL_SCHEMES) and not exe.startswith("file://"):
            return name, exe, None
        path = Path(exe.removeprefix("file://")).expanduser()
        try:
            return name, None, path.read_bytes()
        except OSError as exc:
            raise PluginError(
                f"[{self.queue.name}] executable {path} cannot be read ({exc.strerror}); set "
                f"{self.key('remote_executable')} = True if it is a path on the CE"
            ) from None

    def log_dir(self, now: float) -> str | None:
        base = self.factory.settings.baseLogDir or str(self.factory.state_dir / "logs")
        return pilot_script.log_dir(self.factory, self.queue.name, now, base)

    def log_url(self, now: float) -> str | None:
        base = self.factory.settings.baseLogDirUrl
        if not base:
            local = self.log_dir(now)
            return f"file://{Path(local).resolve()}" if local else None
        return pilot_script.log_dir(self.factory, self.queue.name, now, base)

    def descriptions(self, n: int, tags: PilotTags, now: float, delegation: str) -> list[xrsl.Description]:
        o = self.options
        name, url, _ = self._staged
        extra = pilot_script.parse_environ(o.environ)
        static = pilot_script.pilot_environment(self.queue, self.factory, tags, {**self.rsl_env, **extra})
        log_url = self.log_url(now)
        arguments = shlex.split(self.queue.settings.executable_arguments or "")
        inputs: list[xrsl.Value] = []
        if not o.remote_executable:
            inputs.append([name, url or ""])
        for item in split_list(o.inputfiles):
            source = item if item.startswith(_URL_SCHEMES) else ""
            inputs.append([item.rstrip("/").rsplit("/", 1)[-1], source])
        out = []
        for i in range(n):
            cid = f"{tags.intent_id}.{i}"
            env = {
                **static,
                "APFCID": cid,
                "FACTORY_JOBID": f"{self.hostname}#{cid}",
            }
            if log_url:
                env["GTAG"] = f"{log_url}/{cid}.out"
            d = xrsl.Description().add("jobname", tags.job_name()).add("executable", name)
            if arguments:
                d.add("arguments", *arguments)
            d.add("stdout", f"{cid}.out").add("stderr", f"{cid}.err")
            if inputs:
                d.add("inputfiles", *inputs)
            outputs: list[xrsl.Value] = [[f"{cid}.out", ""], [f"{cid}.err", ""]]
            outputs += [[f, ""] for f in split_list(o.outputfiles)]
            d.add("outputfiles", *outputs)
            d.add("environment", *xrsl.environment(env))
            if o.queue:
                d.add("queue", o.queue)
            if o.walltime:
                d.add("walltime", o.walltime)
            if o.cputime:
                d.add("cputime", o.cputime)
            if o.memory:
                d.add("memory", o.memory)
            if o.cpus:
                d.add("count", o.cpus)
                if o.cpus > 1:
                    d.add("countpernode", o.cpus)
            for rte in split_list(o.runtimeenvironment):
                d.add("runtimeenvironment", rte)
            d.add("delegationid", delegation)
            d.raw = self.rsl_raw
            out.append(d)
        return out

    # -- actions --------------------------------------------------------------------------------

    def submit(self, n: int, tags: PilotTags, now: float) -> list[Pilot]:
        if n <= 0:
            return []
        delegation = self.client.delegation()
        descriptions = self.descriptions(n, tags, now, delegation)
        created: list[str] = []
        refused: list[JobResult] = []
        size = self.options.maxperrequest
        for start in range(0, n, size):
            chunk = descriptions[start : start + size]
            try:
                results = self.client.submit(xrsl.multi_job(chunk), [tags.job_name()] * len(chunk))
            except BackendError as exc:
                if not created:
                    raise
                # earlier requests made pilots: they exist (tagged), so they are kept and reported
                log.warning("queue %s: %d of %d pilots not submitted: %s", self.queue.name, n - start, n, exc)
                break
            created += [r.job_id for r in results if r.ok and r.job_id]
            refused += [r for r in results if not (r.ok and r.job_id)]
            if not any(r.ok for r in results):
                break  # the CE refuses everything: do not send the other chunks
        uploaded = self._upload(created)
        if refused:
            reasons = sorted({f"{r.code} {r.reason}".strip() for r in refused})
            message = f"{len(refused)} of {n} pilots refused: " + "; ".join(reasons)[:300]
            if not uploaded:
                raise BackendError(
                    self.target(), message, capacity=any(is_capacity(r.code, r.reason) for r in refused)
                )
            log.warning("queue %s: %s", self.queue.name, message)
        log.info(
            "queue %s: submitted %d pilot(s) to %s (delegation %s)",
            self.queue.name,
            len(uploaded),
            self.target(),
            delegation,
        )
        return [
            Pilot(
                backend_id=job_id,
                queue=self.queue.name,
                state=PilotState.PENDING,
                intent_id=tags.intent_id,
                submitted_at=now,
            )
            for job_id in uploaded
        ]

    def _upload(self, job_ids: list[str]) -> list[str]:
        """Put the pilot wrapper into each new job's session directory; a job that cannot get it
        is killed (it would wait for its input until A-REX gives up)."""
        name, _, data = self._staged
        if data is None or not job_ids:
            return job_ids
        done: list[str] = []
        failed: list[str] = []
        error: BackendError | None = None
        stop = threading.Event()  # after the first failure the rest are not tried

        def put(job_id: str) -> BackendError | None:
            if stop.is_set():
                return BackendError(self.target(), "not uploaded after an earlier failure")
            try:
                self.client.put_file(job_id, name, data)
                return None
            except BackendError as exc:
                stop.set()
                return exc

        # A-REX serves each request in ~10-50 ms: a few at a time, over the same kept-alive pool
        with ThreadPoolExecutor(max_workers=min(UPLOADS_AT_ONCE, len(job_ids))) as pool:
            for job_id, outcome in zip(job_ids, pool.map(put, job_ids), strict=True):
                if outcome is None:
                    done.append(job_id)
                else:
                    failed.append(job_id)
                    error = error or outcome
        if failed:
            log.warning("queue %s: %d pilots did not get %s: %s", self.queue.name, len(failed), name, error)
            try:
                self.client.action("kill", failed)
            except BackendError as exc:
                log.warning("queue %s: cannot kill them (they fail on the CE): %s", self.queue.name, exc)
            if not done and error is not None:
                raise error
        return done

    def cancel(self, backend_ids: Sequence[str]) -> None:
        if backend_ids:
            self._check(self.client.action("kill", list(backend_ids)), "kill")

    def retire(self, backend_ids: Sequence[str], kill: bool = False) -> None:
        """A grid pilot cannot be drained from outside: only ``kill`` removes running pilots."""
        if kill:
            self.cancel(backend_ids)
            return
        if not self._warned_no_drain:
            log.warning(
                "queue %s: ARC pilots cannot be drained; %d running pilots are left to finish",
                self.queue.name,
                len(backend_ids),
            )
            self._warned_no_drain = True

    def _check(self, results: list[JobResult], action: str) -> None:
        bad = [r for r in results if not r.ok and r.code != "404"]  # 404: already gone
        if bad:
            sample = "; ".join(sorted({f"{r.code} {r.reason}" for r in bad}))[:300]
            raise BackendError(self.target(), f"{action} refused for {len(bad)} jobs: {sample}")

    def cleanup(self, pilots: Sequence[Pilot], now: float) -> None:
        """Fetch ended pilots' output into the log tree, then clean them on the CE."""
        if not self.options.clean:
            return
        ended = [p for p in pilots if p.state.final and p.backend_id not in self._cleaned]
        if not ended:
            return
        if self.options.fetchoutput:
            self._fetch_output(ended, now)
        ids = [p.backend_id for p in ended]
        self._check(self.client.action("clean", ids), "clean")
        self._cleaned.update(ids)
        if len(self._cleaned) > 100_000:
            self._cleaned = set(ids)

    def _fetch_output(self, pilots: Sequence[Pilot], now: float) -> None:
        directory = self.log_dir(now)
        if not directory:
            return
        infos = {
            r.job_id: r.info for r in self.client.action("info", [p.backend_id for p in pilots]) if r.info
        }
        target = Path(directory)
        target.mkdir(parents=True, exist_ok=True)
        for pilot in pilots:
            info = infos.get(pilot.backend_id) or {}
            for key in ("StdOut", "StdErr"):
                name = info.get(key)
                if not isinstance(name, str) or not name or "/" in name or name.startswith("."):
                    continue
                try:
                    data = self.client.get_file(pilot.backend_id, name, self.options.outputlimit)
                except BackendError as exc:
                    log.info("queue %s: no output of %s: %s", self.queue.name, pilot.backend_id, exc)
                    break
                if data is not None:
                    (target / name).write_bytes(data)

    def close(self) -> None:
        pass


# ---------------------------------------------------------------------------------------------
# status


@dataclass(frozen=True, slots=True)
class ArcStatusEndpoint:
    """What queues sharing one status poller have in common: the CE as reached with one proxy."""

    ce: ArcEndpoint | None
    keep: float = 3600.0
    problem: str | None = None  # a queue whose CE or proxy keys are wrong: every poll says why

    def __str__(self) -> str:  # the poller's label in logs and status
        if self.ce is None:
            return f"invalid ({self.problem})"
        return f"{self.ce.url} ({self.ce.profile})" if self.ce.profile else self.ce.url


@dataclass(slots=True)
class _Job:
    tags: PilotTags | None  # None: not one of this factory's pilots
    submitted: float | None = None
    started: float | None = None
    ended: float | None = None
    node: str | None = None
    exit_code: int | None = None
    state: PilotState = PilotState.PENDING
    settled: bool = False  # final state and exit code known
    final_at: float | None = None


class ArcStatus(BatchStatusPlugin):
    name = "ARC"
    Options: ClassVar[type[PluginOptions]] = ArcStatusOptions

    @classmethod
    def endpoint(cls, queue: QueueConfig, factory: FactoryContext) -> Hashable:
        st = queue.plugin_options("batchstatus")
        keep = st.keep if isinstance(st, ArcStatusOptions) else 3600.0
        try:
            return ArcStatusEndpoint(endpoint_of(queue, factory), keep)
        except PluginError as exc:
            # the queue's submitter fails to build with the same message; the poller must not
            # stop the factory from starting
            return ArcStatusEndpoint(None, keep, problem=str(exc))

    def __init__(self, endpoint: Hashable, factory: FactoryContext) -> None:
        super().__init__(endpoint, factory)
        if not isinstance(endpoint, ArcStatusEndpoint):
            raise PluginError(f"ARC status needs an ARC endpoint, got {endpoint!r}")
        self.problem = endpoint.problem
        self.keep: float = endpoint.keep
        self.ep: ArcEndpoint = endpoint.ce or ArcEndpoint("https://invalid:443/arex", "", "")
        self.client = client_for(self.ep, factory.state_dir)
        self._prefix = f"apf:{factory.factory_id}:"
        self._jobs: dict[str, _Job] = {}

    def _learn(self, ids: list[str]) -> None:
        """Name and times of jobs seen for the first time (after a restart: all of them). A-REX's
        info lacks the name of a job it has not processed yet: then the name this process gave
        it, or the one in its stored description (A-REX stores it before it answers the
        submission, so a listed job without one is being removed)."""
        unnamed: list[str] = []
        for result in self.client.action("info", ids):
            if result.job_id is None or result.code == "404":
                continue  # gone between the list and the info
            info = result.info or {}
            name = str(info.get("Name") or "") or self.client.known_name(result.job_id) or ""
            if name:
                self._identify(result.job_id, name, info)
            else:
                unnamed.append(result.job_id)
        for job_id in unnamed:
            self._identify(job_id, self.client.description_name(job_id) or "", {})

    def _identify(self, job_id: str, name: str, info: Mapping[str, object]) -> None:
        tags = PilotTags.parse_job_name(name) if name.startswith(self._prefix) else None
        job = _Job(tags=tags)
        if tags is not None:
            self._absorb_info(job, info)
        self._jobs[job_id] = job

    def _absorb_info(self, job: _Job, info: Mapping[str, object]) -> None:
        job.submitted = _time(info.get("SubmissionTime")) or job.submitted
        job.started = _time(info.get("StartTime")) or job.started
        job.ended = _time(info.get("EndTime")) or _time(info.get("ComputingManagerEndTime")) or job.ended
        node = info.get("ExecutionNode")
        job.node = (node[0] if isinstance(node, list) and node else node) or job.node  # type: ignore[assignment]
        job.exit_code = _exit_code(info.get("ExitCode"))
        state = map_state(_info_state(info), job.exit_code)
        if state is not None:
            job.state = state

    def poll(self, now: float) -> BatchSnapshot:
        if self.problem:
            raise BackendError("arc", self.problem)
        listed = self.client.job_ids()
        unknown = [i for i in listed if i not in self._jobs]
        if unknown:
            self._learn(unknown)
        listed_set = set(listed)
        for job_id in [i for i in self._jobs if i not in listed_set]:
            del self._jobs[job_id]  # cleaned (by us) or removed by the CE
        # a job that vanished between the list and its info is not known: it is left out
        known = [i for i in listed if i in self._jobs]
        ours = [i for i in known if self._jobs[i].tags is not None and not self._jobs[i].settled]
        ended: list[str] = []
        for result in self.client.action("status", ours) if ours else []:
            job = self._jobs.get(result.job_id or "")
            if job is None:
                continue
            if not result.ok:
                continue  # 404: gone between the list and the status
            state = map_state(result.state)
            if state is None:
                continue  # OTHER: keep what we knew
            if state.final:
                ended.append(result.job_id)  # type: ignore[arg-type]
            elif job.state is PilotState.PENDING and state is PilotState.RUNNING and job.started is None:
                job.started = now
            job.state = state
        if ended:
            for result in self.client.action("info", ended):
                job = self._jobs.get(result.job_id or "")
                if job is not None and result.info:
                    self._absorb_info(job, result.info)
                if job is not None:
                    job.settled = True
                    job.final_at = now
        pilots = []
        for job_id in known:
            job = self._jobs[job_id]
            if job.tags is None:
                continue
            if job.settled and job.final_at is not None and now - job.final_at > self.keep:
                continue  # ended long ago and nobody cleans it: stop reporting it
            pilots.append(
                Pilot(
                    backend_id=job_id,
                    queue=job.tags.queue,
                    state=job.state,
                    intent_id=job.tags.intent_id,
                    submitted_at=job.submitted,
                    started_at=job.started,
                    ended_at=job.ended if job.state.final else None,
                    node=job.node,
                    exit_code=job.exit_code if job.state.final else None,
                )
            )
        return BatchSnapshot(now, tuple(pilots))

    def close(self) -> None:
        pass
