"""Throwaway PKI for ``umprobe demo`` and for tests: a development CA that issues leaf certificates.

Everything here uses ``cryptography`` only and lives in memory until :meth:`Issued.write` or
:meth:`DevCA.write_ca` puts it on disk. Nothing here is meant for production certificates: keys are
unencrypted, serial numbers are random, and the defaults favour convenience (a leaf is valid from one
hour ago for 90 days and carries both the serverAuth and clientAuth EKUs, which is also what a probe
that talks mutual TLS to Exchange UM wants, see PROTOCOL.md §2).

Datetimes may be timezone-aware (any zone) or naive; naive ones are taken as UTC, the same rule
``cryptography`` applies.
"""

from __future__ import annotations

import ipaddress
import os
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Literal

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["DevCA", "Issued", "KeyType"]

KeyType = Literal["ec", "rsa"]

_PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey

_DEFAULT_LEAF_LIFETIME = timedelta(days=90)
_DEFAULT_CA_LIFETIME = timedelta(days=3650)
_BACKDATE = timedelta(hours=1)


def _new_key(key_type: KeyType) -> _PrivateKey:
    if key_type == "ec":
        return ec.generate_private_key(ec.SECP256R1())
    if key_type == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    raise ValueError(f"unknown key_type {key_type!r}: expected 'ec' or 'rsa'")


def _key_pem(key: _PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _utc(moment: datetime) -> datetime:
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


def _serial() -> int:
    # RFC 5280 §4.1.2.2: positive, at most 20 octets. 159 random bits keep the top bit clear.
    return secrets.randbits(159) | 1


def _san_entry(name: str) -> x509.GeneralName:
    literal = name[1:-1] if name.startswith("[") and name.endswith("]") else name
    try:
        return x509.IPAddress(ipaddress.ip_address(literal))
    except ValueError:
        return x509.DNSName(name)


def _write_private(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` readable by the owner only (mode 0600, also when the file existed)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
    finally:
        os.close(fd)


@dataclass(frozen=True, slots=True)
class Issued:
    """A leaf certificate and its private key, both PEM."""

    cert_pem: bytes
    key_pem: bytes

    @property
    def certificate(self) -> x509.Certificate:
        return x509.load_pem_x509_certificate(self.cert_pem)

    def write(self, directory: Path, stem: str) -> tuple[Path, Path]:
        """Write ``STEM.crt`` and ``STEM.key`` (mode 0600) into ``directory``; return both paths."""
        directory = Path(directory)
        cert_path = directory / f"{stem}.crt"
        key_path = directory / f"{stem}.key"
        cert_path.write_bytes(self.cert_pem)
        _write_private(key_path, self.key_pem)
        return cert_path, key_path


class DevCA:
    """A self-signed development CA. Create it with :meth:`create`, then :meth:`issue` leaves."""

    __slots__ = ("_cert", "_key")

    def __init__(self, cert: x509.Certificate, key: _PrivateKey) -> None:
        self._cert = cert
        self._key = key

    @classmethod
    def create(cls, common_name: str = "umprobe demo CA", *, key_type: KeyType = "ec") -> DevCA:
        key = _new_key(key_type)
        now = datetime.now(UTC)
        name = x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "umprobe development"),
                x509.NameAttribute(NameOID.COMMON_NAME, common_name),
            ]
        )
        ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(_serial())
            .not_valid_before(now - _BACKDATE)
            .not_valid_after(now + _DEFAULT_CA_LIFETIME)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(ski, critical=False)
            .sign(key, hashes.SHA256())
        )
        return cls(cert, key)

    @property
    def certificate(self) -> x509.Certificate:
        return self._cert

    @property
    def cert_pem(self) -> bytes:
        return self._cert.public_bytes(serialization.Encoding.PEM)

    @property
    def key_pem(self) -> bytes:
        return _key_pem(self._key)

    def write_ca(self, directory: Path, stem: str) -> Path:
        """Write the CA certificate (not its key) to ``directory/STEM.crt`` and return the path."""
        path = Path(directory) / f"{stem}.crt"
        path.write_bytes(self.cert_pem)
        return path

    def issue(
        self,
        names: Sequence[str],
        *,
        common_name: str | None = None,
        key_type: KeyType = "ec",
        not_before: datetime | None = None,
        not_after: datetime | None = None,
        server_auth: bool = True,
        client_auth: bool = True,
    ) -> Issued:
        """Issue a leaf certificate.

        ``names`` become subjectAltName entries: IP literals (``"127.0.0.1"``, ``"::1"``, ``"[::1]"``) as
        iPAddress, everything else as dNSName. The subject CN is ``common_name``, else the first name; with
        no names and no ``common_name`` the certificate has an empty subject and no SAN (``ValueError``
        if both are missing, since nothing could ever match it). The validity defaults to one hour ago
        until 90 days from now; a ``not_after`` in the past makes an expired certificate (``not_before``
        then defaults to a day before it). The EKU extension lists serverAuth and/or clientAuth as asked;
        with both false it is left out (which means "any purpose").
        """
        if isinstance(names, str):
            raise TypeError("names must be a sequence of names, not a single string")
        if not names and common_name is None:
            raise ValueError("a certificate needs at least one name or a common_name")
        now = datetime.now(UTC)
        end = _utc(not_after) if not_after is not None else now + _DEFAULT_LEAF_LIFETIME
        start = _utc(not_before) if not_before is not None else min(now - _BACKDATE, end - timedelta(days=1))
        if start >= end:
            raise ValueError(f"not_before {start.isoformat()} is not before not_after {end.isoformat()}")

        key = _new_key(key_type)
        cn = common_name if common_name is not None else names[0]
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self._cert.subject)
            .public_key(key.public_key())
            .serial_number(_serial())
            .not_valid_before(start)
            .not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    # RSA key exchange (TLS_RSA_* suites, e.g. RFC 3261's mandatory one) encrypts to the key.
                    key_encipherment=key_type == "rsa",
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key()), critical=False
            )
        )
        if names:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([_san_entry(n) for n in names]), critical=False
            )
        usages = []
        if server_auth:
            usages.append(ExtendedKeyUsageOID.SERVER_AUTH)
        if client_auth:
            usages.append(ExtendedKeyUsageOID.CLIENT_AUTH)
        if usages:
            builder = builder.add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        cert = builder.sign(self._key, hashes.SHA256())
        return Issued(cert_pem=cert.public_bytes(serialization.Encoding.PEM), key_pem=_key_pem(key))
