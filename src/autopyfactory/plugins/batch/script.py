"""Pilot batch scripts shared by the command-line backends (Slurm, PBS/Torque, LSF; PSI/J's environment).

A backend gives its directive prefix (``#SBATCH``), its directive lines, and a shell snippet that
sets ``APFCID`` from the batch system's own variables at run time (the job id is only known
then). Everything else, the AutoPyFactory pilot environment and the ``exec`` of the queue's
executable, is the same for every backend. Pure code: no I/O.
"""

from __future__ import annotations

import re
import shlex
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from autopyfactory.plugins.base import BackendError

if TYPE_CHECKING:
    from autopyfactory.config.models import QueueConfig
    from autopyfactory.model import PilotTags
    from autopyfactory.plugins.base import FactoryContext

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def parse_environ(text: str | None) -> dict[str, str]:
    """APF's ``environ`` key: space-separated ``NAME=value`` items (shell quoting allowed)."""
    out: dict[str, str] = {}
    for item in shlex.split(text or ""):
        name, sep, value = item.partition("=")
        if not sep or not _NAME.match(name):
            raise ValueError(f"environ item {item!r} is not NAME=value")
        out[name] = value
    return out


def executable(queue: QueueConfig, target: str) -> str:
    """The queue's pilot executable; a BackendError naming the queue when it has none."""
    if not queue.settings.executable:
        raise BackendError(target, f"queue {queue.name!r} has no 'executable' to run as pilot")
    return queue.settings.executable


def split_lines(text: str | None) -> list[str]:
    """A multi-line key (``extra``): one item per line or per ';', blanks dropped."""
    if not text:
        return []
    return [part.strip() for line in text.splitlines() for part in line.split(";") if part.strip()]


def log_dir(factory: FactoryContext, queue: str, now: float, base: str | None) -> str | None:
    """APF's log tree ``<base>/<YYYY-MM-DD UTC>/<queue with '/' and ':' as '_'>``."""
    if not base:
        return None
    day = time.strftime("%Y-%m-%d", time.gmtime(now))
    return f"{base.rstrip('/')}/{day}/{queue.replace('/', '_').replace(':', '_')}"


@dataclass(frozen=True, slots=True)
class ScriptSpec:
    """What a backend decides; ``render`` turns it into the script text."""

    directive: str  # "#SBATCH", "#PBS", "#BSUB"
    directives: Sequence[str]  # option text after the prefix, e.g. "--time=60"
    cid_setup: str  # shell lines that set APFCID
    executable: str
    arguments: str | None
    environment: Mapping[str, str]  # static values, quoted when rendered
    gtag_prefix: str | None  # log URL or directory; GTAG = <prefix>/<log_name>.out
    comment: str = ""
    # shell expression of the pilot's log file name (without .out)
    log_name: str = "${APFCID}"
    # when set, the script sends its own output to <redirect_dir>/<log_name>.out (for batch
    # systems whose output file names cannot be made to match APFCID)
    redirect_dir: str | None = None


def pilot_environment(
    queue: QueueConfig, factory: FactoryContext, tags: PilotTags, extra: Mapping[str, str]
) -> dict[str, str]:
    """The static part of AutoPyFactory's pilot environment (APFCID/GTAG are set at run time)."""
    env = {
        "APFFID": factory.factory_id,
        "PANDA_JSID": factory.factory_id,
        "FACTORYQUEUE": queue.name,
        "APF_INTENT": tags.intent_id,
    }
    if factory.settings.factoryUser:
        env["FACTORYUSER"] = factory.settings.factoryUser
    if factory.monitor_url:
        env["APFMON"] = factory.monitor_url
    env.update(extra)
    return env


def render(spec: ScriptSpec) -> str:
    """The batch script: directives first (the batch system stops reading them at the first command)."""
    lines = ["#!/bin/bash"]
    lines += [f"{spec.directive} {d}" for d in spec.directives]
    if spec.comment:
        lines.append(f"# {spec.comment}")
    lines.append(spec.cid_setup.rstrip("\n"))
    lines.append("export APFCID")
    lines.append('export FACTORY_JOBID="$(hostname)#${APFCID}"')
    if spec.redirect_dir:
        out_dir = shlex.quote(spec.redirect_dir)
        lines.append(f"mkdir -p {out_dir}")
        lines.append(f'exec >>{shlex.quote(spec.redirect_dir.rstrip("/") + "/")}"{spec.log_name}.out" 2>&1')
    if spec.gtag_prefix:
        lines.append(f'export GTAG={shlex.quote(spec.gtag_prefix.rstrip("/") + "/")}"{spec.log_name}.out"')
    for name, value in spec.environment.items():
        lines.append(f"export {name}={shlex.quote(value)}")
    command = shlex.quote(spec.executable)
    if spec.arguments:
        # executable.arguments is shell text on purpose: APF configs use $VARS and quoting in it
        command += f" {spec.arguments}"
    lines.append(f"exec {command}")
    return "\n".join(lines) + "\n"
