"""Pools that VMs join: which node carries which instance id, drain, release.

The worker inside a VM reads its instance id (from the cloud's metadata service) and advertises
it on its pool node; the factory matches nodes to VMs by that id only.

* **Slurm**: the id is in the node's ``Comment``, ``Extra`` or ``Features`` (``pool.attribute``;
  ``any`` looks at all three). One ``sinfo --json`` per query (``scontrol show node -o`` where
  ``--json`` is not available); drain is ``scontrol update nodename=... state=DRAIN``; release
  puts the slot of a terminated VM back to ``State=FUTURE`` (and clears Comment/Extra), deletes
  a dynamic node, or leaves it (``pool.release``). Commands run locally or over SSH.
* **Slurm power saving** (``slurm-powersave``): Slurm powers ``State=CLOUD`` nodes up and down and
  calls the factory's clients (``apf powersave``); the factory writes each new VM's instance id in
  the ``Comment`` of a node Slurm is powering up, terminates the VMs of nodes Slurm powered down,
  and clears the Comment (``plugins/cloud/powersave`` decides, ``PowerSavePool.tend`` acts).
* **HTCondor**: the id is a startd/master ClassAd attribute (``pool.attribute``, default
  ``EC2InstanceID``), read through the collector interface of ``plugins/batch/condor``; drain is
  ``condor_off -peaceful -startd``; a node whose startd exited (master only) is drained.

Parsers and matching are pure functions, tested on recorded output.
"""

from __future__ import annotations

import json
import logging
import re
import threading
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from autopyfactory.plugins.base import BackendError
from autopyfactory.plugins.cloud import powersave as ps
from autopyfactory.plugins.cloud import spool
from autopyfactory.plugins.cloud.lifecycle import Instance, NodeState, PoolNode
from autopyfactory.plugins.transport.base import Result, Transport
from autopyfactory.plugins.transport.pool import POOL, transport_for

if TYPE_CHECKING:
    from autopyfactory.plugins.base import FactoryContext

log = logging.getLogger(__name__)


class PoolKind(StrEnum):
    NONE = "none"
    SLURM = "slurm"
    SLURM_POWERSAVE = "slurm-powersave"  # Slurm's power saving powers CLOUD nodes up and down
    CONDOR = "condor"


class Release(StrEnum):
    FUTURE = "future"  # scontrol update state=FUTURE comment= extra= (pre-declared VM slots)
    DELETE = "delete"  # scontrol delete (dynamic nodes)
    NONE = "none"


@dataclass(frozen=True, slots=True)
class PoolSpec:
    """Where a queue's VMs join (hashable: the status plugin queries each pool once per poll)."""

    kind: PoolKind
    attribute: str = "any"
    host: str | None = None
    user: str | None = None
    port: int = 22
    authprofile: str | None = None
    slurm_conf: str | None = None
    collector: str | None = None  # host:port; None = the local pool
    release: Release = Release.FUTURE
    timeout: float = 60.0
    spool: str | None = None  # slurm-powersave: the clients' spool; None = <state dir>/powersave
    partition: str | None = None  # slurm-powersave: the partition whose nodes the VMs back

    @property
    def label(self) -> str:
        if self.kind is PoolKind.CONDOR:
            return f"condor pool {self.collector or 'local'}"
        where = "local" if not self.host else f"{self.user + '@' if self.user else ''}{self.host}:{self.port}"
        conf = f" ({self.slurm_conf})" if self.slurm_conf else ""
        return f"slurm pool {where}{conf}"


class Pool(Protocol):
    """What the life cycle asks of a pool. Failures raise ``BackendError``."""

    label: str
    #: the pool pairs each new VM with a node itself (``tend`` right after a launch)
    pairs_vms: bool

    def nodes(self, instance_ids: Collection[str]) -> dict[str, PoolNode]:
        """instance id -> the node advertising it, for the ids given that have joined."""
        ...

    def drain(self, nodes: Sequence[PoolNode], reason: str) -> None:
        """Let running work finish, start none."""
        ...

    def release(self, nodes: Sequence[PoolNode]) -> None:
        """The nodes' VMs are terminated: reset what they leave behind."""
        ...

    def tend(
        self,
        instances: Sequence[Instance],
        terminate: Callable[[Sequence[str], str], None],
        now: float,
        *,
        cancel_surplus: bool = True,
    ) -> None:
        """A pool that decides about VMs itself (power saving) acts here, each cycle and right
        after a launch; ``instances`` are the queue's VMs, ``terminate(ids, reason)`` ends some."""
        ...

    def close(self) -> None: ...


