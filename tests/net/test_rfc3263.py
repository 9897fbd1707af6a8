"""RFC 3263 resolution with an in-process fake: ordering, weighting, fallbacks, skips and failure outcomes.

`FakeDns` answers from a dict and records every query, so each test can say which queries must (not) be
made. `DnsClient`, the dnspython side, is tested against a small DNS server on 127.0.0.1 inside the test
(answers, SERVFAIL, NXDOMAIN, NODATA and silence). Nothing here talks to the system's nameservers: every
resolve_sip() call for a domain passes its own DNS client.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path

import dns.flags
import dns.message
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset
import pytest
import trio

from umprobe.net.resolve import Family
from umprobe.net.rfc3263 import (
    OUTCOMES,
    STEPS,
    AddressAnswer,
    DnsClient,
    DnsConfigError,
    NaptrAnswer,
    NaptrRecord,
    Outcome,
    Resolved,
    SrvAnswer,
    SrvRecord,
    order_srv,
    parse_nameserver,
    resolve_sip,
    resolve_target,
)
from umprobe.targets import parse_target

CAP = 10

Records = Sequence[NaptrRecord] | Sequence[SrvRecord] | Sequence[str] | Outcome


class FakeDns:
    """A DnsLookup from a dict: (name, "NAPTR"|"SRV"|"A"|"AAAA") -> records, or an outcome string.

    A name with no entry at all is NXDOMAIN; a name with entries for other types is NODATA (no_answer)."""

    def __init__(self, zone: dict[tuple[str, str], Records]) -> None:
        self.zone = zone
        self.calls: list[tuple[str, str]] = []

    def _get(self, name: str, rdtype: str) -> tuple[Outcome, tuple[object, ...]]:
        self.calls.append((rdtype, name))
        entry = self.zone.get((name, rdtype))
        if entry is None:
            exists = any(n == name for n, _t in self.zone)
            return ("no_answer" if exists else "nxdomain"), ()
        if isinstance(entry, str):
            return entry, ()  # type: ignore[return-value]
        return ("ok" if entry else "no_answer"), tuple(entry)

    async def naptr(self, name: str, *, deadline: float) -> NaptrAnswer:
        await trio.lowlevel.checkpoint()
        outcome, records = self._get(name, "NAPTR")
        return NaptrAnswer(outcome, records, f"fake {outcome}")  # type: ignore[arg-type]

    async def srv(self, name: str, *, deadline: float) -> SrvAnswer:
        await trio.lowlevel.checkpoint()
        outcome, records = self._get(name, "SRV")
        return SrvAnswer(outcome, records, f"fake {outcome}")  # type: ignore[arg-type]

    async def addresses(self, name: str, family: Family, *, deadline: float) -> AddressAnswer:
        await trio.lowlevel.checkpoint()
        outcome, records = self._get(name, "A" if family == "ipv4" else "AAAA")
        return AddressAnswer(outcome, records, f"fake {outcome}")  # type: ignore[arg-type]

    def types(self) -> list[str]:
        return [t for t, _n in self.calls]


class ScriptedRandom(random.Random):
    """randint() returns the scripted values in turn (and checks they are in range)."""

    def __init__(self, values: Sequence[int]) -> None:
        super().__init__(0)
        self.values = list(values)
        self.asked: list[tuple[int, int]] = []

    def randint(self, a: int, b: int) -> int:
        self.asked.append((a, b))
        value = self.values.pop(0)
        assert a <= value <= b, (value, a, b)
        return value


def srv(priority: int, weight: int, port: int, target: str) -> SrvRecord:
    return SrvRecord(priority=priority, weight=weight, port=port, target=target)


def naptr(
    order: int, pref: int, service: str, replacement: str, flags: str = "S", regexp: str = ""
) -> NaptrRecord:
    return NaptrRecord(order, pref, flags, service, regexp, replacement)


async def run(host: str, fake: FakeDns | None = None, **kwargs: object) -> tuple[Resolved, ...]:
    resolution = await resolve_sip(
        host,
        deadline=trio.current_time() + CAP,
        dns_client=fake or FakeDns({}),
        **kwargs,  # type: ignore[arg-type]
    )
    return resolution.targets


def where(targets: Sequence[Resolved]) -> list[tuple[str, int, str, str]]:
    return [(t.address, t.port, t.transport, t.step) for t in targets]


# -- §4.1/4.2 skips: IP literals and explicit ports ----------------------------------------------------------
@pytest.mark.parametrize(
    ("host", "kwargs", "expected"),
    [
        ("192.0.2.7", {}, ("192.0.2.7", "ipv4", 5060, "udp")),
        ("192.0.2.7", {"transports": ("tcp", "tls")}, ("192.0.2.7", "ipv4", 5060, "tcp")),
        ("192.0.2.7", {"transport": "tls"}, ("192.0.2.7", "ipv4", 5061, "tls")),
        ("192.0.2.7", {"scheme": "sips"}, ("192.0.2.7", "ipv4", 5061, "tls")),
        ("192.0.2.7", {"port": 5067, "transport": "tls"}, ("192.0.2.7", "ipv4", 5067, "tls")),
        ("[2001:DB8::1]", {"port": 5068, "transport": "tcp"}, ("2001:db8::1", "ipv6", 5068, "tcp")),
        ("2001:db8::1", {"transports": ("tls",)}, ("2001:db8::1", "ipv6", 5061, "tls")),
    ],
)
async def test_ip_literal_never_touches_dns(
    host: str, kwargs: dict[str, object], expected: tuple[object, ...]
) -> None:
    fake = FakeDns({})
    targets = await run(host, fake, **kwargs)
    assert [(t.address, t.family, t.port, t.transport) for t in targets] == [expected]
    assert targets[0].step == "literal"
    assert fake.calls == []


async def test_ip_literal_of_a_disabled_family_is_no_answer() -> None:
    fake = FakeDns({})
    resolution = await resolve_sip(
        "::1", deadline=trio.current_time() + CAP, families=("ipv4",), dns_client=fake
    )
    assert (resolution.outcome, resolution.targets) == ("no_answer", ())
    assert "ipv6" in resolution.detail
    assert fake.calls == []


async def test_explicit_port_skips_naptr_and_srv() -> None:
    fake = FakeDns(
        {
            ("pbx.test", "NAPTR"): [naptr(10, 10, "SIP+D2T", "_sip._tcp.pbx.test")],
            ("_sip._tcp.pbx.test", "SRV"): [srv(0, 0, 5999, "other.test")],
            ("pbx.test", "A"): ["198.51.100.1", "198.51.100.2"],
            ("pbx.test", "AAAA"): ["2001:db8::1"],
        }
    )
    targets = await run("pbx.test", fake, port=5067, transport="tls")
    assert where(targets) == [
        ("198.51.100.1", 5067, "tls", "explicit_port"),
        ("198.51.100.2", 5067, "tls", "explicit_port"),
        ("2001:db8::1", 5067, "tls", "explicit_port"),
    ]
    assert sorted(fake.types()) == ["A", "AAAA"]
    # No transport given: the RFC default for sip: (UDP, or the first wanted one).
    assert {t.transport for t in await run("pbx.test", FakeDns(fake.zone), port=5068)} == {"udp"}
    got = await run("pbx.test", FakeDns(fake.zone), port=5068, transports=("tcp", "tls"))
    assert {t.transport for t in got} == {"tcp"}


# -- §4.1 NAPTR ----------------------------------------------------------------------------------------------
def naptr_zone() -> dict[tuple[str, str], Records]:
    return {
        ("pbx.test", "NAPTR"): [
            naptr(20, 10, "SIP+D2U", "_sip._udp.edge.pbx.test"),
            naptr(10, 20, "SIP+D2T", "_sip._tcp.edge.pbx.test"),
            naptr(10, 10, "SIPS+D2T", "_sips._tcp.edge.pbx.test"),
            naptr(1, 1, "SIP+D2S", "_sip._sctp.pbx.test"),  # SCTP: not supported
            naptr(2, 1, "E2U+sip", ".", flags="U", regexp="!^.*$!sip:x@pbx.test!"),  # not SIP server location
            naptr(3, 1, "SIP+D2T", "next.pbx.test", flags=""),  # non-terminal: not followed
            naptr(4, 1, "SIP+D2T", "_sip._tcp.weird.pbx.test", regexp="!a!b!"),  # regexp: not for SIP
        ],
        ("_sips._tcp.edge.pbx.test", "SRV"): [srv(0, 0, 5061, "tls.pbx.test")],
        ("_sip._tcp.edge.pbx.test", "SRV"): [srv(0, 0, 5060, "tcp.pbx.test")],
        ("_sip._udp.edge.pbx.test", "SRV"): [srv(0, 0, 5060, "udp.pbx.test")],
        ("_sip._tcp.pbx.test", "SRV"): [srv(0, 0, 5060, "decoy.pbx.test")],
        ("_sip._sctp.pbx.test", "SRV"): [srv(0, 0, 5060, "decoy.pbx.test")],
        ("_sip._tcp.weird.pbx.test", "SRV"): [srv(0, 0, 5060, "decoy.pbx.test")],
        ("tls.pbx.test", "A"): ["192.0.2.1"],
        ("tls.pbx.test", "AAAA"): ["2001:db8::1"],
        ("tcp.pbx.test", "A"): ["192.0.2.2"],
        ("udp.pbx.test", "A"): ["192.0.2.3"],
        ("decoy.pbx.test", "A"): ["192.0.2.99"],
        ("pbx.test", "A"): ["192.0.2.98"],
    }


async def test_naptr_order_then_preference_each_replacement_to_srv() -> None:
    fake = FakeDns(naptr_zone())
    targets = await run("pbx.test", fake)
    assert where(targets) == [
        ("192.0.2.1", 5061, "tls", "naptr"),
        ("2001:db8::1", 5061, "tls", "naptr"),
        ("192.0.2.2", 5060, "tcp", "naptr"),
        ("192.0.2.3", 5060, "udp", "naptr"),
    ]
    assert fake.calls[0] == ("NAPTR", "pbx.test")
    srv_names = {n for t, n in fake.calls if t == "SRV"}
    assert srv_names == {"_sips._tcp.edge.pbx.test", "_sip._tcp.edge.pbx.test", "_sip._udp.edge.pbx.test"}
    assert all("decoy" not in n and n != "pbx.test" for t, n in fake.calls if t in ("A", "AAAA"))


async def test_naptr_only_for_wanted_transports() -> None:
    fake = FakeDns(naptr_zone())
    targets = await run("pbx.test", fake, transports=("tcp", "tls"))
    assert [t.transport for t in targets] == ["tls", "tls", "tcp"]
    assert ("SRV", "_sip._udp.edge.pbx.test") not in fake.calls


async def test_sips_uri_keeps_only_sips_naptr() -> None:
    fake = FakeDns(naptr_zone())
    targets = await run("pbx.test", fake, scheme="sips")
    assert where(targets) == [("192.0.2.1", 5061, "tls", "naptr"), ("2001:db8::1", 5061, "tls", "naptr")]
    assert [n for t, n in fake.calls if t == "SRV"] == ["_sips._tcp.edge.pbx.test"]


async def test_naptr_with_no_usable_record_falls_back_to_srv() -> None:
    zone = naptr_zone()
    zone[("pbx.test", "NAPTR")] = [naptr(10, 10, "SIP+D2S", "_sip._sctp.pbx.test")]
    resolution = await resolve_sip("pbx.test", deadline=trio.current_time() + CAP, dns_client=FakeDns(zone))
    assert where(resolution.targets) == [("192.0.2.99", 5060, "tcp", "srv")]
    # The plan's order (the queries themselves run concurrently).
    assert [lk.name for lk in resolution.lookups if lk.rdtype == "SRV"] == [
        "_sips._tcp.pbx.test",
        "_sip._tcp.pbx.test",
        "_sip._udp.pbx.test",
    ]


async def test_naptr_whose_srv_is_missing_falls_back_to_a() -> None:
    fake = FakeDns(
        {
            ("pbx.test", "NAPTR"): [naptr(10, 10, "SIP+D2T", "_sip._tcp.gone.pbx.test")],
            ("_sip._tcp.pbx.test", "SRV"): [srv(0, 0, 5060, "decoy.pbx.test")],
            ("pbx.test", "A"): ["192.0.2.98"],
        }
    )
    targets = await run("pbx.test", fake, transports=("tcp", "tls"))
    assert where(targets) == [("192.0.2.98", 5060, "tcp", "a")]
    assert ("SRV", "_sip._tcp.pbx.test") not in fake.calls  # §4.2: SRV only from the NAPTR replacement


# -- §4.2 SRV and RFC 2782 -----------------------------------------------------------------------------------
async def test_srv_in_rfc_order_for_wanted_transports_only() -> None:
    fake = FakeDns(
        {
            ("_sip._udp.pbx.test", "SRV"): [srv(0, 0, 5060, "u.pbx.test")],
            ("_sip._tcp.pbx.test", "SRV"): [srv(0, 0, 5060, "t.pbx.test")],
            ("_sips._tcp.pbx.test", "SRV"): [srv(0, 0, 5061, "s.pbx.test")],
            ("u.pbx.test", "A"): ["192.0.2.10"],
            ("t.pbx.test", "A"): ["192.0.2.20"],
            ("s.pbx.test", "A"): ["192.0.2.30"],
        }
    )
    targets = await run("pbx.test", fake)
    assert where(targets) == [
        ("192.0.2.30", 5061, "tls", "srv"),
        ("192.0.2.20", 5060, "tcp", "srv"),
        ("192.0.2.10", 5060, "udp", "srv"),
    ]
    assert fake.calls[0] == ("NAPTR", "pbx.test")
    fake2 = FakeDns(fake.zone)
    assert [t.transport for t in await run("pbx.test", fake2, transports=("tcp",))] == ["tcp"]
    assert [n for t, n in fake2.calls if t == "SRV"] == ["_sip._tcp.pbx.test"]


async def test_explicit_transport_skips_naptr_and_asks_only_its_srv() -> None:
    fake = FakeDns(
        {
            ("pbx.test", "NAPTR"): [naptr(10, 10, "SIP+D2U", "_sip._udp.pbx.test")],
            ("_sips._tcp.pbx.test", "SRV"): [srv(0, 0, 5061, "s.pbx.test")],
            ("s.pbx.test", "A"): ["192.0.2.30"],
        }
    )
    targets = await run("pbx.test", fake, transport="tls")
    assert where(targets) == [("192.0.2.30", 5061, "tls", "srv")]
    assert [t for t, _n in fake.calls if t != "AAAA"] == ["SRV", "A"]


async def test_srv_priorities_then_weights_with_injected_rng() -> None:
    zone: dict[tuple[str, str], Records] = {
        ("_sip._tcp.pbx.test", "SRV"): [
            srv(20, 0, 5080, "c.pbx.test"),
            srv(10, 60, 5060, "a.pbx.test"),
            srv(10, 40, 5070, "b.pbx.test"),
        ],
        ("a.pbx.test", "A"): ["192.0.2.1"],
        ("b.pbx.test", "A"): ["192.0.2.2"],
        ("c.pbx.test", "A"): ["192.0.2.3"],
    }
    # Priority 10: weights 60 (running sum 60) and 40 (100). A draw of 61 picks b; then a alone (draw 0..60).
    rng = ScriptedRandom([61, 60, 0])
    targets = await run("pbx.test", FakeDns(zone), transports=("tcp",), rng=rng)
    assert [t.port for t in targets] == [5070, 5060, 5080]
    assert rng.asked == [(0, 100), (0, 60), (0, 0)]
    # A draw of 60 picks a first.
    targets = await run("pbx.test", FakeDns(zone), transports=("tcp",), rng=ScriptedRandom([60, 0, 0]))
    assert [t.port for t in targets] == [5060, 5070, 5080]


def test_rfc2782_zero_weights_first_and_running_sums() -> None:
    records = [srv(0, 10, 1, "a.test"), srv(0, 0, 2, "z.test"), srv(0, 30, 3, "b.test")]
    # Arranged as z(0, sum 0), a(10, sum 10), b(30, sum 40): a draw of 0 picks z, 1..10 a, 11..40 b.
    assert [r.port for r in order_srv(records, ScriptedRandom([0, 0, 0]))] == [2, 1, 3]
    assert [r.port for r in order_srv(records, ScriptedRandom([1, 0, 0]))] == [1, 2, 3]
    assert [r.port for r in order_srv(records, ScriptedRandom([10, 0, 0]))] == [1, 2, 3]
    assert [r.port for r in order_srv(records, ScriptedRandom([11, 0, 0]))] == [3, 2, 1]
    assert [r.port for r in order_srv(records, ScriptedRandom([40, 10, 0]))] == [3, 1, 2]


def test_rfc2782_weights_are_proportions() -> None:
    records = [srv(5, 60, 1, "a.test"), srv(5, 40, 2, "b.test"), srv(1, 0, 3, "first.test")]
    rng = random.Random(3263)
    firsts = [order_srv(records, rng)[1].port for _ in range(4000)]
    share_a = firsts.count(1) / len(firsts)
    assert 0.55 < share_a < 0.65, share_a  # 60 % expected; a seeded RNG makes this deterministic
    assert all(order_srv(records, rng)[0].port == 3 for _ in range(50))  # priority 1 always first


def test_srv_dot_target_is_dropped() -> None:
    assert order_srv([srv(0, 0, 0, "."), srv(0, 0, 5060, "x.test")]) == [srv(0, 0, 5060, "x.test")]


async def test_srv_saying_not_available_does_not_fall_back_to_a() -> None:
    fake = FakeDns({("_sip._tcp.pbx.test", "SRV"): [srv(0, 0, 0, ".")], ("pbx.test", "A"): ["192.0.2.98"]})
    resolution = await resolve_sip("pbx.test", deadline=trio.current_time() + CAP, dns_client=fake)
    assert (resolution.outcome, resolution.targets) == ("no_answer", ())
    assert ("A", "pbx.test") not in fake.calls


async def test_every_address_of_every_target_once() -> None:
    fake = FakeDns(
        {
            ("_sip._tcp.pbx.test", "SRV"): [
                srv(10, 0, 5060, "a.pbx.test"),
                srv(20, 0, 5062, "a.pbx.test"),  # same host, other port: one lookup, two targets
                srv(30, 0, 5060, "b.pbx.test"),
            ],
            ("a.pbx.test", "A"): ["192.0.2.1", "192.0.2.2"],
            ("a.pbx.test", "AAAA"): ["2001:db8::1"],
            ("b.pbx.test", "A"): ["192.0.2.1"],  # the same address and port as a's: probed once
        }
    )
    targets = await run("pbx.test", fake, transports=("tcp",))
    assert where(targets) == [
        ("192.0.2.1", 5060, "tcp", "srv"),
        ("192.0.2.2", 5060, "tcp", "srv"),
        ("2001:db8::1", 5060, "tcp", "srv"),
        ("192.0.2.1", 5062, "tcp", "srv"),
        ("192.0.2.2", 5062, "tcp", "srv"),
        ("2001:db8::1", 5062, "tcp", "srv"),
    ]
    assert [t.target for t in targets] == ["a.pbx.test"] * 6
    assert fake.calls.count(("A", "a.pbx.test")) == 1
    v6 = await run("pbx.test", FakeDns(fake.zone), transports=("tcp",), families=("ipv6",))
    assert [(t.address, t.family) for t in v6] == [("2001:db8::1", "ipv6")] * 2


async def test_no_srv_falls_back_to_a_and_aaaa_with_default_port() -> None:
    zone: dict[tuple[str, str], Records] = {
        ("pbx.test", "A"): ["192.0.2.5"],
        ("pbx.test", "AAAA"): ["2001:db8::5"],
    }
    fake = FakeDns(zone)
    targets = await run("pbx.test", fake, transports=("tcp", "tls"))
    assert where(targets) == [("192.0.2.5", 5060, "tcp", "a"), ("2001:db8::5", 5060, "tcp", "a")]
    assert fake.types()[:1] == ["NAPTR"] and fake.types().count("SRV") == 2
    assert [t.port for t in await run("pbx.test", FakeDns(zone), scheme="sips")] == [5061, 5061]
    assert {t.transport for t in await run("pbx.test", FakeDns(zone))} == {"udp"}  # §4.1: UDP for sip:


# -- outcomes ------------------------------------------------------------------------------------------------
async def test_nxdomain() -> None:
    fake = FakeDns({})
    resolution = await resolve_sip("gone.test", deadline=trio.current_time() + CAP, dns_client=fake)
    assert (resolution.outcome, resolution.targets, resolution.ok) == ("nxdomain", (), False)
    assert resolution.detail == "gone.test does not exist (NXDOMAIN)"
    assert [lk.rdtype for lk in resolution.lookups] == ["NAPTR", "SRV", "SRV", "SRV", "A", "AAAA"]


async def test_no_answer_for_an_existing_name_without_records() -> None:
    fake = FakeDns({("pbx.test", "TXT"): ["x"]})
    resolution = await resolve_sip("pbx.test", deadline=trio.current_time() + CAP, dns_client=fake)
    assert resolution.outcome == "no_answer"


@pytest.mark.parametrize("failure", ["timeout", "servfail"])
async def test_failures_are_outcomes(failure: Outcome) -> None:
    zone: dict[tuple[str, str], Records] = {
        ("pbx.test", "NAPTR"): failure,
        ("_sips._tcp.pbx.test", "SRV"): failure,
        ("_sip._tcp.pbx.test", "SRV"): failure,
        ("_sip._udp.pbx.test", "SRV"): failure,
        ("pbx.test", "A"): failure,
        ("pbx.test", "AAAA"): "nxdomain",
    }
    resolution = await resolve_sip("pbx.test", deadline=trio.current_time() + CAP, dns_client=FakeDns(zone))
    assert (resolution.outcome, resolution.targets) == (failure, ())
    assert resolution.detail.startswith(
        f"pbx.test: 5 DNS queries {'timed out' if failure == 'timeout' else 'failed'}"
    )
    assert "first NAPTR pbx.test: fake" in resolution.detail
    assert len(resolution.failed_lookups) == 5


async def test_timeout_wins_over_servfail_and_nxdomain() -> None:
    zone: dict[tuple[str, str], Records] = {("pbx.test", "NAPTR"): "servfail", ("pbx.test", "A"): "timeout"}
    resolution = await resolve_sip("pbx.test", deadline=trio.current_time() + CAP, dns_client=FakeDns(zone))
    assert resolution.outcome == "timeout"


async def test_a_failed_naptr_query_still_tries_srv_and_partial_failure_is_ok() -> None:
    zone: dict[tuple[str, str], Records] = {
        ("pbx.test", "NAPTR"): "timeout",
        ("_sip._tcp.pbx.test", "SRV"): [srv(0, 0, 5060, "a.pbx.test")],
        ("a.pbx.test", "A"): ["192.0.2.1"],
        ("a.pbx.test", "AAAA"): "servfail",
    }
    resolution = await resolve_sip(
        "pbx.test", deadline=trio.current_time() + CAP, dns_client=FakeDns(zone), transports=("tcp",)
    )
    assert resolution.outcome == "ok" and resolution.ok
    assert where(resolution.targets) == [("192.0.2.1", 5060, "tcp", "srv")]
    assert [(lk.rdtype, lk.outcome) for lk in resolution.failed_lookups] == [
        ("NAPTR", "timeout"),
        ("AAAA", "servfail"),
    ]


async def test_invalid_tld_is_nxdomain_without_a_query() -> None:
    fake = FakeDns({})
    resolution = await resolve_sip("pbx.example.invalid", deadline=trio.current_time() + CAP, dns_client=fake)
    assert resolution.outcome == "nxdomain" and "RFC 6761" in resolution.detail
    assert fake.calls == []
    # Also without a client: the system resolver is not even set up.
    assert (await resolve_sip("x.invalid", deadline=trio.current_time() + CAP)).outcome == "nxdomain"


def test_bounded_label_values() -> None:
    assert STEPS == ("naptr", "srv", "a", "literal", "explicit_port")
    assert OUTCOMES == ("ok", "nxdomain", "no_answer", "timeout", "servfail")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"transports": ()}, "transports"),
        ({"transports": ("sctp",)}, "transports"),
        ({"families": ("ipx",)}, "families"),
        ({"scheme": "tel"}, "scheme"),
        ({"scheme": "sips", "transport": "tcp"}, "sips"),
        ({"scheme": "sips", "transports": ("tcp",)}, "sips"),
        ({"port": 0}, "port"),
    ],
)
async def test_misuse_is_value_error(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        await resolve_sip("pbx.test", deadline=trio.current_time() + CAP, dns_client=FakeDns({}), **kwargs)  # type: ignore[arg-type]


async def test_resolve_target_takes_a_parsed_target() -> None:
    fake = FakeDns(naptr_zone())
    resolution = await resolve_target(
        parse_target("sips:pbx.test"), deadline=trio.current_time() + CAP, dns_client=fake
    )
    assert [t.transport for t in resolution.targets] == ["tls", "tls"]
    literal = await resolve_target(
        parse_target("sip:[::1]:5070;transport=tcp"), deadline=trio.current_time() + CAP
    )
    assert where(literal.targets) == [("::1", 5070, "tcp", "literal")]
    explicit = await resolve_target(
        parse_target("pbx.test:5067"), deadline=trio.current_time() + CAP, dns_client=FakeDns(naptr_zone())
    )
    assert where(explicit.targets) == [("192.0.2.98", 5067, "udp", "explicit_port")]


def test_resolved_converts_to_the_probe_address_type() -> None:
    r = Resolved("2001:db8::1", "ipv6", 5061, "tls", "srv", "a.test")
    assert r.as_address().address == "2001:db8::1" and r.as_address().family == "ipv6"


# -- nameserver syntax ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1", ("127.0.0.1", 53)),
        ("127.0.0.1:5353", ("127.0.0.1", 5353)),
        ("::1", ("::1", 53)),
        ("[::1]:5353", ("::1", 5353)),
        (" [2001:DB8::1] ", ("2001:db8::1", 53)),
    ],
)
def test_parse_nameserver(text: str, expected: tuple[str, int]) -> None:
    assert parse_nameserver(text) == expected


@pytest.mark.parametrize(
    "text", ["dns.test", "127.0.0.1:0", "127.0.0.1:x", "[::1", "[::1]x", "1.2.3.4:99999"]
)
def test_parse_nameserver_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="nameserver"):
        parse_nameserver(text)


# -- DnsClient (dnspython on trio) against a DNS server inside the test --------------------------------------
Handler = Callable[[dns.message.Message], dns.message.Message | None]


async def serve_dns(
    handler: Handler,
    *,
    task_status: trio.TaskStatus[tuple[trio.socket.SocketType, list[str]]] = trio.TASK_STATUS_IGNORED,
) -> None:
    sock = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
    seen: list[str] = []
    with sock:
        await sock.bind(("127.0.0.1", 0))
        task_status.started((sock, seen))
        while True:
            data, peer = await sock.recvfrom(4096)
            query = dns.message.from_wire(data)
            seen.append(f"{dns.rdatatype.to_text(query.question[0].rdtype)} {query.question[0].name}")
            reply = handler(query)
            if reply is not None:
                await sock.sendto(reply.to_wire(), peer)


def zone_handler(query: dns.message.Message) -> dns.message.Message:
    reply = dns.message.make_response(query)
    q = query.question[0]
    name = q.name.to_text(omit_final_dot=True)
    rdtype = dns.rdatatype.to_text(q.rdtype)
    data = {
        ("pbx.test", "NAPTR"): [
            '10 20 "s" "sip+d2t" "" _sip._tcp.pbx.test.',
            '10 10 "S" "SIPS+D2T" "" _sips._tcp.pbx.test.',
        ],
        ("_sips._tcp.pbx.test", "SRV"): ["10 5 5061 edge.pbx.test."],
        ("edge.pbx.test", "A"): ["127.0.0.1"],
        ("edge.pbx.test", "AAAA"): ["::1"],
    }
    if name == "servfail.test":
        reply.set_rcode(dns.rcode.SERVFAIL)
    elif (name, rdtype) in data:
        reply.answer.append(
            dns.rrset.from_text_list(q.name, 60, dns.rdataclass.IN, q.rdtype, data[(name, rdtype)])
        )
    elif not any(n == name for n, _t in data):
        reply.set_rcode(dns.rcode.NXDOMAIN)
    return reply


async def test_dns_client_answers_and_outcomes() -> None:
    async with trio.open_nursery() as nursery:
        sock, seen = await nursery.start(serve_dns, zone_handler)
        client = DnsClient([sock.getsockname()])
        assert client.nameservers == (sock.getsockname(),)
        deadline = trio.current_time() + CAP
        found = await client.naptr("pbx.test", deadline=deadline)
        assert found.outcome == "ok"
        assert sorted(found.records, key=lambda r: r.preference) == [
            NaptrRecord(10, 10, "S", "SIPS+D2T", "", "_sips._tcp.pbx.test"),
            NaptrRecord(10, 20, "s", "sip+d2t", "", "_sip._tcp.pbx.test"),
        ]
        assert await client.srv("_sips._tcp.pbx.test", deadline=deadline) == SrvAnswer(
            "ok", (SrvRecord(10, 5, 5061, "edge.pbx.test"),)
        )
        assert await client.addresses("edge.pbx.test", "ipv6", deadline=deadline) == AddressAnswer(
            "ok", ("::1",)
        )
        assert (await client.addresses("edge.pbx.test", "ipv4", deadline=deadline)).records == ("127.0.0.1",)
        assert (await client.srv("edge.pbx.test", deadline=deadline)).outcome == "no_answer"
        assert (await client.srv("gone.test", deadline=deadline)).outcome == "nxdomain"
        failed = await client.naptr("servfail.test", deadline=deadline)
        assert failed.outcome == "servfail" and "SERVFAIL" in failed.detail
        # The whole chain over dnspython, lower-case NAPTR flags and services included.
        seen.clear()
        resolution = await resolve_sip(
            "pbx.test", deadline=deadline, dns_client=client, transports=("tcp", "tls")
        )
        assert where(resolution.targets) == [
            ("127.0.0.1", 5061, "tls", "naptr"),
            ("::1", 5061, "tls", "naptr"),
        ]
        assert seen[0] == "NAPTR pbx.test."
        assert {"SRV _sips._tcp.pbx.test.", "SRV _sip._tcp.pbx.test."} <= set(seen[1:3])
        nursery.cancel_scope.cancel()


async def test_dns_client_silence_is_a_timeout_by_the_deadline() -> None:
    async with trio.open_nursery() as nursery:
        sock, seen = await nursery.start(serve_dns, lambda q: None)
        client = DnsClient([sock.getsockname()])
        start = trio.current_time()
        resolution = await resolve_sip("pbx.test", deadline=start + 0.5, dns_client=client)
        elapsed = trio.current_time() - start
        assert resolution.outcome == "timeout", resolution
        assert elapsed < 0.5 + 0.5
        assert seen and seen[0] == "NAPTR pbx.test."
        assert {lk.outcome for lk in resolution.lookups} == {"timeout"}
        nursery.cancel_scope.cancel()


async def test_dns_client_sends_nothing_after_the_deadline() -> None:
    async with trio.open_nursery() as nursery:
        sock, seen = await nursery.start(serve_dns, zone_handler)
        client = DnsClient([sock.getsockname()])
        answer = await client.naptr("pbx.test", deadline=trio.current_time() - 1)
        assert answer.outcome == "timeout" and "not sent" in answer.detail
        await trio.sleep(0.05)
        assert seen == []
        nursery.cancel_scope.cancel()


def test_dns_client_configuration(tmp_path: Path) -> None:
    conf = tmp_path / "resolv.conf"
    conf.write_text("nameserver 127.0.0.53\nnameserver ::1\n")
    assert DnsClient(resolv_conf=str(conf)).nameservers == (("127.0.0.53", 53), ("::1", 53))
    with pytest.raises(DnsConfigError, match="no usable nameserver"):
        DnsClient(resolv_conf=str(tmp_path / "missing.conf"))
    with pytest.raises(DnsConfigError, match="no nameserver"):
        DnsClient([])
    with pytest.raises(DnsConfigError, match="bad nameserver"):
        DnsClient([("dns.test", 53)])


# -- the SIP probe on RFC 3263 targets: what goes on the wire -------------------------------------------


async def test_probe_sends_the_domain_uri_without_the_srv_port() -> None:
    """RFC 3263 §4: the request goes to the URI as given (`sip:DOMAIN`), sent to the SRV target's address
    and port; with a port named in the target, the Request-URI keeps it."""
    from umprobe.probes.sip_options import SipProbeSpec, probe

    lines: list[str] = []

    async def answer(stream: trio.SocketStream) -> None:
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = await stream.receive_some()
            if not chunk:
                return
            data += chunk
        head = data.split(b"\r\n\r\n", 1)[0].decode().split("\r\n")
        lines.append(head[0])
        keep = [h for h in head[1:] if h.split(":", 1)[0].lower() in ("via", "from", "call-id", "cseq")]
        to = next(h for h in head[1:] if h.lower().startswith("to:")) + ";tag=x"
        reply = "\r\n".join(["SIP/2.0 200 OK", *keep, to, "Content-Length: 0", "", ""])
        await stream.send_all(reply.encode())

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            (listener,) = await nursery.start(partial(trio.serve_tcp, answer, 0, host="127.0.0.1"))
            port = listener.socket.getsockname()[1]
            dns = FakeDns(
                {
                    ("sip.example.test", "NAPTR"): [naptr(10, 10, "SIP+D2T", "_sip._tcp.sip.example.test")],
                    ("_sip._tcp.sip.example.test", "SRV"): [srv(10, 0, port, "a.example.test")],
                    ("a.example.test", "A"): ["127.0.0.1"],
                }
            )
            spec = SipProbeSpec(host="sip.example.test", port=5060, resolution="rfc3263", port_given=False)
            (result,) = await probe(spec, deadline=trio.current_time() + 5, dns=dns)
            assert (result.success, result.port, result.step) == (True, port, "naptr"), result.detail
            named = SipProbeSpec(host="127.0.0.1", port=port, resolution="rfc3263")
            (literal,) = await probe(named, deadline=trio.current_time() + 5, dns=dns)
            assert (literal.success, literal.step) == (True, "literal"), literal.detail
            nursery.cancel_scope.cancel()
    assert lines == [
        "OPTIONS sip:sip.example.test;transport=tcp SIP/2.0",
        f"OPTIONS sip:127.0.0.1:{port};transport=tcp SIP/2.0",
    ]
