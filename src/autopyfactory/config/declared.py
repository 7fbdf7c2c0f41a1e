"""Which queue keys installed plugins declare (shared by the loader and the 2.4 migration)."""

from __future__ import annotations

import functools

from autopyfactory.config.validate import known_suffixes
from autopyfactory.plugins import base as plugins
from autopyfactory.plugins.base import PluginError

QUEUE_PLUGIN_KINDS = ("wmsstatus", "batchstatus", "batchsubmit", "sched", "monitor")


@functools.cache
def plugin_prefixes(kind: str) -> dict[str, str]:
    """Every key prefix any installed plugin of ``kind`` reads -> the plugin's name."""
    out: dict[str, str] = {}
    for name in plugins.names(kind):
        try:
            cls = plugins.load(kind, name)
        except PluginError:
            out[f"{kind}.{name.lower()}."] = name
            continue
        for prefix in cls.prefixes():
            out.setdefault(prefix, name)
    return out


@functools.cache
def declared(key: str) -> bool:
    """Some installed plugin declares exactly this key (e.g. CondorEC2's own ``peaceful``)."""
    kind = key.split(".", 1)[0]
    if kind not in QUEUE_PLUGIN_KINDS:
        return False
    for prefix, name in plugin_prefixes(kind).items():
        if key.startswith(prefix):
            try:
                cls = plugins.load(kind, name)
            except PluginError:
                return False
            return key[len(prefix) :] in known_suffixes(cls.Options)
    return False
