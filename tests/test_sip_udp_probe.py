"""SIP over UDP end to end in-process: the probe against a fake UDP responder on 127.0.0.1 (port 0).

Real sockets and trio's real clock: the retransmission timing is RFC 3261's (T1 = 0.5 s), so these tests
take a few seconds; only deadlines are asserted ("ends within deadline + 0.5 s"), never speed.
"""

from __future__ import annotations

import json
import socket
import sys
from collections.abc import Callable

import pytest
import trio

from umprobe.config import ConfigError, parse_config
from umprobe.probes.result import Phase, ProbeResult, Reason
from umprobe.probes.sip_options import SipProbeSpec, probe

Reply = Callable[[int, bytes], list[bytes]]


def _answer(request: bytes, code: int = 200, reason: str = "OK", branch: str | None = None) -> bytes:
    """A response echoing the request's Via, From, To, Call-ID and CSeq (the Via branch replaced if asked)."""
    wanted = ("via:", "from:", "to:", "call-id:", "cseq:")
    head = request.split(b"\r\n\r\n", 1)[0].decode()
    rows = [line for line in head.split("\r\n")[1:] if line.lower().startswith(wanted)]
    if branch is not None:
        rows = [
            line.replace(line.split("branch=")[1].split(";")[0], branch)
            if line.lower().startswith("via:")
            else line
            for line in rows
        ]
    return (f"SIP/2.0 {code} {reason}\r\n" + "\r\n".join(rows) + "\r\nContent-Length: 0\r\n\r\n").encode()


