"""The SIP OPTIONS probe: resolve, connect, (mutual) TLS, one OPTIONS transaction, on a fresh connection.

Theory of operation
-------------------
`probe(spec, deadline=...)` resolves the target once, then probes every resolved address concurrently and
separately (PROTOCOL.md §2 "Several addresses": a dual-stack host is two listeners to watch, not one to fail
over). Each address gets a fresh TCP connection, so the phases are measured cold every time:

    resolve -> connect -> tls (only for transport "tls") -> sip (request written .. final response arrived)

With `SipProbeSpec.resolution == "rfc3263"` the host is resolved the way RFC 3263 §4 tells a SIP client to
(`umprobe.net.rfc3263`: NAPTR -> SRV -> A/AAAA, for the spec's transport only; no NAPTR/SRV when the port
was named, `port_given`, or the host is an IP literal) with the caller's `dns` client and deadline. Every
resolved (address, port) is probed as its own listener on that port, with `spec.host`, the SIP domain, kept
as the Request-URI host and as the name TLS sends (SNI) and verifies (RFC 5922 §4: the domain, not the SRV
target); each result carries the resolution `step` that found its address. No target at all is one
address-less `dns_error` result with the resolution's one-line reason.

Transport "udp" sends the request as one datagram from a connected socket and retransmits it per RFC 3261
Timer E (`_exchange_udp`); its connect phase is 0.0 (nothing is sent to connect).

The caller owns the deadline (an absolute `trio.current_time()` value); the probe runs each address inside
`trio.move_on_at(deadline)` and, when time runs out, reports the phase it was in as the reason
(`connect_timeout`, `tls_handshake_timeout`, `sip_timeout`). Transport and parser exceptions are mapped to
the fixed `Reason` set in one place (`_classify`); only bugs and our own configuration errors
(`TLSConfigError`) escape.

TLS 1.3 and client certificates (LAB.md): a server that rejects our certificate does so after our side of
the handshake is complete, so the alert arrives on the first read. The TLS layer raises `TLSError(kind=
"client_cert_rejected")` from that read and it is reported as `tls_client_cert_rejected` in phase `tls`,
even though the time it took is in `timings.sip`. A mutual-TLS listener is only called good after a SIP
response has been read over it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Literal

import trio
from OpenSSL import SSL

from umprobe.net.errors import (
    ConnectError,
    ConnectionClosed,
    ConnectRefused,
    LocalResourceError,
    NetError,
    ResolveError,
    TLSError,
)
from umprobe.net.resolve import ResolvedAddress, ip_literal, resolve
from umprobe.net.tcp import LeanSocketStream, TCPStream, open_lean_tcp
from umprobe.net.tls import CertInfo, TLSClientConfig, TLSInfo, TLSStream, load_cert_info, make_client_context
from umprobe.net.udp import UDPSocket, open_udp
from umprobe.probes.result import Phase, ProbeResult, Reason, Timings, TranscriptEntry
from umprobe.sip import (
    DEFAULT_ACCEPT,
    NEED_DATA,
    ClientTransaction,
    OptionsRequest,
    RemoteProtocolError,
    Response,
    StreamParser,
    build_options,
    is_healthy,
)
from umprobe.sip.datagram import T1, next_timer_e, parse_datagram, timer_f

if TYPE_CHECKING:
    from umprobe.net.rfc3263 import DnsLookup

__all__ = ["SipProbeSpec", "TLSContextCache", "probe"]

_RECV_CHUNK = 16384
_RESOLVE_GUARD = 0.25  # seconds past the deadline before an RFC 3263 resolution is cut short (a bug guard)
_TRANSCRIPT_TEXT_CAP = 4096


@dataclass(frozen=True, slots=True)
class SipProbeSpec:
    """What to probe: one SIP listener (host, port, transport) and how to judge it."""

    host: str
    port: int
    transport: Literal["tcp", "tls", "udp"] = "tcp"
    listener: str = "custom"
    tls: TLSClientConfig | None = None
    server_name: str | None = None
    accept_status: frozenset[int] = DEFAULT_ACCEPT
    families: tuple[str, ...] = ("ipv4", "ipv6")
    from_domain: str | None = None
    uri_scheme: Literal["sip", "sips"] = "sip"
    # The OPTIONS shape of a profile (umprobe.profiles.OptionsShape): Contact <sip:HOST:PORT;transport=T>
    # without userinfo instead of umprobe@local-address; None keeps the default shape.
    contact_host: str | None = None
    contact_port: int | None = None
    # "a": the host's A/AAAA records via getaddrinfo (the default). "rfc3263": NAPTR -> SRV -> A/AAAA per
    # RFC 3263 §4 (umprobe.net.rfc3263); then `port_given=False` says no port was named, so NAPTR/SRV
    # choose the ports and `port` is only the A/AAAA fallback's (the transport's default).
    resolution: Literal["a", "rfc3263"] = "a"
    port_given: bool = True

    @property
    def verify_name(self) -> str:
        """The name the server certificate must carry: `server_name` if set, else the host as dialled."""
        return self.server_name or self.host.strip("[]")


class TLSContextCache:
    """One pyOpenSSL context per distinct `TLSClientConfig`: loading a CA bundle costs far more than a probe.

    `clear()` drops them all, e.g. on a config reload, so replaced certificate files are read again.
    """

    def __init__(self) -> None:
        self._contexts: dict[TLSClientConfig, SSL.Context] = {}
        self._client_certs: dict[str, CertInfo] = {}

    def context(self, config: TLSClientConfig) -> SSL.Context:
        ctx = self._contexts.get(config)
        if ctx is None:
            ctx = self._contexts[config] = make_client_context(config)
        return ctx

    def client_cert(self, config: TLSClientConfig) -> CertInfo | None:
        if config.cert_file is None:
            return None
        info = self._client_certs.get(config.cert_file)
        if info is None:
            info = self._client_certs[config.cert_file] = load_cert_info(config.cert_file)
        return info

    def clear(self) -> None:
        self._contexts.clear()
        self._client_certs.clear()


_DEFAULT_CACHE = TLSContextCache()


@dataclass(slots=True)
class _Run:
    """Mutable bookkeeping for one address while it is being probed; frozen into a ProbeResult at the end."""

    start: float
    phase: Phase = Phase.CONNECT
    marks: dict[str, float] = field(default_factory=dict)
    transcript: list[TranscriptEntry] = field(default_factory=list)
    response: Response | None = None
    tls_info: TLSInfo | None = None
    provisional: int = 0
    mismatched: int = 0
    mismatch_reasons: list[str] = field(default_factory=list)
    received: int = 0  # bytes of SIP received (plaintext)
    partial: int = 0  # bytes of an incomplete message buffered when the exchange ended
    retransmissions: int = 0  # UDP only: requests re-sent per Timer E
    syn_rtt: float | None = None  # TCP: the kernel's SYN to SYN-ACK time, when it has one to trust

    def take_transaction(self, tx: ClientTransaction) -> None:
        """What the SIP exchange saw besides its final response: 1xx and mismatched messages, noted."""
        self.provisional = tx.provisional
        self.mismatched = tx.mismatched
        self.mismatch_reasons = list(tx.mismatch_reasons)
        for why in tx.mismatch_reasons:
            self.note("info", f"ignored a message that does not match our request: {why}")

    def note(self, kind: str, text: str) -> None:
        if len(text) > _TRANSCRIPT_TEXT_CAP:
            text = text[:_TRANSCRIPT_TEXT_CAP] + f"... [{len(text) - _TRANSCRIPT_TEXT_CAP} more characters]"
        self.transcript.append(TranscriptEntry(trio.current_time() - self.start, kind, text))


async def probe(
    spec: SipProbeSpec,
    *,
    deadline: float,
    contexts: TLSContextCache | None = None,
    dns: DnsLookup | None = None,
) -> list[ProbeResult]:
    """Probe every address of `spec.host`; return one result per address (one `dns_error` result if none).

    `deadline` is absolute, in `trio.current_time()` units. Raises `TLSConfigError` for unusable local TLS
    files (our configuration, not the peer's fault); every peer or network failure is a result. `dns` is
    the nameserver client of `resolution = "rfc3263"` (`umprobe.net.rfc3263.DnsClient`, built once per
    configuration; None: the system's resolv.conf, read for this call); plain A/AAAA resolution ignores it.
    """
    contexts = contexts or _DEFAULT_CACHE
    ctx: SSL.Context | None = None
    client_cert: CertInfo | None = None
    if spec.transport == "tls":
        tls_config = spec.tls or TLSClientConfig()
        ctx = contexts.context(tls_config)
        client_cert = contexts.client_cert(tls_config)
    started_at = datetime.now(UTC)
    start = trio.current_time()
    if spec.resolution == "rfc3263":
        return await _probe_rfc3263(spec, deadline, dns, ctx, client_cert, started_at, start)
    addresses: list[ResolvedAddress] = []
    error = ""
    reason = Reason.DNS_ERROR
    # An IP literal needs no lookup (its resolve() is one checkpoint): it is never held to the deadline, so a
    # run that starts with no time left (an event loop that fell behind) still reports its listener, as a
    # connect_timeout, instead of a dns_error on an address-less series.
    literal = ip_literal(spec.host) is not None
    with trio.move_on_at(math.inf if literal else deadline) as scope:
        try:
            addresses = await resolve(spec.host, spec.port, families=spec.families)
        except ResolveError as exc:
            error = exc.detail
            if isinstance(exc, LocalResourceError):  # no descriptor to ask the resolver with
                reason = Reason.LOCAL_RESOURCE_ERROR
    resolve_s = trio.current_time() - start
    if scope.cancelled_caught:
        error = f"name resolution of {spec.host} did not finish before the deadline"
    if not addresses:
        return [
            _result(
                spec,
                None,
                _Run(start=start, phase=Phase.RESOLVE),
                reason,
                error or f"{spec.host} has no address",
                Timings(resolve=resolve_s, total=resolve_s),
                client_cert=client_cert,
                started_at=started_at,
            )
        ]

    if len(addresses) == 1:  # the usual case: no nursery and no task of its own needed
        return [
            await _probe_address(spec, addresses[0], ctx, deadline, start, resolve_s, client_cert, started_at)
        ]

    results: list[ProbeResult | None] = [None] * len(addresses)

    async def one(i: int, address: ResolvedAddress) -> None:
        results[i] = await _probe_address(
            spec, address, ctx, deadline, start, resolve_s, client_cert, started_at
        )

    async with trio.open_nursery() as nursery:
        for i, address in enumerate(addresses):
            nursery.start_soon(one, i, address)
    return [r for r in results if r is not None]


async def _probe_rfc3263(
    spec: SipProbeSpec,
    deadline: float,
    dns: DnsLookup | None,
    ctx: SSL.Context | None,
    client_cert: CertInfo | None,
    started_at: datetime,
    start: float,
) -> list[ProbeResult]:
    """`probe` for `resolution = "rfc3263"`: every resolved (address, port) is a listener of its own."""
    from umprobe.net.rfc3263 import resolve_sip  # dnspython: only for the probes that use it

    # resolve_sip returns by the deadline with what it found (every query runs under it), which says more
    # than a cancellation would ("2 DNS queries timed out, first NAPTR ..."): the scope here is only a guard.
    # As in `probe`, an IP literal asks no one, so it is not held to the deadline.
    literal = ip_literal(spec.host) is not None
    resolution = None
    with trio.move_on_at(math.inf if literal else deadline + _RESOLVE_GUARD):
        resolution = await resolve_sip(
            spec.host,
            deadline=deadline,
            port=spec.port if spec.port_given else None,
            scheme="sips" if spec.uri_scheme == "sips" and spec.transport == "tls" else "sip",
            transports=(spec.transport,),
            families=spec.families,
            dns_client=dns,
        )
    resolve_s = trio.current_time() - start
    if resolution is None or not resolution.targets:
        detail = (
            resolution.detail or f"{spec.host} has no address"
            if resolution is not None
            else f"name resolution of {spec.host} did not finish before the deadline"
        )
        return [
            _result(
                spec,
                None,
                _Run(start=start, phase=Phase.RESOLVE),
                Reason.DNS_ERROR,
                detail,
                Timings(resolve=resolve_s, total=resolve_s),
                client_cert=client_cert,
                started_at=started_at,
            )
        ]
    # The SIP domain stays the host (Request-URI, SNI, the name verified); only the port is the SRV one.
    plan = [
        (spec if t.port == spec.port else replace(spec, port=t.port), t.as_address(), t.step)
        for t in resolution.targets
    ]
    results: list[ProbeResult | None] = [None] * len(plan)

    async def one(i: int, one_spec: SipProbeSpec, address: ResolvedAddress, step: str) -> None:
        results[i] = await _probe_address(
            one_spec, address, ctx, deadline, start, resolve_s, client_cert, started_at, step
        )

    async with trio.open_nursery() as nursery:
        for i, (one_spec, address, step) in enumerate(plan):
            nursery.start_soon(one, i, one_spec, address, step)
    return [r for r in results if r is not None]


async def _probe_address(
    spec: SipProbeSpec,
    address: ResolvedAddress,
    ctx: SSL.Context | None,
    deadline: float,
    start: float,
    resolve_s: float,
    client_cert: CertInfo | None,
    started_at: datetime,
    step: str | None = None,
) -> ProbeResult:
    run = _Run(start=start)
    run.marks["connect"] = trio.current_time()
    reason = Reason.OK
    detail = ""
    with trio.move_on_at(deadline) as scope:
        try:
            if spec.transport == "udp":
                reason, detail = await _exchange_udp(spec, address, run)
            else:
                reason, detail = await _exchange(spec, address, ctx, run)
        except (NetError, RemoteProtocolError) as exc:
            reason, detail = _classify(exc, run)
            run.note("error", detail)
    end = trio.current_time()
    if scope.cancelled_caught:
        reason = {
            Phase.CONNECT: Reason.CONNECT_TIMEOUT,
            Phase.TLS: Reason.TLS_HANDSHAKE_TIMEOUT,
        }.get(run.phase, Reason.SIP_TIMEOUT)
        detail = f"no answer within the deadline during {run.phase.value}"
        if run.phase is Phase.TLS:
            detail += " (a plain-TCP SIP port answers a TLS client this way)"
        if run.phase is Phase.SIP:
            detail += _sip_wait_story(run)
        run.note("error", detail)
    timings = _timings(run, resolve_s, end)
    return _result(
        spec, address, run, reason, detail, timings, client_cert=client_cert, started_at=started_at, step=step
    )


async def _exchange(
    spec: SipProbeSpec, address: ResolvedAddress, ctx: SSL.Context | None, run: _Run
) -> tuple[Reason, str]:
    """Connect, handshake, send OPTIONS and read until a matching final response. Raises on failure."""
    run.phase = Phase.CONNECT
    tcp = await open_lean_tcp(address, spec.port)
    stream: trio.abc.Stream = TCPStream(tcp, _hostport(address.address, spec.port))
    try:
        run.marks["connected"] = trio.current_time()
        run.syn_rtt = tcp.syn_rtt
        local_host, local_port = tcp.socket.getsockname()[:2]
        local_host = local_host.split("%", 1)[0]  # a link-local zone id has no place in a SIP URI
        run.note(
            "info", f"connected to {_hostport(address.address, spec.port)} from {local_host}:{local_port}"
        )
        if ctx is not None:
            run.phase = Phase.TLS
            sni = spec.server_name or (None if ip_literal(spec.host) else spec.host.strip("[]"))
            tls_stream = TLSStream(
                tcp,  # the raw socket stream: TLSStream translates transport errors itself
                ctx,
                server_hostname=sni,
                verify_hostname=spec.verify_name,
                insecure=bool(spec.tls and spec.tls.insecure),
            )
            stream = tls_stream
            try:
                run.tls_info = await tls_stream.do_handshake()
            finally:
                run.marks["tls_done"] = tls_stream.handshake_done_at or trio.current_time()
                if run.tls_info is None:
                    run.tls_info = tls_stream.info()
            run.note("info", _describe_tls(run.tls_info))
        run.phase = Phase.SIP
        request = _request(spec, local_host, local_port)
        run.note("send", request.raw.decode("utf-8", "replace"))
        run.marks["sip_start"] = trio.current_time()
        await stream.send_all(request.raw)
        final = await _await_final(stream, ClientTransaction(request), run, tcp)  # marks "sip_done"
        run.response = final
        return _verdict(spec, final)
    finally:
        # Close at once, no goodbye: what `trio.aclose_forcefully(stream)` comes to for these streams (a TLS
        # close_notify never got out: its send met the cancelled scope), less that cancelled checkpoint,
        # which costs more CPU (~0.07 ms) than the rest of the close.
        tcp.socket.close()


async def _exchange_udp(spec: SipProbeSpec, address: ResolvedAddress, run: _Run) -> tuple[Reason, str]:
    """SIP over UDP (RFC 3261 §17.1.2): send, retransmit per Timer E until a matching final response.

    Connecting a UDP socket sends nothing, so the connect phase is reported as 0.0 (the local socket setup
    is in `total` only); `sip` runs from the first send to the arrival of the final response. Timer F (64*T1)
    ends the transaction as `sip_timeout` if it comes before the caller's deadline. An ICMP port-unreachable
    surfaces as ConnectRefused (`connect_refused`, phase connect). A datagram that is not SIP is
    RemoteProtocolError at once, as on a stream.
    """
    run.phase = Phase.CONNECT
    udp = await open_udp(address, spec.port)
    try:
        run.marks["connected"] = run.marks["connect"]
        local_host, local_port = udp.local()
        run.note("info", f"UDP to {udp.where} from {_hostport(local_host, local_port)}")
        run.phase = Phase.SIP
        request = _request(spec, local_host, local_port)
        run.note("send", request.raw.decode("utf-8", "replace"))
        first = run.marks["sip_start"] = trio.current_time()
        try:
            await udp.send(request.raw)
            with trio.move_on_at(first + timer_f(math.inf)) as timer_f_scope:
                final = await _await_final_udp(udp, request.raw, ClientTransaction(request), run, first)
        except ConnectRefused:
            run.phase = Phase.CONNECT
            raise
        if timer_f_scope.cancelled_caught:
            detail = f"Timer F ({timer_f(math.inf):g} s) expired without a final response"
            detail += _sip_wait_story(run)
            run.note("error", detail)
            return Reason.SIP_TIMEOUT, detail
        run.response = final
        return _verdict(spec, final)
    finally:
        udp.close()


def _request(spec: SipProbeSpec, local_host: str, local_port: int) -> OptionsRequest:
    """The OPTIONS of `spec` sent from `local_host`:`local_port` (no port in the Request-URI when DNS chose
    it; a `sips:` URI only over TLS: UDP always says `sip:`)."""
    return build_options(
        target_host=spec.host,
        target_port=spec.port if spec.port_given else None,
        transport=spec.transport,
        local_host=local_host,
        local_port=local_port,
        from_domain=spec.from_domain,
        uri_scheme=spec.uri_scheme if spec.transport != "udp" else "sip",
        contact_host=spec.contact_host,
        contact_port=spec.contact_port,
    )


def _verdict(spec: SipProbeSpec, final: Response) -> tuple[Reason, str]:
    """A final response judged by the spec's accepted statuses."""
    if is_healthy(final.status_code, spec.accept_status):
        return Reason.OK, f"{final.status_code} {final.reason}".strip()
    return Reason.SIP_UNHEALTHY_STATUS, (
        f"status {final.status_code} is not in the accepted set {_fmt_codes(spec.accept_status)}"
    )


async def _await_final_udp(
    udp: UDPSocket, raw: bytes, tx: ClientTransaction, run: _Run, first: float
) -> Response:
    """Receive datagrams until the first matching final response, retransmitting `raw` when Timer E fires."""
    interval = T1
    next_send = first + interval
    try:
        while True:
            now = trio.current_time()
            if now >= next_send:
                await udp.send(raw)
                run.retransmissions += 1
                run.note("info", f"retransmission {run.retransmissions} (Timer E {interval:g} s)")
                interval = next_timer_e(interval, provisional=tx.provisional > 0)
                next_send = now + interval
            with trio.move_on_at(next_send):
                data = await udp.receive()
                arrived = trio.current_time()
                run.received += len(data)
                message = parse_datagram(data)
                if message is None:
                    continue
                run.note("recv", message.raw.decode("utf-8", "replace"))
                final = tx.receive(message)
                if final is not None:
                    run.marks["sip_done"] = arrived
                    return final
    finally:
        run.take_transaction(tx)


async def _await_final(
    stream: trio.abc.Stream, tx: ClientTransaction, run: _Run, tcp: LeanSocketStream | None = None
) -> Response:
    """Read until the first final response that matches `tx`.

    A peer that closes the connection before that is `ConnectionClosed`, also when it closes in the middle
    of a message: the bytes it did send were acceptable SIP so far, so the failure is the close, not the
    framing (a parser error would blame the peer's syntax). Bytes that are not SIP are RemoteProtocolError
    at once, without waiting for more or for the deadline.

    The arrival of the completing bytes is the kernel's stamp of the last segment `tcp` read (under TLS the
    record carrying the response's end), when the kernel stamps that socket: time the process took to wake
    up and run is not the peer's.
    """
    parser = StreamParser()
    try:
        while True:
            data = await stream.receive_some(_RECV_CHUNK)
            if not data and parser.buffered:
                run.partial = parser.buffered
                raise ConnectionClosed(
                    f"the peer closed the connection in the middle of a message "
                    f"({parser.buffered} bytes of it received){_mismatch_story(tx)}"
                )
            run.received += len(data)
            # The sip phase ends when the bytes completing the final response arrived: parsing them and
            # writing the transcript is our time, not the peer's (bench/timing.py: ~0.2 ms on loopback).
            arrived = trio.current_time()
            stamp = tcp.arrived_at if tcp is not None else None
            if stamp is not None and run.marks["sip_start"] <= stamp <= arrived:
                arrived = stamp
            parser.feed(bytes(data))
            while True:
                message = parser.next_message()
                if message is NEED_DATA:
                    break
                run.note("recv", message.raw.decode("utf-8", "replace"))
                final = tx.receive(message)
                if final is not None:
                    run.marks["sip_done"] = arrived
                    return final
            if not data:
                if not run.received:
                    raise ConnectionClosed(
                        "the peer closed the connection without answering "
                        "(a TLS-only port closes a plain SIP client this way)"
                    )
                raise ConnectionClosed(
                    f"the peer closed the connection before a final response{_mismatch_story(tx)}"
                )
    finally:
        if not run.partial:
            run.partial = parser.buffered
        run.take_transaction(tx)


def _mismatch_story(tx: ClientTransaction) -> str:
    parts: list[str] = []
    if tx.provisional:
        parts.append(f"{tx.provisional} provisional response(s)")
    if tx.mismatched:
        first = f", first: {tx.mismatch_reasons[0]}" if tx.mismatch_reasons else ""
        parts.append(f"{tx.mismatched} message(s) that did not match our request{first}")
    return f" (after {' and '.join(parts)})" if parts else ""


def _sip_wait_story(run: _Run) -> str:
    """What a SIP phase that ran out of time got meanwhile, for the timeout's detail."""
    parts: list[str] = []
    if run.retransmissions:
        parts.append(f"{run.retransmissions} retransmission(s)")
    if run.provisional:
        parts.append(f"{run.provisional} provisional response(s)")
    if run.mismatched:
        first = f", first: {run.mismatch_reasons[0]}" if run.mismatch_reasons else ""
        parts.append(f"{run.mismatched} message(s) that did not match our request{first}")
    if run.partial:
        parts.append(f"{run.partial} bytes of an incomplete message")
    return f" (after {' and '.join(parts)})" if parts else ""


def _classify(exc: Exception, run: _Run) -> tuple[Reason, str]:
    """The one place where transport and parser exceptions become reasons."""
    if isinstance(exc, TLSError):
        if exc.info is not None:
            run.tls_info = exc.info
        detail = exc.detail
        if exc.kind == "client_cert_rejected":
            run.phase = Phase.TLS  # even when TLS 1.3 reported it on the first read, in phase sip
            return Reason.TLS_CLIENT_CERT_REJECTED, detail
        if exc.kind == "verify_failed":
            return Reason.TLS_VERIFY_FAILED, detail
        run.phase = Phase.TLS if run.phase is not Phase.SIP else run.phase
        return Reason.TLS_HANDSHAKE_FAILED, detail
    if isinstance(exc, ConnectRefused):
        return Reason.CONNECT_REFUSED, exc.detail
    if isinstance(exc, ConnectError):
        return Reason.CONNECT_ERROR, exc.detail
    if isinstance(exc, ConnectionClosed):
        return Reason.CONNECTION_CLOSED, exc.detail
    if isinstance(exc, RemoteProtocolError):
        return Reason.SIP_PROTOCOL_ERROR, f"{exc} ({exc.code})"
    if isinstance(exc, LocalResourceError):
        return Reason.LOCAL_RESOURCE_ERROR, exc.detail
    if isinstance(exc, NetError):
        return Reason.CONNECT_ERROR, exc.detail
    raise exc  # pragma: no cover - _probe_address only passes the types above


def _timings(run: _Run, resolve_s: float, end: float) -> Timings:
    m = run.marks

    def span(a: str, b: str) -> float | None:
        if a not in m:
            return None
        return m.get(b, end) - m[a]

    connect = (m["connected"] - m["connect"]) if "connected" in m else span("connect", "connected")
    if run.syn_rtt is not None and connect is not None and run.syn_rtt <= connect:
        connect = run.syn_rtt  # the kernel's SYN to SYN-ACK: the handshake without our wake-up and set-up
    return Timings(
        resolve=resolve_s,
        connect=connect,
        tls=(m["tls_done"] - m["connected"]) if "tls_done" in m else None,
        sip=span("sip_start", "sip_done"),
        total=end - run.start,
    )


def _result(
    spec: SipProbeSpec,
    address: ResolvedAddress | None,
    run: _Run,
    reason: Reason,
    detail: str,
    timings: Timings,
    *,
    client_cert: CertInfo | None,
    started_at: datetime,
    step: str | None = None,
) -> ProbeResult:
    response = run.response
    return ProbeResult(
        target=spec.host,
        address=address.address if address else "",
        family=address.family if address else "",
        port=spec.port,
        transport=spec.transport,
        listener=spec.listener,
        success=reason is Reason.OK,
        alive=response is not None,
        reason=reason,
        phase=None if reason is Reason.OK else run.phase,
        detail=detail,
        timings=timings,
        status_code=response.status_code if response else None,
        reason_phrase=response.reason if response else None,
        server=response.server if response else None,
        ms_diagnostics=response.ms_diagnostics if response else None,
        retry_after=response.retry_after if response else None,
        provisional_responses=run.provisional,
        mismatched_responses=run.mismatched,
        retransmissions=run.retransmissions,
        tls=run.tls_info,
        client_cert=client_cert,
        insecure=bool(spec.transport == "tls" and spec.tls and spec.tls.insecure),
        started_at=started_at,
        transcript=tuple(run.transcript),
        step=step,
    )


def _describe_tls(info: TLSInfo) -> str:
    text = f"TLS {info.version} {info.cipher}, verified={info.verified}"
    if info.peer_chain:
        leaf = info.peer_chain[0]
        text += f", peer {leaf.subject} issued by {leaf.issuer}, expires {leaf.not_after.isoformat()}"
    if info.verify_error:
        text += f" ({info.verify_error})"
    return text


def _hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _fmt_codes(codes: frozenset[int]) -> str:
    return "{" + ", ".join(str(c) for c in sorted(codes)) + "}"
