"""``wmsstatusplugin = Panda``: job statistics per PanDA queue, read from a PanDA server.

One poller per PanDA server (URL + auth + mode), however many factory queues read it.

* ``api`` mode (default, panda-server >= 0.5.2): ``GET {url}/statistics/active_job_stats_by_site``
  with ``Accept: application/json``; the JSON envelope ``{"success", "message", "data"}`` carries
  ``{queue: {jobStatus: n}}``. Queues that count only some prodSourceLabels or resource types
  (``wmsstatus.panda.prodsourcelabels`` / ``.resourcetypes``) make the poller use
  ``statistics/active_job_detailed_stats_by_site`` instead (``{queue: {rtype: {label: {status: n}}}}``).
* ``legacy`` mode (panda-server <= 0.8.1): ``GET {url}/getJobStatisticsPerSite``, a protocol-0
  pickle read by a restricted unpickler (``panda_legacy``) that builds only dicts, strings and ints.

States map to ready/notready/running/done/failed as AutoPyFactory's mappings.conf does, summed over
labels. Anything that is not a clean answer (``success: false``, non-200, non-JSON, a Python repr,
a truncated body, a timeout, a refused connection) raises ``BackendError``: "no fresh information",
never "zero jobs". A queue absent from a clean answer has 0 jobs.

Site status (online/test/offline/brokeroff) comes from ``wmsstatus.panda.sitestatus``: ``panda``
(``{url}/metaconfig/get_site_specs?type=all``, the queue descriptions the server holds), ``none``,
or a JSON document by URL or path (e.g. a CRIC PanDA-queue dump). See docs/panda.md.
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import ssl
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Hashable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from autopyfactory import __version__
from autopyfactory.config.bounds import SECONDS_MAX
from autopyfactory.model import Demand, WmsSnapshot
from autopyfactory.plugins.base import (
    BackendError,
    FactoryContext,
    PluginError,
    PluginOptions,
    WmsStatusPlugin,
)
from autopyfactory.plugins.keys import auth_field
from autopyfactory.plugins.wmsstatus.panda_legacy import UnsafePickle, safe_loads
from autopyfactory.redact import redact

if TYPE_CHECKING:
    from autopyfactory.config.models import QueueConfig

log = logging.getLogger("autopyfactory.wmsstatus.panda")

DEFAULT_API_URL = "http://pandaserver.cern.ch:25080/api/v1"
DEFAULT_LEGACY_URL = "http://pandaserver.cern.ch:25085/server/panda"

BY_SITE = "statistics/active_job_stats_by_site"
DETAILED = "statistics/active_job_detailed_stats_by_site"
SITE_SPECS = "metaconfig/get_site_specs"
LEGACY = "getJobStatisticsPerSite"

# AutoPyFactory's [PANDAWMSSTATUS-JOBSSTATISTICSPERSITE2INFO] (mappings.conf)
STATE_MAP: Mapping[str, str] = {
    "pending": "notready",
    "defined": "notready",
    "assigned": "notready",
    "waiting": "notready",
    "throttled": "notready",
    "activated": "ready",
    "starting": "running",
    "sent": "running",
    "running": "running",
    "holding": "running",
    "transferring": "running",
    "finished": "done",
    "failed": "failed",
    "cancelled": "failed",
}
INFO_FIELDS = ("ready", "notready", "running", "done", "failed")
SITE_STATUSES = frozenset({"online", "test", "offline", "brokeroff"})

# A full answer for every PanDA queue is well under this; more means something is wrong.
MAX_BODY_BYTES = 64 * 1024 * 1024
_LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})


def _names(value: str | None) -> frozenset[str] | None:
    if value is None:
        return None
    items = frozenset(v.strip() for v in value.split(",") if v.strip())
    return items or None


class PandaOptions(PluginOptions):
    """Queue keys ``wmsstatus.panda.*`` (poll interval and maxage are [Factory] keys, see below)."""

    url: str | None = Field(
        None,
        description="API base (default http://pandaserver.cern.ch:25080/api/v1; legacy mode: "
        "http://pandaserver.cern.ch:25085/server/panda)",
    )
    mode: Literal["api", "legacy"] = Field(
        "api", description="api (panda-server >= 0.5.2, JSON) or legacy (getJobStatisticsPerSite pickle)"
    )
    auth: str | None = auth_field(
        None, "X509", "Token", description="auth.conf profile: X509 (client proxy) or Token (bearer)"
    )
    timeout: float = Field(60.0, gt=0, le=3600, description="seconds for one whole request, body included")
    cafile: str | None = Field(None, description="CA bundle to verify the server (https)")
    capath: str | None = Field(None, description="CA directory, e.g. /etc/grid-security/certificates")
    sitestatus: str | None = Field(
        None, description="panda (api mode default), none (legacy default), or a JSON URL/path"
    )
    sitestatus_interval: float = Field(
        600.0,
        alias="sitestatus.interval",
        gt=0,
        le=SECONDS_MAX,
        description="seconds between site-status refreshes",
    )
    sitestatus_maxage: float = Field(
        3600.0,
        alias="sitestatus.maxage",
        gt=0,
        le=SECONDS_MAX,
        description="seconds a site status stays valid when refreshes fail",
    )
    prodsourcelabels: str | None = Field(None, description="count only these labels (comma list)")
    resourcetypes: str | None = Field(None, description="count only these resource types (comma list)")

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        parts = urllib.parse.urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an http:// or https:// URL")
        return value.rstrip("/")

    @model_validator(mode="after")
    def _mode_rules(self) -> PandaOptions:
        if self.mode == "legacy" and (self.prodsourcelabels or self.resourcetypes):
            raise ValueError(
                "prodsourcelabels/resourcetypes need mode = api: the legacy call has no per-label counts"
            )
        if self.mode == "legacy" and self.sitestatus == "panda":
            raise ValueError("sitestatus = panda needs mode = api; give a JSON URL or path instead")
        return self

    def base_url(self) -> str:
        return self.url or (DEFAULT_LEGACY_URL if self.mode == "legacy" else DEFAULT_API_URL)

    def site_source(self) -> str:
        if self.sitestatus is None:
            return "none" if self.mode == "legacy" else "panda"
        return self.sitestatus


@dataclass(frozen=True)
class PandaEndpoint:
    """What makes two queues share one poller: the server and how we talk to it."""

    url: str
    mode: str
    auth: str | None
    timeout: float
    cafile: str | None
    capath: str | None
    sitestatus: str
    sitestatus_interval: float
    sitestatus_maxage: float

    def __str__(self) -> str:
        return f"Panda {redact_url(self.url)}"


# ---------------------------------------------------------------------------------------------
# Pure helpers


def redact_url(url: str) -> str:
    """The URL without user info, query or fragment (safe for logs and error messages)."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def demand_key(
    wmsqueue: str, labels: Iterable[str] | None = None, rtypes: Iterable[str] | None = None
) -> str:
    """The key of a (filtered) demand in the snapshot: ``Q`` or ``Q?prodsourcelabels=a,b&resourcetypes=X``."""
    params = []
    if labels:
        params.append("prodsourcelabels=" + ",".join(sorted(set(labels))))
    if rtypes:
        params.append("resourcetypes=" + ",".join(sorted(set(rtypes))))
    return wmsqueue + ("?" + "&".join(params) if params else "")


