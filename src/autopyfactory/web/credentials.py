"""Credential health for the dashboard: time left of each auth profile, never its value.

X509 profiles: the proxy file's earliest certificate ``notAfter`` (the file's key is never read
into anything shown); expiring below ``x509.minlife``. Token profiles with a ``tokenfile`` holding
a JWT: its ``exp`` claim (the signature is not checked, only the expiry is read); expiring within a
day. Other profiles have no expiry the factory can know.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

from autopyfactory.web.models import CredentialHealth

TOKEN_WARN = 86400.0


def check_profile(name: str, profile: Any, now: float, users: int = 0) -> CredentialHealth:
    plugin = str(profile.plugin)
    options = profile.options
    if plugin == "X509":
        from autopyfactory.engine.alerts import CredentialError, proxy_not_after

        path = Path(str(options.proxyfile)).expanduser()
        try:
            expires = proxy_not_after(path)
        except CredentialError as exc:
            return CredentialHealth(
                name=name, plugin=plugin, status="unreadable", detail=str(exc), queues=users
            )
        return _timed(name, plugin, expires, now, float(options.minlife), f"proxy {path}", users)
    if plugin == "Token" and options.tokenfile:
        path = Path(str(options.tokenfile)).expanduser()
        try:
            text = path.read_text().strip()
        except OSError as exc:
            return CredentialHealth(
                name=name,
                plugin=plugin,
                status="unreadable",
                detail=f"cannot read {path}: {exc.strerror}",
                queues=users,
            )
        expires = jwt_expiry(text)
        if expires is None:
            return CredentialHealth(
                name=name, plugin=plugin, status="no expiry known", detail=f"token file {path}", queues=users
            )
        return _timed(name, plugin, expires, now, TOKEN_WARN, f"token file {path}", users)
    return CredentialHealth(name=name, plugin=plugin, status="no expiry known", queues=users)


def _timed(
    name: str, plugin: str, expires: float, now: float, warn: float, detail: str, users: int
) -> CredentialHealth:
    left = expires - now
    status = "expired" if left <= 0 else "expiring" if left < warn else "ok"
    return CredentialHealth(
        name=name,
        plugin=plugin,
        status=status,
        expires_at=expires,
        seconds_left=left,
        detail=detail,
        queues=users,
    )


def jwt_expiry(token: str) -> float | None:
    """The ``exp`` claim of a JWT (payload only; nothing else of the token is kept)."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    payload = parts[1] + "=" * (-len(parts[1]) % 4)
    try:
        claims = json.loads(base64.urlsafe_b64decode(payload))
        exp = claims.get("exp") if isinstance(claims, dict) else None
    except (ValueError, TypeError):
        return None
    return float(exp) if isinstance(exp, int | float) else None
