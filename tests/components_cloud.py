"""Session fixtures for the cloud tests (registered by tests/conftest.py through ``pytest_plugins``).

* ``ec2_server``: moto's EC2 server (scripts/components/moto_ec2.py, with EC2's launch count, boot
  delays, capacity limits and provider interruptions) and the fault proxy in front of it; ``ec2``
  resets both around each test.
* ``openstack_stub``: the Keystone v3 + Nova wire stub and a clouds.yaml naming it.
* ``slurm_cloud``: a Slurm cluster (no accounting) with one static node and four ``State=FUTURE``
  VM slots f1..f4 in partition ``cloud``.
* ``vmboot``: the VM contextualisation stand-in (scripts/components/vmboot.py) for one test: it
  runs each running instance's user data (starting a slurmd for a FUTURE slot) and stops it when
  the instance goes.
* ``slurm_powersave``: a Slurm cluster using its own power saving: three ``State=CLOUD`` nodes
  c1..c3 in partition ``powersave`` whose ResumeProgram, SuspendProgram and ResumeFailProgram are
  the factory's clients (examples/powersave/*.sh -> ``apf powersave``, writing to ``spool``);
  ``vmboot_powersave`` runs each instance's user data with no slot (the VM finds its node).

Each component is started by its script the first time a test asks for it and stopped at the end of
the session if this session started it; one that cannot start FAILS the test.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from conftest import BASE_ROOT, COMPONENTS, SlurmCluster, _cluster, _Script

_CLOUD_MARKERS = {
    "ec2_server": "ec2",
    "ec2": "ec2",
    "openstack_stub": "openstack",
    "slurm_cloud": "slurm",
    "slurm_powersave": "slurm",
}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        for fixture, marker in _CLOUD_MARKERS.items():
            if fixture in getattr(item, "fixturenames", ()):
                item.add_marker(getattr(pytest.mark, marker))


def _http(method: str, url: str, body: Any = None) -> Any:
    data = json.dumps(body).encode() if body is not None else (b"" if method in ("POST", "PUT") else None)
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as reply:
        text = reply.read()
    return json.loads(text) if text.strip().startswith((b"{", b"[")) else text


# ---------------------------------------------------------------------------------------------
# EC2 (moto)


@dataclass
class EC2Server:
    """moto on ``url``; the fault proxy in front of it on ``proxy_url``."""

    url: str
    proxy_url: str
    region: str = "us-east-1"
    _image: str | None = None

    def client(self, url: str | None = None, region: str | None = None, attempts: int = 1) -> Any:
        import boto3
        from botocore.config import Config

        return boto3.client(
            "ec2",
            endpoint_url=url or self.url,
            region_name=region or self.region,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
            config=Config(retries={"mode": "standard", "total_max_attempts": attempts}),
        )

    def reset(self) -> None:
        _http("POST", f"{self.url}/moto-api/reset")
        _http("DELETE", f"{self.proxy_url}/_fault")
        self._image = None

    def control(self, **settings: Any) -> dict[str, Any]:
        """moto_ec2.py's knobs: boot_seconds, instance_limit (None restores the default)."""
        return _http("POST", f"{self.url}/_apf/control", settings)

    def interrupt(
        self, ids: list[str], code: str = "Server.SpotInstanceTermination", action: str = "terminate"
    ) -> list[str]:
        return _http("POST", f"{self.url}/_apf/interrupt", {"ids": ids, "code": code, "action": action})[
            "interrupted"
        ]

    def launches(self) -> list[dict[str, str]]:
        """The query parameters of every RunInstances moto received since the last reset (UserData
        left out), e.g. ``{"MinCount": "1", "MaxCount": "3", "ClientToken": ...}``."""
        return _http("GET", f"{self.url}/_apf/launches")["launches"]

    def fault(self, action: str, code: str, status: int = 500, times: int = -1) -> None:
        _http(
            "POST",
            f"{self.proxy_url}/_fault",
            {"action": action, "code": code, "status": status, "times": times},
        )

    def clear_faults(self) -> None:
        _http("DELETE", f"{self.proxy_url}/_fault")

    def fault_hits(self) -> dict[str, int]:
        """Requests answered with an injected fault, by action."""
        return _http("GET", f"{self.proxy_url}/_fault")["hits"]

    def requests(self) -> dict[str, int]:
        """Every request through the proxy since the last reset, by action."""
        return _http("GET", f"{self.proxy_url}/_fault")["requests"]

    def image(self) -> str:
        """An image to launch (registered after each reset: moto runs without its public catalogue)."""
        if self._image is None:
            reply = self.client().register_image(
                Name="apf-pilot",
                RootDeviceName="/dev/xvda",
                BlockDeviceMappings=[{"DeviceName": "/dev/xvda", "Ebs": {"VolumeSize": 8}}],
            )
            self._image = str(reply["ImageId"])
        return self._image

    def instances(self, region: str | None = None, **filters: str) -> list[dict[str, Any]]:
        flt = [
            {"Name": k.replace("_", ":", 1) if k.startswith("tag_") else k, "Values": [v]}
            for k, v in filters.items()
        ]
        pages = self.client(region=region).get_paginator("describe_instances").paginate(Filters=flt)
        return [i for p in pages for r in p["Reservations"] for i in r["Instances"]]


