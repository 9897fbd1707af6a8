"""A small SIP OPTIONS responder over TCP and (mutual) TLS: the far side of a probe when Exchange is absent,
and the inbound listener that records who pings us.

It answers OPTIONS with 200 and every other request with 501 (RFC 3261 §8.2.1), never originates a request,
and holds a connection only as long as the client keeps it busy: each connection is closed after
`idle_timeout` seconds without a complete request, and a connection that sends more than the parser's caps
is closed. It backs `umprobe demo`, `umprobe peer --sip` (proving a firewall path before Exchange is there)
and the daemon's `[[listen]]` sections.

The idle timeout is a server's own policy, not a probe deadline, so it lives here rather than with a caller.

Inbound OPTIONS (docs/inbound.md): given an `InboundBook`, every OPTIONS is recorded under its caller's
identity (umprobe.inbound.caller_from: the client certificate's FQDN over TLS, else the source address),
with the answer sent: `"200"` once the whole answer was written, `"unsent"` when writing it failed.
`serve_inbound` runs one `[[listen]]` section of the daemon (bind, TLS, the responder, and a log line per
identity state change); `watch_inbound` is that log, which `umprobe peer` runs too.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING

import trio
from OpenSSL import SSL

from umprobe._version import __version__
from umprobe.inbound import Caller, InboundBook, StateWatch, caller_from, uri_host
from umprobe.logs import LOGGER_NAME, log_event
from umprobe.net.errors import NetError, TLSConfigError
from umprobe.net.tls import TLSStream, make_server_context
from umprobe.sip import NEED_DATA, Request, SipError, StreamParser, build_response

if TYPE_CHECKING:
    from umprobe.config import ListenConfig

__all__ = [
    "ResponderStats",
    "handle_sip_connection",
    "serve_inbound",
    "serve_sip_responder",
    "watch_inbound",
]

_log = logging.getLogger(f"{LOGGER_NAME}.inbound")

#: How often `watch_inbound` looks at the demotion view (seconds).
WATCH_EVERY = 1.0


@dataclass(slots=True)
class ResponderStats:
    connections: int = 0
    requests: int = 0
    errors: int = 0


def _source(stream: trio.abc.Stream) -> str:
    """The peer's IP address of an accepted TCP connection ("" when the stream has no socket)."""
    if isinstance(stream, trio.SocketStream):
        try:
            return str(stream.socket.getpeername()[0])
        except OSError:
            return ""
    return ""


async def handle_sip_connection(
    stream: trio.abc.Stream,
    *,
    server_header: str,
    idle_timeout: float = 10.0,
    stats: ResponderStats | None = None,
    tls_context: SSL.Context | None = None,
    inbound: InboundBook | None = None,
    clock: Callable[[], float] = time.time,
) -> None:
    """Serve one accepted connection until the client closes it, misbehaves or idles out. With `inbound`,
    every OPTIONS is recorded there under the caller's identity at `clock()` (unix seconds)."""
    stats = stats or ResponderStats()
    stats.connections += 1
    parser = StreamParser()
    source = _source(stream)
    caller: Caller | None = None
    try:
        if tls_context is not None:
            stream = TLSStream(stream, tls_context, server_side=True)
            with trio.move_on_after(idle_timeout) as idle:
                info = await stream.do_handshake()
            if idle.cancelled_caught:
                return
            if inbound is not None:
                leaf = info.peer_chain[0] if info.peer_chain else None
                caller = caller_from(source, leaf.subject, leaf.san) if leaf else caller_from(source)
        elif inbound is not None:
            caller = caller_from(source)
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
                    if inbound is not None and caller is not None:
                        await _answer_and_record(stream, reply, message, inbound, caller, clock)
                        continue
                else:
                    reply = build_response(message, 501, "Not Implemented", to_tag=secrets.token_hex(4))
                await stream.send_all(reply)
    except (NetError, SipError, trio.BrokenResourceError):
        # BrokenResourceError: a plain TCP client reset the connection (trio's SocketStream says so; TLSStream
        # says NetError). One client's failure, never the server's.
        stats.errors += 1
    finally:
        with trio.CancelScope(shield=True):
            await trio.aclose_forcefully(stream)


