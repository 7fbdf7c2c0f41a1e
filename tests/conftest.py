"""Session fixtures for the real components tests run against (DESIGN.md section 9).

Each component is started by its script in ``scripts/components/`` the first time a test asks for
it, and stopped at the end of the session, only if this session started it. A component that
cannot start FAILS the test with the script's output; nothing is skipped silently.

State lives under ``$APF_TEST_BASE`` (default ``/tmp/apf-test-<pid>``), so two test sessions on
one machine never share a cluster. Point ``APF_TEST_BASE`` at a fixed directory to keep the
components running between sessions while developing: a component that already runs there is
reused and left running.

Tests that use a component fixture get its marker automatically (``slurm``, ``ssh``, ``postgres``,
``ec2``), so ``-m 'not slurm'`` deselects them.
"""

from __future__ import annotations

import os
import subprocess
import time
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pytest

# session fixtures of further components, each in its own module: the grid (test CA, VOMS,
# MyProxy, A-REX) and the clouds (moto with faults, the OpenStack stub, Slurm with FUTURE slots,
# vmboot)
pytest_plugins = ["tests.components_grid", "tests.components_cloud"]

REPO = Path(__file__).resolve().parents[1]
COMPONENTS = REPO / "scripts" / "components"
BASE_ROOT = Path(os.environ.get("APF_TEST_BASE") or f"/tmp/apf-test-{os.getpid()}")

# fixture name -> marker it implies
_MARKERS = {
    "slurm_cluster": "slurm",
    "slurm_cluster_noacct": "slurm",
    "slurmctld_control": "slurm",
    "ssh_target": "ssh",
    "postgres_url": "postgres",
    "postgres_server": "postgres",
    "moto_endpoint": "ec2",
}

_start_times: list[tuple[str, float]] = []


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        for fixture, marker in _MARKERS.items():
            if fixture in getattr(item, "fixturenames", ()):
                item.add_marker(getattr(pytest.mark, marker))


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:  # type: ignore[no-untyped-def]
    if _start_times:
        parts = ", ".join(f"{name} {secs:.2f} s" for name, secs in _start_times)
        terminalreporter.write_line(f"components started: {parts}")


# ---------------------------------------------------------------------------------------------
# running the scripts


