"""SIP message values: headers, requests, responses, and the few header-field parsers a prober needs.

Everything here is a frozen, slotted value. The stream parser (`umprobe.sip.parser`) builds them from bytes;
the convenience properties read the handful of fields that transaction matching and reporting use (Via, CSeq,
Call-ID, tags, Server, ms-diagnostics, Retry-After). The properties never raise on hostile input: a field that
is absent or does not parse reads as ``None``.

Decisions worth knowing:

* Header names are canonicalised on the way in (RFC 3261 §7.3.3 compact forms expanded, well-known names in
  their usual spelling); unknown names keep the spelling received. Lookups are case-insensitive and accept the
  compact letters too (§7.3.1, §7.3.3).
* `Message.cseq` is ``None`` when the number is not below 2**31 (§8.1.1.5 requires that) or the value does not
  parse; RFC 4475 `scalarlg` (a 22-digit CSeq) therefore reads as ``None`` instead of a huge int.
* `Response.retry_after` is ``None`` when the delta-seconds does not fit 32 bits (`RETRY_AFTER_MAX`): RFC 3261
  §20.33 gives no range, and a "back off for 10**27 seconds" from a peer is treated as no usable hint.
* Header values are decoded as UTF-8 with ``errors="replace"``; the exact bytes stay in ``raw``.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Final

from umprobe.sip.errors import LocalProtocolError

__all__ = [
    "CSEQ_MAX",
    "RETRY_AFTER_MAX",
    "Headers",
    "Request",
    "Response",
    "Via",
    "build_response",
    "canonical_name",
    "parse_cseq",
    "parse_header_params",
    "parse_retry_after",
    "parse_via",
    "same_host",
    "split_header_list",
]

CSEQ_MAX: Final = 2**31 - 1
"""Largest CSeq sequence number accepted (RFC 3261 §8.1.1.5: "MUST be less than 2**31")."""

RETRY_AFTER_MAX: Final = 2**32 - 1
"""Largest Retry-After delta-seconds accepted; larger values read as ``None``."""

# RFC 3261 §7.3.3 compact forms, plus extension letters (RFC 6665 o/u, RFC 3515 r, RFC 3892 b, RFC 4028 x,
# RFC 3841 a/j/d, RFC 4474 y/n). Letters are case-insensitive like every header name (§7.3.1).
_COMPACT: Final[dict[str, str]] = {
    "i": "Call-ID",
    "m": "Contact",
    "e": "Content-Encoding",
    "l": "Content-Length",
    "c": "Content-Type",
    "f": "From",
    "s": "Subject",
    "k": "Supported",
    "t": "To",
    "v": "Via",
    "o": "Event",
    "u": "Allow-Events",
    "r": "Refer-To",
    "b": "Referred-By",
    "x": "Session-Expires",
    "a": "Accept-Contact",
    "j": "Reject-Contact",
    "d": "Request-Disposition",
    "y": "Identity",
    "n": "Identity-Info",
}

_WELL_KNOWN: Final = (
    "Accept",
    "Accept-Encoding",
    "Accept-Language",
    "Alert-Info",
    "Allow",
    "Authentication-Info",
    "Authorization",
    "Call-Info",
    "Content-Disposition",
    "Content-Language",
    "CSeq",
    "Date",
    "Error-Info",
    "Expires",
    "In-Reply-To",
    "Max-Forwards",
    "Min-Expires",
    "MIME-Version",
    "Organization",
    "P-Asserted-Identity",
    "Path",
    "Priority",
    "Proxy-Authenticate",
    "Proxy-Authorization",
    "Proxy-Require",
    "RAck",
    "Reason",
    "Record-Route",
    "Reply-To",
    "Require",
    "Retry-After",
    "Route",
    "RSeq",
    "Server",
    "Service-Route",
    "Timestamp",
    "Unsupported",
    "User-Agent",
    "Warning",
    "WWW-Authenticate",
    "ms-diagnostics",
    "ms-diagnostics-public",
    *_COMPACT.values(),
)
_CANONICAL: Final[dict[str, str]] = {name.lower(): name for name in _WELL_KNOWN}

# Headers whose grammar is a comma-separated list (RFC 3261 §7.3.1: only these may be split or combined).
# The four *Authenticate/*Authorization headers are deliberately absent: their values contain commas and
# repeated rows are never merged (§7.3.1, last paragraph).
_LIST_KEYS: Final[frozenset[str]] = frozenset(
    name.lower()
    for name in (
        "Accept",
        "Accept-Contact",
        "Accept-Encoding",
        "Accept-Language",
        "Alert-Info",
        "Allow",
        "Allow-Events",
        "Call-Info",
        "Contact",
        "Content-Encoding",
        "Content-Language",
        "Error-Info",
        "In-Reply-To",
        "P-Asserted-Identity",
        "Path",
        "Proxy-Require",
        "Reason",
        "Record-Route",
        "Reject-Contact",
        "Request-Disposition",
        "Require",
        "Route",
        "Service-Route",
        "Supported",
        "Unsupported",
        "Via",
        "Warning",
    )
)

_TOKEN_RE: Final = re.compile(r"[A-Za-z0-9\-.!%*_+`'~]+")  # RFC 3261 §25.1 token
_CSEQ_RE: Final = re.compile(r"\s*([0-9]+)\s+([A-Za-z0-9\-.!%*_+`'~]+)\s*", re.ASCII)  # §20.16
# §20.33: Retry-After = delta-seconds [ comment ] *( SEMI retry-param ); the comment/params are ignored here.
_RETRY_AFTER_RE: Final = re.compile(r"\s*([0-9]+)\s*(?:\(.*\))?\s*(?:;.*)?", re.ASCII | re.DOTALL)
# §20.42 / §25.1: via-parm = sent-protocol LWS sent-by *( SEMI via-params ); LWS may surround "/" and ":".
_VIA_RE: Final = re.compile(
    r"""\s*(?P<name>[^\s/;]+)\s*/\s*(?P<version>[^\s/;]+)\s*/\s*(?P<transport>[^\s/;]+)
        \s+(?P<host>\[[^\]\s]*\]|[^\s:;\[\]]+)(?:\s*:\s*(?P<port>[0-9]+))?\s*(?:;(?P<params>.*))?""",
    re.VERBOSE | re.DOTALL | re.ASCII,
)


def canonical_name(name: str) -> str:
    """Return the canonical spelling of a header name (compact letters expanded, RFC 3261 §7.3.3).

    Unknown names are returned unchanged: names compare case-insensitively (§7.3.1), so keeping the received
    spelling loses nothing.
    """
    low = name.lower()
    if len(low) == 1:
        full = _COMPACT.get(low)
        if full is not None:
            return full
    return _CANONICAL.get(low, name)


# `_key` of the names this package looks up and of the spellings the parser stores for them, made once:
# a response is matched and reported with a dozen lookups over all of its rows.
_KEYS: Final[dict[str, str]] = {
    name: canonical_name(name).lower()
    for name in (*_WELL_KNOWN, *_COMPACT, *(letter.upper() for letter in _COMPACT))
}


def _key(name: str) -> str:
    key = _KEYS.get(name)
    return key if key is not None else canonical_name(name).lower()


def _scan_split(value: str, sep: str, *, angles: bool) -> list[str]:
    """Split `value` on `sep` outside quoted strings (backslash escapes, §25.1) and, if `angles`, <...>."""
    if '"' not in value and (not angles or "<" not in value):
        return value.split(sep)  # nothing to skip over: the scan below would split at every `sep`
    parts: list[str] = []
    start = 0
    in_quote = False
    escaped = False
    depth = 0
    for i, ch in enumerate(value):
        if in_quote:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_quote = False
        elif ch == '"':
            in_quote = True
        elif angles and ch == "<":
            depth += 1
        elif angles and ch == ">" and depth:
            depth -= 1
        elif ch == sep and not depth:
            parts.append(value[start:i])
            start = i + 1
    parts.append(value[start:])
    return parts


def split_header_list(value: str) -> list[str]:
    """Split one list-type header value on commas outside quotes and <...> (RFC 3261 §7.3.1).

    Elements are stripped of surrounding whitespace; empty elements are dropped.
    """
    return [part.strip() for part in _scan_split(value, ",", angles=True) if part.strip()]


def parse_header_params(value: str) -> dict[str, str | None]:
    """Return the header parameters of a name-addr/addr-spec value (To, From, Contact), names lowercased.

    With ``<...>`` present the parameters follow the closing ``>``; without it every ``;`` starts a header
    parameter (RFC 3261 §20.10). The first occurrence of a name wins. Whitespace around ``;`` and ``=`` is
    allowed (§25.1 SEMI, EQUAL).
    """
    rest: str | None = None
    in_quote = False
    escaped = False
    for i, ch in enumerate(value):
        if in_quote:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_quote = False
        elif ch == '"':
            in_quote = True
        elif ch == "<":
            close = value.find(">", i + 1)
            rest = "" if close < 0 else value[close + 1 :]
            break
        elif ch == ";":
            rest = value[i:]
            break
    if not rest:
        return {}
    return _params(_scan_split(rest, ";", angles=False)[1:])


def _params(raw_params: Iterable[str]) -> dict[str, str | None]:
    params: dict[str, str | None] = {}
    for raw in raw_params:
        name, eq, val = raw.partition("=")
        name = name.strip().lower()
        if name and name not in params:
            params[name] = val.strip() if eq else None
    return params


@dataclass(frozen=True, slots=True)
class Via:
    """One parsed Via value (RFC 3261 §20.42): ``SIP/2.0/TCP host:port;branch=...``.

    `transport` is upper-cased; `host` is as received but without IPv6 brackets; `params` keeps the order
    received, names lowercased, values as received (None for a valueless parameter such as ``rport``).
    """

    protocol: str
    transport: str
    host: str
    port: int | None
    params: tuple[tuple[str, str | None], ...]

    def param(self, name: str) -> str | None:
        """Return the value of the first parameter `name` (case-insensitive); None if absent or valueless."""
        low = name.lower()
        for key, val in self.params:
            if key == low:
                return val
        return None

    def has_param(self, name: str) -> bool:
        """Return whether parameter `name` is present, with or without a value."""
        low = name.lower()
        return any(key == low for key, _ in self.params)


def parse_via(value: str) -> Via | None:
    """Parse one Via value (not a comma-separated row); return None if it does not parse."""
    match = _VIA_RE.fullmatch(value)
    if match is None:
        return None
    host = match["host"]
    if host.startswith("["):
        host = host[1:-1]
        if not host:
            return None
    port: int | None = None
    if match["port"] is not None:
        digits = match["port"].lstrip("0") or "0"
        if len(digits) > 5 or not 0 < int(digits) <= 65535:
            return None
        port = int(digits)
    params: list[tuple[str, str | None]] = []
    if match["params"] is not None:
        for raw in _scan_split(match["params"], ";", angles=False):
            name, eq, val = raw.partition("=")
            name = name.strip().lower()
            if name:
                params.append((name, val.strip() if eq else None))
    protocol = f"{match['name']}/{match['version']}"
    return Via(
        protocol=protocol, transport=match["transport"].upper(), host=host, port=port, params=tuple(params)
    )


def same_host(a: str, b: str) -> bool:
    """Compare two hosts case-insensitively, ignoring IPv6 brackets; IP literals compare as addresses."""
    a = a[1:-1] if a.startswith("[") and a.endswith("]") else a
    b = b[1:-1] if b.startswith("[") and b.endswith("]") else b
    if a.lower() == b.lower():
        return True
    try:
        return ipaddress.ip_address(a) == ipaddress.ip_address(b)
    except ValueError:
        return False


def _bounded_int(digits: str, maximum: int) -> int | None:
    # Never call int() on an unbounded digit string (CPython caps it at 4300 digits with a ValueError).
    significant = digits.lstrip("0") or "0"
    if len(significant) > len(str(maximum)):
        return None
    number = int(significant)
    return number if number <= maximum else None


def parse_cseq(value: str | None) -> tuple[int, str] | None:
    """Parse ``CSeq: 1 OPTIONS`` into ``(1, "OPTIONS")`` (RFC 3261 §20.16).

    Returns None when absent, unparsable, or when the number is not below 2**31 (§8.1.1.5).
    """
    if value is None:
        return None
    match = _CSEQ_RE.fullmatch(value)
    if match is None:
        return None
    number = _bounded_int(match[1], CSEQ_MAX)
    return None if number is None else (number, match[2])


def parse_retry_after(value: str | None) -> int | None:
    """Parse the delta-seconds of a Retry-After value (RFC 3261 §20.33): ``120 (lunch);duration=3600`` -> 120.

    Returns None when absent, unparsable, or above `RETRY_AFTER_MAX`.
    """
    if value is None:
        return None
    match = _RETRY_AFTER_RE.fullmatch(value)
    if match is None:
        return None
    return _bounded_int(match[1], RETRY_AFTER_MAX)


@dataclass(frozen=True, slots=True)
class Headers:
    """An ordered, immutable header list: ``(name, value)`` rows as received (folds joined with one SP).

    The parser stores canonical names (see `canonical_name`); lookups canonicalise the queried name and each
    stored name, so compact letters and any letter case work both ways.
    """

    items: tuple[tuple[str, str], ...] = ()
    # Every row's value by the row's `_key`, in order: made by the first lookup (a response is matched and
    # reported with a dozen of them), derived from `items` alone.
    _by_key: dict[str, list[str]] | None = field(default=None, init=False, repr=False, compare=False)

    @classmethod
    def from_pairs(cls, pairs: Iterable[tuple[str, str]]) -> Headers:
        """Build headers from ``(name, value)`` pairs, canonicalising the names."""
        return cls(tuple((canonical_name(name), value) for name, value in pairs))

    def _values(self, key: str) -> list[str]:
        by_key = self._by_key
        if by_key is None:
            by_key = {}
            for row_name, value in self.items:
                by_key.setdefault(_key(row_name), []).append(value)
            object.__setattr__(self, "_by_key", by_key)
        return by_key.get(key, [])

    def get(self, name: str) -> str | None:
        """Return the value of the first row named `name` (case-insensitive, compact forms accepted)."""
        values = self._values(_key(name))
        return values[0] if values else None

    def get_all(self, name: str) -> list[str]:
        """Return every value of `name` in order.

        For list-type headers (Via, Contact, Allow, ...) comma-separated values are split outside quotes
        and ``<...>`` so that several rows and one comma-joined row read the same (RFC 3261 §7.3.1). Other
        headers, including WWW-Authenticate, Authorization, Proxy-Authenticate and Proxy-Authorization, are
        returned one value per row.
        """
        key = _key(name)
        values = self._values(key)
        if key not in _LIST_KEYS:
            return list(values)
        return [element for value in values for element in split_header_list(value)]

    def __len__(self) -> int:
        return len(self.items)

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return iter(self.items)


class _MessageFields:
    """Convenience readers shared by `Request` and `Response` (a slot-less mixin over ``self.headers``)."""

    __slots__ = ()
    headers: Headers

    @property
    def call_id(self) -> str | None:
        """The Call-ID (§20.8), or None."""
        return self.headers.get("Call-ID")

    @property
    def cseq(self) -> tuple[int, str] | None:
        """``(number, method)`` from CSeq (§20.16); None if absent, unparsable or >= 2**31."""
        return parse_cseq(self.headers.get("CSeq"))

    @property
    def top_via(self) -> str | None:
        """The first Via value, counting comma-separated values within a row (§20.42), or None."""
        vias = self.headers.get_all("Via")
        return vias[0] if vias else None

    @property
    def via_count(self) -> int:
        """The number of Via values across all rows."""
        return len(self.headers.get_all("Via"))

    @property
    def via(self) -> Via | None:
        """The top Via parsed, or None if absent or unparsable."""
        top = self.top_via
        return None if top is None else parse_via(top)

    @property
    def via_branch(self) -> str | None:
        """The branch parameter of the top Via (§8.1.1.7), compared exactly by transaction matching."""
        via = self.via
        return None if via is None else via.param("branch")

    @property
    def via_sent_by(self) -> tuple[str, int | None] | None:
        """``(host, port)`` of the top Via's sent-by, host without IPv6 brackets, port None when absent."""
        via = self.via
        return None if via is None else (via.host, via.port)

    @property
    def from_tag(self) -> str | None:
        """The tag parameter of From (§19.3), or None."""
        value = self.headers.get("From")
        return None if value is None else parse_header_params(value).get("tag")

    @property
    def to_tag(self) -> str | None:
        """The tag parameter of To (§19.3), or None."""
        value = self.headers.get("To")
        return None if value is None else parse_header_params(value).get("tag")


