"""Results of the RTP range probe: plain values for the CLI, JSON, metrics and the daemon.

Failures are data (ARCHITECTURE.md): a control channel that cannot be reached or authenticated gives an
`RtpResult` whose `reason` is not `ok` and whose `ports` may be empty; only bugs raise.

Three levels:

* `PortResult`: one sampled RTP port `p` (and its RTCP port `p+1`): what was sent and echoed, the peer's own
  counters, loss per direction, RTT and jitter.
* `BlockResult`: one of the (at most 64) fixed blocks of the range (`sampling.blocks`); the label `"LO-HI"`
  never names a single port, so it is safe as a metric label. `ratio` is the share of this cycle's *measured*
  ports in the block that answered; `in_use`/`refused`/`not_measured` ports are never counted against it.
* `RtpResult`: the whole run, with totals per direction computed over the *reachable* ports only: a port a
  firewall drops completely is a reachability finding (its block shows it), not "100 % loss" mixed into the
  quality figures of the open path.

`aggregate()` computes blocks and totals from per-port results; `merge_results()` joins the results of
several cycles (`umprobe rtp --sweep`) into one and recomputes them.
"""

from __future__ import annotations

import bisect
import enum
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Literal

__all__ = [
    "BLOCK_SYMBOLS",
    "BlockResult",
    "PortResult",
    "PortState",
    "RtpMode",
    "RtpReason",
    "RtpResult",
    "RtpTotals",
    "aggregate",
    "merge_results",
    "render_map",
]

PortState = Literal["reachable", "unreachable", "in_use", "refused", "not_measured"]
"""
* `reachable`: at least one authenticated echo came back;
* `unreachable`: packets were sent and nothing came back;
* `in_use`: the peer could not bind the port because something else holds it (never "unreachable");
* `refused`: the peer refused it (outside its `--rtp-range`, over its per-session limit);
* `not_measured`: the port was opened but the deadline (or the session's ttl) came before it was probed.
"""

RtpMode = Literal["peer", "plain-echo"]

PORT_STATES: tuple[PortState, ...] = ("reachable", "unreachable", "in_use", "refused", "not_measured")

BLOCK_SYMBOLS: Mapping[str, str] = {
    "#": "all sampled ports reachable",
    "~": "some sampled ports reachable",
    "x": "no sampled port reachable",
    "u": "only ports in use (or refused) on the peer sampled",
    ".": "not sampled in this run",
}


class RtpReason(enum.StrEnum):
    """How the run as a whole went. Fixed and small, so it can be a metric label."""

    OK = "ok"
    DNS_ERROR = "dns_error"
    CONTROL_CONNECT_FAILED = "control_connect_failed"
    CONTROL_TLS_FAILED = "control_tls_failed"
    CONTROL_AUTH_FAILED = "control_auth_failed"
    CONTROL_PROTOCOL_ERROR = "control_protocol_error"
    CONTROL_TIMEOUT = "control_timeout"
    MEDIA_ERROR = "media_error"


@dataclass(frozen=True, slots=True)
class PortResult:
    """One sampled RTP port. Ratios are 0..1; times are seconds; None means "not known in this mode".

    * `sent`: RTP packets sent to `port`; `received`: distinct authenticated echoes that came back.
    * `peer_rx` / `peer_tx`: the reflector's own counters for this port (peer mode only).
    * `loss_forward` = (sent - peer_rx) / sent; `loss_return` = (peer_tx - received) / peer_tx (clamped at 0);
      `loss_unanswered` = (peer_rx - peer_tx) / peer_rx: what reached the peer but got no answer from it (its
      rate limit, or a send its own host refused, e.g. an outbound firewall rule on the peer's machine:
      such a reply was never sent, so it is neither forward nor return loss);
      `loss_roundtrip` = (sent - received) / sent, all of it together, and the only figure in plain-echo.
    * `rtt_*`: (T4 - T1) - (T3 - T2) per echo (plain-echo: T4 - T1).
    * `jitter_forward` / `jitter_return`: RFC 3550 §6.4.1 interarrival jitter from T1/T2 and T3/T4.
    * `reordered`: echoes whose sender sequence is below the highest seen (RFC 4737); `duplicates`: a sender
      sequence seen again (RFC 5560). Both are round-trip figures.
    * `rtcp_reachable`: the RTCP packet sent to `port + 1` was answered (None when RTCP is off or the port
      was never probed). `peer_rtcp_rx`/`peer_rtcp_tx` tell a lost request from a lost answer.
    * `socket_errors`: sends or receives that failed, mostly ICMP errors reported on the connected socket
      (port unreachable and the like; a plain echo port with nothing behind it shows them).
    """

    port: int
    state: PortState
    block: str = ""
    sent: int = 0
    received: int = 0
    peer_rx: int | None = None
    peer_tx: int | None = None
    loss_forward: float | None = None
    loss_return: float | None = None
    loss_unanswered: float | None = None
    loss_roundtrip: float | None = None
    rtt_p50: float | None = None
    rtt_max: float | None = None
    jitter_forward: float | None = None
    jitter_return: float | None = None
    reordered: int = 0
    duplicates: int = 0
    rtcp_reachable: bool | None = None
    peer_rtcp_rx: int | None = None
    peer_rtcp_tx: int | None = None
    socket_errors: int = 0
    bad_replies: int = 0
    rtt_samples: tuple[float, ...] = field(default=(), repr=False)

    @property
    def measured(self) -> bool:
        """True when packets were sent, so the port counts for its block's reachability."""
        return self.state in ("reachable", "unreachable")


