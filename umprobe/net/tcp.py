"""TCP connect: one resolved address to a connected ``trio.SocketStream``.

One address, one attempt: no happy-eyeballs racing (that is what ``trio.open_tcp_stream`` does for a user
agent; a prober wants each address's own verdict, PROTOCOL.md §2). ``TCP_NODELAY`` is set because a SIP
request is one small write that must not wait for Nagle.

The ``OSError`` boundary for connecting is here: ``ECONNREFUSED`` becomes :class:`ConnectRefused`, a
local shortage (no file descriptor for the socket, no memory or buffers, no free local port)
:class:`LocalResourceError`, everything else :class:`ConnectError`. The socket is closed on every failure
and on cancellation.

:class:`TCPStream` is the boundary for talking in plain text over the connection: trio's
``SocketStream`` reports a reset or a broken pipe as ``trio.BrokenResourceError``, which is not a
:class:`~umprobe.net.errors.NetError`; the wrapper turns it into :class:`ConnectionClosed`, so a probe
talking plain SIP (or a plain control channel) sees the same error type as one talking through
:class:`~umprobe.net.tls.TLSStream`. (``TLSStream`` takes the raw ``SocketStream`` and translates
transport errors itself, so the wrapper is only for plain-text conversations.)
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import time

import trio

from umprobe.media import rxstamp
from umprobe.net.errors import (
    LOCAL_RESOURCE_ERRNOS,
    ConnectError,
    ConnectionClosed,
    ConnectRefused,
    LocalResourceError,
)
from umprobe.net.resolve import ResolvedAddress
from umprobe.net.stamping import stamp_arrivals, syn_rtt

_RECEIVE_SIZE = 65536  # trio.SocketStream's default

__all__ = ["LeanSocketStream", "TCPStream", "format_hostport", "open_lean_tcp", "open_tcp"]


def format_hostport(address: str, port: int) -> str:
    """``192.0.2.1:5060`` or ``[2001:db8::1]:5061``."""
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


def _describe_oserror(exc: OSError) -> str:
    if exc.errno is not None:
        name = errno.errorcode.get(exc.errno, str(exc.errno))
        return f"{exc.strerror or os.strerror(exc.errno)} ({name})"
    return str(exc)


async def open_tcp(address: ResolvedAddress, port: int) -> trio.SocketStream:
    """Connect to ``address`` on ``port``. The caller owns the returned stream and must close it."""
    sock, _ = await _connect(address, port)
    return trio.SocketStream(sock)


async def open_lean_tcp(address: ResolvedAddress, port: int) -> LeanSocketStream:
    """`open_tcp`, returning a :class:`LeanSocketStream` (what a probe's one connection uses), with the
    kernel's arrival stamps on where it offers them and the kernel's handshake time in `syn_rtt`."""
    sock, raw = await _connect(address, port)
    stream = LeanSocketStream(sock, raw, nodelay_set=True, stamped=stamp_arrivals(raw))
    stream.syn_rtt = syn_rtt(raw)
    return stream


def _trio_time_of(unix: float | None) -> float | None:
    """A kernel arrival stamp (Unix seconds) on trio's clock, or None: none given, or one that lies in the
    future or more than a minute back (the wall clock was stepped between the stamp and now)."""
    if unix is None:
        return None
    now = trio.current_time()
    age = time.time() - unix
    if not 0.0 <= age < 60.0:
        return None
    return now - age


async def _connect(address: ResolvedAddress, port: int) -> tuple[trio.socket.SocketType, socket.socket]:
    """A connected trio socket, and the stdlib socket it wraps."""
    where = format_hostport(address.address, port)
    af = socket.AF_INET if address.family == "ipv4" else socket.AF_INET6
    try:
        raw = socket.socket(af, socket.SOCK_STREAM)  # what trio.socket.socket() makes and wraps
        sock = trio.socket.from_stdlib_socket(raw)
    except OSError as exc:
        await trio.lowlevel.checkpoint()
        error = LocalResourceError if exc.errno in LOCAL_RESOURCE_ERRNOS else ConnectError
        raise error(
            f"cannot create an {address.family} socket for {where}: {_describe_oserror(exc)}"
        ) from exc
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        await _socket_connect(sock, raw, (address.address, port))
    except OSError as exc:
        sock.close()
        if exc.errno == errno.ECONNREFUSED:
            raise ConnectRefused(f"connection to {where} refused") from exc
        if exc.errno in LOCAL_RESOURCE_ERRNOS or exc.errno == errno.EADDRNOTAVAIL:  # no local port left
            raise LocalResourceError(f"cannot connect to {where}: {_describe_oserror(exc)}") from exc
        raise ConnectError(f"cannot connect to {where}: {_describe_oserror(exc)}") from exc
    except BaseException:
        # Cancelled (or a bug): trio leaves a half-connected socket in an unknown state; never leak it.
        sock.close()
        raise
    return sock, raw


async def _socket_connect(sock: trio.socket.SocketType, raw: socket.socket, address: tuple[str, int]) -> None:
    """``await sock.connect(address)``, done as trio does it for an address that needs no lookup, minus
    its per-call wrappers; any other address goes to trio.

    A connection that is complete when ``connect`` returns ``EINPROGRESS`` (on loopback the kernel has
    done the whole handshake by then) is taken as it is (``getpeername`` answers), without registering the
    socket with the event loop and a trip through it only to hear that it is writable; the call is still
    a checkpoint."""
    try:
        socket.inet_pton(raw.family, address[0])
    except OSError:  # e.g. an IPv6 literal with a zone: trio asks getaddrinfo for the scope id
        await sock.connect(address)
        return
    await trio.lowlevel.checkpoint_if_cancelled()
    try:
        raw.connect(address)
    except BlockingIOError:
        try:
            raw.getpeername()
        except OSError:  # ENOTCONN: still in progress (or failed: SO_ERROR below says how)
            pass
        else:
            await trio.lowlevel.cancel_shielded_checkpoint()
            return
    except BaseException:
        await trio.lowlevel.cancel_shielded_checkpoint()
        raise
    else:
        await trio.lowlevel.cancel_shielded_checkpoint()
        return
    try:
        await trio.lowlevel.wait_writable(raw)
    except trio.Cancelled:
        raw.close()
        raise
    err = raw.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
    if err != 0:
        raise OSError(err, f"Error connecting to {address!r}: {os.strerror(err)}")


def _stream_error(exc: OSError) -> trio.ClosedResourceError | trio.BrokenResourceError:
    """What ``trio.SocketStream`` raises for an ``OSError`` of its socket (``from exc``, or ``from None``
    for the closed-socket one)."""
    if exc.errno in (errno.EBADF, errno.ENOTSOCK):
        return trio.ClosedResourceError("this socket was already closed")
    return trio.BrokenResourceError(f"socket connection broken: {exc}")


class LeanSocketStream(trio.abc.HalfCloseableStream):
    """``trio.SocketStream`` for a probe's one connection, at less CPU per call.

    It sets the same socket options and raises the same errors (``BrokenResourceError`` from the
    ``OSError``, ``ClosedResourceError`` on a closed socket or after ``send_eof``, ``BusyResourceError`` for
    two senders), and every call is a checkpoint, but it calls the socket directly, not through trio's
    per-call wrappers, and a call that has to wait for the socket makes that wait its one schedule point
    (trio's adds another after the call). A TLS probe makes a dozen such calls.
    """

    def __init__(
        self,
        sock: trio.socket.SocketType,
        raw: socket.socket,
        *,
        nodelay_set: bool = False,
        stamped: bool = False,
    ) -> None:
        self.socket = sock
        self._raw = raw  # the stdlib socket `sock` wraps (non-blocking)
        self._sending = False
        #: `stamped`: the kernel stamps arrivals on this socket (`umprobe.net.stamping`); each receive then
        #: sets `arrived_at`, the arrival of the last segment it read, on trio's clock.
        self._stamped = stamped
        self.arrived_at: float | None = None
        #: The kernel's SYN to SYN-ACK time (`stamping.syn_rtt`), set by `open_lean_tcp`; None if unknown.
        self.syn_rtt: float | None = None
        if not nodelay_set:  # `_connect` sets it before connecting: a syscall less per probe
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, True)
        if hasattr(socket, "TCP_NOTSENT_LOWAT"):
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NOTSENT_LOWAT, 2**14)

    def _start_sending(self) -> None:
        if self._sending:
            raise trio.BusyResourceError("another task is currently sending data on this SocketStream")
        self._sending = True

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if self.socket.did_shutdown_SHUT_WR:
            raise trio.ClosedResourceError("can't send data after sending EOF")
        self._start_sending()
        try:
            await trio.lowlevel.checkpoint_if_cancelled()
            with memoryview(data) as view:
                if not view:
                    if self._raw.fileno() == -1:
                        raise trio.ClosedResourceError("socket was already closed")
                    await trio.lowlevel.checkpoint()
                    return
                sent, waited = 0, False
                while sent < len(view):
                    try:
                        sent += self._raw.send(view[sent:])
                    except BlockingIOError:
                        await trio.lowlevel.wait_writable(self._raw)
                        waited = True
                    except OSError as exc:
                        error = _stream_error(exc)
                        raise error from (None if isinstance(error, trio.ClosedResourceError) else exc)
                if not waited:
                    await trio.lowlevel.cancel_shielded_checkpoint()
        finally:
            self._sending = False

    async def wait_send_all_might_not_block(self) -> None:
        self._start_sending()
        try:
            if self._raw.fileno() == -1:
                raise trio.ClosedResourceError
            await self.socket.wait_writable()
        finally:
            self._sending = False

    async def send_eof(self) -> None:
        self._start_sending()
        try:
            await trio.lowlevel.checkpoint()
            if self.socket.did_shutdown_SHUT_WR:
                return
            try:
                self.socket.shutdown(socket.SHUT_WR)
            except OSError as exc:
                error = _stream_error(exc)
                raise error from (None if isinstance(error, trio.ClosedResourceError) else exc)
        finally:
            self._sending = False

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if max_bytes is None:
            max_bytes = _RECEIVE_SIZE
        if max_bytes < 1:
            raise ValueError("max_bytes must be >= 1")
        await trio.lowlevel.checkpoint_if_cancelled()
        waited = False
        while True:
            try:
                if self._stamped:
                    data, ancdata, _flags, _address = self._raw.recvmsg(max_bytes, rxstamp.ANCILLARY_SIZE)
                    self.arrived_at = _trio_time_of(rxstamp.unix_from_ancillary(ancdata))
                else:
                    data = self._raw.recv(max_bytes)
            except BlockingIOError:
                await trio.lowlevel.wait_readable(self._raw)
                waited = True
                continue
            except OSError as exc:
                error = _stream_error(exc)
                raise error from (None if isinstance(error, trio.ClosedResourceError) else exc)
            if not waited:
                await trio.lowlevel.cancel_shielded_checkpoint()
            return data

    async def aclose(self) -> None:
        self.socket.close()
        await trio.lowlevel.checkpoint()


def _describe_lost(exc: BaseException) -> str:
    cause = exc.__cause__ if isinstance(exc.__cause__, OSError) else exc
    if isinstance(cause, OSError):
        return _describe_oserror(cause)
    return str(cause) or type(cause).__name__


class TCPStream(trio.abc.HalfCloseableStream):
    """A connected ``trio.SocketStream`` whose transport failures are :class:`ConnectionClosed`.

    A reset (``ECONNRESET``) or a broken pipe (``EPIPE``) while sending or receiving raises
    ``ConnectionClosed`` naming the peer and the errno; EOF stays ``b""`` from ``receive_some``. Using the
    stream after our own ``aclose()`` still raises ``trio.ClosedResourceError`` (our bug, not the peer's).
    """

    def __init__(self, stream: trio.SocketStream | LeanSocketStream, peer: str) -> None:
        self._stream = stream
        self._peer = peer

    @property
    def socket(self) -> trio.socket.SocketType:
        return self._stream.socket

    @property
    def transport_stream(self) -> trio.SocketStream | LeanSocketStream:
        return self._stream

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        try:
            await self._stream.send_all(data)
        except trio.BrokenResourceError as exc:
            raise ConnectionClosed(
                f"connection to {self._peer} lost while sending: {_describe_lost(exc)}"
            ) from exc

    async def wait_send_all_might_not_block(self) -> None:
        try:
            await self._stream.wait_send_all_might_not_block()
        except trio.BrokenResourceError as exc:
            raise ConnectionClosed(
                f"connection to {self._peer} lost while waiting to send: {_describe_lost(exc)}"
            ) from exc

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        try:
            data = await self._stream.receive_some(max_bytes)
        except trio.BrokenResourceError as exc:
            raise ConnectionClosed(
                f"connection to {self._peer} lost while receiving: {_describe_lost(exc)}"
            ) from exc
        return bytes(data)

    async def send_eof(self) -> None:
        try:
            await self._stream.send_eof()
        except trio.BrokenResourceError as exc:
            raise ConnectionClosed(
                f"connection to {self._peer} lost while closing our side: {_describe_lost(exc)}"
            ) from exc

    async def aclose(self) -> None:
        await self._stream.aclose()
