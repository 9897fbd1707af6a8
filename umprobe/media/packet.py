"""The media packet: RTP header + authenticated STAMP-style measurement block + μ-law silence (docs/rtp.md).

172 bytes of UDP payload in both directions, like a 20 ms G.711 packet (PROTOCOL.md §5, option A)::

    octets   0-11   RTP header (RFC 3550 §5.1), PT 0
    octets  12-123  measurement block, 112 bytes, the authenticated STAMP layout (RFC 8762 §4.2.2, §4.3.2)
    octets 124-171  padding, 48 bytes of 0xFF

Block layout (offsets inside the block; all integers big-endian)::

      0..3   sequence number          sender: its counter; reflector: its own per-session counter
      4..15  MBZ
     16..23  timestamp (NTP 64-bit)   sender: T1; reflector: T3
     24..25  error estimate           RFC 4656 §4.1.2
     26..27  SSID                     the session's ssid (RFC 8972 §3)
     28..31  MBZ
     32..39  receive timestamp        reflector: T2 (sender: MBZ)
     40..47  MBZ
     48..51  sender sequence number   reflector copies it (sender: MBZ)
     52..63  MBZ
     64..71  sender timestamp         reflector copies T1 (sender: MBZ)
     72..73  sender error estimate    reflector copies it (sender: MBZ)
     74..79  MBZ
     80      sender TTL               reflector: received TTL/hop limit, 255 if unknown (sender: MBZ)
     81..95  MBZ
     96..111 HMAC-SHA-256(K, RTP header octets 0-11 ‖ block octets 0-95)[:16]

Decisions:

* The HMAC covers the RTP header as well as block octets 0-95 (docs/rtp.md; RFC 8762 §4.4 covers the block
  only), so SSRC, sequence and timestamp are authenticated too. `decode_media` checks the size first, then
  the HMAC (constant time, `hmac.compare_digest`), and only then reads any other field (RFC 8762 §4.4: verify
  before use). A bit flipped anywhere in octets 0-123 is therefore always ``MediaError("auth")``.
* MBZ octets are zeroed on transmission and **ignored on receipt** (RFC 8762 §4.2.1, §4.3.1). They are under
  the HMAC, so nobody without the key can set them anyway. ``strict_mbz=True`` makes `decode_media` raise
  ``MediaError("mbz")`` for a non-zero MBZ octet (tests use it to check our own encoder). The fields that are
  MBZ only in a *sender* packet (receive timestamp, sender fields) are returned as read, not judged.
* The 0xFF padding is not authenticated and is ignored on receipt. The reflector writes fresh 0xFF padding
  rather than copying the request's, so a reply never carries unauthenticated bytes from the request.
* The error estimate is carried as read. `encode_media` refuses (ValueError) to *send* a zero multiplier
  (RFC 4656 §4.1.2: it MUST NOT be zero), but decoding never judges it.
* The session key comes from `session_key`; a short or empty shared secret is refused where the secret is
  loaded, not here.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from dataclasses import dataclass
from typing import Final

from umprobe.media._checks import check_uint
from umprobe.media.errors import MediaError
from umprobe.media.rtp import HEADER_SIZE, PT_PCMU, RtpHeader

__all__ = [
    "AUTH_SIZE",
    "BLOCK_SIZE",
    "DEFAULT_ERROR_ESTIMATE",
    "DEFAULT_TTL",
    "HMAC_SIZE",
    "MEDIA_PACKET_SIZE",
    "PADDING",
    "PADDING_SIZE",
    "Measurement",
    "decode_media",
    "encode_media",
    "error_estimate",
    "error_estimate_seconds",
    "reflect_measurement",
    "reflect_media",
    "session_key",
]

MEDIA_PACKET_SIZE: Final = 172
"""Bytes of UDP payload in every media packet, both directions (a 20 ms PCMU packet, RFC 3551 §4.5.14)."""
BLOCK_SIZE: Final = 112  # the authenticated STAMP block, RFC 8762 §4.2.2
AUTH_SIZE: Final = 96  # block octets under the HMAC (RFC 8762 §4.4), after the RTP header
HMAC_SIZE: Final = 16  # HMAC-SHA-256 truncated to 128 bits (RFC 8762 §4.4)
PADDING_SIZE: Final = MEDIA_PACKET_SIZE - HEADER_SIZE - BLOCK_SIZE
PADDING: Final = b"\xff" * PADDING_SIZE  # μ-law silence
DEFAULT_TTL: Final = 255  # the reflector's sender TTL when the received TTL is unknown

_MAC_START: Final = HEADER_SIZE + AUTH_SIZE  # 108: the HMAC covers octets 0..107
_MAC_END: Final = _MAC_START + HMAC_SIZE  # 124
_KEY_LABEL: Final = b"umprobe-media-v1|"
# Block octets 0..95; "x" pad bytes are the MBZ octets (written as zero, skipped when reading).
_BLOCK: Final = struct.Struct(">I12xQHH4xQ8xI12xQH6xB15x")
# (start, end) of every MBZ run inside the block.
_MBZ_RUNS: Final = ((4, 16), (28, 32), (40, 48), (52, 64), (74, 80), (81, 96))


def error_estimate(*, synchronized: bool, scale: int, multiplier: int) -> int:
    """Return the 16-bit Error Estimate ``S|Z|Scale(6)|Multiplier(8)`` (RFC 4656 §4.1.2).

    The estimate is ``multiplier * 2**-32 * 2**scale`` seconds; `synchronized` sets S. Z=0 says the timestamps
    are NTP format (RFC 8186 §2.3). Raises ValueError for a scale outside 0..63 or a multiplier outside
    1..255 (it MUST NOT be zero).
    """
    if isinstance(scale, bool) or not isinstance(scale, int) or not 0 <= scale <= 63:
        raise ValueError(f"scale must be an integer in 0..63, got {scale!r}")
    if isinstance(multiplier, bool) or not isinstance(multiplier, int) or not 1 <= multiplier <= 255:
        raise ValueError(f"multiplier must be an integer in 1..255 (never 0), got {multiplier!r}")
    return (0x8000 if synchronized else 0) | scale << 8 | multiplier


def error_estimate_seconds(value: int) -> float:
    """Return the error an Error Estimate claims, in seconds (RFC 4656 §4.1.2); S and Z are ignored."""
    check_uint("error estimate", value, 16)
    return (value & 0xFF) * 2.0 ** (((value >> 8) & 0x3F) - 32)


DEFAULT_ERROR_ESTIMATE: Final = error_estimate(synchronized=False, scale=32, multiplier=1)
"""S=0 (not known to be synchronised to UTC), 1 s: 0x2001. Callers that know better pass their own."""


def session_key(secret: bytes, peer_nonce: str, client_nonce: str) -> bytes:
    """Return the 32-byte media session key K (docs/rtp.md).

    ``K = HMAC-SHA256(secret, "umprobe-media-v1|" + peer_nonce + "|" + client_nonce)``. Both sides compute
    it from the shared secret and the two control-channel nonces; it is never sent.
    """
    if not isinstance(secret, bytes | bytearray):
        raise ValueError(f"secret must be bytes, got {type(secret).__name__}")
    if not isinstance(peer_nonce, str) or not isinstance(client_nonce, str):
        raise ValueError("peer_nonce and client_nonce must be str")
    label = _KEY_LABEL + peer_nonce.encode("utf-8") + b"|" + client_nonce.encode("utf-8")
    return hmac.digest(bytes(secret), label, hashlib.sha256)


@dataclass(frozen=True, slots=True)
class Measurement:
    """The measurement block's fields (module docstring). Ranges are checked on construction (ValueError).

    A sender fills `seq`, `timestamp` (T1), `ssid` and `error_estimate` and leaves the rest 0; a reflector
    fills every field (`seq` is its own counter, `timestamp` is T3, `receive_timestamp` is T2, the
    ``sender_*`` fields are copied from the request, `sender_ttl` is what it saw).
    """

    seq: int
    timestamp: int
    ssid: int
    error_estimate: int = DEFAULT_ERROR_ESTIMATE
    receive_timestamp: int = 0
    sender_seq: int = 0
    sender_timestamp: int = 0
    sender_error_estimate: int = 0
    sender_ttl: int = 0

    def __post_init__(self) -> None:
        check_uint("seq", self.seq, 32)
        check_uint("timestamp", self.timestamp, 64)
        check_uint("ssid", self.ssid, 16)
        check_uint("error_estimate", self.error_estimate, 16)
        check_uint("receive_timestamp", self.receive_timestamp, 64)
        check_uint("sender_seq", self.sender_seq, 32)
        check_uint("sender_timestamp", self.sender_timestamp, 64)
        check_uint("sender_error_estimate", self.sender_error_estimate, 16)
        check_uint("sender_ttl", self.sender_ttl, 8)


def _mac(key: bytes, covered: bytes) -> bytes:
    return hmac.digest(key, covered, hashlib.sha256)[:HMAC_SIZE]


def encode_media(key: bytes, header: RtpHeader, m: Measurement) -> bytes:
    """Return the 172-byte media packet for `header` and `m`, authenticated with session key `key`.

    Raises ValueError if the header's payload type is not PCMU (0) or `m.error_estimate` has a zero
    multiplier (RFC 4656 §4.1.2).
    """
    if header.payload_type != PT_PCMU:
        raise ValueError(f"media packets are PCMU (PT {PT_PCMU}), got payload_type {header.payload_type}")
    if not m.error_estimate & 0xFF:
        raise ValueError(f"error_estimate {m.error_estimate:#06x} has a zero multiplier (RFC 4656 §4.1.2)")
    covered = header.encode() + _BLOCK.pack(
        m.seq,
        m.timestamp,
        m.error_estimate,
        m.ssid,
        m.receive_timestamp,
        m.sender_seq,
        m.sender_timestamp,
        m.sender_error_estimate,
        m.sender_ttl,
    )
    return covered + _mac(key, covered) + PADDING


def decode_media(
    key: bytes, data: bytes, *, expected_ssid: int | None = None, strict_mbz: bool = False
) -> tuple[RtpHeader, Measurement]:
    """Verify and parse one media packet; return its RTP header and measurement block.

    Checks, in this order: length exactly 172 (``size``); the HMAC (``auth``); RTP version 2 (``version``),
    no P/X/CC (``format``); PT 0 (``payload_type``); the SSID when `expected_ssid` is given (``ssid``); MBZ
    octets only with `strict_mbz` (``mbz``). Every failure is a `MediaError` with that code.
    """
    if len(data) != MEDIA_PACKET_SIZE:
        raise MediaError("size", f"a media packet is {MEDIA_PACKET_SIZE} bytes, got {len(data)}")
    # RFC 8762 §4.4: verify the HMAC before using anything in the packet.
    if not hmac.compare_digest(_mac(key, data[:_MAC_START]), data[_MAC_START:_MAC_END]):
        raise MediaError("auth", "the HMAC does not verify under the session key")
    header = RtpHeader.decode(data)
    if header.payload_type != PT_PCMU:
        raise MediaError("payload_type", f"payload type {header.payload_type}, expected {PT_PCMU} (PCMU)")
    seq, ts, err, ssid, rx_ts, s_seq, s_ts, s_err, s_ttl = _BLOCK.unpack_from(data, HEADER_SIZE)
    if expected_ssid is not None and ssid != expected_ssid:
        raise MediaError("ssid", f"SSID {ssid}, expected {expected_ssid}")
    if strict_mbz:
        for start, end in _MBZ_RUNS:
            if any(data[HEADER_SIZE + start : HEADER_SIZE + end]):
                raise MediaError("mbz", f"block octets {start}..{end - 1} must be zero")
    measurement = Measurement(
        seq=seq,
        timestamp=ts,
        ssid=ssid,
        error_estimate=err,
        receive_timestamp=rx_ts,
        sender_seq=s_seq,
        sender_timestamp=s_ts,
        sender_error_estimate=s_err,
        sender_ttl=s_ttl,
    )
    return header, measurement


def reflect_measurement(
    key: bytes,
    header: RtpHeader,
    request: Measurement,
    *,
    reflector_seq: int,
    receive_ts: int,
    transmit_ts: int,
    ttl: int = DEFAULT_TTL,
    error_estimate: int = DEFAULT_ERROR_ESTIMATE,
) -> bytes:
    """Build the reflector's reply to an already verified request (see `reflect_media`).

    For a reflector that decodes first (to run its replay window on the request's sequence and timestamp)
    and then answers without verifying the HMAC twice.
    """
    reply = Measurement(
        seq=reflector_seq,
        timestamp=transmit_ts,
        ssid=request.ssid,
        error_estimate=error_estimate,
        receive_timestamp=receive_ts,
        sender_seq=request.seq,
        sender_timestamp=request.timestamp,
        sender_error_estimate=request.error_estimate,
        sender_ttl=ttl,
    )
    return encode_media(key, header, reply)


def reflect_media(
    key: bytes,
    request: bytes,
    *,
    reflector_seq: int,
    receive_ts: int,
    transmit_ts: int,
    ttl: int = DEFAULT_TTL,
    error_estimate: int = DEFAULT_ERROR_ESTIMATE,
    expected_ssid: int | None = None,
) -> bytes:
    """Verify `request` and return the reflector's reply (RFC 8762 §4.3, stateful reflector).

    The reply has the request's RTP header (SSRC, sequence, timestamp, marker), a reflector block with
    `reflector_seq`, T3 = `transmit_ts`, T2 = `receive_ts`, the sender's sequence, timestamp and error
    estimate copied, the sender TTL `ttl`, a new HMAC and fresh 0xFF padding: exactly as long as the request.
    A bad request raises `MediaError` exactly as `decode_media` does.
    """
    header, measurement = decode_media(key, request, expected_ssid=expected_ssid)
    return reflect_measurement(
        key,
        header,
        measurement,
        reflector_seq=reflector_seq,
        receive_ts=receive_ts,
        transmit_ts=transmit_ts,
        ttl=ttl,
        error_estimate=error_estimate,
    )
