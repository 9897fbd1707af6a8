"""Benchmark 2, daemon scale: a real `umprobe run` with 1,000 and 10,000 SIP listeners, and where it stops.

Set-up. One responder process (this module run as `python -m bench.scale responder`, an asyncio server
that answers OPTIONS with umprobe's own sans-I/O SIP parser and response builder) listens on N TCP ports
of 127.0.0.1, taken upward from port 12000 below the kernel's ephemeral range and skipping ports in use.
The daemon gets one `[[targets]]` entry per port (`host = "127.0.0.1"`, `module = "sip_tcp"`, `port = P`),
so every probe has its own id (`host|listener|transport|port|module`) and its own slot. The daemon is one
process with one trio thread; it is not pinned (on a shared machine a pinned process is hostage to whatever
else runs on that CPU), and its run-queue wait (schedstat) is reported beside its CPU % to show how much
other load held it back.

A case is a fresh daemon with N listeners at interval I. Warm-up is one interval after /-/healthy answers
(every probe has its first slot inside it); then `windows` measuring windows follow, each at least one
interval long. Per window:

* CPU %: `proc_cpu_seconds(daemon)` delta over the window's wall time (100 % = one core).
* RSS: the largest (and the median) `rss_bytes(daemon)` sampled every 0.25 s.
* Scheduler lag, exact: every probe's planned slot is a pure function of its id (`phase_fraction(id) x
  interval` on a grid anchored at unix time 0), and `umprobe_probe_last_run_timestamp_seconds` says when
  its latest run started, so lag = start - slot for every run seen in a scrape during the window (the
  start time is stamped just after the scheduler's own lag measurement, a few microseconds later). p50 and
  p99 over those runs. Also the daemon's own `umprobe_scheduler_lag_seconds` histogram, delta over the
  window, with percentiles interpolated inside its buckets as `histogram_quantile` does (coarse: bucket
  bounds 1, 5, 10, 25, 50, 100, 250 ms ...).
* /metrics: the bench scrapes every 15 s (a usual Prometheus scrape interval) and times each whole GET
  on a fresh connection; the median time and the body size. The scrapes load the daemon like Prometheus would,
  and their cost is inside the CPU % and the lag.
* Probes ok/s: delta of sum(`umprobe_probe_runs_total`) - sum(`umprobe_probe_failures_total`) over the
  window, beside the scheduled rate N / I; `umprobe_scheduler_skipped_slots_total` delta.

The knee: 10,000 listeners at shorter and shorter intervals (30, 20, 15, 10, 5, 2 s) until a step misses:
lag p99 >= 100 ms, a skipped slot, fewer than 95 % of the scheduled runs succeeding, or the daemon's CPU
at >= 95 % of its core. The knee is reported as the last step that kept up and the first that did not.

Full run: windows = --rounds (figures are medians over them), about 3 minutes per window-round plus 5 for
the knee. --quick: 20 and 100 listeners at 2 s, one window, one knee step (1 s); about 20 seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import http.client
import json
import math
import os
import re
import resource
import secrets
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bench._common import (
    BenchResult,
    Goal,
    Options,
    Row,
    median,
    percentile,
    proc_cpu_seconds,
    rss_bytes,
)

TITLE = (
    "Daemon scale: 1,000 and 10,000 SIP listeners at 60 s (CPU, RSS, scheduler lag, /metrics), and the knee"
)
NEEDS: tuple[str, ...] = ()

REPO = Path(__file__).resolve().parents[1]

FIRST_PORT = 12000  # responder ports are taken upward from here, below the ephemeral range (32768+)
LAST_PORT = 32000
LAG_GOAL = 0.100  # seconds, p99
RSS_GOAL = 200 * 1024 * 1024  # bytes
KNEE_INTERVALS = (30.0, 20.0, 15.0, 10.0, 5.0, 2.0)
KNEE_OK_SHARE = 0.95  # a step keeps up when at least this share of its scheduled runs succeeded
KNEE_CPU = 95.0  # % of one core


# -- the responder (runs in its own process) --------------------------------------------------------------


class _SipProtocol(asyncio.Protocol):
    """Answers OPTIONS with 200 and anything else with 501; closes on bytes that are not a request."""

    def __init__(self) -> None:
        from umprobe.sip import StreamParser

        self._parser = StreamParser()
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport

    def data_received(self, data: bytes) -> None:
        from umprobe.sip import NEED_DATA, Request, SipError, build_response

        transport = self._transport
        assert transport is not None
        try:
            self._parser.feed(data)
            while (message := self._parser.next_message()) is not NEED_DATA:
                if not isinstance(message, Request):
                    transport.close()
                    return
                if message.method == "ACK":
                    continue
                if message.method == "OPTIONS":
                    reply = build_response(
                        message, 200, "OK", to_tag=secrets.token_hex(4), server="bench-scale-responder"
                    )
                else:
                    reply = build_response(message, 501, "Not Implemented", to_tag=secrets.token_hex(4))
                transport.write(reply)
        except SipError:
            transport.close()


def _raise_fd_limit() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def _bind_ports(count: int, first: int, last: int) -> list[socket.socket]:
    sockets: list[socket.socket] = []
    port = first
    while len(sockets) < count:
        if port > last:
            raise SystemExit(f"responder: only {len(sockets)} free ports in {first}-{last}, {count} wanted")
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError as exc:
            sock.close()
            if exc.errno != errno.EADDRINUSE:
                raise
        else:
            sock.listen(512)
            sock.setblocking(False)
            sockets.append(sock)
        port += 1
    return sockets


async def _serve(count: int, first: int, ready_file: Path) -> None:
    loop = asyncio.get_running_loop()
    sockets = _bind_ports(count, first, LAST_PORT)
    servers = [await loop.create_server(_SipProtocol, sock=sock) for sock in sockets]
    tmp = ready_file.with_suffix(".tmp")
    tmp.write_text(json.dumps([s.getsockname()[1] for s in sockets]))
    tmp.rename(ready_file)
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    for server in servers:
        server.close()


def responder_main(argv: Sequence[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.scale responder")
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--first-port", type=int, default=FIRST_PORT)
    parser.add_argument("--ready-file", type=Path, required=True)
    args = parser.parse_args(argv)
    limit = _raise_fd_limit()
    if args.count + 64 > limit:
        raise SystemExit(f"responder: {args.count} listeners need more than the fd limit {limit}")
    asyncio.run(_serve(args.count, args.first_port, args.ready_file))


# -- processes -------------------------------------------------------------------------------------------


def _run_queue_seconds(pid: int) -> float:
    """Seconds the threads of `pid` spent runnable but waiting for a CPU (schedstat's second field): how
    much other load on the machine held the daemon back."""
    total = 0
    with contextlib.suppress(FileNotFoundError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(FileNotFoundError, ProcessLookupError, IndexError, ValueError):
                total += int((task / "schedstat").read_text().split()[1])
    return total / 1e9


def _umprobe_argv() -> list[str]:
    script = Path(sys.executable).parent / "umprobe"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "import sys; from umprobe.cli import main; sys.exit(main())"]


class _Responder:
    def __init__(self, count: int, workdir: Path) -> None:
        from tests.lab.proc import LabProcess

        self.ready_file = workdir / "responder.ports.json"
        self.ready_file.unlink(missing_ok=True)
        self.proc = LabProcess(
            "scale-responder",
            [
                sys.executable,
                "-m",
                "bench.scale",
                "responder",
                "--count",
                str(count),
                "--ready-file",
                str(self.ready_file),
            ],
            log_dir=workdir,
            cwd=REPO,
        )
        self.ports: list[int] = []

    def start(self, timeout: float = 120.0) -> None:
        self.proc.start()
        deadline = time.monotonic() + timeout
        while not self.ready_file.exists():
            if not self.proc.is_alive():
                raise RuntimeError(f"the responder exited during start-up\n{self.proc.describe()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"the responder did not bind its ports within {timeout:g} s")
            time.sleep(0.1)
        self.ports = json.loads(self.ready_file.read_text())

    @property
    def pid(self) -> int:
        assert self.proc.pid is not None
        return self.proc.pid

    def stop(self) -> None:
        self.proc.stop()


def write_config(path: Path, ports: Sequence[int], *, interval: float, listen: str) -> None:
    """A probes.toml with one sip_tcp target per port of 127.0.0.1."""
    timeout = min(5.0, interval / 2)
    lines = [
        "[defaults]",
        f"interval = {interval!r}",
        f"timeout = {timeout!r}",
        'families = ["ipv4"]',
        "",
        "[exporter]",
        f'listen = "{listen}"',
        "",
    ]
    for port in ports:
        lines += ["[[targets]]", 'host = "127.0.0.1"', 'module = "sip_tcp"', f"port = {port}", ""]
    path.write_text("\n".join(lines))


# -- reading /metrics ------------------------------------------------------------------------------------

_LAST_RUN_RE = re.compile(
    rb'^umprobe_probe_last_run_timestamp_seconds\{[^}\n]*?probe="([^"\n]*)"[^}\n]*\} (\S+)$', re.M
)
_RUNS_RE = re.compile(rb"^umprobe_probe_runs_total\{[^}\n]*\} (\S+)$", re.M)
_FAILURES_RE = re.compile(rb"^umprobe_probe_failures_total\{[^}\n]*\} (\S+)$", re.M)
_LAG_BUCKET_RE = re.compile(rb'^umprobe_scheduler_lag_seconds_bucket\{le="([^"]*)"\} (\S+)$', re.M)
_SKIPPED_RE = re.compile(rb"^umprobe_scheduler_skipped_slots_total (\S+)$", re.M)


@dataclass
class Scrape:
    at: float  # wall clock when the answer was complete
    seconds: float  # the whole GET
    size: int
    last_run: dict[str, float] = field(default_factory=dict)  # probe name -> start of its latest run
    lag_buckets: dict[float, float] = field(default_factory=dict)  # le -> cumulative count
    runs: float = 0.0
    failures: float = 0.0
    skipped: float = 0.0


def parse_scrape(page: bytes, *, at: float, seconds: float, size: int) -> Scrape:
    """The few series the bench needs out of a /metrics page (regular expressions: the page is ~60 MB
    at 10,000 listeners, and the bench must not eat the CPU the daemon is measured on)."""
    scrape = Scrape(at=at, seconds=seconds, size=size)
    scrape.last_run = {m[0].decode(): float(m[1]) for m in _LAST_RUN_RE.findall(page)}
    scrape.runs = math.fsum(float(v) for v in _RUNS_RE.findall(page))
    scrape.failures = math.fsum(float(v) for v in _FAILURES_RE.findall(page))
    for le, value in _LAG_BUCKET_RE.findall(page):
        scrape.lag_buckets[math.inf if le == b"+Inf" else float(le)] = float(value)
    skipped = _SKIPPED_RE.search(page)
    scrape.skipped = float(skipped.group(1)) if skipped else 0.0
    return scrape


def fetch(host: str, port: int, path: str = "/metrics", timeout: float = 60.0) -> tuple[bytes, float]:
    """GET `path` on a fresh connection; (body, seconds for the whole exchange)."""
    start = time.perf_counter()
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        body = response.read()
        if response.status != 200:
            raise RuntimeError(f"GET {path}: HTTP {response.status}")
    finally:
        conn.close()
    return body, time.perf_counter() - start


def histogram_quantile(q: float, buckets: dict[float, float]) -> float:
    """Prometheus' histogram_quantile over cumulative `buckets` (le -> count, +Inf included)."""
    bounds = sorted(buckets)
    if not bounds or buckets[bounds[-1]] <= 0:
        return math.nan
    total = buckets[bounds[-1]]
    rank = q * total
    lower, below = 0.0, 0.0
    for bound in bounds:
        count = buckets[bound]
        if count >= rank:
            if math.isinf(bound):
                return lower  # the highest finite bound, as Prometheus does
            if count == below:
                return bound
            return lower + (bound - lower) * (rank - below) / (count - below)
        lower, below = bound, count
    return lower


def slot_lag(started: float, fraction: float, interval: float) -> float:
    """Seconds between the start of a run (unix time) and the slot it was planned for."""
    offset = fraction * interval
    lag = (started - offset) % interval
    if lag > interval - 0.5:  # a start stamped a hair before its slot (two clocks): no lag
        lag = 0.0
    return lag


# -- one case --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Settings:
    windows: int  # measuring windows per case
    min_window: float  # seconds; a window is a whole number of intervals at least this long
    scrape_every: float  # seconds between the bench's own scrapes, like a Prometheus scrape interval
    workdir: Path
    log: Callable[[str], None]


@dataclass
class Window:
    wall: float
    cpu_pct: float
    wait_pct: float  # run-queue wait of the daemon: the machine's other load holding it back
    rss_max: int
    rss_median: int
    lag_p50: float
    lag_p99: float
    lag_max: float
    lag_runs: int  # runs whose exact lag was seen
    hist_p50: float
    hist_p99: float
    scrape_ms: list[float]
    scrape_bytes: int
    ok_per_s: float
    scheduled_per_s: float
    skipped: int
    failed: int
    responder_cpu_pct: float


@dataclass
class CaseResult:
    listeners: int
    interval: float
    windows: list[Window]
    startup_s: float
    rss_idle: int

    @property
    def label(self) -> str:
        return f"{self.listeners:,} @ {self.interval:g} s"

    def med(self, get: Callable[[Window], float]) -> float:
        return median([get(w) for w in self.windows])

    def keeps_up(self) -> bool:
        """The medians over the windows meet every criterion (one noisy window does not decide)."""
        return (
            self.med(lambda w: w.lag_p99) < LAG_GOAL
            and self.med(lambda w: float(w.skipped)) == 0
            and self.med(lambda w: w.ok_per_s / w.scheduled_per_s) >= KNEE_OK_SHARE
            and self.med(lambda w: w.cpu_pct) < KNEE_CPU
        )


class _RssSampler:
    def __init__(self, pid: int, every: float = 0.25) -> None:
        self._pid = pid
        self._every = every
        self.samples: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="rss-sampler", daemon=True)

    def _loop(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(OSError, ValueError):
                self.samples.append(rss_bytes(self._pid))
            self._stop.wait(self._every)

    def __enter__(self) -> _RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def _sleep_until(wall: float) -> None:
    while (left := wall - time.time()) > 0:
        time.sleep(min(left, 0.5))


def run_case(
    responder: _Responder, listeners: int, interval: float, settings: Settings, *, stop_on_skips: bool = False
) -> CaseResult:
    """A fresh daemon with `listeners` probes at `interval`: warm-up of one interval, then the windows
    (`stop_on_skips`: no more windows after one that skipped slots, a daemon that clearly cannot keep up)."""
    from tests.lab.ports import allocate_port
    from tests.lab.proc import LabProcess
    from umprobe.config import load_config
    from umprobe.scheduler import phase_fraction

    log = settings.log
    ports = responder.ports[:listeners]
    tag = f"{listeners}x{interval:g}s"
    cfg = settings.workdir / f"scale-{tag}.toml"
    port = allocate_port()
    write_config(cfg, ports, interval=interval, listen=f"127.0.0.1:{port}")
    fractions = {p.name: phase_fraction(p.id) for p in load_config(cfg).probes}
    daemon = LabProcess(
        f"scale-daemon-{tag}",
        [*_umprobe_argv(), "run", "-c", str(cfg)],
        log_dir=settings.workdir,
        ready=[("127.0.0.1", port)],
        start_timeout=120.0,
    )
    t0 = time.monotonic()
    daemon.start()
    try:
        assert daemon.pid is not None
        pid = daemon.pid
        fetch("127.0.0.1", port, "/-/healthy")
        startup = time.monotonic() - t0
        rss_idle = rss_bytes(pid)
        log(f"scale: {tag}: up in {startup:.1f} s, RSS {rss_idle / 2**20:.0f} MB; warm-up {interval:g} s")
        _sleep_until(time.time() + interval)  # every probe has had its first slot by then
        windows: list[Window] = []
        length = interval * max(1, math.ceil(settings.min_window / interval))
        for index in range(settings.windows):
            w = _window(pid, responder.pid, port, listeners, interval, length, settings, fractions)
            windows.append(w)
            log(
                f"scale: {tag} window {index + 1}/{settings.windows}: CPU {w.cpu_pct:.1f} % "
                f"(run-queue wait {w.wait_pct:.1f} %), RSS max {w.rss_max / 2**20:.0f} MB, lag p50/p99 "
                f"{w.lag_p50 * 1e3:.1f}/{w.lag_p99 * 1e3:.1f} ms (histogram ~{w.hist_p99 * 1e3:.0f}), scrape "
                f"{median(w.scrape_ms):.0f} ms {w.scrape_bytes / 1e6:.1f} MB, ok {w.ok_per_s:.1f}/s of "
                f"{w.scheduled_per_s:.1f}, skipped {w.skipped}, responder CPU {w.responder_cpu_pct:.0f} %"
            )
            if stop_on_skips and w.skipped:
                break
        return CaseResult(listeners, interval, windows, startup, rss_idle)
    finally:
        daemon.stop(grace=10.0)


def _window(
    pid: int,
    responder_pid: int,
    port: int,
    listeners: int,
    interval: float,
    length: float,
    settings: Settings,
    fractions: dict[str, float],
) -> Window:
    first = _scrape(port)
    wall0, cpu0, wait0 = time.time(), proc_cpu_seconds(pid), _run_queue_seconds(pid)
    rcpu0 = proc_cpu_seconds(responder_pid)
    scrapes: list[Scrape] = []
    with _RssSampler(pid) as rss:
        end = wall0 + length
        next_scrape = wall0 + settings.scrape_every
        while next_scrape < end - 1e-3:
            _sleep_until(next_scrape)
            scrapes.append(_scrape(port))
            next_scrape += settings.scrape_every
        _sleep_until(end)
        cpu1, wait1, wall1 = proc_cpu_seconds(pid), _run_queue_seconds(pid), time.time()
        rcpu1 = proc_cpu_seconds(responder_pid)
        last = _scrape(port)  # after the CPU reading: its cost is not in this window
        scrapes.append(last)
    wall = wall1 - wall0
    lags: dict[tuple[str, float], float] = {}
    for scrape in scrapes:
        for name, started in scrape.last_run.items():
            if wall0 <= started < wall1 and name in fractions:
                lags[(name, started)] = slot_lag(started, fractions[name], interval)
    lag_values = list(lags.values())
    delta = {le: last.lag_buckets.get(le, 0.0) - first.lag_buckets.get(le, 0.0) for le in last.lag_buckets}
    ok = (last.runs - last.failures) - (first.runs - first.failures)
    # The first and last scrapes bracket the window, but a scrape sees the counters as they were when the
    # daemon rendered them; over the bracket of scrape to scrape the count is exact.
    bracket = last.at - last.seconds - (first.at - first.seconds)
    return Window(
        wall=wall,
        cpu_pct=100.0 * (cpu1 - cpu0) / wall,
        wait_pct=100.0 * (wait1 - wait0) / wall,
        rss_max=max(rss.samples, default=0),
        rss_median=int(median(rss.samples)),
        lag_p50=percentile(lag_values, 50),
        lag_p99=percentile(lag_values, 99),
        lag_max=max(lag_values, default=math.nan),
        lag_runs=len(lag_values),
        hist_p50=histogram_quantile(0.50, delta),
        hist_p99=histogram_quantile(0.99, delta),
        scrape_ms=[s.seconds * 1e3 for s in scrapes],
        scrape_bytes=int(median([s.size for s in scrapes])),
        ok_per_s=ok / bracket if bracket > 0 else math.nan,
        scheduled_per_s=listeners / interval,
        skipped=int(last.skipped - first.skipped),
        failed=int(last.failures - first.failures),
        responder_cpu_pct=100.0 * (rcpu1 - rcpu0) / wall,
    )


def _scrape(port: int) -> Scrape:
    body, seconds = fetch("127.0.0.1", port)
    return parse_scrape(body, at=time.time(), seconds=seconds, size=len(body))


# -- the benchmark ---------------------------------------------------------------------------------------


def _rows(case: CaseResult) -> Iterator[Row]:
    label = case.label
    yield Row(label, "daemon CPU", "% of one core", case.med(lambda w: w.cpu_pct))
    yield Row(label, "daemon run-queue wait (machine load)", "% of wall", case.med(lambda w: w.wait_pct))
    yield Row(label, "RSS (max of 0.25 s samples)", "MB", case.med(lambda w: w.rss_max / 2**20))
    yield Row(label, "RSS (median)", "MB", case.med(lambda w: w.rss_median / 2**20))
    yield Row(label, "scheduler lag p50", "ms", case.med(lambda w: w.lag_p50 * 1e3))
    yield Row(label, "scheduler lag p99", "ms", case.med(lambda w: w.lag_p99 * 1e3))
    yield Row(label, "scheduler lag p99 (histogram estimate)", "ms", case.med(lambda w: w.hist_p99 * 1e3))
    yield Row(label, "/metrics scrape", "ms", case.med(lambda w: median(w.scrape_ms)))
    yield Row(label, "/metrics size", "MB", case.med(lambda w: w.scrape_bytes / 1e6))
    yield Row(label, "probes ok", "per s", case.med(lambda w: w.ok_per_s))
    yield Row(label, "probes scheduled", "per s", case.listeners / case.interval)
    yield Row(label, "skipped slots", "per window", case.med(lambda w: float(w.skipped)))
    yield Row(
        label,
        "responder CPU (the peer, not umprobe)",
        "% of one core",
        case.med(lambda w: w.responder_cpu_pct),
    )


def run(opts: Options) -> BenchResult:
    result = BenchResult(name="scale", title=TITLE)
    knee: Sequence[float]
    if opts.quick:
        small, large, interval, knee = 20, 100, 2.0, (1.0,)
        settings = Settings(1, 2.0, 1.0, opts.workdir, opts.log)
    else:
        small, large, interval, knee = 1000, 10000, 60.0, KNEE_INTERVALS
        settings = Settings(max(1, opts.rounds), 30.0, 15.0, opts.workdir, opts.log)
    limit = _raise_fd_limit()
    if large + 256 > limit:
        result.error = f"needs a file descriptor limit above {large + 256} (ulimit -Hn is {limit})"
        return result
    result.environment = {
        "listeners": f"{small:,} and {large:,} (TCP, one port each on 127.0.0.1)",
        "interval": f"{interval:g} s",
        "bench scrape every": f"{settings.scrape_every:g} s",
        "windows per case": str(settings.windows),
        "load average at start": " ".join(f"{x:.1f}" for x in os.getloadavg()),
    }
    opts.workdir.mkdir(parents=True, exist_ok=True)
    responder = _Responder(large, opts.workdir)
    opts.log(f"scale: starting the responder on {large:,} ports")
    responder.start()
    try:
        cases = [run_case(responder, n, interval, settings) for n in (small, large)]
        for case in cases:
            result.rows.extend(_rows(case))
        main = cases[1]
        rss = main.med(lambda w: w.rss_max)
        p99 = main.med(lambda w: w.lag_p99)
        cpu = main.med(lambda w: w.cpu_pct)
        ok_share = main.med(lambda w: w.ok_per_s / w.scheduled_per_s)
        result.goals.append(
            Goal(
                f"{large:,} listeners at {interval:g} s on one core: scheduler lag p99",
                "< 100 ms",
                f"{p99 * 1e3:.1f} ms (CPU {cpu:.1f} % of one core, {ok_share:.1%} of scheduled runs ok)",
                p99 < LAG_GOAL and cpu < 100.0 and ok_share >= KNEE_OK_SHARE,
            )
        )
        result.goals.append(
            Goal(
                f"{large:,} listeners at {interval:g} s: RSS",
                "< 200 MB",
                f"{rss / 2**20:.0f} MB (max of samples every 0.25 s, scrapes included)",
                rss < RSS_GOAL,
            )
        )
        result.notes.append(
            f"start-up to /-/healthy: {cases[0].startup_s:.1f} s ({small:,}), {cases[1].startup_s:.1f} s "
            f"({large:,}); RSS right after start {cases[0].rss_idle / 2**20:.0f} / "
            f"{cases[1].rss_idle / 2**20:.0f} MB"
        )
        result.notes.append(
            "lag: exact per run (umprobe_probe_last_run_timestamp_seconds minus the probe's planned slot, "
            f"phase_fraction(id) x interval), over {int(main.med(lambda w: w.lag_runs)):,} runs per window "
            f"at {large:,}; the histogram estimate interpolates inside umprobe_scheduler_lag_seconds buckets "
            "(1, 5, 10, 25, 50, 100, 250 ms ...), so it is coarse"
        )
        result.notes.append(
            "the daemon is not pinned: it is one process with one trio thread, so it runs on one core at a "
            "time; 'run-queue wait' is how long it was runnable but waiting for a CPU (other load)"
        )
        result.notes.extend(_knee(responder, large, knee, main, settings))
    finally:
        responder.stop()
    return result


def _knee(
    responder: _Responder, listeners: int, intervals: Sequence[float], base: CaseResult, settings: Settings
) -> list[str]:
    # Up to three windows a step (medians decide), so that one burst of other load is not the knee.
    windows = min(3, settings.windows)
    step = Settings(windows, settings.min_window, settings.scrape_every, settings.workdir, settings.log)
    steps: list[tuple[CaseResult, bool]] = [(base, base.keeps_up())]
    if steps[0][1]:
        for interval in intervals:
            case = run_case(responder, listeners, interval, step, stop_on_skips=True)
            ok = case.keeps_up()
            steps.append((case, ok))
            if not ok:
                break
    lines = []
    for case, ok in steps:
        m = case.med
        cpu, wait = m(lambda w: w.cpu_pct), m(lambda w: w.wait_pct)
        p50, p99 = m(lambda w: w.lag_p50) * 1e3, m(lambda w: w.lag_p99) * 1e3
        lines.append(
            f"knee step {case.label} ({case.listeners / case.interval:,.0f} probes/s, medians of "
            f"{len(case.windows)} windows): {'keeps up' if ok else 'MISSES'}: CPU {cpu:.0f} % (run-queue "
            f"wait {wait:.0f} %), lag p50/p99 {p50:.1f}/{p99:.1f} ms, ok {m(lambda w: w.ok_per_s):.0f}/s of "
            f"{case.listeners / case.interval:.0f}, skipped {m(lambda w: float(w.skipped)):.0f}, scrape "
            f"{m(lambda w: median(w.scrape_ms)):.0f} ms"
        )
    good = [case for case, ok in steps if ok]
    bad = [case for case, ok in steps if not ok]
    if bad and good:
        lines.insert(
            0,
            f"knee: keeps up at {good[-1].listeners / good[-1].interval:,.0f} probes/s ({good[-1].label}), "
            f"not at {bad[0].listeners / bad[0].interval:,.0f} probes/s ({bad[0].label}); a step misses on "
            f"lag p99 >= {LAG_GOAL * 1e3:.0f} ms, a skipped slot, < {KNEE_OK_SHARE:.0%} of runs ok, or "
            f"CPU >= {KNEE_CPU:.0f} %",
        )
    elif bad:
        lines.insert(0, f"knee: already missed at {bad[0].label}")
    else:
        lines.insert(0, f"knee: not reached down to {steps[-1][0].label}")
    return lines


if __name__ == "__main__":
    if len(sys.argv) >= 2 and sys.argv[1] == "responder":
        responder_main(sys.argv[2:])
    else:
        print("usage: python -m bench.scale responder --count N --ready-file F", file=sys.stderr)
        sys.exit(2)
