"""`umprobe_sip_retransmissions_total`: the daemon counts RFC 3261 Timer E retransmissions per UDP listener.

The daemon (`Daemon.from_config`, serving HTTP on a free loopback port) probes a fake UDP SIP responder on
127.0.0.1 that ignores the first N datagrams it receives and answers every later one. The first run is
answered at its N-th retransmission, every later run at once, so after several runs /metrics, read over
HTTP, must say exactly N, and the TCP listener beside it must have no such series. Real sockets and trio's
real clock (T1 = 0.5 s): this takes a few seconds.
"""

from __future__ import annotations

import trio
from prometheus_client.parser import text_string_to_metric_families

from tests.test_sip_udp_probe import _answer, _responder
from umprobe.config import parse_config
from umprobe.daemon import Daemon
from umprobe.peer.sip_responder import serve_sip_responder

DROPPED = 2


def _deaf_then_answering(n: int, request: bytes) -> list[bytes]:
    """Ignore the first DROPPED datagrams, answer every later one with a 200."""
    return [_answer(request)] if n > DROPPED else []


async def _get(port: int, path: str) -> str:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        chunks = []
        while data := await stream.receive_some(65536):
            chunks.append(data)
    head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    if b"chunked" in head.lower():  # /metrics is written in pieces
        out, rest = b"", body
        while rest:
            size, _, rest = rest.partition(b"\r\n")
            n = int(size, 16)
            if n == 0:
                break
            out, rest = out + rest[:n], rest[n + 2 :]
        body = out
    return body.decode()


def _values(page: str, name: str) -> dict[tuple[str, str, str], float]:
    return {
        (s.labels["probe"], s.labels["address"], s.labels["port"]): s.value
        for family in text_string_to_metric_families(page)
        for s in family.samples
        if s.name == name
    }


async def test_daemon_counts_udp_retransmissions_per_listener() -> None:
    async with trio.open_nursery() as nursery:
        udp_port = await nursery.start(_responder, _deaf_then_answering)
        tcp_listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        tcp_port = tcp_listeners[0].socket.getsockname()[1]
        await nursery.start(serve_sip_responder, tcp_listeners)
        config = parse_config(
            f"""
[modules.udp]
transport = "udp"
interval = 2.5
timeout = 2

[modules.tcp]
transport = "tcp"
interval = 2.5
timeout = 2

[[targets]]
host = "127.0.0.1"
module = "udp"
port = {udp_port}

[[targets]]
host = "127.0.0.1"
module = "tcp"
port = {tcp_port}
""",
            source="probes.toml",
        )
        daemon = Daemon.from_config(config, listen="127.0.0.1:0", load=lambda: config)
        bound = await nursery.start(daemon.serve)
        http = bound[0][1]
        udp = (f"127.0.0.1:{udp_port}/udp", "127.0.0.1", str(udp_port))
        page = ""
        with trio.fail_after(20):
            while True:
                page = await _get(http, "/metrics")
                if _values(page, "umprobe_probe_runs_total").get(udp, 0) >= 3:
                    break
                await trio.sleep(0.2)
        assert _values(page, "umprobe_probe_success")[udp] == 1.0
        assert _values(page, "umprobe_sip_retransmissions_total") == {udp: float(DROPPED)}  # UDP only
        assert _values(page, "umprobe_probe_success")[
            (f"127.0.0.1:{tcp_port}/tcp", "127.0.0.1", str(tcp_port))
        ]
        nursery.cancel_scope.cancel()