@dataclass(frozen=True, slots=True)
class Response(_MessageFields):
    """A parsed SIP response. `raw` is the exact bytes of this message as received (no leading CRLFs)."""

    status_code: int
    reason: str
    headers: Headers
    body: bytes
    raw: bytes

    @property
    def is_final(self) -> bool:
        """Whether this is a final (>= 200) response (§7.2)."""
        return self.status_code >= 200

    @property
    def server(self) -> str | None:
        """The Server header (§20.35): log it, never use it as a metric label."""
        return self.headers.get("Server")

    @property
    def ms_diagnostics(self) -> str | None:
        """Microsoft's ms-diagnostics header, read by Exchange's own pinger: log it, never label with it."""
        return self.headers.get("ms-diagnostics")

    @property
    def retry_after(self) -> int | None:
        """Retry-After delta-seconds (§20.33), or None if absent, unparsable or above `RETRY_AFTER_MAX`."""
        return parse_retry_after(self.headers.get("Retry-After"))


@dataclass(frozen=True, slots=True)
class Request(_MessageFields):
    """A parsed SIP request. `raw` is the exact bytes of this message as received (no leading CRLFs)."""

    method: str
    uri: str
    headers: Headers
    body: bytes
    raw: bytes


def _check_text(what: str, value: str) -> None:
    if any(ch in value for ch in "\r\n\0"):
        raise LocalProtocolError(f"{what} must not contain CR, LF or NUL: {value!r}")


