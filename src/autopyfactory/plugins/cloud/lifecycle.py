"""The VM life cycle, written once for every cloud. Pure code: no I/O, no clock.

A VM is a pilot whose worker joins a pool. Its life, as the factory drives it:

1. **create**: one call for n VMs, every VM tagged ``apf:factory``, ``apf:queue``, ``apf:intent``;
   the user data (a template rendered with the factory id, queue, intent, pool address and maximum
   lifetime) boots the worker and arms the lease fuse;
2. **join**: the worker advertises its instance id on its pool node; until then the pilot is
   *pending* (``vm_pilot``), and a VM whose node has not joined within ``provisioning_deadline``
   is terminated as a failed provisioning (``plan_vm_actions``);
3. **retire**: the VM is tagged ``apf:retire=<time>`` and its node drained; it is terminated once
   the node is drained and idle, or gone, or when ``retire.grace`` has passed;
4. **terminate**: the VM is tagged ``apf:end=<why>`` first, so its final state (done, cancelled,
   failed provisioning) survives a factory restart; instances the provider stopped or terminated
   (spot interruption, capacity) are *interrupted*;
5. **release**: a pool node still advertising a terminated instance is reset (a Slurm FUTURE slot).

``leaks`` decides what to do with tagged instances the store does not know.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum

from autopyfactory.model import Pilot, PilotState, PilotTags

TAG_FACTORY = "apf:factory"
TAG_QUEUE = "apf:queue"
TAG_INTENT = "apf:intent"
TAG_RETIRE = "apf:retire"  # epoch seconds when the factory began retiring the VM
TAG_END = "apf:end"  # why the factory terminated the VM (an EndReason)


class VmState(StrEnum):
    """A cloud-neutral instance state (each adapter maps its cloud's states to these)."""

    PENDING = "pending"
    RUNNING = "running"
    STOPPING = "stopping"
    STOPPED = "stopped"
    TERMINATING = "terminating"
    TERMINATED = "terminated"
    ERROR = "error"
    UNKNOWN = "unknown"

    @property
    def live(self) -> bool:
        """The instance exists and may cost money (the leak reconciler looks at these)."""
        return self in (VmState.PENDING, VmState.RUNNING, VmState.STOPPING, VmState.STOPPED, VmState.ERROR)


class EndReason(StrEnum):
    CANCELLED = "cancelled"  # scale-down before the VM joined its pool
    RETIRED = "retired"  # drained and idle (or its node gone)
    RETIRE_GRACE = "retire-grace"  # retire.grace passed before the node drained
    KILLED = "killed"  # retire with kill (the queue allows killing running pilots)
    DEADLINE = "provisioning-deadline"  # the node never joined: failed provisioning
    STOPPED = "stopped"  # stopped by someone else: no use to the pool, still costs
    ERROR = "error"  # the cloud put it in ERROR (e.g. OpenStack "No valid host was found")
    LEAKED = "leaked"  # tagged, unknown to the store, its queue no longer configured
    SUSPENDED = "suspended"  # Slurm's power saving powered its node down (plugins/cloud/powersave)
    RESUME_FAILED = "resume-failed"  # its node did not come up within Slurm's ResumeTimeout

    @property
    def failed(self) -> bool:
        return self in (EndReason.DEADLINE, EndReason.ERROR, EndReason.RESUME_FAILED)


FAILED_ENDS = frozenset(e.value for e in EndReason if e.failed)


@dataclass(frozen=True, slots=True)
class Instance:
    """One VM as a cloud lists it."""

    id: str
    state: VmState
    tags: Mapping[str, str]
    launched_at: float | None = None
    # the provider's code for the last state change (EC2 StateReason, e.g.
    # Server.SpotInstanceTermination), or an error message (OpenStack fault)
    reason: str = ""
    spot: bool = False

    @property
    def queue(self) -> str | None:
        return self.tags.get(TAG_QUEUE) or None

    @property
    def intent(self) -> str | None:
        return self.tags.get(TAG_INTENT) or None

    @property
    def retire_since(self) -> float | None:
        return _float(self.tags.get(TAG_RETIRE))

    @property
    def end(self) -> str | None:
        return self.tags.get(TAG_END) or None


def _float(text: str | None) -> float | None:
    try:
        return float(text) if text else None
    except ValueError:
        return None


def instance_tags(tags: PilotTags) -> dict[str, str]:
    """The tags every VM of one submission carries."""
    return {TAG_FACTORY: tags.factory_id, TAG_QUEUE: tags.queue, TAG_INTENT: tags.intent_id}


def client_token(tags: PilotTags) -> str:
    """An idempotency token for one intent (EC2 ClientToken: at most 64 ASCII characters)."""
    factory = hashlib.sha1(tags.factory_id.encode()).hexdigest()[:10]
    return f"apf-{factory}-{tags.intent_id}"[:64]


# ---------------------------------------------------------------------------------------------
# pool nodes


class NodeState(StrEnum):
    IDLE = "idle"  # accepting work, none running
    BUSY = "busy"  # running work
    DRAINING = "draining"  # accepts no new work, still running some
    DRAINED = "drained"  # accepts no new work, none running
    DOWN = "down"  # not responding, powered down: the worker is gone

    @property
    def quiet(self) -> bool:
        """No work runs there and none can start: the VM may be terminated."""
        return self in (NodeState.DRAINED, NodeState.DOWN)


@dataclass(frozen=True, slots=True)
class PoolNode:
    """A pool node that advertises an instance id."""

    name: str
    instance_id: str
    state: NodeState
    detail: str = ""  # the pool's own words for the state (e.g. IDLE+DRAIN), for messages


# ---------------------------------------------------------------------------------------------
# pilot states

PROVIDER_REASON_PREFIX = "Server."  # EC2: the provider stopped/terminated it (spot, capacity)


def interrupted(inst: Instance) -> bool:
    """The provider stopped or terminated the VM (spot interruption, capacity), not us or its owner."""
    return (
        inst.state in (VmState.STOPPING, VmState.STOPPED, VmState.TERMINATING, VmState.TERMINATED)
        and inst.end is None
        and inst.reason.startswith(PROVIDER_REASON_PREFIX)
    )


def pilot_state(inst: Instance, node: PoolNode | None, pooled: bool) -> PilotState:
    """The pilot state of one VM: pending until its node joins (when the queue has a pool)."""
    state = inst.state
    if state is VmState.PENDING:
        return PilotState.RETIRING if inst.retire_since is not None or inst.end else PilotState.PENDING
    if state is VmState.RUNNING:
        draining = node is not None and node.state in (NodeState.DRAINING, NodeState.DRAINED)
        if inst.retire_since is not None or inst.end or draining:
            # being retired, or a terminate that has not taken effect yet: still holds a resource
            return PilotState.RETIRING
        if pooled and node is None:
            return PilotState.PENDING  # booting, contextualising, joining
        return PilotState.RUNNING
    if state is VmState.ERROR:
        return PilotState.FAILED
    if state is VmState.UNKNOWN:
        return PilotState.UNKNOWN
    # stopping, stopped, terminating, terminated: gone as capacity
    if interrupted(inst):
        return PilotState.FAILED
    end = inst.end
    if end == EndReason.CANCELLED:
        return PilotState.CANCELLED
    if end in FAILED_ENDS:
        return PilotState.FAILED
    return PilotState.DONE


def vm_pilot(
    inst: Instance,
    queue: str,
    node: PoolNode | None,
    *,
    pooled: bool,
    joined_at: float | None = None,
    ended_at: float | None = None,
) -> Pilot:
    """One VM as a Pilot (backend id = instance id). ``joined_at``/``ended_at`` are the caller's
    memory of when the node joined and when the VM was first seen gone."""
    state = pilot_state(inst, node, pooled)
    started = None
    if state in (PilotState.RUNNING, PilotState.RETIRING) or state.final:
        started = joined_at if pooled else inst.launched_at
    return Pilot(
        backend_id=inst.id,
        queue=queue,
        state=state,
        intent_id=inst.intent,
        submitted_at=inst.launched_at,
        started_at=started,
        ended_at=ended_at if state.final else None,
        instance_id=inst.id,
        node=node.name if node is not None else None,
    )


# ---------------------------------------------------------------------------------------------
# what to do with each VM now


@dataclass(frozen=True, slots=True)
class VmPolicy:
    pooled: bool  # the queue's VMs join a pool (join detection, drain)
    provisioning_deadline: float | None  # seconds from launch to join; None = no deadline
    retire_grace: float  # seconds a drain may take before the VM is terminated anyway


class ActionKind(StrEnum):
    TERMINATE = "terminate"
    DRAIN = "drain"
    RELEASE = "release"  # reset the node of a terminated VM


@dataclass(frozen=True, slots=True)
class VmAction:
    kind: ActionKind
    instance_id: str
    reason: str  # an EndReason for TERMINATE; words for the log otherwise
    node: PoolNode | None = None


def plan_vm_actions(
    instances: Sequence[Instance], nodes: Mapping[str, PoolNode], policy: VmPolicy, now: float
) -> list[VmAction]:
    """Which VMs to terminate, which nodes to drain or release, now (pure).

    ``nodes`` maps instance id -> the pool node advertising it (joined VMs only). A VM is never
    terminated while its node may run work, unless ``retire.grace`` has passed since the retire.
    """
    out: list[VmAction] = []
    for inst in instances:
        node = nodes.get(inst.id)
        state = inst.state
        if state is VmState.TERMINATED:
            if node is not None:
                out.append(VmAction(ActionKind.RELEASE, inst.id, "instance terminated", node))
            continue
        if state in (VmState.TERMINATING, VmState.STOPPING, VmState.UNKNOWN):
            continue  # on its way; look again next cycle
        if state is VmState.ERROR:
            out.append(VmAction(ActionKind.TERMINATE, inst.id, EndReason.ERROR, node))
            continue
        if state is VmState.STOPPED:
            out.append(VmAction(ActionKind.TERMINATE, inst.id, EndReason.STOPPED, node))
            continue
        if inst.end:
            # we decided to terminate it before and it is still there (a call that did not take)
            out.append(VmAction(ActionKind.TERMINATE, inst.id, inst.end, node))
            continue
        since = inst.retire_since
        if since is not None:
            out.extend(_retiring(inst, node, since, policy, now))
            continue
        deadline = policy.provisioning_deadline
        launched = inst.launched_at
        waiting = (policy.pooled and node is None) or state is VmState.PENDING
        if waiting and deadline is not None and launched is not None and now - launched >= deadline:
            out.append(VmAction(ActionKind.TERMINATE, inst.id, EndReason.DEADLINE, node))
    return out


def _retiring(
    inst: Instance, node: PoolNode | None, since: float, policy: VmPolicy, now: float
) -> list[VmAction]:
    overdue = now - since >= policy.retire_grace
    if not policy.pooled:
        # nothing tells us the VM is idle: it ends by itself (its pilot) or at the grace
        return [VmAction(ActionKind.TERMINATE, inst.id, EndReason.RETIRED)] if overdue else []
    if node is None or node.state.quiet:
        return [VmAction(ActionKind.TERMINATE, inst.id, EndReason.RETIRED, node)]
    if overdue:
        return [VmAction(ActionKind.TERMINATE, inst.id, EndReason.RETIRE_GRACE, node)]
    if node.state in (NodeState.IDLE, NodeState.BUSY):
        # not draining (the drain did not take, or the node joined after the retire): drain it
        return [VmAction(ActionKind.DRAIN, inst.id, "retiring, node not draining", node)]
    return []


# ---------------------------------------------------------------------------------------------
# leaks


def leaks(
    instances: Sequence[Instance],
    known_ids: Collection[str],
    open_intent_ids: Collection[str],
    configured_queues: Collection[str],
    first_seen: Mapping[str, float],
    now: float,
    leak_grace: float,
) -> tuple[list[Instance], list[Instance]]:
    """Tagged instances the store does not know and no open intent covers (pure).

    Returns (adopt, terminate): instances whose queue is configured are adopted at once; the
    others are terminated once they have been seen for ``leak_grace`` seconds (``first_seen``:
    instance id -> when the caller first saw it unknown). Instances already gone are ignored.
    """
    adopt: list[Instance] = []
    terminate: list[Instance] = []
    for inst in instances:
        if not inst.state.live or inst.id in known_ids:
            continue
        if inst.intent is not None and inst.intent in open_intent_ids:
            continue  # a submission in flight: its own path records it
        if inst.queue is not None and inst.queue in configured_queues:
            adopt.append(inst)
        elif now - first_seen.get(inst.id, now) >= leak_grace:
            terminate.append(inst)
    return adopt, terminate


# ---------------------------------------------------------------------------------------------
# user data

DEFAULT_USER_DATA = """#!/bin/sh
# autopyfactory VM of factory {{ factory_id }}, queue {{ queue }}, intent {{ intent_id }}
# lease fuse: the VM powers itself off after its maximum lifetime even if the factory is gone
shutdown -h +{{ max_lifetime_minutes }} "autopyfactory: maximum lifetime reached" >/dev/null 2>&1 &
"""

_VARIABLE = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_.]*)\s*\}\}")
# what a template may use besides var.<name>
TEMPLATE_VARIABLES = (
    "factory_id",
    "queue",
    "intent_id",
    "pool_address",
    "max_lifetime",
    "max_lifetime_minutes",
    "cloud",
    "pilot_environment",
)


