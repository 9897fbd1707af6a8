"""Policy rules per profile (umprobe/policy.py), and where verdicts show: check, JSON, metrics, status page.

Certificates are made here with `cryptography` (a root, an intermediate, leaves of every kind), written to
tmp_path, and judged through `load_chain_facts`, exactly as a probe's `cert_file` is. Handshakes are
fabricated `TLSInfo` values: the real handshakes are in tests/integration/test_teams_profile.py.
"""

from __future__ import annotations

import json
import os
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import CollectorRegistry

from umprobe.check import CheckItem, Thresholds, evaluate, render_json, render_text
from umprobe.config import ProbeConfig
from umprobe.exporter import _render_status
from umprobe.metrics import UmprobeCollector, render_metrics
from umprobe.net.tls import TLSClientConfig, TLSInfo
from umprobe.policy import (
    RULE_DOCS,
    RULES,
    SIP_TRUNK_POLICY,
    SKYPE_MEDIATION_POLICY,
    TEAMS_CIPHERS,
    TEAMS_POLICY,
    ChainFacts,
    Policy,
    PolicyReport,
    Verdict,
    evaluate_probe,
    load_chain_facts,
)
from umprobe.policy import evaluate as judge
from umprobe.probes.result import Phase, ProbeResult, Reason, Timings
from umprobe.probes.sip_options import SipProbeSpec
from umprobe.store import ResultStore

SBC = "sbc1.contoso.com"
DOCS = Path(__file__).resolve().parent.parent / "docs"
NOW = datetime.now(UTC)

_Key = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


# -- certificates ----------------------------------------------------------------------------------------


def _key(kind: str = "rsa2048") -> _Key:
    if kind.startswith("rsa"):
        return rsa.generate_private_key(public_exponent=65537, key_size=int(kind[3:]))
    return ec.generate_private_key(ec.SECP256R1())


_ROOT_KEY = _key()
_INTER_KEY = _key()


def _build(
    subject: str,
    key: _Key,
    issuer: x509.Certificate | None,
    issuer_key: _Key,
    *,
    ca: bool = False,
    names: tuple[str, ...] = (),
    eku: tuple[x509.ObjectIdentifier, ...] | None = (
        ExtendedKeyUsageOID.SERVER_AUTH,
        ExtendedKeyUsageOID.CLIENT_AUTH,
    ),
    not_before: datetime | None = None,
    not_after: datetime | None = None,
) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer.subject if issuer is not None else name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before or NOW - timedelta(days=1))
        .not_valid_after(not_after or NOW + timedelta(days=90))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if names:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=False
        )
    if eku is not None and not ca:
        builder = builder.add_extension(x509.ExtendedKeyUsage(list(eku)), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())  # type: ignore[arg-type]


ROOT = _build("policy test root", _ROOT_KEY, None, _ROOT_KEY, ca=True)
INTER = _build("policy test intermediate", _INTER_KEY, ROOT, _ROOT_KEY, ca=True)


def _pem(*certs: x509.Certificate) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


@pytest.fixture
def root_file(tmp_path: Path) -> Path:
    path = tmp_path / "root.pem"
    path.write_bytes(_pem(ROOT))
    return path


def write_leaf(
    tmp_path: Path,
    *,
    cn: str = SBC,
    names: tuple[str, ...] = (SBC,),
    key: str = "rsa2048",
    eku: tuple[x509.ObjectIdentifier, ...] | None = (
        ExtendedKeyUsageOID.SERVER_AUTH,
        ExtendedKeyUsageOID.CLIENT_AUTH,
    ),
    chain: str = "leaf+inter",
    not_before: datetime | None = None,
    not_after: datetime | None = None,
    stem: str = "leaf",
) -> Path:
    """A leaf issued by INTER (which ROOT issued); `chain` says what the file holds."""
    leaf = _build(
        cn, _key(key), INTER, _INTER_KEY, names=names, eku=eku, not_before=not_before, not_after=not_after
    )
    parts = {"leaf": (leaf,), "leaf+inter": (leaf, INTER), "leaf+inter+root": (leaf, INTER, ROOT)}[chain]
    path = tmp_path / f"{stem}.pem"
    path.write_bytes(_pem(*parts))
    return path


