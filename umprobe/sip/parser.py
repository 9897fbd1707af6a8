"""A sans-I/O SIP stream parser for TCP and TLS: bytes in, `Request`/`Response` out (RFC 3261 §7, §18.3).

Usage::

    parser = StreamParser()
    parser.feed(chunk)            # b"" signals EOF
    while (msg := parser.next_message()) is not NEED_DATA:
        handle(msg)

Leniency, decided once and written down here:

* Bare LF line ends are accepted wherever CRLF is (the h11 choice); a CR not followed by LF inside the header
  block is a `bad_header` / `bad_start_line` error.
* A Content-Length repeated with the *same* numeric value is accepted; different values are
  `bad_content_length` (RFC 4475 `mcl01`).
* A Status-Line without the SP before an empty Reason-Phrase (``SIP/2.0 200``) is accepted.
* A lone CR left at EOF (half a keep-alive CRLF) is `truncated`.

The parser raises only `RemoteProtocolError` for peer bytes and `LocalProtocolError` for misuse.
"""

# Theory of operation
# -------------------
# The parser is a two-state machine over one bytearray buffer:
#
#   HEAD: drop any leading CRLF/LF (RFC 3261 §7.5; a lone CRLF is the RFC 5626 §3.5.1 keep-alive "pong"),
#         then look for the blank line that ends the header block. The search resumes where the previous one
#         stopped (minus two bytes, the longest partial terminator), so feeding a header byte by byte costs
#         O(1) per byte, never a quadratic rescan. If no blank line is found and the buffer already holds
#         max_header_bytes, the block can only end beyond the cap, so header_too_large is raised *now*,
#         without waiting for the peer. Once the blank line is there the whole block is parsed in one pass
#         and the declared body length is checked against max_body_bytes; the parsed head is kept and the
#         state becomes BODY.
#   BODY: wait until Content-Length bytes follow the head; slice the message (head + body) off the front of
#         the buffer (bytearray front deletion is amortised O(1) in CPython), and return to HEAD. Bytes after
#         the body stay buffered: they are the next message on the stream (RFC 4475 `dblreq`).
#
# EOF (feed(b"")) with an empty buffer is not an error: next_message keeps returning NEED_DATA and the caller
# reads `eof`. EOF with part of a message buffered raises truncated. Every decision depends only on the bytes
# received, never on how they were chunked, so feeding byte by byte and feeding everything at once give the
# same messages and the same error (the property tests check this). The first RemoteProtocolError kills the
# parser: every later call raises a RemoteProtocolError with the same code.

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from typing import Final, Literal

from umprobe.sip.errors import LocalProtocolError, RemoteProtocolError
from umprobe.sip.message import Headers, Request, Response, canonical_name

__all__ = ["NEED_DATA", "Event", "StreamParser"]


class Event(enum.Enum):
    """Non-message results of `StreamParser.next_message`."""

    NEED_DATA = "NEED_DATA"


NEED_DATA: Final = Event.NEED_DATA
"""Returned by `StreamParser.next_message` when no complete message is buffered."""

