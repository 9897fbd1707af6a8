"""`umprobe peer`: the far-side echo peer that `umprobe rtp` measures an RTP port range against.

Theory of operation
-------------------
`serve_echo_peer(config)` binds the control listener (TCP, or TLS with optional client certificates) and any
SIP OPTIONS listeners (umprobe's own `serve_sip_responder`), reports the bound addresses through
`task_status.started(RunningPeer)`, and serves until cancelled. A listener that cannot be bound is a one-line
`UserError` naming it.

One control connection is one session (docs/rtp.md "Control channel"), served by one task:

1. **Admission.** A connection from outside `--allow` (when given), or beyond `max_connections`, is closed at
   once, before any byte is sent. TLS, when configured, must complete its handshake within `idle_timeout`.
2. **hello / open.** The peer sends `hello` with a fresh nonce. The first line must arrive within
   `idle_timeout` and be a MAC-verified `open` (the peer-side `ControlSigner` learns the client nonce from
   it). A bad MAC, a line over 4096 bytes, bad JSON or any protocol error ends the connection without an
   answer (counted in `PeerCounters`, logged). At `max_sessions` open sessions a valid `open` also ends the
   connection unanswered: the prober reports "auth failed or peer at its session limit".
3. **Binding.** For each accepted even port p the peer binds a UDP socket on the media address
   (`--media-host`, or by default the local address the control connection arrived on: the address the
   prober reached, so its media goes to the same place) and, with `rtcp`, one on p+1. EADDRINUSE is
   `in_use`; any other failure (permissions, an address that is not local) is `refused`; a port is `open`
   only when all its sockets bound. On Windows each socket asks for SO_EXCLUSIVEADDRUSE, so that no other
   program can bind the same port beside it and take the prober's packets; elsewhere the default (no
   SO_REUSEADDR on UDP) already refuses a second bind.
4. **The session** runs in its own task and cancel scope, whose deadline is the granted ttl: one receive task
   per socket hands each datagram to the shared `Reflector` (authentication, replay window, rate limits; see
   reflector.py) and sends back what it returns, from the same socket, to the datagram's source. When the
   scope ends (ttl expiry, `close`, EOF, an error, peer shutdown) every socket is closed and the session is
   removed from the reflector *before* the control connection is closed, so a prober that sees the
   connection end may rebind the ports at once.
5. **stats / close.** `stats` answers the reflector's counters for the session (still available after the
   ttl ran out: the control connection stays open for `idle_timeout` after the ttl, so a prober that waited
   for stragglers can still fetch them). One 4096-byte line holds the counters of about 65 ports; when they
   do not all fit, the answer carries the first ones (ascending) and ``"truncated": N``, and a `stats`
   request may name the ports it wants (``"ports": [...]``, an extension of docs/rtp.md §5). `close` (no
   answer; the prober does not wait for one), EOF, or silence past that grace period end the session and
   the connection.

Time: the control channel uses trio's clock (deadlines); the reflector is given `time.time()` for each
datagram, the wall clock its NTP timestamps and the prober's T1 are on. On Linux each media socket asks for
kernel arrival stamps (`SO_TIMESTAMPNS`, umprobe.media.rxstamp) and T2 is that stamp, so the time a datagram
waited in the socket while the peer served others is not measured as path delay; elsewhere T2 is the clock
read after the receive.

Portability: pure Python, no Linux-only calls (tests/peer/test_portability.py scans for them), so the peer
runs on the Windows servers next to Exchange. Receive errors that Windows reports for UDP (WSAECONNRESET
after an ICMP port unreachable, WSAEMSGSIZE for an oversize datagram) are expected and counted, not fatal.
"""

from __future__ import annotations

import copy
import errno
import ipaddress
import logging
import secrets
import socket as stdlib_socket
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Final, Literal

import trio
from OpenSSL import SSL