def tls(version: str | None = "TLSv1.2", cipher: str | None = "ECDHE-RSA-AES256-GCM-SHA384") -> TLSInfo:
    return TLSInfo(
        version=version,
        cipher=cipher,
        verified=True,
        verify_error=None,
        peer_chain=(),
        client_cert_requested=True,
        client_cert_sent=True,
    )


def teams(
    chain: ChainFacts | None,
    *,
    handshake: TLSInfo | None = None,
    sbc: str | None = SBC,
    contact: str | None = SBC,
    scheme: str = "sip",
    transport: str = "tls",
    policy: Policy = TEAMS_POLICY,
) -> PolicyReport:
    return judge(
        policy,
        transport=transport,
        tls=handshake if handshake is not None else tls(),
        sbc_fqdn=sbc,
        contact_host=contact,
        request_uri_scheme=scheme,
        chain=chain,
    )


def verdicts(report: PolicyReport) -> dict[str, str]:
    return {r.rule: r.verdict.value for r in report.results}


# -- the rules one by one ----------------------------------------------------------------------------------


def test_rule_names_are_a_fixed_documented_set() -> None:
    assert len(RULES) == len(set(RULES)) == 10
    assert set(RULE_DOCS) == set(RULES)
    assert all(re.fullmatch(r"[a-z0-9_]+", rule) for rule in RULES)
    metrics_md = (DOCS / "metrics.md").read_text()
    for rule in RULES:
        assert f"| `{rule}` |" in metrics_md
    assert TEAMS_POLICY.rules == RULES
    with pytest.raises(ValueError, match="unknown rule"):
        Policy(name="x", rules=("cert_is_nice",))


def test_a_right_sbc_certificate_passes_every_teams_rule(tmp_path: Path, root_file: Path) -> None:
    chain = load_chain_facts(str(write_leaf(tmp_path)), str(root_file))
    report = teams(chain)
    assert report.compliant is True
    assert report.failed == () and report.unknown == ()
    assert set(verdicts(report).values()) <= {"pass", "n/a"}
    assert verdicts(report)["cert_name_match"] == "pass"
    assert verdicts(report)["cert_wildcard_depth"] == "n/a"  # a literal name needs no wildcard


@pytest.mark.parametrize(
    ("cn", "names", "sbc", "name_match", "depth"),
    [
        (SBC, (), SBC, "pass", "n/a"),  # Teams: the CN counts, also without a SAN
        ("other.contoso.com", (SBC,), SBC, "pass", "n/a"),  # the SAN counts, whatever the CN
        ("x", ("SBC1.Contoso.COM.",), SBC, "pass", "n/a"),  # case and a trailing dot do not matter
        ("x", ("*.contoso.com",), SBC, "pass", "pass"),  # one label under the wildcard
        ("*.contoso.com", (), SBC, "pass", "pass"),  # ... also as the CN
        ("x", ("*.contoso.com",), "sbc1.eu.contoso.com", "pass", "fail"),  # two labels: too deep
        ("x", ("sbc*.contoso.com",), SBC, "fail", "n/a"),  # a partial-label wildcard is never honoured
        ("x", ("*.*.com",), SBC, "fail", "n/a"),
        ("x", ("sbc2.contoso.com",), SBC, "fail", "n/a"),
        ("x", ("contoso.com",), SBC, "fail", "n/a"),
    ],
)
def test_name_and_wildcard_depth(
    tmp_path: Path, root_file: Path, cn: str, names: tuple[str, ...], sbc: str, name_match: str, depth: str
) -> None:
    chain = load_chain_facts(str(write_leaf(tmp_path, cn=cn, names=names)), str(root_file))
    got = verdicts(teams(chain, sbc=sbc, contact=sbc))
    assert (got["cert_name_match"], got["cert_wildcard_depth"]) == (name_match, depth)


def test_wildcard_depth_follows_the_policy(tmp_path: Path, root_file: Path) -> None:
    leaf = write_leaf(tmp_path, cn="*.contoso.com", names=("*.contoso.com",))
    chain = load_chain_facts(str(leaf), str(root_file))
    strict = Policy(name="strict", rules=("cert_name_match", "cert_wildcard_depth"), wildcard_labels=0)
    report = teams(chain, policy=strict)
    assert report.failed == ("cert_wildcard_depth",)
    assert "no wildcard is allowed" in (report.result("cert_wildcard_depth") or _none()).detail


