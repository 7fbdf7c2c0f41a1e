"""The submit and status plugins every cloud shares; a cloud module adds only its API adapter.

* ``CloudSubmit`` (one per queue): ``submit`` renders the user data and launches n VMs in one
  call (``launch``); ``cancel`` terminates VMs that have not joined; ``retire`` tags the VMs
  ``apf:retire`` and drains their nodes (``kill`` terminates at once); ``cleanup`` runs the pure
  ``plan_vm_actions`` on the latest view and executes it (terminate, drain, release).
* ``CloudStatus`` (one per endpoint: cloud, region, credentials): one paginated listing of the
  factory's tagged instances per poll, one node query per pool, VMs as pilots; it publishes each
  queue's view (instances and nodes) for ``cleanup``, records interruptions, and keeps the leak
  reconciler's memory (``reconcile_leaks``, ``terminate``) for the engine.

A cloud module implements ``CloudApi`` (list, mark retiring, terminate) and ``launch``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Collection, Hashable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Protocol

from pydantic import Field

from autopyfactory.config.policy import Duration
from autopyfactory.model import BatchSnapshot, Pilot, PilotTags
from autopyfactory.plugins.base import (
    BackendError,
    BatchStatusPlugin,
    BatchSubmitPlugin,
    FactoryContext,
    Interruption,
    LeakReport,
    PluginError,
    PluginOptions,
    SubmitOptions,
)
from autopyfactory.plugins.batch import script as pilot_script
from autopyfactory.plugins.cloud import lifecycle as lc
from autopyfactory.plugins.cloud.lifecycle import (
    ActionKind,
    EndReason,
    Instance,
    PoolNode,
    VmAction,
    VmPolicy,
    VmState,
)
from autopyfactory.plugins.cloud.pools import Pool, PoolKind, PoolSpec, Release, make_pool
from autopyfactory.plugins.keys import AUTH_META, auth_field
from autopyfactory.plugins.shared import SharedPool

if TYPE_CHECKING:
    from autopyfactory.config.models import AuthProfile, QueueConfig

log = logging.getLogger(__name__)
LEAK_RETRY = 60.0  # seconds before a leak still listed after its terminate is terminated again


# ---------------------------------------------------------------------------------------------
# options


class CloudSubmitOptions(SubmitOptions):
    """Keys every cloud queue has: user data, life cycle and pool."""

    dynamic: ClassVar[Mapping[str, str]] = {"var.": "variables"}

    user_data_file: str | None = Field(
        None,
        description="user-data template ({{ factory_id }}, ...), relative to its queues.conf; default: the lease fuse only",
    )
    variables: dict[str, str] = Field(
        default_factory=dict, description="var.<name>: {{ var.<name> }} in user data"
    )
    authprofile: str | None = auth_field(
        None, "CloudKey", description="the auth profile the cloud's calls use"
    )
    max_lifetime: Duration = Field(
        7 * 86400.0, gt=0, description="lease fuse: the VM shuts itself down after this (user data)"
    )
    provisioning_deadline: Duration | None = Field(
        1800.0, description="a VM whose node has not joined within this is terminated (failed provisioning)"
    )
    retire_grace: Duration = Field(
        86400.0,
        alias="retire.grace",
        ge=0,
        description="longest a drain may take before the VM is terminated",
    )
    pool: PoolKind = Field(
        PoolKind.NONE, description="where the VMs join: none, slurm, slurm-powersave or condor"
    )
    pool_address: str = Field("", alias="pool.address", description="what the VM joins ({{ pool_address }})")
    pool_attribute: str = Field(
        "any",
        alias="pool.attribute",
        description="slurm: comment, extra, features or any; condor: the ClassAd attribute (EC2InstanceID)",
    )
    pool_host: str | None = Field(
        None, alias="pool.host", description="Slurm head node over SSH; empty = local"
    )
    pool_user: str | None = Field(None, alias="pool.user", description="login user on pool.host")
    pool_port: int = Field(22, alias="pool.port", ge=1, le=65535, description="SSH port of pool.host")
    pool_authprofile: str | None = Field(
        None,
        alias="pool.authprofile",
        description="SSH profile for pool.host",
        json_schema_extra={AUTH_META: {"kinds": ["SSH"], "many": False}},
    )
    pool_slurm_conf: str | None = Field(None, alias="pool.slurm_conf", description="SLURM_CONF of the pool")
    pool_collectorhost: str | None = Field(
        None,
        alias="pool.collectorhost",
        description="HTCondor collector of the pool; default: the local pool",
    )
    pool_collectorport: int = Field(
        9618, alias="pool.collectorport", ge=1, le=65535, description="port of pool.collectorhost"
    )
    pool_release: Release = Field(
        Release.FUTURE, alias="pool.release", description="slurm: future, delete or none, after terminate"
    )
    pool_timeout: float = Field(
        60.0, alias="pool.timeout", gt=0, le=3600, description="seconds one pool command may take"
    )
    pool_spool: str | None = Field(
        None,
        alias="pool.spool",
        description="slurm-powersave: the spool apf powersave writes; default: <factory.statedir>/powersave",
    )
    pool_partition: str | None = Field(
        None,
        alias="pool.partition",
        description="slurm-powersave: the partition whose nodes the VMs back; default: any",
    )

    def credential_profiles(self, profiles: Mapping[str, AuthProfile] | None = None) -> tuple[str, ...]:
        """The auth profiles the queue uses (its cloud's and the pool's SSH profile)."""
        return tuple(n for n in (self.authprofile, self.pool_authprofile) if n)

    def pool_spec(self) -> PoolSpec:
        collector = (
            f"{self.pool_collectorhost}:{self.pool_collectorport}" if self.pool_collectorhost else None
        )
        return PoolSpec(
            kind=self.pool,
            attribute=self.pool_attribute,
            host=self.pool_host or None,
            user=self.pool_user,
            port=self.pool_port,
            authprofile=self.pool_authprofile,
            slurm_conf=self.pool_slurm_conf,
            collector=collector,
            release=self.pool_release,
            timeout=self.pool_timeout,
            spool=self.pool_spool or None,
            partition=self.pool_partition or None,
        )

    def join_deadline(self) -> float | None:
        # without a pool nothing tells joined from not: no VM is written off (lc.plan_vm_actions)
        return self.provisioning_deadline if self.pool is not PoolKind.NONE else None

    def vm_policy(self) -> VmPolicy:
        return VmPolicy(self.pool is not PoolKind.NONE, self.provisioning_deadline, self.retire_grace)


class CloudStatusOptions(PluginOptions):
    keep: Duration = Field(3600.0, ge=0, description="seconds a gone VM stays in snapshots")
    leak_grace: Duration = Field(
        600.0, ge=0, description="a tagged VM of an unconfigured queue is terminated after this"
    )


# ---------------------------------------------------------------------------------------------
# the adapter a cloud module provides


class CloudApi(Protocol):
    """One cloud endpoint as the life cycle needs it. Failures raise ``BackendError``."""

    label: str

    def instances(self, factory_id: str, queue: str | None = None) -> list[Instance]:
        """Every instance tagged with this factory (and queue), in every state the cloud lists."""
        ...

    def mark_retiring(self, ids: Sequence[str], since: float) -> None:
        """Tag the instances ``apf:retire=<since>`` (durable: survives a factory restart)."""
        ...

    def terminate(self, ids: Sequence[str], reason: str) -> None:
        """Tag ``apf:end=<reason>`` where the cloud allows, then terminate; unknown ids are not errors."""
        ...

    def close(self) -> None: ...


class ApiPool(SharedPool[CloudApi]):
    """One API adapter per endpoint, shared by the endpoint's status poll and every queue there:
    boto3 clients and SDK connections are costly (a parsed service model each) and thread-safe,
    so 10,000 queues on one region hold one, not 10,000."""


APIS = ApiPool()


def redact(text: str, secrets: Collection[str]) -> str:
    """Remove secret values from text that came from a library or a remote service."""
    for secret in secrets:
        if secret and len(secret) >= 4:
            text = text.replace(secret, "**********")
    return text


# ---------------------------------------------------------------------------------------------
# the latest view per queue, published by the status poll and read by cleanup


@dataclass(frozen=True, slots=True)
class QueueView:
    time: float
    instances: tuple[Instance, ...]
    nodes: Mapping[str, PoolNode] = field(default_factory=dict)


class ViewBoard:
    """(status endpoint, queue) -> the latest view; one writer (the poller), many readers. Also
    why the factory terminated each VM, for clouds that forget deleted VMs before a poll sees
    the ``apf:end`` tag (OpenStack)."""

    ENDED_KEEP = 86400.0  # seconds a termination reason is remembered

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._views: dict[tuple[Hashable, str], QueueView] = {}
        self._ended: dict[tuple[Hashable, str], tuple[str, float]] = {}

    def note_ended(self, endpoint: Hashable | None, ids: Sequence[str], reason: str) -> None:
        if endpoint is None:
            return
        now = time.time()
        with self._lock:
            for key in [k for k, (_, t) in self._ended.items() if now - t > self.ENDED_KEEP]:
                del self._ended[key]
            for iid in ids:
                self._ended[(endpoint, iid)] = (str(reason), now)

    def ended(self, endpoint: Hashable, instance_id: str) -> str | None:
        with self._lock:
            found = self._ended.get((endpoint, instance_id))
        return found[0] if found else None

    def ended_since(self, endpoint: Hashable, instance_id: str, since: float) -> str | None:
        """Why the factory terminated the VM, if it did after ``since`` (epoch seconds)."""
        with self._lock:
            found = self._ended.get((endpoint, instance_id))
        return found[0] if found and found[1] > since else None

    def publish(self, endpoint: Hashable, views: Mapping[str, QueueView]) -> None:
        with self._lock:
            for key in [k for k in self._views if k[0] == endpoint and k[1] not in views]:
                del self._views[key]
            for queue, view in views.items():
                self._views[(endpoint, queue)] = view

    def latest(self, endpoint: Hashable, queue: str) -> QueueView | None:
        with self._lock:
            return self._views.get((endpoint, queue))

    def forget(self, endpoint: Hashable) -> None:
        with self._lock:
            for key in [k for k in self._views if k[0] == endpoint]:
                del self._views[key]
            for key in [k for k in self._ended if k[0] == endpoint]:
                del self._ended[key]


VIEWS = ViewBoard()


# ---------------------------------------------------------------------------------------------
# submit


def load_template(path: str | None, where: str, relative_to: str | None = None) -> tuple[str, str]:
    """(template text, its name for messages); the built-in lease-fuse script without a file.
    A relative path is relative to the directory of the config file that named it."""
    if not path:
        return lc.DEFAULT_USER_DATA, "the built-in user data"
    file = Path(path).expanduser()
    if not file.is_absolute() and relative_to and "://" not in relative_to:
        file = Path(relative_to).parent / file
    try:
        return file.read_text(), str(file)
    except OSError as exc:
        raise PluginError(f"{where}: cannot read the user-data template {file}: {exc.strerror}") from None


class CloudSubmit(BatchSubmitPlugin):
    """Submit, cancel, retire and clean up VMs for one queue (a cloud module adds ``connect`` and
    ``launch``)."""

    Options: ClassVar[type[PluginOptions]] = CloudSubmitOptions
    has_cleanup: ClassVar[bool] = True  # each cycle: deadlines, drained nodes, stopped VMs, slots
    cloud: ClassVar[str] = ""  # the {{ cloud }} template value
    #: status plugin whose endpoint this queue's VMs are listed under (for the shared view)
    status_plugin: ClassVar[type[CloudStatus] | None] = None
    #: most bytes of user data the cloud accepts
    max_user_data: ClassVar[int] = 65535

    options: CloudSubmitOptions

    def __init__(self, queue: QueueConfig, options: PluginOptions, factory: FactoryContext) -> None:
        super().__init__(queue, options, factory)
        key = f"{self.prefixes()[0]}user_data_file"
        self.template, self.template_name = load_template(
            self.options.user_data_file, f"[{queue.name}] {key}", queue.origin.get(key)
        )
        sample = PilotTags(factory.factory_id, queue.name, "0123456789ab")
        try:
            rendered = self.user_data(sample)
        except lc.TemplateError as exc:
            raise PluginError(f"[{queue.name}] {exc}") from None
        if len(rendered.encode()) > self.max_user_data:
            raise PluginError(
                f"[{queue.name}] {self.template_name}: rendered user data has {len(rendered.encode())} "
                f"bytes; {self.name} accepts at most {self.max_user_data}"
            )
        if not lc.uses_lease(self.template):
            log.warning(
                "queue %s: %s does not use {{ max_lifetime }} or {{ max_lifetime_minutes }}: its VMs have "
                "no lease fuse and outlive a factory that is gone",
                queue.name,
                self.template_name,
            )
        self.policy = self.options.vm_policy()
        self.pool: Pool | None = make_pool(self.options.pool_spec(), factory)
        self._api: CloudApi | None = None
        self._api_lock = threading.Lock()
        self._acted_on: float | None = None  # the view time cleanup last acted on

    # -- what a cloud module provides ----------------------------------------------------------
    def connect(self) -> CloudApi:
        raise NotImplementedError

    def launch(self, n: int, tags: PilotTags, user_data: str) -> list[Instance]:
        """One call that asks for n VMs (at least one), each tagged with ``tags``; returns what
        the cloud created (fewer than n is partial fulfilment)."""
        raise NotImplementedError

    # -- shared --------------------------------------------------------------------------------
    @property
    def api(self) -> CloudApi:
        """The endpoint's adapter, shared with its status poll and the other queues there."""
        with self._api_lock:
            if self._api is None:
                key = self.status_key()
                # per factory context too: a reload's new credentials get a new adapter
                self._api = (
                    APIS.acquire((key, id(self.factory)), self.connect) if key is not None else self.connect()
                )
            return self._api

    def target(self) -> str:
        return self.api.label

    def user_data(self, tags: PilotTags) -> str:
        env = pilot_script.pilot_environment(self.queue, self.factory, tags, {})
        values = lc.template_values(
            tags,
            pool_address=self.options.pool_address,
            max_lifetime=self.options.max_lifetime,
            cloud=self.cloud or self.name,
            pilot_environment=env,
            extra=self.options.variables,
        )
        return lc.render_user_data(self.template, values, self.template_name)

    def submit(self, n: int, tags: PilotTags, now: float) -> list[Pilot]:
        if n <= 0:
            return []
        created = self.launch(n, tags, self.user_data(tags))
        if len(created) < n:
            log.info(
                "queue %s: %s launched %d of %d VMs (partial fulfilment)",
                self.queue.name,
                self.target(),
                len(created),
                n,
            )
        else:
            log.info("queue %s: %s launched %d VMs", self.queue.name, self.target(), n)
        pooled = self.policy.pooled
        launched = [Instance(i.id, VmState.PENDING, i.tags, i.launched_at or now) for i in created]
        if self.pool is not None and self.pool.pairs_vms and launched:
            # a pool that pairs VMs with nodes (power saving) does it now, not a cycle later
            try:
                view = self.view(now)
                new = {i.id for i in launched}
                known = [i for i in (view.instances if view else ()) if i.id not in new]
                self.pool.tend([*known, *launched], self.terminate, now, cancel_surplus=False)
            except BackendError as exc:
                log.warning(
                    "queue %s: %s after the launch: %s (next cycle again)",
                    self.queue.name,
                    self.pool.label,
                    exc,
                )
        return [lc.vm_pilot(i, self.queue.name, None, pooled=pooled) for i in launched]

    def status_key(self) -> Hashable | None:
        """The endpoint key of the status poll that lists this queue's VMs."""
        return (
            self.status_plugin.endpoint(self.queue, self.factory) if self.status_plugin is not None else None
        )

    def terminate(self, ids: Sequence[str], reason: str) -> None:
        self.api.terminate(list(ids), reason)
        VIEWS.note_ended(self.status_key(), ids, reason)

    def cancel(self, backend_ids: Sequence[str]) -> None:
        ids = list(backend_ids)
        if ids and self.pool is not None:
            # the decision saw these VMs not joined, but one may have joined since (and taken a
            # job): the pool, asked now, has the last word; a VM with a node leaves through it
            joined = set(self.pool.nodes(ids))
            if joined:
                ids = [i for i in ids if i not in joined]
                self.retire(sorted(joined))
        if ids:
            self.terminate(ids, EndReason.CANCELLED)
            log.info("queue %s: terminated %d VMs that had not joined", self.queue.name, len(ids))

    def retire(self, backend_ids: Sequence[str], kill: bool = False) -> None:
        ids = list(backend_ids)
        if not ids:
            return
        if kill:
            self.terminate(ids, EndReason.KILLED)
            log.info("queue %s: terminated %d running VMs (kill)", self.queue.name, len(ids))
            return
        self.api.mark_retiring(ids, time.time())
        if self.pool is not None:
            nodes = self.pool.nodes(ids)
            if nodes:
                self.pool.drain(list(nodes.values()), "apf retire")
            log.info(
                "queue %s: retiring %d VMs: draining %s in %s",
                self.queue.name,
                len(ids),
                ",".join(sorted(n.name for n in nodes.values())) or "no node yet",
                self.pool.label,
            )

    def view(self, now: float) -> QueueView | None:
        """The latest status view of this queue, or our own listing when no status poll shares it."""
        key = self.status_key()
        if key is not None:
            view = VIEWS.latest(key, self.queue.name)
            if view is not None:
                return view
        instances = self.api.instances(self.factory.factory_id, self.queue.name)
        nodes = self.pool.nodes([i.id for i in instances]) if self.pool is not None else {}
        return QueueView(now, tuple(instances), nodes)

    def cleanup(self, pilots: Sequence[Pilot], now: float) -> None:
        view = self.view(now)
        failed: BackendError | None = None
        if view is not None and self.pool is not None:
            # every cycle: the pool's own requests (power saving) do not wait for a new view; a
            # failure there does not hold up the life cycle below
            try:
                self.pool.tend(view.instances, self.terminate, now)
            except BackendError as exc:
                failed = exc
        self._act_on(view)
        if failed is not None:
            raise failed

    def _act_on(self, view: QueueView | None) -> None:
        if view is None or view.time == self._acted_on:
            return  # nothing new since we last acted
        # decide at the view's time: deadlines and graces against what was observed then
        actions = lc.plan_vm_actions(view.instances, view.nodes, self.policy, view.time)
        self._acted_on = view.time
        key = self.status_key()
        if key is not None:
            # VMs this factory terminated after the view was taken (a cancel in this cycle) keep
            # the reason they were terminated for
            actions = [
                a
                for a in actions
                if a.kind is not ActionKind.TERMINATE
                or VIEWS.ended_since(key, a.instance_id, view.time) is None
            ]
        if actions:
            self.execute(actions)

    def execute(self, actions: Sequence[VmAction]) -> None:
        """Terminate (grouped by reason), drain and release; every kind is tried, the first error raised."""
        errors: list[BackendError] = []
        by_reason: dict[str, list[str]] = {}
        for a in actions:
            if a.kind is ActionKind.TERMINATE:
                by_reason.setdefault(a.reason, []).append(a.instance_id)
        for reason, ids in sorted(by_reason.items()):
            try:
                self.terminate(ids, reason)
                level = (
                    logging.WARNING
                    if reason in (EndReason.DEADLINE, EndReason.RETIRE_GRACE)
                    else logging.INFO
                )
                log.log(
                    level,
                    "queue %s: terminated %d VMs (%s): %s",
                    self.queue.name,
                    len(ids),
                    reason,
                    ", ".join(ids),
                )
            except BackendError as exc:
                errors.append(exc)
        if self.pool is not None:
            for kind, call in ((ActionKind.DRAIN, self.pool.drain), (ActionKind.RELEASE, self.pool.release)):
                nodes = [a.node for a in actions if a.kind is kind and a.node is not None]
                if not nodes:
                    continue
                try:
                    if kind is ActionKind.DRAIN:
                        call(nodes, "apf retire")  # type: ignore[call-arg]
                    else:
                        call(nodes)  # type: ignore[call-arg]
                    log.info("queue %s: %s %s", self.queue.name, kind, ",".join(n.name for n in nodes))
                except BackendError as exc:
                    errors.append(exc)
        if errors:
            raise errors[0]

    def close(self) -> None:
        if self.pool is not None:
            self.pool.close()
        with self._api_lock:
            api, self._api = self._api, None
        if api is not None:
            if self.status_key() is not None:
                APIS.release(api)
            else:
                api.close()