from umprobe._version import __version__
from umprobe.errors import UserError
from umprobe.inbound import InboundBook
from umprobe.logs import LOGGER_NAME, log_event
from umprobe.media import rxstamp
from umprobe.media.control import (
    MAX_LINE,
    MAX_PORTS,
    MAX_TTL,
    ControlSigner,
    LineBuffer,
    OpenRequest,
    make_hello,
    new_nonce,
    parse_open_request,
)
from umprobe.media.errors import ControlError
from umprobe.media.packet import session_key
from umprobe.media.sampling import even_ports
from umprobe.net.errors import ConnectionClosed, NetError
from umprobe.net.stamping import stamp_arrivals
from umprobe.net.tls import TLSStream
from umprobe.peer.reflector import (
    DEFAULT_BURST_SECONDS,
    DEFAULT_MAX_CLOCK_SKEW,
    DEFAULT_RATE_GLOBAL,
    DEFAULT_RATE_PER_SOURCE,
    DropReason,
    Reflector,
    SessionStats,
    normalise_ip,
)
from umprobe.peer.sip_responder import ResponderStats, serve_sip_responder
from umprobe.secretfile import MIN_SECRET_BYTES

__all__ = [
    "BANNER",
    "Network",
    "PeerConfig",
    "PeerCounters",
    "RunningPeer",
    "SipListen",
    "serve_echo_peer",
]

BANNER: Final = f"umprobe-peer/{__version__}"
_RECV_SIZE: Final = (
    2048  # far above a valid datagram: anything longer arrives truncated and fails the size check
)
_log = logging.getLogger(f"{LOGGER_NAME}.peer")

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

# errno values, with their Winsock twins (Python reports WSA* codes as errno on Windows).
_IN_USE: Final = frozenset({errno.EADDRINUSE, getattr(errno, "WSAEADDRINUSE", errno.EADDRINUSE)})
_MSGSIZE: Final = frozenset({errno.EMSGSIZE, getattr(errno, "WSAEMSGSIZE", errno.EMSGSIZE)})
_TRANSIENT: Final = frozenset(
    {
        errno.ECONNRESET,
        errno.ECONNREFUSED,
        errno.EHOSTUNREACH,
        errno.ENETUNREACH,
        errno.ENOBUFS,
        errno.EAGAIN,
        getattr(errno, "WSAECONNRESET", errno.ECONNRESET),
        getattr(errno, "WSAENETRESET", errno.ECONNRESET),
        getattr(errno, "WSAEHOSTUNREACH", errno.EHOSTUNREACH),
        getattr(errno, "WSAENETUNREACH", errno.ENETUNREACH),
    }
)


@dataclass(frozen=True, slots=True)
class SipListen:
    """One SIP OPTIONS listener: `tcp` or `tls` on `port` (0: any free port), on the control listener's
    host."""

    transport: Literal["tcp", "tls"]
    port: int


