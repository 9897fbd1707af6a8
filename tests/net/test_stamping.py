"""Kernel stamps for the SIP probe's TCP connection (umprobe.net.stamping, LeanSocketStream.arrived_at).

bench/timing.py holds the reported phases against tshark's packet stamps; these tests check the parts one by
one: the handshake time from TCP_INFO, the arrival stamp of each receive, the process-wide keeper socket
that stops Linux from switching stamping off between two probes, and the probe's fallbacks to its own clock.
"""

from __future__ import annotations

import os
import socket
import struct
import subprocess
import sys
import time

import pytest
import trio

from tests.conftest import SIPP_SPECS
from tests.lab.sipp import SippServers
from umprobe.net import stamping
from umprobe.net.resolve import ResolvedAddress
from umprobe.net.tcp import open_lean_tcp
from umprobe.probes.sip_options import SipProbeSpec, probe

LINUX = sys.platform.startswith("linux")


def _tcp_info(rtt_us: int, total_retrans: int) -> bytes:
    info = bytearray(104)
    struct.pack_into("@I", info, 68, rtt_us)
    struct.pack_into("@I", info, 100, total_retrans)
    return bytes(info)


class _FakeSocket:
    def __init__(self, info: bytes | OSError) -> None:
        self._info = info

    def getsockopt(self, level: int, option: int, size: int) -> bytes:
        assert (level, option, size) == (socket.IPPROTO_TCP, getattr(socket, "TCP_INFO", -1), 104)
        if isinstance(self._info, OSError):
            raise self._info
        return self._info


@pytest.mark.parametrize(
    ("info", "expected"),
    [
        (_tcp_info(1234, 0), 0.001234),
        (_tcp_info(0, 0), None),  # no sample
        (_tcp_info(1234, 1), None),  # the SYN was sent again: the sample is the last try's
        (b"\x00" * 40, None),  # a shorter struct than we read from
        (OSError(95, "not supported"), None),
    ],
)
def test_syn_rtt_reads_tcp_info(info: bytes | OSError, expected: float | None) -> None:
    # Elsewhere TCP_INFO is not read at all (its layout is Linux's): no handshake time, ever.
    assert stamping.syn_rtt(_FakeSocket(info)) == (expected if LINUX else None)  # type: ignore[arg-type]


async def _listener() -> tuple[trio.SocketListener, int]:
    listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
    return listener, listener.socket.getsockname()[1]


async def test_connection_gets_handshake_time_and_arrival_stamps() -> None:
    """On Linux; elsewhere there are neither, and the probe reads its own clock."""
    with trio.fail_after(10):
        listener, port = await _listener()
        async with listener:
            for _ in range(20):  # one connection after another: stamping must not lapse between them
                before = trio.current_time()
                client = await open_lean_tcp(ResolvedAddress("127.0.0.1", "ipv4"), port)
                connected = trio.current_time()
                server = await listener.accept()
                try:
                    await server.send_all(b"hello")
                    await trio.sleep(0.02)  # the segment waits in the socket buffer
                    received = trio.current_time()
                    assert await client.receive_some() == b"hello"
                    if not LINUX:
                        assert (client.syn_rtt, client.arrived_at) == (None, None)
                        continue
                    assert client.syn_rtt is not None
                    assert 0 < client.syn_rtt <= connected - before
                    assert client.arrived_at is not None
                    # the stamp is the arrival, before the process looked, not when it read
                    assert connected <= client.arrived_at <= received
                finally:
                    await server.aclose()
                    await client.aclose()
        # one keeper for the process, however many connections
        assert len(stamping.kept_sockets()) == (1 if LINUX else 0)


async def test_unstamped_stream_has_no_arrival() -> None:
    with trio.fail_after(10):
        listener, port = await _listener()
        async with listener:
            client = await open_lean_tcp(ResolvedAddress("127.0.0.1", "ipv4"), port)
            client._stamped = False  # what a platform without stamps gets
            server = await listener.accept()
            await server.send_all(b"x")
            assert await client.receive_some() == b"x"
            assert client.arrived_at is None
            await server.aclose()
            await client.aclose()


def test_a_stamp_from_before_a_clock_step_is_not_used(monkeypatch: pytest.MonkeyPatch) -> None:
    from umprobe.net import tcp

    async def main() -> None:
        now = time.time()
        assert tcp._trio_time_of(None) is None
        assert tcp._trio_time_of(now + 5) is None  # in the future: the clock went back
        assert tcp._trio_time_of(now - 120) is None  # two minutes old: the clock went forward
        converted = tcp._trio_time_of(now - 0.5)
        assert converted is not None
        assert abs((trio.current_time() - converted) - 0.5) < 0.05

    trio.run(main)


@pytest.mark.lab
async def test_probe_phases_end_at_kernel_stamps_against_a_delayed_sipp(sipp_servers: SippServers) -> None:
    """SIPp answering after its `-d` pause: the SIP phase is at least that pause (a stamp is used only when it
    lies between the request and our read), and the connect phase is below the run's total."""
    host, port = sipp_servers["delayed200"]
    delay = next(spec.delay_ms for spec in SIPP_SPECS if spec.name == "delayed200") / 1000
    spec = SipProbeSpec(host=host, port=port)
    with trio.fail_after(30):
        for _ in range(3):
            (result,) = await probe(spec, deadline=trio.current_time() + 10)
            assert result.success, result.detail
            t = result.timings
            assert t.connect is not None and t.sip is not None and t.total is not None
            assert 0 < t.connect < t.total
            assert delay <= t.sip < t.total


def test_the_keeper_is_the_only_socket_kept() -> None:
    from tests.lab.hostile import socket_inodes

    probe_socket = socket.socket()
    try:
        assert stamping.stamp_arrivals(probe_socket) == LINUX
        kept = stamping.kept_sockets()
        assert len(kept) == (1 if LINUX else 0)
        inodes = {f"socket:[{os.fstat(s.fileno()).st_ino}]" for s in kept}
        assert not inodes & socket_inodes()  # leak checks do not count it
        assert f"socket:[{os.fstat(probe_socket.fileno()).st_ino}]" in socket_inodes()
    finally:
        probe_socket.close()


def test_the_keeper_is_closed_at_exit_without_a_warning() -> None:
    code = (
        "import socket\n"
        "from umprobe.net import stamping\n"
        "s = socket.socket()\n"
        "print(stamping.stamp_arrivals(s), len(stamping.kept_sockets()))\n"
        "s.close()\n"
    )
    done = subprocess.run(
        [sys.executable, "-W", "error", "-X", "dev", "-c", code], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == (["True", "1"] if LINUX else ["False", "0"])
    assert "unclosed" not in done.stderr and "ResourceWarning" not in done.stderr, done.stderr
