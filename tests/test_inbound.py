"""Inbound OPTIONS: the books (umprobe.inbound, with a fake clock), the `[[listen]]` config, the responder
recording callers over TCP and mutual TLS, the metrics and the status page, the daemon in-process, and the
peer's log. The real-peer version (SIPp and socat as pingers of a `umprobe run` subprocess) is
tests/integration/test_inbound_options.py.
"""

from __future__ import annotations

import json
import logging
import re
import signal
import socket
import struct
import subprocess
import sys
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import CollectorRegistry

from tests.lab.ports import allocate_port
from tests.test_metrics import collect, documented, promtool_check
from umprobe.config import KNOWN_KEYS, LISTEN_KEYS, ConfigError, ListenConfig, describe, parse_config
from umprobe.daemon import Daemon
from umprobe.devcerts import DevCA
from umprobe.exporter import ListenError, _render_status
from umprobe.inbound import (
    ANSWERS,
    INTERVAL_WINDOW,
    OTHER,
    STATES,
    Caller,
    InboundBook,
    StateWatch,
    caller_from,
    certificate_identity,
    normalise_identity,
    uri_host,
)
from umprobe.metrics import UmprobeCollector, render_metrics
from umprobe.net.errors import ConnectionClosed
from umprobe.net.tls import TLSClientConfig, make_server_context
from umprobe.peer.echo_peer import PeerConfig, SipListen, serve_echo_peer
from umprobe.peer.sip_responder import (
    ResponderStats,
    handle_sip_connection,
    serve_inbound,
    serve_sip_responder,
    watch_inbound,
)
from umprobe.probes.sip_options import SipProbeSpec, TLSContextCache, probe
from umprobe.store import ResultStore

T0 = 1_800_000_000.0  # a fake "now": unix seconds
UM = Caller("um01.contoso.local", "certificate", "192.0.2.10")


def book(**kwargs: Any) -> InboundBook:
    kwargs.setdefault("started_at", T0)
    return InboundBook("tls:0.0.0.0:5061", **kwargs)


def ping(b: InboundBook, caller: Caller, *times: float, answer: str = "200") -> None:
    for at in times:
        b.record(caller, answer, at, from_host="um01.contoso.local", contact_host="um01.contoso.local")


def one(b: InboundBook, now: float, identity: str) -> Any:
    (found,) = [i for i in b.view(now).identities if i.identity == identity]
    return found


# -- identity -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("subject", "san", "identity"),
    [
        ("CN=sbc1.contoso.com", ("DNS:sbc1.contoso.com", "DNS:sbc.contoso.com"), "sbc1.contoso.com"),
        # the CN is not among the DNS SANs: the SANs rule (RFC 6125), first one
        ("CN=SBC Gateway,O=Contoso", ("DNS:sbc2.contoso.com", "IP:192.0.2.1"), "sbc2.contoso.com"),
        ("CN=other.contoso.com", ("DNS:sbc3.contoso.com",), "sbc3.contoso.com"),
        ("O=Contoso,CN=SBC4.Contoso.COM.", (), "sbc4.contoso.com"),  # no SANs: the CN, normalised
        ("CN=192.0.2.7", ("IP:192.0.2.7",), None),  # an IP is no FQDN: the caller is its source address
        ("CN=not a host", (), None),
        ("CN=a\\,b.example", (), None),  # escaped comma, unescaped: not a host name
        ("CN=*.contoso.com", ("DNS:*.contoso.com",), "*.contoso.com"),
    ],
)
def test_certificate_identity(subject: str, san: tuple[str, ...], identity: str | None) -> None:
    assert certificate_identity(subject, san) == identity


def test_caller_from_prefers_the_certificate_and_normalises_addresses() -> None:
    assert caller_from("::ffff:192.0.2.9") == Caller("192.0.2.9", "address", "192.0.2.9")
    assert caller_from("2001:DB8::1") == Caller("2001:db8::1", "address", "2001:db8::1")
    cert = caller_from("192.0.2.9", "CN=um01.contoso.local", ("DNS:um01.contoso.local",))
    assert cert == Caller("um01.contoso.local", "certificate", "192.0.2.9")
    assert caller_from("192.0.2.9", "CN=x y", ()) == Caller("192.0.2.9", "address", "192.0.2.9")


