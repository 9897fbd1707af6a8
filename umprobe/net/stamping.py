"""Turning on kernel arrival timestamps for a UDP socket (the I/O half of `umprobe.media.rxstamp`).

The RTP prober (T4) and the echo peer (T2) both use it; where the option or `recvmsg` is missing (Windows,
macOS, other Linux architectures) the answer is False and the caller reads its own clock after the receive.
"""

from __future__ import annotations

import trio

from umprobe.media import rxstamp

__all__ = ["stamp_arrivals"]


def stamp_arrivals(sock: trio.socket.SocketType) -> bool:
    """Ask the kernel to stamp each datagram's arrival on `sock`; True if it will."""
    option = rxstamp.SO_TIMESTAMPNS
    if option is None or not hasattr(sock, "recvmsg"):
        return False
    try:
        sock.setsockopt(rxstamp.SOL_SOCKET, option, 1)
    except OSError:
        return False
    return True
