"""CondorBase: AutoPyFactory's submit contract, shared by every HTCondor submit flavour.

Every pilot carries ``+MATCH_APF_QUEUE``, ``+APF_QUEUE``, ``+FACTORY_JOBID``, the log URLs, our
adoption tags (``+APF_FACTORY_ID``, ``+APF_INTENT_ID``) and the pilot environment (``PANDA_JSID``,
``GTAG``, ``APFCID``, ``APFFID``, ``FACTORY_JOBID``, ``APFMON``, ``FACTORYQUEUE``, ``FACTORYUSER``
and ``environ``). Lines are applied in order base, flavour, ``condor_attributes``,
``condor_attributes.<NAME>``; a later line replaces an earlier one with the same command (submit
commands ignore case, and ``+X`` is ``MY.X``). The description becomes a real ``htcondor2.Submit``
and n pilots are queued in one transaction (one cluster).
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import Field

from autopyfactory.model import Pilot, PilotState, PilotTags
from autopyfactory.plugins.base import (
    BackendError,
    BatchSubmitPlugin,
    FactoryContext,
    PluginError,
    PluginOptions,
    SubmitOptions,
)
from autopyfactory.plugins.batch.condor import logs
from autopyfactory.plugins.batch.condor.schedd import (
    Address,
    ScheddApi,
    connect,
    make_address,
    parse_queryargs,
    quote,
)
from autopyfactory.plugins.keys import HTCONDOR, NeedsModules, auth_field

if TYPE_CHECKING:
    import htcondor2

    from autopyfactory.config.models import QueueConfig

log = logging.getLogger(__name__)

# how often a queue prunes its old log directories
LOG_CLEAN_INTERVAL = 3600.0


class CondorBaseOptions(SubmitOptions):
    dynamic: ClassVar[Mapping[str, str]] = {"condor_attributes.": "condor_attributes_keys"}

    condor_attributes: str | None = Field(
        None,
        description="extra submit lines: 'k = v, k2 = v2' (a comma after an odd number of '\\' is literal)",
    )
    condor_attributes_keys: dict[str, str] = Field(default_factory=dict)
    environ: str | None = Field(None, description="extra pilot environment, 'A=1 B=2' (HTCondor syntax)")
    proxy: str | None = auth_field(
        None, "X509", many=True, description="comma list of X509 auth profiles; the first one wins"
    )
    proxyfile: str | None = Field(None, description="explicit x509userproxy path (when no proxy profile)")
    # remote submission (APF lost it at HEAD): the same keys as batchstatus.condor.*
    scheddhost: str | None = Field(None, description="submit to this remote schedd (default: the local one)")
    scheddport: int | None = Field(
        None, description="accepted for AutoPyFactory compatibility; the schedd is found by name"
    )
    collectorhost: str | None = Field(None, description="collector (pool) that locates the remote schedd")
    collectorport: int | None = Field(None, description="the collector's port when not in collectorhost")
    submitargs: str | None = Field(None, description="APF 2.4: '-remote <schedd>' / '-name' / '-pool'")


# --------------------------------------------------------------------------------------------
# Pure helpers


def split_condor_attributes(text: str) -> list[tuple[str, str]]:
    """APF's ``condor_attributes``: split on commas, except a comma after an odd number of
    backslashes; pairs of backslashes collapse to one. Each item is ``key = value`` split at the
    first '='."""
    items: list[str] = []
    current: list[str] = []
    i = 0
    while i < len(text):
        ch = text[i]
        if ch == "\\":
            j = i
            while j < len(text) and text[j] == "\\":
                j += 1
            run = j - i
            escaped_comma = j < len(text) and text[j] == "," and run % 2 == 1
            current.append("\\" * (run // 2))
            if escaped_comma:
                current.append(",")
                j += 1
            elif run % 2 == 1:
                current.append("\\")  # a lone backslash before anything else stays
            i = j
            continue
        if ch == ",":
            items.append("".join(current))
            current = []
        else:
            current.append(ch)
        i += 1
    items.append("".join(current))
    out = []
    for item in items:
        if not item.strip():
            continue
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"condor_attributes item {item.strip()!r} is not 'key = value'")
        out.append((key.strip(), value.strip()))
    return out


def env_value(value: str) -> str:
    """One value in HTCondor's quoted environment syntax."""
    if any(c.isspace() for c in value) or "'" in value:
        return "'" + value.replace("'", "''") + "'"
    return value