@dataclass(frozen=True, slots=True)
class BlockResult:
    """One fixed block of the range and what this run saw in it."""

    index: int
    lo: int
    hi: int
    measured: int = 0
    reachable: int = 0
    in_use: int = 0
    refused: int = 0
    not_measured: int = 0

    @property
    def label(self) -> str:
        return f"{self.lo}-{self.hi}"

    @property
    def sampled(self) -> bool:
        """Some port of this block was measured in this run."""
        return self.measured > 0

    @property
    def ratio(self) -> float | None:
        """Share of the measured ports that answered; None when none was measured."""
        return None if self.measured == 0 else self.reachable / self.measured

    @property
    def symbol(self) -> str:
        """One map character; see `BLOCK_SYMBOLS`."""
        if self.measured == 0:
            return "u" if (self.in_use or self.refused) else "."
        if self.reachable == self.measured:
            return "#"
        return "x" if self.reachable == 0 else "~"


@dataclass(frozen=True, slots=True)
class RtpTotals:
    """Sums over the reachable ports (see the module docstring for why unreachable ones are left out)."""

    sent: int = 0
    received: int = 0
    peer_rx: int | None = None
    peer_tx: int | None = None
    loss_forward: float | None = None
    loss_return: float | None = None
    loss_unanswered: float | None = None
    loss_roundtrip: float | None = None
    rtt_p50: float | None = None
    rtt_max: float | None = None
    jitter_forward: float | None = None  # the worst port's
    jitter_return: float | None = None  # the worst port's
    reordered: int = 0
    duplicates: int = 0
    rtcp_answered: int = 0
    rtcp_tried: int = 0
    state_counts: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class RtpResult:
    """The outcome of one `probe_rtp` run (one cycle, or a merged sweep)."""

    target: str  # as given: the peer host, or the echo host in plain-echo mode
    control_port: int | None
    address: str  # the resolved control address ("" when never resolved; the media address in plain-echo)
    media_address: str
    mode: RtpMode
    authenticated: bool
    reason: RtpReason
    detail: str
    range_lo: int
    range_hi: int
    cycles: tuple[int, ...]
    cycles_per_sweep: int
    ports: tuple[PortResult, ...]
    blocks: tuple[BlockResult, ...]
    totals: RtpTotals
    rtt_samples: tuple[float, ...] = field(default=(), repr=False)
    peer_banner: str | None = None
    sessions: tuple[str, ...] = ()
    peer_dropped: Mapping[str, int] = field(default_factory=dict)
    started_at: datetime | None = None
    duration: float = 0.0

    @property
    def success(self) -> bool:
        """The run completed (the judgement of what it found is the caller's)."""
        return self.reason is RtpReason.OK

    @property
    def cycle(self) -> int:
        return self.cycles[0] if self.cycles else 0

    @property
    def unreachable_blocks(self) -> tuple[BlockResult, ...]:
        return tuple(b for b in self.blocks if b.sampled and b.reachable == 0)

    @property
    def partial_blocks(self) -> tuple[BlockResult, ...]:
        return tuple(b for b in self.blocks if b.sampled and 0 < b.reachable < b.measured)


def _ratio(lost: int, total: int) -> float | None:
    return None if total <= 0 else max(0, lost) / total


def _block_index(los: Sequence[int], port: int) -> int:
    return max(0, bisect.bisect_right(los, port) - 1)


