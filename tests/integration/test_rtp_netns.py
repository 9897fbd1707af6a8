"""The RTP range probe across a real (virtual) network: the echo peer in a namespace behind a veth pair,
nftables inside the namespace dropping one sub-range of UDP ports and randomly dropping 5 % on another.

    test host  198.18.x.1  <--veth-->  198.18.x.2  namespace: `umprobe peer` + nftables

The range 20000-23999 holds 2,000 even ports in 64 blocks of 31-32 even ports each. Cycle 0 with K = 128
samples exactly two ports per block (the sampler's first rounds visit every block once), so every block is
judged, and the 24 lossy blocks hold 48 sampled ports x 50 packets = 2,400 packets: at 5 % the standard
error is about 0.45 points, so the ±2-point check has a margin of over four sigma.

Two runs tell the directions apart: with the random drop in the namespace's *input* hook the loss is
forward (the prober sent, the peer never counted it); in its *output* hook (`udp sport ...`) the peer counted
and answered but the answer vanished: return loss. The fully dropped sub-range is in the input hook both
times and must be exactly the blocks reported unreachable.
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio

from tests.lab.netns import NetNamespace, sweep_stale_namespaces, udp_loss_ruleset
from tests.lab.proc import LabError, LabProcess
from umprobe.check import State
from umprobe.commands.rtp_cmd import RtpThresholds, evaluate_rtp
from umprobe.media import sampling
from umprobe.probes.rtp import RtpProbeSpec, probe_rtp
from umprobe.probes.rtp_result import PortResult, RtpResult

pytestmark = pytest.mark.lab

SECRET = b"netns-rtp-lab-secret-0123456789abcdef"
RANGE = (20000, 23999)
BLOCKS = sampling.blocks(*RANGE)
DROPPED_BLOCKS = range(8, 11)  # blocks 8-10: firewalled completely
LOSSY_BLOCKS = range(32, 56)  # blocks 32-55: 5 % random loss
DROPPED = (BLOCKS[DROPPED_BLOCKS[0]].lo, BLOCKS[DROPPED_BLOCKS[-1]].hi)
LOSSY = (BLOCKS[LOSSY_BLOCKS[0]].lo, BLOCKS[LOSSY_BLOCKS[-1]].hi)
CONTROL_PORT = 7900
SAMPLES, PACKETS, CONCURRENCY = 128, 50, 16  # 800 packets/s: the peer is started with room for that
PERCENT = 5
TOLERANCE = 0.02  # ±2 points

# `umprobe rtp` and `umprobe peer` run through the real CLI entry point (options: docs/rtp.md).
_CLI_RTP = "from umprobe.cli import main\nmain()\n"


def _peer_argv(host: str, secret_file: Path, rate: int) -> list[str]:
    options = [
        "--listen",
        f"{host}:{CONTROL_PORT}",
        "--secret-file",
        str(secret_file),
        "--rtp-range",
        f"{RANGE[0]}-{RANGE[1]}",
        "--rate-per-source",
        str(rate),
        "--rate-global",
        str(2 * rate),
    ]
    return [sys.executable, "-m", "umprobe.cli", "peer", *options]


@dataclass
class RtpLab:
    ns: NetNamespace
    peer: LabProcess
    secret_file: Path

    @property
    def peer_ip(self) -> str:
        assert self.ns.address is not None
        return self.ns.address.ns_ip


@pytest.fixture(scope="module")
def rtp_lab(lab_dir: Path) -> Iterator[RtpLab]:
    """A namespace running `umprobe peer`; the peer is stopped and the namespace deleted, also on failure."""
    with contextlib.ExitStack() as cleanup:
        try:
            sweep_stale_namespaces()
            ns = NetNamespace(log_dir=lab_dir)
            cleanup.callback(ns.delete)
            ns.create()
            assert ns.address is not None
            secret_file = lab_dir / "rtp-netns.secret"
            secret_file.write_bytes(SECRET + b"\n")
            secret_file.chmod(0o600)
            peer = LabProcess(
                "umprobe-peer-netns",
                ns.exec_argv(_peer_argv(ns.address.ns_ip, secret_file, rate=4000)),
                log_dir=lab_dir,
                ready=[(ns.address.ns_ip, CONTROL_PORT)],
                cwd=Path(__file__).resolve().parents[2],
            )
            cleanup.callback(peer.stop)  # runs before ns.delete: last in, first out
            peer.start()
        except LabError as exc:
            pytest.fail(str(exc), pytrace=False)
        yield RtpLab(ns, peer, secret_file)
        if not peer.is_alive():
            pytest.fail(f"the echo peer died during the tests\n{peer.describe(40)}", pytrace=False)


async def _measure(lab: RtpLab) -> tuple[RtpResult, float]:
    spec = RtpProbeSpec(
        host=lab.peer_ip,
        port=CONTROL_PORT,
        secret=SECRET,
        rtp_range=RANGE,
        samples=SAMPLES,
        packets=PACKETS,
        concurrency=CONCURRENCY,
    )
    start = trio.current_time()
    with trio.fail_after(60):
        result = await probe_rtp(spec, deadline=start + 40, cycle=0)
    return result, trio.current_time() - start


@dataclass(frozen=True)
class Loss:
    ports: int
    sent: int
    peer_rx: int
    peer_tx: int
    received: int

    @property
    def forward(self) -> float:
        return (self.sent - self.peer_rx) / self.sent

    @property
    def back(self) -> float:
        return (self.peer_tx - self.received) / self.peer_tx

    @property
    def unanswered(self) -> float:
        return (self.peer_rx - self.peer_tx) / self.peer_rx

    @property
    def roundtrip(self) -> float:
        return (self.sent - self.received) / self.sent

    def __str__(self) -> str:
        return (
            f"{self.ports} ports, sent {self.sent}, peer rx {self.peer_rx}, peer tx {self.peer_tx}, "
            f"received {self.received}: forward {self.forward:.2%}, return {self.back:.2%}, "
            f"unanswered {self.unanswered:.2%}"
        )


def _loss(ports: Sequence[PortResult]) -> Loss:
    assert all(p.peer_rx is not None and p.peer_tx is not None for p in ports)
    return Loss(
        ports=len(ports),
        sent=sum(p.sent for p in ports),
        peer_rx=sum(p.peer_rx or 0 for p in ports),
        peer_tx=sum(p.peer_tx or 0 for p in ports),
        received=sum(p.received for p in ports),
    )


def _in(port: int, span: tuple[int, int]) -> bool:
    return span[0] <= port <= span[1]


def _check_blocks(result: RtpResult) -> tuple[Loss, Loss]:
    """Exactly the dropped blocks unreachable, everything else reachable; (lossy, clean) loss figures."""
    assert result.success, f"{result.reason}: {result.detail}"
    assert len(result.blocks) == 64 and len(result.ports) == SAMPLES
    assert all(b.measured == 2 for b in result.blocks), [b.measured for b in result.blocks]
    unreachable = [b.index for b in result.blocks if b.symbol == "x"]
    assert unreachable == list(DROPPED_BLOCKS), result.blocks
    assert all(b.symbol == "#" for b in result.blocks if b.index not in DROPPED_BLOCKS)
    for p in result.ports:
        assert p.state == ("unreachable" if _in(p.port, DROPPED) else "reachable"), p
    dropped = [p for p in result.ports if _in(p.port, DROPPED)]
    assert all(p.sent == PACKETS and p.peer_rx == 0 and p.received == 0 for p in dropped)
    assert result.peer_dropped.get("rate", 0) == 0, result.peer_dropped
    lossy = _loss([p for p in result.ports if _in(p.port, LOSSY)])
    clean = _loss([p for p in result.ports if p.state == "reachable" and not _in(p.port, LOSSY)])
    assert lossy.ports == 2 * len(LOSSY_BLOCKS) and lossy.sent >= 2000
    assert evaluate_rtp(result, RtpThresholds()).state is State.CRITICAL  # the dropped blocks
    return lossy, clean


def _report(what: str, result: RtpResult, lossy: Loss, clean: Loss, seconds: float) -> None:
    rtt = result.totals.rtt_p50 or 0.0
    print(f"\n[rtp netns] {what}: {seconds:.1f} s; lossy blocks: {lossy}; clean blocks: {clean}")
    print(f"[rtp netns] {what}: {len(result.sessions)} sessions, rtt p50 {rtt * 1e3:.2f} ms")


def _rules(lab: RtpLab, **lossy: tuple[int, int]) -> str:
    return udp_loss_ruleset(device=lab.ns.ns_if, drop=DROPPED, percent=PERCENT, **lossy)


async def test_forward_loss_from_an_input_rule(rtp_lab: RtpLab) -> None:
    rtp_lab.ns.load_nft(_rules(rtp_lab, lossy_input=LOSSY))
    result, seconds = await _measure(rtp_lab)
    lossy, clean = _check_blocks(result)
    _report("input rule", result, lossy, clean, seconds)
    assert abs(lossy.forward - PERCENT / 100) <= TOLERANCE, lossy
    assert lossy.back <= 0.005 and lossy.unanswered == 0, lossy
    assert clean.forward <= 0.002 and clean.back <= 0.002 and clean.unanswered == 0, clean
    assert seconds < 30


async def test_return_loss_from_an_egress_rule(rtp_lab: RtpLab) -> None:
    # Dropped after the peer's send succeeded (netdev egress hook on the namespace's veth): loss on the
    # path back, which only the peer's tx counter against what we received can show.
    rtp_lab.ns.load_nft(_rules(rtp_lab, lossy_egress=LOSSY))
    result, seconds = await _measure(rtp_lab)
    lossy, clean = _check_blocks(result)
    _report("egress rule", result, lossy, clean, seconds)
    assert lossy.forward <= 0.005 and lossy.unanswered == 0, lossy
    assert abs(lossy.back - PERCENT / 100) <= TOLERANCE, lossy
    assert clean.forward <= 0.002 and clean.back <= 0.002 and clean.unanswered == 0, clean
    assert seconds < 30


async def test_an_output_rule_on_the_peer_host_is_unanswered_not_return_loss(rtp_lab: RtpLab) -> None:
    # In the peer's own output hook the kernel refuses the send (EPERM): the peer counted the request (rx)
    # but never sent the answer (no tx). That is neither forward nor return loss; it is reported apart, as
    # "unanswered by the peer" (its rate limit looks the same), and still counts in the round trip.
    rtp_lab.ns.load_nft(_rules(rtp_lab, lossy_output=LOSSY))
    result, seconds = await _measure(rtp_lab)
    lossy, clean = _check_blocks(result)
    _report("output rule", result, lossy, clean, seconds)
    assert lossy.forward <= 0.005 and lossy.back <= 0.005, lossy
    assert abs(lossy.unanswered - PERCENT / 100) <= TOLERANCE, lossy
    assert abs(lossy.roundtrip - PERCENT / 100) <= TOLERANCE, lossy
    assert clean.forward <= 0.002 and clean.back <= 0.002 and clean.unanswered == 0, clean


async def test_cli_map_shows_the_dropped_blocks(rtp_lab: RtpLab) -> None:
    rtp_lab.ns.load_nft(_rules(rtp_lab))
    argv = [
        sys.executable,
        "-c",
        _CLI_RTP,
        "rtp",
        f"{rtp_lab.peer_ip}:{CONTROL_PORT}",
        "--secret-file",
        str(rtp_lab.secret_file),
        "--range",
        f"{RANGE[0]}-{RANGE[1]}",
        "--samples",
        "64",
        "--packets",
        "10",
        "--concurrency",
        "16",
        "--cycle",
        "0",
    ]
    started = time.monotonic()
    with trio.fail_after(60):
        text = await trio.run_process(argv, capture_stdout=True, capture_stderr=True, check=False)
        js = await trio.run_process([*argv, "--json"], capture_stdout=True, capture_stderr=True, check=False)
    assert text.returncode == 2, text.stdout.decode() + text.stderr.decode()
    lines = text.stdout.decode().splitlines()
    first = lines[0]
    assert first.startswith("UMPROBE RTP CRITICAL - 61 of 64 sampled ports reachable"), first
    for index in DROPPED_BLOCKS:
        assert f"block {BLOCKS[index].label} unreachable" in first
    map_rows = lines[lines.index(next(x for x in lines if x.startswith("MAP "))) + 1 :][:4]
    assert "".join(row.split()[-1] for row in map_rows) == "#" * 8 + "xxx" + "#" * 53
    data = json.loads(js.stdout)
    assert js.returncode == 2 and data["map"] == "#" * 8 + "xxx" + "#" * 53
    assert time.monotonic() - started < 30
