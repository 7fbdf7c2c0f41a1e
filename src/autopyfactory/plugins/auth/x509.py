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
    proxyfile: str
    vorole: str | None = Field(None, description="vo:/fqan asked of VOMS, e.g. atlas:/atlas/Role=production")
    flavor: Literal["voms", "myproxy"] = "voms"
    lifetime: int = Field(604800, gt=0, description="seconds of validity asked for (proxy and attributes)")
    checktime: int = Field(3600, gt=0, description="seconds between checks")
    minlife: int = Field(259200, ge=0, description="renew when less than this is left (seconds)")
    renew: bool = False
    baseproxy: str | None = Field(
        None, description="sign new proxies with this proxy instead of usercert/userkey"
    )
    usercert: str | None = None
    userkey: str | None = None
    owner: str | None = Field(None, description="user[:group] the proxy file is given to")
    initdelay: int | None = None
    interruptcheck: int | None = None
    myproxy_hostname: str | None = None
    myproxy_username: str | None = None
    myproxy_passphrase: SecretStr | None = None
    retriever_list: str | None = Field(
        None, description="set: retrieve without a passphrase (trusted retriever)"
    )
    voms_args: str | None = Field(None, alias="voms.args")
    remote_host: str | None = None
    remote_user: str | None = None
    remote_owner: str | None = None
    remote_group: str | None = None
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
