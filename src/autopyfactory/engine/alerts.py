"""Operator alerts by email, as AutoPyFactory sends them: to ``factoryAdminEmail`` through
``factorySMTPServer`` (``host[:port]``, plain SMTP, no auth), never the same subject and body twice
within ``factoryMinEmailRepeatSeconds``.

Alerts:

* a credential that is expiring, failing or expired, as the credential manager sees it (the same
  health that gates submissions, ``apf status`` and the metrics show): any kind of profile (X509
  with its VOMS attributes' end, tokens, SSH and cloud keys), failed renewals included. Sent when
  the manager reports a change (``on_credential``) and re-checked every
  ``credential_check_interval`` so a lasting problem is mailed again after the repeat window;
* a queue failing repeatedly: ``failures`` consecutive failed actions (``on_action_failed``; a
  submission resets the count);
* a poller gone stale: no successful poll of an endpoint for longer than its maxage.

Everything that takes time (SMTP) runs on the alerter's own worker thread; the Observer hooks
only count and enqueue. ``proxy_not_after`` stays here for the dashboard's own proxy view.
"""

from __future__ import annotations

import datetime as dt
import logging
import queue
import shutil
import smtplib
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from pathlib import Path
from typing import Any

from autopyfactory.credentials.health import CredentialHealth, HealthState
from autopyfactory.engine.events import Observer
from autopyfactory.model import Pilot

log = logging.getLogger("autopyfactory.alerts")


@dataclass(frozen=True)
class Alert:
    subject: str
    body: str


class CredentialError(Exception):
    pass


def proxy_not_after(path: str | Path) -> float:
    """The earliest notAfter (epoch seconds) of the certificates in a PEM proxy file.

    Uses the ``cryptography`` package when present, else ``openssl x509 -enddate``. The file's
    private key is never read into a message."""
    path = Path(path).expanduser()
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise CredentialError(f"cannot read {path}: {exc.strerror}") from None
    try:
        from cryptography import x509
    except ImportError:
        return _openssl_not_after(path)
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError:
        raise CredentialError(f"{path} holds no PEM certificate") from None
    return min(c.not_valid_after_utc.timestamp() for c in certs)