def parse_demand_key(key: str) -> tuple[str, frozenset[str] | None, frozenset[str] | None]:
    wmsqueue, sep, query = key.partition("?")
    if not sep:
        return key, None, None
    fields = dict(p.partition("=")[::2] for p in query.split("&") if p)
    return wmsqueue, _names(fields.get("prodsourcelabels")), _names(fields.get("resourcetypes"))


def map_states(counts: Mapping[str, int], unknown: set[str] | None = None) -> dict[str, int]:
    """PanDA job states -> ready/notready/running/done/failed; unmapped states go to ``unknown``."""
    out = dict.fromkeys(INFO_FIELDS, 0)
    for state, n in counts.items():
        field = STATE_MAP.get(state)
        if field is None:
            if unknown is not None:
                unknown.add(state)
            continue
        out[field] += n
    return out


def sum_detailed(
    site: Mapping[str, Mapping[str, Mapping[str, int]]],
    labels: frozenset[str] | None = None,
    rtypes: frozenset[str] | None = None,
) -> dict[str, int]:
    """Sum ``{rtype: {label: {state: n}}}`` over the wanted resource types and labels."""
    total: dict[str, int] = {}
    for rtype, by_label in site.items():
        if rtypes is not None and rtype not in rtypes:
            continue
        for label, states in by_label.items():
            if labels is not None and label not in labels:
                continue
            for state, n in states.items():
                total[state] = total.get(state, 0) + n
    return total


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_by_site(data: object, where: str) -> dict[str, dict[str, int]]:
    if not isinstance(data, dict):
        raise BackendError(where, f"'data' is {type(data).__name__}, expected an object of queues")
    for site, states in data.items():
        if not isinstance(states, dict) or not all(_is_count(v) for v in states.values()):
            raise BackendError(where, f"queue {site!r}: expected {{jobStatus: integer}}")
    return data


