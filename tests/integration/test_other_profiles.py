"""The skype-mediation and sip-trunk profiles against Kamailio peers that behave like those far ends.

Both peers run in one network namespace (198.18.0.0/15) on the profiles' real ports, so `umprobe check
--profile ...` reaches them with a bare host exactly as an admin runs it (with these profiles a TARGET cannot
name a port), and the daemon's config form reaches them with the docs' own `port_map` examples:

* the mediation server (Kamailio 5.6): mutual TLS on 5067 (and 5071, the port of the doc's `port_map`
  example), plain TCP on 5068. Over TLS it answers OPTIONS 200 only when the gateway's client certificate
  chains to the topology's root and names the gateway of the topology (`gw1.contoso.com`) in its subject CN
  or first DNS SAN, or one label under a `*.` wildcard; 403 otherwise. Over TCP it answers 200.
* the SIP trunk (Kamailio 5.6): TCP and UDP on 5060, server-auth TLS on 5061 (and 5062, the doc's
  `port_map` example); 200 to the SBC it knows (From domain `sbc1.contoso.com`, or the SBC's own address
  when no SBC FQDN is sent), 403 to any other; on its "maintenance" ports 5080 (TCP, UDP) and 5081 (TLS)
  503 with Retry-After.

The names are the docs' (docs/profiles/skype-mediation.md, docs/profiles/sip-trunk.md): their config and
command examples run here with the host names replaced by the namespace's address and /etc/umprobe/ by the
lab's directory. Each broken set-up is named by the policy rule the profile's policy holds for it.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID
from prometheus_client.parser import text_string_to_metric_families

from tests.lab.kamailio import CertPair, KamailioInstance, Listener, TlsPolicy
from tests.lab.netns import NetNamespace, sweep_stale_namespaces
from tests.lab.pki import Key, build_cert, new_key, pem_certs, write_key
from tests.lab.ports import allocate_port
from tests.lab.proc import LabError, LabProcess
from umprobe.policy import SIP_TRUNK_POLICY, SKYPE_MEDIATION_POLICY

pytestmark = pytest.mark.lab

ROOT = Path(__file__).resolve().parents[2]
SKYPE_DOC = ROOT / "docs" / "profiles" / "skype-mediation.md"
TRUNK_DOC = ROOT / "docs" / "profiles" / "sip-trunk.md"

GATEWAY = "gw1.contoso.com"  # the gateway of the mediation server's topology
MEDIATION_HOSTS = ("med01.contoso.local", "med02.contoso.local")
SBC = "sbc1.contoso.com"  # the SBC the trunk knows
CARRIER = "sip.carrier.example"
TRUNK_MAINTENANCE = {5060: 5080, 5061: 5081}  # profile port -> the trunk's 503 port

MEDIATION_ROUTE = r"""
request_route {
    if (method != "OPTIONS") {
        sl_send_reply("501", "Not Implemented");
        exit;
    }
    xlog("L_INFO", "mediation: proto=$pr port=$Rp ruri=$ru from=$fu contact=$ct\n");
    if (proto != TLS) {
        sl_send_reply("200", "OK");
        exit;
    }
    # The topology's gateway, and its one-label wildcard form ("*." + all but the first label).
    $var(gw) = "@GATEWAY@";
    $var(first) = $(var(gw){s.select,0,.});
    $var(skip) = $(var(first){s.len}) + 1;
    $var(wild) = "*." + $(var(gw){s.substr,$var(skip),0});
    $var(cn) = $(tls_peer_subject_cn{s.tolower});
    $var(san) = $(tls_peer_san_hostname{s.tolower});
    xlog("L_INFO", "mediation: cn=$var(cn) san=$var(san) $tls_version\n");
    if ($var(cn) == $var(gw) || $var(san) == $var(gw) || $var(cn) == $var(wild) || $var(san) == $var(wild)) {
        sl_send_reply("200", "OK");
        exit;
    }
    sl_send_reply("403", "Forbidden: the certificate names no gateway of the topology");
}
""".replace("@GATEWAY@", GATEWAY)

TRUNK_ROUTE = (
    r"""
