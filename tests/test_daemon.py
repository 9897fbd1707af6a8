"""`umprobe run` end to end, and the daemon's logging.

The daemon tests start a real `umprobe run` subprocess (through `umprobe.cli.main`, so exit codes and
error lines are the real ones) against umprobe's own SIP responder (and, for `[[rtp]]`, its echo peer)
on loopback, scrape /metrics over HTTP, and reload with a real SIGHUP. Every wait is bounded, and every
process started here is killed by its PID in teardown. Only 127.0.0.1 is used.
"""

from __future__ import annotations

import io
import json
import logging
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio
from OpenSSL import SSL
from prometheus_client.parser import text_string_to_metric_families

from tests.test_metrics import promtool_check
from umprobe.config import load_config
from umprobe.daemon import Daemon
from umprobe.devcerts import DevCA
from umprobe.logs import JsonFormatter, LogfmtFormatter, ProbeStateLog, configure_logging, log_event
from umprobe.net.tls import TLSClientConfig, make_server_context
from umprobe.peer.echo_peer import PeerConfig, serve_echo_peer
from umprobe.peer.sip_responder import serve_sip_responder
from umprobe.probes.sip_options import TLSContextCache
from umprobe.scheduler import Scheduler
from umprobe.store import ResultStore

# `umprobe.cli.main`, the real entry point (one-line errors, exit codes).
RUNNER = "import sys\nfrom umprobe.cli import main\nmain(sys.argv[1:])\n"

WAIT = 15.0  # upper bound of any single wait for the daemon, in seconds


# -- peers ---------------------------------------------------------------------------------------------


class BackgroundService:
    """A trio service (`serve(task_status=...)` style) in its own trio loop on a background thread.

    `start()` returns what the service passed to `task_status.started()`; `stop()` cancels it and checks the
    thread did not die early. The daemon under test is a subprocess, so its peers need a loop of their own.
    """

    def __init__(self, name: str, serve: Callable[..., Awaitable[object]]) -> None:
        self.name = name
        self._serve = serve
        self._thread: threading.Thread | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self._stop: trio.Event | None = None
        self._error: BaseException | None = None

    def start(self) -> Any:
        ready: queue.Queue[Any] = queue.Queue()

        async def main() -> None:
            self._token = trio.lowlevel.current_trio_token()
            self._stop = trio.Event()
            async with trio.open_nursery() as nursery:
                ready.put(await nursery.start(self._serve))
                await self._stop.wait()
                nursery.cancel_scope.cancel()

        def thread_main() -> None:
            try:
                trio.run(main)
            except BaseException as exc:  # pragma: no cover - reported to start() or stop()
                self._error = exc
                ready.put(exc)

        self._thread = threading.Thread(target=thread_main, name=self.name, daemon=True)
        self._thread.start()
        got = ready.get(timeout=10)
        if isinstance(got, BaseException):
            raise got
        return got

    def stop(self) -> None:
        if self._thread is None:
            return
        if not self._thread.is_alive():
            raise AssertionError(f"the {self._thread.name} thread ended early: {self._error!r}")
        if self._token is not None and self._stop is not None:
            trio.from_thread.run_sync(self._stop.set, trio_token=self._token)
        self._thread.join(timeout=10)
        assert not self._thread.is_alive()


def sip_responders(count: int, *, tls_context: SSL.Context | None = None) -> BackgroundService:
    """umprobe's SIP OPTIONS responder on `count` loopback ports; `start()` returns the ports."""

    async def serve(task_status: trio.TaskStatus[list[int]]) -> None:
        listeners: list[trio.SocketListener] = []
        for _ in range(count):
            listeners += await trio.open_tcp_listeners(0, host="127.0.0.1")
        async with trio.open_nursery() as nursery:
            await nursery.start(partial(serve_sip_responder, listeners, tls_context=tls_context))
            task_status.started([listener.socket.getsockname()[1] for listener in listeners])
            await trio.sleep_forever()

    return BackgroundService("sip-responders", serve)


def echo_peer(config: PeerConfig) -> BackgroundService:
    """umprobe's echo peer, as `umprobe peer` runs it; `start()` returns its control port."""

    async def serve(task_status: trio.TaskStatus[int]) -> None:
        async with trio.open_nursery() as nursery:
            running = await nursery.start(partial(serve_echo_peer, config))
            task_status.started(running.control[0][1])
            await trio.sleep_forever()

    return BackgroundService("echo-peer", serve)