def check_detailed(data: object, where: str) -> dict[str, dict[str, dict[str, dict[str, int]]]]:
    if not isinstance(data, dict):
        raise BackendError(where, f"'data' is {type(data).__name__}, expected an object of queues")
    for site, by_rtype in data.items():
        ok = isinstance(by_rtype, dict) and all(
            isinstance(by_label, dict)
            and all(
                isinstance(states, dict) and all(_is_count(v) for v in states.values())
                for states in by_label.values()
            )
            for by_label in by_rtype.values()
        )
        if not ok:
            raise BackendError(where, f"queue {site!r}: expected {{resource_type: {{label: {{status: n}}}}}}")
    return data


def parse_envelope(body: bytes, where: str) -> Any:
    """The ``data`` of a ``{"success": true, ...}`` answer; anything else is a BackendError."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise BackendError(where, "answer is not UTF-8 text") from None
    try:
        doc = json.loads(text)
    except ValueError:
        stripped = text.lstrip()
        if stripped.startswith("{'"):
            raise BackendError(
                where, "answer is a Python repr, not JSON (was the Accept: application/json header dropped?)"
            ) from None
        raise BackendError(where, f"answer is not valid JSON ({len(body)} bytes; truncated?)") from None
    if not isinstance(doc, dict) or "success" not in doc:
        raise BackendError(where, "answer is not a PanDA {success, message, data} envelope")
    if doc["success"] is not True:
        message = str(doc.get("message") or "")[:300]
        raise BackendError(where, f"success=false: {message!r} (no fresh information)")
    return doc.get("data")


def parse_site_statuses(doc: object) -> dict[str, str]:
    """Site status per PanDA queue from a PanDA envelope, ``{queue: {"status": s}}``,
    ``{queue: s}`` or ``[{"name": queue, "status": s}]`` (CRIC-style dumps)."""
    if isinstance(doc, dict) and "success" in doc and "data" in doc:
        if doc["success"] is not True:
            raise ValueError(f"success=false: {str(doc.get('message') or '')[:300]!r}")
        doc = doc["data"]
    out: dict[str, str] = {}
    if isinstance(doc, dict):
        for queue, value in doc.items():
            status = value.get("status") if isinstance(value, dict) else value
            if isinstance(status, str):
                out[str(queue)] = status.strip().lower()
    elif isinstance(doc, list):
        for item in doc:
            if not isinstance(item, dict):
                continue
            name = item.get("name") or item.get("panda_resource") or item.get("nickname")
            status = item.get("status")
            if isinstance(name, str) and isinstance(status, str):
                out[name] = status.strip().lower()
    else:
        raise ValueError(f"expected an object or a list of queues, got {type(doc).__name__}")
    return out


# ---------------------------------------------------------------------------------------------
# HTTP


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """A redirect would carry our Authorization header elsewhere: treat it as an error."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # type: ignore[no-untyped-def]
        return None


