"""The command line as a user meets it: real subprocesses, real exit codes, against umprobe's own responder.

The real-peer integration tests (Kamailio, SIPp, socat, namespaces) live in tests/integration; these pin the
CLI contract: Nagios exit codes, the JSON keys, one-line errors without tracebacks.
"""

from __future__ import annotations

import json
import socket
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path

import pytest
import trio

from umprobe.devcerts import DevCA
from umprobe.net.tls import make_server_context
from umprobe.peer.sip_responder import serve_sip_responder

RESULT_KEYS = {
    "target",
    "address",
    "port",
    "transport",
    "listener",
    "success",
    "reason",
    "phase",
    "status_code",
    "timings",
    "tls",
    "server",
}
TIMING_KEYS = {"resolve", "connect", "tls", "sip", "total"}
CERT_KEYS = {"subject", "issuer", "san", "not_before", "not_after", "days_left", "sha256"}


@dataclass
class Completed:
    returncode: int
    stdout: str
    stderr: str


async def umprobe(*args: str) -> Completed:
    with trio.fail_after(30):
        proc = await trio.run_process(
            [sys.executable, "-m", "umprobe.cli", *args],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
    return Completed(proc.returncode, proc.stdout.decode(), proc.stderr.decode())


@dataclass
class Pki:
    ca: Path
    client_crt: Path
    client_key: Path
    server_crt: Path
    server_key: Path


def make_pki(tmp: Path, *, server_days: float = 90) -> Pki:
    ca = DevCA.create("cli test CA")
    ca_path = ca.write_ca(tmp, "ca")
    now = datetime.now(UTC)
    server = ca.issue(["localhost", "127.0.0.1"], not_after=now + timedelta(days=server_days))
    s_crt, s_key = server.write(tmp, "server")
    c_crt, c_key = ca.issue(["probe.test.invalid"]).write(tmp, "client")
    return Pki(ca_path, c_crt, c_key, s_crt, s_key)


@pytest.fixture
async def plain_port(nursery: trio.Nursery) -> AsyncIterator[int]:
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    await nursery.start(partial(serve_sip_responder, listeners, server_header="cli-test/1"))
    yield listeners[0].socket.getsockname()[1]


async def start_tls(nursery: trio.Nursery, pki: Pki) -> int:
    ctx = make_server_context(
        cert_file=str(pki.server_crt),
        key_file=str(pki.server_key),
        ca_file=str(pki.ca),
        require_client_cert=True,
    )
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    await nursery.start(partial(serve_sip_responder, listeners, tls_context=ctx))
    return int(listeners[0].socket.getsockname()[1])


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_ok_tcp_exit_0_and_nagios_first_line(plain_port: int) -> None:
    out = await umprobe("check", f"127.0.0.1:{plain_port}")
    assert out.returncode == 0, out
    first = out.stdout.splitlines()[0]
    assert first.startswith("UMPROBE OK - 1 of 1 listener probes healthy |")
    assert f"'custom_tcp_{plain_port}_127.0.0.1'=" in first
    assert "200" in out.stdout


async def test_json_has_the_documented_keys(plain_port: int) -> None:
    out = await umprobe("check", "--json", f"127.0.0.1:{plain_port}")
    assert out.returncode == 0, out
    doc = json.loads(out.stdout)
    assert doc["status"] == "OK"
    (result,) = doc["results"]
    assert set(result) >= RESULT_KEYS
    assert set(result["timings"]) == TIMING_KEYS
    assert result["success"] is True
    assert result["reason"] == "ok"
    assert result["step"] is None  # A/AAAA resolution: no RFC 3263 step
    assert result["status_code"] == 200
    assert result["server"] == "cli-test/1"
    assert result["tls"] is None
    assert result["timings"]["tls"] is None
    assert 0 < result["timings"]["sip"] < result["timings"]["total"]


async def test_refused_is_critical() -> None:
    port = closed_port()
    out = await umprobe("check", "--json", f"127.0.0.1:{port}")
    assert out.returncode == 2
    (result,) = json.loads(out.stdout)["results"]
    assert (result["reason"], result["phase"], result["success"]) == ("connect_refused", "connect", False)


async def test_mutual_tls_ok_with_certificate_facts(nursery: trio.Nursery, tmp_path: Path) -> None:
    pki = make_pki(tmp_path)
    port = await start_tls(nursery, pki)
    args = ["--ca", str(pki.ca), "--cert", str(pki.client_crt), "--key", str(pki.client_key)]
    out = await umprobe("check", "--json", "--transport", "tls", *args, f"localhost:{port}", "-4")
    assert out.returncode == 0, out
    (result,) = json.loads(out.stdout)["results"]
    assert result["transport"] == "tls"
    assert result["tls"]["verified"] is True
    assert result["tls"]["version"] in ("TLSv1.2", "TLSv1.3")
    cert = result["tls"]["peer_certificate"]
    assert set(cert) >= CERT_KEYS
    assert "DNS:localhost" in cert["san"]
    assert 89 < cert["days_left"] <= 90
    datetime.fromisoformat(cert["not_after"])
    assert result["client_certificate"]["subject"]


async def test_certificate_days_thresholds(nursery: trio.Nursery, tmp_path: Path) -> None:
    pki = make_pki(tmp_path, server_days=10)
    port = await start_tls(nursery, pki)
    args = ["--ca", str(pki.ca), "--cert", str(pki.client_crt), "--key", str(pki.client_key)]
    out = await umprobe("check", "--transport", "tls", *args, f"127.0.0.1:{port}")
    assert out.returncode == 1, out
    assert out.stdout.startswith("UMPROBE WARNING")
    assert "peer certificate expires in" in out.stdout
    out = await umprobe("check", "--transport", "tls", "--crit-days", "14", *args, f"127.0.0.1:{port}")
    assert out.returncode == 2, out


async def test_insecure_is_shown(nursery: trio.Nursery, tmp_path: Path) -> None:
    pki = make_pki(tmp_path)
    (tmp_path / "other").mkdir()
    other = make_pki(tmp_path / "other")
    port = await start_tls(nursery, pki)
    client = ["--cert", str(pki.client_crt), "--key", str(pki.client_key)]
    # Verifying against the wrong CA fails...
    out = await umprobe(
        "check", "--json", "--transport", "tls", "--ca", str(other.ca), *client, f"127.0.0.1:{port}"
    )
    assert out.returncode == 2
    assert json.loads(out.stdout)["results"][0]["reason"] == "tls_verify_failed"
    # ...and --insecure lets it through, saying so.
    out = await umprobe(
        "check", "--transport", "tls", "--insecure", "--ca", str(other.ca), *client, f"127.0.0.1:{port}"
    )
    assert out.returncode == 0, out
    assert "(insecure)" in out.stdout
    assert "NOT verified" in out.stdout


async def test_rtt_thresholds(plain_port: int) -> None:
    out = await umprobe("check", "--warn-rtt", "0.000001", f"127.0.0.1:{plain_port}")
    assert out.returncode == 1
    out = await umprobe("check", "--crit-rtt", "0.000001", f"127.0.0.1:{plain_port}")
    assert out.returncode == 2


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["check", "bad host"], "'bad host'"),
        (["check", "cas01:99999"], "99999"),
        (["check", "--timeout", "0", "cas01"], "--timeout"),
        (["check", "--min-tls", "1.4", "cas01"], "1.4"),
        (["check", "--accept-status", "2yy", "cas01"], "2yy"),
        (["check", "--cert", "c.pem", "cas01"], "--cert and --key"),
        (["check", "--no-such-option", "cas01"], "--no-such-option"),
        (["check"], "TARGET"),
        (["check", "--profile", "exchange2016", "cas01:5060"], "bare host"),
        (["check", "--transport", "tls", "--ca", "/nonexistent/ca.pem", "cas01"], "/nonexistent/ca.pem"),
        (["check", "--dns-server", "127.0.0.1", "cas01"], "--dns-server goes with --resolution rfc3263"),
        (["check", "--resolution", "rfc3263", "--dns-server", "ns1.contoso.com", "cas01"], "ns1.contoso.com"),
        (["check", "--resolution", "rfc3263", "--dns-server", "127.0.0.1:0", "cas01"], "127.0.0.1:0"),
        (["check", "--resolution", "srv", "cas01"], "'srv'"),
    ],
)
async def test_usage_errors_exit_3_with_one_line(args: list[str], fragment: str) -> None:
    out = await umprobe(*args)
    assert out.returncode == 3, out
    assert out.stdout == ""
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert lines[0].startswith("umprobe: error:")
    assert fragment in lines[0]
    assert "Traceback" not in out.stderr


