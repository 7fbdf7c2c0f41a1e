"""How plugins reach their credentials: one set of functions every backend and WMS plugin calls,
so all use auth.conf profiles the same way (the files the credential manager keeps fresh).

* ``proxy_profile`` / ``proxy_file``: APF's ``proxy = a, b`` lists (the first listed profile that
  is a defined X509 profile wins; ``None`` means no proxy).
* ``bearer_token``: a Token profile's value, read at use time (a refreshed file is picked up).
* ``ca_directory``: the trusted CA directory of an X509 profile (``x509.cadir``).

Messages name profiles and files, never values.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from autopyfactory.plugins.auth.x509 import DEFAULT_CADIR, X509Options
from autopyfactory.plugins.base import PluginError

if TYPE_CHECKING:
    from autopyfactory.config.models import AuthProfile, QueueConfig


@runtime_checkable
class NamesCredentials(Protocol):
    """Plugin options that refer to auth profiles declare which ones a queue uses."""

    def credential_profiles(self, profiles: Mapping[str, AuthProfile]) -> tuple[str, ...]: ...


def split_names(text: str | None) -> list[str]:
    """``a, b`` -> [a, b]; ``None``/``none`` entries mean "no profile"."""
    return [n.strip() for n in (text or "").split(",") if n.strip() and n.strip() not in ("None", "none")]


def proxy_profile(names: str | None, profiles: Mapping[str, AuthProfile], *, where: str) -> str | None:
    """The profile a ``proxy = a, b`` key selects: the first defined X509 one (None when the list
    is empty). Raises PluginError naming ``where`` (queue and key) when none qualifies."""
    wanted = split_names(names)
    if not wanted:
        return None
    for name in wanted:
        profile = profiles.get(name)
        if profile is not None and profile.plugin == "X509":
            return name
    defined = ", ".join(sorted(profiles)) or "none"
    raise PluginError(
        f"{where}: none of {', '.join(map(repr, wanted))} is an X509 profile defined in auth.conf "
        f"(defined: {defined})"
    )


def proxy_file(names: str | None, profiles: Mapping[str, AuthProfile], *, where: str) -> str | None:
    """The proxy file of the profile ``proxy_profile`` selects."""
    name = proxy_profile(names, profiles, where=where)
    if name is None:
        return None
    return str(Path(profiles[name].options.proxyfile).expanduser())


def x509_profile(name: str, profiles: Mapping[str, AuthProfile], *, where: str) -> AuthProfile:
    profile = profiles.get(name)
    if profile is None:
        defined = ", ".join(sorted(profiles)) or "none"
        raise PluginError(f"{where}: auth profile {name!r} is not defined in auth.conf (defined: {defined})")
    if profile.plugin != "X509":
        raise PluginError(f"{where}: auth profile {name!r} is {profile.plugin}, not an X509 proxy")
    return profile


def ca_directory(profile: AuthProfile | None) -> str:
    """The trusted CA directory for TLS with this X509 profile."""
    cadir = (
        profile.options.cadir if profile is not None and isinstance(profile.options, X509Options) else None
    )
    return str(Path(cadir or DEFAULT_CADIR).expanduser())


def bearer_token(name: str, profiles: Mapping[str, AuthProfile], *, where: str) -> str:
    """The token of a Token profile, read now. Raises ValueError naming the file, not the token."""
    from autopyfactory.plugins.auth.token import Token, TokenOptions

    profile = profiles.get(name)
    if profile is None or profile.plugin != "Token" or not isinstance(profile.options, TokenOptions):
        raise ValueError(f"{where}: auth profile {name!r} is not a Token profile")
    try:
        value = Token.read(profile.options)
    except OSError as exc:
        raise ValueError(f"auth profile {name!r}: {profile.options.tokenfile}: {exc.strerror}") from None
    if not value:
        raise ValueError(f"auth profile {name!r}: {profile.options.tokenfile} is empty")
    return value


def queue_profiles(queue: QueueConfig, profiles: Mapping[str, AuthProfile]) -> tuple[str, ...]:
    """Every auth profile a queue's plugins use (for the credential gate), in a stable order."""
    names: list[str] = []
    for spec in (queue.wmsstatus, queue.batchstatus, queue.batchsubmit):
        if spec is not None and isinstance(spec.options, NamesCredentials):
            names += spec.options.credential_profiles(profiles)
    return tuple(dict.fromkeys(n for n in names if n in profiles))
