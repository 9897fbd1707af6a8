"""SIP over UDP, sans-I/O: a datagram is one message; the Timer E/F schedule (RFC 3261 §18.3, §17.1.2.2).

`parse_datagram` parses a whole datagram with the same start-line and header rules as `StreamParser`, but with
the datagram framing of §18.3: Content-Length may be absent (the body is then the rest of the datagram); when
present it must not exceed the bytes that follow the header block (the message is truncated otherwise, and is
rejected), and bytes beyond it are dropped. CRLFs before the start line are skipped (§7.5; a lone CRLF is a
keep-alive and parses to None).

The non-INVITE client transaction timers, as pure functions of numbers (no clock here):

* Timer E starts at T1 (0.5 s) and doubles after each retransmission up to T2 (4 s); once a provisional
  response has arrived it is T2 (§17.1.2.2: "retransmissions continue ... at an interval of T2").
* Timer F is 64*T1 (32 s); the caller caps it further by its own deadline (`timer_f`).
"""

from __future__ import annotations

from typing import Final

from umprobe.sip.errors import LocalProtocolError, RemoteProtocolError
from umprobe.sip.message import Headers, Request, Response
from umprobe.sip.parser import (
    _BLANK_LINE,
    _content_length,
    _parse_header_lines,
    _parse_start_line,
    _StatusLine,
)

__all__ = [
    "MAX_DATAGRAM_BYTES",
    "T1",
    "T2",
    "next_timer_e",
    "parse_datagram",
    "retransmit_offsets",
    "timer_f",
]

T1: Final = 0.5
"""RFC 3261 §17.1.1.1 T1: the RTT estimate, 500 ms."""
T2: Final = 4.0
"""RFC 3261 §17.1.2.2 T2: the maximum retransmit interval for non-INVITE requests, 4 s."""
MAX_DATAGRAM_BYTES: Final = 65535


def parse_datagram(data: bytes, *, max_bytes: int = MAX_DATAGRAM_BYTES) -> Response | Request | None:
    """Parse one UDP datagram as one SIP message; None for a keep-alive (only CRLFs).

    Raises RemoteProtocolError (codes as `StreamParser`: ``bad_start_line``, ``bad_header``,
    ``bad_content_length``, ``header_too_large``, ``truncated``...) for anything else that is not one message.
    """
    if len(data) > max_bytes:
        raise RemoteProtocolError(
            f"datagram of {len(data)} bytes exceeds {max_bytes}", code="header_too_large"
        )
    text = data.lstrip(b"\r\n")
    if not text:
        return None
    match = _BLANK_LINE.search(text)
    if match is None:
        raise RemoteProtocolError(
            f"datagram of {len(text)} bytes has no blank line ending the header block", code="truncated"
        )
    lines = text[: match.start()].split(b"\n")
    lines = [line[:-1] if line.endswith(b"\r") else line for line in lines]
    start = _parse_start_line(lines[0])
    rows = _parse_header_lines(lines[1:])
    available = len(text) - match.end()
    if any(name == "Content-Length" for name, _ in rows):
        body_len = _content_length(rows, max_bytes)
        if body_len > available:
            raise RemoteProtocolError(
                f"Content-Length {body_len} exceeds the {available} body bytes of the datagram (§18.3)",
                code="truncated",
            )
    else:
        body_len = available
    raw = text[: match.end() + body_len]
    body = raw[match.end() :]
    headers = Headers(tuple(rows))
    if isinstance(start, _StatusLine):
        return Response(
            status_code=start.status_code, reason=start.reason, headers=headers, body=body, raw=raw
        )
    return Request(method=start.method, uri=start.uri, headers=headers, body=body, raw=raw)


def _check_timers(t1: float, t2: float) -> None:
    if not 0 < t1 <= t2:
        raise LocalProtocolError(f"timers must satisfy 0 < T1 <= T2, got T1={t1!r} T2={t2!r}")


def next_timer_e(interval: float, *, provisional: bool, t1: float = T1, t2: float = T2) -> float:
    """The Timer E interval after a retransmission sent `interval` seconds after the previous send.

    ``min(2 * interval, T2)``, or T2 once a provisional response has been received (§17.1.2.2).
    """
    _check_timers(t1, t2)
    if provisional:
        return t2
    return min(2 * interval, t2)


def timer_f(budget: float, *, t1: float = T1) -> float:
    """How long after the first send the transaction may wait: 64*T1, capped by the caller's `budget`."""
    return max(0.0, min(64 * t1, budget))


def retransmit_offsets(
    budget: float, *, t1: float = T1, t2: float = T2, provisional_at: float | None = None
) -> tuple[float, ...]:
    """Offsets (seconds after the first send) of every retransmission sent while no final response arrives.

    Only those strictly before ``timer_f(budget)`` are returned. With `provisional_at`, a provisional response
    arrives at that offset: every interval that starts after it is T2.
    """
    _check_timers(t1, t2)
    end = timer_f(budget, t1=t1)
    offsets: list[float] = []
    at, interval = 0.0, t1
    while at + interval < end:
        at += interval
        offsets.append(at)
        interval = next_timer_e(
            interval, provisional=provisional_at is not None and provisional_at <= at, t1=t1, t2=t2
        )
    return tuple(offsets)
