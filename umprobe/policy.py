"""Policy checks per profile: would the far end accept what this probe showed it?

A `Policy` is data: which rules of the fixed set `RULES` apply, and their parameters (allowed TLS versions and
cipher suites, wildcard depth, required EKUs, key sizes, days left). `evaluate` judges one probe run against
it and returns a `PolicyReport`: one `RuleResult` per rule (`pass`, `fail`, `unknown` when the run did not get
far enough to tell, `n/a` when the rule does not apply to this listener) and the verdict: `compliant` is True
when no rule failed and none is unknown, False when any failed, None otherwise.

Whose certificate is judged
---------------------------
The `cert_*` rules judge OUR client certificate, the one in the probe's `cert_file`: umprobe stands where the
SBC (or gateway) stands, and the policy is the far end's view of it (Microsoft's proxy judges the SBC's
certificate). The peer's own certificate is judged by TLS verification as before (`tls_verify_failed`). The
`tls_*` rules judge the version and cipher suite the handshake negotiated. `contact_is_fqdn` and
`request_uri_scheme` judge the OPTIONS request the probe sent (its shape follows the profile and the target's
`sbc_fqdn`, so these rules catch a configuration that cannot work, e.g. an IP address as the SBC FQDN).

Rule (what it judges): fails when

* `cert_name_match` (our certificate): the SBC FQDN is neither the subject CN nor a DNS SAN, literally or
  under a `*.` wildcard;
* `cert_wildcard_depth` (our certificate): only a wildcard covers the FQDN, and it would stand for more labels
  than the policy allows (Teams: one);
* `cert_eku_server_client` (our certificate): the EKU extension does not list both serverAuth and clientAuth;
* `cert_key_size` (our certificate): the key type is not allowed, or the key is shorter than the minimum;
* `cert_chain_complete` (our certificate file): the file does not chain from the leaf to a trusted root;
* `cert_days_left` (our certificate): expired or not yet valid, or fewer days left than the minimum;
* `tls_version_allowed` (the handshake): the negotiated TLS version is not in the allowed set;
* `tls_cipher_allowed` (the handshake): the negotiated TLS 1.2 cipher suite is not in the allowed set;
* `contact_is_fqdn` (the request sent): the Contact host is an IP address, a single label, or the probe's own
  address;
* `request_uri_scheme` (the request sent): the Request-URI scheme is not allowed (Teams: `sip:`, never
  `sips:`).

The chain rule walks the certificates of the file from the leaf: each must be issued by the next one in the
file (name and signature), until one is self-signed or is issued by a trusted root: a certificate of the
probe's `ca_file` or of the system's trust store. A far end builds the chain from what is sent, and umprobe
sends the file as it is, so a file that stops at the leaf of an intermediate-issued certificate fails it.

Certificate facts are read from the file once and kept while the file's size, mtime and inode stay the same.
This module does no I/O beyond reading those files, and none at all for the `tls_*` and request rules.
"""

from __future__ import annotations

import enum
import ipaddress
import os
import ssl
import threading
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.utils import CryptographyDeprecationWarning
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

if TYPE_CHECKING:
    from umprobe.net.tls import TLSInfo
    from umprobe.probes.result import ProbeResult
    from umprobe.probes.sip_options import SipProbeSpec

__all__ = [
    "RULES",
    "RULE_DOCS",
    "SIP_TRUNK_POLICY",
    "SKYPE_MEDIATION_POLICY",
    "TEAMS_CIPHERS",
    "TEAMS_POLICY",
    "CertFacts",
    "ChainFacts",
    "Policy",
    "PolicyReport",
    "RuleResult",
    "Verdict",
    "evaluate",
    "evaluate_probe",
    "load_chain_facts",
]

#: The fixed set of rule names, in report order. They are metric label values (`rule`), so never add a
#: name that depends on anything but this list.
RULES: tuple[str, ...] = (
    "cert_name_match",
    "cert_wildcard_depth",
    "cert_eku_server_client",
    "cert_key_size",
    "cert_chain_complete",
    "cert_days_left",
    "tls_version_allowed",
    "tls_cipher_allowed",
    "contact_is_fqdn",
    "request_uri_scheme",
)

