"""Who may read the dashboard: loopback always; other clients with the bearer token (or the login
cookie) or a client certificate signed by web.tls.cafile (real TLS, checked with ``apf status
--url https://...``). Settings that cannot work are refused with the key named."""

from __future__ import annotations

import datetime as dt
import ipaddress
import logging
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from autopyfactory.config.loader import load_factory_config
from autopyfactory.engine.factory import Factory
from autopyfactory.engine.metrics import Metrics
from autopyfactory.web.config import WebConfigError, WebSettings
from autopyfactory.web.service import WebService
from tests.helpers import factory_conf, write
from tests.webhelpers import APF, get

pytestmark = pytest.mark.timeout(120)
TOKEN = "a-long-enough-bearer-token-0123456789"

QUEUES = """
[DEFAULT]
enabled = True
wmsstatusplugin = Sim
batchstatusplugin = Sim
batchsubmitplugin = Sim
schedplugin = Ready
[Q1]
wmsqueue = Q1
wmsstatus.sim.activated = 3
"""


def non_loopback_ipv4() -> str:
    """An address of this machine that is not loopback (requests from it are 'remote')."""
    out = subprocess.run(["hostname", "-I"], capture_output=True, text=True, check=False).stdout.split()
    for text in out:
        try:
            address = ipaddress.ip_address(text)
        except ValueError:
            continue
        if address.version == 4 and not address.is_loopback:
            return text
    pytest.fail(f"this machine has no non-loopback IPv4 address to test remote clients from ({out})")


def token_conf(tmp_path: Path) -> str:
    write(tmp_path / "token", TOKEN + "\n")
    return f"web.address = 0.0.0.0:0\nweb.tokenfile = {tmp_path / 'token'}\n"


