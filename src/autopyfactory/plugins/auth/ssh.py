"""SSH keypair profile (``plugin = SSH``): used by SSH transports and CondorSSH."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr

from autopyfactory.plugins.auth.base import AuthPlugin
from autopyfactory.plugins.base import PluginOptions


class SSHOptions(PluginOptions):
    type: str = "ed25519"
    privatekeyfile: str | None = None
    publickeyfile: str | None = None
    privkeypassfile: str | None = None
    # Inline keys (base64 in APF); kept secret
    privatekey: SecretStr | None = None
    publickey: SecretStr | None = None
    privkeypass: SecretStr | None = None
    knownhostsfile: str | None = Field(
        None, description="known_hosts used for strict host-key checking (default ~/.ssh/known_hosts)"
    )


class SSH(AuthPlugin):
    name = "SSH"
    Options = SSHOptions

    @staticmethod
    def known_hosts(options: SSHOptions) -> Path:
        return Path(options.knownhostsfile or "~/.ssh/known_hosts").expanduser()
