"""Kernel arrival timestamps for UDP datagrams (Linux `SO_TIMESTAMPNS`), as plain values.

Why: a datagram's user-space arrival time (the clock read after `recv` returns) includes the time it waited
in the socket buffer while the process was busy with other datagrams, ports or tasks. bench/rtp.py measured
that wait as most of the "RTT" and "jitter" on a veth pair (user-space stamps: ~1.6 ms RTT against a 5 us
wire). The kernel stamps every datagram when it comes off the network device; with `SO_TIMESTAMPNS` set on
the socket, `recvmsg()` hands the stamp over as ancillary data (`SCM_TIMESTAMPNS`: a `struct timespec` on
CLOCK_REALTIME, the clock `time.time()` reads and NTP timestamps are on).

The socket and the call are the caller's (this package does no I/O): set `SO_TIMESTAMPNS` at `SOL_SOCKET`
to 1, receive with `recvmsg(size, ANCILLARY_SIZE)` and pass the ancillary list to `unix_from_ancillary`.
Python's socket module names neither constant, so the values are Linux's asm-generic ones (x86, ARM,
RISC-V, s390, POWER). Elsewhere (Windows, macOS, other Linux architectures) `SO_TIMESTAMPNS` is None and
callers keep reading their own clock, as before.
"""

from __future__ import annotations

import platform
import struct
import sys
from collections.abc import Iterable
from typing import Final

__all__ = ["ANCILLARY_SIZE", "SOL_SOCKET", "SO_TIMESTAMPNS", "unix_from_ancillary"]

_ASM_GENERIC: Final = frozenset(
    {
        "x86_64",
        "amd64",
        "i386",
        "i486",
        "i586",
        "i686",
        "aarch64",
        "arm64",
        "armv6l",
        "armv7l",
        "armv8l",
        "riscv64",
        "s390x",
        "ppc64",
        "ppc64le",
    }
)
_LINUX_GENERIC: Final = sys.platform.startswith("linux") and platform.machine().lower() in _ASM_GENERIC

SOL_SOCKET: Final = 1  # Linux
SO_TIMESTAMPNS: Final[int | None] = 35 if _LINUX_GENERIC else None  # SO_TIMESTAMPNS_OLD = SCM_TIMESTAMPNS
ANCILLARY_SIZE: Final = 64  # CMSG_SPACE(sizeof(struct timespec)) is 32 on 64-bit Linux; room to spare
_TIMESPEC: Final = struct.Struct("@ll")  # struct timespec {long tv_sec; long tv_nsec;} in native layout


def unix_from_ancillary(ancdata: Iterable[tuple[int, int, bytes]]) -> float | None:
    """The kernel's arrival time (Unix seconds) from `recvmsg` ancillary data; None when there is none."""
    if SO_TIMESTAMPNS is None:
        return None
    for level, kind, data in ancdata:
        if level != SOL_SOCKET or kind != SO_TIMESTAMPNS or len(data) < _TIMESPEC.size:
            continue
        seconds, nanoseconds = (int(v) for v in _TIMESPEC.unpack_from(data))
        if seconds <= 0 or not 0 <= nanoseconds < 1_000_000_000:
            return None
        return seconds + nanoseconds / 1e9
    return None