def test_bearer_token_for_remote_clients_loopback_exempt(tmp_path: Path) -> None:
    conf = factory_conf(tmp_path, QUEUES, extra=token_conf(tmp_path))
    conf.write_text(conf.read_text().replace("metrics.address = 127.0.0.1:0\n", ""))
    factory = Factory(load_factory_config(str(conf)))
    factory.step(poll_all=True)
    svc = WebService(factory, Metrics(factory.factory_id).registry).start()
    try:
        assert svc.server is not None and svc.server.host == "0.0.0.0"
        port = svc.server.port
        remote = f"http://{non_loopback_ipv4()}:{port}"
        local = f"http://127.0.0.1:{port}"
        assert get(local + "/api/v1/status")[0] == 200  # loopback: no token needed
        status, headers, body = get(remote + "/api/v1/status")
        assert status == 401 and headers["www-authenticate"].startswith("Bearer")
        assert TOKEN.encode() not in body
        assert get(remote + "/metrics")[0] == 401
        assert get(remote + "/api/v1/status", headers={"Authorization": "Bearer wrong"})[0] == 401
        ok = get(remote + "/api/v1/status", headers={"Authorization": f"Bearer {TOKEN}"})
        assert ok[0] == 200 and b'"factory":"test-factory"' in ok[2]
        # a browser is sent to the login form, and its cookie is not the token
        status, _, body = get(remote + "/", headers={"Accept": "text/html"})  # follows the redirect
        assert status == 200 and b'name="token"' in body and b"Queues" not in body
        opener = urllib.request.build_opener(_NoRedirect())
        with pytest.raises(urllib.error.HTTPError) as info:
            opener.open(
                urllib.request.Request(remote + "/login", data=f"token={TOKEN}&next=/health".encode())
            )
        assert info.value.code == 303 and info.value.headers["location"] == "/health"
        cookie = info.value.headers["set-cookie"].split(";")[0]
        assert TOKEN not in cookie and "HttpOnly" in info.value.headers["set-cookie"]
        page = get(remote + "/health", headers={"Cookie": cookie})
        assert page[0] == 200 and b"Pollers" in page[2]
        bad = get(remote + "/health", headers={"Cookie": "apf_session=forged"})
        assert bad[0] == 401
        # the CLI reads a remote factory with the token file
        out = subprocess.run(
            [APF, "status", "--url", remote, "--token-file", str(tmp_path / "token"), "--json"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert out.returncode == 0 and '"Q1"' in out.stdout, out.stderr
        denied = subprocess.run([APF, "status", "--url", remote], capture_output=True, text=True, timeout=60)
        assert denied.returncode == 1 and "HTTP 401" in denied.stderr and "--token-file" in denied.stderr
    finally:
        svc.stop()
        factory.shutdown()


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None


def test_client_certificates_over_tls(tmp_path: Path) -> None:
    pki = make_pki(tmp_path)
    extra = (
        "web.address = 127.0.0.1:0\n"
        f"web.tls.certfile = {pki['server.pem']}\nweb.tls.keyfile = {pki['server.key']}\n"
        f"web.tls.cafile = {pki['ca.pem']}\n"
    )
    conf = factory_conf(tmp_path, QUEUES, extra=extra)
    conf.write_text(conf.read_text().replace("metrics.address = 127.0.0.1:0\n", ""))
    factory = Factory(load_factory_config(str(conf)))
    factory.step(poll_all=True)
    svc = WebService(factory, Metrics(factory.factory_id).registry).start()
    try:
        assert svc.url is not None and svc.url.startswith("https://127.0.0.1:")
        ok = subprocess.run(
            [APF, "status", "--url", svc.url, "--cacert", str(pki["ca.pem"]),
             "--cert", str(pki["client.pem"]), "--key", str(pki["client.key"]), "--json"],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert ok.returncode == 0 and '"Q1"' in ok.stdout, ok.stderr
        no_cert = subprocess.run(
            [APF, "status", "--url", svc.url, "--cacert", str(pki["ca.pem"])],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert (
            no_cert.returncode == 1 and "cannot reach" in no_cert.stderr and "Traceback" not in no_cert.stderr
        )
        untrusted = subprocess.run(
            [
                APF,
                "status",
                "--url",
                svc.url,
                "--cert",
                str(pki["client.pem"]),
                "--key",
                str(pki["client.key"]),
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert untrusted.returncode == 1 and "CERTIFICATE_VERIFY_FAILED" in untrusted.stderr
    finally:
        svc.stop()
        factory.shutdown()


def make_pki(tmp: Path) -> dict[str, Path]:
    """A test CA, a server certificate for 127.0.0.1 and a client certificate (cryptography)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = dt.datetime.now(dt.UTC)
    out: dict[str, Path] = {}

    def save(name: str, data: bytes) -> None:
        out[name] = tmp / name
        out[name].write_bytes(data)

    def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
        return key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "apf test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )
        .sign(ca_key, hashes.SHA256())
    )
    save("ca.pem", ca.public_bytes(serialization.Encoding.PEM))
    for name, usage, san in (
        ("server", ExtendedKeyUsageOID.SERVER_AUTH, [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
        ("client", ExtendedKeyUsageOID.CLIENT_AUTH, [x509.DNSName("operator.example")]),
    ):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(ca_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(san), critical=False)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .sign(ca_key, hashes.SHA256())
        )
        save(f"{name}.pem", cert.public_bytes(serialization.Encoding.PEM))
        save(f"{name}.key", key_pem(key))
    return out


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        (
            "web.address = 0.0.0.0:9642\n",
            "web.address = 0.0.0.0:9642 is not a loopback address: set web.tokenfile",
        ),
        ("web.tokenfile = /nonexistent/token\n", "web.tokenfile: cannot read /nonexistent/token"),
        ("web.tls.certfile = /etc/hostname\n", "web.tls.certfile and web.tls.keyfile: give both or neither"),
        ("logserver.enabled = True\n", "baseLogDir: required when logserver.enabled = True"),
    ],
)
def test_settings_that_cannot_work_name_their_key(tmp_path: Path, keys: str, message: str) -> None:
    conf = factory_conf(tmp_path, QUEUES, extra=keys)
    settings = load_factory_config(str(conf)).settings
    with pytest.raises(WebConfigError, match="^\\[Factory\\] " + message.replace(".", "\\.")):
        WebSettings.from_factory(settings)


def test_a_bad_web_setting_leaves_the_factory_running(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    conf = factory_conf(tmp_path, QUEUES, extra="web.address = 0.0.0.0:0\n")
    conf.write_text(conf.read_text().replace("metrics.address = 127.0.0.1:0\n", ""))
    factory = Factory(load_factory_config(str(conf)))
    with caplog.at_level(logging.ERROR, logger="autopyfactory.web"):
        svc = WebService(factory).start()
    try:
        assert svc.server is None
        assert (
            "is not a loopback address" in caplog.text and "continuing without the dashboard" in caplog.text
        )
        assert factory.step(poll_all=True)[0].decision.n == 3
    finally:
        svc.stop()
        factory.shutdown()


def test_bad_addresses_are_config_errors_with_file_and_line(tmp_path: Path) -> None:
    conf = factory_conf(tmp_path, QUEUES, extra="web.address = 127.0.0.1:http\n")
    out = subprocess.run([APF, "check", "--conf", str(conf)], capture_output=True, text=True, timeout=60)
    assert out.returncode != 0
    assert "autopyfactory.conf:" in out.stderr + out.stdout and "web.address" in out.stderr + out.stdout
    assert "bad port" in out.stderr + out.stdout


def test_old_metrics_address_still_names_the_dashboard_address(tmp_path: Path) -> None:
    conf = factory_conf(tmp_path, QUEUES)  # sets metrics.address = 127.0.0.1:0
    settings = load_factory_config(str(conf)).settings
    assert settings.web_listen == "127.0.0.1:0"
    conf.write_text(conf.read_text() + "web.address = None\n")
    assert load_factory_config(str(conf)).settings.web_listen is None
    conf.write_text(
        conf.read_text().replace("metrics.address = 127.0.0.1:0\n", "").replace("web.address = None\n", "")
    )
    assert load_factory_config(str(conf)).settings.web_listen == "127.0.0.1:9642"
