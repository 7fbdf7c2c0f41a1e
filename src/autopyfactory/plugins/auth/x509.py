"""X509 proxy profile (``plugin = X509``), AutoPyFactory's key names."""

from __future__ import annotations

from pydantic import Field, SecretStr

from autopyfactory.plugins.auth.base import AuthPlugin
from autopyfactory.plugins.base import PluginOptions


class X509Options(PluginOptions):
    proxyfile: str = Field(description="the proxy file pilots and plugins use")
    vorole: str | None = Field(None, description="VO and FQAN, e.g. atlas:/atlas/Role=production")
    flavor: str = Field("voms", description="voms (voms-proxy-init) or myproxy (myproxy-get-delegation)")
    lifetime: int = Field(604800, ge=3600, le=31_622_400, description="requested proxy validity, seconds")
    checktime: int = Field(3600, ge=1, le=31_622_400, description="seconds between proxy checks")
    minlife: int = Field(
        259200, ge=0, le=31_622_400, description="renew (or alert) below this many seconds left"
    )
    renew: bool = Field(False, description="renew the proxy here (False: an external tool renews it)")
    baseproxy: str | None = Field(
        None, description="long-lived proxy to derive from (instead of usercert/userkey)"
    )
    usercert: str | None = Field(None, description="user certificate for voms-proxy-init")
    userkey: str | None = Field(None, description="user key for voms-proxy-init")
    owner: str | None = Field(None, description="give the proxy file to this user")
    initdelay: int | None = Field(None, description="AutoPyFactory: read but unused")
    interruptcheck: int | None = Field(None, description="AutoPyFactory: read but unused")
    myproxy_hostname: str | None = Field(None, description="MyProxy server")
    myproxy_username: str | None = Field(None, description="MyProxy user name")
    myproxy_passphrase: SecretStr | None = Field(None, description="MyProxy passphrase (secret; never shown)")
    retriever_list: str | None = Field(
        None, description="MyProxy: retrieve without a passphrase (authorised retrievers)"
    )
    voms_args: str | None = Field(None, alias="voms.args", description="extra voms-proxy-init arguments")
    remote_host: str | None = Field(None, description="AutoPyFactory: read but unused")
    remote_user: str | None = Field(None, description="AutoPyFactory: read but unused")
    remote_owner: str | None = Field(None, description="AutoPyFactory: read but unused")
    remote_group: str | None = Field(None, description="AutoPyFactory: read but unused")


class X509(AuthPlugin):
    name = "X509"
    Options = X509Options