@dataclass(frozen=True, slots=True)
class PeerConfig:
    """Everything `serve_echo_peer` needs; validated by the `umprobe peer` command (and `__post_init__`).

    - `secret`: the shared secret, at least 16 bytes (surrounding whitespace already stripped).
    - `listen_host` / `listen_port`: the control listener; host None is every interface, port 0 any free one.
    - `media_host`: IP literal the UDP sockets bind to; None: each control connection's local address.
    - `rtp_range`: inclusive port range the peer is willing to bind (even ports; RTCP goes on p+1).
    - `control_tls` / `sip_tls`: server contexts (`make_server_context`) for the control channel and the SIP
      `tls` listeners; None means plain TCP (and no `tls` SIP listener).
    - `allow`: networks control connections may come from; empty means any.
    - `rate_per_source` / `rate_global` / `burst_seconds` / `max_clock_skew`: the reflector's limits
      (reflector.py); `max_clock_skew=None` keeps only the replay window.
    - `max_sessions`, `max_connections` (control connections at once), `max_ports`, `max_ttl`, `idle_timeout`
      (seconds a control connection may stay silent before its open, and after its ttl ran out).
    """

    secret: bytes
    listen_host: str | None = None
    listen_port: int = 0
    media_host: str | None = None
    rtp_range: tuple[int, int] = (1024, 65535)
    control_tls: SSL.Context | None = None
    sip_tls: SSL.Context | None = None
    allow: tuple[Network, ...] = ()
    rate_per_source: float = DEFAULT_RATE_PER_SOURCE
    rate_global: float = DEFAULT_RATE_GLOBAL
    burst_seconds: float = DEFAULT_BURST_SECONDS
    max_clock_skew: float | None = DEFAULT_MAX_CLOCK_SKEW
    max_sessions: int = 16
    max_connections: int = 64
    max_ports: int = MAX_PORTS
    max_ttl: int = MAX_TTL
    idle_timeout: float = 10.0
    sip: tuple[SipListen, ...] = ()
    sip_server_header: str = BANNER
    sip_inbound: InboundBook | None = None  # records every inbound OPTIONS per caller (umprobe.inbound)

    def __post_init__(self) -> None:
        if len(self.secret) < MIN_SECRET_BYTES:
            raise ValueError(f"the secret must be at least {MIN_SECRET_BYTES} bytes, got {len(self.secret)}")
        even_ports(*self.rtp_range)  # ValueError for a range outside 1024-65535 or without an even port
        if self.media_host is not None and normalise_ip(self.media_host) is None:
            raise ValueError(f"media_host {self.media_host!r} is not an IP address")
        for name in ("max_sessions", "max_connections", "max_ports", "max_ttl"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        if self.idle_timeout <= 0:
            raise ValueError("idle_timeout must be positive")
        if any(s.transport == "tls" for s in self.sip) and self.sip_tls is None:
            raise ValueError("a SIP tls listener needs sip_tls (a server context)")


@dataclass(slots=True)
class PeerCounters:
    """What happened on the control listener since start (the reflector counts the datagrams)."""

    connections: int = 0
    refused_allow: int = 0  # not in --allow
    refused_busy: int = 0  # over max_connections
    refused_sessions: int = 0  # a valid open at max_sessions
    tls_failures: int = 0
    auth_failures: int = 0  # a control message whose MAC did not verify
    bad_lines: int = 0  # not JSON, or longer than 4096 bytes
    protocol_errors: int = 0  # authenticated but not what the protocol allows at that point
    idle_timeouts: int = 0
    sessions_opened: int = 0
    sessions_closed: int = 0
    udp_errors: int = 0  # receive/send errors on media sockets other than the expected ones


@dataclass(frozen=True, slots=True)
class RunningPeer:
    """What `serve_echo_peer` hands to `task_status.started()`: where it listens and its live counters."""

    control: tuple[tuple[str, int], ...]  # (host, port) per bound control listener
    sip: tuple[tuple[str, str, int], ...]  # (transport, host, port) per bound SIP listener
    reflector: Reflector
    counters: PeerCounters
    sip_stats: ResponderStats


class _Hangup(Exception):
    """End this control connection (reason is a short log word)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(eq=False, slots=True)
class _Session:
    id: str
    ssid: int
    client: str
    ttl: int
    expires_at: float  # trio clock
    sockets: dict[int, trio.socket.SocketType] = field(default_factory=dict)
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    done: trio.Event = field(default_factory=trio.Event)
    ports: dict[str, list[int]] = field(default_factory=dict)  # the `opened` message's "ports"
    final: SessionStats | None = None
    why: str = "ttl"

    def end(self, why: str) -> None:
        """Stop the session (its sockets close); `why` is logged unless it already ended."""
        if not self.done.is_set() and not self.scope.cancel_called:
            self.why = why
        self.scope.cancel()


async def serve_echo_peer(
    config: PeerConfig,
    *,
    task_status: trio.TaskStatus[RunningPeer] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the echo peer until cancelled (module docstring). Raises `UserError` for a listener that cannot
    be bound."""
    peer = _EchoPeer(config)
    control = await _open_listeners(config.listen_port, config.listen_host, "control")
    sip: list[tuple[SipListen, list[trio.SocketListener]]] = []
    try:
        for spec in config.sip:
            sip.append((spec, await _open_listeners(spec.port, config.listen_host, f"SIP {spec.transport}")))
    except BaseException:
        for listener in control + [x for _, group in sip for x in group]:
            await trio.aclose_forcefully(listener)
        raise
    sip_stats = ResponderStats()
    async with trio.open_nursery() as nursery:
        for spec, listeners in sip:
            await nursery.start(
                partial(
                    serve_sip_responder,
                    listeners,
                    tls_context=config.sip_tls if spec.transport == "tls" else None,
                    server_header=config.sip_server_header,
                    stats=sip_stats,
                    inbound=config.sip_inbound,
                )
            )
        await nursery.start(partial(trio.serve_listeners, peer.serve_connection, control))
        running = RunningPeer(
            control=tuple(_sockname(x) for x in control),
            sip=tuple((spec.transport, *_sockname(x)) for spec, group in sip for x in group),
            reflector=peer.reflector,
            counters=peer.counters,
            sip_stats=sip_stats,
        )
        log_event(
            _log,
            logging.INFO,
            "peer listening",
            control=[_hostport(h, p) for h, p in running.control],
            tls=config.control_tls is not None,
            sip=[f"{t}:{_hostport(h, p)}" for t, h, p in running.sip] or None,
            media_host=config.media_host or "control connection's local address",
            rtp_range=f"{config.rtp_range[0]}-{config.rtp_range[1]}",
            allow=[str(n) for n in config.allow] or None,
            rate_per_source=config.rate_per_source,
            rate_global=config.rate_global,
            max_sessions=config.max_sessions,
        )
        task_status.started(running)


async def _open_listeners(port: int, host: str | None, what: str) -> list[trio.SocketListener]:
    try:
        return await trio.open_tcp_listeners(port, host=host)
    except OSError as exc:
        where = _hostport(host or "*", port)
        raise UserError(f"peer: cannot listen for {what} on {where}: {exc.strerror or exc}") from exc


def _sockname(listener: trio.SocketListener) -> tuple[str, int]:
    name = listener.socket.getsockname()
    return str(name[0]), int(name[1])


def _hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _allowed(address: str, allow: Sequence[Network]) -> bool:
    if not allow:
        return True
    ip = normalise_ip(address)
    return ip is not None and any(ip in network for network in allow)


class _EchoPeer:
    """The state shared by every control connection: the reflector, the counters, the session slots."""

    def __init__(self, config: PeerConfig) -> None:
        self.config = config
        self.reflector = Reflector(
            rate_per_source=config.rate_per_source,
            rate_global=config.rate_global,
            burst_seconds=config.burst_seconds,
            max_clock_skew=config.max_clock_skew,
            transmit_clock=time.time,
            now=time.time(),
        )
        self.counters = PeerCounters()
        self._connections = 0
        self._sessions = 0  # open or being opened (a slot is taken before the first await)

    # ---------------------------------------------------------------------------------------------------
    # Control connections

    async def serve_connection(self, tcp: trio.SocketStream) -> None:
        """Serve one accepted control connection (module docstring, steps 1, 2 and 5)."""
        self.counters.connections += 1
        try:
            client = str(tcp.socket.getpeername()[0])
            local = str(tcp.socket.getsockname()[0])
        except OSError:  # gone again before we looked
            await trio.aclose_forcefully(tcp)
            return
        stream: trio.abc.Stream = tcp
        if not _allowed(client, self.config.allow):
            self.counters.refused_allow += 1
            log_event(
                _log, logging.WARNING, "control connection refused", client=client, why="not in --allow"
            )
            await trio.aclose_forcefully(tcp)
            return
        if self._connections >= self.config.max_connections:
            self.counters.refused_busy += 1
            log_event(_log, logging.WARNING, "control connection refused", client=client, why="too many")
            await trio.aclose_forcefully(tcp)
            return
        self._connections += 1
        why = "done"
        try:
            if self.config.control_tls is not None:
                tls = TLSStream(tcp, self.config.control_tls, server_side=True)
                stream = tls
                with trio.move_on_after(self.config.idle_timeout) as handshake:
                    await tls.do_handshake()
                if handshake.cancelled_caught:
                    raise _Hangup("idle")
            await self._converse(stream, client, local)
        except _Hangup as exc:
            why = exc.reason
        except ControlError as exc:
            why = self._count_control_error(exc, client)
        except ConnectionClosed:
            why = "eof"
        except NetError as exc:
            why = "tls" if self.config.control_tls is not None else "network"
            if why == "tls":
                self.counters.tls_failures += 1
            log_event(_log, logging.INFO, "control connection failed", client=client, error=exc.detail)
        except (trio.BrokenResourceError, OSError) as exc:
            why = "network"
            log_event(_log, logging.INFO, "control connection failed", client=client, error=str(exc))
        finally:
            self._connections -= 1
            with trio.CancelScope(shield=True):
                await trio.aclose_forcefully(stream)
        if why == "idle":
            self.counters.idle_timeouts += 1
        log_event(_log, logging.DEBUG, "control connection ended", client=client, why=why)

    def _count_control_error(self, exc: ControlError, client: str) -> str:
        if exc.code == "auth":
            self.counters.auth_failures += 1
            log_event(_log, logging.WARNING, "control message failed authentication", client=client)
        elif exc.code == "protocol":
            self.counters.protocol_errors += 1
            log_event(_log, logging.WARNING, "control protocol error", client=client, error=exc.detail)
        else:
            self.counters.bad_lines += 1
            log_event(_log, logging.WARNING, "bad control line", client=client, error=str(exc))
        return exc.code

    async def _converse(self, stream: trio.abc.Stream, client: str, local: str) -> None:
        config = self.config
        nonce = new_nonce()
        await stream.send_all(make_hello(nonce, BANNER))
        lines = LineBuffer(MAX_LINE)
        signer = ControlSigner(config.secret, nonce, None, role="peer")
        first = await _read_line(stream, lines, trio.current_time() + config.idle_timeout)
        request = parse_open_request(
            signer.open(first), rtp_range=config.rtp_range, max_ports=config.max_ports, max_ttl=config.max_ttl
        )
        if self._sessions >= config.max_sessions:
            self.counters.refused_sessions += 1
            log_event(
                _log,
                logging.WARNING,
                "session refused",
                client=client,
                why="max sessions",
                limit=config.max_sessions,
            )
            raise _Hangup("max_sessions")
        self._sessions += 1
        # The connection's own failures are caught inside the nursery and re-raised after it, once the
        # session's sockets are closed (and so that they are not wrapped in an exception group).
        ended: Exception | None = None
        try:
            key = session_key(config.secret, nonce, request.client_nonce)
            async with trio.open_nursery() as nursery:
                session: _Session = await nursery.start(self._run_session, request, key, client, local)
                try:
                    await self._serve_session(stream, lines, signer, session)
                    session.end("close")
                except _Hangup as exc:
                    session.end(exc.reason)
                    ended = exc
                except ControlError as exc:
                    session.end(exc.code)
                    ended = exc
                except (NetError, trio.BrokenResourceError, OSError) as exc:
                    session.end("network")
                    ended = exc
                finally:
                    session.end("error")  # only if nothing above ended it (a bug or a cancellation)
        finally:
            self._sessions -= 1
        if ended is not None:
            raise ended

    async def _serve_session(
        self, stream: trio.abc.Stream, lines: LineBuffer, signer: ControlSigner, session: _Session
    ) -> None:
        opened = {
            "type": "opened",
            "session": session.id,
            "ssid": session.ssid,
            "ttl": session.ttl,
            "ports": session.ports,
        }
        await stream.send_all(signer.seal(opened))
        while True:
            line = await _read_line(stream, lines, session.expires_at + self.config.idle_timeout)
            message = signer.open(line)
            kind = message.get("type")
            if kind == "stats":
                stats = session.final or self.reflector.session_stats(session.id)
                await stream.send_all(_seal_stats(signer, stats, _wanted_ports(message)))
            elif kind == "close":
                return
            else:
                raise ControlError("protocol", f"unexpected message type {str(kind)[:40]!r} in a session")

    # ---------------------------------------------------------------------------------------------------
    # Sessions

    async def _run_session(
        self,
        request: OpenRequest,
        key: bytes,
        client: str,
        local: str,
        *,
        task_status: trio.TaskStatus[_Session],
    ) -> None:
        """Bind, register and serve one session's sockets until its scope ends; always release them."""
        config = self.config
        session = _Session(
            id=secrets.token_hex(8),
            ssid=secrets.randbelow(1 << 16),
            client=client,
            ttl=request.ttl,
            expires_at=trio.current_time() + request.ttl,
        )
        session.scope.deadline = session.expires_at
        host = config.media_host or local  # a link-local address keeps its zone for bind()
        opened: list[int] = []
        in_use: list[int] = []
        refused: list[int] = list(request.refused)
        bind_error: str | None = None
        registered = False
        try:
            with session.scope:
                for port in request.ports:
                    wanted = (port, port + 1) if request.rtcp else (port,)
                    bound: list[tuple[int, trio.socket.SocketType]] = []
                    state = "open"
                    for p in wanted:
                        if self.reflector.port_taken(p):
                            state = "in_use"
                            break
                        try:
                            bound.append((p, await _bind_udp(host, p)))
                        except OSError as exc:
                            state = "in_use" if exc.errno in _IN_USE else "refused"
                            if state == "refused" and bind_error is None:
                                bind_error = f"{_hostport(host, p)}: {exc.strerror or exc}"
                            break
                    if state == "open":
                        session.sockets.update(bound)
                        opened.append(port)
                    else:
                        for _, sock in bound:
                            sock.close()
                        (in_use if state == "in_use" else refused).append(port)
                self.reflector.add_session(
                    session.id,
                    key=key,
                    ssid=session.ssid,
                    client=client,
                    rtp_ports=opened,
                    rtcp=request.rtcp,
                    now=time.time(),
                )
                registered = True
                self.counters.sessions_opened += 1
                session.ports = {"open": opened, "in_use": in_use, "refused": refused}
                log_event(
                    _log,
                    logging.INFO,
                    "session opened",
                    session=session.id,
                    client=client,
                    media_host=host,
                    ttl=session.ttl,
                    rtcp=request.rtcp,
                    open=len(opened),
                    in_use=len(in_use),
                    refused=len(refused),
                    bind_error=bind_error,
                )
                task_status.started(session)
                async with trio.open_nursery() as pumps:
                    for port, sock in session.sockets.items():
                        pumps.start_soon(self._pump, sock, port)
                    await trio.sleep_forever()
        finally:
            for sock in session.sockets.values():
                sock.close()
            if registered:
                session.final = self.reflector.remove_session(session.id)
                self.counters.sessions_closed += 1
                self._log_closed(session)
            session.done.set()

    def _log_closed(self, session: _Session) -> None:
        final = session.final
        if final is None:  # pragma: no cover - registered sessions always have counters
            return
        ports = final.ports.values()
        log_event(
            _log,
            logging.INFO,
            "session closed",
            session=session.id,
            client=session.client,
            why=session.why,
            rx=sum(c.rx for c in ports),
            tx=sum(c.tx for c in ports),
            rtcp_rx=sum(c.rtcp_rx for c in ports),
            rtcp_tx=sum(c.rtcp_tx for c in ports),
            dropped=",".join(f"{r}:{n}" for r, n in final.dropped.items() if n) or None,
        )

    async def _pump(self, sock: trio.socket.SocketType, port: int) -> None:
        """Reflect what arrives on one media socket until cancelled."""
        reflector = self.reflector
        stamped = stamp_arrivals(sock)
        while True:
            try:
                if stamped:  # T2 = the kernel's arrival stamp: time queued in the socket is not path delay
                    data, ancdata, _flags, address = await sock.recvmsg(_RECV_SIZE, rxstamp.ANCILLARY_SIZE)
                    source = address if isinstance(address, tuple) else ()
                    arrived = rxstamp.unix_from_ancillary(ancdata)
                else:
                    data, source = await sock.recvfrom(_RECV_SIZE)
                    arrived = None
            except OSError as exc:
                if exc.errno in _MSGSIZE:  # Windows: a datagram longer than the buffer
                    reflector.count(port, DropReason.SIZE)
                    continue
                if exc.errno in _TRANSIENT:  # Windows: ICMP port unreachable for an earlier reply
                    continue
                self.counters.udp_errors += 1
                log_event(_log, logging.WARNING, "media socket failed", port=port, error=str(exc))
                return
            reply = reflector.handle(data, source, port, time.time(), received=arrived)
            if reply is None:
                continue
            try:
                await sock.sendto(reply, source)
            except OSError as exc:
                reflector.unsent(port, len(reply))
                if exc.errno not in _TRANSIENT:
                    self.counters.udp_errors += 1


def _wanted_ports(message: dict[str, object]) -> list[int] | None:
    """The optional `ports` list of a `stats` request (an extension: ask for a subset); None: all ports."""
    wanted = message.get("ports")
    if wanted is None:
        return None
    if not isinstance(wanted, list) or not all(type(p) is int for p in wanted):
        raise ControlError("protocol", "a stats request's 'ports' must be a list of port numbers")
    return list(dict.fromkeys(p for p in wanted if isinstance(p, int)))


def _seal_stats(signer: ControlSigner, stats: SessionStats, wanted: list[int] | None) -> bytes:
    """The sealed `stats` answer; if all ports' counters do not fit into one 4096-byte line, the first ones
    that do, and ``"truncated"``: how many were left out (ask for the rest with a `ports` list).

    One line holds the counters of about 65 ports (docs/rtp.md caps a line at 4096 bytes); a session may
    have 256.
    """
    ports = sorted(stats.ports) if wanted is None else [p for p in wanted if p in stats.ports]

    def message(count: int) -> dict[str, object]:
        body: dict[str, object] = {"type": "stats", **stats.as_message(ports[:count])}
        if count < len(ports):
            body["truncated"] = len(ports) - count
        return body

    def fits(count: int) -> bool:
        try:
            copy.copy(signer).seal(message(count))  # a copy: sealing counts the message as sent
        except ValueError:  # longer than the line limit
            return False
        return True

    count = len(ports)
    if not fits(count):
        lo, hi = 0, count - 1  # no port at all always fits; find the most that do
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if fits(mid):
                lo = mid
            else:
                hi = mid - 1
        count = lo
    return signer.seal(message(count))


async def _read_line(stream: trio.abc.Stream, lines: LineBuffer, deadline: float) -> bytes:
    """The next control line; `_Hangup("eof")` at EOF, `_Hangup("idle")` at `deadline`."""
    while (line := lines.next_line()) is None:
        with trio.move_on_at(deadline):
            data = await stream.receive_some(MAX_LINE + 1)
            if not data:
                raise _Hangup("eof")
            lines.feed(bytes(data))
            continue
        raise _Hangup("idle")
    return line


async def _bind_udp(host: str, port: int) -> trio.socket.SocketType:
    address = normalise_ip(host)
    if address is None:  # pragma: no cover - checked by PeerConfig, and socket names are literals
        raise OSError(errno.EADDRNOTAVAIL, f"{host!r} is not an IP address")
    family = trio.socket.AF_INET6 if address.version == 6 else trio.socket.AF_INET
    sock = trio.socket.socket(family, trio.socket.SOCK_DGRAM)
    try:
        exclusive = getattr(stdlib_socket, "SO_EXCLUSIVEADDRUSE", None)  # Windows only
        if exclusive is not None:
            sock.setsockopt(trio.socket.SOL_SOCKET, exclusive, 1)
        target = host if address.version == 6 and "%" in host else str(address)
        await sock.bind((target, port))
    except BaseException:
        sock.close()
        raise
    return sock
