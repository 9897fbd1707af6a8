"""The RTP range probe: which blocks of a UDP media range a firewall lets through, and how well.

Theory of operation
-------------------
`probe_rtp(spec, deadline=..., cycle=...)` measures the *static path* between this host and an umprobe echo
peer (docs/rtp.md) for the even ports that `sampling.SweepPlan` picks for `cycle`:

1. **Control** (peer mode). Resolve the peer, connect TCP (optionally TLS), read the peer's `hello`, send an
   authenticated `open` for the cycle's ports (at most 48 per session, so that the peer's `stats` answer
   fits one control line; more are split over sessions run one after another) and read `opened`: which
   ports the peer bound (`open`), could not bind because something else holds them (`in_use`) or would
   not bind (`refused`). Every failure here becomes a result reason (`control_connect_failed`,
   `control_auth_failed`, ...), never an exception.

2. **Media**. Each open port is measured by one task, at most `spec.concurrency` at a time (a
   `trio.CapacityLimiter`, first come first served in sampling order). A task owns one connected UDP socket
   to `p` and one to `p + 1`, both bound to the control connection's local address because the peer only
   reflects for the address that opened the session. Connected sockets mean the kernel hands each socket
   only the replies from its own port, so replies map to ports without any lookup, and an ICMP error for
   that port surfaces on it (counted as `socket_errors`, like any other failed send or receive: failures
   are data, never exceptions).

   *Sender*: packet `i` leaves at `t0 + i * 20 ms` (`trio.sleep_until` on an absolute schedule, so a late
   wake-up never shifts the rest of the burst; a packet that is late goes out at once). Packet 0 carries
   the RTP marker bit; the RTP sequence and timestamp start at random values and advance by 1 and 160
   (20 ms of 8 kHz PCMU); the measurement block carries our counter `i` and T1 (NTP, wall clock). One RTCP
   compound goes to `p + 1` right after packet 0, so its answer has the whole burst to come back.

   *Receiver*: runs beside the sender for the burst and afterwards. Each datagram is authenticated
   (`packet.decode_media`, SSID and SSRC checked, our counter in range) or counted as a bad reply; T4 is
   taken on arrival: on Linux the kernel's arrival stamp (`SO_TIMESTAMPNS`, `media.rxstamp`; the peer
   stamps T2 the same way), so time a datagram waited in a socket buffer while either process was busy is
   not measured as path delay. From T1..T4 it records the RTT ((T4 - T1) - (T3 - T2)), the forward transit
   (T2 - T1) and return transit (T4 - T3) for RFC 3550 jitter, and duplicate/reordered echoes by our counter.

   *Pacing*: ports start at least 20 ms / `concurrency` apart, so the packets of concurrent ports interleave
   evenly instead of leaving in bursts (a burst queues at both ends), and `concurrency` x 50 packets/s
   bounds the rate even for short bursts.

   *Stragglers*: after the last packet the task waits until every packet sent is accounted for (and the
   RTCP answer is in), or for a window of 2x the longest wait for an echo seen so far in this run (send to
   arrival as this process sees it, the peer's turnaround included, unlike the RTT; at least 250 ms, at
   most 1 s; the full 1 s when nothing has answered yet), whichever comes first.

3. **Counters**. After the last port, `stats` fetches the reflector's per-port rx/tx counters, which split
   loss into forward (sent - rx) and return (tx - received); then `close` ends the session.

Deadline: the caller owns it (an absolute `trio.current_time()` value). The media phase ends a little
before it (10 % of the time left, 0.2..1 s) so the counters can still be fetched; a port whose burst would
not fit into what is left (or into the session's ttl) is not started and reported `not_measured`.

Plain-echo mode (`spec.mode == "plain-echo"`) is the opt-in fallback for a plain UDP echo (socat, a
network device's echo service): **no control channel and no authentication**. It sends the same RTP-shaped
172-byte packets to a fixed port list and matches echoes by SSRC and RTP sequence; it can only tell
reachability, round-trip loss and RTT, never the direction of a loss, and anyone on the path can forge its
answers. Results say `authenticated: false`.
"""

from __future__ import annotations

import contextlib
import errno
import math
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, Protocol

import trio

from umprobe.media import control, ntp, packet, rtcp, rxstamp, sampling, stats
from umprobe.media.errors import ControlError, MediaError
from umprobe.media.packet import Measurement
from umprobe.media.rtp import RtpHeader
from umprobe.net.errors import (
    ConnectError,
    ConnectionClosed,
    ConnectRefused,
    NetError,
    ResolveError,
    TLSError,
)
from umprobe.net.resolve import ResolvedAddress, resolve
from umprobe.net.stamping import stamp_arrivals
from umprobe.net.tcp import TCPStream, format_hostport, open_tcp
from umprobe.net.tls import TLSClientConfig, TLSStream
from umprobe.probes.rtp_result import (
    PortResult,
    PortState,
    RtpMode,
    RtpReason,
    RtpResult,
    RtpTotals,
    aggregate,
)
from umprobe.probes.sip_options import TLSContextCache

__all__ = [
    "MAX_BLOCKS",
    "MAX_PORTS_PER_SESSION",
    "PACKET_INTERVAL",
    "STATS_PORTS_PER_SESSION",
    "RtpProbeSpec",
    "estimate_seconds",
    "probe_rtp",
]

