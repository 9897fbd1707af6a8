"""The rest of the failure reasons, each produced by a real peer: what a wrong port, a wrong transport, an
HTTP server, an unreachable host and an unknown name look like to the probe.

Together with test_probe_real_peers.py this covers every value of `Reason` with a real peer (or, for
`dns_error`, the real resolver path).
"""

from __future__ import annotations

import pytest
import trio

from tests.integration.test_probe_real_peers import HARD_CAP, mtls, probe_one, server_auth, tls_spec
from tests.lab.pki import LabPKI
from umprobe.probes.sip_options import SipProbeSpec, probe

pytestmark = pytest.mark.lab


def tcp_spec(address: tuple[str, int]) -> SipProbeSpec:
    host, port = address
    return SipProbeSpec(host=host, port=port, transport="tcp")


async def test_unknown_name_is_dns_error() -> None:
    with trio.fail_after(HARD_CAP):
        results = await probe(tcp_spec(("um01.umprobe-lab.invalid", 5060)), deadline=trio.current_time() + 3)
    (result,) = results
    assert (result.reason, result.phase, result.address) == ("dns_error", "resolve", "")
    assert "um01.umprobe-lab.invalid" in result.detail


async def test_host_unreachable_is_connect_error(remote_unreachable: tuple[str, int]) -> None:
    result, _, _ = await probe_one(tcp_spec(remote_unreachable))
    assert (result.reason, result.phase) == ("connect_error", "connect"), result.detail
    assert "EHOSTUNREACH" in result.detail


async def test_http_server_on_a_sip_port_is_a_protocol_error(http_server: tuple[str, int]) -> None:
    # A real Go HTTP server answers our OPTIONS with "HTTP/1.1 400 Bad Request": not SIP, said at once.
    result, deadline, ended = await probe_one(tcp_spec(http_server))
    assert (result.reason, result.phase) == ("sip_protocol_error", "sip"), result.detail
    assert "bad_start_line" in result.detail
    assert ended < deadline - 1.0, "a non-SIP answer must not wait for the deadline"
    assert any(e.kind == "recv" or "HTTP" in e.text for e in result.transcript)


async def test_plain_sip_to_a_tls_listener_is_connection_closed(kamailio_lab) -> None:  # type: ignore[no-untyped-def]
    # Kamailio's TLS listener reads our plain OPTIONS as a broken ClientHello and hangs up.
    result, deadline, ended = await probe_one(tcp_spec(kamailio_lab["mtls4"]))
    assert (result.reason, result.phase) == ("connection_closed", "sip"), result.detail
    assert ended < deadline - 1.0


async def test_tls_to_a_silent_plain_server_is_a_handshake_timeout(
    sipp_servers,  # type: ignore[no-untyped-def]
    lab_pki: LabPKI,
) -> None:
    # SIPp's never-reply server takes our ClientHello and says nothing: the handshake runs out of time.
    result, deadline, ended = await probe_one(
        tls_spec(sipp_servers["silent"], server_auth(lab_pki)), budget=1.5
    )
    assert (result.reason, result.phase) == ("tls_handshake_timeout", "tls"), result.detail
    assert deadline <= ended < deadline + 0.5
    assert result.timings.tls is not None and result.timings.tls > 1.0


async def test_tls_to_a_plain_kamailio_port_times_out_in_the_handshake(kamailio_lab, lab_pki: LabPKI) -> None:  # type: ignore[no-untyped-def]
    # The most common mistake: TLS to the plain port. Kamailio takes the ClientHello for the start of a SIP
    # message and waits for the rest, so the handshake runs out of time; the detail says what it looks like.
    result, deadline, ended = await probe_one(tls_spec(kamailio_lab["tcp4"], mtls(lab_pki)), budget=1.5)
    assert (result.reason, result.phase) == ("tls_handshake_timeout", "tls"), result.detail
    assert "plain" in result.detail
    assert deadline <= ended < deadline + 0.5
