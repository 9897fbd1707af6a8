"""A hostile SIP peer for the tests: one subprocess, many listeners, each misbehaving on command.

Run as ``python -m tests.lab.hostile --control PORT [--cert F --key F] MODE=PORT [MODE=PORT ...]``; the
fixture in tests/integration (``HostilePeer.start``) does that through `LabProcess`. Every listener has a
default mode (``MODE=PORT``); a control connection (JSON lines on ``127.0.0.1:CONTROL``) can change it or
queue one-shot modes for the next connections of a listener, so one connection can misbehave one way and
the next another. The control channel also reports, per listener, how many connections were accepted,
how many are still open (the probe side closed its socket when this drops back to 0), and how many
requests were read.

It is deliberately independent of umprobe: it frames SIP by hand (``\\r\\n\\r\\n`` and Content-Length),
builds its responses from the request's own header lines, and its TLS server side is the standard
library's ``ssl`` (``tls_ok``) or raw bytes and pyOpenSSL memory BIOs (``tls_stall``, ``tls_alert``), so a
bug in umprobe's parser or TLS layer cannot hide behind the same bug here.

Modes (what happens on a connection; after the misbehaviour the server keeps the connection open and
silent until the client goes, unless the mode says it closes):

=====================  ==================================================================================
``ok``                 a correct ``200 OK`` to every request (a healthy peer), as long as the client wants
``silent``             accept, read everything, answer nothing
``tls_ok``             TLS server (stdlib ssl), then like ``ok`` inside the TLS session
``tls_stall``          read the ClientHello, send the first half of a real server flight, then nothing
``tls_alert``          read the ClientHello, answer with a fatal ``internal_error`` alert
``rst``                read the request, then reset the connection (SO_LINGER 0)
``rst_soon``           say nothing, reset the connection 0.1 s after accepting it
``half_close``         read the request, send the first half of a correct 200, then close (FIN)
``slowloris``          read the request, send a correct 200 at one byte per second
``endless_headers``    read the request, send a status line and then header lines without end
``short_body``         a 200 whose Content-Length is 400 but only 10 body bytes follow; then silence
``short_body_close``   as ``short_body``, then close
``two_lengths``        a 200 with two different Content-Length headers (0 and 12) and 12 body bytes
``garbage``            read the request, send 4 KiB of random binary
``http``               read the request, answer ``HTTP/1.1 400 Bad Request`` and close
``trying``             a matching ``100 Trying``, then nothing
``wrong_callid``       a 200 with another Call-ID, then (50 ms later) the correct 200
``wrong_branch``       a 200 with another Via branch, then (50 ms later) the correct 200
``wrong_*_only``       the lie of ``wrong_callid`` / ``wrong_branch`` alone, then nothing
``duplicate``          the correct 200 three times in one write
``other_cseq``         a 200 for another CSeq number, then nothing
``tls+MODE``           a TLS server session (stdlib ssl), then MODE inside it (``tls+rst``, ``tls+garbage``)
=====================  ==================================================================================
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import secrets
import socket
import ssl
import struct
import sys
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

__all__ = ["MODES", "HostilePeer", "open_fd_count", "socket_inodes"]

_READ = 65536
_HEADER_FILL_CAP = 16 * 1024 * 1024  # endless_headers gives up after this much, whoever reads it


# -- SIP by hand ------------------------------------------------------------------------------------------

_COMPACT = {"v": "via", "f": "from", "t": "to", "i": "call-id", "l": "content-length"}


@dataclass
class _Request:
    head: bytes
    headers: list[tuple[str, str]]

    def first(self, name: str) -> str:
        for key, value in self.headers:
            if key == name:
                return value
        return ""


def _parse_head(head: bytes) -> _Request:
    lines = head.decode("utf-8", "replace").split("\r\n")
    headers: list[tuple[str, str]] = []
    for line in lines[1:]:
        if not line:
            continue
        name, _, value = line.partition(":")
        key = name.strip().lower()
        headers.append((_COMPACT.get(key, key), value.strip()))
    return _Request(head=head, headers=headers)


def _response(
    request: _Request,
    status: int = 200,
    reason: str = "OK",
    *,
    call_id: str | None = None,
    branch: str | None = None,
    cseq: str | None = None,
    content_lengths: Sequence[int] | None = None,
    body: bytes = b"",
) -> bytes:
    """A response built from the request's own Via, From, To, Call-ID and CSeq, with optional lies."""
    via = request.first("via")
    if branch is not None:
        via = ";".join(
            f"branch={branch}" if part.strip().startswith("branch=") else part for part in via.split(";")
        )
    to = request.first("to")
    if status > 100 and ";tag=" not in to:
        to += ";tag=hostile"
    lines = [
        f"SIP/2.0 {status} {reason}",
        f"Via: {via}",
        f"From: {request.first('from')}",
        f"To: {to}",
        f"Call-ID: {call_id if call_id is not None else request.first('call-id')}",
        f"CSeq: {cseq if cseq is not None else request.first('cseq')}",
        "Server: hostile-test-peer",
    ]
    for length in content_lengths if content_lengths is not None else [len(body)]:
        lines.append(f"Content-Length: {length}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


# -- one connection ---------------------------------------------------------------------------------------


class _Conn:
    """A byte stream with a read buffer, request framing and the helpers the modes share."""

    def __init__(self, stream: trio.abc.Stream, server: _Server, nursery: trio.Nursery) -> None:
        self.stream = stream
        self.server = server
        self.nursery = nursery
        self.buf = bytearray()
        self.eof = False
        self.closed = False

    async def read_some(self) -> bytes:
        if self.buf:
            data = bytes(self.buf)
            self.buf.clear()
            return data
        data = await self.stream.receive_some(_READ)
        if not data:
            self.eof = True
        return bytes(data)

    async def read_request(self) -> _Request | None:
        """The next request (head and Content-Length body), or None at EOF."""
        while b"\r\n\r\n" not in self.buf:
            data = await self.stream.receive_some(_READ)
            if not data:
                self.eof = True
                return None
            self.buf += data
        end = self.buf.index(b"\r\n\r\n") + 4
        request = _parse_head(bytes(self.buf[:end]))
        length = int(request.first("content-length") or "0")
        while len(self.buf) < end + length:
            data = await self.stream.receive_some(_READ)
            if not data:
                self.eof = True
                return None
            self.buf += data
        del self.buf[: end + length]
        self.server.requests += 1
        return request

    async def send(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def hold(self) -> None:
        """Stay silent and read (discarding) until the client goes."""
        self.buf.clear()
        while not self.eof and not self.closed:
            try:
                data = await self.stream.receive_some(_READ)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError, ssl.SSLError):
                return
            if not data:
                self.eof = True

    def watch(self) -> None:
        """End this connection as soon as the client goes, while the mode keeps sending."""
        scope = self.nursery.cancel_scope

        async def watcher() -> None:
            await self.hold()
            scope.cancel()

        self.nursery.start_soon(watcher)

    async def reset(self) -> None:
        sock = self._socket()
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        await self.close()

    async def close(self) -> None:
        self.closed = True
        await trio.aclose_forcefully(self.stream)

    def _socket(self) -> trio.socket.SocketType | None:
        stream: Any = self.stream
        while not isinstance(stream, trio.SocketStream):
            stream = getattr(stream, "transport_stream", None)
            if stream is None:
                return None
        return stream.socket


# -- the modes --------------------------------------------------------------------------------------------

Mode = Callable[[_Conn], Awaitable[None]]
MODES: dict[str, Mode] = {}


def _mode(name: str) -> Callable[[Mode], Mode]:
    def register(fn: Mode) -> Mode:
        MODES[name] = fn
        return fn

    return register


@_mode("ok")
async def _ok(conn: _Conn) -> None:
    while (request := await conn.read_request()) is not None:
        await conn.send(_response(request))


@_mode("silent")
async def _silent(conn: _Conn) -> None:
    await conn.hold()


async def _start_tls(conn: _Conn) -> bool:
    """Make `conn` a TLS server session (stdlib ssl); False if the client did not complete a handshake."""
    if conn.server.ssl_context is None:
        raise RuntimeError("TLS modes need --cert and --key")
    tls = trio.SSLStream(conn.stream, conn.server.ssl_context, server_side=True)
    conn.stream = tls
    try:
        await tls.do_handshake()
    except (trio.BrokenResourceError, ssl.SSLError):
        conn.closed = True  # the client did not speak TLS: the ssl module has answered as it does
        return False
    return True


@_mode("tls_ok")
async def _tls_ok(conn: _Conn) -> None:
    if await _start_tls(conn):
        await _ok(conn)


@_mode("tls_stall")
async def _tls_stall(conn: _Conn) -> None:
    from OpenSSL import SSL  # only this mode needs pyOpenSSL

    if conn.server.cert is None or conn.server.key is None:
        raise RuntimeError("tls_stall needs --cert and --key")
    ctx = SSL.Context(SSL.TLS_SERVER_METHOD)
    ctx.use_certificate_chain_file(conn.server.cert)
    ctx.use_privatekey_file(conn.server.key)
    tls = SSL.Connection(ctx, None)
    tls.set_accept_state()
    flight = b""
    while not flight:
        data = await conn.read_some()
        if not data:
            return
        tls.bio_write(data)
        try:
            tls.do_handshake()
        except SSL.WantReadError:
            pass
        except SSL.Error:
            return  # not a ClientHello: say nothing, like a stalled server
        with contextlib.suppress(SSL.WantReadError):
            flight = tls.bio_read(65536)
    await conn.send(flight[: len(flight) // 2])


@_mode("tls_alert")
async def _tls_alert(conn: _Conn) -> None:
    if await conn.read_some():
        await conn.send(b"\x15\x03\x03\x00\x02\x02\x50")  # alert record: fatal (2), internal_error (80)


@_mode("rst")
async def _rst(conn: _Conn) -> None:
    if await conn.read_request() is not None:
        await conn.reset()


@_mode("rst_soon")
async def _rst_soon(conn: _Conn) -> None:
    await trio.sleep(0.1)  # the client is connected and waiting for us to speak first
    await conn.reset()


@_mode("half_close")
async def _half_close(conn: _Conn) -> None:
    request = await conn.read_request()
    if request is not None:
        whole = _response(request)
        await conn.send(whole[: len(whole) // 2])
        await conn.close()


@_mode("slowloris")
async def _slowloris(conn: _Conn) -> None:
    request = await conn.read_request()
    if request is None:
        return
    conn.watch()
    for byte in _response(request):
        await conn.send(bytes([byte]))
        await trio.sleep(1.0)


@_mode("endless_headers")
async def _endless_headers(conn: _Conn) -> None:
    if await conn.read_request() is None:
        return
    conn.watch()
    await conn.send(b"SIP/2.0 200 OK\r\n")
    sent = 0
    line = b"X-Filler: " + b"a" * 1000 + b"\r\n"
    while sent < _HEADER_FILL_CAP:
        await conn.send(line * 16)
        sent += 16 * len(line)


async def _short_body(conn: _Conn, *, then_close: bool) -> None:
    request = await conn.read_request()
    if request is None:
        return
    await conn.send(_response(request, content_lengths=[400], body=b"v=0\r\no=- 1 "))
    if then_close:
        await conn.close()


MODES["short_body"] = lambda conn: _short_body(conn, then_close=False)
MODES["short_body_close"] = lambda conn: _short_body(conn, then_close=True)


@_mode("two_lengths")
async def _two_lengths(conn: _Conn) -> None:
    request = await conn.read_request()
    if request is not None:
        await conn.send(_response(request, content_lengths=[0, 12], body=b"hello world!"))


@_mode("garbage")
async def _garbage(conn: _Conn) -> None:
    if await conn.read_request() is not None:
        await conn.send(b"\x00\xff" + secrets.token_bytes(4094))


@_mode("http")
async def _http(conn: _Conn) -> None:
    if await conn.read_request() is not None:
        await conn.send(
            b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\nConnection: close\r\n"
            b"Content-Length: 11\r\n\r\nbad request"
        )
        await conn.close()


@_mode("trying")
async def _trying(conn: _Conn) -> None:
    request = await conn.read_request()
    if request is not None:
        await conn.send(_response(request, 100, "Trying"))


async def _wrong_then_right(conn: _Conn, **lie: str) -> None:
    request = await conn.read_request()
    if request is None:
        return
    await conn.send(_response(request, **lie))  # type: ignore[arg-type]
    await trio.sleep(0.05)
    await conn.send(_response(request))


async def _wrong_only(conn: _Conn, **lie: str) -> None:
    request = await conn.read_request()
    if request is not None:
        await conn.send(_response(request, **lie))  # type: ignore[arg-type]


_CALL_ID_LIE = {"call_id": "not-yours@hostile.invalid"}
_BRANCH_LIE = {"branch": "z9hG4bKnotyours"}
MODES["wrong_callid"] = lambda conn: _wrong_then_right(conn, **_CALL_ID_LIE)
MODES["wrong_branch"] = lambda conn: _wrong_then_right(conn, **_BRANCH_LIE)
MODES["wrong_callid_only"] = lambda conn: _wrong_only(conn, **_CALL_ID_LIE)
MODES["wrong_branch_only"] = lambda conn: _wrong_only(conn, **_BRANCH_LIE)


@_mode("duplicate")
async def _duplicate(conn: _Conn) -> None:
    request = await conn.read_request()
    if request is not None:
        await conn.send(_response(request) * 3)


@_mode("other_cseq")
async def _other_cseq(conn: _Conn) -> None:
    request = await conn.read_request()
    if request is not None:
        number, _, method = request.first("cseq").partition(" ")
        await conn.send(_response(request, cseq=f"{int(number or '0') + 1} {method}"))


# -- the server -------------------------------------------------------------------------------------------


@dataclass
class _Listener:
    port: int
    mode: str
    queued: deque[str] = field(default_factory=deque)
    accepted: int = 0
    open: int = 0

    def take_mode(self) -> str:
        return self.queued.popleft() if self.queued else self.mode


class _Server:
    def __init__(self, cert: str | None, key: str | None) -> None:
        self.cert = cert
        self.key = key
        self.ssl_context: ssl.SSLContext | None = None
        if cert and key:
            self.ssl_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            self.ssl_context.load_cert_chain(cert, key)
        self.listeners: dict[int, _Listener] = {}
        self.requests = 0
        self.errors: list[str] = []

    async def handle(self, listener: _Listener, stream: trio.SocketStream) -> None:
        listener.accepted += 1
        listener.open += 1
        mode = listener.take_mode()
        try:
            async with trio.open_nursery() as nursery:
                conn = _Conn(stream, self, nursery)
                try:
                    if mode.startswith("tls+") and not await _start_tls(conn):
                        return
                    await MODES[mode.removeprefix("tls+")](conn)
                    if not conn.closed:
                        await conn.hold()
                except (trio.BrokenResourceError, trio.ClosedResourceError, OSError, ssl.SSLError):
                    pass  # the client went away: that is its right
                nursery.cancel_scope.cancel()
        except Exception as exc:  # a bug in a mode: keep serving, report it on the control channel
            self.errors.append(f"{mode}: {type(exc).__name__}: {exc}")
        finally:
            listener.open -= 1
            await trio.aclose_forcefully(stream)

    def control(self, request: dict[str, Any]) -> dict[str, Any]:
        op = request.get("op")
        if op == "stats":
            return {
                "ok": True,
                "requests": self.requests,
                "errors": self.errors,
                "ports": {
                    str(p): {"mode": lst.mode, "accepted": lst.accepted, "open": lst.open}
                    for p, lst in self.listeners.items()
                },
            }
        if op in ("next", "set"):
            listener = self.listeners.get(int(request["port"]))
            modes = list(request.get("modes", [])) if op == "next" else [request.get("mode")]
            unknown = [m for m in modes if str(m).removeprefix("tls+") not in MODES]
            if listener is None or unknown:
                return {"ok": False, "error": f"unknown port or modes {unknown}"}
            if op == "next":
                listener.queued.extend(modes)
            else:
                listener.mode = modes[0]
            return {"ok": True}
        return {"ok": False, "error": f"unknown op {op!r}"}

    async def serve_control(self, stream: trio.SocketStream) -> None:
        buf = b""
        async with stream:
            while True:
                try:
                    data = await stream.receive_some(_READ)
                except (trio.BrokenResourceError, OSError):
                    return
                if not data:
                    return
                buf += data
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    try:
                        answer = self.control(json.loads(line))
                    except (ValueError, KeyError, TypeError) as exc:
                        answer = {"ok": False, "error": str(exc)}
                    await stream.send_all(json.dumps(answer).encode() + b"\n")


async def _serve(
    control_port: int, listeners: list[tuple[str, int]], cert: str | None, key: str | None
) -> None:
    server = _Server(cert, key)
    async with trio.open_nursery() as nursery:
        for mode, port in listeners:
            if mode.removeprefix("tls+") not in MODES:
                raise SystemExit(f"unknown mode {mode!r}; known: {', '.join(sorted(MODES))}")
            listener = server.listeners[port] = _Listener(port, mode)
            (sock_listener,) = await trio.open_tcp_listeners(port, host="127.0.0.1")

            async def handler(stream: trio.SocketStream, listener: _Listener = listener) -> None:
                await server.handle(listener, stream)

            nursery.start_soon(trio.serve_listeners, handler, [sock_listener])
        # The control port last: once it accepts, every listener is bound.
        control = await trio.open_tcp_listeners(control_port, host="127.0.0.1")
        print(f"hostile peer ready: control {control_port}, {listeners}", flush=True)
        nursery.start_soon(trio.serve_listeners, server.serve_control, control)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.lab.hostile")
    parser.add_argument("--control", type=int, required=True)
    parser.add_argument("--cert")
    parser.add_argument("--key")
    parser.add_argument("listeners", nargs="+", metavar="MODE=PORT")
    args = parser.parse_args(argv)
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # it holds thousands of connections
    pairs = []
    for item in args.listeners:
        mode, _, port = item.partition("=")
        pairs.append((mode, int(port)))
    with contextlib.suppress(KeyboardInterrupt):
        trio.run(_serve, args.control, pairs, args.cert, args.key)


# -- the test side ----------------------------------------------------------------------------------------


class HostilePeer:
    """The test side: start the subprocess, address its listeners by name, command it, read its stats.

    `listeners` maps a name to a default mode; `address(name)` is its ("127.0.0.1", port).
    """

    def __init__(
        self,
        listeners: dict[str, str],
        *,
        log_dir: Path,
        cert: Path | None = None,
        key: Path | None = None,
        allocate: Callable[[], int],
        name: str = "hostile-peer",
    ) -> None:
        from tests.lab.proc import LabProcess

        self.ports = {name: allocate() for name in listeners}
        self.control_port = allocate()
        argv = [sys.executable, "-m", "tests.lab.hostile", "--control", str(self.control_port)]
        if cert is not None and key is not None:
            argv += ["--cert", str(cert), "--key", str(key)]
        argv += [f"{mode}={self.ports[name]}" for name, mode in listeners.items()]
        self.process = LabProcess(
            name,
            argv,
            log_dir=log_dir,
            ready=[("127.0.0.1", self.control_port)],
            cwd=Path(__file__).resolve().parents[2],
        )
        self._control: socket.socket | None = None

    def start(self) -> HostilePeer:
        self.process.start()
        # The control connection is opened now and kept: a test counting its own sockets must not see it
        # appear in the middle.
        self._control = socket.create_connection(("127.0.0.1", self.control_port), timeout=5)
        return self

    def stop(self) -> None:
        if self._control is not None:
            self._control.close()
            self._control = None
        self.process.stop()

    def __enter__(self) -> HostilePeer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def address(self, name: str) -> tuple[str, int]:
        return ("127.0.0.1", self.ports[name])

    def _call(self, request: dict[str, Any]) -> dict[str, Any]:
        if self._control is None:
            self._control = socket.create_connection(("127.0.0.1", self.control_port), timeout=5)
        self._control.sendall(json.dumps(request).encode() + b"\n")
        buf = b""
        while not buf.endswith(b"\n"):
            chunk = self._control.recv(_READ)
            if not chunk:
                raise RuntimeError(f"hostile peer closed its control connection\n{self.process.describe()}")
            buf += chunk
        answer: dict[str, Any] = json.loads(buf)
        if not answer.get("ok"):
            raise RuntimeError(f"hostile peer refused {request}: {answer.get('error')}")
        return answer

    def queue(self, name: str, *modes: str) -> None:
        """The next connections to listener `name` get `modes`, one each; then its default again."""
        self._call({"op": "next", "port": self.ports[name], "modes": list(modes)})

    def set_mode(self, name: str, mode: str) -> None:
        self._call({"op": "set", "port": self.ports[name], "mode": mode})

    def stats(self, name: str) -> dict[str, int]:
        """accepted and open connections of listener `name`."""
        answer = self._call({"op": "stats"})
        if answer["errors"]:
            raise AssertionError(f"hostile peer mode errors: {answer['errors']}")
        ports: dict[str, dict[str, int]] = answer["ports"]
        return ports[str(self.ports[name])]

    def open_connections(self) -> int:
        answer = self._call({"op": "stats"})
        return sum(p["open"] for p in answer["ports"].values())

    async def wait_all_closed(self, within: float = 2.0) -> int:
        """Wait until the server holds no connection (the clients closed theirs); return what is left."""
        end = time.monotonic() + within
        while True:
            left = self.open_connections()
            if left == 0 or time.monotonic() > end:
                return left
            await trio.sleep(0.02)


def socket_inodes(pid: int | str = "self") -> set[str]:
    """The sockets a process holds open right now (`socket:[inode]` links in /proc/PID/fd); for this
    process, less the one umprobe keeps open for its life (`umprobe.net.stamping.kept_sockets`)."""
    found: set[str] = set()
    for fd in _listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
            if link.startswith("socket:"):
                found.add(link)
    if pid == "self":
        from umprobe.net.stamping import kept_sockets  # this module also runs alone, as the peer

        found -= {f"socket:[{os.fstat(kept.fileno()).st_ino}]" for kept in kept_sockets()}
    return found


def open_fd_count(pid: int | str = "self") -> int:
    return len(list(_listdir(f"/proc/{pid}/fd")))


def _listdir(path: str) -> Iterator[str]:
    with contextlib.suppress(FileNotFoundError):
        yield from os.listdir(path)


if __name__ == "__main__":
    main()
