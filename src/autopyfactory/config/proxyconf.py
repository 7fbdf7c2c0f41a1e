"""APF's legacy ``proxy.conf`` (``proxyConf`` in [Factory], the ProxyManager of APF <= 2.4.10).

Each section is an X509 profile with the same keys as auth.conf's, without the ``x509.`` prefix
(apf-reference 4.5): ``baseproxy``, ``flavor``, ``usercert``, ``userkey``, ``lifetime``,
``checktime``, ``minlife``, ``interruptcheck``, ``initdelay``, ``owner``, ``renew``, ``vorole``,
``proxyfile``, ``myproxy_*``, ``retriever_list``, ``voms.args``, ``remote_*`` (and our own X509
keys). Read key for key into the same typed X509 options, so the credential manager renews them
exactly like auth.conf profiles. Problems name the proxy.conf file, line, section and key.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path

from autopyfactory.config.errors import ConfigProblem, Location
from autopyfactory.config.ini import RawSection, interpolate, read_sources
from autopyfactory.config.models import AuthProfile
from autopyfactory.config.validate import options_from_keys
from autopyfactory.plugins import base as plugins

# keys of the legacy file that are not X509 options
_IGNORED = {"enabled", "authbasedir", "plugin"}


def load_proxy_conf(
    sources: Sequence[str], base: Path, defined: Mapping[str, AuthProfile] | None = None
) -> tuple[dict[str, AuthProfile], list[ConfigProblem]]:
    """Profiles of proxy.conf files (merged in order, later wins key by key)."""
    raw = interpolate(read_sources(sources, base, sensitive=True))
    problems = list(raw.problems)
    cls = plugins.load("auth", "X509")
    profiles: dict[str, AuthProfile] = {}
    for name, section in raw.sections.items():

        def file_of(key: str | None, section: RawSection = section) -> Location | None:
            # the legacy file spells x509.<key> as <key>
            return section.locate(key.removeprefix("x509.") if key else key)

        keys = {}
        for key, value in section.values.items():
            if key in _IGNORED:
                continue
            keys[key if key.startswith("x509.") else f"x509.{key}"] = value
        options, errs = options_from_keys(cls, keys, file_of=file_of, section_name=name, sensitive=True)
        for problem in errs:  # name the key as the file spells it
            key = problem.key.removeprefix("x509.") if problem.key else problem.key
            problems.append(replace(problem, key=key))
        if defined is not None and name in defined:
            problems.append(
                ConfigProblem.at(
                    file_of("x509.proxyfile"),
                    name,
                    None,
                    "profile defined both in auth.conf and in proxy.conf",
                )
            )
            continue
        if options is not None:
            profiles[name] = AuthProfile(name=name, plugin="X509", options=options)
    return profiles, problems
