"""Faults of umprobe's own world (issue 7, item 4): what the daemon does when its own host misbehaves.

Each test fails if umprobe regresses on one guarantee of docs/operations-faults.md:

* a reload with a broken file (SIGHUP or POST /-/reload) keeps the running config, says why in one line,
  sets `umprobe_config_last_reload_successful` to 0, and a fixed file is picked up by the next reload;
* client certificate files are read at start and at each successful reload, never in between: a replaced
  certificate is used after the reload (a TLS peer that accepts only the new one answers), a deleted or
  half-replaced one makes the reload fail with one line while the probes keep the certificate they had;
* a name whose resolution hangs ends at the probe's deadline as `dns_error`, holds at most one resolver
  thread however many probes and runs ask for it, and does not hold up other names (the real thing, a DNS
  server that goes silent inside a network namespace, is in tests/integration/test_faults.py);
* a wall-clock step (about +1 h then -1 h, the reverse, and +1 year) changes nothing in the timetable
  (trio's MockClock and an injected wall clock; the system clock is never touched);
* an HTTP address that cannot be bound ends `umprobe run` with one line naming it and exit code 4;
* running out of file descriptors makes probes fail as `local_resource_error` with one clear log line,
  /metrics keeps answering, nothing crashes or spins, and everything recovers when descriptors free up;
  `umprobe check` says so and exits 3 (UNKNOWN), not 2.

The daemon tests run a real `umprobe run` subprocess against umprobe's own SIP responder on loopback
(127.0.0.1 only), every wait is bounded and every process is killed by its PID in teardown.
"""

from __future__ import annotations

import itertools
import math
import os
import resource
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import h11
import pytest
import trio
import trio.testing

from tests.daemon_helpers import (
    WAIT,
    BackgroundService,
    Metrics,
    UmprobeProcess,
    by_probe,
    mtls_module,
    parse_metrics,
    probes_toml,
    sip_responders,
    starter,
    write_atomically,
    write_config,
)
from tests.test_metrics import rtp_config
from tests.test_scheduler import FakeProbe, FakeRtp, FakeStore, make_probe
from umprobe.config import load_config
from umprobe.daemon import Daemon
from umprobe.devcerts import DevCA
from umprobe.net.resolve import ResolvedAddress, resolve
from umprobe.net.tls import make_server_context
from umprobe.peer.sip_responder import serve_sip_responder
from umprobe.probes.result import Phase, ProbeResult
from umprobe.probes.sip_options import SipProbeSpec
from umprobe.probes.sip_options import probe as sip_probe
from umprobe.scheduler import Scheduler


@pytest.fixture
def start_daemon() -> Iterator[Callable[..., UmprobeProcess]]:
    yield from starter(UmprobeProcess)


# -- 5. the metrics port already taken ---------------------------------------------------------------------


@pytest.mark.parametrize("why", ["in use", "not on this host"])
def test_an_address_that_cannot_be_bound_is_one_line_and_exit_4(
    tmp_path: Path, why: str, start_daemon: Callable[..., UmprobeProcess]
) -> None:
    """Exit 4 (not 3, the config's code) so that a unit can restart on one and not on the other."""
    config = write_config(tmp_path / "probes.toml", [5060])
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        # "not on this host": an address of the benchmarking range that no interface here has (no traffic)
        listen = f"127.0.0.1:{taken.getsockname()[1]}" if why == "in use" else "198.19.255.254:9874"
        daemon = start_daemon("-c", str(config), "--listen", listen)
        t0 = time.monotonic()
        rc = daemon.proc.wait(timeout=WAIT)
        elapsed = time.monotonic() - t0
    daemon.kill()
    assert rc == 4, daemon.log()
    assert len(daemon.lines) == 1, daemon.log()
    line = daemon.lines[0]
    assert line.startswith("umprobe: error: ") and listen in line, line
    expected = "address already in use" if why == "in use" else "cannot assign requested address"
    assert expected in line.lower(), line
    assert elapsed < WAIT  # it exits by itself, it does not retry forever


