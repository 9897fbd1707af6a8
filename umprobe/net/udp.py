"""UDP: one resolved address to a *connected* trio UDP socket, for one SIP-over-UDP transaction.

The socket is connected to the peer so that the kernel filters datagrams from other sources and an ICMP
port-unreachable for an earlier send surfaces on the next send or receive as ``ECONNREFUSED``, which
:class:`UDPSocket` raises as :class:`ConnectRefused` (reason ``connect_refused``). ``connect`` on a UDP socket
sends nothing: it only fixes the peer and picks the local address and port. Other send/receive failures are
:class:`ConnectError`; a local shortage is :class:`LocalResourceError`. The caller owns the socket and must
close it.
"""

from __future__ import annotations

import errno
import socket

import trio

from umprobe.net.errors import (
    LOCAL_RESOURCE_ERRNOS,
    ConnectError,
    ConnectRefused,
    LocalResourceError,
    NetError,
)
from umprobe.net.resolve import ResolvedAddress
from umprobe.net.tcp import _describe_oserror, format_hostport

__all__ = ["MAX_DATAGRAM", "UDPSocket", "open_udp"]

MAX_DATAGRAM = 65535


def _error(exc: OSError, what: str) -> NetError:
    if exc.errno == errno.ECONNREFUSED:
        return ConnectRefused(f"{what}: ICMP port unreachable (nothing listens on UDP there)")
    if exc.errno in LOCAL_RESOURCE_ERRNOS:
        return LocalResourceError(f"{what}: {_describe_oserror(exc)}")
    return ConnectError(f"{what}: {_describe_oserror(exc)}")


class UDPSocket:
    """A connected UDP socket; `send` and `receive` translate OSError into NetError subclasses."""

    __slots__ = ("sock", "where")

    def __init__(self, sock: trio.socket.SocketType, where: str) -> None:
        self.sock = sock
        self.where = where

    def local(self) -> tuple[str, int]:
        """The local address (without an IPv6 zone id) and port."""
        host, port = self.sock.getsockname()[:2]
        return str(host).split("%", 1)[0], int(port)

    async def send(self, data: bytes) -> None:
        try:
            await self.sock.send(data)
        except OSError as exc:
            raise _error(exc, f"sending to {self.where}") from exc

    async def receive(self) -> bytes:
        try:
            return await self.sock.recv(MAX_DATAGRAM)
        except OSError as exc:
            raise _error(exc, f"receiving from {self.where}") from exc

    def close(self) -> None:
        self.sock.close()


async def open_udp(address: ResolvedAddress, port: int) -> UDPSocket:
    """A UDP socket connected to ``address`` on ``port`` (nothing is sent)."""
    where = format_hostport(address.address, port)
    af = socket.AF_INET if address.family == "ipv4" else socket.AF_INET6
    try:
        sock = trio.socket.socket(af, socket.SOCK_DGRAM)
    except OSError as exc:
        await trio.lowlevel.checkpoint()
        raise _error(exc, f"cannot create an {address.family} UDP socket for {where}") from exc
    try:
        await sock.connect((address.address, port))
    except OSError as exc:
        sock.close()
        raise _error(exc, f"cannot connect a UDP socket to {where}") from exc
    except BaseException:
        sock.close()
        raise
    return UDPSocket(sock, where)
