"""The reflector's admission logic, sans-I/O, with a fake clock: every drop reason, the replay window, the
token buckets' exact allowance, and "a reply is never larger than its request"."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.peer.helpers import SECRET, media_packet, rtcp_packet
from umprobe.media.ntp import ntp_from_unix
from umprobe.media.packet import MEDIA_PACKET_SIZE, decode_media, session_key
from umprobe.media.rtcp import decode_rtcp, encode_rtcp
from umprobe.media.rtp import RtpHeader
from umprobe.peer.reflector import (
    DropReason,
    Reflector,
    ReplayWindow,
    TokenBucket,
    normalise_ip,
)

T0 = 1_700_000_000.0
KEY = session_key(SECRET, "a" * 32, "b" * 32)
OTHER_KEY = session_key(SECRET, "a" * 32, "c" * 32)
SSID = 4242
CLIENT = "192.0.2.10"
SRC = (CLIENT, 40000)
P = 20000  # RTP port; RTCP on P + 1
Q = 20002


def make(**kwargs: object) -> Reflector:
    reflector = Reflector(now=T0, **kwargs)  # type: ignore[arg-type]
    reflector.add_session("s1", key=KEY, ssid=SSID, client=CLIENT, rtp_ports=[P, Q], rtcp=True, now=T0)
    return reflector


def media(seq: int, *, t1: float = T0, key: bytes = KEY, ssid: int = SSID) -> bytes:
    return media_packet(key, ssid, seq, t1=t1)


def rtcp(seq: int, *, t1: float = T0, key: bytes = KEY, ssid: int = SSID) -> bytes:
    return rtcp_packet(key, ssid, seq, t1=t1)


def only(reflector: Reflector, **expected: int) -> None:
    """The global drop counters are exactly `expected` (others zero)."""
    assert {str(k): v for k, v in reflector.dropped.items() if v} == expected


# ---------------------------------------------------------------------------------------------------------
# Answers


def test_media_reply_is_the_stamp_reflection_of_the_request() -> None:
    r = make()
    request = media(7, t1=T0 - 0.25)
    reply = r.handle(request, SRC, P, T0)
    assert reply is not None
    assert len(reply) == len(request) == MEDIA_PACKET_SIZE
    header, block = decode_media(KEY, reply, expected_ssid=SSID)
    assert header == RtpHeader.decode(request)  # same SSRC, sequence, timestamp, marker
    assert block.seq == 0  # the reflector's own counter
    assert block.sender_seq == 7
    assert block.sender_timestamp == ntp_from_unix(T0 - 0.25)
    assert block.receive_timestamp == ntp_from_unix(T0)
    assert block.timestamp == ntp_from_unix(T0)  # T3 = now without a transmit clock
    assert block.sender_ttl == 255
    assert r.handle(media(8), SRC, P, T0) is not None
    third = r.handle(media(9), SRC, Q, T0)
    assert third is not None
    assert decode_media(KEY, third)[1].seq == 2  # one counter per session, across ports
    stats = r.session_stats("s1")
    assert stats.ports[P].rx == stats.ports[P].tx == 2
    assert stats.ports[Q].rx == stats.ports[Q].tx == 1
    only(r)


def test_transmit_clock_stamps_t3() -> None:
    r = make(transmit_clock=lambda: T0 + 0.001)
    reply = r.handle(media(1), SRC, P, T0)
    assert reply is not None
    block = decode_media(KEY, reply)[1]
    assert block.receive_timestamp == ntp_from_unix(T0)
    assert block.timestamp == ntp_from_unix(T0 + 0.001)


def test_rtcp_reply_has_the_same_length_and_our_ssrc() -> None:
    r = make()
    request = rtcp(3)
    reply = r.handle(request, SRC, P + 1, T0)
    assert reply is not None
    assert len(reply) == len(request)
    answer = decode_rtcp(KEY, reply, expected_ssid=SSID)
    assert answer.seq == 3
    assert answer.ssrc != 0x5EED
    assert answer.timestamp == ntp_from_unix(T0)
    stats = r.session_stats("s1")
    assert (stats.ports[P].rtcp_rx, stats.ports[P].rtcp_tx, stats.ports[P].rx) == (1, 1, 0)


def test_a_longer_rtcp_request_gets_a_padded_reply_of_equal_length() -> None:
    r = make()
    request = encode_rtcp(KEY, ssrc=1, ssid=SSID, seq=1, timestamp=ntp_from_unix(T0), cname="x" * 60)
    reply = r.handle(request, SRC, P + 1, T0)
    assert reply is not None
    assert len(reply) == len(request)


def test_an_rtcp_request_shorter_than_our_reply_is_dropped_not_answered_longer() -> None:
    r = make()
    request = encode_rtcp(KEY, ssrc=1, ssid=SSID, seq=1, timestamp=ntp_from_unix(T0), cname="u")
    assert r.handle(request, SRC, P + 1, T0) is None
    only(r, size=1)
    assert r.session_stats("s1").ports[P].rtcp_tx == 0


def test_ipv4_mapped_source_is_the_same_client() -> None:
    r = make()
    assert r.handle(media(1), ("::ffff:192.0.2.10", 5000, 0, 0), P, T0) is not None


def test_no_rtcp_sockets_without_rtcp() -> None:
    r = Reflector(now=T0)
    r.add_session("s", key=KEY, ssid=SSID, client=CLIENT, rtp_ports=[P], rtcp=False, now=T0)
    assert r.port_taken(P)
    assert not r.port_taken(P + 1)
    assert r.handle(rtcp(1), SRC, P + 1, T0) is None
    only(r, session=1)


# ---------------------------------------------------------------------------------------------------------
# Drops, one reason at a time


@pytest.mark.parametrize(
    ("packet", "port", "reason"),
    [
        (media(1, key=OTHER_KEY), P, "auth"),
        (media(1)[:100] + bytes([media(1)[100] ^ 1]) + media(1)[101:], P, "auth"),
        (b"\x00" * MEDIA_PACKET_SIZE, P, "auth"),
        (rtcp(1, key=OTHER_KEY), P + 1, "auth"),
        (media(1, ssid=SSID + 1), P, "session"),
        (rtcp(1, ssid=SSID + 1), P + 1, "session"),
        (media(1)[:-1], P, "size"),
        (media(1) + b"\xff", P, "size"),
        (b"", P, "size"),
        (b"\x80" * 2048, P, "size"),
        (rtcp(1)[:40], P + 1, "size"),
        (rtcp(1) + b"\x00" * 600, P + 1, "size"),
        (media(1), P + 1, "auth"),  # a media packet on the RTCP port is not an RTCP probe
        (media(1, t1=T0 - 10.5), P, "replay"),  # older than the clock-skew limit
        (media(1, t1=T0 + 10.5), P, "replay"),  # from the future
    ],
    ids=[
        "wrong-key",
        "flipped-bit",
        "zeros",
        "rtcp-wrong-key",
        "other-ssid",
        "rtcp-other-ssid",
        "171-bytes",
        "173-bytes",
        "empty",
        "2048-bytes",
        "rtcp-short",
        "rtcp-long",
        "media-on-rtcp-port",
        "stale",
        "future",
    ],
)
def test_drop(packet: bytes, port: int, reason: str) -> None:
    r = make()
    assert r.handle(packet, SRC, port, T0) is None
    only(r, **{reason: 1})
    assert r.session_stats("s1").dropped[DropReason(reason)] == 1
    assert r.replies == 0
    counters = r.session_stats("s1").ports[P]
    assert (counters.rx, counters.rtcp_rx) == (0, 0)


def test_third_party_source_is_dropped_even_with_a_valid_packet() -> None:
    r = make()
    assert r.handle(media(1), ("192.0.2.99", 40000), P, T0) is None
    assert r.handle(media(1), ("not an address", 1), P, T0) is None
    assert r.handle(media(1), (), P, T0) is None
    only(r, source=3)
    assert r.handle(media(1), SRC, P, T0) is not None  # the window did not see seq 1


def test_port_without_a_session() -> None:
    r = make()
    assert r.handle(media(1), SRC, 30000, T0) is None
    only(r, session=1)
    assert all(n == 0 for n in r.session_stats("s1").dropped.values())  # not attributable


def test_closed_session_answers_nothing() -> None:
    r = make()
    assert r.handle(media(1), SRC, P, T0) is not None
    final = r.remove_session("s1")
    assert final is not None
    assert final.ports[P].tx == 1
    assert r.handle(media(2), SRC, P, T0) is None
    assert r.handle(rtcp(2), SRC, P + 1, T0) is None
    only(r, session=2)
    assert not r.port_taken(P)
    assert r.session_count == 0
    assert r.remove_session("s1") is None


def test_no_clock_check_keeps_the_window() -> None:
    r = make(max_clock_skew=None)
    assert r.handle(media(1, t1=T0 - 3600), SRC, P, T0) is not None
    assert r.handle(media(1, t1=T0 - 3600), SRC, P, T0) is None
    only(r, replay=1)


# ---------------------------------------------------------------------------------------------------------
# Replay window


def test_same_packet_twice_gets_one_reply() -> None:
    r = make()
    packet = media(5)
    assert r.handle(packet, SRC, P, T0) is not None
    assert r.handle(packet, SRC, P, T0 + 0.01) is None
    assert r.handle(rtcp(5), SRC, P + 1, T0) is not None
    assert r.handle(rtcp(5), SRC, P + 1, T0) is None
    only(r, replay=2)
    assert r.session_stats("s1").ports[P].rx == 1


def test_the_window_is_per_port() -> None:
    r = make()
    assert r.handle(media(5), SRC, P, T0) is not None
    assert r.handle(media(5), SRC, Q, T0) is not None


def test_window_accepts_reordering_within_1024_and_refuses_older() -> None:
    r = make()
    assert r.handle(media(3000), SRC, P, T0) is not None
    assert r.handle(media(3000 - 1023), SRC, P, T0) is not None  # the oldest still in the window
    assert r.handle(media(3000 - 1024), SRC, P, T0) is None  # just out of it
    assert r.handle(media(2500), SRC, P, T0) is not None
    assert r.handle(media(2500), SRC, P, T0) is None
    only(r, replay=2)


def test_replay_window_unit() -> None:
    w = ReplayWindow(8, bits=32)
    assert [w.accept(s) for s in (10, 10, 9, 3, 2, 11, 9, 20, 12, 13)] == [
        True,
        False,
        True,
        True,
        False,  # 10 - 2 = 8: outside an 8-wide window
        True,
        False,
        True,  # a jump ahead slides the window
        False,  # 20 - 12 = 8
        True,
    ]


def test_replay_window_wraps_with_serial_arithmetic() -> None:
    w = ReplayWindow(1024, bits=16)
    assert w.accept(65535)
    assert w.accept(0)
    assert w.accept(1)
    assert not w.accept(65535)
    assert w.accept(65534)
    big = ReplayWindow(1024, bits=32)
    assert big.accept(0xFFFFFFFF)
    assert big.accept(0)
    assert not big.accept(0xFFFFFFFF)


def test_replay_window_far_jump_resets_the_mask() -> None:
    w = ReplayWindow(4, bits=32)
    assert w.accept(1)
    assert w.accept(1000)
    assert not w.accept(1)
    assert w.accept(999)


# ---------------------------------------------------------------------------------------------------------
# Token buckets: the allowance is exact with a fake clock


def test_per_source_bucket_allows_capacity_then_rate() -> None:
    r = make(rate_per_source=10, rate_global=1000, burst_seconds=1.0)
    replies = sum(r.handle(media(i), SRC, P, T0) is not None for i in range(50))
    assert replies == 10 == r.allowance(10, 0)
    only(r, rate=40)
    # Half a second later: 5 more tokens.
    replies = sum(r.handle(media(i), SRC, P, T0 + 0.5) is not None for i in range(100, 150))
    assert replies == 5
    assert r.replies == r.allowance(10, 0.5) == 15
    # rx counts every authenticated fresh packet, answered or not: forward loss stays honest.
    assert r.session_stats("s1").ports[P].rx == 100


def test_flood_within_a_second_gets_at_most_the_allowance() -> None:
    rate, burst = 200.0, 0.5
    r = make(rate_per_source=rate, rate_global=10_000, burst_seconds=burst)
    sent = 5000
    for i in range(sent):
        r.handle(media(i), SRC, P, T0 + i / sent)  # 5,000 packets spread over one second
    allowance = r.allowance(rate, 1.0)
    assert allowance == int(rate * burst + rate * 1.0) == 300
    assert r.replies <= allowance
    assert r.replies >= allowance - 1  # and the bucket does let that much through
    assert r.dropped[DropReason.RATE] == sent - r.replies


def test_global_bucket_holds_with_two_sources() -> None:
    r = Reflector(rate_per_source=100, rate_global=20, burst_seconds=1.0, now=T0)
    r.add_session("a", key=KEY, ssid=1, client="192.0.2.1", rtp_ports=[P], rtcp=False, now=T0)
    r.add_session("b", key=OTHER_KEY, ssid=2, client="192.0.2.2", rtp_ports=[Q], rtcp=False, now=T0)
    answered = {"a": 0, "b": 0}
    for i in range(100):
        if r.handle(media_packet(KEY, 1, i, t1=T0), ("192.0.2.1", 1), P, T0) is not None:
            answered["a"] += 1
        if r.handle(media_packet(OTHER_KEY, 2, i, t1=T0), ("192.0.2.2", 1), Q, T0) is not None:
            answered["b"] += 1
    assert answered["a"] + answered["b"] == 20 == r.allowance(20, 0)
    assert answered["a"] == answered["b"] == 10  # interleaved: both got a share
    assert r.session_stats("a").dropped[DropReason.RATE] == 90


def test_a_source_out_of_tokens_does_not_spend_global_tokens() -> None:
    r = Reflector(rate_per_source=5, rate_global=10, burst_seconds=1.0, now=T0)
    r.add_session("a", key=KEY, ssid=1, client="192.0.2.1", rtp_ports=[P], rtcp=False, now=T0)
    r.add_session("b", key=OTHER_KEY, ssid=2, client="192.0.2.2", rtp_ports=[Q], rtcp=False, now=T0)
    a = sum(r.handle(media_packet(KEY, 1, i, t1=T0), ("192.0.2.1", 1), P, T0) is not None for i in range(50))
    b = sum(
        r.handle(media_packet(OTHER_KEY, 2, i, t1=T0), ("192.0.2.2", 1), Q, T0) is not None for i in range(50)
    )
    assert (a, b) == (5, 5)


def test_reopening_a_session_does_not_refill_the_bucket() -> None:
    r = make(rate_per_source=10, rate_global=1000)
    assert sum(r.handle(media(i), SRC, P, T0) is not None for i in range(20)) == 10
    r.remove_session("s1")
    r.add_session("s2", key=KEY, ssid=SSID, client=CLIENT, rtp_ports=[P], rtcp=False, now=T0 + 0.15)
    assert sum(r.handle(media(i), SRC, P, T0 + 0.15) is not None for i in range(100, 120)) == 1  # 1.5 tokens
    # Once a bucket has refilled, a client without sessions is forgotten (a new bucket would be the same).
    r.remove_session("s2")
    r.add_session("s3", key=OTHER_KEY, ssid=1, client="192.0.2.77", rtp_ports=[Q], rtcp=False, now=T0 + 5)
    assert normalise_ip(CLIENT) not in r._sources


def test_token_bucket_ignores_a_clock_stepping_back() -> None:
    bucket = TokenBucket(rate=10, capacity=2, now=100.0)
    assert bucket.take(100.0)
    assert bucket.take(100.0)
    assert not bucket.take(100.0)
    assert not bucket.take(50.0)  # stepped back 50 s: no refill for the step
    assert not bucket.take(50.05)
    assert bucket.take(50.15)  # then one token per 0.1 s from the new reading
    assert not bucket.take(50.15)
    with pytest.raises(ValueError, match="rate"):
        TokenBucket(rate=0, capacity=1, now=0)


# ---------------------------------------------------------------------------------------------------------
# Bookkeeping


def test_every_drop_is_counted_by_reason_in_session_and_global_counters() -> None:
    r = make()
    r.handle(media(1, key=OTHER_KEY), SRC, P, T0)  # auth
    r.handle(media(1), SRC, P, T0)  # answered
    r.handle(media(1), SRC, P, T0)  # replay
    r.handle(media(2), ("192.0.2.200", 1), P, T0)  # source
    r.handle(b"x" * 10, SRC, P, T0)  # size
    r.handle(media(3), SRC, 31000, T0)  # session (global only)
    r.count(P, DropReason.SIZE)  # a datagram too long for the receive buffer (Windows)
    only(r, auth=1, replay=1, source=1, size=2, session=1)
    message = r.session_stats("s1").as_message()
    assert message["dropped"] == {"auth": 1, "replay": 1, "rate": 0, "session": 0, "size": 2, "source": 1}
    assert message["ports"] == {
        str(P): {"rx": 1, "tx": 1, "rtcp_rx": 0, "rtcp_tx": 0},
        str(Q): {"rx": 0, "tx": 0, "rtcp_rx": 0, "rtcp_tx": 0},
    }


def test_unsent_takes_the_reply_back() -> None:
    r = make()
    reply = r.handle(media(1), SRC, P, T0)
    assert reply is not None
    r.unsent(P, len(reply))
    assert r.session_stats("s1").ports[P].tx == 0
    assert (r.replies, r.unsent_replies, r.bytes_out) == (0, 1, 0)


def test_sessions_cannot_share_ports() -> None:
    r = make()
    with pytest.raises(ValueError, match="already belong"):
        r.add_session("s2", key=KEY, ssid=1, client=CLIENT, rtp_ports=[Q + 2, P], rtcp=False, now=T0)
    with pytest.raises(ValueError, match="already belong"):
        r.add_session("s2", key=KEY, ssid=1, client=CLIENT, rtp_ports=[P - 1], rtcp=True, now=T0)
    with pytest.raises(ValueError, match="already open"):
        r.add_session("s1", key=KEY, ssid=1, client=CLIENT, rtp_ports=[40000], rtcp=True, now=T0)
    with pytest.raises(ValueError, match="not an IP"):
        r.add_session("s3", key=KEY, ssid=1, client="peer.example", rtp_ports=[40000], rtcp=True, now=T0)


@settings(max_examples=300, deadline=None)
@given(
    data=st.binary(max_size=700),
    flips=st.lists(st.tuples(st.integers(0, MEDIA_PACKET_SIZE - 1), st.integers(1, 255)), max_size=4),
    port=st.sampled_from([P, P + 1, Q, 30000]),
)
def test_nothing_but_a_valid_packet_gets_a_reply_and_none_is_longer(
    data: bytes, flips: list[tuple[int, int]], port: int
) -> None:
    r = make()
    original = media(1)
    mutated = bytearray(original)
    for index, xor in flips:
        mutated[index] ^= xor
    for packet in (data, bytes(mutated)):
        reply = r.handle(packet, SRC, port, T0)
        if reply is not None:
            assert len(reply) <= len(packet)
            # Only the authenticated octets unchanged (the 0xFF padding is not authenticated) gets a reply.
            assert port in (P, Q)
            assert packet[:124] == original[:124]
    assert r.bytes_out <= r.bytes_in


def test_normalise_ip() -> None:
    assert normalise_ip("192.0.2.1") == ipaddress.ip_address("192.0.2.1")
    assert normalise_ip("::ffff:192.0.2.1") == ipaddress.ip_address("192.0.2.1")
    assert normalise_ip("fe80::1%eth0") == ipaddress.ip_address("fe80::1")
    assert normalise_ip("2001:db8::1") == ipaddress.ip_address("2001:db8::1")
    assert normalise_ip("peer.example") is None
    assert normalise_ip("") is None