def test_run_help_documents_the_exit_codes() -> None:
    from click.testing import CliRunner

    from umprobe.commands.run_cmd import run_command

    result = CliRunner().invoke(run_command, ["--help"], terminal_width=110)
    assert result.exit_code == 0
    assert "4 the HTTP address" in " ".join(result.output.split()), result.output


# -- in-process daemons: one trio loop holds the peers and the daemon ---------------------------------------


async def http(address: tuple[str, int], method: str, path: str) -> tuple[int, str]:
    """One HTTP/1.1 request to the daemon's exporter (h11: chunked or not), from the test's trio loop."""
    conn = h11.Connection(h11.CLIENT)
    status, body = 0, b""
    with trio.fail_after(10):
        stream = await trio.open_tcp_stream(*address)
        async with stream:
            request = h11.Request(
                method=method, target=path, headers=[("host", "x"), ("content-length", "0")]
            )
            await stream.send_all(conn.send(request) + conn.send(h11.EndOfMessage()))
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    conn.receive_data(await stream.receive_some(65536))
                elif isinstance(event, h11.Response):
                    status = event.status_code
                elif isinstance(event, h11.Data):
                    body += event.data
                elif isinstance(event, (h11.EndOfMessage, h11.ConnectionClosed)):
                    break
    return status, body.decode()


async def scrape(address: tuple[str, int]) -> Metrics:
    status, text = await http(address, "GET", "/metrics")
    assert status == 200, text
    return parse_metrics(text)


async def wait_for(what: str, check: Callable[[], Any], within: float = WAIT) -> None:
    """Poll an async or sync `check` until it is truthy, at most `within` seconds (real time)."""
    with trio.move_on_after(within):
        while True:
            got = check()
            if hasattr(got, "__await__"):
                got = await got
            if got:
                return
            await trio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


async def start_tls_responder(
    nursery: trio.Nursery, directory: Path, stem: str, *, trusts: DevCA, server_ca: DevCA
) -> int:
    """umprobe's SIP responder with mutual TLS on a loopback port, accepting only clients of `trusts`."""
    trusts_file = trusts.write_ca(directory, f"{stem}-trusts")
    crt, key = server_ca.issue(["127.0.0.1"]).write(directory, f"{stem}-server")
    context = make_server_context(
        cert_file=str(crt), key_file=str(key), ca_file=str(trusts_file), require_client_cert=True
    )
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    await nursery.start(partial(serve_sip_responder, listeners, tls_context=context))
    return int(listeners[0].socket.getsockname()[1])


def mtls_config(ports: Sequence[int], *, interval: float = 0.5) -> str:
    return probes_toml(ports, module="mtls", interval=interval, extra=mtls_module("server-ca.crt"))


def tls_name(port: int) -> str:
    return f"127.0.0.1:{port}/tls"


# -- 1. reload with a broken file -------------------------------------------------------------------------


def replace_with_a_directory(path: Path) -> None:
    path.unlink()
    path.mkdir()


BROKEN_FILES: dict[str, tuple[Callable[[Path], object], str]] = {
    "toml syntax": (lambda p: p.write_text("[[targets]\nhost = 'x'\n"), "TOML syntax error"),
    "unknown key": (lambda p: p.write_text("[[targets]]\nhots = 'x.example'\n"), "hots"),
    "not utf-8": (lambda p: p.write_bytes(b"\xff\xfe[[targets]]\n"), "not UTF-8"),
    "deleted": (lambda p: p.unlink(), "cannot read"),
    "a directory": (replace_with_a_directory, "cannot read"),
    "empty (mid-write)": (lambda p: p.write_bytes(b""), "empty"),
    "missing module file": (
        lambda p: p.write_text(p.read_text().replace('"server-ca.crt"', '"gone-ca.crt"')),
        "gone-ca.crt",
    ),
}


