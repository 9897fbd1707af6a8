"""Client-side matching of responses to our OPTIONS request, and the healthy/accept-status rules.

`ClientTransaction` is the receive half of a non-INVITE client transaction on a reliable transport
(RFC 3261 §17.1.2): no retransmissions (Timer E is not used over TCP/TLS) and no timers at all here: the
caller owns the deadline (Timer F, §17.1.2.2, or the probe's shorter budget). It decides which messages belong
to our request:

* §8.1.3.3: a response with more than one Via value is discarded (RFC 4475 `bcast`);
* §17.1.3: the top Via branch must equal ours (exact, case-sensitive compare) and so must the CSeq
  method;
* §18.1.2: the top Via sent-by host must be ours (case-insensitive, IPv6 brackets ignored);
* and, stricter than §17.1.3 requires but cheap and useful for a prober: the Call-ID, the From tag and the
  CSeq number must equal ours too.

A final response without a To tag is still accepted: §8.2.6.2 obliges the server to add one, but a prober
reports what it got rather than policing it (the tag is on `Response.to_tag` for anyone who cares).

A matching 1xx is counted and waited past (RFC 4320 §4: a non-INVITE may see a late 100); the first matching
final response is returned and stored in `final`. Anything else, including a request from the peer, is counted
as a mismatch with a short reason (peer text is truncated; log it, never use it as a label).
"""

from __future__ import annotations

import re
from typing import Final

from umprobe.sip.builder import OptionsRequest
from umprobe.sip.message import Request, Response, same_host

__all__ = [
    "DEFAULT_ACCEPT",
    "MAX_MISMATCH_REASONS",
    "ClientTransaction",
    "is_healthy",
    "parse_accept_status",
]

DEFAULT_ACCEPT: Final[frozenset[int]] = frozenset({200})
"""Final codes that count as healthy by default: only 200, as Kamailio's ds_ping_reply_codes default."""

MAX_MISMATCH_REASONS: Final = 10


def _short(value: object, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


class ClientTransaction:
    """Match responses to one `OptionsRequest` (see the module docstring for the rules)."""

    __slots__ = ("duplicates", "final", "mismatch_reasons", "mismatched", "provisional", "request")

    def __init__(self, request: OptionsRequest) -> None:
        self.request = request
        self.provisional = 0
        self.mismatched = 0
        self.duplicates = 0
        self.mismatch_reasons: list[str] = []
        self.final: Response | None = None

    def _mismatch_reason(self, message: Response | Request) -> str | None:
        if isinstance(message, Request):
            return f"received a {_short(message.method, 24)} request instead of a response"
        ours = self.request
        if message.via_count != 1:
            return f"{message.via_count} Via values, expected exactly 1 (RFC 3261 §8.1.3.3)"
        via = message.via
        if via is None:
            return f"unparsable top Via {_short(message.top_via)}"
        branch = via.param("branch")
        if branch != ours.branch:
            return f"Via branch {_short(branch)} is not ours"
        if not same_host(via.host, ours.sent_by_host):
            return f"Via sent-by host {_short(via.host)} is not ours"
        cseq = message.cseq
        if cseq is None:
            return f"unparsable CSeq {_short(message.headers.get('CSeq'))}"
        if cseq != (ours.cseq, ours.method):
            return f"CSeq {_short(f'{cseq[0]} {cseq[1]}')} is not {ours.cseq} {ours.method}"
        if message.call_id != ours.call_id:
            return f"Call-ID {_short(message.call_id)} is not ours"
        if message.from_tag != ours.from_tag:
            return f"From tag {_short(message.from_tag)} is not ours"
        return None

    def receive(self, message: Response | Request) -> Response | None:
        """Return `message` if it is the first final response matching our request, else None.

        A matching 1xx increments `provisional`; a matching final after the first increments `duplicates`
        (an absorbed retransmission, §17.1.2.2); anything else increments `mismatched` and records a reason
        in `mismatch_reasons` (at most `MAX_MISMATCH_REASONS` kept).
        """
        reason = self._mismatch_reason(message)
        if reason is not None:
            self.mismatched += 1
            if len(self.mismatch_reasons) < MAX_MISMATCH_REASONS:
                self.mismatch_reasons.append(reason)
            return None
        assert isinstance(message, Response)
        if not message.is_final:
            self.provisional += 1
            return None
        if self.final is not None:
            self.duplicates += 1
            return None
        self.final = message
        return message


def is_healthy(status_code: int, accept: frozenset[int]) -> bool:
    """Whether a final status code counts as healthy: it is in `accept` (default `DEFAULT_ACCEPT`)."""
    return status_code in accept


_CODE_RE: Final = re.compile(r"[1-6][0-9][0-9]", re.ASCII)
_CLASS_RE: Final = re.compile(r"([1-6])[xX][xX]", re.ASCII)
_RANGE_RE: Final = re.compile(r"([0-9]+)\s*-\s*([0-9]+)", re.ASCII)


def _final_code(text: str, token: str) -> int:
    if not _CODE_RE.fullmatch(text) or int(text) < 200:
        raise ValueError(f"bad accept-status token {token!r}: {text!r} is not a final status code 200..699")
    return int(text)


def parse_accept_status(spec: str) -> frozenset[int]:
    """Parse an accept-status list such as ``"200,202"``, ``"2xx"``, ``"200-299"`` or ``"2xx, 403"``.

    Only final codes (200..699) make sense: a 1xx never ends an OPTIONS transaction. Raises ValueError
    naming the offending token.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"accept-status list is empty: {spec!r}")
    codes: set[int] = set()
    for raw in spec.split(","):
        token = raw.strip()
        if not token:
            raise ValueError(f"empty token in accept-status list {spec!r}")
        if match := _CLASS_RE.fullmatch(token):
            if match[1] == "1":
                raise ValueError(f"bad accept-status token {token!r}: 1xx responses are never final")
            base = int(match[1]) * 100
            codes.update(range(base, base + 100))
        elif match := _RANGE_RE.fullmatch(token):
            low, high = _final_code(match[1], token), _final_code(match[2], token)
            if low > high:
                raise ValueError(f"bad accept-status token {token!r}: range runs backwards")
            codes.update(range(low, high + 1))
        else:
            codes.add(_final_code(token, token))
    return frozenset(codes)
