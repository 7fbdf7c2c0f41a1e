"""The shared base of backends that drive a batch system's command-line tools (Slurm, PBS, LSF).

A backend module keeps only what is its own: state tables, argv builders ("commands as data":
``submit_argv``, ``status_argv``, ``cancel_argv``, ...), pure parsers and a ``CommandRules``
value saying how its tools report trouble. Everything else is written once here:

* **Target**: where the commands run, this machine or ``user@host:port`` over SSH. Its label
  (``slurm:local``, ``pbs:apf@head:22``) names the backend in errors and is what the engine
  serialises a queue's actions on. One transport per target is shared by every queue and the
  poller (``transport.pool``): one SSH connection per head node.
* **Submit**: render the pilot script (``script.py``), run one submit command for n pilots (a job
  array where the system has them) with the script on stdin, parse the new ids. **Cancel** in
  chunks of ids; **retire** cancels with ``kill`` and otherwise leaves running pilots alone
  (a backend that can drain, like Slurm, overrides it).
* **Status**: one status command per poll, parsed into this factory's pilots (by tag).
* **Errors**: a failed command becomes a ``BackendError`` naming the target and the command:
  a controller that cannot be contacted is said so; a refusal for capacity, quota or limits is
  ``capacity=True`` (policy tiers spill over); a cancel whose every complaint is "this job has
  already finished" (the backend's own narrow, per-line pattern) is success; a status command
  whose every line says "no jobs" is an empty answer.
* **Status keys**: a status plugin's endpoint (which queues share one poller) is built by one rule,
  ``StatusKeys``.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import Field, field_validator

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
from autopyfactory.plugins.transport.base import RemoteOptions, Result, Transport
from autopyfactory.plugins.transport.pool import POOL, transport_for

if TYPE_CHECKING:
    from autopyfactory.config.models import QueueConfig

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------
# target


@dataclass(frozen=True, slots=True)
class CommandTarget:
    """One batch system as the factory reaches it (hashable: part of a poller's key).

    Fields other than ``system`` are config keys of the same name; a backend subclass adds its
    own when they change where commands go (Slurm's ``cluster``).
    """

    system: str  # "slurm", "pbs", "lsf": the label's prefix
    host: str | None = None
    user: str | None = None
    port: int = 22
    authprofile: str | None = None

    @classmethod
    def from_keys(cls, system: str, key: Callable[[str], Any]) -> CommandTarget:
        values = {f.name: key(f.name) for f in fields(cls) if f.name != "system"}
        values["host"] = values["host"] or None  # an empty host means this machine
        return cls(system, **values)

    @property
    def where(self) -> str:
        if not self.host:
            return "local"
        return f"{self.user + '@' if self.user else ''}{self.host}:{self.port}"

    @property
    def label(self) -> str:
        return f"{self.system}:{self.where}"

    def transport(self, factory: FactoryContext, keys: str) -> Transport:
        """The shared transport (release with ``POOL.release``); ``keys`` names the config keys in errors."""
        return transport_for(
            factory, self.host, user=self.user, port=self.port, authprofile=self.authprofile, where=keys
        )


@dataclass(frozen=True, slots=True)
class CommandEndpoint:
    """A status poller's identity: queues whose endpoints compare equal share one poller.

    Fields other than ``target`` and ``keys`` are status keys of the same name (``StatusKeys``).
    """

    target: CommandTarget
    timeout: float = 60.0
    # the config prefix the target came from, for error messages (not part of the identity)
    keys: str = field(default="", compare=False)


class StatusKeys:
    """The one rule for a status plugin's keys, the same for every command-line backend.

    For each key: the queue's ``batchstatus.<backend>.<key>`` when the queue sets it (to something
    other than None); otherwise ``batchsubmit.<backend>.<key>`` when the queue submits with the same
    backend and that plugin has the key (set, or its default); otherwise the status key's default.
    So a queue names its head node once, under batchsubmit, and may point its poller elsewhere.
    """

    def __init__(self, status: PluginOptions, submit: PluginOptions, same_backend: bool) -> None:
        # ``submit``: the queue's submit options when ``same_backend``, else that plugin's defaults
        self.status = status
        self.submit = submit
        self.same_backend = same_backend

    def __call__(self, name: str) -> Any:
        value = getattr(self.status, name)
        if self._status_sets(name):
            return value
        if name in type(self.submit).model_fields:
            return getattr(self.submit, name)
        return value

    def _status_sets(self, name: str) -> bool:
        return name in self.status.model_fields_set and getattr(self.status, name) is not None

    def origin(self, name: str, status_prefix: str, submit_prefix: str) -> str:
        """Which prefix ``name``'s value came from (to name the right key in an error)."""
        if self._status_sets(name) or not self.same_backend:
            return status_prefix
        return submit_prefix


# ---------------------------------------------------------------------------------------------
# parsing helpers (pure)


class StateTable:
    """A batch system's job state words -> pilot states; an unknown word is ``unknown``, warned once."""

    def __init__(self, system: str, words: Mapping[PilotState, str]) -> None:
        self.system = system
        self._states = {word: state for state, text in words.items() for word in text.split()}
        self._warned: set[str] = set()

    def __call__(self, word: str) -> PilotState:
        state = self._states.get(word)
        if state is None:
            if word not in self._warned:
                self._warned.add(word)
                log.warning("unknown %s job state %r: pilots in it are counted as unknown", self.system, word)
            return PilotState.UNKNOWN
        return state


def parse_int(value: object) -> int | None:
    """An integer field of a command's output; None when it is missing or not a number."""
    try:
        return int(str(value).strip()) if value is not None else None
    except ValueError:
        return None


# ---------------------------------------------------------------------------------------------
# errors


def _every_line(result: Result, pattern: re.Pattern[str] | None) -> bool:
    """Every non-blank line of the command's complaint (stderr, else stdout) matches ``pattern``."""
    if pattern is None:
        return False
    text = result.stderr if result.stderr.strip() else result.stdout
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return bool(lines) and all(pattern.search(line) for line in lines)


@dataclass(frozen=True, slots=True)
class CommandRules:
    """How one batch system's tools report trouble, matched on the command's own text."""

    system: str  # as shown in messages: "Slurm"
    controller: str = ""  # the daemon named when it cannot be contacted: "slurmctld"
    unreachable: tuple[str, ...] = ()  # text meaning the controller could not be contacted
    capacity: tuple[str, ...] = ()  # text meaning a refusal for capacity, quota or a limit
    # one line of a cancel command's complaint about a job that has already finished or is gone
    gone: re.Pattern[str] | None = None
    # one line of a status command's "there are no jobs" (an empty answer, not a failure)
    no_jobs: re.Pattern[str] | None = None

    def error(self, target: str, what: str, result: Result) -> BackendError:
        """A clear BackendError for a failed command ``what`` on ``target``."""
        text = result.brief()
        if any(marker in text for marker in self.unreachable):
            return BackendError(target, f"{what}: cannot contact {self.controller} (is it running?): {text}")
        if result.rc == 127 or "command not found" in text:
            return BackendError(target, f"{what}: {self.system} client tools not found on the target: {text}")
        capacity = any(marker in text for marker in self.capacity)
        return BackendError(target, f"{what} failed (exit {result.rc}): {text}", capacity=capacity)

    def only_gone(self, result: Result) -> bool:
        """A failed cancel that complained only about jobs that had already finished."""
        return _every_line(result, self.gone)

    def only_no_jobs(self, result: Result) -> bool:
        """A failed status command that only said there are no jobs."""
        return _every_line(result, self.no_jobs)


def program(argv: Sequence[str]) -> str:
    """The command's name for messages: ``env X=1 squeue ...`` -> ``squeue``."""
    for word in argv:
        if word != "env" and "=" not in word:
            return word
    return argv[0] if argv else "?"


def chunks(items: Sequence[str], size: int) -> Iterator[list[str]]:
    """Ids in groups small enough for one command line (scancel, qdel, bkill, sacct)."""
    for i in range(0, len(items), size):
        yield list(items[i : i + size])


# ---------------------------------------------------------------------------------------------
# what submit and status share


class CommandRunner:
    """The target, its pooled transport and running argv on it with the backend's error rules.

    ``transport`` may be replaced (tests record or replay commands through it); ``close``
    releases the pooled one.
    """

    rules: ClassVar[CommandRules]
    command_target: CommandTarget
    transport: Transport
    timeout: float
    _pooled: Transport

    def _connect(self, factory: FactoryContext, target: CommandTarget, timeout: float, keys: str) -> None:
        self.command_target = target
        self._pooled = target.transport(factory, keys)
        self.transport = self._pooled
        self.timeout = timeout

    def run(self, argv: Sequence[str], input: bytes | None = None) -> Result:
        """Run argv on the target; a non-zero exit is a normal Result."""
        return self.transport.run(argv, input=input, timeout=self.timeout)

    def check(self, argv: Sequence[str], input: bytes | None = None, what: str | None = None) -> Result:
        """Run argv; a non-zero exit raises the classified BackendError."""
        result = self.run(argv, input)
        if result.rc != 0:
            raise self.rules.error(self.command_target.label, what or program(argv), result)
        return result

    def close(self) -> None:
        POOL.release(self._pooled)


# ---------------------------------------------------------------------------------------------
# submit


class CommandSubmitOptions(RemoteOptions, SubmitOptions):
    """Keys every command-line backend's submit plugin has, besides its resources."""

    extra: str | None = Field(None, description="extra batch directives, one per line or ';' separated")
    environ: str | None = Field(None, description="NAME=value items added to the pilot environment")
    workdir: str | None = Field(None, description="pilot working directory on the cluster")
    logdir: str | None = Field(None, description="directory on the cluster for pilot output")
    logurl: str | None = Field(
        None, description="URL that serves logdir (GTAG points at <logurl>/<APFCID>.out)"
    )

    @field_validator("environ")
    @classmethod
    def _environ(cls, value: str | None) -> str | None:
        pilot_script.parse_environ(value)
        return value


class CommandSubmit(CommandRunner, BatchSubmitPlugin):
    """Submit, cancel and retire through a batch system's commands.

    A backend sets ``Options``, ``rules``, ``directive`` (and ``Target`` when it has more target
    keys) and writes ``directives``, ``cid_setup``, ``submit_argv``, ``submitted_ids`` and
    ``cancel_argv``.
    """

    Options: ClassVar[type[CommandSubmitOptions]] = CommandSubmitOptions
    Target: ClassVar[type[CommandTarget]] = CommandTarget
    directive: ClassVar[str] = ""  # "#SBATCH"
    log_name: ClassVar[str] = "${APFCID}"  # shell expression of a pilot's log file name (no .out)
    chunk_size: ClassVar[int] = 200  # ids per cancel command

    def __init__(self, queue: QueueConfig, options: CommandSubmitOptions, factory: FactoryContext) -> None:
        super().__init__(queue, options, factory)
        self.options = options
        target = self.Target.from_keys(self.name.lower(), lambda key: getattr(options, key))
        self._connect(factory, target, options.timeout, self.prefixes()[0].rstrip("."))
        self._made_dirs: set[str] = set()

    def target(self) -> str:
        return self.command_target.label

    # -- what a backend writes -----------------------------------------------------------------

    def directives(self) -> list[str]:
        """The script's directive lines after the prefix (e.g. ``--time=60``)."""
        raise NotImplementedError

    def cid_setup(self) -> str:
        """Shell lines that set ``APFCID`` from the batch system's variables at run time."""
        raise NotImplementedError

    def submit_argv(self, n: int, tags: PilotTags, now: float) -> list[str]:
        """One command that submits n pilots (the script comes on stdin)."""
        raise NotImplementedError

    def submitted_ids(self, output: str, n: int) -> list[str]:
        """Pure: the n pilots' ids from the submit command's output; ValueError when it has none."""
        raise NotImplementedError

    def cancel_argv(self, job_ids: Sequence[str]) -> list[str]:
        raise NotImplementedError

    def gtag_prefix(self, now: float) -> str | None:
        """Where a pilot's log is published: GTAG = <prefix>/<log name>.out."""
        return self.options.logurl or self.options.logdir

    def script_output_dir(self) -> str | None:
        """The directory the script sends its own output to (None: the submit command places it)."""
        return self.options.logdir

    def output_dir(self, now: float) -> str | None:
        """A directory the submit command needs to exist on the target before it runs."""
        return None

    # -- the flow ------------------------------------------------------------------------------

    def script(self, tags: PilotTags, now: float) -> str:
        spec = pilot_script.ScriptSpec(
            directive=self.directive,
            directives=self.directives(),
            cid_setup=self.cid_setup(),
            executable=pilot_script.executable(self.queue, self.target()),
            arguments=self.queue.settings.executable_arguments,
            environment=pilot_script.pilot_environment(
                self.queue, self.factory, tags, pilot_script.parse_environ(self.options.environ)
            ),
            gtag_prefix=self.gtag_prefix(now),
            comment=f"autopyfactory pilot: {tags.job_name()}",
            log_name=self.log_name,
            redirect_dir=self.script_output_dir(),
        )
        return pilot_script.render(spec)

    def submit(self, n: int, tags: PilotTags, now: float) -> list[Pilot]:
        if n <= 0:
            return []
        text = self.script(tags, now)
        argv = self.submit_argv(n, tags, now)
        self._ensure_dir(self.output_dir(now))
        result = self.check(argv, input=text.encode())
        try:
            ids = self.submitted_ids(result.stdout, n)
        except ValueError as exc:
            raise BackendError(self.target(), str(exc)) from None
        first = ids[0] if len(ids) == 1 else f"{ids[0]} .. {ids[-1]}"
        log.info("queue %s: submitted %d pilot(s) to %s: %s", self.queue.name, n, self.target(), first)
        return [Pilot(i, self.queue.name, PilotState.PENDING, tags.intent_id, submitted_at=now) for i in ids]

    def _ensure_dir(self, path: str | None) -> None:
        if not path or path in self._made_dirs:
            return
        result = self.transport.makedirs(path, timeout=self.timeout)
        if result.rc != 0:
            raise BackendError(self.target(), f"cannot create log directory {path}: {result.brief()}")
        self._made_dirs.add(path)

    def cancel(self, backend_ids: Sequence[str]) -> None:
        for chunk in chunks(list(backend_ids), self.chunk_size):
            argv = self.cancel_argv(chunk)
            result = self.run(argv)
            if result.rc != 0 and not self.rules.only_gone(result):
                raise self.rules.error(self.target(), program(argv), result)

    def retire(self, backend_ids: Sequence[str], kill: bool = False) -> None:
        """``kill`` cancels; otherwise running pilots keep running (no per-job drain)."""
        if kill:
            self.cancel(backend_ids)
        elif backend_ids:
            log.info(
                "queue %s: %s has no per-job drain; %d pilot(s) keep running",
                self.queue.name,
                self.rules.system,
                len(backend_ids),
            )


# ---------------------------------------------------------------------------------------------
# status


class CommandStatus(CommandRunner, BatchStatusPlugin):
    """One status command per poll, parsed into this factory's pilots.

    A backend sets ``Options``, ``Submit`` (whose keys are the fallback, see ``StatusKeys``),
    ``rules`` (and ``Target``/``Endpoint`` when it has more keys) and writes ``status_argv``
    and ``pilots``.
    """

    Options: ClassVar[type[RemoteOptions]] = RemoteOptions
    Submit: ClassVar[type[CommandSubmit]] = CommandSubmit
    Target: ClassVar[type[CommandTarget]] = CommandTarget
    Endpoint: ClassVar[type[CommandEndpoint]] = CommandEndpoint

    @classmethod
    def endpoint(cls, queue: QueueConfig, factory: FactoryContext) -> Hashable:
        """The target plus the status keys, by ``StatusKeys``: equal endpoints share one poller."""
        status = queue.plugin_options("batchstatus")
        submit = queue.plugin_options("batchsubmit")
        same_backend = isinstance(submit, cls.Submit.Options)
        keys = StatusKeys(
            status if isinstance(status, cls.Options) else cls.Options(),
            submit if isinstance(submit, cls.Submit.Options) else cls.Submit.Options(),
            same_backend,
        )
        target = cls.Target.from_keys(cls.name.lower(), keys)
        values = {f.name: keys(f.name) for f in fields(cls.Endpoint) if f.name not in ("target", "keys")}
        origin = keys.origin("host", cls.prefixes()[0].rstrip("."), cls.Submit.prefixes()[0].rstrip("."))
        return cls.Endpoint(target=target, keys=origin, **values)

    def __init__(self, endpoint: Hashable, factory: FactoryContext) -> None:
        super().__init__(endpoint, factory)
        if not isinstance(endpoint, self.Endpoint):
            endpoint = self.Endpoint(self.Target(self.name.lower()))
        self.ep = endpoint
        self._connect(
            factory, endpoint.target, endpoint.timeout, endpoint.keys or self.prefixes()[0].rstrip(".")
        )
        self._own_prefix = f"apf:{factory.factory_id}:"

    @property
    def target_name(self) -> str:
        return self.command_target.label

    def describe_endpoint(self) -> str:
        return f"{self.kind} {self.name} at {self.target_name}"

    def transport_state(self) -> str | None:
        state = self.transport.state()
        return None if state == "ok" else state

    # -- what a backend writes -----------------------------------------------------------------

    def status_argv(self) -> list[str]:
        raise NotImplementedError

    def pilots(self, output: str, now: float) -> list[Pilot]:
        """This factory's pilots in the status command's output; ValueError when it does not parse."""
        raise NotImplementedError

    # -- the flow ------------------------------------------------------------------------------

    def own_tags(self, tag: str | None) -> PilotTags | None:
        """The tags of one of this factory's pilots, or None for anyone else's job."""
        if not tag or not tag.startswith(self._own_prefix):
            return None
        return PilotTags.parse_job_name(tag)

    def query(self, argv: Sequence[str]) -> str:
        """A status command's output; "no jobs" is an empty answer, other failures raise."""
        result = self.run(argv)
        if result.rc != 0 and not self.rules.only_no_jobs(result):
            raise self.rules.error(self.target_name, program(argv), result)
        return result.stdout

    def poll(self, now: float) -> BatchSnapshot:
        output = self.query(self.status_argv())
        try:
            pilots = self.pilots(output, now)
        except ValueError as exc:
            raise BackendError(self.target_name, str(exc)) from None
        return BatchSnapshot(now, tuple(pilots))
