"""RFC 3263 resolution where a user meets it: `umprobe check --resolution rfc3263` and `umprobe run`.

A real dnsmasq (tests/lab/dnsmasq.py) on 127.0.0.1 serves a `.test` zone whose NAPTR/SRV records point at two
of umprobe's own SIP responders on two ports of the same address, 127.0.0.1. The command runs as a subprocess
and its `--json` is read; the daemon runs as a subprocess with a `[dns]` table and an RFC 3263 module and is
scraped over HTTP. Both must report one listener per (address, SRV port), each with the step that found it;
the daemon must follow a change of the zone (dnsmasq restarted on the same port with other records) and
report a name that does not exist as the address-less `dns_error` series.
"""

from __future__ import annotations

import json
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from tests.lab.dnsmasq import Dnsmasq, Host, Naptr, Srv, Zone, start_dnsmasq
from tests.lab.ports import allocate_port
from tests.lab.proc import LabError, LabProcess
from umprobe.peer.sip_responder import ResponderStats, serve_sip_responder

pytestmark = pytest.mark.lab

DOMAIN = "pbx.sip.test"
MISSING = "nx.sip.test"


def zone(port1: int, port2: int | None, *, naptr: bool) -> Zone:
    """SRV records for `_sip._tcp.DOMAIN` to r1:port1 (priority 10) and r2:port2 (20), both on 127.0.0.1;
    with `naptr`, a SIP+D2T NAPTR record leading to them."""
    srv = [Srv(f"_sip._tcp.{DOMAIN}", f"r1.{DOMAIN}", port1, 10, 0)]
    if port2 is not None:
        srv.append(Srv(f"_sip._tcp.{DOMAIN}", f"r2.{DOMAIN}", port2, 20, 0))
    return Zone(
        naptr=(Naptr(DOMAIN, 10, 10, "S", "SIP+D2T", f"_sip._tcp.{DOMAIN}"),) if naptr else (),
        srv=tuple(srv),
        hosts=(Host(f"r1.{DOMAIN}", ("127.0.0.1",)), Host(f"r2.{DOMAIN}", ("127.0.0.1",))),
    )


@dataclass
class Responders:
    ports: tuple[int, int]
    stats: tuple[ResponderStats, ResponderStats]


@asynccontextmanager
async def two_responders() -> AsyncIterator[Responders]:
    """Two SIP responders on 127.0.0.1, on two ports, with their own Server header and counts."""
    port1, port2 = allocate_port(), allocate_port()
    stats = (ResponderStats(), ResponderStats())
    async with trio.open_nursery() as nursery:
        for port, stat, name in ((port1, stats[0], "r1/1"), (port2, stats[1], "r2/1")):
            listeners = await trio.open_tcp_listeners(port, host="127.0.0.1")
            await nursery.start(partial(serve_sip_responder, listeners, stats=stat, server_header=name))
        yield Responders((port1, port2), stats)
        nursery.cancel_scope.cancel()


async def dnsmasq(lab_dir: Path, z: Zone, name: str, port: int | None = None) -> Dnsmasq:
    try:
        if port is None:
            return await trio.to_thread.run_sync(partial(start_dnsmasq, z, log_dir=lab_dir, name=name))
        return await trio.to_thread.run_sync(Dnsmasq(z, port, lab_dir, name=name).start)
    except LabError as exc:
        pytest.fail(str(exc), pytrace=False)


# -- umprobe check ---------------------------------------------------------------------------------------


