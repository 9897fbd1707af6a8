"""Fuzz the media decoders: any bytes give a value or the package's own error, never another exception.

Random bytes mostly die at the first check (size, HMAC), so the structured strategies below also build inputs
that pass the HMAC or the RTCP length walk and break something further in.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import struct

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from umprobe.media import (
    MAX_LINE,
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
    parse_hello,
    parse_open_request,
    reflect_media,
    reflect_rtcp,
    session_key,
)

KEY = session_key(b"fuzzing secret, 16+ bytes", "a" * 32, "b" * 32)
CLIENT_NONCE = "c" * 32
PEER_NONCE = "d" * 32
SECRET = b"control secret for the fuzzer"
FUZZ = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FUZZ_JSON = settings(FUZZ, max_examples=120)  # recursive JSON is slow to generate
MEDIA_SAMPLE = encode_media(KEY, RtpHeader(1, 2, 3), Measurement(4, 5, 6))
RTCP_SAMPLE = encode_rtcp(KEY, ssrc=1, ssid=2, seq=3, timestamp=4, cname="umprobe@2")


def media_outcome(data: bytes) -> object:
    try:
        return decode_media(KEY, data, expected_ssid=6, strict_mbz=True)
    except MediaError as exc:
        return exc.code


def check_media(data: bytes) -> None:
    outcome = media_outcome(data)
    try:
        reply = reflect_media(KEY, data, reflector_seq=1, receive_ts=2, transmit_ts=3, expected_ssid=6)
    except MediaError as exc:
        assert isinstance(outcome, str)
        assert exc.code == outcome or outcome == "mbz"
    else:
        assert len(reply) == len(data) == 172
        assert not isinstance(outcome, str) or outcome == "mbz"
        decode_media(KEY, reply)


def check_rtcp(data: bytes) -> None:
    try:
        probe = decode_rtcp(KEY, data)
    except MediaError:
        probe = None
    try:
        reply = reflect_rtcp(KEY, data, reflector_ssrc=9, transmit_ts=10)
    except MediaError as exc:
        assert probe is None or exc.code == "size"
    else:
        assert probe is not None
        assert len(reply) == len(data)
        assert decode_rtcp(KEY, reply).seq == probe.seq


@FUZZ
@example(MEDIA_SAMPLE)
@given(st.binary(max_size=400))
def test_arbitrary_bytes_to_media(data: bytes) -> None:
    check_media(data)


@FUZZ
@given(st.binary(min_size=108, max_size=108), st.binary(min_size=48, max_size=48))
def test_authenticated_garbage_to_media(covered: bytes, padding: bytes) -> None:
    # Any 108 octets with a valid HMAC: the decoder must judge every header and block value cleanly.
    data = covered + hmac.new(KEY, covered, hashlib.sha256).digest()[:16] + padding
    check_media(data)


@FUZZ
@given(st.lists(st.tuples(st.integers(0, 171), st.integers(0, 255)), max_size=4))
def test_mutated_media(changes: list[tuple[int, int]]) -> None:
    data = bytearray(MEDIA_SAMPLE)
    for index, value in changes:
        data[index] = value
    check_media(bytes(data))


@FUZZ
@example(RTCP_SAMPLE)
@given(st.binary(max_size=400))
def test_arbitrary_bytes_to_rtcp(data: bytes) -> None:
    check_rtcp(data)


@FUZZ
@given(st.lists(st.tuples(st.integers(0, len(RTCP_SAMPLE) - 1), st.integers(0, 255)), max_size=4))
def test_mutated_rtcp(changes: list[tuple[int, int]]) -> None:
    data = bytearray(RTCP_SAMPLE)
    for index, value in changes:
        data[index] = value
    check_rtcp(bytes(data))


@st.composite
def rtcp_like(draw: st.DrawFn) -> bytes:
    """Random RTCP-ish packets (random header bits, PT, count, length, body) + an authenticated APP."""
    prefix = b""
    for _ in range(draw(st.integers(0, 4))):
        words = draw(st.integers(0, 12))
        first = draw(st.sampled_from([0x80, 0x81, 0x82, 0xA0, 0x9F, 0x40]))
        pt = draw(st.sampled_from([200, 201, 202, 203, 204, 205, 72]))
        body = draw(st.binary(min_size=4 * words, max_size=4 * words))
        claimed = draw(st.sampled_from([words, words, words + 1, max(0, words - 1)]))
        prefix += struct.pack(">BBH", first, pt, claimed) + body
    ssrc = struct.unpack(">I", prefix[4:8])[0] if len(prefix) >= 8 else 0
    padding = draw(st.sampled_from([0, 0, 4, 8]))
    head = struct.pack(
        ">BBHI4sHHQ", 0xA0 if padding else 0x80, 204, (40 + padding) // 4 - 1, ssrc, b"UMPB", 1, 2, 3
    )
    tail = bytes(padding - 1) + bytes([padding]) if padding else b""
    return prefix + head + hmac.new(KEY, prefix + head, hashlib.sha256).digest()[:16] + tail


@FUZZ
@given(rtcp_like())
def test_structured_rtcp(data: bytes) -> None:
    check_rtcp(data)


# --- control ------------------------------------------------------------------------------------------------

JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=10),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4)
    ),
    max_leaves=20,
)


def open_outcome(signer: ControlSigner, line: bytes) -> None:
    try:
        message = signer.open(line)
    except ControlError:
        return
    try:
        parse_open_request(message, rtp_range=(1024, 65535))
    except ControlError as exc:
        assert exc.code == "protocol"


@FUZZ
@given(st.lists(st.binary(max_size=300), max_size=8), st.integers(1, 64))
def test_arbitrary_bytes_through_line_buffer_and_open(chunks: list[bytes], max_line: int) -> None:
    buffer = LineBuffer(max_line=max_line * 64)
    signer = ControlSigner(SECRET, PEER_NONCE, None, role="peer")
    try:
        for chunk in chunks:
            buffer.feed(chunk)
            while (line := buffer.next_line()) is not None:
                open_outcome(signer, line)
                with contextlib.suppress(ControlError):
                    parse_hello(line)
    except ControlError as exc:
        assert exc.code == "too_long"


@FUZZ_JSON
@given(st.dictionaries(st.text(max_size=8).filter(lambda k: k != "mac"), JSON_VALUES, max_size=6))
def test_any_json_object_survives_seal_and_open(message: dict[str, object]) -> None:
    client = ControlSigner(SECRET, PEER_NONCE, CLIENT_NONCE, role="client")
    peer = ControlSigner(SECRET, PEER_NONCE, CLIENT_NONCE, role="peer")
    try:
        line = client.seal(message)
    except ValueError:
        assert len(json.dumps(message)) > MAX_LINE - 100
        return
    assert peer.open(line) == message
    open_outcome(peer, line)  # a replay: auth


@FUZZ_JSON
@given(
    st.fixed_dictionaries(
        {"type": st.just("open"), "client_nonce": st.just(CLIENT_NONCE)},
        optional={
            "ports": JSON_VALUES | st.lists(st.integers(-5, 70000)),
            "rtcp": JSON_VALUES,
            "ttl": JSON_VALUES,
        },
    )
)
def test_open_requests(message: dict[str, object]) -> None:
    try:
        request = parse_open_request(message, rtp_range=(20000, 30000), max_ports=16)
    except ControlError as exc:
        assert exc.code == "protocol"
    else:
        assert len(request.ports) <= 16
        assert all(p % 2 == 0 and 20000 <= p <= 30000 for p in request.ports)
        assert not set(request.ports) & set(request.refused)
        assert 1 <= request.ttl <= 60
