"""CondorLSF / CondorPBS: pilots to a batch system on this host through HTCondor's BLAHP
(``grid_resource = batch lsf`` / ``batch pbs``)."""

from __future__ import annotations

from typing import ClassVar

from autopyfactory.plugins.base import PluginOptions
from autopyfactory.plugins.batch.condor.grid import CondorGrid, CondorGridOptions


class CondorBlahpOptions(CondorGridOptions):
    pass


class _Blahp(CondorGrid):
    batch: ClassVar[str] = ""
    Options: ClassVar[type[PluginOptions]] = CondorBlahpOptions

    def flavour_lines(self) -> list[tuple[str, str]]:
        return [*super().flavour_lines(), ("grid_resource", f"batch {self.batch}")]


class CondorLSF(_Blahp):
    name = "CondorLSF"
    batch = "lsf"
    key_prefixes: ClassVar[tuple[str, ...]] = (
        "batchsubmit.condorlsf.",
        "batchsubmit.condorgrid.",
        "batchsubmit.condorbase.",
    )


class CondorPBS(_Blahp):
    name = "CondorPBS"
    batch = "pbs"
    key_prefixes: ClassVar[tuple[str, ...]] = (
        "batchsubmit.condorpbs.",
        "batchsubmit.condorgrid.",
        "batchsubmit.condorbase.",
    )
