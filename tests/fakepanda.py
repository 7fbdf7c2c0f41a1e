"""A local stand-in for a PanDA server: the statistics endpoints' wire format, byte for byte.

The bodies, status codes and content types reproduce what a real panda-server (1.0.4, and 0.8.1
for the legacy pickle) answered on loopback (``shared/reference/panda-api.md`` sections 3.5 and 5.2):

* ``GET /api/v1/statistics/active_job_stats_by_site`` with ``Accept: application/json``:
  200, ``Content-Type: text/plain``, ``json.dumps({"success": true, "message": "", "data": ...})``;
  without the JSON Accept header the body is the Python ``str()`` of the envelope (with
  ``Decimal('n')`` for counts read from the active-jobs summary table).
* empty data: ``success: false`` with the server's (misleading) database-failure message.
* ``POST``: 200 ``{"success": false, "message": "expecting GET, received POST", "data": null}``.
* unknown methods and ``/api/latest/...``: 403 ``ERROR : method <name> is forbidden``.
* ``version="0.8.1"``: ``/server/panda/getJobStatisticsPerSite`` answers a protocol-0 pickle
  (``b'(dp0\\n.'`` when empty; any parameter gives the server's HTTP 500); on ``1.0.4`` it is 403.

The job counts come from the test (``set_jobs``), so a test can drive ``activated`` up and down.
Faults: ``fault = "500" | "slow" | "truncated" | "truncated-nolength" | "close" | "repr"``; ``stop()`` makes
the port refuse connections and ``start()`` brings the server back on the same port.

Also here, for tests that need them: X509 helpers (a CA, a server certificate for 127.0.0.1 and a
client proxy-style PEM) and ``DemandView``, the engine's "last good snapshot until maxage" rule.
"""

from __future__ import annotations

import datetime as dt
import json
import pickle
import ssl
import threading
import urllib.parse
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from autopyfactory.model import Demand, WmsSnapshot
from autopyfactory.plugins.base import BackendError
from tests.helpers import serve, shut_down

# States the server reads from the active-jobs summary table vs. the defined-jobs table.
ACTIVE_STATES = ("activated", "sent", "starting", "running", "holding", "transferring", "merging")
DEFINED_STATES = ("defined", "assigned", "waiting", "pending", "throttled")
ZERO_FILLED = ("assigned", "activated", "running")
IGNORED = ("merging",)  # dropped by the server ("they break APF")

MSG_EMPTY = "Database failure getting the job statistics"
MSG_EMPTY_DETAILED = "Database failure getting the job statistics with resource_type and prodsourcelabel"
MSG_POST = "expecting GET, received POST"

# Recorded from a real panda-server 1.0.4 on loopback (invented fixture jobs, panda-api.md 3.5).
RECORDED_BY_SITE = (
    '{"success": true, "message": "", "data": {"BNL_TEST": {"activated": 10, "running": 4, '
    '"defined": 2, "assigned": 0}, "CERN_TEST": {"starting": 2, "assigned": 6, "activated": 0, "running": 0}}}'
)
RECORDED_DETAILED = (
    '{"success": true, "message": "", "data": {"BNL_TEST": {"SCORE": {"managed": {"running": 4, '
    '"activated": 7, "assigned": 0}}, "MCORE": {"user": {"activated": 3, "assigned": 0, "running": 0}, '
    '"managed": {"defined": 2, "assigned": 0, "activated": 0, "running": 0}}}, "CERN_TEST": {"SCORE": '
    '{"rc_test2": {"starting": 2, "assigned": 0, "activated": 0, "running": 0}, "managed": {"assigned": 6, '
    '"activated": 0, "running": 0}}}}}'
)
RECORDED_REPR = (
    "{'success': True, 'message': '', 'data': {'BNL_TEST': {'activated': Decimal('10'), 'running': "
    "Decimal('4'), 'defined': 2, 'assigned': 0}, 'CERN_TEST': {'starting': Decimal('2'), 'assigned': 6, "
    "'activated': 0, 'running': 0}}}"
)
RECORDED_EMPTY = '{"success": false, "message": "Database failure getting the job statistics", "data": {}}'
RECORDED_LEGACY = (
    b"(dp0\nVBNL_TEST\np1\n(dp2\nVactivated\np3\nI10\nsVrunning\np4\nI4\nsVdefined\np5\nI2\nsVassigned\n"
    b"p6\nI0\nssVCERN_TEST\np7\n(dp8\nVstarting\np9\nI2\nsVassigned\np10\nI6\nsVactivated\np11\nI0\n"
    b"sVrunning\np12\nI0\nss."
)
RECORDED_LEGACY_EMPTY = b"(dp0\n."
RECORDED_403_LEGACY = "ERROR : method getJobStatisticsPerSite is forbidden"

