"""Operator alerts through a local SMTP receiver: they arrive, repeats are throttled, and nothing
blocks the caller."""

from __future__ import annotations

import datetime as dt
import email
import email.policy
import socketserver
import sys
import threading
import time
from collections.abc import Iterator
from email.message import Message
from pathlib import Path

import pytest

from autopyfactory.credentials import CredentialManager, HealthState
from autopyfactory.engine.alerts import Alerts, _openssl_not_after, parse_smtp_server, proxy_not_after
from autopyfactory.engine.events import Observer
from fakepanda import factory_context, write_proxy
from tests.helpers import make_jwt

pytestmark = pytest.mark.timeout(60)


# -- a tiny SMTP receiver (enough of RFC 5321 for smtplib) ----------------------------------------


class _SMTPHandler(socketserver.StreamRequestHandler):
    def reply(self, line: str) -> None:
        self.wfile.write(line.encode() + b"\r\n")

    def handle(self) -> None:
        server: SMTPReceiver = self.server  # type: ignore[assignment]
        server.gate.wait(30)
        self.reply("220 localhost test SMTP")
        mail_from, rcpts = "", []
        while True:
            line = self.rfile.readline()
            if not line:
                return
            cmd = line.decode().strip()
            verb = cmd.split(" ", 1)[0].upper()
            if verb in ("EHLO", "HELO"):
                self.reply("250 localhost")
            elif verb == "MAIL":
                mail_from, rcpts = cmd.split(":", 1)[1].strip(), []
                self.reply("250 OK")
            elif verb == "RCPT":
                rcpts.append(cmd.split(":", 1)[1].strip())
                self.reply("250 OK")
            elif verb == "DATA":
                self.reply("354 end with .")
                data = []
                while True:
                    chunk = self.rfile.readline()
                    if chunk in (b".\r\n", b""):
                        break
                    data.append(chunk[1:] if chunk.startswith(b"..") else chunk)
                with server.lock:
                    server.messages.append(
                        (
                            mail_from,
                            rcpts,
                            email.message_from_bytes(b"".join(data), policy=email.policy.default),
                        )
                    )
                self.reply("250 queued")
            elif verb == "QUIT":
                self.reply("221 bye")
                return
            else:
                self.reply("250 OK")


