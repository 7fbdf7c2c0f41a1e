"""CondorLocal: a pilot in the local pool (``universe = vanilla``), the proxy optional."""

from __future__ import annotations

from typing import ClassVar

from autopyfactory.plugins.base import PluginOptions
from autopyfactory.plugins.batch.condor.base import CondorBase, CondorBaseOptions


class CondorLocalOptions(CondorBaseOptions):
    pass


class CondorLocal(CondorBase):
    name = "CondorLocal"
    Options: ClassVar[type[PluginOptions]] = CondorLocalOptions
    key_prefixes: ClassVar[tuple[str, ...]] = ("batchsubmit.condorlocal.", "batchsubmit.condorbase.")

    def flavour_lines(self) -> list[tuple[str, str]]:
        return [
            ("universe", "vanilla"),
            ("should_transfer_files", "IF_NEEDED"),
            ("+TransferOutput", '""'),
        ]
