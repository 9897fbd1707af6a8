"""Tests for umprobe.sip.builder: exact OPTIONS wire layout, IPv6 bracketing, fresh identifiers, errors."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from umprobe._version import __version__
from umprobe.sip import (
    NEED_DATA,
    LocalProtocolError,
    OptionsRequest,
    Request,
    StreamParser,
    build_options,
    format_host,
)


def fixed_tokens(*values: str) -> Callable[[int], str]:
    """A fake `token` that returns `values` in order and checks the requested sizes (8, 4, 8 bytes)."""
    it: Iterator[str] = iter(values)
    sizes = iter([8, 4, 8])

    def token(nbytes: int) -> str:
        assert nbytes == next(sizes)
        return next(it)

    return token


def example_kwargs(**overrides: Any) -> dict[str, Any]:
    kwargs: dict[str, Any] = {
        "target_host": "cas01.contoso.local",
        "target_port": 5060,
        "transport": "tcp",
        "local_host": "192.0.2.10",
        "local_port": 40123,
        "from_domain": "probe01.contoso.local",
        "user_agent": "umprobe/0.1",
        "token": fixed_tokens("8c1f0e6a2d7b4e93", "7a61c2e9", "3b9f2d41c07e4a18"),
    }
    kwargs.update(overrides)
    return kwargs


# PROTOCOL.md §1.1, verbatim.
PROTOCOL_EXAMPLE = (
    b"OPTIONS sip:cas01.contoso.local:5060;transport=tcp SIP/2.0\r\n"
    b"Via: SIP/2.0/TCP 192.0.2.10:40123;branch=z9hG4bK8c1f0e6a2d7b4e93;rport\r\n"
    b"Max-Forwards: 70\r\n"
    b"From: <sip:umprobe@probe01.contoso.local>;tag=7a61c2e9\r\n"
    b"To: <sip:cas01.contoso.local:5060;transport=tcp>\r\n"
    b"Call-ID: 3b9f2d41c07e4a18@probe01.contoso.local\r\n"
    b"CSeq: 1 OPTIONS\r\n"
    b"Accept: application/sdp\r\n"
    b"User-Agent: umprobe/0.1\r\n"
    b"Content-Length: 0\r\n"
    b"\r\n"
)


def parse_request(raw: bytes) -> Request:
    parser = StreamParser()
    parser.feed(raw)
    message = parser.next_message()
    assert isinstance(message, Request)
    assert parser.next_message() is NEED_DATA
    assert parser.buffered == 0
    return message


def test_wire_layout_matches_protocol_example_exactly() -> None:
    request = build_options(contact=False, **example_kwargs())
    assert request.raw == PROTOCOL_EXAMPLE
    assert request == OptionsRequest(
        request_uri="sip:cas01.contoso.local:5060;transport=tcp",
        transport="TCP",
        sent_by_host="192.0.2.10",
        sent_by_port=40123,
        branch="z9hG4bK8c1f0e6a2d7b4e93",
        call_id="3b9f2d41c07e4a18@probe01.contoso.local",
        from_tag="7a61c2e9",
        cseq=1,
        raw=PROTOCOL_EXAMPLE,
    )
    assert request.method == "OPTIONS"


def test_contact_sits_between_cseq_and_accept() -> None:
    raw = build_options(**example_kwargs()).raw
    lines = raw.decode().split("\r\n")
    assert lines[7] == "Contact: <sip:umprobe@192.0.2.10:40123;transport=tcp>"
    assert lines[6] == "CSeq: 1 OPTIONS"
    assert lines[8] == "Accept: application/sdp"


def test_tls_variant() -> None:
    request = build_options(**example_kwargs(transport="tls", target_port=5061, cseq=7))
    text = request.raw.decode()
    assert text.startswith("OPTIONS sip:cas01.contoso.local:5061;transport=tls SIP/2.0\r\n")
    assert "\r\nVia: SIP/2.0/TLS 192.0.2.10:40123;branch=z9hG4bK8c1f0e6a2d7b4e93;rport\r\n" in text
    assert "\r\nTo: <sip:cas01.contoso.local:5061;transport=tls>\r\n" in text
    assert "\r\nContact: <sip:umprobe@192.0.2.10:40123;transport=tls>\r\n" in text
    assert "\r\nCSeq: 7 OPTIONS\r\n" in text
    assert request.transport == "TLS"
    assert request.cseq == 7


def test_sips_scheme_drops_transport_param_and_needs_tls() -> None:
    request = build_options(**example_kwargs(transport="tls", target_port=5061, uri_scheme="sips"))
    text = request.raw.decode()
    assert request.request_uri == "sips:cas01.contoso.local:5061"
    assert text.startswith("OPTIONS sips:cas01.contoso.local:5061 SIP/2.0\r\n")
    assert "\r\nContact: <sips:umprobe@192.0.2.10:40123>\r\n" in text
    with pytest.raises(LocalProtocolError, match="sips"):
        build_options(**example_kwargs(uri_scheme="sips"))


def test_crlf_line_ends_blank_line_and_zero_content_length() -> None:
    raw = build_options(**example_kwargs()).raw
    assert raw.endswith(b"\r\nContent-Length: 0\r\n\r\n")
    assert raw.count(b"\r\n\r\n") == 1
    assert b"\n" not in raw.replace(b"\r\n", b"")
    assert b"\r" not in raw.replace(b"\r\n", b"")


def test_never_alias_or_keep() -> None:
    raw = build_options(**example_kwargs()).raw
    assert b"alias" not in raw
    assert b"keep" not in raw


def test_from_domain_defaults_to_local_host() -> None:
    request = build_options(**example_kwargs(from_domain=None))
    text = request.raw.decode()
    assert "\r\nFrom: <sip:umprobe@192.0.2.10>;tag=7a61c2e9\r\n" in text
    assert request.call_id == "3b9f2d41c07e4a18@192.0.2.10"


@pytest.mark.parametrize("local", ["2001:db8::10", "[2001:db8::10]"])
@pytest.mark.parametrize("target", ["::1", "[::1]"])
def test_ipv6_literals_are_bracketed_everywhere(local: str, target: str) -> None:
    request = build_options(
        **example_kwargs(target_host=target, target_port=5061, local_host=local, from_domain=None)
    )
    text = request.raw.decode()
    assert text.startswith("OPTIONS sip:[::1]:5061;transport=tcp SIP/2.0\r\n")
    assert "\r\nTo: <sip:[::1]:5061;transport=tcp>\r\n" in text
    assert "\r\nVia: SIP/2.0/TCP [2001:db8::10]:40123;branch=" in text
    assert "\r\nFrom: <sip:umprobe@[2001:db8::10]>;tag=" in text
    assert "\r\nContact: <sip:umprobe@[2001:db8::10]:40123;transport=tcp>\r\n" in text
    assert "\r\nCall-ID: 3b9f2d41c07e4a18@[2001:db8::10]\r\n" in text
    assert request.sent_by_host == "2001:db8::10"
    assert request.request_uri == "sip:[::1]:5061;transport=tcp"
    # Our own parser reads it back with the brackets stripped from the sent-by host.
    assert parse_request(request.raw).via_sent_by == ("2001:db8::10", 40123)


def test_ipv6_from_domain_is_bracketed() -> None:
    request = build_options(**example_kwargs(from_domain="2001:db8::1"))
    assert b"\r\nFrom: <sip:umprobe@[2001:db8::1]>;tag=" in request.raw


def test_default_user_agent_carries_the_package_version() -> None:
    kwargs = example_kwargs()
    del kwargs["user_agent"]
    raw = build_options(**kwargs).raw
    assert f"\r\nUser-Agent: umprobe/{__version__}\r\n".encode() in raw


def test_fresh_branch_tag_and_call_id_per_call_with_the_default_token() -> None:
    kwargs = example_kwargs()
    del kwargs["token"]
    requests = [build_options(**kwargs) for _ in range(20)]
    for request in requests:
        assert re.fullmatch(r"z9hG4bK[0-9a-f]{16}", request.branch)
        assert re.fullmatch(r"[0-9a-f]{8}", request.from_tag)
        assert re.fullmatch(r"[0-9a-f]{16}@probe01\.contoso\.local", request.call_id)
    assert len({r.branch for r in requests}) == 20
    assert len({r.from_tag for r in requests}) == 20
    assert len({r.call_id for r in requests}) == 20


def test_injected_token_drives_every_identifier() -> None:
    calls: list[int] = []

    def token(nbytes: int) -> str:
        calls.append(nbytes)
        return "ab" * nbytes

    request = build_options(**example_kwargs(token=token))
    assert calls == [8, 4, 8]
    assert request.branch == "z9hG4bK" + "ab" * 8
    assert request.from_tag == "abababab"
    assert request.call_id == "ab" * 8 + "@probe01.contoso.local"


def test_built_request_parses_back_with_the_same_identifiers() -> None:
    request = build_options(**example_kwargs())
    parsed = parse_request(request.raw)
    assert parsed.method == "OPTIONS"
    assert parsed.uri == request.request_uri
    assert parsed.via_branch == request.branch
    assert parsed.via_sent_by == (request.sent_by_host, request.sent_by_port)
    assert parsed.call_id == request.call_id
    assert parsed.cseq == (request.cseq, "OPTIONS")
    assert parsed.from_tag == request.from_tag
    assert parsed.to_tag is None
    assert parsed.headers.get("Max-Forwards") == "70"
    assert parsed.headers.get("Content-Length") == "0"
    assert parsed.via is not None
    assert parsed.via.has_param("rport")
    assert parsed.via.param("rport") is None


@pytest.mark.parametrize("field", ["target_port", "local_port"])
@pytest.mark.parametrize("bad", [0, -1, 65536, True, "5060", 5060.0])
def test_bad_ports_are_rejected(field: str, bad: object) -> None:
    with pytest.raises(LocalProtocolError, match=field):
        build_options(**example_kwargs(**{field: bad}))


@pytest.mark.parametrize("good", [1, 65535])
def test_port_bounds_are_inclusive(good: int) -> None:
    build_options(**example_kwargs(target_port=good, local_port=good))


@pytest.mark.parametrize("bad", [0, -1, 2**31, 2**40, True, "1"])
def test_bad_cseq_is_rejected(bad: object) -> None:
    with pytest.raises(LocalProtocolError, match="cseq"):
        build_options(**example_kwargs(cseq=bad))


def test_cseq_upper_bound_is_inclusive() -> None:
    assert b"\r\nCSeq: 2147483647 OPTIONS\r\n" in build_options(**example_kwargs(cseq=2**31 - 1)).raw


BAD_HOSTS = [
    "",
    "host name",
    "host\r\nX-Injected: 1",
    "host\n",
    "host\t",
    "<host>",
    "host;transport=udp",
    'ho"st',
    "user@host",
    "host,other",
    "host:5060",
    "fe80::1%eth0",
    "[fe80::1%eth0]",
    "[host.example]",
    "[::1",
    "1:2:3",
    "-leading-dash",
    "h" * 300,
    "höst",
    "\u0661::1",
    "::ffff:\u0661.2.3.4",
    "\u0661\u0662.0.0.1",
]


@pytest.mark.parametrize("field", ["target_host", "local_host", "from_domain"])
@pytest.mark.parametrize("bad", BAD_HOSTS)
def test_bad_hosts_are_rejected(field: str, bad: str) -> None:
    with pytest.raises(LocalProtocolError):
        build_options(**example_kwargs(**{field: bad}))


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("cas01.contoso.local", ("cas01.contoso.local", "cas01.contoso.local")),
        ("cas01.contoso.local.", ("cas01.contoso.local.", "cas01.contoso.local.")),
        ("192.0.2.1", ("192.0.2.1", "192.0.2.1")),
        ("::1", ("::1", "[::1]")),
        ("[::1]", ("::1", "[::1]")),
        ("::ffff:192.0.2.1", ("::ffff:192.0.2.1", "[::ffff:192.0.2.1]")),
    ],
)
def test_format_host(host: str, expected: tuple[str, str]) -> None:
    assert format_host(host) == expected


@pytest.mark.parametrize("bad", ["UDP", "TCP", "sctp", ""])
def test_bad_transport(bad: str) -> None:
    with pytest.raises(LocalProtocolError, match="transport"):
        build_options(**example_kwargs(transport=bad))


def test_bad_uri_scheme() -> None:
    with pytest.raises(LocalProtocolError, match="uri_scheme"):
        build_options(**example_kwargs(uri_scheme="tel"))


@pytest.mark.parametrize("bad", ["", "umprobe\r\nX: 1", "umprobe/\x00", "ümprobe"])
def test_bad_user_agent(bad: str) -> None:
    with pytest.raises(LocalProtocolError, match="user_agent"):
        build_options(**example_kwargs(user_agent=bad))


@pytest.mark.parametrize("bad", ["", "a b", "x\r\n", "<tag>", "a;b"])
def test_token_must_return_a_sip_token(bad: str) -> None:
    with pytest.raises(LocalProtocolError, match="token"):
        build_options(**example_kwargs(token=lambda n: bad))


def test_no_target_port_leaves_it_out_of_the_request_uri() -> None:
    plain = build_options(**example_kwargs(target_port=None))
    assert plain.request_uri == "sip:cas01.contoso.local;transport=tcp"
    assert plain.raw.decode().startswith("OPTIONS sip:cas01.contoso.local;transport=tcp SIP/2.0\r\n")
    assert "\r\nTo: <sip:cas01.contoso.local;transport=tcp>\r\n" in plain.raw.decode()
    secure = build_options(**example_kwargs(transport="tls", target_port=None, uri_scheme="sips"))
    assert secure.request_uri == "sips:cas01.contoso.local"
