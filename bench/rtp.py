"""Benchmark 4, RTP: sweep speed, loss estimates against nftables counters, RTT and jitter against the wire.

`umprobe peer` runs in a network namespace behind a veth pair (tests/lab/netns.py, 198.18.0.0/15) and this
process measures it with umprobe's own RTP probe (`umprobe.probes.rtp.probe_rtp`, what `umprobe rtp` and
the daemon run), exactly as tests/integration/test_rtp_netns.py does:

(a) sweep: every even port of 1024-65535 (32,256 ports), cycle after cycle as `umprobe rtp --sweep` does,
    at a bounded rate (`--concurrency` ports at a time, `--packets` per port 20 ms apart, one RTCP each);
    wall time and packets/s, with nftables counters in the namespace counting what arrived and left.
(b) loss: nftables `numgen random mod 100 < N drop` on the RTP (even) ports, in the namespace's input hook
    (forward loss) or in the netdev egress hook of its veth end (return loss), at 1, 5 and 20 %; the same
    rules count every RTP packet and every drop (`counter`, read back with `nft -j list ruleset`): truth =
    dropped / counted. umprobe's estimate is its forward (sent - peer rx) or return (peer tx - received)
    loss. Difference in points.
(c) RTT and jitter: tshark on both ends of the veth pair while one cycle runs without loss; request/reply
    pairs are matched by SSRC and RTP sequence (the reply echoes the RTP header). Wire RTT at the host end;
    the path RTT = that minus the peer's turnaround seen at the namespace end, which is what umprobe's
    (T4 - T1) - (T3 - T2) estimates. Jitter: RFC 3550 §6.4.1 over the one-way path transits between the
    two capture points (what umprobe's T1/T2 and T3/T4 jitter estimates), and, by the book, from RTP
    timestamps against arrival at the peer (what a real RTP receiver would report, including our own
    sending schedule's jitter).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import trio

from bench._common import BenchResult, Goal, Options, Row, median, missing_message, percentile
from bench.timing import Capture, epoch_ns
from tests.lab.netns import NetNamespace, sweep_stale_namespaces
from tests.lab.proc import LabProcess
from umprobe.media import sampling
from umprobe.probes.rtp import RtpProbeSpec, estimate_seconds, probe_rtp
from umprobe.probes.rtp_result import RtpResult, merge_results

TITLE = "RTP: sweep rate of 1024-65535, loss estimates vs nftables counters, RTT/jitter vs tshark"
NEEDS: tuple[str, ...] = ("ip", "nft", "tshark")
NFT = "nftables counters"
WIRE = "kernel timestamps (tshark)"

_SECRET = b"umprobe-bench-rtp-secret-0123456789abcdef"
_CONTROL_PORT = 7900
_LOSS_RANGE = (20000, 29999)
_RTT_RANGE = (30000, 30999)
_GOAL_POINTS = 1.0
_PEER_RATE = 20000  # packets/s per source: far above what the benchmark sends, so the peer never limits it


@dataclass(frozen=True, slots=True)
class _Lab:
    ns: NetNamespace
    peer_ip: str
    ns_if: str
    host_if: str


def run(opts: Options) -> BenchResult:
    result = BenchResult(name="rtp", title=TITLE)
    need = missing_message(NEEDS)
    if need is not None:
        result.error = need
        return result
    if os.geteuid() != 0:
        result.error = "needs root (network namespaces and nftables)"
        return result
    _run(opts, result)  # an exception is the runner's to report (with its traceback)
    return result


def _run(opts: Options, result: BenchResult) -> None:
    log = opts.log
    workdir = opts.workdir / "rtp"
    workdir.mkdir(parents=True, exist_ok=True)
    secret_file = workdir / "rtp.secret"
    secret_file.write_bytes(_SECRET + b"\n")
    secret_file.chmod(0o600)
    with contextlib.ExitStack() as stack:
        sweep_stale_namespaces()
        ns = NetNamespace(log_dir=workdir)
        stack.callback(ns.delete)
        ns.create()
        assert ns.address is not None
        peer_ip = ns.address.ns_ip
        argv = [
            sys.executable, "-m", "umprobe.cli", "peer",
            "--listen", f"{peer_ip}:{_CONTROL_PORT}",
            "--secret-file", str(secret_file),
            "--rtp-range", "1024-65535",
            "--rate-per-source", str(_PEER_RATE),
            "--rate-global", str(2 * _PEER_RATE),
            "--log-level", "warning",
        ]  # fmt: skip
        peer = LabProcess(
            "umprobe-peer-bench",
            ns.exec_argv(argv),
            log_dir=workdir,
            ready=[(peer_ip, _CONTROL_PORT)],
            cwd=Path(__file__).resolve().parents[1],
        )
        stack.callback(peer.stop)
        log(f"rtp: umprobe peer in namespace {ns.name} at {peer_ip}:{_CONTROL_PORT} (veth {ns.host_if})")
        peer.start()
        lab = _Lab(ns, peer_ip, ns.ns_if, ns.host_if)
        load = os.getloadavg()[0]
        _loss(opts, lab, result)
        _rtt_jitter(opts, lab, workdir, result)
        _sweep(opts, lab, result)
        result.notes.append(
            f"machine load average (1 min) {load:.1f} at the start, {os.getloadavg()[0]:.1f} at the end, on "
            f"{os.cpu_count()} CPUs: a shared machine slows the sweep (both ends are Python processes)"
        )
        if not peer.is_alive():
            result.notes.append(f"the echo peer died during the benchmark; see {peer.log_path}")


# ---------------------------------------------------------------------------------------------- helpers


def _spec(
    lab: _Lab, rtp_range: tuple[int, int], samples: int, packets: int, concurrency: int
) -> RtpProbeSpec:
    return RtpProbeSpec(
        host=lab.peer_ip,
        port=_CONTROL_PORT,
        secret=_SECRET,
        rtp_range=rtp_range,
        samples=samples,
        packets=packets,
        concurrency=concurrency,
        families=("ipv4",),
    )


def _measure(spec: RtpProbeSpec, cycles: Sequence[int]) -> tuple[RtpResult, float]:
    """Run `cycles` one after another (as `umprobe rtp --sweep` does); (merged RtpResult, wall seconds)."""
    per_cycle = math.ceil(estimate_seconds(spec) * 1.5 + 2)

    async def main() -> RtpResult:
        results: list[RtpResult] = []
        for c in cycles:
            r = await probe_rtp(spec, deadline=trio.current_time() + per_cycle, cycle=c)
            results.append(r)
            if not r.success:
                raise RuntimeError(f"the RTP probe failed in cycle {c}: {r.reason} {r.detail}")
        return results[0] if len(results) == 1 else merge_results(results, spec.blocks())

    start = time.perf_counter()
    merged = trio.run(main)
    return merged, time.perf_counter() - start


def _nft(lab: _Lab, ruleset: str) -> None:
    lab.ns.load_nft(ruleset)


def _counters(lab: _Lab) -> dict[str, int]:
    """{rule comment: packets} from `nft -j list ruleset` inside the namespace."""
    argv = lab.ns.exec_argv(["nft", "-j", "list", "ruleset"])
    out = subprocess.run(argv, capture_output=True, text=True, timeout=20, check=True).stdout
    counts: dict[str, int] = {}
    for item in json.loads(out).get("nftables", []):
        rule = item.get("rule")
        if not rule or "comment" not in rule:
            continue
        for expr in rule.get("expr", []):
            if "counter" in expr:
                counts[rule["comment"]] = int(expr["counter"]["packets"])
    return counts


def _replace(table: str, body: str) -> str:
    # Create it first so that the delete cannot fail, then build it anew (fresh counters): one transaction.
    return f"table {table} {{}}\ndelete table {table}\ntable {table} {{\n{body}}}\n"


def _ruleset(lab: _Lab, *, forward: int = 0, back: int = 0, span: tuple[int, int] = _LOSS_RANGE) -> str:
    """Counters on every RTP (even-port) packet into and out of the namespace; random drops of `forward` %
    inbound (input hook) and `back` % outbound (netdev egress of the namespace's veth end)."""
    lo, hi = span
    rtp_in = f"udp dport {lo}-{hi} udp dport & 1 == 0"
    rtp_out = f"udp sport {lo}-{hi} udp sport & 1 == 0"
    inbound = [
        'meta l4proto udp counter comment "udp-in"',
        f'{rtp_in} counter comment "rtp-in"',
    ]
    if forward:
        inbound.append(f'{rtp_in} numgen random mod 100 < {forward} counter drop comment "rtp-in-dropped"')
    egress = [
        'meta l4proto udp counter comment "udp-out"',
        f'{rtp_out} counter comment "rtp-out"',
    ]
    if back:
        egress.append(f'{rtp_out} numgen random mod 100 < {back} counter drop comment "rtp-out-dropped"')

    def chain(name: str, hook: str, rules: list[str]) -> str:
        head = f"    chain {name} {{\n        type filter hook {hook} priority 0; policy accept;\n"
        return head + "".join(f"        {rule}\n" for rule in rules) + "    }\n"

    return _replace("inet umbench", chain("input", "input", inbound)) + _replace(
        "netdev umbench_egress", chain("egress", f'egress device "{lab.ns_if}"', egress)
    )


# ---------------------------------------------------------------------------------------------- (b) loss


def _loss(opts: Options, lab: _Lab, result: BenchResult) -> None:
    rounds = 1 if opts.quick else max(1, opts.rounds)
    concurrency = 48
    levels = (1, 5, 20)
    # (ports, packets per port): 48 x 105 = 5,040 packets, the goal's 5,000, in one session (a session holds
    # at most 48 ports); quick mode keeps that at 5 % and measures 1 % and 20 % over 20 x 50 = 1,000.
    full = (48, 105)
    shape = {1: (20, 50), 5: full, 20: (20, 50)} if opts.quick else dict.fromkeys(levels, full)
    opts.log(
        f"rtp: loss, {rounds} round(s) x {len(levels)} levels x 2 directions, "
        f"{'/'.join(str(shape[p][0] * shape[p][1]) for p in levels)} packets each"
    )
    figures: dict[tuple[str, int], list[tuple[float, float, int]]] = {}
    checks: list[str] = []
    for rnd in range(rounds):
        for percent in levels:
            for direction in ("forward", "return"):  # interleaved: A, B, A, B ...
                rules = _ruleset(lab, forward=percent if direction == "forward" else 0,
                                 back=percent if direction == "return" else 0)  # fmt: skip
                _nft(lab, rules)
                spec = _spec(lab, _LOSS_RANGE, shape[percent][0], shape[percent][1], concurrency)
                r, _ = _measure(spec, [rnd * len(levels) * 2 + percent])  # a different set of ports each time
                c = _counters(lab)
                t = r.totals
                if direction == "forward":
                    counted, dropped = c.get("rtp-in", 0), c.get("rtp-in-dropped", 0)
                    estimate = t.loss_forward
                    if t.sent != counted:
                        checks.append(
                            f"forward {percent} %: umprobe sent {t.sent}, nftables counted {counted}"
                        )
                else:
                    counted, dropped = c.get("rtp-out", 0), c.get("rtp-out-dropped", 0)
                    estimate = t.loss_return
                    if t.peer_tx != counted:
                        checks.append(f"return {percent} %: peer tx {t.peer_tx}, nftables counted {counted}")
                if estimate is None or counted == 0:
                    checks.append(f"{direction} {percent} %: no estimate ({r.detail})")
                    continue
                truth = dropped / counted
                figures.setdefault((direction, percent), []).append((estimate, truth, counted))
    _nft(lab, _ruleset(lab))
    worst_at_5: list[float] = []
    for (direction, percent), values in sorted(figures.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        estimate = median([v[0] * 100 for v in values])
        truth = median([v[1] * 100 for v in values])
        diffs = [(v[0] - v[1]) * 100 for v in values]
        counted = int(median([v[2] for v in values]))
        case = f"{direction} loss, nftables drops {percent} % ({counted} RTP packets)"
        result.rows += [
            Row(case, "loss", "%", estimate, truth, NFT),
            Row(case, "estimate - truth", "points", median(diffs), None, NFT),
            Row(
                case, "worst |estimate - truth| over rounds", "points", max(abs(d) for d in diffs), None, NFT
            ),
        ]
        if percent == 5 and counted >= 5000:
            worst_at_5.append(max(abs(d) for d in diffs))
    if worst_at_5:
        worst = max(worst_at_5)
        result.goals.append(
            Goal(
                "RTP loss estimate vs nftables truth at 5 % loss over 5,000 packets (forward and return)",
                f"within {_GOAL_POINTS:g} point",
                f"{worst:.2f} points (worst direction and round)",
                worst <= _GOAL_POINTS,
            )
        )
    if checks:
        result.notes.append("counter mismatches: " + "; ".join(checks[:6]))
    else:
        result.notes.append(
            "in every loss run umprobe's sent count equalled nftables' inbound RTP count, and the peer's tx "
            "count its outbound RTP count"
        )


# ------------------------------------------------------------------------------------------ (c) RTT/jitter


@dataclass(frozen=True, slots=True)
class _Pkt:
    t_ns: int
    src: str
    sport: int
    dport: int
    seq: int
    ts: int
    ssrc: int


def _rtp_packets(capture: Capture) -> list[_Pkt]:
    rows = capture.fields(["frame.time_epoch", "ip.src", "udp.srcport", "udp.dstport", "udp.payload"], "udp")
    out = []
    for row in rows:
        if len(row) < 5 or not row[4]:
            continue
        payload = bytes.fromhex(row[4].replace(":", ""))
        if len(payload) != 172 or payload[0] >> 6 != 2:
            continue  # RTCP (to the odd ports) or something else
        out.append(
            _Pkt(
                epoch_ns(row[0]),
                row[1],
                int(row[2]),
                int(row[3]),
                int.from_bytes(payload[2:4], "big"),
                int.from_bytes(payload[4:8], "big"),
                int.from_bytes(payload[8:12], "big"),
            )
        )
    return out


def _rfc3550(transits: Sequence[float]) -> float | None:
    """RFC 3550 §6.4.1 interarrival jitter (seconds) over transit times in arrival order."""
    if len(transits) < 2:
        return None
    j = 0.0
    for a, b in itertools.pairwise(transits):
        j += (abs(b - a) - j) / 16
    return j


def _rtt_jitter(opts: Options, lab: _Lab, workdir: Path, result: BenchResult) -> None:
    ports, packets, concurrency = (16, 50, 16) if opts.quick else (32, 50, 16)
    rounds = 1 if opts.quick else max(1, opts.rounds)
    _nft(lab, _ruleset(lab))
    lo, hi = _RTT_RANGE
    bpf = f"udp and (dst portrange {lo}-{hi} or src portrange {lo}-{hi})"
    host_cap = Capture("rtp-host", lab.host_if, bpf, workdir)
    ns_cap = Capture("rtp-ns", lab.ns_if, bpf, workdir, wrap=lab.ns.exec_argv)
    opts.log(
        f"rtp: RTT/jitter, {rounds} cycle(s) of {ports} ports x {packets} packets, tshark on both veth ends"
    )
    with contextlib.ExitStack() as stack:
        for cap in (host_cap, ns_cap):
            stack.callback(cap.stop)
            cap.launch()
        for cap in (host_cap, ns_cap):
            cap.wait_ready()
        results = []
        for rnd in range(rounds):
            r, _ = _measure(_spec(lab, _RTT_RANGE, ports, packets, concurrency), [rnd])
            results.append(r)
        host_cap.stop()
        ns_cap.stop()
    host = _rtp_packets(host_cap)
    nsp = _rtp_packets(ns_cap)
    peer = lab.peer_ip
    # (ssrc, seq, rtp port) -> times at each capture point
    req_h = {(p.ssrc, p.seq, p.dport): p for p in host if p.src != peer}
    rep_h = {(p.ssrc, p.seq, p.sport): p for p in host if p.src == peer}
    req_n = {(p.ssrc, p.seq, p.dport): p for p in nsp if p.src != peer}
    rep_n = {(p.ssrc, p.seq, p.sport): p for p in nsp if p.src == peer}
    rtt_err: list[float] = []
    rtt_umprobe: list[float] = []
    rtt_wire_host: list[float] = []
    rtt_wire_path: list[float] = []
    jit: dict[str, list[tuple[float, float]]] = {"forward": [], "return": []}
    jit_book: list[float] = []
    unmatched_ports = 0
    for r in results:
        for pr in r.ports:
            if pr.state != "reachable":
                continue
            keys = sorted(
                (k for k in rep_h if k[2] == pr.port and k in req_h and k in req_n and k in rep_n),
                key=lambda k: rep_h[k].t_ns,
            )
            if len(keys) != len(pr.rtt_samples):
                unmatched_ports += 1
                continue
            for k, sample in zip(keys, pr.rtt_samples, strict=True):
                host_rtt = (rep_h[k].t_ns - req_h[k].t_ns) / 1e9
                turnaround = (rep_n[k].t_ns - req_n[k].t_ns) / 1e9
                path = host_rtt - turnaround
                rtt_umprobe.append(sample * 1e3)
                rtt_wire_host.append(host_rtt * 1e3)
                rtt_wire_path.append(path * 1e3)
                rtt_err.append((sample - path) * 1e3)
            fwd = sorted(keys, key=lambda k: req_n[k].t_ns)  # arrival order at the peer
            back = keys  # arrival order at the host end
            j_fwd = _rfc3550([(req_n[k].t_ns - req_h[k].t_ns) / 1e9 for k in fwd])
            j_ret = _rfc3550([(rep_h[k].t_ns - rep_n[k].t_ns) / 1e9 for k in back])
            # By the book: arrival at the peer against the RTP timestamp (8 kHz), as an RTP receiver does.
            j_book = _rfc3550([req_n[k].t_ns / 1e9 - req_n[k].ts / 8000 for k in fwd])
            if j_fwd is not None and pr.jitter_forward is not None:
                jit["forward"].append((pr.jitter_forward * 1e3, j_fwd * 1e3))
            if j_ret is not None and pr.jitter_return is not None:
                jit["return"].append((pr.jitter_return * 1e3, j_ret * 1e3))
            if j_book is not None:
                jit_book.append(j_book * 1e3)
    n = len(rtt_err)
    if n:
        case = f"RTT over the veth pair ({n} echoes)"
        result.rows += [
            Row(case, "RTT p50 vs path (host-end RTT - peer turnaround)", "ms", median(rtt_umprobe),
                median(rtt_wire_path), WIRE),
            Row(case, "RTT p50 vs host-end request/reply", "ms", median(rtt_umprobe),
                median(rtt_wire_host), WIRE),
            Row(case, "RTT error p50 (reported - path)", "ms", percentile(rtt_err, 50), None, WIRE),
            Row(case, "RTT error p99 (reported - path)", "ms", percentile(rtt_err, 99), None, WIRE),
        ]  # fmt: skip
    for direction, pairs in jit.items():
        if not pairs:
            continue
        errors = [u - w for u, w in pairs]
        case = f"jitter {direction}, RFC 3550, per port ({len(pairs)} ports)"
        result.rows += [
            Row(case, "median over ports vs one-way path transit", "ms", median([u for u, _ in pairs]),
                median([w for _, w in pairs]), WIRE),
            Row(case, "error p50 (reported - wire)", "ms", percentile(errors, 50), None, WIRE),
            Row(case, "error p99 (reported - wire)", "ms", percentile(errors, 99), None, WIRE),
        ]  # fmt: skip
        if direction == "forward" and jit_book:
            result.rows.append(
                Row(case, "median over ports vs RTP timestamps at the peer (by the book)", "ms",
                    median([u for u, _ in pairs]), median(jit_book), WIRE)
            )  # fmt: skip
    if unmatched_ports:
        result.notes.append(
            f"RTT/jitter: {unmatched_ports} port(s) left out (echo count differed from the capture)"
        )
    result.notes.append(
        "RTT: umprobe reports (T4-T1)-(T3-T2); the path truth is the host-end request->reply time minus the "
        "peer's turnaround at the namespace end (both kernel timestamps)"
    )


# ---------------------------------------------------------------------------------------------- (a) sweep


def _sweep(opts: Options, lab: _Lab, result: BenchResult) -> None:
    full_range = (1024, 65535)
    full_ports = len(sampling.even_ports(*full_range))
    rtp_range = (1024, 3071) if opts.quick else full_range
    samples, packets, concurrency = 256, 2, 32
    spec = _spec(lab, rtp_range, samples, packets, concurrency)
    cycles = spec.cycles_per_sweep()
    _nft(lab, _ruleset(lab, span=full_range))
    opts.log(
        f"rtp: sweep of {rtp_range[0]}-{rtp_range[1]}: {cycles} cycles of {samples} ports, "
        f"{packets} RTP packets + 1 RTCP per port, {concurrency} ports at a time"
    )
    r, wall = _measure(spec, list(range(cycles)))
    c = _counters(lab)
    measured = [p for p in r.ports if p.measured]
    reachable = sum(1 for p in measured if p.state == "reachable")
    rtp_sent = sum(p.sent for p in r.ports)
    rtcp_sent = sum(1 for p in r.ports if p.rtcp_reachable is not None)
    sent = rtp_sent + rtcp_sent
    ports = len(r.ports)
    case = (
        f"sweep {rtp_range[0]}-{rtp_range[1]} ({ports} even ports; {packets} RTP + 1 RTCP per port, "
        f"{concurrency} at a time)"
    )
    result.rows += [
        Row(case, "wall time", "s", wall),
        Row(case, "ports/s", "1/s", ports / wall),
        Row(case, "packets sent/s (RTP + RTCP)", "1/s", sent / wall),
        Row(case, "packets sent vs arrived in the namespace", "packets", float(sent),
            float(c.get("udp-in", 0)), NFT),
        Row(case, "RTP echoes sent by the peer vs counted leaving", "packets",
            float(sum(p.peer_tx or 0 for p in r.ports)), float(c.get("rtp-out", 0)), NFT),
        Row(case, "ports reachable (all are)", "ports", float(reachable), float(ports)),
    ]  # fmt: skip
    if ports != full_ports:
        result.rows.append(
            Row(f"sweep 1024-65535 ({full_ports} even ports), extrapolated from {ports}", "wall time", "s",
                wall * full_ports / ports)
        )  # fmt: skip
    result.notes.append(
        f"sweep: {len(r.sessions)} control sessions, one after another (at most 48 ports each, so the "
        "peer's stats fit one line); the rate is bounded by --concurrency: each port sends its packets 20 ms "
        "apart, ports start at least 20 ms / concurrency apart, the next when a port's last echo is in"
    )
    late = [p for p in measured if p.state == "unreachable" and (p.peer_tx or 0) > 0]
    if late:
        waits = sorted(p.port for p in late)
        result.notes.append(
            f"sweep: {len(late)} port(s) reported unreachable although the peer echoed them (the echoes came "
            f"after the straggler window), e.g. {waits[:5]}"
        )
    if r.peer_dropped and any(r.peer_dropped.values()):
        result.notes.append(f"sweep: the peer dropped {dict(r.peer_dropped)}")
