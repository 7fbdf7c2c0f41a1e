"""CondorCREAM, CondorGT2, CondorGT5: the middleware is retired.

Their entry points resolve to this module, which refuses to hand out the class: the loader then
reports the queue's ``batchsubmitplugin`` line (file, line, section, key) with the reason and
what to use instead, and nothing else about the section is checked.
"""

from __future__ import annotations

from autopyfactory.plugins.base import PluginError

_INSTEAD = (
    "use CondorOSGCE (an HTCondor-CE: grid_resource = condor <host> <host>:9619) or CondorNordugrid "
    "(an ARC CE) instead"
)
MESSAGES = {
    "CondorCREAM": f"the CREAM CE middleware is retired and current HTCondor cannot submit to it; {_INSTEAD}",
    "CondorGT2": f"Globus GRAM (gt2) is retired and current HTCondor cannot submit to it; {_INSTEAD}",
    "CondorGT5": f"Globus GRAM5 (gt5) is retired and current HTCondor cannot submit to it; {_INSTEAD}",
}


class RetiredMiddleware(PluginError):
    """Raised when a retired plugin is looked up."""


def __getattr__(name: str) -> object:
    if name in MESSAGES:
        raise RetiredMiddleware(MESSAGES[name])
    raise AttributeError(name)
