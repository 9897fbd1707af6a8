"""The SIP OPTIONS probe against real peers: Kamailio, SIPp, socat, and a namespace that drops SYNs.

Every test runs under `trio.fail_after`; the probe's own deadline is absolute (`trio.current_time()`).
The peers come from the session fixtures in tests/conftest.py (see tests/lab/).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import trio

from tests.lab.kamailio import EXCHANGE_SERVER_HEADER
from tests.lab.pki import LabPKI
from umprobe.net.tls import TLSClientConfig
from umprobe.probes.result import ProbeResult
from umprobe.probes.sip_options import SipProbeSpec, probe

pytestmark = pytest.mark.lab

HARD_CAP = 10.0  # seconds; no single probe test may run longer than this


async def probe_one(spec: SipProbeSpec, *, budget: float = 3.0) -> tuple[ProbeResult, float, float]:
    """Probe with a deadline `budget` s from now; return the only result, the deadline and the end time."""
    with trio.fail_after(HARD_CAP):
        deadline = trio.current_time() + budget
        results = await probe(spec, deadline=deadline)
        ended = trio.current_time()
    assert len(results) == 1, results
    return results[0], deadline, ended


def tls_spec(address: tuple[str, int], tls: TLSClientConfig, **kwargs: object) -> SipProbeSpec:
    host, port = address
    return SipProbeSpec(host=host, port=port, transport="tls", tls=tls, **kwargs)  # type: ignore[arg-type]


def mtls(pki: LabPKI, **kwargs: object) -> TLSClientConfig:
    return TLSClientConfig(
        ca_file=str(pki.ca_file),
        cert_file=str(pki.client.cert_file),
        key_file=str(pki.client.key_file),
        **kwargs,  # type: ignore[arg-type]
    )


def server_auth(pki: LabPKI, **kwargs: object) -> TLSClientConfig:
    return TLSClientConfig(ca_file=str(pki.ca_file), **kwargs)  # type: ignore[arg-type]


def assert_ok(result: ProbeResult, *, status: int = 200) -> None:
    assert result.reason == "ok", (result.reason, result.detail)
    assert result.success and result.alive
    assert result.phase is None
    assert result.status_code == status


# -- Kamailio: TCP ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("listener", "family"), [("tcp4", "ipv4"), ("tcp6", "ipv6")])
async def test_tcp_ok(kamailio_lab, listener, family):
    host, port = kamailio_lab[listener]
    result, _, _ = await probe_one(SipProbeSpec(host=host, port=port, transport="tcp"))
    assert_ok(result)
    assert (result.address, result.family, result.port) == (host, family, port)
    assert result.server == EXCHANGE_SERVER_HEADER
    assert result.tls is None
    t = result.timings
    assert t.connect is not None and t.sip is not None and t.total is not None
    assert t.tls is None
    assert t.connect + t.sip <= t.total


async def test_tcp_ok_with_bracketed_ipv6_literal(kamailio_lab):
    _, port = kamailio_lab["tcp6"]
    result, _, _ = await probe_one(SipProbeSpec(host="[::1]", port=port, transport="tcp"))
    assert_ok(result)
    assert (result.address, result.family) == ("::1", "ipv6")


# -- Kamailio: mutual TLS and server-auth TLS -------------------------------------------------------------


async def test_mtls_ok_with_chain_facts(kamailio_lab, lab_pki):
    result, _, _ = await probe_one(tls_spec(kamailio_lab["mtls4"], mtls(lab_pki)))
    assert_ok(result)
    assert result.server == EXCHANGE_SERVER_HEADER
    tls = result.tls
    assert tls is not None
    assert tls.version == "TLSv1.3"
    assert tls.cipher
    assert tls.verified and tls.verify_error is None
    assert tls.client_cert_requested and tls.client_cert_sent
    leaf = tls.peer_chain[0]
    assert "DNS:um.lab.test" in leaf.san and "IP:127.0.0.1" in leaf.san
    assert "umprobe lab CA" in leaf.issuer
    assert leaf.key_type == "EC-secp256r1"
    now = datetime.now(UTC)
    assert now + timedelta(days=89) < leaf.not_after <= now + timedelta(days=91)
    assert result.client_cert is not None and "probe.lab.test" in result.client_cert.subject
    assert result.timings.tls is not None and result.timings.sip is not None


async def test_mtls_ok_over_ipv6_with_server_name(kamailio_lab, lab_pki):
    spec = tls_spec(kamailio_lab["mtls6"], mtls(lab_pki), server_name="um.lab.test")
    result, _, _ = await probe_one(spec)
    assert_ok(result)
    assert result.family == "ipv6"
    assert result.tls is not None and result.tls.verified


async def test_mtls_ok_with_rsa_server_cert_over_tls12(kamailio_lab, lab_pki):
    result, _, _ = await probe_one(tls_spec(kamailio_lab["mtls_rsa"], mtls(lab_pki, max_version="1.2")))
    assert_ok(result)
    assert result.tls is not None
    assert result.tls.version == "TLSv1.2"
    assert result.tls.peer_chain[0].key_type == "RSA-2048"
    assert "RSA" in (result.tls.cipher or "")


async def test_server_auth_only_tls12_ok(kamailio_lab, lab_pki):
    result, _, _ = await probe_one(tls_spec(kamailio_lab["tls12_server_auth"], server_auth(lab_pki)))
    assert_ok(result)
    assert result.tls is not None
    assert result.tls.version == "TLSv1.2"
    assert result.tls.verified
    assert not result.tls.client_cert_requested


async def test_mtls_without_client_cert_is_rejected(kamailio_lab, lab_pki):
    result, _, _ = await probe_one(tls_spec(kamailio_lab["mtls4"], server_auth(lab_pki)))
    assert result.reason == "tls_client_cert_rejected", (result.reason, result.detail)
    assert result.phase == "tls"
    assert not result.success and not result.alive
    assert result.status_code is None


async def test_mtls_without_client_cert_over_tls12_is_rejected(kamailio_lab, lab_pki):
    result, _, _ = await probe_one(tls_spec(kamailio_lab["mtls4"], server_auth(lab_pki, max_version="1.2")))
    assert result.reason == "tls_client_cert_rejected", (result.reason, result.detail)
    assert result.phase == "tls"


async def test_mtls_with_rogue_ca_client_cert_is_rejected(kamailio_lab, lab_pki):
    rogue = TLSClientConfig(
        ca_file=str(lab_pki.ca_file),
        cert_file=str(lab_pki.rogue_client.cert_file),
        key_file=str(lab_pki.rogue_client.key_file),
    )
    result, _, _ = await probe_one(tls_spec(kamailio_lab["mtls4"], rogue))
    assert result.reason == "tls_client_cert_rejected", (result.reason, result.detail)
    assert result.phase == "tls"
    assert not result.alive


async def test_wrong_server_name_fails_verification(kamailio_lab, lab_pki):
    result, _, _ = await probe_one(tls_spec(kamailio_lab["tls_wrong_name"], server_auth(lab_pki)))
    assert result.reason == "tls_verify_failed", (result.reason, result.detail)
    assert result.phase == "tls"
    assert result.tls is not None and not result.tls.verified
    assert result.tls.peer_chain and "DNS:other.lab.test" in result.tls.peer_chain[0].san


async def test_name_mismatch_against_good_cert_fails_verification(kamailio_lab, lab_pki):
    spec = tls_spec(kamailio_lab["mtls4"], mtls(lab_pki), server_name="cas01.contoso.local")
    result, _, _ = await probe_one(spec)
    assert result.reason == "tls_verify_failed", (result.reason, result.detail)


async def test_expired_server_cert_fails_verification(kamailio_lab, lab_pki):
    result, _, _ = await probe_one(tls_spec(kamailio_lab["tls_expired"], server_auth(lab_pki)))
    assert result.reason == "tls_verify_failed", (result.reason, result.detail)
    assert result.phase == "tls"
    assert result.tls is not None and result.tls.peer_chain
    assert result.tls.peer_chain[0].not_after < datetime.now(UTC)


async def test_expired_server_cert_insecure_still_answers(kamailio_lab, lab_pki):
    result, _, _ = await probe_one(tls_spec(kamailio_lab["tls_expired"], server_auth(lab_pki, insecure=True)))
    assert_ok(result)
    assert result.insecure
    assert result.tls is not None and not result.tls.verified


async def test_tls_version_mismatch_fails_handshake(kamailio_lab, lab_pki):
    spec = tls_spec(kamailio_lab["tls12_server_auth"], server_auth(lab_pki, min_version="1.3"))
    result, _, _ = await probe_one(spec)
    assert result.reason == "tls_handshake_failed", (result.reason, result.detail)
    assert result.phase == "tls"
    assert not result.alive


# -- connect failures --------------------------------------------------------------------------------------


async def test_closed_port_is_refused(closed_port):
    host, port = closed_port
    result, _, _ = await probe_one(SipProbeSpec(host=host, port=port))
    assert result.reason == "connect_refused"
    assert result.phase == "connect"
    assert not result.alive


async def test_remote_reset_is_refused(remote_refused):
    host, port = remote_refused
    result, _, _ = await probe_one(SipProbeSpec(host=host, port=port))
    assert result.reason == "connect_refused"
    assert result.phase == "connect"


async def test_blackhole_times_out_at_the_deadline(blackhole):
    host, port = blackhole
    result, deadline, ended = await probe_one(SipProbeSpec(host=host, port=port), budget=1.0)
    assert result.reason == "connect_timeout"
    assert result.phase == "connect"
    assert deadline <= ended <= deadline + 0.5
    assert result.timings.connect is not None and result.timings.connect >= 0.95


# -- SIPp: slow, busy and silent servers -------------------------------------------------------------------


async def test_delayed_200_is_ok_and_timed(sipp_servers):
    host, port = sipp_servers["delayed200"]
    result, _, _ = await probe_one(SipProbeSpec(host=host, port=port), budget=4.0)
    assert_ok(result)
    assert result.timings.sip is not None
    assert 1.5 <= result.timings.sip <= 1.6


async def test_503_is_unhealthy_with_retry_after_and_fast(sipp_servers):
    host, port = sipp_servers["busy503"]
    t0 = trio.current_time()
    result, _, ended = await probe_one(SipProbeSpec(host=host, port=port), budget=5.0)
    assert result.reason == "sip_unhealthy_status"
    assert result.phase == "sip"
    assert result.alive and not result.success
    assert result.status_code == 503
    assert result.retry_after == 30
    assert result.server == EXCHANGE_SERVER_HEADER
    assert ended - t0 < 0.5  # answered at once, not after the deadline


async def test_503_is_healthy_when_accepted(sipp_servers):
    host, port = sipp_servers["busy503"]
    result, _, _ = await probe_one(SipProbeSpec(host=host, port=port, accept_status=frozenset({200, 503})))
    assert_ok(result, status=503)


async def test_silent_server_times_out_at_the_deadline(sipp_servers):
    host, port = sipp_servers["silent"]
    result, deadline, ended = await probe_one(SipProbeSpec(host=host, port=port), budget=1.0)
    assert result.reason == "sip_timeout"
    assert result.phase == "sip"
    assert not result.alive
    assert deadline <= ended <= deadline + 0.5


# -- socat mutual-TLS front end ---------------------------------------------------------------------------


async def test_socat_mtls_front_end_ok(socat_mtls_sipp, lab_pki):
    result, _, _ = await probe_one(tls_spec(socat_mtls_sipp, mtls(lab_pki)))
    assert_ok(result)
    assert result.tls is not None and result.tls.verified
    assert result.server == EXCHANGE_SERVER_HEADER


async def test_socat_mtls_front_end_without_client_cert_is_rejected(socat_mtls_sipp, lab_pki):
    # socat rejects the missing certificate and closes at once, so our OPTIONS write fails while the TLS 1.3
    # certificate_required alert still waits in the receive queue: the probe must read it and say so.
    for _ in range(5):
        result, _, _ = await probe_one(tls_spec(socat_mtls_sipp, server_auth(lab_pki)))
        assert result.reason == "tls_client_cert_rejected", (result.reason, result.detail)
        assert result.phase == "tls"


# -- several probes at once -----------------------------------------------------------------------------


async def test_concurrent_mtls_probes_all_ok(kamailio_lab, lab_pki):
    spec = tls_spec(kamailio_lab["mtls4"], mtls(lab_pki))
    results: list[ProbeResult] = []

    async def one() -> None:
        results.append((await probe_one(spec))[0])

    with trio.fail_after(HARD_CAP):
        async with trio.open_nursery() as nursery:
            for _ in range(16):
                nursery.start_soon(one)
    assert [r.reason for r in results] == ["ok"] * 16
    assert kamailio_lab.instance.process.is_alive()
