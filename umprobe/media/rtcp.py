"""The RTCP probe: a valid compound RTCP packet (RFC 3550 §6.1) that carries an authenticated APP packet.

Sent to the odd port p+1 next to each sampled RTP port p (RFC 3550 §11), so a firewall that treats RTCP like
any other RTCP sees a well-formed compound::

    RR   V=2 P=0 RC=0  PT=201 length=1   SSRC                                       8 bytes (§6.4.2)
    SDES V=2 P=0 SC=1  PT=202 length=n   SSRC, CNAME item "umprobe@<ssid>", nulls  to a 32-bit boundary (§6.5)
    APP  V=2 P=0 sub=0 PT=204 length=9   SSRC, name "UMPB",                         40 bytes (§6.7)
         data: ssid (2) ‖ seq (2) ‖ NTP timestamp (8) ‖ HMAC-SHA-256(K, every preceding octet)[:16]

Lengths are in 32-bit words minus one (§6.4.1) and every packet is a whole number of words.

Decoding (`decode_rtcp`), decided once:

* The compound must be at least 48 bytes (RR + APP) and a whole number of 32-bit words (``size``,
  ``format``). Each packet must have version 2 (``version``); the lengths must tile the datagram exactly; only
  the last packet may set P (RFC 3550 §6.1, A.2); the first packet must be SR or RR (``payload_type``, A.2),
  with room for its RC report blocks; an SDES packet must parse as SC chunks of well-formed items (§6.5).
  Packets between the first and the last are otherwise passed over (BYE, other APPs, RFC 4585 feedback...).
* The **last** packet must be the ``UMPB`` APP, subtype 0, with exactly 28 data bytes before any padding
  (``format``): the HMAC covers every octet before it, so nothing after it could be authenticated.
* Unlike the media packet, the HMAC cannot be checked before *any* parsing: the length walk above is needed to
  find the APP. It reads only header words and bounds; the APP's fields are read only after the HMAC verifies
  (``auth``). Then the APP's SSRC must equal the first packet's (``format``) and the SSID the expected one
  (``ssid``). A CNAME is not required (RFC 5506 allows reduced-size RTCP).

Reflecting (`reflect_rtcp`): the reply is the reflector's own RR + SDES + APP (its SSRC, the CNAME
``umprobe@<ssid>`` unless given, the request's ssid and seq, T3 as the timestamp, a new HMAC). It is exactly
as long as the request: when the request is longer (another CNAME, extra packets), the reply's APP is padded
with the P bit (§6.4.1: padding octets counted in the length, the last one holding the count). A request
shorter than the reply would be, or needing more than 252 octets of padding, cannot be answered at equal
length and raises ``MediaError("size")``; umprobe's own prober never sends one (its compound has the same
shape as the reply).
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from dataclasses import dataclass
from typing import Final

from umprobe.media._checks import check_uint
from umprobe.media.errors import MediaError

__all__ = [
    "APP_NAME",
    "APP_SIZE",
    "APP_SUBTYPE",
    "MAX_RTCP_PADDING",
    "MIN_RTCP_SIZE",
    "PT_APP",
    "PT_BYE",
    "PT_RR",
    "PT_SDES",
    "PT_SR",
    "SDES_CNAME",
    "RtcpProbe",
    "decode_rtcp",
    "default_cname",
    "encode_rtcp",
    "reflect_rtcp",
]

PT_SR: Final = 200  # RFC 3550 §6.4.1
PT_RR: Final = 201  # §6.4.2
PT_SDES: Final = 202  # §6.5
PT_BYE: Final = 203  # §6.6
PT_APP: Final = 204  # §6.7
SDES_CNAME: Final = 1  # §6.5.1
APP_NAME: Final = b"UMPB"
APP_SUBTYPE: Final = 0
APP_SIZE: Final = 40  # APP header (12) + ssid, seq, timestamp (12) + HMAC (16)
MIN_RTCP_SIZE: Final = 8 + APP_SIZE  # an RR with RC=0 and the APP
MAX_RTCP_PADDING: Final = 252  # the largest multiple of 4 the one-octet padding count can hold

_VERSION_BITS: Final = 2 << 6
_PADDING_BIT: Final = 0x20
_HMAC_SIZE: Final = 16
_APP_COVERED: Final = APP_SIZE - _HMAC_SIZE  # APP octets under the HMAC (its header and data before the HMAC)
_HEAD: Final = struct.Struct(">BBH")
_RR: Final = struct.Struct(">BBHI")
_APP_HEAD: Final = struct.Struct(">BBHI4sHHQ")  # through the timestamp: 24 bytes


@dataclass(frozen=True, slots=True)
class RtcpProbe:
    """What an authenticated RTCP probe (or reply) says: who sent it, the session, its sequence and time.

    `ssrc` is the compound's sender (the first packet's SSRC); `timestamp` is NTP 64-bit (the prober's T1 in a
    request, the reflector's T3 in a reply); `seq` is the prober's 16-bit RTCP counter, copied into the reply.
    """

    ssrc: int
    ssid: int
    seq: int
    timestamp: int


def default_cname(ssid: int) -> str:
    """Return the CNAME docs/rtp.md prescribes, ``"umprobe@<ssid>"``."""
    check_uint("ssid", ssid, 16)
    return f"umprobe@{ssid}"


def _sdes(ssrc: int, cname: str) -> bytes:
    text = cname.encode("utf-8") if isinstance(cname, str) else b""
    if not isinstance(cname, str) or not 1 <= len(text) <= 255:
        raise ValueError(f"cname must be a str of 1..255 UTF-8 bytes (RFC 3550 §6.5), got {cname!r}")
    chunk = struct.pack(">IBB", ssrc, SDES_CNAME, len(text)) + text
    chunk += b"\x00" * (4 - len(chunk) % 4)  # the null item ends the list, more nulls to the word (§6.5)
    return _HEAD.pack(_VERSION_BITS | 1, PT_SDES, len(chunk) // 4) + chunk  # (4 + len) / 4 - 1 words


def _compound(
    key: bytes, *, ssrc: int, ssid: int, seq: int, timestamp: int, cname: str, padding: int = 0
) -> bytes:
    check_uint("ssrc", ssrc, 32)
    check_uint("ssid", ssid, 16)
    check_uint("seq", seq, 16)
    check_uint("timestamp", timestamp, 64)
    rr = _RR.pack(_VERSION_BITS, PT_RR, 1, ssrc)  # RC=0: no report blocks (§6.4.2)
    app_first = _VERSION_BITS | (_PADDING_BIT if padding else 0) | APP_SUBTYPE
    app_words = (APP_SIZE + padding) // 4 - 1
    app = _APP_HEAD.pack(app_first, PT_APP, app_words, ssrc, APP_NAME, ssid, seq, timestamp)
    covered = rr + _sdes(ssrc, cname) + app
    mac = hmac.digest(key, covered, hashlib.sha256)[:_HMAC_SIZE]
    # §6.4.1: padding octets are counted in the length; the last one is their count (including itself).
    tail = b"\x00" * (padding - 1) + bytes([padding]) if padding else b""
    return covered + mac + tail


def encode_rtcp(key: bytes, *, ssrc: int, ssid: int, seq: int, timestamp: int, cname: str) -> bytes:
    """Return the RR + SDES CNAME + APP "UMPB" compound (module docstring), authenticated with `key`.

    `seq` is 16 bits, `ssid` 16 bits, `timestamp` NTP 64-bit; `cname` is normally `default_cname(ssid)`.
    Raises ValueError for out-of-range values or a CNAME that is empty or longer than 255 UTF-8 bytes.
    """
    return _compound(key, ssrc=ssrc, ssid=ssid, seq=seq, timestamp=timestamp, cname=cname)


def _check_sdes(data: bytes, start: int, end: int, chunks: int) -> None:
    """Walk `chunks` SDES chunks in data[start:end] (RFC 3550 §6.5); MediaError("format") if malformed."""
    pos = start
    for _ in range(chunks):
        pos += 4  # SSRC/CSRC
        while True:
            if pos >= end:
                raise MediaError("format", "an SDES chunk runs past its packet")
            if data[pos] == 0:  # the null item ends the chunk; nulls pad it to a 32-bit boundary
                pos = (pos - start) // 4 * 4 + start + 4
                break
            if pos + 2 > end or pos + 2 + data[pos + 1] > end:
                raise MediaError("format", "an SDES item runs past its packet")
            pos += 2 + data[pos + 1]
    if pos != end:
        raise MediaError("format", f"SDES length disagrees with its {chunks} chunk(s)")


def _walk(data: bytes) -> tuple[int, int]:
    """Check the compound's structure; return (offset of the APP, its padding octet count)."""
    size = len(data)
    if size < MIN_RTCP_SIZE:
        raise MediaError("size", f"an RTCP probe is at least {MIN_RTCP_SIZE} bytes, got {size}")
    if size % 4:
        raise MediaError("format", f"{size} bytes is not a whole number of 32-bit words (§6.4.1)")
    offset = 0
    while True:
        first, pt, words = _HEAD.unpack_from(data, offset)
        if first >> 6 != 2:
            raise MediaError("version", f"RTCP version {first >> 6} at octet {offset}, expected 2")
        length = (words + 1) * 4
        end = offset + length
        if end > size:
            raise MediaError(
                "format", f"packet at octet {offset} claims {length} bytes, {size - offset} left"
            )
        padding = 0
        if first & _PADDING_BIT:
            if end != size:
                raise MediaError("format", "only the last packet of a compound may be padded (§6.1, A.2)")
            padding = data[end - 1]
            if not 4 <= padding <= length - 4 or padding % 4:
                raise MediaError("format", f"padding count {padding} does not fit the packet (§6.4.1)")
        count = first & 0x1F
        if offset == 0:
            if pt not in (PT_SR, PT_RR):
                raise MediaError("payload_type", f"a compound starts with SR or RR (§6.1), got PT {pt}")
            needed = (28 if pt == PT_SR else 8) + 24 * count  # §6.4.1, §6.4.2: fixed part + report blocks
            if length - padding < needed:
                raise MediaError("format", f"PT {pt} with RC={count} needs {needed} bytes, has {length}")
        elif pt == PT_SDES:
            _check_sdes(data, offset + 4, end - padding, count)
        if end == size:
            if offset == 0 or pt != PT_APP:
                raise MediaError("format", "the compound does not end with the UMPB APP packet")
            if count != APP_SUBTYPE or data[offset + 8 : offset + 12] != APP_NAME:
                raise MediaError("format", "the last packet is an APP, but not UMPB subtype 0")
            if length - padding != APP_SIZE:
                raise MediaError("format", f"the UMPB APP has {length - padding} bytes, expected {APP_SIZE}")
            return offset, padding
        offset = end


def decode_rtcp(key: bytes, data: bytes, *, expected_ssid: int | None = None) -> RtcpProbe:
    """Validate and authenticate one compound RTCP probe or reply; return what its APP says.

    Raises `MediaError` with code ``size``, ``version``, ``payload_type``, ``format``, ``auth`` or ``ssid``
    (module docstring for which check gives which).
    """
    app, _ = _walk(data)
    mac_at = app + _APP_COVERED
    if not hmac.compare_digest(
        hmac.digest(key, data[:mac_at], hashlib.sha256)[:_HMAC_SIZE], data[mac_at : mac_at + _HMAC_SIZE]
    ):
        raise MediaError("auth", "the APP HMAC does not verify under the session key")
    _, _, _, app_ssrc, _, ssid, seq, timestamp = _APP_HEAD.unpack_from(data, app)
    (ssrc,) = struct.unpack_from(">I", data, 4)
    if app_ssrc != ssrc:
        raise MediaError("format", f"APP SSRC {app_ssrc:#010x} differs from the compound's {ssrc:#010x}")
    if expected_ssid is not None and ssid != expected_ssid:
        raise MediaError("ssid", f"SSID {ssid}, expected {expected_ssid}")
    return RtcpProbe(ssrc=ssrc, ssid=ssid, seq=seq, timestamp=timestamp)


def reflect_rtcp(
    key: bytes,
    request: bytes,
    *,
    reflector_ssrc: int,
    transmit_ts: int,
    cname: str | None = None,
    expected_ssid: int | None = None,
) -> bytes:
    """Verify `request` and return the reflector's compound of exactly the same length (module docstring).

    Raises `MediaError` as `decode_rtcp` does, and ``MediaError("size")`` when no reply of equal length can
    be built.
    """
    probe = decode_rtcp(key, request, expected_ssid=expected_ssid)
    name = default_cname(probe.ssid) if cname is None else cname
    natural = 8 + len(_sdes(0, name)) + APP_SIZE
    padding = len(request) - natural
    if not 0 <= padding <= MAX_RTCP_PADDING:
        raise MediaError(
            "size", f"cannot answer a {len(request)}-byte compound at equal length (ours is {natural})"
        )
    return _compound(
        key,
        ssrc=reflector_ssrc,
        ssid=probe.ssid,
        seq=probe.seq,
        timestamp=transmit_ts,
        cname=name,
        padding=padding,
    )
