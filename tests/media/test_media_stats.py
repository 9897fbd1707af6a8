"""umprobe.media.stats against hand-computed vectors (RFC 3550 A.1, A.3, §6.4.1/A.8; RFC 4737, 5560)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from umprobe.media import (
    MAX_DROPOUT,
    MAX_MISORDER,
    MIN_SEQUENTIAL,
    JitterEstimator,
    SequenceTracker,
    ntp_transit_units,
    rtt_seconds,
)
from umprobe.media.stats import DUPLICATE_WINDOW


def track(seqs: list[int], base: int | None = None, **kwargs: int) -> SequenceTracker:
    tracker = SequenceTracker(base, **kwargs)
    for seq in seqs:
        tracker.update(seq)
    return tracker


def test_a1_constants() -> None:
    assert (MAX_DROPOUT, MAX_MISORDER, MIN_SEQUENTIAL) == (3000, 100, 2)
    assert DUPLICATE_WINDOW > MAX_MISORDER


# --- jitter -------------------------------------------------------------------------------------------------


def test_jitter_five_packets_by_hand() -> None:
    # RTP timestamps S advance by 160 (20 ms at 8 kHz); arrivals R in the same units wobble by 10.
    #   S:       0    160    320    480    640
    #   R:    1000   1170   1320   1490   1640
    #   transit R-S: 1000 1010   1000   1010   1000
    #   D = transit_j - transit_i:  +10, -10, +10, -10  -> |D| = 10 each
    # J1 = 0      + (10 - 0)/16      = 0.625
    # J2 = 0.625  + (10 - 0.625)/16  = 0.625 + 0.5859375 = 1.2109375
    # J3 = 1.2109375 + (10 - 1.2109375)/16 = 1.2109375 + 0.54931640625 = 1.76025390625
    # J4 = 1.76025390625 + (10 - 1.76025390625)/16 = 1.76025390625 + 0.514984130859375 = 2.275238037109375
    # (all dyadic fractions, so exact in binary floating point)
    jitter = JitterEstimator()
    arrivals, stamps = [1000, 1170, 1320, 1490, 1640], [0, 160, 320, 480, 640]
    results = [jitter.update(r, s) for r, s in zip(arrivals, stamps, strict=True)]
    assert results == [0.0, 0.625, 1.2109375, 1.76025390625, 2.275238037109375]
    assert jitter.value == 2.275238037109375
    assert jitter.count == 5
    assert jitter.seconds() == 2.275238037109375 / 8000  # ~0.284 ms
    assert jitter.seconds(clock_rate=16000) == 2.275238037109375 / 16000

    by_transit = JitterEstimator()
    for transit in [1000, 1010, 1000, 1010, 1000]:
        by_transit.update_transit(transit)
    assert by_transit.value == jitter.value


def test_jitter_constant_delay_is_zero_and_one_step_decays() -> None:
    # Constant transit: every D is 0, J stays 0. Then a single step of 32 units: J = 32/16 = 2,
    # and back to constant (D = 0): J = 2 - 2/16 = 1.875, then 1.875 - 1.875/16 = 1.7578125.
    jitter = JitterEstimator()
    for transit in [500, 500, 500, 532, 532, 532]:
        jitter.update_transit(transit)
    assert jitter.value == 1.7578125


def test_jitter_across_the_rtp_timestamp_wrap() -> None:
    # S1 = 2**32 - 160 = 4294967136, S2 = 0 (wrapped; 160 units later). R1 = 1000, R2 = 1170.
    # Raw D = (1170 - 0) - (1000 - 4294967136) = 4294967306; modulo 2**32 that is 10, so J = 10/16 = 0.625.
    jitter = JitterEstimator()
    jitter.update(1000, 4294967136)
    assert jitter.update(1170, 0) == 0.625


def test_jitter_from_ntp_timestamps() -> None:
    # Forward direction: T1 on the prober's clock, T2 on the peer's (offset by 1000 s: it cancels).
    # 20 ms = 0.02 s; transit 1 = 1000.000 s, transit 2 = 1000.0025 s -> D = 0.0025 s = 20 units at 8 kHz.
    t1a, t2a = 10 << 32, (1010 << 32)
    t1b, t2b = t1a + round(0.02 * 2**32), t2a + round(0.0225 * 2**32)
    jitter = JitterEstimator()
    jitter.update_transit(ntp_transit_units(t1a, t2a))
    jitter.update_transit(ntp_transit_units(t1b, t2b))
    assert jitter.value == pytest.approx(20 / 16, abs=1e-6)
    assert ntp_transit_units(10 << 32, (10 << 32) + (1 << 31)) == 4000.0  # 0.5 s at 8 kHz


# --- loss, reorder, duplicates ------------------------------------------------------------------------------


def test_loss_with_a_gap() -> None:
    # base 100; 102 never arrives. expected = 104 - 100 + 1 = 5, received = 4, lost = 1, ratio 1/5.
    tracker = track([100, 101, 103, 104], base=100)
    assert (tracker.expected, tracker.received, tracker.lost) == (5, 4, 1)
    assert (tracker.reordered, tracker.duplicates, tracker.lost_unique) == (0, 0, 1)
    assert tracker.loss_ratio == 0.2


def test_duplicates_make_a3_loss_negative() -> None:
    # 101 arrives twice: expected = 102 - 100 + 1 = 3, received = 4 (A.1 counts the copy) -> lost = -1.
    tracker = track([100, 101, 101, 102], base=100)
    assert (tracker.expected, tracker.received, tracker.lost) == (3, 4, -1)
    assert tracker.duplicates == 1 and tracker.reordered == 0
    assert tracker.lost_unique == 0  # 3 distinct of 3 expected
    assert tracker.loss_ratio == 0.0


def test_duplicates_do_not_mask_loss() -> None:
    # 102 is lost and 101 duplicated: A.3 says expected 4 - received 4 = 0 lost (masked!),
    # but the separate duplicate count recovers it: 4 expected - 3 distinct = 1 lost.
    tracker = track([100, 101, 101, 103], base=100)
    assert (tracker.expected, tracker.received, tracker.lost) == (4, 4, 0)
    assert (tracker.duplicates, tracker.unique_received, tracker.lost_unique) == (1, 3, 1)
    assert tracker.loss_ratio == 0.25


def test_reordered_and_duplicates_are_separate() -> None:
    # 102 overtakes 101: 101 arrives below NextExp = 103 -> reordered (RFC 4737 §3). A second 101 is a
    # duplicate (RFC 5560), not a second reordering; a repeat of the newest (103) is a duplicate too.
    tracker = track([100, 102, 101, 103, 101, 103], base=100)
    assert (tracker.reordered, tracker.duplicates) == (1, 2)
    assert (tracker.expected, tracker.received, tracker.lost, tracker.lost_unique) == (4, 6, -2, 0)


def test_sequence_wrap() -> None:
    # 65534, 65535, 0, 1: extended max = 65536 + 1 = 65537, expected = 65537 - 65534 + 1 = 4, lost 0.
    tracker = track([65534, 65535, 0, 1], base=65534)
    assert (tracker.extended_max, tracker.expected, tracker.lost) == (65537, 4, 0)
    # 2 is lost, 3 arrives: expected 6, received 5, lost 1.
    tracker.update(3)
    assert (tracker.extended_max, tracker.expected, tracker.received, tracker.lost) == (65539, 6, 5, 1)
    # Reordering across the wrap: 65535 arrives after 0 -> reordered, counted.
    wrapped = track([65534, 0, 65535, 1], base=65534)
    assert (wrapped.reordered, wrapped.duplicates, wrapped.lost) == (1, 0, 0)
    # A duplicate across the wrap.
    assert track([65535, 0, 65535], base=65535).duplicates == 1


def test_first_packet_lost_counts_with_a_known_base() -> None:
    # The prober knows it started at 100: 100 lost, 101 and 102 arrive -> expected 3, lost 1.
    tracker = track([101, 102], base=100)
    assert (tracker.base, tracker.expected, tracker.received, tracker.lost) == (100, 3, 2, 1)
    assert SequenceTracker(100).expected == 0  # nothing received yet: nothing expected (A.3)


def test_probation_without_a_base() -> None:
    # A.1: MIN_SEQUENTIAL = 2 in-sequence packets validate the source; the first is not counted and
    # the base becomes the second.
    tracker = track([10, 11, 12])
    assert (tracker.base, tracker.received, tracker.expected, tracker.discarded) == (11, 2, 2, 1)
    # Out of sequence during probation restarts it.
    assert track([10, 20, 21]).base == 21
    # min_sequential=1 accepts the first packet at once.
    single = track([10, 12], min_sequential=1)
    assert (single.base, single.received, single.lost) == (10, 2, 1)
    assert SequenceTracker().expected == 0
    with pytest.raises(ValueError):
        SequenceTracker(min_sequential=0)


def test_huge_jump_is_discarded_then_resyncs() -> None:
    # 5000 is 4899 ahead of 101 (>= MAX_DROPOUT): discarded, bad_seq = 5001. 5001 follows it: the sender
    # restarted, so A.1 re-initialises with base 5001 (received restarts at 1).
    tracker = track([100, 101, 5000], base=100)
    assert (tracker.received, tracker.discarded, tracker.resyncs) == (2, 1, 0)
    assert tracker.update(5001)
    assert (tracker.base, tracker.received, tracker.expected, tracker.resyncs) == (5001, 1, 1, 1)


def test_packets_too_late_are_discarded() -> None:
    # 150 arrives when max is 300: 150 behind >= MAX_MISORDER (100), so A.1 treats it as a jump; so does 200
    # (udelta = 65436 = 2**16 - MAX_MISORDER is still in A.1's "very large jump" branch).
    tracker = track(list(range(100, 301)), base=100)
    assert not tracker.update(150)
    assert (tracker.reordered, tracker.duplicates, tracker.discarded) == (0, 0, 1)
    assert not tracker.update(200)
    # 99 behind is "late" (A.1's misorder zone) and known as a duplicate.
    assert tracker.update(201) and tracker.duplicates == 1


def test_interval_fraction_lost() -> None:
    # Interval 1: 0..9 without 3 and 4: expected 10, received 8, lost 2 -> (2 << 8) // 10 = 51.
    tracker = track([0, 1, 2, 5, 6, 7, 8, 9], base=0)
    assert tracker.interval_fraction_lost() == 51
    # Interval 2: 10..19 all there -> 0. Interval 3: duplicates only -> negative loss -> 0.
    for seq in range(10, 20):
        tracker.update(seq)
    assert tracker.interval_fraction_lost() == 0
    tracker.update(19)
    assert tracker.interval_fraction_lost() == 0
    assert tracker.interval_fraction_lost() == 0  # nothing new at all


def test_memory_is_bounded() -> None:
    tracker = SequenceTracker(0)
    for i in range(200_000):
        tracker.update(i & 0xFFFF)
    assert tracker.expected == tracker.received == 200_000
    assert tracker._seen.bit_length() <= DUPLICATE_WINDOW


def test_bad_arguments() -> None:
    with pytest.raises(ValueError):
        SequenceTracker(65536)
    with pytest.raises(ValueError):
        SequenceTracker(0).update(-1)
    with pytest.raises(ValueError):
        JitterEstimator().update(0, 1 << 32)
    with pytest.raises(ValueError):
        JitterEstimator().seconds(0)


@given(
    base=st.integers(0, 0xFFFF),
    arrivals=st.lists(st.tuples(st.integers(0, MAX_MISORDER - 1), st.integers(0, 3)), max_size=200),
)
def test_counts_agree_with_a_set_model(base: int, arrivals: list[tuple[int, int]]) -> None:
    # Offsets 0..99 from any base (so across the wrap too), in any order, some repeated: never MAX_DROPOUT
    # ahead nor MAX_MISORDER behind, so every packet counts. A plain set is the model.
    tracker = SequenceTracker(base)
    seen: set[int] = set()
    late = 0
    for offset, copies in arrivals:
        for _ in range(copies + 1):
            assert tracker.update((base + offset) & 0xFFFF)
            if offset not in seen and seen and offset < max(seen):
                late += 1
            seen.add(offset)
    top = max(seen, default=-1)
    received = sum(copies + 1 for _, copies in arrivals)
    assert tracker.received == received
    assert tracker.unique_received == len(seen)
    assert tracker.duplicates == received - len(seen)
    assert tracker.reordered == late
    assert tracker.expected == top + 1
    assert tracker.lost_unique == top + 1 - len(seen)
    assert tracker.discarded == tracker.resyncs == 0


# --- RTT ----------------------------------------------------------------------------------------------------


def test_rtt_by_hand() -> None:
    # T1 = 1000 s (prober), T2 = 5000.25 s (peer clock, offset), T3 = T2 + 0.125 s, T4 = T1 + 0.5 s.
    # RTT = (T4 - T1) - (T3 - T2) = 0.5 - 0.125 = 0.375 s.
    t1 = 1000 << 32
    t2 = (5000 << 32) + (1 << 30)
    t3 = t2 + (1 << 29)
    t4 = t1 + (1 << 31)
    assert rtt_seconds(t1, t2, t3, t4) == 0.375


def test_rtt_across_the_ntp_era_wrap() -> None:
    # T1 0.5 s before the 2036 wrap, T4 0.25 s after: T4 - T1 = 0.75 s; the peer held it 0.25 s.
    t1 = (1 << 64) - (1 << 31)
    t4 = 1 << 30
    t2 = 123 << 32
    t3 = t2 + (1 << 30)
    assert rtt_seconds(t1, t2, t3, t4) == 0.5
