"""Receive-side statistics: RFC 3550 sequence tracking, loss, reordering, duplicates, jitter; and RTT.

Nothing here reads a clock: arrival times come in from the caller, already in RTP timestamp units (or as
transit times, `JitterEstimator.update_transit`).
"""

# Theory of operation
# -------------------
# SequenceTracker is RFC 3550 Appendix A.1 (update_seq) with extended (cycle-counting) sequence numbers kept
# as one Python int, `_max_ext`, instead of the separate cycles/max_seq pair; `max_ext & 0xFFFF` is A.1's
# max_seq. For each packet, udelta = (seq - max_seq) mod 2**16 puts it in one of three zones:
#
#   udelta < MAX_DROPOUT                    in order, possibly after a gap: max advances by udelta (wrapping
#                                           65535 -> 0 simply continues the extended count);
#   udelta <= 2**16 - MAX_MISORDER          a huge jump: discarded, unless it is the successor of the previous
#                                           huge jump (bad_seq), which means the sender restarted: re-sync;
#   otherwise (1..MAX_MISORDER-1 behind)    late: a duplicate if already seen, else reordered.
#
# Probation (A.1's MIN_SEQUENTIAL) applies only when no `base_seq` is given: the source must then send
# MIN_SEQUENTIAL packets in sequence before it is counted, exactly as A.1 does (and, as there, the probation
# packets themselves are not counted). A prober knows the first sequence number it sent, so it passes
# `base_seq`: no probation, and a lost first packet counts as lost (A.1 would silently start after it).
#
# Loss is A.3: expected = extended_max - base + 1, lost = expected - received, where `received` counts every
# accepted packet *including duplicates*, so duplicates can make `lost` negative and mask real loss.
# `duplicates` (RFC 5560: a sequence number already seen) and `reordered` (RFC 4737 §3: a first arrival below
# NextExp = extended_max + 1) are therefore counted separately, and `lost_unique` = expected minus the
# distinct packets received is never masked. Duplicates are found with a bitmap of the last
# DUPLICATE_WINDOW sequence numbers below max (bit i = "max - i was seen"); it only needs to cover
# MAX_MISORDER, since anything that far behind is a "huge jump" and never counted, so memory stays bounded.
# A re-sync (the sender restarted) resets every per-stream count, as A.1's init_seq does, and bumps `resyncs`.
#
# JitterEstimator is §6.4.1 / A.8 in floating point: D = (Rj - Ri) - (Sj - Si) = transit_j - transit_i,
# J += (|D| - J) / 16, in timestamp units. `update` takes an arrival time in timestamp units and the packet's
# 32-bit RTP timestamp and folds D into -2**31..2**31-1, so an RTP timestamp wrap is not a 2**32 jump.

from __future__ import annotations

from typing import Final

from umprobe.media._checks import check_uint
from umprobe.media.ntp import NTP_FRACTION, ntp_diff
from umprobe.media.rtp import CLOCK_RATE

__all__ = [
    "DUPLICATE_WINDOW",
    "MAX_DROPOUT",
    "MAX_MISORDER",
    "MIN_SEQUENTIAL",
    "RTP_SEQ_MOD",
    "JitterEstimator",
    "SequenceTracker",
    "ntp_transit_units",
    "rtt_seconds",
]

RTP_SEQ_MOD: Final = 1 << 16
MAX_DROPOUT: Final = 3000  # RFC 3550 A.1
MAX_MISORDER: Final = 100  # RFC 3550 A.1
MIN_SEQUENTIAL: Final = 2  # RFC 3550 A.1
DUPLICATE_WINDOW: Final = 128  # bits of "seen" history below max; must exceed MAX_MISORDER
_WINDOW_MASK: Final = (1 << DUPLICATE_WINDOW) - 1
_TS_MOD: Final = 1 << 32