@pytest.mark.parametrize("broken", list(BROKEN_FILES))
async def test_a_broken_reload_keeps_the_running_config_and_a_fixed_file_is_picked_up(
    tmp_path: Path, broken: str, nursery: trio.Nursery
) -> None:
    ca = DevCA.create("faults CA")
    ca.write_ca(tmp_path, "server-ca")
    ca.issue(["probe.test.invalid"]).write(tmp_path, "client")
    ports = [
        await start_tls_responder(nursery, tmp_path, f"peer{i}", trusts=ca, server_ca=ca) for i in (1, 2)
    ]
    path = write_atomically(tmp_path / "probes.toml", mtls_config(ports[:1]))
    daemon = Daemon.from_config(load_config(path), listen="127.0.0.1:0", config_path=path)
    (address, *_) = await nursery.start(daemon.serve)
    await wait_for("the first result", lambda: has_result(daemon, tls_name(ports[0]), success=True))
    before = await scrape(address)
    assert before["umprobe_config_last_reload_successful"][()] == 1
    loaded_at = before["umprobe_config_last_reload_success_timestamp_seconds"][()]

    breaking, needle = BROKEN_FILES[broken]
    breaking(path)
    status, body = await http(address, "POST", "/-/reload")
    assert status == 500, body
    assert body.count("\n") == 1 and body.startswith("reload failed: ") and needle in body, body
    after = await scrape(address)
    assert after["umprobe_config_last_reload_successful"][()] == 0
    assert after["umprobe_config_last_reload_success_timestamp_seconds"][()] == loaded_at
    # The old config is in force and keeps running: same probes, results still coming in.
    assert set(by_probe(after, "umprobe_probe_interval_seconds")) == {tls_name(ports[0])}
    runs = by_probe(after, "umprobe_probe_runs_total")[tls_name(ports[0])]
    await wait_for(
        "the old probe to keep running",
        lambda: runs_of(daemon, tls_name(ports[0])) >= runs + 2,
    )

    # Fixed (and changed): the next reload, here by a real SIGHUP, picks it up.
    if path.is_dir():
        path.rmdir()
    write_atomically(path, mtls_config(ports))
    os.kill(os.getpid(), signal.SIGHUP)
    await wait_for("the fixed file", lambda: daemon.store.reload_status().successful)
    fixed = await scrape(address)
    assert fixed["umprobe_config_last_reload_successful"][()] == 1
    assert fixed["umprobe_config_last_reload_success_timestamp_seconds"][()] >= loaded_at
    assert set(by_probe(fixed, "umprobe_probe_interval_seconds")) == {tls_name(p) for p in ports}
    await wait_for("the added probe", lambda: has_result(daemon, tls_name(ports[1]), success=True))


def has_result(daemon: Daemon, probe_name: str, *, success: bool, reason: str | None = None) -> bool:
    for probe in daemon.store.probes():
        if probe.name == probe_name:
            results = daemon.store.latest(probe.id)
            return bool(results) and all(
                r.success is success and (reason is None or r.reason.value == reason) for r in results
            )
    return False


def runs_of(daemon: Daemon, probe_name: str) -> int:
    for probe in daemon.store.probes():
        if probe.name == probe_name:
            return sum(stats.runs for stats in daemon.store.address_stats(probe.id))
    return 0


# -- 2. certificate files replaced or deleted while running -----------------------------------------------


