"""The RTP range probe against the real echo peer, in-process on loopback; `umprobe rtp` as a user runs it.

The peer (`serve_echo_peer`) runs in the test's nursery; the CLI runs as a subprocess (so `trio.run`, exit
codes and stdout are real). Loopback cannot lose packets, so loss and unreachable blocks are covered here
only by a port nothing answers (plain-echo) and by the judgement tests on built results; the namespace test
(tests/integration/test_rtp_netns.py) drops real packets.
"""

from __future__ import annotations

import ipaddress
import json
import socket
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path

import pytest
import trio

from umprobe.check import State
from umprobe.commands.rtp_cmd import (
    RtpThresholds,
    evaluate_rtp,
    render_map,
    render_rtp_json,
    render_rtp_text,
)
from umprobe.devcerts import DevCA
from umprobe.media.control import MAX_LINE, ControlSigner, new_nonce
from umprobe.net.tls import TLSClientConfig, make_server_context
from umprobe.peer.echo_peer import PeerConfig, RunningPeer, serve_echo_peer
from umprobe.peer.reflector import DropReason, PortCounters, SessionStats
from umprobe.probes import rtp as rtp_probe
from umprobe.probes.rtp import STATS_PORTS_PER_SESSION, RtpProbeSpec, estimate_seconds, probe_rtp
from umprobe.probes.rtp_result import PortResult, RtpReason, RtpResult, aggregate, merge_results

SECRET = b"rtp-probe-test-secret-0123456789"
RANGE = (26000, 26127)  # 64 even ports, below the ephemeral range (32768+) so no client socket holds one
HARD_CAP = 30  # seconds: no test may hang longer, whatever the code under test does

# `umprobe rtp` through the real `main()` (one-line errors, exit 3).
_CLI = "from umprobe.cli import main\nmain()\n"

JSON_KEYS = {
    "status",
    "exit_code",
    "summary",
    "problems",
    "mode",
    "authenticated",
    "target",
    "control_port",
    "reason",
    "detail",
    "range",
    "cycles",
    "cycles_per_sweep",
    "totals",
    "peer_dropped",
    "map",
    "blocks",
    "ports",
    "rtt_samples_seconds",
    "rtt_samples_count",
    "rtt_histogram_seconds",
}
PORT_KEYS = {
    "port",
    "state",
    "block",
    "sent",
    "received",
    "peer_rx",
    "peer_tx",
    "loss_forward_ratio",
    "loss_return_ratio",
    "loss_roundtrip_ratio",
    "rtt_p50_seconds",
    "rtt_max_seconds",
    "jitter_forward_seconds",
    "jitter_return_seconds",
    "reordered",
    "duplicates",
    "rtcp_reachable",
}
BLOCK_KEYS = {"label", "lo", "hi", "symbol", "measured", "reachable", "reachable_ratio", "in_use"}


def peer_config(**overrides: object) -> PeerConfig:
    base = PeerConfig(secret=SECRET, listen_host="127.0.0.1", rtp_range=RANGE)
    return replace(base, **overrides)  # type: ignore[arg-type]


@pytest.fixture
async def peer(nursery: trio.Nursery) -> AsyncIterator[RunningPeer]:
    running: RunningPeer = await nursery.start(partial(serve_echo_peer, peer_config()))
    yield running


def spec_for(peer: RunningPeer, **overrides: object) -> RtpProbeSpec:
    host, port = peer.control[0]
    base = RtpProbeSpec(
        host=host, port=port, secret=SECRET, rtp_range=RANGE, samples=8, packets=10, concurrency=4
    )
    return replace(base, **overrides)  # type: ignore[arg-type]


async def run_probe(spec: RtpProbeSpec, seconds: float = 10.0, cycle: int = 0) -> RtpResult:
    with trio.fail_after(HARD_CAP):
        return await probe_rtp(spec, deadline=trio.current_time() + seconds, cycle=cycle)


# ------------------------------------------------------------------------------------------ peer mode