@pytest.mark.parametrize(
    ("value", "host"),
    [
        ('"UM" <sip:um01@um01.contoso.local:5061;transport=tls>;tag=1', "um01.contoso.local"),
        ("<sips:sbc.contoso.com>", "sbc.contoso.com"),
        ("sip:ping@192.0.2.4;tag=abc", "192.0.2.4"),
        ("<sip:[2001:db8::4]:5060;transport=tcp>", "[2001:db8::4]"),
        ("<sip:sbc.contoso.com:5061;transport=tls>", "sbc.contoso.com"),
        ("<tel:+15551234>", None),
        (None, None),
    ],
)
def test_uri_host(value: str | None, host: str | None) -> None:
    assert uri_host(value) == host


def test_normalise_identity() -> None:
    assert normalise_identity("UM01.Contoso.Local.") == "um01.contoso.local"
    assert normalise_identity("[::1]") == "::1"
    assert normalise_identity("bad name") is None
    assert normalise_identity("") is None


# -- the book, with a fake clock -------------------------------------------------------------------------


def test_last_seen_interval_and_the_demotion_view_over_time() -> None:
    b = book(at_risk_after=180, demoted_after=300)
    ping(b, UM, T0 + 10, T0 + 70, T0 + 130, T0 + 190)  # once a minute, like Direct Routing
    view = one(b, T0 + 200, UM.identity)
    assert (view.first_seen, view.last_seen, view.last_good) == (T0 + 10, T0 + 190, T0 + 190)
    assert view.interval == 60.0
    assert (view.silence, view.state) == (10.0, "active")
    assert view.answers == (("200", 4), ("unsent", 0)) and view.total == 4
    assert (view.source, view.from_host, view.contact_host) == (
        "192.0.2.10",
        "um01.contoso.local",
        UM.identity,
    )
    assert one(b, T0 + 190 + 180, UM.identity).state == "active"  # 3 min exactly: not yet
    assert one(b, T0 + 190 + 181, UM.identity).state == "at_risk"
    assert one(b, T0 + 190 + 300, UM.identity).state == "at_risk"
    late = one(b, T0 + 190 + 301, UM.identity)
    assert (late.state, late.silence) == ("demoted", 301.0)
    ping(b, UM, T0 + 600)  # it comes back
    back = one(b, T0 + 601, UM.identity)
    assert back.state == "active"
    assert back.interval == 60.0  # the median of 60, 60, 60, 410: one pause does not swing it