# The fixture jobs behind the recordings: (site, resource_type, prodSourceLabel, status, count)
FIXTURE_JOBS = (
    ("BNL_TEST", "SCORE", "managed", "activated", 7),
    ("BNL_TEST", "MCORE", "user", "activated", 3),
    ("BNL_TEST", "SCORE", "managed", "running", 4),
    ("BNL_TEST", "MCORE", "managed", "defined", 2),
    ("CERN_TEST", "SCORE", "rc_test2", "starting", 2),
    ("CERN_TEST", "SCORE", "managed", "merging", 5),
    ("CERN_TEST", "SCORE", "managed", "assigned", 6),
)


@dataclass
class Recorded:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    client_cert_subject: str | None = None


@dataclass
class TlsFiles:
    """Server side of HTTPS: certificate + key, and the CA that signed acceptable client certs."""

    certfile: str
    keyfile: str
    client_cafile: str | None = None


class FakePanda:
    def __init__(
        self, *, version: str = "1.0.4", token: str | None = None, tls: TlsFiles | None = None
    ) -> None:
        self.version = version
        self.legacy = version.startswith("0.")
        self.token = token
        self.tls = tls
        self.lock = threading.Lock()
        # (site, resource_type, label, status) -> count, insertion ordered like DB rows
        self.rows: dict[tuple[str, str, str, str], int] = {}
        self.site_status: dict[str, str] = {}
        self.site_type: dict[str, str] = {}
        self.raw_by_site: dict[str, Any] | None = None
        self.raw_detailed: dict[str, Any] | None = None
        self.fault: str | None = None
        # served instead of the computed legacy pickle (e.g. a malicious one)
        self.legacy_body: bytes | None = None
        self.slow_seconds = 30.0
        self.requests: list[Recorded] = []
        self._release = threading.Event()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.port = 0

    # -- data ----------------------------------------------------------------------------------

    def set_jobs(
        self, site: str, status: str, n: int, *, label: str = "managed", rtype: str = "SCORE"
    ) -> None:
        with self.lock:
            key = (site, rtype, label, status)
            if n > 0:
                self.rows[key] = n
            else:
                self.rows.pop(key, None)

    def set_activated(self, site: str, n: int, **kw: str) -> None:
        self.set_jobs(site, "activated", n, **kw)

    def load_fixture(self) -> None:
        for site, rtype, label, status, n in FIXTURE_JOBS:
            self.set_jobs(site, status, n, label=label, rtype=rtype)

    def clear(self) -> None:
        with self.lock:
            self.rows.clear()
            self.raw_by_site = self.raw_detailed = None

    def _ordered_rows(self) -> list[tuple[tuple[str, str, str, str], int]]:
        # active-table rows first, then defined-table rows, as the server runs the two queries
        items = list(self.rows.items())
        return [r for r in items if r[0][3] not in DEFINED_STATES] + [
            r for r in items if r[0][3] in DEFINED_STATES
        ]

    def by_site(self) -> dict[str, dict[str, int]]:
        with self.lock:
            if self.raw_by_site is not None:
                return self.raw_by_site
            out: dict[str, dict[str, int]] = {}
            for (site, _rt, _label, status), n in self._ordered_rows():
                if status in IGNORED:
                    continue
                states = out.setdefault(site, {})
                states[status] = states.get(status, 0) + n
            for states in out.values():
                for status in ZERO_FILLED:
                    states.setdefault(status, 0)
            return out

    def detailed(self) -> dict[str, dict[str, dict[str, dict[str, int]]]]:
        with self.lock:
            if self.raw_detailed is not None:
                return self.raw_detailed
            out: dict[str, dict[str, dict[str, dict[str, int]]]] = {}
            for (site, rtype, label, status), n in self._ordered_rows():
                if status in IGNORED:
                    continue
                states = out.setdefault(site, {}).setdefault(rtype, {}).setdefault(label, {})
                states[status] = states.get(status, 0) + n
            for by_rt in out.values():
                for by_label in by_rt.values():
                    for states in by_label.values():
                        for status in ZERO_FILLED:
                            states.setdefault(status, 0)
            return out

    def set_site(self, site: str, status: str, *, type: str = "production") -> None:
        with self.lock:
            self.site_status[site] = status
            self.site_type[site] = type

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> FakePanda:
        self._release.clear()
        server = ThreadingHTTPServer(("127.0.0.1", self.port), _Handler)
        server.fake = self  # type: ignore[attr-defined]
        if self.tls is not None:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(self.tls.certfile, self.tls.keyfile)
            if self.tls.client_cafile:
                ctx.load_verify_locations(cafile=self.tls.client_cafile)
                ctx.verify_mode = ssl.CERT_OPTIONAL
            server.socket = ctx.wrap_socket(server.socket, server_side=True)
        self.port = server.server_address[1]
        self._server = server
        self._thread = serve(server, "fakepanda")
        return self

    def stop(self) -> None:
        """Stop serving and close the port (connections are then refused)."""
        self._release.set()
        shut_down(self._server, self._thread)
        self._server = self._thread = None

    def __enter__(self) -> FakePanda:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def base(self) -> str:
        scheme = "https" if self.tls else "http"
        return f"{scheme}://127.0.0.1:{self.port}"

    @property
    def api_url(self) -> str:
        return f"{self.base}/api/v1"

    @property
    def legacy_url(self) -> str:
        return f"{self.base}/server/panda"

    def paths(self) -> list[str]:
        return [r.path for r in self.requests]