def _none() -> Any:
    raise AssertionError("rule missing from the report")


@pytest.mark.parametrize(
    ("eku", "verdict", "fragment"),
    [
        (
            (ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH),
            "pass",
            "clientAuth, serverAuth",
        ),
        ((ExtendedKeyUsageOID.SERVER_AUTH,), "fail", "missing clientAuth"),
        ((ExtendedKeyUsageOID.CLIENT_AUTH,), "fail", "missing serverAuth"),
        (None, "fail", "no extendedKeyUsage"),
    ],
)
def test_eku_needs_server_and_client_auth(
    tmp_path: Path,
    root_file: Path,
    eku: tuple[x509.ObjectIdentifier, ...] | None,
    verdict: str,
    fragment: str,
) -> None:
    chain = load_chain_facts(str(write_leaf(tmp_path, eku=eku)), str(root_file))
    rule = teams(chain).result("cert_eku_server_client") or _none()
    assert rule.verdict.value == verdict
    assert fragment in rule.detail


@pytest.mark.parametrize(
    ("key", "policy", "verdict"),
    [
        ("rsa2048", TEAMS_POLICY, "pass"),
        ("rsa3072", TEAMS_POLICY, "pass"),
        ("rsa1024", TEAMS_POLICY, "fail"),
        ("ec256", TEAMS_POLICY, "fail"),  # the four Teams suites all authenticate with RSA
        ("ec256", SIP_TRUNK_POLICY, "pass"),
        ("rsa1024", SIP_TRUNK_POLICY, "fail"),
    ],
)
def test_key_size(tmp_path: Path, root_file: Path, key: str, policy: Policy, verdict: str) -> None:
    chain = load_chain_facts(str(write_leaf(tmp_path, key=key)), str(root_file))
    assert verdicts(teams(chain, policy=policy))["cert_key_size"] == verdict


def test_chain_must_be_sent_in_full(tmp_path: Path, root_file: Path) -> None:
    full = load_chain_facts(str(write_leaf(tmp_path, chain="leaf+inter", stem="full")), str(root_file))
    short = load_chain_facts(str(write_leaf(tmp_path, chain="leaf", stem="short")), str(root_file))
    whole = load_chain_facts(str(write_leaf(tmp_path, chain="leaf+inter+root", stem="whole")), None)
    assert (full.chain_complete, short.chain_complete, whole.chain_complete) == (True, False, True)
    assert full.certificates == 2 and "trusted root CN=policy test root" in full.chain_detail
    assert "whole chain up to the root" in whole.chain_detail
    rule = teams(short).result("cert_chain_complete") or _none()
    assert rule.verdict is Verdict.FAIL
    assert (
        "CN=policy test intermediate" in rule.detail
        and "neither in the file nor a trusted root" in rule.detail
    )
    # without the root in ca_file (and not in the system store) even the leaf+intermediate file is cut short
    assert not load_chain_facts(str(tmp_path / "full.pem"), None).chain_complete


def test_a_lone_self_signed_certificate_is_its_own_chain(tmp_path: Path) -> None:
    key = _key()
    cert = _build(SBC, key, None, key, names=(SBC,))
    path = tmp_path / "self.pem"
    path.write_bytes(_pem(cert))
    assert load_chain_facts(str(path)).chain_complete


@pytest.mark.parametrize(
    ("not_before", "not_after", "verdict", "fragment"),
    [
        (NOW - timedelta(days=10), NOW + timedelta(days=5), "pass", "days left"),
        (NOW - timedelta(days=100), NOW - timedelta(days=2), "fail", "expired 2.0 days ago"),
        (NOW + timedelta(days=2), NOW + timedelta(days=90), "fail", "not valid before"),
    ],
)
def test_days_left(
    tmp_path: Path, root_file: Path, not_before: datetime, not_after: datetime, verdict: str, fragment: str
) -> None:
    leaf = write_leaf(tmp_path, not_before=not_before, not_after=not_after)
    rule = teams(load_chain_facts(str(leaf), str(root_file))).result("cert_days_left") or _none()
    assert rule.verdict.value == verdict
    assert fragment in rule.detail


