"""CondorOSGCE: an HTCondor-CE, ``grid_resource = condor <host> <host>:<port>`` (port 9619)."""

from __future__ import annotations

from typing import ClassVar

from autopyfactory.plugins.base import PluginError, PluginOptions
from autopyfactory.plugins.batch.condor.ce import CondorCE, CondorCEOptions

HTCONDOR_CE_PORT = 9619


def osgce_resource(gridresource: str) -> str:
    """``host`` or ``host:port`` -> ``condor host host:port``."""
    value = gridresource.strip()
    if not value or " " in value:
        raise ValueError(f"expected 'host' or 'host:port', got {value!r}")
    host, sep, port = value.partition(":")
    if sep and not port.isdigit():
        raise ValueError(f"bad port in {value!r}")
    return f"condor {host} {host}:{port if sep else HTCONDOR_CE_PORT}"


class CondorOSGCE(CondorCE):
    name = "CondorOSGCE"
    Options: ClassVar[type[PluginOptions]] = CondorCEOptions
    key_prefixes: ClassVar[tuple[str, ...]] = (
        "batchsubmit.condorosgce.",
        "batchsubmit.condorce.",
        "batchsubmit.condorgrid.",
        "batchsubmit.condorbase.",
    )

    def setup(self) -> None:
        if not self.options.gridresource:
            raise PluginError(f"[{self.queue.name}] {self.key('gridresource')} is required (the CE host)")
        try:
            self.resource = osgce_resource(self.options.gridresource)
        except ValueError as exc:
            raise PluginError(f"[{self.queue.name}] {self.key('gridresource')}: {exc}") from None

    def grid_resource(self) -> str | None:
        return self.resource

    def flavour_lines(self) -> list[tuple[str, str]]:
        return [*super().flavour_lines(), ("+TransferOutput", '""')]