@pytest.fixture
def responders() -> Iterator[list[int]]:
    peers = sip_responders(3)
    try:
        yield peers.start()
    finally:
        peers.stop()


class JsonLogRecords:
    """The JSON log lines a daemon subprocess wrote, for classes that collect them into `self.lines` under
    `self._cond` (a reader thread appends and notifies) and have `proc` and `log()`."""

    lines: list[str]
    _cond: threading.Condition
    proc: subprocess.Popen[str]

    def log(self) -> str:
        with self._cond:
            return "\n".join(self.lines)

    def records(self) -> list[dict[str, Any]]:
        """The JSON log records so far (lines that are not JSON are skipped)."""
        out = []
        with self._cond:
            lines = list(self.lines)
        for line in lines:
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict):
                out.append(record)
        return out

    def wait_for_record(
        self, match: Callable[[dict[str, Any]], bool], timeout: float = WAIT
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            for record in self.records():
                if match(record):
                    return record
            left = deadline - time.monotonic()
            if left <= 0 or self.proc.poll() is not None:
                raise AssertionError(
                    f"no such log record; rc={self.proc.poll()}; log:\n" + self.log()[-6000:]
                )
            with self._cond:
                self._cond.wait(min(left, 0.2))


class UmprobeProcess(JsonLogRecords):
    """One `umprobe run` subprocess: its log lines (stderr) collected by a reader thread."""

    def __init__(self, args: list[str]) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", RUNNER, "run", *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        self.lines: list[str] = []
        self._cond = threading.Condition()
        self._reader = threading.Thread(target=self._read, name="umprobe-stderr", daemon=True)
        self._reader.start()
        self.base_url = ""

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            with self._cond:
                self.lines.append(line.rstrip("\n"))
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def wait_running(self) -> str:
        record = self.wait_for_record(lambda r: r.get("msg") == "umprobe running")
        self.base_url = "http://" + str(record["listen"]).split()[0]
        return self.base_url

    def get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(self.base_url + path, timeout=5) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as exc:
            with exc:
                return exc.code, exc.read().decode()

    def post(self, path: str) -> tuple[int, str]:
        request = urllib.request.Request(self.base_url + path, data=b"", method="POST")
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as exc:
            with exc:
                return exc.code, exc.read().decode()

    def metrics(self) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
        """name -> {sorted label items: value}."""
        status, text = self.get("/metrics")
        assert status == 200
        out: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                out.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
        return out

    def by_probe(self, name: str) -> dict[str, float]:
        """{probe label: value} of one per-listener metric."""
        return {dict(labels)["probe"]: value for labels, value in self.metrics().get(name, {}).items()}

    def scalar(self, name: str) -> float:
        return self.metrics()[name][()]

    def wait_until(self, what: str, check: Callable[[], bool], timeout: float = WAIT) -> None:
        deadline = time.monotonic() + timeout
        while not check():
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise AssertionError(
                    f"timed out waiting for {what}; rc={self.proc.poll()}; log:\n{self.log()}"
                )
            time.sleep(0.1)

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)
        self._reader.join(timeout=10)
        if self.proc.stderr is not None:
            self.proc.stderr.close()


@pytest.fixture
def start_umprobe() -> Iterator[Callable[..., UmprobeProcess]]:
    started: list[UmprobeProcess] = []

    def start(*args: str) -> UmprobeProcess:
        process = UmprobeProcess(list(args))
        started.append(process)
        return process

    try:
        yield start
    finally:
        for process in started:
            process.kill()


def write_config(path: Path, ports: list[int], *, extra: str = "") -> Path:
    """A probes.toml with one plain-TCP probe of 127.0.0.1 per port, every 0.5 s; replaced atomically."""
    text = '[defaults]\ninterval = 0.5\ntimeout = 0.4\nfamilies = ["ipv4"]\n\n'
    for port in ports:
        text += f'[[targets]]\nhost = "127.0.0.1"\nmodule = "sip_tcp"\nport = {port}\n\n'
    text += extra
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
    return path


