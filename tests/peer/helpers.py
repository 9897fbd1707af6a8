"""A minimal in-test prober for the echo peer: control channel client, media packets, free ports.

Built only from the media codecs (`umprobe.media.*`), never from `umprobe.probes.rtp`, so the peer is tested
against the wire format in docs/rtp.md rather than against the colleague's prober.
"""

from __future__ import annotations

import errno
import random
import socket
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import trio
from OpenSSL import SSL

from umprobe.media.control import ControlSigner, LineBuffer, new_nonce, parse_hello
from umprobe.media.ntp import ntp_from_unix
from umprobe.media.packet import Measurement, encode_media, session_key
from umprobe.media.rtcp import default_cname, encode_rtcp
from umprobe.media.rtp import RtpHeader
from umprobe.net.tls import TLSStream
from umprobe.peer.echo_peer import PeerConfig, RunningPeer, serve_echo_peer

SECRET = b"correct horse battery staple 42"
LOCAL = "127.0.0.1"
OTHER = "127.0.0.2"  # a second loopback address: "a third party" on the same host


def media_packet(key: bytes, ssid: int, seq: int, *, ssrc: int = 0x5EED, t1: float | None = None) -> bytes:
    """One 172-byte media request: our counter `seq`, T1 = `t1` (default: now)."""
    header = RtpHeader(sequence=seq & 0xFFFF, timestamp=(seq * 160) & 0xFFFFFFFF, ssrc=ssrc, marker=seq == 0)
    block = Measurement(seq=seq, timestamp=ntp_from_unix(time.time() if t1 is None else t1), ssid=ssid)
    return encode_media(key, header, block)


def rtcp_packet(key: bytes, ssid: int, seq: int, *, ssrc: int = 0x5EED, t1: float | None = None) -> bytes:
    """One RR + SDES + APP "UMPB" compound for p+1."""
    timestamp = ntp_from_unix(time.time() if t1 is None else t1)
    return encode_rtcp(key, ssrc=ssrc, ssid=ssid, seq=seq, timestamp=timestamp, cname=default_cname(ssid))


def free_even_ports(count: int, *, lo: int = 20000, hi: int = 60000, host: str = LOCAL) -> list[int]:
    """`count` even ports p with p and p+1 both free for UDP on `host` right now (and spread apart)."""
    found: list[int] = []
    rng = random.Random()
    while len(found) < count:
        p = rng.randrange(lo, hi, 2)
        if any(abs(p - q) < 4 for q in found):
            continue
        if udp_port_free(p, host) and udp_port_free(p + 1, host):
            found.append(p)
    return found