async def test_every_port_reachable_with_exact_counts(peer: RunningPeer) -> None:
    spec = spec_for(peer)
    result = await run_probe(spec)
    assert result.reason is RtpReason.OK, result.detail
    assert result.authenticated and result.mode == "peer"
    assert [p.port for p in result.ports] == sorted(spec.ports_for_cycle(0))
    assert len(result.ports) == 8
    for p in result.ports:
        assert p.state == "reachable"
        assert (p.sent, p.received, p.peer_rx, p.peer_tx) == (10, 10, 10, 10), p
        assert (p.loss_forward, p.loss_return, p.loss_roundtrip) == (0.0, 0.0, 0.0)
        assert p.rtt_p50 is not None and p.rtt_max is not None
        assert 0 < p.rtt_p50 <= p.rtt_max < 1.0
        assert len(p.rtt_samples) == 10
        assert p.jitter_forward is not None and p.jitter_forward >= 0
        assert p.jitter_return is not None and p.jitter_return >= 0
        assert (p.reordered, p.duplicates, p.bad_replies, p.socket_errors) == (0, 0, 0, 0)
        assert p.rtcp_reachable is True
        assert (p.peer_rtcp_rx, p.peer_rtcp_tx) == (1, 1)
        lo, hi = map(int, p.block.split("-"))
        assert lo <= p.port <= hi
    t = result.totals
    assert (t.sent, t.received, t.peer_rx, t.peer_tx) == (80, 80, 80, 80)
    assert (t.loss_forward, t.loss_return) == (0.0, 0.0)
    assert t.state_counts["reachable"] == 8 and t.rtcp_answered == t.rtcp_tried == 8
    assert len(result.rtt_samples) == 80 and all(s > 0 for s in result.rtt_samples)
    sampled = [b for b in result.blocks if b.sampled]
    assert len(result.blocks) == 64 and len(sampled) == 8
    assert all(b.ratio == 1.0 and b.symbol == "#" for b in sampled)
    assert result.unreachable_blocks == () and result.partial_blocks == ()
    assert sum(result.peer_dropped.values()) == 0
    assert len(result.sessions) == 1 and result.peer_banner and result.peer_banner.startswith("umprobe-peer/")
    report = evaluate_rtp(result, RtpThresholds())
    assert report.state is State.OK, report


async def test_pacing_is_20ms_and_ports_run_concurrently(peer: RunningPeer) -> None:
    # 8 ports x 25 packets at concurrency 4: two rounds of 0.5 s bursts, so about 1 s, never 4 s (serial).
    spec = spec_for(peer, packets=25)
    start = trio.current_time()
    result = await run_probe(spec)
    elapsed = trio.current_time() - start
    assert result.reason is RtpReason.OK, result.detail
    assert 0.96 <= elapsed < 2.5, elapsed


async def test_port_held_on_the_peer_is_in_use_never_unreachable(peer: RunningPeer) -> None:
    spec = spec_for(peer)
    planned = spec.ports_for_cycle(0)
    rtp_taken, rtcp_taken = planned[2], planned[5]
    holders = []
    for port in (rtp_taken, rtcp_taken + 1):  # one RTP port, and another one's RTCP port
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("127.0.0.1", port))
        holders.append(sock)
    try:
        result = await run_probe(spec)
    finally:
        for sock in holders:
            sock.close()
    states = {p.port: p.state for p in result.ports}
    assert states[rtp_taken] == "in_use" and states[rtcp_taken] == "in_use"
    assert sum(1 for s in states.values() if s == "reachable") == 6
    assert "unreachable" not in states.values()
    assert result.totals.state_counts["in_use"] == 2
    in_use_blocks = [b for b in result.blocks if b.in_use]
    assert len(in_use_blocks) == 2 and all(b.symbol == "u" and not b.sampled for b in in_use_blocks)
    report = evaluate_rtp(result, RtpThresholds())
    assert report.state is State.OK, report
    assert "2 in use" in report.summary


async def test_wrong_secret_is_a_control_auth_failure(peer: RunningPeer) -> None:
    start = trio.current_time()
    result = await run_probe(spec_for(peer, secret=b"not-the-peer-secret-at-all"))
    assert result.reason is RtpReason.CONTROL_AUTH_FAILED, result.detail
    assert "secret" in result.detail
    assert result.ports == () and not result.success
    assert trio.current_time() - start < 2.0, "a rejected open must not wait for the deadline"
    assert peer.counters.auth_failures == 1
    assert evaluate_rtp(result, RtpThresholds()).state is State.UNKNOWN


