"""Tests for umprobe.media.packet: the 172-byte authenticated media packet (docs/rtp.md, RFC 8762 §4.2.2)."""

from __future__ import annotations

import hashlib
import hmac
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from umprobe.media import (
    BLOCK_SIZE,
    DEFAULT_ERROR_ESTIMATE,
    MEDIA_PACKET_SIZE,
    Measurement,
    MediaError,
    RtpHeader,
    decode_media,
    encode_media,
    error_estimate,
    error_estimate_seconds,
    reflect_measurement,
    reflect_media,
    session_key,
)

SECRET = b"0123456789abcdef-shared-secret"
PEER_NONCE = "00112233445566778899aabbccddeeff"
CLIENT_NONCE = "ffeeddccbbaa99887766554433221100"
KEY = session_key(SECRET, PEER_NONCE, CLIENT_NONCE)
HEADER = RtpHeader(sequence=0xBEEF, timestamp=0x11223344, ssrc=0xCAFEF00D, marker=True)
SENDER = Measurement(seq=0x01020304, timestamp=0x0A0B0C0D0E0F1011, ssid=0x4242, error_estimate=0x8123)


def mac(covered: bytes, key: bytes = KEY) -> bytes:
    return hmac.new(key, covered, hashlib.sha256).digest()[:16]


def forge(covered: bytes, key: bytes = KEY) -> bytes:
    """A packet whose first 108 octets are `covered`, with a valid HMAC and the usual padding."""
    assert len(covered) == 108
    return covered + mac(covered, key) + b"\xff" * 48


def code_of(key: bytes, data: bytes, **kwargs: object) -> str:
    with pytest.raises(MediaError) as info:
        decode_media(key, data, **kwargs)  # type: ignore[arg-type]
    return info.value.code


def test_session_key_known_answer() -> None:
    label = b"umprobe-media-v1|00112233445566778899aabbccddeeff|ffeeddccbbaa99887766554433221100"
    assert hmac.new(SECRET, label, hashlib.sha256).digest() == KEY
    assert len(KEY) == 32
    assert session_key(SECRET, CLIENT_NONCE, PEER_NONCE) != KEY  # the order of the nonces matters


def test_sender_packet_layout_at_every_documented_offset() -> None:
    packet = encode_media(KEY, HEADER, SENDER)
    assert len(packet) == MEDIA_PACKET_SIZE == 172
    assert BLOCK_SIZE == 112
    # 0-11: RTP header, V=2 P=0 X=0 CC=0, M=1 PT=0.
    assert packet[0:12] == bytes.fromhex("80 80 beef 11223344 cafef00d")
    block = packet[12:124]
    assert block[0:4] == bytes.fromhex("01020304")  # sequence number
    assert block[4:16] == bytes(12)  # MBZ
    assert block[16:24] == bytes.fromhex("0a0b0c0d0e0f1011")  # timestamp T1
    assert block[24:26] == bytes.fromhex("8123")  # error estimate
    assert block[26:28] == bytes.fromhex("4242")  # SSID
    assert block[28:32] == bytes(4)  # MBZ
    assert block[32:40] == bytes(8)  # receive timestamp (sender: MBZ)
    assert block[40:48] == bytes(8)  # MBZ
    assert block[48:52] == bytes(4)  # sender sequence number (sender: MBZ)
    assert block[52:64] == bytes(12)  # MBZ
    assert block[64:72] == bytes(8)  # sender timestamp (sender: MBZ)
    assert block[72:74] == bytes(2)  # sender error estimate (sender: MBZ)
    assert block[74:80] == bytes(6)  # MBZ
    assert block[80] == 0  # sender TTL (sender: MBZ)
    assert block[81:96] == bytes(15)  # MBZ
    # 96-111: HMAC-SHA-256(K, RTP header ‖ block octets 0-95), first 16 bytes.
    assert block[96:112] == mac(packet[0:12] + block[0:96])
    assert packet[124:172] == b"\xff" * 48  # μ-law silence


def test_reflector_packet_layout() -> None:
    request = encode_media(KEY, HEADER, SENDER)
    reply = reflect_media(
        KEY,
        request,
        reflector_seq=7,
        receive_ts=0x1111111122222222,
        transmit_ts=0x3333333344444444,
        ttl=61,
        error_estimate=0x0102,
    )
    assert len(reply) == len(request) == 172
    assert reply[0:12] == request[0:12]  # the same RTP header: SSRC, sequence, timestamp, marker
    block = reply[12:124]
    assert block[0:4] == bytes.fromhex("00000007")  # the reflector's own sequence number
    assert block[16:24] == bytes.fromhex("3333333344444444")  # T3
    assert block[24:26] == bytes.fromhex("0102")  # the reflector's error estimate
    assert block[26:28] == bytes.fromhex("4242")  # SSID, from the request
    assert block[32:40] == bytes.fromhex("1111111122222222")  # T2
    assert block[48:52] == bytes.fromhex("01020304")  # sender sequence, copied
    assert block[64:72] == bytes.fromhex("0a0b0c0d0e0f1011")  # sender timestamp T1, copied
    assert block[72:74] == bytes.fromhex("8123")  # sender error estimate, copied
    assert block[80] == 61  # sender TTL
    for start, end in ((4, 16), (28, 32), (40, 48), (52, 64), (74, 80), (81, 96)):
        assert block[start:end] == bytes(end - start)
    assert block[96:112] == mac(reply[0:12] + block[0:96])
    assert reply[124:] == b"\xff" * 48
    header, measurement = decode_media(KEY, reply, expected_ssid=0x4242, strict_mbz=True)
    assert header == HEADER
    assert measurement == Measurement(
        seq=7,
        timestamp=0x3333333344444444,
        ssid=0x4242,
        error_estimate=0x0102,
        receive_timestamp=0x1111111122222222,
        sender_seq=0x01020304,
        sender_timestamp=0x0A0B0C0D0E0F1011,
        sender_error_estimate=0x8123,
        sender_ttl=61,
    )


