"""Kernel timestamps for probe sockets (the I/O half of `umprobe.media.rxstamp`).

`stamp_arrivals` turns on arrival stamps for a UDP socket (the RTP prober and the echo peer) or a TCP
socket (the SIP probe's connection: the arrival of the segment that completes the final response). Where
the option or `recvmsg` is missing (Windows, macOS, other Linux architectures) the answer is False and the
caller reads its own clock after the receive.

Linux turns packet stamping on for the whole host only while at least one socket asks for it, and turns it
on again *lazily* (a deferred static-key switch) after the last such socket closed. A prober that opens and
closes one stamped connection at a time would flip it off and on around every probe, and packets arriving
in that window come without a stamp (measured on loopback: 12 to 15 % of responses unstamped). So the first
call also opens one small UDP socket that asks for stamps and is kept for the life of the process
(`_KEEPER`): one file descriptor, never bound, never read.

`syn_rtt` reads the kernel's own measure of a TCP handshake (`TCP_INFO`): after `connect()` the smoothed
RTT holds exactly one sample, SYN to SYN-ACK, taken in the kernel when the SYN-ACK was processed, so it
does not include the time the process took to wake up.
"""

from __future__ import annotations

import atexit
import socket
import struct
import sys
from typing import Final

import trio

from umprobe.media import rxstamp

__all__ = ["kept_sockets", "stamp_arrivals", "syn_rtt"]

_KEEPER: list[socket.socket] = []

# struct tcp_info (linux/tcp.h): 8 one-byte fields, then 32-bit ones; tcpi_rtt (microseconds) is the 16th
# of those (offset 68) and tcpi_total_retrans the 24th (offset 100).
_TCP_INFO_SIZE: Final = 104
_TCPI_RTT: Final = struct.Struct("@I")
_TCPI_RTT_OFFSET: Final = 68
_TCPI_TOTAL_RETRANS_OFFSET: Final = 100
_LINUX: Final = sys.platform.startswith("linux") and hasattr(socket, "TCP_INFO")


def _keep_stamping_on(option: int) -> None:
    if _KEEPER:
        return
    try:
        keeper = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    except OSError:
        return
    try:
        keeper.setsockopt(rxstamp.SOL_SOCKET, option, 1)
    except OSError:
        keeper.close()
        return
    _KEEPER.append(keeper)
    atexit.register(keeper.close)  # closed, not collected, at exit: no "unclosed socket" warning


def kept_sockets() -> tuple[socket.socket, ...]:
    """The sockets this module keeps open for the life of the process (the keeper, once made): what a
    check for leaked sockets must not count."""
    return tuple(_KEEPER)


def stamp_arrivals(sock: trio.socket.SocketType | socket.socket) -> bool:
    """Ask the kernel to stamp each arrival on `sock` (a trio or stdlib socket); True if it will."""
    option = rxstamp.SO_TIMESTAMPNS
    if option is None or not hasattr(sock, "recvmsg"):
        return False
    try:
        sock.setsockopt(rxstamp.SOL_SOCKET, option, 1)
    except OSError:
        return False
    _keep_stamping_on(option)
    return True


def syn_rtt(sock: socket.socket) -> float | None:
    """The SYN to SYN-ACK round trip (seconds) the kernel measured for the connected TCP socket `sock`; None
    when there is none to trust: not Linux, an error, no sample, or a retransmitted SYN (the sample would
    then be the last try's, not the time the handshake took)."""
    if not _LINUX:
        return None
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, _TCP_INFO_SIZE)
    except OSError:
        return None
    if len(info) < _TCP_INFO_SIZE:
        return None
    rtt = int(_TCPI_RTT.unpack_from(info, _TCPI_RTT_OFFSET)[0])
    retransmitted = int(_TCPI_RTT.unpack_from(info, _TCPI_TOTAL_RETRANS_OFFSET)[0])
    if rtt == 0 or retransmitted:
        return None
    return rtt / 1e6