@pytest.mark.parametrize(
    ("version", "cipher", "expected"),
    [
        ("TLSv1.2", "ECDHE-RSA-AES128-SHA256", {"tls_version_allowed": "pass", "tls_cipher_allowed": "pass"}),
        (
            "TLSv1.2",
            "ECDHE-RSA-CHACHA20-POLY1305",
            {"tls_version_allowed": "pass", "tls_cipher_allowed": "fail"},
        ),
        ("TLSv1.2", "AES128-GCM-SHA256", {"tls_version_allowed": "pass", "tls_cipher_allowed": "fail"}),
        ("TLSv1.3", "TLS_AES_256_GCM_SHA384", {"tls_version_allowed": "fail", "tls_cipher_allowed": "n/a"}),
        ("TLSv1.1", "ECDHE-RSA-AES128-SHA", {"tls_version_allowed": "fail", "tls_cipher_allowed": "n/a"}),
        (None, None, {"tls_version_allowed": "unknown", "tls_cipher_allowed": "unknown"}),
    ],
)
def test_negotiated_version_and_cipher(
    tmp_path: Path, root_file: Path, version: str | None, cipher: str | None, expected: dict[str, str]
) -> None:
    chain = load_chain_facts(str(write_leaf(tmp_path)), str(root_file))
    got = verdicts(teams(chain, handshake=tls(version, cipher)))
    assert {rule: got[rule] for rule in expected} == expected


def test_every_teams_cipher_is_allowed_and_only_those(tmp_path: Path, root_file: Path) -> None:
    chain = load_chain_facts(str(write_leaf(tmp_path)), str(root_file))
    assert len(TEAMS_CIPHERS) == 4 and all(c.startswith("ECDHE-RSA-AES") for c in TEAMS_CIPHERS)
    for cipher in TEAMS_CIPHERS:
        assert teams(chain, handshake=tls("TLSv1.2", cipher)).compliant is True


@pytest.mark.parametrize(
    ("contact", "verdict", "fragment"),
    [
        (SBC, "pass", "no userinfo"),
        ("192.0.2.7", "fail", "is an IP address"),
        ("2001:db8::7", "fail", "is an IP address"),
        ("sbc1", "fail", "not fully qualified"),
        (None, "fail", "probe's own address"),
    ],
)
def test_contact_is_fqdn(
    tmp_path: Path, root_file: Path, contact: str | None, verdict: str, fragment: str
) -> None:
    chain = load_chain_facts(str(write_leaf(tmp_path)), str(root_file))
    report = teams(chain, sbc=contact, contact=contact)
    rule = report.result("contact_is_fqdn") or _none()
    assert (rule.verdict.value, fragment in rule.detail) == (verdict, True)
    if verdict == "fail":
        # the name rules have no FQDN to judge: only the Contact rule names the fault
        assert report.failed == ("contact_is_fqdn",)


def test_request_uri_scheme(tmp_path: Path, root_file: Path) -> None:
    chain = load_chain_facts(str(write_leaf(tmp_path)), str(root_file))
    assert teams(chain, scheme="sips").failed == ("request_uri_scheme",)
    assert verdicts(teams(chain, scheme="sip"))["request_uri_scheme"] == "pass"


def test_no_client_certificate(tmp_path: Path) -> None:
    teams_report = teams(None)
    assert set(teams_report.failed) == {r for r in TEAMS_POLICY.rules if r.startswith("cert_")}
    trunk = teams(None, policy=SIP_TRUNK_POLICY, handshake=tls("TLSv1.3", "TLS_AES_128_GCM_SHA256"))
    assert trunk.compliant is True
    assert {v for r, v in verdicts(trunk).items() if r.startswith("cert_")} == {"n/a"}


def test_plain_tcp_listener_has_no_certificate_or_tls_rules(tmp_path: Path, root_file: Path) -> None:
    chain = load_chain_facts(str(write_leaf(tmp_path)), str(root_file))
    report = teams(chain, transport="tcp", policy=SKYPE_MEDIATION_POLICY)
    assert set(verdicts(report).values()) == {"n/a"}
    assert report.compliant is True