async def test_check_probes_every_srv_port_of_one_address(lab_dir: Path) -> None:
    async with two_responders() as sip:
        server = await dnsmasq(lab_dir, zone(*sip.ports, naptr=True), "dnsmasq-check-rfc3263")
        try:
            argv = [sys.executable, "-m", "umprobe.cli", "check", "--resolution", "rfc3263"]
            argv += ["--dns-server", f"127.0.0.1:{server.port}", "--timeout", "8", "-4"]
            done = await trio.run_process([*argv, "--json", DOMAIN], capture_stdout=True, check=False)
            text = await trio.run_process([*argv, DOMAIN], capture_stdout=True, check=False)
        finally:
            await trio.to_thread.run_sync(server.stop)
    report = json.loads(done.stdout)
    assert (done.returncode, report["status"]) == (0, "OK"), report
    rows = [(r["address"], r["port"], r["step"], r["success"], r["server"]) for r in report["results"]]
    assert rows == [
        ("127.0.0.1", sip.ports[0], "naptr", True, "r1/1"),  # priority 10 first
        ("127.0.0.1", sip.ports[1], "naptr", True, "r2/1"),
    ]
    assert (sip.stats[0].requests, sip.stats[1].requests) == (2, 2)  # the --json run and the table run
    assert text.returncode == 0
    table = text.stdout.decode().splitlines()
    assert table[2].split()[:5] == ["LISTENER", "TRANSPORT", "ADDRESS", "PORT", "STEP"]
    assert table[3].split()[:6] == ["custom", "tcp", "127.0.0.1", str(sip.ports[0]), "naptr", "200"]
    assert table[4].split()[:6] == ["custom", "tcp", "127.0.0.1", str(sip.ports[1]), "naptr", "200"]


async def test_check_nxdomain_is_one_dns_error(lab_dir: Path) -> None:
    server = await dnsmasq(lab_dir, zone(5070, None, naptr=False), "dnsmasq-check-nx")
    try:
        argv = [sys.executable, "-m", "umprobe.cli", "check", "--resolution", "rfc3263", "--json"]
        argv += ["--dns-server", f"127.0.0.1:{server.port}", "--timeout", "5", MISSING]
        done = await trio.run_process(argv, capture_stdout=True, check=False)
    finally:
        await trio.to_thread.run_sync(server.stop)
    report = json.loads(done.stdout)
    assert (done.returncode, report["status"]) == (2, "CRITICAL")
    (row,) = report["results"]
    assert (row["address"], row["port"], row["reason"], row["phase"], row["step"]) == (
        "",
        5060,
        "dns_error",
        "resolve",
        None,
    )
    assert row["detail"] == f"{MISSING} does not exist (NXDOMAIN)"


# -- umprobe run -----------------------------------------------------------------------------------------


Sample = tuple[str, dict[str, str], float]


def scrape(port: int) -> list[Sample]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
        body = reply.read().decode()
    return [
        (s.name, dict(s.labels), s.value)
        for family in text_string_to_metric_families(body)
        for s in family.samples
    ]


def pick(samples: list[Sample], name: str, **labels: str) -> dict[tuple[str, str], float]:
    """(address, port) -> value of the samples of `name` whose labels include `labels`."""
    return {
        (lab["address"], lab["port"]): value
        for n, lab, value in samples
        if n == name and all(lab.get(k) == v for k, v in labels.items())
    }


async def wait_for(
    what: str, port: int, daemon: LabProcess, ok: Callable[[list[Sample]], bool], within: float = 30.0
) -> list[Sample]:
    end = time.monotonic() + within
    samples: list[Sample] = []
    while time.monotonic() < end:
        assert daemon.is_alive(), daemon.describe(60)
        samples = await trio.to_thread.run_sync(scrape, port)
        if ok(samples):
            return samples
        await trio.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}; last page:\n" + "\n".join(map(str, samples[:80])))