request_route {
    if (method != "OPTIONS") {
        sl_send_reply("501", "Not Implemented");
        exit;
    }
    xlog("L_INFO", "trunk: proto=$pr port=$Rp ruri=$ru from=$fu contact=$ct\n");
    if ($Rp == @MAINT_PLAIN@ || $Rp == @MAINT_TLS@) {
        append_to_reply("Retry-After: 300\r\n");
        sl_send_reply("503", "Service Unavailable: maintenance");
        exit;
    }
    # The SBC is known by its FQDN, or by its address when it sends none; lab.test is the lab's readiness
    # check (tests/lab/sipclient.py).
    if ($fd == "@SBC@" || $fd == $si || $fd == "lab.test") {
        sl_send_reply("200", "OK");
        exit;
    }
    sl_send_reply("403", "Forbidden: unknown SBC");
}
""".replace("@SBC@", SBC)
    .replace("@MAINT_PLAIN@", str(TRUNK_MAINTENANCE[5060]))
    .replace("@MAINT_TLS@", str(TRUNK_MAINTENANCE[5061]))
)


# -- the PKI: names and file names of the docs ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Pki:
    directory: Path  # the docs' relative file names live here (contoso-root.pem, gw1.contoso.com.pem, ...)
    contoso_root: Path  # the topology's root: the mediation server's ca_list and our --ca for it
    carrier_root: Path  # the carrier's root
    mediation: CertPair  # the mediation server's certificate (med01/med02 and the namespace address)
    carrier: CertPair  # the trunk's certificate (sip.carrier.example and the namespace address)
    gateways: dict[str, CertPair]  # scenario -> the gateway's client certificate file (leaf, intermediate)


def build_pki(directory: Path, ns_ip: str) -> Pki:
    directory.mkdir(parents=True, exist_ok=True)
    root_key, inter_key, carrier_key = new_key(), new_key(), new_key()
    root = build_cert("Contoso Root CA", root_key, None, ca=True)
    inter = build_cert("Contoso Issuing CA", inter_key, (root, root_key), ca=True)
    carrier_root = build_cert("Carrier Root CA", carrier_key, None, ca=True)
    (directory / "contoso-root.pem").write_bytes(pem_certs(root))
    (directory / "carrier-root.pem").write_bytes(pem_certs(carrier_root))

    def leaf(
        stem: str, subject: str, issuer: tuple[x509.Certificate, Key], chain: bytes = b"", **kw: Any
    ) -> CertPair:
        key = new_key(kw.pop("key", "rsa2048"))
        cert = build_cert(subject, key, issuer, **kw)
        (directory / f"{stem}.pem").write_bytes(pem_certs(cert) + chain)
        write_key(directory / f"{stem}.key", key)
        return CertPair(directory / f"{stem}.pem", directory / f"{stem}.key")

    issuing = (inter, inter_key)
    chain = pem_certs(inter)
    gateways = {
        "right": leaf(GATEWAY, GATEWAY, issuing, chain, names=(GATEWAY,)),
        "ec256": leaf("gw-ec256", GATEWAY, issuing, chain, names=(GATEWAY,), key="ec256"),
        "leaf_only": CertPair(directory / "gw-leaf-only.pem", directory / f"{GATEWAY}.key"),
        "other_name": leaf("gw-other", "gw9.fabrikam.com", issuing, chain, names=("gw9.fabrikam.com",)),
        "wildcard_one": leaf("gw-wild1", "*.contoso.com", issuing, chain, names=("*.contoso.com",)),
        "wildcard_two": leaf("gw-wild2", "*.com", issuing, chain, names=("*.com",)),
        "server_auth_only": leaf(
            "gw-server-auth",
            GATEWAY,
            issuing,
            chain,
            names=(GATEWAY,),
            eku=(ExtendedKeyUsageOID.SERVER_AUTH,),
        ),
        "client_auth_only": leaf(
            "gw-client-auth",
            GATEWAY,
            issuing,
            chain,
            names=(GATEWAY,),
            eku=(ExtendedKeyUsageOID.CLIENT_AUTH,),
        ),
        "rsa1024": leaf("gw-rsa1024", GATEWAY, issuing, chain, names=(GATEWAY,), key="rsa1024"),
        "ed25519": leaf("gw-ed25519", GATEWAY, issuing, chain, names=(GATEWAY,), key="ed25519"),
        "expired": leaf("gw-expired", GATEWAY, issuing, chain, names=(GATEWAY,), days=(-60, -1)),
        "near_expiry": leaf("gw-near-expiry", GATEWAY, issuing, chain, names=(GATEWAY,), days=(-60, 3)),
    }
    # The right certificate without the intermediate after it.
    right_leaf = x509.load_pem_x509_certificates(gateways["right"].cert_file.read_bytes())[0]
    gateways["leaf_only"].cert_file.write_bytes(pem_certs(right_leaf))
    mediation = leaf("mediation", MEDIATION_HOSTS[0], (root, root_key), names=MEDIATION_HOSTS, ips=(ns_ip,))
    carrier = leaf("carrier", CARRIER, (carrier_root, carrier_key), names=(CARRIER,), ips=(ns_ip,))
    return Pki(
        directory,
        directory / "contoso-root.pem",
        directory / "carrier-root.pem",
        mediation,
        carrier,
        gateways,
    )


# -- the lab: one namespace, two Kamailio instances ----------------------------------------------------


@dataclass
class Lab:
    ns: NetNamespace
    pki: Pki
    mediation: KamailioInstance
    trunk: KamailioInstance
    workdir: Path

    @property
    def ip(self) -> str:
        assert self.ns.address is not None
        return self.ns.address.ns_ip

    @contextlib.contextmanager
    def firewall(self, *rules: str) -> Iterator[None]:
        """nftables input rules inside the namespace while the block runs (e.g. a closed port)."""
        self.ns.load_nft(_ruleset(rules))
        try:
            yield
        finally:
            self.ns.load_nft(_ruleset(()))


def _ruleset(rules: tuple[str, ...]) -> str:
    body = "".join(f"        {rule}\n" for rule in rules)
    return (
        "table inet umprobe_profiles {}\ndelete table inet umprobe_profiles\n"
        "table inet umprobe_profiles {\n    chain input {\n"
        "        type filter hook input priority 0; policy accept;\n" + body + "    }\n}\n"
    )


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    workdir = tmp_path_factory.mktemp("other-profiles")
    with contextlib.ExitStack() as cleanup:
        try:
            sweep_stale_namespaces()
            ns = NetNamespace(log_dir=workdir)
            cleanup.callback(ns.delete)
            ns.create()
            assert ns.address is not None
            ip = ns.address.ns_ip
            pki = build_pki(workdir / "certs", ip)
            mtls = TlsPolicy(require_client_cert=True, method="TLSv1.2+")
            mediation = KamailioInstance(
                [
                    Listener("tcp", "tcp", ip, 5068),
                    Listener("tls", "tls", ip, 5067, mtls),
                    Listener("tls_moved", "tls", ip, 5071, mtls),
                ],
                workdir=workdir,
                server_certs={"good": pki.mediation},
                ca_file=pki.contoso_root,
                name="kamailio-mediation",
                route=MEDIATION_ROUTE,
                server_header="RTCC/6.0.0.0 MediationServer",
            )
            server_auth = TlsPolicy(require_client_cert=False, method="TLSv1.2+")
            trunk = KamailioInstance(
                [
                    Listener("tcp", "tcp", ip, 5060),
                    Listener("udp", "udp", ip, 5060),
                    Listener("tls", "tls", ip, 5061, server_auth),
                    Listener("tls_moved", "tls", ip, 5062, server_auth),
                    Listener("maint_tcp", "tcp", ip, TRUNK_MAINTENANCE[5060]),
                    Listener("maint_udp", "udp", ip, TRUNK_MAINTENANCE[5060]),
                    Listener("maint_tls", "tls", ip, TRUNK_MAINTENANCE[5061], server_auth),
                ],
                workdir=workdir,
                server_certs={"good": pki.carrier},
                ca_file=pki.carrier_root,
                name="kamailio-trunk",
                route=TRUNK_ROUTE,
                server_header="carrier-sbc-lab",
                modules=("textops.so",),
            )
            for instance in (mediation, trunk):
                instance.process.argv = ns.exec_argv(instance.process.argv)
                cleanup.callback(instance.stop)  # before ns.delete: last in, first out
                instance.start()
        except LabError as exc:
            pytest.fail(str(exc), pytrace=False)
        yield Lab(ns, pki, mediation, trunk, workdir)
        for instance in (mediation, trunk):
            if not instance.process.is_alive():
                pytest.fail(
                    f"{instance.name} died during the tests\n{instance.process.describe(40)}", pytrace=False
                )


# -- running umprobe -------------------------------------------------------------------------------------


def _umprobe(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "umprobe.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=cwd,
        env={**os.environ, **(env or {})},
    )


@dataclass(frozen=True, slots=True)
class Outcome:
    code: int
    doc: dict[str, Any]
    stderr: str

    def row(self, transport: str, port: int | None = None) -> dict[str, Any]:
        (only,) = [
            r
            for r in self.doc["results"]
            if r["transport"] == transport and (port is None or r["port"] == port)
        ]
        return dict(only)

    def failed(self, transport: str) -> list[str]:
        return list(self.row(transport)["policy"]["failed"])

    def rule(self, transport: str, name: str) -> dict[str, Any]:
        return dict(next(r for r in self.row(transport)["policy"]["rules"] if r["rule"] == name))


def check(lab: Lab, *args: str, env: dict[str, str] | None = None) -> Outcome:
    """`umprobe check --json --timeout 8 ARGS...`, run in the lab's certificate directory."""
    done = _umprobe("check", "--json", "--timeout", "8", *args, cwd=lab.pki.directory, env=env)
    assert done.stdout, done.stderr
    return Outcome(done.returncode, json.loads(done.stdout), done.stderr)