def test_interval_is_the_median_of_the_latest_gaps() -> None:
    b = book()
    times = [T0 + 0.5 * i for i in range(30)]
    ping(b, UM, *times)
    assert one(b, times[-1], UM.identity).interval == 0.5
    ping(b, UM, *(times[-1] + 2.0 * (i + 1) for i in range(INTERVAL_WINDOW // 2 + 1)))
    assert one(b, T0 + 100, UM.identity).interval == 2.0  # a majority of the window moved


def test_a_clock_stepping_back_gives_no_negative_interval() -> None:
    b = book()
    ping(b, UM, T0 + 10, T0 + 5)
    assert one(b, T0 + 11, UM.identity).interval == 0.0


def test_an_expected_identity_never_seen_goes_waiting_at_risk_demoted_from_start() -> None:
    b = book(expect=["UM02.contoso.local", "192.0.2.20"], at_risk_after=1, demoted_after=2)
    assert [(i.identity, i.kind, i.expected) for i in b.view(T0).identities] == [
        ("um02.contoso.local", "expected", True),
        ("192.0.2.20", "expected", True),
    ]
    assert [one(b, T0 + t, "um02.contoso.local").state for t in (0.5, 1.5, 2.5)] == [
        "waiting",
        "at_risk",
        "demoted",
    ]
    never = one(b, T0 + 2.5, "um02.contoso.local")
    assert (never.last_seen, never.last_good, never.interval, never.silence) == (None, None, None, 2.5)
    ping(b, Caller("192.0.2.20", "address", "192.0.2.20"), T0 + 2.6)
    seen = one(b, T0 + 2.7, "192.0.2.20")
    assert (seen.state, seen.kind, seen.expected) == ("active", "address", True)


def test_unsent_answers_are_seen_but_not_good() -> None:
    b = book(at_risk_after=1, demoted_after=2)
    ping(b, UM, T0 + 10, T0 + 11, answer="unsent")
    view = one(b, T0 + 11.5, UM.identity)
    assert (view.last_seen, view.last_good, view.answers) == (T0 + 11, None, (("200", 0), ("unsent", 2)))
    assert (view.silence, view.state) == (1.5, "at_risk")  # silent since it was first seen
    assert one(b, T0 + 10.5, UM.identity).state == "waiting"


def test_identities_are_bounded_the_oldest_evicted_into_other_and_expected_kept() -> None:
    b = book(expect=["um01.contoso.local"], max_identities=2)
    callers = [Caller(f"192.0.2.{n}", "address", f"192.0.2.{n}") for n in range(1, 6)]
    ping(b, UM, T0)  # expected: never counts against max_identities, never evicted
    ping(b, callers[0], T0 + 1, T0 + 2)
    ping(b, callers[1], T0 + 3)
    ping(b, callers[0], T0 + 4)  # seen again: now 192.0.2.2 is the least recently seen
    ping(b, callers[2], T0 + 5)
    view = b.view(T0 + 6)
    assert [i.identity for i in view.identities] == ["um01.contoso.local", "192.0.2.1", "192.0.2.3"]
    assert (view.evicted, view.other) == (1, (("200", 1), ("unsent", 0)))
    for n, caller in enumerate(callers[3:]):
        ping(b, caller, T0 + 7 + n)
    view = b.view(T0 + 10)
    assert [i.identity for i in view.identities] == ["um01.contoso.local", "192.0.2.4", "192.0.2.5"]
    assert view.evicted == 3
    total = sum(i.total for i in view.identities) + sum(count for _, count in view.other)
    assert total == 1 + 2 + 1 + 1 + 1 + 1 + 1  # every OPTIONS still counted somewhere


def test_other_answers_are_kept_after_the_fixed_ones() -> None:
    b = book()
    ping(b, UM, T0, answer="403")
    ping(b, UM, T0 + 1, answer="202")
    view = one(b, T0 + 2, UM.identity)
    assert view.answers == (("200", 0), ("unsent", 0), ("202", 1), ("403", 1))
    assert view.last_good == T0 + 1  # any 2xx is good


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_identities": 0},
        {"at_risk_after": 300, "demoted_after": 300},
        {"at_risk_after": 0},
        {"expect": ["not a host"]},
    ],
)
def test_bad_book_settings(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        book(**kwargs)


def test_state_watch_reports_changes_only() -> None:
    b = book(expect=["um01.contoso.local"], at_risk_after=1, demoted_after=2)
    watch = StateWatch()
    first = watch.changes(b.view(T0))
    assert [(c.identity.identity, c.before, c.identity.state) for c in first] == [
        ("um01.contoso.local", None, "waiting")
    ]
    assert watch.changes(b.view(T0 + 0.5)) == []
    ping(b, UM, T0 + 0.6)
    assert [(c.before, c.identity.state) for c in watch.changes(b.view(T0 + 0.7))] == [("waiting", "active")]
    assert [(c.before, c.identity.state) for c in watch.changes(b.view(T0 + 3))] == [("active", "demoted")]


# -- probes.toml [[listen]] ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    directory = tmp_path_factory.mktemp("inbound-pki")
    ca = DevCA.create("inbound test CA")
    server_cert, server_key = ca.issue(["localhost", "127.0.0.1"]).write(directory, "server")
    client_cert, client_key = ca.issue(["um01.lab.test"]).write(directory, "client")
    return {
        "ca": ca.write_ca(directory, "ca"),
        "server_cert": server_cert,
        "server_key": server_key,
        "client_cert": client_cert,
        "client_key": client_key,
    }


def test_listen_defaults_and_describe() -> None:
    config = parse_config('[[listen]]\naddress = "0.0.0.0:5060"\n', check_files=False)
    (listen,) = config.listen
    assert listen == ListenConfig("tcp:0.0.0.0:5060", "tcp", "0.0.0.0:5060", "0.0.0.0", 5060)
    assert (listen.max_identities, listen.at_risk_after, listen.demoted_after) == (64, 180.0, 300.0)
    assert listen.idle_timeout == 120.0 and listen.id == "listen|tcp|0.0.0.0:5060"
    assert "1 inbound listener" in describe(config).splitlines()[-1]
    assert KNOWN_KEYS["listen"] == LISTEN_KEYS and "listen" in KNOWN_KEYS["top"]


def test_listen_tls_with_client_certificates(pki: dict[str, Path]) -> None:
    text = f"""
[[listen]]
name = "from-teams"
transport = "tls"
address = "[::]:5061"
cert_file = "{pki["server_cert"]}"
key_file = "{pki["server_key"]}"
ca_file = "{pki["ca"]}"
require_client_cert = true
expect = ["SIP.pstnhub.microsoft.com", "sip2.pstnhub.microsoft.com."]
max_identities = 8
at_risk_after = 1
demoted_after = 2.5
idle_timeout = 90
"""
    (listen,) = parse_config(text).listen
    assert (listen.name, listen.transport, listen.host, listen.port) == ("from-teams", "tls", "::", 5061)
    assert listen.expect == ("sip.pstnhub.microsoft.com", "sip2.pstnhub.microsoft.com")
    assert listen.require_client_cert and listen.cert_file == str(pki["server_cert"])
    assert (listen.max_identities, listen.at_risk_after, listen.demoted_after) == (8, 1.0, 2.5)
    lines = describe(parse_config(text)).splitlines()
    header = ["LISTEN", "TRANSPORT", "ADDRESS", "CLIENT CERT", "EXPECT", "AT RISK", "DEMOTED"]
    assert re.split(r"\s{2,}", lines[0]) == header
    assert "required" in lines[1] and "> 2.5s" in lines[1]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("", "probes.toml:1: listen[0]: address is required"),
        ('address = "5060"', 'listen[0].address = "5060": must be "HOST:PORT"'),
        ('address = ":5060"\ntransport = "udp"', 'listen[0].transport = "udp": must be one of "tcp", "tls"'),
        (
            'address = ":5060"\nca_file = "ca.pem"',
            'listen[0].ca_file = "ca.pem": only applies to transport = "tls"',
        ),
        ('address = ":5061"\ntransport = "tls"', 'transport = "tls" needs cert_file and key_file'),
        (
            'address = ":5061"\ntransport = "tls"\ncert_file = "c"\nkey_file = "k"\n'
            "require_client_cert = true",
            "listen[0].require_client_cert = true: needs ca_file",
        ),
        ('address = ":5060"\nexpect = "um01"', 'listen[0].expect = "um01": must be a list of identities'),
        ('address = ":5060"\nexpect = ["um 01"]', '"um 01" is neither a host name (FQDN) nor an IP address'),
        ('address = ":5060"\nexpect = ["UM01", "um01"]', 'lists "um01" twice'),
        (
            'address = ":5060"\nmax_identities = 0',
            "listen[0].max_identities = 0: must be a whole number from 1",
        ),
        (
            'address = ":5060"\nat_risk_after = 300',
            "listen[0].at_risk_after = 300: at_risk_after (300 s) must be less than demoted_after (300 s)",
        ),
        ('address = ":5060"\ndemoted_after = 60', "listen[0].demoted_after = 60: at_risk_after (180 s)"),
        ('address = ":5060"\nexpected = []', "listen[0].expected = []: unknown key (did you mean expect?)"),
        ('address = ":5060"\nidle_timeout = "2m"', 'must be a number of seconds (unquoted: 5, not "5s")'),
    ],
)
def test_listen_errors(body: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(f"[[listen]]\n{body}\n", source="probes.toml", check_files=False)
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)


