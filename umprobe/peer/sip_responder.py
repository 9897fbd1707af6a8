"""A small SIP OPTIONS responder over TCP and (mutual) TLS: the far side of a probe when Exchange is absent.

It answers OPTIONS with 200 and every other request with 501 (RFC 3261 §8.2.1), never originates a request,
and holds a connection only as long as the client keeps it busy: each connection is closed after
`idle_timeout` seconds without a complete request, and a connection that sends more than the parser's caps
is closed. It backs `umprobe demo` now and `umprobe peer` later (proving a firewall path before Exchange is
there).

The idle timeout is a server's own policy, not a probe deadline, so it lives here rather than with a caller.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from functools import partial

import trio
from OpenSSL import SSL

from umprobe._version import __version__
from umprobe.net.errors import NetError
from umprobe.net.tls import TLSStream
from umprobe.sip import NEED_DATA, Request, SipError, StreamParser, build_response

__all__ = ["ResponderStats", "handle_sip_connection", "serve_sip_responder"]


@dataclass(slots=True)
class ResponderStats:
    connections: int = 0
    requests: int = 0
    errors: int = 0


async def handle_sip_connection(
    stream: trio.abc.Stream,
    *,
    server_header: str,
    idle_timeout: float = 10.0,
    stats: ResponderStats | None = None,
    tls_context: SSL.Context | None = None,
) -> None:
    """Serve one accepted connection until the client closes it, misbehaves or idles out."""
    stats = stats or ResponderStats()
    stats.connections += 1
    parser = StreamParser()
    try:
        if tls_context is not None:
            stream = TLSStream(stream, tls_context, server_side=True)
            with trio.move_on_after(idle_timeout) as idle:
                await stream.do_handshake()
            if idle.cancelled_caught:
                return
        while True:
            with trio.move_on_after(idle_timeout) as idle:
                data = await stream.receive_some(16384)
            if idle.cancelled_caught or not data:
                return
            parser.feed(bytes(data))
            while (message := parser.next_message()) is not NEED_DATA:
                if not isinstance(message, Request):
                    stats.errors += 1
                    return
                stats.requests += 1
                if message.method == "ACK":
                    continue  # never answered (§17.2.1 only for INVITE server transactions; harmless here)
                if message.method == "OPTIONS":
                    reply = build_response(
                        message,
                        200,
                        "OK",
                        to_tag=secrets.token_hex(4),
                        extra_headers=[("Allow", "OPTIONS"), ("Accept", "application/sdp")],
                        server=server_header,
                    )
                else:
                    reply = build_response(message, 501, "Not Implemented", to_tag=secrets.token_hex(4))
                await stream.send_all(reply)
    except (NetError, SipError):
        stats.errors += 1
    finally:
        with trio.CancelScope(shield=True):
            await trio.aclose_forcefully(stream)


async def serve_sip_responder(
    listeners: list[trio.SocketListener],
    *,
    tls_context: SSL.Context | None = None,
    server_header: str = f"umprobe-peer/{__version__}",
    stats: ResponderStats | None = None,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Answer SIP on bound listeners until cancelled (TLS on all of them when `tls_context` is set)."""
    handler = partial(
        handle_sip_connection,
        server_header=server_header,
        stats=stats or ResponderStats(),
        tls_context=tls_context,
    )
    async with trio.open_nursery() as nursery:
        task_status.started()
        await trio.serve_listeners(handler, listeners, handler_nursery=nursery)
