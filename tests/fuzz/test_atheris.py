"""Run every atheris harness as CI does: a subprocess, a bounded number of libFuzzer runs with a fixed seed.

The run counts keep each harness at a few seconds of CPU here (the SIP oracle parses every input three
ways, so it gets fewer runs); a longer campaign is the same command with `-max_total_time=SECONDS`. On
Linux x86_64, where the `[test]` extra installs atheris, the run must really be libFuzzer; elsewhere the
harness falls back to its random driver (tests/fuzz/_driver.py) and says so.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fuzz._driver import ATHERIS_PLATFORM

HERE = Path(__file__).resolve().parent
HARNESSES = {"atheris_sip.py": 3000, "atheris_media.py": 20000, "atheris_reflector.py": 5000}
LIMIT = 600  # seconds: a bound on a hung harness, not a performance expectation


def run_harness(
    name: str, tmp_path: Path, *args: str, plant: bool = False
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    env.pop("UMPROBE_FUZZ_PLANT", None)
    if plant:
        env["UMPROBE_FUZZ_PLANT"] = "1"
    return subprocess.run(
        [sys.executable, str(HERE / name), *args],
        cwd=tmp_path,  # libFuzzer writes crash-* files into the working directory
        env=env,
        capture_output=True,
        text=True,
        timeout=LIMIT,
        check=False,
    )


def test_atheris_is_installed_where_it_has_wheels() -> None:
    if not ATHERIS_PLATFORM:
        return
    try:
        import atheris  # type: ignore[import-not-found, unused-ignore]  # noqa: F401
    except ImportError:  # pragma: no cover - the failure this test exists for
        pytest.fail("atheris is missing: `scripts/bootstrap --test` installs it (pyproject [test] extra)")


@pytest.mark.parametrize(("name", "runs"), HARNESSES.items(), ids=list(HARNESSES))
def test_harness_runs_clean(name: str, runs: int, tmp_path: Path) -> None:
    out = run_harness(name, tmp_path, f"-runs={runs}", "-seed=1", f"-artifact_prefix={tmp_path}/")
    assert out.returncode == 0, f"{name} found a crash:\n{out.stderr[-6000:]}"
    assert f"Done {runs} runs" in out.stderr, out.stderr[-3000:]
    if ATHERIS_PLATFORM:
        assert "INFO: instrumented" in out.stderr and "libFuzzer" in out.stderr, out.stderr[-3000:]
    assert not list(tmp_path.glob("crash-*"))


def test_a_crash_fails_the_run_and_can_be_replayed(tmp_path: Path) -> None:
    """The pipeline is real: a planted bug is found, reported non-zero, saved, and replays."""
    out = run_harness("atheris_media.py", tmp_path, "-runs=100000", "-seed=1", plant=True)
    assert out.returncode != 0
    assert "PlantedBug" in out.stdout + out.stderr  # atheris prints the traceback on stdout
    if not ATHERIS_PLATFORM:
        return  # the random driver stops at the first exception; it saves nothing
    crashes = list(tmp_path.glob("crash-*"))
    assert len(crashes) == 1, out.stderr[-3000:]
    assert crashes[0].read_bytes()[:1] == b"\x42"
    replay = run_harness("atheris_media.py", tmp_path, str(crashes[0]), plant=True)
    assert replay.returncode != 0 and "PlantedBug" in replay.stdout + replay.stderr
    clean = run_harness("atheris_media.py", tmp_path, str(crashes[0]))
    assert clean.returncode == 0, clean.stderr[-3000:]