def test_reflect_defaults_and_reflect_measurement_agree() -> None:
    request = encode_media(KEY, HEADER, SENDER)
    reply = reflect_media(KEY, request, reflector_seq=1, receive_ts=2, transmit_ts=3)
    _, measurement = decode_media(KEY, reply)
    assert measurement.sender_ttl == 255
    assert measurement.error_estimate == DEFAULT_ERROR_ESTIMATE
    header, sender = decode_media(KEY, request)
    assert reflect_measurement(KEY, header, sender, reflector_seq=1, receive_ts=2, transmit_ts=3) == reply


def test_padding_is_ignored_and_not_reflected() -> None:
    request = bytearray(encode_media(KEY, HEADER, SENDER))
    request[124:] = bytes(range(48))  # not under the HMAC: a decoder ignores it
    assert decode_media(KEY, bytes(request)) == decode_media(KEY, encode_media(KEY, HEADER, SENDER))
    reply = reflect_media(KEY, bytes(request), reflector_seq=1, receive_ts=2, transmit_ts=3)
    assert reply[124:] == b"\xff" * 48


def test_every_single_bit_flip_in_the_authenticated_octets_fails_auth() -> None:
    packet = encode_media(KEY, HEADER, SENDER)
    for octet in range(124):
        for bit in range(8):
            damaged = bytearray(packet)
            damaged[octet] ^= 1 << bit
            assert code_of(KEY, bytes(damaged)) == "auth", (octet, bit)


def test_wrong_key_fails_auth() -> None:
    packet = encode_media(KEY, HEADER, SENDER)
    assert code_of(session_key(SECRET, PEER_NONCE, PEER_NONCE), packet) == "auth"


@pytest.mark.parametrize("size", [0, 12, 124, 171, 173, 1500])
def test_size_is_checked_first(size: int) -> None:
    packet = encode_media(KEY, HEADER, SENDER)
    data = (packet * 10)[:size]
    assert code_of(KEY, data) == "size"
    with pytest.raises(MediaError) as info:
        reflect_media(KEY, data, reflector_seq=1, receive_ts=2, transmit_ts=3)
    assert info.value.code == "size"


def test_authenticated_but_malformed_headers() -> None:
    body = encode_media(KEY, HEADER, SENDER)[12:108]
    for header_bytes, code in [
        (bytes.fromhex("40 00 0001 00000002 00000003"), "version"),  # V=1
        (bytes.fromhex("81 00 0001 00000002 00000003"), "format"),  # CC=1
        (bytes.fromhex("90 00 0001 00000002 00000003"), "format"),  # X=1
        (bytes.fromhex("80 08 0001 00000002 00000003"), "payload_type"),  # PT=8 (PCMA)
        (bytes.fromhex("80 e0 0001 00000002 00000003"), "payload_type"),  # M=1 PT=96
    ]:
        forged = forge(header_bytes + body)
        assert code_of(KEY, forged) == code
        with pytest.raises(MediaError) as info:
            reflect_media(KEY, forged, reflector_seq=1, receive_ts=2, transmit_ts=3)
        assert info.value.code == code


def test_ssid_mismatch() -> None:
    packet = encode_media(KEY, HEADER, SENDER)
    assert decode_media(KEY, packet, expected_ssid=0x4242)[1].ssid == 0x4242
    assert code_of(KEY, packet, expected_ssid=0x4243) == "ssid"
    with pytest.raises(MediaError) as info:
        reflect_media(KEY, packet, reflector_seq=1, receive_ts=2, transmit_ts=3, expected_ssid=1)
    assert info.value.code == "ssid"


@pytest.mark.parametrize("octet", [4, 15, 28, 31, 40, 47, 52, 63, 74, 79, 81, 95])
def test_mbz_is_ignored_unless_strict(octet: int) -> None:
    covered = bytearray(encode_media(KEY, HEADER, SENDER)[:108])
    covered[12 + octet] = 0x01
    forged = forge(bytes(covered))
    assert decode_media(KEY, forged) == decode_media(KEY, encode_media(KEY, HEADER, SENDER))
    assert code_of(KEY, forged, strict_mbz=True) == "mbz"


