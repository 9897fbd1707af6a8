"""Tests for umprobe.media.sampling: the per-cycle port sample and the fixed metric blocks."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from umprobe.media import Block, SweepPlan, block_of, blocks, even_ports

CASES = [
    (1024, 65535, 64),  # Exchange's whole range: 32,256 even ports, 504 cycles
    (1024, 65535, 100),  # K does not divide M: the last cycle of a sweep is shorter
    (1024, 65535, 1),
    (20000, 20010, 3),
    (20001, 20011, 4),  # odd ends
    (30000, 30000, 1),  # a single port
    (30000, 30001, 5),  # K > M
    (40000, 40254, 64),  # exactly 128 even ports
    (1024, 1150, 7),  # 64 even ports: one per block
    (1024, 1100, 10),  # 39 even ports: fewer than 64 blocks
]


def sweep(plan: SweepPlan, number: int = 0) -> list[int]:
    first = number * plan.cycles_per_sweep
    return [port for c in range(first, first + plan.cycles_per_sweep) for port in plan.ports_for_cycle(c)]


@pytest.mark.parametrize(("lo", "hi", "k"), CASES)
def test_every_even_port_exactly_once_per_sweep(lo: int, hi: int, k: int) -> None:
    plan = SweepPlan(lo, hi, k)
    ports = sweep(plan)
    assert sorted(ports) == list(even_ports(lo, hi))
    assert len(ports) == plan.port_count == len(set(ports))
    assert plan.cycles_per_sweep == -(-plan.port_count // k)
    assert all(len(plan.ports_for_cycle(c)) == k for c in range(plan.cycles_per_sweep - 1))
    assert sweep(plan, 1) == ports == sweep(SweepPlan(lo, hi, k), 3)  # deterministic, same every sweep


def test_the_documented_numbers() -> None:
    plan = SweepPlan(1024, 65535, 64)
    assert plan.port_count == 32256
    assert plan.cycles_per_sweep == 504


@pytest.mark.parametrize(("lo", "hi", "k"), CASES)
def test_a_sweep_starts_with_both_ends(lo: int, hi: int, k: int) -> None:
    plan = SweepPlan(lo, hi, k)
    ends = [even_ports(lo, hi)[0], even_ports(lo, hi)[-1]]
    first = plan.ports_for_cycle(0)
    if len(set(ends)) == 1:
        assert first[0] == ends[0]
    elif k == 1:
        assert (first, plan.ports_for_cycle(1)) == ([ends[0]], [ends[1]])
    else:
        assert first[:2] == ends
    again = plan.ports_for_cycle(plan.cycles_per_sweep)  # the first cycle of the next sweep
    assert again == first


@pytest.mark.parametrize(("lo", "hi", "k"), CASES)
def test_picks_are_spread_over_the_blocks(lo: int, hi: int, k: int) -> None:
    plan = SweepPlan(lo, hi, k)
    fixed = blocks(lo, hi)
    order = sweep(plan)
    first = order[:k]
    assert len({block_of(fixed, port).index for port in first}) >= min(k, len(fixed))
    # Every full round of len(fixed) consecutive picks visits every block once.
    for start in range(0, len(order) - len(order) % len(fixed), len(fixed)):
        window = order[start : start + len(fixed)]
        assert {block_of(fixed, port).index for port in window} == set(range(len(fixed)))


def test_consecutive_picks_land_far_apart() -> None:
    plan = SweepPlan(1024, 65535, 64)
    fixed = blocks(1024, 65535)
    first_round = [block_of(fixed, port).index for port in plan.ports_for_cycle(0)]
    gaps = [abs(a - b) for a, b in itertools.pairwise(first_round)]
    assert min(gaps) >= 64 // 4  # never a neighbouring block right after another
    assert first_round[:3] == [0, 63, 32]


def test_blocks_of_the_whole_range() -> None:
    fixed = blocks(1024, 65535)
    assert len(fixed) == 64
    assert fixed[0] == Block(0, 1024, 2031, "1024-2031")  # 504 even ports: 1024..2030, plus RTCP 2031
    assert fixed[-1] == Block(63, 64528, 65535, "64528-65535")
    assert all(len(even_ports(b.lo, b.hi)) == 504 for b in fixed)


@settings(max_examples=300)
@given(st.integers(1024, 65535), st.integers(0, 70000), st.integers(1, 80))
def test_blocks_tile_the_range(lo: int, span: int, max_blocks: int) -> None:
    hi = min(65535, lo + span)
    if lo == hi and lo % 2:
        with pytest.raises(ValueError, match="no even port"):
            blocks(lo, hi, max_blocks)
        return
    fixed = blocks(lo, hi, max_blocks)
    evens = even_ports(lo, hi)
    assert len(fixed) == min(max_blocks, len(evens))
    assert fixed[0].lo == lo and fixed[-1].hi == hi
    for i, (a, b) in enumerate(itertools.pairwise(fixed)):
        assert a.index == i and b.lo == a.hi + 1  # contiguous: no gaps, no overlaps
    sizes = [len(even_ports(b.lo, b.hi)) for b in fixed]
    assert sum(sizes) == len(evens) and max(sizes) - min(sizes) <= 1
    assert all(b.label == f"{b.lo}-{b.hi}" for b in fixed)


def test_block_of_matches_a_linear_search() -> None:
    for lo, hi in [(1024, 65535), (20001, 20011), (30000, 30000)]:
        fixed = blocks(lo, hi)
        for port in range(lo, hi + 1):
            (expected,) = [b for b in fixed if b.lo <= port <= b.hi]
            assert block_of(fixed, port) is expected
        for outside in (lo - 1, hi + 1):
            with pytest.raises(ValueError, match="outside"):
                block_of(fixed, outside)


@settings(max_examples=100, deadline=None)
@given(st.integers(1024, 65535), st.integers(0, 3000), st.integers(1, 300), st.integers(1, 70))
def test_sweeps_for_random_ranges(lo: int, span: int, k: int, max_blocks: int) -> None:
    hi = min(65535, lo + span)
    if lo == hi and lo % 2:
        return
    plan = SweepPlan(lo, hi, k, max_blocks=max_blocks)
    order = sweep(plan)
    evens = even_ports(lo, hi)
    assert sorted(order) == list(evens)
    assert order[: min(2, len(evens))] == [evens[0], evens[-1]][: len(evens)]


@pytest.mark.parametrize(
    ("lo", "hi", "message"),
    [
        (1023, 2000, "lo must be in 1024..65535"),
        (1024, 65536, "hi must be in 1024..65535"),
        (3000, 2000, "lo must not exceed hi"),
        (1025, 1025, "no even port"),
        (True, 2000, "lo must be an integer"),
        (1024.0, 2000, "lo must be an integer"),
    ],
)
def test_range_validation_names_the_value(lo: int, hi: int, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        even_ports(lo, hi)
    with pytest.raises(ValueError, match=message):
        SweepPlan(lo, hi, 4)
    with pytest.raises(ValueError, match=message):
        blocks(lo, hi)


def test_other_misuse() -> None:
    with pytest.raises(ValueError, match="per_cycle"):
        SweepPlan(1024, 2000, 0)
    with pytest.raises(ValueError, match="cycle"):
        SweepPlan(1024, 2000, 4).ports_for_cycle(-1)
    with pytest.raises(ValueError, match="max_blocks"):
        blocks(1024, 2000, 0)
    with pytest.raises(ValueError, match="position"):
        SweepPlan(1024, 1030, 1).port_at(4)