PACKET_INTERVAL = 0.020  # seconds between RTP packets on one port: 20 ms, 50 packets/s (RFC 3551 PCMU)
RTP_TIMESTAMP_STEP = 160  # 20 ms at 8 kHz
MAX_PORTS_PER_SESSION = 256  # docs/rtp.md: the peer's limit per `open`
# The peer's `stats` answer for this many ports fits one 4096-byte control line (see _session_size).
STATS_PORTS_PER_SESSION = 48
MAX_BLOCKS = 64
MAX_TTL = 60  # seconds; the peer caps a session's ttl at this
# A reachable port settles as soon as its echoes are in; only a port still missing echoes waits the whole
# window. 50 ms called ports unreachable when a loaded machine stalled the peer for longer (bench/rtp.py: 9
# of 4,096 ports in one stalled session at load 7 on 2 cores).
_STRAGGLE_FLOOR = 0.25
_STRAGGLE_CAP = 1.0
_RECV_SIZE = 2048
_PLAIN_PAYLOAD = b"\xff" * 160  # 20 ms of μ-law silence: 172 bytes of UDP payload with the RTP header
_CONTROL_READ = 4096


@dataclass(frozen=True, slots=True)
class RtpProbeSpec:
    """What to measure and how hard. Validated on construction (`ValueError` names the field).

    * `host` / `port`: the echo peer's control address (`umprobe peer --listen`); in plain-echo mode `host`
      is the echo host and `port` is unused.
    * `secret`: the shared secret (at least 16 bytes); never printed (excluded from `repr`).
    * `tls` / `server_name`: TLS for the control channel (None = plain TCP); the name to verify.
    * `media_host`: where the peer's media sockets are (`umprobe peer --media-host`); default `host`.
    * `rtp_range`: (lo, hi), the range to sample (Exchange: MinimumRtpPort..MaximumRtpPort).
    * `samples`: K even ports per cycle; `packets`: N RTP packets per port, 20 ms apart.
    * `mode`: "peer" (authenticated, per-direction) or "plain-echo" (unauthenticated, `ports` only).
    * `concurrency`: ports in flight at once. Each sends 50 packets/s, and the peer's default per-source
      rate limit is 200 packets/s, so the default of 3 stays under it with room for RTCP.
    * `rtcp`: also probe `p + 1` with one RTCP compound per port.
    """

    host: str
    port: int = 0
    secret: bytes = field(default=b"", repr=False)
    tls: TLSClientConfig | None = None
    server_name: str | None = None
    media_host: str | None = None
    rtp_range: tuple[int, int] = (1024, 65535)
    samples: int = 32
    packets: int = 50
    mode: RtpMode = "peer"
    ports: tuple[int, ...] = ()
    concurrency: int = 3
    rtcp: bool = True
    families: tuple[str, ...] = ("ipv4", "ipv6")

    def __post_init__(self) -> None:
        lo, hi = self.rtp_range
        if not 1 <= lo <= hi <= 65535:
            raise ValueError(f"rtp_range {lo}-{hi}: need 1 <= LO <= HI <= 65535")
        if self.packets < 1:
            raise ValueError("packets must be at least 1")
        if self.concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        if self.mode == "peer":
            if not 1 <= self.port <= 65535:
                raise ValueError(f"control port {self.port} is not a number from 1 to 65535")
            if len(self.secret) < 16:
                raise ValueError("the shared secret must be at least 16 bytes")
            if self.samples < 1:
                raise ValueError("samples must be at least 1")
            sampling.even_ports(lo, hi)  # ValueError unless 1024 <= lo <= hi <= 65535 with an even port
        elif self.mode == "plain-echo":
            if not self.ports:
                raise ValueError("plain-echo mode needs a port list")
            if any(not 1 <= p <= 65535 for p in self.ports):
                raise ValueError("plain-echo ports must be numbers from 1 to 65535")
        else:  # pragma: no cover - the Literal type keeps this out
            raise ValueError(f"unknown mode {self.mode!r}")

    @property
    def media(self) -> str:
        return self.media_host or self.host

    def plan(self) -> sampling.SweepPlan:
        lo, hi = self.rtp_range
        return sampling.SweepPlan(lo, hi, self.samples)

    def cycles_per_sweep(self) -> int:
        """How many cycles one full sweep of the range takes (1 in plain-echo mode)."""
        if self.mode == "plain-echo":
            return 1
        return self.plan().cycles_per_sweep

    def ports_for_cycle(self, cycle: int) -> tuple[int, ...]:
        if self.mode == "plain-echo":
            return tuple(dict.fromkeys(self.ports))
        return tuple(self.plan().ports_for_cycle(cycle))

    def blocks(self) -> list[tuple[int, int]]:
        """The fixed blocks of the range as (lo, hi) pairs (`sampling.blocks`, at most 64).

        A plain-echo port list may reach outside what `sampling` accepts (below 1024, or only odd ports):
        then the whole span is one block.
        """
        lo, hi = self.rtp_range
        try:
            return [(b.lo, b.hi) for b in sampling.blocks(lo, hi, MAX_BLOCKS)]
        except ValueError:
            if self.mode == "peer":
                raise
            return [(lo, hi)]


