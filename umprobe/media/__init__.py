"""Sans-I/O media for umprobe's RTP range probe: codecs, control-channel messages, statistics, sampling.

* `rtp`: the RTP fixed header (RFC 3550 §5.1);
* `packet`: the 172-byte media packet, RTP + authenticated STAMP block + μ-law silence (docs/rtp.md);
* `rtcp`: the compound RTCP probe with its authenticated UMPB APP packet (RFC 3550 §6);
* `control`: the JSON-lines control channel: hello, MACs, the ``open`` request;
* `stats`: RFC 3550 A.1/A.3 sequence and loss tracking, reorder/duplicate counts, §6.4.1 jitter, RTT;
* `sampling`: the per-cycle port sample and the fixed metric blocks of the range;
* `ntp`: NTP 64-bit timestamps (RFC 5905 §6); `errors`: `MediaError` and `ControlError`.

Nothing in this package performs I/O, reads a clock or imports trio/socket/ssl/time (a test enforces it):
bytes and times go in, values come out. Randomness comes from `secrets` through injectable callables.
"""

from umprobe.media.control import (
    MAX_LINE,
    MAX_PORTS,
    MAX_TTL,
    PROTOCOL_VERSION,
    ControlSigner,
    Direction,
    LineBuffer,
    OpenRequest,
    Role,
    canonical,
    control_mac,
    make_hello,
    new_nonce,
    parse_hello,
    parse_message,
    parse_open_request,
)
from umprobe.media.errors import (
    CONTROL_ERROR_CODES,
    MEDIA_ERROR_CODES,
    ControlError,
    ControlErrorCode,
    MediaError,
    MediaErrorCode,
)
from umprobe.media.ntp import (
    NTP_FRACTION,
    NTP_UNIX_OFFSET,
    ntp_diff,
    ntp_diff_seconds,
    ntp_from_unix,
    ntp_from_unix_ns,
    unix_from_ntp,
)
from umprobe.media.packet import (
    BLOCK_SIZE,
    DEFAULT_ERROR_ESTIMATE,
    DEFAULT_TTL,
    MEDIA_PACKET_SIZE,
    Measurement,
    decode_media,
    encode_media,
    error_estimate,
    error_estimate_seconds,
    reflect_measurement,
    reflect_media,
    session_key,
)
from umprobe.media.rtcp import (
    MIN_RTCP_SIZE,
    RtcpProbe,
    decode_rtcp,
    default_cname,
    encode_rtcp,
    reflect_rtcp,
)
from umprobe.media.rtp import (
    CLOCK_RATE,
    HEADER_SIZE,
    PACKET_INTERVAL,
    PT_PCMU,
    SAMPLES_PER_PACKET,
    RtpHeader,
)
from umprobe.media.sampling import (
    MAX_BLOCKS,
    MAX_RTP_PORT,
    MIN_RTP_PORT,
    Block,
    SweepPlan,
    block_of,
    blocks,
    even_ports,
)
from umprobe.media.stats import (
    MAX_DROPOUT,
    MAX_MISORDER,
    MIN_SEQUENTIAL,
    JitterEstimator,
    SequenceTracker,
    ntp_transit_units,
    rtt_seconds,
)

__all__ = [
    "BLOCK_SIZE",
    "CLOCK_RATE",
    "CONTROL_ERROR_CODES",
    "DEFAULT_ERROR_ESTIMATE",
    "DEFAULT_TTL",
    "HEADER_SIZE",
    "MAX_BLOCKS",
    "MAX_DROPOUT",
    "MAX_LINE",
    "MAX_MISORDER",
    "MAX_PORTS",
    "MAX_RTP_PORT",
    "MAX_TTL",
    "MEDIA_ERROR_CODES",
    "MEDIA_PACKET_SIZE",
    "MIN_RTCP_SIZE",
    "MIN_RTP_PORT",
    "MIN_SEQUENTIAL",
    "NTP_FRACTION",
    "NTP_UNIX_OFFSET",
    "PACKET_INTERVAL",
    "PROTOCOL_VERSION",
    "PT_PCMU",
    "SAMPLES_PER_PACKET",
    "Block",
    "ControlError",
    "ControlErrorCode",
    "ControlSigner",
    "Direction",
    "JitterEstimator",
    "LineBuffer",
    "Measurement",
    "MediaError",
    "MediaErrorCode",
    "OpenRequest",
    "Role",
    "RtcpProbe",
    "RtpHeader",
    "SequenceTracker",
    "SweepPlan",
    "block_of",
    "blocks",
    "canonical",
    "control_mac",
    "decode_media",
    "decode_rtcp",
    "default_cname",
    "encode_media",
    "encode_rtcp",
    "error_estimate",
    "error_estimate_seconds",
    "even_ports",
    "make_hello",
    "new_nonce",
    "ntp_diff",
    "ntp_diff_seconds",
    "ntp_from_unix",
    "ntp_from_unix_ns",
    "ntp_transit_units",
    "parse_hello",
    "parse_message",
    "parse_open_request",
    "reflect_measurement",
    "reflect_media",
    "reflect_rtcp",
    "rtt_seconds",
    "session_key",
    "unix_from_ntp",
]