@pytest.fixture(scope="session")
def ec2_server() -> Iterator[EC2Server]:
    # the same base dir as conftest's moto_endpoint: one moto per session, whoever asks first
    script = _Script("moto", COMPONENTS / "moto.sh", {"APF_MOTO_BASE": str(BASE_ROOT / "moto")})
    info = script.start()
    try:
        yield EC2Server(info["APF_MOTO_URL"], info["APF_MOTO_PROXY_URL"])
    finally:
        script.stop()


@pytest.fixture
def ec2(ec2_server: EC2Server) -> Iterator[EC2Server]:
    """A clean moto (no instances, default knobs, no faults) for one test."""
    ec2_server.reset()
    yield ec2_server
    ec2_server.reset()


# ---------------------------------------------------------------------------------------------
# OpenStack (wire stub)


@dataclass(frozen=True)
class OpenStackStub:
    url: str
    clouds_yaml: Path
    cloud: str

    def reset(self, max_instances: int = 1000, boot_seconds: float = 0.0) -> None:
        _http("POST", f"{self.url}/_reset", {"max_instances": max_instances, "boot_seconds": boot_seconds})

    def fault(self, **fault: Any) -> None:
        """e.g. fault(create="quota", times=1); create: quota, overlimit, 500, novalidhost; list: 500;
        auth: 401."""
        _http("POST", f"{self.url}/_fault", fault)

    def servers(self) -> list[dict[str, Any]]:
        return _http("GET", f"{self.url}/_servers")["servers"]

    def requests(self) -> list[str]:
        """``METHOD /path`` of every request since the last reset."""
        return _http("GET", f"{self.url}/_servers")["requests"]

    def set_server(self, server_id: str, **change: Any) -> None:
        _http("POST", f"{self.url}/_servers/{server_id}", change)


@pytest.fixture(scope="session")
def openstack_stub() -> Iterator[OpenStackStub]:
    script = _Script(
        "openstack-stub",
        COMPONENTS / "openstack-stub.sh",
        {"APF_OPENSTACK_BASE": str(BASE_ROOT / "openstack")},
    )
    info = script.start()
    try:
        yield OpenStackStub(
            info["APF_OPENSTACK_URL"], Path(info["APF_OPENSTACK_CLOUDS"]), info["APF_OPENSTACK_CLOUD"]
        )
    finally:
        script.stop()


@pytest.fixture
def openstack(openstack_stub: OpenStackStub) -> Iterator[OpenStackStub]:
    openstack_stub.reset()
    yield openstack_stub
    openstack_stub.reset()


# ---------------------------------------------------------------------------------------------
# Slurm with FUTURE slots, and the VM stand-in