def skype(lab: Lab, gateway: str = "right", *extra: str, sbc_fqdn: str = GATEWAY) -> Outcome:
    pair = lab.pki.gateways[gateway]
    return check(
        lab,
        *("--profile", "skype-mediation", "--sbc-fqdn", sbc_fqdn, "--ca", "contoso-root.pem"),
        *("--cert", str(pair.cert_file), "--key", str(pair.key_file), *extra, lab.ip),
    )


def trunk(lab: Lab, *extra: str) -> Outcome:
    return check(lab, "--profile", "sip-trunk", "--ca", "carrier-root.pem", *extra, lab.ip)


# ======================================================================================================
# skype-mediation


def test_skype_right_gateway_certificate_passes_both_listeners(lab: Lab) -> None:
    out = skype(lab)
    assert out.code == 0, out
    assert (
        out.doc["summary"]
        == "2 of 2 listener probes healthy, 2 of 2 compliant with the skype-mediation policy"
    )
    tls, tcp = out.row("tls"), out.row("tcp")
    assert (tls["port"], tls["status_code"], tls["listener"]) == (5067, 200, "mediation_server")
    assert (tcp["port"], tcp["status_code"], tcp["listener"]) == (5068, 200, "mediation_server")
    assert tls["tls"]["client_certificate_requested"] is True
    assert tls["server"] == "RTCC/6.0.0.0 MediationServer"
    judged = {r["rule"]: r["verdict"] for r in tls["policy"]["rules"]}
    assert judged == dict.fromkeys(SKYPE_MEDIATION_POLICY.rules, "pass") | {"cert_wildcard_depth": "n/a"}
    # On the TCP listener no certificate is sent: every rule is n/a and the row is compliant.
    assert {r["verdict"] for r in tcp["policy"]["rules"]} == {"n/a"}
    assert tcp["policy"]["compliant"] is True
    # What the mediation server saw: the docs' From and Contact (5067 for TLS, 5060 for TCP), sip: URIs.
    log = lab.mediation.process.log_text()
    assert f"proto=tls port=5067 ruri=sip:{lab.ip}:5067;transport=tls from=sip:umprobe@{GATEWAY}" in log
    assert f"contact=<sip:{GATEWAY}:5067;transport=tls>" in log
    assert f"contact=<sip:{GATEWAY}:5060;transport=tcp>" in log
    assert f"cn={GATEWAY} san={GATEWAY}" in log