#: rule -> (what it judges, what it checks): for docs, `--help` and the status page.
RULE_DOCS: Mapping[str, tuple[str, str]] = MappingProxyType(
    {
        "cert_name_match": ("our client certificate", "the SBC FQDN is the subject CN or a DNS SAN"),
        "cert_wildcard_depth": (
            "our client certificate",
            "a wildcard covering the FQDN stands for few enough labels",
        ),
        "cert_eku_server_client": ("our client certificate", "EKU lists both serverAuth and clientAuth"),
        "cert_key_size": ("our client certificate", "an allowed key type of at least the minimum size"),
        "cert_chain_complete": ("our certificate file", "the file chains from the leaf to a trusted root"),
        "cert_days_left": ("our client certificate", "valid now, with at least the minimum days left"),
        "tls_version_allowed": ("the TLS handshake", "the negotiated version is allowed"),
        "tls_cipher_allowed": ("the TLS handshake", "the negotiated TLS 1.2 cipher suite is allowed"),
        "contact_is_fqdn": ("the OPTIONS sent", "the Contact host is a fully qualified domain name"),
        "request_uri_scheme": ("the OPTIONS sent", "the Request-URI scheme is allowed"),
    }
)

#: Teams Direct Routing's TLS 1.2 cipher suites (Microsoft's Direct Routing docs), OpenSSL names.
TEAMS_CIPHERS = frozenset(
    {
        "ECDHE-RSA-AES256-GCM-SHA384",  # TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384
        "ECDHE-RSA-AES128-GCM-SHA256",  # TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256
        "ECDHE-RSA-AES256-SHA384",  # TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA384
        "ECDHE-RSA-AES128-SHA256",  # TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA256
    }
)

_SERVER_AUTH = ExtendedKeyUsageOID.SERVER_AUTH
_CLIENT_AUTH = ExtendedKeyUsageOID.CLIENT_AUTH
_MAX_CHAIN = 10


class Verdict(enum.StrEnum):
    PASS = "pass"
    FAIL = "fail"
    UNKNOWN = "unknown"  # the run did not get far enough to tell (e.g. no TLS handshake)
    NOT_APPLICABLE = "n/a"  # the rule does not apply here (e.g. no certificate on a plain TCP listener)


@dataclass(frozen=True, slots=True)
class Policy:
    """A profile's policy: which rules apply, with their parameters."""

    name: str
    rules: tuple[str, ...]
    client_cert_required: bool = False  # without a client certificate the cert_* rules fail (else n/a)
    wildcard_labels: int = 1  # how many labels a `*` may stand for; 0: no wildcards at all
    eku: frozenset[str] = frozenset({"serverAuth", "clientAuth"})
    min_rsa_bits: int = 2048
    min_ec_bits: int | None = None  # None: an EC key is not allowed
    min_days_left: float = 0.0
    tls_versions: frozenset[str] = frozenset({"TLSv1.2"})
    tls12_ciphers: frozenset[str] | None = None  # None: any suite
    uri_schemes: frozenset[str] = frozenset({"sip"})

    def __post_init__(self) -> None:
        unknown = [rule for rule in self.rules if rule not in RULES]
        if unknown:
            raise ValueError(f"policy {self.name}: unknown rule(s) {', '.join(unknown)}")


TEAMS_POLICY = Policy(
    name="teams-direct-routing",
    rules=RULES,
    client_cert_required=True,
    wildcard_labels=1,
    min_rsa_bits=2048,
    min_ec_bits=None,  # the four allowed suites all authenticate with RSA
    tls_versions=frozenset({"TLSv1.2"}),
    tls12_ciphers=TEAMS_CIPHERS,
    uri_schemes=frozenset({"sip"}),
)

