"""X509 proxy profile (``plugin = X509``), AutoPyFactory's key names."""

from __future__ import annotations

from pydantic import Field, SecretStr

from autopyfactory.plugins.auth.base import AuthPlugin
from autopyfactory.plugins.base import PluginOptions


class X509Options(PluginOptions):
    proxyfile: str
    vorole: str | None = None
    flavor: str = "voms"
    lifetime: int = 604800
    checktime: int = 3600
    minlife: int = 259200
    renew: bool = False
    baseproxy: str | None = None
    usercert: str | None = None
    userkey: str | None = None
    owner: str | None = None
    initdelay: int | None = None
    interruptcheck: int | None = None
    myproxy_hostname: str | None = None
    myproxy_username: str | None = None
    myproxy_passphrase: SecretStr | None = None
    retriever_list: str | None = None
    voms_args: str | None = Field(None, alias="voms.args")
    remote_host: str | None = None
    remote_user: str | None = None
    remote_owner: str | None = None
    remote_group: str | None = None


class X509(AuthPlugin):
    name = "X509"
    Options = X509Options
