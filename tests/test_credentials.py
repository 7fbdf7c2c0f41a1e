"""The credential manager against the real tools and servers: voms-proxy-init and arcproxy with
the real VOMS server, myproxy-logon with the real MyProxy server, token refresh commands, SSH keys
made with ssh-keygen. Proxies are cross-checked with voms-proxy-info (independent of our parser)."""

from __future__ import annotations

import base64
import json
import os
import socket
import stat
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest

from autopyfactory.config.loader import load_factory_config
from autopyfactory.credentials import CredentialHealth, CredentialManager, HealthState, gate
from autopyfactory.credentials.proxy import (
    ProxyError,
    has_fqan,
    inspect_proxy,
    normalize_fqan,
    read_proxy,
    split_vorole,
)
from autopyfactory.credentials.token import jwt_expiry
from autopyfactory.credentials.x509 import X509Credential, valid_hm
from conftest import build_factory
from tests.helpers import factory_conf, wait_for

pytestmark = pytest.mark.timeout(180)


# ---------------------------------------------------------------------------------------------
# helpers


def x509_keys(grid_ca, voms_server, proxyfile: Path, **extra: str) -> dict[str, str]:  # type: ignore[no-untyped-def]
    keys = {
        "x509.proxyfile": str(proxyfile),
        "x509.usercert": str(grid_ca.usercert),
        "x509.userkey": str(grid_ca.userkey),
        "x509.cadir": str(grid_ca.cadir),
    }
    if voms_server is not None:
        keys |= {
            "x509.vorole": voms_server.vorole,
            "x509.vomsdir": str(voms_server.vomsdir),
            "x509.vomses": str(voms_server.vomses),
        }
    keys.update(extra)
    return keys


def manager_for(
    tmp_path: Path,
    auth: dict,  # type: ignore[type-arg]
    events: list | None = None,  # type: ignore[type-arg]
    period: float = 3600.0,
) -> CredentialManager:
    factory = build_factory("credtest", auth=auth)
    record = (lambda n, o, h: events.append((n, h))) if events is not None else None
    return CredentialManager(
        factory.auth_profiles,  # type: ignore[attr-defined]
        factory_id="credtest",
        state_dir=tmp_path / "state",
        on_change=record,
        period=period,
    )


def voms_proxy_info(path: Path, *args: str, env: dict[str, str] | None = None) -> str:
    proc = subprocess.run(
        ["voms-proxy-info", "-file", str(path), *args],
        capture_output=True, text=True, timeout=30, check=False, env={**os.environ, **(env or {})},
    )  # fmt: skip
    return proc.stdout


def make_jwt(exp: float, subject: str = "pilot") -> str:
    def part(obj: object) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'none', 'typ': 'JWT'})}.{part({'sub': subject, 'exp': int(exp)})}.c2ln"


# ---------------------------------------------------------------------------------------------
# pure parts


def _health(
    state: HealthState, expires_at: float | None = None, error: str | None = None
) -> CredentialHealth:
    return CredentialHealth("?", "X509", state, checked_at=0.0, expires_at=expires_at, error=error)


def test_gate_stops_on_failing_or_expired_credentials_only() -> None:
    now = 1000.0
    healths = {
        name: replace(h, name=name)
        for name, h in {
            "good": _health(HealthState.OK, expires_at=now + 3600),
            "soon": _health(HealthState.EXPIRING, expires_at=now + 60),
            "renewing": _health(HealthState.RENEWING, expires_at=now + 60),
            "broken": _health(
                HealthState.FAILING, expires_at=now + 600, error="voms-proxy-init failed (exit 1)"
            ),
            "gone": _health(HealthState.EXPIRED, error="/x/proxy does not exist"),
            "ended": _health(HealthState.OK, expires_at=now - 5),  # time ran out since the last check
            "key": _health(HealthState.OK),  # no end: SSH keys
        }.items()
    }
    assert gate(["good", "soon", "renewing", "key", "unmanaged"], healths, now) is None
    reason = gate(["good", "broken"], healths, now)
    assert reason is not None and "broken" in reason and "failing" in reason and "voms-proxy-init" in reason
    assert "10m00s left" in reason
    assert "does not exist" in (gate(["gone"], healths, now) or "")
    assert "expired 5s ago" in (gate(["ended"], healths, now) or "")
    both = gate(["broken", "gone", "broken"], healths, now) or ""
    assert both.count("broken") == 1 and "gone" in both


