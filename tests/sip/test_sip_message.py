"""Tests for umprobe.sip.message: header lookup and splitting, field parsers, properties, build_response."""

from __future__ import annotations

import dataclasses

import pytest

from umprobe.sip import (
    NEED_DATA,
    ClientTransaction,
    Headers,
    LocalProtocolError,
    Request,
    Response,
    StreamParser,
    build_options,
    build_response,
    canonical_name,
    parse_cseq,
    parse_header_params,
    parse_retry_after,
    parse_via,
    same_host,
    split_header_list,
)


def parse_one(raw: bytes) -> Response | Request:
    parser = StreamParser()
    parser.feed(raw)
    message = parser.next_message()
    assert message is not NEED_DATA
    assert parser.buffered == 0
    return message


def response_with(*headers: str, status: str = "200 OK") -> Response:
    raw = f"SIP/2.0 {status}\r\n" + "".join(h + "\r\n" for h in headers) + "Content-Length: 0\r\n\r\n"
    message = parse_one(raw.encode())
    assert isinstance(message, Response)
    return message


# --- header names ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "canonical"),
    [
        ("i", "Call-ID"),
        ("I", "Call-ID"),
        ("l", "Content-Length"),
        ("v", "Via"),
        ("f", "From"),
        ("t", "To"),
        ("m", "Contact"),
        ("c", "Content-Type"),
        ("e", "Content-Encoding"),
        ("s", "Subject"),
        ("k", "Supported"),
        ("o", "Event"),
        ("u", "Allow-Events"),
        ("r", "Refer-To"),
        ("b", "Referred-By"),
        ("x", "Session-Expires"),
        ("a", "Accept-Contact"),
        ("j", "Reject-Contact"),
        ("d", "Request-Disposition"),
        ("y", "Identity"),
        ("n", "Identity-Info"),
        ("call-id", "Call-ID"),
        ("CSEQ", "CSeq"),
        ("CONTENT-LENGTH", "Content-Length"),
        ("retry-after", "Retry-After"),
        ("SERVER", "Server"),
        ("MS-Diagnostics", "ms-diagnostics"),
        ("www-authenticate", "WWW-Authenticate"),
        ("X-Custom-Header", "X-Custom-Header"),
        ("q", "q"),
    ],
)
def test_canonical_name(name: str, canonical: str) -> None:
    assert canonical_name(name) == canonical


def test_headers_lookup_is_case_insensitive_and_accepts_compact_names() -> None:
    headers = Headers((("Call-ID", "abc@x"), ("Content-Length", "0"), ("X-Odd", "1")))
    assert headers.get("call-id") == "abc@x"
    assert headers.get("i") == "abc@x"
    assert headers.get("I") == "abc@x"
    assert headers.get("l") == "0"
    assert headers.get("x-odd") == "1"
    assert headers.get("Via") is None
    assert headers.get_all("Via") == []
    assert len(headers) == 3
    assert list(headers) == list(headers.items)


def test_headers_stored_under_compact_names_are_still_found() -> None:
    headers = Headers((("i", "abc@x"), ("V", "SIP/2.0/TCP a;branch=z9hG4bK1")))
    assert headers.get("Call-ID") == "abc@x"
    assert headers.get_all("via") == ["SIP/2.0/TCP a;branch=z9hG4bK1"]
    assert Headers.from_pairs([("i", "abc@x")]).items == (("Call-ID", "abc@x"),)


def test_get_returns_the_first_row() -> None:
    headers = Headers((("Server", "one"), ("server", "two")))
    assert headers.get("SERVER") == "one"
    assert headers.get_all("Server") == ["one", "two"]