SKYPE_MEDIATION_POLICY = Policy(
    name="skype-mediation",
    rules=(
        "cert_name_match",
        "cert_wildcard_depth",
        "cert_eku_server_client",
        "cert_key_size",
        "cert_chain_complete",
        "cert_days_left",
    ),
    client_cert_required=True,
    wildcard_labels=1,
    min_rsa_bits=2048,
    min_ec_bits=256,
)

SIP_TRUNK_POLICY = Policy(
    name="sip-trunk",
    rules=(
        "cert_name_match",
        "cert_wildcard_depth",
        "cert_key_size",
        "cert_chain_complete",
        "cert_days_left",
        "tls_version_allowed",
    ),
    client_cert_required=False,
    wildcard_labels=1,
    min_rsa_bits=2048,
    min_ec_bits=256,
    tls_versions=frozenset({"TLSv1.2", "TLSv1.3"}),
)


@dataclass(frozen=True, slots=True)
class RuleResult:
    rule: str
    verdict: Verdict
    detail: str


@dataclass(frozen=True, slots=True)
class PolicyReport:
    """The verdict of one run against a policy."""

    policy: str
    results: tuple[RuleResult, ...]

    @property
    def failed(self) -> tuple[str, ...]:
        return tuple(r.rule for r in self.results if r.verdict is Verdict.FAIL)

    @property
    def unknown(self) -> tuple[str, ...]:
        return tuple(r.rule for r in self.results if r.verdict is Verdict.UNKNOWN)

    @property
    def compliant(self) -> bool | None:
        """True: every rule passed or does not apply; False: a rule failed; None: not known yet."""
        if self.failed:
            return False
        return None if self.unknown else True

    def result(self, rule: str) -> RuleResult | None:
        return next((r for r in self.results if r.rule == rule), None)

    def as_dict(self) -> dict[str, object]:
        return {
            "profile": self.policy,
            "compliant": self.compliant,
            "failed": list(self.failed),
            "unknown": list(self.unknown),
            "rules": [{"rule": r.rule, "verdict": r.verdict.value, "detail": r.detail} for r in self.results],
        }


# --------------------------------------------------------------------------------------------------------
# Certificate facts from a file


@dataclass(frozen=True, slots=True)
class CertFacts:
    """What the cert_* rules need to know about one certificate."""

    subject: str
    common_names: tuple[str, ...]
    dns_names: tuple[str, ...]
    eku: frozenset[str] | None  # dotted OIDs rendered by name ("serverAuth"); None: no EKU extension
    key_type: str  # "RSA", "EC", "Ed25519", ...
    key_bits: int | None
    not_before: datetime
    not_after: datetime


@dataclass(frozen=True, slots=True)
class ChainFacts:
    """Our certificate file: the leaf's facts and whether the file chains to a trusted root."""

    path: str
    leaf: CertFacts | None  # None: the file could not be read (then `error` says why)
    chain_complete: bool = False
    chain_detail: str = ""
    error: str = ""
    certificates: int = 0


_EKU_NAMES = {
    ExtendedKeyUsageOID.SERVER_AUTH.dotted_string: "serverAuth",
    ExtendedKeyUsageOID.CLIENT_AUTH.dotted_string: "clientAuth",
    ExtendedKeyUsageOID.CODE_SIGNING.dotted_string: "codeSigning",
    ExtendedKeyUsageOID.EMAIL_PROTECTION.dotted_string: "emailProtection",
    ExtendedKeyUsageOID.TIME_STAMPING.dotted_string: "timeStamping",
    ExtendedKeyUsageOID.OCSP_SIGNING.dotted_string: "OCSPSigning",
    ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE.dotted_string: "anyExtendedKeyUsage",
}