def test_fqan_and_vorole_matching() -> None:
    assert split_vorole("atlas:/atlas/Role=production") == ("atlas", "/atlas/Role=production")
    assert split_vorole("atlas") == ("atlas", "/atlas")
    assert normalize_fqan("/atlas/Role=NULL/Capability=NULL") == "/atlas"
    assert normalize_fqan("/atlas/Role=pilot/Capability=NULL") == "/atlas/Role=pilot"
    assert valid_hm(60) == "0:01" and valid_hm(5400) == "1:30" and valid_hm(10) == "0:01"
    assert valid_hm(604800) == "168:00"


def test_jwt_expiry() -> None:
    assert jwt_expiry(make_jwt(1234567890)) == 1234567890.0
    assert jwt_expiry("opaque-token-value") is None
    assert jwt_expiry("a.b.c") is None


def test_renewal_commands_are_data(tmp_path: Path) -> None:
    """The argv each flavour runs: no shell, the passphrase on stdin, never in argv."""
    factory = build_factory(
        "cmd",
        auth={
            "voms": ("X509", {
                "x509.proxyfile": str(tmp_path / "p"), "x509.vorole": "testvo:/testvo/Role=pilot",
                "x509.renew": "True", "x509.lifetime": "7200", "x509.minlife": "600",
                "x509.usercert": "/c.pem", "x509.userkey": "/k.pem", "x509.voms.args": "-rfc -bits 2048",
            }),
            "mp": ("X509", {
                "x509.proxyfile": str(tmp_path / "q"), "x509.flavor": "myproxy", "x509.lifetime": "7200",
                "x509.minlife": "600", "x509.myproxy_hostname": "mp.example.org:7513",
                "x509.myproxy_username": "u", "x509.myproxy_passphrase": "s3cret-phrase",
            }),
        },
    )  # fmt: skip
    voms = X509Credential("voms", factory.auth_profiles["voms"].options, None)  # type: ignore[attr-defined,arg-type]
    (step,) = voms.renew_commands(tmp_path / "out")
    assert step.argv[:6] == (
        "voms-proxy-init",
        "-ignorewarn",
        "-valid",
        "2:00",
        "-out",
        str(tmp_path / "out"),
    )
    assert "-noregen" not in step.argv and step.argv[-2:] == ("-bits", "2048")
    assert step.argv[step.argv.index("-voms") :][:2] == ("-voms", "testvo:/testvo/Role=pilot")
    mp = X509Credential("mp", factory.auth_profiles["mp"].options, None)  # type: ignore[attr-defined,arg-type]
    (step,) = mp.renew_commands(tmp_path / "out")
    assert step.argv[:5] == ("myproxy-logon", "-s", "mp.example.org", "-p", "7513")
    assert "s3cret-phrase" not in " ".join(step.argv) and step.stdin == b"s3cret-phrase\n"
    assert "-S" in step.argv


def test_bad_x509_profiles_are_config_errors(tmp_path: Path) -> None:
    from autopyfactory.config.validate import options_from_keys
    from autopyfactory.plugins import base

    cls = base.load("auth", "X509")
    _, problems = options_from_keys(
        cls, {"x509.proxyfile": "/p", "x509.renew": "True", "x509.lifetime": "100", "x509.minlife": "200"}
    )
    assert problems and "must be larger than x509.minlife" in problems[0].message
    _, problems = options_from_keys(
        cls, {"x509.proxyfile": "/p", "x509.flavor": "myproxy", "x509.myproxy_passphrase": "hunter2hunter2"}
    )
    assert problems and "myproxy_hostname" in problems[0].message
    assert all("hunter2hunter2" not in str(p) for p in problems)


# ---------------------------------------------------------------------------------------------
# proxies made by the real tools