def test_listen_twice_and_files_checked(tmp_path: Path, pki: dict[str, Path]) -> None:
    twice = '[[listen]]\naddress = ":5060"\n[[listen]]\naddress = ":5060"\n'
    with pytest.raises(ConfigError, match=r"probes.toml:4: listen\[1\].address = \":5060\": is used twice"):
        parse_config(twice, source="probes.toml")
    names = '[[listen]]\naddress = ":5060"\nname = "a"\n[[listen]]\naddress = ":5062"\nname = "a"\n'
    with pytest.raises(ConfigError, match=r'listen\[1\].name = "a": is used twice'):
        parse_config(names, source="probes.toml")
    missing = tmp_path / "missing.pem"
    text = (
        f'[[listen]]\naddress = ":5061"\ntransport = "tls"\ncert_file = "{pki["server_cert"]}"\n'
        f'key_file = "{missing}"\n'
    )
    with pytest.raises(ConfigError) as caught:
        parse_config(text, source="probes.toml")
    assert "listen[0].key_file" in str(caught.value) and str(missing) in str(caught.value)
    assert parse_config(text, check_files=False).listen[0].key_file == str(missing)


def test_configuration_doc_has_the_listen_section() -> None:
    doc = (Path(__file__).resolve().parent.parent / "docs" / "configuration.md").read_text()
    assert "<!-- keys: listen -->" in doc and "docs/inbound.md" in doc.replace(
        "(inbound.md)", "docs/inbound.md"
    )


