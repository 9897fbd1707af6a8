"""The daemon's memory of probe results: the latest run of every probe, plus the counters and histograms.

Theory of operation
-------------------
The scheduler writes (`record`, `observe_lag`, `probe_started` / `probe_finished`), the daemon writes the
reload status (`set_reload`), and `umprobe.metrics` and the status page read. Everything runs in one trio
thread, so there is no locking; the read side hands out frozen snapshots (`AddressStats`,
`HistogramSnapshot`) so the renderers never see half an update.

State is kept per probe id (`ProbeConfig.id`) and, for counters and the SIP response-time histogram, per
(probe id, address, port): a host that resolves to two addresses is two listeners to watch (PROTOCOL.md §2),
and so is one address on two SRV ports (`resolution = "rfc3263"`). The port is the result's: the configured
port, except for addresses NAPTR/SRV found. Results without an address (`dns_error`: the name did not
resolve) are kept under the address "" and the configured port.

* `set_probes` (at start and after every reload) keeps the state of every id that is still configured (its
  `ProbeConfig` is replaced by the new one) and forgets the ids that are gone, so their series disappear
  from /metrics at once. `record` for an id that is not configured (a run that was in flight during a
  reload that removed it) is ignored.
* Counters exist before their first increment, so `rate()` and `increase()` see the first failure: when an
  address key is created, every failure reason that can happen on it is set to 0 (all reasons but `ok` and
  `dns_error`). The address-less key is created by `set_probes` for every probe of a host *name*, with
  `dns_error` at 0; the key of an IP-literal host is created by `set_probes` too, since its address is known
  before the first run.
* Every (probe id, address, port) also keeps its up/down state by the probe's thresholds
  (`umprobe.updown.UpDown`, docs/thresholds.md), fed by `record` with each result except
  `local_resource_error` (our host, not the target); `record` returns the state changes for the daemon's
  log, and `AddressStats` carries the state, the consecutive counts and the transitions for /metrics and
  the status page.
* Addresses (and SRV ports) come and go with DNS. The state of an (address, port) that has not appeared in
  `STALE_RUNS` consecutive runs of its probe is dropped, so a round-robin name cannot grow the series
  without bound. Keys created by `set_probes` are never dropped.

RTP peers (`[[rtp]]`, `RtpProbeConfig`) have their own table, installed by `set_rtp` with the same rules
(ids still configured keep their state, the others are forgotten) and written by `record_rtp`. Per peer:
the latest `RtpResult`, runs, failures by `RtpReason` and sampled ports by state (all at 0 from the moment
the peer is configured), the RTT histogram over every echo, and the *blocks*: a run samples only some
blocks of the range (one cycle of the sweep), so the store keeps, per block, the last run that measured a
port in it and when (`BlockSeen`); the block map and `umprobe_rtp_block_reachable_ratio` are built from
that, and the timestamp makes staleness visible. When a reload changes the range, blocks that no longer
exist are dropped.
"""

from __future__ import annotations

import bisect
import ipaddress
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from umprobe.probes.result import ProbeResult, Reason
from umprobe.probes.rtp_result import PORT_STATES, BlockResult, PortState, RtpReason, RtpResult
from umprobe.updown import State, UpDown

if TYPE_CHECKING:
    from umprobe.config import ProbeConfig, RtpProbeConfig
    from umprobe.inbound import InboundBook, InboundView

__all__ = [
    "ADDRESS_FAILURE_REASONS",
    "FAILURE_REASONS",
    "NO_ADDRESS_FAILURE_REASONS",
    "RTP_FAILURE_REASONS",
    "RTP_PORT_RESULTS",
    "RTP_RTT_BUCKETS",
    "SCHEDULER_LAG_BUCKETS",
    "SIP_RESPONSE_BUCKETS",
    "STALE_RUNS",
    "AddressStats",
    "BlockSeen",
    "HistogramSnapshot",
    "ReloadStatus",
    "ResultStore",
    "RtpStats",
    "ThresholdChange",
]

#: Upper bounds (seconds) of `umprobe_sip_response_seconds`: 1 ms on a LAN .. 10 s, past any sane timeout.
SIP_RESPONSE_BUCKETS: tuple[float, ...] = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)

#: Upper bounds (seconds) of `umprobe_scheduler_lag_seconds`: how late a run started against its slot.
SCHEDULER_LAG_BUCKETS: tuple[float, ...] = (
    0.001,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
)

#: Upper bounds (seconds) of `umprobe_rtp_rtt_seconds`: 0.5 ms (loopback, one switch) .. 1 s (the straggler
#: window: a later echo is not counted).
RTP_RTT_BUCKETS: tuple[float, ...] = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
)

