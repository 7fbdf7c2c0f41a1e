"""Session fixtures for the real grid components (DESIGN.md section 9), registered from conftest.py.

* ``grid_ca``: a test CA, host and user certificates (``scripts/components/grid-ca.sh``)
* ``voms_server``: voms-server with its own MariaDB, VO ``testvo`` (``voms.sh``)
* ``myproxy_server``: myproxy-server holding Pilot User's credential (``myproxy.sh``)
* ``arc_ce``: A-REX 6.17 with its REST API on 127.0.0.1, Slurm LRMS on the session's Slurm
  cluster (``arc.sh``)

Like the other components: started on first use, shared by the session, stopped at its end when
this session started them, and a component that cannot start FAILS the test. State lives under
``$APF_TEST_BASE/grid``. Tests using them get the markers ``grid``, ``voms``, ``myproxy``, ``arc``.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import BASE_ROOT, COMPONENTS, SlurmCluster, _Script

GRID_BASE = BASE_ROOT / "grid"

_MARKERS = {
    "grid_ca": "grid",
    "voms_server": "voms",
    "voms_control": "voms",
    "myproxy_server": "myproxy",
    "arc_ce": "arc",
    "arc_control": "arc",
}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        for fixture, marker in _MARKERS.items():
            if fixture in getattr(item, "fixturenames", ()):
                item.add_marker(getattr(pytest.mark, marker))


def _grid_script(name: str, script: str, **env: str) -> _Script:
    return _Script(name, COMPONENTS / script, {"APF_GRID_BASE": str(GRID_BASE), **env})


@dataclass(frozen=True)
class GridCA:
    base: Path
    cadir: Path
    ca_cert: Path
    ca_key: Path
    hostcert: Path
    hostkey: Path
    usercert: Path
    userkey: Path
    user_dn: str
    host_dn: str

    def env(self) -> dict[str, str]:
        return {"X509_CERT_DIR": str(self.cadir)}

    def make_proxy(self, path: Path, minutes: int = 60) -> Path:
        """A plain RFC proxy of Pilot User (grid-proxy-init), independent of our code."""
        path.parent.mkdir(parents=True, exist_ok=True)
        proc = subprocess.run(
            ["grid-proxy-init", "-cert", str(self.usercert), "-key", str(self.userkey), "-out", str(path),
             "-valid", f"{minutes // 60}:{minutes % 60:02d}"],
            env={**os.environ, **self.env()}, capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        if proc.returncode != 0:
            pytest.fail(f"grid-proxy-init failed: {proc.stdout}\n{proc.stderr}")
        return path


_CA = _grid_script("grid-ca", "grid-ca.sh")


@pytest.fixture(scope="session")
def grid_ca() -> GridCA:
    info = _CA.start()
    return GridCA(
        base=Path(info["APF_GRID_BASE"]),
        cadir=Path(info["APF_GRID_CADIR"]),
        ca_cert=Path(info["APF_GRID_CA_CERT"]),
        ca_key=Path(info["APF_GRID_CA_KEY"]),
        hostcert=Path(info["APF_GRID_HOSTCERT"]),
        hostkey=Path(info["APF_GRID_HOSTKEY"]),
        usercert=Path(info["APF_GRID_USERCERT"]),
        userkey=Path(info["APF_GRID_USERKEY"]),
        user_dn=info["APF_GRID_USER_DN"],
        host_dn=info["APF_GRID_HOST_DN"],
    )


@dataclass(frozen=True)
class VomsServer:
    port: int
    vo: str
    fqan: str
    vomses: Path
    vomsdir: Path
    log: Path

    @property
    def vorole(self) -> str:
        return f"{self.vo}:{self.fqan}"


_VOMS = _grid_script("voms", "voms.sh")


@pytest.fixture(scope="session")
def voms_server(grid_ca: GridCA) -> Iterator[VomsServer]:
    info = _VOMS.start()
    try:
        yield VomsServer(
            port=int(info["APF_VOMS_PORT"]),
            vo=info["APF_VOMS_VO"],
            fqan=info["APF_VOMS_FQAN"],
            vomses=Path(info["APF_VOMS_VOMSES"]),
            vomsdir=Path(info["APF_VOMS_DIR"]),
            log=Path(info["APF_VOMS_LOG"]),
        )
    finally:
        _VOMS.stop()


class VomsControl:
    """Stop and restart the voms daemon alone (its database keeps running)."""

    def _call(self, action: str) -> None:
        proc = _VOMS.call(action, timeout=60)
        if proc.returncode != 0:
            pytest.fail(f"voms.sh {action} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")

    def stop(self) -> None:
        self._call("server-stop")

    def start(self) -> None:
        self._call("server-start")


@pytest.fixture
def voms_control(voms_server: VomsServer) -> Iterator[VomsControl]:
    control = VomsControl()
    try:
        yield control
    finally:
        control.start()  # a no-op when it runs


@dataclass(frozen=True)
class MyProxyServer:
    host: str
    port: int
    username: str
    passphrase_file: Path

    @property
    def passphrase(self) -> str:
        return self.passphrase_file.read_text().strip()


_MYPROXY = _grid_script("myproxy", "myproxy.sh")


@pytest.fixture(scope="session")
def myproxy_server(grid_ca: GridCA) -> Iterator[MyProxyServer]:
    info = _MYPROXY.start()
    try:
        yield MyProxyServer(
            host=info["APF_MYPROXY_HOST"],
            port=int(info["APF_MYPROXY_PORT"]),
            username=info["APF_MYPROXY_USER"],
            passphrase_file=Path(info["APF_MYPROXY_PASSFILE"]),
        )
    finally:
        _MYPROXY.stop()


@dataclass(frozen=True)
class ArcCE:
    url: str  # https://localhost:PORT/arex
    rest: str  # .../arex/rest/1.0
    port: int
    lrms: str
    queue: str
    base: Path
    mapped_user: str
    slurm: SlurmCluster | None


_ARC: _Script | None = None


@pytest.fixture(scope="session")
def arc_ce(grid_ca: GridCA, voms_server: VomsServer, slurm_cluster: SlurmCluster) -> Iterator[ArcCE]:
    """A-REX with the Slurm LRMS on the session's Slurm cluster (its partition is the CE queue).
    It also trusts the testvo VOMS attributes, so VOMS proxies are accepted."""
    global _ARC
    _ARC = _grid_script(
        "arc-ce",
        "arc.sh",
        APF_ARC_LRMS="slurm",
        APF_ARC_QUEUE=slurm_cluster.partition,
        SLURM_CONF=str(slurm_cluster.conf),
    )
    info = _ARC.start()
    try:
        yield ArcCE(
            url=info["APF_ARC_URL"],
            rest=info["APF_ARC_REST"],
            port=int(info["APF_ARC_PORT"]),
            lrms=info["APF_ARC_LRMS"],
            queue=info["APF_ARC_QUEUE"],
            base=Path(info["APF_ARC_BASE"]),
            mapped_user=info["APF_ARC_MAPPED_USER"],
            slurm=slurm_cluster,
        )
    finally:
        _ARC.stop()


class ArcControl:
    """Stop and restart A-REX's REST front end (the CE is unreachable; its jobs go on)."""

    def __init__(self, script: _Script) -> None:
        self.script = script

    def _call(self, action: str) -> None:
        proc = self.script.call(action, timeout=120)
        if proc.returncode != 0:
            pytest.fail(f"arc.sh {action} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")

    def stop(self) -> None:
        self._call("ce-stop")

    def start(self) -> None:
        self._call("ce-start")

    def close(self) -> None:
        """Refuse new jobs (allownew = no), as a full or draining CE does."""
        self._call("close")

    def open(self) -> None:
        self._call("open")


@pytest.fixture
def arc_control(arc_ce: ArcCE) -> Iterator[ArcControl]:
    assert _ARC is not None
    control = ArcControl(_ARC)
    try:
        yield control
    finally:
        control.start()