async def _answer_and_record(
    stream: trio.abc.Stream,
    reply: bytes,
    request: Request,
    inbound: InboundBook,
    caller: Caller,
    clock: Callable[[], float],
) -> None:
    """Send the 200 of one OPTIONS and record it: `"200"` once written, `"unsent"` if writing failed."""
    details = {
        "from_host": uri_host(request.headers.get("From")),
        "contact_host": uri_host(request.headers.get("Contact")),
    }
    try:
        await stream.send_all(reply)
    except NetError:
        inbound.record(caller, "unsent", clock(), **details)
        raise
    inbound.record(caller, "200", clock(), **details)


async def serve_sip_responder(
    listeners: list[trio.SocketListener],
    *,
    tls_context: SSL.Context | None = None,
    server_header: str = f"umprobe-peer/{__version__}",
    stats: ResponderStats | None = None,
    inbound: InboundBook | None = None,
    idle_timeout: float = 10.0,
    clock: Callable[[], float] = time.time,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Answer SIP on bound listeners until cancelled (TLS on all of them when `tls_context` is set); with
    `inbound`, record every OPTIONS there."""
    handler = partial(
        handle_sip_connection,
        server_header=server_header,
        idle_timeout=idle_timeout,
        stats=stats or ResponderStats(),
        tls_context=tls_context,
        inbound=inbound,
        clock=clock,
    )
    async with trio.open_nursery() as nursery:
        task_status.started()
        await trio.serve_listeners(handler, listeners, handler_nursery=nursery)


def _seconds(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


async def watch_inbound(
    book: InboundBook,
    *,
    clock: Callable[[], float] = time.time,
    every: float = WATCH_EVERY,
    logger: logging.Logger = _log,
) -> None:
    """Log one line per identity state change of `book` (looked at every `every` seconds) until cancelled:
    an identity seen for the first time, and every move between active, at_risk, demoted and waiting
    (at_risk and demoted at WARNING). Expected identities that are still waiting are not news."""
    watch = StateWatch()
    while True:
        for change in watch.changes(book.view(clock())):
            identity = change.identity
            if change.before is None and identity.state == "waiting" and identity.last_seen is None:
                continue
            level = logging.WARNING if identity.state in ("at_risk", "demoted") else logging.INFO
            log_event(
                logger,
                level,
                "inbound OPTIONS state changed",
                listen=book.listen,
                identity=identity.identity,
                state=identity.state,
                before=change.before,
                expected=identity.expected,
                silence_s=_seconds(identity.silence),
                interval_s=_seconds(identity.interval),
                options=identity.total,
                source=identity.source,
                from_host=identity.from_host,
            )
        await trio.sleep(every)


def _hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


async def serve_inbound(
    listen: ListenConfig,
    book: InboundBook,
    *,
    clock: Callable[[], float] = time.time,
    task_status: trio.TaskStatus[tuple[tuple[str, int], ...]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run one `[[listen]]` section until cancelled: bind it, answer OPTIONS (over TLS when configured),
    record them in `book`, and log identity state changes. `task_status.started()` gets the bound
    (host, port) pairs. Raises `ListenError` (a `UserError`, one line) when the address cannot be bound or
    the TLS files cannot be loaded."""
    from umprobe.exporter import ListenError

    tls_context: SSL.Context | None = None
    if listen.transport == "tls":
        assert listen.cert_file is not None and listen.key_file is not None
        try:
            tls_context = make_server_context(
                cert_file=listen.cert_file,
                key_file=listen.key_file,
                ca_file=listen.ca_file,
                require_client_cert=listen.require_client_cert,
            )
        except TLSConfigError as exc:
            raise ListenError(f"listen {listen.name}: {exc}") from None
    try:
        listeners = await trio.open_tcp_listeners(listen.port, host=listen.host)
    except OSError as exc:
        raise ListenError(
            f"listen {listen.name}: cannot listen on {listen.address}: {exc.strerror or exc}"
        ) from exc
    bound = tuple((str(name[0]), int(name[1])) for name in (x.socket.getsockname() for x in listeners))
    async with trio.open_nursery() as nursery:
        await nursery.start(
            partial(
                serve_sip_responder,
                listeners,
                tls_context=tls_context,
                server_header=f"umprobe/{__version__}",
                inbound=book,
                idle_timeout=listen.idle_timeout,
                clock=clock,
            )
        )
        nursery.start_soon(partial(watch_inbound, book, clock=clock))
        log_event(
            _log,
            logging.INFO,
            "inbound OPTIONS listening",
            listen=listen.name,
            transport=listen.transport,
            address=" ".join(_hostport(h, p) for h, p in bound),
            client_cert="required" if listen.require_client_cert else "requested" if listen.ca_file else "no",
            expect=",".join(book.expected) or None,
        )
        task_status.started(bound)
