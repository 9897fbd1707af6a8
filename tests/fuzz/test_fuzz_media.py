"""Hypothesis over umprobe.media with the oracles of atheris_media.py (what "the module's own error" is, per
module, is written there): the RTP header, media and RTCP packets under a valid HMAC, the control channel's
line buffer cut anywhere, and NTP arithmetic over the whole 64-bit range.

tests/media/test_media_fuzz.py already feeds arbitrary and mutated bytes to the media and RTCP decoders and
arbitrary JSON to the control codec; this adds what it does not cover and runs the shared oracle.
"""

from __future__ import annotations

import json

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tests.fuzz.atheris_media import (
    HELLO_SAMPLE,
    MEDIA_SAMPLE,
    OPEN_SAMPLE,
    RTCP_SAMPLE,
    assert_same_lines,
    check_control,
    check_line,
    check_media,
    check_media_packet,
    check_ntp,
    check_rtcp_packet,
    check_rtp_header,
    signed_media,
    signed_rtcp,
)
from umprobe.media import (
    ControlError,
    LineBuffer,
    RtpHeader,
    ntp_diff,
    ntp_from_unix_ns,
    unix_from_ntp,
)

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@example(b"")
@example(b"\x01")  # the valid media sample, unflipped
@example(b"\x05")  # the valid RTCP sample
@example(b"\x06\x00" + OPEN_SAMPLE + HELLO_SAMPLE + b"\n")
@given(st.binary(max_size=600))
def test_the_atheris_oracle_holds_for_any_input(data: bytes) -> None:
    check_media(data)


@FUZZ
@given(st.binary(max_size=40))
def test_rtp_header_decodes_or_is_a_media_error(data: bytes) -> None:
    check_rtp_header(data)


@FUZZ
@given(
    sequence=st.integers(0, 0xFFFF),
    timestamp=st.integers(0, 0xFFFFFFFF),
    ssrc=st.integers(0, 0xFFFFFFFF),
    marker=st.booleans(),
    payload_type=st.integers(0, 127),
    payload=st.binary(max_size=20),
)
def test_rtp_header_round_trip(
    sequence: int, timestamp: int, ssrc: int, marker: bool, payload_type: int, payload: bytes
) -> None:
    header = RtpHeader(sequence, timestamp, ssrc, marker, payload_type)
    assert RtpHeader.decode(header.encode() + payload) == header


@FUZZ
@example(bytes(156))
@given(st.binary(min_size=100, max_size=200))
def test_media_packets_under_a_valid_hmac(data: bytes) -> None:
    # Past the HMAC: every header bit, every block field, the SSID and the MBZ octets are judged cleanly.
    check_media_packet(signed_media(data))


@FUZZ
@given(st.lists(st.tuples(st.integers(0, 171), st.integers(1, 255)), min_size=1, max_size=3))
def test_a_flipped_media_sample(flips: list[tuple[int, int]]) -> None:
    data = bytearray(MEDIA_SAMPLE)
    for index, xor in flips:
        data[index] ^= xor
    check_media_packet(bytes(data))


@FUZZ
@example(b"\x00" + RTCP_SAMPLE[:8])
@given(st.binary(max_size=300))
def test_rtcp_compounds_under_a_valid_hmac(data: bytes) -> None:
    check_rtcp_packet(signed_rtcp(data))


@FUZZ
@given(st.binary(max_size=200))
def test_rtcp_arbitrary(data: bytes) -> None:
    check_rtcp_packet(data)


LINES = st.lists(
    st.one_of(
        st.binary(max_size=80),
        st.just(OPEN_SAMPLE.rstrip(b"\n")),
        st.just(HELLO_SAMPLE),
        st.dictionaries(st.text(max_size=6), st.integers() | st.text(max_size=8), max_size=4).map(
            lambda d: json.dumps(d).encode()
        ),
    ),
    max_size=6,
).map(lambda lines: b"\n".join(lines))


@FUZZ
@given(stream=LINES, cap=st.integers(0, 63), cuts=st.lists(st.integers(0, 600), max_size=30))
def test_line_buffer_cut_anywhere(stream: bytes, cap: int, cuts: list[int]) -> None:
    check_control(bytes([cap]) + stream)
    points = sorted({min(c, len(stream)) for c in cuts})
    pieces = [stream[a:b] for a, b in zip([0, *points], [*points, len(stream)], strict=True)]
    max_line = 64 * (1 + cap)
    outcomes: list[tuple[list[bytes], str | None]] = []
    for feed in ([stream], pieces, [stream[i : i + 1] for i in range(len(stream))]):
        buffer, got, refused = LineBuffer(max_line), [], None
        try:
            for piece in feed:
                buffer.feed(piece)
                while (line := buffer.next_line()) is not None:
                    got.append(line)
        except ControlError as exc:
            refused = exc.code
        outcomes.append((got, refused))
    for other in outcomes[1:]:
        assert_same_lines(outcomes[0], other)
    assert outcomes[0][1] in (None, "too_long")


@FUZZ
@given(st.binary(max_size=300))
def test_any_line_through_the_control_codec(line: bytes) -> None:
    check_line(line)


@FUZZ
@given(st.lists(st.integers(0, 2**64 - 1), min_size=1, max_size=4))
def test_ntp_over_the_whole_range(values: list[int]) -> None:
    check_ntp(b"".join(v.to_bytes(8, "big") for v in values))


@FUZZ
@given(st.integers(-(2**62), 2**62), st.integers(0, 10**12))
def test_ntp_from_nanoseconds_is_monotonic_and_era_safe(ns: int, later: int) -> None:
    a, b = ntp_from_unix_ns(ns), ntp_from_unix_ns(ns + later)
    if later < 2**31 * 10**9:  # within half an era, the difference is exact to a unit of rounding
        assert abs(ntp_diff(b, a) - later * 2**32 // 10**9) <= 2
    assert 0 <= a < 2**64 and 0 <= unix_from_ntp(a) + 2208988800 < 2**33