@dataclass
class _Script:
    """One component script bound to its environment (base dir, ports)."""

    name: str
    script: Path
    env: dict[str, str]
    started_here: bool = False

    def call(self, action: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["bash", str(self.script), action],
            env={**os.environ, **self.env},
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def start(self) -> dict[str, str]:
        """Start (or reuse) the component; fail the requesting test with the script's output."""
        if self.call("status", timeout=60).returncode != 0:
            t0 = time.monotonic()
            try:
                proc = self.call("start")
            except subprocess.TimeoutExpired as exc:
                pytest.fail(f"{self.name}: {self.script.name} start timed out:\n{exc.stdout}\n{exc.stderr}")
            if proc.returncode != 0:
                # stop what may have half started, then report
                self.call("stop", timeout=120)
                pytest.fail(
                    f"{self.name} did not start ({self.script.name} start exited {proc.returncode}):\n"
                    f"--- stdout ---\n{proc.stdout}\n--- stderr ---\n{proc.stderr}",
                    pytrace=False,
                )
            self.started_here = True
            _start_times.append((self.name, time.monotonic() - t0))
        env = self.call("env", timeout=30)
        if env.returncode != 0:
            pytest.fail(f"{self.name}: cannot read its env file:\n{env.stdout}\n{env.stderr}")
        return _parse_env(env.stdout)

    def stop(self) -> None:
        if self.started_here:
            proc = self.call("stop", timeout=300)
            if proc.returncode != 0:
                print(f"warning: {self.name} stop exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")


def _parse_env(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and key.isidentifier():
            out[key] = value
    return out


# ---------------------------------------------------------------------------------------------
# Slurm


@dataclass(frozen=True)
class SlurmCluster:
    """A running Slurm cluster: pass ``env`` to subprocesses (or use ``run``) to reach it."""

    name: str
    base: Path
    conf: Path
    partition: str
    nodes: tuple[str, ...]
    accounting: bool
    ctld_port: int
    script: Path
    env: Mapping[str, str] = field(default_factory=dict)

    def run(
        self, *argv: str, input: str | None = None, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        """Run a Slurm command (sinfo, squeue, scontrol...) against this cluster, as root."""
        return subprocess.run(
            list(argv),
            input=input,
            env={**os.environ, **self.env},
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def node_state(self, node: str) -> str:
        """The node's State= value from ``scontrol show node`` (e.g. IDLE, MIXED+DRAIN)."""
        out = self.run("scontrol", "show", "node", node).stdout
        for word in out.split():
            if word.startswith("State="):
                return word[len("State=") :]
        return ""

    def resume_all(self) -> None:
        """Undo drains made by a test."""
        self.run("scontrol", "update", f"nodename={','.join(self.nodes)}", "state=RESUME")


def _slurm_script(name: str, accounting: bool, nodes: int) -> _Script:
    base = BASE_ROOT / name
    return _Script(
        name,
        COMPONENTS / "slurm.sh",
        {
            "APF_SLURM_BASE": str(base),
            "APF_SLURM_ACCOUNTING": "1" if accounting else "0",
            "APF_SLURM_NODES": str(nodes),
            "APF_SLURM_CLUSTER": "apfci" if accounting else "apfnoacct",
        },
    )


def _cluster(script: _Script, info: dict[str, str]) -> SlurmCluster:
    return SlurmCluster(
        name=info["APF_SLURM_CLUSTER"],
        base=Path(info["APF_SLURM_BASE"]),
        conf=Path(info["SLURM_CONF"]),
        partition=info["APF_SLURM_PARTITION"],
        nodes=tuple(info["APF_SLURM_NODES"].split(",")),
        accounting=info["APF_SLURM_ACCOUNTING"] == "1",
        ctld_port=int(info["APF_SLURM_CTLD_PORT"]),
        script=script.script,
        env={"SLURM_CONF": info["SLURM_CONF"]},
    )


# created on first use, so a session that needs no Slurm starts none
_SLURM_MAIN = _slurm_script("slurm", accounting=True, nodes=3)


@pytest.fixture(scope="session")
def slurm_cluster() -> Iterator[SlurmCluster]:
    """The 3-node cluster with accounting (sacct works). While it is up, ``SLURM_CONF`` in this
    process's environment points at it, so local Slurm commands and the factory reach it."""
    info = _SLURM_MAIN.start()
    cluster = _cluster(_SLURM_MAIN, info)
    old = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = str(cluster.conf)
    try:
        yield cluster
    finally:
        if old is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = old
        _SLURM_MAIN.stop()


@pytest.fixture(scope="session")
def slurm_cluster_noacct() -> Iterator[SlurmCluster]:
    """A second, 1-node cluster with accounting off (sacct fails). Reach it through its ``env``."""
    script = _slurm_script("slurm-noacct", accounting=False, nodes=1)
    cluster = _cluster(script, script.start())
    try:
        yield cluster
    finally:
        script.stop()


class SlurmctldControl:
    """Stop and restart the main cluster's slurmctld alone (jobs and nodes keep running)."""

    def __init__(self, cluster: SlurmCluster) -> None:
        self.cluster = cluster

    def _call(self, action: str) -> None:
        proc = _SLURM_MAIN.call(action, timeout=120)
        if proc.returncode != 0:
            pytest.fail(f"slurm.sh {action} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")

    def stop(self) -> None:
        self._call("ctld-stop")

    def start(self) -> None:
        self._call("ctld-start")

    def running(self) -> bool:
        return self.cluster.run("scontrol", "ping").returncode == 0 and "UP" in (
            self.cluster.run("scontrol", "ping").stdout
        )


@pytest.fixture
def slurmctld_control(slurm_cluster: SlurmCluster) -> Iterator[SlurmctldControl]:
    control = SlurmctldControl(slurm_cluster)
    try:
        yield control
    finally:
        control.start()  # a no-op when it runs


# ---------------------------------------------------------------------------------------------
# SSH


@dataclass(frozen=True)
class SSHTarget:
    """sshd on 127.0.0.1 for a non-root user with key auth; ``key`` and ``known_hosts`` are files."""

    host: str
    port: int
    user: str
    key: Path
    known_hosts: Path
    authorized_keys: Path
    workdir: Path
    base: Path

    @property
    def name(self) -> str:
        return f"{self.user}@{self.host}:{self.port}"

    def authorize(self, public_key_line: str) -> None:
        """Let another public key log in (tests make their own keys, e.g. with a passphrase)."""
        with self.authorized_keys.open("a") as fh:
            fh.write(public_key_line.strip() + "\n")

    def ssh(self, command: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """Run a shell command as the user through the OpenSSH client (independent of our code)."""
        return subprocess.run(
            [
                "ssh", "-i", str(self.key), "-p", str(self.port),
                "-o", f"UserKnownHostsFile={self.known_hosts}", "-o", "StrictHostKeyChecking=yes",
                "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes",
                f"{self.user}@{self.host}", command,
            ],
            capture_output=True, text=True, timeout=timeout, check=False,
        )  # fmt: skip


@pytest.fixture(scope="session")
def ssh_target() -> Iterator[SSHTarget]:
    """sshd for ``apfuser``; its sessions see the main Slurm cluster's SLURM_CONF (started or not)."""
    script = _Script(
        "sshd",
        COMPONENTS / "sshd.sh",
        {
            "APF_SSH_BASE": str(BASE_ROOT / "ssh"),
            "APF_SLURM_CONF": str(BASE_ROOT / "slurm" / "slurm.conf"),
        },
    )
    info = script.start()
    target = SSHTarget(
        host=info["APF_SSH_HOST"],
        port=int(info["APF_SSH_PORT"]),
        user=info["APF_SSH_USER"],
        key=Path(info["APF_SSH_KEY"]),
        known_hosts=Path(info["APF_SSH_KNOWN_HOSTS"]),
        authorized_keys=Path(info["APF_SSH_AUTHORIZED_KEYS"]),
        workdir=Path(info["APF_SSH_WORKDIR"]),
        base=Path(info["APF_SSH_BASE"]),
    )
    try:
        yield target
    finally:
        script.stop()


# ---------------------------------------------------------------------------------------------
# PostgreSQL


@dataclass(frozen=True)
class PostgresServer:
    host: str
    port: int
    user: str
    database: str

    @property
    def url(self) -> str:
        """SQLAlchemy URL (psycopg 3 driver)."""
        return f"postgresql+psycopg://{self.user}@{self.host}:{self.port}/{self.database}"

    @property
    def libpq_url(self) -> str:
        return f"postgresql://{self.user}@{self.host}:{self.port}/{self.database}"


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    script = _Script("postgres", COMPONENTS / "postgres.sh", {"APF_PG_BASE": str(BASE_ROOT / "pg")})
    info = script.start()
    try:
        yield PostgresServer(
            info["APF_PG_HOST"], int(info["APF_PG_PORT"]), info["APF_PG_USER"], info["APF_PG_DB"]
        )
    finally:
        script.stop()


@pytest.fixture(scope="session")
def postgres_url(postgres_server: PostgresServer) -> str:
    """SQLAlchemy URL of the throwaway database ``apf`` (``postgresql+psycopg://...``)."""
    return postgres_server.url


# ---------------------------------------------------------------------------------------------
# moto (EC2)


@dataclass(frozen=True)
class MotoEndpoint:
    url: str
    region: str = "us-east-1"
    access_key: str = "testing"
    secret_key: str = "testing"

    def reset(self) -> None:
        """Forget every resource (moto's reset API)."""
        req = urllib.request.Request(f"{self.url}/moto-api/reset", method="POST", data=b"")
        with urllib.request.urlopen(req, timeout=30):
            pass

    def client(self, service: str = "ec2"):  # type: ignore[no-untyped-def]
        import boto3

        return boto3.client(
            service,
            endpoint_url=self.url,
            region_name=self.region,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
        )


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[MotoEndpoint]:
    script = _Script("moto", COMPONENTS / "moto.sh", {"APF_MOTO_BASE": str(BASE_ROOT / "moto")})
    info = script.start()
    try:
        yield MotoEndpoint(info["APF_MOTO_URL"])
    finally:
        script.stop()


def pytest_unconfigure(config: pytest.Config) -> None:
    # remove the per-session state dir (never a directory the user named in APF_TEST_BASE)
    if not os.environ.get("APF_TEST_BASE") and BASE_ROOT.is_dir():
        import shutil

        shutil.rmtree(BASE_ROOT, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# building queues and factory contexts the way the config loader does (typed, validated keys)


def build_queue(
    name: str,
    keys: Mapping[str, str],
    *,
    submit: str,
    status: str | None = None,
) -> object:
    """A ``QueueConfig`` from queues.conf-style keys, validated through the plugins' Options.

    ``submit``/``status`` are plugin names (``Slurm``); a bad key fails the test with the
    problems, exactly as ``apf check`` would report them.
    """
    from autopyfactory.config.models import PluginSpec, QueueConfig, QueueSettings
    from autopyfactory.config.validate import options_from_keys
    from autopyfactory.plugins import base

    status = status or submit
    section = {
        "enabled": "True",
        "batchsubmitplugin": submit,
        "batchstatusplugin": status,
        "schedplugin": "Null",
        **keys,
    }
    generic = {k: v for k, v in section.items() if not k.startswith(("batchsubmit.", "batchstatus."))}
    settings = QueueSettings.model_validate(generic)
    specs = {}
    for kind, plugin in (("batchsubmit", submit), ("batchstatus", status)):
        cls = base.load(kind, plugin)
        options, problems = options_from_keys(cls, section, section_name=name)
        if problems:
            pytest.fail("\n".join(str(p) for p in problems))
        specs[kind] = PluginSpec(kind, plugin, cls, options)
    return QueueConfig(
        name=name,
        settings=settings,
        wmsstatus=None,
        batchstatus=specs["batchstatus"],
        batchsubmit=specs["batchsubmit"],
        sched=(),
        raw=dict(section),
    )


def build_factory(factory_id: str = "apftest", auth: Mapping[str, tuple[str, Mapping[str, str]]] | None = None,
                  **settings: str) -> object:  # fmt: skip
    """A ``FactoryContext``; ``auth`` maps profile name -> (plugin, auth.conf keys)."""
    from autopyfactory.config.models import AuthProfile, FactorySettings
    from autopyfactory.config.validate import options_from_keys
    from autopyfactory.plugins import base

    profiles = {}
    for name, (plugin, keys) in (auth or {}).items():
        cls = base.load("auth", plugin)
        options, problems = options_from_keys(cls, keys, section_name=name)
        if problems:
            pytest.fail("\n".join(str(p) for p in problems))
        profiles[name] = AuthProfile(name=name, plugin=plugin, options=options)
    fs = FactorySettings.model_validate({"factoryId": factory_id, **settings})
    return base.FactoryContext(factory_id=factory_id, settings=fs, auth_profiles=profiles)


@pytest.fixture
def make_queue():  # type: ignore[no-untyped-def]
    """``make_queue(name, keys, submit="Slurm")`` -> QueueConfig (see ``build_queue``)."""
    return build_queue


@pytest.fixture
def make_factory():  # type: ignore[no-untyped-def]
    """``make_factory(factory_id, auth={...}, **[Factory] keys)`` -> FactoryContext."""
    return build_factory


@pytest.fixture
def tmp(tmp_path: Path) -> Iterator[Path]:
    """``tmp_path`` for tests that run Local pilots: every pilot started under it is killed after."""
    import signal

    yield tmp_path
    for pid_file in (tmp_path / "state" / "local").glob("*/*/*/pid"):
        try:
            os.killpg(int(pid_file.read_text()), signal.SIGKILL)
        except (ProcessLookupError, ValueError, PermissionError):
            pass
