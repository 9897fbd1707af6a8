"""TLS for umprobe: pyOpenSSL contexts, certificate facts, and a trio stream that pumps TLS over memory BIOs.

Why pyOpenSSL and not the stdlib ``ssl`` module: a prober must capture the server's whole chain *even when
it does not verify* (so it can report "expired 3 days ago" or "issued by the wrong CA"), must choose TLS
1.0-1.3 and legacy cipher suites for old Schannel peers, and must tell "the server demanded a client
certificate" apart from other failures. Verification therefore always lets the handshake finish
(the verify callback only *records* the first chain error) and :class:`TLSStream` decides afterwards.

Contexts are built once per configuration and shared by many connections: everything per-connection
(the recorded chain error, whether the server asked for a client certificate) lives on the
``SSL.Connection``'s app data, never on the context.

Exceptions: ``OpenSSL.SSL.Error`` and the transport's ``trio.BrokenResourceError`` /
``trio.ClosedResourceError`` / ``OSError`` are translated to :mod:`umprobe.net.errors` in one place per
stream (``TLSStream._retry`` for I/O, ``TLSStream.aclose`` for the best-effort goodbye). What each
OpenSSL error string becomes is in ``_classify_ssl_error``; the strings this was tested against are in
tests/net/test_tls.py and tests/net/test_contexts.py.

The pump's theory of operation is the comment just above :class:`TLSStream`.
"""

from __future__ import annotations

import contextlib
import enum
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import NoReturn, TypeVar

import trio
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa
from OpenSSL import SSL, crypto

from umprobe.net.errors import ConnectionClosed, NetError, TLSConfigError, TLSError, TLSErrorKind
from umprobe.net.resolve import ip_literal

__all__ = [
    "TLS_VERSIONS",
    "CertInfo",
    "TLSClientConfig",
    "TLSInfo",
    "TLSStream",
    "cert_info",
    "hostname_matches",
    "load_cert_info",
    "make_client_context",
    "make_server_context",
]

TLS_VERSIONS = ("1.0", "1.1", "1.2", "1.3")

_VERSION_CONSTANTS = {
    "1.0": SSL.TLS1_VERSION,
    "1.1": SSL.TLS1_1_VERSION,
    "1.2": SSL.TLS1_2_VERSION,
    "1.3": SSL.TLS1_3_VERSION,
}
_LEGACY_VERSIONS = frozenset({"1.0", "1.1"})

# The single exception to "no timeouts in here": how long aclose() may spend sending close_notify. It is
# a courtesy to the peer, bounded so that closing never hangs on a peer that stopped reading.
_CLOSE_NOTIFY_GRACE = 0.25
_LATE_ALERT_GRACE = 0.1

_DEFAULT_RECEIVE_SIZE = 65536
_SEND_CHUNK = 16384  # one TLS record of plaintext
_FIRST_BYTES_KEPT = 64
_BIO_READ_SIZE = 65536


# --------------------------------------------------------------------------------------------------------
# Values


@dataclass(frozen=True, slots=True)
class TLSClientConfig:
    """How umprobe talks TLS to one target. Validated by :func:`make_client_context`.

    - ``ca_file``: PEM bundle of trusted roots; ``None`` means the system's default trust store.
    - ``cert_file`` / ``key_file``: our client certificate (chain) and its key, for mutual TLS. A
      ``key_file`` of ``None`` means the key is in ``cert_file``.
    - ``insecure``: complete and report, but never refuse, a server that fails verification. It does not
      change the context; pass it on to :class:`TLSStream`.
    - ``min_version`` / ``max_version``: one of :data:`TLS_VERSIONS`; ``max_version=None`` is the newest
      the library supports.
    - ``ciphers``: an OpenSSL cipher string for TLS 1.2 and older (TLS 1.3 suites are not affected), e.g.
      ``"AES128-SHA"`` for RFC 3261's mandatory TLS_RSA_WITH_AES_128_CBC_SHA. When ``min_version`` is
      1.0 or 1.1, ``:@SECLEVEL=0`` is appended (unless the string already sets a level) because OpenSSL 3's
      default security level 1 forbids the SHA-1/MD5 signatures those versions need.
    """

    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    insecure: bool = False
    min_version: str = "1.2"
    max_version: str | None = None
    ciphers: str | None = None


@dataclass(frozen=True, slots=True)
class CertInfo:
    """Facts about one certificate, for reports and expiry metrics."""

    subject: str  # RFC 4514
    issuer: str  # RFC 4514
    san: tuple[str, ...]  # "DNS:cas01.contoso.local", "IP:127.0.0.1", "URI:sip:contoso.local", "email:..."
    not_before: datetime  # UTC, aware
    not_after: datetime  # UTC, aware
    sha256: str  # lower-case hex of the DER encoding
    serial: str  # lower-case hex, no separators
    key_type: str  # "RSA-2048", "EC-secp256r1", "Ed25519", ...

    def days_left(self, now: datetime) -> float:
        """Days until ``not_after`` (negative once expired). ``now`` must be timezone-aware."""
        return (self.not_after - now).total_seconds() / 86400.0


@dataclass(frozen=True, slots=True)
class TLSInfo:
    """What one handshake negotiated and what we made of the peer's certificate.

    ``verified`` is the verdict on the peer: its chain verifies against our trust store and (client side,
    when a name was given) its name matches. It is reported truthfully even when ``insecure`` let the
    handshake through. ``verify_error`` says why not: OpenSSL's chain error text with depth and subject,
    and/or ``"hostname mismatch: wanted X, certificate has DNS:a, IP:b"``.

    ``client_cert_requested`` (client side) comes from OpenSSL's info callback seeing the state
    ``"SSLv3/TLS read server certificate request"``; ``Connection.get_client_ca_list()`` cannot tell, since
    a server may request a certificate with an empty CA list. ``client_cert_sent`` is true when we wrote a
    CertificateVerify message, which TLS 1.2 and 1.3 send only after a non-empty Certificate. On the server
    side they mean "we asked" and "the client presented one". ``client_ca_names`` are the acceptable CA
    names the server listed in its CertificateRequest (client side; often empty).

    Before the handshake completes (or after it failed) :meth:`TLSStream.info` returns what was known so
    far: ``version``/``cipher`` may be ``None`` and ``peer_chain`` may be empty.
    """

    version: str | None  # "TLSv1.2", "TLSv1.3"
    cipher: str | None  # OpenSSL name, e.g. "ECDHE-ECDSA-AES128-GCM-SHA256", "TLS_AES_256_GCM_SHA384"
    verified: bool
    verify_error: str | None
    peer_chain: tuple[CertInfo, ...]  # leaf first, as the peer sent it
    client_cert_requested: bool
    client_cert_sent: bool
    client_ca_names: tuple[str, ...] = ()


