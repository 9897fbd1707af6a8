"""Free loopback TCP ports for the lab peers.

A port comes from the kernel (bind to port 0, read it, close) and must also be free on ::1, so one number
can serve a listener on either family. The allocator remembers what it handed out, so two peers in one test
session never get the same port even though each probe socket is closed before the peer binds it.

The kernel may still hand a returned port to someone else before our peer binds it (a narrow race); the
peers' start-up therefore reports "address already in use" clearly, and the fixtures retry with new ports.
"""

from __future__ import annotations

import errno
import socket
import threading

__all__ = ["PortAllocator", "allocate_port", "hold_closed_port"]


class PortAllocator:
    """Hands out distinct TCP ports that were free on 127.0.0.1 and ::1 when allocated."""

    def __init__(self) -> None:
        self._handed_out: set[int] = set()
        self._lock = threading.Lock()

    def allocate(self) -> int:
        with self._lock:
            for _ in range(200):
                port = _probe_free_port()
                if port is not None and port not in self._handed_out:
                    self._handed_out.add(port)
                    return port
        raise RuntimeError("could not find a free loopback TCP port in 200 tries")

    def allocate_many(self, count: int) -> list[int]:
        return [self.allocate() for _ in range(count)]


def _probe_free_port() -> int | None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s4:
        s4.bind(("127.0.0.1", 0))
        port: int = s4.getsockname()[1]
        # The same number must be free on ::1 too; keep the v4 socket bound while checking.
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s6:
            s6.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                s6.bind(("::1", port))
            except OSError as exc:
                if exc.errno in (errno.EADDRINUSE, errno.EADDRNOTAVAIL):
                    return None
                raise
    return port


_SESSION_ALLOCATOR = PortAllocator()


def allocate_port() -> int:
    """A port from the session-wide allocator."""
    return _SESSION_ALLOCATOR.allocate()


def hold_closed_port(host: str = "127.0.0.1") -> socket.socket:
    """A socket bound to a fresh port but never listening: connects to it are refused (RST), and nobody
    else can take the port while the caller keeps the socket open."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.bind((host, 0))
    except BaseException:
        sock.close()
        raise
    return sock
