"""The RTP fixed header (RFC 3550 §5.1) as umprobe sends it: 12 bytes, V=2, P=0, X=0, CC=0.

Wire layout (network byte order)::

     0                   1                   2                   3
     0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
    |V=2|P|X|  CC   |M|     PT      |       sequence number         |
    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
    |                           timestamp                           |
    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
    |           synchronization source (SSRC) identifier            |
    +=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+

`RtpHeader.decode` reads exactly that shape: a version other than 2 is ``MediaError("version")``; a set P
or X bit or a non-zero CC is ``MediaError("format")`` (the value has no field for them, so accepting them
would make ``decode(x).encode() != x[:12]``); fewer than 12 bytes is ``MediaError("size")``. The payload
type is returned, not judged: the media codec decides which PT it accepts.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Final

from umprobe.media._checks import check_uint
from umprobe.media.errors import MediaError

__all__ = [
    "CLOCK_RATE",
    "HEADER_SIZE",
    "PACKET_INTERVAL",
    "PT_PCMU",
    "RTP_VERSION",
    "SAMPLES_PER_PACKET",
    "RtpHeader",
]

RTP_VERSION: Final = 2  # RFC 3550 §5.1
HEADER_SIZE: Final = 12  # RFC 3550 §5.1, with CC=0 and no extension
PT_PCMU: Final = 0  # RFC 3551 §6 Table 4: PCMU, 8000 Hz, 1 channel
CLOCK_RATE: Final = 8000  # RFC 3551 §4.5.14: PCMU's RTP clock rate
SAMPLES_PER_PACKET: Final = 160  # 20 ms at 8 kHz (RFC 3551 §4.2 default packetization)
PACKET_INTERVAL: Final = 0.02  # seconds between packets: 50 packets/s

_HEADER: Final = struct.Struct(">BBHII")


@dataclass(frozen=True, slots=True)
class RtpHeader:
    """One RTP fixed header (RFC 3550 §5.1). Field ranges are checked on construction (ValueError)."""

    sequence: int
    timestamp: int
    ssrc: int
    marker: bool = False
    payload_type: int = PT_PCMU

    def __post_init__(self) -> None:
        check_uint("sequence", self.sequence, 16)
        check_uint("timestamp", self.timestamp, 32)
        check_uint("ssrc", self.ssrc, 32)
        check_uint("payload_type", self.payload_type, 7)
        if not isinstance(self.marker, bool):
            raise ValueError(f"marker must be a bool, got {self.marker!r}")

    def encode(self) -> bytes:
        """Return the 12 header bytes: V=2, P=0, X=0, CC=0 (RFC 3550 §5.1)."""
        return _HEADER.pack(
            RTP_VERSION << 6,
            (0x80 if self.marker else 0) | self.payload_type,
            self.sequence,
            self.timestamp,
            self.ssrc,
        )

    @classmethod
    def decode(cls, data: bytes) -> RtpHeader:
        """Parse the first 12 bytes of `data` (the payload after them is ignored); see the module doc."""
        if len(data) < HEADER_SIZE:
            raise MediaError("size", f"an RTP header needs {HEADER_SIZE} bytes, got {len(data)}")
        first, second, sequence, timestamp, ssrc = _HEADER.unpack_from(data)
        if first >> 6 != RTP_VERSION:
            raise MediaError("version", f"RTP version {first >> 6}, expected {RTP_VERSION}")
        if first & 0x3F:
            raise MediaError(
                "format",
                f"P={(first >> 5) & 1} X={(first >> 4) & 1} CC={first & 0x0F}; umprobe's RTP has none",
            )
        return cls(
            sequence=sequence,
            timestamp=timestamp,
            ssrc=ssrc,
            marker=bool(second & 0x80),
            payload_type=second & 0x7F,
        )