@dataclass(frozen=True)
class CloudPool:
    """A Slurm cluster whose partition ``partition`` holds FUTURE slots that VMs fill."""

    cluster: SlurmCluster
    slots: tuple[str, ...]
    partition: str

    def run(self, *argv: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return self.cluster.run(*argv, timeout=timeout)

    def node(self, name: str) -> dict[str, str]:
        """``scontrol show node -o`` fields of a visible node; {} for a FUTURE (hidden) one."""
        from autopyfactory.plugins.cloud.pools import parse_scontrol_fields

        out = self.run("scontrol", "show", "node", "-o", name)
        return parse_scontrol_fields(out.stdout.strip()) if out.returncode == 0 and out.stdout.strip() else {}

    def reset_slots(self) -> None:
        """Put every slot back to FUTURE with no comment (after a test that left one visible), with
        no job of a failed test left to hold a slot for the next one."""
        self.run("scancel", "-p", self.partition)
        for slot in self.slots:
            if self.node(slot):
                self.run("scontrol", "update", f"nodename={slot}", "state=FUTURE", "comment=", "extra=")


@pytest.fixture(scope="session")
def slurm_cloud() -> Iterator[CloudPool]:
    script = _Script(
        "slurm-cloud",
        COMPONENTS / "slurm.sh",
        {
            "APF_SLURM_BASE": str(BASE_ROOT / "slurm-cloud"),
            "APF_SLURM_ACCOUNTING": "0",
            "APF_SLURM_NODES": "1",
            "APF_SLURM_FUTURE": "4",
            "APF_SLURM_CLUSTER": "apfcloud",
        },
    )
    info = script.start()
    pool = CloudPool(
        _cluster(script, info),
        tuple(info["APF_SLURM_FUTURE_NODES"].split(",")),
        info["APF_SLURM_FUTURE_PARTITION"],
    )
    try:
        yield pool
    finally:
        script.stop()


@dataclass
class VmBoot:
    """The running stand-in: ``log()`` is its output so far."""

    proc: subprocess.Popen[str]
    log_path: Path
    state: Path
    booted: list[str] = field(default_factory=list)

    def log(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""

    def console(self, instance_id: str) -> str:
        path = self.state / instance_id / "console.log"
        return path.read_text() if path.exists() else ""


@contextmanager
def _vmboot(ec2: EC2Server, tmp_path: Path, slurm_conf: Path, *extra: str) -> Iterator[VmBoot]:
    """vmboot.py booting factory ``cloudtest``'s instances for one test; stopped (its VMs with it)
    at the end."""
    log_path = tmp_path / "vmboot.log"
    state = tmp_path / "vms"
    with log_path.open("w") as out:
        proc = subprocess.Popen(
            [
                sys.executable, str(COMPONENTS / "vmboot.py"),
                "--endpoint", ec2.url, "--region", ec2.region, "--state", str(state),
                "--tag", "apf:factory=cloudtest", "--slurm-conf", str(slurm_conf),
                "--interval", "0.2", *extra,
            ],
            stdout=out, stderr=subprocess.STDOUT, text=True, start_new_session=True,
        )  # fmt: skip
    try:
        yield VmBoot(proc, log_path, state)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


@pytest.fixture
def vmboot(ec2: EC2Server, slurm_cloud: CloudPool, tmp_path: Path) -> Iterator[VmBoot]:
    """vmboot.py for this test: boots instances of factory ``cloudtest`` into the FUTURE slots."""
    try:
        with _vmboot(ec2, tmp_path, slurm_cloud.cluster.conf, "--slots", ",".join(slurm_cloud.slots)) as boot:
            yield boot
    finally:
        slurm_cloud.reset_slots()


# ---------------------------------------------------------------------------------------------
# Slurm power saving: CLOUD nodes powered up and down by the factory's clients

REPO = COMPONENTS.parents[1]


@dataclass(frozen=True)
class PowerSaveCluster:
    """Slurm with CLOUD nodes ``nodes`` in ``partition``; its power-saving programs are
    examples/powersave/{resume,suspend,resumefail}.sh writing to ``spool`` (and to ``calls``)."""

    cluster: SlurmCluster
    nodes: tuple[str, ...]
    partition: str
    spool: Path
    calls: Path  # the programs' output: one line per call

    def run(self, *argv: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return self.cluster.run(*argv, timeout=timeout)

    def node(self, name: str) -> dict[str, str]:
        from autopyfactory.plugins.cloud.pools import parse_scontrol_fields

        out = self.run("scontrol", "show", "node", "-o", name)
        return parse_scontrol_fields(out.stdout.strip()) if out.returncode == 0 else {}

    def state(self, name: str) -> set[str]:
        """The node's state words, e.g. {"IDLE", "CLOUD", "POWERED_DOWN"}."""
        return set(self.node(name).get("State", "").split("+")) - {""}

    def powered_down(self) -> bool:
        """Every CLOUD node idle~: powered down, not down, no Comment."""
        return all(
            {"IDLE", "POWERED_DOWN"} <= self.state(n) and not self.node(n).get("Comment") for n in self.nodes
        )

    def reset(self) -> None:
        """No jobs, every node powered down with no Comment, an empty spool."""
        import shutil

        from tests.helpers import wait_for

        self.run("scancel", "--partition", self.partition)
        names = ",".join(self.nodes)
        self.run("scontrol", "update", f"nodename={names}", "comment=")
        for n in self.nodes:
            state = self.state(n)
            if "DOWN" in state:
                self.run("scontrol", "update", f"nodename={n}", "state=RESUME")
            elif not {"POWERED_DOWN", "POWERING_DOWN"} & state:
                self.run("scontrol", "update", f"nodename={n}", "state=POWER_DOWN_FORCE")
        wait_for(self.powered_down, 60, f"{names} to be powered down")
        shutil.rmtree(self.spool, ignore_errors=True)


@pytest.fixture(scope="session")
def slurm_powersave() -> Iterator[PowerSaveCluster]:
    import shutil

    programs = BASE_ROOT / "powersave-programs"
    programs.mkdir(parents=True, exist_ok=True)
    spool = BASE_ROOT / "powersave-spool"
    calls = programs / "calls.log"
    for op in ("resume", "suspend", "resumefail"):
        shutil.copy(REPO / "examples" / "powersave" / f"{op}.sh", programs / f"{op}.sh")
    # the examples' settings file, pointing at this checkout's apf and a test spool
    apf = Path(sys.executable).parent / "apf"
    (programs / "powersave.env").write_text(
        f"APF={apf}\nAPF_POWERSAVE_SPOOL={spool}\nAPF_POWERSAVE_LOG={calls}\n"
    )
    script = _Script(
        "slurm-powersave",
        COMPONENTS / "slurm.sh",
        {
            "APF_SLURM_BASE": str(BASE_ROOT / "slurm-powersave"),
            "APF_SLURM_ACCOUNTING": "0",
            "APF_SLURM_NODES": "1",
            "APF_SLURM_CLOUD": "3",
            "APF_SLURM_CLUSTER": "apfpower",
            "APF_SLURM_RESUME_PROGRAM": str(programs / "resume.sh"),
            "APF_SLURM_SUSPEND_PROGRAM": str(programs / "suspend.sh"),
            "APF_SLURM_RESUMEFAIL_PROGRAM": str(programs / "resumefail.sh"),
            "APF_SLURM_SUSPEND_TIME": "10",
            "APF_SLURM_SUSPEND_TIMEOUT": "5",
            "APF_SLURM_RESUME_TIMEOUT": "30",
        },
    )
    info = script.start()
    cluster = PowerSaveCluster(
        _cluster(script, info),
        tuple(info["APF_SLURM_CLOUD_NODES"].split(",")),
        info["APF_SLURM_CLOUD_PARTITION"],
        spool,
        calls,
    )
    try:
        yield cluster
    finally:
        script.stop()


@pytest.fixture
def vmboot_powersave(ec2: EC2Server, slurm_powersave: PowerSaveCluster, tmp_path: Path) -> Iterator[VmBoot]:
    """vmboot.py for this test, no slots: each VM of factory ``cloudtest`` finds its node itself."""
    slurm_powersave.reset()
    try:
        with _vmboot(ec2, tmp_path, slurm_powersave.cluster.conf) as boot:
            yield boot
    finally:
        slurm_powersave.reset()