#: The `reason` label values of `umprobe_rtp_failures_total`: every way an RTP run can fail.
RTP_FAILURE_REASONS: tuple[RtpReason, ...] = tuple(r for r in RtpReason if r is not RtpReason.OK)
#: The `result` label values of `umprobe_rtp_ports_probed_total`: the fixed port states.
RTP_PORT_RESULTS: tuple[PortState, ...] = PORT_STATES

#: Every reason a run can fail with: the `reason` label values of `umprobe_probe_failures_total`.
FAILURE_REASONS: tuple[Reason, ...] = tuple(r for r in Reason if r is not Reason.OK)
#: The reasons pre-initialised on a key with an address (a resolved address cannot have a DNS error).
ADDRESS_FAILURE_REASONS: tuple[Reason, ...] = tuple(r for r in FAILURE_REASONS if r is not Reason.DNS_ERROR)
#: The reasons pre-initialised on the address-less key of a host name.
NO_ADDRESS_FAILURE_REASONS: tuple[Reason, ...] = (Reason.DNS_ERROR,)

#: An address missing from this many consecutive runs of its probe is forgotten.
STALE_RUNS = 20


@dataclass(frozen=True, slots=True)
class HistogramSnapshot:
    """A histogram's state: cumulative counts per upper bound (without +Inf), the sum and the count."""

    buckets: tuple[tuple[float, int], ...]
    sum: float
    count: int


@dataclass(frozen=True, slots=True)
class AddressStats:
    """Counters of one (probe id, address, port): runs, failures by reason, the SIP response-time histogram,
    the up/down state and, over UDP, the requests re-sent (Timer E) across runs."""

    address: str
    runs: int
    failures: tuple[tuple[Reason, int], ...]  # in `Reason` order
    sip_response: HistogramSnapshot
    state: State = "unknown"  # up/down by the probe's thresholds (umprobe.updown)
    up_transitions: int = 0
    down_transitions: int = 0
    consecutive_failures: int = 0
    consecutive_successes: int = 0
    port: int = 0  # the listener's port (the configured one, or the SRV record's)
    retransmissions: int = 0  # SIP over UDP: requests re-sent per Timer E, over every run


@dataclass(frozen=True, slots=True)
class ThresholdChange:
    """A listener address whose up/down state (by its probe's thresholds) changed in one `record`."""

    address: str
    previous: State
    state: State
    consecutive: int  # the run of failures (down) or successes (up) that made the change
    port: int = 0


@dataclass(frozen=True, slots=True)
class BlockSeen:
    """One block of an RTP peer's range as last sampled: what that run found in it, and when (unix s)."""

    block: BlockResult  # `measured` > 0, so `ratio` is a number
    sampled_at: float


@dataclass(frozen=True, slots=True)
class RtpStats:
    """The accumulated state of one RTP peer: runs, failures by reason, sampled ports by state, the RTT
    histogram, and the last sample of every block sampled so far (in range order)."""

    runs: int
    failures: tuple[tuple[RtpReason, int], ...]  # in `RtpReason` order, `ok` left out
    ports: tuple[tuple[PortState, int], ...]  # in `RTP_PORT_RESULTS` order
    rtt: HistogramSnapshot
    blocks: tuple[BlockSeen, ...]


@dataclass(frozen=True, slots=True)
class ReloadStatus:
    """The last configuration (re)load: did it work, why not, and when did one last work (unix seconds)."""

    successful: bool
    last_success_at: float | None
    last_error: str | None = None  # the one-line reason of the last failed (re)load, until one succeeds


class _Histogram:
    """A fixed-bucket histogram: one count per bucket (not cumulative) plus the overflow bucket."""

    __slots__ = ("_bounds", "_counts", "_sum")

    def __init__(self, bounds: Sequence[float]) -> None:
        self._bounds = tuple(bounds)
        self._counts = [0] * (len(self._bounds) + 1)
        self._sum = 0.0

    def observe(self, value: float) -> None:
        if math.isnan(value):
            return
        value = max(value, 0.0)
        self._counts[bisect.bisect_left(self._bounds, value)] += 1  # `le`: a value on a bound counts in it
        self._sum += value

    def snapshot(self) -> HistogramSnapshot:
        cumulative: list[tuple[float, int]] = []
        running = 0
        for bound, count in zip(self._bounds, self._counts, strict=False):
            running += count
            cumulative.append(_bucket_pair(bound, running))
        return HistogramSnapshot(tuple(cumulative), self._sum, running + self._counts[-1])