async def test_help_and_version() -> None:
    out = await umprobe("check", "--help")
    assert out.returncode == 0
    assert "Exit codes" in out.stdout
    assert "--accept-status" in out.stdout
    assert "--resolution [a|rfc3263]" in out.stdout
    assert "--dns-server ADDR[:PORT]" in out.stdout
    out = await umprobe("--version")
    assert out.returncode == 0
    assert out.stdout.startswith("umprobe, version ")


async def test_ports() -> None:
    out = await umprobe("ports")
    assert out.returncode == 0
    for port in ("5060", "5061", "5062", "5063", "5065", "1024-65535"):
        assert port in out.stdout


async def test_demo_once_checks_a_whole_um_server() -> None:
    out = await umprobe("demo", "--once", "--json")
    assert out.returncode == 0, out
    doc = json.loads(out.stdout)
    results = doc["results"]
    assert len(results) == 12  # 2 call router + 2 UM service + 4 worker ports x 2 transports
    required = [r for r in results if r["required"]]
    assert all(r["success"] for r in required)
    assert {r["transport"] for r in required if r["tls"]} == {"tls"}
    workers = [r for r in results if r["listener"] == "um_worker"]
    # The demo serves TCP on 5065/5067 and TLS on 5066/5068: half of the worker probes fail, as optional rows.
    assert sum(r["success"] for r in workers) == 4
    assert {r["state"] for r in workers} == {"OK"}


