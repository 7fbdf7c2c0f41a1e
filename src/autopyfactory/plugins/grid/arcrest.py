"""A client of the ARC CE REST interface 1.0 (A-REX 6), with our X509 proxy as client certificate.

It speaks the API as A-REX really answers it (grid-components.md section 3):

* one job is an object, several are a list (``{"job": {...}}`` / ``{"job": [...]}``), none is an
  empty body or ``{}``;
* job actions answer HTTP 201 with a status code per job inside (a broken description is a
  per-job 500 inside a 201);
* ``action=status`` and the other JSON actions need ``Content-Type: application/json`` (without
  it A-REX answers 201 with an empty body);
* the ``Location`` of a new delegation is malformed (``.../delegations?action=new/<id>``): the id
  is its last path segment; A-REX 6 writes version 2 into its certificate requests.

One client per (CE, proxy file) is shared by the plugins of a process: it keeps one delegation,
renews it when the proxy file changes (the credential manager renewed it), and reloads its TLS
client certificate at the same time. The delegation id survives restarts in the state directory.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from autopyfactory.plugins.base import BackendError

if TYPE_CHECKING:
    import requests

log = logging.getLogger(__name__)

DEFAULT_PORT = 443
DEFAULT_PATH = "/arex"
CHUNK = 500  # job ids per action request
# per-job or HTTP refusals that mean "no room now": a cascade spills to its next tier
_CAPACITY_CODES = {"429", "503"}
_CAPACITY_REASON = re.compile(
    r"not allowed|limit|quota|too many|overload|busy|no free|closed|draining|reached", re.IGNORECASE
)


def ce_url(text: str) -> str:
    """``host``, ``host:port`` or ``https://host[:port][/path]`` -> ``https://host:port/path``."""
    value = text.strip().rstrip("/")
    if not value or " " in value:
        raise ValueError(f"expected an ARC CE host or https:// URL, got {text!r}")
    if "://" not in value:
        value = "https://" + value
    parts = urlsplit(value)
    if parts.scheme != "https" or not parts.hostname:
        raise ValueError(f"expected an https:// URL, got {text!r}")
    try:
        port = parts.port or DEFAULT_PORT
    except ValueError:
        raise ValueError(f"bad port in {text!r}") from None
    path = parts.path or DEFAULT_PATH
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return f"https://{host}:{port}{path}"


def as_list(payload: object, key: str = "job") -> list[dict[str, Any]]:
    """A-REX's one-object-or-list answer as a list (empty for an empty answer)."""
    if not isinstance(payload, Mapping):
        return []
    value = payload.get(key)
    if value is None:
        return []
    if isinstance(value, Mapping):
        return [dict(value)]
    return [dict(v) for v in value if isinstance(v, Mapping)]


def delegation_id(location: str) -> str:
    """The id in A-REX's (malformed) ``Location: /arex/rest/1.0/delegations?action=new/<id>``."""
    ident = location.strip().rstrip("/").rsplit("/", 1)[-1]
    if not ident or "?" in ident or "=" in ident:
        raise ValueError(f"no delegation id in Location {location!r}")
    return ident


_JOBNAME = re.compile(r'\(\s*jobname\s*=\s*"((?:[^"]|"")*)"', re.IGNORECASE)


def jobname_in(description: str) -> str | None:
    """The job name in an xRSL description as A-REX keeps it (it nests the client's text, with
    doubled quotes, in ``clientxrsl``: the first plain ``jobname`` relation is the job's)."""
    for match in _JOBNAME.finditer(description):
        name = match.group(1).replace('""', '"')
        if name:
            return name
    return None


def is_capacity(code: str | int | None, reason: str | None) -> bool:
    return str(code) in _CAPACITY_CODES or bool(reason and _CAPACITY_REASON.search(reason))


@dataclass(frozen=True, slots=True)
class JobResult:
    """One job's entry in an action's answer."""

    job_id: str | None
    code: str
    reason: str
    state: str | None = None
    info: Mapping[str, Any] | None = None

    @property
    def ok(self) -> bool:
        return self.code.startswith("2")


def parse_results(payload: object) -> list[JobResult]:
    out = []
    for entry in as_list(payload):
        info = entry.get("info_document")
        activity = info.get("ComputingActivity") if isinstance(info, Mapping) else None
        out.append(
            JobResult(
                job_id=entry.get("id"),
                code=str(entry.get("status-code", "")),
                reason=str(entry.get("reason", "")),
                state=entry.get("state"),
                info=activity if isinstance(activity, Mapping) else None,
            )
        )
    return out


@dataclass(frozen=True, slots=True)
class ArcEndpoint:
    """One CE as reached with one proxy: what queues share (a poller, a client, a delegation)."""

    url: str  # https://host:port/arex
    proxy: str  # the proxy file (client certificate and the credential we delegate)
    cadir: str
    timeout: float = 60.0
    profile: str = ""  # the auth profile, for messages

    @property
    def rest(self) -> str:
        return f"{self.url}/rest/1.0"

    @property
    def label(self) -> str:
        return f"arc:{self.url}"


