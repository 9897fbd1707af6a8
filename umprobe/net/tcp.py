"""TCP connect: one resolved address to a connected ``trio.SocketStream``.

One address, one attempt: no happy-eyeballs racing (that is what ``trio.open_tcp_stream`` does for a user
agent; a prober wants each address's own verdict, PROTOCOL.md §2). ``TCP_NODELAY`` is set because a SIP
request is one small write that must not wait for Nagle.

The ``OSError`` boundary for connecting is here: ``ECONNREFUSED`` becomes :class:`ConnectRefused`,
everything else :class:`ConnectError`. The socket is closed on every failure and on cancellation.
"""

from __future__ import annotations

import errno
import os
import socket

import trio

from umprobe.net.errors import ConnectError, ConnectRefused
from umprobe.net.resolve import ResolvedAddress

__all__ = ["format_hostport", "open_tcp"]


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
    where = format_hostport(address.address, port)
    af = socket.AF_INET if address.family == "ipv4" else socket.AF_INET6
    try:
        sock = trio.socket.socket(af, socket.SOCK_STREAM)
    except OSError as exc:
        await trio.lowlevel.checkpoint()
        raise ConnectError(
            f"cannot create an {address.family} socket for {where}: {_describe_oserror(exc)}"
        ) from exc
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        await sock.connect((address.address, port))
    except OSError as exc:
        sock.close()
        if exc.errno == errno.ECONNREFUSED:
            raise ConnectRefused(f"connection to {where} refused") from exc
        raise ConnectError(f"cannot connect to {where}: {_describe_oserror(exc)}") from exc
    except BaseException:
        # Cancelled (or a bug): trio leaves a half-connected socket in an unknown state; never leak it.
        sock.close()
        raise
    return trio.SocketStream(sock)
