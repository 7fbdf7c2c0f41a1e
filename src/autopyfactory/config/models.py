"""Typed, validated configuration: what the rest of the factory reads (never raw INI strings)."""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator

from autopyfactory.config.bounds import COUNT_MAX, INTERVAL_MIN, SECONDS_MAX
from autopyfactory.decide.cancel_settings import CancelSettings

if TYPE_CHECKING:
    from autopyfactory.plugins.options import Plugin, PluginOptions


# Identifiers end up in every pilot's tag ``apf:<factoryId>:<queue>:<intent>``, in file names, in
# HTCondor ClassAd strings and in batch job names: no blanks, quotes, ',' or '?'. A factory id
# has no ':' (the tag is split on it) and no '/' (it names the status file).
FACTORY_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@+-]{0,99}")
QUEUE_NAME = re.compile(r"[A-Za-z0-9_.:@+/=<>()-]{1,200}")
FACTORY_ID_RULE = "1-100 letters, digits and . _ - @ + (no ':' or '/': it is part of every pilot's tag)"
QUEUE_NAME_RULE = "1-200 letters, digits and . _ - : / @ + = < > ( ) (no blanks, quotes, ',' or '?')"

SUPPORTED_CONFIG_PLUGINS = ("File",)
_RETIRED_CONFIG_PLUGINS = {
    "Agis": "AGIS was retired (CRIC replaced it); generate queue sections offline and point "
    "queueConf or queueDirConf at them",
}


def _plugin_list(value: str, what: str) -> str:
    names = [n.strip() for n in value.split(",")]
    if not value.strip() or any(not n for n in names):
        raise ValueError(f"{what}: give plugin names separated by commas (an empty name is not allowed)")
    return value


DEFAULT_WEB_ADDRESS = "127.0.0.1:9642"


def parse_address(text: str, default_port: int = 0) -> tuple[str, int]:
    """``host:port``, ``:port``, ``port`` or ``host`` -> (host, port); IPv6 as ``[::1]:9642``.
    An empty host means 127.0.0.1 (never all interfaces by accident). Raises ValueError."""
    text = text.strip()
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port = rest.removeprefix(":")
    elif text.count(":") == 1:
        host, port = text.split(":")
    elif text.isdigit():
        host, port = "", text
    else:
        host, port = text, ""
    try:
        number = int(port) if port else default_port
    except ValueError:
        raise ValueError(f"bad port in {text!r} (use host:port, e.g. 127.0.0.1:9642)") from None
    if not 0 <= number <= 65535:
        raise ValueError(f"port out of range in {text!r}")
    return host or "127.0.0.1", number


def check_address(value: str) -> tuple[str, int]:
    """A configured listen address: ``host:port`` or ``[v6]:port`` -> (host, port); ValueError with
    a clear message otherwise (``parse_address`` is the lenient reader of a checked value)."""
    text = value.strip()
    host, sep, port_text = text.rpartition(":")
    if not sep or not host or not port_text.isdigit():
        raise ValueError("expected host:port, e.g. 127.0.0.1:9642 ([::1]:9642 for IPv6), or None")
    if host.startswith("["):
        if not host.endswith("]") or len(host) < 3:
            raise ValueError("an IPv6 host is written in brackets: [::1]:9642")
        host = host[1:-1]
    elif ":" in host:
        raise ValueError("an IPv6 host is written in brackets: [::1]:9642")
    if any(c.isspace() for c in host) or "/" in host:
        raise ValueError("expected host:port, e.g. 127.0.0.1:9642")
    port = int(port_text)
    if not 0 <= port <= 65535:
        raise ValueError("the port must be 0-65535 (0 = any free port)")
    return host, port


class _Keys(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True, allow_inf_nan=False)