def test_list_headers_split_outside_quotes_and_angle_brackets() -> None:
    headers = Headers(
        (
            ("Contact", '"Doe, John" <sip:a@b;x=1,2>;q=0.5, <sip:c@d>'),
            ("Contact", "sip:e@f"),
            ("Allow", "INVITE, ACK,CANCEL , ,OPTIONS"),
            ("Via", "SIP/2.0/TCP a;branch=z9hG4bK1, SIP/2.0/TCP b;branch=z9hG4bK2"),
            ("Via", "SIP/2.0/TCP c;branch=z9hG4bK3"),
        )
    )
    assert headers.get_all("m") == ['"Doe, John" <sip:a@b;x=1,2>;q=0.5', "<sip:c@d>", "sip:e@f"]
    assert headers.get_all("allow") == ["INVITE", "ACK", "CANCEL", "OPTIONS"]
    assert headers.get_all("v") == [
        "SIP/2.0/TCP a;branch=z9hG4bK1",
        "SIP/2.0/TCP b;branch=z9hG4bK2",
        "SIP/2.0/TCP c;branch=z9hG4bK3",
    ]


@pytest.mark.parametrize(
    "name", ["WWW-Authenticate", "Authorization", "Proxy-Authenticate", "Proxy-Authorization"]
)
def test_authentication_headers_are_never_split(name: str) -> None:
    value = 'Digest realm="a, b", nonce="x", algorithm=MD5, qop="auth,auth-int"'
    headers = Headers(((name, value), (name.upper(), "Basic realm=x")))
    assert headers.get_all(name.lower()) == [value, "Basic realm=x"]


def test_non_list_headers_are_not_split() -> None:
    headers = Headers((("Date", "Sat, 13 Nov 2010 23:29:00 GMT"), ("X-Unknown", "a, b")))
    assert headers.get_all("date") == ["Sat, 13 Nov 2010 23:29:00 GMT"]
    assert headers.get_all("x-unknown") == ["a, b"]


def test_split_header_list_handles_escaped_quotes() -> None:
    assert split_header_list(r'"a \" , b" <sip:x>, <sip:y>') == [r'"a \" , b" <sip:x>', "<sip:y>"]
    assert split_header_list(" , ,") == []


# --- field parsers --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("120 (comment);duration=3600", 120),
        ("120", 120),
        ("  0  ", 0),
        ("18000;duration=3600", 18000),
        ("300 (I'm in a meeting)", 300),
        ("0120", 120),
        ("4294967295", 2**32 - 1),
        ("4294967296", None),
        ("949302838503028349304023988", None),
        ("9" * 5000, None),
        ("-5", None),
        ("abc", None),
        ("", None),
        ("12 34", None),
        (None, None),
    ],
)
def test_parse_retry_after(value: str | None, expected: int | None) -> None:
    assert parse_retry_after(value) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("1 OPTIONS", (1, "OPTIONS")),
        ("0009 INVITE", (9, "INVITE")),
        ("  35   INVITE ", (35, "INVITE")),
        ("2147483647 OPTIONS", (2**31 - 1, "OPTIONS")),
        ("2147483648 OPTIONS", None),
        ("9292394834772304023312 OPTIONS", None),
        ("1" * 5000 + " OPTIONS", None),
        ("-1 OPTIONS", None),
        ("OPTIONS", None),
        ("1", None),
        ("1 OPT IONS", None),
        (None, None),
    ],
)
def test_parse_cseq(value: str | None, expected: tuple[int, str] | None) -> None:
    assert parse_cseq(value) == expected


def test_parse_via_plain_and_with_params() -> None:
    via = parse_via("SIP/2.0/TCP 192.0.2.10:40123;branch=z9hG4bKabc;rport=40123;received=198.51.100.7")
    assert via is not None
    assert via.protocol == "SIP/2.0"
    assert via.transport == "TCP"
    assert via.host == "192.0.2.10"
    assert via.port == 40123
    assert via.param("branch") == "z9hG4bKabc"
    assert via.param("RPORT") == "40123"
    assert via.param("received") == "198.51.100.7"
    assert via.param("maddr") is None
    assert not via.has_param("maddr")