def name(port: int) -> str:
    return f"127.0.0.1:{port}/tcp"


# -- the daemon, end to end ------------------------------------------------------------------------------


def test_reload_by_sighup(
    tmp_path: Path,
    responders: list[int],
    closed_port: tuple[str, int],
    start_umprobe: Callable[..., UmprobeProcess],
) -> None:
    a, b, c = responders
    down = closed_port[1]
    config = write_config(tmp_path / "probes.toml", [a, b, down])
    umprobe = start_umprobe("-c", str(config), "--listen", "127.0.0.1:0", "--log-format", "json")
    umprobe.wait_running()
    assert umprobe.get("/-/healthy")[0] == 200

    # Every probe reports: the responders are up, the closed port is down.
    umprobe.wait_until(
        "first results",
        lambda: umprobe.by_probe("umprobe_probe_success") == {name(a): 1, name(b): 1, name(down): 0},
    )
    assert umprobe.scalar("umprobe_config_last_reload_successful") == 1
    runs_before = umprobe.by_probe("umprobe_probe_runs_total")

    # Reload: remove b, add c.
    write_config(config, [a, c, down])
    os.kill(umprobe.proc.pid, signal.SIGHUP)
    reloaded = umprobe.wait_for_record(lambda r: r.get("msg") == "config reloaded")
    assert (reloaded["added"], reloaded["removed"], reloaded["unchanged"], reloaded["source"]) == (
        1,
        1,
        2,
        "SIGHUP",
    )
    assert set(umprobe.by_probe("umprobe_probe_interval_seconds")) == {name(a), name(c), name(down)}
    umprobe.wait_until(
        "c's first result", lambda: umprobe.by_probe("umprobe_probe_success").get(name(c)) == 1
    )
    metrics = umprobe.metrics()
    assert not any(dict(labels).get("probe") == name(b) for family in metrics.values() for labels in family)
    # The unchanged probe kept its series: its counter went on from where it was.
    runs_after = umprobe.by_probe("umprobe_probe_runs_total")
    assert runs_after[name(a)] >= runs_before[name(a)]
    assert umprobe.scalar("umprobe_config_last_reload_successful") == 1

    # A broken file is rejected, logged as one line, and the running probes keep running.
    config.write_text(config.read_text() + "\n[[targets]]\nhots = 'typo.example'\n")
    os.kill(umprobe.proc.pid, signal.SIGHUP)
    umprobe.wait_until(
        "the failed reload", lambda: umprobe.scalar("umprobe_config_last_reload_successful") == 0
    )
    failed = [r for r in umprobe.records() if r.get("msg", "").startswith("config reload failed")]
    assert len(failed) == 1
    assert "hots" in failed[0]["error"] and "\n" not in failed[0]["error"]
    assert failed[0]["level"] == "error"
    runs_at_failure = umprobe.by_probe("umprobe_probe_runs_total")
    assert set(umprobe.by_probe("umprobe_probe_interval_seconds")) == {name(a), name(c), name(down)}
    umprobe.wait_until(
        "probes to keep running",
        lambda: all(
            umprobe.by_probe("umprobe_probe_runs_total")[p] > runs_at_failure[p] for p in (name(a), name(c))
        ),
    )

    # State changes were logged once each, not once per run.
    firsts = [r for r in umprobe.records() if r.get("msg") == "probe first result"]
    assert sorted(r["probe"] for r in firsts) == sorted([name(a), name(b), name(down), name(c)])
    down_line = next(r for r in firsts if r["probe"] == name(down))
    assert (down_line["state"], down_line["reason"], down_line["address"]) == (
        "down",
        "connect_refused",
        "127.0.0.1",
    )
    assert not [r for r in umprobe.records() if r.get("msg") == "probe state changed"]

    # POST /-/reload takes the same path: rejected while broken, accepted once fixed.
    status, body = umprobe.post("/-/reload")
    assert status == 500 and "hots" in body
    write_config(config, [a, b])
    status, _ = umprobe.post("/-/reload")
    assert status == 200
    assert umprobe.scalar("umprobe_config_last_reload_successful") == 1
    assert set(umprobe.by_probe("umprobe_probe_interval_seconds")) == {name(a), name(b)}

    # SIGTERM: gone within a second, exit 0.
    t0 = time.monotonic()
    os.kill(umprobe.proc.pid, signal.SIGTERM)
    rc = umprobe.proc.wait(timeout=5)
    elapsed = time.monotonic() - t0
    assert rc == 0, umprobe.log()
    assert elapsed < 1.0
    assert any(r.get("msg") == "stopping" and r.get("signal") == "SIGTERM" for r in umprobe.records())