# The (bound, cumulative count) pairs of snapshots, shared: the store keeps a snapshot per address between
# scrapes (`_AddressState.snapshot`), and at 10,000 listeners 130,000 pairs are mostly the same few.
_BUCKET_PAIRS: dict[tuple[float, int], tuple[float, int]] = {}
_BUCKET_PAIRS_CAP = 1 << 16


def _bucket_pair(bound: float, count: int) -> tuple[float, int]:
    pair = (bound, count)
    shared = _BUCKET_PAIRS.get(pair)
    if shared is None:
        if len(_BUCKET_PAIRS) < _BUCKET_PAIRS_CAP:
            _BUCKET_PAIRS[pair] = pair
        return pair
    return shared


@dataclass(slots=True)
class _AddressState:
    runs: int = 0
    failures: dict[Reason, int] = field(default_factory=dict)
    sip: _Histogram = field(default_factory=lambda: _Histogram(SIP_RESPONSE_BUCKETS))
    retransmissions: int = 0
    last_seen_run: int = 0
    pinned: bool = False  # created by set_probes: never dropped as stale
    updown: UpDown = field(default_factory=UpDown)
    snapshot: AddressStats | None = None  # made by the first read after a change (every scrape reads)


@dataclass(slots=True)
class _ProbeState:
    config: ProbeConfig
    latest: tuple[ProbeResult, ...] = ()
    last_failure: tuple[ProbeResult, ...] = ()
    recorded_at: float | None = None
    runs: int = 0
    addresses: dict[tuple[str, int], _AddressState] = field(default_factory=dict)  # by (address, port)


@dataclass(slots=True)
class _RtpState:
    config: RtpProbeConfig
    latest: RtpResult | None = None
    last_failure: RtpResult | None = None
    recorded_at: float | None = None
    runs: int = 0
    failures: dict[RtpReason, int] = field(default_factory=lambda: dict.fromkeys(RTP_FAILURE_REASONS, 0))
    ports: dict[PortState, int] = field(default_factory=lambda: dict.fromkeys(RTP_PORT_RESULTS, 0))
    rtt: _Histogram = field(default_factory=lambda: _Histogram(RTP_RTT_BUCKETS))
    blocks: dict[str, BlockSeen] = field(default_factory=dict)  # by block label


def _literal_address(host: str) -> str | None:
    """The address an IP-literal host resolves to (as `umprobe.net.resolve` spells it), else None."""
    bare = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        return str(ipaddress.ip_address(bare))
    except ValueError:
        return None


def _new_address_state(address: str, *, pinned: bool = False) -> _AddressState:
    reasons = ADDRESS_FAILURE_REASONS if address else NO_ADDRESS_FAILURE_REASONS
    return _AddressState(failures=dict.fromkeys(reasons, 0), pinned=pinned)


