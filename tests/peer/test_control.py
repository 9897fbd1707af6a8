"""The echo peer's control channel on loopback: hello, open, stats, close, session lifetimes and refusals."""

from __future__ import annotations

import ipaddress
import json
import logging
import socket
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import trio

from tests.peer.conftest import PeerPKI
from tests.peer.helpers import (
    LOCAL,
    SECRET,
    ControlClient,
    Hangup,
    MediaSocket,
    free_even_ports,
    running_peer,
    udp_port_free,
    wait_until,
)
from umprobe.errors import UserError
from umprobe.logs import FIELDS_ATTR
from umprobe.media.packet import decode_media
from umprobe.media.rtcp import decode_rtcp
from umprobe.net.tls import TLSClientConfig, make_client_context, make_server_context
from umprobe.peer.echo_peer import BANNER, PeerConfig, SipListen, serve_echo_peer


@contextmanager
def held_udp(port: int, host: str = LOCAL) -> Iterator[socket.socket]:
    """Something else holds `port`: a plain UDP socket bound by the test."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.bind((host, port))
        yield s
    finally:
        s.close()


def all_free(ports: list[int]) -> bool:
    return all(udp_port_free(p) and udp_port_free(p + 1) for p in ports)


async def test_hello() -> None:
    with trio.fail_after(5):
        async with running_peer() as peer:
            client = await ControlClient.connect(peer)
            assert client.banner == BANNER
            assert len(client.peer_nonce) == 32
            other = await ControlClient.connect(peer)
            assert other.peer_nonce != client.peer_nonce  # a fresh nonce per connection
            await client.aclose()
            await other.aclose()


async def test_open_reports_open_in_use_and_refused_ports() -> None:
    with trio.fail_after(10):
        async with running_peer(rtp_range=(20000, 60000)) as peer:
            good, busy, busy_rtcp = free_even_ports(3)
            with held_udp(busy), held_udp(busy_rtcp + 1):
                client = await ControlClient.connect(peer)
                opened = await client.open([good, busy, busy_rtcp, good + 1, 10000, 60002], ttl=5)
                assert opened["ports"] == {
                    "open": [good],
                    "in_use": [busy, busy_rtcp],
                    "refused": [good + 1, 10000, 60002],  # odd, below and above the range
                }
                assert opened["ttl"] == 5
                assert len(str(opened["session"])) == 16
                assert 0 <= client.ssid <= 65535
                # The open port is really bound (RTP and RTCP); the half-bound one was let go again.
                assert not udp_port_free(good)
                assert not udp_port_free(good + 1)
                assert udp_port_free(busy_rtcp)
                await client.aclose()


async def test_ttl_is_capped_and_ports_over_the_limit_are_refused() -> None:
    with trio.fail_after(10):
        async with running_peer(max_ttl=3, max_ports=2) as peer:
            ports = free_even_ports(3)
            client = await ControlClient.connect(peer)
            opened = await client.open(ports, ttl=60, rtcp=False)
            assert opened["ttl"] == 3
            assert opened["ports"] == {"open": ports[:2], "in_use": [], "refused": ports[2:]}
            assert udp_port_free(ports[0] + 1)  # no RTCP socket without rtcp
            await client.aclose()


async def test_reflection_end_to_end_and_stats() -> None:
    with trio.fail_after(10):
        async with running_peer() as peer:
            p, q = free_even_ports(2)
            client = await ControlClient.connect(peer)
            await client.open([p, q])
            sock = await MediaSocket.bind()
            for seq in range(5):
                await sock.send(client.media(seq), p)
            await sock.send(client.media(5), q)
            await sock.send(client.rtcp(1), p + 1)
            replies = await sock.drain()
            assert len(replies) == 7
            media = [
                decode_media(client.key, r, expected_ssid=client.ssid)[1] for r in replies if len(r) == 172
            ]
            assert sorted(m.sender_seq for m in media) == [0, 1, 2, 3, 4, 5]
            assert sorted(m.seq for m in media) == [0, 1, 2, 3, 4, 5]  # the reflector's own counter
            rtcp = [decode_rtcp(client.key, r, expected_ssid=client.ssid) for r in replies if len(r) != 172]
            assert [r.seq for r in rtcp] == [1]
            stats = await client.stats()
            assert stats["ports"] == {
                str(p): {"rx": 5, "tx": 5, "rtcp_rx": 1, "rtcp_tx": 1},
                str(q): {"rx": 1, "tx": 1, "rtcp_rx": 0, "rtcp_tx": 0},
            }
            assert stats["dropped"] == dict.fromkeys(
                ("auth", "replay", "rate", "session", "size", "source"), 0
            )
            assert sock.received_bytes == sock.sent_bytes
            sock.close()
            await client.aclose()


async def test_stats_of_many_ports_fit_one_line_and_the_rest_can_be_asked_for() -> None:
    with trio.fail_after(20):
        async with running_peer() as peer:
            ports = free_even_ports(120)
            client = await ControlClient.connect(peer)
            opened = await client.open(ports, rtcp=False)
            assert sorted(opened["ports"]["open"]) == sorted(ports)
            first = await client.stats()  # one line is at most 4096 bytes (the client's LineBuffer checks)
            truncated = first["truncated"]
            assert truncated > 0
            assert len(first["ports"]) + truncated == len(ports)
            assert list(first["ports"]) == [str(p) for p in sorted(ports)[: len(first["ports"])]]
            seen = dict(first["ports"])
            while len(seen) < len(ports):
                rest = [p for p in ports if str(p) not in seen]
                await client.send({"type": "stats", "ports": rest})
                answer = await client.receive()
                page = answer["ports"]
                assert isinstance(page, dict)
                assert page
                seen.update(page)
            assert set(seen) == {str(p) for p in ports}
            # A subset that fits has no "truncated"; unknown ports are left out.
            await client.send({"type": "stats", "ports": [ports[0], 1024]})
            answer = await client.receive()
            assert list(answer["ports"]) == [str(ports[0])]  # type: ignore[call-overload]
            assert "truncated" not in answer
            await client.aclose()


async def test_close_releases_the_sockets_before_the_connection_ends() -> None:
    with trio.fail_after(10):
        async with running_peer() as peer:
            ports = free_even_ports(3)
            client = await ControlClient.connect(peer)
            await client.open(ports)
            assert not any(udp_port_free(p) for p in ports)
            await client.close()
            await client.expect_hangup()
            # No waiting: the peer closed every socket before it closed the connection.
            for p in ports:
                with held_udp(p), held_udp(p + 1):
                    pass
            assert peer.reflector.session_count == 0
            assert peer.counters.sessions_closed == 1


async def test_eof_releases_the_sockets() -> None:
    with trio.fail_after(10):
        async with running_peer() as peer:
            ports = free_even_ports(2)
            client = await ControlClient.connect(peer)
            await client.open(ports)
            await client.aclose()
            await wait_until(lambda: peer.reflector.session_count == 0)
            assert all_free(ports)


async def test_ttl_expiry_releases_the_sockets_and_stats_stay_available() -> None:
    with trio.fail_after(10):
        async with running_peer(idle_timeout=2.0) as peer:
            (p,) = free_even_ports(1)
            client = await ControlClient.connect(peer)
            await client.open([p], ttl=1)
            sock = await MediaSocket.bind()
            await sock.send(client.media(0), p)
            assert len(await sock.drain(0.1)) == 1
            await wait_until(lambda: peer.reflector.session_count == 0)
            assert all_free([p])
            # Counters outlive the sockets for the grace period, so a prober can still fetch them.
            stats = await client.stats()
            assert stats["ports"] == {str(p): {"rx": 1, "tx": 1, "rtcp_rx": 0, "rtcp_tx": 0}}
            # ... and after the grace period the peer hangs up.
            await client.expect_hangup()
            sock.close()


async def test_bad_mac_ends_the_connection_without_an_answer() -> None:
    with trio.fail_after(5):
        async with running_peer() as peer:
            ports = free_even_ports(1)
            client = await ControlClient.connect(peer, secret=b"not the peer's secret at all!!")
            await client.send(
                {"type": "open", "client_nonce": client.client_nonce, "ports": ports, "rtcp": True, "ttl": 5}
            )
            await client.expect_hangup()
            assert peer.counters.auth_failures == 1
            assert peer.reflector.session_count == 0
            assert all_free(ports)


async def test_tampered_message_in_a_session_ends_it() -> None:
    with trio.fail_after(5):
        async with running_peer() as peer:
            ports = free_even_ports(1)
            client = await ControlClient.connect(peer)
            await client.open(ports)
            line = client.signer.seal({"type": "stats"})
            message = json.loads(line)
            message["type"] = "close"  # the MAC was for "stats"
            await client.stream.send_all(json.dumps(message).encode() + b"\n")
            await client.expect_hangup()
            assert peer.counters.auth_failures == 1
            await wait_until(lambda: peer.reflector.session_count == 0)
            assert all_free(ports)


async def test_replayed_control_line_is_a_bad_mac() -> None:
    with trio.fail_after(5):
        async with running_peer() as peer:
            client = await ControlClient.connect(peer)
            await client.open(free_even_ports(1))
            line = client.signer.seal({"type": "stats"})
            await client.stream.send_all(line)
            assert (await client.receive())["type"] == "stats"
            await client.stream.send_all(line)  # the same line again: counter 1 expected, MAC for 0
            await client.expect_hangup()
            assert peer.counters.auth_failures == 1


async def test_oversize_line_ends_the_connection() -> None:
    with trio.fail_after(5):
        async with running_peer() as peer:
            client = await ControlClient.connect(peer)
            await client.stream.send_all(b"{" + b" " * 5000)
            await client.expect_hangup()
            assert peer.counters.bad_lines == 1


async def test_not_json_ends_the_connection() -> None:
    with trio.fail_after(5):
        async with running_peer() as peer:
            client = await ControlClient.connect(peer)
            await client.stream.send_all(b"OPTIONS sip:peer SIP/2.0\r\n")
            await client.expect_hangup()
            assert peer.counters.bad_lines == 1


async def test_first_message_must_be_open() -> None:
    with trio.fail_after(5):
        async with running_peer() as peer:
            client = await ControlClient.connect(peer)
            await client.send({"type": "stats", "client_nonce": client.client_nonce})
            await client.expect_hangup()
            assert peer.counters.protocol_errors == 1


async def test_unknown_message_in_a_session_ends_it() -> None:
    with trio.fail_after(5):
        async with running_peer() as peer:
            ports = free_even_ports(1)
            client = await ControlClient.connect(peer)
            await client.open(ports)
            await client.send(
                {"type": "open", "client_nonce": client.client_nonce, "ports": ports, "rtcp": True, "ttl": 5}
            )
            await client.expect_hangup()
            assert peer.counters.protocol_errors == 1
            await wait_until(lambda: peer.reflector.session_count == 0)


async def test_silent_client_is_dropped_after_the_idle_timeout() -> None:
    with trio.fail_after(5):
        async with running_peer(idle_timeout=0.3) as peer:
            client = await ControlClient.connect(peer)
            await client.expect_hangup()
            assert peer.counters.idle_timeouts == 1


async def test_max_sessions() -> None:
    with trio.fail_after(10):
        async with running_peer(max_sessions=1) as peer:
            first = await ControlClient.connect(peer)
            await first.open(free_even_ports(1))
            second = await ControlClient.connect(peer)
            await second.send(
                {
                    "type": "open",
                    "client_nonce": second.client_nonce,
                    "ports": free_even_ports(1),
                    "rtcp": True,
                    "ttl": 5,
                }
            )
            await second.expect_hangup()
            assert peer.counters.refused_sessions == 1
            await first.close()
            await first.expect_hangup()
            third = await ControlClient.connect(peer)
            await third.open(free_even_ports(1))
            assert peer.counters.sessions_opened == 2
            await third.aclose()


@pytest.mark.parametrize(("allow", "admitted"), [("10.0.0.0/8", False), ("127.0.0.0/8", True)])
async def test_allowlist(allow: str, admitted: bool) -> None:
    with trio.fail_after(5):
        async with running_peer(allow=(ipaddress.ip_network(allow),)) as peer:
            if admitted:
                client = await ControlClient.connect(peer)
                await client.open(free_even_ports(1))
                await client.aclose()
                assert peer.counters.refused_allow == 0
            else:
                with pytest.raises(Hangup):  # closed before the hello: not a byte sent
                    await ControlClient.connect(peer)
                assert peer.counters.refused_allow == 1


async def test_connection_cap() -> None:
    with trio.fail_after(5):
        async with running_peer(max_connections=1) as peer:
            first = await ControlClient.connect(peer)
            with pytest.raises(Hangup):
                await ControlClient.connect(peer)
            assert peer.counters.refused_busy == 1
            await first.aclose()


async def test_tls_control_channel_with_client_certificates(peer_pki: PeerPKI) -> None:
    server = make_server_context(
        cert_file=peer_pki.server_crt,
        key_file=peer_pki.server_key,
        ca_file=peer_pki.ca_file,
        require_client_cert=True,
    )
    with_cert = make_client_context(
        TLSClientConfig(ca_file=peer_pki.ca_file, cert_file=peer_pki.client_crt, key_file=peer_pki.client_key)
    )
    without_cert = make_client_context(TLSClientConfig(ca_file=peer_pki.ca_file))
    with trio.fail_after(10):
        async with running_peer(control_tls=server) as peer:
            ports = free_even_ports(1)
            client = await ControlClient.connect(peer, tls=with_cert)
            await client.open(ports)
            sock = await MediaSocket.bind()
            await sock.send(client.media(0), ports[0])
            assert len(await sock.drain(0.1)) == 1
            sock.close()
            await client.close()
            await client.expect_hangup()
            with pytest.raises(Exception):  # noqa: B017 - the handshake or the first read fails
                await ControlClient.connect(peer, tls=without_cert)
            await wait_until(lambda: peer.counters.tls_failures == 1)


def _have_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


async def test_ipv6_control_and_media() -> None:
    # The peer must work over IPv6; the lab (and CI) has ::1. A host without it fails here, loudly.
    assert _have_ipv6_loopback(), "this host has no IPv6 loopback (::1): the IPv6 tests need it"
    with trio.fail_after(5):
        async with running_peer(listen_host="::1") as peer:
            assert peer.control[0][0] == "::1"
            client = await ControlClient.connect(peer)
            (p,) = free_even_ports(1)
            opened = await client.open([p])
            assert opened["ports"]["open"] == [p]  # bound on ::1, the control connection's local address
            sock = await MediaSocket.bind("::1")
            await sock.send(client.media(0), p, "::1")
            await sock.send(client.rtcp(0), p + 1, "::1")
            assert len(await sock.drain(0.2)) == 2
            sock.close()
            await client.aclose()


async def test_media_host_is_honoured() -> None:
    with trio.fail_after(5):
        async with running_peer(media_host="127.0.0.1", listen_host="127.0.0.1") as peer:
            (p,) = free_even_ports(1)
            client = await ControlClient.connect(peer)
            opened = await client.open([p])
            assert opened["ports"]["open"] == [p]
            assert udp_port_free(p, "127.0.0.2")  # bound to 127.0.0.1 only
            await client.aclose()


async def test_control_port_in_use_is_a_user_error() -> None:
    with trio.fail_after(5):
        holder = socket.socket()
        holder.bind((LOCAL, 0))
        holder.listen()
        try:
            port = holder.getsockname()[1]
            config = PeerConfig(secret=SECRET, listen_host=LOCAL, listen_port=port)
            with pytest.raises(UserError, match=rf"cannot listen for control on 127\.0\.0\.1:{port}"):
                await serve_echo_peer(config)
        finally:
            holder.close()


async def test_sip_port_in_use_is_a_user_error_and_releases_the_control_port() -> None:
    with trio.fail_after(5):
        holder = socket.socket()
        holder.bind((LOCAL, 0))
        holder.listen()
        try:
            port = holder.getsockname()[1]
            config = PeerConfig(
                secret=SECRET, listen_host=LOCAL, listen_port=0, sip=(SipListen("tcp", port),)
            )
            with pytest.raises(UserError, match="SIP tcp"):
                await serve_echo_peer(config)
        finally:
            holder.close()


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="at least 16 bytes"):
        PeerConfig(secret=b"short")
    with pytest.raises(ValueError, match="lo must not exceed hi"):
        PeerConfig(secret=SECRET, rtp_range=(30000, 20000))
    with pytest.raises(ValueError, match="1024"):
        PeerConfig(secret=SECRET, rtp_range=(80, 20000))
    with pytest.raises(ValueError, match="not an IP address"):
        PeerConfig(secret=SECRET, media_host="peer.example")
    with pytest.raises(ValueError, match="sip_tls"):
        PeerConfig(secret=SECRET, sip=(SipListen("tls", 5061),))


async def test_session_logs_say_why_it_ended(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="umprobe.peer")
    with trio.fail_after(10):
        async with running_peer(idle_timeout=0.5) as peer:
            closing = await ControlClient.connect(peer)
            await closing.open(free_even_ports(1))
            await closing.close()
            await closing.expect_hangup()
            leaving = await ControlClient.connect(peer)
            await leaving.open(free_even_ports(1))
            await leaving.aclose()
            await wait_until(lambda: peer.counters.sessions_closed == 2)
            expiring = await ControlClient.connect(peer)
            await expiring.open(free_even_ports(1), ttl=1)
            await expiring.expect_hangup()  # ttl, then the grace period
    closed = [r for r in caplog.records if r.getMessage() == "session closed"]
    assert [getattr(r, FIELDS_ATTR)["why"] for r in closed] == ["close", "eof", "ttl"]
    opened = [getattr(r, FIELDS_ATTR) for r in caplog.records if r.getMessage() == "session opened"]
    assert [o["open"] for o in opened] == [1, 1, 1]