def test_reload_reads_replaced_certificate_files(
    tmp_path: Path, start_umprobe: Callable[..., UmprobeProcess]
) -> None:
    """Same config text, new client certificate on disk: after SIGHUP the probe uses the new one."""
    trusted, stranger = DevCA.create("trusted CA"), DevCA.create("stranger CA")
    ca_file = trusted.write_ca(tmp_path, "ca")
    server_crt, server_key = trusted.issue(["127.0.0.1"]).write(tmp_path, "server")
    trusted.issue(["probe.test.invalid"]).write(tmp_path, "client")
    server_ctx = make_server_context(
        cert_file=str(server_crt), key_file=str(server_key), ca_file=str(ca_file), require_client_cert=True
    )
    peers = sip_responders(1, tls_context=server_ctx)
    (port,) = peers.start()
    try:
        config = tmp_path / "probes.toml"
        config.write_text(
            '[defaults]\ninterval = 0.5\ntimeout = 0.4\nfamilies = ["ipv4"]\n\n'
            '[modules.mtls]\ntransport = "tls"\nca_file = "ca.crt"\ncert_file = "client.crt"\n'
            'key_file = "client.key"\n\n'
            f'[[targets]]\nhost = "127.0.0.1"\nmodule = "mtls"\nport = {port}\n'
        )
        umprobe = start_umprobe("-c", str(config), "--listen", "127.0.0.1:0", "--log-format", "json")
        umprobe.wait_running()
        probe = f"127.0.0.1:{port}/tls"
        umprobe.wait_until("mutual TLS up", lambda: umprobe.by_probe("umprobe_probe_success") == {probe: 1})

        # A certificate the server does not trust replaces ours, under the same file names.
        replacement = stranger.issue(["probe.test.invalid"])
        replacement.write(tmp_path, "client.new")
        os.replace(tmp_path / "client.new.crt", tmp_path / "client.crt")
        os.replace(tmp_path / "client.new.key", tmp_path / "client.key")
        os.kill(umprobe.proc.pid, signal.SIGHUP)
        reloaded = umprobe.wait_for_record(lambda r: r.get("msg") == "config reloaded")
        assert (reloaded["unchanged"], reloaded["changed"]) == (1, 0)
        changed = umprobe.wait_for_record(lambda r: r.get("msg") == "probe state changed")
        assert changed["state"] == "down" and changed["reason"].startswith("tls_"), changed
        assert umprobe.by_probe("umprobe_probe_success") == {probe: 0}
    finally:
        peers.stop()


RTP_RANGE = (21000, 21255)  # 128 even ports: 64 blocks of two, 8 cycles of 16 ports