def test_unknown_until_judged_and_an_unreadable_file(tmp_path: Path, root_file: Path) -> None:
    chain = load_chain_facts(str(write_leaf(tmp_path)), str(root_file))
    no_handshake = teams(chain, handshake=tls(None, None))
    assert no_handshake.compliant is None
    assert no_handshake.unknown == ("tls_version_allowed", "tls_cipher_allowed")
    # a failure wins over what is unknown
    assert teams(chain, handshake=tls(None, None), scheme="sips").compliant is False
    gone = load_chain_facts(str(tmp_path / "missing.pem"))
    assert gone.leaf is None and "cannot read" in gone.error
    assert teams(gone).unknown[:1] == ("cert_name_match",)


def test_facts_are_cached_until_the_file_changes(tmp_path: Path, root_file: Path) -> None:
    path = write_leaf(tmp_path)
    first = load_chain_facts(str(path), str(root_file))
    assert load_chain_facts(str(path), str(root_file)) is first
    replacement = write_leaf(tmp_path, names=("other.contoso.com",), stem="other")
    os.replace(replacement, path)
    second = load_chain_facts(str(path), str(root_file))
    assert second is not first
    assert second.leaf is not None and second.leaf.dns_names == ("other.contoso.com",)


# -- where the verdict shows ------------------------------------------------------------------------------


def teams_spec(cert_file: Path, ca_file: Path, *, contact: str | None = SBC) -> SipProbeSpec:
    return SipProbeSpec(
        host="127.0.0.1",
        port=5061,
        transport="tls",
        listener="sip_proxy",
        tls=TLSClientConfig(ca_file=str(ca_file), cert_file=str(cert_file), key_file=str(cert_file)),
        from_domain=contact,
        contact_host=contact,
        contact_port=5061 if contact else None,
    )


def probe_result(spec: SipProbeSpec, handshake: TLSInfo | None, *, status: int = 200) -> ProbeResult:
    ok = status == 200
    return ProbeResult(
        target=spec.host,
        address="127.0.0.1",
        family="ipv4",
        port=spec.port,
        transport=spec.transport,
        listener=spec.listener,
        success=ok,
        alive=True,
        reason=Reason.OK if ok else Reason.SIP_UNHEALTHY_STATUS,
        phase=None if ok else Phase.SIP,
        detail="",
        timings=Timings(resolve=0.0, connect=0.001, tls=0.002, sip=0.001, total=0.004),
        status_code=status,
        tls=handshake,
        started_at=NOW,
    )


def test_check_judges_policy_rows_and_leaves_exchange_rows_alone(tmp_path: Path, root_file: Path) -> None:
    leaf = write_leaf(tmp_path, eku=(ExtendedKeyUsageOID.SERVER_AUTH,))
    spec = teams_spec(leaf, root_file)
    plain = SipProbeSpec(host="127.0.0.1", port=5060, listener="call_router")
    pairs = [
        (CheckItem(spec, profile="teams-direct-routing"), probe_result(spec, tls())),
        (CheckItem(plain), probe_result(plain, None)),
    ]
    report = evaluate(pairs, Thresholds())
    teams_row, exchange_row = report.rows
    assert teams_row.result.success  # the proxy said 200 ...
    assert teams_row.state.name == "CRITICAL"  # ... but Microsoft's policy would refuse this SBC
    assert teams_row.note == "policy: cert_eku_server_client failed"
    assert exchange_row.policy is None and exchange_row.state.name == "OK"
    assert (
        report.summary
        == "2 of 2 listener probes healthy, 0 of 1 compliant with the teams-direct-routing policy"
    )
    doc = json.loads(render_json(report))
    assert doc["results"][0]["policy"]["failed"] == ["cert_eku_server_client"]
    assert doc["results"][0]["policy"]["compliant"] is False
    assert "policy" not in doc["results"][1]
    text = render_text(report, Thresholds())
    assert "teams-direct-routing policy: NOT compliant" in text
    assert "fail    cert_eku_server_client: EKU lists serverAuth; missing clientAuth" in text


def _page(store: ResultStore) -> dict[str, list[tuple[dict[str, str], float]]]:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(UmprobeCollector(store))
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(render_metrics(registry).decode()):
        for sample in family.samples:
            out.setdefault(sample.name, []).append((dict(sample.labels), sample.value))
    return out