class SequenceTracker:
    """RFC 3550 A.1/A.3 sequence tracking for one source, plus reorder and duplicate counts (see above).

    Counts: `received` (A.1: every accepted packet, duplicates included), `duplicates`, `reordered`,
    `discarded` (probation packets and unexplained huge jumps, never part of the other counts) and `resyncs`.
    """

    __slots__ = (
        "_bad_seq",
        "_base_ext",
        "_expected_prior",
        "_max_ext",
        "_min_sequential",
        "_probation",
        "_received_prior",
        "_seen",
        "_started",
        "discarded",
        "duplicates",
        "received",
        "reordered",
        "resyncs",
    )

    def __init__(self, base_seq: int | None = None, *, min_sequential: int = MIN_SEQUENTIAL) -> None:
        """Track a stream whose first sequence number is `base_seq`, or (None) learn it with A.1 probation."""
        if isinstance(min_sequential, bool) or not isinstance(min_sequential, int) or min_sequential < 1:
            raise ValueError(f"min_sequential must be a positive integer, got {min_sequential!r}")
        self._min_sequential = min_sequential
        self._bad_seq = RTP_SEQ_MOD + 1  # matches no sequence number
        self.discarded = 0
        self.resyncs = 0
        self._init(0)
        self._started = base_seq is not None
        self._probation = 0
        if base_seq is not None:
            check_uint("base_seq", base_seq, 16)
            self._init(base_seq)
            self._max_ext = base_seq - 1  # nothing received yet: the first packet base_seq is "in order"
            self._seen = 0

    def _init(self, seq: int) -> None:
        # A.1 init_seq(): a new base; every per-stream count starts again.
        self._base_ext = seq
        self._max_ext = seq
        self._bad_seq = RTP_SEQ_MOD + 1
        self._seen = 1
        self.received = 0
        self.duplicates = 0
        self.reordered = 0
        self._received_prior = 0
        self._expected_prior = 0

    def update(self, seq: int) -> bool:
        """Account for one arriving packet; return False if A.1 does not count it (probation, huge jump)."""
        check_uint("seq", seq, 16)
        if not self._started:  # A.1: a new source starts on probation
            self._started = True
            self._init(seq)
            self._max_ext = seq - 1
            self._probation = self._min_sequential
        if self._probation:
            if seq == (self._max_ext + 1) & 0xFFFF:
                self._probation -= 1
                self._max_ext += 1
                if not self._probation:
                    self._init(seq)
                    self.received = 1
                    return True
            else:
                self._probation = self._min_sequential - 1
                self._max_ext = seq
            self.discarded += 1
            return False

        udelta = (seq - self._max_ext) & 0xFFFF
        if udelta < MAX_DROPOUT:
            if udelta:  # in order, with a permissible gap; may wrap 65535 -> 0
                self._max_ext += udelta
                self._seen = ((self._seen << udelta) | 1) & _WINDOW_MASK
            elif self._seen & 1:  # seq == max: seen already
                self.duplicates += 1
            else:  # only right after a base_seq start: base_seq - 1 arrived, which is below NextExp
                self._seen |= 1
                self.reordered += 1
        elif udelta <= RTP_SEQ_MOD - MAX_MISORDER:  # a huge jump
            if seq != self._bad_seq:
                self._bad_seq = (seq + 1) & 0xFFFF
                self.discarded += 1
                return False
            # Two sequential packets after a jump: the sender restarted without telling us (A.1); re-sync.
            self._init(seq)
            self.resyncs += 1
        else:  # 1..MAX_MISORDER-1 behind max: late
            bit = 1 << (RTP_SEQ_MOD - udelta)
            if self._seen & bit:
                self.duplicates += 1  # RFC 5560
            else:
                self._seen |= bit
                self.reordered += 1  # RFC 4737 §3: below NextExp, first arrival
        self.received += 1
        return True

    @property
    def base(self) -> int:
        """The extended base sequence number (A.1 base_seq)."""
        return self._base_ext

    @property
    def extended_max(self) -> int:
        """The highest extended sequence number received (A.1 cycles + max_seq); base - 1 before any."""
        return self._max_ext

    @property
    def expected(self) -> int:
        """A.3: extended_max - base + 1 (0 until the source is valid)."""
        if not self._started or self._probation:
            return 0
        return self._max_ext - self._base_ext + 1

    @property
    def lost(self) -> int:
        """A.3 cumulative loss: expected - received; negative when duplicates outnumber losses."""
        return self.expected - self.received

    @property
    def unique_received(self) -> int:
        """Distinct sequence numbers received: received - duplicates."""
        return self.received - self.duplicates

    @property
    def lost_unique(self) -> int:
        """expected - unique_received: loss that duplicates cannot mask."""
        return self.expected - self.unique_received

    @property
    def loss_ratio(self) -> float:
        """lost_unique / expected, 0.0 when nothing is expected or nothing is lost."""
        expected, lost = self.expected, self.lost_unique
        return lost / expected if expected > 0 and lost > 0 else 0.0

    def interval_fraction_lost(self) -> int:
        """A.3 fraction lost since the previous call, the RR's 8-bit value (lost*256/expected); 0 if <= 0."""
        expected, received = self.expected, self.received
        expected_interval = expected - self._expected_prior
        lost_interval = expected_interval - (received - self._received_prior)
        self._expected_prior, self._received_prior = expected, received
        if expected_interval <= 0 or lost_interval <= 0:
            return 0
        return (lost_interval << 8) // expected_interval