# ---------------------------------------------------------------------------------------------
# matching (pure)

_TOKEN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]*")


def tokens(text: str) -> set[str]:
    """Words an instance id could be: ``i-0abc``, a UUID, inside JSON or free text."""
    return set(_TOKEN.findall(text or ""))


def match_nodes(
    rows: Iterable[tuple[str, NodeState, str, Sequence[str]]], instance_ids: Collection[str]
) -> dict[str, PoolNode]:
    """(name, state, detail, advertised texts) rows -> instance id -> node, for the wanted ids.

    A node advertising several wanted ids (a mistake in an image) matches none of them."""
    wanted = set(instance_ids)
    out: dict[str, PoolNode] = {}
    for name, state, detail, texts in rows:
        found = set().union(*(tokens(t) for t in texts)) & wanted if texts else set()
        if len(found) == 1:
            iid = found.pop()
            out[iid] = PoolNode(name, iid, state, detail)
        elif len(found) > 1:
            log.warning("pool node %s advertises several instance ids %s: ignored", name, sorted(found))
    return out


# ---------------------------------------------------------------------------------------------
# Slurm (pure parsing)


def slurm_node_state(base: str, flags: Collection[str]) -> NodeState | None:
    """Slurm's node state word and flags -> NodeState; None for a FUTURE (absent) node."""
    word = base.strip().upper()
    not_responding = word.endswith("*") or "NOT_RESPONDING" in flags
    word = word.rstrip("*~#!%$@^-")
    if word == "FUTURE" or "FUTURE" in flags:
        return None
    if (
        not_responding
        or word in ("DOWN", "UNKNOWN", "FAIL", "FAILING")
        or {"POWERED_DOWN", "POWERING_DOWN"} & set(flags)
    ):
        return NodeState.DOWN
    drain = "DRAIN" in flags or word in ("DRAINED", "DRAINING", "DRAIN")
    if word in ("IDLE", "DRAINED"):
        return NodeState.DRAINED if drain else NodeState.IDLE
    # allocated, mixed, completing, draining, ... and anything new: work may run there
    return NodeState.DRAINING if drain else NodeState.BUSY


def _attribute_texts(attribute: str, comment: str, extra: str, features: Sequence[str]) -> list[str]:
    pick = {"comment": [comment], "extra": [extra], "features": list(features)}
    if attribute == "any":
        return [comment, extra, *features]
    return pick.get(attribute, [])


def parse_sinfo_json(text: str, attribute: str = "any") -> list[tuple[str, NodeState, str, list[str]]]:
    """Rows of ``sinfo --json`` (22.05: ``state`` a word and ``state_flags``; later: a list)."""
    data = json.loads(text)
    rows = []
    seen: set[str] = set()
    for node in data.get("nodes", []):
        name = str(node.get("name") or node.get("hostname") or "")
        if not name or name in seen:
            continue
        seen.add(name)
        raw = node.get("state", "")
        if isinstance(raw, list):
            words = [str(w).upper() for w in raw]
            base, flags = (words[0] if words else ""), words[1:]
        else:
            base, flags = str(raw).upper(), [str(f).upper() for f in node.get("state_flags") or []]
        state = slurm_node_state(base, flags)
        if state is None:
            continue
        features = [
            f for f in re.split(r"[,&|]", str(node.get("active_features") or node.get("features") or ""))
        ]
        texts = _attribute_texts(
            attribute, _text(node.get("comment")), _text(node.get("extra")), [f for f in features if f]
        )
        rows.append((name, state, "+".join([base, *flags]), texts))
    return rows


def _text(value: Any) -> str:
    return "" if value in (None, "(null)") else str(value)


_SCONTROL_FIELD = re.compile(r"(?:^|\s)([A-Za-z][A-Za-z0-9_/:]*)=")