async def test_a_client_outside_the_peers_allow_list_is_told_why(nursery: trio.Nursery) -> None:
    config = peer_config(allow=(ipaddress.ip_network("192.0.2.0/24"),))
    running: RunningPeer = await nursery.start(partial(serve_echo_peer, config))
    result = await run_probe(spec_for(running), seconds=3)
    assert result.reason is RtpReason.CONTROL_PROTOCOL_ERROR, result.detail
    assert "--allow" in result.detail and result.ports == ()


async def test_ipv6_and_an_explicit_media_host(nursery: trio.Nursery) -> None:
    running: RunningPeer = await nursery.start(
        partial(serve_echo_peer, peer_config(listen_host="::1", media_host="::1"))
    )
    result = await run_probe(spec_for(running, host="::1", media_host="::1", samples=4))
    assert result.reason is RtpReason.OK, result.detail
    assert result.address == result.media_address == "::1"
    assert [p.state for p in result.ports] == ["reachable"] * 4
    assert all(p.peer_rx == p.received == 10 for p in result.ports)


async def test_nothing_listening_is_control_connect_failed() -> None:
    with socket.socket() as holder:  # bound, never listening: connects are refused
        holder.bind(("127.0.0.1", 0))
        port = holder.getsockname()[1]
        spec = RtpProbeSpec(host="127.0.0.1", port=port, secret=SECRET, rtp_range=RANGE)
        result = await run_probe(spec, seconds=3)
    assert result.reason is RtpReason.CONTROL_CONNECT_FAILED, result.detail
    assert "refused" in result.detail


async def test_unknown_name_is_dns_error() -> None:
    spec = RtpProbeSpec(host="peer.umprobe-test.invalid", port=7900, secret=SECRET, rtp_range=RANGE)
    result = await run_probe(spec, seconds=3)
    assert result.reason is RtpReason.DNS_ERROR


async def _serve_lines(nursery: trio.Nursery, lines: bytes | None) -> int:
    """A TCP server that sends `lines` (None: nothing) and keeps the connection open."""

    async def handler(stream: trio.SocketStream) -> None:
        if lines is not None:
            await stream.send_all(lines)
        await trio.sleep_forever()

    listeners = await nursery.start(partial(trio.serve_tcp, handler, 0, host="127.0.0.1"))
    return int(listeners[0].socket.getsockname()[1])


async def test_a_non_peer_is_a_control_protocol_error(nursery: trio.Nursery) -> None:
    port = await _serve_lines(nursery, b"SSH-2.0-OpenSSH_9.2\r\n")
    result = await run_probe(RtpProbeSpec(host="127.0.0.1", port=port, secret=SECRET, rtp_range=RANGE))
    assert result.reason is RtpReason.CONTROL_PROTOCOL_ERROR, result.detail
    assert "hello" in result.detail


async def test_a_silent_server_is_a_control_timeout_at_the_deadline(nursery: trio.Nursery) -> None:
    port = await _serve_lines(nursery, None)
    start = trio.current_time()
    result = await run_probe(
        RtpProbeSpec(host="127.0.0.1", port=port, secret=SECRET, rtp_range=RANGE), seconds=1.0
    )
    assert result.reason is RtpReason.CONTROL_TIMEOUT, result.detail
    assert 0.9 < trio.current_time() - start < 1.5


async def test_the_deadline_leaves_later_ports_not_measured(peer: RunningPeer) -> None:
    # 8 ports x 1 s bursts one at a time cannot fit into 3 s: the probe stops in time and says so.
    spec = spec_for(peer, packets=50, concurrency=1)
    start = trio.current_time()
    result = await run_probe(spec, seconds=3.0)
    assert trio.current_time() - start < 3.0
    assert result.reason is RtpReason.OK, result.detail
    counts = result.totals.state_counts
    # Two bursts fit on an idle machine; a loaded one may finish only one before the deadline.
    assert counts["reachable"] in (1, 2) and counts["reachable"] + counts["not_measured"] == 8, counts
    assert all(p.sent == 50 and p.peer_rx == 50 for p in result.ports if p.state == "reachable")
    report = evaluate_rtp(result, RtpThresholds())
    assert report.state is State.WARNING and any("not measured" in p for p in report.problems)


