"""Auth profiles: named credentials from auth.conf, referenced by name from queues.

A profile's options may hold inline secrets (``SecretStr``); they print as ``**********`` and
are only revealed by the plugin that hands them to a library, never to logs or messages.
"""

from __future__ import annotations

from typing import ClassVar

from autopyfactory.plugins.base import Plugin


class AuthPlugin(Plugin):
    kind = "auth"
    # auth.conf keys are ``x509.proxyfile``, ``ssh.privatekeyfile``: no ``auth.`` in front
    key_prefixes: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def prefixes(cls) -> tuple[str, ...]:
        return cls.key_prefixes or (f"{cls.name.lower()}.",)