def parse_scontrol_fields(line: str) -> dict[str, str]:
    """One line of ``scontrol show node -o``: ``Key=value`` pairs (values may contain spaces)."""
    out: dict[str, str] = {}
    matches = list(_SCONTROL_FIELD.finditer(line))
    for i, m in enumerate(matches):
        end = matches[i + 1].start() if i + 1 < len(matches) else len(line)
        out.setdefault(m.group(1), line[m.end() : end].strip())
    return out


def parse_scontrol_nodes(text: str, attribute: str = "any") -> list[tuple[str, NodeState, str, list[str]]]:
    rows = []
    for line in text.splitlines():
        if not line.strip().startswith("NodeName="):
            continue
        f = parse_scontrol_fields(line)
        words = f.get("State", "").split("+")
        state = slurm_node_state(words[0], [w.upper() for w in words[1:]])
        if state is None:
            continue
        features = (f.get("ActiveFeatures") or f.get("AvailableFeatures") or "").split(",")
        texts = _attribute_texts(
            attribute,
            _text(f.get("Comment")),
            _text(f.get("Extra")),
            [x for x in features if x and x != "(null)"],
        )
        rows.append((f["NodeName"], state, f.get("State", ""), texts))
    return rows


# ---------------------------------------------------------------------------------------------
# Slurm (commands)


class SlurmPool:
    pairs_vms = False

    def __init__(self, spec: PoolSpec, factory: FactoryContext) -> None:
        self.spec = spec
        self.label = spec.label
        self._transport: Transport = transport_for(
            factory, spec.host, user=spec.user, port=spec.port, authprofile=spec.authprofile, where="pool"
        )
        self._json = True  # sinfo --json; scontrol show node -o where the client lacks it

    def _argv(self, *argv: str) -> list[str]:
        prefix = ["env", f"SLURM_CONF={self.spec.slurm_conf}"] if self.spec.slurm_conf else []
        return [*prefix, *argv]

    def _run(self, *argv: str) -> Result:
        return self._transport.run(self._argv(*argv), timeout=self.spec.timeout)

    def _fail(self, what: str, res: Result) -> BackendError:
        return BackendError(self.label, f"{what} failed (exit {res.rc}): {res.brief()}")

    def rows(self) -> list[tuple[str, NodeState, str, list[str]]]:
        if self._json:
            res = self._run("sinfo", "--json")
            if res.ok:
                try:
                    return parse_sinfo_json(res.stdout, self.spec.attribute)
                except ValueError as exc:
                    raise BackendError(self.label, f"sinfo --json printed no JSON: {exc}") from None
            if "unrecognized option" not in res.stderr and "invalid option" not in res.stderr:
                raise self._fail("sinfo --json", res)
            log.info("%s: sinfo has no --json; reading scontrol show node -o", self.label)
            self._json = False
        res = self._run("scontrol", "show", "node", "-o")
        if not res.ok:
            raise self._fail("scontrol show node", res)
        return parse_scontrol_nodes(res.stdout, self.spec.attribute)

    def nodes(self, instance_ids: Collection[str]) -> dict[str, PoolNode]:
        if not instance_ids:
            return {}
        return match_nodes(self.rows(), instance_ids)

    def drain(self, nodes: Sequence[PoolNode], reason: str) -> None:
        if not nodes:
            return
        names = ",".join(sorted({n.name for n in nodes}))
        res = self._run("scontrol", "update", f"nodename={names}", "state=DRAIN", f"reason={reason}")
        if not res.ok:
            raise self._fail(f"scontrol update nodename={names} state=DRAIN", res)

    def release(self, nodes: Sequence[PoolNode]) -> None:
        if not nodes or self.spec.release is Release.NONE:
            return
        names = ",".join(sorted({n.name for n in nodes}))
        if self.spec.release is Release.DELETE:
            argv = ["scontrol", "delete", f"nodename={names}"]
        else:
            argv = ["scontrol", "update", f"nodename={names}", "state=FUTURE", "comment=", "extra="]
        res = self._run(*argv)
        if not res.ok:
            raise self._fail(" ".join(argv[:3]), res)

    def tend(
        self,
        instances: Sequence[Instance],
        terminate: Callable[[Sequence[str], str], None],
        now: float,
        *,
        cancel_surplus: bool = True,
    ) -> None:
        """Nothing: the life cycle alone decides about VMs in a plain Slurm pool."""

    def close(self) -> None:
        POOL.release(self._transport)