def test_skype_ec_p256_and_one_label_wildcard_pass(lab: Lab) -> None:
    for gateway in ("ec256", "wildcard_one"):
        out = skype(lab, gateway, "--transport", "tls")
        assert (out.code, out.row("tls")["status_code"]) == (0, 200), (gateway, out)
        assert out.row("tls")["policy"]["compliant"] is True


def test_skype_wrong_certificate_name_gets_403_and_cert_name_match(lab: Lab) -> None:
    out = skype(lab, "other_name")
    assert out.code == 2
    tls = out.row("tls")
    assert (tls["status_code"], tls["reason"]) == (403, "sip_unhealthy_status")
    assert out.failed("tls") == ["cert_name_match"]
    assert f"{GATEWAY} is neither the CN nor a DNS SAN" in out.rule("tls", "cert_name_match")["detail"]
    assert out.row("tcp")["success"] is True  # the TCP listener does not care


def test_skype_wildcard_two_labels_deep_gets_403_and_cert_wildcard_depth(lab: Lab) -> None:
    out = skype(lab, "wildcard_two", "--transport", "tls")
    assert (out.code, out.row("tls")["status_code"]) == (2, 403)
    assert out.failed("tls") == ["cert_wildcard_depth"]
    assert "*.com would stand for 2 labels" in out.rule("tls", "cert_wildcard_depth")["detail"]


def test_skype_server_auth_only_eku_is_refused_and_named(lab: Lab) -> None:
    out = skype(lab, "server_auth_only", "--transport", "tls")
    assert out.code == 2
    assert out.row("tls")["reason"] == "tls_client_cert_rejected", out.row("tls")
    assert out.failed("tls") == ["cert_eku_server_client"]
    assert "missing serverAuth" not in out.rule("tls", "cert_eku_server_client")["detail"]
    assert "missing clientAuth" in out.rule("tls", "cert_eku_server_client")["detail"]


def test_skype_client_auth_only_eku_is_accepted_by_the_peer_but_not_by_the_policy(lab: Lab) -> None:
    """The lab's mediation server takes a clientAuth-only certificate; the policy asks for both EKUs."""
    out = skype(lab, "client_auth_only", "--transport", "tls")
    assert (out.code, out.row("tls")["status_code"]) == (2, 200), out
    assert out.failed("tls") == ["cert_eku_server_client"]
    assert "missing serverAuth" in out.rule("tls", "cert_eku_server_client")["detail"]


