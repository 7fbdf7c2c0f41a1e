"""X509 proxies read and made with ``cryptography``: lifetimes, identity, the VOMS attributes.

A proxy file holds the proxy certificate, its private key and the chain up to the user's
certificate (leaf first). The VOMS attribute certificate (RFC 5755) sits in an extension of the
proxy certificate; it is parsed here with ``cryptography.hazmat.asn1``, so lifetimes and FQANs
come from the file itself rather than from a tool's printed output.

``sign_proxy_request`` makes the RFC 3820 proxy a CE asks for when we delegate (A-REX's
``delegations?action=new`` returns a certificate request that we sign with our proxy's key).
Pure functions of their inputs (no clock read unless a time is passed in).
"""

from __future__ import annotations

import base64
import datetime
import typing
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat import asn1
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID, ObjectIdentifier

PROXY_CERT_INFO = ObjectIdentifier("1.3.6.1.5.5.7.1.14")  # RFC 3820 proxyCertInfo
VOMS_AC_SEQUENCE = ObjectIdentifier("1.3.6.1.4.1.8005.100.100.5")
VOMS_ATTRIBUTES = ObjectIdentifier("1.3.6.1.4.1.8005.100.100.4")
# proxyCertInfo value of an impersonation proxy: SEQUENCE { SEQUENCE { id-ppl-inheritAll } }
_PCI_INHERIT_ALL = bytes.fromhex("300c300a06082b06010505071501")


class ProxyError(ValueError):
    """The file is not a usable proxy; the message says why (it never holds key material)."""


# ---------------------------------------------------------------------------------------------
# RFC 5755 attribute certificate, as much of it as a lifetime and FQAN check needs


@asn1.sequence
class _Validity:
    not_before: asn1.GeneralizedTime
    not_after: asn1.GeneralizedTime


@asn1.sequence
class _Attribute:
    type: ObjectIdentifier
    values: asn1.SetOf[asn1.TLV]


@asn1.sequence
class _Extension:
    oid: ObjectIdentifier
    critical: typing.Annotated[bool, asn1.Default(False)]
    value: bytes


@asn1.sequence
class _ACInfo:
    version: int
    holder: asn1.TLV
    issuer: asn1.TLV
    signature: asn1.TLV
    serial: int
    validity: _Validity
    attributes: list[_Attribute]
    extensions: list[_Extension] | None


@asn1.sequence
class _AttributeCertificate:
    info: _ACInfo
    algorithm: asn1.TLV
    signature: asn1.BitString


@asn1.sequence
class _ACList:
    """VOMS wraps its ACs twice: SEQUENCE OF SEQUENCE OF AttributeCertificate; the outer list
    has one element, so it decodes as a SEQUENCE holding one SEQUENCE OF."""

    acs: list[_AttributeCertificate]


@asn1.sequence
class _IetfAttrSyntax:
    policy_authority: typing.Annotated[list[asn1.TLV] | None, asn1.Implicit(0)]
    values: list[bytes]


_URI_TAG = 0x86  # GeneralName uniformResourceIdentifier [6] IMPLICIT IA5String


@dataclass(frozen=True, slots=True)
class VomsAttributes:
    """One VOMS attribute certificate: its VO, FQANs (primary first) and validity."""

    vo: str
    fqans: tuple[str, ...]
    not_before: float
    not_after: float
    uri: str | None = None

    def time_left(self, now: float) -> float:
        return self.not_after - now


@dataclass(frozen=True, slots=True)
class ProxyInfo:
    """What a proxy file says about itself."""

    subject: str  # slash form, e.g. /DC=test/DC=grid/CN=Pilot User/CN=123
    identity: str  # the end-entity certificate's subject
    not_before: float
    not_after: float  # the chain's earliest end: the effective lifetime
    chain_length: int
    rfc3820: bool
    serial: int
    voms: tuple[VomsAttributes, ...] = ()

    def time_left(self, now: float) -> float:
        return self.not_after - now

    def ac_time_left(self, now: float) -> float | None:
        """The shortest remaining life of the VOMS attributes (None without any)."""
        if not self.voms:
            return None
        return min(ac.not_after for ac in self.voms) - now

    @property
    def fqans(self) -> tuple[str, ...]:
        return tuple(f for ac in self.voms for f in ac.fqans)