# -- metrics and the status page -------------------------------------------------------------------------


def inbound_store(now: float) -> ResultStore:
    store = ResultStore(clock=lambda: now)
    b = book(expect=["um02.contoso.local"], at_risk_after=180, demoted_after=300)
    ping(b, UM, T0 + 1, T0 + 61)
    ping(b, Caller("192.0.2.30", "address", "192.0.2.30"), T0 + 2, answer="unsent")
    store.set_inbound([b])
    return store


def test_inbound_metrics() -> None:
    page, raw = collect(inbound_store(T0 + 400))
    listen = "tls:0.0.0.0:5061"
    um = {"listen": listen, "identity": UM.identity}
    assert page.value("umprobe_inbound_options_total", status="200", **um) == 2
    assert page.value("umprobe_inbound_options_total", status="unsent", **um) == 0
    assert page.value("umprobe_inbound_last_seen_timestamp_seconds", **um) == T0 + 61
    assert page.value("umprobe_inbound_last_good_timestamp_seconds", **um) == T0 + 61
    assert page.value("umprobe_inbound_interval_seconds", **um) == 60.0
    assert page.value("umprobe_inbound_silence_seconds", **um) == 339.0
    states = {lab["state"]: v for lab, v in page.get("umprobe_inbound_demotion_state", **um)}
    assert states == {"active": 0.0, "at_risk": 0.0, "demoted": 1.0, "waiting": 0.0}
    assert page.value("umprobe_inbound_expected", **um) == 0.0
    never = {"listen": listen, "identity": "um02.contoso.local"}
    assert page.value("umprobe_inbound_expected", **never) == 1.0
    assert page.value("umprobe_inbound_silence_seconds", **never) == 400.0
    assert page.value("umprobe_inbound_demotion_state", state="demoted", **never) == 1.0
    assert page.get("umprobe_inbound_last_seen_timestamp_seconds", **never) == []  # absent, not 0
    assert (
        page.get("umprobe_inbound_interval_seconds", identity="192.0.2.30") == []
    )  # one OPTIONS: no interval
    assert page.get("umprobe_inbound_last_good_timestamp_seconds", identity="192.0.2.30") == []
    assert page.value("umprobe_inbound_options_total", identity=OTHER, status="200") == 0
    assert page.value("umprobe_inbound_demotion_threshold_seconds", state="at_risk", listen=listen) == 180
    assert page.value("umprobe_inbound_demotion_threshold_seconds", state="demoted", listen=listen) == 300
    assert page.value("umprobe_inbound_identities_evicted_total", listen=listen) == 0
    promtool_check(raw)


def test_inbound_metrics_match_the_docs_and_the_generic_renderer() -> None:
    store = inbound_store(T0 + 100)
    page, _ = collect(store)
    docs = documented("/metrics: inbound OPTIONS")
    inbound = {name for name in page.names() if name.startswith("umprobe_inbound_")}
    assert inbound == set(docs)
    for name, labels, _ in page.samples:
        family = page.family_of(name)
        if family in docs:
            assert set(labels) == docs[family][1], (name, labels)
            assert page.types[family] == docs[family][0]
    registry = CollectorRegistry(auto_describe=False)
    registry.register(UmprobeCollector(store))
    assert render_metrics(registry) == generate_latest(registry)


def test_no_inbound_series_without_listeners() -> None:
    page, _ = collect(ResultStore())
    assert not [name for name in page.names() if name.startswith("umprobe_inbound_")]


