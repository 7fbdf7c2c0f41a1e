"""Declarations plugins make about their keys and needs, read by ``apf check``, ``apf plugins`` and
the start-up checks (``autopyfactory.preflight``):

- ``auth_field(...)``: a key that names auth.conf profiles, and which kinds it accepts;
- ``NeedsModules``: a mixin for plugins that import optional libraries when they run, naming the
  module and how to install it;
- ``endpoint_label``: a poller's or target's name in words for ``apf status`` and logs.
"""

from __future__ import annotations

import json
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from pydantic import Field

from autopyfactory.plugins.base import PluginOptions

AUTH_META = "auth_profile"


def auth_field(default: Any, *kinds: str, many: bool = False, description: str = "") -> Any:
    """A key naming an auth.conf profile of one of ``kinds`` (a comma list when ``many``)."""
    extra = {AUTH_META: {"kinds": list(kinds), "many": many}}
    return Field(default, description=description or None, json_schema_extra=extra)  # type: ignore[arg-type]


@dataclass(frozen=True)
class AuthReference:
    field: str
    key_suffix: str
    kinds: tuple[str, ...]
    many: bool


def auth_references(options_cls: type[PluginOptions]) -> list[AuthReference]:
    """Every key of a plugin's options that names auth profiles."""
    out = []
    for name, info in options_cls.model_fields.items():
        extra = info.json_schema_extra
        if isinstance(extra, Mapping) and AUTH_META in extra:
            meta = extra[AUTH_META]
            assert isinstance(meta, Mapping)
            out.append(AuthReference(name, info.alias or name, tuple(meta["kinds"]), bool(meta["many"])))
    return out


@dataclass(frozen=True)
class Requirement:
    """An optional library a plugin imports when it runs."""

    module: str  # the import name, e.g. htcondor2
    install: str  # how to get it, e.g. pip install 'autopyfactory[htcondor]'


class NeedsModules:
    """Mixin: ``requires`` names the optional libraries the plugin imports at run time."""

    requires: ClassVar[tuple[Requirement, ...]] = ()


HTCONDOR = Requirement("htcondor2", "pip install 'autopyfactory[htcondor]' (HTCondor's Python bindings)")
PSIJ = Requirement("psij", "pip install 'autopyfactory[psij]'")
BOTO3 = Requirement("boto3", "pip install 'autopyfactory[cloud]'")
OPENSTACK = Requirement("openstack", "pip install 'autopyfactory[cloud]'")
PSYCOPG = Requirement("psycopg", "pip install 'autopyfactory[postgres]'")


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


def describe_kinds(kinds: Sequence[str]) -> str:
    return " or ".join(kinds)