def format_environment(pairs: Sequence[tuple[str, str]], extra: str | None = None) -> str:
    """``"A=1 B='two words'"``: HTCondor's new environment syntax (double quotes doubled)."""
    body = " ".join(f"{k}={env_value(v)}" for k, v in pairs)
    if extra and extra.strip():
        body = f"{body} {extra.strip()}"
    return '"' + body.replace('"', '""') + '"'


def command_id(key: str) -> str:
    """Identity of a submit command: case-insensitive, ``+X`` equals ``MY.X``."""
    k = key.strip().lower()
    return "my." + k[1:] if k.startswith("+") else k


class Description:
    """Ordered submit lines where a later line replaces an earlier one with the same command."""

    def __init__(self) -> None:
        self._lines: dict[str, tuple[str, str]] = {}

    def set(self, key: str, value: str) -> None:
        cid = command_id(key)
        self._lines.pop(cid, None)  # re-insert at the end: the later line wins and shows last
        self._lines[cid] = (key.strip(), value)

    def update(self, pairs: Mapping[str, str] | Sequence[tuple[str, str]]) -> None:
        for key, value in pairs.items() if isinstance(pairs, Mapping) else pairs:
            self.set(key, value)

    def get(self, key: str) -> str | None:
        found = self._lines.get(command_id(key))
        return found[1] if found else None

    def as_dict(self) -> dict[str, str]:
        return dict(self._lines.values())

    def text(self, n: int) -> str:
        body = "\n".join(f"{k} = {v}" for k, v in self._lines.values())
        return f"{body}\nqueue {n}\n"


def submit_address(options: CondorBaseOptions) -> Address:
    """The schedd to submit to: explicit keys, else APF 2.4's ``submitargs``, else the local one."""
    if options.scheddhost or options.collectorhost:
        return make_address(
            options.scheddhost, options.scheddport, options.collectorhost, options.collectorport
        )
    if options.submitargs:
        words = options.submitargs.split()
        # '-remote X' is condor_submit's spelling of '-name X'
        words = ["-name" if w == "-remote" else w for w in words]
        schedd, pool = parse_queryargs(" ".join(words))
        return make_address(
            schedd,
            None,
            pool.split(":")[0] if pool else None,
            int(pool.split(":")[1]) if pool and ":" in pool else None,
        )
    return Address()


# --------------------------------------------------------------------------------------------


