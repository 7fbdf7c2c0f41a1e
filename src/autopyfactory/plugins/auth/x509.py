"""X509 proxy profile (``plugin = X509``), AutoPyFactory's key names.

The credential manager (``autopyfactory.credentials``) acts on these keys: with ``renew = True``
(voms flavour) or the myproxy flavour it makes a new proxy when the VOMS attributes (or, without
``vorole``, the proxy) have less than ``minlife`` seconds left, checks the result and replaces
``proxyfile`` atomically; otherwise it only watches the file. Keys after ``remote_group`` are our
own (APF had no equivalent).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, SecretStr, model_validator

from autopyfactory.plugins.auth.base import AuthPlugin
from autopyfactory.plugins.base import PluginOptions

DEFAULT_CADIR = "/etc/grid-security/certificates"


class X509Options(PluginOptions):
    proxyfile: str = Field(description="the proxy file pilots and plugins use")
    vorole: str | None = Field(
        None, description="VO and FQAN asked of VOMS, e.g. atlas:/atlas/Role=production"
    )
    flavor: Literal["voms", "myproxy"] = Field(
        "voms", description="voms (voms-proxy-init) or myproxy (retrieve from a MyProxy server)"
    )
    lifetime: int = Field(
        604800, ge=60, le=31_622_400, description="seconds of validity asked for (proxy and attributes)"
    )
    checktime: int = Field(3600, ge=1, le=31_622_400, description="seconds between proxy checks")
    minlife: int = Field(
        259200, ge=0, le=31_622_400, description="renew (or alert) when less than this many seconds are left"
    )
    renew: bool = Field(False, description="renew the proxy here (False: an external tool renews it)")
    baseproxy: str | None = Field(
        None, description="sign new proxies with this long-lived proxy instead of usercert/userkey"
    )
    usercert: str | None = Field(None, description="user certificate for voms-proxy-init")
    userkey: str | None = Field(None, description="user key for voms-proxy-init")
    owner: str | None = Field(None, description="user[:group] the proxy file is given to")
    initdelay: int | None = Field(None, description="AutoPyFactory: read but unused")
    interruptcheck: int | None = Field(None, description="AutoPyFactory: read but unused")
    myproxy_hostname: str | None = Field(None, description="MyProxy server")
    myproxy_username: str | None = Field(None, description="MyProxy user name")
    myproxy_passphrase: SecretStr | None = Field(None, description="MyProxy passphrase (secret; never shown)")
    retriever_list: str | None = Field(
        None, description="set: retrieve without a passphrase (trusted retriever)"
    )
    voms_args: str | None = Field(None, alias="voms.args", description="extra voms-proxy-init arguments")
    remote_host: str | None = Field(None, description="AutoPyFactory: read but unused")
    remote_user: str | None = Field(None, description="AutoPyFactory: read but unused")
    remote_owner: str | None = Field(None, description="AutoPyFactory: read but unused")
    remote_group: str | None = Field(None, description="AutoPyFactory: read but unused")
    # our own keys
    myproxy_port: int | None = Field(None, ge=1, le=65535, description="MyProxy port (default 7512)")
    myproxy_passphrasefile: str | None = Field(None, description="file holding the MyProxy passphrase")
    cadir: str = Field(DEFAULT_CADIR, description="trusted CA directory (X509_CERT_DIR)")
    vomsdir: str | None = Field(None, description="VOMS LSC directory (X509_VOMS_DIR)")
    vomses: str | None = Field(None, description="vomses file or directory (VOMS server contacts)")
    vomstool: Literal["voms-proxy-init", "arcproxy"] = Field(
        "voms-proxy-init",
        description="tool that adds VOMS attributes; arcproxy can sign from a proxy (baseproxy, MyProxy)",
    )
    timeout: float = Field(120.0, gt=0, description="seconds a renewal command may take")

    @model_validator(mode="after")
    def _consistent(self) -> X509Options:
        renews = self.renew or self.flavor == "myproxy"
        if renews and self.lifetime <= self.minlife:
            raise ValueError(
                f"x509.lifetime ({self.lifetime}) must be larger than x509.minlife ({self.minlife}), "
                "or every check would renew"
            )
        if self.flavor == "myproxy" and not (self.myproxy_hostname and self.myproxy_username):
            raise ValueError("flavor = myproxy needs x509.myproxy_hostname and x509.myproxy_username")
        return self


class X509(AuthPlugin):
    name = "X509"
    Options = X509Options