class ResultStore:
    """Latest results per probe id; counters and histograms per (probe id, address); daemon gauges.

    `clock` gives wall-clock unix seconds (for `recorded_at`); tests may pass a fake.
    """

    def __init__(self, *, clock: Callable[[], float] | None = None) -> None:
        self._clock: Callable[[], float] = clock or time.time
        self._probes: dict[str, _ProbeState] = {}
        self._rtp: dict[str, _RtpState] = {}
        self._lag = _Histogram(SCHEDULER_LAG_BUCKETS)
        self._in_flight = 0
        self._skipped_slots = 0
        self._reload_successful = False
        self._last_reload_success: float | None = None
        self._last_reload_error: str | None = None
        self._inbound: tuple[InboundBook, ...] = ()

    # -- write side ------------------------------------------------------------------------------------

    def set_probes(self, probes: Sequence[ProbeConfig]) -> None:
        """Install the probe list of a (re)load: keep the state of ids still present, forget the others."""
        old = self._probes
        new: dict[str, _ProbeState] = {}
        for config in probes:
            state = old.get(config.id) or new.get(config.id)
            if state is None:
                state = _ProbeState(config=config)
            state.config = config
            literal = _literal_address(config.spec.host)
            pinned_key = (literal if literal is not None else "", config.spec.port)
            pinned = state.addresses.get(pinned_key)
            if pinned is None:
                state.addresses[pinned_key] = _new_address_state(pinned_key[0], pinned=True)
            else:
                pinned.pinned = True
            new[config.id] = state
        self._probes = new

    def record(self, probe: ProbeConfig, results: Sequence[ProbeResult]) -> tuple[ThresholdChange, ...]:
        """Store one run's results (one per address) as the latest, and count them. Returns the addresses
        whose up/down state by the probe's thresholds changed (a `local_resource_error` judges nothing)."""
        changes: list[ThresholdChange] = []
        state = self._probes.get(probe.id)
        if state is None:
            return ()  # removed by a reload while it was running
        results = tuple(results)
        state.runs += 1
        state.latest = results
        state.recorded_at = self._clock()
        if any(not r.success for r in results):
            state.last_failure = tuple(r for r in results if not r.success)
        for result in results:
            key = (result.address, result.port)
            address = state.addresses.get(key)
            if address is None:
                address = state.addresses[key] = _new_address_state(result.address)
            address.runs += 1
            address.last_seen_run = state.runs
            address.snapshot = None
            if not result.success:
                address.failures[result.reason] = address.failures.get(result.reason, 0) + 1
            if result.status_code is not None and result.timings.sip is not None:
                address.sip.observe(result.timings.sip)
            if result.retransmissions:
                address.retransmissions += result.retransmissions
            if result.reason is not Reason.LOCAL_RESOURCE_ERROR:
                updown = address.updown
                updown.thresholds = probe.thresholds
                previous = updown.state
                moved = updown.feed(result.success)
                if moved is not None:
                    run = updown.successes if moved == "up" else updown.failures
                    changes.append(ThresholdChange(result.address, previous, moved, run, result.port))
        for key in [
            key
            for key, address in state.addresses.items()
            if not address.pinned and state.runs - address.last_seen_run >= STALE_RUNS
        ]:
            del state.addresses[key]
        return tuple(changes)

    def set_rtp(self, entries: Sequence[RtpProbeConfig]) -> None:
        """Install the [[rtp]] peers of a (re)load: keep the state of ids still present (minus blocks a new
        range no longer has), forget the others."""
        old = self._rtp
        new: dict[str, _RtpState] = {}
        for config in entries:
            state = old.get(config.id) or new.get(config.id) or _RtpState(config=config)
            if state.config.spec.rtp_range != config.spec.rtp_range:
                labels = {f"{lo}-{hi}" for lo, hi in config.spec.blocks()}
                state.blocks = {k: v for k, v in state.blocks.items() if k in labels}
            state.config = config
            new[config.id] = state
        self._rtp = new

    def record_rtp(self, probe: RtpProbeConfig, result: RtpResult) -> None:
        """Store one RTP run as the latest, count it, and update the blocks it sampled."""
        state = self._rtp.get(probe.id)
        if state is None:
            return  # removed by a reload while it was running
        state.runs += 1
        state.latest = result
        state.recorded_at = self._clock()
        if not result.success:
            state.last_failure = result
            state.failures[result.reason] = state.failures.get(result.reason, 0) + 1
        for port in result.ports:
            state.ports[port.state] = state.ports.get(port.state, 0) + 1
        for sample in result.rtt_samples:
            state.rtt.observe(sample)
        sampled_at = result.started_at.timestamp() if result.started_at is not None else state.recorded_at
        for block in result.blocks:
            if block.sampled:
                state.blocks[block.label] = BlockSeen(block, sampled_at)

    def observe_lag(self, seconds: float) -> None:
        """How late a scheduled run started (seconds; negative values count as 0)."""
        self._lag.observe(max(0.0, seconds))

    def probe_started(self) -> None:
        self._in_flight += 1

    def probe_finished(self) -> None:
        self._in_flight = max(0, self._in_flight - 1)

    def slot_skipped(self) -> None:
        """A planned run did not start because the probe's previous run was still going."""
        self._skipped_slots += 1

    def set_reload(self, *, success: bool, at: float, error: str | None = None) -> None:
        """The outcome of a configuration (re)load at wall-clock unix time `at` (`error`: why it failed)."""
        self._reload_successful = success
        if success:
            self._last_reload_success = at
            self._last_reload_error = None
        else:
            self._last_reload_error = error

    def set_inbound(self, books: Sequence[InboundBook]) -> None:
        """The books of the daemon's inbound OPTIONS listeners (`[[listen]]`, umprobe.inbound)."""
        self._inbound = tuple(books)

    # -- read side -------------------------------------------------------------------------------------

    def inbound_views(self) -> tuple[InboundView, ...]:
        """The demotion view of every inbound listener, now (by the store's clock)."""
        now = self._clock()
        return tuple(book.view(now) for book in self._inbound)

    def probes(self) -> tuple[ProbeConfig, ...]:
        """The configured probes, in configuration order."""
        return tuple(state.config for state in self._probes.values())

    def latest(self, probe_id: str) -> tuple[ProbeResult, ...]:
        """The results of the probe's last run (one per address); () before its first run or if unknown."""
        state = self._probes.get(probe_id)
        return state.latest if state else ()

    def last_failure(self, probe_id: str) -> tuple[ProbeResult, ...]:
        """The failed results of the probe's most recent run that had a failure; () if none yet."""
        state = self._probes.get(probe_id)
        return state.last_failure if state else ()

    def recorded_at(self, probe_id: str) -> float | None:
        """Wall-clock unix time of the probe's last recorded run, or None."""
        state = self._probes.get(probe_id)
        return state.recorded_at if state else None

    def address_stats(self, probe_id: str) -> tuple[AddressStats, ...]:
        """Counters and histogram of every (address, port) of the probe, address-less key ("") first."""
        state = self._probes.get(probe_id)
        if state is None:
            return ()
        addresses = state.addresses
        keys = sorted(addresses) if len(addresses) > 1 else addresses
        return tuple(_address_stats(key, addresses[key]) for key in keys)

    def rtp_probes(self) -> tuple[RtpProbeConfig, ...]:
        """The configured [[rtp]] peers, in configuration order."""
        return tuple(state.config for state in self._rtp.values())

    def rtp_latest(self, probe_id: str) -> RtpResult | None:
        """The peer's last run; None before its first run or if unknown."""
        state = self._rtp.get(probe_id)
        return state.latest if state else None

    def rtp_last_failure(self, probe_id: str) -> RtpResult | None:
        """The peer's most recent run that failed (reason not `ok`); None if none yet."""
        state = self._rtp.get(probe_id)
        return state.last_failure if state else None

    def rtp_recorded_at(self, probe_id: str) -> float | None:
        """Wall-clock unix time of the peer's last recorded run, or None."""
        state = self._rtp.get(probe_id)
        return state.recorded_at if state else None

    def rtp_stats(self, probe_id: str) -> RtpStats | None:
        """The peer's counters, RTT histogram and last-known blocks; None if not configured."""
        state = self._rtp.get(probe_id)
        if state is None:
            return None
        order = {label: i for i, label in enumerate(f"{lo}-{hi}" for lo, hi in state.config.spec.blocks())}
        blocks = sorted(state.blocks.values(), key=lambda seen: order.get(seen.block.label, len(order)))
        return RtpStats(
            runs=state.runs,
            failures=tuple((r, state.failures.get(r, 0)) for r in RTP_FAILURE_REASONS),
            ports=tuple((p, state.ports.get(p, 0)) for p in RTP_PORT_RESULTS),
            rtt=state.rtt.snapshot(),
            blocks=tuple(blocks),
        )

    def rtp_known_blocks(self, probe_id: str) -> tuple[BlockResult, ...]:
        """Every block of the peer's range as last sampled, in range order; a block not sampled yet is an
        empty `BlockResult` (map symbol "."). For the block map across cycles (status page, demo)."""
        state = self._rtp.get(probe_id)
        if state is None:
            return ()
        out: list[BlockResult] = []
        for index, (lo, hi) in enumerate(state.config.spec.blocks()):
            seen = state.blocks.get(f"{lo}-{hi}")
            out.append(seen.block if seen is not None else BlockResult(index=index, lo=lo, hi=hi))
        return tuple(out)

    def scheduler_lag(self) -> HistogramSnapshot:
        return self._lag.snapshot()

    @property
    def in_flight(self) -> int:
        return self._in_flight

    @property
    def skipped_slots(self) -> int:
        return self._skipped_slots

    def reload_status(self) -> ReloadStatus:
        return ReloadStatus(self._reload_successful, self._last_reload_success, self._last_reload_error)


def _address_stats(key: tuple[str, int], state: _AddressState) -> AddressStats:
    """The frozen snapshot of one address's counters, made again only after `record` changed them."""
    snapshot = state.snapshot
    if snapshot is None:
        address, port = key
        failures = tuple((r, state.failures[r]) for r in _reason_order(state.failures))
        ud = state.updown
        snapshot = state.snapshot = AddressStats(
            address,
            state.runs,
            failures,
            state.sip.snapshot(),
            ud.state,
            ud.up_transitions,
            ud.down_transitions,
            ud.failures,
            ud.successes,
            port,
            state.retransmissions,
        )
    return snapshot


_REASON_ORDER: dict[Reason, int] = {r: i for i, r in enumerate(Reason)}


def _reason_order(reasons: Iterable[Reason]) -> list[Reason]:
    return sorted(reasons, key=_REASON_ORDER.__getitem__)