# --------------------------------------------------------------------------------------------------------
# Certificate facts and name matching


def _key_type(cert: x509.Certificate) -> str:
    key = cert.public_key()
    if isinstance(key, rsa.RSAPublicKey):
        return f"RSA-{key.key_size}"
    if isinstance(key, ec.EllipticCurvePublicKey):
        return f"EC-{key.curve.name}"
    if isinstance(key, ed25519.Ed25519PublicKey):
        return "Ed25519"
    if isinstance(key, ed448.Ed448PublicKey):
        return "Ed448"
    if isinstance(key, dsa.DSAPublicKey):
        return f"DSA-{key.key_size}"
    return type(key).__name__


def _san_extension(cert: x509.Certificate) -> x509.SubjectAlternativeName | None:
    try:
        return cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return None
    except ValueError:
        # A malformed extension: report the certificate without names rather than fail the probe.
        return None


def _san_strings(cert: x509.Certificate) -> tuple[str, ...]:
    san = _san_extension(cert)
    if san is None:
        return ()
    out: list[str] = []
    for name in san:
        if isinstance(name, x509.DNSName):
            out.append(f"DNS:{name.value}")
        elif isinstance(name, x509.IPAddress):
            out.append(f"IP:{name.value}")
        elif isinstance(name, x509.UniformResourceIdentifier):
            out.append(f"URI:{name.value}")
        elif isinstance(name, x509.RFC822Name):
            out.append(f"email:{name.value}")
        elif isinstance(name, x509.DirectoryName):
            out.append(f"DirName:{name.value.rfc4514_string()}")
        elif isinstance(name, x509.RegisteredID):
            out.append(f"RID:{name.value.dotted_string}")
        else:
            out.append(f"othername:{name.type_id.dotted_string}")
    return tuple(out)


def cert_info(cert: x509.Certificate) -> CertInfo:
    """Summarise ``cert`` as a :class:`CertInfo`."""
    return CertInfo(
        subject=cert.subject.rfc4514_string(),
        issuer=cert.issuer.rfc4514_string(),
        san=_san_strings(cert),
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
        sha256=cert.fingerprint(hashes.SHA256()).hex(),
        serial=format(cert.serial_number, "x"),
        key_type=_key_type(cert),
    )


def load_cert_info(path: str) -> CertInfo:
    """Facts about the first certificate in a PEM (or DER) file, e.g. our client certificate's expiry."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise TLSConfigError(f"cannot read certificate file {path}: {exc.strerror or exc}") from exc
    try:
        if b"-----BEGIN" in data:
            certs = x509.load_pem_x509_certificates(data)
            cert = certs[0]
        else:
            cert = x509.load_der_x509_certificate(data)
    except (ValueError, IndexError) as exc:
        raise TLSConfigError(f"certificate file {path} holds no readable certificate ({exc})") from exc
    return cert_info(cert)


def _dns_pattern_matches(pattern: str, name: str) -> bool:
    """RFC 6125 §6.4: case-insensitive; ``*`` only as the whole left-most label, matching one label."""
    pattern = pattern.rstrip(".").lower()
    if not pattern:
        return False
    if pattern == name:
        return True
    labels = pattern.split(".")
    if labels[0] != "*" or "*" in ".".join(labels[1:]):
        return False
    if len(labels) < 3:
        # "*.com" / "*.local": a wildcard over a single remaining label is never honoured.
        return False
    name_labels = name.split(".")
    return len(name_labels) == len(labels) and bool(name_labels[0]) and name_labels[1:] == labels[1:]


def hostname_matches(cert: x509.Certificate, name: str) -> bool:
    """Does ``cert`` carry the identity ``name``?

    - An IP literal (``"127.0.0.1"``, ``"::1"``, ``"[::1]"``) matches iPAddress SANs only, never the CN.
    - A DNS name matches the dNSName SANs (RFC 6125 §6.4: case-insensitive, a trailing dot ignored, a
      single ``*`` as the whole left-most label covers exactly one label, and never over fewer than two
      remaining labels). Only when the certificate has *no* dNSName SAN at all does it fall back to the
      subject CN(s), the legacy rule.

    RFC 5922 §7 (SIP: prefer ``URI:sip:`` SANs, no wildcards) is a stricter policy that would be added here
    as a keyword flag choosing the candidate list; the default stays the RFC 6125 behaviour above.
    """
    ip = ip_literal(name)
    san = _san_extension(cert)
    if ip is not None:
        if san is None:
            return False
        return any(candidate == ip for candidate in san.get_values_for_type(x509.IPAddress))
    wanted = name.rstrip(".").lower()
    if not wanted.isascii():
        # Certificates carry A-labels (RFC 5280 §7.2): compare "bücher.example" as "xn--bcher-kva.example".
        try:
            wanted = wanted.encode("idna").decode("ascii")
        except UnicodeError:
            return False
    if not wanted:
        return False
    dns_names = san.get_values_for_type(x509.DNSName) if san is not None else []
    if dns_names:
        return any(_dns_pattern_matches(pattern, wanted) for pattern in dns_names)
    common_names = cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    return any(isinstance(cn.value, str) and _dns_pattern_matches(cn.value, wanted) for cn in common_names)


def _describe_names(cert: x509.Certificate) -> str:
    sans = _san_strings(cert)
    if sans:
        return ", ".join(sans)
    cns = cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    if cns:
        return ", ".join(f"CN={cn.value!s}" for cn in cns) + " (no subjectAltName)"
    return "no names at all"


# What a handshake learns from the peer's certificates depends only on their DER encoding (and the name we
# wanted), so it is remembered by it: a prober meets the same few certificates again and again, and reading
# one into a CertInfo costs more than the rest of a TLS probe's Python work (~0.3 ms per certificate).
# Each cache keeps its newest _FACTS_KEPT entries.
_FACTS_KEPT = 1024
_K = TypeVar("_K")
_V = TypeVar("_V")
_CERT_FACTS: dict[bytes, CertInfo] = {}
_NAME_FACTS: dict[tuple[bytes, str], str | None] = {}
_CA_NAME_FACTS: dict[bytes, str] = {}
_SNI_FACTS: dict[str, bytes | None] = {}


def _remember(cache: dict[_K, _V], key: _K, value: _V) -> _V:
    if len(cache) >= _FACTS_KEPT:
        del cache[next(iter(cache))]  # the oldest
    cache[key] = value
    return value


def _sni(server_hostname: str) -> bytes | None:
    """The SNI for `server_hostname`: None for an IP literal, else (RFC 6066 §3) the A-label form of the
    DNS name without a trailing dot. Remembered: a probe's name is the same on every run."""
    if server_hostname in _SNI_FACTS:
        return _SNI_FACTS[server_hostname]
    sni = None if ip_literal(server_hostname) is not None else server_hostname.rstrip(".").encode("idna")
    return _remember(_SNI_FACTS, server_hostname, sni)


