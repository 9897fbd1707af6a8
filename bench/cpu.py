"""Benchmark 1: CPU per SIP probe, umprobe against blackbox_exporter, on the same Kamailio listeners.

Both probers run as their own processes for the whole benchmark:

* blackbox_exporter (the Debian package) with one `tcp` module per case: `query_response` sends a whole
  SIP OPTIONS (blackbox appends the last "\\n") and expects `^SIP/2.0 200`; TLS cases set `tls: true` and a
  `tls_config` with the CA, a client certificate and `server_name`;
* `umprobe run` with one module per case, no targets, and `[exporter] probe_allow = ["127.0.0.1"]`, so its
  `/probe` endpoint serves the same targets.

One Kamailio (tests/lab/kamailio.py, `tcp_children=1` as LAB.md requires) serves three listeners: plain TCP,
mutual TLS with an ECDSA P-256 server certificate, and mutual TLS with an RSA-2048 server certificate; each
TLS case presents a client certificate of the same key type (bench/_lab.py's PKI).

Per round and case the same asyncio HTTP load generator (bench/_lab.py `http_load`: `CONCURRENCY`
keep-alive connections, one request in flight on each) drives `/probe` of one prober, then the other
(the order alternates between rounds); CPU is read from /proc/PID/task/*/schedstat of the prober process
at the start and end of the timed window. CPU per probe = CPU delta / answers in the window. A window in
which any answer is not `probe_success 1` is void and left out of the medians (said in the notes).

Then umprobe's scheduled mode: a fresh `umprobe run` whose config holds `N` identical probes of the case
(one module each, all aimed at the same listener) at a short interval; no HTTP per probe. CPU per
scheduled probe = the daemon's CPU delta over a window / the growth of `umprobe_probe_runs_total`, read
from two /metrics scrapes just outside the CPU readings; runs that failed (`umprobe_probe_failures_total`)
void the window. Its peer column is blackbox's /probe figure of the same round: there is no scheduled
blackbox (Prometheus drives it through /probe), so that is what it replaces.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from bench._common import BenchResult, Goal, Options, Row, median, proc_cpu_seconds
from bench._lab import (
    BenchPKI,
    Blackbox,
    UmprobeDaemon,
    build_bench_pki,
    http_get,
    http_load,
    scrape_sum,
    sip_options_text,
    start_kamailio,
    tool_version,
)

TITLE = (
    "CPU per SIP probe: umprobe against blackbox_exporter on one Kamailio, TCP and mutual TLS (ECDSA, RSA)"
)
NEEDS: tuple[str, ...] = ("kamailio", "prometheus-blackbox-exporter")

CONCURRENCY = 4
PEER = "blackbox_exporter"


@dataclass(frozen=True, slots=True)
class Case:
    name: str  # module name in both probers, and listener name in Kamailio
    label: str
    key_type: str | None  # None: plain TCP; "ec" / "rsa": mutual TLS with that key type on both sides
    scheduled_probes: int  # probes in the scheduled-mode config
    scheduled_interval: float  # seconds


CASES = (
    Case("tcp", "SIP OPTIONS over TCP", None, 100, 1.0),
    Case("mtls_ecdsa", "SIP OPTIONS over mutual TLS, ECDSA P-256 certificates", "ec", 20, 2.0),
    Case("mtls_rsa", "SIP OPTIONS over mutual TLS, RSA-2048 certificates", "rsa", 20, 2.0),
)


@dataclass(slots=True)
class Window:
    probes: int
    failed: int
    seconds: float
    cpu: float
    first_failure: str = ""

    @property
    def valid(self) -> bool:
        return self.probes > 0 and self.failed == 0

    @property
    def rate(self) -> float:
        return self.probes / self.seconds if self.seconds > 0 else math.nan

    @property
    def cpu_ms(self) -> float:
        return self.cpu / self.probes * 1000 if self.probes else math.nan


@dataclass(slots=True)
class Tally:
    windows: list[Window] = field(default_factory=list)

    def valid(self) -> list[Window]:
        return [w for w in self.windows if w.valid]

    def median_rate(self) -> float | None:
        values = [w.rate for w in self.valid()]
        return median(values) if values else None

    def median_cpu_ms(self) -> float | None:
        values = [w.cpu_ms for w in self.valid()]
        return median(values) if values else None

    def void(self) -> list[Window]:
        return [w for w in self.windows if not w.valid]


def _blackbox_module(case: Case, host: str, port: int, pki: BenchPKI, timeout: float) -> dict[str, object]:
    transport = "tcp" if case.key_type is None else "tls"
    tcp: dict[str, object] = {
        "preferred_ip_protocol": "ip4",
        "ip_protocol_fallback": False,
        "query_response": [
            {"send": sip_options_text(host, port, transport, final_crlf=False)},
            {"expect": "^SIP/2.0 200"},
        ],
    }
    if case.key_type is not None:
        client = pki.client(case.key_type)
        tcp["tls"] = True
        tcp["tls_config"] = {
            "ca_file": str(pki.ca_file),
            "cert_file": str(client.cert_file),
            "key_file": str(client.key_file),
            "server_name": "localhost",
        }
    return {"prober": "tcp", "timeout": f"{timeout:g}s", "tcp": tcp}


def _umprobe_module(case: Case, name: str, pki: BenchPKI, timeout: float, interval: float) -> list[str]:
    lines = [f"[modules.{name}]", f'transport = "{"tcp" if case.key_type is None else "tls"}"']
    if case.key_type is not None:
        client = pki.client(case.key_type)
        lines += [
            f'ca_file = "{pki.ca_file}"',
            f'cert_file = "{client.cert_file}"',
            f'key_file = "{client.key_file}"',
            'server_name = "localhost"',
        ]
    lines += [f"timeout = {timeout:g}", f"interval = {interval:g}", ""]
    return lines


def probe_config(pki: BenchPKI, timeout: float) -> str:
    """The /probe daemon's probes.toml: one module per case, no targets, 127.0.0.1 allowed."""
    lines = ["[defaults]", 'families = ["ipv4"]', ""]
    for case in CASES:
        lines += _umprobe_module(case, case.name, pki, timeout, 60.0)
    lines += ["[exporter]", 'probe_allow = ["127.0.0.1"]', "", "[log]", 'level = "warning"', ""]
    return "\n".join(lines)


