"""open_tcp and TLSStream over real sockets on loopback (127.0.0.1 / ::1, port 0)."""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Awaitable, Callable
from functools import partial

import pytest
import trio

from tests.net.conftest import PKI, ClientCtxFactory, ServerCtxFactory
from umprobe.net.errors import ConnectionClosed, ConnectRefused, NetError, TLSError
from umprobe.net.resolve import ResolvedAddress
from umprobe.net.tcp import format_hostport, open_tcp
from umprobe.net.tls import TLSStream

CAP = 10
V4 = ResolvedAddress("127.0.0.1", "ipv4")
V6 = ResolvedAddress("::1", "ipv6")


def _ipv6_loopback_works() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


def _closed_port(family: int = socket.AF_INET, host: str = "127.0.0.1") -> int:
    """A loopback port with nothing listening (bound then released; the kernel answers RST)."""
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
    return port


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def start_server(
    nursery: trio.Nursery, handler: Callable[[trio.SocketStream], Awaitable[None]], host: str = "127.0.0.1"
) -> int:
    listeners = await nursery.start(partial(trio.serve_tcp, handler, 0, host=host))
    port: int = listeners[0].socket.getsockname()[1]
    return port


# -- TCP -------------------------------------------------------------------------------------------------


async def test_open_tcp_connects_and_sets_nodelay() -> None:
    async def handler(stream: trio.SocketStream) -> None:
        await stream.send_all(b"hello")
        await stream.aclose()

    with trio.fail_after(CAP):
        async with trio.open_nursery() as nursery:
            port = await start_server(nursery, handler)
            stream = await open_tcp(V4, port)
            try:
                assert stream.socket.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
                assert await stream.receive_some() == b"hello"
            finally:
                await stream.aclose()
            nursery.cancel_scope.cancel()


async def test_open_tcp_ipv6_loopback() -> None:
    # umprobe probes IPv6 listeners; the lab (and CI) must have ::1. A host without it fails here, loudly.
    assert _ipv6_loopback_works(), "this host has no IPv6 loopback (::1): the IPv6 tests need it"

    async def handler(stream: trio.SocketStream) -> None:
        await stream.aclose()

    with trio.fail_after(CAP):
        async with trio.open_nursery() as nursery:
            port = await start_server(nursery, handler, host="::1")
            stream = await open_tcp(V6, port)
            assert stream.socket.family == socket.AF_INET6
            await stream.aclose()
            nursery.cancel_scope.cancel()


async def test_open_tcp_refused_does_not_leak() -> None:
    port = _closed_port()
    before = _open_fds()
    with trio.fail_after(CAP):
        for _ in range(20):
            with pytest.raises(ConnectRefused) as caught:
                await open_tcp(V4, port)
    assert caught.value.detail == f"connection to 127.0.0.1:{port} refused"
    assert isinstance(caught.value.__cause__, ConnectionRefusedError)
    assert _open_fds() == before


async def test_open_tcp_cancelled_does_not_leak() -> None:
    """A connect that hangs (loopback listener whose accept queue is full: SYNs are dropped) is cancelled."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        fillers = []
        try:
            for _ in range(3):
                filler = socket.socket()
                fillers.append(filler)
                filler.setblocking(False)
                with contextlib.suppress(BlockingIOError):
                    filler.connect(("127.0.0.1", port))
            with trio.fail_after(CAP):
                await trio.sleep(0.05)
                before = _open_fds()
                with trio.move_on_after(0.2) as scope:
                    stream = await open_tcp(V4, port)
                    await stream.aclose()
            assert scope.cancelled_caught, "the connect was expected to hang until cancelled"
            assert _open_fds() == before
        finally:
            for filler in fillers:
                filler.close()


def test_format_hostport() -> None:
    assert format_hostport("192.0.2.1", 5060) == "192.0.2.1:5060"
    assert format_hostport("2001:db8::1", 5061) == "[2001:db8::1]:5061"


# -- TLS over TCP ----------------------------------------------------------------------------------------


async def test_tls_echo_over_loopback(
    pki: PKI, client_ctx: ClientCtxFactory, server_ctx: ServerCtxFactory
) -> None:
    sctx = server_ctx(require_client_cert=True)

    async def handler(tcp: trio.SocketStream) -> None:
        tls = TLSStream(tcp, sctx, server_side=True)
        try:
            await tls.do_handshake()
            while data := await tls.receive_some():
                await tls.send_all(data)
        except NetError:
            pass
        finally:
            await tls.aclose()

    with trio.fail_after(CAP):
        async with trio.open_nursery() as nursery:
            port = await start_server(nursery, handler)
            client = TLSStream(
                await open_tcp(V4, port), client_ctx(cert=pki.client), server_hostname="127.0.0.1"
            )
            try:
                info = await client.do_handshake()
                await client.send_all(b"OPTIONS")
                assert await client.receive_some() == b"OPTIONS"
            finally:
                await client.aclose()
            nursery.cancel_scope.cancel()
    assert info.verified and info.client_cert_sent


async def test_tls13_rejection_after_server_hung_up_is_still_client_cert_rejected(
    client_ctx: ClientCtxFactory, server_ctx: ServerCtxFactory
) -> None:
    """Real TCP: the server refuses us, sends the alert and closes; our request then draws a RST.

    The alert was queued before the RST, so the first read must still report the alert, not a reset.
    """
    sctx = server_ctx(require_client_cert=True)
    server_done = trio.Event()
    server_errors: list[NetError] = []

    async def handler(tcp: trio.SocketStream) -> None:
        tls = TLSStream(tcp, sctx, server_side=True)
        try:
            await tls.do_handshake()
        except NetError as exc:
            server_errors.append(exc)
        finally:
            await tls.aclose()
            server_done.set()

    with trio.fail_after(CAP):
        async with trio.open_nursery() as nursery:
            port = await start_server(nursery, handler)
            client = TLSStream(
                await open_tcp(V4, port), client_ctx(min_version="1.3"), server_hostname="localhost"
            )
            try:
                info = await client.do_handshake()
                assert not info.client_cert_sent
                await server_done.wait()
                await trio.sleep(0.05)
                await client.send_all(b"OPTIONS sip:x SIP/2.0\r\n\r\n")  # lands on a closed socket -> RST
                await trio.sleep(0.05)
                with pytest.raises(TLSError) as caught:
                    await client.receive_some()
            finally:
                await client.aclose()
            nursery.cancel_scope.cancel()
    assert caught.value.kind == "client_cert_rejected"
    assert caught.value.alert == "certificate_required"
    assert server_errors and "peer did not return a certificate" in server_errors[0].detail


async def test_reset_after_handshake_is_connection_closed(
    client_ctx: ClientCtxFactory, server_ctx: ServerCtxFactory
) -> None:
    sctx = server_ctx()

    async def handler(tcp: trio.SocketStream) -> None:
        tls = TLSStream(tcp, sctx, server_side=True)
        await tls.do_handshake()
        await tls.receive_some()
        # Abort: SO_LINGER 0 makes close() send a RST instead of FIN.
        tcp.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        await tcp.aclose()

    with trio.fail_after(CAP):
        async with trio.open_nursery() as nursery:
            port = await start_server(nursery, handler)
            client = TLSStream(await open_tcp(V4, port), client_ctx(), server_hostname="localhost")
            try:
                await client.do_handshake()
                await client.send_all(b"x")
                with pytest.raises(ConnectionClosed) as caught:
                    await client.receive_some()
            finally:
                await client.aclose()
            nursery.cancel_scope.cancel()
    assert "after the TLS handshake" in caught.value.detail
    assert "reset" in caught.value.detail.lower()
