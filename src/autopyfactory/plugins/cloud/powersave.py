"""Slurm's power saving as an integration mode: what the factory does for Slurm's node names (pure).

Slurm powers ``State=CLOUD`` nodes up and down itself (``ResumeProgram``, ``SuspendProgram``,
``ResumeFailProgram``); here those programs are the factory's small clients (``apf powersave``),
which write requests to a spool (``spool``). The factory then does the cloud side through its
normal machinery (chain, cascade policy, quotas, costs, accounting), and this module decides:

* **demand** (``wmsstatus = SlurmPowerSave``): per partition, the nodes Slurm asked the factory to
  resume (a resume request) that are still ``POWERING_UP``; a stale request, for a node already up,
  down or written off, counts for nothing;
* **node <-> VM**: each new VM of the queue is given one waiting node by writing its instance id in
  the node's ``Comment``; the VM finds the node that carries its id and starts ``slurmd -b -N
  <node>`` (``plan_power``: ``assign``). A waiting node whose Comment names a VM that is gone is
  waiting again. A VM no node waits for (the demand was gone before it was launched) is cancelled;
* **retire**: a VM leaves through its node. A node Slurm powers down (``POWERING_DOWN`` or
  ``POWERED_DOWN``: SuspendProgram ran) has its VM terminated (``suspended``); a node that did not
  come up within ResumeTimeout (``DOWN`` + ``POWERED_DOWN``, or a resumefail request) has its VM
  written off (``resume-failed``, a failed pilot); the Comment is then cleared. The node states are
  the truth; the requests wake the factory, classify failures and are removed once handled.

Every function here is pure; ``pools.PowerSavePool`` runs the commands (``pools.parse_power_nodes``
reads ``scontrol show node -o``).
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field

from autopyfactory.plugins.cloud.lifecycle import EndReason, Instance, VmState
from autopyfactory.plugins.cloud.spool import Request

# a resume request is dropped once its nodes are no longer POWERING_UP, but not before this many
# seconds: Slurm sets the flag around the time it calls the program, not necessarily before
SETTLE = 10.0
# a request nobody could handle (its node names a VM no queue knows) is dropped after this
EXPIRE = 3600.0


@dataclass(frozen=True, slots=True)
class PowerNode:
    """One node as ``scontrol show node -o`` shows it."""

    name: str
    base: str  # IDLE, ALLOCATED, MIXED, DOWN, ...
    flags: frozenset[str]  # CLOUD, POWERING_UP, POWERED_DOWN, NOT_RESPONDING, DRAIN, ...
    comment: str = ""
    partitions: tuple[str, ...] = ()

    @property
    def powering_up(self) -> bool:
        return "POWERING_UP" in self.flags

    @property
    def powered_off(self) -> bool:
        """Slurm powered it down or is doing so (SuspendProgram ran): no VM should back it."""
        return bool({"POWERED_DOWN", "POWERING_DOWN"} & self.flags)

    @property
    def failed(self) -> bool:
        """Down and powered down: the resume did not complete within ResumeTimeout."""
        return self.base == "DOWN" and "POWERED_DOWN" in self.flags

    @property
    def up(self) -> bool:
        """Its slurmd has registered and answers."""
        return (
            not self.powering_up
            and not self.powered_off
            and "NOT_RESPONDING" not in self.flags
            and self.base not in ("DOWN", "UNKNOWN", "FUTURE")
        )

    def in_partition(self, partition: str | None) -> bool:
        return partition is None or partition in self.partitions


def requested_nodes(requests: Iterable[Request]) -> set[str]:
    return {n for r in requests for n in r.nodes}


# ---------------------------------------------------------------------------------------------
# demand


@dataclass(frozen=True, slots=True)
class PartitionDemand:
    waiting: int = 0  # asked for, still powering up: the VMs needed
    up: int = 0  # CLOUD nodes up (a VM runs there)
    down: int = 0  # CLOUD nodes marked down (e.g. failed resumes)


def demand(nodes: Sequence[PowerNode], requested: Collection[str]) -> dict[str, PartitionDemand]:
    """Per partition: waiting (requested and POWERING_UP), up and down CLOUD nodes."""
    counts: dict[str, list[int]] = {}
    for node in nodes:
        if "CLOUD" not in node.flags and not node.powering_up:
            continue
        for part in node.partitions:
            c = counts.setdefault(part, [0, 0, 0])
            if node.powering_up and node.name in requested:
                c[0] += 1
            elif node.up:
                c[1] += 1
            elif node.base == "DOWN":
                c[2] += 1
    return {p: PartitionDemand(*c) for p, c in counts.items()}


def handled_resumes(
    requests: Sequence[Request], nodes: Sequence[PowerNode], now: float, settle: float = SETTLE
) -> list[Request]:
    """Resume requests none of whose nodes is still powering up (after ``settle``): to remove."""
    powering = {n.name for n in nodes if n.powering_up}
    return [r for r in requests if now - r.time >= settle and not powering & set(r.nodes)]


# ---------------------------------------------------------------------------------------------
# the pool side of one queue


@dataclass(frozen=True, slots=True)
class PowerPlan:
    terminate: tuple[tuple[str, str, str], ...] = ()  # (instance id, EndReason, node)
    clear: tuple[str, ...] = ()  # nodes whose Comment to clear (after the terminations)
    assign: tuple[tuple[str, str], ...] = ()  # (node, instance id)
    done: tuple[Request, ...] = ()  # suspend/resumefail requests handled: to remove
    notes: tuple[str, ...] = field(default=())  # what a log line should say

    @property
    def empty(self) -> bool:
        return not (self.terminate or self.clear or self.assign or self.done)


def _live(inst: Instance) -> bool:
    return inst.state.live and not inst.end


def plan_power(
    nodes: Sequence[PowerNode],
    instances: Sequence[Instance],
    *,
    requested: Collection[str],
    partition: str | None,
    requests: Sequence[Request] = (),
    now: float,
    cancel_surplus: bool = True,
    expire: float = EXPIRE,
    settle: float = SETTLE,
) -> PowerPlan:
    """What one queue does now with its VMs and the power-saving nodes (pure).

    ``instances``: the queue's VMs as last listed (and any just launched); ``requested``: nodes
    with a resume request; ``partition``: the partition whose nodes the queue's VMs back (None =
    any); ``requests``: the suspend and resumefail requests; ``cancel_surplus``: terminate VMs that
    no waiting node can take (off right after a launch, whose VMs the listing may not show yet)."""
    live = {i.id: i for i in instances if _live(i)}
    dead = {i.id for i in instances if not _live(i)}
    failed_named = {n for r in requests if r.op == "resumefail" for n in r.nodes}
    terminate: list[tuple[str, str, str]] = []
    clear: list[str] = []
    notes: list[str] = []
    gone: set[str] = set()  # instances terminated by this plan

    # 1. retire: a node Slurm powered off takes its VM with it
    for node in nodes:
        iid = node.comment
        if not iid or not node.powered_off:
            continue
        if iid in live:
            failed = node.failed or node.name in failed_named
            reason = EndReason.RESUME_FAILED if failed else EndReason.SUSPENDED
            terminate.append((iid, reason, node.name))
            clear.append(node.name)
            gone.add(iid)
            notes.append(f"{node.name} {'failed to resume' if failed else 'powered down'}: {iid} {reason}")
        elif iid in dead:
            clear.append(node.name)

    # 2. suspend/resumefail requests: done once no VM of ours (or anyone's) is left on their nodes
    by_name = {n.name: n for n in nodes}
    cleared = set(clear)
    done: list[Request] = []
    for req in requests:
        pending_nodes = []
        for name in req.nodes:
            node = by_name.get(name)
            if node is None or not node.comment or name in cleared or node.comment in dead:
                continue  # unknown to Slurm, no VM there, or handled now
            if not node.powered_off and not node.failed and now - req.time >= settle:
                continue  # stale: the node is up (or powering up) again since the request
            pending_nodes.append(name)
        if not pending_nodes or now - req.time >= expire:
            done.append(req)

    # 3. node <-> VM: each waiting node without a live VM gets one of ours
    backing = {n.comment for n in nodes if n.comment}
    free = [
        n
        for n in nodes
        if n.powering_up
        and n.name in requested
        and n.in_partition(partition)
        and (not n.comment or n.comment in dead or n.comment in gone)
    ]
    free.sort(key=lambda n: _natural(n.name))
    spare = [
        i
        for i in live.values()
        if i.id not in backing
        and i.id not in gone
        and i.retire_since is None
        and i.state in (VmState.PENDING, VmState.RUNNING)
    ]
    spare.sort(key=lambda i: (i.launched_at or 0.0, i.id))
    assign = [(node.name, inst.id) for node, inst in zip(free, spare, strict=False)]
    if cancel_surplus:
        for inst in spare[len(assign) :]:
            terminate.append((inst.id, EndReason.CANCELLED, ""))
            notes.append(f"{inst.id}: no node waits for it: {EndReason.CANCELLED}")
    return PowerPlan(tuple(terminate), tuple(clear), tuple(assign), tuple(done), tuple(notes))


def _natural(name: str) -> tuple[object, ...]:
    """c2 before c10."""
    return tuple(int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name))
