"""Planted secrets: a MyProxy passphrase (right and wrong), bearer tokens (including one a failing
refresher prints), SSH key passphrases (right and wrong) and an inline cloud secret go through the
credential manager, ``apf credentials``, ``apf status`` and a factory run against the real ARC CE
(where things fail on purpose too). Afterwards no log, output, status file or the store holds any
of them: a grep over every file the runs wrote, and over everything they printed."""

from __future__ import annotations

import base64
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from autopyfactory.config.loader import load_factory_config
from autopyfactory.credentials import CredentialManager, HealthState
from autopyfactory.engine.factory import Factory
from tests.helpers import factory_conf, wait_for, write

APF = str(Path(sys.executable).parent / "apf")
pytestmark = pytest.mark.timeout(300)


def _jwt(exp: float, marker: str) -> str:
    def part(obj: object) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'none'})}.{part({'sub': marker, 'exp': int(exp)})}.c2lnbmF0dXJl"


def test_no_planted_secret_reaches_logs_outputs_status_or_store(
    tmp_path: Path, grid_ca, voms_server, myproxy_server, arc_ce, caplog, capfd
) -> None:  # type: ignore[no-untyped-def]
    wrong_passphrase = "planted-wrong-myproxy-passphrase-91"
    token = _jwt(time.time() + 3600, "planted-token-subject-77")
    leaked_token = _jwt(time.time() + 3600, "planted-printed-token-55")
    ssh_passphrase = "planted ssh passphrase 3"
    wrong_ssh = "planted-wrong-ssh-passphrase-8"
    cloud_secret = "plantedCloudSecretKey/abc123XYZ"
    secrets = [myproxy_server.passphrase, wrong_passphrase, token, leaked_token, ssh_passphrase, wrong_ssh,
               cloud_secret]  # fmt: skip

    secret_dir = tmp_path / "secret"
    secret_dir.mkdir(mode=0o700)
    (secret_dir / "token").write_text(token + "\n")
    refresher = write(
        secret_dir / "refresh.sh", f"#!/bin/sh\necho 'issuer said: {leaked_token} is revoked' >&2\nexit 4\n"
    )
    refresher.chmod(0o700)
    key = secret_dir / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", ssh_passphrase, "-f", str(key)], check=True)
    (secret_dir / "ssh-pass").write_text(ssh_passphrase + "\n")
    (secret_dir / "ssh-pass").chmod(0o600)
    proxy = grid_ca.make_proxy(tmp_path / "run" / "user.pem")
    work = tmp_path / "run"
    common_mp = [
        "plugin = X509", "x509.flavor = myproxy", "x509.lifetime = 7200", "x509.minlife = 600",
        f"x509.cadir = {grid_ca.cadir}", f"x509.myproxy_hostname = {myproxy_server.host}",
        f"x509.myproxy_port = {myproxy_server.port}", f"x509.myproxy_username = {myproxy_server.username}",
    ]  # fmt: skip
    sections = {
        "pilot": ["plugin = X509", f"x509.proxyfile = {proxy}", f"x509.cadir = {grid_ca.cadir}",
                  "x509.minlife = 60"],
        "mp-good": [*common_mp, f"x509.proxyfile = {work / 'mp-good.pem'}",
                    f"x509.myproxy_passphrase = {myproxy_server.passphrase}"],
        "mp-bad": [*common_mp, f"x509.proxyfile = {work / 'mp-bad.pem'}",
                   f"x509.myproxy_passphrase = {wrong_passphrase}"],
        "tok": ["plugin = Token", f"token.tokenfile = {secret_dir / 'token'}"],
        "tok-refresh": ["plugin = Token", f"token.tokenfile = {work / 'expired-token'}", f"token.refresh = {refresher}"],
        "ssh-good": ["plugin = SSH", f"ssh.privatekeyfile = {key}", f"ssh.privkeypassfile = {secret_dir / 'ssh-pass'}"],
        "ssh-bad": ["plugin = SSH", f"ssh.privatekeyfile = {key}", f"ssh.privkeypass = {wrong_ssh}"],
        "cloud": ["plugin = CloudKey", "cloudkey.access_key_id = AKIDPLANTED",
                  f"cloudkey.secret_access_key = {cloud_secret}"],
    }  # fmt: skip
    (secret_dir / "auth.conf").write_text(
        "".join(f"[{name}]\n" + "".join(line + "\n" for line in lines) for name, lines in sections.items())
    )
    write(work / "pilot.sh", "#!/bin/sh\necho pilot\nsleep 2\n")
    conf = factory_conf(
        work,
        f"""
        [GRID]
        enabled = True
        apfqueue.sleep = 0.5
        wmsqueue = GRID
        wmsstatusplugin = Sim
        wmsstatus.sim.activated = 1
        wmsstatus.sim.consume = True
        batchstatusplugin = ARC
        batchsubmitplugin = ARC
        executable = {work / "pilot.sh"}
        schedplugin = Ready
        batchsubmit.arc.ce = {arc_ce.url}
        batchsubmit.arc.proxy = pilot
        batchsubmit.arc.queue = {arc_ce.queue}
        [BROKEN]
        enabled = True
        wmsqueue = BROKEN
        wmsstatusplugin = Sim
        wmsstatus.sim.activated = 1
        batchstatusplugin = ARC
        batchsubmitplugin = ARC
        executable = {work / "pilot.sh"}
        schedplugin = Ready
        batchsubmit.arc.ce = https://localhost:1/arex
        batchsubmit.arc.proxy = mp-bad
        """,
        extra=f"authConf = {secret_dir / 'auth.conf'}\nbaseLogDir = {work / 'logs'}\nbatchstatus.arc.sleep = 1\n",
        factory_id="secrets",
    )
    caplog.set_level(logging.DEBUG)
    config = load_factory_config(str(conf))
    log_file = work / "manager.log"
    handler = logging.FileHandler(log_file)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.getLogger().addHandler(handler)
    events: list[str] = []
    manager = CredentialManager(
        config.auth,
        factory_id="secrets",
        state_dir=config.settings.state_path,
        on_change=lambda n, o, h: events.append(repr(h) + h.summary(time.time())),
    )
    try:
        manager.start()
        wait_for(
            lambda: (
                manager.health("mp-good").state is HealthState.OK
                and manager.health("mp-bad").state is HealthState.EXPIRED
                and manager.health("mp-bad").error
                and manager.health("tok-refresh").error
            ),
            60,
            "the MyProxy and token checks",
        )
        health = manager.all_health()
        assert "passphrase" in (health["mp-bad"].error or "").lower()
        assert "exit 4" in (health["tok-refresh"].error or "") and "revoked" in (
            health["tok-refresh"].error or ""
        )
        assert health["ssh-good"].state is HealthState.OK and "wrong" in (health["ssh-bad"].error or "")
        assert manager.token("tok") == token  # usable where it is needed
        # the factory: a real ARC queue and a broken one (unreachable CE, its proxy never retrieved)
        factory = Factory(config)
        for _ in range(3):
            factory.step(poll_all=True)
        factory.flush()
        factory.shutdown()
    finally:
        manager.stop()
        logging.getLogger().removeHandler(handler)
        handler.close()
    cli = [
        subprocess.run([APF, "credentials", "--check", "--conf", str(conf)], capture_output=True, text=True, timeout=120),
        subprocess.run([APF, "status", "--conf", str(conf)], capture_output=True, text=True, timeout=60),
        subprocess.run([APF, "run", "--once", "--no-table", "--conf", str(conf), "--log", str(work / "apf.log")],
                       capture_output=True, text=True, timeout=120),
    ]  # fmt: skip
    assert "mp-bad (X509): expired" in cli[0].stdout and "tok-refresh (Token)" in cli[0].stdout
    assert "credential mp-bad (X509): expired" in cli[1].stdout  # from the manager's status file

    texts = {f"cli {p.args[1]}": p.stdout + p.stderr for p in cli}
    texts["pytest log"] = caplog.text
    captured = capfd.readouterr()
    texts["captured"] = captured.out + captured.err
    texts["events"] = "\n".join(events)
    written = [p for p in work.rglob("*") if p.is_file() and p.name not in ("pilot.sh",)]
    assert any(p.suffix == ".db" for p in written) and log_file in written
    assert any(p.name.startswith("credentials-") for p in written)
    for path in written:
        texts[str(path)] = path.read_bytes().decode("utf-8", "replace")
    for where, text in texts.items():
        for secret in secrets:
            assert secret not in text, f"a planted secret ({secret[:12]}...) leaked into {where}"
    assert os.path.exists(work / "mp-good.pem")
