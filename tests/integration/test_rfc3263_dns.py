"""RFC 3263 resolution against a real DNS server: Debian's dnsmasq on 127.0.0.1 serving a `.test` zone.

The zone (tests/lab/dnsmasq.py `lab_zone`) has NAPTR -> SRV -> A/AAAA chains (with unusable NAPTR records
and a decoy SRV under the standard name), an SRV-only domain with two priorities and weights, an A-only
domain, a sips-only NAPTR, an SRV that says "not available", a NAPTR whose SRV is missing, and a name that
does not exist. dnsmasq logs every query it receives, so the tests check what was asked, in which step, as
well as what came back. The end-to-end test points SRV records at two loopback SIP responders (umprobe's
own) and probes every resolved address with the SIP OPTIONS probe.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pytest
import trio

from tests.lab.dnsmasq import LAB_DOMAINS, Dnsmasq, Host, Srv, Zone, lab_zone, start_dnsmasq
from tests.lab.ports import allocate_port
from tests.lab.proc import LabError
from umprobe.net.rfc3263 import DnsClient, Resolution, Resolved, resolve_sip, resolve_target
from umprobe.peer.sip_responder import ResponderStats, serve_sip_responder
from umprobe.probes.sip_options import SipProbeSpec, probe
from umprobe.targets import parse_target

pytestmark = pytest.mark.lab

CAP = 10.0


@pytest.fixture(scope="module")
def dnsmasq(lab_dir: Path) -> Iterator[Dnsmasq]:
    try:
        server = start_dnsmasq(lab_zone(), log_dir=lab_dir, name="dnsmasq-rfc3263")
    except LabError as exc:
        pytest.fail(str(exc), pytrace=False)
    try:
        yield server
        if not server.process.is_alive():
            pytest.fail(f"dnsmasq died during the tests\n{server.process.describe(80)}", pytrace=False)
    finally:
        server.stop()


class Asked:
    """The queries dnsmasq logged while a block ran (its log is shared by the module's tests)."""

    def __init__(self, server: Dnsmasq) -> None:
        self.server = server
        self.start = len(server.queries())

    def since(self, expected: int) -> list[tuple[str, str]]:
        return self.server.wait_for_queries(self.start + expected)[self.start :]


async def resolve(server: Dnsmasq, host: str, **kwargs: object) -> Resolution:
    client = DnsClient([server.nameserver])
    return await resolve_sip(host, deadline=trio.current_time() + CAP, dns_client=client, **kwargs)  # type: ignore[arg-type]


def rows(resolution: Resolution) -> list[tuple[str, int, str, str, str]]:
    return [(t.address, t.port, t.transport, t.step, t.target) for t in resolution.targets]


async def test_naptr_chain_order_and_what_was_asked(dnsmasq: Dnsmasq) -> None:
    domain = LAB_DOMAINS["naptr"]
    asked = Asked(dnsmasq)
    resolution = await resolve(dnsmasq, domain)
    assert resolution.outcome == "ok", resolution
    assert rows(resolution) == [
        ("127.0.53.1", 5061, "tls", "naptr", f"tls1.{domain}"),
        ("2001:db8::531", 5061, "tls", "naptr", f"tls1.{domain}"),
        ("127.0.53.2", 5060, "tcp", "naptr", f"tcp1.{domain}"),
        ("127.0.53.3", 5060, "udp", "naptr", f"udp1.{domain}"),
    ]
    queries = asked.since(10)
    assert len(queries) == 10, queries  # NAPTR, 3 SRV, 3 x (A, AAAA)
    assert queries[0] == ("NAPTR", domain)
    assert set(queries[1:4]) == {
        ("SRV", f"_sips._tcp.edge.{domain}"),
        ("SRV", f"_sip._tcp.edge.{domain}"),
        ("SRV", f"_sip._udp.edge.{domain}"),
    }
    assert {t for t, _n in queries[4:]} == {"A", "AAAA"}
    assert ("SRV", f"_sip._tcp.{domain}") not in queries  # the decoy under the standard name
    assert all(not n.startswith(("decoy.", "other.")) and n != domain for _t, n in queries[1:])


async def test_naptr_limited_to_wanted_transports_and_sips(dnsmasq: Dnsmasq) -> None:
    domain = LAB_DOMAINS["naptr"]
    tcp_tls = await resolve(dnsmasq, domain, transports=("tcp", "tls"))
    assert [t.transport for t in tcp_tls.targets] == ["tls", "tls", "tcp"]
    sips = await resolve_target(
        parse_target(f"sips:{domain}"),
        deadline=trio.current_time() + CAP,
        dns_client=DnsClient([dnsmasq.nameserver]),
    )
    assert [(t.address, t.transport, t.step) for t in sips.targets] == [
        ("127.0.53.1", "tls", "naptr"),
        ("2001:db8::531", "tls", "naptr"),
    ]


async def test_srv_priorities_weights_and_every_address(dnsmasq: Dnsmasq) -> None:
    domain = LAB_DOMAINS["srv"]
    seen_orders: set[tuple[int, ...]] = set()
    for seed in range(40):
        resolution = await resolve(dnsmasq, domain, transports=("tcp",), rng=random.Random(seed))
        assert {t.step for t in resolution.targets} == {"srv"}
        ports = tuple(dict.fromkeys(t.port for t in resolution.targets))
        assert ports[-1] == 5080, ports  # priority 20 always after both priority-10 records
        seen_orders.add(ports)
        assert sorted((t.address, t.port) for t in resolution.targets) == sorted(
            [
                ("127.0.53.11", 5060),
                ("127.0.53.12", 5060),
                ("2001:db8::5311", 5060),
                ("127.0.53.21", 5070),
                ("127.0.53.31", 5080),
                ("2001:db8::5331", 5080),
            ]
        )
    assert seen_orders == {(5060, 5070, 5080), (5070, 5060, 5080)}  # weights 60/40: both orders happen
    everything = await resolve(dnsmasq, domain, rng=random.Random(1))
    assert [t.transport for t in everything.targets][:3] == ["tls"] * 3  # _sips._tcp first (RFC order)
    assert {t.transport for t in everything.targets} == {"tls", "tcp", "udp"}
    assert len(everything.targets) == 3 + 6 + 3


async def test_fallback_to_a_and_aaaa(dnsmasq: Dnsmasq) -> None:
    domain = LAB_DOMAINS["a_only"]
    asked = Asked(dnsmasq)
    resolution = await resolve(dnsmasq, domain, transports=("tcp", "tls"))
    assert sorted(rows(resolution)) == [
        ("127.0.53.41", 5060, "tcp", "a", domain),
        ("127.0.53.42", 5060, "tcp", "a", domain),
        ("2001:db8::5341", 5060, "tcp", "a", domain),
    ]
    assert resolution.targets[-1].family == "ipv6"
    queries = asked.since(5)
    assert queries[0] == ("NAPTR", domain)
    assert set(queries[1:3]) == {("SRV", f"_sips._tcp.{domain}"), ("SRV", f"_sip._tcp.{domain}")}
    assert set(queries[3:5]) == {("A", domain), ("AAAA", domain)}
    sips = await resolve(dnsmasq, domain, scheme="sips")
    assert {(t.port, t.transport, t.step) for t in sips.targets} == {(5061, "tls", "a")}


async def test_sips_only_naptr(dnsmasq: Dnsmasq) -> None:
    domain = LAB_DOMAINS["sips_only"]
    sips = await resolve(dnsmasq, domain, scheme="sips")
    assert rows(sips) == [("127.0.53.51", 5061, "tls", "naptr", f"tls.{domain}")]
    # A sip: URI that cannot use TLS: the only NAPTR is unusable, no SRV, no A record: nothing.
    tcp_only = await resolve(dnsmasq, domain, transports=("tcp",))
    assert (tcp_only.outcome, tcp_only.targets) == ("no_answer", ())
    assert [(lk.rdtype, lk.outcome) for lk in tcp_only.lookups] == [
        ("NAPTR", "ok"),
        ("SRV", "nxdomain"),
        ("A", "no_answer"),
        ("AAAA", "no_answer"),
    ]


async def test_srv_not_available_and_broken_naptr(dnsmasq: Dnsmasq) -> None:
    dead = LAB_DOMAINS["dead"]
    asked = Asked(dnsmasq)
    resolution = await resolve(dnsmasq, dead, transports=("tcp",))
    assert (resolution.outcome, resolution.targets) == ("no_answer", ())
    assert asked.since(2) == [("NAPTR", dead), ("SRV", f"_sip._tcp.{dead}")]  # no A fallback after "."
    broken = LAB_DOMAINS["naptr_broken"]
    fallback = await resolve(dnsmasq, broken, transports=("tcp",))
    assert rows(fallback) == [("127.0.53.71", 5060, "tcp", "a", broken)]


async def test_nxdomain_and_refused(dnsmasq: Dnsmasq) -> None:
    missing = await resolve(dnsmasq, LAB_DOMAINS["missing"])
    assert (missing.outcome, missing.targets) == ("nxdomain", ())
    assert missing.detail == f"{LAB_DOMAINS['missing']} does not exist (NXDOMAIN)"
    # Outside the served zone dnsmasq answers REFUSED: a server failure, not a crash.
    refused = await resolve(dnsmasq, "pbx.example")
    assert refused.outcome == "servfail"
    assert "REFUSED" in refused.detail


async def test_literal_and_explicit_port_skip_naptr_and_srv(dnsmasq: Dnsmasq) -> None:
    asked = Asked(dnsmasq)
    literal = await resolve(dnsmasq, "127.0.0.1", transports=("tcp",))
    assert rows(literal) == [("127.0.0.1", 5060, "tcp", "literal", "127.0.0.1")]
    domain = LAB_DOMAINS["srv"]
    explicit = await resolve(dnsmasq, f"a.{domain}", port=5999, transport="tcp")
    # IPv4 before IPv6; within a family the server's order (dnsmasq rotates records between answers).
    assert [(t.family, t.port, t.step) for t in explicit.targets] == [
        ("ipv4", 5999, "explicit_port"),
        ("ipv4", 5999, "explicit_port"),
        ("ipv6", 5999, "explicit_port"),
    ]
    assert sorted(t.address for t in explicit.targets) == ["127.0.53.11", "127.0.53.12", "2001:db8::5311"]
    assert sorted(asked.since(2)) == [
        ("A", f"a.{domain}"),
        ("AAAA", f"a.{domain}"),
    ]  # nothing for the literal
    asked = Asked(dnsmasq)
    chosen = await resolve(dnsmasq, domain, transport="tcp", rng=random.Random(0))
    assert {t.transport for t in chosen.targets} == {"tcp"}
    assert asked.since(1)[0] == ("SRV", f"_sip._tcp.{domain}")  # explicit transport: no NAPTR


async def test_resolved_addresses_are_all_probed(lab_dir: Path) -> None:
    """SRV -> two loopback SIP responders (one on 127.0.0.1 and ::1, one on 127.0.0.1); each is probed."""
    port1, port2 = allocate_port(), allocate_port()
    listeners1 = [
        *(await trio.open_tcp_listeners(port1, host="127.0.0.1")),
        *(await trio.open_tcp_listeners(port1, host="::1")),
    ]
    listeners2 = await trio.open_tcp_listeners(port2, host="127.0.0.1")
    domain = "e2e.sip.test"
    zone = Zone(
        srv=(
            Srv(f"_sip._tcp.{domain}", f"r1.{domain}", port1, 10, 0),
            Srv(f"_sip._tcp.{domain}", f"r2.{domain}", port2, 20, 0),
        ),
        hosts=(Host(f"r1.{domain}", ("127.0.0.1", "::1")), Host(f"r2.{domain}", ("127.0.0.1",))),
    )
    server = await trio.to_thread.run_sync(partial(start_dnsmasq, zone, log_dir=lab_dir, name="dnsmasq-e2e"))
    stats1, stats2 = ResponderStats(), ResponderStats()
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(partial(serve_sip_responder, listeners1, stats=stats1, server_header="r1/1"))
            await nursery.start(partial(serve_sip_responder, listeners2, stats=stats2, server_header="r2/1"))
            deadline = trio.current_time() + CAP
            resolution = await resolve_sip(
                domain, deadline=deadline, transports=("tcp",), dns_client=DnsClient([server.nameserver])
            )
            assert [(t.address, t.port, t.step) for t in resolution.targets] == [
                ("127.0.0.1", port1, "srv"),
                ("::1", port1, "srv"),
                ("127.0.0.1", port2, "srv"),
            ]
            results = []
            for target in resolution.targets:
                results += await probe(spec_for(target, domain), deadline=deadline)
            nursery.cancel_scope.cancel()
    finally:
        await trio.to_thread.run_sync(server.stop)
    assert [(r.address, r.port, r.success, r.status_code, r.server) for r in results] == [
        ("127.0.0.1", port1, True, 200, "r1/1"),
        ("::1", port1, True, 200, "r1/1"),
        ("127.0.0.1", port2, True, 200, "r2/1"),
    ], [r.detail for r in results]
    assert (stats1.requests, stats2.requests) == (2, 1)


def spec_for(target: Resolved, domain: str) -> SipProbeSpec:
    """One probe per resolved address: dial the address itself; TLS would verify the SIP domain (RFC 5922)."""
    assert target.transport in ("tcp", "tls")
    return SipProbeSpec(
        host=target.address,
        port=target.port,
        transport="tls" if target.transport == "tls" else "tcp",
        listener=f"rfc3263-{target.step}",
        server_name=domain if target.transport == "tls" else None,
        families=(target.family,),
    )
