"""An in-process stand-in of the schedd/collector interface (``ScheddApi``), for tests.

No HTCondor daemon can run here, so the plugins are tested against this stand-in. It keeps job,
startd and master ads as real ``classad2.ClassAd`` objects and evaluates every constraint with
the real ClassAd library, and returns only the projected attributes, so a wrong constraint or a
missing projection attribute makes a test fail. ``submit`` takes a real ``htcondor2.Submit`` and
builds job ads from it with the bindings' own macro expansion (``$(Cluster)``, ``$(Process)``,
``$(Dir)``); the submit-command -> job-attribute table below covers the commands our plugins
write (it is a stand-in, not condor_submit).

Simulation helpers (``start``, ``boot_vm``, ``negotiate``, ``complete``) move jobs and nodes
through their life the way a pool would: peaceful ``condor_off`` of a startd keeps busy slots
until their job completes and then leaves only the master; removing a VM job terminates its
instance (its ads leave the collector).
"""

from __future__ import annotations

import itertools
import textwrap
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import classad2
import htcondor2

from autopyfactory.config.loader import load_factory_config
from autopyfactory.config.models import FactoryConfig
from autopyfactory.plugins.base import BackendError, FactoryContext
from autopyfactory.plugins.batch.condor.schedd import Address, split_id

UNIVERSES = {"vanilla": 5, "grid": 9, "local": 12, "scheduler": 7, "docker": 5, "container": 5}

# submit command (lower case) -> job attribute, and whether the value is a ClassAd string
COMMANDS: dict[str, tuple[str, bool]] = {
    "executable": ("Cmd", True),
    "arguments": ("Args", True),
    "grid_resource": ("GridResource", True),
    "x509userproxy": ("x509userproxy", True),
    "output": ("Out", True),
    "error": ("Err", True),
    "log": ("UserLog", True),
    "notify_user": ("NotifyUser", True),
    "should_transfer_files": ("ShouldTransferFiles", True),
    "stream_output": ("StreamOut", False),
    "stream_error": ("StreamErr", False),
    "transfer_executable": ("TransferExecutable", False),
    "nordugrid_rsl": ("NordugridRSL", True),
    "ec2_ami_id": ("EC2AmiID", True),
    "ec2_instance_type": ("EC2InstanceType", True),
    "ec2_access_key_id": ("EC2AccessKeyId", True),
    "ec2_secret_access_key": ("EC2SecretAccessKey", True),
    "ec2_user_data": ("EC2UserData", True),
    "ec2_user_data_file": ("EC2UserDataFile", True),
    "ec2_spot_price": ("EC2SpotPrice", True),
    "ec2_security_groups": ("EC2SecurityGroups", True),
    "request_cpus": ("RequestCpus", False),
    "request_memory": ("RequestMemory", False),
    "requirements": ("Requirements", False),
    "periodic_remove": ("PeriodicRemove", False),
    "batch_name": ("JobBatchName", True),
}


@dataclass
class Call:
    op: str
    constraint: str | None = None
    projection: tuple[str, ...] = ()
    args: tuple[Any, ...] = ()


def _matches(constraint: str, ad: classad2.ClassAd) -> bool:
    # only a real True selects: Undefined and Error never do (Value.Error == 1 would!)
    return classad2.ExprTree(constraint).eval(ad) is True


def _project(ad: classad2.ClassAd, projection: Sequence[str]) -> classad2.ClassAd:
    if not projection:
        return classad2.ClassAd(ad.printOld())
    out = classad2.ClassAd()
    for name in projection:
        if name in ad:
            out[name] = ad.lookup(name)
    return out


def _check(constraint: str) -> None:
    try:
        classad2.ExprTree(constraint)
    except Exception as exc:
        raise BackendError("standin", f"invalid constraint {constraint!r}: {exc}") from exc