def test_rtp_target_is_swept_and_exported(
    tmp_path: Path, start_umprobe: Callable[..., UmprobeProcess]
) -> None:
    """An [[rtp]] entry against a real echo peer on loopback: the RTP families on /metrics, the status page,
    then a rotated secret (SIGHUP) the peer does not share: control_auth_failed, the blocks kept."""
    secret = tmp_path / "peer.secret"
    secret.write_text("the peer and the prober share this one\n")
    secret.chmod(0o600)
    peer = echo_peer(
        PeerConfig(
            secret=secret.read_bytes().strip(),
            listen_host="127.0.0.1",
            media_host="127.0.0.1",
            rtp_range=RTP_RANGE,
            rate_per_source=2000.0,
            rate_global=4000.0,
        )
    )
    port = peer.start()
    try:
        lo, hi = RTP_RANGE
        config = write_config(
            tmp_path / "probes.toml",
            [],
            extra=(
                f'[[rtp]]\npeer = "127.0.0.1:{port}"\nname = "lab-peer"\nsecret_file = "peer.secret"\n'
                f'range = "{lo}-{hi}"\nsamples = 16\npackets = 3\nconcurrency = 8\ninterval = 6\n'
                'labels = { site = "lab" }\n'
            ),
        )
        umprobe = start_umprobe("-c", str(config), "--listen", "127.0.0.1:0", "--log-format", "json")
        umprobe.wait_running()
        running = umprobe.wait_for_record(lambda r: r.get("msg") == "umprobe running")
        assert (running["probes"], running["rtp_peers"]) == (0, 1)

        def rtp(name: str) -> dict[tuple[tuple[str, str], ...], float]:
            return umprobe.metrics().get(name, {})

        peer_labels = (("peer", "lab-peer"), ("site", "lab"))
        umprobe.wait_until(
            "the first RTP run", lambda: rtp("umprobe_rtp_probe_success") == {peer_labels: 1.0}
        )
        status, page = umprobe.get("/metrics")
        assert status == 200
        promtool_check(page.encode())
        metrics = umprobe.metrics()
        ratios = metrics["umprobe_rtp_block_reachable_ratio"]
        assert len(ratios) == 16, "one cycle: 16 ports, each in a block of its own"
        assert set(ratios.values()) == {1.0}
        assert {dict(k)["peer"] for k in ratios} == {"lab-peer"}
        blocks = {dict(k)["block"] for k in ratios}
        assert blocks == {
            dict(k)["block"] for k in metrics["umprobe_rtp_block_last_sampled_timestamp_seconds"]
        }
        probed = {dict(k)["result"]: v for k, v in metrics["umprobe_rtp_ports_probed_total"].items()}
        assert probed["reachable"] >= 16 and probed["unreachable"] == 0
        assert set(metrics["umprobe_rtp_failures_total"].values()) == {0.0}
        assert len(metrics["umprobe_rtp_failures_total"]) == 7
        loss = {dict(k)["direction"]: v for k, v in metrics["umprobe_rtp_loss_ratio"].items()}
        assert loss == {"forward": 0.0, "return": 0.0}
        assert metrics["umprobe_rtp_rtt_seconds_count"][peer_labels] >= 16 * 3
        assert 0 < metrics["umprobe_rtp_sweep_progress_ratio"][peer_labels] <= 1
        for name, series in metrics.items():
            if name.startswith("umprobe_rtp_"):
                for labels in series:
                    assert "port" not in dict(labels), name
        first = umprobe.wait_for_record(lambda r: r.get("msg") == "rtp peer first result")
        assert (first["peer"], first["state"], first["reason"]) == ("lab-peer", "up", "ok")
        status, html = umprobe.get("/")
        assert status == 200 and "<h3>lab-peer</h3>" in html and f"range {lo}-{hi}" in html
        assert "the peer and the prober" not in html

        # A new secret on the prober's side only: the peer refuses it; what was found stays.
        secret.write_text("a secret the peer has never heard of\n")
        os.kill(umprobe.proc.pid, signal.SIGHUP)
        reloaded = umprobe.wait_for_record(lambda r: r.get("msg") == "config reloaded")
        assert (reloaded["changed"], reloaded["rtp_peers"]) == (1, 1)
        refused = tuple(sorted((*peer_labels, ("reason", "control_auth_failed"))))
        umprobe.wait_until(
            "the refused run",
            lambda: rtp("umprobe_rtp_failures_total").get(refused) == 1.0,
        )
        assert rtp("umprobe_rtp_probe_success") == {peer_labels: 0.0}
        assert len(rtp("umprobe_rtp_block_reachable_ratio")) >= 16
        changed = umprobe.wait_for_record(lambda r: r.get("msg") == "rtp peer state changed")
        assert (changed["state"], changed["reason"]) == ("down", "control_auth_failed")
    finally:
        peer.stop()


