"""The echo peer's packet admission: which UDP datagrams earn a reflection, and what the reflection is.

Sans-I/O: `Reflector.handle(data, source, port, now)` takes one received datagram, the address it came from,
the local port it arrived on and the time, and returns the reply to send back to `source` from that same port
(symmetric RTP, RFC 4961), or None. It never reads a clock, never touches a socket and never raises for
anything a packet contains; `umprobe.peer.echo_peer` owns the sockets and the sessions' lifetimes.

Theory of operation (docs/rtp.md "The reflector is not a weapon"; PROTOCOL.md §5). Every check below drops
the datagram silently (there are no error replies, ever) and counts one drop reason, in the session's
counters when the datagram can be attributed to a session and always in the reflector's global counters:

1. ``session``: the local port belongs to no open session (or the packet is authenticated for another SSID).
   The port is the only lookup key: each port is bound by at most one session at a time.
2. ``source``: the source IP is not the address that opened the session on the control channel (IPv4-mapped
   IPv6 addresses compare equal to their IPv4 form). The source *port* is free: replies go back to it.
3. ``size``: a media datagram that is not exactly 172 bytes; an RTCP datagram outside 48..512 bytes, or one
   that cannot be answered at exactly its own length (checked after 4 and 5). A short request is never
   zero-filled (PROTOCOL.md §5 rule 1).
4. ``auth``: the HMAC does not verify under the session key; anything malformed counts here too (a packet
   that did not verify is not evidence of anything more specific). Verified before any field is used.
5. ``replay``: the sender timestamp is more than `max_clock_skew` seconds from `now` (unless None), or the
   sequence number was already seen or is older than the window: a sliding window of 1024 sequence numbers
   per session and port (RFC 4303 §3.4.3 style, with serial-number arithmetic, RFC 1982, so a wrap is
   harmless). HMAC alone does not stop a captured packet being replayed with a spoofed source.
6. ``rate``: a per-source and a global token bucket (packets/s; capacity `burst_seconds` worth, starting
   full). A reply needs a token from both; neither is spent unless both have one. Only authenticated, fresh
   packets reach the buckets, so forged floods cannot starve a real prober, and the buckets' number is
   bounded by the sessions' client addresses.

A packet that passes 1-5 counts as received (``rx`` / ``rtcp_rx``): the forward path delivered it, whether or
not 6 lets it be answered. A reply counts as sent (``tx`` / ``rtcp_tx``) when it is handed to the caller; the
caller reports a failed send with `unsent`. A reply is never longer than its request: the codecs build
replies of the request's length, and the length is checked again here (a longer one would be our bug; it is
dropped and counted as ``size``, never sent).

Time: `now` is Unix time in seconds (the caller reads `time.time()` when the datagram arrives). It stamps T2
(unless the caller passes the kernel's arrival stamp as `received`) and, unless a `transmit_clock` is given,
T3; it judges the sender's timestamp; it refills the buckets. A clock that steps backwards refills nothing
for the step and counts on from its new reading.
"""

from __future__ import annotations

import enum
import ipaddress
import secrets
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Final

from umprobe.media.errors import MediaError
from umprobe.media.ntp import ntp_from_unix, unix_from_ntp
from umprobe.media.packet import MEDIA_PACKET_SIZE, decode_media, reflect_measurement
from umprobe.media.rtcp import MIN_RTCP_SIZE, decode_rtcp, reflect_rtcp

__all__ = [
    "DEFAULT_BURST_SECONDS",
    "DEFAULT_MAX_CLOCK_SKEW",
    "DEFAULT_RATE_GLOBAL",
    "DEFAULT_RATE_PER_SOURCE",
    "MAX_RTCP_SIZE",
    "REPLAY_WINDOW",
    "DropReason",
    "PortCounters",
    "Reflector",
    "ReplayWindow",
    "SessionStats",
    "TokenBucket",
    "normalise_ip",
]