class StandinPool:
    """One collector and any number of schedds, all in process, on a settable clock."""

    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now
        self.schedds: dict[Address, StandinSchedd] = {}
        self.startds: list[classad2.ClassAd] = []
        self.masters: list[classad2.ClassAd] = []
        self.peaceful: set[str] = set()  # machines told condor_off -peaceful
        self.terminated: list[str] = []  # EC2 instance ids whose VM job was removed
        self.calls: list[Call] = []

    def add_schedd(self, address: Address = Address()) -> StandinSchedd:
        self.schedds[address] = StandinSchedd(self, address)
        return self.schedds[address]

    def connect(self, address: Address) -> StandinSchedd:
        """The connector installed with ``schedd.set_connector``."""
        try:
            return self.schedds[address]
        except KeyError:
            raise BackendError(
                address.label(), "cannot locate the schedd (stand-in has no such schedd)"
            ) from None

    # ---- collector ---------------------------------------------------------------------

    def collector_query(
        self, ad_type: str, constraint: str, projection: Sequence[str]
    ) -> list[classad2.ClassAd]:
        _check(constraint)
        ads = {"startd": self.startds, "master": self.masters}[ad_type]
        return [_project(ad, projection) for ad in ads if _matches(constraint, ad)]

    def add_node(self, machine: str, instance_id: str | None = None, slots: int = 1) -> None:
        """A node joins the pool: its master ad and ``slots`` unclaimed slot ads."""
        extra = {"EC2InstanceID": instance_id} if instance_id else {}
        master = classad2.ClassAd({"MyType": "DaemonMaster", "Name": machine, "Machine": machine, **extra})
        if instance_id:
            master["EC2PublicDNS"] = f"{instance_id}.compute.example.org"
        self.masters.append(master)
        for i in range(1, slots + 1):
            slot = classad2.ClassAd(
                {
                    "MyType": "Machine",
                    "Name": f"slot{i}@{machine}",
                    "Machine": machine,
                    "State": "Unclaimed",
                    "Activity": "Idle",
                    **extra,
                }
            )
            slot["Requirements"] = classad2.ExprTree("true")
            self.startds.append(slot)

    def startd_off_peaceful(self, master_name: str) -> None:
        if not any(m.eval("Name") == master_name for m in self.masters):
            raise BackendError("standin collector", f"no master named {master_name}")
        self.peaceful.add(master_name)
        # a peaceful startd exits its idle slots at once and the busy ones when their job ends
        self.startds = [
            s
            for s in self.startds
            if not (s.eval("Machine") == master_name and s.eval("State") == "Unclaimed")
        ]

    def terminate(self, instance_id: str) -> None:
        self.terminated.append(instance_id)
        self.masters = [m for m in self.masters if m.get("EC2InstanceID") != instance_id]
        self.startds = [s for s in self.startds if s.get("EC2InstanceID") != instance_id]

    def free_slot(self, slot_name: str) -> None:
        for slot in list(self.startds):
            if slot.eval("Name") == slot_name:
                machine = slot.eval("Machine")
                if machine in self.peaceful:
                    self.startds.remove(slot)
                else:
                    slot["State"], slot["Activity"] = "Unclaimed", "Idle"
                    slot.pop("JobId", None)


