"""CondorGrid: ``universe = grid`` with the pilot's X509 proxy; the parent of the CE flavours."""

from __future__ import annotations

from typing import ClassVar

from autopyfactory.plugins.base import PluginOptions
from autopyfactory.plugins.batch.condor.base import CondorBase, CondorBaseOptions


class CondorGridOptions(CondorBaseOptions):
    pass


class CondorGrid(CondorBase):
    name = "CondorGrid"
    Options: ClassVar[type[PluginOptions]] = CondorGridOptions
    key_prefixes: ClassVar[tuple[str, ...]] = ("batchsubmit.condorgrid.", "batchsubmit.condorbase.")

    def flavour_lines(self) -> list[tuple[str, str]]:
        return [("universe", "grid")]