class JitterEstimator:
    """RFC 3550 §6.4.1 interarrival jitter, in RTP timestamp units (float; A.8 is the integer form)."""

    __slots__ = ("_jitter", "_transit", "count")

    def __init__(self) -> None:
        self._jitter = 0.0
        self._transit: float | None = None
        self.count = 0  # packets seen; the first only sets the reference transit time

    def _apply(self, d: float) -> float:
        self._jitter += (abs(d) - self._jitter) / 16  # §6.4.1: J(i) = J(i-1) + (|D(i-1,i)| - J(i-1))/16
        return self._jitter

    def update(self, arrival_ts_units: int, rtp_ts_units: int) -> float:
        """Add a packet that arrived at `arrival_ts_units` (timestamp units) carrying RTP timestamp
        `rtp_ts_units` (32 bits); return the new jitter. D is folded modulo 2**32 (RFC 3550 §5.1 wrap)."""
        check_uint("rtp_ts_units", rtp_ts_units, 32)
        transit = arrival_ts_units - rtp_ts_units
        previous, self._transit = self._transit, transit
        self.count += 1
        if previous is None:
            return self._jitter
        d = (int(transit - previous) + (_TS_MOD >> 1)) % _TS_MOD - (_TS_MOD >> 1)
        return self._apply(d)

    def update_transit(self, transit: float) -> float:
        """Add a packet by its transit time (arrival - send, in timestamp units, any consistent offset);
        return the new jitter. For directions measured with NTP timestamps, see `ntp_transit_units`."""
        previous, self._transit = self._transit, transit
        self.count += 1
        if previous is None:
            return self._jitter
        return self._apply(transit - previous)

    @property
    def value(self) -> float:
        """The jitter estimate J in timestamp units."""
        return self._jitter

    def seconds(self, clock_rate: int = CLOCK_RATE) -> float:
        """The jitter estimate in seconds (J / clock rate; 8000 Hz for PCMU, RFC 3551 §4.5.14)."""
        if clock_rate <= 0:
            raise ValueError(f"clock_rate must be positive, got {clock_rate!r}")
        return self._jitter / clock_rate


def ntp_transit_units(sent: int, received: int, clock_rate: int = CLOCK_RATE) -> float:
    """Return received - sent (two NTP 64-bit timestamps) in timestamp units of `clock_rate`, era-safe.

    Feed it to `JitterEstimator.update_transit`: forward jitter from (T1, T2), return jitter from (T3, T4).
    The two clocks need not agree: a constant offset cancels in D.
    """
    return ntp_diff(received, sent) * clock_rate / NTP_FRACTION


def rtt_seconds(t1: int, t2: int, t3: int, t4: int) -> float:
    """Round-trip time (T4 - T1) - (T3 - T2) in seconds, from NTP 64-bit timestamps (RFC 8762 §4.3;
    T1/T4 on the sender's clock, T2/T3 on the reflector's, so the clocks need not agree)."""
    return (ntp_diff(t4, t1) - ntp_diff(t3, t2)) / NTP_FRACTION
