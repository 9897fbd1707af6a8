"""The peer's `--sip` listeners answer SIP OPTIONS (umprobe's own responder), probed by umprobe's probe."""

from __future__ import annotations

import trio

from tests.peer.conftest import PeerPKI
from tests.peer.helpers import running_peer
from umprobe.net.tls import TLSClientConfig, make_server_context
from umprobe.peer.echo_peer import SipListen
from umprobe.probes.sip_options import SipProbeSpec, probe


async def test_sip_options_over_tcp_and_tls(peer_pki: PeerPKI) -> None:
    server = make_server_context(cert_file=peer_pki.server_crt, key_file=peer_pki.server_key)
    with trio.fail_after(10):
        async with running_peer(sip=(SipListen("tcp", 0), SipListen("tls", 0)), sip_tls=server) as peer:
            listeners = {transport: (host, port) for transport, host, port in peer.sip}
            assert set(listeners) == {"tcp", "tls"}
            host, port = listeners["tcp"]
            [result] = await probe(
                SipProbeSpec(host=host, port=port, transport="tcp", families=("ipv4",)),
                deadline=trio.current_time() + 5,
            )
            assert result.success, result.detail
            assert result.status_code == 200
            host, port = listeners["tls"]
            [result] = await probe(
                SipProbeSpec(
                    host=host,
                    port=port,
                    transport="tls",
                    families=("ipv4",),
                    tls=TLSClientConfig(ca_file=peer_pki.ca_file),
                    server_name="localhost",
                ),
                deadline=trio.current_time() + 5,
            )
            assert result.success, result.detail
            assert result.status_code == 200
            assert peer.sip_stats.requests == 2
