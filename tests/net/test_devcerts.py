"""umprobe.devcerts: the throwaway PKI used by `umprobe demo` and the tests."""

from __future__ import annotations

import ipaddress
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from umprobe.devcerts import DevCA


def _ext(cert: x509.Certificate, kind: type[x509.ExtensionType]) -> x509.Extension[x509.ExtensionType]:
    return cert.extensions.get_extension_for_class(kind)


@pytest.mark.parametrize("key_type", ["ec", "rsa"])
def test_ca_is_a_ca(key_type: str) -> None:
    ca = DevCA.create("Contoso Lab CA", key_type=key_type)  # type: ignore[arg-type]
    cert = x509.load_pem_x509_certificate(ca.cert_pem)
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "Contoso Lab CA"
    assert cert.subject == cert.issuer
    bc = _ext(cert, x509.BasicConstraints)
    assert bc.critical and isinstance(bc.value, x509.BasicConstraints) and bc.value.ca
    ku = _ext(cert, x509.KeyUsage).value
    assert isinstance(ku, x509.KeyUsage) and ku.key_cert_sign and ku.crl_sign
    key_class = ec.EllipticCurvePublicKey if key_type == "ec" else rsa.RSAPublicKey
    assert isinstance(cert.public_key(), key_class)
    cert.verify_directly_issued_by(cert)


@pytest.mark.parametrize(
    ("key_type", "key_class"), [("ec", ec.EllipticCurvePrivateKey), ("rsa", rsa.RSAPrivateKey)]
)
def test_issue_sans_ekus_validity(key_type: str, key_class: type) -> None:
    ca = DevCA.create()
    issued = ca.issue(["cas01.contoso.local", "192.0.2.10", "[2001:db8::10]"], key_type=key_type)  # type: ignore[arg-type]
    cert = issued.certificate
    cert.verify_directly_issued_by(ca.certificate)
    san = _ext(cert, x509.SubjectAlternativeName).value
    assert isinstance(san, x509.SubjectAlternativeName)
    assert san.get_values_for_type(x509.DNSName) == ["cas01.contoso.local"]
    assert san.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("192.0.2.10"),
        ipaddress.ip_address("2001:db8::10"),
    ]
    assert cert.subject.rfc4514_string() == "CN=cas01.contoso.local"
    eku = _ext(cert, x509.ExtendedKeyUsage).value
    assert isinstance(eku, x509.ExtendedKeyUsage)
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
    bc = _ext(cert, x509.BasicConstraints).value
    assert isinstance(bc, x509.BasicConstraints) and not bc.ca
    now = datetime.now(UTC)
    assert now - timedelta(hours=1, minutes=1) < cert.not_valid_before_utc <= now - timedelta(minutes=59)
    assert cert.not_valid_after_utc - now > timedelta(days=89, hours=23)
    key = serialization.load_pem_private_key(issued.key_pem, password=None)
    assert isinstance(key, key_class)
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    assert key.public_key().public_bytes(serialization.Encoding.DER, spki) == cert.public_key().public_bytes(
        serialization.Encoding.DER, spki
    )


def test_issue_eku_choices_and_common_name() -> None:
    ca = DevCA.create()
    client_only = ca.issue(["probe.contoso.local"], server_auth=False).certificate
    eku = _ext(client_only, x509.ExtendedKeyUsage).value
    assert isinstance(eku, x509.ExtendedKeyUsage) and list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    server_only = ca.issue(["cas01"], client_auth=False, common_name="UM server").certificate
    eku = _ext(server_only, x509.ExtendedKeyUsage).value
    assert isinstance(eku, x509.ExtendedKeyUsage) and list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert server_only.subject.rfc4514_string() == "CN=UM server"
    any_purpose = ca.issue(["x.test"], server_auth=False, client_auth=False).certificate
    with pytest.raises(x509.ExtensionNotFound):
        any_purpose.extensions.get_extension_for_class(x509.ExtendedKeyUsage)
    no_san = ca.issue([], common_name="legacy.contoso.local").certificate
    with pytest.raises(x509.ExtensionNotFound):
        no_san.extensions.get_extension_for_class(x509.SubjectAlternativeName)


def test_explicit_and_expired_validity() -> None:
    ca = DevCA.create()
    start = datetime(2024, 1, 1, tzinfo=UTC)
    end = datetime(2024, 6, 1, 12, tzinfo=UTC)
    cert = ca.issue(["old.test"], not_before=start, not_after=end).certificate
    assert (cert.not_valid_before_utc, cert.not_valid_after_utc) == (start, end)
    expired = ca.issue(["expired.test"], not_after=datetime.now(UTC) - timedelta(days=1)).certificate
    assert expired.not_valid_after_utc < datetime.now(UTC)
    assert expired.not_valid_before_utc < expired.not_valid_after_utc
    naive = ca.issue(["naive.test"], not_after=datetime(2030, 1, 1)).certificate  # naive means UTC
    assert naive.not_valid_after_utc == datetime(2030, 1, 1, tzinfo=UTC)


def test_issue_rejects_nonsense() -> None:
    ca = DevCA.create()
    with pytest.raises(ValueError, match="at least one name"):
        ca.issue([])
    with pytest.raises(TypeError, match="sequence of names"):
        ca.issue("cas01.contoso.local")
    now = datetime.now(UTC)
    with pytest.raises(ValueError, match="is not before"):
        ca.issue(["x.test"], not_before=now, not_after=now - timedelta(seconds=1))
    with pytest.raises(ValueError, match="key_type"):
        ca.issue(["x.test"], key_type="dsa")  # type: ignore[arg-type]


def test_write_files_and_key_mode(tmp_path: Path) -> None:
    ca = DevCA.create()
    ca_path = ca.write_ca(tmp_path, "ca")
    assert ca_path == tmp_path / "ca.crt" and ca_path.read_bytes() == ca.cert_pem
    issued = ca.issue(["cas01.contoso.local"])
    key_path_pre = tmp_path / "server.key"
    key_path_pre.write_text("old")
    key_path_pre.chmod(0o644)  # an existing, too-open file is tightened
    crt, key = issued.write(tmp_path, "server")
    assert crt == tmp_path / "server.crt" and key == key_path_pre
    assert crt.read_bytes() == issued.cert_pem
    assert key.read_bytes() == issued.key_pem
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert b"ENCRYPTED" not in issued.key_pem
