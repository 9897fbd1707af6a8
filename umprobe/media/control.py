"""The control channel's codec (docs/rtp.md "Control channel"): JSON lines, hello, MACs, the `open` request.

One message per line: a UTF-8 JSON object followed by ``\\n``, at most `MAX_LINE` bytes before the ``\\n``.
After the peer's unauthenticated ``hello``, every message in either direction carries ``"mac"``::

    mac = hex(HMAC-SHA256(secret, "umprobe-ctl-v1|" + peer_nonce + "|" + client_nonce + "|"
                                  + direction + "|" + str(n) + "|" + canonical))

``direction`` is ``"c2p"`` (prober → peer) or ``"p2c"``, ``n`` counts that direction's messages from 0
and ``canonical`` is ``json.dumps(message_without_mac, sort_keys=True, separators=(",", ":"))``. The
counter makes a replayed line fail, the direction makes a reflected line fail, and the nonces bind the MAC
to one connection.

Decisions:

* Parsing is strict: the line must be valid UTF-8 (no UTF-16/32 sniffing), a JSON object, without duplicate
  keys, NaN, Infinity or overflowing floats, and not nested deeper than the JSON decoder allows. Anything else
  is ``ControlError("format")``; a line over the limit is ``ControlError("too_long")``.
* A missing or malformed ``mac`` (not 64 lower-case hex digits) is ``ControlError("auth")``, like a wrong one.
  The comparison is constant-time. A failed `ControlSigner.open` leaves the counter where it was; the caller
  ends the connection (docs/rtp.md: no answer to a bad MAC).
* The peer learns the client nonce from the prober's first message (``open`` carries ``client_nonce`` and its
  MAC already uses it): a peer-side `ControlSigner` may be created with ``client_nonce=None`` and adopts the
  nonce once the first message's MAC verifies with it.
* `canonical` drops a ``"mac"`` key if present, so it can be called on a message as received.
* `parse_open_request` judges ports against the peer's range: odd ports, ports outside ``--rtp-range`` and
  ports over the peer's `max_ports` go to ``refused`` (they are answers, not errors); repeated ports count
  once. A list longer than `MAX_PORTS` (256, the protocol's limit) or a value that is not a port number at all
  (not an integer in 0..65535) is ``ControlError("protocol")``. This keeps the ``opened`` reply (at most 256
  listed ports) well under `MAX_LINE`.
* `ControlSigner.seal` refuses (ValueError) to build a line the other side would reject as too long. Note
  that a ``stats`` reply in the docs/rtp.md shape costs about 50 bytes per port, so it passes 4096 bytes at
  roughly 70 ports: a session with more ports needs a larger limit or a split reply (an open question for
  the wire format, not something this codec can decide).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Final, Literal

from umprobe.media.errors import ControlError
from umprobe.media.sampling import even_ports

__all__ = [
    "MAX_LINE",
    "MAX_PORTS",
    "MAX_TTL",
    "PROTOCOL_VERSION",
    "ControlSigner",
    "Direction",
    "LineBuffer",
    "OpenRequest",
    "Role",
    "canonical",
    "control_mac",
    "make_hello",
    "new_nonce",
    "parse_hello",
    "parse_message",
    "parse_open_request",
]

MAX_LINE: Final = 4096
"""Longest control line in bytes, not counting its ``\\n``."""
MAX_PORTS: Final = 256  # ports per `open` request and per session (docs/rtp.md)
MAX_TTL: Final = 60  # seconds a session may live (docs/rtp.md); the peer caps a larger ttl
PROTOCOL_VERSION: Final = 1

Direction = Literal["c2p", "p2c"]
Role = Literal["client", "peer"]

_MAC_LABEL: Final = "umprobe-ctl-v1"
_NONCE_RE: Final = re.compile(r"[0-9a-f]{32}")
_MAC_RE: Final = re.compile(r"[0-9a-f]{64}")
_BANNER_RE: Final = re.compile(r"[\x21-\x7e][\x20-\x7e]{0,127}")  # printable ASCII, 1..128 characters


def new_nonce(token_hex: Callable[[int], str] = secrets.token_hex) -> str:
    """Return a fresh 32-hex-digit nonce (128 random bits from `secrets`; inject `token_hex` in tests)."""
    nonce = token_hex(16)
    _check_nonce("nonce", nonce)
    return nonce


def _check_nonce(name: str, value: object) -> None:
    if not isinstance(value, str) or not _NONCE_RE.fullmatch(value):
        raise ValueError(f"{name} must be 32 lower-case hex digits, got {value!r}")


class LineBuffer:
    """Split a byte stream into ``\\n``-terminated lines, with a cap on the line length.

    `feed` appends bytes; `next_line` returns the next complete line without its ``\\n`` (a trailing ``\\r``
    is kept; JSON ignores it) or None when no complete line is buffered. More than `max_line` bytes without a
    ``\\n`` (checked on `feed`) or a complete line longer than `max_line` (checked on `next_line`) raise
    ``ControlError("too_long")``, and every later call raises it again. Each byte is scanned once and lines
    are cut off the front of a bytearray (amortised O(1) in CPython), so the cost is O(1) amortised per byte.
    """

    __slots__ = ("_buffer", "_error", "_max_line", "_scanned", "_tail")

    def __init__(self, max_line: int = MAX_LINE) -> None:
        if isinstance(max_line, bool) or not isinstance(max_line, int) or max_line < 1:
            raise ValueError(f"max_line must be a positive integer, got {max_line!r}")
        self._max_line = max_line
        self._buffer = bytearray()
        self._scanned = 0  # bytes at the front of the buffer known to hold no b"\n"
        self._tail = 0  # bytes after the last b"\n" in the buffer
        self._error: ControlError | None = None

    @property
    def buffered(self) -> int:
        """Bytes buffered and not yet returned (a non-zero value at EOF means a truncated line)."""
        return len(self._buffer)

    def _fail(self, detail: str) -> ControlError:
        self._error = ControlError("too_long", detail)
        return self._error

    def feed(self, data: bytes) -> None:
        """Append `data`. Raises ControlError("too_long") when an unterminated line passes `max_line`."""
        if self._error is not None:
            raise ControlError(self._error.code, self._error.detail)
        self._buffer += data
        newline = data.rfind(b"\n")
        self._tail = self._tail + len(data) if newline < 0 else len(data) - newline - 1
        if self._tail > self._max_line:
            raise self._fail(f"more than {self._max_line} bytes without a newline")

    def next_line(self) -> bytes | None:
        """Return the next complete line without its ``\\n``, or None."""
        if self._error is not None:
            raise ControlError(self._error.code, self._error.detail)
        end = self._buffer.find(b"\n", self._scanned)
        if end < 0:
            self._scanned = len(self._buffer)
            return None
        if end > self._max_line:
            raise self._fail(f"a {end}-byte line, the limit is {self._max_line}")
        line = bytes(self._buffer[:end])
        del self._buffer[: end + 1]
        self._scanned = 0
        return line


def _reject_constant(name: str) -> object:
    raise ValueError(f"{name} is not JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise ValueError(f"{text[:20]} overflows a float")
    return value


def _no_duplicates(pairs: list[tuple[str, object]]) -> dict[str, object]:
    result = dict(pairs)
    if len(result) != len(pairs):
        raise ValueError("duplicate key in a JSON object")
    return result


def parse_message(line: bytes, *, max_line: int = MAX_LINE) -> dict[str, object]:
    """Parse one control line (with or without its ``\\n``) into a JSON object; no MAC check.

    Raises ControlError("too_long") or ControlError("format") (module docstring).
    """
    if line.endswith(b"\n"):
        line = line[:-1]
    if len(line) > max_line:
        raise ControlError("too_long", f"a {len(line)}-byte line, the limit is {max_line}")
    try:
        text = line.decode("utf-8")
        value = json.loads(
            text,
            object_pairs_hook=_no_duplicates,
            parse_constant=_reject_constant,
            parse_float=_finite_float,
        )
    except (ValueError, RecursionError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise ControlError("format", f"not a JSON line: {type(exc).__name__}") from exc
    if not isinstance(value, dict):
        raise ControlError("format", f"a control message is a JSON object, got {type(value).__name__}")
    return value


def canonical(message: Mapping[str, object]) -> bytes:
    """Return ``json.dumps(message_without_mac, sort_keys=True, separators=(",", ":"))`` as ASCII bytes.

    Raises ValueError for a message JSON cannot represent exactly (NaN, non-string keys, other objects).
    """
    body = {key: value for key, value in message.items() if key != "mac"}
    try:
        text = json.dumps(body, sort_keys=True, separators=(",", ":"), allow_nan=False)
    except TypeError as exc:
        raise ValueError(f"message is not plain JSON: {exc}") from exc
    return text.encode("ascii")  # ensure_ascii (the json default) escapes everything else


def control_mac(
    secret: bytes,
    peer_nonce: str,
    client_nonce: str,
    direction: Direction,
    n: int,
    message: Mapping[str, object],
) -> str:
    """Return the lower-case hex MAC of `message` (module docstring; a ``"mac"`` key in it is ignored)."""
    if direction not in ("c2p", "p2c"):
        raise ValueError(f"direction must be 'c2p' or 'p2c', got {direction!r}")
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"n must be a non-negative integer, got {n!r}")
    prefix = f"{_MAC_LABEL}|{peer_nonce}|{client_nonce}|{direction}|{n}|".encode()
    return hmac.new(secret, prefix + canonical(message), hashlib.sha256).hexdigest()


class ControlSigner:
    """Seal outgoing and open incoming control messages for one connection (module docstring).

    ``role="client"`` (the prober) sends ``c2p`` and receives ``p2c``; ``role="peer"`` the reverse. `sent` and
    `received` are the next counters for each direction.
    """

    __slots__ = ("_max_line", "_recv", "_secret", "_send", "client_nonce", "peer_nonce", "received", "sent")

    def __init__(
        self,
        secret: bytes,
        peer_nonce: str,
        client_nonce: str | None,
        *,
        role: Role,
        max_line: int = MAX_LINE,
    ) -> None:
        if role not in ("client", "peer"):
            raise ValueError(f"role must be 'client' or 'peer', got {role!r}")
        _check_nonce("peer_nonce", peer_nonce)
        if client_nonce is not None or role == "client":
            _check_nonce("client_nonce", client_nonce)
        self._secret = bytes(secret)
        self._max_line = max_line
        self.peer_nonce = peer_nonce
        self.client_nonce = client_nonce
        self._send: Direction = "c2p" if role == "client" else "p2c"
        self._recv: Direction = "p2c" if role == "client" else "c2p"
        self.sent = 0
        self.received = 0

    def seal(self, message: Mapping[str, object]) -> bytes:
        """Return `message` plus its ``mac`` as one JSON line ending in ``\\n``; count it as sent.

        Raises ValueError if the message already has a ``mac``, is not plain JSON, or would be longer than
        the line limit, and if a peer-side signer has not yet learnt the client nonce.
        """
        if "mac" in message:
            raise ValueError("the message already has a 'mac'; seal adds it")
        if self.client_nonce is None:
            raise ValueError("a peer cannot send before the client's first message has been opened")
        mac = control_mac(self._secret, self.peer_nonce, self.client_nonce, self._send, self.sent, message)
        line = json.dumps({**message, "mac": mac}, sort_keys=True, separators=(",", ":")).encode("ascii")
        if len(line) > self._max_line:
            raise ValueError(f"a {len(line)}-byte control message exceeds the {self._max_line}-byte limit")
        self.sent += 1
        return line + b"\n"

    def open(self, line: bytes) -> dict[str, object]:
        """Parse and verify one line from the other side; return the message without ``mac``.

        Raises ControlError("too_long"/"format") for a bad line, ControlError("auth") for a missing or wrong
        MAC (including a replayed or reflected line) and, on a peer-side signer still waiting for the client
        nonce, ControlError("protocol") when the first message has no valid ``client_nonce``.
        """
        message = parse_message(line, max_line=self._max_line)
        mac = message.pop("mac", None)
        if not isinstance(mac, str) or not _MAC_RE.fullmatch(mac):
            raise ControlError("auth", "no valid 'mac' in the message")
        client_nonce = self.client_nonce
        if client_nonce is None:
            offered = message.get("client_nonce")
            if not isinstance(offered, str) or not _NONCE_RE.fullmatch(offered):
                raise ControlError("protocol", "the first message must carry a 32-hex 'client_nonce'")
            client_nonce = offered
        expected = control_mac(
            self._secret, self.peer_nonce, client_nonce, self._recv, self.received, message
        )
        if not hmac.compare_digest(expected.encode("ascii"), mac.encode("ascii")):
            raise ControlError("auth", f"MAC mismatch on {self._recv} message {self.received}")
        self.client_nonce = client_nonce
        self.received += 1
        return message


def make_hello(nonce: str, banner: str) -> bytes:
    """Return the peer's hello line: ``{"nonce":…,"peer":banner,"type":"hello","v":1}`` and ``\\n``."""
    _check_nonce("nonce", nonce)
    if not isinstance(banner, str) or not _BANNER_RE.fullmatch(banner):
        raise ValueError(f"banner must be 1..128 printable ASCII characters, got {banner!r}")
    return canonical({"v": PROTOCOL_VERSION, "type": "hello", "nonce": nonce, "peer": banner}) + b"\n"