async def test_control_channel_over_mutual_tls(nursery: trio.Nursery, tmp_path: Path) -> None:
    ca = DevCA.create("rtp test CA")
    ca_file = ca.write_ca(tmp_path, "ca")
    server_crt, server_key = ca.issue(["peer.test", "127.0.0.1"]).write(tmp_path, "server")
    client_crt, client_key = ca.issue(["probe.test"]).write(tmp_path, "client")
    ctx = make_server_context(
        cert_file=str(server_crt), key_file=str(server_key), ca_file=str(ca_file), require_client_cert=True
    )
    running: RunningPeer = await nursery.start(partial(serve_echo_peer, peer_config(control_tls=ctx)))
    good = TLSClientConfig(ca_file=str(ca_file), cert_file=str(client_crt), key_file=str(client_key))
    result = await run_probe(spec_for(running, tls=good, server_name="peer.test"))
    assert result.reason is RtpReason.OK, result.detail
    assert result.totals.state_counts["reachable"] == 8

    no_cert = TLSClientConfig(ca_file=str(ca_file))
    failed = await run_probe(spec_for(running, tls=no_cert, server_name="peer.test"), seconds=3)
    assert failed.reason is RtpReason.CONTROL_TLS_FAILED, failed.detail
    wrong_name = await run_probe(spec_for(running, tls=good, server_name="other.test"), seconds=3)
    assert wrong_name.reason is RtpReason.CONTROL_TLS_FAILED, wrong_name.detail


