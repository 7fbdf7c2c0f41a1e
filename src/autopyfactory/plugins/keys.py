"""Declarations plugins make about their keys and needs, read by ``apf check``, ``apf plugins`` and
the start-up checks (``autopyfactory.preflight``):

- ``auth_field(...)``: a key that names auth.conf profiles, and which kinds it accepts;
- ``NeedsModules``: a mixin for plugins that import optional libraries when they run, naming the
  module and how to install it;
- ``endpoint_label``: a poller's or target's name in words for ``apf status`` and logs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
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


def describe_kinds(kinds: Sequence[str]) -> str:
    return " or ".join(kinds)