def scheduled_config(case: Case, host: str, port: int, pki: BenchPKI, count: int, interval: float) -> str:
    """`count` identical probes of `case` at `interval`, one module each (a probe id includes its module)."""
    lines = ["[defaults]", 'families = ["ipv4"]', ""]
    timeout = min(5.0, interval * 0.8)
    for i in range(count):
        lines += _umprobe_module(case, f"{case.name}_{i}", pki, timeout, interval)
    for i in range(count):
        lines += [
            "[[targets]]",
            f'host = "{host}"',
            f'name = "{case.name}-{i}"',
            f"port = {port}",
            f'module = "{case.name}_{i}"',
            "",
        ]
    lines += ["[scheduler]", f"max_concurrency = {max(8, count)}", "", "[log]", 'level = "warning"', ""]
    return "\n".join(lines)


_FAILURE = re.compile(r"^umprobe_probe_failures_total\{([^}]*)\} (\S+)", re.MULTILINE)


def count_runs(metrics_text: str) -> tuple[float, dict[str, float]]:
    """(runs, failed runs by reason) summed over every listener of a /metrics page."""
    runs = scrape_sum(metrics_text, "umprobe_probe_runs_total")
    failed: dict[str, float] = {}
    for labels, value in _FAILURE.findall(metrics_text):
        reason = re.search(r'reason="([^"]*)"', labels)
        name = reason.group(1) if reason else "?"
        if name != "ok":
            failed[name] = failed.get(name, 0.0) + float(value)
    return runs, failed


def _measure_http(pid: int, port: int, path: str, seconds: float, warmup: float, timeout: float) -> Window:
    marks: dict[bool, float] = {}

    def on_window(opening: bool) -> None:
        marks[opening] = proc_cpu_seconds(pid)

    load = http_load(
        port,
        [path],
        concurrency=CONCURRENCY,
        seconds=seconds,
        warmup=warmup,
        timeout=timeout,
        on_window=on_window,
    )
    return Window(load.requests, load.failed, load.seconds, marks[False] - marks[True], load.first_failure)


