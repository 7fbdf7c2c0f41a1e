"""Plugin contracts shared by every kind, and the entry-point registry.

A plugin is a class with an APF name (``Ready``, ``CondorOSGCE``, ``Panda``), a kind, and an
``Options`` model that declares every config key it reads, with type and default. Keys live in a
queue section as ``<kind>.<name lowercase>.<suffix>``; the ``Options`` field for a key is named
by its suffix (``alias`` when the suffix is not a Python name, e.g. ``overlay.peaceful``).

Plugins are found through the entry-point groups ``autopyfactory.<kind>``, so a site package can
add its own without touching the core. Loading a plugin imports only its own module: heavy
libraries (HTCondor bindings, boto3) are imported by the plugin modules that need them.
"""

from __future__ import annotations

import difflib
import threading
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

from autopyfactory.model import BatchSnapshot, Demand, Pilot, PilotTags, WmsSnapshot

if TYPE_CHECKING:
    from autopyfactory.config.models import AuthProfile, FactorySettings, QueueConfig

KINDS = ("sched", "wmsstatus", "batchstatus", "batchsubmit", "monitor", "auth", "config")


class PluginOptions(BaseModel):
    """Base of every plugin's typed options. Unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    # Key suffix prefixes whose keys are collected into a dict field instead of being declared one
    # by one, e.g. {"condor_attributes.": "condor_attributes_keys"} for
    # ``batchsubmit.condorbase.condor_attributes.+xcount = 8``.
    dynamic: ClassVar[Mapping[str, str]] = {}


class SubmitOptions(PluginOptions):
    """Keys every batch submit plugin has (APF's retire semantics)."""

    # APF: a negative decision retires nothing unless the queue sets overlay.peaceful = False
    overlay_peaceful: bool = Field(True, alias="overlay.peaceful")
    # which running pilots go first when retiring: newest or oldest
    overlay_killorder: Literal["newest", "oldest"] = Field("newest", alias="overlay.killorder")
    # retiring drains running pilots peacefully; True removes them outright (the backend cannot
    # drain, e.g. grid pilots, and the operator accepts killing running work)
    overlay_kill_running: bool = Field(False, alias="overlay.kill_running")


class Plugin:
    kind: ClassVar[str] = ""
    name: ClassVar[str] = ""
    Options: ClassVar[type[PluginOptions]] = PluginOptions
    # Key prefixes in precedence order, most specific first. Empty means
    # ``<kind>.<name lowercase>.`` (APF's convention).
    key_prefixes: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def prefixes(cls) -> tuple[str, ...]:
        return cls.key_prefixes or (f"{cls.kind}.{cls.name.lower()}.",)


class PluginError(Exception):
    """A plugin could not be found or loaded."""


class BackendError(Exception):
    """A backend or endpoint failed. ``target`` names it; the message must hold no secret."""

    def __init__(self, target: str, message: str, *, capacity: bool = False) -> None:
        super().__init__(f"{target}: {message}")
        self.target = target
        self.message = message
        # True when the backend refused for lack of capacity or quota (policy tiers spill over)
        self.capacity = capacity


@dataclass
class FactoryContext:
    """What the factory lends to plugins: identity, settings, credentials and file locations."""

    factory_id: str
    settings: FactorySettings
    auth_profiles: Mapping[str, AuthProfile] = field(default_factory=dict)
    state_dir: Path = Path("var")
    monitor_url: str | None = None

    def auth(self, name: str) -> AuthProfile:
        try:
            return self.auth_profiles[name]
        except KeyError:
            known = ", ".join(sorted(self.auth_profiles)) or "none"
            raise PluginError(
                f"auth profile {name!r} is not defined in auth.conf (defined: {known})"
            ) from None


class WmsStatusPlugin(Plugin):
    """Observes demand. One instance per endpoint, shared by every queue that uses it."""

    kind = "wmsstatus"

    @classmethod
    def endpoint(cls, queue: QueueConfig, factory: FactoryContext) -> Hashable:
        """Queues whose endpoints compare equal share one poller."""
        return (cls.name, options_key(queue.plugin_options("wmsstatus")))

    @classmethod
    def demand_key(cls, queue: QueueConfig, factory: FactoryContext) -> str | None:
        """The key of this queue's Demand in the snapshot (and in ``poll``'s ``wmsqueues``).
        Default: its wmsqueue. A plugin whose queues filter one WMS queue (Panda with
        prodsourcelabels) returns a distinct key per filter."""
        return queue.wmsqueue

    def __init__(self, endpoint: Hashable, factory: FactoryContext) -> None:
        self.endpoint_key = endpoint
        self.factory = factory

    def register(self, queue: QueueConfig) -> None:
        """Called for every queue that uses this endpoint, before the first poll and on reload."""

    def poll(self, now: float, wmsqueues: frozenset[str]) -> WmsSnapshot:
        """Return demand for (at least) the named WMS queues. Raise BackendError on failure."""
        raise NotImplementedError

    def at_decision(self, demand: Demand, running: int) -> Demand:
        """Demand as the decision sees it, given the pilots running for this WMS queue in the same
        batch snapshot. Real WMSs return it unchanged; a simulated WMS may model pilots taking jobs."""
        return demand

    def close(self) -> None:
        pass


class BatchStatusPlugin(Plugin):
    """Observes the factory's own pilots at one endpoint (a schedd, a Slurm cluster, a region)."""

    kind = "batchstatus"

    @classmethod
    def endpoint(cls, queue: QueueConfig, factory: FactoryContext) -> Hashable:
        return (cls.name, options_key(queue.plugin_options("batchstatus")))

    def __init__(self, endpoint: Hashable, factory: FactoryContext) -> None:
        self.endpoint_key = endpoint
        self.factory = factory

    def register(self, queue: QueueConfig) -> None:
        """Called for every queue that uses this endpoint, before the first poll and on reload."""

    def poll(self, now: float) -> BatchSnapshot:
        """Every pilot tagged with this factory's id at this endpoint. Raise BackendError on failure."""
        raise NotImplementedError

    def close(self) -> None:
        pass


class BatchSubmitPlugin(Plugin):
    """Acts for one queue: submit, cancel, retire. Calls are serialised per ``target()``."""

    kind = "batchsubmit"
    Options: ClassVar[type[PluginOptions]] = SubmitOptions

    def __init__(self, queue: QueueConfig, options: PluginOptions, factory: FactoryContext) -> None:
        self.queue = queue
        self.options = options
        self.factory = factory

    def target(self) -> str:
        """The resource this queue acts on; actions on one target run one at a time."""
        return self.name

    def submit(self, n: int, tags: PilotTags, now: float) -> Sequence[Pilot]:
        """Submit n pilots, every one carrying ``tags``. Return what was created."""
        raise NotImplementedError

    def cancel(self, backend_ids: Sequence[str]) -> None:
        """Remove pilots that have not started."""
        raise NotImplementedError

    def retire(self, backend_ids: Sequence[str], kill: bool = False) -> None:
        """Drain running pilots peacefully; remove them outright only when ``kill``."""
        raise NotImplementedError

    def cleanup(self, pilots: Sequence[Pilot], now: float) -> None:
        """Called once per cycle with the queue's pilots (e.g. remove VMs whose node retired)."""

    def close(self) -> None:
        pass


class MonitorPlugin(Plugin):
    """Reports to monitoring. Called off the decision path; must never block it."""

    kind = "monitor"

    def __init__(
        self, section: str, options: PluginOptions, factory: FactoryContext, *, url: str | None = None
    ) -> None:
        self.section = section
        self.options = options
        self.factory = factory
        self.url = url  # monitor.conf's monitorURL for this section

    def register_factory(self, queues: Sequence[str]) -> None:
        pass

    def register_pilots(self, queue: str, pilots: Sequence[Pilot]) -> None:
        pass

    def update_label(self, queue: str, message: str) -> None:
        pass

    def close(self) -> None:
        pass


# ---------------------------------------------------------------------------------------------
# Registry

_lock = threading.Lock()
_cache: dict[str, dict[str, EntryPoint]] = {}
_extra: dict[tuple[str, str], type[Plugin]] = {}
_loaded: dict[tuple[str, str], type[Plugin]] = {}


def register(cls: type[Plugin]) -> type[Plugin]:
    """Register a plugin class in-process (tests and embedding); entry points are the normal way."""
    _extra[(cls.kind, cls.name)] = cls
    return cls


def names(kind: str) -> list[str]:
    """Every plugin name available for a kind, without importing any plugin module."""
    with _lock:
        if kind not in _cache:
            _cache[kind] = {ep.name: ep for ep in entry_points(group=f"autopyfactory.{kind}")}
        found = set(_cache[kind])
    found.update(name for (k, name) in _extra if k == kind)
    return sorted(found)


def load(kind: str, name: str) -> type[Plugin]:
    if (kind, name) in _extra:
        return _extra[(kind, name)]
    if (kind, name) in _loaded:
        return _loaded[(kind, name)]
    available = names(kind)
    if name not in available:
        hint = did_you_mean(name, available)
        raise PluginError(f"unknown {kind} plugin {name!r}{hint}")
    try:
        cls = _cache[kind][name].load()
    except Exception as exc:  # an installed plugin that fails to import
        raise PluginError(f"{kind} plugin {name!r} failed to load: {exc}") from exc
    if not (isinstance(cls, type) and issubclass(cls, Plugin)):
        raise PluginError(f"{kind} plugin {name!r} is not a Plugin subclass")
    _loaded[(kind, name)] = cls
    return cls


def did_you_mean(word: str, choices: Sequence[str] | set[str]) -> str:
    """' (did you mean X?)' or '' — shared by every 'unknown name' error."""
    lowered = {c.lower(): c for c in choices}
    if word.lower() in lowered and lowered[word.lower()] != word:
        return f" (did you mean {lowered[word.lower()]!r}? names are case-sensitive)"
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.75)
    return f" (did you mean {close[0]!r}?)" if close else ""


def options_key(options: PluginOptions | None) -> str:
    """A hashable, order-stable identity of an options model (for sharing pollers per endpoint)."""
    return options.model_dump_json() if options is not None else ""