class Panda(WmsStatusPlugin):
    name = "Panda"
    Options = PandaOptions

    # [Factory] keys the engine reads for this plugin's poller (AutoPyFactory names and defaults)
    interval_key: ClassVar[str] = "wmsstatus.panda.sleep"
    maxage_key: ClassVar[str] = "wmsstatus.panda.maxage"
    default_interval: ClassVar[float] = 150.0
    default_maxage: ClassVar[float] = 360.0

    @classmethod
    def timing(cls, factory_raw: Mapping[str, str]) -> tuple[float, float]:
        """(poll interval, maxage) from [Factory] raw values; a bad value names its key."""

        def read(key: str, default: float) -> float:
            raw = factory_raw.get(key)
            if raw is None or raw.strip() in ("", "None", "none"):
                return default
            try:
                value = float(raw)
            except ValueError:
                raise ValueError(f"[Factory] {key}: expected seconds, got {raw!r}") from None
            if value <= 0:
                raise ValueError(f"[Factory] {key}: must be > 0, got {raw!r}")
            return value

        return read(cls.interval_key, cls.default_interval), read(cls.maxage_key, cls.default_maxage)

    @classmethod
    def _options(cls, queue: QueueConfig) -> PandaOptions:
        options = queue.plugin_options("wmsstatus")
        return options if isinstance(options, PandaOptions) else PandaOptions()

    @classmethod
    def endpoint(cls, queue: QueueConfig, factory: FactoryContext) -> Hashable:
        o = cls._options(queue)
        return PandaEndpoint(
            url=o.base_url(),
            mode=o.mode,
            auth=o.auth,
            timeout=o.timeout,
            cafile=o.cafile,
            capath=o.capath,
            sitestatus=o.site_source(),
            sitestatus_interval=o.sitestatus_interval,
            sitestatus_maxage=o.sitestatus_maxage,
        )

    @classmethod
    def demand_key(cls, queue: QueueConfig, factory: FactoryContext) -> str | None:
        """Where this queue's demand is in the snapshot (its wmsqueue, plus its label filter)."""
        if not queue.wmsqueue:
            return None
        o = cls._options(queue)
        return demand_key(queue.wmsqueue, _names(o.prodsourcelabels), _names(o.resourcetypes))

    def __init__(self, endpoint: Hashable, factory: FactoryContext) -> None:
        super().__init__(endpoint, factory)
        if not isinstance(endpoint, PandaEndpoint):
            raise PluginError(f"Panda poller needs a PandaEndpoint, got {type(endpoint).__name__}")
        self.ep = endpoint
        self.where = str(endpoint)
        self._lock = threading.Lock()
        self._warned_states: set[str] = set()
        self._auth_kind: str | None = None
        self._auth_options: Any = None
        self._opener: urllib.request.OpenerDirector | None = None
        self._proxy_stamp: tuple[float, int] | None = None
        self._sites: dict[str, str] = {}
        self._sites_at: float | None = None  # time of the last successful site-status read
        self._sites_tried: float | None = None
        # queue -> (its demand key, its share weight): queues that filter labels of a PanDA queue
        # another queue also serves share those labels' jobs instead of counting them twice
        self._members: dict[str, tuple[str, float]] = {}
        scheme = urllib.parse.urlsplit(endpoint.url).scheme
        host = urllib.parse.urlsplit(endpoint.url).hostname or ""
        if endpoint.auth:
            profile = factory.auth(endpoint.auth)
            self._auth_kind = profile.plugin
            self._auth_options = profile.options
            if profile.plugin == "X509":
                if scheme != "https":
                    raise PluginError(
                        f"{self.where}: auth profile {endpoint.auth!r} is an X509 proxy, which needs an https:// URL"
                    )
            elif profile.plugin == "Token":
                if scheme != "https" and host not in _LOOPBACK:
                    raise PluginError(
                        f"{self.where}: auth profile {endpoint.auth!r} is a bearer token; "
                        "refusing to send it over plain http:// (use https://)"
                    )
            else:
                raise PluginError(
                    f"{self.where}: auth profile {endpoint.auth!r} is {profile.plugin}; Panda takes X509 or Token"
                )

    def register(self, queue: QueueConfig) -> None:
        from autopyfactory.decide.share import queue_weight

        key = type(self).demand_key(queue, self.factory)
        if key is not None:
            with self._lock:
                self._members[queue.name] = (key, queue_weight(queue))

    # -- transport ------------------------------------------------------------------------------

    def _ssl_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=self.ep.cafile, capath=self.ep.capath)
        if self.ep.capath is None and os.path.isdir("/etc/grid-security/certificates"):
            ctx.load_verify_locations(capath="/etc/grid-security/certificates")
        if self._auth_kind == "X509":
            proxy = self._proxy_path()
            try:
                # a proxy file holds the certificate, its key and the chain
                ctx.load_cert_chain(certfile=proxy)
            except (OSError, ssl.SSLError) as exc:
                raise BackendError(
                    self.where, f"cannot load X509 proxy {proxy}: {exc.__class__.__name__}"
                ) from None
        return ctx

    def _proxy_path(self) -> str:
        return str(Path(self._auth_options.proxyfile).expanduser())

    def _get_opener(self) -> urllib.request.OpenerDirector:
        stamp = None
        if self._auth_kind == "X509":
            # a renewed proxy replaces the file: reload it when it changes
            try:
                st = os.stat(self._proxy_path())
            except OSError as exc:
                raise BackendError(self.where, f"X509 proxy {self._proxy_path()}: {exc.strerror}") from None
            stamp = (st.st_mtime, st.st_size)
        if self._opener is None or stamp != self._proxy_stamp:
            handlers: list[urllib.request.BaseHandler] = [_NoRedirect()]
            if urllib.parse.urlsplit(self.ep.url).scheme == "https":
                handlers.append(urllib.request.HTTPSHandler(context=self._ssl_context()))
            self._opener = urllib.request.build_opener(*handlers)
            self._proxy_stamp = stamp
        return self._opener

    def _headers(self) -> dict[str, str]:
        headers = {
            "Accept": "application/json",
            "User-Agent": f"autopyfactory/{__version__}",
            "Connection": "close",
        }
        if self._auth_kind == "Token":
            from autopyfactory.plugins.auth.token import Token

            try:
                token = Token.read(self._auth_options)
            except (OSError, ValueError) as exc:
                # the messages name the file, never the token
                raise BackendError(self.where, f"auth profile {self.ep.auth!r}: {exc}") from None
            headers["Authorization"] = f"Bearer {token}"
            if self._auth_options.origin:
                headers["Origin"] = self._auth_options.origin
        return headers

    def fetch(self, path: str, *, query: Mapping[str, str] | None = None, json_accept: bool = True) -> bytes:
        """GET ``{url}/{path}`` and return the body of a 200 answer; everything else raises."""
        url = f"{self.ep.url}/{path}"
        if query:
            url += "?" + urllib.parse.urlencode(query)
        where = f"{self.where}/{path}"
        headers = self._headers()
        if not json_accept:
            headers.pop("Accept")
        request = urllib.request.Request(url, headers=headers, method="GET")
        deadline = time.monotonic() + self.ep.timeout
        try:
            with self._get_opener().open(request, timeout=self.ep.timeout) as resp:
                status = resp.status
                chunks: list[bytes] = []
                size = 0
                while True:
                    if time.monotonic() > deadline:
                        raise BackendError(where, f"timed out after {self.ep.timeout:g}s reading the answer")
                    chunk = resp.read(65536)
                    if not chunk:
                        break
                    size += len(chunk)
                    if size > MAX_BODY_BYTES:
                        raise BackendError(where, f"answer larger than {MAX_BODY_BYTES} bytes")
                    chunks.append(chunk)
        except BackendError:
            raise
        except urllib.error.HTTPError as exc:
            # a server that echoes the request (or part of it) must not leak the token
            token = headers.get("Authorization", "").removeprefix("Bearer ")
            snippet = _snippet(exc, [token] if token else [])
            raise BackendError(where, f"HTTP {exc.code}: {snippet}") from None
        except http.client.IncompleteRead as exc:
            raise BackendError(where, f"answer truncated ({len(exc.partial)} bytes read)") from None
        except (TimeoutError, ssl.SSLError, http.client.HTTPException, urllib.error.URLError, OSError) as exc:
            raise BackendError(where, _describe(exc, self.ep.timeout)) from None
        if status != 200:
            raise BackendError(where, f"HTTP {status} (expected 200)")
        return b"".join(chunks)

    # -- polling --------------------------------------------------------------------------------

    def poll(self, now: float, wmsqueues: frozenset[str]) -> WmsSnapshot:
        with self._lock:
            keys = {key: parse_demand_key(key) for key in wmsqueues}
            filtered = {k: v for k, v in keys.items() if v[1] is not None or v[2] is not None}
            unknown: set[str] = set()
            per_site: dict[str, dict[str, int]]
            detailed: dict[str, dict[str, dict[str, dict[str, int]]]] | None = None
            if self.ep.mode == "legacy":
                per_site = self._poll_legacy()
            elif filtered:
                where = f"{self.where}/{DETAILED}"
                detailed = check_detailed(parse_envelope(self.fetch(DETAILED), where), where)
                per_site = {site: sum_detailed(d) for site, d in detailed.items()}
            else:
                where = f"{self.where}/{BY_SITE}"
                per_site = check_by_site(parse_envelope(self.fetch(BY_SITE), where), where)
            sites = self._site_statuses(now)

            demands: dict[str, Demand] = {}
            for site, counts in per_site.items():
                demands[site] = Demand(
                    site, **map_states(counts, unknown), site_status=sites.get(site), time=now
                )
            for key, (site, labels, rtypes) in keys.items():
                if key in filtered:
                    counts = sum_detailed((detailed or {}).get(site, {}), labels, rtypes)
                    demands[key] = Demand(
                        key, **map_states(counts, unknown), site_status=sites.get(site), time=now
                    )
                elif key not in demands:
                    # absent from a clean answer: no jobs there
                    demands[key] = Demand(key, site_status=sites.get(site), time=now)
            if detailed is not None:
                self._share_overlaps(keys, detailed, sites, now, demands, unknown)
            new = unknown - self._warned_states
            if new:
                self._warned_states |= new
                log.warning("%s: ignoring unknown PanDA job states %s", self.where, ", ".join(sorted(new)))
            return WmsSnapshot(time=now, demands=demands)

    def _share_overlaps(
        self,
        keys: Mapping[str, tuple[str, frozenset[str] | None, frozenset[str] | None]],
        detailed: Mapping[str, Mapping[str, Mapping[str, Mapping[str, int]]]],
        sites: Mapping[str, str],
        now: float,
        demands: dict[str, Demand],
        unknown: set[str],
    ) -> None:
        """Keys of one PanDA queue whose filters overlap (an unfiltered group and a label-filtered
        queue) share each (resource type, label) cell's jobs by weight instead of each counting them."""
        from autopyfactory.decide.share import split_overlapping

        by_site: dict[str, list[str]] = {}
        for key, (site, _labels, _rtypes) in keys.items():
            by_site.setdefault(site, []).append(key)
        weights: dict[str, float] = {}
        for key, weight in self._members.values():
            weights[key] = weights.get(key, 0.0) + weight
        for site, site_keys in by_site.items():
            if len(site_keys) < 2 or site not in detailed:
                continue
            cells = {
                (rtype, label): map_states(states, unknown)
                for rtype, by_label in detailed[site].items()
                for label, states in by_label.items()
            }

            def covers(cell: Hashable, key: str) -> bool:
                _site, labels, rtypes = keys[key]
                rtype, label = cell  # type: ignore[misc]
                return (labels is None or label in labels) and (rtypes is None or rtype in rtypes)

            members = {k: (lambda cell, k=k: covers(cell, k), weights.get(k, 1.0)) for k in site_keys}
            for key, counts in split_overlapping(cells, members).items():
                demands[key] = Demand(
                    key, **{f: counts.get(f, 0) for f in INFO_FIELDS}, site_status=sites.get(site), time=now
                )

    def _poll_legacy(self) -> dict[str, dict[str, int]]:
        where = f"{self.where}/{LEGACY}"
        body = self.fetch(LEGACY)
        try:
            return safe_loads(body)
        except UnsafePickle as exc:
            raise BackendError(where, f"refused the answer: {exc}") from None

    def _site_statuses(self, now: float) -> dict[str, str]:
        """Site status per queue, refreshed every ``sitestatus.interval``; a failed refresh keeps the
        last answer until ``sitestatus.maxage`` (then no site status: StatusTest/StatusOffline give 0)."""
        source = self.ep.sitestatus
        if source == "none":
            return {}
        due = self._sites_tried is None or now - self._sites_tried >= self.ep.sitestatus_interval
        if due:
            self._sites_tried = now
            try:
                self._sites = self._read_site_statuses(source)
                self._sites_at = now
                odd = {s for s in self._sites.values() if s not in SITE_STATUSES}
                if odd:
                    log.info(
                        "%s: site statuses outside %s count as online: %s",
                        self.where,
                        "/".join(sorted(SITE_STATUSES)),
                        ", ".join(sorted(odd)),
                    )
            except (BackendError, OSError, ValueError) as exc:
                log.warning("%s: site status not refreshed: %s", self.where, exc)
        if self._sites_at is None or now - self._sites_at > self.ep.sitestatus_maxage:
            return {}
        return self._sites

    def _read_site_statuses(self, source: str) -> dict[str, str]:
        if source == "panda":
            where = f"{self.where}/{SITE_SPECS}"
            return parse_site_statuses(
                {
                    "success": True,
                    "data": parse_envelope(self.fetch(SITE_SPECS, query={"type": "all"}), where),
                }
            )
        parts = urllib.parse.urlsplit(source)
        if parts.scheme in ("http", "https"):
            return parse_site_statuses(json.loads(self._fetch_url(source)))
        path = urllib.request.url2pathname(parts.path) if parts.scheme == "file" else source
        return parse_site_statuses(json.loads(Path(path).expanduser().read_text()))

    def _fetch_url(self, url: str) -> bytes:
        """A plain GET of an absolute URL (site-status documents), no credentials sent."""
        request = urllib.request.Request(url, headers={"Accept": "application/json"})
        try:
            with urllib.request.build_opener(_NoRedirect()).open(request, timeout=self.ep.timeout) as resp:
                return resp.read(MAX_BODY_BYTES)
        except urllib.error.HTTPError as exc:
            raise BackendError(redact_url(url), f"HTTP {exc.code}") from None
        except (TimeoutError, http.client.HTTPException, urllib.error.URLError, OSError) as exc:
            raise BackendError(redact_url(url), _describe(exc, self.ep.timeout)) from None

    def close(self) -> None:
        self._opener = None


def _snippet(exc: urllib.error.HTTPError, secrets: list[str]) -> str:
    """The start of an error body, secrets masked (also when only part of one is echoed)."""
    try:
        text = exc.read(300).decode("utf-8", "replace")
    except Exception:
        text = ""
    text = redact(" ".join(text.split()), secrets)
    reason = redact(str(exc.reason or "error"), secrets)
    return repr(text) if text else reason


def _describe(exc: BaseException, timeout: float) -> str:
    if isinstance(exc, urllib.error.URLError) and not isinstance(exc.reason, str):
        exc = exc.reason if isinstance(exc.reason, BaseException) else exc
    if isinstance(exc, TimeoutError | ssl.SSLError) and "timed out" in str(exc):
        return f"timed out after {timeout:g}s"
    if isinstance(exc, TimeoutError):
        return f"timed out after {timeout:g}s"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, http.client.RemoteDisconnected):
        return "server closed the connection without an answer"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return f"{exc.__class__.__name__}: {exc}"