def test_parse_via_ipv6_whitespace_and_valueless_params() -> None:
    via = parse_via("SIP / 2.0 / tls   [2001:db8::9:1] : 5061 ; branch = z9hG4bKx ; rport")
    assert via is not None
    assert via.transport == "TLS"
    assert via.host == "2001:db8::9:1"
    assert via.port == 5061
    assert via.param("branch") == "z9hG4bKx"
    assert via.has_param("rport")
    assert via.param("rport") is None


@pytest.mark.parametrize(
    "value",
    ["", "SIP/2.0/TCP", "garbage", "SIP/2.0/TCP host:99999", "SIP/2.0/TCP host:0", "SIP/2.0/TCP []:5060"],
)
def test_parse_via_rejects(value: str) -> None:
    assert parse_via(value) is None


def test_parse_header_params() -> None:
    assert parse_header_params('"A;B" <sip:a@b;tag=no>;tag=yes;x') == {"tag": "yes", "x": None}
    assert parse_header_params("sip:a@b;tag=abc") == {"tag": "abc"}
    assert parse_header_params("sip:a@b ;  TAG  =  abc ") == {"tag": "abc"}
    assert parse_header_params("<sip:a@b>") == {}
    assert parse_header_params("<sip:a@b") == {}
    assert parse_header_params("sip:a@b;tag=1;tag=2") == {"tag": "1"}


@pytest.mark.parametrize(
    ("a", "b", "same"),
    [
        ("Host.Example", "host.example", True),
        ("::1", "[::1]", True),
        ("[2001:DB8::1]", "2001:db8:0:0::1", True),
        ("192.0.2.1", "192.0.2.01", False),
        ("192.0.2.1", "192.0.2.2", False),
        ("a.example", "b.example", False),
    ],
)
def test_same_host(a: str, b: str, same: bool) -> None:
    assert same_host(a, b) is same


# --- message properties ---------------------------------------------------------------------------


def test_response_properties() -> None:
    response = response_with(
        "Via: SIP/2.0/TLS [2001:db8::10]:40123;branch=z9hG4bKabc;rport=40123",
        'From: "Probe" <sip:umprobe@probe.example>;tag=f1',
        "To: <sip:cas01.example:5061;transport=tls>;tag=t1",
        "Call-ID: c1@probe.example",
        "CSeq: 1 OPTIONS",
        "Server: RTCC/5.0.0.0 MSExchangeUM/15.01.2507.017",
        'ms-diagnostics: 15641;reason="Call rejected";source="cas01"',
        "Retry-After: 120 (busy);duration=3600",
        status="503 Service Unavailable",
    )
    assert response.status_code == 503
    assert response.reason == "Service Unavailable"
    assert response.is_final
    assert response.call_id == "c1@probe.example"
    assert response.cseq == (1, "OPTIONS")
    assert response.top_via == "SIP/2.0/TLS [2001:db8::10]:40123;branch=z9hG4bKabc;rport=40123"
    assert response.via_count == 1
    assert response.via_branch == "z9hG4bKabc"
    assert response.via_sent_by == ("2001:db8::10", 40123)
    assert response.from_tag == "f1"
    assert response.to_tag == "t1"
    assert response.server == "RTCC/5.0.0.0 MSExchangeUM/15.01.2507.017"
    assert response.ms_diagnostics == '15641;reason="Call rejected";source="cas01"'
    assert response.retry_after == 120


def test_absent_fields_read_as_none() -> None:
    response = response_with(status="100 Trying")
    assert not response.is_final
    assert response.call_id is None
    assert response.cseq is None
    assert response.top_via is None
    assert response.via_count == 0
    assert response.via_branch is None
    assert response.via_sent_by is None
    assert response.from_tag is None
    assert response.to_tag is None
    assert response.server is None
    assert response.ms_diagnostics is None
    assert response.retry_after is None