# ---------------------------------------------------------------------------------------------
# Slurm power saving


def parse_power_nodes(text: str) -> list[ps.PowerNode]:
    """``scontrol show node -o`` -> nodes with their power-saving flags (pure)."""
    out: list[ps.PowerNode] = []
    for line in text.splitlines():
        if not line.strip().startswith("NodeName="):
            continue
        f = parse_scontrol_fields(line)
        words = [w for w in f.get("State", "").upper().split("+") if w]
        base = words[0].rstrip("*~#!%$@^-") if words else ""
        parts = f.get("Partitions", "")
        out.append(
            ps.PowerNode(
                f["NodeName"],
                base,
                frozenset(words[1:]),
                _text(f.get("Comment")),
                tuple(p for p in parts.split(",") if p and p != "(null)"),
            )
        )
    return out


_SPOOL_LOCKS: dict[str, threading.Lock] = {}
_SPOOL_LOCKS_LOCK = threading.Lock()


def _spool_lock(path: Path) -> threading.Lock:
    """One lock per spool: the queues of a cascade share its nodes and must not both take one."""
    with _SPOOL_LOCKS_LOCK:
        return _SPOOL_LOCKS.setdefault(str(path.resolve()), threading.Lock())


class PowerSavePool(SlurmPool):
    """A Slurm pool whose CLOUD nodes Slurm powers up and down (docs/slurm-powersave.md)."""

    pairs_vms = True

    def __init__(self, spec: PoolSpec, factory: FactoryContext) -> None:
        super().__init__(spec, factory)
        self.spool = Path(spec.spool).expanduser() if spec.spool else factory.state_dir / "powersave"
        self.label = f"{spec.label} (power saving)"

    def nodes(self, instance_ids: Collection[str]) -> dict[str, PoolNode]:
        # a node still powering up carries its VM's id before the VM has joined: not joined yet
        return {
            iid: node
            for iid, node in super().nodes(instance_ids).items()
            if "POWERING_UP" not in node.detail.upper().split("+")
        }

    def release(self, nodes: Sequence[PoolNode]) -> None:
        """Clear the Comment; a node still up lost its VM under it: power it down (Slurm requeues
        its jobs and may resume it again later)."""
        if not nodes:
            return
        names = sorted({n.name for n in nodes})
        up = sorted(
            {
                n.name
                for n in nodes
                if not {"POWERED_DOWN", "POWERING_DOWN"} & set(n.detail.upper().split("+"))
            }
        )
        self._update(names, "comment=")
        if up:
            self._update(up, "state=POWER_DOWN_FORCE")

    def _update(self, names: Sequence[str], *settings: str) -> None:
        argv = ["scontrol", "update", f"nodename={','.join(names)}", *settings]
        res = self._run(*argv)
        if not res.ok:
            raise self._fail(" ".join(argv), res)

    def power_nodes(self) -> list[ps.PowerNode]:
        res = self._run("scontrol", "show", "node", "-o")
        if not res.ok:
            raise self._fail("scontrol show node", res)
        return parse_power_nodes(res.stdout)

    def tend(
        self,
        instances: Sequence[Instance],
        terminate: Callable[[Sequence[str], str], None],
        now: float,
        *,
        cancel_surplus: bool = True,
    ) -> None:
        with _spool_lock(self.spool):
            requests = spool.read(self.spool, spool.Op.SUSPEND) + spool.read(self.spool, spool.Op.RESUMEFAIL)
            requested = ps.requested_nodes(spool.read(self.spool, spool.Op.RESUME))
            nodes = self.power_nodes()  # after the requests: a request read is older than this view
            plan = ps.plan_power(
                nodes,
                instances,
                requested=requested,
                partition=self.spec.partition,
                requests=requests,
                now=now,
                cancel_surplus=cancel_surplus,
            )
            if plan.empty:
                return
            by_reason: dict[str, list[str]] = {}
            for iid, reason, _ in plan.terminate:
                by_reason.setdefault(reason, []).append(iid)
            for reason, ids in sorted(by_reason.items()):
                terminate(ids, reason)  # raises: nothing else happens, the requests stay
            for note in plan.notes:
                log.log(logging.WARNING if "failed" in note else logging.INFO, "%s: %s", self.label, note)
            if plan.clear:
                self._update(sorted(plan.clear), "comment=")
            for node, iid in plan.assign:
                self._update([node], f"comment={iid}")
                log.info("%s: node %s is backed by VM %s", self.label, node, iid)
            spool.remove(list(plan.done))