def slash_dn(name: x509.Name) -> str:
    """A distinguished name in the grid's slash form, in certificate order."""
    parts = []
    for rdn in name.rdns:
        for attr in rdn:
            key = attr.rfc4514_attribute_name
            if attr.oid == NameOID.EMAIL_ADDRESS:
                key = "emailAddress"
            value = attr.value if isinstance(attr.value, str) else attr.value.decode(errors="replace")
            parts.append(f"{key}={value}")
    return "/" + "/".join(parts)


def _timestamp(value: datetime.datetime) -> float:
    if value.tzinfo is None:
        value = value.replace(tzinfo=datetime.UTC)
    return value.timestamp()


def _generalized(value: object) -> float:
    return _timestamp(value.as_datetime())  # type: ignore[attr-defined]


def parse_voms_extension(der: bytes) -> tuple[VomsAttributes, ...]:
    """The ACs in a proxy's VOMS extension (1.3.6.1.4.1.8005.100.100.5)."""
    try:
        acs = asn1.decode_der(_ACList, der).acs
    except ValueError as exc:
        raise ProxyError(f"the VOMS attribute certificate cannot be parsed ({exc})") from None
    out = []
    for ac in acs:
        fqans: list[str] = []
        vo, uri = "", None
        for attribute in ac.info.attributes:
            if attribute.type != VOMS_ATTRIBUTES:
                continue
            for value in attribute.values.as_list():
                syntax = value.parse(_IetfAttrSyntax)
                fqans += [v.decode(errors="replace") for v in syntax.values]
                for name in syntax.policy_authority or []:
                    if name.tag_bytes == bytes([_URI_TAG]):
                        # "<vo>://<host>:<port>"
                        text = bytes(name.data).decode(errors="replace")
                        vo, _, uri = text.partition("://")
        if not vo and fqans:
            vo = fqans[0].strip("/").split("/", 1)[0]
        out.append(
            VomsAttributes(
                vo=vo,
                fqans=tuple(fqans),
                not_before=_generalized(ac.info.validity.not_before),
                not_after=_generalized(ac.info.validity.not_after),
                uri=uri or None,
            )
        )
    return tuple(out)


def read_proxy(data: bytes, *, check_key: bool = True) -> ProxyInfo:
    """Parse a proxy file's bytes (certificate, key, chain). Raises ProxyError."""
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError:
        raise ProxyError("no PEM certificate in the file") from None
    leaf = certs[0]
    if check_key:
        try:
            key = serialization.load_pem_private_key(data, None)
        except (ValueError, TypeError) as exc:
            kind = "is encrypted" if isinstance(exc, TypeError) else "is missing or unreadable"
            raise ProxyError(f"the proxy's private key {kind}") from None
        if key.public_key().public_numbers() != leaf.public_key().public_numbers():  # type: ignore[union-attr]
            raise ProxyError("the private key does not belong to the proxy certificate")
    identity = next(
        (c for c in certs if PROXY_CERT_INFO not in {e.oid for e in c.extensions}),
        certs[-1],
    )
    voms: tuple[VomsAttributes, ...] = ()
    for cert in certs:
        try:
            ext = cert.extensions.get_extension_for_oid(VOMS_AC_SEQUENCE)
        except x509.ExtensionNotFound:
            continue
        voms = parse_voms_extension(ext.value.value)  # type: ignore[attr-defined]
        break  # the newest proxy's attributes are the ones in force
    return ProxyInfo(
        subject=slash_dn(leaf.subject),
        identity=slash_dn(identity.subject),
        not_before=max(_timestamp(c.not_valid_before_utc) for c in certs),
        not_after=min(_timestamp(c.not_valid_after_utc) for c in certs),
        chain_length=len(certs),
        rfc3820=PROXY_CERT_INFO in {e.oid for e in leaf.extensions},
        serial=leaf.serial_number,
        voms=voms,
    )


def inspect_proxy(path: str | Path) -> ProxyInfo:
    """Read and parse a proxy file. Raises ProxyError (missing file included)."""
    p = Path(path).expanduser()
    try:
        data = p.read_bytes()
    except FileNotFoundError:
        raise ProxyError(f"{p} does not exist") from None
    except OSError as exc:
        raise ProxyError(f"{p}: {exc.strerror}") from None
    try:
        return read_proxy(data)
    except ProxyError as exc:
        raise ProxyError(f"{p}: {exc}") from None