def test_unparsable_via_reads_as_none() -> None:
    response = response_with("Via: nonsense")
    assert response.top_via == "nonsense"
    assert response.via_count == 1
    assert response.via_branch is None
    assert response.via_sent_by is None


def test_values_are_frozen_and_slotted() -> None:
    response = response_with()
    with pytest.raises(dataclasses.FrozenInstanceError):
        response.status_code = 500  # type: ignore[misc]
    for value in (response, response.headers):
        assert not hasattr(value, "__dict__")


# --- build_response -------------------------------------------------------------------------------

REQUEST_BYTES = (
    b"OPTIONS sip:probe.example:5060;transport=tcp SIP/2.0\r\n"
    b"Via: SIP/2.0/TCP 192.0.2.20:5060;branch=z9hG4bKaaa;rport\r\n"
    b"v: SIP/2.0/TCP 192.0.2.30:5060;branch=z9hG4bKbbb, SIP/2.0/TCP 192.0.2.40;branch=z9hG4bKccc\r\n"
    b"Max-Forwards: 70\r\n"
    b"From: <sip:MSExchangeUM@um01.example>;tag=fromtag\r\n"
    b"To: <sip:probe.example:5060;transport=tcp>\r\n"
    b"i: 1234@um01.example\r\n"
    b"CSeq: 42 OPTIONS\r\n"
    b"Content-Length: 0\r\n"
    b"\r\n"
)


def request() -> Request:
    message = parse_one(REQUEST_BYTES)
    assert isinstance(message, Request)
    return message


def test_build_response_exact_bytes() -> None:
    raw = build_response(
        request(),
        200,
        "OK",
        to_tag="totag",
        server="umprobe/0.1",
        extra_headers=[("Allow", "OPTIONS"), ("accept", "application/sdp")],
    )
    assert raw == (
        b"SIP/2.0 200 OK\r\n"
        b"Via: SIP/2.0/TCP 192.0.2.20:5060;branch=z9hG4bKaaa;rport\r\n"
        b"Via: SIP/2.0/TCP 192.0.2.30:5060;branch=z9hG4bKbbb, SIP/2.0/TCP 192.0.2.40;branch=z9hG4bKccc\r\n"
        b"From: <sip:MSExchangeUM@um01.example>;tag=fromtag\r\n"
        b"To: <sip:probe.example:5060;transport=tcp>;tag=totag\r\n"
        b"Call-ID: 1234@um01.example\r\n"
        b"CSeq: 42 OPTIONS\r\n"
        b"Server: umprobe/0.1\r\n"
        b"Allow: OPTIONS\r\n"
        b"Accept: application/sdp\r\n"
        b"Content-Length: 0\r\n"
        b"\r\n"
    )
    parsed = parse_one(raw)
    assert isinstance(parsed, Response)
    assert parsed.via_count == 3
    assert parsed.to_tag == "totag"
    assert parsed.cseq == (42, "OPTIONS")


def test_build_response_keeps_an_existing_to_tag_and_skips_it_on_100() -> None:
    tagged = parse_one(REQUEST_BYTES.replace(b"transport=tcp>\r\n", b"transport=tcp>;tag=dialog\r\n"))
    assert isinstance(tagged, Request)
    raw = build_response(tagged, 200, "OK", to_tag="new")
    assert b"\r\nTo: <sip:probe.example:5060;transport=tcp>;tag=dialog\r\n" in raw
    raw = build_response(request(), 100, "Trying", to_tag="new")
    assert b"\r\nTo: <sip:probe.example:5060;transport=tcp>\r\n" in raw