def _measure_scheduled(
    case: Case, host: str, port: int, pki: BenchPKI, workdir: Path, seconds: float, log: Callable[[str], None]
) -> Window:
    text = scheduled_config(case, host, port, pki, case.scheduled_probes, case.scheduled_interval)
    daemon = UmprobeDaemon(text, workdir, name=f"umprobe-scheduled-{case.name}").start()
    try:
        # Every probe has run once after one interval (its first run sets up its state and series).
        time.sleep(case.scheduled_interval + 0.5)
        runs0, failed0 = count_runs(daemon.metrics())
        cpu0 = proc_cpu_seconds(daemon.pid)
        t0 = time.perf_counter()
        time.sleep(seconds)
        cpu1 = proc_cpu_seconds(daemon.pid)
        wall = time.perf_counter() - t0
        runs1, failed1 = count_runs(daemon.metrics())
    finally:
        daemon.stop()
    runs = int(runs1 - runs0)
    reasons = {r: int(n - failed0.get(r, 0.0)) for r, n in failed1.items() if n - failed0.get(r, 0.0) > 0}
    failed = sum(reasons.values())
    story = ""
    if failed:
        story = f"{failed} of {runs} scheduled runs failed: " + ", ".join(
            f"{r} {n}" for r, n in reasons.items()
        )
        log(f"scheduled {case.name}: {story}")
    return Window(runs, failed, wall, cpu1 - cpu0, story)


def _tls_versions(blackbox_port: int, umprobe_port: int, case: Case, target: str) -> str:
    found = []
    for who, port, metric in (
        ("blackbox", blackbox_port, "probe_tls_version_info"),
        ("umprobe", umprobe_port, "umprobe_tls_version_info"),
    ):
        _, body = http_get(port, f"/probe?module={case.name}&target={target}")
        match = re.search(rf'^{metric}\{{[^}}]*version="([^"]+)"', body.decode(), re.MULTILINE)
        found.append(f"{who} {match.group(1) if match else '?'}")
    return ", ".join(found)


def run(opts: Options) -> BenchResult:
    result = BenchResult("cpu", TITLE)
    _run(opts, result)
    return result


def _run(opts: Options, result: BenchResult) -> None:
    from tests.lab.kamailio import Listener, TlsPolicy
    from tests.lab.ports import allocate_port

    seconds = 1.0 if opts.quick else 3.0
    warmup = 0.3 if opts.quick else 0.5
    scheduled_seconds = 1.5 if opts.quick else 4.0
    timeout = 5.0
    log = opts.log
    workdir = opts.workdir
    pki = build_bench_pki(workdir / "pki")

    def listeners() -> list[Listener]:
        return [
            Listener(
                case.name,
                "tcp" if case.key_type is None else "tls",
                "127.0.0.1",
                allocate_port(),
                None
                if case.key_type is None
                else TlsPolicy(server_cert="rsa" if case.key_type == "rsa" else "good"),
            )
            for case in CASES
        ]

    log("starting Kamailio, blackbox_exporter and the umprobe daemon")
    kamailio = start_kamailio(listeners, workdir, pki)
    blackbox: Blackbox | None = None
    daemon: UmprobeDaemon | None = None
    try:
        addresses = kamailio.addresses()
        blackbox = Blackbox(
            {case.name: _blackbox_module(case, *addresses[case.name], pki, timeout) for case in CASES},
            workdir,
        ).start()
        daemon = UmprobeDaemon(probe_config(pki, timeout), workdir, name="umprobe-probe").start()
        probers: dict[str, Blackbox | UmprobeDaemon] = {"blackbox": blackbox, "umprobe": daemon}
        tallies = {
            (case.name, who): Tally() for case in CASES for who in ("blackbox", "umprobe", "scheduled")
        }
        versions = {}
        for case in CASES:
            host, port = addresses[case.name]
            if case.key_type is not None:
                versions[case.name] = _tls_versions(blackbox.port, daemon.port, case, f"{host}:{port}")
        for rnd in range(opts.rounds):
            order = ("blackbox", "umprobe") if rnd % 2 == 0 else ("umprobe", "blackbox")
            for case in CASES:
                host, port = addresses[case.name]
                path = f"/probe?module={case.name}&target={host}:{port}"
                for who in order:
                    prober = probers[who]
                    window = _measure_http(prober.pid, prober.port, path, seconds, warmup, timeout)
                    tallies[(case.name, who)].windows.append(window)
                    log(
                        f"round {rnd + 1}/{opts.rounds} {case.name} {who}: {window.probes} probes "
                        f"({window.failed} failed), {window.rate:.0f}/s, {window.cpu_ms:.3f} ms CPU per probe"
                    )
                if opts.quick and case.key_type is not None:
                    continue  # --quick: the scheduled mode of the TCP case only (each costs a daemon start)
                window = _measure_scheduled(case, host, port, pki, workdir, scheduled_seconds, log)
                tallies[(case.name, "scheduled")].windows.append(window)
                log(
                    f"round {rnd + 1}/{opts.rounds} {case.name} scheduled: {window.probes} runs "
                    f"({window.failed} failed), {window.cpu_ms:.3f} ms CPU per probe"
                )
        kamailio_alive = kamailio.process.is_alive()
    finally:
        if daemon is not None:
            daemon.stop()
        if blackbox is not None:
            blackbox.stop()
        kamailio.stop()
    if not kamailio_alive:
        raise RuntimeError(f"Kamailio died during the benchmark\n{kamailio.process.describe()}")
    _report(result, tallies, versions, opts, seconds, scheduled_seconds)