def _cert_facts(cert: x509.Certificate) -> CertFacts:
    cns = tuple(
        str(attr.value) for attr in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME) if attr.value
    )
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        dns = tuple(san.get_values_for_type(x509.DNSName))
    except (x509.ExtensionNotFound, ValueError):
        dns = ()
    eku: frozenset[str] | None
    try:
        usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        eku = frozenset(_EKU_NAMES.get(oid.dotted_string, oid.dotted_string) for oid in usages)
    except (x509.ExtensionNotFound, ValueError):
        eku = None
    key = cert.public_key()
    if isinstance(key, rsa.RSAPublicKey):
        key_type, bits = "RSA", key.key_size
    elif isinstance(key, ec.EllipticCurvePublicKey):
        key_type, bits = "EC", key.curve.key_size
    else:
        key_type, bits = type(key).__name__.removesuffix("PublicKey").lstrip("_"), None
    return CertFacts(
        subject=cert.subject.rfc4514_string(),
        common_names=cns,
        dns_names=dns,
        eku=eku,
        key_type=key_type,
        key_bits=bits,
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
    )


def _load_certs(path: str) -> list[x509.Certificate]:
    data = Path(path).read_bytes()
    # Some roots in system trust stores have a negative serial number, which cryptography parses with a
    # deprecation warning: a fact about someone's old root, not something to report here.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CryptographyDeprecationWarning)
        if b"-----BEGIN" in data:
            return list(x509.load_pem_x509_certificates(data))
        return [x509.load_der_x509_certificate(data)]


def _issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    if cert.issuer != issuer.subject:
        return False
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def _name(name: x509.Name) -> str:
    return name.rfc4514_string() or "(empty name)"


def _walk_chain(certs: Sequence[x509.Certificate], anchors: Sequence[x509.Certificate]) -> tuple[bool, str]:
    current, pool = certs[0], list(certs[1:])
    for _ in range(_MAX_CHAIN):
        if current.issuer == current.subject and _issued_by(current, current):
            return True, f"the file holds the whole chain up to the root {_name(current.subject)}"
        parent = next((c for c in pool if _issued_by(current, c)), None)
        if parent is not None:
            pool.remove(parent)
            current = parent
            continue
        root = next((c for c in anchors if _issued_by(current, c)), None)
        if root is not None:
            return True, f"the file chains to the trusted root {_name(root.subject)}"
        return False, (
            f"the chain in the file ends at {_name(current.subject)}, issued by {_name(current.issuer)},"
            " which is neither in the file nor a trusted root (ca_file or the system store): put the"
            " intermediate certificate(s) in the file after the leaf"
        )
    return False, f"no root within {_MAX_CHAIN} certificates"


_lock = threading.Lock()
_chain_cache: dict[tuple[str, str | None], tuple[tuple[int, int, int], ChainFacts]] = {}
_anchor_cache: dict[str, tuple[tuple[int, int, int], tuple[x509.Certificate, ...]]] = {}


def _signature(path: str) -> tuple[int, int, int]:
    st = os.stat(path)
    return (st.st_mtime_ns, st.st_size, st.st_ino)


def _anchors_from(path: str) -> tuple[x509.Certificate, ...]:
    try:
        sig = _signature(path)
    except OSError:
        return ()
    cached = _anchor_cache.get(path)
    if cached is not None and cached[0] == sig:
        return cached[1]
    try:
        certs = tuple(_load_certs(path))
    except (OSError, ValueError):
        certs = ()
    _anchor_cache[path] = (sig, certs)
    return certs


def _system_bundle() -> str | None:
    paths = ssl.get_default_verify_paths()
    for candidate in (os.environ.get(paths.openssl_cafile_env), paths.cafile, paths.openssl_cafile):
        if candidate and os.path.isfile(candidate):
            return candidate
    return None


