"""Bearer token profile (``plugin = Token``): a token read from a file at use time."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr

from autopyfactory.plugins.auth.base import AuthPlugin
from autopyfactory.plugins.base import PluginOptions


class TokenOptions(PluginOptions):
    tokenfile: str | None = Field(None, description="file holding the bearer token (read at each use)")
    token: SecretStr | None = Field(None, description="inline bearer token (secret; never shown)")
    origin: str | None = Field(None, description="Origin header some PanDA servers want with a token")


class Token(AuthPlugin):
    name = "Token"
    Options = TokenOptions

    @staticmethod
    def read(options: TokenOptions) -> str:
        if options.token is not None:
            return options.token.get_secret_value()
        if options.tokenfile:
            return Path(options.tokenfile).expanduser().read_text().strip()
        raise ValueError("token profile has neither token nor tokenfile")