def _report(
    result: BenchResult,
    tallies: dict[tuple[str, str], Tally],
    versions: dict[str, str],
    opts: Options,
    seconds: float,
    scheduled_seconds: float,
) -> None:
    peer = f"{PEER} {tool_version(('prometheus-blackbox-exporter', '--version'))}"
    ratios: dict[str, float | None] = {}
    for case in CASES:
        bb, um, sched = (tallies[(case.name, who)] for who in ("blackbox", "umprobe", "scheduled"))
        label = f"{case.label}, via /probe"
        result.rows.append(Row(label, "probes per second", "1/s", um.median_rate(), bb.median_rate(), peer))
        cpu_row = Row(label, "CPU per probe", "ms", um.median_cpu_ms(), bb.median_cpu_ms(), peer)
        result.rows.append(cpu_row)
        ratios[case.name] = cpu_row.ratio
        result.rows.append(
            Row(
                f"{case.label}, umprobe's scheduled mode ({case.scheduled_probes} probes every "
                f"{case.scheduled_interval:g} s, no HTTP) vs blackbox's /probe",
                "CPU per probe",
                "ms",
                sched.median_cpu_ms(),
                bb.median_cpu_ms(),
                peer,
            )
        )
        if not sched.windows:
            result.notes.append(f"{case.name}: umprobe's scheduled mode was not measured (--quick).")
        for who, tally in (("blackbox_exporter", bb), ("umprobe /probe", um), ("umprobe scheduled", sched)):
            void = tally.void()
            if void:
                first = next((w.first_failure for w in void if w.first_failure), "")
                result.notes.append(
                    f"{case.name}, {who}: {len(void)} of {len(tally.windows)} windows void (a probe did not "
                    f"succeed, so its CPU figure would not be a probe's){': ' + first[:200] if first else ''}"
                )
        if case.name in versions:
            result.notes.append(f"{case.name}: negotiated TLS version: {versions[case.name]}.")

    def goal(names: tuple[str, ...], what: str) -> Goal:
        parts = []
        met = True
        for name in names:
            ratio = ratios.get(name)
            um = tallies[(name, "umprobe")].median_cpu_ms()
            bb = tallies[(name, "blackbox")].median_cpu_ms()
            if ratio is None or um is None or bb is None:
                parts.append(f"{name}: void")
                met = False
                continue
            parts.append(f"{name}: {ratio:.2f}x ({um:.2f} vs {bb:.2f} ms)")
            met = met and ratio <= 1.0
        return Goal(what, "<= 1.0x blackbox_exporter's", "; ".join(parts), met)

    result.goals.append(goal(("mtls_ecdsa", "mtls_rsa"), "CPU per mutual-TLS SIP probe (via /probe)"))
    result.goals.append(goal(("tcp",), "CPU per TCP SIP probe (via /probe)"))
    result.environment.update(
        {
            "Kamailio": "5.6 with tcp_children=1, one instance, three listeners on 127.0.0.1",
            "load": f"{CONCURRENCY} requests in flight (keep-alive HTTP/1.1), {seconds:g} s window per "
            f"prober, case and round, after a warm-up; scheduled mode: {scheduled_seconds:g} s window",
            "CPU": "per prober process, /proc/PID/task/*/schedstat",
            "rounds": str(opts.rounds),
        }
    )
    result.notes.append(
        "Figures are medians over rounds; within a round the two probers run one after the other on the same "
        "listener with the same load generator, in alternating order."
    )
    result.notes.append(
        "The machine is shared with other engineers' test runs: CPU per probe is per process and holds up, "
        "probes per second (bounded by Kamailio's single TLS worker and by CPU contention) does not."
    )