def estimate_seconds(spec: RtpProbeSpec) -> float:
    """A generous estimate of one cycle's wall time: a deadline at least this far away lets it finish.

    Ports run `concurrency` at a time, each for its burst (N x 20 ms) plus a straggler wait (at most 1 s,
    the full second only for a port that never answers), plus a few round trips on the control channel.
    """
    count = len(spec.ports) if spec.mode == "plain-echo" else spec.samples
    rounds = math.ceil(count / spec.concurrency)
    per_port = spec.packets * PACKET_INTERVAL + _STRAGGLE_CAP
    sessions = math.ceil(count / _session_size(spec))
    return rounds * per_port + 2.0 * sessions + 1.0


def _session_size(spec: RtpProbeSpec) -> int:
    """Ports per control session (sessions of one cycle run one after another).

    Bounded by the peer's 256 per `open`, by what fits into its 60 s ttl, and by `STATS_PORTS_PER_SESSION`:
    the peer's `stats` answer must fit into one 4096-byte control line, and each port's counters take
    about 60 bytes of it. Rounded down to whole rounds of `concurrency` so no session ends half idle.
    """
    per_port = spec.packets * PACKET_INTERVAL + 0.5
    fits = spec.concurrency * max(1, int((MAX_TTL - 5) // per_port))
    size = min(MAX_PORTS_PER_SESSION, STATS_PORTS_PER_SESSION, fits)
    if spec.concurrency < size:
        size -= size % spec.concurrency
    return max(1, size)


# ---------------------------------------------------------------------------------------------- probe


class _ControlFailure(Exception):
    """Internal: ends a session with a reason; turned into result data in `probe_rtp`."""

    def __init__(self, reason: RtpReason, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


@dataclass(slots=True)
class _RunState:
    """What one `probe_rtp` call learns across its sessions."""

    media_deadline: float
    max_wait: float = 0.0  # the longest send-to-echo time seen, as this process saw it (seconds)
    address: str = ""
    media_address: str = ""
    banner: str | None = None
    sessions: list[str] = field(default_factory=list)
    dropped: dict[str, int] = field(default_factory=dict)
    ports: dict[int, PortResult] = field(default_factory=dict)
    media_errors: list[str] = field(default_factory=list)
    planned: bool = False  # a session was opened (or plain-echo started): list every planned port

    def straggle_window(self) -> float:
        if self.max_wait <= 0.0:
            return _STRAGGLE_CAP
        return min(_STRAGGLE_CAP, max(_STRAGGLE_FLOOR, 2.0 * self.max_wait))


async def probe_rtp(
    spec: RtpProbeSpec,
    *,
    deadline: float,
    cycle: int,
    contexts: TLSContextCache | None = None,
) -> RtpResult:
    """Measure the ports of `cycle` (see the module docstring); `deadline` is absolute (trio clock).

    Never raises for a network or peer failure: those are `RtpResult.reason`. Raises `TLSConfigError` for
    unusable local TLS files (our configuration) and `ValueError` for a negative cycle.
    """
    if cycle < 0:
        raise ValueError("cycle must not be negative")
    started_at = datetime.now(UTC)
    start = trio.current_time()
    tail = min(1.0, max(0.2, 0.1 * (deadline - start)))
    run = _RunState(media_deadline=deadline - tail)
    cycles_per_sweep = spec.cycles_per_sweep()
    cycle %= cycles_per_sweep
    ports = spec.ports_for_cycle(cycle)
    reason, detail = RtpReason.OK, ""
    try:
        if spec.mode == "plain-echo":
            await _plain_echo(spec, ports, run, deadline)
        else:
            size = _session_size(spec)
            for i in range(0, len(ports), size):
                await _peer_session(spec, ports[i : i + size], run, deadline, contexts)
    except _ControlFailure as failure:
        reason, detail = failure.reason, failure.detail
    if reason is RtpReason.OK and run.media_errors:
        reason, detail = RtpReason.MEDIA_ERROR, run.media_errors[0]
    # After a failure before any port was opened there is nothing to list; otherwise every planned port is
    # listed, the ones the run never reached as `not_measured`.
    measured = (
        [run.ports.get(p) or PortResult(port=p, state="not_measured") for p in ports] if run.planned else []
    )
    port_results, blocks, totals, samples = aggregate(measured, spec.blocks())
    if reason is RtpReason.OK:
        detail = _summary(totals, len(ports))
    return RtpResult(
        target=spec.host,
        control_port=spec.port if spec.mode == "peer" else None,
        address=run.address,
        media_address=run.media_address,
        mode=spec.mode,
        authenticated=spec.mode == "peer",
        reason=reason,
        detail=detail,
        range_lo=spec.rtp_range[0],
        range_hi=spec.rtp_range[1],
        cycles=(cycle,),
        cycles_per_sweep=cycles_per_sweep,
        ports=port_results,
        blocks=blocks,
        totals=totals,
        rtt_samples=samples,
        peer_banner=run.banner,
        sessions=tuple(run.sessions),
        peer_dropped=dict(run.dropped),
        started_at=started_at,
        duration=trio.current_time() - start,
    )


def _summary(totals: RtpTotals, planned: int) -> str:
    c = totals.state_counts
    return (
        f"{c.get('reachable', 0)} of {planned} ports reachable, {c.get('unreachable', 0)} unreachable, "
        f"{c.get('in_use', 0)} in use, {c.get('refused', 0)} refused, {c.get('not_measured', 0)} not measured"
    )


# ---------------------------------------------------------------------------------------------- control


class _Control:
    """One control connection: newline-framed, authenticated JSON messages (docs/rtp.md)."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.buffer = control.LineBuffer()
        self.signer: control.ControlSigner | None = None

    async def read_line(self, what: str) -> bytes:
        while True:
            try:
                line = self.buffer.next_line()
            except ControlError as exc:
                raise _ControlFailure(RtpReason.CONTROL_PROTOCOL_ERROR, f"{what}: {exc}") from None
            if line is not None:
                return bytes(line)
            try:
                data = await self.stream.receive_some(_CONTROL_READ)
            except ConnectionClosed:
                raise  # EOF or RST: what it means depends on the phase (see _closed_failure)
            except TLSError as exc:  # TLS 1.3: a rejected client certificate shows up on the first read
                raise _ControlFailure(RtpReason.CONTROL_TLS_FAILED, f"{what}: {exc.detail}") from None
            except NetError as exc:
                raise _ControlFailure(RtpReason.CONTROL_PROTOCOL_ERROR, f"{what}: {exc.detail}") from None
            if not data:
                raise ConnectionClosed(f"the peer closed the control connection while we waited for {what}")
            try:
                self.buffer.feed(bytes(data))
            except ControlError as exc:
                raise _ControlFailure(RtpReason.CONTROL_PROTOCOL_ERROR, f"{what}: {exc}") from None

    async def send(self, message: dict[str, Any]) -> None:
        assert self.signer is not None
        try:
            await self.stream.send_all(self.signer.seal(message))
        except TLSError as exc:
            raise _ControlFailure(
                RtpReason.CONTROL_TLS_FAILED, f"sending {message.get('type')}: {exc.detail}"
            ) from None
        except NetError as exc:
            raise _ControlFailure(
                RtpReason.CONTROL_PROTOCOL_ERROR, f"sending {message.get('type')}: {exc.detail}"
            ) from None

    async def request(self, message: dict[str, Any], expect: str) -> dict[str, Any]:
        await self.send(message)
        line = await self.read_line(f"the peer's {expect!r} answer")
        assert self.signer is not None
        try:
            answer = self.signer.open(line)
        except ControlError as exc:
            if exc.code == "auth":
                raise _ControlFailure(
                    RtpReason.CONTROL_AUTH_FAILED,
                    f"the peer's {expect!r} message does not verify under our secret: {exc}",
                ) from None
            raise _ControlFailure(RtpReason.CONTROL_PROTOCOL_ERROR, f"the peer's {expect!r}: {exc}") from None
        if answer.get("type") != expect:
            raise _ControlFailure(
                RtpReason.CONTROL_PROTOCOL_ERROR,
                f"expected {expect!r} from the peer, got {_brief(answer)}",
            )
        return dict(answer)


def _brief(message: dict[str, Any]) -> str:
    text = ", ".join(f"{k}={v!r}" for k, v in message.items() if k != "mac")
    return text if len(text) <= 200 else text[:200] + "..."


async def _connect(
    spec: RtpProbeSpec, run: _RunState, contexts: TLSContextCache | None
) -> tuple[trio.abc.Stream, str]:
    """Resolve and connect the control channel; return the stream and our local address on it."""
    try:
        addresses = await resolve(spec.host, spec.port, families=spec.families)
    except ResolveError as exc:
        raise _ControlFailure(RtpReason.DNS_ERROR, exc.detail) from None
    address = addresses[0]
    run.address = address.address
    where = format_hostport(address.address, spec.port)
    try:
        tcp = await open_tcp(address, spec.port)
    except ConnectRefused as exc:
        raise _ControlFailure(RtpReason.CONTROL_CONNECT_FAILED, exc.detail) from None
    except ConnectError as exc:
        raise _ControlFailure(RtpReason.CONTROL_CONNECT_FAILED, exc.detail) from None
    local = str(tcp.socket.getsockname()[0]).split("%", 1)[0]
    if spec.tls is None:
        return TCPStream(tcp, where), local  # a reset is ConnectionClosed, not trio.BrokenResourceError
    ctx = (contexts or TLSContextCache()).context(spec.tls)
    name = spec.server_name or spec.host.strip("[]")
    stream = TLSStream(
        tcp,
        ctx,
        server_hostname=name,
        verify_hostname=name,
        insecure=spec.tls.insecure,
    )
    try:
        await stream.do_handshake()
    except NetError as exc:
        await trio.aclose_forcefully(stream)
        raise _ControlFailure(RtpReason.CONTROL_TLS_FAILED, f"TLS to {where}: {exc.detail}") from None
    except BaseException:
        await trio.aclose_forcefully(stream)
        raise
    return stream, local


async def _peer_session(
    spec: RtpProbeSpec,
    ports: Sequence[int],
    run: _RunState,
    deadline: float,
    contexts: TLSContextCache | None,
) -> None:
    """One control connection = one session: open `ports`, measure them, fetch counters, close."""
    stream: trio.abc.Stream | None = None
    phase = "connect"
    with trio.move_on_at(deadline) as scope:
        try:
            stream, local = await _connect(spec, run, contexts)
            ctl = _Control(stream)
            phase = "hello"
            try:
                peer_nonce, banner = control.parse_hello(await ctl.read_line("the peer's hello"))
            except ControlError as exc:
                raise _ControlFailure(
                    RtpReason.CONTROL_PROTOCOL_ERROR, f"not an umprobe peer hello: {exc}"
                ) from None
            run.banner = banner
            client_nonce = control.new_nonce()
            ctl.signer = control.ControlSigner(spec.secret, peer_nonce, client_nonce, role="client")
            key = packet.session_key(spec.secret, peer_nonce, client_nonce)
            ttl = max(1, min(MAX_TTL, math.ceil(deadline - trio.current_time()) + 2))
            phase = "open"
            opened = await ctl.request(
                {
                    "type": "open",
                    "client_nonce": client_nonce,
                    "ports": list(ports),
                    "rtcp": spec.rtcp,
                    "ttl": ttl,
                },
                "opened",
            )
            opened_at = trio.current_time()
            session, ssid, granted, open_ports, closed = _parse_opened(opened, ports)
            run.sessions.append(session)
            run.planned = True
            for port, state in closed.items():
                run.ports[port] = PortResult(port=port, state=state)
            media_address = await _media_address(spec, run)
            phase = "media"
            session_end = min(run.media_deadline, opened_at + granted - 0.5)
            codec = _PeerCodec(key=key, ssid=ssid, ssrc=secrets.randbits(32))
            await _measure_ports(spec, open_ports, run, codec, media_address, local, session_end)
            phase = "stats"
            counters = await ctl.request({"type": "stats"}, "stats")
            _apply_counters(run, open_ports, counters)
            phase = "close"
            with contextlib.suppress(_ControlFailure):
                await ctl.send({"type": "close"})  # best effort: closing the connection ends it too
        except ConnectionClosed as exc:
            raise _closed_failure(phase, exc.detail) from None
        except TLSError as exc:
            raise _ControlFailure(RtpReason.CONTROL_TLS_FAILED, exc.detail) from None
        except NetError as exc:
            raise _ControlFailure(RtpReason.CONTROL_PROTOCOL_ERROR, f"{phase}: {exc.detail}") from None
        finally:
            if stream is not None:
                with trio.CancelScope(shield=True):
                    await trio.aclose_forcefully(stream)
    if scope.cancelled_caught:
        raise _ControlFailure(
            RtpReason.CONTROL_TIMEOUT, f"the control channel did not finish {phase!r} before the deadline"
        )


def _closed_failure(phase: str, detail: str) -> _ControlFailure:
    if phase == "hello":
        return _ControlFailure(
            RtpReason.CONTROL_PROTOCOL_ERROR,
            f"{detail} (before its hello: not an umprobe peer, or our address is not in its --allow list)",
        )
    if phase == "open":
        return _ControlFailure(
            RtpReason.CONTROL_AUTH_FAILED,
            f"{detail} (right after our authenticated open: the shared secret does not match the peer's, "
            "or the peer is at its session limit)",
        )
    return _ControlFailure(RtpReason.CONTROL_PROTOCOL_ERROR, f"{phase}: {detail}")


def _parse_opened(
    opened: dict[str, Any], requested: Sequence[int]
) -> tuple[str, int, float, list[int], dict[int, PortState]]:
    """(session, ssid, ttl, the open ports in our order, {port: "in_use" | "refused"} for the rest)."""
    try:
        session = str(opened["session"])
        ssid = int(opened["ssid"])
        ttl = float(opened.get("ttl", MAX_TTL))
        lists = opened["ports"]
        is_open = {int(p) for p in lists.get("open", [])}
        in_use = {int(p) for p in lists.get("in_use", [])}
        refused = {int(p) for p in lists.get("refused", [])}
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise _ControlFailure(
            RtpReason.CONTROL_PROTOCOL_ERROR, f"malformed 'opened' message ({exc!r}): {_brief(opened)}"
        ) from None
    if not 0 <= ssid <= 0xFFFF:
        raise _ControlFailure(RtpReason.CONTROL_PROTOCOL_ERROR, f"'opened' has ssid {ssid} out of range")
    unknown = sorted((is_open | in_use | refused) - set(requested))
    if unknown:
        raise _ControlFailure(
            RtpReason.CONTROL_PROTOCOL_ERROR, f"the peer answered for ports we did not ask for: {unknown[:8]}"
        )
    closed: dict[int, PortState] = {}
    for p in requested:
        if p in in_use:
            closed[p] = "in_use"
        elif p not in is_open:
            closed[p] = "refused"  # refused, or not mentioned at all: not open either way
    return session, ssid, ttl, [p for p in requested if p in is_open and p not in closed], closed


def _apply_counters(run: _RunState, ports: Sequence[int], message: dict[str, Any]) -> None:
    per_port = message.get("ports")
    if not isinstance(per_port, dict):
        raise _ControlFailure(RtpReason.CONTROL_PROTOCOL_ERROR, f"malformed 'stats': {_brief(message)}")
    dropped = message.get("dropped")
    if isinstance(dropped, dict):
        for k, v in dropped.items():
            if isinstance(v, int):
                run.dropped[str(k)] = run.dropped.get(str(k), 0) + v
    for p in ports:
        result = run.ports.get(p)
        c = per_port.get(str(p))
        if result is None or not isinstance(c, dict):
            continue
        rx, tx = _count(c, "rx"), _count(c, "tx")
        run.ports[p] = _with_counters(result, rx, tx, _count(c, "rtcp_rx"), _count(c, "rtcp_tx"))


def _count(c: dict[str, Any], key: str) -> int | None:
    v = c.get(key)
    return v if isinstance(v, int) and v >= 0 else None


def _with_counters(
    r: PortResult, rx: int | None, tx: int | None, rrx: int | None, rtx: int | None
) -> PortResult:
    fwd = None if rx is None or r.sent == 0 else max(0, r.sent - rx) / r.sent
    ret = None if tx is None or tx == 0 else max(0, tx - r.received) / tx
    unanswered = None if rx is None or tx is None or rx == 0 else max(0, rx - tx) / rx
    return replace(
        r,
        peer_rx=rx,
        peer_tx=tx,
        loss_forward=fwd,
        loss_return=ret,
        loss_unanswered=unanswered,
        peer_rtcp_rx=rrx,
        peer_rtcp_tx=rtx,
    )


async def _media_address(spec: RtpProbeSpec, run: _RunState) -> ResolvedAddress:
    if spec.media_host is None and run.address:
        run.media_address = run.address
        return ResolvedAddress(run.address, "ipv6" if ":" in run.address else "ipv4")
    try:
        addresses = await resolve(spec.media, 0, families=spec.families)
    except ResolveError as exc:
        raise _ControlFailure(RtpReason.DNS_ERROR, f"media host: {exc.detail}") from None
    run.media_address = addresses[0].address
    return addresses[0]


# ---------------------------------------------------------------------------------------------- media


@dataclass(frozen=True, slots=True)
class _Echo:
    """One accepted echo: our counter, its RTT (seconds) and the one-way transits for jitter."""

    index: int
    sequence: int  # the RTP sequence number, echoed
    rtt: float
    forward: tuple[int, float] | None = None  # (the reflector's counter, T2 - T1 in RTP timestamp units)
    back: float | None = None  # T4 - T3 in RTP timestamp units


@dataclass(slots=True)
class _PortRun:
    """Mutable bookkeeping for one port while it is measured; frozen into a `PortResult` at the end."""

    port: int
    first_seq: int = field(default_factory=lambda: secrets.randbits(16))
    first_ts: int = field(default_factory=lambda: secrets.randbits(32))
    attempts: int = 0
    sent: int = 0
    sent_at: list[float] = field(default_factory=list)  # wall clock (Unix seconds) per attempt
    sending_done: bool = False
    seen: set[int] = field(default_factory=set)
    tracker: stats.SequenceTracker | None = None
    bad: int = 0
    socket_errors: int = 0
    rtts: list[float] = field(default_factory=list)
    forward: list[tuple[int, float]] = field(default_factory=list)
    back: list[float] = field(default_factory=list)
    rtcp_wanted: bool = False
    rtcp_ok: bool = False
    settled: trio.Event = field(default_factory=trio.Event)

    def accept(self, echo: _Echo) -> None:
        if self.tracker is None:
            self.tracker = stats.SequenceTracker(base_seq=self.first_seq)
        self.tracker.update(echo.sequence)  # RFC 4737 reordering and RFC 5560 duplicates
        if echo.index in self.seen:
            return
        self.seen.add(echo.index)
        self.rtts.append(echo.rtt)
        if echo.forward is not None:
            self.forward.append(echo.forward)
        if echo.back is not None:
            self.back.append(echo.back)
        self.check_settled()

    def check_settled(self) -> None:
        if self.sending_done and len(self.seen) >= self.sent and (self.rtcp_ok or not self.rtcp_wanted):
            self.settled.set()

    def result(self) -> PortResult:
        received = len(self.seen)
        state: PortState = "reachable" if received else ("unreachable" if self.attempts else "not_measured")
        forward = [transit for _, transit in sorted(self.forward)]  # the reflector's arrival order
        return PortResult(
            port=self.port,
            state=state,
            sent=self.sent,
            received=received,
            loss_roundtrip=None if self.sent == 0 else max(0, self.sent - received) / self.sent,
            rtt_p50=_median(self.rtts),
            rtt_max=max(self.rtts) if self.rtts else None,
            jitter_forward=_jitter(forward),
            jitter_return=_jitter(self.back),
            reordered=self.tracker.reordered if self.tracker else 0,
            duplicates=self.tracker.duplicates if self.tracker else 0,
            rtcp_reachable=self.rtcp_ok if self.rtcp_wanted and self.attempts else None,
            socket_errors=self.socket_errors,
            bad_replies=self.bad,
            rtt_samples=tuple(self.rtts),
        )


def _median(values: Sequence[float]) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def _jitter(transits: Sequence[float]) -> float | None:
    """RFC 3550 §6.4.1 interarrival jitter in seconds from transit times (timestamp units), arrival order."""
    if len(transits) < 2:
        return None
    estimator = stats.JitterEstimator()
    for transit in transits:
        estimator.update_transit(transit)
    return estimator.seconds()


class _Codec(Protocol):
    def request(self, run: _PortRun, index: int) -> bytes: ...

    def reply(self, run: _PortRun, data: bytes, now: float) -> _Echo | None: ...

    def rtcp_request(self) -> tuple[bytes, int] | None: ...

    def rtcp_reply(self, data: bytes, seq: int) -> bool: ...


@dataclass(slots=True)
class _PeerCodec:
    """Authenticated media packets and RTCP compounds for peer mode (docs/rtp.md "Wire formats")."""

    key: bytes
    ssid: int
    ssrc: int
    rtcp_seq: int = 0

    def request(self, run: _PortRun, index: int) -> bytes:
        header = RtpHeader(
            sequence=(run.first_seq + index) & 0xFFFF,
            timestamp=(run.first_ts + RTP_TIMESTAMP_STEP * index) & 0xFFFFFFFF,
            ssrc=self.ssrc,
            marker=index == 0,
            payload_type=0,
        )
        measurement = Measurement(seq=index, timestamp=ntp.ntp_from_unix(run.sent_at[index]), ssid=self.ssid)
        return bytes(packet.encode_media(self.key, header, measurement))

    def reply(self, run: _PortRun, data: bytes, now: float) -> _Echo | None:
        try:
            header, m = packet.decode_media(self.key, data, expected_ssid=self.ssid)
        except MediaError:
            return None
        index = int(m.sender_seq)
        expected_seq = (run.first_seq + index) & 0xFFFF
        if header.ssrc != self.ssrc or not 0 <= index < run.attempts or header.sequence != expected_seq:
            return None
        t1, t2, t3, t4 = m.sender_timestamp, m.receive_timestamp, m.timestamp, ntp.ntp_from_unix(now)
        return _Echo(
            index=index,
            sequence=header.sequence,
            rtt=max(0.0, stats.rtt_seconds(t1, t2, t3, t4)),
            forward=(m.seq, stats.ntp_transit_units(t1, t2)),
            back=stats.ntp_transit_units(t3, t4),
        )

    def rtcp_request(self) -> tuple[bytes, int]:
        self.rtcp_seq = (self.rtcp_seq + 1) & 0xFFFF
        data = rtcp.encode_rtcp(
            self.key,
            ssrc=self.ssrc,
            ssid=self.ssid,
            seq=self.rtcp_seq,
            timestamp=ntp.ntp_from_unix(time.time()),
            cname=rtcp.default_cname(self.ssid),
        )
        return data, self.rtcp_seq

    def rtcp_reply(self, data: bytes, seq: int) -> bool:
        try:
            answer = rtcp.decode_rtcp(self.key, data, expected_ssid=self.ssid)
        except MediaError:
            return False
        return answer.seq == seq


@dataclass(slots=True)
class _PlainCodec:
    """Unauthenticated RTP-shaped packets for a plain UDP echo, matched by SSRC and RTP sequence only."""

    ssrc: int

    def request(self, run: _PortRun, index: int) -> bytes:
        header = RtpHeader(
            sequence=(run.first_seq + index) & 0xFFFF,
            timestamp=(run.first_ts + RTP_TIMESTAMP_STEP * index) & 0xFFFFFFFF,
            ssrc=self.ssrc,
            marker=index == 0,
            payload_type=0,
        )
        return header.encode() + _PLAIN_PAYLOAD

    def reply(self, run: _PortRun, data: bytes, now: float) -> _Echo | None:
        if len(data) != len(_PLAIN_PAYLOAD) + 12:
            return None
        try:
            header = RtpHeader.decode(data)
        except MediaError:
            return None
        if header.ssrc != self.ssrc:
            return None
        index = (header.sequence - run.first_seq) & 0xFFFF
        if index >= run.attempts:
            return None
        return _Echo(index=index, sequence=header.sequence, rtt=max(0.0, now - run.sent_at[index]))

    def rtcp_request(self) -> tuple[bytes, int] | None:
        return None

    def rtcp_reply(self, data: bytes, seq: int) -> bool:
        return False


_ICMP_ERRNOS = frozenset(
    {errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EHOSTDOWN, errno.EPERM}
)


async def _udp_socket(address: ResolvedAddress, port: int, local: str | None) -> trio.socket.SocketType:
    """A UDP socket connected to (address, port), bound to `local` when it is of the same family."""
    family = trio.socket.AF_INET6 if address.family == "ipv6" else trio.socket.AF_INET
    sock = trio.socket.socket(family, trio.socket.SOCK_DGRAM)
    try:
        if local is not None and (":" in local) == (family == trio.socket.AF_INET6):
            await sock.bind((local, 0))
        await sock.connect((address.address, port))
    except BaseException:
        sock.close()
        raise
    return sock


async def _measure_ports(
    spec: RtpProbeSpec,
    ports: Sequence[int],
    run: _RunState,
    codec: _Codec,
    address: ResolvedAddress,
    local: str | None,
    end: float,
) -> None:
    """Measure `ports`, `spec.concurrency` at a time, until `end`; results land in `run.ports`."""
    limiter = trio.CapacityLimiter(spec.concurrency)
    burst = spec.packets * PACKET_INTERVAL
    # Ports start at least 20 ms / concurrency apart, so the packets of concurrent ports interleave evenly
    # instead of leaving in bursts of `concurrency` at once: a burst queues at both ends, and that queueing
    # was measured as RTT and jitter (bench/rtp.py: 16 ports in step gave ~4.8 ms "RTT" on a veth pair
    # whose wire RTT is 5 us). It also makes concurrency x 50 packets/s a true bound for short bursts.
    spacing = PACKET_INTERVAL / spec.concurrency
    next_start = trio.current_time()

    async def one(port: int) -> None:
        nonlocal next_start
        async with limiter:
            start = max(trio.current_time(), next_start)
            next_start = start + spacing
            if start + burst + _STRAGGLE_FLOOR > end:
                return  # would not fit: stays not_measured
            await trio.sleep_until(start)
            result = await _measure_port(spec, port, run, codec, address, local, end)
            if result is not None:
                run.ports[port] = result

    async with trio.open_nursery() as nursery:
        for port in ports:
            nursery.start_soon(one, port)


async def _measure_port(
    spec: RtpProbeSpec,
    port: int,
    run: _RunState,
    codec: _Codec,
    address: ResolvedAddress,
    local: str | None,
    end: float,
) -> PortResult | None:
    """Send the burst to `port` (and one RTCP to `port + 1`), collect echoes until settled or the window."""
    prun = _PortRun(port=port)
    rtcp_request = codec.rtcp_request() if spec.rtcp else None
    sockets: list[trio.socket.SocketType] = []
    try:
        try:
            sock = await _udp_socket(address, port, local)
            sockets.append(sock)
            rtcp_sock = None
            if rtcp_request is not None and port < 65535:
                rtcp_sock = await _udp_socket(address, port + 1, local)
                sockets.append(rtcp_sock)
                prun.rtcp_wanted = True
        except OSError as exc:
            run.media_errors.append(f"cannot open a UDP socket to port {port}: {exc}")
            return None
        stamped = stamp_arrivals(sock)
        with trio.move_on_at(end):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_receive_rtp, sock, prun, codec, run, stamped)
                if rtcp_sock is not None:
                    assert rtcp_request is not None
                    nursery.start_soon(_receive_rtcp, rtcp_sock, prun, codec, rtcp_request[1])
                await _send_burst(spec, sock, prun, codec, rtcp_sock, rtcp_request)
                window = run.straggle_window()
                with trio.move_on_after(window):
                    await prun.settled.wait()
                nursery.cancel_scope.cancel()
    finally:
        for s in sockets:
            s.close()
    return prun.result()


async def _send_burst(
    spec: RtpProbeSpec,
    sock: trio.socket.SocketType,
    prun: _PortRun,
    codec: _Codec,
    rtcp_sock: trio.socket.SocketType | None,
    rtcp_request: tuple[bytes, int] | None,
) -> None:
    """Packet i at t0 + i x 20 ms on an absolute schedule (a late wake-up does not shift the rest)."""
    t0 = trio.current_time()
    for i in range(spec.packets):
        await trio.sleep_until(t0 + i * PACKET_INTERVAL)
        prun.sent_at.append(time.time())
        data = codec.request(prun, i)
        prun.attempts = i + 1
        try:
            await sock.send(data)
            prun.sent += 1
        except OSError:  # an ICMP error reported on this send, ENOBUFS, EPERM from a local firewall...
            prun.socket_errors += 1
        if i == 0 and rtcp_sock is not None and rtcp_request is not None:
            try:
                await rtcp_sock.send(rtcp_request[0])
            except OSError:
                prun.socket_errors += 1
    prun.sending_done = True
    prun.check_settled()


async def _receive_rtp(
    sock: trio.socket.SocketType, prun: _PortRun, codec: _Codec, run: _RunState, stamped: bool = False
) -> None:
    """Accept echoes on `sock`. T4 is the kernel's arrival stamp when `stamped` (time spent queued in the
    socket while this process served other ports is not path delay), else the clock after `recv`."""
    while True:
        try:
            if stamped:
                data, ancdata, _flags, _address = await sock.recvmsg(_RECV_SIZE, rxstamp.ANCILLARY_SIZE)
                arrived = rxstamp.unix_from_ancillary(ancdata)
            else:
                data, arrived = await sock.recv(_RECV_SIZE), None
        except OSError as exc:
            prun.socket_errors += 1
            if exc.errno in _ICMP_ERRNOS:
                continue  # reported once per ICMP message; the socket stays usable
            return  # anything else would repeat at once: stop listening on this socket
        echo = codec.reply(prun, data, time.time() if arrived is None else arrived)
        if echo is None:
            prun.bad += 1
            continue
        # The straggler window must cover the whole wait, the peer's turnaround included, which the RTT
        # leaves out (with kernel stamps even its socket queueing).
        run.max_wait = max(run.max_wait, time.time() - prun.sent_at[echo.index])
        prun.accept(echo)


async def _receive_rtcp(sock: trio.socket.SocketType, prun: _PortRun, codec: _Codec, seq: int) -> None:
    while True:
        try:
            data = await sock.recv(_RECV_SIZE)
        except OSError as exc:
            prun.socket_errors += 1
            if exc.errno in _ICMP_ERRNOS:
                continue
            return
        if codec.rtcp_reply(data, seq):
            prun.rtcp_ok = True
            prun.check_settled()
            return


async def _plain_echo(spec: RtpProbeSpec, ports: Sequence[int], run: _RunState, deadline: float) -> None:
    """Plain-echo mode: no control channel, no authentication; RTT, reachability and round-trip loss."""
    with trio.move_on_at(deadline) as scope:
        try:
            addresses = await resolve(spec.media, 0, families=spec.families)
        except ResolveError as exc:
            raise _ControlFailure(RtpReason.DNS_ERROR, exc.detail) from None
    if scope.cancelled_caught:
        raise _ControlFailure(RtpReason.CONTROL_TIMEOUT, f"resolving {spec.media} did not finish in time")
    address = addresses[0]
    run.address = run.media_address = address.address
    run.planned = True
    await _measure_ports(
        spec, ports, run, _PlainCodec(ssrc=secrets.randbits(32)), address, None, run.media_deadline
    )
