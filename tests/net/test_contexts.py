"""Contexts, certificate facts, name matching and the OpenSSL string tables (no I/O)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from OpenSSL import SSL

from tests.net.conftest import PKI
from umprobe.devcerts import DevCA
from umprobe.net.errors import TLSConfigError
from umprobe.net.tls import (
    _VERIFY_ERRORS,
    CertInfo,
    TLSClientConfig,
    _received_alert,
    cert_info,
    hostname_matches,
    load_cert_info,
    make_client_context,
    make_server_context,
)

# -- make_client_context / make_server_context ------------------------------------------------------------


def test_client_context_defaults_and_reuse(pki: PKI) -> None:
    ctx = make_client_context(
        TLSClientConfig(ca_file=pki.ca_file, cert_file=pki.client.crt, key_file=pki.client.key)
    )
    assert ctx.get_verify_mode() == SSL.VERIFY_PEER
    # Reusable: many connections from one context.
    conns = [SSL.Connection(ctx, None) for _ in range(3)]
    assert len(conns) == 3


def test_client_context_system_trust_store() -> None:
    ctx = make_client_context(TLSClientConfig())
    assert ctx.get_verify_mode() == SSL.VERIFY_PEER


def test_key_in_the_certificate_file(pki: PKI, tmp_path: Path) -> None:
    bundle = tmp_path / "bundle.pem"
    bundle.write_bytes(pki.client.issued.cert_pem + pki.client.issued.key_pem)
    make_client_context(TLSClientConfig(ca_file=pki.ca_file, cert_file=str(bundle)))


@pytest.mark.parametrize("field", ["ca_file", "cert_file", "key_file"])
def test_missing_file_is_named(pki: PKI, tmp_path: Path, field: str) -> None:
    missing = str(tmp_path / "nope.pem")
    values = {"ca_file": pki.ca_file, "cert_file": pki.client.crt, "key_file": pki.client.key, field: missing}
    with pytest.raises(TLSConfigError) as caught:
        make_client_context(TLSClientConfig(**values))  # type: ignore[arg-type]
    assert missing in str(caught.value)
    assert "No such file or directory" in str(caught.value)


def test_key_does_not_match_certificate(pki: PKI) -> None:
    with pytest.raises(TLSConfigError) as caught:
        make_client_context(TLSClientConfig(cert_file=pki.client.crt, key_file=pki.server.key))
    assert str(caught.value) == f"private key {pki.server.key} does not match certificate {pki.client.crt}"


def test_garbage_files_are_named(pki: PKI, tmp_path: Path) -> None:
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    with pytest.raises(TLSConfigError, match=f"CA file {junk} holds no usable PEM certificate"):
        make_client_context(TLSClientConfig(ca_file=str(junk)))
    with pytest.raises(TLSConfigError, match=f"certificate file {junk} holds no usable PEM certificate"):
        make_client_context(TLSClientConfig(cert_file=str(junk), key_file=pki.client.key))
    with pytest.raises(TLSConfigError, match=f"key file {junk} holds no readable private key"):
        make_client_context(TLSClientConfig(cert_file=pki.client.crt, key_file=str(junk)))


def test_encrypted_key_is_refused_without_prompting(pki: PKI, tmp_path: Path) -> None:
    key = serialization.load_pem_private_key(pki.client.issued.key_pem, password=None)
    encrypted = tmp_path / "enc.key"
    encrypted.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
    )
    with pytest.raises(TLSConfigError, match=f"private key {encrypted} is encrypted"):
        make_client_context(TLSClientConfig(cert_file=pki.client.crt, key_file=str(encrypted)))


def test_key_without_certificate(pki: PKI) -> None:
    with pytest.raises(TLSConfigError, match="cert_file is not"):
        make_client_context(TLSClientConfig(key_file=pki.client.key))


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (TLSClientConfig(min_version="TLSv1.2"), "min_version 'TLSv1.2' is not one of 1.0, 1.1, 1.2, 1.3"),
        (TLSClientConfig(min_version="1.4"), "min_version '1.4' is not one of"),
        (TLSClientConfig(max_version="3"), "max_version '3' is not one of"),
        (TLSClientConfig(min_version="1.3", max_version="1.2"), "min_version 1.3 is above max_version 1.2"),
        (TLSClientConfig(ciphers="NOT-A-CIPHER"), "OpenSSL rejects the cipher string 'NOT-A-CIPHER'"),
        (
            TLSClientConfig(min_version="1.0", ciphers="NOT-A-CIPHER"),
            "OpenSSL rejects the cipher string 'NOT-A-CIPHER:@SECLEVEL=0'",
        ),
    ],
)
def test_bad_versions_and_ciphers(config: TLSClientConfig, message: str) -> None:
    with pytest.raises(TLSConfigError, match=message.replace(".", r"\.").replace("(", r"\(")):
        make_client_context(config)


def test_server_context_needs_ca_to_require_client_cert(pki: PKI) -> None:
    with pytest.raises(TLSConfigError, match="require_client_cert needs a ca_file"):
        make_server_context(cert_file=pki.server.crt, key_file=pki.server.key, require_client_cert=True)
    ctx = make_server_context(
        cert_file=pki.server.crt, key_file=pki.server.key, ca_file=pki.ca_file, require_client_cert=True
    )
    assert ctx.get_verify_mode() == SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT


# -- certificate facts -----------------------------------------------------------------------------------


def test_cert_info_fields(pki: PKI) -> None:
    cert = pki.server.issued.certificate
    info = cert_info(cert)
    assert info == CertInfo(
        subject="CN=localhost",
        issuer="CN=umprobe test CA,O=umprobe development",
        san=("DNS:localhost", "IP:127.0.0.1", "IP:::1"),
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
        sha256=cert.fingerprint(hashes.SHA256()).hex(),
        serial=format(cert.serial_number, "x"),
        key_type="EC-secp256r1",
    )
    assert info.not_after.tzinfo is not None
    assert 89 < info.days_left(datetime.now(UTC)) <= 90
    assert cert_info(pki.server_rsa.issued.certificate).key_type == "RSA-2048"


def test_cert_info_uri_and_email_sans() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "contoso.local")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(0xABC)
        .not_valid_before(now)
        .not_valid_after(now + timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.UniformResourceIdentifier("sip:contoso.local"),
                    x509.RFC822Name("pbx@contoso.local"),
                    x509.DNSName("cas01.contoso.local"),
                ]
            ),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    info = cert_info(cert)
    assert info.san == ("URI:sip:contoso.local", "email:pbx@contoso.local", "DNS:cas01.contoso.local")
    assert info.serial == "abc"


def test_load_cert_info(pki: PKI, tmp_path: Path) -> None:
    assert load_cert_info(pki.client.crt).subject == "CN=probe.test"
    der = tmp_path / "client.der"
    der.write_bytes(pki.client.issued.certificate.public_bytes(serialization.Encoding.DER))
    assert load_cert_info(str(der)).subject == "CN=probe.test"
    with pytest.raises(TLSConfigError, match="cannot read certificate file"):
        load_cert_info(str(tmp_path / "missing.crt"))
    (tmp_path / "junk.crt").write_text("-----BEGIN CERTIFICATE-----\nxx\n-----END CERTIFICATE-----\n")
    with pytest.raises(TLSConfigError, match="holds no readable certificate"):
        load_cert_info(str(tmp_path / "junk.crt"))


def test_trustme_certificates_interoperate(tmp_path: Path) -> None:
    ca = trustme.CA()
    leaf = ca.issue_cert("cas01.contoso.local", "192.0.2.5")
    path = tmp_path / "leaf.pem"
    leaf.cert_chain_pems[0].write_to_path(str(path))
    info = load_cert_info(str(path))
    assert info.san == ("DNS:cas01.contoso.local", "IP:192.0.2.5")
    cert = x509.load_pem_x509_certificate(leaf.cert_chain_pems[0].bytes())
    assert hostname_matches(cert, "CAS01.contoso.local")
    assert hostname_matches(cert, "192.0.2.5")


# -- hostname_matches ------------------------------------------------------------------------------------


def _cert(sans: list[x509.GeneralName] | None, cn: str | None = None) -> x509.Certificate:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)] if cn else [])
    now = datetime.now(UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "issuer")]))
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + timedelta(days=1))
    )
    if sans is not None:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(key, hashes.SHA256())


@pytest.mark.parametrize(
    ("pattern", "name", "expected"),
    [
        ("cas01.contoso.local", "cas01.contoso.local", True),
        ("CAS01.Contoso.Local", "cas01.contoso.local", True),
        ("cas01.contoso.local", "CAS01.CONTOSO.LOCAL.", True),
        ("*.contoso.local", "cas01.contoso.local", True),
        ("*.contoso.local", "a.b.contoso.local", False),  # one label only
        ("*.contoso.local", "contoso.local", False),
        ("*.local", "contoso.local", False),  # not over a single remaining label
        ("cas*.contoso.local", "cas01.contoso.local", False),  # partial wildcards are not honoured
        ("*.*.local", "a.b.local", False),
        ("cas02.contoso.local", "cas01.contoso.local", False),
        ("xn--bcher-kva.example", "bücher.example", True),  # IDNA: certificates hold A-labels
        ("", "cas01.contoso.local", False),
    ],
)
def test_dns_matching(pattern: str, name: str, expected: bool) -> None:
    assert hostname_matches(_cert([x509.DNSName(pattern)]), name) is expected


def test_ip_names_match_ip_sans_only() -> None:
    import ipaddress

    cert = _cert(
        [x509.IPAddress(ipaddress.ip_address("192.0.2.1")), x509.DNSName("192.0.2.2")], cn="192.0.2.3"
    )
    assert hostname_matches(cert, "192.0.2.1")
    assert not hostname_matches(cert, "192.0.2.2")  # a DNS SAN spelling an IP is not an IP SAN
    assert not hostname_matches(cert, "192.0.2.3")  # never the CN for an IP
    v6 = _cert([x509.IPAddress(ipaddress.ip_address("2001:db8::1"))])
    assert hostname_matches(v6, "2001:DB8:0::1")
    assert hostname_matches(v6, "[2001:db8::1]")


def test_cn_fallback_only_without_dns_sans() -> None:
    import ipaddress

    assert hostname_matches(_cert(None, cn="cas01.contoso.local"), "cas01.contoso.local")
    # IP SANs only: still no dNSName, so the CN is used for DNS names.
    assert hostname_matches(
        _cert([x509.IPAddress(ipaddress.ip_address("192.0.2.1"))], cn="cas01.contoso.local"),
        "cas01.contoso.local",
    )
    # With a dNSName present, the CN is ignored.
    assert not hostname_matches(
        _cert([x509.DNSName("other.contoso.local")], cn="cas01.contoso.local"), "cas01.contoso.local"
    )
    # A URI SAN alone is no dNSName either (RFC 5922 strict mode would use it; not implemented).
    assert hostname_matches(
        _cert([x509.UniformResourceIdentifier("sip:contoso.local")], cn="cas01.contoso.local"),
        "cas01.contoso.local",
    )


# -- OpenSSL string tables --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("reason", "alert"),
    [
        ("tlsv13 alert certificate required", "certificate_required"),  # observed, OpenSSL 3.0 and 4.0
        ("tlsv1 alert unknown ca", "unknown_ca"),  # observed
        ("tlsv1 alert protocol version", "protocol_version"),  # observed
        ("tls alert handshake failure", "handshake_failure"),  # observed, OpenSSL 4.0
        ("sslv3 alert handshake failure", "handshake_failure"),  # OpenSSL 3.0 spelling
        ("sslv3 alert bad certificate", "bad_certificate"),
        ("sslv3 alert certificate expired", "certificate_expired"),
        ("tlsv1 alert access denied", "access_denied"),
        ("tlsv1 alert user cancelled", "user_canceled"),
        ("tlsv1 unrecognized name", "unrecognized_name"),
        ("unsupported protocol", None),  # local failures are not received alerts
        ("wrong version number", None),
        ("certificate verify failed", None),
    ],
)
def test_alert_names(reason: str, alert: str | None) -> None:
    assert _received_alert([reason]) == alert


def test_verify_error_texts_match_the_linked_openssl() -> None:
    from OpenSSL._util import ffi, lib  # the OpenSSL that pyOpenSSL links (cryptography's), not the system's

    for code, text in _VERIFY_ERRORS.items():
        actual = ffi.string(lib.X509_verify_cert_error_string(code)).decode()
        # OpenSSL 3 appended a hint to code 9; compare the stable beginning.
        assert actual.startswith(text), (code, actual, text)


def test_devca_interop_key_types(tmp_path: Path) -> None:
    ca = DevCA.create(key_type="rsa")
    crt, key = ca.issue(["rsa.test"], key_type="rsa").write(tmp_path, "leaf")
    make_server_context(cert_file=str(crt), key_file=str(key))
    assert load_cert_info(str(crt)).key_type == "RSA-2048"
