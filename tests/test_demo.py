"""`umprobe demo` as README's first command: one process, a lab on loopback, the daemon on it, /metrics.

The live tests run the real command as a subprocess (`python -m umprobe.cli demo ...`), read the addresses it
prints, scrape /metrics and the status page while it runs, and end it by --duration or by a signal. Every
wait is bounded; every process started here is killed by its PID in teardown. Only 127.0.0.1 is used.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator

import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from tests.daemon_helpers import ChildProcess, starter
from tests.test_metrics import promtool_check, result, rtp_result
from umprobe.config import Config, parse_config
from umprobe.daemon import Daemon
from umprobe.demo import (
    DEMO_LAYOUT,
    DEMO_RTP_INTERVAL,
    DEMO_RTP_RANGE,
    DemoLab,
    _start_daemon,
    demo_config,
    demo_config_text,
    open_demo_lab,
    render_summary,
)
from umprobe.probes.result import Phase, Reason
from umprobe.probes.rtp_result import RtpReason
from umprobe.store import ResultStore

WAIT = 15.0  # upper bound of any single wait, in seconds
_URL = re.compile(r"^\s+metrics\s+(http://\S+)/metrics$")


class DemoProcess(ChildProcess):
    """One `umprobe demo` subprocess: what it prints is `out` (stdout), `stderr` what it complains about."""

    kill_timeout = WAIT

    def __init__(self, args: list[str]) -> None:
        super().__init__([sys.executable, "-m", "umprobe.cli", "demo", *args])

    @property
    def stderr(self) -> str:
        return self.log()

    def wait_for_line(self, match: Callable[[str], bool], timeout: float = WAIT) -> str:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for line in self.out:
                    if match(line):
                        return line
                left = deadline - time.monotonic()
                if left <= 0 or self.proc.poll() is not None:
                    raise AssertionError(
                        f"no such line; rc={self.proc.poll()}; output:\n" + "\n".join(self.out)
                    )
                self._cond.wait(min(left, 0.2))

    def base_url(self) -> str:
        line = self.wait_for_line(lambda text: _URL.match(text) is not None)
        match = _URL.match(line)
        assert match is not None
        return match.group(1)

    def wait(self, timeout: float) -> int:
        rc = self.proc.wait(timeout=timeout)
        self.join_readers(WAIT)
        return rc


@pytest.fixture
def start_demo() -> Iterator[Callable[..., DemoProcess]]:
    yield from starter(DemoProcess)


def get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, exc.read()


def success_by_probe(page: bytes) -> dict[str, tuple[float, str, str]]:
    """{probe label: (umprobe_probe_success, listener label, transport label)}."""
    out: dict[str, tuple[float, str, str]] = {}
    for family in text_string_to_metric_families(page.decode()):
        for sample in family.samples:
            if sample.name == "umprobe_probe_success":
                labels = sample.labels
                out[labels["probe"]] = (sample.value, labels["listener"], labels["transport"])
    return out


def samples(page: bytes, name: str) -> list[tuple[dict[str, str], float]]:
    return [
        (dict(sample.labels), sample.value)
        for family in text_string_to_metric_families(page.decode())
        for sample in family.samples
        if sample.name == name
    ]


# -- live ------------------------------------------------------------------------------------------------


def test_demo_serves_metrics_and_status_page_then_stops_by_itself(
    start_demo: Callable[..., DemoProcess],
) -> None:
    # Long enough for the first RTP run: its slot is somewhere in the first DEMO_RTP_INTERVAL (10 s).
    duration = DEMO_RTP_INTERVAL + 4.0
    demo = start_demo("--duration", f"{duration:g}", "--listen", "127.0.0.1:0")
    base = demo.base_url()
    demo.wait_for_line(lambda line: line.strip().startswith("status page"))
    first = demo.output().splitlines()
    assert first[1].strip().startswith("metrics") and first[2].strip().startswith("status page"), first
    assert first[2].strip().endswith(f"{base}/"), first

    # Every listener is probed within one interval (2 s) of start, the RTP range within DEMO_RTP_INTERVAL:
    # wait for all 12 SIP probes and the first RTP run, then judge.
    deadline = time.monotonic() + duration
    while True:
        status, page = get(base + "/metrics")
        assert status == 200
        found = success_by_probe(page)
        rtp_success = samples(page, "umprobe_rtp_probe_success")
        if len(found) == 12 and rtp_success:
            break
        assert time.monotonic() < deadline and demo.proc.poll() is None, (found, demo.output())
        time.sleep(0.2)
    # One exchange2016 Dual profile target: every required listener (call router, UM service) up, and
    # each worker group has members up: the lab serves each worker port with one transport only.
    listeners = sorted(listener for _, listener, _ in found.values())
    assert listeners == ["call_router"] * 2 + ["um_service"] * 2 + ["um_worker"] * 8
    assert all(value == 1.0 for value, listener, _ in found.values() if listener != "um_worker"), found
    workers_up = sorted(
        transport for value, listener, transport in found.values() if listener == "um_worker" and value
    )
    assert workers_up == ["tcp", "tcp", "tls", "tls"], found
    # The embedded echo peer: the run worked, and every block it sampled answered.
    assert [(labels, value) for labels, value in rtp_success] == [({"peer": "demo-mbx"}, 1.0)]
    ratios = samples(page, "umprobe_rtp_block_reachable_ratio")
    assert len(ratios) == 32, "one run: 32 ports, one in each of 32 of the 64 blocks"
    assert all(value == 1.0 for _, value in ratios), ratios
    lo, hi = DEMO_RTP_RANGE
    assert all(lo <= int(labels["block"].split("-")[0]) <= hi for labels, _ in ratios)
    assert samples(page, "umprobe_rtp_ports_probed_total") and samples(page, "umprobe_rtp_rtt_seconds_count")
    promtool_check(page)

    status, body = get(base + "/")
    assert status == 200
    html = body.decode()
    for probe in found:
        assert probe in html, probe
    assert "<h3>demo-mbx</h3>" in html

    rc = demo.wait(timeout=duration + WAIT)
    elapsed = time.monotonic() - demo.started
    assert rc == 0, (demo.output(), demo.stderr)
    assert elapsed >= duration
    out = demo.output()
    assert re.search(r"^\d\d:\d\d:\d\d \(\+\d+s\): 8 of 8 SIP listeners up", out, re.MULTILINE), out
    final = next(line for line in out.splitlines() if line.startswith("final"))
    assert f"--duration {duration:g}s is over" in final and "8 of 8 SIP listeners up" in final, final
    assert "RTP 32/32 sampled blocks reachable" in final or "RTP 64/64 sampled blocks reachable" in final, (
        final
    )
    assert "RTP media       20000-20511/udp  demo-mbx" in out
    assert "Traceback" not in demo.stderr, demo.stderr


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_ends_it_within_a_second(start_demo: Callable[..., DemoProcess], signum: int) -> None:
    demo = start_demo("--listen", "127.0.0.1:0")
    demo.wait_for_line(lambda line: "SIP listeners up" in line)
    t0 = time.monotonic()
    os.kill(demo.proc.pid, signum)
    rc = demo.wait(timeout=WAIT)
    took = time.monotonic() - t0
    assert rc == 0, (demo.output(), demo.stderr)
    assert took < 1.0, took
    final = next(line for line in demo.output().splitlines() if line.startswith("final"))
    assert "stopped by a signal" in final and "8 of 8 SIP listeners up" in final, final
    assert "Traceback" not in demo.stderr, demo.stderr


async def test_default_address_falls_back_to_a_free_port_when_taken() -> None:
    # In-process, with an address this test holds, so no other process on the machine can make it flaky.
    config = parse_config(
        '[[targets]]\nhost = "127.0.0.1"\nmodule = "sip_tcp"\nport = 9\n', source="t.toml", check_files=False
    )
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        held_port = taken.getsockname()[1]
        held = f"127.0.0.1:{held_port}"
        daemon = Daemon.from_config(config, listen=held, load=lambda: config)
        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                bound, note = await _start_daemon(nursery, daemon, fallback=True)
                nursery.cancel_scope.cancel()
    assert note is not None and note.startswith(f"{held} is not available"), note
    assert bound and all(port != held_port for _, port in bound), bound


def test_an_explicit_listen_address_that_is_taken_is_one_line_and_exit_3(
    start_demo: Callable[..., DemoProcess],
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        address = f"127.0.0.1:{taken.getsockname()[1]}"
        demo = start_demo("--listen", address, "--duration", "5")
        rc = demo.wait(timeout=WAIT)
    assert rc == 3
    lines = demo.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("umprobe: error: ") and address in lines[0], lines


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--json"], "--json goes with --once"),
        (["--timeout", "3"], "--timeout goes with --once"),
        (["--once", "--listen", "127.0.0.1:0"], "--listen does not go with --once"),
        (["--once", "--duration", "3"], "--duration does not go with --once"),
        (["--duration", "0"], "--duration"),
        (["--listen", "localhost"], "--listen"),
    ],
)
def test_options_that_do_not_fit_are_one_line_and_exit_3(
    start_demo: Callable[..., DemoProcess], args: list[str], expected: str
) -> None:
    demo = start_demo(*args)
    rc = demo.wait(timeout=WAIT)
    assert rc == 3
    lines = demo.stderr.splitlines()
    assert len(lines) == 1 and expected in lines[0], lines
    assert demo.output() == ""


# -- once -------------------------------------------------------------------------------------------------


def test_once_checks_the_lab_like_check_does(start_demo: Callable[..., DemoProcess]) -> None:
    demo = start_demo("--once")
    rc = demo.wait(timeout=WAIT)
    out = demo.output()
    assert rc == 0, (out, demo.stderr)
    assert "UMPROBE OK" in out
    for port in DEMO_LAYOUT:
        assert f"{port.exchange_port}/{port.transport}" in out


# -- the generated config, in process --------------------------------------------------------------------


async def test_the_generated_config_probes_every_lab_listener() -> None:
    async with open_demo_lab() as lab:
        text = demo_config_text(lab)
        config = demo_config(lab, text)
        # One exchange2016 profile target in Dual mode, moved onto the lab's ports with port_map.
        assert text.count("[[targets]]") == 1 and "port_map = { 5060 = " in text
        assert len(config.probes) == 12
        by_key = {(probe.spec.port, probe.spec.transport): probe for probe in config.probes}
        for item in lab.listeners:
            probe = by_key[(item.bound_port, item.port.transport)]
            assert probe.spec.listener == item.port.listener
            assert probe.required == (item.port.listener != "um_worker")
            if item.port.listener == "um_worker":
                assert probe.group == f"um_worker_{item.port.transport}"
                # and the profile's other transport on the same port, in the other group
                other = "tls" if item.port.transport == "tcp" else "tcp"
                assert by_key[(item.bound_port, other)].group == f"um_worker_{other}"
            assert probe.interval < 5 and probe.timeout < probe.interval
            if item.port.transport == "tls":
                tls = probe.spec.tls
                assert tls is not None and tls.cert_file == str(lab.client_cert)
        # The echo peer, as an [[rtp]] entry with the lab's secret (read: the config is checked with files).
        (rtp,) = config.rtp
        assert (rtp.name, rtp.spec.host, rtp.spec.port) == ("demo-mbx", *lab.rtp_control)
        assert rtp.spec.rtp_range == DEMO_RTP_RANGE and rtp.interval == DEMO_RTP_INTERVAL
        assert rtp.spec.secret == lab.secret_file.read_bytes().strip()
        assert rtp.timeout < rtp.interval and rtp.cycles_per_sweep == 8
        assert lab.secret_file.stat().st_mode & 0o077 == 0


async def summary_setup() -> tuple[DemoLab, Config, ResultStore]:
    """The demo lab (closed again: the summary reads only its layout), its config, and a store of that config
    whose clock stands at 1000."""
    async with open_demo_lab() as lab:
        config = demo_config(lab)
    store = ResultStore(clock=lambda: 1000.0)
    store.set_probes(config.probes)
    store.set_rtp(config.rtp)
    return lab, config, store


async def test_the_summary_shows_waiting_up_and_down_listeners() -> None:
    lab, config, store = await summary_setup()
    up, down = config.probes[0], config.probes[1]
    store.record(up, [result(up, address="127.0.0.1")])
    store.record(
        down,
        [result(down, address="127.0.0.1", reason=Reason.CONNECT_REFUSED, phase=Phase.CONNECT, status=None)],
    )
    text = render_summary(lab, store, title="now", now=1002.5)
    lines = text.splitlines()
    assert lines[0] == "now: 1 of 8 SIP listeners up (2 probes run, 1 failed); RTP waiting"
    assert lines[1].split() == [
        "LISTENER",
        "STANDS",
        "FOR",
        "PROBE",
        "STATE",
        "SIP",
        "/",
        "RTP",
        "LAST",
        "RUN",
        "RUNS",
        "FAILED",
    ]
    assert f"5060/tcp         {up.name}  up" in lines[2] and "200 in 3.0 ms  2.5s ago" in lines[2], lines[2]
    assert f"5061/tls         {down.name}  DOWN: connect_refused" in lines[3], lines[3]
    assert all("waiting" in line for line in lines[4:15]), lines
    assert lines[14].split()[:5] == ["RTP", "media", "20000-20511/udp", "demo-mbx", "waiting"], lines[14]
    assert lines[15].startswith("  RTP blocks of demo-mbx, 0 of 64 sampled so far")
    assert lines[16:] == ["    20000-20127  ................"] + [
        f"    {lo}-{lo + 127}  ................" for lo in (20128, 20256, 20384)
    ]


async def test_the_summary_shows_optional_workers_and_the_rtp_peer() -> None:
    lab, config, store = await summary_setup()
    worker = next(p for p in config.probes if not p.required)
    store.record(
        worker,
        [result(worker, address="127.0.0.1", reason=Reason.CONNECTION_CLOSED, phase=Phase.SIP, status=None)],
    )
    (rtp,) = config.rtp
    ports = rtp.spec.ports_for_cycle(0)
    store.record_rtp(rtp, rtp_result(rtp.spec, cycle=0, silent=frozenset(ports[:1])))
    text = render_summary(lab, store, title="now", now=1002.0)
    lines = text.splitlines()
    assert lines[0] == (
        "now: 0 of 8 SIP listeners up (1 probes run, 1 failed, 1 of them optional);"
        " RTP 31/32 sampled blocks reachable"
    )
    row = next(line for line in lines if worker.name in line)
    assert "down, optional: connection_closed" in row
    rtp_row = next(line for line in lines if "RTP media" in line)
    assert "DOWN: 1 silent" in rtp_row and "31/32 ports, rtt 2.0 ms, loss 0.0%/20.0%" in rtp_row
    assert "2.0s ago" in rtp_row
    assert "RTP blocks of demo-mbx, 32 of 64 sampled so far" in text
    symbols = "".join(line.split()[-1] for line in lines[-4:])
    assert (symbols.count("#"), symbols.count("x"), symbols.count(".")) == (31, 1, 32)
    store.record_rtp(rtp, rtp_result(rtp.spec, cycle=1, reason=RtpReason.CONTROL_CONNECT_FAILED))
    rtp_row = next(line for line in render_summary(lab, store, title="t").splitlines() if "RTP media" in line)
    assert "DOWN: control_connect_failed" in rtp_row