async def test_a_large_cycle_is_split_into_sessions(
    peer: RunningPeer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The peer takes at most 256 ports per session; pretend it is 16 so that K = 64 needs four sessions.
    monkeypatch.setattr(rtp_probe, "MAX_PORTS_PER_SESSION", 16)
    spec = spec_for(peer, samples=64, packets=3, concurrency=16, rtcp=False)
    assert spec.cycles_per_sweep() == 1
    result = await run_probe(spec, seconds=15)
    assert result.reason is RtpReason.OK, result.detail
    assert len(result.sessions) == 4 and len(set(result.sessions)) == 4
    assert result.totals.state_counts["reachable"] == 64
    assert all(b.symbol == "#" for b in result.blocks)
    assert all(p.rtcp_reachable is None and p.peer_rtcp_rx == 0 for p in result.ports)


def test_the_stats_answer_for_a_full_session_fits_one_control_line() -> None:
    # Contract with the peer: `stats` is one line of at most MAX_LINE bytes, so a session may not hold more
    # ports than that line can report. Worst case: six-digit counters, ten-digit drop counts.
    ports = {
        65534 - 2 * i: PortCounters(999_999, 999_999, 999_999, 999_999)
        for i in range(STATS_PORTS_PER_SESSION)
    }
    stats = SessionStats(ports=ports, dropped=dict.fromkeys(DropReason, 10**10 - 1))
    signer = ControlSigner(SECRET, new_nonce(), new_nonce(), role="peer")
    line = signer.seal({"type": "stats", **stats.as_message()})
    assert len(line) <= MAX_LINE + 1
    # ... and sessions are cut to that size however large the cycle.
    spec = RtpProbeSpec(host="h", port=1, secret=SECRET, samples=256, packets=1, concurrency=64)
    assert rtp_probe._session_size(spec) <= STATS_PORTS_PER_SESSION


def test_spec_validation_and_secret_not_in_repr() -> None:
    spec = RtpProbeSpec(host="h", port=1, secret=SECRET, rtp_range=RANGE)
    assert SECRET.decode() not in repr(spec)
    with pytest.raises(ValueError, match="16 bytes"):
        RtpProbeSpec(host="h", port=1, secret=b"short", rtp_range=RANGE)
    with pytest.raises(ValueError, match="1024"):
        RtpProbeSpec(host="h", port=1, secret=SECRET, rtp_range=(100, 200))
    with pytest.raises(ValueError, match="port list"):
        RtpProbeSpec(host="h", mode="plain-echo")
    plain = RtpProbeSpec(host="h", mode="plain-echo", ports=(7, 20001), rtp_range=(7, 20001))
    assert plain.blocks() == [(7, 20001)] and plain.cycles_per_sweep() == 1
    # The default cycle fits its estimate; the estimate grows with the work.
    assert estimate_seconds(RtpProbeSpec(host="h", port=1, secret=SECRET)) < 30
    assert estimate_seconds(RtpProbeSpec(host="h", port=1, secret=SECRET, samples=256)) > 60


# ------------------------------------------------------------------------------------------ plain echo


async def _udp_echo(nursery: trio.Nursery) -> int:
    sock = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
    await sock.bind(("127.0.0.1", 0))

    async def serve() -> None:
        with sock:
            while True:
                data, source = await sock.recvfrom(2048)
                await sock.sendto(data, source)

    nursery.start_soon(serve)
    return int(sock.getsockname()[1])


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_plain_echo_counts_echoes_unauthenticated(nursery: trio.Nursery) -> None:
    echo = await _udp_echo(nursery)
    silent = _free_udp_port()  # nothing listens: ICMP port unreachable, never an echo
    ports = (echo, silent)
    spec = RtpProbeSpec(
        host="127.0.0.1", mode="plain-echo", ports=ports, rtp_range=(min(ports), max(ports)), packets=20
    )
    result = await run_probe(spec, seconds=5)
    assert result.reason is RtpReason.OK and not result.authenticated and result.mode == "plain-echo"
    by_port = {p.port: p for p in result.ports}
    good, bad = by_port[echo], by_port[silent]
    assert good.state == "reachable" and (good.sent, good.received) == (20, 20)
    assert good.loss_roundtrip == 0.0 and good.rtt_p50 is not None and good.rtt_p50 > 0
    assert good.loss_forward is None and good.loss_return is None and good.jitter_forward is None
    assert good.peer_rx is None and good.rtcp_reachable is None
    assert bad.state == "unreachable" and bad.received == 0 and bad.socket_errors > 0
    report = evaluate_rtp(result, RtpThresholds())
    assert report.state is State.CRITICAL
    text = render_rtp_text(report, RtpThresholds())
    assert "UNAUTHENTICATED" in text.splitlines()[0]


@pytest.mark.lab
async def test_plain_echo_against_socat(lab_dir: Path) -> None:
    from tests.lab.proc import LabProcess, require_binary

    port = _free_udp_port()
    proc = LabProcess(
        "socat-udp-echo",
        [require_binary("socat"), "-T5", f"UDP-LISTEN:{port},bind=127.0.0.1,fork,reuseaddr", "PIPE"],
        log_dir=lab_dir,
    )
    proc.start()
    try:
        await trio.sleep(0.3)  # UDP has no connect to wait for: give socat a moment to bind
        spec = RtpProbeSpec(host="127.0.0.1", mode="plain-echo", ports=(port,), rtp_range=(port, port))
        result = await run_probe(spec, seconds=5)
    finally:
        proc.stop()
    (p,) = result.ports
    assert p.state == "reachable" and p.sent == 50 and p.received == 50, p
    assert p.duplicates == 0 and p.loss_roundtrip == 0.0


# ------------------------------------------------------------------------------------------ judgement


def _result(ports: list[PortResult], *, authenticated: bool = True) -> RtpResult:
    blocks = [(20000, 20999), (21000, 21999), (22000, 22999)]
    labelled, block_results, totals, samples = aggregate(ports, blocks)
    return RtpResult(
        target="peer",
        control_port=7900,
        address="192.0.2.1",
        media_address="192.0.2.1",
        mode="peer" if authenticated else "plain-echo",
        authenticated=authenticated,
        reason=RtpReason.OK,
        detail="",
        range_lo=20000,
        range_hi=22999,
        cycles=(0,),
        cycles_per_sweep=10,
        ports=labelled,
        blocks=block_results,
        totals=totals,
        rtt_samples=samples,
    )


def _up(
    port: int, sent: int = 100, rx: int = 100, tx: int | None = None, received: int | None = None
) -> PortResult:
    tx = rx if tx is None else tx
    received = tx if received is None else received
    return PortResult(
        port=port,
        state="reachable",
        sent=sent,
        received=received,
        peer_rx=rx,
        peer_tx=tx,
        loss_forward=(sent - rx) / sent,
        loss_return=(tx - received) / tx,
        loss_roundtrip=(sent - received) / sent,
        rtt_samples=(0.001,),
    )


def _down(port: int) -> PortResult:
    return PortResult(port=port, state="unreachable", sent=100, peer_rx=0, peer_tx=0, loss_roundtrip=1.0)


def test_judgement_blocks_and_loss_thresholds() -> None:
    t = RtpThresholds(warn_loss=1, crit_loss=5)
    ok = _result([_up(20000), _up(21000), _up(22000)])
    assert evaluate_rtp(ok, t).state is State.OK
    # A block with no port answering: CRITICAL; its loss does not count into the totals.
    dead = _result([_up(20000), _down(21000), _up(22000)])
    report = evaluate_rtp(dead, t)
    assert report.state is State.CRITICAL and "block 21000-21999 unreachable" in report.problems[0]
    assert dead.totals.loss_forward == 0.0
    # Partly reachable block: WARNING.
    partial_ = _result([_up(20000), _up(20500), _down(20600), _up(21000)])
    assert evaluate_rtp(partial_, t).state is State.WARNING
    # Forward loss 3 %: WARNING; return loss 6 %: CRITICAL; directions are told apart in the problems.
    fwd = _result([_up(20000, rx=97), _up(21000)])
    assert fwd.totals.loss_forward == pytest.approx(0.015)
    report = evaluate_rtp(fwd, t)
    assert report.state is State.WARNING and report.problems[0].startswith("forward loss 1.50%")
    ret = _result([_up(20000, tx=100, received=88), _up(21000)])
    report = evaluate_rtp(ret, t)
    assert report.state is State.CRITICAL and report.problems[0].startswith("return loss 6.00%")
    # Plain echo judges the round trip.
    plain = _result([_up(20000, received=90)], authenticated=False)
    assert evaluate_rtp(plain, t).problems[0].startswith("round-trip loss 10.00%")
    # Only in-use ports: nothing measured is UNKNOWN, not OK.
    idle = _result([PortResult(port=20000, state="in_use")])
    assert evaluate_rtp(idle, t).state is State.UNKNOWN


def test_map_and_json_rendering() -> None:
    result = _result([_up(20000), _down(21000), PortResult(port=22000, state="in_use")])
    assert render_map(result.blocks) == ["  20000-22999  #xu"]
    report = evaluate_rtp(result, RtpThresholds())
    data = json.loads(render_rtp_json(report, RtpThresholds()))
    assert set(data) >= JSON_KEYS
    assert data["map"] == "#xu" and data["exit_code"] == 2
    assert set(data["ports"][0]) >= PORT_KEYS and set(data["blocks"][0]) >= BLOCK_KEYS
    text = render_rtp_text(report, RtpThresholds())
    first = text.splitlines()[0]
    assert first.startswith("UMPROBE RTP CRITICAL - ") and " | 'loss_fwd'=" in first
    assert "'rtt_p50'=0.001000s" in first
    assert "MAP 20000-22999" in text and "PORT" in text


def test_merge_keeps_every_cycle() -> None:
    a = _result([_up(20000)])
    b = replace(_result([_down(21000)]), cycles=(1,))
    merged = merge_results([a, b], [(20000, 20999), (21000, 21999), (22000, 22999)])
    assert merged.cycles == (0, 1) and [p.port for p in merged.ports] == [20000, 21000]
    assert [blk.symbol for blk in merged.blocks] == ["#", "x", "."]


# ------------------------------------------------------------------------------------------ the CLI


@dataclass
class Completed:
    returncode: int
    stdout: str
    stderr: str


async def umprobe_rtp(*args: str) -> Completed:
    with trio.fail_after(HARD_CAP):
        proc = await trio.run_process(
            [sys.executable, "-c", _CLI, "rtp", *args], capture_stdout=True, capture_stderr=True, check=False
        )
    return Completed(proc.returncode, proc.stdout.decode(), proc.stderr.decode())


@pytest.fixture
def secret_file(tmp_path: Path) -> Path:
    path = tmp_path / "peer.secret"
    path.write_bytes(SECRET + b"\n")
    path.chmod(0o600)
    return path


def _common(peer: RunningPeer, secret_file: Path) -> list[str]:
    host, port = peer.control[0]
    return [
        f"{host}:{port}",
        "--secret-file",
        str(secret_file),
        "--range",
        f"{RANGE[0]}-{RANGE[1]}",
        "--samples",
        "8",
        "--packets",
        "10",
        "--concurrency",
        "4",
    ]


async def test_cli_ok_text_and_json(peer: RunningPeer, secret_file: Path) -> None:
    out = await umprobe_rtp(*_common(peer, secret_file), "--cycle", "3")
    assert out.returncode == 0, out.stdout + out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].startswith("UMPROBE RTP OK - 8 of 8 sampled ports reachable")
    assert "cycle 3 of 8" in lines[0] and "'loss_fwd'=0.000%;1;5;0;100" in lines[0]
    assert any(line.startswith("MAP 26000-26127") for line in lines)
    assert SECRET.decode() not in out.stdout + out.stderr

    out = await umprobe_rtp(*_common(peer, secret_file), "--json")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert set(data) >= JSON_KEYS
    assert data["status"] == "OK" and data["authenticated"] is True and data["mode"] == "peer"
    assert 0 <= data["cycles"][0] < data["cycles_per_sweep"] == 8
    assert len(data["ports"]) == 8 and all(set(p) >= PORT_KEYS for p in data["ports"])
    assert len(data["blocks"]) == 64 and len(data["map"]) == 64
    assert data["totals"]["ports_by_state"]["reachable"] == 8
    assert len(data["rtt_samples_seconds"]) == data["rtt_samples_count"] == 80
    assert data["rtt_histogram_seconds"]["+Inf"] == 80


