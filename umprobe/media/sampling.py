"""Which even ports of the RTP range to probe in each cycle, and the fixed blocks results aggregate into.

Ranges are validated once, here: ``lo`` and ``hi`` are integers in 1024..65535 (Exchange UM's
``MinimumRtpPort``/``MaximumRtpPort`` bounds), ``lo <= hi``, with at least one even port between them
(RTP uses even ports, RTCP the next odd one, RFC 3550 §11). Violations are our misuse: ValueError.
"""

# Theory of operation
# -------------------
# blocks(lo, hi) cuts the M even ports into B = min(max_blocks, M) contiguous runs whose sizes differ by at
# most one (the first M mod B runs are one longer). A block's span is [its first even port, its last even
# port + 1] (the RTCP port belongs with its RTP port); the first block starts at lo and the last ends at
# hi, so the blocks tile [lo, hi] without gaps. Labels "LO-HI" are fixed by the range: safe as metric labels.
#
# SweepPlan orders the M even ports in a fixed *stratified* order and cycle c takes the next K of it:
#
#   round r = 0, 1, ...: one port from every block that still has one, the blocks visited in a fixed order;
#   block order: block 0, block B-1, then the middle ones by a stride permutation (stride ~ n/phi, coprime to
#                n, starting in the middle), so consecutive picks land in blocks far apart;
#   inside a block: round r takes local index (start + r * s) mod size, again a coprime stride s ~ size/phi;
#                the start is the block's low end for block 0 and its high end for block B-1.
#
# Position 0 is therefore lo's even port and position 1 hi's: every sweep starts with both ends of the range.
# The first B positions hit B distinct blocks, so any K consecutive picks of a round cover min(K, B) blocks.
# Each even port appears exactly once per sweep of ceil(M / K) cycles; the sweep's last cycle takes what is
# left (fewer than K when K does not divide M), so sweeps and cycles stay aligned and every sweep starts
# afresh with the two ends. `port_at` is O(1) and nothing proportional to M is stored.
# This refines the single stride permutation sketched in docs/rtp.md: a plain golden-ratio stride spreads
# well on average but can leave a block unvisited among the first B picks; the round-robin over blocks cannot.

from __future__ import annotations

import bisect
import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

__all__ = [
    "MAX_BLOCKS",
    "MAX_RTP_PORT",
    "MIN_RTP_PORT",
    "Block",
    "SweepPlan",
    "block_of",
    "blocks",
    "even_ports",
]

MIN_RTP_PORT: Final = 1024
MAX_RTP_PORT: Final = 65535
MAX_BLOCKS: Final = 64
_INVERSE_PHI: Final = (math.sqrt(5) - 1) / 2  # 1/phi ~ 0.618


def _check_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    return value


def even_ports(lo: int, hi: int) -> range:
    """Return the even ports in [lo, hi] after validating the range (module docstring; ValueError)."""
    for name, value in (("lo", lo), ("hi", hi)):
        if not MIN_RTP_PORT <= _check_int(name, value) <= MAX_RTP_PORT:
            raise ValueError(f"{name} must be in {MIN_RTP_PORT}..{MAX_RTP_PORT}, got {value!r}")
    if lo > hi:
        raise ValueError(f"lo must not exceed hi, got lo={lo!r} hi={hi!r}")
    ports = range(lo + lo % 2, hi + 1, 2)
    if not ports:
        raise ValueError(f"the range {lo}-{hi} holds no even port")
    return ports


@dataclass(frozen=True, slots=True)
class Block:
    """One fixed block of the range: ports `lo`..`hi` inclusive, `label` ``"LO-HI"``, `index` from 0."""

    index: int
    lo: int
    hi: int
    label: str


def blocks(lo: int, hi: int, max_blocks: int = MAX_BLOCKS) -> list[Block]:
    """Return the contiguous blocks covering [lo, hi] (at most `max_blocks`, even-port counts differing by
    at most one; see the theory of operation)."""
    ports = even_ports(lo, hi)
    if _check_int("max_blocks", max_blocks) < 1:
        raise ValueError(f"max_blocks must be at least 1, got {max_blocks!r}")
    count = min(max_blocks, len(ports))
    size, longer = divmod(len(ports), count)
    result: list[Block] = []
    start = 0
    for index in range(count):
        end = start + size + (index < longer)
        block_lo = lo if index == 0 else ports[start]
        block_hi = hi if index == count - 1 else ports[end - 1] + 1
        result.append(Block(index, block_lo, block_hi, f"{block_lo}-{block_hi}"))
        start = end
    return result