def _der(cert: crypto.X509) -> bytes:
    return crypto.dump_certificate(crypto.FILETYPE_ASN1, cert)


def _der_cert_info(der: bytes) -> CertInfo:
    """`cert_info` of the certificate whose DER encoding is `der`."""
    info = _CERT_FACTS.get(der)
    if info is None:
        info = _remember(_CERT_FACTS, der, cert_info(x509.load_der_x509_certificate(der)))
    return info


def _der_name_mismatch(der: bytes, name: str) -> str | None:
    """None if the certificate (DER) carries the identity `name` (`hostname_matches`), else its names."""
    key = (der, name)
    if key in _NAME_FACTS:
        return _NAME_FACTS[key]
    cert = x509.load_der_x509_certificate(der)
    return _remember(_NAME_FACTS, key, None if hostname_matches(cert, name) else _describe_names(cert))


def _der_name_text(der: bytes) -> str:
    """The RFC 4514 text of a distinguished name given as DER."""
    text = _CA_NAME_FACTS.get(der)
    if text is None:
        text = _remember(_CA_NAME_FACTS, der, x509.Name.from_bytes(der).rfc4514_string())
    return text


# --------------------------------------------------------------------------------------------------------
# Contexts

_TLS_KEY_TYPES = (
    rsa.RSAPrivateKey,
    ec.EllipticCurvePrivateKey,
    ed25519.Ed25519PrivateKey,
    ed448.Ed448PrivateKey,
    dsa.DSAPrivateKey,
)


@dataclass(frozen=True, slots=True)
class _ContextFacts:
    """What a context was built with, kept in its app data so error messages can name it."""

    min_version: str
    max_version: str | None
    # `_record_info` is the context's info callback (client contexts): a TLSStream need not set its own.
    records_info: bool = False

    def offered(self) -> str:
        return f"{self.min_version}-{self.max_version or TLS_VERSIONS[-1]}"


def _check_version(value: object, what: str) -> str:
    if not isinstance(value, str) or value not in _VERSION_CONSTANTS:
        raise TLSConfigError(f"{what} {value!r} is not one of {', '.join(TLS_VERSIONS)}")
    return value


def _apply_versions_and_ciphers(
    ctx: SSL.Context, min_version: str, max_version: str | None, ciphers: str | None
) -> _ContextFacts:
    low = _check_version(min_version, "min_version")
    high = _check_version(max_version, "max_version") if max_version is not None else None
    if high is not None and TLS_VERSIONS.index(high) < TLS_VERSIONS.index(low):
        raise TLSConfigError(f"min_version {low} is above max_version {high}")
    try:
        ctx.set_min_proto_version(_VERSION_CONSTANTS[low])
        if high is not None:
            ctx.set_max_proto_version(_VERSION_CONSTANTS[high])
    except SSL.Error as exc:
        raise TLSConfigError(f"this OpenSSL cannot do TLS {low}-{high or 'newest'}: {exc}") from exc
    cipher_string = ciphers
    if low in _LEGACY_VERSIONS and (cipher_string is None or "@SECLEVEL" not in cipher_string.upper()):
        cipher_string = f"{cipher_string or 'DEFAULT'}:@SECLEVEL=0"
    if cipher_string is not None:
        try:
            ctx.set_cipher_list(cipher_string.encode("ascii"))
        except (SSL.Error, UnicodeError) as exc:
            raise TLSConfigError(f"OpenSSL rejects the cipher string {cipher_string!r}") from exc
    ctx.set_options(SSL.OP_NO_COMPRESSION)
    return _ContextFacts(min_version=low, max_version=high)


