"""``batchsubmitplugin = PSIJ`` / ``batchstatusplugin = PSIJ``: pilots through the PSI/J library.

An optional adapter over psij-python (``pip install autopyfactory[psij]``, imported only when a
queue uses it) for the schedulers PSI/J supports: ``local``, ``slurm``, ``pbs``, ``lsf``,
``cobalt``, ``flux``... Submit, status and cancel go through PSI/J's executor; the status plugin
reports the pilots that the submit plugins of this process created (or that were adopted with
``PSIJStatus.adopt``).

Limits, compared with the native Slurm/PBS/LSF backends: PSI/J has no job arrays (n pilots are n
submissions), it cannot list jobs by tag, so pilots are adopted after a restart only when the
engine hands their ids to ``adopt``; and PSI/J wraps the executable in its own launcher, so its
exit code is the pilot's, while the batch system itself may report the job as completed.
"""

from __future__ import annotations

import logging
import shlex
import threading
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import Field

from autopyfactory.model import BatchSnapshot, Pilot, PilotState, PilotTags
from autopyfactory.plugins.base import (
    BackendError,
    BatchStatusPlugin,
    BatchSubmitPlugin,
    FactoryContext,
    PluginOptions,
    SubmitOptions,
)
from autopyfactory.plugins.batch import script as pilot_script
from autopyfactory.plugins.keys import PSIJ, NeedsModules

if TYPE_CHECKING:
    from autopyfactory.config.models import QueueConfig

log = logging.getLogger(__name__)


class PSIJTargetOptions(PluginOptions):
    executor: str = Field("local", description="PSI/J executor name: local, slurm, pbs, lsf, cobalt, flux")
    url: str | None = Field(None, description="executor URL, when the executor takes one")
    polling: float = Field(5.0, gt=0, description="seconds between PSI/J's queue polls (batch executors)")
    keep: float = Field(3600.0, ge=0, description="seconds a finished pilot stays in snapshots")


class PSIJSubmitOptions(PSIJTargetOptions, SubmitOptions):
    queue: str | None = Field(None, description="batch queue / partition")
    account: str | None = Field(None, description="account / project charged")
    walltime: int = Field(60, ge=1, description="minutes")
    cores: int | None = Field(None, ge=1, description="CPU cores per pilot")
    environ: str | None = Field(None, description="NAME=value items added to the pilot environment")
    workdir: str | None = Field(None, description="pilot working directory on the cluster")
    logdir: str | None = Field(None, description="directory for pilot stdout/stderr (<psij job id>.out/.err)")
    logurl: str | None = Field(
        None, description="URL that serves logdir (GTAG points at <logurl>/<APFCID>.out)"
    )


class PSIJStatusOptions(PSIJTargetOptions):
    pass


@dataclass(frozen=True, slots=True)
class PSIJEndpoint:
    executor: str = "local"
    url: str | None = None
    polling: float = 5.0
    keep: float = 3600.0

    @property
    def label(self) -> str:
        return f"psij:{self.executor}" + (f"@{self.url}" if self.url else "")


@dataclass
class _Tracked:
    job: Any  # psij.Job
    queue: str
    intent_id: str | None
    factory_id: str
    submitted_at: float | None
    ended_seen: float | None = None


class _Runtime:
    """One PSI/J executor and the jobs it tracks, shared by the plugins of one endpoint."""

    _lock = threading.Lock()
    _all: dict[PSIJEndpoint, _Runtime] = {}

    @classmethod
    def get(cls, ep: PSIJEndpoint) -> _Runtime:
        with cls._lock:
            if ep not in cls._all:
                cls._all[ep] = cls(ep)
            return cls._all[ep]

    def __init__(self, ep: PSIJEndpoint) -> None:
        self.ep = ep
        self.lock = threading.Lock()
        self.jobs: dict[str, _Tracked] = {}  # native id -> job
        self._executor: Any = None

    def executor(self) -> Any:
        with self.lock:
            if self._executor is None:
                try:
                    from psij import JobExecutor
                except ImportError:
                    raise BackendError(
                        self.ep.label, "psij-python is not installed (pip install 'autopyfactory[psij]')"
                    ) from None
                config = None
                if self.ep.executor != "local":
                    from psij.executors.batch.batch_scheduler_executor import BatchSchedulerExecutorConfig

                    config = BatchSchedulerExecutorConfig(
                        queue_polling_interval=max(1, round(self.ep.polling)),
                        initial_queue_polling_delay=max(1, round(self.ep.polling)),
                    )
                try:
                    self._executor = JobExecutor.get_instance(
                        self.ep.executor, url=self.ep.url, config=config
                    )
                except ValueError as exc:
                    raise BackendError(self.ep.label, f"PSI/J executor {self.ep.executor!r}: {exc}") from None
            return self._executor


