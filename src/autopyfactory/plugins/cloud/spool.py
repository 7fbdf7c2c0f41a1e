"""The power-saving spool: what Slurm's ResumeProgram, SuspendProgram and ResumeFailProgram ask of
the factory, one small file per call (docs/slurm-powersave.md).

``apf powersave resume|suspend|resumefail HOSTLIST`` writes a request atomically (a hidden
temporary file renamed into place) and exits: slurmctld never waits on the factory, and requests
survive a factory restart. The factory reads them (``read``) and removes each once it is handled
(``remove``). Layout: ``<spool>/<op>/<time_ns>-<pid>-<random>.json`` with
``{"op", "hostlist", "nodes", "time"}``. Standard library only, so the clients start fast.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from autopyfactory.plugins.cloud.hostlist import expand

log = logging.getLogger(__name__)

SUFFIX = ".json"
BAD = ".bad"  # a file that could not be read is renamed so, kept for the operator


class Op(StrEnum):
    RESUME = "resume"  # Slurm wants these nodes: create VMs for them
    SUSPEND = "suspend"  # Slurm found these nodes idle for SuspendTime: terminate their VMs
    RESUMEFAIL = "resumefail"  # the nodes did not come up within ResumeTimeout: write their VMs off


@dataclass(frozen=True, slots=True)
class Request:
    op: Op
    nodes: tuple[str, ...]
    time: float  # when the client wrote it (epoch seconds)
    path: Path
    hostlist: str = ""


def write(spool: Path, op: Op, hostlist: str, now: float) -> Path:
    """One request file, complete or absent (rename is atomic within a directory)."""
    nodes = expand(hostlist)  # ValueError for a malformed list: the client says so and exits 1
    folder = spool / op.value
    folder.mkdir(parents=True, exist_ok=True)
    name = f"{int(now * 1e9):020d}-{os.getpid()}-{secrets.token_hex(3)}"
    body = json.dumps({"op": op.value, "hostlist": hostlist, "nodes": nodes, "time": now})
    tmp = folder / f".{name}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        os.write(fd, body.encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    final = folder / f"{name}{SUFFIX}"
    os.rename(tmp, final)
    return final


def parse(text: str, path: Path, op: Op) -> Request:
    """A request file's text -> Request (pure); ValueError when it is not one."""
    data = json.loads(text)
    if not isinstance(data, dict) or data.get("op") != op.value:
        raise ValueError(f"not a {op.value} request")
    nodes = data.get("nodes")
    if not isinstance(nodes, list) or not all(isinstance(n, str) and n for n in nodes):
        raise ValueError("'nodes' is not a list of node names")
    when = data.get("time")
    if not isinstance(when, int | float):
        raise ValueError("'time' is not a number")
    return Request(op, tuple(nodes), float(when), path, str(data.get("hostlist", "")))


def read(spool: Path, op: Op) -> list[Request]:
    """Every complete request of one kind, oldest first. A file that is not a request is renamed
    ``*.bad`` with a warning (once), so it neither blocks nor repeats."""
    folder = spool / op.value
    try:
        names = sorted(n for n in os.listdir(folder) if n.endswith(SUFFIX) and not n.startswith("."))
    except FileNotFoundError:
        return []
    out: list[Request] = []
    for name in names:
        path = folder / name
        try:
            out.append(parse(path.read_text(), path, op))
        except FileNotFoundError:
            continue  # handled by another queue meanwhile
        except (OSError, ValueError) as exc:
            log.warning("power-save spool: %s is not a %s request (%s): renamed %s", path, op, exc, BAD)
            try:
                path.rename(path.with_name(name + BAD))
            except OSError:
                pass
    return out


def remove(requests: list[Request]) -> None:
    for req in requests:
        try:
            req.path.unlink()
        except FileNotFoundError:
            pass