def test_status_page_inbound_section() -> None:
    config = parse_config("", check_files=False)
    html = _render_status(inbound_store(T0 + 100), lambda: config)
    section = html[html.index("<h2>Inbound OPTIONS</h2>") :]
    assert "at_risk after 180 s, demoted after 300 s" in section
    row = re.search(r"<tr><td>um01\.contoso\.local</td>.*?</tr>", section)
    assert row is not None
    assert '<td class="ok">active</td><td>39.0 s</td><td>60.00 s</td>' in row.group()
    assert "<td>200: 2</td><td>192.0.2.10</td>" in row.group()
    assert re.search(r"<tr><td>um02\.contoso\.local</td><td>yes</td><td class=\"none\">waiting</td>", section)
    assert "unsent: 1" in section
    assert "Inbound OPTIONS" not in _render_status(ResultStore(), lambda: config)


# -- the responder records callers -----------------------------------------------------------------------


async def options(port: int, *, transport: str = "tcp", tls: TLSClientConfig | None = None) -> None:
    spec = SipProbeSpec(
        host="127.0.0.1",
        port=port,
        transport=transport,  # type: ignore[arg-type]
        tls=tls,
        families=("ipv4",),
        from_domain="um01.lab.test",
    )
    (result,) = await probe(spec, deadline=trio.current_time() + 5, contexts=TLSContextCache())
    assert result.success, result


async def recorded(book: InboundBook, total: int) -> None:
    """Wait (bounded) until `book` holds `total` OPTIONS: the responder records an answer after writing it,
    so the client can read the 200 a moment before the record is made."""
    with trio.fail_after(5):
        while sum(i.total for i in book.view(T0).identities) < total:  # noqa: ASYNC110 - a plain object
            await trio.sleep(0.005)


async def test_responder_records_tcp_callers_by_source_address(nursery: trio.Nursery) -> None:
    b = InboundBook("tcp-test", started_at=T0)
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    await nursery.start(partial(serve_sip_responder, listeners, inbound=b))
    for _ in range(3):
        await options(port)
    await recorded(b, 3)
    (caller,) = b.view(T0).identities
    assert (caller.identity, caller.kind, caller.total) == ("127.0.0.1", "address", 3)
    assert caller.from_host == "um01.lab.test" and caller.interval is not None


async def test_responder_survives_a_client_that_resets_the_connection(nursery: trio.Nursery) -> None:
    """A client that sends half a request and resets the connection (SO_LINGER 0: RST, no FIN) is that
    client's failure: the responder counts an error and keeps answering the next caller."""
    b = InboundBook("reset-test", started_at=T0)
    stats = ResponderStats()
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    await nursery.start(partial(serve_sip_responder, listeners, inbound=b, stats=stats))
    for _ in range(3):
        client = trio.socket.socket()
        await client.connect(("127.0.0.1", port))
        await client.send(b"OPTIONS sip:x SIP/2.0\r\nVia: SIP/2.0/TCP 127.0.0.1:1;branch=z9hG4bKx\r\n")
        await trio.sleep(0.05)  # the responder is now waiting for the rest of the request
        client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        client.close()
    with trio.fail_after(5):
        while stats.errors < 3:  # noqa: ASYNC110 - a plain counter
            await trio.sleep(0.005)
    await options(port)  # the responder still answers
    await recorded(b, 1)


async def test_responder_records_tls_callers_by_certificate(
    nursery: trio.Nursery, pki: dict[str, Path]
) -> None:
    b = InboundBook("tls-test", started_at=T0)
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    context = make_server_context(
        cert_file=str(pki["server_cert"]), key_file=str(pki["server_key"]), ca_file=str(pki["ca"])
    )
    await nursery.start(partial(serve_sip_responder, listeners, tls_context=context, inbound=b))
    mutual = TLSClientConfig(
        ca_file=str(pki["ca"]), cert_file=str(pki["client_cert"]), key_file=str(pki["client_key"])
    )
    await options(port, transport="tls", tls=mutual)
    await options(port, transport="tls", tls=TLSClientConfig(ca_file=str(pki["ca"])))  # no client cert
    await recorded(b, 2)
    got = {(i.identity, i.kind, i.source, i.total) for i in b.view(T0).identities}
    assert got == {("um01.lab.test", "certificate", "127.0.0.1", 1), ("127.0.0.1", "address", "127.0.0.1", 1)}