_STATES = {
    "NEW": PilotState.PENDING,
    "QUEUED": PilotState.PENDING,
    "ACTIVE": PilotState.RUNNING,
    "COMPLETED": PilotState.DONE,
    "FAILED": PilotState.FAILED,
    "CANCELED": PilotState.CANCELLED,
}


def map_state(name: str, exit_code: int | None = None) -> PilotState:
    state = _STATES.get(name.upper(), PilotState.UNKNOWN)
    if state is PilotState.UNKNOWN:
        log.warning("unknown PSI/J job state %r: counted as unknown", name)
    return state


def _endpoint(options: PSIJTargetOptions) -> PSIJEndpoint:
    return PSIJEndpoint(options.executor, options.url, options.polling, options.keep)


class PSIJSubmit(NeedsModules, BatchSubmitPlugin):
    requires = (PSIJ,)
    name = "PSIJ"
    Options = PSIJSubmitOptions

    def __init__(self, queue: QueueConfig, options: PSIJSubmitOptions, factory: FactoryContext) -> None:
        super().__init__(queue, options, factory)
        self.options: PSIJSubmitOptions = options
        self.runtime = _Runtime.get(_endpoint(options))

    def target(self) -> str:
        return self.runtime.ep.label

    def job_spec(self, tags: PilotTags, job_id: str) -> Any:
        """The psij.JobSpec of one pilot (``job_id`` is PSI/J's own id, known before submission)."""
        from psij import JobAttributes, JobSpec, ResourceSpecV1

        o = self.options
        exe = pilot_script.executable(self.queue, self.target())
        env = pilot_script.pilot_environment(
            self.queue, self.factory, tags, pilot_script.parse_environ(o.environ)
        )
        env["APFCID"] = job_id
        prefix = o.logurl or o.logdir
        if prefix:
            env["GTAG"] = f"{prefix.rstrip('/')}/{job_id}.out"
        return JobSpec(
            executable=exe,
            arguments=shlex.split(self.queue.settings.executable_arguments or ""),
            directory=Path(o.workdir) if o.workdir else None,
            name=tags.job_name(),
            environment=dict(env),
            stdout_path=Path(o.logdir) / f"{job_id}.out" if o.logdir else None,
            stderr_path=Path(o.logdir) / f"{job_id}.err" if o.logdir else None,
            resources=ResourceSpecV1(cpu_cores_per_process=o.cores) if o.cores else None,
            attributes=JobAttributes(
                duration=timedelta(minutes=o.walltime),
                queue_name=o.queue,
                account=o.account,
                custom_attributes=self.tag_attributes(tags),
            ),
        )

    def tag_attributes(self, tags: PilotTags) -> dict[str, object] | None:
        """PSI/J renders ``<executor>.<option>`` custom attributes as scheduler directives: put the
        tag where the native backends put it, for the schedulers whose option names we know."""
        if self.options.executor == "slurm":
            return {"slurm.job-name": tags.job_name(), "slurm.comment": tags.job_name()}
        return None

    def submit(self, n: int, tags: PilotTags, now: float) -> list[Pilot]:
        from psij import Job
        from psij.exceptions import SubmitException

        executor = self.runtime.executor()
        if self.options.logdir:
            Path(self.options.logdir).mkdir(parents=True, exist_ok=True)
        pilots: list[Pilot] = []
        for _ in range(max(0, n)):
            job = Job()
            job.spec = self.job_spec(tags, job.id)
            try:
                executor.submit(job)
            except (SubmitException, OSError) as exc:
                if pilots:
                    log.warning(
                        "queue %s: %d of %d pilots submitted: %s", self.queue.name, len(pilots), n, exc
                    )
                    return pilots  # the ones submitted are real; the caller records them
                raise BackendError(self.target(), f"submit failed: {exc}") from None
            native = str(job.native_id)
            with self.runtime.lock:
                self.runtime.jobs[native] = _Tracked(
                    job, self.queue.name, tags.intent_id, tags.factory_id, now
                )
            pilots.append(
                Pilot(native, self.queue.name, PilotState.PENDING, tags.intent_id, submitted_at=now)
            )
        return pilots

    def cancel(self, backend_ids: Sequence[str]) -> None:
        executor = self.runtime.executor()
        for native in backend_ids:
            with self.runtime.lock:
                tracked = self.runtime.jobs.get(native)
            try:
                if tracked is not None:
                    tracked.job.cancel()
                else:
                    from psij import Job

                    job = Job()
                    executor.attach(job, native)
                    executor.cancel(job)
            except Exception as exc:  # one pilot failing to cancel must not stop the others
                log.warning("%s: cancel of %s failed: %s", self.target(), native, exc)

    def retire(self, backend_ids: Sequence[str], kill: bool = False) -> None:
        if kill:
            self.cancel(backend_ids)
        elif backend_ids:
            log.info(
                "queue %s: PSI/J has no drain; %d pilot(s) keep running", self.queue.name, len(backend_ids)
            )