async def test_cli_sweep_covers_the_range(peer: RunningPeer, secret_file: Path) -> None:
    args = _common(peer, secret_file)
    args[args.index("--packets") + 1] = "2"
    out = await umprobe_rtp(*args, "--sweep", "--no-rtcp", "--json")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["cycles"] == list(range(8)) and data["map"] == "#" * 64
    assert "8 cycles" in out.stderr


async def test_cli_wrong_secret_is_unknown_in_one_line(peer: RunningPeer, tmp_path: Path) -> None:
    wrong = tmp_path / "wrong.secret"
    wrong.write_text("this-is-not-the-secret\n")
    wrong.chmod(0o600)
    out = await umprobe_rtp(*_common(peer, wrong))
    assert out.returncode == 3 and out.stderr == ""
    assert out.stdout.count("\n") == 1 and out.stdout.startswith("UMPROBE RTP UNKNOWN - control_auth_failed")
    assert "Traceback" not in out.stderr


@pytest.mark.parametrize(
    ("content", "message"),
    [(None, "no such file"), (b"", "is empty"), (b"0123456789\n", "at least 16 are needed")],
)
async def test_cli_secret_file_errors(tmp_path: Path, content: bytes | None, message: str) -> None:
    path = tmp_path / "s"
    if content is not None:
        path.write_bytes(content)
    out = await umprobe_rtp("127.0.0.1:7900", "--secret-file", str(path))
    assert out.returncode == 3
    assert out.stderr.startswith("umprobe: error: ") and message in out.stderr
    assert out.stderr.count("\n") == 1 and out.stdout == ""


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["127.0.0.1:7900"], "--secret-file is required"),
        (["127.0.0.1", "--secret-file", "x"], "needs a port"),
        (["127.0.0.1:7900", "--secret-file", "x", "--range", "9-2"], "LO <= HI"),
        (["127.0.0.1:7900", "--secret-file", "x", "--cycle", "2", "--sweep"], "exclude each other"),
        (["127.0.0.1", "--plain-echo"], "--plain-echo needs --ports"),
        (["127.0.0.1", "--plain-echo", "--ports", "20000", "--secret-file", "x"], "unauthenticated"),
        (["127.0.0.1:7900", "--secret-file", "x", "--warn-loss", "9", "--crit-loss", "5"], "warn-loss"),
    ],
)
async def test_cli_usage_errors_exit_3(args: list[str], message: str) -> None:
    out = await umprobe_rtp(*args)
    assert out.returncode == 3, out
    assert message in out.stderr and out.stderr.count("\n") == 1


async def test_cli_plain_echo_is_labelled_and_judged(nursery: trio.Nursery) -> None:
    echo = await _udp_echo(nursery)
    out = await umprobe_rtp("127.0.0.1", "--plain-echo", "--ports", str(echo), "--packets", "10")
    assert out.returncode == 0, out.stdout + out.stderr
    first = out.stdout.splitlines()[0]
    assert "UNAUTHENTICATED" in first and "'loss_rt'=0.000%" in first
    silent = _free_udp_port()
    out = await umprobe_rtp("127.0.0.1", "--plain-echo", "--ports", f"{echo},{silent}", "--json")
    assert out.returncode == 2
    data = json.loads(out.stdout)
    assert data["authenticated"] is False and data["status"] == "CRITICAL"
