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
import signal
import socket
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.daemon_helpers import (
    WAIT,
    UmprobeProcess,
    echo_peer,
    mtls_module,
    sip_responders,
    starter,
    write_config,
)
from tests.test_metrics import promtool_check
from umprobe.config import load_config
from umprobe.daemon import Daemon
from umprobe.devcerts import DevCA
from umprobe.logs import JsonFormatter, LogfmtFormatter, ProbeStateLog, configure_logging, log_event
from umprobe.net.tls import TLSClientConfig, make_server_context
from umprobe.peer.echo_peer import PeerConfig
from umprobe.probes.sip_options import TLSContextCache
from umprobe.scheduler import Scheduler
from umprobe.store import ResultStore


@pytest.fixture
def responders() -> Iterator[list[int]]:
    peers = sip_responders(3)
    try:
        yield peers.start()
    finally:
        peers.stop()


@pytest.fixture
def start_umprobe() -> Iterator[Callable[..., UmprobeProcess]]:
    yield from starter(UmprobeProcess)


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
        config = write_config(tmp_path / "probes.toml", [port], module="mtls", extra=mtls_module("ca.crt"))
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