async def test_client_certificate_files_are_read_at_start_and_reload_only(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    """Two mutual-TLS peers: `old_peer` accepts only clients of the old CA, `new_peer` only of the new one.

    Files deleted before the first run change nothing (they were read at start); a reload while they are
    missing, or half replaced, fails with one line and the probes keep the certificate they had; a reload
    after the new certificate and key are in place switches every probe to them at once."""
    server_ca, old_ca, new_ca = DevCA.create("server CA"), DevCA.create("old CA"), DevCA.create("new CA")
    server_ca.write_ca(tmp_path, "server-ca")
    old_peer = await start_tls_responder(nursery, tmp_path, "old", trusts=old_ca, server_ca=server_ca)
    new_peer = await start_tls_responder(nursery, tmp_path, "new", trusts=new_ca, server_ca=server_ca)
    crt, key = old_ca.issue(["probe.test.invalid"]).write(tmp_path, "client")
    path = write_atomically(tmp_path / "probes.toml", mtls_config([old_peer, new_peer], interval=0.5))
    daemon = Daemon.from_config(load_config(path), listen="127.0.0.1:0", config_path=path)

    # Gone before any probe has run: the probes still have what the start read.
    crt.unlink()
    key.unlink()
    (address, *_) = await nursery.start(daemon.serve)
    await wait_for("the first results", lambda: runs_of(daemon, tls_name(new_peer)) >= 1)
    await wait_for("old_peer up", lambda: has_result(daemon, tls_name(old_peer), success=True))
    assert has_result(daemon, tls_name(new_peer), success=False, reason="tls_client_cert_rejected")

    # A reload while they are missing: one line naming the file, the probes keep their certificate.
    status, body = await http(address, "POST", "/-/reload")
    assert status == 500 and body.count("\n") == 1 and "client.crt" in body, body
    assert (await scrape(address))["umprobe_config_last_reload_successful"][()] == 0
    runs = runs_of(daemon, tls_name(old_peer))
    await wait_for("old_peer to keep running", lambda: runs_of(daemon, tls_name(old_peer)) >= runs + 2)
    assert has_result(daemon, tls_name(old_peer), success=True)

    # Half replaced (the new certificate, no key yet; then the new certificate with the old key).
    new = new_ca.issue(["probe.test.invalid"])
    write_atomically(crt, new.cert_pem.decode())
    assert await daemon.reload("SIGHUP") is False
    assert "client.key" in (daemon.store.reload_status().last_error or "")
    write_atomically(key, old_ca.issue(["probe.test.invalid"]).key_pem.decode())
    assert await daemon.reload("SIGHUP") is False
    error = daemon.store.reload_status().last_error or ""
    assert "client" in error and "\n" not in error, error
    runs = runs_of(daemon, tls_name(old_peer))
    await wait_for("old_peer to keep running", lambda: runs_of(daemon, tls_name(old_peer)) >= runs + 2)
    assert has_result(daemon, tls_name(old_peer), success=True)

    # Both in place: a real SIGHUP, and every probe uses the new certificate from its next run on.
    write_atomically(key, new.key_pem.decode())
    os.kill(os.getpid(), signal.SIGHUP)
    await wait_for("the reload", lambda: daemon.store.reload_status().successful)
    await wait_for("new_peer up", lambda: has_result(daemon, tls_name(new_peer), success=True))
    await wait_for(
        "old_peer to refuse the new certificate",
        lambda: has_result(daemon, tls_name(old_peer), success=False, reason="tls_client_cert_rejected"),
    )
    # /probe uses the certificate in force too.
    status, body = await http(address, "GET", f"/probe?module=mtls&target=127.0.0.1:{new_peer}")
    assert status == 200 and "\nprobe_success 1" in body, body


# -- 4. the wall clock steps (trio's MockClock; the system clock is never touched) ------------------------


class SteppingWallClock:
    """Unix time that follows trio's clock from `start`, plus whatever `step()` added: an NTP step, a VM
    resumed from a snapshot, an operator's `date -s`."""

    def __init__(self, start: float) -> None:
        self.start = start
        self.t0 = trio.current_time()
        self.offset = 0.0

    def __call__(self) -> float:
        return self.start + (trio.current_time() - self.t0) + self.offset

    def step(self, seconds: float) -> None:
        self.offset += seconds


# Not whole multiples of the intervals: a step of exactly 1 h would leave every grid where it was anyway.
@pytest.mark.parametrize("steps", [(3600.37, -3600.37), (-3599.61, 3599.61), (86400.0 * 365 + 0.5, 0.0)])
async def test_a_wall_clock_step_neither_bursts_nor_stalls_the_timetable(
    autojump_clock: trio.testing.MockClock, steps: tuple[float, float]
) -> None:
    """The grid is anchored to the wall clock once, when the scheduler starts; after that it runs on trio's
    monotonic clock. A step forward runs no catch-up burst, a step back does not stall, lag stays 0, and a
    reload after a step keeps every phase. The RTP sweep keeps walking its cycles in order."""
    probes = [make_probe(f"p{i}", interval=10.0) for i in range(20)] + [
        make_probe(f"q{i}", interval=3.0, timeout=2.0) for i in range(5)
    ]
    rtp = rtp_config(interval=10.0, timeout=8.0)
    fake, fake_rtp, store = FakeProbe(duration=lambda _spec: 0.5), FakeRtp(duration=0.5), FakeStore()
    wall = SteppingWallClock(1_800_000_000.0)
    sched = Scheduler(store, max_concurrency=100, probe_fn=fake, rtp_fn=fake_rtp, wall_clock=wall)
    sched.update([*probes, rtp])
    t0 = trio.current_time()
    with trio.fail_after(7200):
        async with trio.open_nursery() as nursery:
            await nursery.start(sched.run)
            await trio.sleep(300.0)
            wall.step(steps[0])
            await trio.sleep(300.0)
            sched.update([*probes[:-1], rtp])  # a reload after the step: unchanged probes keep their phase
            await trio.sleep(300.0)
            wall.step(steps[1])
            sched.update([*probes, rtp])  # and one that adds a probe back
            await trio.sleep(300.0)
            nursery.cancel_scope.cancel()
    elapsed = trio.current_time() - t0
    for probe in probes[:-1]:
        starts = fake.starts(probe.id)
        gaps = [b - a for a, b in itertools.pairwise(starts)]
        assert gaps and all(g == pytest.approx(probe.interval) for g in gaps), (probe.id, sorted(set(gaps)))
        assert len(starts) >= math.floor(elapsed / probe.interval) - 1
    # The probe removed and added back lands on the same phase as before.
    readded = fake.starts(probes[-1].id)
    assert {round((s - readded[0]) % 3.0, 6) for s in readded} <= {0.0, 3.0}
    assert store.lags and all(0.0 <= lag < 1e-6 for lag in store.lags), max(store.lags)
    assert store.skipped == 0 and store.max_in_flight <= len(probes) + 1
    assert all(call.end is not None and call.end >= call.start for call in fake.calls[:-60])
    cycles = [call.cycle for call in fake_rtp.calls]
    assert len(cycles) >= 115 and all((b - a) % 8 == 1 for a, b in itertools.pairwise(cycles))


# -- 3. DNS that stops answering (the resolver's side; the real server is in tests/integration) -------------


class HangingResolver:
    """Stands in for the C library's getaddrinfo: names starting with "hang" block (as a resolver does
    while its server is silent) until `release` is set; "good.test" answers at once."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.lock = threading.Lock()
        self.active: dict[str, int] = {}
        self.peak: dict[str, int] = {}
        self.peak_total = 0
        self.calls = 0

    def __call__(
        self, host: Any, port: Any, family: int = 0, type: int = 0, proto: int = 0, flags: int = 0
    ) -> list[Any]:
        name = host.decode() if isinstance(host, bytes) else str(host)
        if flags & socket.AI_NUMERICHOST:  # "is it an IP literal?" is answered at once, as by the C library
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        if name == "good.test":
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("192.0.2.7", 0))]
        assert name.startswith("hang"), name
        with self.lock:
            self.calls += 1
            self.active[name] = self.active.get(name, 0) + 1
            self.peak[name] = max(self.peak.get(name, 0), self.active[name])
            self.peak_total = max(self.peak_total, sum(self.active.values()))
        try:
            self.release.wait(30)
        finally:
            with self.lock:
                self.active[name] -= 1
        raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")

    def busy(self) -> int:
        with self.lock:
            return sum(self.active.values())


async def test_a_hanging_name_ends_at_the_deadline_and_holds_one_thread(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Twelve probes of one name (an exchange2016 profile) and four of another, each run every 0.2 s with a
    0.15 s deadline, for 2 s, while their lookups hang: every run ends at its deadline as dns_error, each
    name holds one lookup thread at a time (not one per run), and another name still resolves at once."""
    resolver = HangingResolver()
    monkeypatch.setattr(socket, "getaddrinfo", resolver)
    specs = [SipProbeSpec(host="hang1.test", port=5060 + i, families=("ipv4",)) for i in range(12)]
    specs += [SipProbeSpec(host="hang2.test", port=5060 + i, families=("ipv4",)) for i in range(4)]
    overruns: list[float] = []
    results: list[ProbeResult] = []

    async def keep_probing(spec: SipProbeSpec) -> None:
        for _ in range(10):
            start = trio.current_time()
            results.extend(await sip_probe(spec, deadline=start + 0.15))
            overruns.append(trio.current_time() - (start + 0.15))
            await trio.sleep_until(start + 0.2)

    try:
        async with trio.open_nursery() as nursery:
            for spec in specs:
                nursery.start_soon(keep_probing, spec)
            await trio.sleep(1.0)
            with trio.fail_after(0.5):  # another name is not held up by the hanging ones
                assert await resolve("good.test", 5060) == [ResolvedAddress("192.0.2.7", "ipv4")]
        assert len(results) == 160 and all(
            (r.reason.value, r.phase) == ("dns_error", Phase.RESOLVE) for r in results
        )
        assert all("did not finish before the deadline" in r.detail for r in results), results[0].detail
        assert max(overruns) < 0.5, max(overruns)
        assert resolver.peak == {"hang1.test": 1, "hang2.test": 1}, resolver.peak
        assert resolver.peak_total == 2
    finally:
        resolver.release.set()
    await wait_for("the released lookups to end", lambda: not resolver.busy(), within=5)
    # Once the lookup has ended, the next probe asks again (a failed lookup is not remembered).
    calls = resolver.calls
    resolver.release.clear()
    with trio.fail_after(5):
        (result,) = await sip_probe(specs[0], deadline=trio.current_time() + 0.1)
    assert result.reason.value == "dns_error" and resolver.calls == calls + 1
    resolver.release.set()


# -- 6. running out of file descriptors --------------------------------------------------------------------


def silent_listeners(count: int) -> BackgroundService:
    """`count` loopback ports that accept connections and never say a word; `start()` returns the ports.
    Stopping it closes every port and connection, which frees the prober's sockets at once."""

    async def hold(stream: trio.SocketStream) -> None:
        async with stream:
            await trio.sleep_forever()

    async def serve(task_status: trio.TaskStatus[list[int]]) -> None:
        listeners: list[trio.SocketListener] = []
        for _ in range(count):
            listeners += await trio.open_tcp_listeners(0, host="127.0.0.1", backlog=1000)
        async with trio.open_nursery() as nursery:
            task_status.started([listener.socket.getsockname()[1] for listener in listeners])
            await trio.serve_listeners(hold, listeners, handler_nursery=nursery)

    return BackgroundService("silent-listeners", serve)


def low_fd_limit(limit: int) -> Callable[[], None]:
    def preexec() -> None:  # in the child, between fork and exec
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))

    return preexec


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_out_of_file_descriptors_the_daemon_says_so_keeps_serving_and_recovers(
    tmp_path: Path, start_daemon: Callable[..., UmprobeProcess]
) -> None:
    """RLIMIT_NOFILE 64 and 100 silent listeners that each hold a socket for 0.8 s of every second: about a
    third of the runs find no descriptor. They fail as local_resource_error (not as the target's fault),
    one log line says why, /metrics answers, nothing crashes or spins; when the silent peers go away,
    everything recovers by itself and a log line says so."""
    healthy, silent = sip_responders(5), silent_listeners(100)
    healthy_ports, silent_ports = healthy.start(), silent.start()
    silent_running = True
    try:
        config = write_config(
            tmp_path / "probes.toml",
            [*healthy_ports, *silent_ports],
            interval=1.0,
            timeout=0.8,
            extra="[scheduler]\nmax_concurrency = 500\n",
        )
        daemon = start_daemon(
            "-c", str(config), "--listen", "127.0.0.1:0", "--log-format", "json", preexec=low_fd_limit(64)
        )
        daemon.wait_running()
        alarm = daemon.wait_for_record(lambda r: r.get("msg", "").startswith("out of file descriptors"))
        assert alarm["level"] == "error" and alarm["limit"] == 64, alarm
        assert "local_resource_error" in alarm["msg"] and "LimitNOFILE" in alarm["msg"], alarm

        def local_failures() -> float:
            return sum(
                daemon.by_probe("umprobe_probe_failures_total", reason="local_resource_error").values()
            )

        daemon.wait_until("local_resource_error on /metrics", lambda: local_failures() >= 10)
        # Nobody blames the targets: no connect_error, and the per-probe state log stays quiet about it.
        assert sum(daemon.by_probe("umprobe_probe_failures_total", reason="connect_error").values()) == 0
        assert not [r for r in daemon.records() if r.get("reason") == "local_resource_error"]
        # Steady state: /metrics keeps answering, the log does not grow per run, the process does not spin.
        lines, cpu, t0 = len(daemon.lines), cpu_seconds(daemon.proc.pid), time.monotonic()
        scrapes = 0
        while (
            time.monotonic() - t0 < 4.0
        ):  # each answered within 5 s (a connection may wait for a descriptor)
            status, _ = daemon.request("/metrics")
            assert status == 200
            scrapes += 1
            time.sleep(0.2)
        busy = (cpu_seconds(daemon.proc.pid) - cpu) / (time.monotonic() - t0)
        assert scrapes >= 3
        # (Each probe's first real result is logged once, whenever its first run gets a descriptor.)
        later = [line for line in daemon.lines[lines:] if '"probe first result"' not in line]
        assert len(later) < 10, "\n".join(later)
        assert busy < 0.9, f"the daemon used {busy:.0%} of a CPU"
        assert local_failures() >= 20 and daemon.fds() <= 64
        assert daemon.proc.poll() is None

        # The silent peers go away: their probes are refused at once, descriptors free up, all recovers.
        silent.stop()
        silent_running = False
        daemon.wait_for_record(lambda r: r.get("msg", "").startswith("file descriptors available again"))
        settled = local_failures()
        daemon.wait_until(
            "every probe judged on its own again",
            lambda: (
                all(
                    daemon.by_probe("umprobe_probe_success").get(f"127.0.0.1:{port}/tcp") == 1
                    for port in healthy_ports
                )
                and sum(daemon.by_probe("umprobe_probe_failures_total", reason="connect_refused").values())
                >= 100
            ),
        )
        assert local_failures() == settled
        assert daemon.proc.poll() is None
        assert "Traceback" not in daemon.log() and "could not run" not in daemon.log()
    finally:
        if silent_running:
            silent.stop()
        healthy.stop()


def test_out_of_file_descriptors_check_is_unknown_and_says_why(tmp_path: Path) -> None:
    """`umprobe check` of 100 silent listeners under RLIMIT_NOFILE 32: exit 3 (UNKNOWN: the probe could
    not judge), not 2 (CRITICAL: the listeners are down), and the first line says what to do."""
    silent = silent_listeners(100)
    ports = silent.start()
    try:
        check = UmprobeProcess(
            ["--timeout", "1", *(f"127.0.0.1:{port}" for port in ports)],
            preexec=low_fd_limit(32),
            command="check",
        )
        try:
            rc = check.proc.wait(timeout=WAIT)
        finally:
            check.kill()
    finally:
        silent.stop()
    assert rc == 3, "\n".join(check.out + check.lines)
    first = check.out[0]
    assert first.startswith("UMPROBE UNKNOWN - "), first
    assert "out of file descriptors" in first and "ulimit -n" in first, first
    assert "local_resource_error" in "\n".join(check.out)
    assert "Traceback" not in check.log()