# ---------------------------------------------------------------------------------------------
# HTCondor


class CondorPool:
    """Nodes from the collector (master and startd ads carrying the instance id attribute)."""

    pairs_vms = False

    def __init__(self, spec: PoolSpec) -> None:
        from autopyfactory.plugins.batch.condor.schedd import Address

        self.spec = spec
        self.label = spec.label
        self.attribute = "EC2InstanceID" if spec.attribute == "any" else spec.attribute
        self.address = Address(collector=spec.collector)

    def nodes(self, instance_ids: Collection[str]) -> dict[str, PoolNode]:
        from autopyfactory.plugins.batch.condor import ec2 as condor_ec2
        from autopyfactory.plugins.batch.condor.schedd import attr_value, connect, quote

        if not instance_ids:
            return {}
        api = connect(self.address)
        attr = self.attribute
        constraint = f"member({attr}, {{{', '.join(quote(i) for i in sorted(set(instance_ids)))}}})"
        masters = api.collector_query("master", constraint, ["Name", "Machine", attr])
        slots = api.collector_query("startd", constraint, ["Name", "Machine", "State", "Activity", attr])

        def group(ads: Iterable[Mapping[str, Any]]) -> dict[str, list[Mapping[str, Any]]]:
            out: dict[str, list[Mapping[str, Any]]] = {}
            for ad in ads:
                value = attr_value(ad, attr)
                if value:
                    out.setdefault(str(value), []).append(ad)
            return out

        master_of, slots_of = group(masters), group(slots)
        out: dict[str, PoolNode] = {}
        for iid in set(master_of) | set(slots_of):
            master = master_of.get(iid, [None])[0]
            cstate = condor_ec2.node_state(master, slots_of.get(iid, []))
            state = {
                condor_ec2.NodeState.BUSY: NodeState.BUSY,
                condor_ec2.NodeState.IDLE: NodeState.IDLE,
                condor_ec2.NodeState.RETIRING: NodeState.DRAINING,
                condor_ec2.NodeState.RETIRED: NodeState.DRAINED,
            }.get(cstate)
            if state is None:
                continue
            ad = master or slots_of[iid][0]
            name = str(attr_value(ad, "Name") if master else attr_value(ad, "Machine") or "")
            out[iid] = PoolNode(name, iid, state, str(cstate))
        return out

    def drain(self, nodes: Sequence[PoolNode], reason: str) -> None:
        from autopyfactory.plugins.batch.condor.schedd import connect

        api = connect(self.address)
        for node in nodes:
            if node.state in (NodeState.IDLE, NodeState.BUSY):
                api.startd_off_peaceful(node.name)

    def release(self, nodes: Sequence[PoolNode]) -> None:
        """Nothing to reset: the collector forgets a node whose daemons are gone."""

    def tend(
        self,
        instances: Sequence[Instance],
        terminate: Callable[[Sequence[str], str], None],
        now: float,
        *,
        cancel_surplus: bool = True,
    ) -> None:
        """Nothing: the life cycle alone decides about VMs in an HTCondor pool."""

    def close(self) -> None:
        pass


def make_pool(spec: PoolSpec, factory: FactoryContext) -> Pool | None:
    if spec.kind is PoolKind.SLURM:
        return SlurmPool(spec, factory)
    if spec.kind is PoolKind.SLURM_POWERSAVE:
        return PowerSavePool(spec, factory)
    if spec.kind is PoolKind.CONDOR:
        return CondorPool(spec)
    return None
