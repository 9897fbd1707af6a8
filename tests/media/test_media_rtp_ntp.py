"""Tests for umprobe.media.rtp (the RFC 3550 §5.1 fixed header) and umprobe.media.ntp (RFC 5905 §6)."""

from __future__ import annotations

import math
import pickle

import pytest
from hypothesis import given
from hypothesis import strategies as st

from umprobe.media import (
    CLOCK_RATE,
    CONTROL_ERROR_CODES,
    MEDIA_ERROR_CODES,
    NTP_UNIX_OFFSET,
    PACKET_INTERVAL,
    PT_PCMU,
    SAMPLES_PER_PACKET,
    ControlError,
    MediaError,
    RtpHeader,
    ntp_diff,
    ntp_diff_seconds,
    ntp_from_unix,
    ntp_from_unix_ns,
    unix_from_ntp,
)

HEADERS = st.builds(
    RtpHeader,
    sequence=st.integers(0, 0xFFFF),
    timestamp=st.integers(0, 0xFFFFFFFF),
    ssrc=st.integers(0, 0xFFFFFFFF),
    marker=st.booleans(),
    payload_type=st.integers(0, 127),
)


def test_constants_describe_20_ms_pcmu() -> None:
    assert PT_PCMU == 0
    assert CLOCK_RATE == 8000
    assert SAMPLES_PER_PACKET == 160
    assert SAMPLES_PER_PACKET / CLOCK_RATE == PACKET_INTERVAL == 0.02


def test_header_layout_byte_by_byte() -> None:
    header = RtpHeader(sequence=0x1234, timestamp=0xDEADBEEF, ssrc=0x01020304, marker=True, payload_type=0)
    assert header.encode() == bytes.fromhex("80 80 1234 deadbeef 01020304")
    # V=2 (10), P=0, X=0, CC=0000 -> 0x80; M=0, PT=8 -> 0x08.
    assert RtpHeader(1, 2, 3, payload_type=8).encode() == bytes.fromhex("80 08 0001 00000002 00000003")


@given(HEADERS, st.binary(max_size=20))
def test_header_round_trip(header: RtpHeader, payload: bytes) -> None:
    wire = header.encode()
    assert len(wire) == 12
    assert RtpHeader.decode(wire + payload) == header


@pytest.mark.parametrize(
    ("first_byte", "code"),
    [
        (0x00, "version"),  # V=0
        (0x40, "version"),  # V=1
        (0xC0, "version"),  # V=3
        (0xA0, "format"),  # P=1
        (0x90, "format"),  # X=1
        (0x81, "format"),  # CC=1
        (0x8F, "format"),  # CC=15
    ],
)
def test_header_rejects_what_it_cannot_represent(first_byte: int, code: str) -> None:
    wire = bytes([first_byte]) + RtpHeader(1, 2, 3).encode()[1:]
    with pytest.raises(MediaError) as info:
        RtpHeader.decode(wire)
    assert info.value.code == code


@pytest.mark.parametrize("size", [0, 1, 11])
def test_header_too_short(size: int) -> None:
    with pytest.raises(MediaError) as info:
        RtpHeader.decode(RtpHeader(1, 2, 3).encode()[:size])
    assert info.value.code == "size"


@pytest.mark.parametrize(
    "kwargs",
    [
        {"sequence": 65536},
        {"sequence": -1},
        {"timestamp": 1 << 32},
        {"ssrc": -5},
        {"payload_type": 128},
        {"sequence": True},
        {"marker": 1},
    ],
)
def test_header_fields_are_range_checked(kwargs: dict[str, object]) -> None:
    values: dict[str, object] = {"sequence": 1, "timestamp": 2, "ssrc": 3}
    values.update(kwargs)
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        RtpHeader(**values)  # type: ignore[arg-type]