def load_chain_facts(cert_file: str, ca_file: str | None = None) -> ChainFacts:
    """Facts about our certificate file (cached while the file is unchanged); never raises for a bad file."""
    key = (cert_file, ca_file)
    with _lock:
        try:
            sig = _signature(cert_file)
        except OSError as exc:
            return ChainFacts(cert_file, None, error=f"cannot read {cert_file}: {exc.strerror or exc}")
        cached = _chain_cache.get(key)
        if cached is not None and cached[0] == sig:
            return cached[1]
        try:
            certs = _load_certs(cert_file)
        except (OSError, ValueError) as exc:
            facts = ChainFacts(cert_file, None, error=f"{cert_file} holds no readable certificate ({exc})")
        else:
            anchors: list[x509.Certificate] = []
            if ca_file is not None:
                anchors += _anchors_from(ca_file)
            system = _system_bundle()
            if system is not None:
                anchors += _anchors_from(system)
            complete, detail = _walk_chain(certs, anchors)
            facts = ChainFacts(
                cert_file,
                _cert_facts(certs[0]),
                chain_complete=complete,
                chain_detail=detail,
                certificates=len(certs),
            )
        _chain_cache[key] = (sig, facts)
        return facts


# --------------------------------------------------------------------------------------------------------
# Names


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


def _norm(name: str) -> str:
    return name.strip().rstrip(".").lower()


@dataclass(frozen=True, slots=True)
class _NameMatch:
    exact: str | None = None
    wildcards: tuple[tuple[str, int], ...] = ()  # (pattern, labels the * would stand for)
    odd: tuple[str, ...] = field(default=())  # patterns with a * that is not the whole left-most label


def _match_names(fqdn: str, names: Sequence[str]) -> _NameMatch:
    wanted = _norm(fqdn)
    exact: str | None = None
    wildcards: list[tuple[str, int]] = []
    odd: list[str] = []
    for raw in names:
        name = _norm(raw)
        if not name:
            continue
        if name == wanted:
            exact = exact or raw
            continue
        if "*" not in name:
            continue
        labels = name.split(".")
        if labels[0] != "*" or "*" in ".".join(labels[1:]) or len(labels) < 2:
            odd.append(raw)
            continue
        suffix = "." + ".".join(labels[1:])
        if wanted.endswith(suffix) and len(wanted) > len(suffix):
            covered = wanted[: -len(suffix)]
            wildcards.append((raw, covered.count(".") + 1))
    return _NameMatch(exact, tuple(wildcards), tuple(odd))


# --------------------------------------------------------------------------------------------------------
# Evaluation


def _fmt(values: Sequence[str] | frozenset[str]) -> str:
    return ", ".join(sorted(values)) if values else "none"


def evaluate(
    policy: Policy,
    *,
    transport: str,
    tls: TLSInfo | None,
    sbc_fqdn: str | None,
    contact_host: str | None,
    request_uri_scheme: str,
    chain: ChainFacts | None,
    now: datetime | None = None,
) -> PolicyReport:
    """Judge one run. `sbc_fqdn`/`contact_host` are what the request carried (None: the probe's own
    address); `chain` is our client certificate file (None: no client certificate configured)."""
    now = now or datetime.now(UTC)
    out: list[RuleResult] = []
    version_ok: bool | None = None
    rules = set(policy.rules)
    for rule in RULES:
        if rule not in rules:
            continue
        if rule.startswith("cert_"):
            verdict, detail = _cert_rule(rule, policy, transport, sbc_fqdn, chain, now)
        elif rule == "tls_version_allowed":
            verdict, detail = _version_rule(policy, transport, tls)
            version_ok = verdict is Verdict.PASS
        elif rule == "tls_cipher_allowed":
            verdict, detail = _cipher_rule(policy, transport, tls, version_ok)
        elif rule == "contact_is_fqdn":
            verdict, detail = _contact_rule(contact_host)
        else:
            verdict, detail = _scheme_rule(policy, request_uri_scheme)
        out.append(RuleResult(rule, verdict, detail))
    return PolicyReport(policy.name, tuple(out))