def test_skype_key_types_outside_the_policy_are_named_by_cert_key_size(lab: Lab) -> None:
    """Ed25519: the lab's mediation server (OpenSSL) takes it, the policy allows RSA and EC only. RSA-1024:
    umprobe's own OpenSSL (security level 2) refuses to load it, one line and UNKNOWN, before any packet is
    sent; at security level 0 the probe runs and the policy names the key."""
    out = skype(lab, "ed25519", "--transport", "tls")
    assert (out.code, out.row("tls")["status_code"]) == (2, 200), out
    assert out.failed("tls") == ["cert_key_size"]
    assert "a Ed25519 key is not allowed" in out.rule("tls", "cert_key_size")["detail"]
    pair = lab.pki.gateways["rsa1024"]
    args: tuple[str, ...] = (
        "--profile",
        "skype-mediation",
        "--sbc-fqdn",
        GATEWAY,
        "--transport",
        "tls",
        "--ca",
        "contoso-root.pem",
    )
    args += ("--cert", str(pair.cert_file), "--key", str(pair.key_file))
    refused = _umprobe("check", *args, lab.ip, cwd=lab.pki.directory)
    assert (refused.returncode, refused.stdout) == (3, ""), refused
    assert refused.stderr == (
        f"umprobe: error: certificate file {pair.cert_file} holds no usable PEM certificate"
        " (ee key too small)\n"
    )
    out = check(lab, *args, "--ciphers", "DEFAULT:@SECLEVEL=0", lab.ip)
    assert out.code == 2, out
    assert (out.row("tls")["reason"], out.row("tls")["status_code"]) == ("tls_client_cert_rejected", None), (
        out.row("tls")
    )
    assert out.failed("tls") == ["cert_key_size"], out.row("tls")
    assert "RSA-1024 is below 2048 bits" in out.rule("tls", "cert_key_size")["detail"]


def test_skype_chain_not_sent_in_full_is_refused_and_named(lab: Lab) -> None:
    out = skype(lab, "leaf_only", "--transport", "tls")
    assert out.code == 2
    assert out.row("tls")["reason"] == "tls_client_cert_rejected", out.row("tls")
    assert out.failed("tls") == ["cert_chain_complete"]
    assert (
        "put the intermediate certificate(s) in the file" in out.rule("tls", "cert_chain_complete")["detail"]
    )


def test_skype_expired_certificate_is_refused_and_named_by_cert_days_left(lab: Lab) -> None:
    out = skype(lab, "expired", "--transport", "tls")
    assert out.code == 2
    assert out.row("tls")["reason"] == "tls_client_cert_rejected", out.row("tls")
    assert out.failed("tls") == ["cert_days_left"]
    assert "expired" in out.rule("tls", "cert_days_left")["detail"]


def test_skype_near_expiry_is_compliant_and_left_to_the_day_thresholds(lab: Lab) -> None:
    """The policy's cert_days_left asks for "valid now"; 3 days left is --crit-days' (default 7) business."""
    out = skype(lab, "near_expiry", "--transport", "tls")
    tls = out.row("tls")
    assert (out.code, tls["status_code"], tls["state"]) == (2, 200, "CRITICAL"), out
    assert tls["policy"]["compliant"] is True
    assert out.rule("tls", "cert_days_left")["verdict"] == "pass"
    assert any("client certificate expires in 3.0 days (crit-days 7)" in p for p in out.doc["problems"]), (
        out.doc
    )
    warned = skype(lab, "near_expiry", "--transport", "tls", "--crit-days", "2")
    assert (warned.code, warned.row("tls")["state"]) == (1, "WARNING"), warned


def test_skype_tls_without_client_certificate_is_refused_before_probing(lab: Lab) -> None:
    """Its policy judges the client certificate, so a TLS check without one could only fail every rule:
    `check` says so in one line instead; the TCP listener alone needs no certificate."""
    args = ("--profile", "skype-mediation", "--sbc-fqdn", GATEWAY, "--ca", "contoso-root.pem")
    refused = _umprobe("check", "--json", "--timeout", "8", *args, lab.ip, cwd=lab.pki.directory)
    assert refused.returncode == 3
    assert not refused.stdout
    assert "needs --cert and --key for its TLS listeners" in refused.stderr
    assert "Traceback" not in refused.stderr
    tcp_only = check(lab, *args, "--transport", "tcp", lab.ip)
    assert tcp_only.code == 0, tcp_only
    assert [r["transport"] for r in tcp_only.doc["results"]] == ["tcp"]


def test_skype_closed_tcp_port_is_critical_unless_narrowed_to_tls(lab: Lab) -> None:
    with lab.firewall("tcp dport 5068 reject with tcp reset"):
        out = skype(lab)
        assert out.code == 2
        assert (out.row("tcp")["reason"], out.row("tcp")["state"]) == ("connect_refused", "CRITICAL")
        assert out.row("tls")["success"] is True
        # "A mediation server usually has only one of the two enabled": --transport tls says which.
        narrowed = skype(lab, "right", "--transport", "tls")
        assert narrowed.code == 0, narrowed
        assert [r["port"] for r in narrowed.doc["results"]] == [5067]


def test_skype_closed_tls_port_is_critical(lab: Lab) -> None:
    with lab.firewall("tcp dport 5067 reject with tcp reset"):
        out = skype(lab)
    assert out.code == 2
    assert out.row("tls")["reason"] == "connect_refused"
    # Every rule of this policy judges the certificate file, which is fine: compliant, and CRITICAL.
    assert (out.row("tls")["policy"]["compliant"], out.row("tls")["state"]) == (True, "CRITICAL")
    assert out.row("tcp")["success"] is True