def test_encoder_refuses_what_the_protocol_forbids() -> None:
    with pytest.raises(ValueError, match="PCMU"):
        encode_media(KEY, RtpHeader(1, 2, 3, payload_type=8), SENDER)
    with pytest.raises(ValueError, match="multiplier"):
        encode_media(KEY, HEADER, Measurement(seq=1, timestamp=2, ssid=3, error_estimate=0x8100))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"seq": 1 << 32},
        {"timestamp": -1},
        {"ssid": 65536},
        {"error_estimate": 1 << 16},
        {"receive_timestamp": 1 << 64},
        {"sender_seq": -1},
        {"sender_timestamp": 1 << 64},
        {"sender_error_estimate": -1},
        {"sender_ttl": 256},
    ],
)
def test_measurement_fields_are_range_checked(kwargs: dict[str, int]) -> None:
    values = {"seq": 1, "timestamp": 2, "ssid": 3}
    values.update(kwargs)
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        Measurement(**values)


def test_error_estimate_bits() -> None:
    # RFC 4656 §4.1.2: S(1) Z(1) Scale(6) Multiplier(8); value = Multiplier * 2**-32 * 2**Scale seconds.
    assert error_estimate(synchronized=True, scale=0, multiplier=1) == 0x8001
    assert error_estimate(synchronized=False, scale=63, multiplier=255) == 0x3FFF
    assert DEFAULT_ERROR_ESTIMATE == error_estimate(synchronized=False, scale=32, multiplier=1) == 0x2001
    assert error_estimate_seconds(DEFAULT_ERROR_ESTIMATE) == 1.0  # 1 * 2**-32 * 2**32
    assert error_estimate_seconds(0x8000 | 22 << 8 | 3) == 3 * 2.0**-10  # S is not part of the value
    for bad in (
        {"scale": 64, "multiplier": 1},
        {"scale": -1, "multiplier": 1},
        {"scale": 0, "multiplier": 0},
    ):
        with pytest.raises(ValueError):
            error_estimate(synchronized=True, **bad)


MEASUREMENTS = st.builds(
    Measurement,
    seq=st.integers(0, 2**32 - 1),
    timestamp=st.integers(0, 2**64 - 1),
    ssid=st.integers(0, 0xFFFF),
    error_estimate=st.integers(0, 0xFFFF).filter(lambda v: v & 0xFF != 0),
    receive_timestamp=st.integers(0, 2**64 - 1),
    sender_seq=st.integers(0, 2**32 - 1),
    sender_timestamp=st.integers(0, 2**64 - 1),
    sender_error_estimate=st.integers(0, 0xFFFF),
    sender_ttl=st.integers(0, 255),
)
HEADERS = st.builds(
    RtpHeader,
    sequence=st.integers(0, 0xFFFF),
    timestamp=st.integers(0, 0xFFFFFFFF),
    ssrc=st.integers(0, 0xFFFFFFFF),
    marker=st.booleans(),
)


@given(HEADERS, MEASUREMENTS)
def test_round_trip(header: RtpHeader, measurement: Measurement) -> None:
    packet = encode_media(KEY, header, measurement)
    assert len(packet) == 172
    assert decode_media(KEY, packet, expected_ssid=measurement.ssid, strict_mbz=True) == (header, measurement)


@given(HEADERS, MEASUREMENTS, st.integers(0, 2**32 - 1), st.integers(0, 2**64 - 1), st.integers(0, 255))
def test_reflection_copies_the_sender_fields(
    header: RtpHeader, sender: Measurement, reflector_seq: int, stamp: int, ttl: int
) -> None:
    request = encode_media(KEY, header, sender)
    reply = reflect_media(
        KEY, request, reflector_seq=reflector_seq, receive_ts=stamp, transmit_ts=stamp ^ 1, ttl=ttl
    )
    assert len(reply) == len(request)
    reply_header, reflected = decode_media(KEY, reply)
    assert reply_header == header
    assert (reflected.sender_seq, reflected.sender_timestamp, reflected.sender_error_estimate) == (
        sender.seq,
        sender.timestamp,
        sender.error_estimate,
    )
    assert (reflected.seq, reflected.receive_timestamp, reflected.timestamp, reflected.sender_ttl) == (
        reflector_seq,
        stamp,
        stamp ^ 1,
        ttl,
    )
    assert reflected.ssid == sender.ssid


def test_block_offsets_match_the_stamp_struct() -> None:
    # An independent reading of the block with struct offsets taken from the table in docs/rtp.md.
    packet = encode_media(KEY, HEADER, SENDER)
    (seq,) = struct.unpack_from(">I", packet, 12 + 0)
    (ts,) = struct.unpack_from(">Q", packet, 12 + 16)
    err, ssid = struct.unpack_from(">HH", packet, 12 + 24)
    assert (seq, ts, err, ssid) == (SENDER.seq, SENDER.timestamp, SENDER.error_estimate, SENDER.ssid)