class SMTPReceiver(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _SMTPHandler)
        self.lock = threading.Lock()
        self.messages: list[tuple[str, list[str], Message]] = []
        self.gate = threading.Event()
        self.gate.set()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.server_address[1]}"

    def subjects(self) -> list[str]:
        with self.lock:
            return [str(m["Subject"]) for _, _, m in self.messages]

    def wait_count(self, n: int, timeout: float = 10.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if len(self.messages) >= n:
                    return True
            time.sleep(0.01)
        return False


@pytest.fixture
def smtp() -> Iterator[SMTPReceiver]:
    server = SMTPReceiver()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.gate.set()
        server.shutdown()
        server.server_close()


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def make(smtp_address: str, clock: Clock, **kw) -> Alerts:  # type: ignore[no-untyped-def]
    ctx = factory_context(
        "BNL-apf",
        factoryAdminEmail="ops@example.org, oncall@example.org",
        factorySMTPServer=smtp_address,
        factoryMinEmailRepeatSeconds=3600,
    )
    alerts = Alerts(ctx.settings, clock=clock, **kw)
    alerts.start()
    return alerts


def test_failing_queue_alert_arrives_and_repeats_are_throttled(smtp: SMTPReceiver) -> None:
    clock = Clock()
    alerts = make(smtp.address, clock, failures=3)
    try:
        assert isinstance(alerts, Observer) and alerts.enabled
        for _ in range(2):
            alerts.on_action_failed("Q1", "Local", "submit failed: no space left")
        assert not smtp.wait_count(1, timeout=0.3)  # two failures: not yet
        alerts.on_action_failed("Q1", "Local", "submit failed: no space left")
        assert smtp.wait_count(1)
        _, rcpts, msg = smtp.messages[0]
        assert rcpts == ["<ops@example.org>", "<oncall@example.org>"]
        assert msg["Subject"] == "[autopyfactory BNL-apf] queue Q1 is failing"
        assert "no space left" in msg.get_content()
        # three more identical failures: the same alert again, throttled
        for _ in range(3):
            alerts.on_action_failed("Q1", "Local", "submit failed: no space left")
        assert alerts.suppressed == 1
        # after the repeat window it goes out again
        clock.now += 3601
        for _ in range(3):
            alerts.on_action_failed("Q1", "Local", "submit failed: no space left")
        assert smtp.wait_count(2)
        # a submission resets the count
        alerts.on_submitted("Q1", [])
        alerts.on_action_failed("Q1", "Local", "other")
        alerts.on_action_failed("Q1", "Local", "other")
        assert not smtp.wait_count(3, timeout=0.3)
    finally:
        alerts.close()
    assert len(smtp.messages) == 2


def test_stale_poller_alert_once_per_episode(smtp: SMTPReceiver) -> None:
    clock = Clock(0.0)
    alerts = make(smtp.address, clock, maxage={"wmsstatus": 360.0, "batchstatus": 600.0})
    ep = "Panda http://127.0.0.1:25080/api/v1"
    try:
        alerts.on_poll(ep, "wmsstatus", True, 0.0, None)
        alerts.on_poll(ep, "wmsstatus", False, 150.0, "HTTP 500")
        alerts.on_cycle(0.01, 1, 300.0)
        assert not smtp.wait_count(1, timeout=0.3)
        alerts.on_poll(ep, "wmsstatus", False, 361.0, "HTTP 500")
        assert smtp.wait_count(1)
        assert smtp.subjects() == [f"[autopyfactory BNL-apf] wmsstatus poller {ep} is stale"]
        assert "HTTP 500" in smtp.messages[0][2].get_content()
        # still stale: no new alert from later polls or cycles
        alerts.on_cycle(0.01, 1, 500.0)
        alerts.on_poll(ep, "wmsstatus", False, 600.0, "HTTP 500")
        # recovery, then stale again: a new episode, a new alert
        alerts.on_poll(ep, "wmsstatus", True, 700.0, None)
        alerts.on_cycle(0.01, 1, 1_100.0)
        assert smtp.wait_count(2)
        # a batch poller that never succeeded goes stale after its own maxage, counted from its first poll
        alerts.on_poll("Local", "batchstatus", False, 1_000.0, "down")
        alerts.on_cycle(0.01, 1, 1_500.0)
        assert not smtp.wait_count(3, timeout=0.3)
        alerts.on_cycle(0.01, 1, 1_601.0)
        assert smtp.wait_count(3)
    finally:
        alerts.close()
    assert len(smtp.messages) == 3


def test_credential_alerts_come_from_the_managers_health(smtp: SMTPReceiver, tmp_path: Path) -> None:
    """Every kind of profile, as the credential manager sees it: an X509 proxy below minlife, a
    missing proxy, a token whose refresh fails, an SSH key open to others. Healthy ones are quiet,
    repeats are throttled, and a change reported by the manager is mailed at once."""
    now = time.time()
    short = write_proxy(tmp_path / "x509up_short", dt.timedelta(days=1))
    long = write_proxy(tmp_path / "x509up_long", dt.timedelta(days=10))
    token = tmp_path / "token"
    token.write_text(make_jwt(now + 120) + "\n")
    good_token = tmp_path / "good-token"
    good_token.write_text(make_jwt(now + 86400) + "\n")
    key = tmp_path / "id_ed25519"
    key.write_text("-----BEGIN OPENSSH PRIVATE KEY-----\nnot-a-key\n-----END OPENSSH PRIVATE KEY-----\n")
    key.chmod(0o644)
    fail = f"{sys.executable} -c 'import sys; print(\"issuer down\", file=sys.stderr); sys.exit(3)'"
    auth = {
        "atlas-short": (
            "X509",
            {"proxyfile": str(short), "minlife": 259200, "renew": False, "myproxy_passphrase": "pp-secret-9"},
        ),
        "atlas-long": ("X509", {"proxyfile": str(long), "renew": False}),
        "atlas-missing": ("X509", {"proxyfile": str(tmp_path / "nope"), "renew": False}),
        "tok": ("Token", {"tokenfile": str(token), "minlife": 600, "refresh": fail}),
        "good-tok": ("Token", {"tokenfile": str(good_token)}),
        "ssh": ("SSH", {"privatekeyfile": str(key)}),
    }
    ctx = factory_context("BNL-apf", auth=auth)
    clock = Clock(now)
    manager = CredentialManager(ctx.auth_profiles, factory_id="BNL-apf", clock=clock)
    alerts = make(smtp.address, clock, credentials=manager.all_health)
    # as the factory wires it: the manager's changes reach the alerter's on_credential hook
    manager.on_change = lambda _name, _old, health: alerts.on_credential(health)
    try:
        manager.inspect_all()  # health from the files: no tool runs yet
        pre = "[autopyfactory BNL-apf] "
        expected = {
            pre + "credential atlas-missing is expired",
            pre + "credential atlas-short is expiring",
            pre + "credential ssh is failing",
            pre + "credential tok is expiring",  # below its minlife, not refreshed yet
        }
        assert smtp.wait_count(4)
        assert not smtp.wait_count(5, timeout=0.5)
        assert set(smtp.subjects()) == expected
        bodies = {str(m["Subject"]): m.get_content() for _, _, m in smtp.messages}
        short_body = bodies[pre + "credential atlas-short is expiring"]
        assert "Auth profile atlas-short (X509) is expiring." in short_body and "It ends at " in short_body
        assert "queues still submit" in short_body
        assert "does not exist" in bodies[pre + "credential atlas-missing is expired"]
        assert "accessible by group or others" in bodies[pre + "credential ssh is failing"]
        assert "submit nothing" in bodies[pre + "credential ssh is failing"]

        # the periodic check finds the same problems in the same words: throttled
        found = alerts.check_credentials()
        assert len(found) == 4 and alerts.suppressed == 4

        # the token's refresh fails (a renewal failure): mailed at once through the manager's change
        assert manager.check_now("tok").state is HealthState.FAILING
        assert smtp.wait_count(5)
        body = {str(m["Subject"]): m.get_content() for _, _, m in smtp.messages}[
            pre + "credential tok is failing"
        ]
        assert "Auth profile tok (Token) is failing." in body and "issuer down" in body
        # after the repeat window the lasting problems go out again
        clock.now += 3601
        alerts.check_credentials()
        assert smtp.wait_count(9)
        assert not smtp.wait_count(10, timeout=0.5)
        assert not any("good-tok" in s or "atlas-long" in s for s in smtp.subjects())
        everything = "".join(m.as_string() for _, _, m in smtp.messages)
        assert "pp-secret-9" not in everything
        assert (
            token.read_text().strip() not in everything and good_token.read_text().strip() not in everything
        )
    finally:
        alerts.close()
        manager.stop(timeout=5)


def test_openssl_fallback_reads_the_same_end_date(tmp_path: Path) -> None:
    proxy = write_proxy(tmp_path / "x509up", dt.timedelta(hours=5))
    assert abs(_openssl_not_after(proxy) - proxy_not_after(proxy)) < 1.0
    assert 4.9 * 3600 < proxy_not_after(proxy) - time.time() < 5.1 * 3600


def test_sending_never_blocks_the_caller(smtp: SMTPReceiver) -> None:
    smtp.gate.clear()  # the SMTP server accepts but does not answer
    alerts = make(smtp.address, Clock(), failures=1)
    try:
        start = time.monotonic()
        for i in range(20):
            alerts.on_action_failed(f"Q{i}", "Local", "boom")
        assert time.monotonic() - start < 0.2
        smtp.gate.set()
        assert smtp.wait_count(20)
    finally:
        alerts.close()


def test_undelivered_alert_is_not_throttled(tmp_path: Path) -> None:
    probe = SMTPReceiver()
    dead = probe.address  # a port nobody listens on once closed
    probe.server_close()
    alerts = make(dead, Clock(), failures=1, smtp_timeout=2)
    try:
        alerts.on_action_failed("Q1", "Local", "boom")
        deadline = time.monotonic() + 10
        while alerts.failed < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert alerts.failed == 1 and alerts.delivered == 0
        assert alerts.send("queue Q1 is failing", "x") is True
        assert alerts.send("queue Q1 is failing", "x") is False
        alerts.on_action_failed("Q1", "Local", "boom")  # the undelivered one may go again
        assert alerts.suppressed == 1
    finally:
        alerts.close()


def test_disabled_without_address_or_server() -> None:
    ctx = factory_context("F")
    alerts = Alerts(ctx.settings)
    assert not alerts.enabled
    alerts.start()
    alerts.on_action_failed("Q", "T", "e")
    alerts.close()


def test_parse_smtp_server() -> None:
    assert parse_smtp_server("smtp.example.org") == ("smtp.example.org", 25)
    assert parse_smtp_server("smtp.example.org:2525") == ("smtp.example.org", 2525)
    assert parse_smtp_server("[::1]:2525") == ("::1", 2525)
