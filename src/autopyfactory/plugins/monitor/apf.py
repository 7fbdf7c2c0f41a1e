"""``monitorplugin = APF``: the apfmon REST protocol (AutoPyFactory's monitor), off the decision path.

Calls (``monitorURL`` = ``<url>``, factory id ``<fid>``):

* ``PUT <url>/factories/<fid>`` JSON ``{"version", "email", "url"}`` — register the factory;
* ``GET <url>/labels?factory=<fid>`` — the labels (queues) apfmon already knows;
* ``PUT <url>/labels`` JSON ``[{"name", "factory", "wmsqueue", "batchqueue", "resource", "localqueue"}]``
  — register labels not known yet;
* ``PUT <url>/jobs`` JSON ``[{"cid", "label", "factory"}]`` — new pilots, each cycle;
* ``POST <url>/labels/<fid>:<label>`` form ``status=<message>`` — the scheduler message per label.

Unlike AutoPyFactory (no timeout, synchronous in the queue thread, a monitor down at start never
registered), every call here goes through a bounded in-memory queue to one worker thread, has a
timeout, and is retried with exponential backoff. Registration (factory, then labels) is retried
before any other call, so a monitor that is down at start is registered once it comes up. When
the queue is full new calls are dropped and counted (monitoring must never hold the factory up);
status messages per label are coalesced, the latest wins.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import Field

from autopyfactory import __version__
from autopyfactory.config.sources import redact_url
from autopyfactory.model import Decision, Pilot
from autopyfactory.plugins.base import FactoryContext, MonitorPlugin, PluginError, PluginOptions

log = logging.getLogger("autopyfactory.monitor.apf")

# apfmon keeps the last status messages of a label in Redis, 1024 characters each
MAX_STATUS_CHARS = 1024


class APFOptions(PluginOptions):
    """monitor.conf keys ``monitor.apf.*`` (besides ``monitorplugin`` and ``monitorURL``)."""

    timeout: float = Field(10.0, gt=0, description="seconds per HTTP call")
    queuesize: int = Field(
        10000, ge=1, description="calls waiting for the monitor before new ones are dropped"
    )
    retry: float = Field(5.0, gt=0, description="first retry delay after a failed call (doubles each time)")
    maxbackoff: float = Field(300.0, gt=0, description="longest retry delay")


def format_label_message(decision: Decision) -> str:
    """The chain as apfmon shows it: ``Ready:in=0,ret=40;MaxPerCycle:in=40,ret=20``."""
    text = ";".join(f"{s.plugin}:in={s.n_in},ret={s.n_out}" for s in decision.steps)
    return text[:MAX_STATUS_CHARS]


@dataclass
class MonitorStats:
    sent: int = 0
    failed: int = 0  # attempts that failed (each retry counts)
    dropped: int = 0  # calls given up: queue full, or refused by the monitor (4xx)
    registered: bool = False
    last_error: str | None = None
    calls: list[str] = field(default_factory=list)  # last few call descriptions, for status


class _Retryable(Exception):
    pass


@dataclass
class _Call:
    what: str  # "jobs" | "status"
    label: str
    body: Any = None


class APF(MonitorPlugin):
    name = "APF"
    Options = APFOptions

    def __init__(
        self, section: str, options: PluginOptions, factory: FactoryContext, *, url: str | None = None
    ) -> None:
        super().__init__(section, options, factory)
        self.opts = options if isinstance(options, APFOptions) else APFOptions()
        base = url or factory.monitor_url
        if not base:
            raise PluginError(f"monitor.conf [{section}]: monitorURL is required for monitorplugin = APF")
        parts = urllib.parse.urlsplit(base)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise PluginError(f"monitor.conf [{section}] monitorURL: not an http(s) URL: {base!r}")
        self.url = base.rstrip("/")
        self.shown = redact_url(self.url)  # for messages: a user:password in monitorURL never shows
        self.fid = factory.factory_id
        self.stats = MonitorStats()
        self._cond = threading.Condition()
        self._calls: deque[_Call] = deque()
        self._status: dict[str, str] = {}  # label -> latest message waiting to be sent
        self._labels: dict[str, None] = {}  # every label we want apfmon to know, in order
        self._known: set[str] = set()  # labels apfmon knows
        self._want_factory = False
        self._closing = False
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name=f"monitor APF {section}", daemon=True)
        self._thread.start()

    # -- the MonitorPlugin interface: never blocks ----------------------------------------------

    def register_factory(self, queues: Sequence[str]) -> None:
        with self._cond:
            self._want_factory = True
            self.stats.registered = False
            for q in queues:
                self._labels.setdefault(q, None)
            self._cond.notify()

    def register_pilots(self, queue: str, pilots: Sequence[Pilot]) -> None:
        if not pilots:
            return
        body = [{"cid": p.backend_id, "label": queue, "factory": self.fid} for p in pilots]
        with self._cond:
            self._labels.setdefault(queue, None)
            self._enqueue(_Call("jobs", queue, body))

    def update_label(self, queue: str, message: str) -> None:
        if not message:
            return
        with self._cond:
            self._labels.setdefault(queue, None)
            if queue not in self._status and not self._enqueue(_Call("status", queue)):
                return
            self._status[queue] = message[:MAX_STATUS_CHARS]

    def close(self, timeout: float = 2.0) -> None:
        """Send what is queued for up to ``timeout`` seconds, then stop."""
        with self._cond:
            self._closing = True
            self._cond.notify()
        self._thread.join(timeout)
        with self._cond:
            self._stopped = True
            self._cond.notify()
        # a call still in flight ends by its own timeout; the thread is a daemon, do not wait for it
        self._thread.join(0.5)

    def pending(self) -> int:
        with self._cond:
            return len(self._calls)

    # -- worker ---------------------------------------------------------------------------------

    def _enqueue(self, call: _Call) -> bool:
        if self._stopped:
            return False
        if len(self._calls) >= self.opts.queuesize:
            self.stats.dropped += 1
            if self.stats.dropped in (1, 10, 100) or self.stats.dropped % 1000 == 0:
                log.warning(
                    "%s: monitor %s is behind, %d calls dropped so far",
                    self.section,
                    self.shown,
                    self.stats.dropped,
                )
            return False
        self._calls.append(call)
        self._cond.notify()
        return True

    def _next_step(self) -> str | None:
        """What the worker should do next (under the lock), or None when idle."""
        if self._want_factory:
            return "factory"
        if any(label not in self._known for label in self._labels):
            return "labels"
        if self._calls:
            return "call"
        return None

    def _run(self) -> None:
        delay = 0.0
        while True:
            with self._cond:
                while not self._stopped and self._next_step() is None and not self._closing:
                    self._cond.wait()
                step = self._next_step()
                if self._stopped or (self._closing and step is None):
                    return
            try:
                if step == "factory":
                    self._register_factory()
                elif step == "labels":
                    self._register_labels()
                else:
                    self._send_next()
                delay = 0.0
            except _Retryable as exc:
                self.stats.failed += 1
                self.stats.last_error = str(exc)
                delay = min(self.opts.maxbackoff, max(self.opts.retry, delay * 2))
                log.warning("%s: %s; retrying in %.1fs", self.section, exc, delay)
                with self._cond:
                    if self._closing:
                        return  # shutting down: do not wait for a dead monitor
                    self._cond.wait_for(lambda: self._stopped or self._closing, timeout=delay)

    def _register_factory(self) -> None:
        settings = self.factory.settings
        body = {
            "version": __version__,
            "email": settings.factoryAdminEmail or "",
            "url": settings.baseLogDirUrl or "",
        }
        self._request("PUT", f"/factories/{_q(self.fid)}", json_body=body)
        answer = self._request("GET", f"/labels?{urllib.parse.urlencode({'factory': self.fid})}")
        known = _label_names(answer)
        with self._cond:
            self._known = known
            self._want_factory = False
            self.stats.registered = True

    def _register_labels(self) -> None:
        with self._cond:
            new = [label for label in self._labels if label not in self._known]
        body = [
            {
                "name": label,
                "factory": self.fid,
                "wmsqueue": "",
                "batchqueue": "",
                "resource": "",
                "localqueue": "",
            }
            for label in new
        ]
        self._request("PUT", "/labels", json_body=body)
        with self._cond:
            self._known.update(new)

    def _send_next(self) -> None:
        with self._cond:
            call = self._calls[0]
            message = self._status.get(call.label) if call.what == "status" else None
        try:
            if call.what == "jobs":
                self._request("PUT", "/jobs", json_body=call.body)
            elif message is not None:
                self._request(
                    "POST", f"/labels/{_q(self.fid)}:{_q(call.label)}", form_body={"status": message}
                )
        except _GivenUp:
            pass
        with self._cond:
            self._calls.popleft()
            if call.what == "status" and self._status.get(call.label) == message:
                del self._status[call.label]
            elif call.what == "status" and call.label in self._status:
                # a newer message arrived while this one was in flight: send it too
                self._calls.append(_Call("status", call.label))

    def _request(
        self,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        form_body: dict[str, str] | None = None,
    ) -> Any:
        url = self.url + path
        headers = {"User-Agent": f"autopyfactory/{__version__}", "Accept": "application/json"}
        data = None
        if json_body is not None:
            data = json.dumps(json_body).encode()
            headers["Content-Type"] = "application/json"
        elif form_body is not None:
            data = urllib.parse.urlencode(form_body).encode()
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        request = urllib.request.Request(url, data=data, headers=headers, method=method)
        what = f"{method} {path.split('?')[0]}"
        try:
            with urllib.request.urlopen(request, timeout=self.opts.timeout) as resp:
                raw = resp.read(4 * 1024 * 1024)
        except urllib.error.HTTPError as exc:
            if 400 <= exc.code < 500 and exc.code not in (408, 429):
                self.stats.dropped += 1
                self.stats.last_error = f"{what}: HTTP {exc.code}"
                log.warning(
                    "%s: monitor %s refused %s (HTTP %d); dropped", self.section, self.shown, what, exc.code
                )
                if method == "GET":
                    return None
                raise _GivenUp() from None
            raise _Retryable(f"monitor {self.shown}: {what}: HTTP {exc.code}") from None
        except (OSError, ValueError) as exc:  # URLError, timeouts, refused, resets
            reason = getattr(exc, "reason", exc)
            raise _Retryable(f"monitor {self.shown}: {what}: {reason}") from None
        self.stats.sent += 1
        self.stats.calls = [*self.stats.calls[-9:], what]
        if not raw:
            return None
        try:
            return json.loads(raw)
        except ValueError:
            return None


class _GivenUp(Exception):
    """The monitor refused this call for good (4xx): drop it and go on."""


def _q(text: str) -> str:
    return urllib.parse.quote(text, safe="@-._~")


def _label_names(answer: Any) -> set[str]:
    """Label names from apfmon's GET /labels answer (a list of label objects or names)."""
    names: set[str] = set()
    if isinstance(answer, dict):
        answer = answer.get("labels") or answer.get("data") or []
    if isinstance(answer, list):
        for item in answer:
            if isinstance(item, str):
                names.add(item)
            elif isinstance(item, dict) and isinstance(item.get("name"), str):
                names.add(item["name"])
    return names


def wait_idle(plugin: APF, timeout: float) -> bool:
    """Wait until the plugin has nothing left to send (for tests and orderly shutdown)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with plugin._cond:
            if plugin._next_step() is None:
                return True
        time.sleep(0.01)
    return False
