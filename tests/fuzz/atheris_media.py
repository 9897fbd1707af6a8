"""Fuzz the sans-I/O media codecs: RTP header, media packet, RTCP compound, control channel, NTP time.

Run: ``.venv/bin/python tests/fuzz/atheris_media.py -runs=20000`` (any libFuzzer option works).

"The module's own error", per module (umprobe/media/errors.py splits errors by blame):

* `rtp.RtpHeader.decode`, `packet.decode_media` / `reflect_media`, `rtcp.decode_rtcp` / `reflect_rtcp`: bytes
  from the wire raise only `MediaError`, with a `code` from `MEDIA_ERROR_CODES`. What decodes re-encodes to
  the same authenticated octets, and a reflection is exactly as long as its request and decodes again.
* `control.LineBuffer`, `parse_message`, `parse_hello`, `ControlSigner.open`, `parse_open_request`: a line
  from the peer raises only `ControlError`, with a `code` from `CONTROL_ERROR_CODES`; the lines a buffer
  yields do not depend on how the stream was cut.
* `ntp`: total on 64-bit timestamps (no error at all): era-safe differences are antisymmetric and a
  timestamp survives the round trip through Unix time to within float precision.

`ValueError` is our own misuse in all of them (umprobe/media/errors.py) and counts as a crash here.

The input's first byte picks the target; random bytes die at the HMAC, so some targets sign what the
fuzzer wrote with the session key first, to reach the checks behind it.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
import sys
from pathlib import Path

from umprobe.media import (
    CONTROL_ERROR_CODES,
    MEDIA_ERROR_CODES,
    MEDIA_PACKET_SIZE,
    ControlError,
    ControlSigner,
    LineBuffer,
    Measurement,
    MediaError,
    RtpHeader,
    decode_media,
    decode_rtcp,
    encode_media,
    encode_rtcp,
    error_estimate_seconds,
    ntp_diff,
    ntp_from_unix,
    parse_hello,
    parse_message,
    parse_open_request,
    reflect_media,
    reflect_rtcp,
    session_key,
    unix_from_ntp,
)

KEY = session_key(b"fuzzing secret, at least 16 bytes", "a" * 32, "b" * 32)
SSID = 6
SECRET = b"control secret for the fuzzer"
CLIENT_NONCE = "c" * 32
PEER_NONCE = "d" * 32
MEDIA_SAMPLE = encode_media(KEY, RtpHeader(1, 2, 3), Measurement(4, 5, SSID))
RTCP_SAMPLE = encode_rtcp(KEY, ssrc=1, ssid=SSID, seq=3, timestamp=4, cname=f"umprobe@{SSID}")
OPEN_SAMPLE = ControlSigner(SECRET, PEER_NONCE, CLIENT_NONCE, role="client").seal(
    {"type": "open", "client_nonce": CLIENT_NONCE, "ports": [20000, 20002], "rtcp": True, "ttl": 10}
)
HELLO_SAMPLE = b'{"nonce":"' + PEER_NONCE.encode() + b'","peer":"umprobe-peer/1","type":"hello","v":1}'
SEEDS = [MEDIA_SAMPLE, RTCP_SAMPLE, OPEN_SAMPLE, HELLO_SAMPLE]


def _mac(covered: bytes) -> bytes:
    return hmac.new(KEY, covered, hashlib.sha256).digest()[:16]


# -- RTP, media, RTCP ------------------------------------------------------------------------------------


def check_rtp_header(data: bytes) -> None:
    try:
        header = RtpHeader.decode(data)
    except MediaError as exc:
        assert exc.code in ("size", "version", "format"), exc.code
        return
    assert header.encode() == data[:12]


def check_media_packet(data: bytes) -> None:
    check_rtp_header(data)
    outcome: str | None = None
    try:
        header, measurement = decode_media(KEY, data, expected_ssid=SSID, strict_mbz=True)
    except MediaError as exc:
        assert exc.code in MEDIA_ERROR_CODES, exc.code
        outcome = exc.code
    else:
        assert len(data) == MEDIA_PACKET_SIZE and header.payload_type == 0
        if measurement.error_estimate & 0xFF:  # encode_media refuses a zero multiplier (ours to send)
            assert encode_media(KEY, header, measurement)[:124] == data[:124]
    try:
        reply = reflect_media(KEY, data, reflector_seq=1, receive_ts=2, transmit_ts=3, expected_ssid=SSID)
    except MediaError as exc:
        assert exc.code in MEDIA_ERROR_CODES
        assert outcome is not None and outcome != "mbz", (exc.code, outcome)
        return
    assert outcome in (None, "mbz"), outcome  # MBZ octets are ignored unless asked (RFC 8762 §4.2.1)
    assert len(reply) == len(data) == MEDIA_PACKET_SIZE
    request = decode_media(KEY, data)[1]
    answered = decode_media(KEY, reply, expected_ssid=SSID)[1]
    assert (answered.sender_seq, answered.sender_timestamp) == (request.seq, request.timestamp)


def check_rtcp_packet(data: bytes) -> None:
    try:
        probe = decode_rtcp(KEY, data, expected_ssid=SSID)
    except MediaError as exc:
        assert exc.code in MEDIA_ERROR_CODES, exc.code
        probe = None
    try:
        reply = reflect_rtcp(KEY, data, reflector_ssrc=9, transmit_ts=10, expected_ssid=SSID)
    except MediaError as exc:
        assert exc.code in MEDIA_ERROR_CODES
        assert probe is None or exc.code == "size", (exc.code, probe)
        return
    assert probe is not None
    assert len(reply) == len(data)
    answered = decode_rtcp(KEY, reply, expected_ssid=SSID)
    assert (answered.seq, answered.ssrc, answered.timestamp) == (probe.seq, 9, 10)


def signed_media(data: bytes) -> bytes:
    """Any 108 octets under a valid HMAC, then 48 octets of the input as padding."""
    covered = (data + bytes(108))[:108]
    return covered + _mac(covered) + (data[108:] + bytes(48))[:48]


def signed_rtcp(data: bytes) -> bytes:
    """The input as RTCP packets (word-aligned), then a UMPB APP over them with a valid HMAC."""
    padding = (data[0] % 3) * 4 if data else 0
    prefix = data[1 : 1 + (len(data) - 1) // 4 * 4] if data else b""
    ssrc = struct.unpack(">I", prefix[4:8])[0] if len(prefix) >= 8 else 0
    head = struct.pack(
        ">BBHI4sHHQ", 0xA0 if padding else 0x80, 204, (40 + padding) // 4 - 1, ssrc, b"UMPB", SSID, 7, 8
    )
    tail = bytes(padding - 1) + bytes([padding]) if padding else b""
    return prefix + head + _mac(prefix + head) + tail


# -- control channel ------------------------------------------------------------------------------------


def _lines(pieces: list[bytes], max_line: int) -> tuple[list[bytes], str | None]:
    buffer = LineBuffer(max_line=max_line)
    lines: list[bytes] = []
    try:
        for piece in pieces:
            buffer.feed(piece)
            while (line := buffer.next_line()) is not None:
                lines.append(line)
    except ControlError as exc:
        assert exc.code == "too_long", exc.code
        return lines, exc.code
    return lines, None


def assert_same_lines(a: tuple[list[bytes], str | None], b: tuple[list[bytes], str | None]) -> None:
    """Whether a stream is refused does not depend on how it was cut, nor do its lines, with one difference
    by design (LineBuffer's docstring): `feed` refuses a chunk whose unterminated tail passes the cap at once,
    before the complete lines earlier in that chunk are read. So a refused stream's lines may stop sooner
    under one cutting than under another: one list is a prefix of the other."""
    assert a[1] == b[1], (a[1], b[1])
    if a[1] is None:
        assert a[0] == b[0]
    else:
        shorter, longer = sorted((a[0], b[0]), key=len)
        assert longer[: len(shorter)] == shorter


def check_control(data: bytes) -> None:
    max_line = 64 * (1 + (data[0] % 64) if data else 64)
    stream = data[1:]
    whole = _lines([stream], max_line)
    cut = _lines([stream[i : i + 7] for i in range(0, len(stream), 7)], max_line)
    assert_same_lines(whole, cut)
    for line in [*whole[0], stream]:
        check_line(line)


def check_line(line: bytes) -> None:
    for parse in (parse_message, parse_hello):
        try:
            parse(line)
        except ControlError as exc:
            assert exc.code in CONTROL_ERROR_CODES, exc.code
    peer = ControlSigner(SECRET, PEER_NONCE, None, role="peer")
    try:
        message = peer.open(line)
    except ControlError as exc:
        assert exc.code in CONTROL_ERROR_CODES, exc.code
    else:
        check_open(message)
    try:
        message = parse_message(line)
    except ControlError:
        return
    client = ControlSigner(SECRET, PEER_NONCE, CLIENT_NONCE, role="client")
    message.pop("mac", None)
    try:
        sealed = client.seal(message)
    except ValueError:  # ours: a message too long to send
        return
    opened = ControlSigner(SECRET, PEER_NONCE, CLIENT_NONCE, role="peer").open(sealed)
    assert opened == message
    check_open(opened)


def check_open(message: dict[str, object]) -> None:
    try:
        request = parse_open_request(message, rtp_range=(20000, 30000), max_ports=16)
    except ControlError as exc:
        assert exc.code == "protocol", exc.code
        return
    assert len(request.ports) <= 16 and 1 <= request.ttl <= 60
    assert all(p % 2 == 0 and 20000 <= p <= 30000 for p in request.ports)
    assert not set(request.ports) & set(request.refused)


# -- NTP -------------------------------------------------------------------------------------------------


def check_ntp(data: bytes) -> None:
    values = [int.from_bytes(data[i : i + 8], "big") for i in range(0, len(data) - 7, 8)] or [0]
    for a in values:
        seconds = unix_from_ntp(a)
        assert abs(ntp_diff(ntp_from_unix(seconds), a)) <= 1 << 12  # ~1 µs: float precision near 2**32 s
        error_estimate_seconds(a & 0xFFFF)
        for b in values:
            d = ntp_diff(a, b)
            assert -(1 << 63) <= d < 1 << 63
            assert d == -ntp_diff(b, a) or d == -(1 << 63)


def xor(seed: bytes, flips: bytes) -> bytes:
    """`seed` with `flips` XORed onto its first bytes: a valid packet, a few bits wrong."""
    return bytes(a ^ b for a, b in zip(seed, flips.ljust(len(seed), b"\0")[: len(seed)], strict=True))


# -- the oracle ------------------------------------------------------------------------------------------


def check_media(data: bytes) -> None:
    """The oracle: the first byte picks the target, the rest is its input."""
    mode, rest = (data[0], data[1:]) if data else (0, b"")
    target = mode % 8
    if target == 0:
        check_media_packet(rest)
    elif target == 1:
        check_media_packet(xor(MEDIA_SAMPLE, rest))
    elif target == 2:
        check_media_packet(signed_media(rest))
    elif target == 3:
        check_rtcp_packet(rest)
    elif target == 4:
        check_rtcp_packet(signed_rtcp(rest))
    elif target == 5:
        check_rtcp_packet(xor(RTCP_SAMPLE, rest))
    elif target == 6:
        check_control(rest)
    else:
        check_ntp(rest)
        check_rtp_header(rest)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root: tests.fuzz._driver
    from tests.fuzz._driver import fuzz

    fuzz(check_media, sys.argv, [bytes([i]) + seed for i in range(8) for seed in SEEDS])
