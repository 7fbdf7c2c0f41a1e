"""CondorCE: a Condor-G pilot to a compute element; ``+Nonessential`` marks it expendable when
the CE is unreachable. ``gridresource`` is used verbatim as ``grid_resource``."""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field

from autopyfactory.plugins.base import PluginOptions
from autopyfactory.plugins.batch.condor.grid import CondorGrid, CondorGridOptions


class CondorCEOptions(CondorGridOptions):
    gridresource: str | None = Field(None, description="the CE; its form depends on the flavour")


class CondorCE(CondorGrid):
    name = "CondorCE"
    Options: ClassVar[type[PluginOptions]] = CondorCEOptions
    key_prefixes: ClassVar[tuple[str, ...]] = (
        "batchsubmit.condorce.",
        "batchsubmit.condorgrid.",
        "batchsubmit.condorbase.",
    )

    options: CondorCEOptions

    def grid_resource(self) -> str | None:
        return self.options.gridresource

    def flavour_lines(self) -> list[tuple[str, str]]:
        lines = [*super().flavour_lines(), ("+Nonessential", "True")]
        resource = self.grid_resource()
        if resource:
            lines.append(("grid_resource", resource))
        return lines
