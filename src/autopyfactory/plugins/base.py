"""Plugin contracts of the backend kinds: WMS status, batch status, batch submit, monitor.

What every plugin is (kind, name, ``Options``) lives in ``plugins.options``; the entry-point
registry in ``plugins.registry``. Both are re-exported here for plugin modules' convenience.

Optional capabilities are declared, never discovered: a plugin that can do more sets a class
attribute and overrides the matching method (``BatchStatusPlugin.settles`` + ``settle``,
``BatchSubmitPlugin.has_cleanup`` + ``cleanup``, ``WmsStatusPlugin.adjusts_demand`` +
``at_decision``), and the engine reads the attribute.
"""

from __future__ import annotations

import json
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

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
        """This poller named in words for logs and status (``batchstatus Slurm at user@head``);
        plugins whose endpoint key does not describe itself override it."""
        return endpoint_label(self.kind, self.name, self.endpoint_key)

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


def endpoint_label(kind: str, plugin_name: str, endpoint_key: Hashable) -> str:
    """A poller or target named in words: ``batchstatus Slurm at user@hpc:22 (cluster c1)``.

    Keys that print themselves (a class with its own ``__str__``) are used as they are; the
    default ``(name, options JSON)`` tuples show their non-empty options as ``key=value``."""
    head = f"{kind} {plugin_name}"
    if type(endpoint_key).__str__ is not object.__str__ and not isinstance(endpoint_key, tuple | str):
        text = str(endpoint_key)
        return f"{kind} {text}" if text.startswith(plugin_name) else f"{head} {text}"
    options: Mapping[str, Any] = {}
    places: list[str] = []
    parts = endpoint_key if isinstance(endpoint_key, tuple) else (endpoint_key,)
    for part in parts:
        if not isinstance(part, str) or not part or part == plugin_name:
            continue
        if part.startswith("{"):
            try:
                loaded = json.loads(part)
            except ValueError:
                loaded = None
            if isinstance(loaded, dict):
                options = loaded
                continue
        places.append(_short(part))
    where = f" at {', '.join(places)}" if places else ""
    return head + where + _describe_options(options)


_SECRETISH = ("secret", "token", "password", "passphrase", "key")


def _describe_options(options: Mapping[str, Any]) -> str:
    host = options.get("host") or options.get("scheddhost") or options.get("url")
    where = ""
    if host:
        user = options.get("user")
        port = options.get("port") or options.get("scheddport")
        where = f" at {user + '@' if user else ''}{host}{':' + str(port) if port and port != 22 else ''}"
    rest = [
        f"{k}={_short(v)}"
        for k, v in options.items()
        if v not in (None, "", [], {})
        and k not in ("host", "user", "port", "scheddhost", "scheddport", "url")
        and not any(s in k.lower() for s in _SECRETISH)
        and not isinstance(v, dict | list)
    ]
    return where + (f" ({', '.join(rest)})" if rest else "")


def _short(value: Any) -> str:
    text = str(value)
    return text if len(text) <= 40 else text[:37] + "..."