def _stamp_via(value: str, host: str, port: int) -> str:
    # §18.2.1: add received= when sent-by differs from the packet source; RFC 3581 §4: with a valueless rport,
    # fill in the source port and always add received=.
    via = parse_via(value)
    if via is None:
        return value
    head, *params = _scan_split(value, ";", angles=False)
    rport = False
    kept: list[str] = []
    for raw in params:
        name = raw.partition("=")[0].strip().lower()
        if name == "received":
            continue
        if name == "rport" and "=" not in raw:
            rport = True
            kept.append(f"rport={port}")
        else:
            kept.append(raw)
    if rport or not same_host(via.host, host):
        kept.append(f"received={host}")
    return ";".join([head.rstrip(), *kept])


def build_response(
    request: Request,
    status_code: int,
    reason: str,
    *,
    to_tag: str,
    extra_headers: Sequence[tuple[str, str]] = (),
    server: str | None = None,
    received_from: tuple[str, int] | None = None,
) -> bytes:
    """Build the wire bytes of a response to `request` (RFC 3261 §8.2.6.2).

    Copies every Via row in order, From, To (adding ``;tag=to_tag`` when the To has no tag and the response
    is not a 100, §8.2.6.2), Call-ID and CSeq; then Server (if given), `extra_headers`, ``Content-Length: 0``.
    `received_from` is the packet source ``(ip, port)``: when given, the top Via gets ``received=`` and a
    valueless ``rport`` is filled in (§18.2.1, RFC 3581 §4).

    Raises LocalProtocolError for a status code outside 100..699, CR/LF in any text, a to_tag that is not a
    token, or a request lacking Via, From, To, Call-ID or CSeq (a responder should drop such requests).
    """
    if isinstance(status_code, bool) or not isinstance(status_code, int) or not 100 <= status_code <= 699:
        raise LocalProtocolError(f"status_code must be an int in 100..699, got {status_code!r}")
    _check_text("reason", reason)
    if not _TOKEN_RE.fullmatch(to_tag):
        raise LocalProtocolError(f"to_tag must be a non-empty SIP token (RFC 3261 §25.1), got {to_tag!r}")
    via_rows = [value for name, value in request.headers if _key(name) == "via"]
    mandatory = {name: request.headers.get(name) for name in ("From", "To", "Call-ID", "CSeq")}
    missing = [name for name, value in mandatory.items() if value is None] + ([] if via_rows else ["Via"])
    if missing:
        raise LocalProtocolError(f"cannot answer a request without {', '.join(missing)} (RFC 3261 §8.1.1)")
    if received_from is not None:
        first = _scan_split(via_rows[0], ",", angles=True)
        first[0] = _stamp_via(first[0].strip(), received_from[0], received_from[1])
        via_rows[0] = ", ".join(part.strip() for part in first)
    to_value = mandatory["To"]
    assert to_value is not None
    if status_code != 100 and "tag" not in parse_header_params(to_value):
        to_value = f"{to_value};tag={to_tag}"
    rows: list[tuple[str, str]] = [("Via", value) for value in via_rows]
    rows += [
        ("From", mandatory["From"] or ""),
        ("To", to_value),
        ("Call-ID", mandatory["Call-ID"] or ""),
        ("CSeq", mandatory["CSeq"] or ""),
    ]
    if server is not None:
        rows.append(("Server", server))
    for name, value in extra_headers:
        if not _TOKEN_RE.fullmatch(name):
            raise LocalProtocolError(f"extra header name must be a SIP token, got {name!r}")
        if _key(name) == "content-length":
            raise LocalProtocolError("extra_headers must not set Content-Length; build_response writes it")
        rows.append((canonical_name(name), value))
    rows.append(("Content-Length", "0"))
    lines = [f"SIP/2.0 {status_code} {reason}"]
    for name, value in rows:
        _check_text(f"header {name}", value)
        lines.append(f"{name}: {value}")
    try:
        return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8")
    except UnicodeEncodeError as exc:
        raise LocalProtocolError(f"response text is not encodable as UTF-8: {exc}") from exc
