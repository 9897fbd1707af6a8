"""The Teams Direct Routing profile against a Kamailio that behaves like Microsoft's SIP proxy.

The proxy (tests/lab/kamailio_msproxy.py) talks mutual TLS only and answers OPTIONS with 200 only when the
Contact host is the client certificate's CN or DNS SAN (or one label under a `*.` wildcard), 403 otherwise.
Its listeners: `right` (TLS 1.2 and Microsoft's four ECDHE-RSA suites), `tls13` (TLS 1.3 only) and
`chacha` (TLS 1.2 with ECDHE-RSA-CHACHA20-POLY1305, a suite outside the four). Every check runs the real
command line, `umprobe check --profile teams-direct-routing --sbc-fqdn ... --json 127.0.0.1:PORT`: the TARGET
stands in for Microsoft's proxies, so no packet ever leaves loopback.

Each wrong SBC set-up must be named by exactly the policy rule that describes it, whatever the proxy did
with it (a 403, a refused handshake, or a 200 that Microsoft's own TLS policy would never have negotiated).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.lab.kamailio import CertPair
from tests.lab.kamailio_msproxy import MsProxyInstance, ProxyListener
from tests.lab.pki import build_cert, new_key, pem_certs, write_key
from tests.lab.ports import allocate_port
from tests.lab.proc import LabProcess, LabStartError
from umprobe.devcerts import DevCA
from umprobe.policy import TEAMS_CIPHERS

pytestmark = pytest.mark.lab

SBC = "sbc1.customers.lab.test"


@dataclass(frozen=True, slots=True)
class Pki:
    bundle: Path  # the proxy's ca_list and our --ca: the test CA and the chain test's root
    server: CertPair
    certs: dict[str, CertPair]  # scenario -> our (the SBC's) client certificate


def build_pki(directory: Path) -> Pki:
    directory.mkdir(parents=True, exist_ok=True)
    ca = DevCA.create("msproxy test CA", key_type="rsa")
    certs: dict[str, CertPair] = {}

    def issue(scenario: str, names: list[str], **kwargs: Any) -> None:
        certs[scenario] = CertPair(*ca.issue(names, key_type="rsa", **kwargs).write(directory, scenario))

    issue("right", [SBC])
    issue("wildcard_one", ["*.customers.lab.test"], common_name="*.customers.lab.test")
    issue("wildcard_two", ["*.lab.test"], common_name="*.lab.test")
    issue("server_auth_only", [SBC], client_auth=False)
    issue("other_name", ["sbc9.elsewhere.lab.test"])
    # A public-CA-like chain: root -> intermediate -> leaf; the proxy trusts the root only.
    root_key, inter_key, leaf_key = new_key(), new_key(), new_key()
    root = build_cert("chain test root", root_key, None, ca=True)
    inter = build_cert("chain test intermediate", inter_key, (root, root_key), ca=True)
    leaf = build_cert(SBC, leaf_key, (inter, inter_key), names=(SBC,))
    write_key(directory / "chain.key", leaf_key)
    (directory / "leaf-only.crt").write_bytes(pem_certs(leaf))
    (directory / "leaf-and-intermediate.crt").write_bytes(pem_certs(leaf, inter))
    certs["leaf_only"] = CertPair(directory / "leaf-only.crt", directory / "chain.key")
    certs["full_chain"] = CertPair(directory / "leaf-and-intermediate.crt", directory / "chain.key")
    bundle = directory / "trust.pem"
    bundle.write_bytes(ca.cert_pem + pem_certs(root))
    server = CertPair(*ca.issue(["127.0.0.1", "localhost"], key_type="rsa").write(directory, "proxy"))
    return Pki(bundle, server, certs)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return build_pki(tmp_path_factory.mktemp("msproxy-pki"))


@pytest.fixture(scope="module")
def msproxy(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[MsProxyInstance]:
    workdir = tmp_path_factory.mktemp("msproxy")
    for attempt in range(3):
        instance = MsProxyInstance(
            [
                ProxyListener("right", allocate_port(), "TLSv1.2", ":".join(sorted(TEAMS_CIPHERS))),
                ProxyListener("tls13", allocate_port(), "TLSv1.2+", "PSK-AES128-CBC-SHA"),
                ProxyListener("chacha", allocate_port(), "TLSv1.2", "ECDHE-RSA-CHACHA20-POLY1305"),
            ],
            tcp_port=allocate_port(),
            workdir=workdir,
            server=pki.server,
            ca_file=pki.bundle,
        )
        try:
            instance.start()
        except LabStartError as exc:
            if exc.port_conflict and attempt < 2:
                continue
            raise
        break
    try:
        yield instance
        assert instance.process.is_alive(), instance.process.describe()
    finally:
        instance.stop()


@dataclass(frozen=True, slots=True)
class Outcome:
    code: int
    doc: dict[str, Any]
    stderr: str

    @property
    def result(self) -> dict[str, Any]:
        (only,) = self.doc["results"]
        return dict(only)

    @property
    def policy(self) -> dict[str, Any]:
        return dict(self.result["policy"])

    def rule(self, name: str) -> dict[str, Any]:
        return next(r for r in self.policy["rules"] if r["rule"] == name)


def check(
    msproxy: MsProxyInstance,
    pki: Pki,
    listener: str,
    cert: str,
    sbc_fqdn: str = SBC,
    *,
    options: tuple[str, ...] | None = None,
) -> Outcome:
    """`umprobe check --json` against one proxy listener, as the SBC with certificate `cert`; `options`
    replaces the profile options (`--profile teams-direct-routing --sbc-fqdn SBC_FQDN`)."""
    port = msproxy.listeners[listener].port
    pair = pki.certs[cert]
    if options is None:
        options = ("--profile", "teams-direct-routing", "--sbc-fqdn", sbc_fqdn)
    argv = [
        *(sys.executable, "-m", "umprobe.cli", "check", "--json", "--timeout", "8"),
        *options,
        *("--ca", str(pki.bundle), "--cert", str(pair.cert_file), "--key", str(pair.key_file)),
        f"127.0.0.1:{port}",
    ]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    assert done.stdout, done.stderr
    return Outcome(done.returncode, json.loads(done.stdout), done.stderr)


def test_right_sbc_certificate_is_accepted_and_compliant(msproxy: MsProxyInstance, pki: Pki) -> None:
    out = check(msproxy, pki, "right", "right")
    r = out.result
    assert (out.code, r["status_code"], r["success"]) == (0, 200, True), out
    assert r["tls"]["version"] == "TLSv1.2"
    assert r["tls"]["cipher"] in TEAMS_CIPHERS
    assert out.policy["compliant"] is True
    assert out.policy["failed"] == [] and out.policy["unknown"] == []
    assert {rule["verdict"] for rule in out.policy["rules"]} <= {"pass", "n/a"}
    assert out.doc["summary"].endswith("1 of 1 compliant with the teams-direct-routing policy")
    # What the proxy saw: the Contact host is the SBC FQDN, with no userinfo (Kamailio's own log line).
    assert f"msproxy: contact host={SBC} user= cn={SBC} san={SBC}" in msproxy.process.log_text()


def test_one_label_wildcard_is_accepted(msproxy: MsProxyInstance, pki: Pki) -> None:
    out = check(msproxy, pki, "right", "wildcard_one")
    assert (out.code, out.result["status_code"], out.policy["compliant"]) == (0, 200, True), out
    assert out.rule("cert_wildcard_depth")["verdict"] == "pass"


def test_ip_in_contact_gets_403_and_contact_is_fqdn(msproxy: MsProxyInstance, pki: Pki) -> None:
    out = check(msproxy, pki, "right", "right", sbc_fqdn="127.0.0.1")
    assert out.code == 2
    assert (out.result["status_code"], out.result["reason"]) == (403, "sip_unhealthy_status")
    assert out.policy["failed"] == ["contact_is_fqdn"]
    assert out.policy["compliant"] is False
    assert "127.0.0.1 is an IP address" in out.rule("contact_is_fqdn")["detail"]


def test_wildcard_two_labels_deep_gets_403_and_wildcard_depth(msproxy: MsProxyInstance, pki: Pki) -> None:
    out = check(msproxy, pki, "right", "wildcard_two")
    assert out.code == 2
    assert out.result["status_code"] == 403
    assert out.policy["failed"] == ["cert_wildcard_depth"]
    assert out.rule("cert_name_match")["verdict"] == "pass"  # the wildcard does cover it, too deep
    assert "*.lab.test would stand for 2 labels" in out.rule("cert_wildcard_depth")["detail"]


def test_other_name_gets_403_and_cert_name_match(msproxy: MsProxyInstance, pki: Pki) -> None:
    out = check(msproxy, pki, "right", "other_name")
    assert (out.code, out.result["status_code"]) == (2, 403)
    assert out.policy["failed"] == ["cert_name_match"]


def test_server_auth_only_eku_is_named(msproxy: MsProxyInstance, pki: Pki) -> None:
    out = check(msproxy, pki, "right", "server_auth_only")
    assert out.code == 2
    # OpenSSL on the proxy side checks the client purpose: the handshake itself is refused.
    assert out.result["reason"] == "tls_client_cert_rejected", out.result
    assert out.result["status_code"] is None
    assert out.policy["failed"] == ["cert_eku_server_client"]
    assert "missing clientAuth" in out.rule("cert_eku_server_client")["detail"]


def test_tls13_only_server_is_named_by_tls_version_allowed(msproxy: MsProxyInstance, pki: Pki) -> None:
    out = check(msproxy, pki, "tls13", "right")
    assert out.code == 2
    r = out.result
    assert (r["status_code"], r["success"], r["tls"]["version"]) == (200, True, "TLSv1.3")
    assert out.policy["failed"] == ["tls_version_allowed"]
    assert out.rule("tls_cipher_allowed")["verdict"] == "n/a"  # the version is the fault, not the suite
    # The listener really is TLS 1.3 only: a TLS 1.2 client finds no suite in common.
    only12 = check(msproxy, pki, "tls13", "right", options=("--transport", "tls", "--max-tls", "1.2"))
    assert (only12.code, only12.result["reason"]) == (2, "tls_handshake_failed"), only12.result
    assert "policy" not in only12.result  # no profile, no policy: the plain check's JSON as before


def test_disallowed_cipher_is_named_by_tls_cipher_allowed(msproxy: MsProxyInstance, pki: Pki) -> None:
    out = check(msproxy, pki, "chacha", "right")
    assert out.code == 2
    r = out.result
    assert (r["status_code"], r["tls"]["version"], r["tls"]["cipher"]) == (
        200,
        "TLSv1.2",
        "ECDHE-RSA-CHACHA20-POLY1305",
    )
    assert out.policy["failed"] == ["tls_cipher_allowed"]


def test_chain_not_sent_in_full_is_named(msproxy: MsProxyInstance, pki: Pki) -> None:
    short = check(msproxy, pki, "right", "leaf_only")
    assert short.code == 2
    assert short.result["reason"] == "tls_client_cert_rejected", short.result  # the proxy cannot build it
    assert short.policy["failed"] == ["cert_chain_complete"]
    full = check(msproxy, pki, "right", "full_chain")
    assert (full.code, full.result["status_code"], full.policy["compliant"]) == (0, 200, True), full
    assert "2 certificate(s) in the file" in full.rule("cert_chain_complete")["detail"]


# -- the daemon: probes.toml -> scheduler -> /metrics and the status page ----------------------------------


def test_daemon_exports_policy_gauges_and_the_status_page_names_rules(
    msproxy: MsProxyInstance, pki: Pki, tmp_path: Path
) -> None:
    """`umprobe run` with two Teams targets pointed at the proxy (host and port_map stand in for Microsoft):
    the right SBC certificate is compliant, the two-labels-deep wildcard is not, and says which rule."""
    port = msproxy.listeners["right"].port
    modules = ""
    targets = ""
    for name, cert in (("right", "right"), ("wild", "wildcard_two")):
        pair = pki.certs[cert]
        modules += (
            f'[modules.{name}]\ntransport = "tls"\nca_file = "{pki.bundle}"\ncert_file = "{pair.cert_file}"\n'
            f'key_file = "{pair.key_file}"\ninterval = 2\ntimeout = 1.5\n\n'
        )
        targets += (
            f'[[targets]]\nname = "sbc-{name}"\nhost = "127.0.0.1"\nprofile = "teams-direct-routing"\n'
            f'sbc_fqdn = "{SBC}"\ntls_module = "{name}"\nport_map = {{ 5061 = {port} }}\n\n'
        )
    config = tmp_path / "probes.toml"
    config.write_text(modules + targets)
    http = allocate_port()
    daemon = LabProcess(
        "umprobe-teams",
        [sys.executable, "-m", "umprobe.cli", "run", "-c", str(config), "--listen", f"127.0.0.1:{http}"],
        log_dir=tmp_path,
        ready=[("127.0.0.1", http)],
    )
    daemon.start()
    try:
        deadline = time.monotonic() + 20
        while True:
            page = _get(http, "/metrics")
            compliant = {
                s.labels["probe"]: s.value
                for f in text_string_to_metric_families(page)
                for s in f.samples
                if s.name == "umprobe_policy_compliant"
            }
            if len(compliant) == 2 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert compliant == {f"sbc-right:{port}/tls": 1.0, f"sbc-wild:{port}/tls": 0.0}, page
        failed = {
            (s.labels["probe"], s.labels["rule"], s.labels["profile"]): s.value
            for f in text_string_to_metric_families(page)
            for s in f.samples
            if s.name == "umprobe_policy_rule_failed" and s.value == 1.0
        }
        assert failed == {(f"sbc-wild:{port}/tls", "cert_wildcard_depth", "teams-direct-routing"): 1.0}
        promtool = shutil.which("promtool")
        assert promtool is not None, "promtool is not installed (Debian package prometheus; scripts/test)"
        done = subprocess.run(
            [promtool, "check", "metrics"], input=page.encode(), capture_output=True, timeout=30
        )
        assert (done.returncode, done.stdout, done.stderr) == (0, b"", b""), done
        status = _get(http, "/")
        assert "<h2>Profile policy</h2>" in status
        assert "*.lab.test would stand for 2 labels of sbc1.customers.lab.test" in status
    finally:
        daemon.stop()


def _get(port: int, path: str) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
        return str(response.read().decode())