async def _responder(reply: Reply, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
    """Serve UDP on 127.0.0.1: `reply(n, request)` (n counts from 1) returns the datagrams to send."""
    sock = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with sock:
        await sock.bind(("127.0.0.1", 0))
        task_status.started(sock.getsockname()[1])
        n = 0
        while True:
            data, peer = await sock.recvfrom(65535)
            n += 1
            for out in reply(n, data):
                await sock.sendto(out, peer)


async def _run(reply: Reply, budget: float) -> tuple[list[ProbeResult], float]:
    async with trio.open_nursery() as nursery:
        port = await nursery.start(_responder, reply)
        start = trio.current_time()
        spec = SipProbeSpec(host="127.0.0.1", port=port, transport="udp", families=("ipv4",))
        results = await probe(spec, deadline=start + budget)
        elapsed = trio.current_time() - start
        nursery.cancel_scope.cancel()
    return results, elapsed


async def test_udp_probe_succeeds_after_dropped_requests_and_counts_retransmissions() -> None:
    dropped = 2
    results, elapsed = await _run(lambda n, req: [] if n <= dropped else [_answer(req)], budget=10.0)
    (result,) = results
    assert result.reason is Reason.OK, result.detail
    assert result.transport == "udp"
    assert result.status_code == 200
    assert result.retransmissions == dropped
    assert result.timings.connect == 0.0
    assert result.timings.sip is not None
    assert result.timings.sip >= 1.5  # answered at the 2nd retransmission: T1 + 2*T1 after the first send
    assert elapsed < 10.0
    sends = [e for e in result.transcript if e.kind == "send"]
    assert len(sends) == 1
    assert sum("retransmission" in e.text for e in result.transcript) == dropped


async def test_udp_probe_provisional_then_silence_times_out_at_the_deadline() -> None:
    budget = 1.2
    results, elapsed = await _run(
        lambda n, req: [_answer(req, 100, "Trying")] if n == 1 else [], budget=budget
    )
    (result,) = results
    assert result.reason is Reason.SIP_TIMEOUT
    assert result.phase is Phase.SIP
    assert result.provisional_responses == 1
    # One retransmission at T1 = 0.5 s; after the 100 the next interval is T2 = 4 s, beyond the deadline.
    assert result.retransmissions == 1
    assert budget <= elapsed < budget + 0.5
    assert "provisional" in result.detail


async def test_udp_probe_ignores_a_wrong_branch_then_accepts_the_right_one() -> None:
    results, _ = await _run(
        lambda n, req: [_answer(req, branch="z9hG4bKnotours"), _answer(req)] if n == 1 else [], budget=5.0
    )
    (result,) = results
    assert result.reason is Reason.OK, result.detail
    assert result.mismatched_responses == 1
    assert result.retransmissions == 0
    assert any("branch" in e.text for e in result.transcript if e.kind == "info")


async def test_udp_probe_unhealthy_status() -> None:
    results, _ = await _run(lambda n, req: [_answer(req, 503, "Service Unavailable")], budget=5.0)
    (result,) = results
    assert result.reason is Reason.SIP_UNHEALTHY_STATUS
    assert result.status_code == 503
    assert result.alive


async def test_udp_probe_not_sip_is_a_protocol_error() -> None:
    results, _ = await _run(lambda n, req: [b"HTTP/1.1 400 Bad Request\r\n\r\n"], budget=5.0)
    (result,) = results
    assert result.reason is Reason.SIP_PROTOCOL_ERROR


async def test_udp_probe_port_unreachable_is_connect_refused() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    start = trio.current_time()
    spec = SipProbeSpec(host="127.0.0.1", port=port, transport="udp", families=("ipv4",))
    (result,) = await probe(spec, deadline=start + 3.0)
    assert result.reason is Reason.CONNECT_REFUSED, result.detail
    assert result.phase is Phase.CONNECT
    assert trio.current_time() - start < 3.0


# -- configuration and `umprobe check` ----------------------------------------------------------------------


def test_config_module_transport_udp_defaults_to_port_5060() -> None:
    config = parse_config('[modules.u]\ntransport = "udp"\n[[targets]]\nhost = "198.18.0.1"\nmodule = "u"\n')
    (probe_config,) = config.probes
    assert (probe_config.spec.transport, probe_config.spec.port, probe_config.spec.tls) == ("udp", 5060, None)
    assert probe_config.name == "198.18.0.1:5060/udp"
    assert config.modules["sip_udp"].transport == "udp"


def test_config_udp_module_refuses_tls_keys() -> None:
    with pytest.raises(ConfigError, match='only applies to transport "tls"'):
        parse_config('[modules.u]\ntransport = "udp"\nca_file = "/x.pem"\n', check_files=False)


def test_config_sip_trunk_profile_probes_its_udp_listener() -> None:
    config = parse_config('[[targets]]\nhost = "198.18.0.1"\nprofile = "sip-trunk"\n', check_files=False)
    udp = [(p.spec.port, p.module) for p in config.probes if p.spec.transport == "udp"]
    assert udp == [(5060, "sip_udp")]
    config = parse_config(
        '[modules.u]\ntransport = "udp"\ntimeout = 3\n'
        '[[targets]]\nhost = "198.18.0.1"\nprofile = "sip-trunk"\ntransports = ["udp"]\nudp_module = "u"\n',
        check_files=False,
    )
    assert [(p.spec.transport, p.module) for p in config.probes] == [("udp", "u")]
    with pytest.raises(ConfigError, match='must name a module with transport "udp"'):
        parse_config(
            '[[targets]]\nhost = "198.18.0.1"\nprofile = "sip-trunk"\nudp_module = "sip_tcp"\n',
            check_files=False,
        )


async def test_cli_check_transport_udp_json_reports_retransmissions() -> None:
    async with trio.open_nursery() as nursery:
        port = await nursery.start(_responder, lambda n, req: [] if n == 1 else [_answer(req)])
        with trio.fail_after(30):
            proc = await trio.run_process(
                [
                    sys.executable,
                    "-m",
                    "umprobe.cli",
                    "check",
                    "--json",
                    "--transport",
                    "udp",
                    f"127.0.0.1:{port}",
                ],
                capture_stdout=True,
                capture_stderr=True,
                check=False,
            )
        nursery.cancel_scope.cancel()
    assert proc.returncode == 0, proc.stderr.decode()
    (result,) = json.loads(proc.stdout)["results"]
    assert (result["transport"], result["reason"], result["retransmissions"]) == ("udp", "ok", 1)
    assert result["timings"]["connect"] == 0.0