class PSIJStatus(NeedsModules, BatchStatusPlugin):
    requires = (PSIJ,)
    name = "PSIJ"
    Options = PSIJStatusOptions
    settles = True  # pilots of an earlier run are tracked again (``adopt``)

    @classmethod
    def endpoint(cls, queue: QueueConfig, factory: FactoryContext) -> Hashable:
        sub = queue.plugin_options("batchsubmit")
        st = queue.plugin_options("batchstatus")
        src = sub if isinstance(sub, PSIJTargetOptions) else st
        return _endpoint(src if isinstance(src, PSIJTargetOptions) else PSIJStatusOptions())

    def __init__(self, endpoint: Hashable, factory: FactoryContext) -> None:
        super().__init__(endpoint, factory)
        ep = endpoint if isinstance(endpoint, PSIJEndpoint) else PSIJEndpoint()
        self.runtime = _Runtime.get(ep)

    def settle(self, pilots: Sequence[Pilot], now: float) -> Sequence[Pilot]:
        """After a restart: track the store's pilots again; the next poll reports their state."""
        self.adopt(pilots)
        return pilots

    def adopt(self, pilots: Sequence[Pilot]) -> None:
        """Track pilots this process did not submit (ids from the store after a restart)."""
        from psij import Job

        executor = self.runtime.executor()
        for pilot in pilots:
            with self.runtime.lock:
                if pilot.backend_id in self.runtime.jobs:
                    continue
            job = Job()
            try:
                executor.attach(job, pilot.backend_id)
            except Exception as exc:
                log.warning("%s: cannot adopt %s: %s", self.runtime.ep.label, pilot.backend_id, exc)
                continue
            with self.runtime.lock:
                self.runtime.jobs[pilot.backend_id] = _Tracked(
                    job, pilot.queue, pilot.intent_id, self.factory.factory_id, pilot.submitted_at
                )

    def poll(self, now: float) -> BatchSnapshot:
        pilots = []
        with self.runtime.lock:
            items = list(self.runtime.jobs.items())
        for native, tracked in items:
            if tracked.factory_id != self.factory.factory_id:
                continue
            status = tracked.job.status
            state = map_state(status.state.name)
            if state.final and tracked.ended_seen is None:
                tracked.ended_seen = now
            if tracked.ended_seen is not None and now - tracked.ended_seen > self.runtime.ep.keep:
                with self.runtime.lock:
                    self.runtime.jobs.pop(native, None)
                continue
            pilots.append(
                Pilot(
                    backend_id=native,
                    queue=tracked.queue,
                    state=state,
                    intent_id=tracked.intent_id,
                    submitted_at=tracked.submitted_at,
                    ended_at=status.time if state.final else None,
                    exit_code=status.exit_code if state.final else None,
                )
            )
        return BatchSnapshot(now, tuple(pilots))