class _BrokenSend(trio.abc.Stream):
    """A stream that delivers one OPTIONS and then cannot send: the answer is `unsent`."""

    def __init__(self, request: bytes) -> None:
        self._pending = request

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await trio.lowlevel.checkpoint()
        raise ConnectionClosed("connection reset by peer")

    async def wait_send_all_might_not_block(self) -> None:
        await trio.lowlevel.checkpoint()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        await trio.lowlevel.checkpoint()
        data, self._pending = self._pending, b""
        return data

    async def aclose(self) -> None:
        await trio.lowlevel.checkpoint()


async def test_an_answer_that_cannot_be_written_is_recorded_unsent() -> None:
    request = (
        b"OPTIONS sip:127.0.0.1:5060 SIP/2.0\r\nVia: SIP/2.0/TCP 192.0.2.1:5060;branch=z9hG4bK1\r\n"
        b"From: <sip:ping@um01.lab.test>;tag=1\r\nTo: <sip:127.0.0.1>\r\nCall-ID: 1@x\r\nCSeq: 1 OPTIONS\r\n"
        b"Contact: <sip:um01.lab.test:5061;transport=tls>\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
    )
    b = InboundBook("broken", started_at=T0)
    await handle_sip_connection(_BrokenSend(request), server_header="t", inbound=b, clock=lambda: T0 + 1)
    (caller,) = b.view(T0 + 2).identities
    assert caller.answers == (("200", 0), ("unsent", 1))
    assert (caller.last_seen, caller.last_good, caller.contact_host) == (T0 + 1, None, "um01.lab.test")


# -- serve_inbound, the daemon, the peer -----------------------------------------------------------------


async def test_serve_inbound_names_a_port_in_use() -> None:
    holder = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = holder[0].socket.getsockname()[1]
    listen = ListenConfig("busy", "tcp", f"127.0.0.1:{port}", "127.0.0.1", port)
    try:
        with pytest.raises(ListenError, match=rf"^listen busy: cannot listen on 127.0.0.1:{port}: "):
            await serve_inbound(listen, InboundBook("busy", started_at=T0))
    finally:
        await holder[0].aclose()


async def test_watch_inbound_logs_state_changes(
    caplog: pytest.LogCaptureFixture, autojump_clock: Any
) -> None:
    b = InboundBook("watched", started_at=0.0, expect=["um01.lab.test"], at_risk_after=1, demoted_after=2)
    logger = logging.getLogger("umprobe.test_inbound")
    caplog.set_level(logging.INFO, logger="umprobe.test_inbound")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(partial(watch_inbound, b, clock=trio.current_time, every=0.25, logger=logger))
        await trio.sleep(2.6)
        b.record(Caller("um01.lab.test", "certificate", "127.0.0.1"), "200", trio.current_time())
        await trio.sleep(0.5)
        nursery.cancel_scope.cancel()
    moves = [(r.levelname, r.umprobe_fields["state"], r.umprobe_fields["before"]) for r in caplog.records]  # type: ignore[attr-defined]
    assert moves == [
        ("WARNING", "at_risk", "waiting"),
        ("WARNING", "demoted", "at_risk"),
        ("INFO", "active", "demoted"),
    ]