def test_sigint_stops_cleanly_and_text_logs_are_logfmt(
    tmp_path: Path, responders: list[int], start_umprobe: Callable[..., UmprobeProcess]
) -> None:
    config = write_config(tmp_path / "probes.toml", responders[:1])
    umprobe = start_umprobe("-c", str(config), "--listen", "127.0.0.1:0")
    deadline = time.monotonic() + WAIT
    while not any('msg="umprobe running"' in line for line in umprobe.lines):
        assert time.monotonic() < deadline and umprobe.proc.poll() is None, umprobe.log()
        time.sleep(0.05)
    deadline = time.monotonic() + WAIT
    while not any('msg="probe first result"' in line for line in umprobe.lines):
        assert time.monotonic() < deadline and umprobe.proc.poll() is None, umprobe.log()
        time.sleep(0.05)
    t0 = time.monotonic()
    os.kill(umprobe.proc.pid, signal.SIGINT)
    assert umprobe.proc.wait(timeout=5) == 0, umprobe.log()
    assert time.monotonic() - t0 < 1.0
    umprobe.kill()
    first = next(line for line in umprobe.lines if 'msg="probe first result"' in line)
    assert f"probe=127.0.0.1:{responders[0]}/tcp" in first
    assert " state=up " in first and " reason=ok " in first
    assert all(line.startswith("ts=") and " level=" in line for line in umprobe.lines), umprobe.log()
    assert "Traceback" not in umprobe.log()


def test_port_in_use_is_one_line_and_exit_4(
    tmp_path: Path, responders: list[int], start_umprobe: Callable[..., UmprobeProcess]
) -> None:
    config = write_config(tmp_path / "probes.toml", responders[:1])
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        umprobe = start_umprobe("-c", str(config), "--listen", f"127.0.0.1:{port}")
        rc = umprobe.proc.wait(timeout=WAIT)
    umprobe.kill()
    assert rc == 4  # not 3: see tests/test_faults.py
    assert len(umprobe.lines) == 1, umprobe.log()
    assert umprobe.lines[0].startswith("umprobe: error: ")
    assert f"127.0.0.1:{port}" in umprobe.lines[0]
    assert "in use" in umprobe.lines[0].lower()


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("[[targets]]\nhost = 'x.example'\nmodule = 'nope'\n", "nope"),
        ("[defaults]\ninterval = 1\ntimeout = 2\n", "timeout"),
        (None, "cannot read"),
    ],
)
def test_config_error_at_start_is_one_line_and_exit_3(
    tmp_path: Path, content: str | None, expected: str, start_umprobe: Callable[..., UmprobeProcess]
) -> None:
    config = tmp_path / "probes.toml"
    if content is not None:
        config.write_text(content)
    umprobe = start_umprobe("-c", str(config), "--listen", "127.0.0.1:0")
    rc = umprobe.proc.wait(timeout=WAIT)
    umprobe.kill()
    assert rc == 3
    assert len(umprobe.lines) == 1, umprobe.log()
    assert umprobe.lines[0].startswith("umprobe: error: ")
    assert expected in umprobe.lines[0]


def test_bad_listen_option_is_a_usage_error(
    tmp_path: Path, start_umprobe: Callable[..., UmprobeProcess]
) -> None:
    config = write_config(tmp_path / "probes.toml", [5060])
    umprobe = start_umprobe("-c", str(config), "--listen", "localhost")
    rc = umprobe.proc.wait(timeout=WAIT)
    umprobe.kill()
    assert rc == 3
    assert "--listen" in umprobe.log() and "Traceback" not in umprobe.log()


def test_run_help_teaches() -> None:
    from click.testing import CliRunner

    from umprobe.commands.run_cmd import run_command

    result = CliRunner().invoke(run_command, ["--help"], terminal_width=110)
    assert result.exit_code == 0
    for needle in (
        "--config",
        "--listen",
        "--log-format",
        "SIGHUP",
        "SIGTERM",
        "/metrics",
        "/-/reload",
        "Exit",
    ):
        assert needle in result.output


# -- reload in-process (no signals): the Daemon object --------------------------------------------------