class StandinSchedd:
    """The ``ScheddApi`` of one stand-in schedd."""

    def __init__(self, pool: StandinPool, address: Address) -> None:
        self.pool = pool
        self.address = address
        self.jobs: dict[str, classad2.ClassAd] = {}
        self.history_ads: list[classad2.ClassAd] = []  # newest first
        self.descriptions: list[str] = []
        self._clusters = itertools.count(1)

    @property
    def calls(self) -> list[Call]:
        return self.pool.calls

    # ---- ScheddApi -------------------------------------------------------------------

    def submit(self, description: htcondor2.Submit, count: int) -> tuple[int, list[int]]:
        assert isinstance(description, htcondor2.Submit), "the plugins must hand over a real htcondor2.Submit"
        cluster = next(self._clusters)
        self.calls.append(Call("submit", args=(cluster, count)))
        self.descriptions.append(str(description))
        procs = list(range(count))
        for proc in procs:
            self.jobs[f"{cluster}.{proc}"] = self._job_ad(description, cluster, proc)
        return cluster, procs

    def query(self, constraint: str, projection: Sequence[str]) -> list[classad2.ClassAd]:
        _check(constraint)
        self.calls.append(Call("query", constraint, tuple(projection)))
        return [_project(ad, projection) for ad in self.jobs.values() if _matches(constraint, ad)]

    def act(self, action: str, ids: Sequence[str], constraint: str | None = None) -> None:
        if constraint:
            _check(constraint)
        self.calls.append(Call("act", constraint, args=(action, tuple(ids))))
        for job_id in ids:
            split_id(job_id)
            ad = self.jobs.get(job_id)
            if ad is None or (constraint and not _matches(constraint, ad)):
                continue
            if action == "remove":
                self._finish(job_id, 3)
            elif action == "hold":
                self._set_status(ad, 5)
            elif action == "release":
                self._set_status(ad, 1)

    def edit(self, ids: Sequence[str], attr: str, value: str) -> None:
        self.calls.append(Call("edit", args=(tuple(ids), attr, value)))
        for job_id in ids:
            if job_id in self.jobs:
                self.jobs[job_id][attr] = classad2.ExprTree(value)

    def history(
        self, constraint: str, projection: Sequence[str], since: str | None = None
    ) -> list[classad2.ClassAd]:
        _check(constraint)
        self.calls.append(Call("history", constraint, tuple(projection), args=(since,)))
        out = []
        for ad in self.history_ads:
            if since and _matches(since, ad):
                break
            if _matches(constraint, ad):
                out.append(_project(ad, projection))
        return out

    def collector_query(
        self, ad_type: str, constraint: str, projection: Sequence[str]
    ) -> list[classad2.ClassAd]:
        self.calls.append(Call(f"collector:{ad_type}", constraint, tuple(projection)))
        return self.pool.collector_query(ad_type, constraint, projection)

    def startd_off_peaceful(self, master_name: str) -> None:
        self.calls.append(Call("condor_off", args=(master_name,)))
        self.pool.startd_off_peaceful(master_name)

    # ---- building job ads --------------------------------------------------------------

    def _job_ad(self, description: htcondor2.Submit, cluster: int, proc: int) -> classad2.ClassAd:
        # expand every macro the way condor_submit would for this job
        sub = htcondor2.Submit(dict(description))
        sub["Cluster"], sub["Process"] = str(cluster), str(proc)
        ad = classad2.ClassAd(
            {
                "MyType": "Job",
                "ClusterId": cluster,
                "ProcId": proc,
                "JobStatus": 1,
                "QDate": int(self.pool.now),
                "EnteredCurrentStatus": int(self.pool.now),
                "Owner": "apf",
                "JobUniverse": 5,
            }
        )
        ad["Requirements"] = classad2.ExprTree("true")
        for key in description:
            value = sub.expand(key)
            lower = key.lower()
            if lower.startswith("my."):
                ad[key[3:]] = classad2.ExprTree(value)
            elif lower == "universe":
                ad["JobUniverse"] = UNIVERSES[value.strip().lower()]
            elif lower == "environment":
                ad["Environment"] = value.strip()[1:-1].replace('""', '"')
            elif lower in COMMANDS:
                attr, is_string = COMMANDS[lower]
                ad[attr] = value if is_string else classad2.ExprTree(value)
        return ad

    # ---- simulation ----------------------------------------------------------------------

    def _set_status(self, ad: classad2.ClassAd, status: int) -> None:
        ad["JobStatus"] = status
        ad["EnteredCurrentStatus"] = int(self.pool.now)

    def _finish(self, job_id: str, status: int, exit_code: int | None = None) -> None:
        ad = self.jobs.pop(job_id)
        self._set_status(ad, status)
        ad["CompletionDate"] = int(self.pool.now)
        if exit_code is not None:
            ad["ExitCode"] = exit_code
        start = ad.get("JobCurrentStartDate")
        if start:
            ad["RemoteWallClockTime"] = float(self.pool.now - start)
        slot = ad.get("RemoteHost")
        if slot:
            self.pool.free_slot(slot)
        instance = ad.get("EC2InstanceName")
        if status == 3 and instance:
            self.pool.terminate(instance)
        self.history_ads.insert(0, ad)

    def start(self, job_id: str, slot: str | None = None) -> None:
        ad = self.jobs[job_id]
        self._set_status(ad, 2)
        ad["JobCurrentStartDate"] = int(self.pool.now)
        ad["JobStartDate"] = ad.get("JobStartDate") or int(self.pool.now)
        if slot:
            ad["RemoteHost"] = slot

    def set_status(self, job_id: str, status: int) -> None:
        self._set_status(self.jobs[job_id], status)

    def complete(self, job_id: str, exit_code: int = 0) -> None:
        self._finish(job_id, 4, exit_code)

    def boot_vm(self, job_id: str, instance_id: str, slots: int = 1) -> str:
        """Condor-G started the VM (job running, EC2InstanceName set) and its node joined."""
        self.start(job_id)
        self.jobs[job_id]["EC2InstanceName"] = instance_id
        machine = f"vm-{instance_id}.example.org"
        self.pool.add_node(machine, instance_id, slots)
        return machine

    def negotiate(self) -> list[tuple[str, str]]:
        """Match idle vanilla jobs to unclaimed slots with the real ClassAd match."""
        matched = []
        for job_id, job in sorted(self.jobs.items()):
            if job.eval("JobStatus") != 1 or job.eval("JobUniverse") != 5:
                continue
            for slot in self.pool.startds:
                if slot.eval("State") == "Unclaimed" and job.symmetricMatch(slot):
                    name = slot.eval("Name")
                    slot["State"], slot["Activity"], slot["JobId"] = "Claimed", "Busy", job_id
                    self.start(job_id, slot=name)
                    matched.append((job_id, name))
                    break
        return matched

    def load_ads(self, ads: Iterable[classad2.ClassAd]) -> None:
        """Put ads parsed from recorded text into the queue as they are."""
        for ad in ads:
            self.jobs[f"{ad.eval('ClusterId')}.{ad.eval('ProcId')}"] = ad

    def queries(self) -> list[Call]:
        return [c for c in self.calls if c.op == "query"]


