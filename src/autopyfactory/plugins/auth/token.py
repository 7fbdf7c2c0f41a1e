"""Bearer token profile (``plugin = Token``): a token read from a file (or given inline).

The file is written by another tool (``htgettoken``, ``oidc-agent``'s ``oidc-token``) or by the
``refresh`` command, which the credential manager runs when the token's JWT ``exp`` is less than
``minlife`` seconds away: a command that prints a token has it written to ``tokenfile``
atomically (mode 0600); a command that prints nothing is expected to write the file itself.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr, model_validator

from autopyfactory.plugins.auth.base import AuthPlugin
from autopyfactory.plugins.base import PluginOptions


class TokenOptions(PluginOptions):
    tokenfile: str | None = Field(None, description="file holding the bearer token (read at each use)")
    token: SecretStr | None = Field(None, description="inline bearer token (secret; never shown)")
    origin: str | None = Field(None, description="Origin header some PanDA servers want with a token")
    refresh: str | None = Field(None, description="command (no shell) that renews the token")
    minlife: int = Field(600, ge=0, description="refresh when less than this is left (seconds)")
    checktime: int = Field(60, gt=0, description="seconds between checks")
    timeout: float = Field(60.0, gt=0, description="seconds the refresh command may take")

    @model_validator(mode="after")
    def _consistent(self) -> TokenOptions:
        if self.refresh and not self.tokenfile:
            raise ValueError("token.refresh needs token.tokenfile (where the refreshed token lives)")
        return self


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
