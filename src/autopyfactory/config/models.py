"""Typed, validated configuration: what the rest of the factory reads (never raw INI strings)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:
    from autopyfactory.plugins.base import Plugin, PluginOptions


class _Keys(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class FactorySettings(_Keys):
    """``[Factory]`` of autopyfactory.conf. Key names are AutoPyFactory's (case-sensitive)."""

    factoryId: str
    factoryAdminEmail: str | None = None
    factorySMTPServer: str | None = None
    factoryMinEmailRepeatSeconds: int = 3600
    factoryUser: str | None = None
    enablequeues: bool = True
    abort_no_queues: bool = False
    cycles: int | None = None
    factory_sleep: float = Field(30.0, alias="factory.sleep")
    queueConf: str | None = None
    queueDirConf: str | None = None
    config_queues_plugin: str = Field("File", alias="config.queues.plugin")
    config_auth_plugin: str = Field("File", alias="config.auth.plugin")
    config_reconfig: bool = Field(False, alias="config.reconfig")
    config_reconfig_interval: int = Field(3600, alias="config.reconfig.interval")
    authmanager_enabled: bool = Field(True, alias="authmanager.enabled")
    authmanager_sleep: int = Field(30, alias="authmanager.sleep")
    authConf: str | None = None
    proxyConf: str | None = Field(
        None, description="APF's legacy proxy.conf: X509 profiles, read key for key"
    )
    monitorConf: str | None = None
    mappingsConf: str | None = None
    monitor: str | None = None
    baseLogDir: str | None = None
    baseLogDirUrl: str | None = None
    logserver_enabled: bool = Field(False, alias="logserver.enabled")
    logserver_index: bool = Field(False, alias="logserver.index")
    logserver_allowrobots: bool = Field(False, alias="logserver.allowrobots")
    cleanlogs_keepdays: int = Field(14, alias="cleanlogs.keepdays")
    maxperfactory_maximum: int | None = Field(None, alias="maxperfactory.maximum")
    # Our own keys
    store_url: str | None = Field(
        None, alias="store.url", description="SQLAlchemy URL; SQLite file by default"
    )
    statedir: str = Field("~/.autopyfactory", alias="factory.statedir")
    executor_workers: int = Field(8, alias="executor.workers", ge=1)
    store_keepdays: float = Field(
        14.0, alias="store.keepdays", gt=0, description="days of decisions, events and finished pilots kept"
    )
    metrics_address: str | None = Field(
        "127.0.0.1:9642", alias="metrics.address", description="Prometheus /metrics address; None disables"
    )
    policyConf: str | None = None

    @property
    def state_path(self) -> Path:
        return Path(self.statedir).expanduser()

    def database_url(self) -> str:
        if self.store_url:
            return self.store_url
        return f"sqlite:///{self.state_path / 'apf.db'}"


class QueueSettings(_Keys):
    """Generic keys of a queues.conf section (plugin keys live in each plugin's Options)."""

    enabled: bool = False  # AutoPyFactory: absent means disabled
    wmsqueue: str | None = None
    batchqueue: str | None = None
    sleep: float = Field(360.0, alias="apfqueue.sleep", gt=0)
    cycles: int | None = None
    wmsstatusplugin: str | None = None
    batchstatusplugin: str
    batchsubmitplugin: str
    schedplugin: str
    monitorsection: str | None = None
    executable: str | None = None
    executable_arguments: str | None = Field(None, alias="executable.arguments")
    executable_defaultarguments: str | None = Field(None, alias="executable.defaultarguments")
    vo: str | None = None
    grid: str | None = None
    cloud: str | None = None
    status: str | None = None
    cleanlogs_keepdays: int | None = Field(None, alias="cleanlogs.keepdays")
    factoryconf: str | None = None
    share: float | None = Field(
        None, gt=0, description="this queue's share of its WMS queue's demand when several queues serve it"
    )


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
