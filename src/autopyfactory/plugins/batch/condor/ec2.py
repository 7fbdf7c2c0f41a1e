"""CondorEC2: virtual machines through Condor-G's EC2 grid type, retired peacefully.

Each pilot is a VM job (``grid_resource = ec2 <url>``, ``executable = <queue name>``). The image's
startd joins the pool and advertises ``EC2InstanceID``; Condor-G sets the job's
``EC2InstanceName`` to the same id, which joins a VM job to its execute node.

* ``retire(ids)`` sends ``condor_off -peaceful -startd`` to each VM's node (running payloads
  finish, no new ones start) and marks the job ``APF_RETIRING`` in the schedd, so the batch status
  reports it as retiring, also after a factory restart.
* ``cleanup(pilots, now)`` removes a VM job once its node has retired (the master is present
  but no slot ads are left, or the whole node is gone after we retired it); removing the job
  makes Condor-G terminate the instance. A node that retired on its own (e.g. an idle shutdown in
  the image) is removed too, but only after ``bootgrace`` seconds, so a booting VM whose master
  shows up before its startd is never mistaken for a retired one.
* ``retire(ids, kill=True)`` or ``peaceful = False`` removes the VM jobs at once (APF 2.4).

The key *files* are handed to HTCondor (``ec2_access_key_id`` / ``ec2_secret_access_key`` are
paths); their contents never enter the description, a log line or an error message.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from enum import StrEnum
from pathlib import Path
from typing import Any, ClassVar

from pydantic import Field, SecretStr

from autopyfactory.model import Pilot, PilotState
from autopyfactory.plugins.base import PluginError, PluginOptions
from autopyfactory.plugins.batch.condor.base import (
    CondorBase,
    CondorBaseOptions,
    Description,
    profile_options,
)
from autopyfactory.plugins.batch.condor.schedd import attr_value, ids_constraint, quote
from autopyfactory.plugins.keys import auth_field

log = logging.getLogger(__name__)

RETIRING_ATTR = "APF_RETIRING"
MASTER_PROJECTION = ("Name", "Machine", "EC2InstanceID", "EC2PublicDNS")
SLOT_PROJECTION = ("Name", "Machine", "State", "Activity", "EC2InstanceID")


class CondorEC2Options(CondorBaseOptions):
    gridresource: str = Field(
        ..., description="the EC2 endpoint URL, e.g. https://ec2.us-east-1.amazonaws.com"
    )
    ami_id: str = Field(description="the machine image (AMI) to boot")
    instance_type: str = Field(description="the instance type, e.g. m5.large")
    security_groups: str | None = Field(None, description="comma list of security groups")
    spot_price: float | None = Field(None, description="bid for spot instances (unset: on-demand)")
    user_data: str | None = Field(None, description="user data passed to the instance (inline)")
    user_data_file: str | None = Field(None, description="file whose content is the user data")
    access_key_id: str | None = Field(None, description="path of the access key id file")
    secret_access_key: str | None = Field(None, description="path of the secret key file")
    authprofile: str | None = auth_field(
        None, "CloudKey", description="CloudKey auth profile (instead of the two paths)"
    )
    usessh: bool = Field(False, description="APF: condor_off over ssh; not supported")
    peaceful: bool = Field(True, description="APF 2.4: False removes VM jobs instead of retiring nodes")
    bootgrace: float = Field(900.0, ge=0, description="s before a node retired on its own is removed")


class NodeState(StrEnum):
    BUSY = "busy"
    IDLE = "idle"
    RETIRING = "retiring"
    RETIRED = "retired"  # master present, no slot ads: the startd has exited
    ABSENT = "absent"  # neither master nor slots in the collector (booting, or gone)


def node_state(master: Mapping[str, Any] | None, slots: Sequence[Mapping[str, Any]]) -> NodeState:
    """APF's node states from one node's master ad and slot ads (pure)."""
    if not slots:
        return NodeState.RETIRED if master is not None else NodeState.ABSENT
    activities = [str(attr_value(s, "Activity") or "") for s in slots]
    if "Retiring" in activities:
        return NodeState.RETIRING
    if all(a == "Idle" for a in activities):
        return NodeState.IDLE
    return NodeState.BUSY


def group_by_instance(ads: Iterable[Mapping[str, Any]]) -> dict[str, list[Mapping[str, Any]]]:
    out: dict[str, list[Mapping[str, Any]]] = {}
    for ad in ads:
        instance = attr_value(ad, "EC2InstanceID")
        if instance:
            out.setdefault(str(instance), []).append(ad)
    return out


def vms_to_remove(
    pilots: Sequence[Pilot],
    masters: Mapping[str, Mapping[str, Any]],
    slots: Mapping[str, Sequence[Mapping[str, Any]]],
    now: float,
    bootgrace: float,
) -> list[tuple[str, NodeState]]:
    """Which VM jobs to remove now (pure): (job id, node state) of every retired node."""
    out = []
    for p in pilots:
        if not p.instance_id or p.state not in (PilotState.RUNNING, PilotState.RETIRING):
            continue
        state = node_state(masters.get(p.instance_id), slots.get(p.instance_id, ()))
        retiring = p.state is PilotState.RETIRING  # we sent condor_off to it
        booted = p.started_at is not None and now - p.started_at >= bootgrace
        # a retired node goes once we retired it or once it is past booting; a vanished one only
        # when we retired it (a VM still booting has no ads either)
        if (state is NodeState.RETIRED and (retiring or booted)) or (state is NodeState.ABSENT and retiring):
            out.append((p.backend_id, state))
    return out


def member_constraint(attr: str, values: Iterable[str]) -> str:
    return f"member({attr}, {{{', '.join(quote(v) for v in sorted(set(values)))}}})"


def write_key_file(path: Path, secret: SecretStr) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(secret.get_secret_value())
    return path


class CondorEC2(CondorBase):
    name = "CondorEC2"
    Options: ClassVar[type[PluginOptions]] = CondorEC2Options
    key_prefixes: ClassVar[tuple[str, ...]] = ("batchsubmit.condorec2.", "batchsubmit.condorbase.")
    needs_executable = False

    options: CondorEC2Options

    def setup(self) -> None:
        opts = self.options
        if opts.usessh:
            raise PluginError(
                f"[{self.queue.name}] {self.key('usessh')} = True is not supported: the factory sends "
                "condor_off -peaceful to the VM's master through the collector (grant it ADMINISTRATOR)"
            )
        access, secret = opts.access_key_id, opts.secret_access_key
        if opts.authprofile and not (access and secret):
            cloud = profile_options(
                self.factory, opts.authprofile, "CloudKey", self.key("authprofile"), self.queue.name
            )
            store = self.factory.state_dir / "condor" / "ec2" / opts.authprofile
            if not access:
                access = cloud.access_key_id_file or (
                    str(write_key_file(store / "access_key_id", cloud.access_key_id))
                    if cloud.access_key_id is not None
                    else None
                )
            if not secret:
                secret = cloud.secret_access_key_file or (
                    str(write_key_file(store / "secret_access_key", cloud.secret_access_key))
                    if cloud.secret_access_key is not None
                    else None
                )
        if not access or not secret:
            raise PluginError(
                f"[{self.queue.name}] {self.name} needs key files: set {self.key('access_key_id')} and "
                f"{self.key('secret_access_key')} (paths) or {self.key('authprofile')} (a CloudKey profile)"
            )
        self.access_key_file = str(Path(access).expanduser())
        self.secret_key_file = str(Path(secret).expanduser())
        for label, path in (("access key id", self.access_key_file), ("secret key", self.secret_key_file)):
            if not Path(path).is_file():
                raise PluginError(f"[{self.queue.name}] {self.name}: the {label} file {path} does not exist")

    def flavour_lines(self) -> list[tuple[str, str]]:
        opts = self.options
        lines = [
            ("universe", "grid"),
            ("grid_resource", f"ec2 {opts.gridresource}"),
            ("executable", self.queue.name),
            ("ec2_access_key_id", self.access_key_file),
            ("ec2_secret_access_key", self.secret_key_file),
            ("ec2_ami_id", opts.ami_id),
            ("ec2_instance_type", opts.instance_type),
        ]
        if opts.user_data:
            lines.append(("ec2_user_data", opts.user_data))
        if opts.user_data_file:
            lines.append(("ec2_user_data_file", opts.user_data_file))
        if opts.spot_price is not None:
            lines.append(("ec2_spot_price", str(opts.spot_price)))
        if opts.security_groups:
            lines.append(("ec2_security_groups", opts.security_groups))
        return lines

    def written_description(self, desc: Description, n: int) -> str:
        # user data often carries pool passwords or tokens: keep it out of the log tree
        text = desc.text(n)
        if desc.get("ec2_user_data") is not None:
            text = text.replace(f"ec2_user_data = {desc.get('ec2_user_data')}", "ec2_user_data = <redacted>")
        return text

    # ---- retire and clean up -------------------------------------------------------------

    def retire(self, backend_ids: Sequence[str], kill: bool = False) -> None:
        ids = list(backend_ids)
        if not ids:
            return
        if kill or not self.options.peaceful:
            self.schedd.act("remove", ids)
            return
        jobs = self.schedd.query(ids_constraint(ids), ["ClusterId", "ProcId", "EC2InstanceName"])
        instance_of = {
            f"{attr_value(ad, 'ClusterId')}.{attr_value(ad, 'ProcId')}": attr_value(ad, "EC2InstanceName")
            for ad in jobs
        }
        instances = {str(i) for i in instance_of.values() if i}
        masters = (
            self.schedd.collector_query(
                "master", member_constraint("EC2InstanceID", instances), list(MASTER_PROJECTION)
            )
            if instances
            else []
        )
        master_of = {str(attr_value(m, "EC2InstanceID")): str(attr_value(m, "Name")) for m in masters}
        retired: list[str] = []
        for job_id, instance in sorted(instance_of.items()):
            master = master_of.get(str(instance)) if instance else None
            if master is None:
                # booting, or not in the collector now: nothing to drain yet; the next decision retries
                log.info("queue %s: VM job %s has no execute node yet; not retired", self.queue.name, job_id)
                continue
            self.schedd.startd_off_peaceful(master)
            retired.append(job_id)
        if retired:
            self.schedd.edit(retired, RETIRING_ATTR, str(int(time.time())))
            log.info(
                "queue %s: retiring %d VM nodes peacefully: %s",
                self.queue.name,
                len(retired),
                ", ".join(retired),
            )

    def cleanup(self, pilots: Sequence[Pilot], now: float) -> None:
        super().cleanup(pilots, now)
        vms = [p for p in pilots if p.instance_id and p.state in (PilotState.RUNNING, PilotState.RETIRING)]
        if not vms:
            return
        instances = {p.instance_id for p in vms if p.instance_id}
        constraint = member_constraint("EC2InstanceID", instances)
        masters = self.schedd.collector_query("master", constraint, list(MASTER_PROJECTION))
        slots = self.schedd.collector_query("startd", constraint, list(SLOT_PROJECTION))
        master_by = {k: v[0] for k, v in group_by_instance(masters).items()}
        remove = vms_to_remove(vms, master_by, group_by_instance(slots), now, self.options.bootgrace)
        if remove:
            ids = [job_id for job_id, _ in remove]
            log.info(
                "queue %s: removing %d VM jobs whose nodes retired: %s",
                self.queue.name,
                len(ids),
                ", ".join(ids),
            )
            self.schedd.act("remove", ids)
