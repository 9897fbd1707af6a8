"""Shared values and measuring helpers for the benchmarks (bench/README.md explains the contract).

CPU time is read per process from /proc/PID/task/*/schedstat (the first field is nanoseconds on CPU), which
counts every thread of the process; whole-machine /proc/stat under-reads on these shared machines.
"""

from __future__ import annotations

import math
import os
import resource
import shutil
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "PACKAGES",
    "SEARCH_PATH",
    "BenchResult",
    "Goal",
    "Options",
    "Row",
    "Stopwatch",
    "median",
    "missing_message",
    "percentile",
    "proc_cpu_seconds",
    "rss_bytes",
    "self_cpu_seconds",
    "which",
]


#: Where a binary comes from, for the "needs X (apt install Y)" line.
PACKAGES = {
    "kamailio": "kamailio kamailio-tls-modules",
    "prometheus-blackbox-exporter": "prometheus-blackbox-exporter",
    "sipp": "sip-tester",
    "sipsak": "sipsak",
    "socat": "socat",
    "tshark": "tshark",
    "ip": "iproute2",
    "nft": "nftables",
    "prometheus": "prometheus",
    "promtool": "prometheus",
}

#: PATH plus the sbin directories (`ip` and `nft` live there; a non-root PATH may lack them).
SEARCH_PATH = os.environ.get("PATH", "") + ":/usr/local/sbin:/usr/sbin:/sbin"


def which(binary: str) -> str | None:
    return shutil.which(binary, path=SEARCH_PATH)


def missing_message(needs: Sequence[str]) -> str | None:
    """'needs X, Y (apt install P Q)' for the binaries of `needs` that are not installed, else None."""
    missing = [b for b in needs if which(b) is None]
    if not missing:
        return None
    packages: list[str] = []
    for binary in missing:
        for package in PACKAGES.get(binary, binary).split():
            if package not in packages:
                packages.append(package)
    return (
        f"needs {', '.join(missing)} (apt install {' '.join(packages)}; "
        "or scripts/install-test-peers as root installs every lab peer)"
    )


@dataclass(frozen=True, slots=True)
class Options:
    quick: bool = False
    rounds: int = 5
    workdir: Path = Path("/tmp")
    log: Callable[[str], None] = print


@dataclass(frozen=True, slots=True)
class Row:
    """One measured figure: umprobe's beside a named peer's (peer None when there is no peer for it)."""

    case: str
    metric: str
    unit: str
    umprobe: float | None
    peer: float | None = None
    peer_name: str | None = None

    @property
    def ratio(self) -> float | None:
        if self.umprobe is None or self.peer is None or self.peer == 0:
            return None
        return self.umprobe / self.peer


@dataclass(frozen=True, slots=True)
class Goal:
    goal: str
    target: str
    measured: str
    met: bool


@dataclass(slots=True)
class BenchResult:
    name: str
    title: str
    rows: list[Row] = field(default_factory=list)
    goals: list[Goal] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    environment: dict[str, str] = field(default_factory=dict)
    error: str | None = None  # why it could not run, e.g. "needs sipsak (apt install sipsak)"


def proc_cpu_seconds(pid: int) -> float:
    """CPU seconds used so far by every thread of process `pid` (from schedstat)."""
    total = 0
    task_dir = Path(f"/proc/{pid}/task")
    for task in task_dir.iterdir():
        try:
            total += int((task / "schedstat").read_text().split()[0])
        except (FileNotFoundError, ProcessLookupError, IndexError, ValueError):
            continue  # a thread that ended between listing and reading
    return total / 1e9


def self_cpu_seconds() -> float:
    """CPU seconds of this process (user + system, all threads)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def rss_bytes(pid: int) -> int:
    """Resident set size of `pid` in bytes (VmRSS from /proc/PID/status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise ValueError(f"no VmRSS in /proc/{pid}/status")


def median(values: Sequence[float]) -> float:
    if not values:
        return math.nan
    return float(statistics.median(values))


def percentile(values: Sequence[float], p: float) -> float:
    """The p-th percentile (0-100) by linear interpolation; NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    if len(ordered) == 1:
        return float(ordered[0])
    rank = (len(ordered) - 1) * p / 100.0
    low = math.floor(rank)
    high = math.ceil(rank)
    return float(ordered[low] + (ordered[high] - ordered[low]) * (rank - low))


class Stopwatch:
    """Wall time and this process's CPU time between start and stop."""

    def __init__(self) -> None:
        self.wall = 0.0
        self.cpu = 0.0
        self._wall0 = 0.0
        self._cpu0 = 0.0

    def __enter__(self) -> Stopwatch:
        self._wall0 = time.perf_counter()
        self._cpu0 = self_cpu_seconds()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.perf_counter() - self._wall0
        self.cpu = self_cpu_seconds() - self._cpu0


def cpu_count() -> int:
    return os.cpu_count() or 1