# -- serialisation, shared by the handler and the tests ------------------------------------------


def envelope_json(success: bool, message: str, data: Any) -> bytes:
    return json.dumps({"success": success, "message": message, "data": data}).encode()


def _with_decimals(data: Any, depth: int) -> Any:
    """Counts from the active-jobs summary table come back as Decimal in the repr body."""
    if depth == 0:
        return {s: (Decimal(n) if s in ACTIVE_STATES and n > 0 else n) for s, n in data.items()}
    return {k: _with_decimals(v, depth - 1) for k, v in data.items()}


def envelope_repr(success: bool, message: str, data: Any, depth: int | None) -> bytes:
    if depth is not None and isinstance(data, dict):
        data = {site: _with_decimals(v, depth) for site, v in data.items()}
    return str({"success": success, "message": message, "data": data}).encode()


def _fresh_strings(data: dict[str, dict[str, int]]) -> dict[str, dict[str, int]]:
    """Distinct string objects per row, as the server's DB rows are: pickle then memoises nothing
    across rows (no ``g`` opcodes), exactly like the recorded bytes."""

    def fresh(s: str) -> str:
        return "".join(list(s)) if len(s) > 1 else s

    return {fresh(site): {fresh(k): v for k, v in states.items()} for site, states in data.items()}


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "Apache"
    sys_version = ""

    def log_message(self, format: str, *args: Any) -> None:  # keep test output quiet
        pass

    @property
    def fake(self) -> FakePanda:
        return self.server.fake  # type: ignore[attr-defined]

    def do_GET(self) -> None:
        self._handle("GET")

    def do_POST(self) -> None:
        self._handle("POST")

    def _send(self, code: int, body: bytes, *, length: int | None = None) -> None:
        self.send_response(code)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body) if length is None else length))
        self.end_headers()
        self.wfile.write(body)

    def _handle(self, method: str) -> None:
        fake = self.fake
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        subject = None
        if isinstance(self.connection, ssl.SSLSocket):
            cert = self.connection.getpeercert()
            if cert:
                subject = ",".join(f"{k}={v}" for rdn in cert.get("subject", ()) for k, v in rdn)
        with fake.lock:
            fake.requests.append(Recorded(method, self.path, dict(self.headers.items()), body, subject))
        fault = fake.fault
        if fault == "slow":
            fake._release.wait(fake.slow_seconds)
        if fault == "500":
            return self._send(500, b"Internal Server Error")
        if fault == "close":
            self.close_connection = True
            return
        code, payload = self._route(method, body)
        if fault == "truncated":
            self.close_connection = True
            return self._send(code, payload[: len(payload) // 2], length=len(payload))
        if fault == "truncated-nolength":
            self.close_connection = True
            self.send_response(code)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(payload[: len(payload) // 2])
            return
        self._send(code, payload)

    def _route(self, method: str, body: bytes) -> tuple[int, bytes]:
        fake = self.fake
        parts = urllib.parse.urlsplit(self.path)
        query = urllib.parse.parse_qs(parts.query)
        segments = [s for s in parts.path.split("/") if s]
        wants_json = "application/json" in (self.headers.get("Accept") or "") or "application/json" in (
            self.headers.get("Content-Type") or ""
        )
        if fake.fault == "repr":  # e.g. a proxy in between that drops the Accept header
            wants_json = False
        auth = self.headers.get("Authorization")
        if fake.token is not None and auth is not None and auth != f"Bearer {fake.token}":
            return 403, b"ERROR : Token authentication failed. Invalid token"

        def answer(success: bool, message: str, data: Any, depth: int | None = None) -> tuple[int, bytes]:
            if wants_json:
                return 200, envelope_json(success, message, data)
            return 200, envelope_repr(success, message, data, depth)

        if segments[:2] == ["server", "panda"] and len(segments) == 3:
            name = segments[2]
            if name == "getJobStatisticsPerSite" and fake.legacy:
                params = dict(query)
                if method == "POST" and body:
                    params.update(urllib.parse.parse_qs(body.decode("latin-1")))
                if params:
                    first = next(iter(params))
                    return (
                        500,
                        f"getJobStatisticsPerSite() got an unexpected keyword argument '{first}'".encode(),
                    )
                if fake.legacy_body is not None:
                    return 200, fake.legacy_body
                return 200, pickle.dumps(_fresh_strings(fake.by_site()), protocol=0)
            return 403, f"ERROR : method {name} is forbidden".encode()
        if len(segments) == 4 and segments[0] == "api":
            _, version, module, name = segments
            if version != "v1":
                return 403, f"ERROR : method {name} is forbidden".encode()
            if (module, name) in (
                ("statistics", "active_job_stats_by_site"),
                ("statistics", "active_job_detailed_stats_by_site"),
                ("system", "is_alive"),
                ("metaconfig", "get_site_specs"),
            ):
                if method != "GET":
                    return answer(False, f"expecting GET, received {method}", None)
                if name == "is_alive":
                    return answer(True, "", None)
                if name == "get_site_specs":
                    wanted = (query.get("type") or ["analysis"])[0]
                    with fake.lock:
                        specs = {
                            site: {
                                "sitename": site,
                                "nickname": site,
                                "panda_resource": site,
                                "type": fake.site_type.get(site, "production"),
                                "status": status,
                            }
                            for site, status in fake.site_status.items()
                            if wanted == "all" or fake.site_type.get(site, "production") == wanted
                        }
                    return answer(True, "", specs)
                if name == "active_job_stats_by_site":
                    data = fake.by_site()
                    if data == {}:
                        return answer(False, MSG_EMPTY, {})
                    return answer(True, "", data, depth=0)
                data2 = fake.detailed()
                if data2 == {}:
                    return answer(False, MSG_EMPTY_DETAILED, {})
                return answer(True, "", data2, depth=2)
            return 403, f"ERROR : method {name} is forbidden".encode()
        return 404, b"Not Found"


# -- the engine's staleness rule, for plugin-level tests -----------------------------------------


@dataclass
class DemandView:
    """Keeps the last good snapshot; after ``maxage`` without a fresh one, demand is missing (None).

    This mirrors what the engine does with a poller's output (DESIGN.md: a queue whose inputs are
    older than maxage decides nothing; the Ready plugin then gives 0)."""

    maxage: float
    snapshot: WmsSnapshot | None = None
    errors: list[str] = field(default_factory=list)

    def poll(self, plugin: Any, now: float, keys: frozenset[str]) -> bool:
        try:
            self.snapshot = plugin.poll(now, keys)
            return True
        except BackendError as exc:
            self.errors.append(str(exc))
            return False

    def demand(self, key: str, now: float) -> Demand | None:
        if self.snapshot is None or now - self.snapshot.time > self.maxage:
            return None
        return self.snapshot.demands.get(key)


# -- X509 helpers (cryptography) -----------------------------------------------------------------


@dataclass
class CertFiles:
    ca_cert: str
    server_cert: str
    server_key: str
    proxy: str  # client certificate + key (+ CA) in one PEM, like a grid proxy file


def _name(cn: str) -> Any:
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "apf-test"),
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
        ]
    )


def make_cert(
    subject_cn: str,
    *,
    lifetime: dt.timedelta,
    issuer: tuple[Any, Any] | None = None,
    ca: bool = False,
    san_ip: str | None = None,
) -> tuple[Any, Any]:
    """A (certificate, private key) pair; self-signed unless ``issuer=(cert, key)``."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    issuer_name = issuer[0].subject if issuer else _name(subject_cn)
    signer = issuer[1] if issuer else key
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject_cn))
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + lifetime)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if san_ip:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(san_ip))]), critical=False
        )
    return builder.sign(signer, hashes.SHA256()), key


def pem(cert: Any = None, key: Any = None) -> bytes:
    from cryptography.hazmat.primitives import serialization

    out = b""
    if cert is not None:
        out += cert.public_bytes(serialization.Encoding.PEM)
    if key is not None:
        out += key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    return out


def make_cert_files(directory: Path, *, proxy_lifetime: dt.timedelta = dt.timedelta(days=4)) -> CertFiles:
    ca = make_cert("apf-test CA", lifetime=dt.timedelta(days=30), ca=True)
    server = make_cert("127.0.0.1", lifetime=dt.timedelta(days=30), issuer=ca, san_ip="127.0.0.1")
    client = make_cert("apf-test pilot factory", lifetime=proxy_lifetime, issuer=ca)
    files = CertFiles(
        ca_cert=str(directory / "ca.pem"),
        server_cert=str(directory / "server.pem"),
        server_key=str(directory / "server.key"),
        proxy=str(directory / "x509up"),
    )
    Path(files.ca_cert).write_bytes(pem(ca[0]))
    Path(files.server_cert).write_bytes(pem(server[0]))
    Path(files.server_key).write_bytes(pem(key=server[1]))
    proxy = Path(files.proxy)
    proxy.write_bytes(pem(client[0]) + pem(key=client[1]) + pem(ca[0]))
    proxy.chmod(0o600)
    return files


def write_proxy(path: Path, lifetime: dt.timedelta) -> Path:
    """A self-signed proxy-style PEM (cert + key) expiring after ``lifetime``."""
    cert, key = make_cert("apf-test proxy", lifetime=lifetime)
    path.write_bytes(pem(cert) + pem(key=key))
    path.chmod(0o600)
    return path


def factory_context(
    factory_id: str = "test-factory", auth: Mapping[str, Any] | None = None, **settings: Any
) -> Any:
    """A real FactoryContext with the given auth profiles ({name: (plugin, {key: value})})."""
    from autopyfactory.config.models import AuthProfile, FactorySettings
    from autopyfactory.plugins.base import FactoryContext, load

    profiles = {}
    for name, (plugin, keys) in (auth or {}).items():
        cls = load("auth", plugin)
        profiles[name] = AuthProfile(name=name, plugin=plugin, options=cls.Options.model_validate(keys))
    return FactoryContext(
        factory_id=factory_id,
        settings=FactorySettings.model_validate({"factoryId": factory_id, **settings}),
        auth_profiles=profiles,
    )


# -- fixture helper: in a test module,
#     @pytest.fixture
#     def fake_panda() -> Iterator[FakePanda]:
#         yield from serving(FakePanda())


def serving(fake: FakePanda) -> Iterator[FakePanda]:
    """Start ``fake``, yield it, stop it (the body of a pytest fixture)."""
    fake.start()
    try:
        yield fake
    finally:
        fake.stop()


def queue_config(tmp_path: Path, body: str, name: str = "Q1") -> Any:
    """Load one queues.conf section through the real loader."""
    from autopyfactory.config.loader import load_queue_sections

    path = tmp_path / f"queues-{name}.conf"
    path.write_text(f"[{name}]\n" + body)
    return load_queue_sections([str(path)])[name]


def panda_queue_section(url: str, wmsqueue: str, *extra: str, sched: str = "Ready") -> str:
    """The keys of a queue fed by the Panda plugin (Local batch plugins, so it loads anywhere)."""
    lines = [
        "enabled = True",
        f"wmsqueue = {wmsqueue}",
        "wmsstatusplugin = Panda",
        f"wmsstatus.panda.url = {url}",
        "batchstatusplugin = Local",
        "batchsubmitplugin = Local",
        f"schedplugin = {sched}",
        *extra,
    ]
    return "\n".join(lines) + "\n"


# -- as a process, for demos (scripts/demo-elastic.sh) -------------------------------------------


def main(argv: list[str] | None = None) -> int:
    """``python -m tests.fakepanda --jobs FILE [--port N] [--url-file PATH]``: serve until SIGTERM.

    The job counts come from FILE, JSON ``{"SITE": {"activated": 4, "running": 0}}``, re-read
    whenever it changes (write it atomically: a temporary file, then rename); the base URL of the
    API (``http://127.0.0.1:<port>/api/v1``) is printed and written to ``--url-file``."""
    import argparse
    import os
    import signal
    import time

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--jobs", required=True, type=Path)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--url-file", type=Path)
    args = parser.parse_args(argv)
    fake = FakePanda()
    fake.port = args.port
    fake.start()
    print(fake.api_url, flush=True)
    if args.url_file:
        args.url_file.write_text(fake.api_url + "\n")
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    signal.signal(signal.SIGINT, lambda *_: stopping.set())
    seen: float | None = None
    while not stopping.is_set():
        try:
            mtime = os.stat(args.jobs).st_mtime
            if mtime != seen:
                jobs = json.loads(args.jobs.read_text())
                fake.clear()
                for site, states in jobs.items():
                    for status, n in states.items():
                        fake.set_jobs(site, status, int(n))
                seen = mtime
                print(f"{time.strftime('%H:%M:%S')} jobs: {json.dumps(jobs)}", flush=True)
        except (OSError, ValueError) as exc:
            print(f"cannot read {args.jobs}: {exc}", flush=True)
        stopping.wait(0.5)
    fake.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
