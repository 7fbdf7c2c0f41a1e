"""CondorNordugrid: an ARC CE, ``grid_resource = nordugrid <host>`` with ``nordugrid_rsl``.

The RSL comes from the queue's ``nordugridrsl.*`` keys, as in APF: ``nordugridrsl.nordugridrsl``
is the whole RSL (else each ``nordugridrsl.<attr> = v`` gives ``(attr = v)``), then
``nordugridrsl.nordugridrsladd`` is appended, then an ``(environment = ...)`` block with the pilot
environment and every ``nordugridrsl.addenv.<VAR> = value``. The attribute names are open-ended,
so these keys are read from the queue section itself rather than declared as options.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

from autopyfactory.plugins.base import PluginError, PluginOptions
from autopyfactory.plugins.batch.condor.ce import CondorCE, CondorCEOptions

RSL_PREFIX = "nordugridrsl."
ADDENV = "nordugridrsl.addenv."


def rsl_string(value: str) -> str:
    """An xRSL string literal."""
    return '"' + value.replace('"', '""') + '"'


def build_rsl(section: Mapping[str, str]) -> tuple[str, list[tuple[str, str]]]:
    """(RSL without the environment block, extra environment pairs) from a queue section."""
    whole = section.get("nordugridrsl.nordugridrsl")
    add = section.get("nordugridrsl.nordugridrsladd")
    if whole and whole.strip() not in ("None", "none"):
        rsl = whole.strip()
    else:
        parts = []
        for key, value in section.items():
            if not key.startswith(RSL_PREFIX) or key.startswith(ADDENV):
                continue
            attr = key[len(RSL_PREFIX) :]
            if attr in ("nordugridrsl", "nordugridrsladd") or not value.strip():
                continue
            parts.append(f"({attr} = {value.strip()})")
        rsl = "".join(parts)
    if add and add.strip() not in ("None", "none"):
        rsl += add.strip()
    env = [(k[len(ADDENV) :], v.strip()) for k, v in section.items() if k.startswith(ADDENV) and v.strip()]
    return rsl, env


def environment_block(pairs: list[tuple[str, str]]) -> str:
    return "(environment = " + " ".join(f"({rsl_string(k)} {rsl_string(v)})" for k, v in pairs) + ")"


class CondorNordugrid(CondorCE):
    name = "CondorNordugrid"
    Options: ClassVar[type[PluginOptions]] = CondorCEOptions
    key_prefixes: ClassVar[tuple[str, ...]] = (
        "batchsubmit.condornordugrid.",
        "batchsubmit.condorce.",
        "batchsubmit.condorgrid.",
        "batchsubmit.condorbase.",
    )

    def setup(self) -> None:
        host = (self.options.gridresource or "").strip()
        if not host or " " in host:
            raise PluginError(f"[{self.queue.name}] {self.key('gridresource')} must be the ARC CE host")
        self.rsl, self.rsl_env = build_rsl(self.queue.raw)

    def grid_resource(self) -> str | None:
        return f"nordugrid {self.options.gridresource.strip()}"  # type: ignore[union-attr]

    def logged_lines(self, log_url: str) -> list[tuple[str, str]]:
        if not self.rsl:
            return []
        env = self.environment_pairs(log_url) + self.rsl_env
        return [("nordugrid_rsl", self.rsl + environment_block(env))]