def test_build_response_stamps_received_and_rport() -> None:
    raw = build_response(request(), 200, "OK", to_tag="t", received_from=("198.51.100.7", 40999))
    assert raw.split(b"\r\n")[1] == (
        b"Via: SIP/2.0/TCP 192.0.2.20:5060;branch=z9hG4bKaaa;rport=40999;received=198.51.100.7"
    )
    no_rport = parse_one(REQUEST_BYTES.replace(b";rport\r\n", b"\r\n"))
    assert isinstance(no_rport, Request)
    same_source = build_response(no_rport, 200, "OK", to_tag="t", received_from=("192.0.2.20", 5060))
    assert same_source.split(b"\r\n")[1] == b"Via: SIP/2.0/TCP 192.0.2.20:5060;branch=z9hG4bKaaa"
    other = build_response(no_rport, 200, "OK", to_tag="t", received_from=("198.51.100.7", 1))
    assert other.split(b"\r\n")[1].endswith(b";branch=z9hG4bKaaa;received=198.51.100.7")


def test_build_response_only_stamps_the_first_value_of_a_combined_row() -> None:
    combined = parse_one(
        REQUEST_BYTES.replace(
            b"Via: SIP/2.0/TCP 192.0.2.20:5060;branch=z9hG4bKaaa;rport\r\n",
            b"Via: SIP/2.0/TCP 192.0.2.20:5060;branch=z9hG4bKaaa;rport , "
            b"SIP/2.0/TCP x;branch=z9hG4bKx;rport\r\n",
        )
    )
    assert isinstance(combined, Request)
    raw = build_response(combined, 200, "OK", to_tag="t", received_from=("192.0.2.20", 7))
    assert raw.split(b"\r\n")[1] == (
        b"Via: SIP/2.0/TCP 192.0.2.20:5060;branch=z9hG4bKaaa;rport=7;received=192.0.2.20, "
        b"SIP/2.0/TCP x;branch=z9hG4bKx;rport"
    )


@pytest.mark.parametrize(
    ("args", "match"),
    [
        ({"status_code": 99}, "status_code"),
        ({"status_code": 700}, "status_code"),
        ({"status_code": True}, "status_code"),
        ({"reason": "OK\r\nX: 1"}, "reason"),
        ({"reason": "\ud800"}, "UTF-8"),
        ({"to_tag": ""}, "to_tag"),
        ({"to_tag": "a b"}, "to_tag"),
        ({"server": "x\ny"}, "Server"),
        ({"extra_headers": [("Bad Name", "v")]}, "name"),
        ({"extra_headers": [("X-Ok", "v\r\nInjected: 1")]}, "X-Ok"),
        ({"extra_headers": [("l", "5")]}, "Content-Length"),
    ],
)
def test_build_response_rejects_misuse(args: dict[str, object], match: str) -> None:
    kwargs: dict[str, object] = {"status_code": 200, "reason": "OK", "to_tag": "t"}
    kwargs.update(args)
    with pytest.raises(LocalProtocolError, match=match):
        build_response(request(), **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("missing", [b"Via", b"v", b"From", b"To", b"i", b"CSeq"])
def test_build_response_refuses_requests_without_mandatory_headers(missing: bytes) -> None:
    lines = [line for line in REQUEST_BYTES.split(b"\r\n") if not line.startswith(missing + b":")]
    if missing in (b"Via", b"v"):
        lines = [line for line in lines if not line.startswith((b"Via:", b"v:"))]
    message = parse_one(b"\r\n".join(lines))
    assert isinstance(message, Request)
    with pytest.raises(LocalProtocolError, match="cannot answer"):
        build_response(message, 200, "OK", to_tag="t")


def test_options_round_trip_through_build_response_matches_the_transaction() -> None:
    ours = build_options(
        target_host="um01.example",
        target_port=5061,
        transport="tls",
        local_host="2001:db8::10",
        local_port=40123,
        from_domain="probe.example",
    )
    incoming = parse_one(ours.raw)
    assert isinstance(incoming, Request)
    answer = parse_one(
        build_response(incoming, 200, "OK", to_tag="srv1", received_from=("2001:db8::10", 40123))
    )
    assert isinstance(answer, Response)
    transaction = ClientTransaction(ours)
    assert transaction.receive(answer) is answer
    assert transaction.final is answer
    assert transaction.mismatched == 0