def _probe(spec: SipProbeSpec, profile: str | None) -> ProbeConfig:
    return ProbeConfig(
        id=f"{spec.host}|{spec.listener}|{spec.transport}|{spec.port}|teams",
        name=f"{spec.host}:{spec.port}/{spec.transport}",
        target=spec.host,
        module="teams",
        spec=spec,
        interval=60.0,
        timeout=5.0,
        labels=(),
        profile=profile,
    )


def _policy_section() -> dict[str, set[str]]:
    text = (DOCS / "metrics.md").read_text()
    start = text.index("\n## /metrics: profile policy\n")
    body = text[start : text.find("\n## ", start + 1)]
    rows = re.findall(r"^\| `(umprobe_\w+)` \| gauge \| ([^|]*)\|", body, re.M)
    return {name: {t.strip().strip("`") for t in cell.split(",")} for name, cell in rows}


def test_metrics_policy_gauges_match_the_docs(tmp_path: Path, root_file: Path) -> None:
    leaf = write_leaf(tmp_path)
    spec = teams_spec(leaf, root_file, contact="192.0.2.9")  # an IP as the SBC FQDN: contact_is_fqdn
    probe = _probe(spec, "teams-direct-routing")
    store = ResultStore()
    store.set_probes([probe])
    store.record(probe, [probe_result(spec, tls("TLSv1.2", "ECDHE-RSA-AES128-GCM-SHA256"), status=403)])
    page = _page(store)
    (compliant,) = page["umprobe_policy_compliant"]
    assert compliant[1] == 0.0 and compliant[0]["profile"] == "teams-direct-routing"
    failed = {labels["rule"]: value for labels, value in page["umprobe_policy_rule_failed"]}
    assert failed["contact_is_fqdn"] == 1.0
    assert sum(failed.values()) == 1.0
    assert set(failed) <= set(RULES)
    assert "cert_name_match" not in failed  # n/a: there is no FQDN to match; absent, not 0
    documented = _policy_section()
    assert set(documented) == {"umprobe_policy_compliant", "umprobe_policy_rule_failed"}
    listener = {"probe", "target", "address", "port", "transport", "listener"}
    assert set(compliant[0]) == listener | {"profile"}
    assert documented["umprobe_policy_compliant"] == {"listener labels", "profile"}
    assert documented["umprobe_policy_rule_failed"] == {"listener labels", "profile", "rule"}
    for labels, _ in page["umprobe_policy_rule_failed"]:
        assert set(labels) == listener | {"profile", "rule"}


def test_metrics_and_status_page_of_exchange_probes_have_no_policy(tmp_path: Path, root_file: Path) -> None:
    spec = SipProbeSpec(host="127.0.0.1", port=5060, listener="call_router")
    probe = _probe(spec, None)
    store = ResultStore()
    store.set_probes([probe])
    store.record(probe, [probe_result(spec, None)])
    page = _page(store)
    assert "umprobe_policy_compliant" not in page and "umprobe_policy_rule_failed" not in page
    html = _render_status(store, lambda: _config([probe]))
    assert "Profile policy" not in html


def _config(probes: list[ProbeConfig]) -> Any:
    from umprobe.config import Config

    return Config(source="probes.toml", modules={}, probes=tuple(probes))


def test_status_page_names_the_failed_rules(tmp_path: Path, root_file: Path) -> None:
    leaf = write_leaf(tmp_path, names=("*.contoso.com",), cn="*.contoso.com")
    spec = teams_spec(leaf, root_file, contact="sbc1.eu.contoso.com")
    probe = _probe(spec, "teams-direct-routing")
    store = ResultStore()
    store.set_probes([probe])
    store.record(probe, [probe_result(spec, tls(), status=403)])
    html = _render_status(store, lambda: _config([probe]))
    assert "<h2>Profile policy</h2>" in html
    assert "NOT compliant" in html
    assert "<td>cert_wildcard_depth</td>" in html
    assert "*.contoso.com would stand for 2 labels of sbc1.eu.contoso.com" in html
    report = evaluate_probe(TEAMS_POLICY, spec, store.latest(probe.id)[0])
    assert report.failed == ("cert_wildcard_depth",)
