"""The engine's credential gate, driven through the real factory: a PanDA queue (the fake PanDA
server, real local pilots) whose Token profile is dead submits nothing and says why in the store,
``apf explain``, the credential events and /metrics; a fresh token lets it submit again without a
restart. In a cascade, a tier with a dead credential backs off and its demand spills on."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from autopyfactory.cli._store import open_read_only
from autopyfactory.config.loader import load_factory_config
from autopyfactory.engine.factory import Factory
from fakepanda import FakePanda
from tests.helpers import factory_conf, make_jwt, serve, shut_down, wait_for, write
from tests.test_alerts import SMTPReceiver

APF = str(Path(sys.executable).parent / "apf")
QUEUE = "BNL_PROD-ce01"


@pytest.fixture
def panda() -> Iterator[FakePanda]:
    with FakePanda() as fake:  # no token set: it takes any bearer token, so demand keeps flowing
        yield fake


@pytest.fixture
def mailbox() -> Iterator[SMTPReceiver]:
    """The local SMTP receiver of tests/test_alerts.py: the admin's mailbox."""
    server = SMTPReceiver()
    thread = serve(server, "smtp")
    try:
        yield server
    finally:
        shut_down(server, thread)


def _pilot(tmp: Path) -> Path:
    pilot = write(tmp / "pilot.sh", "#!/bin/sh\nsleep 120\n")
    pilot.chmod(0o755)
    return pilot


def _submitted(tmp: Path, queue: str = "*") -> int:
    return len(list((tmp / "state" / "local").glob(f"*/{queue}/*/tags")))


