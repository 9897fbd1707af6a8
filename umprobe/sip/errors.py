"""SIP errors, split by blame (the h11 model).

`LocalProtocolError` means *we* (the calling code) misused the package: a bad port for the builder, feeding a
parser after EOF, an accept-status set that can never match. It is a bug to fix, not a probe result.

`RemoteProtocolError` means the *peer* sent bytes we cannot accept. It carries a `code` from the small
fixed set `ERROR_CODES`, so probes can report a bounded reason (a metric label must never be free text from
the wire) while the message text stays available for logs.
"""

from __future__ import annotations

from typing import Final, Literal, get_args

__all__ = [
    "ERROR_CODES",
    "ErrorCode",
    "LocalProtocolError",
    "RemoteProtocolError",
    "SipError",
]

ErrorCode = Literal[
    "header_too_large",  # the header block (start line to blank line) exceeds max_header_bytes
    "body_too_large",  # Content-Length exceeds max_body_bytes
    "bad_start_line",  # neither a well-formed Request-Line nor a Status-Line (RFC 3261 §7.1, §7.2)
    "bad_header",  # a header line with no name, no colon, a bare CR, or a fold before any header (§7.3.1)
    "bad_content_length",  # Content-Length missing, not 1*DIGIT, or repeated with another value (§18.3)
    "truncated",  # EOF arrived in the middle of a message
    "bad_version",  # SIP-Version other than SIP/2.0 (§7.1)
    "bad_status_code",  # Status-Code not exactly 3 digits in 100..699 (§7.2, §25.1)
]
"""The fixed set of `RemoteProtocolError.code` values."""

ERROR_CODES: Final[frozenset[str]] = frozenset(get_args(ErrorCode))


class SipError(Exception):
    """Base class of every error this package raises on purpose."""


class LocalProtocolError(SipError):
    """The caller misused the API (bad arguments, calls in the wrong order)."""


class RemoteProtocolError(SipError):
    """The peer sent bytes that are not acceptable SIP; `code` is one of `ERROR_CODES`."""

    code: str

    def __init__(self, message: str, *, code: str) -> None:
        if code not in ERROR_CODES:
            raise ValueError(
                f"unknown RemoteProtocolError code {code!r}; expected one of {sorted(ERROR_CODES)}"
            )
        super().__init__(message)
        self.code = code

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self)!r}, code={self.code!r})"