def evaluate_probe(
    policy: Policy, spec: SipProbeSpec, result: ProbeResult, *, now: datetime | None = None
) -> PolicyReport:
    """`evaluate` for one run of `spec` (its request shape and TLS settings) that gave `result`."""
    chain: ChainFacts | None = None
    if spec.tls is not None and spec.tls.cert_file is not None:
        chain = load_chain_facts(spec.tls.cert_file, spec.tls.ca_file)
    return evaluate(
        policy,
        transport=spec.transport,
        tls=result.tls,
        sbc_fqdn=spec.contact_host,
        contact_host=spec.contact_host,
        request_uri_scheme=spec.uri_scheme,
        chain=chain,
        now=now,
    )


_R = tuple[Verdict, str]


def _cert_rule(
    rule: str, policy: Policy, transport: str, sbc_fqdn: str | None, chain: ChainFacts | None, now: datetime
) -> _R:
    if transport != "tls":
        return Verdict.NOT_APPLICABLE, f"no certificate is sent over {transport}"
    if chain is None:
        if policy.client_cert_required:
            return Verdict.FAIL, "no client certificate is configured: the far end requires mutual TLS"
        return Verdict.NOT_APPLICABLE, "no client certificate is configured"
    leaf = chain.leaf
    if leaf is None:
        return Verdict.UNKNOWN, chain.error
    if rule in ("cert_name_match", "cert_wildcard_depth"):
        return _name_rule(rule, policy, sbc_fqdn, leaf)
    if rule == "cert_eku_server_client":
        if leaf.eku is None:
            return Verdict.FAIL, f"no extendedKeyUsage extension: it must list {_fmt(policy.eku)}"
        missing = policy.eku - leaf.eku
        if missing:
            return Verdict.FAIL, f"EKU lists {_fmt(leaf.eku)}; missing {_fmt(missing)}"
        return Verdict.PASS, f"EKU lists {_fmt(leaf.eku)}"
    if rule == "cert_key_size":
        shown = f"{leaf.key_type}-{leaf.key_bits}" if leaf.key_bits else leaf.key_type
        if leaf.key_type == "RSA" and leaf.key_bits is not None:
            if leaf.key_bits >= policy.min_rsa_bits:
                return Verdict.PASS, f"{shown}"
            return Verdict.FAIL, f"{shown} is below {policy.min_rsa_bits} bits"
        if leaf.key_type == "EC" and leaf.key_bits is not None and policy.min_ec_bits is not None:
            if leaf.key_bits >= policy.min_ec_bits:
                return Verdict.PASS, f"{shown}"
            return Verdict.FAIL, f"{shown} is below {policy.min_ec_bits} bits"
        allowed = f"RSA of {policy.min_rsa_bits} bits or more"
        if policy.min_ec_bits is not None:
            allowed += f", or EC of {policy.min_ec_bits} bits or more"
        return Verdict.FAIL, f"a {shown} key is not allowed: {allowed}"
    if rule == "cert_chain_complete":
        verdict = Verdict.PASS if chain.chain_complete else Verdict.FAIL
        return verdict, f"{chain.certificates} certificate(s) in the file; {chain.chain_detail}"
    # cert_days_left
    if now < leaf.not_before:
        return Verdict.FAIL, f"not valid before {leaf.not_before.isoformat()}"
    days = (leaf.not_after - now).total_seconds() / 86400.0
    if days <= 0:
        return Verdict.FAIL, f"expired {-days:.1f} days ago ({leaf.not_after.isoformat()})"
    if days < policy.min_days_left:
        return Verdict.FAIL, f"{days:.1f} days left, fewer than {policy.min_days_left:g}"
    return Verdict.PASS, f"{days:.1f} days left"


