"""Docs examples are run: each ```console block's `$ umprobe ...` must print what the doc shows."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
_BLOCK = re.compile(r"```console\n(.*?)```", re.S)


def console_examples() -> list[tuple[str, str, str]]:
    found = []
    for doc in DOCS:
        for block in _BLOCK.findall(doc.read_text()):
            command, _, expected = block.partition("\n")
            assert command.startswith("$ umprobe "), f"{doc.name}: console block must start with '$ umprobe'"
            found.append((doc.name, command[2:], expected))
    return found


EXAMPLES = console_examples()


def test_there_are_examples() -> None:
    assert EXAMPLES


@pytest.mark.parametrize(("doc", "command", "expected"), EXAMPLES, ids=[f"{d}:{c}" for d, c, _ in EXAMPLES])
def test_console_example_output_matches(doc: str, command: str, expected: str) -> None:
    argv = shlex.split(command)
    out = subprocess.run(
        [sys.executable, "-m", "umprobe.cli", *argv[1:]],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    shown = [line.rstrip() for line in expected.strip("\n").splitlines()]
    printed = [line.rstrip() for line in out.stdout.strip("\n").splitlines()]
    assert matches(shown, printed), f"{doc}: `{command}` no longer prints what the doc shows:\n{out.stdout}"


def matches(shown: list[str], printed: list[str]) -> bool:
    """Line-by-line equality, where a `...` line in the doc stands for any number of printed lines."""
    if not shown:
        return not printed
    if shown[0] == "...":
        return any(matches(shown[1:], printed[i:]) for i in range(len(printed) + 1))
    return bool(printed) and printed[0] == shown[0] and matches(shown[1:], printed[1:])


def test_ellipsis_matching() -> None:
    assert matches(["a", "...", "d"], ["a", "b", "c", "d"])
    assert matches(["a", "...", "d"], ["a", "d"])
    assert not matches(["a", "...", "d"], ["a", "b", "c"])
    assert not matches(["a"], ["a", "b"])


_YAML = re.compile(r"```yaml\n(.*?)```", re.S)
SCRAPE_CONFIGS = [(doc.name, block) for doc in DOCS for block in _YAML.findall(doc.read_text())]


@pytest.mark.lab
@pytest.mark.parametrize(("doc", "block"), SCRAPE_CONFIGS, ids=[d for d, _ in SCRAPE_CONFIGS])
def test_prometheus_configs_in_docs_pass_promtool(doc: str, block: str, tmp_path: Path) -> None:
    config = tmp_path / "prometheus.yml"
    config.write_text(block)
    out = subprocess.run(
        ["promtool", "check", "config", str(config)], capture_output=True, text=True, timeout=60, check=False
    )
    assert out.returncode == 0, (
        f"{doc}: promtool rejects a Prometheus config example:\n{out.stdout}{out.stderr}"
    )
