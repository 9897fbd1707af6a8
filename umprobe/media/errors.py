"""Media and control-channel errors, split by blame (the h11 model, as in `umprobe.sip.errors`).

The *peer's* bad bytes raise `MediaError` (UDP media and RTCP packets) or `ControlError` (the TCP/TLS control
channel). Each carries a `code` from a small fixed set, so a caller can count or report it as a bounded label
(never free text from the wire); the message text is for logs only.

*Our own* misuse (a port out of range for the builder, a sequence number that does not fit its field, a
message too long to send) raises the built-in `ValueError` naming the offending value: it is a bug to fix,
not a measurement.

Both error types take the code first, ``MediaError("auth")`` or ``MediaError("auth", "HMAC mismatch")``, so
the common case reads like the code it carries. (This differs from `RemoteProtocolError(message, code=...)`
in the SIP package on purpose: media callers almost always switch on the code and rarely need a message.)
"""

from __future__ import annotations

from typing import ClassVar, Final, Literal, get_args

__all__ = [
    "CONTROL_ERROR_CODES",
    "MEDIA_ERROR_CODES",
    "ControlError",
    "ControlErrorCode",
    "MediaError",
    "MediaErrorCode",
]

MediaErrorCode = Literal[
    "size",  # the datagram has the wrong length (media: not exactly 172 bytes; RTCP: too short/too long)
    "version",  # RTP/RTCP version field is not 2 (RFC 3550 §5.1, §6.4.1)
    "payload_type",  # media: PT is not 0 (PCMU); RTCP: the first packet is neither SR nor RR (§6.1)
    "auth",  # the HMAC does not verify under the session key (RFC 8762 §4.4)
    "ssid",  # authenticated, but for another session (SSID differs from the expected one, RFC 8972 §3)
    "format",  # structurally invalid: CSRC/extension/padding bits, RTCP lengths, missing APP, ...
    "mbz",  # a must-be-zero octet is not zero (only raised when the caller asks for strict checking)
]
"""The fixed set of `MediaError.code` values."""

ControlErrorCode = Literal[
    "format",  # not a UTF-8 JSON object on one line (or NaN/Infinity, duplicate keys, nesting too deep)
    "too_long",  # a line longer than the control channel's limit (MAX_LINE bytes before the \n)
    "auth",  # the "mac" is missing, malformed or wrong (replayed, wrong direction, tampered)
    "protocol",  # valid, authenticated JSON whose content breaks the protocol (wrong type, bad field)
]
"""The fixed set of `ControlError.code` values."""

MEDIA_ERROR_CODES: Final[frozenset[str]] = frozenset(get_args(MediaErrorCode))
CONTROL_ERROR_CODES: Final[frozenset[str]] = frozenset(get_args(ControlErrorCode))


class _CodedError(Exception):
    _codes: ClassVar[frozenset[str]] = frozenset()
    code: str
    detail: str

    def __init__(self, code: str, detail: str = "") -> None:
        if code not in self._codes:
            raise ValueError(
                f"unknown {type(self).__name__} code {code!r}; expected one of {sorted(self._codes)}"
            )
        super().__init__(code, detail)  # args stay (code, detail), so the error pickles and copies
        self.code = code
        self.detail = detail

    def __str__(self) -> str:
        return f"{self.code}: {self.detail}" if self.detail else self.code

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.code!r}, {self.detail!r})"


class MediaError(_CodedError):
    """A media or RTCP datagram from the wire is not acceptable; `code` is one of `MEDIA_ERROR_CODES`."""

    _codes = MEDIA_ERROR_CODES


class ControlError(_CodedError):
    """A control-channel line from the peer is not acceptable; `code` is one of `CONTROL_ERROR_CODES`."""

    _codes = CONTROL_ERROR_CODES
