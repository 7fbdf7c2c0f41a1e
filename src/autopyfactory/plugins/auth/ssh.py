"""SSH keypair profile (``plugin = SSH``): used by SSH transports and CondorSSH."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr

from autopyfactory.plugins.auth.base import AuthPlugin
from autopyfactory.plugins.base import PluginOptions


class SSHOptions(PluginOptions):
    type: str = Field("ed25519", description="key type, e.g. ed25519 or rsa")
    privatekeyfile: str | None = Field(None, description="the private key file")
    publickeyfile: str | None = Field(None, description="the public key file")
    privkeypassfile: str | None = Field(None, description="file holding the private key's passphrase")
    # Inline keys (base64 in APF); kept secret
    privatekey: SecretStr | None = Field(None, description="inline private key, base64 (secret; never shown)")
    publickey: SecretStr | None = Field(None, description="inline public key, base64")
    privkeypass: SecretStr | None = Field(
        None, description="inline passphrase of the private key (secret; never shown)"
    )
    knownhostsfile: str | None = Field(
        None, description="known_hosts used for strict host-key checking (default ~/.ssh/known_hosts)"
    )


class SSH(AuthPlugin):
    name = "SSH"
    Options = SSHOptions

    @staticmethod
    def known_hosts(options: SSHOptions) -> Path:
        return Path(options.knownhostsfile or "~/.ssh/known_hosts").expanduser()