def test_proxy_parsing_matches_voms_proxy_info(grid_ca, voms_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    env = {
        **grid_ca.env(),
        "X509_VOMS_DIR": str(voms_server.vomsdir),
        "VOMS_USERCONF": str(voms_server.vomses),
    }
    path = tmp_path / "voms.pem"
    proc = subprocess.run(
        ["voms-proxy-init", "-voms", voms_server.vorole, "-cert", str(grid_ca.usercert),
         "-key", str(grid_ca.userkey), "-out", str(path), "-valid", "0:30"],
        capture_output=True, text=True, timeout=60, check=False, env={**os.environ, **env},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    info = inspect_proxy(path)
    now = time.time()
    assert info.identity == grid_ca.user_dn and info.rfc3820 and info.chain_length == 2
    assert info.voms[0].vo == "testvo" and info.voms[0].uri == f"localhost:{voms_server.port}"
    tool_fqans = voms_proxy_info(path, "-fqan", env=env).split()
    assert list(info.fqans) == tool_fqans
    assert has_fqan(info, voms_server.vorole) and not has_fqan(info, "testvo:/testvo/Role=admin")
    tool_ac_left = int(voms_proxy_info(path, "-actimeleft", env=env).strip())
    assert abs(info.ac_time_left(now) - tool_ac_left) <= 3  # type: ignore[operator]
    tool_left = int(voms_proxy_info(path, "-timeleft", env=env).strip())
    assert abs(info.time_left(now) - tool_left) <= 3

    plain = read_proxy(grid_ca.make_proxy(tmp_path / "plain.pem").read_bytes())
    assert plain.voms == () and plain.ac_time_left(now) is None
    with pytest.raises(ProxyError, match="private key"):
        read_proxy(grid_ca.usercert.read_bytes())  # a certificate without its key
    with pytest.raises(ProxyError, match="does not exist"):
        inspect_proxy(tmp_path / "missing.pem")


# ---------------------------------------------------------------------------------------------
# voms flavour with the real VOMS server


@pytest.mark.timeout(240)
def test_voms_profile_renews_before_the_attributes_expire_and_recovers_from_a_voms_outage(
    grid_ca, voms_server, voms_control, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    proxy = tmp_path / "proxies" / "pilot.pem"
    keys = x509_keys(
        grid_ca, voms_server, proxy,
        **{"x509.renew": "True", "x509.lifetime": "60", "x509.minlife": "50", "x509.checktime": "5",
           "x509.owner": "nobody"},
    )  # fmt: skip
    events: list[tuple[str, CredentialHealth]] = []
    manager = manager_for(tmp_path, {"pilot": ("X509", keys)}, events)
    manager.start()
    try:
        assert manager.health("pilot").state in (HealthState.EXPIRED, HealthState.RENEWING, HealthState.OK)
        wait_for(lambda: manager.health("pilot").state is HealthState.OK, 30, "the first proxy")
        serials = set()
        # two renewals: at every sample the proxy on disk is valid and carries the role
        deadline = time.monotonic() + 60
        while len(serials) < 3 and time.monotonic() < deadline:
            info = inspect_proxy(proxy)
            now = time.time()
            assert info.ac_time_left(now) > 0, "the attributes expired before renewal"  # type: ignore[operator]
            assert has_fqan(info, voms_server.vorole)
            serials.add(info.serial)
            assert manager.gate(["pilot"]) is None
            time.sleep(0.5)
        assert len(serials) >= 3, f"expected two renewals within 60 s, saw {len(serials) - 1}"
        st = proxy.stat()
        assert stat.S_IMODE(st.st_mode) == 0o600 and st.st_uid == 65534  # x509.owner = nobody
        env = {**grid_ca.env(), "X509_VOMS_DIR": str(voms_server.vomsdir)}
        assert voms_server.fqan + "/Capability=NULL" in voms_proxy_info(proxy, "-fqan", env=env).split()
        assert any(h.renewed_at for n, h in events)
        assert not list(proxy.parent.glob(".*.new")), "temporary files left behind"

        voms_control.stop()
        failing = wait_for(
            lambda: (
                manager.health("pilot").state in (HealthState.FAILING, HealthState.EXPIRED)
                and manager.health("pilot")
            ),
            60,
            "the profile to fail with VOMS down",
        )
        assert "voms-proxy-init failed" in (failing.error or "")  # type: ignore[union-attr]
        reason = manager.gate(["pilot"])
        assert reason is not None and "pilot" in reason and "voms-proxy-init failed" in reason
        # the status file shows it for apf status
        doc = json.loads((tmp_path / "state" / "credentials-credtest.json").read_text())
        assert doc["profiles"]["pilot"]["state"] in ("failing", "expired")

        voms_control.start()
        wait_for(lambda: manager.health("pilot").state is HealthState.OK, 60, "recovery after VOMS is back")
        assert manager.gate(["pilot"]) is None
        assert has_fqan(inspect_proxy(proxy), voms_server.vorole)
    finally:
        manager.stop()
    states = [h.state for n, h in events]
    assert HealthState.RENEWING in states and HealthState.FAILING in states


def test_wrong_fqan_is_failing_and_never_replaces_the_good_proxy(
    grid_ca, voms_server, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    proxy = tmp_path / "pilot.pem"
    good = manager_for(
        tmp_path, {"p": ("X509", x509_keys(grid_ca, voms_server, proxy, **{"x509.renew": "True",
                                                                            "x509.lifetime": "3600",
                                                                            "x509.minlife": "60"}))}
    )  # fmt: skip
    assert good.check_now("p").state is HealthState.OK
    before = proxy.read_bytes()
    keys = x509_keys(
        grid_ca, voms_server, proxy,
        **{"x509.renew": "True", "x509.lifetime": "3600", "x509.minlife": "3500",
           "x509.vorole": "testvo:/testvo/Role=admin"},
    )  # fmt: skip
    manager = manager_for(tmp_path, {"p": ("X509", keys)})
    health = manager.check_now("p")
    assert health.state is HealthState.FAILING
    assert "voms-proxy-init failed" in (health.error or "") or "lacks the FQAN" in (health.error or "")
    assert proxy.read_bytes() == before


def test_arcproxy_signs_from_a_base_proxy(grid_ca, voms_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """x509.baseproxy: Debian's voms-proxy-init 2.1 cannot sign from a proxy; arcproxy can."""
    base = grid_ca.make_proxy(tmp_path / "base.pem", minutes=120)
    keys = x509_keys(
        grid_ca, voms_server, tmp_path / "pilot.pem",
        **{"x509.renew": "True", "x509.lifetime": "1800", "x509.minlife": "60",
           "x509.baseproxy": str(base), "x509.vomstool": "arcproxy"},
    )  # fmt: skip
    health = manager_for(tmp_path, {"p": ("X509", keys)}).check_now("p")
    assert health.state is HealthState.OK, health.error
    info = inspect_proxy(tmp_path / "pilot.pem")
    assert info.chain_length == 3 and has_fqan(info, voms_server.vorole)


def test_a_silent_voms_server_times_out_and_stop_returns_at_once(
    grid_ca, voms_server, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    """A VOMS server that accepts and never answers: the renewal is bounded by x509.timeout, and
    stop() kills a running renewal instead of waiting for it."""
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    port = silent.getsockname()[1]
    vomses = tmp_path / "vomses"
    vomses.write_text(f'"testvo" "localhost" "{port}" "{grid_ca.host_dn}" "testvo"\n')
    keys = x509_keys(
        grid_ca, voms_server, tmp_path / "pilot.pem",
        **{"x509.renew": "True", "x509.lifetime": "3600", "x509.minlife": "60", "x509.timeout": "3",
           "x509.vomses": str(vomses)},
    )  # fmt: skip
    try:
        t0 = time.monotonic()
        health = manager_for(tmp_path, {"p": ("X509", keys)}).check_now("p")
        assert time.monotonic() - t0 < 20
        assert health.state is HealthState.EXPIRED and health.error
        keys["x509.timeout"] = "60"
        manager = manager_for(tmp_path, {"p": ("X509", keys)})
        manager.start()
        wait_for(lambda: manager.health("p").state is HealthState.RENEWING, 10, "a renewal in progress")
        t0 = time.monotonic()
        manager.stop(timeout=5)
        assert time.monotonic() - t0 < 6
    finally:
        silent.close()


# ---------------------------------------------------------------------------------------------
# myproxy flavour with the real MyProxy server


def test_myproxy_profile_retrieves_a_proxy_and_a_wrong_passphrase_is_a_clear_error(
    grid_ca, voms_server, myproxy_server, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    common = {
        "x509.flavor": "myproxy", "x509.lifetime": "7200", "x509.minlife": "600",
        "x509.myproxy_hostname": myproxy_server.host, "x509.myproxy_port": str(myproxy_server.port),
        "x509.myproxy_username": myproxy_server.username, "x509.cadir": str(grid_ca.cadir),
    }  # fmt: skip
    wrong = "not-the-passphrase-7f3a9c"
    auth = {
        "mp": ("X509", {**common, "x509.proxyfile": str(tmp_path / "mp.pem"),
                        "x509.myproxy_passphrasefile": str(myproxy_server.passphrase_file)}),
        "mpvoms": ("X509", {**common, "x509.proxyfile": str(tmp_path / "mpvoms.pem"),
                            "x509.myproxy_passphrasefile": str(myproxy_server.passphrase_file),
                            "x509.vorole": voms_server.vorole, "x509.vomstool": "arcproxy",
                            "x509.vomses": str(voms_server.vomses), "x509.vomsdir": str(voms_server.vomsdir)}),
        "bad": ("X509", {**common, "x509.proxyfile": str(tmp_path / "bad.pem"), "x509.myproxy_passphrase": wrong}),
    }  # fmt: skip
    manager = manager_for(tmp_path, auth)
    ok = manager.check_now("mp")
    assert ok.state is HealthState.OK, ok.error
    info = inspect_proxy(tmp_path / "mp.pem")
    assert info.identity == grid_ca.user_dn and info.chain_length >= 3  # the MyProxy delegation chain
    assert 3000 < info.time_left(time.time()) <= 7200
    assert stat.S_IMODE((tmp_path / "mp.pem").stat().st_mode) == 0o600

    with_voms = manager.check_now("mpvoms")
    assert with_voms.state is HealthState.OK, with_voms.error
    assert has_fqan(inspect_proxy(tmp_path / "mpvoms.pem"), voms_server.vorole)

    bad = manager.check_now("bad")
    assert bad.state is HealthState.EXPIRED and bad.error
    assert "myproxy-logon failed" in bad.error and "passphrase" in bad.error.lower()
    assert wrong not in bad.error and myproxy_server.passphrase not in bad.error
    assert not (tmp_path / "bad.pem").exists()
    assert "bad" in (manager.gate(["mp", "bad"]) or "")


# ---------------------------------------------------------------------------------------------
# tokens


def test_token_refreshed_before_expiry_and_a_failing_refresh_stops_the_queue(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(make_jwt(time.time() + 6) + "\n")
    switch = tmp_path / "refresh-works"
    switch.touch()
    refresher = tmp_path / "refresh.py"
    refresher.write_text(
        "import base64, json, os, sys, time\n"
        f"if not os.path.exists({str(switch)!r}):\n"
        "    print('issuer unreachable', file=sys.stderr); sys.exit(3)\n"
        "p = lambda o: base64.urlsafe_b64encode(json.dumps(o).encode()).rstrip(b'=').decode()\n"
        "print(p({'alg': 'none'}) + '.' + p({'sub': 'pilot', 'exp': int(time.time()) + 6}) + '.c2ln')\n"
    )
    keys = {
        "token.tokenfile": str(token_file), "token.refresh": f"{sys.executable} {refresher}",
        "token.minlife": "3", "token.checktime": "1",
    }  # fmt: skip
    events: list[tuple[str, CredentialHealth]] = []
    manager = manager_for(tmp_path, {"tok": ("Token", keys)}, events)
    manager.start()
    try:
        seen = {token_file.read_text()}
        deadline = time.monotonic() + 14
        while time.monotonic() < deadline:
            value = manager.token("tok")
            assert jwt_expiry(value) > time.time(), "the token expired before it was refreshed"  # type: ignore[operator]
            assert manager.gate(["tok"]) is None
            seen.add(value + "\n")
            time.sleep(0.25)
        assert len(seen) >= 3, "expected at least two refreshes"
        assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
        switch.unlink()
        failing = wait_for(
            lambda: (
                manager.health("tok").state in (HealthState.FAILING, HealthState.EXPIRED)
                and manager.health("tok")
            ),
            15,
            "the failing refresh",
        )
        assert "refresh command" in (failing.error or "") and "exit 3" in (failing.error or "")  # type: ignore[union-attr]
        assert "tok" in (manager.gate(["tok"]) or "")
    finally:
        manager.stop()
    secrets = seen
    for _, health in events:
        for value in secrets:
            assert value.strip() not in repr(health)


def test_token_from_another_tool_without_refresh(tmp_path: Path) -> None:
    token_file = tmp_path / "bt_u0"
    manager = manager_for(
        tmp_path, {"tok": ("Token", {"token.tokenfile": str(token_file), "token.minlife": "60"})}
    )
    assert manager.check_now("tok").state is HealthState.EXPIRED
    token_file.write_text(make_jwt(time.time() + 30))
    assert manager.check_now("tok").state is HealthState.EXPIRING  # written by htgettoken, say
    token_file.write_text(make_jwt(time.time() + 3600))
    health = manager.check_now("tok")
    assert health.state is HealthState.OK and 3500 < health.seconds_left(time.time()) <= 3600  # type: ignore[operator]
    token_file.write_text("opaque-bearer-value")
    assert manager.check_now("tok").state is HealthState.OK


# ---------------------------------------------------------------------------------------------
# SSH and cloud keys


def test_ssh_and_cloud_keys_checked_for_presence_permissions_and_passphrase(tmp_path: Path) -> None:
    key = tmp_path / "id_ed25519"
    passphrase = "correct horse battery"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", passphrase, "-f", str(key)], check=True)
    passfile = tmp_path / "pass"
    passfile.write_text(passphrase + "\n")
    passfile.chmod(0o600)
    secret = tmp_path / "secret"
    secret.write_text("cloud-secret-value\n")
    secret.chmod(0o644)
    auth = {
        "good": ("SSH", {"ssh.privatekeyfile": str(key), "ssh.privkeypassfile": str(passfile)}),
        "nopass": ("SSH", {"ssh.privatekeyfile": str(key)}),
        "wrong": ("SSH", {"ssh.privatekeyfile": str(key), "ssh.privkeypass": "wrong-passphrase-xyz"}),
        "missing": ("SSH", {"ssh.privatekeyfile": str(tmp_path / "nope")}),
        "cloud": ("CloudKey", {"cloudkey.access_key_id": "AKIDEXAMPLE",
                               "cloudkey.secret_access_key_file": str(secret)}),
    }  # fmt: skip
    manager = manager_for(tmp_path, auth)
    manager.start()
    manager.stop()
    h = manager.all_health()
    assert h["good"].state is HealthState.OK and h["good"].seconds_left(0) is None
    assert "no passphrase" in (h["nopass"].error or "")
    assert "passphrase is wrong" in (h["wrong"].error or "") and "wrong-passphrase-xyz" not in repr(
        h["wrong"]
    )
    assert "does not exist" in (h["missing"].error or "")
    assert h["cloud"].state is HealthState.FAILING and "0644" in (h["cloud"].error or "")
    secret.chmod(0o600)
    assert manager.check_now("cloud").state is HealthState.OK
    key.chmod(0o644)
    assert "accessible by group or others" in (manager.check_now("good").error or "")
    assert all(passphrase not in repr(x) for x in manager.all_health().values())


QUEUE = (
    "[Q]\nwmsstatusplugin = Sim\nbatchstatusplugin = Local\nbatchsubmitplugin = Local\nschedplugin = Ready\n"
)


def test_authmanager_sleep_is_the_period_of_key_checks(tmp_path: Path) -> None:
    """``[Factory] authmanager.sleep``: how soon a key replaced or removed behind the factory's back
    is noticed (SSH and cloud keys have no checktime of their own)."""
    key = tmp_path / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    events: list = []  # type: ignore[type-arg]
    manager = manager_for(tmp_path, {"hpc": ("SSH", {"ssh.privatekeyfile": str(key)})}, events, period=1.0)
    manager.start()
    try:
        assert manager.health("hpc").state is HealthState.OK
        key.unlink()  # nothing asks the manager to look: its own schedule must
        wait_for(lambda: manager.health("hpc").state is HealthState.FAILING, 30, "the removed key noticed")
        assert "does not exist" in (manager.health("hpc").error or "")
    finally:
        manager.stop()
    config = load_factory_config(str(factory_conf(tmp_path, QUEUE, "authmanager.sleep = 7")))
    assert config.settings.authmanager_sleep == 7.0 and not config.warnings


def test_unknown_profiles_and_kinds_are_clear_errors(tmp_path: Path) -> None:
    from autopyfactory.credentials import CredentialError

    manager = manager_for(tmp_path, {"tok": ("Token", {"token.token": "inline-secret-1234"})})
    with pytest.raises(CredentialError, match="not managed"):
        manager.health("nope")
    with pytest.raises(CredentialError, match="is Token, not X509"):
        manager.proxy_path("tok")
    assert manager.token("tok") == "inline-secret-1234"


def test_manager_threads_stop_promptly(tmp_path: Path) -> None:
    manager = manager_for(tmp_path, {"tok": ("Token", {"token.tokenfile": str(tmp_path / "t")})})
    manager.start()
    t0 = time.monotonic()
    manager.stop()
    assert time.monotonic() - t0 < 2
    assert not any(t.name == "apf-credentials" and t.is_alive() for t in threading.enumerate())


# ---------------------------------------------------------------------------------------------
# configuration: APF's legacy proxy.conf and the profiles a queue uses


def test_legacy_proxy_conf_is_read_as_x509_profiles(tmp_path: Path) -> None:
    from autopyfactory.config.errors import ConfigError
    from autopyfactory.config.loader import load_factory_config
    from tests.helpers import factory_conf, write

    write(
        tmp_path / "proxy.conf",
        """
        [DEFAULT]
        baseproxy = None
        usercert = /home/apf/.globus/usercert.pem
        userkey = /home/apf/.globus/userkey.pem
        lifetime = 604800
        checktime = 3600
        minlife = 259200
        interruptcheck = 1
        initdelay = 0
        renew = True
        flavor = voms

        [atlas-production]
        vorole = atlas:/atlas/Role=production
        proxyfile = /tmp/prodProxy
        voms.args = -rfc

        [atlas-usatlas]
        flavor = myproxy
        vorole = atlas:/atlas/usatlas
        proxyfile = /tmp/usatlasProxy
        myproxy_hostname = myproxy.cern.ch
        myproxy_username = apf
        myproxy_passphrase = legacy-passphrase-42
        """,
    )
    queue = "[Q]\nenabled = True\nbatchstatusplugin = Sim\nbatchsubmitplugin = Sim\nschedplugin = Ready\n"
    conf = factory_conf(tmp_path, queue, extra="proxyConf = proxy.conf\n")
    config = load_factory_config(str(conf))
    prod = config.auth["atlas-production"]
    assert prod.plugin == "X509" and prod.options.renew and prod.options.voms_args == "-rfc"
    assert prod.options.vorole == "atlas:/atlas/Role=production" and prod.options.minlife == 259200
    assert config.auth["atlas-usatlas"].options.flavor == "myproxy"
    assert "legacy-passphrase-42" not in repr(config.auth["atlas-usatlas"].options)
    assert not any("proxyConf" in w for w in config.warnings)

    write(tmp_path / "proxy.conf", "[p]\nproxyfile = /tmp/p\nmniflie = 3\nlifetime = soon\n")
    with pytest.raises(ConfigError) as bad:
        load_factory_config(str(conf))
    text = str(bad.value)
    assert "proxy.conf:3: [p] mniflie" in text and "proxy.conf:4: [p] lifetime" in text


def test_queue_profiles_name_what_each_plugin_uses(tmp_path: Path) -> None:
    from autopyfactory.credentials.resolve import queue_profiles
    from conftest import build_queue

    factory = build_factory(
        "qp",
        auth={
            "prod": ("X509", {"x509.proxyfile": str(tmp_path / "p")}),
            "hpc": ("SSH", {"ssh.privatekeyfile": str(tmp_path / "k")}),
        },
    )
    profiles = factory.auth_profiles  # type: ignore[attr-defined]
    slurm = build_queue(
        "s", {"batchsubmit.slurm.host": "head", "batchsubmit.slurm.authprofile": "hpc"}, submit="Slurm"
    )
    assert queue_profiles(slurm, profiles) == ("hpc",)  # type: ignore[arg-type]
    ce = build_queue(
        "c",
        {
            "executable": "/bin/true",
            "batchsubmit.condorce.gridresource": "ce",
            "batchsubmit.condorce.proxy": "gone, prod",
        },
        submit="CondorCE",
        status="Condor",
    )
    assert queue_profiles(ce, profiles) == ("prod",)  # type: ignore[arg-type]  # the first defined X509 one
    local = build_queue("l", {"executable": "/bin/true"}, submit="Local")
    assert queue_profiles(local, profiles) == ()  # type: ignore[arg-type]
