"""Cloud key profile (``plugin = CloudKey``): access key id and secret, inline or from files."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr

from autopyfactory.plugins.auth.base import AuthPlugin
from autopyfactory.plugins.base import PluginOptions


class CloudKeyOptions(PluginOptions):
    access_key_id: SecretStr | None = Field(None, description="inline access key id (secret; never shown)")
    secret_access_key: SecretStr | None = Field(
        None, description="inline secret access key (secret; never shown)"
    )
    access_key_id_file: str | None = Field(None, description="file holding the access key id")
    secret_access_key_file: str | None = Field(None, description="file holding the secret access key")
    region: str | None = Field(None, description="cloud region")
    endpoint_url: str | None = Field(None, description="API endpoint URL (default: the provider's)")


class CloudKey(AuthPlugin):
    name = "CloudKey"
    Options = CloudKeyOptions

    @staticmethod
    def credentials(options: CloudKeyOptions) -> tuple[str, str]:
        def pick(inline: SecretStr | None, path: str | None, what: str) -> str:
            if inline is not None:
                return inline.get_secret_value()
            if path:
                return Path(path).expanduser().read_text().strip()
            raise ValueError(f"cloud key profile has no {what}")

        return (
            pick(options.access_key_id, options.access_key_id_file, "access_key_id"),
            pick(options.secret_access_key, options.secret_access_key_file, "secret_access_key"),
        )