def test_skype_without_sbc_fqdn_keeps_the_default_shape_and_skips_the_name_rules(lab: Lab) -> None:
    out = check(
        lab,
        *("--profile", "skype-mediation", "--transport", "tls", "--ca", "contoso-root.pem"),
        *("--cert", f"{GATEWAY}.pem", "--key", f"{GATEWAY}.key", lab.ip),
    )
    assert (out.code, out.row("tls")["status_code"]) == (0, 200), out
    assert out.rule("tls", "cert_name_match")["verdict"] == "n/a"
    assert out.rule("tls", "cert_wildcard_depth")["verdict"] == "n/a"
    assert out.row("tls")["policy"]["compliant"] is True
    host = lab.ns.address.host_ip if lab.ns.address else ""
    assert re.search(
        rf"contact=<sip:umprobe@{re.escape(host)}:\d+;transport=tls>", lab.mediation.process.log_text()
    )


def test_skype_config_with_port_map_and_both_transports(lab: Lab, tmp_path: Path) -> None:
    """The doc's `port_map = { 5067 = 5071 }` and a target that keeps both listeners, in the daemon."""
    gw = lab.pki.gateways["right"]
    config = f"""
[modules.gateway]
transport = "tls"
ca_file = "{lab.pki.contoso_root}"
cert_file = "{gw.cert_file}"
key_file = "{gw.key_file}"
interval = 2
timeout = 1.5

[[targets]]
name = "moved"
host = "{lab.ip}"
profile = "skype-mediation"
sbc_fqdn = "{GATEWAY}"
transports = ["tls"]
port_map = {{ 5067 = 5071 }}
interval = 2
timeout = 1.5

[[targets]]
name = "both"
host = "{lab.ip}"
profile = "skype-mediation"
sbc_fqdn = "{GATEWAY}"
interval = 2
timeout = 1.5
"""
    samples = run_daemon(lab, config, 3, tmp_path)
    status = by_probe(samples, "umprobe_sip_status_code")
    assert status == {"moved:5071/tls": 200, "both:5067/tls": 200, "both:5068/tcp": 200}, status
    assert by_probe(samples, "umprobe_policy_compliant") == dict.fromkeys(status, 1.0)
    # The gateway is still announced on its own port: Contact carries 5067, not the mapped 5071.
    line = (
        f"proto=tls port=5071 ruri=sip:{lab.ip}:5071;transport=tls from=sip:umprobe@{GATEWAY}"
        f" contact=<sip:{GATEWAY}:5067;transport=tls>"
    )
    assert line in lab.mediation.process.log_text()


# ======================================================================================================
# sip-trunk


def test_trunk_full_profile_passes_over_tcp_udp_and_tls(lab: Lab) -> None:
    out = trunk(lab, "--sbc-fqdn", SBC)
    assert out.code == 0, out
    assert sorted((r["transport"], r["port"], r["status_code"]) for r in out.doc["results"]) == [
        ("tcp", 5060, 200),
        ("tls", 5061, 200),
        ("udp", 5060, 200),
    ]
    tls = out.row("tls")
    assert tls["tls"]["version"] == "TLSv1.3"
    assert tls["tls"]["client_certificate_requested"] is False
    verdicts = {r["rule"]: r["verdict"] for r in tls["policy"]["rules"]}
    # Without a cert_file the certificate rules are n/a, not failures; TLS 1.3 is allowed.
    assert verdicts == dict.fromkeys(SIP_TRUNK_POLICY.rules, "n/a") | {"tls_version_allowed": "pass"}
    log = lab.trunk.process.log_text()
    for transport, port in (("tcp", 5060), ("udp", 5060), ("tls", 5061)):
        ruri = f"sip:{lab.ip}:{port};transport={transport}"
        assert f"proto={transport} port={port} ruri={ruri} from=sip:umprobe@{SBC}" in log
    assert f"contact=<sip:{SBC}:5061;transport=tls>" in log
    assert f"contact=<sip:{SBC}:5060;transport=udp>" in log


def test_trunk_narrowed_to_udp_passes_over_udp(lab: Lab) -> None:
    out = trunk(lab, "--sbc-fqdn", SBC, "--transport", "udp")
    assert out.code == 0, out
    assert [(r["transport"], r["port"], r["status_code"]) for r in out.doc["results"]] == [("udp", 5060, 200)]
    assert out.row("udp")["policy"]["compliant"] is True