def _fingerprint(path: str) -> tuple[int, int, int]:
    st = os.stat(path)
    return (st.st_ino, st.st_mtime_ns, st.st_size)


class ArcClient:
    def __init__(self, endpoint: ArcEndpoint, state_dir: Path | None = None) -> None:
        self.ep = endpoint
        self.where = endpoint.label
        self.state_dir = state_dir
        self._lock = threading.RLock()
        self._session: requests.Session | None = None
        self._proxy_seen: tuple[int, int, int] | None = None
        self._delegation: str | None = None
        self._delegated_for: tuple[int, int, int] | None = None
        self.requests_made = 0  # for benchmarks and tests
        # names of jobs this process submitted: A-REX's info lacks them until it has processed a job
        self._names: dict[str, str] = {}

    # -- transport ------------------------------------------------------------------------------

    def _proxy_changed(self) -> bool:
        """Reload the TLS identity when the proxy file changed; True when it did."""
        try:
            seen = _fingerprint(self.ep.proxy)
        except OSError as exc:
            who = f" (auth profile {self.ep.profile})" if self.ep.profile else ""
            raise BackendError(self.where, f"X509 proxy {self.ep.proxy}{who}: {exc.strerror}") from None
        changed = seen != self._proxy_seen
        if changed or self._session is None:
            import requests

            if self._session is not None:
                self._session.close()
            session = requests.Session()
            adapter = requests.adapters.HTTPAdapter(pool_connections=1, pool_maxsize=16)
            session.mount("https://", adapter)
            session.trust_env = False  # REQUESTS_CA_BUNDLE would silently replace the CA directory
            session.cert = self.ep.proxy  # certificate, key and chain in one file
            session.verify = self.ep.cadir
            session.headers["Accept"] = "application/json"
            session.headers["User-Agent"] = "autopyfactory"
            self._session = session
            self._proxy_seen = seen
        return changed

    def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        body: bytes | None = None,
        json_body: object = None,
        content_type: str | None = None,
        expect: Iterable[int] = (200, 201, 202),
    ) -> requests.Response:
        import requests

        with self._lock:
            self._proxy_changed()
            session = self._session
        assert session is not None
        headers = {}
        data = body
        if json_body is not None:
            data = json.dumps(json_body).encode()
            content_type = "application/json"  # without it A-REX answers with an empty body
        if content_type:
            headers["Content-Type"] = content_type
        url = f"{self.ep.rest}/{path}" if path else self.ep.rest
        self.requests_made += 1
        try:
            resp = session.request(
                method, url, params=params, data=data, headers=headers, timeout=(10, self.ep.timeout)
            )
        except requests.exceptions.SSLError as exc:
            raise BackendError(self.where, f"TLS failed: {_short(exc)}") from None
        except requests.exceptions.Timeout:
            raise BackendError(self.where, f"no answer within {self.ep.timeout:g}s") from None
        except requests.exceptions.ConnectionError as exc:
            raise BackendError(self.where, f"cannot connect: {_short(exc)}") from None
        except requests.exceptions.RequestException as exc:
            raise BackendError(self.where, f"request failed: {_short(exc)}") from None
        if resp.status_code not in set(expect):
            text = resp.text.strip().replace("\n", " ")[:200]
            capacity = is_capacity(resp.status_code, resp.reason or text)
            raise BackendError(
                self.where,
                f"{method} {path or '/'}: HTTP {resp.status_code} {resp.reason}"
                + (f": {text}" if text else ""),
                capacity=capacity,
            )
        return resp

    def _json(self, resp: requests.Response) -> object:
        if not resp.content.strip():
            return {}
        try:
            return resp.json()
        except ValueError:
            raise BackendError(self.where, f"answer is not JSON: {resp.text[:120]!r}") from None

    # -- jobs -----------------------------------------------------------------------------------

    def job_ids(self) -> list[str]:
        """Every job of our identity at the CE (ids only)."""
        return [str(j["id"]) for j in as_list(self._json(self.request("GET", "jobs"))) if j.get("id")]

    def submit(self, description: str, names: Sequence[str] = ()) -> list[JobResult]:
        """Submit one (multi-job) description; ``names`` are the jobs' names, in order."""
        resp = self.request(
            "POST",
            "jobs",
            params={"action": "new"},
            body=description.encode(),
            content_type="application/rsl",
        )
        results = parse_results(self._json(resp))
        with self._lock:
            if len(self._names) > 200_000:
                self._names.clear()
            for result, name in zip(results, names, strict=False):
                if result.ok and result.job_id:
                    self._names[result.job_id] = name
        return results

    def known_name(self, job_id: str) -> str | None:
        return self._names.get(job_id)

    def description_name(self, job_id: str) -> str | None:
        """A job's name from its stored description (None while A-REX has not stored it)."""
        resp = self.request("GET", f"jobs/{job_id}/diagnose/description", expect=(200, 404))
        return jobname_in(resp.text) if resp.status_code == 200 else None

    def action(self, action: str, job_ids: Sequence[str]) -> list[JobResult]:
        """status, info, kill, clean, restart for many jobs: one request per CHUNK ids."""
        out: list[JobResult] = []
        for chunk in _chunks(job_ids, CHUNK):
            body = {"job": [{"id": i} for i in chunk]}
            resp = self.request("POST", "jobs", params={"action": action}, json_body=body)
            out += parse_results(self._json(resp))
        return out

    def put_file(self, job_id: str, name: str, data: bytes) -> None:
        self.request(
            "PUT", f"jobs/{job_id}/session/{name}", body=data, content_type="application/octet-stream"
        )

    def get_file(self, job_id: str, name: str, limit: int) -> bytes | None:
        """A file of the job's session directory (None when it does not exist)."""
        resp = self.request("GET", f"jobs/{job_id}/session/{name}", expect=(200, 404))
        if resp.status_code == 404:
            return None
        return resp.content[:limit]

    # -- delegation -----------------------------------------------------------------------------

    def _state_file(self) -> Path | None:
        if self.state_dir is None:
            return None
        key = hashlib.sha1(f"{self.ep.url}|{self.ep.proxy}".encode()).hexdigest()[:16]
        return self.state_dir / "arc" / f"delegation-{key}.json"

    def _remember(self, ident: str | None) -> None:
        path = self._state_file()
        if path is None:
            return
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps({"url": self.ep.url, "proxy": self.ep.proxy, "id": ident}))
            os.replace(tmp, path)
        except OSError as exc:
            log.debug("%s: cannot remember the delegation: %s", self.where, exc)

    def _recall(self) -> str | None:
        path = self._state_file()
        try:
            return json.loads(path.read_text()).get("id") if path is not None else None
        except (OSError, ValueError):
            return None

    def _sign_and_put(self, ident: str, request_pem: bytes) -> None:
        from autopyfactory.credentials.proxy import ProxyError, sign_proxy_request

        try:
            signed = sign_proxy_request(request_pem, Path(self.ep.proxy).read_bytes(), now=time.time())
        except (OSError, ProxyError, ValueError) as exc:
            raise BackendError(
                self.where, f"cannot sign the delegation with {self.ep.proxy}: {exc}"
            ) from None
        self.request("PUT", f"delegations/{ident}", body=signed, content_type="application/x-pem-file")

    def delegation(self) -> str:
        """Our delegation id at the CE: made once, renewed whenever the proxy file changed."""
        with self._lock:
            self._proxy_changed()
            current = self._proxy_seen
            if self._delegation is None:
                recalled = self._recall()
                if recalled and self._renew(recalled):
                    self._delegation, self._delegated_for = recalled, current
                    return recalled
            elif self._delegated_for != current:
                if self._renew(self._delegation):
                    self._delegated_for = current
                    log.info("%s: delegation %s renewed with the new proxy", self.where, self._delegation)
                    return self._delegation
                self._delegation = None
            if self._delegation is None:
                resp = self.request("POST", "delegations", params={"action": "new"}, expect=(200, 201))
                try:
                    ident = delegation_id(resp.headers.get("Location", ""))
                except ValueError as exc:
                    raise BackendError(self.where, str(exc)) from None
                self._sign_and_put(ident, resp.content)
                self._delegation, self._delegated_for = ident, current
                self._remember(ident)
                log.info("%s: new delegation %s", self.where, ident)
            return self._delegation

    def _renew(self, ident: str) -> bool:
        """Renew a delegation in place; False when the CE no longer knows it."""
        resp = self.request(
            "POST", f"delegations/{ident}", params={"action": "renew"}, expect=(200, 201, 404, 500)
        )
        if resp.status_code in (404, 500) or b"BEGIN CERTIFICATE REQUEST" not in resp.content:
            return False
        self._sign_and_put(ident, resp.content)
        return True

    def close(self) -> None:
        with self._lock:
            if self._session is not None:
                self._session.close()
                self._session = None


def _chunks(items: Sequence[str], size: int) -> Iterator[list[str]]:
    for i in range(0, len(items), size):
        yield list(items[i : i + size])


def _short(exc: Exception) -> str:
    text = str(exc)
    # urllib3 wraps the real reason in layers of repr; keep the innermost useful part
    match = re.search(r"\[Errno -?\d+\] [^'\")]+|\[SSL[^\]]*\][^'\")]*|Connection refused", text)
    return (match.group(0) if match else text)[:200]


_clients: dict[tuple[ArcEndpoint, str], ArcClient] = {}
_clients_lock = threading.Lock()


def client_for(endpoint: ArcEndpoint, state_dir: Path | None) -> ArcClient:
    """The process's one client for this CE and proxy (shared by submit and status plugins)."""
    key = (endpoint, str(state_dir))
    with _clients_lock:
        client = _clients.get(key)
        if client is None:
            client = _clients[key] = ArcClient(endpoint, state_dir)
        return client