def _read(path: str, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise TLSConfigError(f"cannot read {what} {path}: {exc.strerror or exc}") from exc


def _load_trust(ctx: SSL.Context, ca_file: str) -> None:
    _read(ca_file, "CA file")
    try:
        ctx.load_verify_locations(ca_file)
    except SSL.Error as exc:
        raise TLSConfigError(
            f"CA file {ca_file} holds no usable PEM certificate ({_first_reason(exc)})"
        ) from exc


def _load_identity(ctx: SSL.Context, cert_file: str, key_file: str | None) -> None:
    """Our certificate chain and its key. The key is parsed with ``cryptography`` (never prompting for a
    passphrase: encrypted keys are refused) and must match the certificate."""
    key_path = key_file if key_file is not None else cert_file
    _read(cert_file, "certificate file")
    key_data = _read(key_path, "key file")
    try:
        ctx.use_certificate_chain_file(cert_file)
    except SSL.Error as exc:
        raise TLSConfigError(
            f"certificate file {cert_file} holds no usable PEM certificate ({_first_reason(exc)})"
        ) from exc
    try:
        if b"-----BEGIN" in key_data:
            key = serialization.load_pem_private_key(key_data, password=None)
        else:
            key = serialization.load_der_private_key(key_data, password=None)
    except TypeError as exc:  # "Password was not given but private key is encrypted"
        raise TLSConfigError(
            f"private key {key_path} is encrypted; umprobe needs an unencrypted key"
        ) from exc
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise TLSConfigError(f"key file {key_path} holds no readable private key") from exc
    if not isinstance(key, _TLS_KEY_TYPES):
        raise TLSConfigError(f"private key {key_path} is a {type(key).__name__}, not usable for TLS")
    try:
        ctx.use_privatekey(key)
        ctx.check_privatekey()
    except SSL.Error as exc:
        raise TLSConfigError(f"private key {key_path} does not match certificate {cert_file}") from exc


def make_client_context(config: TLSClientConfig) -> SSL.Context:
    """Build a reusable client context for ``config``; :class:`TLSConfigError` names what is wrong.

    Verification mode is VERIFY_PEER with a callback that records the first chain error on the connection
    and lets the handshake finish, so the chain is always captured; :class:`TLSStream` gives the verdict.
    """
    if config.key_file is not None and config.cert_file is None:
        raise TLSConfigError(f"key_file {config.key_file} is set but cert_file is not")
    ctx = SSL.Context(SSL.TLS_CLIENT_METHOD)
    facts = _apply_versions_and_ciphers(ctx, config.min_version, config.max_version, config.ciphers)
    if config.ca_file is not None:
        _load_trust(ctx, config.ca_file)
    else:
        ctx.set_default_verify_paths()
    if config.cert_file is not None:
        _load_identity(ctx, config.cert_file, config.key_file)
    ctx.set_verify(SSL.VERIFY_PEER, _record_verify_and_continue)
    # Set once here rather than per connection (pyOpenSSL makes a C callback each time it is set).
    ctx.set_info_callback(_record_info)
    ctx.set_app_data(replace(facts, records_info=True))
    return ctx


def make_server_context(
    *,
    cert_file: str,
    key_file: str,
    ca_file: str | None = None,
    require_client_cert: bool = False,
    min_version: str = "1.2",
    max_version: str | None = None,
) -> SSL.Context:
    """Build a server context (umprobe's own SIP responder, the demo, tests).

    With ``ca_file`` the server requests a client certificate and verifies any it gets against that
    bundle (sending the bundle's subjects as acceptable CA names); ``require_client_cert`` makes one
    mandatory (and needs ``ca_file``). Unlike the client side, a bad client certificate fails the
    handshake here, as a real server would.
    """
    if require_client_cert and ca_file is None:
        raise TLSConfigError("require_client_cert needs a ca_file to verify client certificates against")
    ctx = SSL.Context(SSL.TLS_SERVER_METHOD)
    facts = _apply_versions_and_ciphers(ctx, min_version, max_version, None)
    _load_identity(ctx, cert_file, key_file)
    if ca_file is not None:
        _load_trust(ctx, ca_file)
        try:
            ctx.load_client_ca(ca_file.encode())
        except SSL.Error as exc:
            raise TLSConfigError(
                f"CA file {ca_file} holds no usable CA names ({_first_reason(exc)})"
            ) from exc
        mode = SSL.VERIFY_PEER | (SSL.VERIFY_FAIL_IF_NO_PEER_CERT if require_client_cert else 0)
        ctx.set_verify(mode, _record_verify_strict)
        # TLS 1.2 session resumption with client verification needs a session id context.
        ctx.set_session_id(b"umprobe")
    else:
        ctx.set_verify(SSL.VERIFY_NONE)
    ctx.set_app_data(facts)
    return ctx


# --------------------------------------------------------------------------------------------------------
# Per-connection observations, fed by OpenSSL callbacks. The callbacks run inside OpenSSL calls; they must
# never raise (pyOpenSSL would park the exception on the *shared* context).

# X509_V_ERR_* texts (OpenSSL crypto/x509/x509_txt.c); tests check them against the linked library.
_VERIFY_ERRORS = {
    2: "unable to get issuer certificate",
    4: "unable to decrypt certificate's signature",
    7: "certificate signature failure",
    9: "certificate is not yet valid",
    10: "certificate has expired",
    13: "format error in certificate's notBefore field",
    14: "format error in certificate's notAfter field",
    18: "self-signed certificate",
    19: "self-signed certificate in certificate chain",
    20: "unable to get local issuer certificate",
    21: "unable to verify the first certificate",
    22: "certificate chain too long",
    23: "certificate revoked",
    24: "issuer certificate doesn't have a public key",
    25: "path length constraint exceeded",
    26: "unsuitable certificate purpose",
    27: "certificate not trusted",
    28: "certificate rejected",
    29: "subject issuer mismatch",
    32: "key usage does not include certificate signing",
    34: "unhandled critical extension",
    37: "invalid non-CA certificate (has CA markings)",
    39: "key usage does not include digital signature",
    41: "invalid or inconsistent certificate extension",
    47: "permitted subtree violation",
    48: "excluded subtree violation",
    66: "EE certificate key too weak",
    67: "CA certificate key too weak",
    68: "CA signature digest algorithm too weak",
    79: "invalid CA certificate",
}


def _verify_error_text(code: int) -> str:
    return _VERIFY_ERRORS.get(code, f"certificate verification error {code}")


class _Observations:
    """Mutable per-connection notes (internal state, not a value)."""

    __slots__ = ("chain_error", "client_cert_requested", "client_cert_sent")

    def __init__(self) -> None:
        self.chain_error: str | None = None
        self.client_cert_requested = False
        self.client_cert_sent = False


def _note_chain_error(conn: SSL.Connection, cert: crypto.X509, errnum: int, depth: int) -> bool:
    notes = conn.get_app_data()
    if not isinstance(notes, _Observations):
        return False
    if notes.chain_error is None:
        try:
            subject = cert.to_cryptography().subject.rfc4514_string()
        except Exception:  # a certificate cryptography cannot parse: still report the error code
            subject = "unparseable certificate"
        notes.chain_error = f"{_verify_error_text(errnum)} (depth {depth}: {subject})"
    return True


def _record_verify_and_continue(
    conn: SSL.Connection, cert: crypto.X509, errnum: int, depth: int, ok: int
) -> bool:
    """Client verify callback: record the first chain error, accept anyway (TLSStream decides later).

    On a connection that is not a TLSStream's (no observations attached) it keeps OpenSSL's verdict.
    """
    if ok:
        return True
    return _note_chain_error(conn, cert, errnum, depth)


def _record_verify_strict(conn: SSL.Connection, cert: crypto.X509, errnum: int, depth: int, ok: int) -> bool:
    """Server verify callback: record the first chain error and keep OpenSSL's verdict."""
    if not ok:
        _note_chain_error(conn, cert, errnum, depth)
    return bool(ok)


_STATE_CERT_REQUEST = b"SSLv3/TLS read server certificate request"
_STATE_CERT_VERIFY_WRITTEN = b"SSLv3/TLS write certificate verify"


def _record_info(conn: SSL.Connection, where: int, _ret: int) -> None:
    """Client-side info callback: OpenSSL calls it at every state change of the handshake."""
    if not where & SSL.SSL_CB_LOOP:
        return  # start, exit, alert and done calls: every state was seen in a loop call before
    notes = conn.get_app_data()
    if not isinstance(notes, _Observations):
        return
    state = conn.get_state_string()
    if state == _STATE_CERT_REQUEST:
        notes.client_cert_requested = True
    elif state == _STATE_CERT_VERIFY_WRITTEN:
        notes.client_cert_sent = True


# --------------------------------------------------------------------------------------------------------
# OpenSSL error classification

# Alerts that are about a certificate: received during (or, with TLS 1.3, right after) the handshake they
# mean the peer refused the client certificate we sent, or the one we did not send.
_CERT_ALERTS = frozenset(
    {
        "bad_certificate",  # 42
        "unsupported_certificate",  # 43
        "certificate_revoked",  # 44
        "certificate_expired",  # 45
        "certificate_unknown",  # 46
        "unknown_ca",  # 48
        "access_denied",  # 49
        "certificate_required",  # 116
    }
)

# OpenSSL reason strings for a *received* alert: "sslv3 alert bad certificate", "tlsv1 alert unknown ca",
# "tlsv13 alert certificate required" (OpenSSL 3.0) and "tls alert handshake failure" (OpenSSL 4.0).
_ALERT_REASON = re.compile(r"^(?:sslv3|tlsv1|tlsv13|tls|ssl/tls) alert (?P<name>[a-z0-9 ]+)$")
# A few received alerts have reason strings without the word "alert".
_ALERT_REASON_SPECIAL = {
    "tlsv1 unrecognized name": "unrecognized_name",
    "tlsv1 unsupported extension": "unsupported_extension",
    "tlsv1 certificate unobtainable": "certificate_unobtainable",
    "tlsv1 bad certificate status response": "bad_certificate_status_response",
    "tlsv1 bad certificate hash value": "bad_certificate_hash_value",
}
_ALERT_NAME_FIXES = {"user_cancelled": "user_canceled"}

# Local reasons meaning "no TLS version in common".
_VERSION_REASONS = frozenset(
    {"unsupported protocol", "wrong ssl version", "version too low", "version too high"}
)
# TLS record content types: change_cipher_spec, alert, handshake, application_data, heartbeat.
_TLS_RECORD_TYPES = frozenset({0x14, 0x15, 0x16, 0x17, 0x18})


def _reasons(exc: SSL.Error) -> list[str]:
    """The reason strings of an ``SSL.Error`` (its args are ``([(lib, func, reason), ...],)``)."""
    out: list[str] = []
    if exc.args and isinstance(exc.args[0], list):
        for entry in exc.args[0]:
            if isinstance(entry, tuple) and len(entry) == 3 and entry[2]:
                out.append(str(entry[2]))
    return out


def _first_reason(exc: SSL.Error) -> str:
    reasons = _reasons(exc)
    return reasons[0] if reasons else (str(exc) or type(exc).__name__)


def _received_alert(reasons: Sequence[str]) -> str | None:
    for reason in reasons:
        if reason in _ALERT_REASON_SPECIAL:
            return _ALERT_REASON_SPECIAL[reason]
        match = _ALERT_REASON.match(reason)
        if match:
            name = match.group("name").strip().replace(" ", "_")
            return _ALERT_NAME_FIXES.get(name, name)
    return None


def _preview(data: bytes) -> str:
    line = data.split(b"\r", 1)[0].split(b"\n", 1)[0][:40]
    return repr(line.decode("ascii", "backslashreplace"))


# --------------------------------------------------------------------------------------------------------
# The stream


class _State(enum.Enum):
    OK = "ok"
    BROKEN = "broken"
    CLOSED = "closed"


_T = TypeVar("_T")

# Theory of operation
# -------------------
# An ``SSL.Connection(ctx, None)`` owns two memory BIOs: ciphertext from the peer goes *in* with
# ``bio_write`` (``bio_shutdown`` when the transport reports EOF), ciphertext for the peer comes *out* with
# ``bio_read``. The SSL object never touches a socket; ``_retry`` is the only pump, modelled on the single
# retry loop in trio's ``_ssl.py``:
#
#     loop:
#         call the SSL operation (do_handshake / send / recv / ...)
#             WantReadError  -> it needs more ciphertext from the peer
#             SSL.Error      -> translate (flushing any alert OpenSSL queued for the peer) and raise
#             success        -> done after this pass
#         drain the outgoing BIO; if there is ciphertext, send it (under the send lock)
#         if the operation wanted to read: receive once from the transport (under the receive lock) and
#             bio_write it (or bio_shutdown on EOF)
#         loop again unless done
#
# "Send pending output before receiving" is what makes the handshake progress: after WantReadError there is
# usually a flight (ClientHello, Finished, an alert) waiting in the outgoing BIO. Sending it gives OpenSSL
# nothing to read, so the receive follows in the same pass rather than after a second, futile call.
#
# Concurrency follows the trio.abc.Stream contract: one task may be in send_all while another is in
# receive_some. Both may need the transport in either direction (a read may have to answer a KeyUpdate, a
# write may find the handshake unfinished), so transport sends happen under ``_inner_send_lock`` and
# transport receives under ``_inner_recv_lock``; ``_inner_recv_count`` lets a task about to receive notice
# that another task fetched fresh data since its SSL call and retry the call instead of blocking on a
# second read. The handshake runs once, under ``_handshake_lock``, whoever triggers it.
#
# Cancellation: a cancelled transport *receive* loses nothing (no bytes were taken), so the stream stays
# usable. A cancelled transport *send* may have written part of a record, so the stream becomes BROKEN.
# Either way the caller's duty is the same: aclose(), which always closes the transport.
#
# TLS 1.3 on the server side: OpenSSL writes session tickets as soon as its handshake completes. Like
# trio, we hold them back (``_delayed_outgoing``) and send them with the next outgoing data, so a server
# that has finished its handshake never blocks on a client that is not reading yet.
#
# Errors: everything foreign is translated in ``_retry`` (and ``aclose``). After a failure the stream is
# BROKEN and every later call raises a copy of the same error. An untrusted or misnamed server certificate
# is not a protocol failure but our refusal: do_handshake() raises TLSError(kind="verify_failed") and the
# stream stays unusable for data (unless ``insecure``).
#
# End of stream after the handshake: a close_notify makes receive_some() return b"" (and keep doing so);
# a transport EOF without close_notify (or a RST) raises ConnectionClosed: for SIP over TLS both end the
# conversation, but only the first is a clean goodbye. An EOF or RST during the handshake also raises
# ConnectionClosed, whose detail says when the server had asked for a client certificate that we did not
# send (a peer that hangs up on a missing client certificate without an alert looks exactly like this).
#
# A late alert behind a failed write: a TLS 1.3 server that refuses our client certificate sends its alert
# and closes at once (socat does). Our first write after the handshake then fails (EPIPE/RST) while the
# alert still sits unread in the receive queue. So when a send after the handshake loses the transport,
# send_all reads what is left for at most ``_LATE_ALERT_GRACE`` seconds, and a received alert replaces the
# ConnectionClosed as the stream's failure. This and the close_notify grace in aclose() are the only timers
# in this module; both bound best-effort work on a path that is already failing.


async def _take(lock: trio.Lock | trio.StrictFIFOLock) -> None:
    """Acquire `lock` in `_retry`: a free one at once, with no schedule point of its own (the transport
    call made under it is the checkpoint, and a free lock has no waiter to be fair to), else wait."""
    if lock.locked():
        await lock.acquire()
    else:
        lock.acquire_nowait()


def _copy_error(error: NetError) -> NetError:
    if isinstance(error, TLSError):
        return TLSError(error.detail, kind=error.kind, alert=error.alert, info=error.info)
    return type(error)(error.detail)


class TLSStream(trio.abc.Stream):
    """TLS over any trio stream, client or server side, pumping pyOpenSSL memory BIOs (see above).

    Client side: ``server_hostname`` is sent as SNI unless it is an IP literal; ``verify_hostname``
    (default: ``server_hostname``) is checked with :func:`hostname_matches` after the handshake. With no
    name at all only the chain is verified. ``insecure=True`` never refuses the server but still reports
    ``verified=False``. The context should come from :func:`make_client_context` or
    :func:`make_server_context`.

    Errors are :class:`~umprobe.net.errors.NetError` subclasses (``TLSError``, ``ConnectionClosed``), not
    ``trio.BrokenResourceError``; using the stream after *our own* ``aclose()`` raises
    ``trio.ClosedResourceError`` and concurrent misuse ``trio.BusyResourceError``, per the trio contract.
    """

    def __init__(
        self,
        transport_stream: trio.abc.Stream,
        context: SSL.Context,
        *,
        server_side: bool = False,
        server_hostname: str | None = None,
        verify_hostname: str | None = None,
        insecure: bool = False,
    ) -> None:
        self._transport = transport_stream
        self._server_side = server_side
        self._insecure = insecure
        self._verify_hostname = verify_hostname if verify_hostname is not None else server_hostname
        facts = context.get_app_data()
        self._facts = facts if isinstance(facts, _ContextFacts) else None

        self._notes = _Observations()
        conn = SSL.Connection(context, None)
        conn.set_app_data(self._notes)
        if server_side:
            conn.set_accept_state()
        else:
            conn.set_connect_state()
            if self._facts is None or not self._facts.records_info:
                conn.set_info_callback(_record_info)
            sni = _sni(server_hostname) if server_hostname is not None else None
            if sni is not None:
                conn.set_tlsext_host_name(sni)
        self._conn = conn

        self._state = _State.OK
        self._failure: NetError | None = None
        self._info: TLSInfo | None = None
        self._handshake_lock = trio.Lock()
        self._inner_send_lock = trio.StrictFIFOLock()
        self._inner_recv_lock = trio.Lock()
        self._inner_recv_count = 0
        self._send_busy = False
        self._receive_busy = False
        self._delayed_outgoing: bytes | None = None
        self._first_bytes = b""
        # trio clock when the handshake itself completed, before the peer's certificates are read into
        # TLSInfo (~0.65 ms for a two-certificate chain): the probe's tls phase ends here.
        self.handshake_done_at: float | None = None

    # -- public ------------------------------------------------------------------------------------------

    @property
    def transport_stream(self) -> trio.abc.Stream:
        return self._transport

    def info(self) -> TLSInfo:
        """The completed handshake's :class:`TLSInfo`, or what is known so far if it has not completed."""
        if self._info is not None:
            return self._info
        return self._build_info(complete=False)

    async def do_handshake(self) -> TLSInfo:
        """Run the handshake (once; later calls return the same info) and give the client-side verdict.

        Raises ``TLSError`` (``handshake_failed``, ``client_cert_rejected``, or ``verify_failed`` with the
        captured chain in ``info``) or ``ConnectionClosed``.
        """
        self._check_usable()
        async with self._handshake_lock:
            self._check_usable()
            if self._info is not None:
                return self._info
            await self._retry(self._conn.do_handshake, is_handshake=True)
            self.handshake_done_at = trio.current_time()
            info = self._build_info(complete=True)
            self._info = info
            if not self._server_side and not self._insecure and not info.verified:
                # Our refusal, not a broken session: aclose() still says goodbye with close_notify.
                self._failure = TLSError(
                    f"server certificate refused: {info.verify_error or 'not verified'}",
                    kind="verify_failed",
                    info=info,
                )
        if self._failure is not None:
            raise _copy_error(self._failure)
        return info

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if self._send_busy:
            raise trio.BusyResourceError("another task is already sending on this TLSStream")
        self._send_busy = True
        try:
            self._check_usable()
            await self._ensure_handshake()
            view = memoryview(data).cast("B")
            if not view:
                await trio.lowlevel.checkpoint()
                return
            while view:
                chunk = bytes(view[:_SEND_CHUNK])
                try:
                    written = await self._retry(partial(self._conn.send, chunk))
                except ConnectionClosed as exc:
                    late = await self._late_alert()
                    if late is None:
                        raise
                    self._failure = late
                    raise late from exc
                view = view[written:]
        finally:
            self._send_busy = False

    async def _late_alert(self) -> TLSError | None:
        """After a lost transport on send: an alert the peer sent before closing, if one is still readable."""
        if self._server_side or self._info is None or self._inner_recv_lock.locked():
            return None
        received: list[bytes] = []
        async with self._inner_recv_lock:
            with trio.move_on_after(_LATE_ALERT_GRACE):
                while True:
                    try:
                        data = await self._transport.receive_some()
                    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                        break
                    if not data:
                        break
                    received.append(bytes(data))
        if not received:
            return None
        self._conn.bio_write(b"".join(received))
        try:
            self._conn.recv(_DEFAULT_RECEIVE_SIZE)
        except (SSL.WantReadError, SSL.ZeroReturnError, SSL.SysCallError):
            return None
        except SSL.Error as exc:
            failure = self._classify_ssl_error(exc, False)
            return failure if isinstance(failure, TLSError) else None
        return None

    async def wait_send_all_might_not_block(self) -> None:
        if self._send_busy:
            raise trio.BusyResourceError("another task is already sending on this TLSStream")
        self._send_busy = True
        try:
            self._check_usable()
            async with self._inner_send_lock:
                try:
                    await self._transport.wait_send_all_might_not_block()
                except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                    self._raise_transport_failure(exc, "waiting to send", is_handshake=False)
        finally:
            self._send_busy = False

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        """Up to ``max_bytes`` of plaintext; ``b""`` after the peer's close_notify.

        A transport EOF without close_notify raises ``ConnectionClosed``. An alert raises ``TLSError``:
        with TLS 1.3 this is where a refused client certificate shows up (``client_cert_rejected``).
        """
        if self._receive_busy:
            raise trio.BusyResourceError("another task is already receiving on this TLSStream")
        if max_bytes is None:
            max_bytes = _DEFAULT_RECEIVE_SIZE
        elif max_bytes < 1:
            raise ValueError("max_bytes must be >= 1")
        self._receive_busy = True
        try:
            self._check_usable()
            await self._ensure_handshake()
            return await self._retry(partial(self._conn.recv, max_bytes), on_close_notify=bytes)
        finally:
            self._receive_busy = False

    async def aclose(self) -> None:
        """Send close_notify if the session is healthy (best effort, bounded), then close the transport.

        Never hangs: the close_notify send is abandoned after ``_CLOSE_NOTIFY_GRACE`` seconds, or at once if
        the caller's scope is cancelled; the transport is closed in every case.
        """
        if self._state is _State.CLOSED:
            await trio.lowlevel.checkpoint()
            return
        # OK even after a verify refusal; not when the caller is cancelled already (trio.aclose_forcefully):
        # the send would be cancelled before it began, so no close_notify is made.
        goodbye = (
            self._state is _State.OK
            and self._info is not None
            and trio.current_effective_deadline() != -math.inf
        )
        self._state = _State.CLOSED
        try:
            if goodbye:
                with contextlib.suppress(SSL.Error):
                    self._conn.shutdown()  # queues close_notify in the outgoing BIO
                data = self._drain_outgoing()
                if data:
                    with trio.move_on_after(_CLOSE_NOTIFY_GRACE):
                        async with self._inner_send_lock:
                            await self._transport.send_all(self._with_delayed(data))
        except (trio.BrokenResourceError, trio.ClosedResourceError, trio.BusyResourceError, OSError):
            pass  # the peer is already gone: nothing to say goodbye to
        finally:
            await self._transport.aclose()

    # -- internals ---------------------------------------------------------------------------------------

    def _check_usable(self) -> None:
        if self._state is _State.CLOSED:
            raise trio.ClosedResourceError("this TLSStream was closed")
        if self._failure is not None:
            raise _copy_error(self._failure)

    def _fail(self, failure: NetError) -> None:
        """The session itself is unusable (TLS error, EOF, lost or interrupted transport)."""
        if self._state is _State.OK:
            self._state = _State.BROKEN
        if self._failure is None:
            self._failure = failure

    async def _ensure_handshake(self) -> None:
        if self._info is None:
            await self.do_handshake()

    def _with_delayed(self, data: bytes) -> bytes:
        """Prefix held-back TLS 1.3 session tickets: records must reach the peer in sequence order."""
        if self._delayed_outgoing is not None:
            data = self._delayed_outgoing + data
            self._delayed_outgoing = None
        return data

    def _drain_outgoing(self) -> bytes:
        parts: list[bytes] = []
        while True:
            try:
                part = self._conn.bio_read(_BIO_READ_SIZE)
            except SSL.WantReadError:
                break
            parts.append(part)
            if len(part) < _BIO_READ_SIZE:
                break  # a memory BIO hands out all it holds up to the size asked for: it is empty now
        return parts[0] if len(parts) == 1 else b"".join(parts)

    async def _retry(
        self,
        fn: Callable[[], _T],
        *,
        is_handshake: bool = False,
        on_close_notify: Callable[[], _T] | None = None,
    ) -> _T:
        await trio.lowlevel.checkpoint_if_cancelled()
        yielded = False
        while True:
            want_read = False
            finished = False
            # The receives fn() has seen: if another task brings in more before we would receive, call fn()
            # again instead of waiting for bytes it may not need.
            recv_count = self._inner_recv_count
            try:
                result = fn()
            except SSL.WantReadError:
                want_read = True
            except SSL.ZeroReturnError as exc:
                if on_close_notify is None:
                    failure: NetError = ConnectionClosed("peer sent close_notify during the TLS handshake")
                    self._fail(failure)
                    raise failure from exc
                result = on_close_notify()
                finished = True
            except SSL.SysCallError as exc:
                # pyOpenSSL's name for an EOF (or a socket error, impossible with memory BIOs).
                failure = self._eof_failure(is_handshake)
                self._fail(failure)
                raise failure from exc
            except SSL.Error as exc:
                failure = self._classify_ssl_error(exc, is_handshake)
                self._fail(failure)
                await self._flush_alert()
                raise failure from exc
            else:
                finished = True

            to_send = self._drain_outgoing()
            if (
                is_handshake
                and finished
                and self._server_side
                and self._conn.get_protocol_version_name() == "TLSv1.3"
                and to_send
            ):
                # TLS 1.3 server: these are session tickets; hold them back (see the theory of operation).
                self._delayed_outgoing = (self._delayed_outgoing or b"") + to_send
                to_send = b""

            if to_send:
                # From here until send_all returns, ciphertext that OpenSSL considers written exists only
                # in `to_send`: losing it (a cancel while waiting for the lock, or mid-write) breaks the
                # record sequence, so any escape marks the stream broken.
                try:
                    await _take(self._inner_send_lock)
                    try:
                        yielded = True
                        await self._transport.send_all(self._with_delayed(to_send))
                    finally:
                        self._inner_send_lock.release()
                except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                    self._raise_transport_failure(exc, "sending", is_handshake=is_handshake)
                except BaseException:
                    self._fail(ConnectionClosed("TLS stream broken: a send was interrupted midway"))
                    raise
            if want_read:  # sending gives OpenSSL nothing to read: it still needs bytes from the peer
                await _take(self._inner_recv_lock)
                try:
                    yielded = True
                    if recv_count == self._inner_recv_count:
                        try:
                            data = await self._transport.receive_some()
                        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                            self._raise_transport_failure(exc, "receiving", is_handshake=is_handshake)
                        if data:
                            if self._info is None and len(self._first_bytes) < _FIRST_BYTES_KEPT:
                                self._first_bytes += data[: _FIRST_BYTES_KEPT - len(self._first_bytes)]
                            self._conn.bio_write(data)
                        else:
                            self._conn.bio_shutdown()
                        self._inner_recv_count += 1
                finally:
                    self._inner_recv_lock.release()

            if finished:
                if not yielded:
                    await trio.lowlevel.cancel_shielded_checkpoint()
                return result

    async def _flush_alert(self) -> None:
        """After a local failure OpenSSL queued an alert for the peer: send it if the transport lets us."""
        data = self._drain_outgoing()
        if not data:
            return
        try:
            async with self._inner_send_lock:
                await self._transport.send_all(self._with_delayed(data))
        except (trio.BrokenResourceError, trio.ClosedResourceError, trio.BusyResourceError, OSError):
            pass  # the peer is gone; the error we are about to raise says why

    def _raise_transport_failure(self, exc: BaseException, doing: str, *, is_handshake: bool) -> NoReturn:
        if isinstance(exc, trio.ClosedResourceError) and self._state is _State.CLOSED:
            # Our own aclose() closed the transport under a concurrent call: the trio contract's error.
            raise trio.ClosedResourceError("this TLSStream was closed") from exc
        if isinstance(exc, trio.ClosedResourceError):
            why = "the transport stream was closed"
        else:
            cause = exc.__cause__ if isinstance(exc.__cause__, OSError) else exc
            if isinstance(cause, OSError) and cause.strerror:
                why = cause.strerror
            else:
                why = str(cause) or type(cause).__name__
        when = "during the TLS handshake" if is_handshake else "after the TLS handshake"
        detail = f"connection lost while {doing} {when}: {why}"
        if is_handshake and self._notes.client_cert_requested and not self._notes.client_cert_sent:
            detail += " (the server had requested a client certificate and none was sent)"
        failure = ConnectionClosed(detail)
        self._fail(failure)
        raise failure from exc

    def _eof_failure(self, is_handshake: bool) -> NetError:
        if not is_handshake:
            return ConnectionClosed("peer closed the connection without a TLS close_notify")
        if self._first_bytes and self._first_bytes[0] not in _TLS_RECORD_TYPES:
            return TLSError(
                f"peer does not speak TLS: it sent {_preview(self._first_bytes)} and closed the connection",
                kind="handshake_failed",
            )
        detail = "peer closed the connection during the TLS handshake"
        if self._notes.client_cert_requested and not self._notes.client_cert_sent:
            detail += " (it had requested a client certificate and none was sent)"
        return ConnectionClosed(detail)

    def _classify_ssl_error(self, exc: SSL.Error, is_handshake: bool) -> NetError:
        """Map one ``SSL.Error`` to a ``TLSError``; tests/net/test_tls.py pins the strings seen."""
        reasons = _reasons(exc)
        reason = "; ".join(reasons) if reasons else (str(exc) or type(exc).__name__)
        alert = _received_alert(reasons)
        info = self._info if self._info is not None else self._build_info(complete=False)
        known = info if info.peer_chain or info.version else None
        notes = self._notes
        kind: TLSErrorKind
        if alert is not None:
            late = "" if is_handshake else ", received after the handshake"
            if not self._server_side and alert in _CERT_ALERTS:
                kind = "client_cert_rejected"
                if notes.client_cert_sent:
                    detail = f"peer rejected our client certificate (alert {alert}{late})"
                else:
                    detail = f"peer requires a client certificate and none was sent (alert {alert}{late})"
            elif (
                not self._server_side
                and alert == "handshake_failure"
                and notes.client_cert_requested
                and not notes.client_cert_sent
            ):
                kind = "client_cert_rejected"
                detail = f"peer requires a client certificate and none was sent (alert {alert}{late})"
            elif alert == "protocol_version":
                kind = "handshake_failed"
                detail = f"peer sent alert protocol_version: no shared TLS version: offered {self._offered()}"
            elif alert == "handshake_failure" and is_handshake:
                kind = "handshake_failed"
                detail = (
                    "peer sent alert handshake_failure "
                    "(often: no cipher suite or signature algorithm in common)"
                )
            else:
                kind = "handshake_failed"
                detail = f"peer sent alert {alert}{' after the handshake' if late else ''}"
            return TLSError(detail, kind=kind, alert=alert, info=known)
        if self._info is None and self._first_bytes and self._first_bytes[0] not in _TLS_RECORD_TYPES:
            return TLSError(
                f"peer does not speak TLS: it sent {_preview(self._first_bytes)} (OpenSSL: {reason})",
                kind="handshake_failed",
                info=known,
            )
        if any(r in _VERSION_REASONS for r in reasons):
            return TLSError(
                f"no shared TLS version: offered {self._offered()} (OpenSSL: {reason})",
                kind="handshake_failed",
                info=known,
            )
        when = "TLS handshake failed" if is_handshake else "TLS failure after the handshake"
        return TLSError(f"{when}: {reason}", kind="handshake_failed", info=known)

    def _offered(self) -> str:
        return self._facts.offered() if self._facts is not None else "the context's versions"

    def _peer_chain(self) -> list[bytes]:
        """The peer's certificates, leaf first, DER-encoded."""
        chain = [_der(cert) for cert in self._conn.get_peer_cert_chain() or ()]
        if self._server_side:
            # On the server side OpenSSL's peer chain leaves out the client's own certificate.
            leaf = self._conn.get_peer_certificate()
            if leaf is not None:
                der = _der(leaf)
                if not chain or chain[0] != der:
                    chain.insert(0, der)
        return chain

    def _build_info(self, *, complete: bool) -> TLSInfo:
        """Facts from the SSL object; ``complete=False`` while (or after failing) the handshake."""
        conn = self._conn
        cipher = conn.get_cipher_name()
        # Before the ServerHello OpenSSL reports the highest version it *could* use: only trust it once a
        # cipher has been negotiated.
        name = conn.get_protocol_version_name()
        version = name if (complete or cipher is not None) and name and name.lower() != "unknown" else None
        chain = self._peer_chain()
        errors: list[str] = []
        if self._notes.chain_error is not None:
            errors.append(self._notes.chain_error)
        if not chain:
            if complete and (not self._server_side or conn.get_verify_mode() & SSL.VERIFY_PEER):
                errors.append("peer sent no certificate")
        elif not self._server_side and self._verify_hostname:
            names = _der_name_mismatch(chain[0], self._verify_hostname)
            if names is not None:
                errors.append(f"hostname mismatch: wanted {self._verify_hostname}, certificate has {names}")
        if self._server_side:
            requested = bool(self._conn.get_verify_mode() & SSL.VERIFY_PEER)
            sent = bool(chain)
            ca_names: tuple[str, ...] = ()
        else:
            requested = self._notes.client_cert_requested
            sent = self._notes.client_cert_sent
            ca_names = tuple(_der_name_text(ca.der()) for ca in conn.get_client_ca_list())
        return TLSInfo(
            version=version,
            cipher=cipher,
            verified=complete and bool(chain) and not errors,
            verify_error="; ".join(errors) if errors else None,
            peer_chain=tuple(_der_cert_info(der) for der in chain),
            client_cert_requested=requested,
            client_cert_sent=sent,
            client_ca_names=ca_names,
        )