def _name_rule(rule: str, policy: Policy, sbc_fqdn: str | None, leaf: CertFacts) -> _R:
    if not sbc_fqdn:
        return Verdict.NOT_APPLICABLE, "no SBC FQDN is configured (sbc_fqdn)"
    if _is_ip(sbc_fqdn) or "." not in sbc_fqdn.strip("."):
        return Verdict.NOT_APPLICABLE, f"{sbc_fqdn} is not an FQDN to match (see contact_is_fqdn)"
    names = (*leaf.common_names, *leaf.dns_names)
    shown = ", ".join([*(f"CN={n}" for n in leaf.common_names), *(f"DNS:{n}" for n in leaf.dns_names)])
    match = _match_names(sbc_fqdn, names)
    if rule == "cert_name_match":
        if match.exact:
            return Verdict.PASS, f"{sbc_fqdn} is in the certificate"
        if match.wildcards:
            return Verdict.PASS, f"{sbc_fqdn} is under the wildcard {match.wildcards[0][0]}"
        extra = f" (a * inside a label is never honoured: {', '.join(match.odd)})" if match.odd else ""
        return Verdict.FAIL, f"{sbc_fqdn} is neither the CN nor a DNS SAN ({shown or 'no names'}){extra}"
    # cert_wildcard_depth
    if match.exact:
        return Verdict.NOT_APPLICABLE, f"{sbc_fqdn} is in the certificate literally: no wildcard needed"
    if not match.wildcards:
        return Verdict.NOT_APPLICABLE, "no wildcard covers the FQDN (see cert_name_match)"
    allowed = [(p, n) for p, n in match.wildcards if n <= policy.wildcard_labels]
    if allowed:
        return Verdict.PASS, f"{allowed[0][0]} stands for {allowed[0][1]} label(s) of {sbc_fqdn}"
    pattern, depth = min(match.wildcards, key=lambda item: item[1])
    limit = (
        "no wildcard is allowed"
        if policy.wildcard_labels == 0
        else (f"at most {policy.wildcard_labels} label(s) are allowed")
    )
    return Verdict.FAIL, f"{pattern} would stand for {depth} labels of {sbc_fqdn}: {limit}"


def _version_rule(policy: Policy, transport: str, tls: TLSInfo | None) -> _R:
    if transport != "tls":
        return Verdict.NOT_APPLICABLE, f"no TLS over {transport}"
    if tls is None or not tls.version:
        return Verdict.UNKNOWN, "no TLS version was negotiated in this run"
    if tls.version in policy.tls_versions:
        return Verdict.PASS, f"{tls.version}"
    return Verdict.FAIL, f"{tls.version} was negotiated; allowed: {_fmt(policy.tls_versions)}"


def _cipher_rule(policy: Policy, transport: str, tls: TLSInfo | None, version_ok: bool | None) -> _R:
    if transport != "tls":
        return Verdict.NOT_APPLICABLE, f"no TLS over {transport}"
    if tls is None or not tls.cipher or not tls.version:
        return Verdict.UNKNOWN, "no cipher suite was negotiated in this run"
    if version_ok is False:
        return Verdict.NOT_APPLICABLE, f"{tls.cipher} under {tls.version}: the version itself is not allowed"
    if tls.version != "TLSv1.2" or policy.tls12_ciphers is None:
        return Verdict.PASS, f"{tls.cipher} ({tls.version})"
    if tls.cipher in policy.tls12_ciphers:
        return Verdict.PASS, f"{tls.cipher}"
    return Verdict.FAIL, f"{tls.cipher} was negotiated; allowed: {_fmt(policy.tls12_ciphers)}"


def _contact_rule(contact_host: str | None) -> _R:
    if contact_host is None:
        return Verdict.FAIL, "the Contact carries the probe's own address: set the SBC FQDN (sbc_fqdn)"
    if _is_ip(contact_host):
        return Verdict.FAIL, f"the Contact host {contact_host} is an IP address, not the SBC FQDN"
    if "." not in contact_host.strip("."):
        return Verdict.FAIL, f"the Contact host {contact_host} is not fully qualified"
    return Verdict.PASS, f"Contact host {contact_host}, no userinfo"


def _scheme_rule(policy: Policy, scheme: str) -> _R:
    if scheme in policy.uri_schemes:
        return Verdict.PASS, f"{scheme}:"
    return Verdict.FAIL, f"a {scheme}: Request-URI; allowed: {_fmt([s + ':' for s in policy.uri_schemes])}"