def split_vorole(vorole: str) -> tuple[str, str]:
    """APF's ``vo:/fqan`` (``atlas:/atlas/Role=production``) -> (vo, fqan); ``vo`` alone means /vo."""
    vo, sep, fqan = vorole.strip().partition(":")
    return vo, (fqan if sep and fqan else f"/{vo}")


def normalize_fqan(fqan: str) -> str:
    """``/vo/Role=NULL/Capability=NULL`` -> ``/vo``; ``/vo/Role=r/Capability=NULL`` -> ``/vo/Role=r``."""
    parts = [p for p in fqan.strip().split("/") if p and p not in ("Role=NULL", "Capability=NULL")]
    return "/" + "/".join(parts)


def has_fqan(info: ProxyInfo, vorole: str) -> bool:
    """APF's check: the FQAN asked for in ``vorole`` is among the proxy's attributes."""
    wanted = normalize_fqan(split_vorole(vorole)[1])
    return any(normalize_fqan(f) == wanted for f in info.fqans)


# ---------------------------------------------------------------------------------------------
# delegation: sign a CE's certificate request with our proxy


def load_request(pem: bytes) -> x509.CertificateSigningRequest:
    """A PEM certificate request. A-REX 6 writes version 2 into its requests, which cryptography
    refuses; the version INTEGER is set back to 0 (the request's own signature is not needed)."""
    body = b"".join(line for line in pem.splitlines() if line and not line.startswith(b"-----"))
    try:
        der = bytearray(base64.b64decode(body, validate=False))
    except ValueError:
        raise ProxyError("the delegation request is not PEM") from None

    def header(i: int) -> tuple[int, int]:  # (offset of the content, its length)
        length = der[i + 1]
        if length < 0x80:
            return i + 2, length
        n = length & 0x7F
        return i + 2 + n, int.from_bytes(der[i + 2 : i + 2 + n], "big")

    try:
        info, _ = header(0)  # CertificationRequest SEQUENCE
        version, _ = header(info)  # CertificationRequestInfo SEQUENCE, first element INTEGER
        if der[version : version + 3] == b"\x02\x01\x02":
            der[version + 2] = 0
        return x509.load_der_x509_csr(bytes(der))
    except (IndexError, ValueError) as exc:
        raise ProxyError(f"the delegation request cannot be parsed ({exc})") from None


def sign_proxy_request(
    request_pem: bytes, proxy_pem: bytes, *, now: float, lifetime: float = 12 * 3600
) -> bytes:
    """An RFC 3820 impersonation proxy for the requester's key, signed by our proxy, followed by
    our chain (without our key): what the CE stores as the delegated credential."""
    csr = load_request(request_pem)
    chain = x509.load_pem_x509_certificates(proxy_pem)
    key = serialization.load_pem_private_key(proxy_pem, None)
    if not isinstance(key, (rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey)):
        raise ProxyError("the proxy's key type cannot sign a delegation")
    issuer = chain[0]
    start = datetime.datetime.fromtimestamp(now, datetime.UTC)
    end = min(start + datetime.timedelta(seconds=lifetime), issuer.not_valid_after_utc)
    serial = x509.random_serial_number() >> 100  # short serials: some verifiers mangle long ones
    subject = x509.Name([*issuer.subject.rdns, x509.RelativeDistinguishedName([
        x509.NameAttribute(NameOID.COMMON_NAME, str(serial))
    ])])  # fmt: skip
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer.subject)
        .public_key(csr.public_key())  # type: ignore[arg-type]
        .serial_number(serial)
        .not_valid_before(start - datetime.timedelta(minutes=5))
        .not_valid_after(end)
        .add_extension(
            x509.KeyUsage(True, False, True, True, False, False, False, False, False), critical=True
        )
        .add_extension(x509.UnrecognizedExtension(PROXY_CERT_INFO, _PCI_INHERIT_ALL), critical=True)
        .sign(key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    return cert.public_bytes(pem) + b"".join(c.public_bytes(pem) for c in chain)