def aggregate(
    ports: Iterable[PortResult], blocks: Sequence[tuple[int, int]]
) -> tuple[tuple[PortResult, ...], tuple[BlockResult, ...], RtpTotals, tuple[float, ...]]:
    """Label each port with its block and compute the block table, the totals and all RTT samples.

    `blocks` is `sampling.blocks(lo, hi, 64)`: sorted, contiguous (lo, hi) pairs covering the range.
    """
    los = [lo for lo, _ in blocks]
    counts: list[dict[str, int]] = [dict.fromkeys(PORT_STATES, 0) for _ in blocks]
    labelled: list[PortResult] = []
    for p in sorted(ports, key=lambda r: r.port):
        i = _block_index(los, p.port)
        lo, hi = blocks[i]
        labelled.append(replace(p, block=f"{lo}-{hi}"))
        counts[i][p.state] += 1
    block_results = tuple(
        BlockResult(
            index=i,
            lo=lo,
            hi=hi,
            measured=c["reachable"] + c["unreachable"],
            reachable=c["reachable"],
            in_use=c["in_use"],
            refused=c["refused"],
            not_measured=c["not_measured"],
        )
        for i, ((lo, hi), c) in enumerate(zip(blocks, counts, strict=True))
    )
    return (
        tuple(labelled),
        block_results,
        _totals(labelled),
        tuple(s for p in labelled for s in p.rtt_samples),
    )


def _totals(ports: Sequence[PortResult]) -> RtpTotals:
    state_counts: dict[str, int] = dict.fromkeys(PORT_STATES, 0)
    for p in ports:
        state_counts[p.state] += 1
    up = [p for p in ports if p.state == "reachable"]
    sent = sum(p.sent for p in up)
    received = sum(p.received for p in up)
    with_peer = [p for p in up if p.peer_rx is not None and p.peer_tx is not None]
    peer_rx = peer_tx = None
    loss_forward = loss_return = loss_unanswered = None
    if with_peer:
        peer_rx = sum(p.peer_rx or 0 for p in with_peer)
        peer_tx = sum(p.peer_tx or 0 for p in with_peer)
        loss_forward = _ratio(sum(p.sent for p in with_peer) - peer_rx, sum(p.sent for p in with_peer))
        loss_return = _ratio(peer_tx - sum(p.received for p in with_peer), peer_tx)
        loss_unanswered = _ratio(peer_rx - peer_tx, peer_rx)
    samples = [s for p in up for s in p.rtt_samples]
    jf = [p.jitter_forward for p in up if p.jitter_forward is not None]
    jr = [p.jitter_return for p in up if p.jitter_return is not None]
    rtcp = [p for p in ports if p.rtcp_reachable is not None]
    return RtpTotals(
        sent=sent,
        received=received,
        peer_rx=peer_rx,
        peer_tx=peer_tx,
        loss_forward=loss_forward,
        loss_return=loss_return,
        loss_unanswered=loss_unanswered,
        loss_roundtrip=_ratio(sent - received, sent),
        rtt_p50=statistics.median(samples) if samples else None,
        rtt_max=max(samples) if samples else None,
        jitter_forward=max(jf) if jf else None,
        jitter_return=max(jr) if jr else None,
        reordered=sum(p.reordered for p in up),
        duplicates=sum(p.duplicates for p in up),
        rtcp_answered=sum(1 for p in rtcp if p.rtcp_reachable),
        rtcp_tried=len(rtcp),
        state_counts=state_counts,
    )


def merge_results(results: Sequence[RtpResult], blocks: Sequence[tuple[int, int]]) -> RtpResult:
    """Join several runs over the same range (the cycles of a sweep) into one result.

    A port measured in several runs keeps its last measurement. The first run whose reason is not `ok`
    gives the merged reason and detail; peer drop counters are summed.
    """
    if not results:
        raise ValueError("merge_results needs at least one result")
    by_port: dict[int, PortResult] = {}
    for r in results:
        for p in r.ports:
            by_port[p.port] = p
    ports, block_results, totals, samples = aggregate(by_port.values(), blocks)
    failed = next((r for r in results if not r.success), None)
    dropped: dict[str, int] = {}
    for r in results:
        for k, v in r.peer_dropped.items():
            dropped[k] = dropped.get(k, 0) + v
    first = results[0]
    return replace(
        first,
        reason=failed.reason if failed else RtpReason.OK,
        detail=failed.detail if failed else first.detail,
        cycles=tuple(c for r in results for c in r.cycles),
        ports=ports,
        blocks=block_results,
        totals=totals,
        rtt_samples=samples,
        sessions=tuple(s for r in results for s in r.sessions),
        peer_dropped=dropped,
        duration=sum(r.duration for r in results),
    )


_MAP_ROW = 16  # blocks per map line


def render_map(blocks: Sequence[BlockResult]) -> list[str]:
    """The range as rows of one character per block, each row labelled with the ports it covers."""
    rows = [blocks[i : i + _MAP_ROW] for i in range(0, len(blocks), _MAP_ROW)]
    labels = [f"{row[0].lo}-{row[-1].hi}" for row in rows]
    width = max((len(label) for label in labels), default=0)
    return [
        f"  {label.rjust(width)}  {''.join(b.symbol for b in row)}"
        for label, row in zip(labels, rows, strict=True)
    ]
