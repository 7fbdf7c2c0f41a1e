"""The web side's settings, from ``[Factory]`` keys, checked before anything listens.

``web.address`` (default ``127.0.0.1:9642``; the older ``metrics.address`` is read when it is
unset; ``None`` disables) serves the dashboard, the JSON API and ``/metrics``. A loopback
address needs no authentication. Any other address needs one of:

* ``web.tokenfile``: clients not on loopback send ``Authorization: Bearer <token>`` (browsers log
  in once with a form; the cookie holds a keyed hash of the token, not the token);
* ``web.tls.certfile`` + ``web.tls.keyfile`` + ``web.tls.cafile``: HTTPS where every client must
  present a certificate signed by that CA (checked by TLS, for loopback clients too);
* ``web.allow_anonymous = True``: the operator says so (e.g. behind an authenticating proxy).

The pilot log server follows AutoPyFactory: ``logserver.enabled`` serves ``baseLogDir`` on the
port of ``baseLogDirUrl`` (80/443 when the URL has none), listings only with ``logserver.index``,
a ``robots.txt`` that disallows everything unless ``logserver.allowrobots``.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from autopyfactory.config.models import FactorySettings, parse_address


class WebConfigError(ValueError):
    """A web setting that cannot work; the message names the [Factory] key."""


@dataclass(frozen=True)
class LogSettings:
    enabled: bool = False
    root: Path | None = None
    url: str | None = None
    index: bool = False
    allowrobots: bool = False

    @property
    def serving(self) -> bool:
        return self.enabled and self.root is not None

    @classmethod
    def from_factory(cls, s: FactorySettings) -> LogSettings:
        if s.logserver_enabled and not s.baseLogDir:
            raise WebConfigError("[Factory] baseLogDir: required when logserver.enabled = True")
        return cls(
            enabled=s.logserver_enabled,
            root=Path(s.baseLogDir).expanduser() if s.baseLogDir else None,
            url=s.baseLogDirUrl,
            index=s.logserver_index,
            allowrobots=s.logserver_allowrobots,
        )

    def listen(self) -> tuple[str, int, str]:
        """(host, port, path prefix) of ``baseLogDirUrl``: APF listened on all interfaces on the
        URL's port; a loopback host in the URL keeps it on loopback."""
        if not self.url:
            raise WebConfigError("[Factory] baseLogDirUrl: required when logserver.enabled = True")
        parts = urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise WebConfigError(f"[Factory] baseLogDirUrl: not an http(s) URL: {self.url!r}")
        try:
            port = parts.port if parts.port is not None else (443 if parts.scheme == "https" else 80)
        except ValueError:
            raise WebConfigError(f"[Factory] baseLogDirUrl: bad port in {self.url!r}") from None
        host = parts.hostname if is_loopback(parts.hostname) else "0.0.0.0"
        return host, port, parts.path.rstrip("/")


@dataclass(frozen=True)
class WebSettings:
    host: str = "127.0.0.1"
    port: int = 0
    token: str | None = field(default=None, repr=False)
    certfile: str | None = None
    keyfile: str | None = None
    cafile: str | None = None
    allow_anonymous: bool = False
    refresh: float = 5.0
    reports_dir: Path | None = None
    logs: LogSettings = field(default_factory=LogSettings)

    @property
    def tls(self) -> bool:
        return self.certfile is not None

    @property
    def auth_label(self) -> str:
        if self.cafile:
            return "client certificates"
        if self.token:
            return "bearer token (loopback clients exempt)"
        if self.allow_anonymous:
            return "none (web.allow_anonymous)"
        return "none (loopback only)"

    @classmethod
    def from_factory(cls, s: FactorySettings, logs: LogSettings | None = None) -> WebSettings | None:
        """The settings, or None when ``web.address`` is None. Raises WebConfigError."""
        address = s.web_listen
        logs = logs if logs is not None else LogSettings.from_factory(s)
        if address is None:
            return None
        key = "web.address" if "web_address" in s.model_fields_set else "metrics.address"
        try:
            host, port = parse_address(address, 9642)
        except ValueError as exc:
            raise WebConfigError(f"[Factory] {key}: {exc}") from None
        token = None
        if s.web_tokenfile:
            path = Path(s.web_tokenfile).expanduser()
            try:
                token = path.read_text().strip()
            except OSError as exc:
                raise WebConfigError(f"[Factory] web.tokenfile: cannot read {path}: {exc.strerror}") from None
            if len(token) < 16:
                raise WebConfigError(
                    f"[Factory] web.tokenfile: the token in {path} is shorter than 16 characters"
                )
        if bool(s.web_tls_certfile) != bool(s.web_tls_keyfile):
            raise WebConfigError("[Factory] web.tls.certfile and web.tls.keyfile: give both or neither")
        if s.web_tls_cafile and not s.web_tls_certfile:
            raise WebConfigError(
                "[Factory] web.tls.cafile: client certificates need web.tls.certfile and keyfile"
            )
        for key_name, value in (
            ("web.tls.certfile", s.web_tls_certfile),
            ("web.tls.keyfile", s.web_tls_keyfile),
            ("web.tls.cafile", s.web_tls_cafile),
        ):
            if value and not Path(value).expanduser().is_file():
                raise WebConfigError(f"[Factory] {key_name}: no such file: {value}")
        if not is_loopback(host) and not (token or s.web_tls_cafile or s.web_allow_anonymous):
            raise WebConfigError(
                f"[Factory] {key} = {address} is not a loopback address: set web.tokenfile (bearer "
                "token) or web.tls.cafile (client certificates), or web.allow_anonymous = True"
            )
        return cls(
            host=host,
            port=port,
            token=token,
            certfile=_path(s.web_tls_certfile),
            keyfile=_path(s.web_tls_keyfile),
            cafile=_path(s.web_tls_cafile),
            allow_anonymous=s.web_allow_anonymous,
            refresh=s.web_refresh,
            reports_dir=s.reports_path,
            logs=logs,
        )


def is_loopback(host: str | None) -> bool:
    if not host:
        return False
    if host == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback


def _path(value: str | None) -> str | None:
    return str(Path(value).expanduser()) if value else None
