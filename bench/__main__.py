"""`python -m bench`: run umprobe's benchmarks and write bench/results/latest.json and latest.md.

See bench/README.md. Each benchmark is a module bench/<name>.py with TITLE, NEEDS and run(Options);
this runner imports it, checks that the binaries in NEEDS exist (it never installs anything), runs it in a
fresh work directory, and turns a missing module or an exception into a result with `error` set.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib
import json
import math
import os
import platform
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import Any

from bench._common import BenchResult, Goal, Options, Row, missing_message
from bench._lab import tool_version

BENCHMARKS = ("cpu", "scale", "timing", "rtp", "startup")
DEFAULT_OUT = Path(__file__).resolve().parent / "results"
DEFAULT_ROUNDS = 5

#: Peer binaries whose versions go into the machine facts: (name, argv).
VERSION_COMMANDS = (
    ("kamailio", ("kamailio", "-v")),
    ("blackbox_exporter", ("prometheus-blackbox-exporter", "--version")),
    ("sipp", ("sipp", "-v")),
    ("sipsak", ("sipsak", "--version")),
    ("tshark", ("tshark", "--version")),
)

EPILOG = """\
what it does:
  Starts every peer itself on loopback (Kamailio, blackbox_exporter, SIPp, ... on free ports, or in
  network namespaces it creates and deletes), compares umprobe with a named peer side by side in one run
  (interleaved rounds, medians) and reports the ratio umprobe/peer. It installs nothing: a benchmark whose
  binaries are missing ends with one line saying what to install, and the others still run.

benchmarks:
{table}

output:
  DIR/latest.json   every result (rows, goals, notes), plus the machine: CPU, cores, kernel, Python,
                    peer versions, date. Results of benchmarks not run this time are kept from the
                    previous latest.json (each says when it was measured) unless --fresh is given.
  DIR/latest.md     one Markdown table per benchmark and a goals table (met/missed); also printed.

exit status:
  0  every benchmark ran (a missed goal is a finding, reported in the tables, not an error)
  1  at least one benchmark could not run or failed (its `error` says why)
  2  bad arguments

examples:
  .venv/bin/python -m bench --list              what exists and what each one needs
  .venv/bin/python -m bench cpu --quick         a smoke run of a few seconds
  .venv/bin/python -m bench cpu startup         two benchmarks, {rounds} rounds each
  .venv/bin/python -m bench all --rounds 9      everything, more rounds for steadier medians
  .venv/bin/python -m bench all --out /tmp/b    write the results elsewhere

