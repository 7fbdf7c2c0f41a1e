"""Plugin contracts of the backend kinds: WMS status, batch status, batch submit, monitor.

What every plugin is (kind, name, ``Options``) lives in ``plugins.options``; the entry-point
registry in ``plugins.registry``. Both are re-exported here for plugin modules' convenience.

Optional capabilities are declared, never discovered: a plugin that can do more sets a class
attribute and overrides the matching method (``BatchStatusPlugin.settles`` + ``settle``,
``BatchSubmitPlugin.has_cleanup`` + ``cleanup``, ``WmsStatusPlugin.adjusts_demand`` +
``at_decision``), and the engine reads the attribute.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from autopyfactory.model import BatchSnapshot, Demand, Pilot, PilotTags, WmsSnapshot
from autopyfactory.plugins.options import Plugin, PluginOptions, SubmitOptions, options_key
from autopyfactory.plugins.registry import KINDS, PluginError, did_you_mean, load, names, register

if TYPE_CHECKING:
    from autopyfactory.config.models import AuthProfile, FactorySettings, QueueConfig

__all__ = [
    "KINDS",
    "BackendError",
    "BatchStatusPlugin",
    "BatchSubmitPlugin",
    "FactoryContext",
    "MonitorPlugin",
    "Plugin",
    "PluginError",
    "PluginOptions",
    "SubmitOptions",
    "WmsStatusPlugin",
    "did_you_mean",
    "load",
    "names",
    "options_key",
    "register",
]

# Poll timing when neither the plugin nor [Factory] says otherwise (APF's names: ``sleep``, ``maxage``)
DEFAULT_INTERVAL = 60.0
DEFAULT_MAXAGE = 360.0


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


class StatusPlugin(Plugin):
    """What WMS and batch status plugins share: one instance per endpoint, polled on a schedule."""

    # poll interval and staleness when [Factory] ``<kind>.<name>.sleep`` / ``.maxage`` are unset
    default_interval: ClassVar[float] = DEFAULT_INTERVAL
    default_maxage: ClassVar[float] = DEFAULT_MAXAGE
    # a failing endpoint is retried at most this many poll intervals apart
    # ([Factory] ``<kind>.<name>.maxbackoff`` in seconds overrides it)
    default_maxbackoff_intervals: ClassVar[float] = 3.0

    @classmethod
    def endpoint(cls, queue: QueueConfig, factory: FactoryContext) -> Hashable:
        """Queues whose endpoints compare equal share one poller."""
        return (cls.name, options_key(queue.plugin_options(cls.kind)))

    def __init__(self, endpoint: Hashable, factory: FactoryContext) -> None:
        self.endpoint_key = endpoint
        self.factory = factory

    def describe_endpoint(self) -> str:
        """The endpoint in words for logs and status (``user@head``, a URL); plugins whose endpoint
        key is not self-explanatory override it."""
        return describe_key(self.endpoint_key, skip=self.name)

    def transport_state(self) -> str | None:
        """How the connection to the endpoint fares when it is not 'ok' (e.g. an SSH target backing
        off), for status displays; None when there is nothing to say."""
        return None

    def credential_profiles(self) -> tuple[str, ...]:
        """Names of the auth profiles this endpoint authenticates with (the credential manager
        keeps them valid; a queue whose credential is dead submits nothing)."""
        return ()


class WmsStatusPlugin(StatusPlugin):
    """Observes demand. One instance per endpoint, shared by every queue that uses it."""

    kind = "wmsstatus"
    # True when ``at_decision`` changes demand (a simulated WMS modelling pilots taking jobs)
    adjusts_demand: ClassVar[bool] = False

    @classmethod
    def demand_key(cls, queue: QueueConfig, factory: FactoryContext) -> str | None:
        """The key of this queue's Demand in the snapshot (and in ``poll``'s ``wmsqueues``).
        Default: its wmsqueue. A plugin whose queues filter one WMS queue (Panda with
        prodsourcelabels) returns a distinct key per filter."""
        return queue.wmsqueue

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


class BatchStatusPlugin(StatusPlugin):
    """Observes the factory's own pilots at one endpoint (a schedd, a Slurm cluster, a region)."""

    kind = "batchstatus"
    # True when ``settle`` can tell what became of pilots a poll no longer lists
    settles: ClassVar[bool] = False

    def register(self, queue: QueueConfig) -> None:
        """Called for every queue that uses this endpoint, before the first poll and on reload."""

    def poll(self, now: float) -> BatchSnapshot:
        """Every pilot tagged with this factory's id at this endpoint. Raise BackendError on failure."""
        raise NotImplementedError

    def settle(self, pilots: Sequence[Pilot], now: float) -> Sequence[Pilot]:
        """Pilots the store thinks active but a poll no longer lists (after a restart): return what
        is known of them (Slurm: final state from sacct; PSI/J: tracked again). Pilots left out
        are marked unknown. Called on the poller thread (it may do I/O)."""
        return ()

    def close(self) -> None:
        pass


class BatchSubmitPlugin(Plugin):
    """Acts for one queue: submit, cancel, retire. Calls are serialised per ``target()``."""

    kind = "batchsubmit"
    Options: ClassVar[type[PluginOptions]] = SubmitOptions
    # True when ``cleanup`` has work to do each cycle (log trees, VMs whose node retired)
    has_cleanup: ClassVar[bool] = False

    def __init__(self, queue: QueueConfig, options: PluginOptions, factory: FactoryContext) -> None:
        self.queue = queue
        self.options = options
        self.factory = factory

    @property
    def retire_options(self) -> SubmitOptions:
        """APF's retire keys (``overlay.*``); every submit plugin's Options derive from SubmitOptions."""
        return self.options if isinstance(self.options, SubmitOptions) else SubmitOptions()

    def target(self) -> str:
        """The resource this queue acts on; actions on one target run one at a time."""
        return self.name

    def credential_profiles(self) -> tuple[str, ...]:
        """Names of the auth profiles this queue's submissions use (a queue whose credential is
        expired or failing submits nothing and says why)."""
        return ()

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
        """Called once per cycle with the queue's pilots when ``has_cleanup`` (e.g. remove VMs
        whose node retired). Runs on the action threads, serialised with the queue's target."""

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


def describe_key(key: Hashable, skip: str = "", limit: int = 80) -> str:
    """A readable form of an endpoint key: the values of a ``(plugin, options-json)`` key or of a
    dataclass/tuple key, never Python reprs of nested tuples. ``skip``: the plugin's name."""
    import dataclasses
    import json

    parts: list[str] = []
    items = key if isinstance(key, tuple) else (key,)
    for item in items:
        if item in (None, "", skip) or (isinstance(item, tuple) and not item):
            continue
        if dataclasses.is_dataclass(item) and not isinstance(item, type):
            values = dataclasses.asdict(item)
        elif isinstance(item, str) and item.startswith("{"):
            try:
                values = json.loads(item)
            except ValueError:
                values = {"": item}
        else:
            values = {"": item}
        if isinstance(values, dict):
            for k, v in values.items():
                if v in (None, "", [], {}, False, ()):
                    continue
                shown = v if isinstance(v, str | int | float) else json.dumps(v, default=str)
                parts.append(f"{k}={shown}" if k else str(shown))
    text = " ".join(parts) or "default"
    return text if len(text) <= limit else text[: limit - 3] + "..."
