"""The plugin registry: plugins are found through the entry-point groups ``autopyfactory.<kind>``,
so a site package can add its own without touching the core. Loading a plugin imports only its
own module: heavy libraries (HTCondor bindings, boto3) are imported by the plugin modules that
need them."""

from __future__ import annotations

import threading
from importlib.metadata import EntryPoint, entry_points

from autopyfactory.hints import did_you_mean
from autopyfactory.plugins.options import Plugin

__all__ = ["KINDS", "PluginError", "did_you_mean", "load", "names", "register", "unregister"]

KINDS = ("sched", "wmsstatus", "batchstatus", "batchsubmit", "monitor", "auth", "config")


class PluginError(Exception):
    """A plugin could not be found or loaded."""


_lock = threading.Lock()
_cache: dict[str, dict[str, EntryPoint]] = {}
_extra: dict[tuple[str, str], type[Plugin]] = {}
_loaded: dict[tuple[str, str], type[Plugin]] = {}


def register(cls: type[Plugin]) -> type[Plugin]:
    """Register a plugin class in-process (tests and embedding); entry points are the normal way."""
    _extra[(cls.kind, cls.name)] = cls
    return cls


def unregister(cls: type[Plugin]) -> None:
    """Undo ``register`` (a test's plugin must not outlive the test)."""
    _extra.pop((cls.kind, cls.name), None)


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