The machine's other load matters: CPU per probe is read per process from /proc/PID/task/*/schedstat, so
other processes do not inflate it, but they do lower throughput; run on a quiet machine for rates."""


# -- discovery ----------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class Loaded:
    name: str
    module: ModuleType | None
    error: str | None = None

    @property
    def title(self) -> str:
        return str(getattr(self.module, "TITLE", "")) or self.name

    @property
    def needs(self) -> tuple[str, ...]:
        return tuple(getattr(self.module, "NEEDS", ()))


def load(name: str) -> Loaded:
    """Import bench.<name>; a missing module or a failing import becomes `error`."""
    qualified = f"bench.{name}"
    try:
        module = importlib.import_module(qualified)
    except ModuleNotFoundError as exc:
        if exc.name == qualified:
            return Loaded(name, None, f"bench/{name}.py does not exist (yet)")
        return Loaded(name, None, f"importing bench/{name}.py failed: {exc}")
    except Exception as exc:
        return Loaded(name, None, f"importing bench/{name}.py failed: {type(exc).__name__}: {exc}")
    if not callable(getattr(module, "run", None)):
        return Loaded(name, module, f"bench/{name}.py has no run(opts) function")
    return Loaded(name, module)


# -- running ------------------------------------------------------------------------------------------------


def run_one(loaded: Loaded, opts: Options, log: Callable[[str], None]) -> BenchResult:
    """Run one benchmark; never raises (except KeyboardInterrupt): problems become `error`."""
    if loaded.module is None or loaded.error is not None:
        return BenchResult(loaded.name, loaded.title, error=loaded.error)
    why = missing_message(loaded.needs)
    if why is not None:
        return BenchResult(loaded.name, loaded.title, error=why)
    try:
        result = loaded.module.run(opts)
    except KeyboardInterrupt:
        raise
    except BaseException as exc:  # SystemExit from a module is a failure of that benchmark too
        text = traceback.format_exc()
        (opts.workdir / "traceback.txt").write_text(text)
        log(text.rstrip())
        first = (str(exc).strip().splitlines() or [""])[0]
        return BenchResult(
            loaded.name,
            loaded.title,
            error=f"{type(exc).__name__}: {first} (traceback and peer logs in {opts.workdir})",
        )
    if not isinstance(result, BenchResult):
        return BenchResult(
            loaded.name, loaded.title, error=f"run() returned {type(result).__name__}, not a BenchResult"
        )
    if not result.title:
        result.title = loaded.title
    return result


# -- machine facts ------------------------------------------------------------------------------------------


def _first_line_matching(path: str, prefix: str) -> str | None:
    with contextlib.suppress(OSError):
        for line in Path(path).read_text().splitlines():
            if line.startswith(prefix):
                return line.split(":", 1)[1].strip() if ":" in line else line.split("=", 1)[1].strip('"')
    return None


def machine_facts() -> dict[str, str]:
    facts: dict[str, str] = {}
    facts["date"] = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    facts["cpu"] = _first_line_matching("/proc/cpuinfo", "model name") or platform.processor() or "unknown"
    facts["cores"] = f"{os.cpu_count() or 1} online, {len(os.sched_getaffinity(0))} usable by this process"
    facts["kernel"] = platform.release()
    facts["os"] = _first_line_matching("/etc/os-release", "PRETTY_NAME=") or platform.system()
    facts["python"] = platform.python_version()
    with contextlib.suppress(OSError):
        facts["load average at start"] = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    with contextlib.suppress(Exception):
        from umprobe._version import __version__

        facts["umprobe"] = __version__
    with contextlib.suppress(Exception):
        import OpenSSL
        from OpenSSL import SSL

        facts["pyOpenSSL"] = OpenSSL.__version__
        facts["OpenSSL"] = SSL.OpenSSL_version(SSL.OPENSSL_VERSION).decode()
    with contextlib.suppress(Exception):
        import trio

        facts["trio"] = trio.__version__
    for name, argv in VERSION_COMMANDS:
        facts[name] = tool_version(argv)
    return facts


# -- output -------------------------------------------------------------------------------------------------


def _number(value: float | None) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    magnitude = abs(value)
    if magnitude >= 1000:
        return f"{value:,.0f}"
    if magnitude >= 100:
        return f"{value:.0f}"
    if magnitude >= 10:
        return f"{value:.1f}"
    if magnitude >= 1:
        return f"{value:.2f}"
    if magnitude == 0:
        return "0"
    return f"{value:.3g}"


def ratio_text(ratio: float | None) -> str:
    return "-" if ratio is None or not math.isfinite(ratio) else f"{ratio:.2f}x"


def _cell(text: object) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def result_to_json(result: BenchResult, run_info: dict[str, Any]) -> dict[str, Any]:
    data = dataclasses.asdict(result)
    data["rows"] = [{**dataclasses.asdict(row), "ratio": row.ratio} for row in result.rows]
    data["run"] = run_info
    return data


def result_from_json(data: dict[str, Any]) -> tuple[BenchResult, dict[str, Any]]:
    rows = [
        Row(r["case"], r["metric"], r["unit"], r.get("umprobe"), r.get("peer"), r.get("peer_name"))
        for r in data.get("rows", [])
    ]
    goals = [Goal(g["goal"], g["target"], g["measured"], bool(g["met"])) for g in data.get("goals", [])]
    result = BenchResult(
        data["name"],
        data.get("title", data["name"]),
        rows,
        goals,
        list(data.get("notes", [])),
        dict(data.get("environment", {})),
        data.get("error"),
    )
    return result, dict(data.get("run", {}))


def render_markdown(
    entries: Sequence[tuple[BenchResult, dict[str, Any]]], machine: dict[str, str], command: str
) -> str:
    lines = ["# umprobe benchmarks", ""]
    lines.append(f"`{command}` on {machine.get('date', '?')}.")
    lines.append("")
    lines.append("| machine | |")
    lines.append("|---|---|")
    for key, value in machine.items():
        lines.append(f"| {_cell(key)} | {_cell(value)} |")
    lines.append("")
    for result, run in entries:
        lines.append(f"## {result.name}: {_cell(result.title)}")
        lines.append("")
        how = f"{run.get('rounds', '?')} round(s)" + (", --quick" if run.get("quick") else "")
        lines.append(f"Measured {run.get('measured_at', '?')}, {how}, {run.get('seconds', '?')} s.")
        lines.append("")
        if result.error:
            lines.append(f"**Did not run: {_cell(result.error)}**")
            lines.append("")
        if result.rows:
            lines.append("| case | metric | unit | umprobe | peer | peer's | ratio umprobe/peer |")
            lines.append("|---|---|---|---:|---|---:|---:|")
            for row in result.rows:
                lines.append(
                    f"| {_cell(row.case)} | {_cell(row.metric)} | {_cell(row.unit)} | {_number(row.umprobe)} "
                    f"| {_cell(row.peer_name or '-')} | {_number(row.peer)} | {ratio_text(row.ratio)} |"
                )
            lines.append("")
        if result.environment:
            lines.append(
                "Set-up: " + "; ".join(f"{_cell(k)}: {_cell(v)}" for k, v in result.environment.items()) + "."
            )
            lines.append("")
        for note in result.notes:
            lines.append(f"- {_cell(note)}")
        if result.notes:
            lines.append("")
    goals = [(result.name, goal) for result, _ in entries for goal in result.goals]
    lines.append("## Goals")
    lines.append("")
    if goals:
        lines.append("| benchmark | goal | target | measured | met |")
        lines.append("|---|---|---|---|---|")
        for name, goal in goals:
            lines.append(
                f"| {name} | {_cell(goal.goal)} | {_cell(goal.target)} | {_cell(goal.measured)} "
                f"| {'met' if goal.met else '**missed**'} |"
            )
    else:
        lines.append("No goals were measured in this run.")
    errored = [result.name for result, _ in entries if result.error]
    if errored:
        lines.append("")
        lines.append(f"Benchmarks that did not run: {', '.join(errored)} (see their sections).")
    lines.append("")
    return "\n".join(lines)


def write_results(
    out: Path,
    fresh: list[tuple[BenchResult, dict[str, Any]]],
    machine: dict[str, str],
    command: str,
    *,
    keep_previous: bool,
) -> tuple[Path, Path, str]:
    """Write latest.json and latest.md into `out`; results of benchmarks not run now are kept from the
    previous latest.json when `keep_previous`. Returns both paths and the Markdown."""
    out.mkdir(parents=True, exist_ok=True)
    json_path = out / "latest.json"
    entries = list(fresh)
    if keep_previous and json_path.exists():
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            previous = json.loads(json_path.read_text())
            ran = {result.name for result, _ in fresh}
            for data in previous.get("results", []):
                if data.get("name") not in ran:
                    old, run = result_from_json(data)
                    run.setdefault("kept_from_previous_run", True)
                    entries.append((old, run))
    order = {name: i for i, name in enumerate(BENCHMARKS)}
    entries.sort(key=lambda e: order.get(e[0].name, len(order)))
    document = {
        "generated": machine.get("date"),
        "command": command,
        "machine": machine,
        "results": [result_to_json(result, run) for result, run in entries],
    }
    tmp = json_path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(document, indent=2, allow_nan=False, default=_json_default) + "\n")
    tmp.replace(json_path)
    markdown = render_markdown(entries, machine, command)
    md_path = out / "latest.md"
    md_path.write_text(markdown)
    return json_path, md_path, markdown


def _json_default(value: object) -> object:
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def _sanitize(result: BenchResult) -> BenchResult:
    """NaN and infinities are not JSON: they become None (shown as '-')."""

    def clean(value: float | None) -> float | None:
        if value is None:
            return None
        value = float(value)
        return value if math.isfinite(value) else None

    result.rows = [
        Row(r.case, r.metric, r.unit, clean(r.umprobe), clean(r.peer), r.peer_name) for r in result.rows
    ]
    return result


# -- command line -------------------------------------------------------------------------------------------


def _describe_table() -> str:
    lines = []
    for name in BENCHMARKS:
        loaded = load(name)
        if loaded.module is None:
            lines.append(f"  {name:<8} ({loaded.error})")
            continue
        needs = ", ".join(loaded.needs) or "nothing outside Python"
        lines.append(f"  {name:<8} {loaded.title}")
        lines.append(f"  {'':<8}   needs: {needs}")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Run umprobe's benchmarks against real peers on this machine and report figures, "
        "ratios against the peer (blackbox_exporter, sipsak, the wire) and the goals they are held to.",
        epilog=EPILOG.format(table=_describe_table(), rounds=DEFAULT_ROUNDS),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "names",
        nargs="*",
        metavar="NAME",
        help=f"'all', or one or more of: {', '.join(BENCHMARKS)}",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a smoke run of a few seconds per benchmark (1 round, short windows): does it work, "
        "not how fast",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        metavar="N",
        help=f"rounds per comparison; figures are medians over them (default {DEFAULT_ROUNDS}, --quick 1)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=DEFAULT_OUT,
        metavar="DIR",
        help="where latest.json and latest.md go (default: bench/results)",
    )
    parser.add_argument(
        "--fresh",
        action="store_true",
        help="forget results of benchmarks not run now (default: keep them from the previous latest.json)",
    )
    parser.add_argument(
        "--keep-workdir",
        action="store_true",
        help="keep each benchmark's work directory (configs, peer logs) also when it succeeded",
    )
    parser.add_argument(
        "--list", action="store_true", help="list the benchmarks and what they need, then exit"
    )
    return parser


def _list() -> int:
    for name in BENCHMARKS:
        loaded = load(name)
        if loaded.module is None:
            print(f"{name:<8} unavailable: {loaded.error}")
            continue
        why = missing_message(loaded.needs)
        state = "ready" if why is None else why
        print(f"{name:<8} {loaded.title}")
        print(f"{'':<8} needs: {', '.join(loaded.needs) or 'nothing outside Python'}: {state}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.list:
        return _list()
    if not args.names:
        parser.print_usage(sys.stderr)
        print("python -m bench: error: name the benchmarks to run, or 'all' (see --list)", file=sys.stderr)
        return 2
    names: list[str] = []
    for name in args.names:
        chosen = list(BENCHMARKS) if name == "all" else [name]
        for item in chosen:
            if item not in BENCHMARKS:
                choices = ", ".join(BENCHMARKS)
                print(
                    f"python -m bench: error: unknown benchmark {item!r}: choose from all, {choices}",
                    file=sys.stderr,
                )
                return 2
            if item not in names:
                names.append(item)
    if args.rounds is not None and args.rounds < 1:
        print(f"python -m bench: error: --rounds {args.rounds}: must be at least 1", file=sys.stderr)
        return 2
    rounds = args.rounds if args.rounds is not None else (1 if args.quick else DEFAULT_ROUNDS)
    command = "python -m bench " + " ".join(argv if argv is not None else sys.argv[1:])
    t_start = time.monotonic()

    def log_for(name: str) -> Callable[[str], None]:
        def log(line: str) -> None:
            print(f"[{time.monotonic() - t_start:7.1f}s {name}] {line}", file=sys.stderr, flush=True)

        return log

    machine = machine_facts()
    results: list[tuple[BenchResult, dict[str, Any]]] = []
    interrupted = False
    for name in names:
        log = log_for(name)
        workdir = Path(tempfile.mkdtemp(prefix=f"umprobe-bench-{name}-"))
        opts = Options(quick=args.quick, rounds=rounds, workdir=workdir, log=log)
        log(f"start ({rounds} round(s){', quick' if args.quick else ''}); work directory {workdir}")
        t0 = time.monotonic()
        try:
            result = _sanitize(run_one(load(name), opts, log))
        except KeyboardInterrupt:
            result = BenchResult(name, load(name).title, error="interrupted (Ctrl-C)")
            interrupted = True
        seconds = time.monotonic() - t0
        run_info = {
            "measured_at": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "quick": args.quick,
            "rounds": rounds,
            "seconds": round(seconds, 1),
            "machine": f"{machine['cpu']}, {os.cpu_count() or 1} cores, kernel {machine['kernel']}",
        }
        results.append((result, run_info))
        if result.error:
            log(f"ERROR: {result.error}; work directory kept: {workdir}")
        else:
            log(f"done in {seconds:.1f} s")
            if not args.keep_workdir:
                shutil.rmtree(workdir, ignore_errors=True)
        if interrupted:
            break
    with contextlib.suppress(OSError):
        machine["load average at end"] = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    json_path, md_path, markdown = write_results(
        args.out, results, machine, command, keep_previous=not args.fresh
    )
    print(markdown)
    print(f"wrote {json_path} and {md_path}", file=sys.stderr)
    if interrupted:
        return 130
    return 1 if any(result.error for result, _ in results) else 0


if __name__ == "__main__":
    sys.exit(main())