# ---- configuration through the real loader ---------------------------------------------------

FACTORY_ID = "test-factory"


def load_config(tmp: Path, queues: str, auth: str = "", factory_extra: str = "") -> FactoryConfig:
    """Write autopyfactory.conf, queues.conf and auth.conf under ``tmp`` and load them for real."""
    (tmp / "queues.conf").write_text(textwrap.dedent(queues))
    auth_line = ""
    if auth:
        (tmp / "auth.conf").write_text(textwrap.dedent(auth))
        auth_line = "authConf = auth.conf\n"
    factory = (
        "[Factory]\n"
        f"factoryId = {FACTORY_ID}\n"
        "factoryAdminEmail = apf-admin@example.org\n"
        "factoryUser = apfuser\n"
        "queueConf = queues.conf\n"
        f"{auth_line}"
        f"baseLogDir = {tmp / 'logs'}\n"
        "baseLogDirUrl = http://factory.example.org:25880\n"
        f"factory.statedir = {tmp / 'state'}\n" + textwrap.dedent(factory_extra)
    )
    (tmp / "autopyfactory.conf").write_text(factory)
    return load_factory_config(str(tmp / "autopyfactory.conf"))


def context(config: FactoryConfig, monitor_url: str | None = None) -> FactoryContext:
    return FactoryContext(
        factory_id=config.factory_id,
        settings=config.settings,
        auth_profiles=dict(config.auth),
        state_dir=config.settings.state_path,
        monitor_url=monitor_url,
    )


def submitter(config: FactoryConfig, ctx: FactoryContext, queue: str) -> Any:
    qc = config.queues[queue]
    return qc.batchsubmit.cls(qc, qc.batchsubmit.options, ctx)  # type: ignore[call-arg]


def status_poller(config: FactoryConfig, ctx: FactoryContext, queue: str) -> Any:
    qc = config.queues[queue]
    cls = qc.batchstatus.cls
    return cls(cls.endpoint(qc, ctx), ctx)  # type: ignore[attr-defined,call-arg]


def wms_poller(config: FactoryConfig, ctx: FactoryContext, queue: str) -> Any:
    qc = config.queues[queue]
    assert qc.wmsstatus is not None
    cls = qc.wmsstatus.cls
    return cls(cls.endpoint(qc, ctx), ctx)  # type: ignore[attr-defined,call-arg]
