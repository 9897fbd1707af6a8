"""NTP 64-bit timestamps (RFC 5905 §6): 32 bits of seconds since 1900-01-01 and 32 bits of fraction.

The media block carries T1..T3 in this format (RFC 8762 §4.2.1); the prober adds T4 itself. Nothing here reads
a clock: callers pass Unix time in (float seconds, or integer nanoseconds for an exact conversion).

Eras (RFC 5905 §6, RFC 4330 §3): the 32-bit seconds field wraps on 2036-02-07. Conversions *to* NTP keep the
low 64 bits; conversions *from* NTP use the RFC 4330 §3 rule — if the top bit of the seconds field is set the
time is in 1968-2036 (era 0), otherwise in 2036-2104 (era 1). Differences are computed modulo 2**64 and read
as signed, so they are right across the 2036 wrap for any two instants less than 68 years apart.
"""

from __future__ import annotations

import math
from typing import Final

__all__ = [
    "NTP_FRACTION",
    "NTP_UNIX_OFFSET",
    "ntp_diff",
    "ntp_diff_seconds",
    "ntp_from_unix",
    "ntp_from_unix_ns",
    "unix_from_ntp",
]

NTP_UNIX_OFFSET: Final = 2208988800
"""Seconds from the NTP epoch (1900-01-01) to the Unix epoch (1970-01-01), RFC 5905 §6 / RFC 868."""

NTP_FRACTION: Final = 1 << 32
"""One second in NTP 64-bit units (the fraction field counts 2**-32 s)."""

_MASK64: Final = (1 << 64) - 1
_ERA: Final = 1 << 64  # one NTP era (2**32 s) in 64-bit timestamp units


def ntp_from_unix(seconds: float) -> int:
    """Return the NTP 64-bit timestamp (32.32 fixed point, RFC 5905 §6) for Unix time `seconds`.

    The fraction is rounded to the nearest 2**-32 s. Raises ValueError for NaN or infinities.
    """
    if not math.isfinite(seconds):
        raise ValueError(f"seconds must be finite, got {seconds!r}")
    whole = math.floor(seconds)
    fraction = round((seconds - whole) * NTP_FRACTION)  # seconds - whole is exact for a float
    return (((whole + NTP_UNIX_OFFSET) << 32) + fraction) & _MASK64


def ntp_from_unix_ns(nanoseconds: int) -> int:
    """Return the NTP 64-bit timestamp for Unix time given in integer nanoseconds (exact, then rounded)."""
    whole, rest = divmod(nanoseconds, 1_000_000_000)
    fraction = (rest * NTP_FRACTION + 500_000_000) // 1_000_000_000  # round half up to 2**-32 s
    return (((whole + NTP_UNIX_OFFSET) << 32) + fraction) & _MASK64


def unix_from_ntp(value: int) -> float:
    """Return Unix time in seconds for an NTP 64-bit timestamp (era by the RFC 4330 §3 top-bit rule)."""
    if not 0 <= value <= _MASK64:
        raise ValueError(f"an NTP timestamp is 64 bits, got {value!r}")
    if not value >> 63:  # seconds field < 2**31: era 1, 2036-02-07 .. 2104
        value += _ERA
    return value / NTP_FRACTION - NTP_UNIX_OFFSET


def ntp_diff(a: int, b: int) -> int:
    """Return a - b in NTP units (2**-32 s), modulo 2**64 read as signed: right across era wraps."""
    d = (a - b) & _MASK64
    return d - _ERA if d >> 63 else d


def ntp_diff_seconds(a: int, b: int) -> float:
    """Return a - b in seconds for two NTP 64-bit timestamps less than 68 years apart (era-safe)."""
    return ntp_diff(a, b) / NTP_FRACTION