DEFAULT_RATE_PER_SOURCE: Final = 200.0  # packets/s: four ports at 50 packets/s
DEFAULT_RATE_GLOBAL: Final = 2000.0
DEFAULT_BURST_SECONDS: Final = 1.0
DEFAULT_MAX_CLOCK_SKEW: Final = 10.0
REPLAY_WINDOW: Final = 1024  # sequence numbers per session and port (docs/rtp.md)
MAX_RTCP_SIZE: Final = 512  # far above umprobe's ~80-byte compound; bounds the parsing work per datagram

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class DropReason(enum.StrEnum):
    """Why a datagram got no reply: the keys of the `dropped` object in the control channel's `stats`."""

    AUTH = "auth"
    REPLAY = "replay"
    RATE = "rate"
    SESSION = "session"
    SIZE = "size"
    SOURCE = "source"


# MediaError codes -> drop reasons. "ssid" means authenticated under this session's key but carrying another
# SSID; everything else that is not "size" failed (or preceded) the HMAC check.
_MEDIA_DROP: Final[Mapping[str, DropReason]] = {
    "size": DropReason.SIZE,
    "ssid": DropReason.SESSION,
}


def normalise_ip(text: str) -> IPAddress | None:
    """`"192.0.2.1"`, `"::ffff:192.0.2.1"` (-> its IPv4 form), `"fe80::1%eth0"` (-> without the zone) -> an
    address; None if `text` is not one."""
    try:
        address = ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


class TokenBucket:
    """`rate` tokens per second up to `capacity`, starting full; `now` is passed in (seconds)."""

    __slots__ = ("_last", "capacity", "rate", "tokens")

    def __init__(self, rate: float, capacity: float, now: float) -> None:
        if rate <= 0 or capacity < 1:
            raise ValueError(f"a token bucket needs rate > 0 and capacity >= 1, got {rate!r}, {capacity!r}")
        self.rate = rate
        self.capacity = capacity
        self.tokens = capacity
        self._last = now

    def refill(self, now: float) -> None:
        elapsed = now - self._last
        if elapsed > 0:
            self.tokens = min(self.capacity, self.tokens + elapsed * self.rate)
        # elapsed < 0: the clock stepped back. Refill nothing for the step, and count on from the new
        # reading (waiting for the old one to come round again could silence the peer for as long).
        self._last = now

    def full(self, now: float) -> bool:
        self.refill(now)
        return self.tokens >= self.capacity

    def take(self, now: float) -> bool:
        """Spend one token if there is one."""
        self.refill(now)
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False


class ReplayWindow:
    """A sliding anti-replay window over the last `size` sequence numbers, modulo 2**`bits`.

    `accept(seq)` is True exactly once per sequence number that is newer than, or within `size` of, the
    highest one accepted so far. "Newer" is serial-number arithmetic (RFC 1982): up to half the sequence
    space ahead. Call it only for authenticated packets.
    """

    __slots__ = ("_full", "_half", "_mask", "_modulus", "_size", "_top")

    def __init__(self, size: int = REPLAY_WINDOW, bits: int = 32) -> None:
        if size < 1 or bits < 2 or size > 1 << (bits - 1):
            raise ValueError(f"window size {size} does not fit {bits}-bit sequence numbers")
        self._size = size
        self._modulus = 1 << bits
        self._half = 1 << (bits - 1)
        self._full = (1 << size) - 1
        self._top: int | None = None
        self._mask = 0  # bit i set: sequence number top - i has been accepted

    def accept(self, seq: int) -> bool:
        if self._top is None:
            self._top, self._mask = seq, 1
            return True
        ahead = (seq - self._top) % self._modulus
        if ahead == 0:
            return False
        if ahead < self._half:
            self._mask = ((self._mask << ahead) | 1) & self._full if ahead < self._size else 1
            self._top = seq
            return True
        behind = self._modulus - ahead
        if behind >= self._size:
            return False
        bit = 1 << behind
        if self._mask & bit:
            return False
        self._mask |= bit
        return True


@dataclass(slots=True)
class PortCounters:
    """One RTP port's counters; the RTCP ones are for the port above it (p+1)."""

    rx: int = 0
    tx: int = 0
    rtcp_rx: int = 0
    rtcp_tx: int = 0

    def as_dict(self) -> dict[str, int]:
        return {"rx": self.rx, "tx": self.tx, "rtcp_rx": self.rtcp_rx, "rtcp_tx": self.rtcp_tx}


