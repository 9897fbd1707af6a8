"""`umprobe.net.tcp.LeanSocketStream` against trio's own conformance checks for a half-closeable stream
(the checks trio runs on `trio.SocketStream`), and the errors it shares with `trio.SocketStream`."""

from __future__ import annotations

import socket

import pytest
import trio
import trio.testing

from umprobe.net.errors import ConnectRefused
from umprobe.net.resolve import ResolvedAddress
from umprobe.net.tcp import LeanSocketStream, TCPStream, open_lean_tcp, open_tcp


def _lean_pair() -> tuple[LeanSocketStream, LeanSocketStream]:
    left, right = socket.socketpair()
    return (
        LeanSocketStream(trio.socket.from_stdlib_socket(left), left),
        LeanSocketStream(trio.socket.from_stdlib_socket(right), right),
    )


async def _stream_maker() -> tuple[LeanSocketStream, LeanSocketStream]:
    return _lean_pair()


async def _clogged_stream_maker() -> tuple[LeanSocketStream, LeanSocketStream]:
    left, right = _lean_pair()
    # Fill both send buffers, as trio's own SocketStream test does, so that the next send_all blocks.
    for stream in (left, right):
        while True:
            try:
                stream._raw.send(b"x" * 65536)
            except BlockingIOError:
                break
    return left, right


async def test_trio_half_closeable_stream_conformance() -> None:
    await trio.testing.check_half_closeable_stream(_stream_maker, _clogged_stream_maker)


async def test_errors_are_trio_socket_streams() -> None:
    with trio.fail_after(10):
        listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
        port = listener.socket.getsockname()[1]
        async with listener:
            client = await open_lean_tcp(ResolvedAddress("127.0.0.1", "ipv4"), port)
            server = await listener.accept()
            assert client.socket.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
            await client.send_all(b"ping")
            assert await server.receive_some(10) == b"ping"
            # A reset from the peer: BrokenResourceError caused by the OSError, as trio.SocketStream raises.
            server.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            await server.aclose()
            with pytest.raises(trio.BrokenResourceError) as lost:
                for _ in range(100):
                    await client.send_all(b"x" * 1000)
                    await trio.sleep(0.01)
            assert isinstance(lost.value.__cause__, ConnectionResetError | BrokenPipeError)
            # TCPStream turns it into ConnectionClosed naming the errno, as over trio.SocketStream.
            wrapped = TCPStream(client, "127.0.0.1:1")
            with pytest.raises(Exception, match=r"lost while sending: .*\((ECONNRESET|EPIPE)\)"):
                await wrapped.send_all(b"x")
            await client.aclose()
            with pytest.raises(trio.ClosedResourceError):
                await client.receive_some()
            with pytest.raises(trio.ClosedResourceError):
                await client.send_all(b"x")


async def test_connect_errors_match_open_tcp() -> None:
    with trio.fail_after(10):
        listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
        port = listener.socket.getsockname()[1]
        await listener.aclose()  # nothing listens there now
        details = []
        for opener in (open_tcp, open_lean_tcp):
            with pytest.raises(ConnectRefused) as refused:
                await opener(ResolvedAddress("127.0.0.1", "ipv4"), port)
            details.append(refused.value.detail)
        assert details == [f"connection to 127.0.0.1:{port} refused"] * 2


async def test_a_connect_complete_at_once_is_still_a_checkpoint() -> None:
    # On loopback the kernel completes the handshake inside connect(): open_lean_tcp takes the connection
    # without waiting for writability, and is still a cancel point and a schedule point.
    with trio.fail_after(10):
        listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
        port = listener.socket.getsockname()[1]
        async with listener:
            with trio.testing.assert_checkpoints():
                client = await open_lean_tcp(ResolvedAddress("127.0.0.1", "ipv4"), port)
            server = await listener.accept()
            assert client.socket.getpeername() == ("127.0.0.1", port)
            assert client.socket.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
            await client.send_all(b"ping")
            assert await server.receive_some(10) == b"ping"
            await client.aclose()
            await server.aclose()
            with trio.CancelScope() as scope:
                scope.cancel()
                with pytest.raises(trio.Cancelled):
                    await open_lean_tcp(ResolvedAddress("127.0.0.1", "ipv4"), port)