async def test_daemon_reports_each_srv_listener_follows_dns_and_reports_nxdomain(lab_dir: Path) -> None:
    workdir = lab_dir / "rfc3263-daemon"
    workdir.mkdir(exist_ok=True)
    async with two_responders() as sip:
        p1, p2 = (str(p) for p in sip.ports)
        server = await dnsmasq(lab_dir, zone(*sip.ports, naptr=False), "dnsmasq-daemon-rfc3263")
        config = workdir / "probes.toml"
        config.write_text(
            f"""
[modules.srv]
transport = "tcp"
resolution = "rfc3263"
families = ["ipv4"]
interval = 1
timeout = 0.9

[dns]
nameservers = ["127.0.0.1:{server.port}"]

[[targets]]
host = ["{DOMAIN}", "{MISSING}"]
module = "srv"
"""
        )
        http = allocate_port()
        argv = [
            sys.executable,
            "-m",
            "umprobe.cli",
            "run",
            "-c",
            str(config),
            "--listen",
            f"127.0.0.1:{http}",
        ]
        daemon = LabProcess("umprobe-rfc3263", argv, log_dir=workdir, ready=[("127.0.0.1", http)])
        try:
            await trio.to_thread.run_sync(daemon.start)
            pbx = {"probe": f"{DOMAIN}/tcp"}
            samples = await wait_for(
                "both SRV listeners up",
                http,
                daemon,
                lambda s: (
                    pick(s, "umprobe_probe_success", **pbx)
                    == {("127.0.0.1", p1): 1.0, ("127.0.0.1", p2): 1.0}
                ),
            )
            assert pick(samples, "umprobe_sip_resolution_step_info", step="srv", **pbx) == {
                ("127.0.0.1", p1): 1.0,
                ("127.0.0.1", p2): 1.0,
            }
            # /probe runs the configured probe now, through the daemon's DNS client: both listeners again
            url = f"http://127.0.0.1:{http}/probe?target={DOMAIN}&module=srv"
            page = await trio.to_thread.run_sync(partial(urllib.request.urlopen, url, timeout=10))
            now = [
                (s.name, dict(s.labels), s.value)
                for family in text_string_to_metric_families(page.read().decode())
                for s in family.samples
            ]
            assert pick(now, "umprobe_sip_resolution_step_info", step="srv") == {
                ("127.0.0.1", p1): 1.0,
                ("127.0.0.1", p2): 1.0,
            }
            assert [v for n, _, v in now if n == "probe_success"] == [1.0]
            runs = pick(samples, "umprobe_probe_runs_total", **pbx)
            assert runs[("127.0.0.1", p1)] >= 1 and runs[("127.0.0.1", p2)] >= 1
            assert runs[("", "5060")] == 0  # the pinned address-less series, on the default port
            nx = {"probe": f"{MISSING}/tcp"}
            samples = await wait_for(
                "the NXDOMAIN name counted as dns_error",
                http,
                daemon,
                lambda s: (
                    pick(s, "umprobe_probe_failures_total", reason="dns_error", **nx).get(("", "5060"), 0)
                    >= 1
                ),
            )
            assert pick(samples, "umprobe_probe_success", **nx) == {("", "5060"): 0.0}
            assert pick(samples, "umprobe_sip_resolution_step_info", **nx) == {}

            # The zone changes: dnsmasq restarted on the same port with only r2, found as before by SRV.
            await trio.to_thread.run_sync(server.stop)
            server = await dnsmasq(lab_dir, zone(sip.ports[1], None, naptr=False), server.name, server.port)
            samples = await wait_for(
                "one SRV record left, on the second port",
                http,
                daemon,
                lambda s: pick(s, "umprobe_probe_success", **pbx) == {("127.0.0.1", p2): 1.0},
            )
            # r1's port is gone from the latest run; its counters stay until it is stale (STALE_RUNS runs)
            assert ("127.0.0.1", p1) in pick(samples, "umprobe_probe_runs_total", **pbx)
            assert pick(samples, "umprobe_sip_resolution_step_info", **pbx) == {("127.0.0.1", p2): 1.0}

            # DNS gone altogether: the SRV probe becomes the address-less dns_error series.
            await trio.to_thread.run_sync(server.stop)
            samples = await wait_for(
                "dns_error when the nameserver is gone",
                http,
                daemon,
                lambda s: pick(s, "umprobe_probe_success", **pbx) == {("", "5060"): 0.0},
            )
            assert pick(samples, "umprobe_probe_failures_total", reason="dns_error", **pbx)[("", "5060")] >= 1
            assert pick(samples, "umprobe_sip_resolution_step_info", **pbx) == {}
            assert daemon.is_alive(), daemon.describe(60)
        finally:
            await trio.to_thread.run_sync(daemon.stop)
            await trio.to_thread.run_sync(server.stop)