def _zero_drops() -> dict[DropReason, int]:
    return dict.fromkeys(DropReason, 0)


@dataclass(frozen=True, slots=True)
class SessionStats:
    """A copy of one session's counters, keyed by RTP port, as the control channel's `stats` reports them."""

    ports: Mapping[int, PortCounters]
    dropped: Mapping[DropReason, int]

    def as_message(self, ports: Iterable[int] | None = None) -> dict[str, object]:
        """The `ports` and `dropped` members of a `stats` reply (docs/rtp.md §5), for `ports` (default: all,
        ascending; ports the session does not have are left out)."""
        chosen = sorted(self.ports) if ports is None else [p for p in ports if p in self.ports]
        return {
            "ports": {str(p): self.ports[p].as_dict() for p in chosen},
            "dropped": {str(r): n for r, n in self.dropped.items()},
        }


@dataclass(slots=True)
class _Session:
    id: str
    key: bytes
    ssid: int
    client: IPAddress
    client_text: str  # the client as the socket layer spells it, for a cheap first comparison
    rtcp_ssrc: int
    ports: dict[int, PortCounters]
    dropped: dict[DropReason, int] = field(default_factory=_zero_drops)
    windows: dict[int, ReplayWindow] = field(default_factory=dict)
    seq: int = 0  # the reflector's own sequence counter (RFC 8762 §4.3: stateful reflector)


@dataclass(frozen=True, slots=True)
class _Binding:
    session: _Session
    rtp_port: int
    rtcp: bool


