"""Tests for umprobe.media.rtcp: the compound RTCP probe (RFC 3550 §6.1, §6.4.2, §6.5, §6.7; docs/rtp.md)."""

from __future__ import annotations

import hashlib
import hmac
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from umprobe.media import (
    MIN_RTCP_SIZE,
    MediaError,
    RtcpProbe,
    decode_rtcp,
    default_cname,
    encode_rtcp,
    reflect_rtcp,
    session_key,
)

KEY = session_key(b"0123456789abcdef-shared-secret", "0" * 32, "1" * 32)
OTHER_KEY = session_key(b"0123456789abcdef-shared-secret", "0" * 32, "2" * 32)


def mac(covered: bytes, key: bytes = KEY) -> bytes:
    return hmac.new(key, covered, hashlib.sha256).digest()[:16]


def split_compound(data: bytes) -> list[tuple[int, int, int, bytes]]:
    """Independent RFC 3550 §6.4.1 walk: [(first octet, PT, length field, whole packet bytes)]."""
    packets = []
    offset = 0
    while offset < len(data):
        first, pt, length = struct.unpack_from(">BBH", data, offset)
        size = (length + 1) * 4
        packets.append((first, pt, length, data[offset : offset + size]))
        offset += size
    assert offset == len(data), "lengths must tile the compound exactly"
    return packets


def app_packet(ssrc: int, ssid: int, seq: int, ts: int, covered_before: bytes, key: bytes = KEY) -> bytes:
    head = struct.pack(">BBHI4sHHQ", 0x80, 204, 9, ssrc, b"UMPB", ssid, seq, ts)
    return head + mac(covered_before + head, key)


def code_of(data: bytes, key: bytes = KEY, **kwargs: object) -> str:
    with pytest.raises(MediaError) as info:
        decode_rtcp(key, data, **kwargs)  # type: ignore[arg-type]
    return info.value.code


def test_compound_field_by_field() -> None:
    data = encode_rtcp(
        KEY, ssrc=0xCAFEF00D, ssid=4242, seq=0x0102, timestamp=0x1122334455667788, cname="umprobe@4242"
    )
    assert len(data) % 4 == 0
    packets = split_compound(data)
    assert [pt for _, pt, _, _ in packets] == [201, 202, 204]  # RR, SDES, APP
    for first, _, _, _ in packets:
        assert first >> 6 == 2  # version 2
        assert first & 0x20 == 0  # no padding anywhere

    first, _, length, rr = packets[0]
    assert first & 0x1F == 0  # RC=0
    assert length == 1 and len(rr) == 8  # 2 words - 1
    assert rr[4:8] == bytes.fromhex("cafef00d")

    first, _, length, sdes = packets[1]
    assert first & 0x1F == 1  # SC=1
    assert sdes[4:8] == bytes.fromhex("cafef00d")  # chunk SSRC
    assert sdes[8] == 1  # CNAME
    assert sdes[9] == len(b"umprobe@4242") == 12
    assert sdes[10:22] == b"umprobe@4242"
    # The item list ends with a null octet, then nulls to the 32-bit boundary: 4+2+12 = 18 -> 20 bytes.
    assert sdes[22:] == b"\x00\x00"
    assert len(sdes) == 24 and length == 5

    first, _, length, app = packets[2]
    assert first & 0x1F == 0  # subtype 0
    assert length == 9 and len(app) == 40
    assert app[4:8] == bytes.fromhex("cafef00d")
    assert app[8:12] == b"UMPB"
    assert app[12:14] == (4242).to_bytes(2, "big")
    assert app[14:16] == bytes.fromhex("0102")
    assert app[16:24] == bytes.fromhex("1122334455667788")
    assert app[24:40] == mac(data[:-16])  # HMAC over every preceding octet of the compound

    assert decode_rtcp(KEY, data, expected_ssid=4242) == RtcpProbe(
        ssrc=0xCAFEF00D, ssid=4242, seq=0x0102, timestamp=0x1122334455667788
    )


@pytest.mark.parametrize("length", range(1, 12))
def test_sdes_padding_for_every_cname_length(length: int) -> None:
    cname = "c" * length
    data = encode_rtcp(KEY, ssrc=1, ssid=2, seq=3, timestamp=4, cname=cname)
    sdes = split_compound(data)[1][3]
    chunk = sdes[4:]
    assert len(chunk) % 4 == 0
    terminator = chunk[6 + length :]
    assert 1 <= len(terminator) <= 4 and terminator == bytes(len(terminator))
    assert decode_rtcp(KEY, data).ssid == 2


