"""The lab PKI, made with `umprobe.devcerts` and written to a session directory.

- the lab CA, which Kamailio and socat trust for client certificates and the tests trust for servers;
- server certificates, all from the lab CA: "good" (localhost, 127.0.0.1, ::1, um.lab.test; ECDSA P-256),
  "rsa" (the same names, RSA-2048), "expired" (the same names, expired yesterday) and "wrong_name"
  (other.lab.test only);
- a client certificate for probe.lab.test from the lab CA;
- a rogue CA and a client certificate for probe.lab.test from it (a server must reject it).
Every leaf carries both serverAuth and clientAuth.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.lab.kamailio import CertPair
from umprobe.devcerts import DevCA

__all__ = [
    "SERVER_NAMES",
    "CertPair",
    "Key",
    "LabPKI",
    "build_cert",
    "build_lab_pki",
    "new_key",
    "pem_certs",
    "write_key",
]

SERVER_NAMES = ("localhost", "127.0.0.1", "::1", "um.lab.test")
CLIENT_NAME = "probe.lab.test"
WRONG_NAME = "other.lab.test"


@dataclass(frozen=True, slots=True)
class LabPKI:
    directory: Path
    ca_file: Path
    rogue_ca_file: Path
    server: CertPair
    server_rsa: CertPair
    server_expired: CertPair
    server_wrong_name: CertPair
    client: CertPair
    rogue_client: CertPair

    @property
    def server_certs(self) -> dict[str, CertPair]:
        """Kamailio's certificate choices by name."""
        return {
            "good": self.server,
            "rsa": self.server_rsa,
            "expired": self.server_expired,
            "wrong_name": self.server_wrong_name,
        }


def build_lab_pki(directory: Path) -> LabPKI:
    directory.mkdir(parents=True, exist_ok=True)
    ca = DevCA.create("umprobe lab CA")
    rogue = DevCA.create("umprobe rogue CA")
    yesterday = datetime.now(UTC) - timedelta(days=1)

    return LabPKI(
        directory=directory,
        ca_file=ca.write_ca(directory, "lab-ca"),
        rogue_ca_file=rogue.write_ca(directory, "rogue-ca"),
        server=CertPair(*ca.issue(SERVER_NAMES).write(directory, "server")),
        server_rsa=CertPair(*ca.issue(SERVER_NAMES, key_type="rsa").write(directory, "server-rsa")),
        server_expired=CertPair(
            *ca.issue(SERVER_NAMES, not_before=yesterday - timedelta(days=30), not_after=yesterday).write(
                directory, "server-expired"
            )
        ),
        server_wrong_name=CertPair(*ca.issue([WRONG_NAME]).write(directory, "server-wrong-name")),
        client=CertPair(*ca.issue([CLIENT_NAME]).write(directory, "client")),
        rogue_client=CertPair(*rogue.issue([CLIENT_NAME]).write(directory, "rogue-client")),
    )


# -- certificates DevCA does not make (profile and policy tests) ---------------------------------------


Key = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey


def new_key(kind: str = "rsa2048") -> Key:
    """A private key: "rsa<bits>" (default rsa2048), "ec256" or "ed25519"."""
    if kind == "ec256":
        return ec.generate_private_key(ec.SECP256R1())
    if kind == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    return rsa.generate_private_key(public_exponent=65537, key_size=int(kind.removeprefix("rsa")))


def build_cert(
    subject: str,
    key: Key,
    issuer: tuple[x509.Certificate, Key] | None,
    *,
    ca: bool = False,
    names: tuple[str, ...] = (),
    ips: tuple[str, ...] = (),
    eku: tuple[x509.ObjectIdentifier, ...] = (
        ExtendedKeyUsageOID.SERVER_AUTH,
        ExtendedKeyUsageOID.CLIENT_AUTH,
    ),
    days: tuple[float, float] = (-1, 90),
) -> x509.Certificate:
    """A certificate for tests that need what DevCA does not make: intermediates, odd EKUs and key types,
    chosen validity (`days`: not before / not after, in days from now). A leaf (not `ca`) gets SANs of
    `names` and `ips` and the EKU `eku`; `issuer` None makes it self-signed."""
    now = datetime.now(UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    issuer_name, issuer_key = (issuer[0].subject, issuer[1]) if issuer is not None else (name, key)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now + timedelta(days=days[0]))
        .not_valid_after(now + timedelta(days=days[1]))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), critical=False
        )
    )
    if not ca:
        sans: list[x509.GeneralName] = [x509.DNSName(n) for n in names]
        sans += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        builder = builder.add_extension(x509.ExtendedKeyUsage(list(eku)), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def pem_certs(*certs: x509.Certificate) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


def write_key(path: Path, key: Key) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    path.chmod(0o600)