def test_error_codes_are_fixed_sets() -> None:
    assert MediaError("auth").code == "auth"
    assert str(MediaError("auth")) == "auth"
    assert str(MediaError("auth", "HMAC mismatch")) == "auth: HMAC mismatch"
    assert repr(ControlError("too_long", "x")) == "ControlError('too_long', 'x')"
    assert {"size", "version", "payload_type", "auth", "ssid", "format", "mbz"} == MEDIA_ERROR_CODES
    assert {"format", "too_long", "auth", "protocol"} == CONTROL_ERROR_CODES
    with pytest.raises(ValueError, match="unknown MediaError code"):
        MediaError("bogus")
    with pytest.raises(ValueError, match="unknown ControlError code"):
        ControlError("size")
    copy = pickle.loads(pickle.dumps(MediaError("ssid", "SSID 1, expected 2")))
    assert (type(copy), copy.code, copy.detail) == (MediaError, "ssid", "SSID 1, expected 2")


# --- NTP ----------------------------------------------------------------------------------------------------


def test_ntp_known_values() -> None:
    assert NTP_UNIX_OFFSET == 2208988800  # 70 years incl. 17 leap days: (70 * 365 + 17) * 86400
    assert ntp_from_unix(0) == NTP_UNIX_OFFSET << 32
    assert ntp_from_unix(0.5) == (NTP_UNIX_OFFSET << 32) | 0x80000000
    assert ntp_from_unix(1.25) == ((NTP_UNIX_OFFSET + 1) << 32) | 0x40000000
    assert ntp_from_unix(-0.5) == ((NTP_UNIX_OFFSET - 1) << 32) | 0x80000000
    assert ntp_from_unix_ns(1_500_000_000) == ((NTP_UNIX_OFFSET + 1) << 32) | 0x80000000
    assert unix_from_ntp((NTP_UNIX_OFFSET + 10) << 32 | 0xC0000000) == 10.75


def test_ntp_era_wrap_2036() -> None:
    # 2036-02-07T06:28:16Z is NTP second 2**32, i.e. 0 in era 1 (RFC 5905 §6, RFC 4330 §3).
    wrap = (1 << 32) - NTP_UNIX_OFFSET
    assert wrap == 2085978496
    assert ntp_from_unix(wrap) == 0
    assert unix_from_ntp(0) == wrap
    before, after = ntp_from_unix(wrap - 0.25), ntp_from_unix(wrap + 0.5)
    assert before == (1 << 64) - (1 << 30)
    assert ntp_diff(after, before) == 3 << 30  # 0.75 s across the wrap
    assert ntp_diff_seconds(after, before) == 0.75
    assert ntp_diff_seconds(before, after) == -0.75


# The RFC 4330 §3 era rule maps NTP back to Unix time unambiguously for 1968-01-20 .. 2104-02-26:
# era 0 seconds 2**31 .. 2**32-1, then era 1 seconds 0 .. 2**31-1.
ERA_WINDOW = (2**31 - NTP_UNIX_OFFSET, 2**32 + 2**31 - NTP_UNIX_OFFSET - 1)


@given(st.integers(*ERA_WINDOW))
def test_ntp_ns_round_trip_is_within_a_tick(seconds: int) -> None:
    ns = seconds * 1_000_000_000 + 123_456_789
    value = ntp_from_unix_ns(ns)
    assert abs(unix_from_ntp(value) - ns / 1e9) < 1e-6


@given(st.floats(min_value=ERA_WINDOW[0], max_value=ERA_WINDOW[1], allow_nan=False))
def test_ntp_float_round_trip(seconds: float) -> None:
    assert math.isclose(unix_from_ntp(ntp_from_unix(seconds)), seconds, abs_tol=1e-6)


@given(st.integers(0, (1 << 64) - 1), st.integers(-(1 << 62), 1 << 62))
def test_ntp_diff_is_modular_and_signed(a: int, delta: int) -> None:
    b = (a + delta) % (1 << 64)
    assert ntp_diff(b, a) == delta
    assert ntp_diff_seconds(b, a) == delta / 2**32


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_ntp_rejects_non_finite(bad: float) -> None:
    with pytest.raises(ValueError, match="finite"):
        ntp_from_unix(bad)
    with pytest.raises(ValueError):
        unix_from_ntp(1 << 64)
