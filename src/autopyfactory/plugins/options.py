"""What every plugin is: a kind, an AutoPyFactory name, and an ``Options`` model of its keys.

This module depends on nothing else of the factory, so configuration models, the pure decision
code and the backends can all import it without import cycles (``plugins.base`` holds the
backend contracts, ``plugins.registry`` the entry-point lookup).

Keys live in a queue section as ``<kind>.<name lowercase>.<suffix>``; the ``Options`` field for a
key is named by its suffix (``alias`` when the suffix is not a Python name, e.g.
``overlay.peaceful``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field


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

    def join_deadline(self) -> float | None:
        """Seconds after which the backend itself writes off a pilot that has not joined its pool
        (a cloud VM's provisioning_deadline); None = the backend never does."""
        return None


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


def options_key(options: PluginOptions | None) -> str:
    """A hashable, order-stable identity of an options model (for sharing pollers per endpoint)."""
    return options.model_dump_json() if options is not None else ""