def test_default_cname() -> None:
    assert default_cname(7) == "umprobe@7"
    with pytest.raises(ValueError):
        default_cname(65536)


@pytest.mark.parametrize("cname", ["", "x" * 256, "é" * 128])
def test_bad_cname_is_our_error(cname: str) -> None:
    with pytest.raises(ValueError, match="cname"):
        encode_rtcp(KEY, ssrc=1, ssid=2, seq=3, timestamp=4, cname=cname)


@pytest.mark.parametrize(
    "kwargs", [{"ssrc": 1 << 32}, {"ssid": 65536}, {"seq": 65536}, {"timestamp": -1}, {"seq": True}]
)
def test_field_ranges_are_our_error(kwargs: dict[str, int]) -> None:
    values = {"ssrc": 1, "ssid": 2, "seq": 3, "timestamp": 4}
    values.update(kwargs)
    with pytest.raises(ValueError):
        encode_rtcp(KEY, cname="x", **values)


def test_every_bit_flip_before_the_hmac_is_caught() -> None:
    data = encode_rtcp(KEY, ssrc=5, ssid=6, seq=7, timestamp=8, cname="umprobe@6")
    for octet in range(len(data)):
        for bit in range(8):
            damaged = bytearray(data)
            damaged[octet] ^= 1 << bit
            with pytest.raises(MediaError):
                decode_rtcp(KEY, bytes(damaged))
    assert code_of(data, OTHER_KEY) == "auth"
    # A flip in the CNAME text keeps the structure: only the HMAC can tell.
    damaged = bytearray(data)
    damaged[12] ^= 0x20
    assert code_of(bytes(damaged)) == "auth"


def test_structure_errors() -> None:
    good = encode_rtcp(KEY, ssrc=5, ssid=6, seq=7, timestamp=8, cname="umprobe@6")
    rr, sdes, app = (p[3] for p in split_compound(good))

    assert code_of(good[:44]) == "size"
    assert code_of(b"") == "size"
    assert code_of(good + b"\x00") == "format"  # not a whole number of words
    assert code_of(good + b"\x80\xcb\x00\x00") == "format"  # a BYE after the APP: APP must be last
    assert code_of(sdes + rr + app) == "payload_type"  # first packet must be SR or RR (§6.1)
    assert code_of(bytes([0x40]) + good[1:]) == "version"
    assert code_of(rr + bytes([0x40]) + sdes[1:] + app) == "version"
    assert code_of(rr[:2] + b"\x00\x40" + rr[4:] + sdes + app) == "format"  # length runs past the end
    assert code_of(bytes([0xA0]) + rr[1:] + sdes + app) == "format"  # P only on the last packet
    assert code_of(bytes([0x81]) + rr[1:] + sdes + app) == "format"  # RC=1 without a report block
    assert code_of(rr + sdes + sdes) == "format"  # no APP at all
    assert code_of(rr + sdes + app[:8] + b"UMPC" + app[12:]) == "format"  # wrong APP name
    assert code_of(rr + sdes + bytes([0x81]) + app[1:]) == "format"  # APP subtype 1
    bad_sdes = sdes[:9] + b"\x40" + sdes[10:]  # CNAME item length runs past the packet
    assert code_of(rr + bad_sdes + app) == "format"
    two_chunks = bytes([0x82]) + sdes[1:]  # SC=2, one chunk present
    assert code_of(rr + two_chunks + app) == "format"


def test_sr_first_and_extra_packets_are_accepted() -> None:
    # SR (28 bytes, RC=0) + SDES + BYE + APP, built by hand: a valid compound per RFC 3550 §6.1.
    sr = struct.pack(">BBHI", 0x80, 200, 6, 77) + bytes(20)
    sdes = encode_rtcp(KEY, ssrc=77, ssid=1, seq=1, timestamp=1, cname="abc")[8:-40]
    bye = struct.pack(">BBHI", 0x81, 203, 1, 77)
    prefix = sr + sdes + bye
    data = prefix + app_packet(77, 9, 10, 11, prefix)
    assert decode_rtcp(KEY, data) == RtcpProbe(ssrc=77, ssid=9, seq=10, timestamp=11)
    # An RR with one report block (RC=1, 24 more bytes) is fine too; no SDES (RFC 5506).
    rr = struct.pack(">BBHI", 0x81, 201, 7, 77) + bytes(24)
    assert decode_rtcp(KEY, rr + app_packet(77, 9, 10, 11, rr)).seq == 10


