"""The benchmark runner (`python -m bench`) and the helpers of bench/cpu.py and bench/startup.py.

No timed asserts: the runner is tested with fake benchmark modules; the one lab test runs the real cpu and
startup benchmarks in --quick mode and checks the shape of what they report (positive figures, a ratio),
never how fast anything is.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

import bench.__main__ as runner
from bench import cpu, startup
from bench._common import PACKAGES, BenchResult, Goal, Options, Row, missing_message
from bench._lab import BenchPKI, scrape_sum, sip_options_text
from tests.lab.kamailio import CertPair
from umprobe.config import parse_config

REPO = Path(__file__).resolve().parent.parent


def _fake(name: str, run: object, needs: tuple[str, ...] = ()) -> ModuleType:
    module = ModuleType(f"bench.{name}")
    module.TITLE = f"the {name} benchmark"  # type: ignore[attr-defined]
    module.NEEDS = needs  # type: ignore[attr-defined]
    module.run = run  # type: ignore[attr-defined]
    return module


def _good_run(opts: Options) -> BenchResult:
    assert opts.workdir.is_dir()
    opts.log("working")
    return BenchResult(
        "fakeok",
        "the fakeok benchmark",
        rows=[
            Row("case A", "CPU per probe", "ms", 2.0, 4.0, "peerd 1.0"),
            Row("case B", "wall time", "ms", 3.0),
            Row("case C", "rate", "1/s", math.nan, 5.0, "peerd 1.0"),
        ],
        goals=[
            Goal("CPU per probe", "<= 1.0x peerd's", "0.50x", True),
            Goal("wall time", "< 1 ms", "3 ms", False),
        ],
        notes=["a note | with a pipe"],
        environment={"peer": "peerd"},
    )


def _boom(opts: Options) -> BenchResult:
    raise ValueError("boom\nsecond line")


calls: list[str] = []


def _never(opts: Options) -> BenchResult:
    calls.append("ran")
    raise AssertionError("a benchmark with missing binaries must not run")


@pytest.fixture
def fakes(monkeypatch: pytest.MonkeyPatch) -> None:
    modules = {
        "fakeok": _fake("fakeok", _good_run),
        "fakeboom": _fake("fakeboom", _boom),
        "fakeneeds": _fake("fakeneeds", _never, needs=("sh", "umprobe-no-such-binary-xyz")),
    }
    for name, module in modules.items():
        monkeypatch.setitem(sys.modules, f"bench.{name}", module)
    monkeypatch.setattr(runner, "BENCHMARKS", ("fakeok", "fakeboom", "fakeneeds", "fakemissing"))
    facts = {"date": "2026-01-01 00:00:00 UTC", "cpu": "Fake CPU", "kernel": "6.0-test"}
    monkeypatch.setattr(runner, "machine_facts", lambda: dict(facts))
    calls.clear()


def _read(out: Path) -> dict[str, object]:
    data = json.loads((out / "latest.json").read_text())
    assert isinstance(data, dict)
    return data


def _by_name(data: dict[str, object]) -> dict[str, dict[str, object]]:
    results = data["results"]
    assert isinstance(results, list)
    return {r["name"]: r for r in results}


def test_runner_captures_errors_and_goes_on(
    fakes: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = runner.main(["all", "--out", str(tmp_path)])
    assert code == 1  # some benchmarks errored
    results = _by_name(_read(tmp_path))
    assert list(results) == ["fakeok", "fakeboom", "fakeneeds", "fakemissing"]  # in BENCHMARKS order
    assert results["fakeok"]["error"] is None
    boom = results["fakeboom"]["error"]
    assert isinstance(boom, str) and boom.startswith("ValueError: boom (traceback")
    assert "second line" not in boom
    needs = results["fakeneeds"]["error"]
    assert isinstance(needs, str)
    assert needs.startswith("needs umprobe-no-such-binary-xyz (apt install umprobe-no-such-binary-xyz")
    assert "sh," not in needs  # sh exists: only the missing binary is named
    assert calls == []  # run() was never called
    assert results["fakemissing"]["error"] == "bench/fakemissing.py does not exist (yet)"
    out = capsys.readouterr()
    assert "# umprobe benchmarks" in out.out  # the Markdown is printed
    assert "Traceback" in out.err and "ValueError: boom" in out.err


def test_json_shape_and_ratio_math(fakes: None, tmp_path: Path) -> None:
    assert runner.main(["fakeok", "--out", str(tmp_path), "--fresh"]) == 0
    data = _read(tmp_path)
    assert set(data) == {"generated", "command", "machine", "results"}
    assert data["command"] == f"python -m bench fakeok --out {tmp_path} --fresh"
    machine = data["machine"]
    assert isinstance(machine, dict) and machine["cpu"] == "Fake CPU"
    assert "load average at end" in machine
    (result,) = _by_name(data).values()
    assert set(result) == {"name", "title", "rows", "goals", "notes", "environment", "error", "run"}
    rows = result["rows"]
    assert isinstance(rows, list)
    assert rows[0]["ratio"] == pytest.approx(0.5)
    assert rows[1]["ratio"] is None and rows[1]["peer"] is None
    assert rows[2]["umprobe"] is None and rows[2]["ratio"] is None  # NaN is not JSON: it becomes null
    assert result["goals"] == [
        {"goal": "CPU per probe", "target": "<= 1.0x peerd's", "measured": "0.50x", "met": True},
        {"goal": "wall time", "target": "< 1 ms", "measured": "3 ms", "met": False},
    ]
    run = result["run"]
    assert isinstance(run, dict) and run["rounds"] == 5 and run["quick"] is False


def test_markdown_has_one_table_per_benchmark_and_a_goals_table(fakes: None, tmp_path: Path) -> None:
    assert runner.main(["fakeok", "fakeboom", "--quick", "--out", str(tmp_path), "--fresh"]) == 1
    text = (tmp_path / "latest.md").read_text()
    assert "## fakeok: the fakeok benchmark" in text
    assert "| case A | CPU per probe | ms | 2.00 | peerd 1.0 | 4.00 | 0.50x |" in text
    assert "| case B | wall time | ms | 3.00 | - | - | - |" in text
    assert "a note \\| with a pipe" in text  # a pipe cannot break the table
    assert "1 round(s), --quick" in text
    assert "**Did not run: ValueError: boom" in text
    goals = text.split("## Goals", 1)[1]
    assert "| fakeok | CPU per probe | <= 1.0x peerd's | 0.50x | met |" in goals
    assert "| fakeok | wall time | < 1 ms | 3 ms | **missed** |" in goals
    assert "Benchmarks that did not run: fakeboom" in goals


def test_results_of_other_benchmarks_are_kept_unless_fresh(fakes: None, tmp_path: Path) -> None:
    assert runner.main(["fakeok", "--out", str(tmp_path)]) == 0
    assert runner.main(["fakeboom", "--out", str(tmp_path)]) == 1
    kept = _by_name(_read(tmp_path))
    assert list(kept) == ["fakeok", "fakeboom"]
    run = kept["fakeok"]["run"]
    assert isinstance(run, dict) and run["kept_from_previous_run"] is True
    assert kept["fakeok"]["rows"][0]["ratio"] == pytest.approx(0.5)  # type: ignore[index]
    assert runner.main(["fakeboom", "--out", str(tmp_path), "--fresh"]) == 1
    assert list(_by_name(_read(tmp_path))) == ["fakeboom"]


def test_bad_arguments_exit_2_with_one_line(
    fakes: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert runner.main(["nosuch", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "unknown benchmark 'nosuch': choose from all, fakeok" in err
    assert runner.main(["fakeok", "--rounds", "0", "--out", str(tmp_path)]) == 2
    assert "--rounds 0: must be at least 1" in capsys.readouterr().err
    assert runner.main(["--out", str(tmp_path)]) == 2
    assert not (tmp_path / "latest.json").exists()


def test_list_and_help_say_what_each_benchmark_needs(fakes: None, capsys: pytest.CaptureFixture[str]) -> None:
    assert runner.main(["--list"]) == 0
    out = capsys.readouterr().out
    assert "fakeneeds the fakeneeds benchmark" in out
    assert "needs umprobe-no-such-binary-xyz (apt install" in out
    assert "fakemissing unavailable: bench/fakemissing.py does not exist (yet)" in out
    with pytest.raises(SystemExit) as exit_info:
        runner.main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for expected in ("--quick", "--rounds N", "--out DIR", "exit status:", "latest.json", "fakeok"):
        assert expected in text


def test_missing_message_names_packages() -> None:
    assert missing_message(("sh",)) is None
    message = missing_message(("umprobe-no-such-binary-xyz", "sh"))
    assert message is not None and message.startswith("needs umprobe-no-such-binary-xyz (apt install")
    assert PACKAGES["sipp"] == "sip-tester"


def test_real_benchmark_modules_follow_the_contract() -> None:
    for module, name in ((cpu, "cpu"), (startup, "startup")):
        loaded = runner.load(name)
        assert loaded.error is None and loaded.module is module
        assert isinstance(module.TITLE, str) and module.TITLE
        assert all(isinstance(binary, str) for binary in module.NEEDS)


def test_ratio_text_and_numbers() -> None:
    assert Row("c", "m", "ms", 3.0, 1.5, "p").ratio == pytest.approx(2.0)
    assert Row("c", "m", "ms", 3.0, 0.0, "p").ratio is None
    assert runner.ratio_text(2.0) == "2.00x"
    assert runner.ratio_text(None) == "-"
    assert runner._number(1234.4) == "1,234"
    assert runner._number(12.345) == "12.3"
    assert runner._number(0.000123) == "0.000123"
    assert runner._number(None) == "-"


# -- helpers of the cpu and startup benchmarks --------------------------------------------------------------


def _pki(tmp_path: Path) -> BenchPKI:
    pair = CertPair(tmp_path / "x.crt", tmp_path / "x.key")
    return BenchPKI(tmp_path, tmp_path / "ca.crt", pair, pair, pair, pair)


def test_cpu_configs_are_valid_umprobe_configs(tmp_path: Path) -> None:
    pki = _pki(tmp_path)
    config = parse_config(cpu.probe_config(pki, 5.0), check_files=False)
    assert {case.name for case in cpu.CASES} <= set(config.modules)
    assert config.probes == ()
    assert config.exporter.probe_allow == ("127.0.0.1",)
    case = cpu.CASES[1]
    scheduled = parse_config(cpu.scheduled_config(case, "127.0.0.1", 5061, pki, 7, 2.0), check_files=False)
    assert len(scheduled.probes) == 7
    assert {probe.spec.transport for probe in scheduled.probes} == {"tls"}
    assert {probe.interval for probe in scheduled.probes} == {2.0}
    assert all(probe.timeout < probe.interval for probe in scheduled.probes)


def test_count_runs_sums_runs_and_failures_by_reason() -> None:
    page = "\n".join(
        [
            "# TYPE umprobe_probe_runs_total counter",
            'umprobe_probe_runs_total{probe="a",address="127.0.0.1"} 10.0',
            'umprobe_probe_runs_total{probe="b",address="127.0.0.1"} 5.0',
            'umprobe_probe_failures_total{probe="a",reason="sip_timeout"} 2.0',
            'umprobe_probe_failures_total{probe="b",reason="sip_timeout"} 1.0',
            'umprobe_probe_failures_total{probe="b",reason="connect_refused"} 0.0',
            'umprobe_probe_failures_total{probe="b",reason="ok"} 9.0',
        ]
    )
    runs, failed = cpu.count_runs(page)
    assert runs == 15.0
    assert failed == {"sip_timeout": 3.0, "connect_refused": 0.0}
    assert scrape_sum(page, "umprobe_probe_failures_total", 'reason="sip_timeout"') == 3.0


def test_sip_options_text_is_one_whole_request() -> None:
    text = sip_options_text("127.0.0.1", 5061, "tls")
    assert text.startswith("OPTIONS sip:127.0.0.1:5061;transport=tls SIP/2.0\r\n")
    assert text.endswith("Content-Length: 0\r\n\r\n") and text.count("\r\n\r\n") == 1
    assert "Via: SIP/2.0/TLS " in text
    # blackbox_exporter appends "\n" to what it sends: without the last "\n" the wire bytes are the request.
    assert sip_options_text("::1", 5060, "tcp", final_crlf=False).endswith("\r\n\r")
    assert "OPTIONS sip:[::1]:5060;transport=tcp" in sip_options_text("::1", 5060, "tcp")


def test_pick_loopback_addresses_finds_free_distinct_addresses() -> None:
    import random

    found = startup.pick_loopback_addresses(2, (5060, 5061), random.Random(1))
    assert len(set(found)) == 2
    for address in found:
        first, second, *_ = (int(part) for part in address.split("."))
        assert first == 127 and 64 <= second <= 127


# -- the real thing, in --quick mode ------------------------------------------------------------------------


@pytest.mark.lab
def test_quick_run_of_cpu_and_startup_reports_figures_and_ratios(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bench", "cpu", "startup", "--quick", "--fresh", "--out", str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    results = _by_name(_read(tmp_path))
    assert set(results) == {"cpu", "startup"}
    for name, result in results.items():
        assert result["error"] is None, (name, result["error"])
        rows = result["rows"]
        assert isinstance(rows, list) and rows
        compared = [row for row in rows if row["peer"] is not None]
        assert compared, name
        for row in compared:
            if row["umprobe"] is None:  # a scheduled-mode row --quick leaves out
                continue
            assert row["umprobe"] > 0 and row["peer"] > 0, row
            assert row["ratio"] == pytest.approx(row["umprobe"] / row["peer"]), row
    listed = results["cpu"]["rows"]
    assert isinstance(listed, list)
    cpu_rows = {(row["case"], row["metric"]): row for row in listed}
    for case in cpu.CASES:
        row = cpu_rows[(f"{case.label}, via /probe", "CPU per probe")]
        assert row["umprobe"] > 0 and row["peer"] > 0 and row["ratio"] > 0
    goals = results["cpu"]["goals"]
    assert isinstance(goals, list) and len(goals) == 2
    assert "# umprobe benchmarks" in done.stdout and "## Goals" in done.stdout