def _duration_or_none(value: Any) -> Any:
    """Seconds as a number, or a duration with units ('30m', '2h'); pydantic checks the float."""
    if isinstance(value, str) and value.strip():
        try:
            float(value)
        except ValueError:
            from autopyfactory.decide.periods import parse_duration

            return parse_duration(value)
    return value


Seconds = Annotated[float, BeforeValidator(_duration_or_none)]


class FactorySettings(_Keys):
    """``[Factory]`` of autopyfactory.conf. Key names are AutoPyFactory's (case-sensitive)."""

    factoryId: str = Field(description="the factory's name: apfmon id, PANDA_JSID, every pilot's tag")
    factoryAdminEmail: str | None = Field(None, description="alert recipients (comma list)")
    factorySMTPServer: str | None = Field(None, description="SMTP relay for alerts, host[:port]")
    factoryMinEmailRepeatSeconds: int = Field(
        3600, ge=0, le=int(SECONDS_MAX), description="an identical alert is not re-sent within this"
    )
    factoryUser: str | None = Field(None, description="exported to pilots as FACTORYUSER")
    enablequeues: bool = Field(True, description="global switch ANDed with each queue's enabled")
    abort_no_queues: bool = Field(
        False, description="exit when no queue is active (none enabled, set up or left)"
    )
    cycles: int | None = Field(
        None,
        ge=0,
        le=COUNT_MAX,
        description="None: forever; 0: start no queue; N: stop after N decisions per queue",
    )
    factory_sleep: float = Field(
        30.0,
        alias="factory.sleep",
        ge=1.0,
        le=3600.0,
        description="period of the supervisor checks (abort_no_queues, config.reconfig, watchdog)",
    )
    queueConf: str | None = Field(
        None, description="queue config sources: paths, file:// or http(s):// URLs (comma list)"
    )
    queueDirConf: str | None = Field(
        None, description="a directory whose *.conf files are read as one document"
    )
    config_queues_plugin: str = Field(
        "File",
        alias="config.queues.plugin",
        description="queue config plugins; File (queueConf, queueDirConf)",
    )
    config_auth_plugin: str = Field(
        "File", alias="config.auth.plugin", description="auth config plugins; File (authConf)"
    )
    config_reconfig: bool = Field(
        False,
        alias="config.reconfig",
        description="re-read the configuration periodically; swap it in when valid",
    )
    config_reconfig_interval: float = Field(
        3600.0,
        alias="config.reconfig.interval",
        ge=10.0,
        le=SECONDS_MAX,
        description="seconds between re-reads",
    )
    authmanager_enabled: bool = Field(True, alias="authmanager.enabled", description="read authConf profiles")
    authmanager_sleep: float = Field(
        30.0,
        alias="authmanager.sleep",
        ge=1.0,
        le=86400.0,
        description="seconds between checks of profiles without a checktime of their own (SSH keys, cloud keys)",
    )
    authConf: str | None = Field(None, description="auth.conf sources (comma list)")
    proxyConf: str | None = Field(
        None, description="AutoPyFactory's legacy proxy.conf: read as X509 profiles, key for key"
    )
    monitorConf: str | None = Field(None, description="monitor.conf sources (comma list)")
    mappingsConf: str | None = Field(
        None, description="AutoPyFactory's mappings.conf; the mappings are built in"
    )
    monitor: str | None = Field(
        None, description="AutoPyFactory factory-level monitors (broken there); unused"
    )
    baseLogDir: str | None = Field(None, description="local root of pilot logs and submit files")
    baseLogDirUrl: str | None = Field(None, description="public URL of baseLogDir")
    logserver_enabled: bool = Field(
        False, alias="logserver.enabled", description="serve baseLogDir over HTTP (by the web server)"
    )
    logserver_index: bool = Field(False, alias="logserver.index", description="log server: list directories")
    logserver_allowrobots: bool = Field(
        False, alias="logserver.allowrobots", description="log server: False serves a disallow-all robots.txt"
    )
    cleanlogs_keepdays: int = Field(
        14, alias="cleanlogs.keepdays", ge=0, le=36500, description="days pilot log directories are kept"
    )
    maxperfactory_maximum: int | None = Field(
        None,
        alias="maxperfactory.maximum",
        ge=0,
        le=COUNT_MAX,
        description="MaxPerFactory: pilots per batch endpoint",
    )
    # Our own keys
    store_url: str | None = Field(
        None, alias="store.url", description="SQLAlchemy URL; SQLite file in factory.statedir by default"
    )
    statedir: str = Field(
        "~/.autopyfactory", alias="factory.statedir", min_length=1, description="state: store, status file"
    )
    executor_workers: int = Field(
        8, alias="executor.workers", ge=1, le=256, description="threads acting on backends"
    )
    store_keepdays: float = Field(
        14.0,
        alias="store.keepdays",
        gt=0,
        le=36500,
        description="days of decisions, events and finished pilots kept",
    )
    web_address: str | None = Field(
        DEFAULT_WEB_ADDRESS,
        alias="web.address",
        description="dashboard, JSON API and Prometheus /metrics (host:port; port 0 picks one); None disables",
    )
    metrics_address: str | None = Field(
        None,
        alias="metrics.address",
        description="the former name of web.address (used when web.address is unset)",
    )
    web_tokenfile: str | None = Field(
        None,
        alias="web.tokenfile",
        description="file holding the bearer token clients not on loopback must send",
    )
    web_tls_certfile: str | None = Field(
        None, alias="web.tls.certfile", description="serve HTTPS with this certificate"
    )
    web_tls_keyfile: str | None = Field(
        None, alias="web.tls.keyfile", description="the certificate's private key"
    )
    web_tls_cafile: str | None = Field(
        None,
        alias="web.tls.cafile",
        description="CA bundle: every client must present a certificate it signed",
    )
    web_allow_anonymous: bool = Field(
        False,
        alias="web.allow_anonymous",
        description="serve a non-loopback address without any authentication",
    )
    web_refresh: float = Field(
        5.0, alias="web.refresh", gt=0, description="seconds between live page updates"
    )
    web_reportsdir: str | None = Field(
        None,
        alias="web.reportsdir",
        description="directory of simulation reports (default <statedir>/reports)",
    )
    policyConf: str | None = Field(None, description="the provisioning policy document (YAML or JSON)")

    @field_validator("factoryId")
    @classmethod
    def _factory_id(cls, value: str) -> str:
        if not FACTORY_ID.fullmatch(value):
            raise ValueError(f"must be {FACTORY_ID_RULE}")
        return value

    @field_validator("config_queues_plugin", "config_auth_plugin")
    @classmethod
    def _config_plugins(cls, value: str) -> str:
        _plugin_list(value, "plugin list")
        for name in (n.strip() for n in value.split(",")):
            if name in _RETIRED_CONFIG_PLUGINS:
                raise ValueError(f"{name} is not supported: {_RETIRED_CONFIG_PLUGINS[name]}")
            if name not in SUPPORTED_CONFIG_PLUGINS:
                from autopyfactory.plugins.registry import did_you_mean

                hint = did_you_mean(name, SUPPORTED_CONFIG_PLUGINS)
                raise ValueError(f"unknown config plugin {name!r}{hint}; supported: File")
        return value

    @field_validator("store_url")
    @classmethod
    def _store_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        from sqlalchemy.engine import make_url
        from sqlalchemy.exc import ArgumentError

        try:
            make_url(value)
        except (ArgumentError, ValueError):
            raise ValueError(
                "not a database URL (sqlite:////path/apf.db or postgresql+psycopg://user@host/db)"
            ) from None
        return value

    @field_validator("web_address", "metrics_address")
    @classmethod
    def _address(cls, value: str | None) -> str | None:
        if value is not None:
            check_address(value)
        return value

    @property
    def web_listen(self) -> str | None:
        """The dashboard's address: ``web.address``, else the older ``metrics.address``, else the default."""
        if "web_address" in self.model_fields_set:
            return self.web_address
        if "metrics_address" in self.model_fields_set:
            return self.metrics_address
        return DEFAULT_WEB_ADDRESS

    @property
    def reports_path(self) -> Path:
        return Path(self.web_reportsdir).expanduser() if self.web_reportsdir else self.state_path / "reports"

    @property
    def state_path(self) -> Path:
        return Path(self.statedir).expanduser()

    def database_url(self) -> str:
        if self.store_url:
            return self.store_url
        return f"sqlite:///{self.state_path / 'apf.db'}"