class TemplateError(ValueError):
    """A user-data template names a variable that does not exist."""


def template_values(
    tags: PilotTags,
    *,
    pool_address: str,
    max_lifetime: float,
    cloud: str,
    pilot_environment: Mapping[str, str],
    extra: Mapping[str, str],
) -> dict[str, str]:
    import shlex

    env = "\n".join(f"export {k}={shlex.quote(v)}" for k, v in pilot_environment.items())
    values = {
        "factory_id": tags.factory_id,
        "queue": tags.queue,
        "intent_id": tags.intent_id,
        "pool_address": pool_address,
        "max_lifetime": str(int(max_lifetime)),
        "max_lifetime_minutes": str(max(1, math.ceil(max_lifetime / 60))),
        "cloud": cloud,
        "pilot_environment": env,
    }
    values.update({f"var.{k}": v for k, v in extra.items()})
    return values


def render_user_data(template: str, values: Mapping[str, str], source: str = "user data template") -> str:
    """``{{ name }}`` replaced by its value; an unknown name is an error naming source and line."""

    def sub(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in values:
            line = template.count("\n", 0, match.start()) + 1
            known = ", ".join(sorted(values))
            raise TemplateError(f"{source}, line {line}: unknown variable {{{{ {name} }}}} (known: {known})")
        return values[name]

    return _VARIABLE.sub(sub, template)


def uses_lease(template: str) -> bool:
    """The template arms the lease fuse (it uses the maximum lifetime)."""
    names = {m.group(1) for m in _VARIABLE.finditer(template)}
    return bool(names & {"max_lifetime", "max_lifetime_minutes"})