def test_trunk_unknown_sbc_gets_403_as_sip_unhealthy_status(lab: Lab) -> None:
    out = trunk(lab, "--sbc-fqdn", "sbc9.fabrikam.com")
    assert out.code == 2
    for transport in ("tcp", "udp", "tls"):
        row = out.row(transport)
        assert (row["status_code"], row["reason"], row["alive"]) == (403, "sip_unhealthy_status", True), row
        assert row["reason_phrase"] == "Forbidden: unknown SBC"
    # The policy has nothing against it: a refused SBC is the far end's verdict, not a rule of ours.
    assert out.row("tls")["policy"]["compliant"] is True


def test_trunk_closed_tcp_port_is_critical(lab: Lab) -> None:
    with lab.firewall("tcp dport 5060 reject with tcp reset"):
        out = trunk(lab, "--sbc-fqdn", SBC)
    assert out.code == 2
    assert (out.row("tcp")["reason"], out.row("tcp")["state"]) == ("connect_refused", "CRITICAL")
    assert out.row("udp")["success"] is True and out.row("tls")["success"] is True


def test_trunk_certificate_is_verified_against_the_server_name(lab: Lab) -> None:
    untrusted = check(lab, "--profile", "sip-trunk", "--transport", "tls", lab.ip)
    assert (untrusted.code, untrusted.row("tls")["reason"]) == (2, "tls_verify_failed"), untrusted
    named = trunk(lab, "--transport", "tls", "--server-name", CARRIER)
    assert named.code == 0, named
    wrong = trunk(lab, "--transport", "tls", "--server-name", "sip.other-carrier.example")
    assert (wrong.code, wrong.row("tls")["reason"]) == (2, "tls_verify_failed"), wrong


# -- the config form: the daemon ------------------------------------------------------------------------


def _get(port: int, path: str) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
        return str(response.read().decode())


def run_daemon(
    lab: Lab, config: str, probes: int, tmp_path: Path, env: dict[str, str] | None = None
) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """Run `umprobe run` on `config` until each of `probes` probes has a result; the /metrics samples by
    metric name, then by label set."""
    path = _write(tmp_path / "probes.toml", config)
    http = allocate_port()
    daemon = LabProcess(
        "umprobe-profiles",
        [
            *("env", *(f"{k}={v}" for k, v in (env or {}).items())),
            *(sys.executable, "-m", "umprobe.cli", "run", "-c", str(path), "--listen", f"127.0.0.1:{http}"),
        ],
        log_dir=tmp_path,
        ready=[("127.0.0.1", http)],
        cwd=lab.pki.directory,
    )
    daemon.start()
    try:
        deadline = time.monotonic() + 20
        while True:
            samples: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
            for family in text_string_to_metric_families(_get(http, "/metrics")):
                for s in family.samples:
                    samples.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
            if len(samples.get("umprobe_sip_status_code", {})) >= probes or time.monotonic() > deadline:
                return samples
            time.sleep(0.2)
    finally:
        daemon.stop()


def by_probe(samples: dict[str, dict[tuple[tuple[str, str], ...], float]], name: str) -> dict[str, float]:
    return {dict(labels)["probe"]: value for labels, value in samples.get(name, {}).items()}


def test_trunk_config_narrowed_per_target_and_503_in_the_daemon(lab: Lab, tmp_path: Path) -> None:
    ip = lab.ip
    config = f"""
[modules.carrier]
transport = "tls"
ca_file = "{lab.pki.carrier_root}"
server_name = "{CARRIER}"
interval = 2
timeout = 1.5

[[targets]]
interval = 2
timeout = 1.5
name = "plain"
host = "{ip}"
profile = "sip-trunk"
transports = ["tcp"]
sbc_fqdn = "{SBC}"

[[targets]]
interval = 2
timeout = 1.5
name = "secure"
host = "{ip}"
profile = "sip-trunk"
transports = ["tls"]
sbc_fqdn = "{SBC}"
tls_module = "carrier"

[[targets]]
interval = 2
timeout = 1.5
name = "udp-only"
host = "{ip}"
profile = "sip-trunk"
transports = ["udp"]

[[targets]]
interval = 2
timeout = 1.5
name = "maintenance"
host = "{ip}"
profile = "sip-trunk"
sbc_fqdn = "{SBC}"
tls_module = "carrier"
port_map = {{ 5060 = {TRUNK_MAINTENANCE[5060]}, 5061 = {TRUNK_MAINTENANCE[5061]} }}
"""
    samples = run_daemon(lab, config, 6, tmp_path)
    status = by_probe(samples, "umprobe_sip_status_code")
    assert status == {
        "plain:5060/tcp": 200,
        "secure:5061/tls": 200,
        "udp-only:5060/udp": 200,
        "maintenance:5080/tcp": 503,
        "maintenance:5080/udp": 503,
        "maintenance:5081/tls": 503,
    }, samples.get("umprobe_sip_status_code")
    success = by_probe(samples, "umprobe_probe_success")
    assert {p for p, v in success.items() if v == 1} == {p for p, v in status.items() if v == 200}
    retry = by_probe(samples, "umprobe_sip_retry_after_seconds")
    assert retry == {p: 300.0 for p in status if p.startswith("maintenance")}
    unhealthy = {
        dict(labels)["probe"]
        for labels, value in samples["umprobe_probe_failures_total"].items()
        if dict(labels)["reason"] == "sip_unhealthy_status" and value >= 1
    }
    assert unhealthy == {p for p in status if p.startswith("maintenance")}
    compliant = by_probe(samples, "umprobe_policy_compliant")
    assert compliant["secure:5061/tls"] == 1.0


