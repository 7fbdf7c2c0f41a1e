"""Cloud key profile (``plugin = CloudKey``): access key id and secret, inline or from files."""

from __future__ import annotations

from pathlib import Path

from pydantic import SecretStr

from autopyfactory.plugins.auth.base import AuthPlugin
from autopyfactory.plugins.base import PluginOptions


class CloudKeyOptions(PluginOptions):
    access_key_id: SecretStr | None = None
    secret_access_key: SecretStr | None = None
    access_key_id_file: str | None = None
    secret_access_key_file: str | None = None
    region: str | None = None
    endpoint_url: str | None = None


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