def _apf(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([APF, *args], capture_output=True, text=True, timeout=60)


def _scrape(url: str) -> dict[str, float]:
    text = urllib.request.urlopen(url, timeout=10).read().decode()
    return {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("apf_credential_")
    }


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_a_dead_token_stops_the_queue_and_a_fresh_one_lets_it_submit_again(
    tmp: Path, panda: FakePanda, mailbox: SMTPReceiver
) -> None:
    token = tmp / "token"
    token.write_text(make_jwt(time.time() - 120) + "\n")  # expired two minutes ago
    write(
        tmp / "auth.conf",
        f"""
        [panda-token]
        plugin = Token
        token.tokenfile = {token}
        token.minlife = 5
        token.checktime = 1
        """,
    )
    conf = factory_conf(
        tmp,
        f"""
        [DEFAULT]
        enabled = True
        apfqueue.sleep = 1
        wmsstatusplugin = Panda
        wmsstatus.panda.url = {panda.api_url}
        wmsstatus.panda.auth = panda-token
        wmsstatus.panda.timeout = 5
        batchstatusplugin = Local
        batchsubmitplugin = Local
        executable = {_pilot(tmp)}
        schedplugin = Ready, MaxPerCycle
        sched.maxpercycle.maximum = 20

        [{QUEUE}]
        wmsqueue = BNL_PROD
        """,
        extra=f"""
        authConf = auth.conf
        wmsstatus.panda.sleep = 1
        wmsstatus.panda.maxage = 10
        factoryAdminEmail = ops@example.org
        factorySMTPServer = {mailbox.address}
        """,
    )
    config = load_factory_config(str(conf))
    panda.set_jobs("BNL_PROD", "running", 10)
    panda.set_activated("BNL_PROD", 3)
    proc = subprocess.Popen(
        [APF, "run", "--conf", str(conf), "--no-table", "--log", str(tmp / "apf.log")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:

        def explain() -> list[dict]:
            out = _apf("explain", QUEUE, "--conf", str(conf), "--json", "-n", "1")
            return json.loads(out.stdout)["decisions"] if out.returncode == 0 else []

        def gated() -> dict | None:
            rows = explain()
            steps = rows[0]["steps"] if rows else []
            return rows[0] if any(s["plugin"] == "Credential" for s in steps) else None

        decision = wait_for(gated, 90, "a decision stopped by the credential gate")
        assert isinstance(decision, dict)
        # the chain wanted 3 (PanDA's activated jobs); the credential is the binding constraint
        assert decision["n"] == 0
        step = decision["steps"][-1]
        assert step["plugin"] == "Credential" and step["in"] == 3 and step["out"] == 0
        assert "credential panda-token (Token): expired" in step["reason"]
        assert _submitted(tmp) == 0
        text = _apf("explain", QUEUE, "--conf", str(conf))
        assert "Credential" in text.stdout and "panda-token (Token): expired" in text.stdout, text.stdout

        # the manager's health is on the daemon's /metrics
        status = json.loads(_apf("status", "--conf", str(conf), "--json").stdout)
        url = status["metrics"]
        metrics = _scrape(url)
        assert metrics['apf_credential_usable{profile="panda-token"}'] == 0.0
        assert metrics['apf_credential_state{profile="panda-token",state="expired"}'] == 1.0
        assert metrics['apf_credential_state{profile="panda-token",state="ok"}'] == 0.0
        assert metrics['apf_credential_seconds_left{kind="Token",profile="panda-token"}'] < -100

        # the admin is told by e-mail, from the same health
        assert mailbox.wait_count(1, timeout=30)
        assert "[autopyfactory test-factory] credential panda-token is expired" in mailbox.subjects()

        # another tool writes a fresh token: the manager sees it on its own schedule, the queue
        # submits again (no restart, no signal)
        token.write_text(make_jwt(time.time() + 3600) + "\n")
        wait_for(lambda: _submitted(tmp) == 3, 90, "3 pilots after the token was renewed")
        assert proc.poll() is None
        metrics = _scrape(url)
        assert metrics['apf_credential_usable{profile="panda-token"}'] == 1.0
        assert metrics['apf_credential_state{profile="panda-token",state="ok"}'] == 1.0
        assert metrics['apf_credential_seconds_left{kind="Token",profile="panda-token"}'] > 3000
        latest = explain()[0]
        assert all(s["plugin"] != "Credential" for s in latest["steps"])
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    assert proc.returncode == 0

    # the store holds the credential's history: expired, then ok
    store = open_read_only(config.settings.database_url())
    assert store is not None
    try:
        events = store.events(config.factory_id, limit=1000)
    finally:
        store.close()
    messages = [e["message"] for e in reversed(events) if e["kind"] == "credential"]
    expired = next(i for i, m in enumerate(messages) if m.startswith("panda-token (Token): expired"))
    assert any(m.startswith("panda-token (Token): ok") for m in messages[expired + 1 :]), messages
    assert token.read_text().strip() not in "\n".join(messages)


POLICY = """
cascades:
  - name: prod
    demand: BNL_PROD
    tiers:
      - {queue: A}
      - {queue: B}
"""


def test_a_cascade_tier_with_a_dead_credential_backs_off_and_its_demand_spills(
    tmp: Path, panda: FakePanda
) -> None:
    dead, good = tmp / "token-a", tmp / "token-b"
    dead.write_text(make_jwt(time.time() - 60) + "\n")
    good.write_text(make_jwt(time.time() + 3600) + "\n")
    write(
        tmp / "auth.conf",
        f"""
        [tok-a]
        plugin = Token
        token.tokenfile = {dead}
        [tok-b]
        plugin = Token
        token.tokenfile = {good}
        """,
    )
    write(tmp / "policy.yaml", POLICY)
    conf = factory_conf(
        tmp,
        f"""
        [DEFAULT]
        enabled = True
        apfqueue.sleep = 0.5
        wmsqueue = BNL_PROD
        wmsstatusplugin = Panda
        wmsstatus.panda.url = {panda.api_url}
        wmsstatus.panda.timeout = 5
        batchstatusplugin = Local
        batchsubmitplugin = Local
        executable = {_pilot(tmp)}
        schedplugin = Ready
        [A]
        wmsstatus.panda.auth = tok-a
        [B]
        wmsstatus.panda.auth = tok-b
        """,
        extra="authConf = auth.conf\npolicyConf = policy.yaml\n",
    )
    panda.set_jobs("BNL_PROD", "running", 10)
    panda.set_activated("BNL_PROD", 4)
    factory = Factory(load_factory_config(str(conf)))
    try:
        # one-shot cycles: the health of every profile is read from disk before each pass
        plans = {p.queue: p for p in factory.step(poll_all=True)}
        assert plans["A"].decision.n == 0 and plans["B"].decision.n == 4
        alloc = factory.cascades["prod"].last
        assert alloc is not None and "backoff" in alloc.tier("A").stopped_by
        wait_for(lambda: _submitted(tmp, "B") == 4, 30, "B's 4 pilots")
        assert _submitted(tmp, "A") == 0
        factory.flush()
        text = _apf("explain", "prod", "--conf", str(conf)).stdout
        assert "passes 4 on to B (backoff)" in text, text
        assert "A backed off: credential tok-a (Token): expired" in text, text
        text = _apf("explain", "A", "--conf", str(conf)).stdout
        assert "binding=Credential" in text and "tok-a (Token): expired" in text, text

        # a fresh token for A: the first tier takes the new demand again
        dead.write_text(make_jwt(time.time() + 3600) + "\n")
        panda.set_activated("BNL_PROD", 6)
        plans = {p.queue: p for p in factory.step(poll_all=True)}
        assert plans["A"].decision.n == 2 and plans["B"].decision.n == 0
        assert all(s.plugin != "Credential" for s in plans["A"].decision.steps)
        wait_for(lambda: _submitted(tmp, "A") == 2, 30, "A's 2 pilots")
    finally:
        factory.shutdown()