def udp_port_free(port: int, host: str = LOCAL) -> bool:
    """Whether a UDP socket can bind `host:port` right now (it is closed again at once)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return False
            raise
    return True


async def wait_until(condition: Callable[[], bool], *, interval: float = 0.01) -> None:
    """Poll `condition` until it holds (the caller's fail_after bounds the wait)."""
    while not condition():  # noqa: ASYNC110 - the peer's counters have no event to wait on
        await trio.sleep(interval)


@asynccontextmanager
async def running_peer(**overrides: Any) -> AsyncIterator[RunningPeer]:
    """An echo peer on 127.0.0.1 (any free port) for the body of the `async with`."""
    settings: dict[str, Any] = {"secret": SECRET, "listen_host": LOCAL, "listen_port": 0}
    settings.update(overrides)
    config = PeerConfig(**settings)
    async with trio.open_nursery() as nursery:
        peer: RunningPeer = await nursery.start(serve_echo_peer, config)
        yield peer
        nursery.cancel_scope.cancel()


class Hangup(Exception):
    """The peer ended the control connection."""


@dataclass
class ControlClient:
    """The prober's side of one control connection (docs/rtp.md "Control channel")."""

    stream: trio.abc.Stream
    peer_nonce: str
    banner: str
    secret: bytes = SECRET
    client_nonce: str = field(default_factory=new_nonce)
    lines: LineBuffer = field(default_factory=LineBuffer)
    signer: ControlSigner = field(init=False)
    key: bytes = field(init=False)
    ssid: int = 0
    session: str = ""

    def __post_init__(self) -> None:
        self.signer = ControlSigner(self.secret, self.peer_nonce, self.client_nonce, role="client")
        self.key = session_key(self.secret, self.peer_nonce, self.client_nonce)

    @classmethod
    async def connect(
        cls,
        peer: RunningPeer | tuple[str, int],
        *,
        secret: bytes = SECRET,
        local_address: str | None = None,
        tls: SSL.Context | None = None,
    ) -> ControlClient:
        host, port = peer.control[0] if isinstance(peer, RunningPeer) else peer
        tcp = await trio.open_tcp_stream(host, port, local_address=local_address)
        stream: trio.abc.Stream = tcp
        buffer = LineBuffer()
        try:
            if tls is not None:
                stream = TLSStream(tcp, tls, server_hostname="localhost")
                await stream.do_handshake()
            line = await read_line(stream, buffer)
        except BaseException:
            await trio.aclose_forcefully(stream)
            raise
        nonce, banner = parse_hello(line)
        return cls(stream=stream, peer_nonce=nonce, banner=banner, secret=secret, lines=buffer)

    async def send(self, message: dict[str, object]) -> None:
        await self.stream.send_all(self.signer.seal(message))

    async def receive(self) -> dict[str, object]:
        return self.signer.open(await read_line(self.stream, self.lines))

    async def open(self, ports: list[int], *, rtcp: bool = True, ttl: int = 10) -> dict[str, Any]:
        await self.send(
            {"type": "open", "client_nonce": self.client_nonce, "ports": ports, "rtcp": rtcp, "ttl": ttl}
        )
        opened = await self.receive()
        assert opened["type"] == "opened", opened
        self.session = str(opened["session"])
        ssid = opened["ssid"]
        assert isinstance(ssid, int)
        self.ssid = ssid
        return opened

    async def stats(self) -> dict[str, Any]:
        await self.send({"type": "stats"})
        answer = await self.receive()
        assert answer["type"] == "stats", answer
        return answer

    async def close(self) -> None:
        await self.send({"type": "close"})

    async def expect_hangup(self) -> None:
        """The peer ends the connection without sending anything more."""
        try:
            with trio.fail_after(5):
                try:
                    data = await self.stream.receive_some(65536)
                except Exception:  # a TLS peer may end with an alert or a bare EOF
                    return
                assert data == b"", f"expected the peer to hang up, got {data[:200]!r}"
        finally:
            await self.aclose()

    async def aclose(self) -> None:
        await trio.aclose_forcefully(self.stream)

    def media(self, seq: int, **kwargs: Any) -> bytes:
        return media_packet(self.key, self.ssid, seq, **kwargs)

    def rtcp(self, seq: int, **kwargs: Any) -> bytes:
        return rtcp_packet(self.key, self.ssid, seq, **kwargs)


async def read_line(stream: trio.abc.Stream, lines: LineBuffer) -> bytes:
    while (line := lines.next_line()) is None:
        data = await stream.receive_some(65536)
        if not data:
            raise Hangup("the peer closed the control connection")
        lines.feed(bytes(data))
    return line


@dataclass
class MediaSocket:
    """One UDP socket of the test prober, counting every byte it sends and receives."""

    sock: trio.socket.SocketType
    sent_bytes: int = 0
    received_bytes: int = 0
    received: list[bytes] = field(default_factory=list)

    @classmethod
    async def bind(cls, host: str = LOCAL) -> MediaSocket:
        family = trio.socket.AF_INET6 if ":" in host else trio.socket.AF_INET
        sock = trio.socket.socket(family, trio.socket.SOCK_DGRAM)
        await sock.bind((host, 0))
        return cls(sock)

    async def send(self, data: bytes, port: int, host: str = LOCAL) -> None:
        await self.sock.sendto(data, (host, port))
        self.sent_bytes += len(data)

    async def drain(self, quiet: float = 0.2) -> list[bytes]:
        """Collect replies until none has arrived for `quiet` seconds; return the new ones."""
        new: list[bytes] = []
        while True:
            with trio.move_on_after(quiet):
                try:
                    data = await self.sock.recv(4096)
                except ConnectionRefusedError:  # ICMP port unreachable for something we sent
                    continue
                new.append(data)
                self.received_bytes += len(data)
                continue
            break
        self.received.extend(new)
        return new

    def close(self) -> None:
        self.sock.close()