async def test_daemon_serves_listen_sections_and_keeps_them_on_reload(
    caplog: pytest.LogCaptureFixture, pki: dict[str, Path]
) -> None:
    tcp, tls = allocate_port(), allocate_port()
    text = f"""
[[listen]]
address = "127.0.0.1:{tcp}"
expect = ["127.0.0.1", "um09.lab.test"]
[[listen]]
name = "mtls"
transport = "tls"
address = "127.0.0.1:{tls}"
cert_file = "{pki["server_cert"]}"
key_file = "{pki["server_key"]}"
ca_file = "{pki["ca"]}"
require_client_cert = true
"""
    config = parse_config(text, source="inline.toml")
    changed = parse_config(text.replace("um09", "um10"), source="inline.toml")
    loads = iter([changed])
    daemon = Daemon.from_config(config, listen="127.0.0.1:0", load=lambda: next(loads))
    caplog.set_level(logging.INFO, logger="umprobe")
    async with trio.open_nursery() as nursery:
        await nursery.start(daemon.serve)
        await options(tcp)
        mutual = TLSClientConfig(
            ca_file=str(pki["ca"]), cert_file=str(pki["client_cert"]), key_file=str(pki["client_key"])
        )
        await options(tls, transport="tls", tls=mutual)
        with trio.fail_after(5):  # each answer is recorded just after it is written
            while sum(i.total for v in daemon.store.inbound_views() for i in v.identities) < 2:  # noqa: ASYNC110
                await trio.sleep(0.005)
        views = {v.listen: v for v in daemon.store.inbound_views()}
        assert set(views) == {f"tcp:127.0.0.1:{tcp}", "mtls"}
        tcp_view = {i.identity: i for i in views[f"tcp:127.0.0.1:{tcp}"].identities}
        assert tcp_view["127.0.0.1"].total == 1 and tcp_view["um09.lab.test"].last_seen is None
        assert [(i.identity, i.total) for i in views["mtls"].identities] == [("um01.lab.test", 1)]
        assert await daemon.reload("test")
        assert any("[[listen]] changed; restart umprobe" in r.getMessage() for r in caplog.records)
        assert {v.listen for v in daemon.store.inbound_views()} == set(views)  # still the running ones
        nursery.cancel_scope.cancel()


async def test_peer_records_inbound_options(nursery: trio.Nursery) -> None:
    b = InboundBook("peer-sip", started_at=T0)
    config = PeerConfig(secret=b"s" * 16, listen_host="127.0.0.1", sip=(SipListen("tcp", 0),), sip_inbound=b)
    running = await nursery.start(serve_echo_peer, config)
    (_, _, port) = running.sip[0]
    await options(port)
    await recorded(b, 1)
    (caller,) = b.view(T0).identities
    assert (caller.identity, caller.total, caller.from_host) == ("127.0.0.1", 1, "um01.lab.test")


def test_every_state_and_answer_is_documented() -> None:
    doc = (Path(__file__).resolve().parent.parent / "docs" / "inbound.md").read_text()
    for word in (*STATES, *ANSWERS, OTHER, "at_risk_after", "demoted_after", "max_identities", "expect"):
        assert f"`{word}`" in doc, word
    assert (book().at_risk_after, book().demoted_after) == (180.0, 300.0)


async def test_peer_command_logs_who_pings_it(tmp_path: Path) -> None:
    """`umprobe peer --sip tcp:0` as a process: a caller's first OPTIONS is logged as a state change, and at
    stop a summary line per identity (a peer has no /metrics)."""
    secret = tmp_path / "peer.secret"
    secret.write_text("s" * 32)
    secret.chmod(0o600)
    code = "from umprobe.commands.peer_cmd import peer_command; peer_command(prog_name='umprobe peer')"
    args = ["--listen", "127.0.0.1:0", "--secret-file", str(secret), "--log-format", "json", "--sip", "tcp:0"]
    with trio.fail_after(20):
        proc = await trio.lowlevel.open_process([sys.executable, "-c", code, *args], stderr=subprocess.PIPE)
        assert proc.stderr is not None
        buffer = b""

        async def until(text: bytes) -> None:
            nonlocal buffer
            while text not in buffer:
                chunk = await proc.stderr.receive_some(65536)  # type: ignore[union-attr]
                assert chunk, f"the peer exited early: {buffer.decode(errors='replace')}"
                buffer += chunk

        try:
            await until(b"peer listening")
            start = next(json.loads(line) for line in buffer.splitlines() if b"peer listening" in line)
            port = int(start["sip"][0].rpartition(":")[2])
            await options(port)
            await options(port)
            await until(b"inbound OPTIONS state changed")
            proc.send_signal(signal.SIGINT)
            assert await proc.wait() == 0
            await until(b"peer stopped")
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    records = [json.loads(line) for line in buffer.splitlines() if line.startswith(b"{")]
    (change,) = [r for r in records if r["msg"] == "inbound OPTIONS state changed"]
    assert (change["identity"], change["state"], change["listen"]) == ("127.0.0.1", "active", "peer-sip")
    assert change["from_host"] == "um01.lab.test" and "before" not in change  # first time: no before
    (summary,) = [r for r in records if r["msg"] == "inbound OPTIONS summary"]
    assert (summary["identity"], summary["state"], summary["options"]) == ("127.0.0.1", "active", 2)
    assert summary["interval_s"] >= 0