async def test_rfc3263_on_an_ip_literal_asks_no_one_and_says_literal(plain_port: int) -> None:
    """An IP literal skips NAPTR/SRV/A (step "literal"), so even an unreachable nameserver does not matter;
    the table gains a STEP column only then."""
    dead_dns = f"127.0.0.1:{closed_port()}"
    out = await umprobe(
        "check", "--resolution", "rfc3263", "--dns-server", dead_dns, "--port", str(plain_port), "127.0.0.1"
    )
    assert out.returncode == 0, out
    lines = out.stdout.splitlines()
    assert lines[2].split()[:5] == ["LISTENER", "TRANSPORT", "ADDRESS", "PORT", "STEP"]
    assert lines[3].split()[:6] == ["custom", "tcp", "127.0.0.1", str(plain_port), "literal", "200"]
    plain = await umprobe("check", f"127.0.0.1:{plain_port}")
    assert "STEP" not in plain.stdout


async def test_rfc3263_with_a_dead_nameserver_is_one_dns_error() -> None:
    dead_dns = f"127.0.0.1:{closed_port()}"
    out = await umprobe(
        "check", "--json", "--resolution", "rfc3263", "--dns-server", dead_dns, "--timeout", "2", "sip.test"
    )
    assert out.returncode == 2, out
    (result,) = json.loads(out.stdout)["results"]
    assert (result["address"], result["reason"], result["phase"], result["step"]) == (
        "",
        "dns_error",
        "resolve",
        None,
    )
    assert result["detail"].startswith("sip.test: ")  # the resolution's own reason, e.g. queries timed out
    assert result["timings"]["total"] < 2 + 0.5  # by the deadline (--timeout 2)