def test_app_ssrc_must_match_and_ssid_is_checked() -> None:
    rr = struct.pack(">BBHI", 0x80, 201, 1, 77)
    assert code_of(rr + app_packet(78, 9, 10, 11, rr)) == "format"
    data = rr + app_packet(77, 9, 10, 11, rr)
    assert code_of(data, expected_ssid=8) == "ssid"
    assert decode_rtcp(KEY, data, expected_ssid=9).ssid == 9
    assert MIN_RTCP_SIZE == len(data) == 48


def test_padded_app_is_accepted_and_the_count_is_checked() -> None:
    rr = struct.pack(">BBHI", 0x80, 201, 1, 77)
    for padding in (4, 8, 252):
        head = struct.pack(">BBHI4sHHQ", 0xA0, 204, (40 + padding) // 4 - 1, 77, b"UMPB", 1, 2, 3)
        data = rr + head + mac(rr + head) + bytes(padding - 1) + bytes([padding])
        assert decode_rtcp(KEY, data).seq == 2
    head = struct.pack(">BBHI4sHHQ", 0xA0, 204, 11, 77, b"UMPB", 1, 2, 3)
    for count in (0, 3, 12, 255):  # must be 8 here: 48-byte APP, 40 of content
        data = rr + head + mac(rr + head) + bytes(7) + bytes([count])
        assert code_of(data) == "format", count


def test_reflect_same_length_and_authenticated() -> None:
    request = encode_rtcp(KEY, ssrc=5, ssid=6, seq=7, timestamp=8, cname=default_cname(6))
    reply = reflect_rtcp(KEY, request, reflector_ssrc=0xAAAA, transmit_ts=99)
    assert len(reply) == len(request)
    assert [pt for _, pt, _, _ in split_compound(reply)] == [201, 202, 204]
    assert decode_rtcp(KEY, reply, expected_ssid=6) == RtcpProbe(ssrc=0xAAAA, ssid=6, seq=7, timestamp=99)
    assert b"umprobe@6" in reply
    with pytest.raises(MediaError) as info:
        reflect_rtcp(OTHER_KEY, request, reflector_ssrc=1, transmit_ts=2)
    assert info.value.code == "auth"
    with pytest.raises(MediaError) as info:
        reflect_rtcp(KEY, request, reflector_ssrc=1, transmit_ts=2, expected_ssid=5)
    assert info.value.code == "ssid"


def test_reflect_pads_a_longer_request_and_refuses_a_shorter_one() -> None:
    request = encode_rtcp(KEY, ssrc=5, ssid=6, seq=7, timestamp=8, cname="x" * 40)
    reply = reflect_rtcp(KEY, request, reflector_ssrc=9, transmit_ts=10)
    assert len(reply) == len(request)
    first, _, _, app = split_compound(reply)[-1]
    assert first & 0x20  # P set on the last packet only
    assert app[-1] == len(app) - 40 and app[-1] % 4 == 0
    assert decode_rtcp(KEY, reply).timestamp == 10

    short = encode_rtcp(KEY, ssrc=5, ssid=6, seq=7, timestamp=8, cname="x")  # 60 bytes < 68 of the reply
    with pytest.raises(MediaError) as info:
        reflect_rtcp(KEY, short, reflector_ssrc=9, transmit_ts=10)
    assert info.value.code == "size"
    assert len(reflect_rtcp(KEY, short, reflector_ssrc=9, transmit_ts=10, cname="y")) == len(short)


@given(
    cname=st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), min_size=1, max_size=80).filter(
        lambda s: len(s.encode()) <= 255
    ),
    ssrc=st.integers(0, 2**32 - 1),
    ssid=st.integers(0, 0xFFFF),
    seq=st.integers(0, 0xFFFF),
    ts=st.integers(0, 2**64 - 1),
)
def test_round_trip_and_reflection_never_grows(cname: str, ssrc: int, ssid: int, seq: int, ts: int) -> None:
    request = encode_rtcp(KEY, ssrc=ssrc, ssid=ssid, seq=seq, timestamp=ts, cname=cname)
    assert decode_rtcp(KEY, request) == RtcpProbe(ssrc, ssid, seq, ts)
    try:
        reply = reflect_rtcp(KEY, request, reflector_ssrc=ssrc ^ 1, transmit_ts=ts ^ 1)
    except MediaError as exc:
        assert exc.code == "size"
        natural = len(encode_rtcp(KEY, ssrc=0, ssid=ssid, seq=0, timestamp=0, cname=default_cname(ssid)))
        assert not natural <= len(request) <= natural + 252  # only when no equal-length reply exists
    else:
        assert len(reply) == len(request)
        assert decode_rtcp(KEY, reply) == RtcpProbe(ssrc ^ 1, ssid, seq, ts ^ 1)