# -- the docs' examples -----------------------------------------------------------------------------------


def _blocks(doc: Path, lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", doc.read_text(), re.S)


def _adapt(text: str, lab: Lab, hosts: tuple[str, ...]) -> str:
    """A doc example for the lab: /etc/umprobe/ is the lab's certificate directory, the far end's host names
    are the namespace's address (a host list becomes that one address)."""
    text = text.replace("/etc/umprobe/", f"{lab.pki.directory}/")
    text = re.sub(r"^host = .*$", f'host = "{lab.ip}"', text, flags=re.M)
    for host in hosts:
        text = text.replace(host, lab.ip)
    return text


def _commands(doc: Path) -> list[list[str]]:
    out = []
    for block in _blocks(doc, "sh"):
        for line in block.replace("\\\n", " ").splitlines():
            if line.strip():
                out.append(shlex.split(line))
    return out


DOC_CASES = [
    pytest.param(SKYPE_DOC, MEDIATION_HOSTS, {}, id="skype-mediation.md"),
    # The carrier's root stands in for the system trust store (the doc's carrier has a public certificate).
    pytest.param(TRUNK_DOC, (CARRIER,), {"SSL_CERT_FILE": "carrier-root.pem"}, id="sip-trunk.md"),
]


@pytest.mark.parametrize(("doc", "hosts", "env"), DOC_CASES)
def test_doc_config_examples_pass_config_check(
    lab: Lab, doc: Path, hosts: tuple[str, ...], env: dict[str, str], tmp_path: Path
) -> None:
    blocks = _blocks(doc, "toml")
    assert blocks, f"{doc.name} has no config example"
    for i, block in enumerate(blocks):
        path = tmp_path / f"example{i}.toml"
        path.write_text(
            block.replace("/etc/umprobe/", f"{lab.pki.directory}/")
        )  # the doc's hosts as they are
        done = _umprobe("config", "check", str(path), cwd=lab.pki.directory, env=env)
        assert done.returncode == 0, f"{doc.name} example {i}:\n{done.stdout}{done.stderr}"


@pytest.mark.parametrize(("doc", "hosts", "env"), DOC_CASES)
def test_doc_config_examples_run_against_the_lab(
    lab: Lab, doc: Path, hosts: tuple[str, ...], env: dict[str, str], tmp_path: Path
) -> None:
    for i, block in enumerate(_blocks(doc, "toml")):
        config = _adapt(block, lab, hosts)
        # Every probe once every 2 s (the built-in modules' interval is 30 s), each target and module.
        config = re.sub(r"^interval = \d+.*\n", "", config, flags=re.M)
        config = re.sub(
            r"^(\[\[targets\]\]|\[modules\.\w+\])$", r"\1\ninterval = 2\ntimeout = 1.5", config, flags=re.M
        )
        listed = _umprobe(
            "config",
            "check",
            str(_write(tmp_path / f"check{i}.toml", config)),
            cwd=lab.pki.directory,
            env=env,
        )
        assert listed.returncode == 0, listed.stderr
        probes = len(re.findall(r"^\S+:\d+/(?:tcp|tls|udp) ", listed.stdout, re.M))
        samples = run_daemon(
            lab,
            config,
            probes,
            tmp_path / str(i),
            env={k: str(lab.pki.directory / v) for k, v in env.items()},
        )
        success = by_probe(samples, "umprobe_probe_success")
        assert len(success) == probes and set(success.values()) == {1.0}, (
            doc.name,
            samples.get("umprobe_sip_status_code"),
        )
        compliant = by_probe(samples, "umprobe_policy_compliant")
        assert compliant and set(compliant.values()) == {1.0}, compliant


@pytest.mark.parametrize(("doc", "hosts", "env"), DOC_CASES)
def test_doc_one_shot_commands_pass_against_the_lab(
    lab: Lab, doc: Path, hosts: tuple[str, ...], env: dict[str, str]
) -> None:
    commands = _commands(doc)
    assert commands and all(argv[0] == "umprobe" for argv in commands), commands
    for argv in commands:
        adapted = [_adapt(arg, lab, hosts) for arg in argv[1:]]
        done = _umprobe(
            *adapted, cwd=lab.pki.directory, env={k: str(lab.pki.directory / v) for k, v in env.items()}
        )
        assert done.returncode == 0, f"{doc.name}: {shlex.join(argv)}\n{done.stdout}{done.stderr}"


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path