_BLANK_LINE: Final = re.compile(rb"\n\r?\n")  # end of the header block: CRLFCRLF (or the bare-LF variants)
_TERMINATOR_MAX: Final = 3
_VERSION_RE: Final = re.compile(rb"[Ss][Ii][Pp]/[0-9]+\.[0-9]+")  # §7.1 SIP-Version, "SIP" case-insensitive
_TOKEN_RE: Final = re.compile(rb"[A-Za-z0-9\-.!%*_+`'~]+")  # §25.1 token (Method, header field-name)
# §7.1 Request-URI: any scheme (RFC 4475 `unkscm`, `novelsc`), printable ASCII, no SP and no unescaped <>".
_URI_RE: Final = re.compile(rb"[A-Za-z][A-Za-z0-9+.\-]*:[!#-;=?-~]+")
_MAX_CONTENT_LENGTH_DIGITS: Final = 20
# Bytes that can begin a start line: a Method token (§25.1) or the "SIP/" of a Status-Line.
# A TLS record where a SIP start line should be: a TLS server on a plain SIP port answers our OPTIONS with an
# alert (or, for a TLS client on a plain port, the roles reversed, a handshake record).
_TLS_RECORD_HINTS: Final = {
    0x15: " (a TLS alert record: is the peer speaking TLS?)",
    0x16: " (a TLS handshake record: is the peer speaking TLS?)",
}
_START_BYTES: Final = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-.!%*_+`'~")


@dataclass(frozen=True, slots=True)
class _StatusLine:
    status_code: int
    reason: str


@dataclass(frozen=True, slots=True)
class _RequestLine:
    method: str
    uri: str


@dataclass(frozen=True, slots=True)
class _Head:
    start: _StatusLine | _RequestLine
    headers: Headers
    head_len: int
    body_len: int


def _remote(message: str, code: str) -> RemoteProtocolError:
    return RemoteProtocolError(message, code=code)


def _parse_start_line(line: bytes) -> _StatusLine | _RequestLine:
    if b"\r" in line:
        raise _remote("bare CR in the start line", "bad_start_line")
    if line[:4].upper() == b"SIP/":
        # §7.2 Status-Line = SIP-Version SP Status-Code SP Reason-Phrase
        version, _, rest = line.partition(b" ")
        if not _VERSION_RE.fullmatch(version):
            raise _remote(f"malformed SIP-Version in status line: {line[:80]!r}", "bad_start_line")
        if version[4:] != b"2.0":
            raise _remote(f"unsupported SIP version {version[:20]!r}", "bad_version")
        code, _, reason = rest.partition(b" ")
        # §25.1 Status-Code = 3DIGIT; §7.2 classes 1xx..6xx. RFC 4475 `bigcode` sends 4294967301.
        if len(code) != 3 or not code.isdigit() or not 100 <= int(code) <= 699:
            raise _remote(f"status code must be 3 digits in 100..699, got {code[:20]!r}", "bad_status_code")
        # §7.2, §25.1: the Reason-Phrase may be empty or UTF-8 (RFC 4475 `noreason`, `unreason`).
        return _StatusLine(int(code), reason.decode("utf-8", errors="replace"))
    # §7.1 Request-Line = Method SP Request-URI SP SIP-Version CRLF, single SPs (RFC 4475 `lwsstart`, `trws`).
    if line[:5].upper() == b"HTTP/":
        raise _remote(
            f"an HTTP status line, not SIP (an HTTP server on this port?): {line[:80]!r}", "bad_start_line"
        )
    parts = line.split(b" ")
    if len(parts) != 3:
        raise _remote(f"request line must be 'METHOD SP URI SP SIP/2.0': {line[:80]!r}", "bad_start_line")
    method, uri, version = parts
    if not _TOKEN_RE.fullmatch(method):
        raise _remote(f"method is not a token: {method[:40]!r}", "bad_start_line")
    if not _URI_RE.fullmatch(uri):
        raise _remote(f"malformed Request-URI: {uri[:80]!r}", "bad_start_line")
    if not _VERSION_RE.fullmatch(version):
        raise _remote(f"malformed SIP-Version in request line: {version[:20]!r}", "bad_start_line")
    if version[4:] != b"2.0":
        raise _remote(f"unsupported SIP version {version[:20]!r}", "bad_version")
    return _RequestLine(method.decode("ascii"), uri.decode("ascii"))


def _parse_header_lines(lines: list[bytes]) -> list[tuple[str, str]]:
    rows: list[tuple[str, str]] = []
    name: str | None = None
    parts: list[bytes] = []

    def flush() -> None:
        if name is not None:
            # §7.3.1: a fold (CRLF + SP/HT) is equivalent to a single SP.
            value = parts[0] if len(parts) == 1 else b" ".join(part for part in parts if part)
            rows.append((canonical_name(name), value.decode("utf-8", errors="replace")))

    for line in lines:
        if b"\r" in line:
            raise _remote("bare CR inside a header line", "bad_header")
        if line[:1] in (b" ", b"\t"):  # §7.3.1 header folding
            if name is None:
                raise _remote("continuation line before the first header", "bad_header")
            parts.append(line.strip(b" \t"))
            continue
        flush()
        # §7.3.1: field-name HCOLON field-value, where HCOLON = *( SP / HTAB ) ":" SWS.
        field, colon, value = line.partition(b":")
        field = field.rstrip(b" \t")
        if not colon or not _TOKEN_RE.fullmatch(field):
            raise _remote(f"malformed header line: {line[:80]!r}", "bad_header")
        name = field.decode("ascii")
        parts = [value.strip(b" \t")]
    flush()
    return rows


def _content_length(rows: list[tuple[str, str]], max_body_bytes: int) -> int:
    # §18.3 / §20.14: on a stream transport Content-Length MUST be present; it is 1*DIGIT. RFC 4475 `ncl`
    # (negative), `mcl01` (two different values), `inv2543` (absent) are all framing errors here.
    values = [value.strip() for name, value in rows if name == "Content-Length"]
    if not values:
        raise _remote(
            "Content-Length is required on a stream transport (RFC 3261 §18.3)", "bad_content_length"
        )
    lengths: set[str] = set()
    for value in values:
        if not value.isascii() or not value.isdigit():
            raise _remote(
                f"Content-Length is not a non-negative integer: {value[:40]!r}", "bad_content_length"
            )
        lengths.add(value.lstrip("0") or "0")
    if len(lengths) > 1:
        raise _remote(f"conflicting Content-Length values: {sorted(lengths)[:4]}", "bad_content_length")
    digits = lengths.pop()
    if len(digits) > _MAX_CONTENT_LENGTH_DIGITS or int(digits) > max_body_bytes:
        raise _remote(f"Content-Length {digits[:40]} exceeds the {max_body_bytes}-byte cap", "body_too_large")
    return int(digits)


class StreamParser:
    """Incremental SIP message parser for a reliable byte stream (see the theory of operation above).

    `max_header_bytes` caps the header block: start line, header lines and the blank line, not counting
    CRLFs skipped before the start line. `max_body_bytes` caps the declared Content-Length.
    """

    __slots__ = (
        "_buf",
        "_eof",
        "_error",
        "_head",
        "_line_from",
        "_max_body_bytes",
        "_max_header_bytes",
        "_search_from",
        "_start_checked",
    )

    def __init__(self, *, max_header_bytes: int = 65536, max_body_bytes: int = 65536) -> None:
        for what, cap, minimum in (
            ("max_header_bytes", max_header_bytes, 1),
            ("max_body_bytes", max_body_bytes, 0),
        ):
            if isinstance(cap, bool) or not isinstance(cap, int) or cap < minimum:
                raise LocalProtocolError(f"{what} must be an int >= {minimum}, got {cap!r}")
        self._max_header_bytes = max_header_bytes
        self._max_body_bytes = max_body_bytes
        self._buf = bytearray()
        self._eof = False
        self._search_from = 0
        self._head: _Head | None = None
        self._error: RemoteProtocolError | None = None
        self._start_checked = False
        self._line_from = 0

    @property
    def buffered(self) -> int:
        """The number of bytes received and not yet returned as part of a message."""
        return len(self._buf)

    @property
    def eof(self) -> bool:
        """Whether EOF has been fed (``feed(b"")``)."""
        return self._eof

    def feed(self, data: bytes) -> None:
        """Append received bytes; ``b""`` means the peer closed its sending side (EOF).

        Call `next_message` after each feed: the size caps are enforced there.
        """
        self._raise_if_dead()
        if self._eof:
            raise LocalProtocolError("feed() called after EOF was fed")
        if not data:
            self._eof = True
        else:
            self._buf += data

    def next_message(self) -> Response | Request | Literal[Event.NEED_DATA]:
        """Return the next complete message, or `NEED_DATA`. Raises RemoteProtocolError on bad peer bytes."""
        self._raise_if_dead()
        try:
            return self._next()
        except RemoteProtocolError as exc:
            self._error = exc
            raise

    def _raise_if_dead(self) -> None:
        if self._error is not None:
            raise RemoteProtocolError(
                f"parser stopped after an earlier error: {self._error}", code=self._error.code
            )

    def _skip_blank_lines(self) -> None:
        # §7.5: implementations processing SIP messages over stream-oriented transports MUST ignore any CRLF
        # appearing before the start-line.
        buf = self._buf
        size = len(buf)
        i = 0
        while i < size:
            if buf[i] == 0x0A:
                i += 1
            elif buf[i] == 0x0D and i + 1 < size and buf[i + 1] == 0x0A:
                i += 2
            else:
                break
        if i:
            del buf[:i]
            self._search_from = 0
            self._line_from = 0

    def _check_start_line(self) -> None:
        # Judge the start line as soon as it is complete (and its first byte at once), not when the whole
        # header block has arrived: a TLS ClientHello or an HTTP client on a plain SIP port is rejected after
        # its first bytes instead of idling until a deadline. The head is parsed again, in full, once the
        # blank line is there; both paths raise the same error, so chunking still never changes the outcome.
        buf = self._buf
        if buf[0] not in _START_BYTES and buf[0] != 0x0D:  # a lone CR is half a keep-alive CRLF
            hint = _TLS_RECORD_HINTS.get(buf[0], "")
            raise _remote(f"byte 0x{buf[0]:02x} cannot begin a SIP start line{hint}", "bad_start_line")
        end = buf.find(b"\n", self._line_from)
        if end < 0:
            self._line_from = len(buf)
            return
        self._start_checked = True
        if end + 1 > self._max_header_bytes:
            return  # the line alone passes the cap: header_too_large decides, as it would byte by byte
        line = bytes(buf[:end])
        _parse_start_line(line[:-1] if line.endswith(b"\r") else line)

    def _next(self) -> Response | Request | Literal[Event.NEED_DATA]:
        head = self._head
        if head is None:
            self._skip_blank_lines()
            if not self._buf:
                return NEED_DATA
            if len(self._buf) == 1 and self._buf[0] == 0x0D and not self._eof:
                return NEED_DATA  # maybe the first half of a CRLF: not yet header bytes, whatever the cap
            if not self._start_checked:
                self._check_start_line()
            match = _BLANK_LINE.search(self._buf, self._search_from)
            if match is None:
                if len(self._buf) >= self._max_header_bytes:
                    raise _remote(
                        f"header block exceeds {self._max_header_bytes} bytes without a blank line",
                        "header_too_large",
                    )
                if self._eof:
                    raise _remote(
                        f"EOF inside a message header ({len(self._buf)} bytes buffered)", "truncated"
                    )
                self._search_from = max(0, len(self._buf) - (_TERMINATOR_MAX - 1))
                return NEED_DATA
            if match.end() > self._max_header_bytes:
                raise _remote(
                    f"header block of {match.end()} bytes exceeds {self._max_header_bytes}",
                    "header_too_large",
                )
            lines = bytes(self._buf[: match.start()]).split(b"\n")
            lines = [line[:-1] if line.endswith(b"\r") else line for line in lines]
            start = _parse_start_line(lines[0])
            rows = _parse_header_lines(lines[1:])
            body_len = _content_length(rows, self._max_body_bytes)
            head = _Head(start=start, headers=Headers(tuple(rows)), head_len=match.end(), body_len=body_len)
            self._head = head
        total = head.head_len + head.body_len
        if len(self._buf) < total:
            if self._eof:
                raise _remote(
                    f"EOF after {len(self._buf) - head.head_len} of {head.body_len} body bytes", "truncated"
                )
            return NEED_DATA
        raw = bytes(self._buf[:total])
        del self._buf[:total]
        self._head = None
        self._search_from = 0
        self._start_checked = False
        self._line_from = 0
        body = raw[head.head_len :]
        start = head.start
        if isinstance(start, _StatusLine):
            return Response(
                status_code=start.status_code, reason=start.reason, headers=head.headers, body=body, raw=raw
            )
        return Request(method=start.method, uri=start.uri, headers=head.headers, body=body, raw=raw)