def parse_hello(line: bytes) -> tuple[str, str]:
    """Parse the peer's hello; return ``(nonce, banner)``.

    Raises ControlError("too_long"/"format") for a bad line and ControlError("protocol") for anything but a
    version 1 hello with a 32-hex nonce and a printable banner of at most 128 characters. Extra keys are
    ignored (room for later versions to add fields).
    """
    message = parse_message(line)
    if message.get("type") != "hello":
        raise ControlError("protocol", f"expected a hello, got type {_short(message.get('type'))}")
    version = message.get("v")
    if type(version) is not int or version != PROTOCOL_VERSION:
        raise ControlError("protocol", f"unsupported control protocol version {_short(version)}")
    nonce, banner = message.get("nonce"), message.get("peer")
    if not isinstance(nonce, str) or not _NONCE_RE.fullmatch(nonce):
        raise ControlError("protocol", f"the hello nonce must be 32 lower-case hex digits: {_short(nonce)}")
    if not isinstance(banner, str) or not _BANNER_RE.fullmatch(banner):
        raise ControlError("protocol", f"the hello banner is not printable ASCII: {_short(banner)}")
    return nonce, banner


def _short(value: object, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


@dataclass(frozen=True, slots=True)
class OpenRequest:
    """A validated ``open`` request: the ports to bind (even, in range, at most `max_ports`), in the order
    asked, and the ones `refused` (odd, outside the range, over the limit); `ttl` already capped."""

    client_nonce: str
    ports: tuple[int, ...]
    refused: tuple[int, ...]
    rtcp: bool
    ttl: int


def parse_open_request(
    msg: Mapping[str, object],
    *,
    rtp_range: tuple[int, int],
    max_ports: int = MAX_PORTS,
    max_ttl: int = MAX_TTL,
) -> OpenRequest:
    """Validate an opened (MAC-verified) ``open`` message against the peer's limits (module docstring).

    Raises ControlError("protocol") naming the field that is wrong; ValueError if `rtp_range`, `max_ports` or
    `max_ttl` are not sensible (our misuse).
    """
    lo, hi = rtp_range
    even_ports(lo, hi)  # validates the range
    for name, limit in (("max_ports", max_ports), ("max_ttl", max_ttl)):
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise ValueError(f"{name} must be a positive integer, got {limit!r}")
    if msg.get("type") != "open":
        raise ControlError("protocol", f"expected an open request, got type {_short(msg.get('type'))}")
    client_nonce = msg.get("client_nonce")
    if not isinstance(client_nonce, str) or not _NONCE_RE.fullmatch(client_nonce):
        raise ControlError(
            "protocol", f"client_nonce must be 32 lower-case hex digits: {_short(client_nonce)}"
        )
    ports = msg.get("ports")
    if not isinstance(ports, list) or not ports:
        raise ControlError("protocol", f"ports must be a non-empty list: {_short(ports)}")
    if len(ports) > MAX_PORTS:
        raise ControlError("protocol", f"{len(ports)} ports asked, at most {MAX_PORTS} per request")
    numbers: list[int] = []
    for port in ports:
        if type(port) is not int or not 0 <= port <= 65535:
            raise ControlError("protocol", f"ports must be integers in 0..65535: {_short(port)}")
        numbers.append(port)
    rtcp = msg.get("rtcp")
    if not isinstance(rtcp, bool):
        raise ControlError("protocol", f"rtcp must be true or false: {_short(rtcp)}")
    ttl = msg.get("ttl")
    if type(ttl) is not int or ttl < 1:
        raise ControlError("protocol", f"ttl must be a positive integer of seconds: {_short(ttl)}")
    accepted: list[int] = []
    refused: list[int] = []
    seen: set[int] = set()
    for port in numbers:
        if port in seen:
            continue
        seen.add(port)
        if port % 2 or not lo <= port <= hi or len(accepted) >= max_ports:
            refused.append(port)
        else:
            accepted.append(port)
    return OpenRequest(
        client_nonce=client_nonce,
        ports=tuple(accepted),
        refused=tuple(refused),
        rtcp=rtcp,
        ttl=min(ttl, max_ttl),
    )