def block_of(blocks: Sequence[Block], port: int) -> Block:
    """Return the block of sorted, contiguous `blocks` that holds `port` (binary search, O(log n))."""
    i = bisect.bisect_left(blocks, port, key=lambda block: block.hi)
    if i == len(blocks) or blocks[i].lo > port:
        raise ValueError(f"port {port!r} is outside the blocks' range")
    return blocks[i]


@functools.cache
def _stride(n: int) -> int:
    """A stride near n/phi that is coprime to n (1 for n <= 2): i -> i*s mod n is then a permutation."""
    if n <= 2:
        return 1
    guess = max(1, round(n * _INVERSE_PHI))
    for delta in range(n):
        for candidate in (guess - delta, guess + delta):
            if 0 < candidate < n and math.gcd(candidate, n) == 1:
                return candidate
    raise AssertionError("unreachable: 1 is coprime to every n")  # pragma: no cover


def _ends_first(n: int, j: int) -> int:
    """The j-th element of a permutation of range(n) that starts 0, n-1 and continues with a stride
    permutation of 1..n-2 beginning in the middle."""
    if j < 2:
        return j * (n - 1)
    middle = n - 2
    return 1 + (middle // 2 + (j - 2) * _stride(middle)) % middle


class SweepPlan:
    """The per-cycle port sample for the range [lo, hi], `per_cycle` (K) ports per cycle (module comments).

    `ports_for_cycle(c)` is deterministic; cycles ``s*C .. s*C + C-1`` (C = `cycles_per_sweep`) form sweep
    `s`, which probes every even port exactly once, starting with both ends of the range.
    """

    __slots__ = (
        "_block_order",
        "_last_round",
        "_ports",
        "_rounds",
        "_starts",
        "_strides",
        "blocks",
        "cycles_per_sweep",
        "hi",
        "lo",
        "per_cycle",
        "port_count",
    )

    def __init__(self, lo: int, hi: int, per_cycle: int, *, max_blocks: int = MAX_BLOCKS) -> None:
        self._ports = even_ports(lo, hi)
        if _check_int("per_cycle", per_cycle) < 1:
            raise ValueError(f"per_cycle must be at least 1, got {per_cycle!r}")
        self.lo, self.hi, self.per_cycle = lo, hi, per_cycle
        self.port_count = len(self._ports)
        self.cycles_per_sweep = -(-self.port_count // per_cycle)  # ceil(M / K)
        self.blocks: tuple[Block, ...] = tuple(blocks(lo, hi, max_blocks))
        count = len(self.blocks)
        size, longer = divmod(self.port_count, count)
        self._rounds = size  # full rounds, every block visited; then one partial round of the longer blocks
        self._starts = [b * size + min(b, longer) for b in range(count)]  # first even-port index of block b
        self._strides = {size: _stride(size), size + 1: _stride(size + 1)}
        self._block_order = [_ends_first(count, j) for j in range(count)]
        self._last_round = [b for b in self._block_order if b < longer]

    def _block_size(self, block: int) -> int:
        end = self._starts[block + 1] if block + 1 < len(self._starts) else self.port_count
        return end - self._starts[block]

    def port_at(self, position: int) -> int:
        """Return the port at `position` (0 <= position < port_count) of the sweep order."""
        if _check_int("position", position) < 0 or position >= self.port_count:
            raise ValueError(f"position must be in 0..{self.port_count - 1}, got {position!r}")
        round_, i = divmod(position, len(self._block_order))
        block = self._block_order[i] if round_ < self._rounds else self._last_round[i]
        size = self._block_size(block)
        if len(self._block_order) == 1:  # one block: it must supply both ends itself
            local = _ends_first(size, round_)
        else:
            first = size - 1 if block == len(self._block_order) - 1 else 0
            local = (first + round_ * self._strides[size]) % size
        return self._ports[self._starts[block] + local]

    def ports_for_cycle(self, cycle: int) -> list[int]:
        """Return the ports of cycle `cycle` (>= 0): K ports, fewer in the last cycle of a sweep."""
        if _check_int("cycle", cycle) < 0:
            raise ValueError(f"cycle must be >= 0, got {cycle!r}")
        start = cycle % self.cycles_per_sweep * self.per_cycle
        return [self.port_at(p) for p in range(start, min(start + self.per_cycle, self.port_count))]
