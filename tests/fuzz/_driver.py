"""Run one oracle under atheris (libFuzzer), or under a small random driver where atheris cannot install.

`fuzz(oracle, argv, seeds)`: with atheris, every loaded umprobe module is instrumented for coverage and
libFuzzer gets `argv` as is (`-runs=N`, `-seed=S`, `-max_total_time=T`, `-artifact_prefix=DIR/`...). A
crash (an exception out of the oracle) makes libFuzzer print the traceback, write the input to
``<artifact_prefix>crash-<sha1>`` and exit non-zero; replay it with ``python tests/fuzz/atheris_X.py FILE``.

atheris ships binary wheels for Linux x86_64 only (pyproject's `[test]` extra installs it there). Elsewhere
the same command runs the oracle over `-runs` random mutations of `seeds` (default 10,000; `-seed` makes it
repeatable) and says so: slower to find anything and blind to coverage, but the oracle is the same.

`UMPROBE_FUZZ_PLANT=1` in the environment plants a bug (an input starting with 0x42 raises), so a test can
prove that a crash really fails the run.
"""

from __future__ import annotations

import gc
import os
import platform
import random
import sys
import types
from collections.abc import Callable, Sequence
from typing import Any

__all__ = ["ATHERIS_PLATFORM", "fuzz", "mutate"]

ATHERIS_PLATFORM = sys.platform == "linux" and platform.machine() == "x86_64"
"""Where atheris has binary wheels, so `scripts/bootstrap --test` installs it."""


class PlantedBug(Exception):
    """The bug `UMPROBE_FUZZ_PLANT` plants, to show that the harness reports crashes."""


def _planted(oracle: Callable[[bytes], None]) -> Callable[[bytes], None]:
    def check(data: bytes) -> None:
        if data[:1] == b"\x42":
            raise PlantedBug("the planted bug: an input starting with 0x42")
        oracle(data)

    return check


def mutate(seed: bytes, rng: random.Random) -> bytes:
    """A few byte-level mutations of `seed` (flip, overwrite, insert, delete, duplicate a slice)."""
    data = bytearray(seed)
    for _ in range(rng.randint(1, 8)):
        op = rng.randrange(5)
        at = rng.randrange(len(data) + 1)
        if op == 0 and data:
            data[at % len(data)] ^= 1 << rng.randrange(8)
        elif op == 1 and data:
            data[at % len(data)] = rng.randrange(256)
        elif op == 2:
            data[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 4)))
        elif op == 3 and data:
            del data[at : at + rng.randint(1, 8)]
        else:
            data[at:at] = data[at : at + rng.randint(1, 32)]
    return bytes(data)


def _option(argv: Sequence[str], name: str, default: int) -> int:
    for arg in argv:
        if arg.startswith(f"-{name}="):
            return int(arg.split("=", 1)[1])
    return default


def _fallback(oracle: Callable[[bytes], None], argv: Sequence[str], seeds: Sequence[bytes]) -> None:
    runs = _option(argv, "runs", 10_000)
    rng = random.Random(_option(argv, "seed", 0))
    pool = [b"", *seeds]
    print(
        f"atheris is not installed (it has wheels for Linux x86_64 only): running {runs} random mutations",
        file=sys.stderr,
    )
    for _ in range(max(runs, 0)):
        if rng.random() < 0.2:
            data = bytes(rng.randrange(256) for _ in range(rng.randrange(64)))
        else:
            data = mutate(rng.choice(pool), rng)
        oracle(data)
    print(f"Done {runs} runs (random driver)", file=sys.stderr)


def _instrument(atheris: Any) -> None:
    """Coverage instrumentation for umprobe's own functions only: the standard library and the oracles
    stay fast (atheris.instrument_all() would make every run several times slower)."""
    count = 0
    for obj in gc.get_objects():
        if isinstance(obj, types.FunctionType) and (obj.__module__ or "").startswith("umprobe"):
            atheris.instrument_func(obj)
            count += 1
    print(f"INFO: instrumented {count} umprobe functions", file=sys.stderr)


def fuzz(oracle: Callable[[bytes], None], argv: Sequence[str], seeds: Sequence[bytes] = ()) -> None:
    """Fuzz `oracle` with libFuzzer arguments `argv` (see the module docstring); returns only on success."""
    if os.environ.get("UMPROBE_FUZZ_PLANT") == "1":
        oracle = _planted(oracle)
    try:
        import atheris  # type: ignore[import-not-found, unused-ignore]
    except ImportError:
        if ATHERIS_PLATFORM:
            sys.exit("atheris is not installed: run scripts/bootstrap --test (it is in the [test] extra)")
        _fallback(oracle, argv, seeds)
        return
    _instrument(atheris)
    atheris.Setup(list(argv), oracle)
    atheris.Fuzz()
