"""Splitting one config across N daemons (`umprobe run --shard K/N`) and naming where they stand (`vantage`).

Scale-out uses the engines people already run, not a cluster of umprobe's own: N daemons read the same
probes.toml, each runs the probes whose identity hashes to its shard, and Prometheus scrapes them all.
The hash is SHA-256 of the probe's id (the same stable identity the scheduler's spread uses, e.g.
"host|listener|transport|port|module" or "rtp|host|port|mode|name"), read as a big-endian integer, modulo N:
stable across restarts, Python versions and machines, independent of the order of the file, and a probe
moves only when its own identity or N changes. Shards are numbered 1..N as people count them.

`vantage` is the site a daemon probes from ("dublin", "dc2-gw"): a label on every per-probe series so that
many sites can feed one Prometheus without their series colliding. Its value comes from the operator's
config, never from a peer, and is kept short and plain so it stays a bounded, safe label value.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final, Protocol, TypeVar

__all__ = ["ALL", "MAX_SHARDS", "Shard", "parse_shard", "shard_index", "valid_vantage"]

MAX_SHARDS: Final = 1024
_SHARD: Final = re.compile(r"\s*(\d{1,4})\s*/\s*(\d{1,4})\s*")
_VANTAGE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")


class _HasId(Protocol):
    @property
    def id(self) -> str: ...


_J = TypeVar("_J", bound=_HasId)


def shard_index(probe_id: str, count: int) -> int:
    """The shard (1..count) that owns the probe with this id."""
    digest = hashlib.sha256(probe_id.encode("utf-8")).digest()
    return int.from_bytes(digest, "big") % count + 1


@dataclass(frozen=True, slots=True)
class Shard:
    """This daemon's share of the config: shard `index` of `count` (1/1 runs everything)."""

    index: int = 1
    count: int = 1

    def __post_init__(self) -> None:
        if not 1 <= self.count <= MAX_SHARDS or not 1 <= self.index <= self.count:
            raise ValueError(f"shard {self.index}/{self.count} is not K/N with 1 <= K <= N <= {MAX_SHARDS}")

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    def owns(self, probe_id: str) -> bool:
        return self.count == 1 or shard_index(probe_id, self.count) == self.index

    def select(self, jobs: Iterable[_J]) -> tuple[_J, ...]:
        """The jobs this shard runs, in their original order."""
        return tuple(job for job in jobs if self.owns(job.id))


#: The whole config: what a daemon runs without --shard.
ALL: Final = Shard(1, 1)


def parse_shard(text: str) -> Shard:
    """ "K/N" -> Shard(K, N). Raises ValueError with a message that says what a good value looks like."""
    match = _SHARD.fullmatch(text)
    if match is None:
        raise ValueError(f"{text!r} is not K/N (e.g. 1/2: the first of two shards)")
    index, count = int(match.group(1)), int(match.group(2))
    if count < 1 or count > MAX_SHARDS:
        raise ValueError(f"{text!r}: N must be 1 to {MAX_SHARDS}")
    if not 1 <= index <= count:
        raise ValueError(f"{text!r}: K must be 1 to N ({count}); shards are numbered from 1")
    return Shard(index, count)


def valid_vantage(text: str) -> bool:
    """A vantage name: 1-63 characters, letters, digits, '_', '.', '-', starting with a letter or digit."""
    return _VANTAGE.fullmatch(text) is not None
