"""Kernel arrival stamps (umprobe.media.rxstamp) on both ends of the RTP probe, and the probe's port pacing.

bench/rtp.py found that user-space stamps measured socket queueing as path delay (~1.6 ms "RTT" on a veth
pair whose wire RTT is 5 us) and that ports started in step sent their packets in bursts. These pin the
fixes: T2 and T4 are the kernel's arrival stamps on Linux, and ports start 20 ms / concurrency apart.
"""

from __future__ import annotations

import socket
import struct
import sys
import time
from dataclasses import replace

import trio

from tests.peer.helpers import SECRET, media_packet, running_peer
from umprobe.media import rxstamp
from umprobe.media.ntp import ntp_from_unix
from umprobe.media.packet import decode_media, session_key
from umprobe.peer.reflector import Reflector
from umprobe.probes import rtp as rtp_probe
from umprobe.probes.rtp import RtpProbeSpec, probe_rtp

T0 = 1_700_000_000.0
KEY = session_key(SECRET, "a" * 32, "b" * 32)
SSID = 4242
CLIENT = "192.0.2.10"
P = 20000


def test_the_option_is_known_on_linux_x86_and_arm() -> None:
    import platform

    if sys.platform.startswith("linux") and platform.machine() in ("x86_64", "aarch64"):
        assert rxstamp.SO_TIMESTAMPNS == 35
    else:
        assert rxstamp.unix_from_ancillary([(1, 35, struct.pack("@ll", 1, 2))]) is None


def test_ancillary_timespec_is_read_and_other_messages_ignored() -> None:
    if rxstamp.SO_TIMESTAMPNS is None:
        assert rxstamp.unix_from_ancillary([]) is None
        return
    stamp = struct.pack("@ll", 1_700_000_123, 456_000_000)
    assert (
        rxstamp.unix_from_ancillary([(rxstamp.SOL_SOCKET, rxstamp.SO_TIMESTAMPNS, stamp)])
        == 1_700_000_123.456
    )
    assert rxstamp.unix_from_ancillary([(0, 8, b"\x00" * 16)]) is None  # e.g. IP_TTL: not ours
    assert rxstamp.unix_from_ancillary([(rxstamp.SOL_SOCKET, rxstamp.SO_TIMESTAMPNS, b"\x01")]) is None
    bad = struct.pack("@ll", 1_700_000_123, 2_000_000_000)
    assert rxstamp.unix_from_ancillary([(rxstamp.SOL_SOCKET, rxstamp.SO_TIMESTAMPNS, bad)]) is None


def test_a_real_stamp_is_the_arrival_not_the_receive_call() -> None:
    option = rxstamp.SO_TIMESTAMPNS
    with (
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as rx,
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx,
    ):
        rx.bind(("127.0.0.1", 0))
        if option is None:  # not Linux: the probe and the peer read their clocks after the receive
            assert rxstamp.unix_from_ancillary([]) is None
            return
        rx.setsockopt(rxstamp.SOL_SOCKET, option, 1)
        before = time.time()
        tx.sendto(b"x", rx.getsockname())
        time.sleep(0.05)  # the datagram waits in the socket, as it does while a busy process serves others
        receive_started = time.time()
        data, ancdata, _flags, _address = rx.recvmsg(64, rxstamp.ANCILLARY_SIZE)
    assert data == b"x"
    stamp = rxstamp.unix_from_ancillary(ancdata)
    assert stamp is not None
    assert before <= stamp < receive_started - 0.04, (before, stamp, receive_started)


def test_the_reflector_stamps_t2_with_the_kernel_arrival_when_given() -> None:
    r = Reflector(now=T0)
    r.add_session("s", key=KEY, ssid=SSID, client=CLIENT, rtp_ports=[P], rtcp=False, now=T0)
    reply = r.handle(media_packet(KEY, SSID, 1, t1=T0 - 0.01), (CLIENT, 40000), P, T0, received=T0 - 0.003)
    assert reply is not None
    block = decode_media(KEY, reply)[1]
    assert block.receive_timestamp == ntp_from_unix(T0 - 0.003)  # T2: when it arrived
    assert block.timestamp == ntp_from_unix(T0)  # T3: when it was answered; T3 - T2 is the turnaround


async def test_ports_start_20ms_over_concurrency_apart_and_rtt_excludes_the_peer() -> None:
    starts: list[float] = []
    original = rtp_probe._measure_port

    async def recording(*args: object, **kwargs: object) -> object:
        starts.append(trio.current_time())
        return await original(*args, **kwargs)  # type: ignore[arg-type]

    async with running_peer(rtp_range=(26200, 26327)) as peer:
        host, port = peer.control[0]
        spec = RtpProbeSpec(
            host=host, port=port, secret=SECRET, rtp_range=(26200, 26327), samples=8, packets=3, concurrency=4
        )
        rtp_probe._measure_port = recording  # type: ignore[assignment]
        try:
            with trio.fail_after(30):
                result = await probe_rtp(replace(spec), deadline=trio.current_time() + 10, cycle=0)
        finally:
            rtp_probe._measure_port = original  # type: ignore[assignment]
    assert result.success, result.detail
    assert len(starts) == 8
    # Port i is scheduled no earlier than port 0's start + i x 20 ms / 4 (trio.sleep_until never wakes early);
    # port 0 itself may run a scheduler turn late, hence the small allowance. In step, all four would start
    # within a millisecond.
    late = [i for i, t in enumerate(starts) if t - starts[0] < i * 0.005 - 0.003]
    assert not late, [round(t - starts[0], 4) for t in starts]
    assert all(p.received == 3 and p.rtt_p50 is not None and p.rtt_p50 > 0 for p in result.ports)