class QueueSettings(_Keys):
    """Generic keys of a queues.conf section (plugin keys live in each plugin's Options)."""

    enabled: bool = Field(False, description="the queue runs (AutoPyFactory: absent means disabled)")
    wmsqueue: str | None = Field(None, description="the queue's name in the workload system (PanDA queue)")
    batchqueue: str | None = Field(None, description="PanDA queue name, for interpolation in arguments")
    sleep: float = Field(
        360.0,
        alias="apfqueue.sleep",
        ge=INTERVAL_MIN,
        le=SECONDS_MAX,
        description="seconds between decisions",
    )
    cycles: int | None = Field(
        None, ge=0, le=COUNT_MAX, description="AutoPyFactory's per-queue cycles (unused)"
    )
    wmsstatusplugin: str | None = Field(None, description="where demand comes from: Panda, Condor, Sim")
    batchstatusplugin: str = Field(description="where the queue's pilots are observed")
    batchsubmitplugin: str = Field(description="where the queue's pilots are submitted")
    schedplugin: str = Field(description="the scheduler chain, e.g. 'Ready, MaxPerCycle, MaxPending'")
    monitorsection: str | None = Field(None, description="monitor.conf sections (comma list)")
    executable: str | None = Field(None, description="the pilot (wrapper) to run")
    executable_arguments: str | None = Field(
        None, alias="executable.arguments", description="its arguments (shell words)"
    )
    executable_defaultarguments: str | None = Field(
        None, alias="executable.defaultarguments", description="interpolation helper for executable.arguments"
    )
    vo: str | None = Field(None, description="interpolation helper")
    grid: str | None = Field(None, description="interpolation helper")
    cloud: str | None = Field(None, description="AutoPyFactory legacy, unused")
    status: str | None = Field(None, description="AutoPyFactory legacy, unused")
    cleanlogs_keepdays: int | None = Field(
        None, alias="cleanlogs.keepdays", ge=0, le=36500, description="days this queue's pilot logs are kept"
    )
    factoryconf: str | None = Field(
        None, description="AutoPyFactory's embeddable APFSubmitQueue only; unused"
    )
    share: float | None = Field(
        None,
        gt=0,
        le=1e6,
        description="this queue's share of its WMS queue's demand when several queues serve it",
    )
    cancel_pending_after: Seconds | None = Field(
        None,
        alias="cancel.pending_after",
        gt=0,
        le=SECONDS_MAX,
        description="cancel pilots still pending this long after submission (seconds or 30m, 2h); unset: never",
    )
    cancel_excess_pending: bool = Field(
        False,
        alias="cancel.excess_pending",
        description="cancel pending pilots beyond the queue's current demand when it drops",
    )
    cancel_maxpercycle: int = Field(
        100,
        alias="cancel.maxpercycle",
        ge=1,
        le=COUNT_MAX,
        description="at most this many cancelled per cycle",
    )

    @field_validator("batchstatusplugin", "batchsubmitplugin")
    @classmethod
    def _one_plugin(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("is empty: name one plugin")
        if "," in value:
            raise ValueError("names one plugin, not a list")
        return value

    @field_validator("wmsstatusplugin")
    @classmethod
    def _wms_plugin(cls, value: str | None) -> str | None:
        if value is not None and "," in value:
            raise ValueError("names one plugin, not a list")
        return value if value is None or value.strip() else None

    @field_validator("schedplugin")
    @classmethod
    def _chain(cls, value: str) -> str:
        return _plugin_list(value, "the chain is empty or has an empty name")

    @field_validator("wmsqueue")
    @classmethod
    def _wmsqueue(cls, value: str | None) -> str | None:
        if value is not None and not QUEUE_NAME.fullmatch(value):
            raise ValueError(f"must be {QUEUE_NAME_RULE}")
        return value

    @field_validator("executable_arguments", "executable_defaultarguments")
    @classmethod
    def _shell_words(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                shlex.split(value)
            except ValueError as exc:
                raise ValueError(f"cannot be split into arguments: {exc} (check quotes)") from None
        return value

    @property
    def cancel(self) -> CancelSettings:
        return CancelSettings(self.cancel_pending_after, self.cancel_excess_pending, self.cancel_maxpercycle)


@dataclass(frozen=True)
class PluginSpec:
    kind: str
    name: str
    cls: type[Plugin]
    options: PluginOptions


@dataclass(frozen=True)
class QueueConfig:
    name: str
    settings: QueueSettings
    wmsstatus: PluginSpec | None
    batchstatus: PluginSpec
    batchsubmit: PluginSpec
    sched: tuple[PluginSpec, ...]
    # Every key of the section after DEFAULT merging and interpolation (for display and templates)
    raw: Mapping[str, str] = field(default_factory=dict)
    # key -> the file the value came from
    origin: Mapping[str, str] = field(default_factory=dict)

    @property
    def enabled(self) -> bool:
        return self.settings.enabled

    @property
    def wmsqueue(self) -> str | None:
        return self.settings.wmsqueue

    def plugin_options(self, kind: str) -> PluginOptions | None:
        spec = {
            "wmsstatus": self.wmsstatus,
            "batchstatus": self.batchstatus,
            "batchsubmit": self.batchsubmit,
        }[kind]
        return spec.options if spec else None

    def fingerprint(self) -> str:
        """Changes whenever any effective value changes (used by reload to restart only what changed)."""
        return repr(sorted(self.raw.items()))


class AuthProfile(BaseModel):
    """A named credential from auth.conf. Its options never print secret values."""

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    name: str
    plugin: str
    options: Any

    def __repr__(self) -> str:
        return f"AuthProfile(name={self.name!r}, plugin={self.plugin!r})"

    __str__ = __repr__


class MonitorSection(BaseModel):
    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    name: str
    plugin: str
    options: Any
    monitorURL: str | None = None


@dataclass(frozen=True)
class FactoryConfig:
    """Everything the factory loaded: [Factory], queues, auth profiles, monitor sections."""

    settings: FactorySettings
    queues: Mapping[str, QueueConfig]
    auth: Mapping[str, AuthProfile] = field(default_factory=dict)
    monitors: Mapping[str, MonitorSection] = field(default_factory=dict)
    files: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()
    # [Factory] as read, for keys named after plugins (``wmsstatus.panda.sleep``, ``...maxage``)
    factory_raw: Mapping[str, str] = field(default_factory=dict)
    # the provisioning policy (policyConf), cross-checked against the queues
    policy: Any = None

    @property
    def factory_id(self) -> str:
        return self.settings.factoryId

    def poll_setting(self, kind: str, plugin: str, what: str, default: float) -> float:
        """``<kind>.<plugin lower>.<what>`` from [Factory] (APF: poll ``sleep`` and ``maxage``)."""
        value = self.factory_raw.get(f"{kind}.{plugin.lower()}.{what}")
        try:
            return float(value) if value not in (None, "", "None") else default
        except ValueError:
            return default

    def active_queues(self) -> list[QueueConfig]:
        if not self.settings.enablequeues:
            return []
        return [q for q in self.queues.values() if q.enabled]