def _openssl_not_after(path: Path) -> float:
    openssl = shutil.which("openssl")
    if openssl is None:
        raise CredentialError("neither the cryptography package nor openssl is available")
    proc = subprocess.run(
        [openssl, "x509", "-noout", "-enddate", "-in", str(path)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    line = proc.stdout.strip()
    if proc.returncode != 0 or not line.startswith("notAfter="):
        raise CredentialError(f"openssl cannot read a certificate from {path}")
    stamp = line.removeprefix("notAfter=").replace("  ", " ")
    return dt.datetime.strptime(stamp, "%b %d %H:%M:%S %Y %Z").replace(tzinfo=dt.UTC).timestamp()


def parse_smtp_server(text: str) -> tuple[str, int]:
    host, sep, port = text.strip().rpartition(":")
    if not sep or not port.isdigit() or "]" in port:
        return text.strip().strip("[]"), 25
    return host.strip("[]"), int(port)


def credential_alert(health: CredentialHealth, now: float) -> Alert | None:
    """The alert a profile's health calls for (None while it is fine). The text carries the end
    time, not the time left, so the same problem reads the same and the repeat window holds it."""
    left = health.seconds_left(now)
    if health.state is HealthState.EXPIRED or (left is not None and left <= 0):
        word = "expired"
    elif health.state is HealthState.FAILING:
        word = "failing"
    elif health.state is HealthState.EXPIRING:
        word = "expiring"
    else:
        return None  # ok, or renewing with time left
    lines = [f"Auth profile {health.name} ({health.kind}) is {word}."]
    if health.error:
        lines.append(f"Error: {health.error}")
    if health.expires_at is not None:
        verb = "ended" if left is not None and left <= 0 else "ends"
        lines.append(f"It {verb} at {_iso(health.expires_at)}.")
    if health.detail:
        lines.append(f"Credential: {health.detail}")
    if word == "expiring":
        lines.append("It is below its renewal threshold and was not renewed; queues still submit with it.")
    else:
        lines.append("Queues that use it submit nothing until it is usable again.")
    return Alert(f"credential {health.name} is {word}", "\n".join(lines) + "\n")


class Alerts(Observer):
    """Email alerts for one factory; hand it to the engine as an Observer and ``start()`` it."""

    def __init__(
        self,
        settings: Any,
        credentials: Callable[[], Mapping[str, CredentialHealth]] | None = None,
        *,
        failures: int = 3,
        maxage: Mapping[str, float] | float = 360.0,
        credential_check_interval: float = 3600.0,
        clock: Callable[[], float] = time.time,
        smtp_timeout: float = 30.0,
        queue_size: int = 1000,
    ) -> None:
        self.factory_id: str = settings.factoryId
        self.recipients = [a.strip() for a in (settings.factoryAdminEmail or "").split(",") if a.strip()]
        self.smtp = parse_smtp_server(settings.factorySMTPServer) if settings.factorySMTPServer else None
        self.repeat = float(settings.factoryMinEmailRepeatSeconds)
        self.sender = f"{settings.factoryUser or 'autopyfactory'}@{socket.getfqdn()}"
        # the credential manager's health (``Factory.credential_health``); none: no credential alerts
        self.credentials = credentials
        self.failure_threshold = failures
        self.maxage = maxage
        self.credential_check_interval = credential_check_interval
        self.clock = clock
        self.smtp_timeout = smtp_timeout
        self.lock = threading.Lock()
        self.sent: dict[tuple[str, str], float] = {}  # (subject, body) -> last send time
        self.delivered = 0
        self.suppressed = 0
        self.failed = 0
        self._consecutive: dict[str, int] = {}
        self._last_ok: dict[tuple[str, str], float] = {}
        self._stale: set[tuple[str, str]] = set()
        self._next_credential_check = 0.0
        self._work: queue.Queue[Alert | str | None] = queue.Queue(queue_size)
        self._thread: threading.Thread | None = None

    @property
    def enabled(self) -> bool:
        return bool(self.recipients and self.smtp)

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="alerts", daemon=True)
            self._thread.start()

    def close(self, timeout: float = 5.0) -> None:
        if self._thread is not None:
            try:
                self._work.put(None, timeout=timeout)
            except queue.Full:
                pass
            self._thread.join(timeout)
            self._thread = None

    # -- Observer hooks -------------------------------------------------------------------------

    def on_start(self, factory_id: str, queues: Sequence[str]) -> None:
        self.start()
        self._post("check-credentials")

    def on_poll(self, endpoint: str, kind: str, ok: bool, time: float, error: str | None) -> None:
        try:
            key = (str(endpoint), kind)
            with self.lock:
                self._last_ok.setdefault(key, time)  # staleness counts from the first poll
                if ok:
                    self._last_ok[key] = time
                    self._stale.discard(key)
            if not ok:
                self._check_stale(time, {key: error})
        except Exception:
            log.exception("alerts on_poll")

    def on_submitted(self, queue: str, pilots: Sequence[Pilot]) -> None:
        with self.lock:
            self._consecutive.pop(queue, None)

    def on_action_failed(self, queue: str, target: str, error: str) -> None:
        try:
            with self.lock:
                count = self._consecutive.get(queue, 0) + 1
                self._consecutive[queue] = count
            n = self.failure_threshold
            if count >= n and count % n == 0:
                self.send(
                    f"queue {queue} is failing",
                    f"Queue {queue} had {n} or more consecutive failed actions on {target}.\n"
                    f"Last error: {error}\n",
                )
        except Exception:
            log.exception("alerts on_action_failed")

    def on_credential(self, health: CredentialHealth) -> None:
        try:
            alert = credential_alert(health, self.clock())
            if alert is not None:
                self.send(alert.subject, alert.body)  # queued: the worker mails it
        except Exception:
            log.exception("alerts on_credential")

    def on_cycle(self, duration: float, queues_decided: int, now: float) -> None:
        try:
            self._check_stale(now, {})
            if now >= self._next_credential_check:
                self._next_credential_check = now + self.credential_check_interval
                self._post("check-credentials")
        except Exception:
            log.exception("alerts on_cycle")

    def on_stop(self) -> None:
        self.close()

    # -- checks ---------------------------------------------------------------------------------

    def _maxage_for(self, kind: str) -> float:
        if isinstance(self.maxage, Mapping):
            return float(self.maxage.get(kind, 360.0))
        return float(self.maxage)

    def _check_stale(self, now: float, errors: Mapping[tuple[str, str], str | None]) -> None:
        with self.lock:
            stale = [
                (key, last)
                for key, last in self._last_ok.items()
                if key not in self._stale and now - last > self._maxage_for(key[1])
            ]
            self._stale.update(key for key, _ in stale)
        for (endpoint, kind), last in stale:
            error = errors.get((endpoint, kind))
            self.send(
                f"{kind} poller {endpoint} is stale",
                f"No successful {kind} poll of {endpoint} for more than {self._maxage_for(kind):g} s "
                f"(last success at {_iso(last)}). Queues that depend on it decide nothing.\n"
                + (f"Last error: {error}\n" if error else ""),
            )

    def check_credentials(self, now: float | None = None) -> list[Alert]:
        """Alert on every profile the credential manager reports expiring, failing or expired;
        returns the alerts (sent unless the same one went out within the repeat window)."""
        now = self.clock() if now is None else now
        healths = self.credentials() if self.credentials is not None else {}
        alerts = [a for _, h in sorted(healths.items()) if (a := credential_alert(h, now)) is not None]
        for alert in alerts:
            self.send(alert.subject, alert.body)
        return alerts

    # -- sending --------------------------------------------------------------------------------

    def send(self, subject: str, body: str) -> bool:
        """Queue an alert unless the same one went out within the repeat window. Never blocks."""
        subject = f"[autopyfactory {self.factory_id}] {subject}"
        now = self.clock()
        key = (subject, body)
        with self.lock:
            last = self.sent.get(key)
            if last is not None and now - last < self.repeat:
                self.suppressed += 1
                return False
            self.sent[key] = now
        log.warning("alert: %s: %s", subject, body.strip().replace("\n", " "))
        return self._post(Alert(subject, body))

    def _post(self, item: Alert | str) -> bool:
        try:
            self._work.put_nowait(item)
            return True
        except queue.Full:
            log.error("alert queue full; dropped %s", item.subject if isinstance(item, Alert) else item)
            return False

    def _run(self) -> None:
        while True:
            item = self._work.get()
            if item is None:
                return
            try:
                if item == "check-credentials":
                    self.check_credentials()
                elif isinstance(item, Alert):
                    self._deliver(item)
            except Exception:
                log.exception("alerts worker")

    def _deliver(self, alert: Alert) -> None:
        if not self.enabled or self.smtp is None:
            return
        msg = EmailMessage()
        msg["From"] = self.sender
        msg["To"] = ", ".join(self.recipients)
        msg["Subject"] = alert.subject
        msg["Date"] = formatdate(localtime=True)
        msg["Message-ID"] = make_msgid(domain="autopyfactory")
        msg.set_content(alert.body)
        host, port = self.smtp
        try:
            with smtplib.SMTP(host, port, timeout=self.smtp_timeout) as smtp:
                smtp.send_message(msg)
            with self.lock:
                self.delivered += 1
        except (OSError, smtplib.SMTPException) as exc:
            with self.lock:
                self.failed += 1
                # not delivered: let the next identical alert try again
                self.sent.pop((alert.subject, alert.body), None)
            log.error("cannot send alert through %s:%d: %s", host, port, exc)


def _iso(t: float) -> str:
    return dt.datetime.fromtimestamp(t, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