class Reflector:
    """Admission control and reply building for every open session of one echo peer (module docstring)."""

    def __init__(
        self,
        *,
        rate_per_source: float = DEFAULT_RATE_PER_SOURCE,
        rate_global: float = DEFAULT_RATE_GLOBAL,
        burst_seconds: float = DEFAULT_BURST_SECONDS,
        max_clock_skew: float | None = DEFAULT_MAX_CLOCK_SKEW,
        window: int = REPLAY_WINDOW,
        transmit_clock: Callable[[], float] | None = None,
        now: float = 0.0,
    ) -> None:
        if rate_per_source <= 0 or rate_global <= 0 or burst_seconds <= 0:
            raise ValueError("rates and burst_seconds must be positive")
        if max_clock_skew is not None and max_clock_skew <= 0:
            raise ValueError(f"max_clock_skew must be positive or None, got {max_clock_skew!r}")
        self.rate_per_source = rate_per_source
        self.rate_global = rate_global
        self.burst_seconds = burst_seconds
        self.max_clock_skew = max_clock_skew
        self._window = window
        self._transmit_clock = transmit_clock
        self._global = TokenBucket(rate_global, self._capacity(rate_global), now)
        self._sources: dict[IPAddress, TokenBucket] = {}
        self._sessions: dict[str, _Session] = {}
        self._ports: dict[int, _Binding] = {}
        self.dropped: dict[DropReason, int] = _zero_drops()
        """Every drop since start, by reason, whether or not it could be attributed to a session."""
        self.replies = 0
        self.unsent_replies = 0
        self.bytes_in = 0  # every datagram handed to `handle`
        self.bytes_out = 0  # every reply it returned (minus those reported `unsent`)

    def _capacity(self, rate: float) -> float:
        return max(1.0, rate * self.burst_seconds)

    def allowance(self, rate: float, seconds: float) -> int:
        """Most replies a bucket of `rate` allows in `seconds`, starting full: capacity + rate * seconds."""
        return int(self._capacity(rate) + rate * seconds)

    # ---------------------------------------------------------------------------------------------------
    # Sessions

    @property
    def session_count(self) -> int:
        return len(self._sessions)

    def port_taken(self, port: int) -> bool:
        """Whether `port` is bound to an open session (as RTP or RTCP)."""
        return port in self._ports

    def add_session(
        self,
        session_id: str,
        *,
        key: bytes,
        ssid: int,
        client: str,
        rtp_ports: Iterable[int],
        rtcp: bool,
        now: float,
        rtcp_ssrc: int | None = None,
    ) -> None:
        """Register an open session: media on each of `rtp_ports`, RTCP on each p+1 when `rtcp`.

        Raises ValueError (our bug) for a duplicate id, an unparsable client address or a port that another
        session holds: the caller binds the sockets first, and the operating system refuses a second bind.
        """
        if session_id in self._sessions:
            raise ValueError(f"session {session_id} is already open")
        address = normalise_ip(client)
        if address is None:
            raise ValueError(f"client {client!r} is not an IP address")
        ports = sorted(set(rtp_ports))
        wanted = [*ports, *(p + 1 for p in ports if rtcp)]
        taken = [p for p in wanted if p in self._ports]
        if taken:
            raise ValueError(f"ports {taken} already belong to an open session")
        session = _Session(
            id=session_id,
            key=key,
            ssid=ssid,
            client=address,
            client_text=client,
            rtcp_ssrc=secrets.randbits(32) if rtcp_ssrc is None else rtcp_ssrc,
            ports={p: PortCounters() for p in ports},
        )
        for p in ports:
            self._ports[p] = _Binding(session, p, rtcp=False)
            session.windows[p] = ReplayWindow(self._window, bits=32)
            if rtcp:
                self._ports[p + 1] = _Binding(session, p, rtcp=True)
                session.windows[p + 1] = ReplayWindow(self._window, bits=16)
        self._sessions[session_id] = session
        self._prune_buckets(now)
        if address not in self._sources:
            rate = self.rate_per_source
            self._sources[address] = TokenBucket(rate, self._capacity(rate), now)

    def remove_session(self, session_id: str) -> SessionStats | None:
        """Forget a session (its ports answer nothing from now on); return its final counters."""
        session = self._sessions.pop(session_id, None)
        if session is None:
            return None
        for port in [p for p, b in self._ports.items() if b.session is session]:
            del self._ports[port]
        # The client's bucket stays until it has refilled (see _prune_buckets): closing and reopening a
        # session must not hand out a fresh burst.
        return self._stats(session)

    def session_stats(self, session_id: str) -> SessionStats:
        """A copy of an open session's counters. KeyError for an unknown id."""
        return self._stats(self._sessions[session_id])

    @staticmethod
    def _stats(session: _Session) -> SessionStats:
        return SessionStats(
            ports={p: PortCounters(c.rx, c.tx, c.rtcp_rx, c.rtcp_tx) for p, c in session.ports.items()},
            dropped=dict(session.dropped),
        )

    def _prune_buckets(self, now: float) -> None:
        """Drop the buckets of clients without a session once they are full (a new one would be identical)."""
        active = {s.client for s in self._sessions.values()}
        for address in [a for a, b in self._sources.items() if a not in active and b.full(now)]:
            del self._sources[address]

    # ---------------------------------------------------------------------------------------------------
    # Datagrams

    def handle(
        self, data: bytes, source: tuple[object, ...], port: int, now: float, *, received: float | None = None
    ) -> bytes | None:
        """Judge one datagram that arrived on local `port` from `source` (a socket address tuple).

        Returns the reply to send to `source` from `port`, or None (the drop is counted). `received` is the
        kernel's arrival stamp (Unix seconds) when the caller has one: it becomes T2 instead of `now`.
        """
        self.bytes_in += len(data)
        binding = self._ports.get(port)
        if binding is None:
            return self._drop(None, DropReason.SESSION)
        session = binding.session
        host = source[0] if source else None
        if host != session.client_text and (
            not isinstance(host, str) or normalise_ip(host) != session.client
        ):
            return self._drop(session, DropReason.SOURCE)
        if binding.rtcp:
            reply = self._rtcp(session, binding, data, port, now)
        else:
            reply = self._media(session, binding, data, port, now, now if received is None else received)
        if reply is None:
            return None
        if len(reply) > len(data):  # pragma: no cover - the codecs build same-length replies
            return self._drop(session, DropReason.SIZE)
        self.replies += 1
        self.bytes_out += len(reply)
        return reply

    def count(self, port: int, reason: DropReason) -> None:
        """Count a drop the caller decided on for a datagram that arrived on `port` (e.g. one too long for
        the receive buffer on Windows, which never reaches `handle`)."""
        binding = self._ports.get(port)
        self._drop(binding.session if binding is not None else None, reason)

    def unsent(self, port: int, size: int = 0) -> None:
        """The `size`-byte reply `handle` returned for `port` was not sent: take it back out of ``tx``."""
        self.unsent_replies += 1
        self.replies -= 1
        self.bytes_out -= size
        binding = self._ports.get(port)
        if binding is None:
            return
        counters = binding.session.ports[binding.rtp_port]
        if binding.rtcp:
            counters.rtcp_tx = max(0, counters.rtcp_tx - 1)
        else:
            counters.tx = max(0, counters.tx - 1)

    def _media(
        self, session: _Session, binding: _Binding, data: bytes, port: int, now: float, received: float
    ) -> bytes | None:
        if len(data) != MEDIA_PACKET_SIZE:
            return self._drop(session, DropReason.SIZE)
        try:
            header, request = decode_media(session.key, data, expected_ssid=session.ssid)
        except MediaError as exc:
            return self._drop(session, _MEDIA_DROP.get(exc.code, DropReason.AUTH))
        if not self._fresh(request.timestamp, now) or not session.windows[port].accept(request.seq):
            return self._drop(session, DropReason.REPLAY)
        counters = session.ports[binding.rtp_port]
        counters.rx += 1
        if not self._admit(session.client, now):
            return self._drop(session, DropReason.RATE)
        reply = reflect_measurement(
            session.key,
            header,
            request,
            reflector_seq=session.seq,
            receive_ts=ntp_from_unix(received),
            transmit_ts=self._transmit_ts(now),
        )
        session.seq = (session.seq + 1) & 0xFFFFFFFF
        counters.tx += 1
        return reply

    def _rtcp(self, session: _Session, binding: _Binding, data: bytes, port: int, now: float) -> bytes | None:
        if not MIN_RTCP_SIZE <= len(data) <= MAX_RTCP_SIZE:
            return self._drop(session, DropReason.SIZE)
        try:
            probe = decode_rtcp(session.key, data, expected_ssid=session.ssid)
        except MediaError as exc:
            return self._drop(session, _MEDIA_DROP.get(exc.code, DropReason.AUTH))
        if not self._fresh(probe.timestamp, now) or not session.windows[port].accept(probe.seq):
            return self._drop(session, DropReason.REPLAY)
        counters = session.ports[binding.rtp_port]
        counters.rtcp_rx += 1
        try:
            # Built before the buckets are asked, so that a token is spent only on a reply that exists.
            reply = reflect_rtcp(
                session.key, data, reflector_ssrc=session.rtcp_ssrc, transmit_ts=self._transmit_ts(now)
            )
        except MediaError as exc:  # a compound that cannot be answered at equal length ("size")
            return self._drop(session, _MEDIA_DROP.get(exc.code, DropReason.AUTH))
        if not self._admit(session.client, now):
            return self._drop(session, DropReason.RATE)
        counters.rtcp_tx += 1
        return reply

    def _fresh(self, ntp_timestamp: int, now: float) -> bool:
        if self.max_clock_skew is None:
            return True
        return abs(unix_from_ntp(ntp_timestamp) - now) <= self.max_clock_skew

    def _admit(self, client: IPAddress, now: float) -> bool:
        bucket = self._sources.get(client)
        if bucket is None:  # pragma: no cover - add_session creates it
            bucket = self._sources[client] = TokenBucket(
                self.rate_per_source, self._capacity(self.rate_per_source), now
            )
        bucket.refill(now)
        self._global.refill(now)
        if bucket.tokens < 1 or self._global.tokens < 1:
            return False
        bucket.tokens -= 1
        self._global.tokens -= 1
        return True

    def _transmit_ts(self, now: float) -> int:
        return ntp_from_unix(self._transmit_clock() if self._transmit_clock is not None else now)

    def _drop(self, session: _Session | None, reason: DropReason) -> bytes | None:
        """Count a drop; always None (typed so that `return self._drop(...)` reads as what it is)."""
        self.dropped[reason] += 1
        if session is not None:
            session.dropped[reason] += 1
        return None