class CondorBase(NeedsModules, BatchSubmitPlugin):
    requires = (HTCONDOR,)
    """Common lines of every HTCondor pilot; flavours add theirs in ``flavour_lines``."""

    name = "CondorBase"
    Options: ClassVar[type[PluginOptions]] = CondorBaseOptions
    key_prefixes: ClassVar[tuple[str, ...]] = ("batchsubmit.condorbase.",)
    has_cleanup = True  # the pilot log tree is pruned once a day (EC2 also removes retired VMs)
    # whether this flavour runs the queue's executable (CondorEC2 runs an image instead)
    needs_executable: ClassVar[bool] = True

    options: CondorBaseOptions

    def __init__(self, queue: QueueConfig, options: PluginOptions, factory: FactoryContext) -> None:
        super().__init__(queue, options, factory)
        if self.needs_executable and not queue.settings.executable:
            raise PluginError(
                f"[{queue.name}] batchsubmitplugin = {self.name} needs 'executable' (the pilot or wrapper)"
            )
        try:
            self.address = submit_address(self.options)
        except ValueError as exc:
            raise PluginError(f"[{queue.name}] {self.prefixes()[0]}submitargs: {exc}") from exc
        try:
            self.attributes = split_condor_attributes(self.options.condor_attributes or "")
        except ValueError as exc:
            raise PluginError(f"[{queue.name}] {self.prefixes()[0]}condor_attributes: {exc}") from exc
        self.proxy_path = self.resolve_proxy()
        self.hostname = socket.gethostname()
        settings = factory.settings
        self.base_log_dir = settings.baseLogDir or str(factory.state_dir / "logs")
        self.base_log_url = settings.baseLogDirUrl or f"file://{Path(self.base_log_dir).resolve()}"
        self._schedd: ScheddApi | None = None
        self._last_log_clean: float | None = None
        self._warned_no_drain = False
        self.setup()
        # build the flavour's lines once now, so a bad key fails at load, not at the first submit
        self.flavour_lines()

    def setup(self) -> None:
        """Flavours resolve their keys and credentials here (called once by ``__init__``)."""

    # ---- configuration helpers -------------------------------------------------------------

    def key(self, suffix: str) -> str:
        """The key name to show in messages (the most specific prefix)."""
        return self.prefixes()[0] + suffix

    def resolve_proxy(self) -> str | None:
        """APF: ``proxy = a, b``: the first listed profile that is a defined X509 profile wins;
        ``None`` (or unset) means no proxy; ``proxyfile`` is an explicit path."""
        names = [n.strip() for n in (self.options.proxy or "").split(",") if n.strip()]
        names = [n for n in names if n not in ("None", "none")]
        if not names:
            return self.options.proxyfile
        for name in names:
            profile = self.factory.auth_profiles.get(name)
            if profile is not None and profile.plugin == "X509":
                return str(Path(profile.options.proxyfile).expanduser())
        defined = ", ".join(sorted(self.factory.auth_profiles)) or "none"
        raise PluginError(
            f"[{self.queue.name}] {self.key('proxy')}: none of {', '.join(map(repr, names))} is an X509 "
            f"profile defined in auth.conf (defined: {defined})"
        )

    # ---- the description -------------------------------------------------------------------

    def flavour_lines(self) -> list[tuple[str, str]]:
        """Lines of one flavour (universe, grid_resource, ...)."""
        return []

    def logged_lines(self, log_url: str) -> list[tuple[str, str]]:
        """Flavour lines that need this cycle's log URL (Nordugrid's RSL environment)."""
        return []

    def environment_pairs(self, log_url: str) -> list[tuple[str, str]]:
        fid = self.factory.factory_id
        job = "$(Cluster).$(Process)"
        pairs = [
            ("PANDA_JSID", fid),
            ("GTAG", f"{log_url}/{job}.out"),
            ("APFCID", job),
            ("APFFID", fid),
            ("FACTORY_JOBID", f"{self.hostname}#{job}"),
        ]
        if self.factory.monitor_url:
            pairs.append(("APFMON", self.factory.monitor_url))
        pairs.append(("FACTORYQUEUE", self.queue.name))
        if self.factory.settings.factoryUser:
            pairs.append(("FACTORYUSER", self.factory.settings.factoryUser))
        return pairs

    def base_lines(self, tags: PilotTags, log_dir: str, log_url: str) -> list[tuple[str, str]]:
        q = self.queue
        job = "$(Cluster).$(Process)"
        lines = [("Dir", log_dir)]
        if self.factory.settings.factoryAdminEmail:
            lines.append(("notify_user", self.factory.settings.factoryAdminEmail))
        lines += [
            ("+MATCH_APF_QUEUE", quote(q.name)),
            ("+APF_QUEUE", quote(q.name)),
            ("+FACTORY_JOBID", quote(f"{self.hostname}#{job}")),
            ("+APF_LOGURL", quote(f"{log_url}/{job}.log")),
            ("+APF_OUTURL", quote(f"{log_url}/{job}.out")),
            ("+APF_ERRURL", quote(f"{log_url}/{job}.err")),
            ("+APF_FACTORY_ID", quote(tags.factory_id)),
            ("+APF_INTENT_ID", quote(tags.intent_id)),
            ("environment", format_environment(self.environment_pairs(log_url), self.options.environ)),
        ]
        if q.settings.executable:
            lines.append(("executable", q.settings.executable))
        if q.settings.executable_arguments:
            lines.append(("arguments", q.settings.executable_arguments))
        lines += [
            ("output", f"$(Dir)/{job}.out"),
            ("error", f"$(Dir)/{job}.err"),
            ("log", f"$(Dir)/{job}.log"),
            ("stream_output", "False"),
            ("stream_error", "False"),
            ("notification", "Error"),
            ("transfer_executable", "True"),
        ]
        return lines

    def description(self, tags: PilotTags, now: float) -> Description:
        """The whole submit description for this cycle (pure apart from the clock value given)."""
        log_dir, log_url = logs.log_location(self.base_log_dir, self.base_log_url, self.queue.name, now)
        desc = Description()
        desc.update(self.base_lines(tags, log_dir, log_url))
        desc.update(self.flavour_lines())
        desc.update(self.logged_lines(log_url))
        if self.proxy_path and desc.get("x509userproxy") is None:
            desc.set("x509userproxy", self.proxy_path)
        desc.update(self.attributes)
        desc.update(self.options.condor_attributes_keys)
        return desc

    @staticmethod
    def make_submit(desc: Description) -> htcondor2.Submit:
        import htcondor2

        return htcondor2.Submit(desc.as_dict())

    # ---- actions -----------------------------------------------------------------------------

    def target(self) -> str:
        return f"condor:{self.address.label()}"

    @property
    def schedd(self) -> ScheddApi:
        if self._schedd is None:
            self._schedd = connect(self.address)
        return self._schedd

    def written_description(self, desc: Description, n: int) -> str:
        """What goes to ``<logDir>/submit.jdl`` for operators (flavours may redact)."""
        return desc.text(n)

    def submit(self, n: int, tags: PilotTags, now: float) -> Sequence[Pilot]:
        if n <= 0:
            return []
        desc = self.description(tags, now)
        log_dir = desc.get("Dir") or ""
        try:
            Path(log_dir).mkdir(parents=True, exist_ok=True)
            jdl = Path(log_dir) / "submit.jdl"
            fd = os.open(jdl, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write(self.written_description(desc, n))
        except OSError as exc:
            raise BackendError(self.target(), f"cannot write the log directory {log_dir}: {exc}") from exc
        sub = self.make_submit(desc)
        cluster, procs = self.schedd.submit(sub, n)
        log.info(
            "queue %s: submitted %d pilots as cluster %d to %s",
            self.queue.name,
            len(procs),
            cluster,
            self.address.label(),
        )
        return [
            Pilot(
                backend_id=f"{cluster}.{proc}",
                queue=self.queue.name,
                state=PilotState.PENDING,
                intent_id=tags.intent_id,
                submitted_at=now,
            )
            for proc in procs
        ]

    def cancel(self, backend_ids: Sequence[str]) -> None:
        """Remove pilots that have not started: the constraint spares any that started meanwhile."""
        self.schedd.act("remove", list(backend_ids), constraint="member(JobStatus, {0, 1, 5})")

    def retire(self, backend_ids: Sequence[str], kill: bool = False) -> None:
        """A pilot job cannot be drained from outside: without ``kill`` running pilots are left to
        finish; with ``kill`` they are removed (condor_rm)."""
        if kill:
            self.schedd.act("remove", list(backend_ids))
            return
        if not self._warned_no_drain:
            log.warning(
                "queue %s: HTCondor pilot jobs cannot be drained; %d running pilots are left to finish",
                self.queue.name,
                len(backend_ids),
            )
            self._warned_no_drain = True

    def keepdays(self) -> int:
        per_queue = self.queue.settings.cleanlogs_keepdays
        return per_queue if per_queue is not None else self.factory.settings.cleanlogs_keepdays

    def cleanup(self, pilots: Sequence[Pilot], now: float) -> None:
        if self._last_log_clean is None or now - self._last_log_clean >= LOG_CLEAN_INTERVAL:
            self._last_log_clean = now
            logs.clean_queue_logs(Path(self.base_log_dir), self.queue.name, self.keepdays(), now)


def profile_options(factory: FactoryContext, name: str, plugin: str, key: str, queue: str) -> Any:
    """The typed options of auth profile ``name``, which must be a ``plugin`` profile."""
    try:
        profile = factory.auth(name)
    except PluginError as exc:
        raise PluginError(f"[{queue}] {key}: {exc}") from None
    if profile.plugin != plugin:
        raise PluginError(f"[{queue}] {key}: auth profile {name!r} is {profile.plugin}, not {plugin}")
    return profile.options