async def test_daemon_reload_keeps_old_config_when_new_one_is_broken(tmp_path: Path) -> None:
    path = write_config(tmp_path / "probes.toml", [15060, 15061])
    config = load_config(path)
    store = ResultStore()
    store.set_probes(config.probes)
    contexts = TLSContextCache()
    scheduler = Scheduler(store, max_concurrency=4, contexts=contexts)
    scheduler.update(config.probes)
    daemon = Daemon(path, config, store=store, scheduler=scheduler, listen="127.0.0.1:0")

    system_trust = TLSClientConfig()
    cached = contexts.context(system_trust)

    path.write_text("[[targets]]\nhost = 1\n")
    assert await daemon.reload() is False
    assert contexts.context(system_trust) is cached, "a rejected reload leaves the TLS contexts alone"
    assert daemon.get_config() is config
    assert {p.id for p in scheduler.probes()} == {p.id for p in config.probes}
    status = store.reload_status()
    assert not status.successful and status.last_error and "host" in status.last_error

    write_config(path, [15061, 15062], extra="[scheduler]\nmax_concurrency = 9\n")
    assert await daemon.reload() is True
    assert [p.spec.port for p in daemon.get_config().probes] == [15061, 15062]
    assert sorted(p.spec.port for p in scheduler.probes()) == [15061, 15062]
    assert [p.spec.port for p in store.probes()] == [15061, 15062]
    assert scheduler.max_concurrency == 9
    assert store.reload_status().successful
    assert contexts.context(system_trust) is not cached, "a reload reads certificate files again"


# -- logging ----------------------------------------------------------------------------------------------


def _record(msg: str, **fields: object) -> logging.LogRecord:
    logger = logging.getLogger("umprobe.test")
    record = logger.makeRecord("umprobe.test", logging.WARNING, __file__, 1, msg, (), None)
    record.umprobe_fields = fields
    return record


def test_logfmt_is_one_line_and_quotes_what_needs_it() -> None:
    line = LogfmtFormatter().format(
        _record(
            "probe state changed",
            probe="cas01:5061/tls",
            detail='said "no"\nthen hung up',
            empty="",
            ok=True,
            seconds=0.12345678,
            missing=None,
            password="hunter2",
        )
    )
    assert "\n" not in line
    assert line.startswith("ts=")
    assert ' level=warning msg="probe state changed" probe=cas01:5061/tls ' in line
    assert 'detail="said \\"no\\"\\nthen hung up"' in line
    assert 'empty=""' in line and "ok=true" in line and "seconds=0.123457" in line
    assert "missing" not in line
    assert "hunter2" not in line and "password=[redacted]" in line


def test_json_lines_and_tracebacks_stay_on_one_line() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        record = _record("probe could not run", probe="p", token="s3cret")
        record.exc_info = sys.exc_info()
    text = JsonFormatter().format(record)
    assert "\n" not in text
    data = json.loads(text)
    assert data["msg"] == "probe could not run" and data["level"] == "warning" and data["probe"] == "p"
    assert data["token"] == "[redacted]"
    assert "ValueError: boom" in data["exc"]
    assert "\n" not in LogfmtFormatter().format(record)
    assert "ValueError: boom" in LogfmtFormatter().format(record)


def test_configure_logging_replaces_its_own_handler() -> None:
    root = logging.getLogger()
    umprobe_logger = logging.getLogger("umprobe")
    saved = (root.level, umprobe_logger.level, list(root.handlers))
    try:
        first, second = io.StringIO(), io.StringIO()
        configure_logging(fmt="text", level="info", stream=first)
        configure_logging(fmt="json", level="debug", stream=second)
        log_event(logging.getLogger("umprobe.x"), logging.DEBUG, "hello", probe="p")
        logging.getLogger("some.library").info("not shown")
        logging.getLogger("some.library").warning("shown")
        assert first.getvalue() == ""
        lines = [json.loads(line) for line in second.getvalue().splitlines()]
        assert [(r["msg"], r.get("logger")) for r in lines] == [("hello", None), ("shown", "some.library")]
    finally:
        for handler in list(root.handlers):
            if handler not in saved[2]:
                root.removeHandler(handler)
        root.setLevel(saved[0])
        umprobe_logger.setLevel(saved[1])


def test_state_log_forgets_removed_probes(caplog: pytest.LogCaptureFixture) -> None:
    from tests.test_scheduler import make_probe, make_result

    states = ProbeStateLog()
    probe = make_probe("x")
    with caplog.at_level(logging.INFO, logger="umprobe"):
        states.observe(probe, [make_result(probe.spec)])
        states.observe(probe, [make_result(probe.spec)])
        states.forget(set())
        states.observe(probe, [make_result(probe.spec)])
        states.observe(probe, [make_result(probe.spec, address="192.0.2.2")])
    messages = [r.getMessage() for r in caplog.records]
    assert messages == [
        "probe first result",
        "probe first result",
        "probe first result",
        "probe address gone",
    ]