# ---------------------------------------------------------------------------------------------
# status


class CloudStatus(BatchStatusPlugin):
    """Every VM of this factory at one cloud endpoint (a cloud module adds ``endpoint`` and
    ``connect``)."""

    Options: ClassVar[type[PluginOptions]] = CloudStatusOptions
    default_interval: ClassVar[float] = 60.0
    reconciles_leaks = True  # tagged VMs nobody recorded are adopted or terminated

    def __init__(self, endpoint: Hashable, factory: FactoryContext) -> None:
        super().__init__(endpoint, factory)
        self.settings = CloudStatusOptions()
        self._api: CloudApi | None = None
        self._pools: dict[PoolSpec, Pool | None] = {}
        self._queue_pool: dict[str, PoolSpec] = {}
        self._lock = threading.Lock()
        self._joined: dict[str, float] = {}  # instance id -> when its node was first seen
        self._gone: dict[str, float] = {}  # instance id -> when first seen terminated
        self._interrupted: set[str] = set()
        self._interruptions: list[Interruption] = []
        self._instances: tuple[Instance, ...] = ()  # the last listing (for the leak reconciler)
        self._last: dict[str, Instance] = {}  # what the last poll reported, by id
        self._unknown_since: dict[str, float] = {}
        self._leaks_sent: dict[str, float] = {}  # leaks handed to terminate (when), still listed live
        # for `apf status` (the engine copies ``counters()`` into its status file)
        self._counts = {"leaked": 0, "adopted": 0, "terminated_leaks": 0, "interrupted": 0}

    # -- what a cloud module provides ----------------------------------------------------------
    def connect(self) -> CloudApi:
        raise NotImplementedError

    # -- shared --------------------------------------------------------------------------------
    @property
    def api(self) -> CloudApi:
        if self._api is None:
            self._api = APIS.acquire((self.endpoint_key, id(self.factory)), self.connect)
        return self._api

    @property
    def label(self) -> str:
        return self.api.label

    def describe_endpoint(self) -> str:
        return f"{self.kind} {self.name} at {self.api.label}"

    def register(self, queue: QueueConfig) -> None:
        sub = queue.plugin_options("batchsubmit")
        spec = sub.pool_spec() if isinstance(sub, CloudSubmitOptions) else PoolSpec(PoolKind.NONE)
        st = queue.plugin_options("batchstatus")
        with self._lock:
            if isinstance(st, CloudStatusOptions):
                self.settings = st
            self._queue_pool[queue.name] = spec
            if spec not in self._pools:
                self._pools[spec] = make_pool(spec, self.factory)

    def poll(self, now: float) -> BatchSnapshot:
        listed = self.api.instances(self.factory.factory_id)
        current = {i.id: i for i in listed}
        # a VM the cloud no longer lists (OpenStack forgets deleted servers, EC2 after an hour) is
        # reported terminated, with its last tags, until ``keep`` runs out
        for iid, last in self._last.items():
            if iid not in current:
                current[iid] = last if last.state is VmState.TERMINATED else self._vanished(last)
        instances = list(current.values())
        with self._lock:
            queue_pool = dict(self._queue_pool)
            pools = dict(self._pools)
        by_queue: dict[str, list[Instance]] = {}
        for inst in instances:
            by_queue.setdefault(inst.queue or "", []).append(inst)
        # one node query per pool, for the instances of the queues that use it
        nodes: dict[str, PoolNode] = {}
        for spec, pool in pools.items():
            if pool is None:
                continue
            ids = [i.id for q, spec_q in queue_pool.items() if spec_q == spec for i in by_queue.get(q, ())]
            if ids:
                nodes.update(pool.nodes(ids))
        pilots: list[Pilot] = []
        views: dict[str, QueueView] = {}
        reported: dict[str, Instance] = {}
        seen: set[str] = set()
        for queue, insts in by_queue.items():
            spec = queue_pool.get(queue)
            pooled = spec is not None and spec.kind is not PoolKind.NONE
            kept: list[Instance] = []
            for inst in insts:
                seen.add(inst.id)
                node = nodes.get(inst.id)
                if node is not None:
                    self._joined.setdefault(inst.id, now)
                pilot = lc.vm_pilot(inst, queue, node, pooled=pooled, joined_at=self._joined.get(inst.id))
                if pilot.state.final:
                    gone = self._gone.setdefault(inst.id, now)
                    if inst.state is VmState.TERMINATED and now - gone > self.settings.keep:
                        continue  # long gone: no longer reported
                    pilot = replace(pilot, ended_at=gone)
                if lc.interrupted(inst) and inst.id not in self._interrupted:
                    self._interrupted.add(inst.id)
                    with self._lock:
                        self._interruptions.append(Interruption(now, queue, inst.id, inst.reason, inst.spot))
                        self._counts["interrupted"] += 1
                    log.warning(
                        "%s: VM %s of queue %s was interrupted by the provider: %s",
                        self.label,
                        inst.id,
                        queue or "?",
                        inst.reason,
                    )
                pilots.append(pilot)
                kept.append(inst)
                reported[inst.id] = inst
            if queue:
                views[queue] = QueueView(now, tuple(kept), {i.id: nodes[i.id] for i in kept if i.id in nodes})
        for queue in queue_pool:  # a queue with no VMs has a view too (cleanup then lists nothing)
            views.setdefault(queue, QueueView(now, ()))
        for memory in (self._joined, self._gone):
            for iid in [k for k in memory if k not in seen]:
                del memory[iid]
        self._interrupted &= seen
        self._instances = tuple(listed)
        self._last = reported
        VIEWS.publish(self.endpoint_key, views)
        return BatchSnapshot(now, tuple(pilots))

    def _vanished(self, last: Instance) -> Instance:
        """A VM no longer listed: terminated, with the reason we terminated it for if we did."""
        end = last.end or VIEWS.ended(self.endpoint_key, last.id)
        if end is None and last.state is VmState.ERROR:
            end = EndReason.ERROR
        tags = {**last.tags, lc.TAG_END: end} if end else last.tags
        return replace(last, state=VmState.TERMINATED, tags=tags)

    def take_interruptions(self) -> list[Interruption]:
        """Interruptions seen since the last call (for events and the interruption metric)."""
        with self._lock:
            out, self._interruptions = self._interruptions, []
        return out

    def reconcile_leaks(
        self,
        known_ids: Collection[str],
        open_intent_ids: Collection[str],
        configured_queues: Collection[str],
        now: float,
    ) -> LeakReport:
        """The leak reconciler over the last poll (pure decision in ``lifecycle.leaks``)."""
        instances = self._instances
        unknown = {i.id for i in instances if i.state.live and i.id not in known_ids}
        for iid in unknown:
            self._unknown_since.setdefault(iid, now)
        for iid in [k for k in self._unknown_since if k not in unknown]:
            del self._unknown_since[iid]
        adopt, terminate = lc.leaks(
            instances,
            known_ids,
            open_intent_ids,
            configured_queues,
            self._unknown_since,
            now,
            self.settings.leak_grace,
        )
        with self._lock:
            pooled = {q for q, s in self._queue_pool.items() if s.kind is not PoolKind.NONE}
        pilots = tuple(lc.vm_pilot(i, i.queue or "", None, pooled=i.queue in pooled) for i in adopt)
        waiting = len(unknown) - len(adopt) - len(terminate)
        # a leak whose terminate is under way is still listed live: terminate (and count) it once,
        # again only if it is still there a while later (the terminate failed)
        again = max(self.settings.leak_grace, LEAK_RETRY)
        self._leaks_sent = {k: t for k, t in self._leaks_sent.items() if k in unknown and now - t < again}
        new = tuple(i.id for i in terminate if i.id not in self._leaks_sent)
        self._leaks_sent.update(dict.fromkeys(new, now))
        with self._lock:
            self._counts["leaked"] = waiting + len(terminate)
            self._counts["adopted"] += len(adopt)
        return LeakReport(pilots, new, waiting)

    def counters(self) -> dict[str, int]:
        """For ``apf status``: leaked VMs now (unknown, not adoptable), and totals since start of
        VMs adopted, leaked VMs terminated, and VMs interrupted by the provider."""
        with self._lock:
            return dict(self._counts)

    def terminate_leaked(self, ids: Sequence[str]) -> None:
        self.terminate(ids)

    def terminate(self, ids: Sequence[str], reason: str = EndReason.LEAKED) -> None:
        """Terminate instances at this endpoint (leaks); runs on an action thread."""
        if ids:
            self.api.terminate(list(ids), reason)
            VIEWS.note_ended(self.endpoint_key, ids, reason)
            with self._lock:
                self._counts["terminated_leaks"] += len(ids)
            log.warning("%s: terminated %d leaked VMs: %s", self.label, len(ids), ", ".join(ids))

    def close(self) -> None:
        VIEWS.forget(self.endpoint_key)
        for pool in self._pools.values():
            if pool is not None:
                pool.close()
        if self._api is not None:
            APIS.release(self._api)
            self._api = None
