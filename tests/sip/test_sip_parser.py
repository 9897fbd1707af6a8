"""Tests for umprobe.sip.parser: RFC 4475 torture messages, framing, caps, chunking invariance."""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

import umprobe.sip.parser as parser_module
from umprobe.sip import (
    NEED_DATA,
    ClientTransaction,
    Event,
    LocalProtocolError,
    OptionsRequest,
    RemoteProtocolError,
    Request,
    Response,
    SipError,
    StreamParser,
    build_options,
)

CORPUS = Path(__file__).resolve().parent.parent / "data" / "rfc4475"
CORPUS_FILES = sorted(CORPUS.glob("*.dat"))
Message = Request | Response
Outcome = tuple[list[Message], str | None]


def drain(parser: StreamParser, out: list[Message]) -> None:
    while True:
        message = parser.next_message()
        if message is NEED_DATA:
            return
        assert isinstance(message, Request | Response)
        out.append(message)


def run(chunks: Iterable[bytes], **caps: int) -> Outcome:
    """Feed `chunks` then EOF, draining after each feed; return the messages and the error code (or None)."""
    parser = StreamParser(**caps)
    out: list[Message] = []
    try:
        for chunk in chunks:
            if chunk:
                parser.feed(chunk)
            drain(parser, out)
        parser.feed(b"")
        drain(parser, out)
    except RemoteProtocolError as exc:
        # A dead parser stays dead, with the same code.
        with pytest.raises(RemoteProtocolError) as again:
            parser.next_message()
        assert again.value.code == exc.code
        return out, exc.code
    assert parser.eof
    assert parser.buffered == 0  # anything but CRLFs left at EOF would have raised truncated
    assert parser.next_message() is NEED_DATA
    return out, None


def whole(data: bytes, **caps: int) -> Outcome:
    return run([data], **caps)


def bytewise(data: bytes, **caps: int) -> Outcome:
    return run([data[i : i + 1] for i in range(len(data))], **caps)


def as_response(data: bytes) -> bytes:
    return b"SIP/2.0 200 OK\r\n" + data.split(b"\r\n", 1)[1]


START_LINE_ERRORS = ("bad_start_line", "bad_version", "bad_status_code")


def corpus(name: str) -> bytes:
    return (CORPUS / f"{name}.dat").read_bytes()


# --- the corpus itself ----------------------------------------------------------------------------


def test_corpus_is_complete_and_attributed() -> None:
    assert len(CORPUS_FILES) == 49
    readme = (CORPUS / "README.md").read_text()
    assert "RFC 4475" in readme
    assert "rtckit/php-sip" in readme
    assert "MIT" in readme


@pytest.mark.parametrize("path", CORPUS_FILES, ids=lambda p: p.stem)
@pytest.mark.parametrize("variant", ["request", "response"])
def test_every_corpus_message_parses_or_fails_cleanly(path: Path, variant: str) -> None:
    data = path.read_bytes()
    if variant == "response":
        data = as_response(data)
    result = whole(data)
    messages, _ = result
    assert len(messages) <= len(data)
    for message in messages:
        assert isinstance(message, Request | Response)
    assert bytewise(data) == result
    # Every corpus head is over 128 bytes: a small cap rejects each one cleanly, whole or byte by byte. A bad
    # start line is judged as soon as it is complete, so it is reported before the cap is reached.
    start_error = result[1] if result[1] in START_LINE_ERRORS and not messages else None
    capped = ([], start_error or "header_too_large")
    assert whole(data, max_header_bytes=128) == capped
    assert bytewise(data, max_header_bytes=128) == capped
    if messages and messages[0].body:
        assert whole(data, max_body_bytes=len(messages[0].body) - 1) == ([], "body_too_large")


# Outcome of feeding each file whole followed by EOF: message kinds in order, then the error code or None.
EXPECTED: dict[str, tuple[list[str], str | None]] = {
    "badaspec": (["OPTIONS"], None),
    "badbranch": (["OPTIONS"], None),
    "baddate": (["INVITE"], None),
    "baddn": (["OPTIONS"], None),
    "badinv01": (["INVITE"], None),
    "badvers": ([], "bad_version"),
    "bcast": (["200"], None),
    "bext01": (["OPTIONS"], None),
    "bigcode": ([], "bad_status_code"),
    "clerr": ([], "truncated"),
    "cparam01": (["REGISTER"], None),
    "cparam02": (["REGISTER"], None),
    "dblreq": (["REGISTER", "INVITE"], "bad_start_line"),
    "esc01": (["INVITE"], None),
    "esc02": (["RE%47IST%45R"], None),
    "escnull": (["REGISTER"], None),
    "escruri": (["INVITE"], None),
    "insuf": (["INVITE"], None),
    "intmeth": (["!interesting-Method0123456789_*+`.%indeed'~"], None),
    "inv2543": ([], "bad_content_length"),
    "invut": (["INVITE"], None),
    "longreq": (["INVITE"], None),
    "ltgtruri": ([], "bad_start_line"),
    "lwsdisp": (["OPTIONS"], None),
    "lwsruri": ([], "bad_start_line"),
    "lwsstart": ([], "bad_start_line"),
    "mcl01": ([], "bad_content_length"),
    "mismatch01": (["OPTIONS"], None),
    "mismatch02": (["NEWMETHOD"], None),
    "mpart01": (["MESSAGE"], None),
    "multi01": (["INVITE"], None),
    "ncl": ([], "bad_content_length"),
    "noreason": (["100"], None),
    "novelsc": (["OPTIONS"], None),
    "quotbal": (["INVITE"], None),
    "regaut01": (["REGISTER"], None),
    "regbadct": (["REGISTER"], None),
    "regescrt": (["REGISTER"], None),
    "scalar02": (["REGISTER"], None),
    "scalarlg": (["503"], None),
    "sdp01": (["INVITE"], None),
    "semiuri": (["OPTIONS"], None),
    "transports": (["OPTIONS"], None),
    "trws": ([], "bad_start_line"),
    "unkscm": (["OPTIONS"], None),
    "unksm2": (["REGISTER"], None),
    "unreason": (["200"], None),
    "wsinv": (["INVITE"], None),
    "zeromf": (["OPTIONS"], None),
}


def kinds(messages: Sequence[Message]) -> list[str]:
    return [m.method if isinstance(m, Request) else str(m.status_code) for m in messages]


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_corpus_expected_outcome(name: str) -> None:
    messages, error = whole(corpus(name))
    assert (kinds(messages), error) == EXPECTED[name]


def test_expected_table_covers_the_corpus() -> None:
    assert sorted(EXPECTED) == [p.stem for p in CORPUS_FILES]


# --- the cases PROTOCOL.md §6 names ---------------------------------------------------------------


def test_clerr_is_truncated_at_eof() -> None:
    parser = StreamParser()
    parser.feed(corpus("clerr"))
    assert parser.next_message() is NEED_DATA  # 9999 declared, 154 present: wait for the rest
    parser.feed(b"")
    with pytest.raises(RemoteProtocolError) as excinfo:
        parser.next_message()
    assert excinfo.value.code == "truncated"


def test_ncl_negative_content_length() -> None:
    assert whole(corpus("ncl")) == ([], "bad_content_length")


def test_mcl01_conflicting_content_lengths() -> None:
    assert whole(corpus("mcl01")) == ([], "bad_content_length")


def test_bigcode_and_badvers() -> None:
    assert whole(corpus("bigcode")) == ([], "bad_status_code")
    assert whole(corpus("badvers")) == ([], "bad_version")


def test_unreason_and_noreason_keep_their_reasons() -> None:
    [unreason], _ = whole(corpus("unreason"))
    assert isinstance(unreason, Response)
    assert unreason.status_code == 200
    assert unreason.reason == "= 2**3 * 5**2 но сто девяносто девять - простое"
    assert len(unreason.body) == 154
    [noreason], _ = whole(corpus("noreason"))
    assert isinstance(noreason, Response)
    assert noreason.status_code == 100
    assert noreason.reason == ""


def test_wsinv_resolves_compact_names_and_folding() -> None:
    [message], error = whole(corpus("wsinv"))
    assert error is None
    assert isinstance(message, Request)
    headers = message.headers
    names = [name for name, _ in headers]
    assert names == [
        "To",
        "From",
        "Max-Forwards",
        "Call-ID",
        "Content-Length",
        "CSeq",
        "Via",
        "Subject",
        "NewFangledHeader",
        "UnknownHeaderWithUnusualValue",
        "Content-Type",
        "Route",
        "Via",
        "Contact",
    ]
    assert headers.get("newfangledheader") == "newfangled value continued newfangled value"
    assert headers.get("s") == ""
    assert headers.get("Route") == "<sip:services.example.com;lr;unknownwith=value;unknown-no-value>"
    assert headers.get("CSeq") == "0009 INVITE"
    assert all("\r" not in value and "\n" not in value for _, value in headers)
    assert message.cseq == (9, "INVITE")
    assert message.via_count == 3
    assert message.via_branch == "390skdjuw"
    assert message.via_sent_by == ("192.0.2.2", None)
    assert [v.split(";")[0].split()[-1] for v in headers.get_all("v")] == [
        "192.0.2.2",
        "spindle.example.com",
        "192.168.255.111",
    ]
    assert message.from_tag == "98asjd8"
    assert message.to_tag == "1918181833n"
    assert headers.get_all("m") == [
        '"Quoted string \\"\\"" <sip:jdrosen@example.com> ; newparam = newvalue ; secondparam ; q = 0.33'
    ]
    assert len(message.body) == 150


def test_dblreq_yields_the_first_message_and_keeps_the_rest() -> None:
    data = corpus("dblreq")
    parser = StreamParser()
    parser.feed(data)
    first = parser.next_message()
    assert isinstance(first, Request)
    assert first.method == "REGISTER"
    assert first.call_id == "dblreq.0ha0isndaksdj99sdfafnl3lk233412"  # from the compact "I:" row
    assert first.body == b""
    assert data.startswith(first.raw)
    assert parser.buffered == len(data) - len(first.raw)
    second = parser.next_message()
    assert isinstance(second, Request)
    assert second.method == "INVITE"
    assert second.headers.get("To") == "sip:joe@example.com"  # the compact "t:" row


def test_bcast_parses_but_the_transaction_rejects_two_vias() -> None:
    [response], error = whole(corpus("bcast"))
    assert error is None
    assert isinstance(response, Response)
    assert response.via_count == 2
    ours = OptionsRequest(
        request_uri="sip:user@example.edu",
        transport="TCP",
        sent_by_host="192.0.2.198",
        sent_by_port=5060,
        branch="z9hG4bK1324923",
        call_id="bcast.0384840201234ksdfak3j2erwedfsASdf",
        from_tag="11141343",
        cseq=35,
        raw=b"",
    )
    transaction = ClientTransaction(ours)
    assert transaction.receive(response) is None
    assert transaction.mismatched == 1
    assert "2 Via" in transaction.mismatch_reasons[0]
    assert transaction.final is None


def test_scalarlg_does_not_crash() -> None:
    [response], error = whole(corpus("scalarlg"))
    assert error is None
    assert isinstance(response, Response)
    assert response.status_code == 503
    assert response.cseq is None
    assert response.retry_after is None
    assert response.via_branch == "z9hG4bKzzxdiwo34sw"


def test_scalar02_huge_cseq_reads_as_none() -> None:
    [request], _ = whole(corpus("scalar02"))
    assert request.cseq is None


# --- framing rules --------------------------------------------------------------------------------

OK = b"SIP/2.0 200 OK\r\nCall-ID: a\r\nContent-Length: 0\r\n\r\n"


def test_leading_crlfs_and_keepalive_pongs_are_skipped() -> None:
    parser = StreamParser()
    parser.feed(b"\r\n")  # an RFC 5626 pong on its own
    assert parser.next_message() is NEED_DATA
    assert parser.buffered == 0
    parser.feed(b"\r\n\r\n\n" + OK + b"\r\n")
    message = parser.next_message()
    assert isinstance(message, Response)
    assert message.raw == OK
    assert parser.next_message() is NEED_DATA
    parser.feed(b"")
    assert parser.next_message() is NEED_DATA
    assert parser.next_message() is NEED_DATA
    assert parser.eof
    assert parser.buffered == 0


def test_eof_on_an_empty_stream_is_not_an_error() -> None:
    parser = StreamParser()
    parser.feed(b"")
    assert parser.eof
    for _ in range(3):
        assert parser.next_message() is NEED_DATA


@pytest.mark.parametrize(
    "data",
    [b"S", b"SIP/2.0 200 OK\r\n", OK[:-1], b"\r", OK + b"SIP/2.0 200", b"SIP/2.0 200 OK\r\nl: 5\r\n\r\nab"],
)
def test_eof_mid_message_is_truncated(data: bytes) -> None:
    messages, error = whole(data)
    assert error == "truncated"
    assert len(messages) == (1 if data.startswith(OK) else 0)


def test_bare_lf_line_ends_are_accepted() -> None:
    [message], error = whole(b"SIP/2.0 200 OK\nVia: SIP/2.0/TCP h;branch=z9hG4bKx\nl: 2\n\nhi")
    assert error is None
    assert isinstance(message, Response)
    assert message.body == b"hi"
    assert message.via_branch == "z9hG4bKx"


def test_bare_cr_inside_the_head_is_rejected() -> None:
    assert whole(b"SIP/2.0 200 OK\r\nX-A: a\rb\r\nl: 0\r\n\r\n") == ([], "bad_header")
    assert whole(b"SIP/2.0 200\rOK\r\nl: 0\r\n\r\n") == ([], "bad_start_line")


def test_body_is_read_exactly_and_the_next_message_follows() -> None:
    data = b"SIP/2.0 180 Ringing\r\nl: 5\r\n\r\nhello" + OK
    messages, error = whole(data)
    assert error is None
    assert [m.status_code for m in messages if isinstance(m, Response)] == [180, 200]
    assert messages[0].body == b"hello"
    assert messages[0].raw + messages[1].raw == data


@pytest.mark.parametrize(
    ("lengths", "outcome"),
    [
        ([b"0", b"0"], None),  # a repeated identical value is accepted
        ([b"0", b"000"], None),  # the same number with leading zeros
        ([b"0", b"1"], "bad_content_length"),
        ([], "bad_content_length"),
        ([b""], "bad_content_length"),
        ([b"-0"], "bad_content_length"),
        ([b"+0"], "bad_content_length"),
        ([b"0x10"], "bad_content_length"),
        ([b"1 2"], "bad_content_length"),
        ([b"\xd9\xa0"], "bad_content_length"),  # ARABIC-INDIC DIGIT ZERO is not a DIGIT
        ([b"65537"], "body_too_large"),
        ([b"9" * 30], "body_too_large"),
        ([b"1" * 5000], "body_too_large"),
    ],
)
def test_content_length_rules(lengths: list[bytes], outcome: str | None) -> None:
    head = b"SIP/2.0 200 OK\r\n" + b"".join(b"Content-Length: " + v + b"\r\n" for v in lengths)
    messages, error = whole(head + b"\r\n")
    assert error == outcome
    assert len(messages) == (1 if outcome is None else 0)


def test_body_cap_is_inclusive() -> None:
    data = b"SIP/2.0 200 OK\r\nl: 10\r\n\r\n0123456789"
    assert whole(data, max_body_bytes=10)[1] is None
    assert whole(data, max_body_bytes=9) == ([], "body_too_large")


@pytest.mark.parametrize(
    ("line", "code"),
    [
        (b"SIP/2.0 4294967301 big", "bad_status_code"),
        (b"SIP/2.0 099 low", "bad_status_code"),
        (b"SIP/2.0 700 high", "bad_status_code"),
        (b"SIP/2.0 20 short", "bad_status_code"),
        (b"SIP/2.0 2000 long", "bad_status_code"),
        (b"SIP/2.0 2x0 x", "bad_status_code"),
        (b"SIP/2.0 OK", "bad_status_code"),
        (b"SIP/2.0  200 OK", "bad_status_code"),
        (b"SIP/2.0 \xd9\xa2\xd9\xa0\xd9\xa0 OK", "bad_status_code"),
        (b"SIP/7.0 200 OK", "bad_version"),
        (b"SIP/1.0 200 OK", "bad_version"),
        (b"SIP/20 200 OK", "bad_start_line"),
        (b"SIP/ 200 OK", "bad_start_line"),
        (b"HTTP/1.1 200 OK", "bad_start_line"),
        (b"OPTIONS sip:a@b SIP/3.0", "bad_version"),
        (b"OPTIONS sip:a@b HTTP/1.1", "bad_start_line"),
        (b"OPTIONS sip:a@b", "bad_start_line"),
        (b"OPTIONS  sip:a@b SIP/2.0", "bad_start_line"),
        (b"OPTIONS sip:a@b SIP/2.0 ", "bad_start_line"),
        (b"OPT(IONS sip:a@b SIP/2.0", "bad_start_line"),
        (b"OPTIONS <sip:a@b> SIP/2.0", "bad_start_line"),
        (b"OPTIONS nocolon SIP/2.0", "bad_start_line"),
        (b"OPTIONS sip:a\x00b SIP/2.0", "bad_start_line"),
        (b"\x00\x01\x02", "bad_start_line"),
    ],
)
def test_bad_start_lines(line: bytes, code: str) -> None:
    assert whole(line + b"\r\nContent-Length: 0\r\n\r\n") == ([], code)


@pytest.mark.parametrize(
    ("line", "status", "reason"),
    [
        (b"SIP/2.0 200 OK", 200, "OK"),
        (b"sip/2.0 200 OK", 200, "OK"),  # "SIP" is case-insensitive (RFC 3261 §7.1)
        (b"SIP/2.0 699 ", 699, ""),
        (b"SIP/2.0 100", 100, ""),  # lenient: no SP before an empty reason
        (b"SIP/2.0 503 Service  Unavailable ", 503, "Service  Unavailable "),
        (b"SIP/2.0 200 \xff\xfe bad utf-8", 200, "\ufffd\ufffd bad utf-8"),
        (b"SIP/2.0 299 unknown 2xx", 299, "unknown 2xx"),
    ],
)
def test_good_status_lines(line: bytes, status: int, reason: str) -> None:
    [message], error = whole(line + b"\r\nContent-Length: 0\r\n\r\n")
    assert error is None
    assert isinstance(message, Response)
    assert (message.status_code, message.reason) == (status, reason)


@pytest.mark.parametrize(
    "header",
    [
        b": no name",
        b"No-Colon",
        b"Bad Name: x",
        b"Bad(Name): x",
        b" leading-fold: x",  # a continuation line before any header
    ],
)
def test_bad_header_lines(header: bytes) -> None:
    assert whole(b"SIP/2.0 200 OK\r\n" + header + b"\r\nContent-Length: 0\r\n\r\n") == ([], "bad_header")


def test_header_name_whitespace_before_colon_and_tab_folding() -> None:
    data = b"SIP/2.0 200 OK\r\nServer \t:\tA\r\n\tB\r\n   C  \r\nContent-Length: 0\r\n\r\n"
    [message], _ = whole(data)
    assert isinstance(message, Response)
    assert message.server == "A B C"


def test_exchange_style_mixed_case_headers() -> None:
    ours = build_options(
        target_host="cas01.contoso.local",
        target_port=5061,
        transport="tls",
        local_host="192.0.2.10",
        local_port=40123,
        token=lambda n: "ab" * n,
    )
    data = (
        "SIP/2.0 200 OK\r\n"
        f"VIA: SIP/2.0/TLS 192.0.2.10:40123;branch={ours.branch};rport=40123;received=198.51.100.7\r\n"
        f"FROM: <sip:umprobe@192.0.2.10>;TAG={ours.from_tag}\r\n"
        "TO: <sip:cas01.contoso.local:5061;transport=tls>;tag=3d0a9f\r\n"
        f"CALL-ID: {ours.call_id}\r\n"
        "CSEQ: 1 OPTIONS\r\n"
        "ALLOW: ACK\r\n"
        "Allow: CANCEL,BYE,INVITE,OPTIONS\r\n"
        "SERVER: RTCC/5.0.0.0 MSExchangeUM/15.01.2507.017\r\n"
        'ms-diagnostics: 15641;reason="ok";source="cas01"\r\n'
        "CONTENT-LENGTH: 0\r\n"
        "\r\n"
    ).encode()
    [message], error = whole(data)
    assert error is None
    assert isinstance(message, Response)
    names = [name for name, _ in message.headers]
    assert names == [
        "Via",
        "From",
        "To",
        "Call-ID",
        "CSeq",
        "Allow",
        "Allow",
        "Server",
        "ms-diagnostics",
        "Content-Length",
    ]
    assert message.headers.get_all("allow") == ["ACK", "CANCEL", "BYE", "INVITE", "OPTIONS"]
    assert message.server == "RTCC/5.0.0.0 MSExchangeUM/15.01.2507.017"
    assert message.ms_diagnostics == '15641;reason="ok";source="cas01"'
    assert message.headers.get("content-length") == "0"
    transaction = ClientTransaction(ours)
    assert transaction.receive(message) is message


def test_compact_forms_in_a_response() -> None:
    data = (
        b"SIP/2.0 200 OK\r\n"
        b"v: SIP/2.0/TCP 192.0.2.10:40123;branch=z9hG4bKabc\r\n"
        b"f: <sip:umprobe@192.0.2.10>;tag=ft\r\n"
        b"t: <sip:x>;tag=tt\r\n"
        b"i: cid@192.0.2.10\r\n"
        b"CSeq: 1 OPTIONS\r\n"
        b"k: path, gruu\r\n"
        b"L: 0\r\n"
        b"\r\n"
    )
    [message], error = whole(data)
    assert error is None
    assert isinstance(message, Response)
    assert [name for name, _ in message.headers] == [
        "Via",
        "From",
        "To",
        "Call-ID",
        "CSeq",
        "Supported",
        "Content-Length",
    ]
    assert message.call_id == "cid@192.0.2.10"
    assert message.via_branch == "z9hG4bKabc"
    assert (message.from_tag, message.to_tag) == ("ft", "tt")
    assert message.headers.get_all("Supported") == ["path", "gruu"]


# --- caps -----------------------------------------------------------------------------------------


def test_header_cap_is_enforced_before_the_blank_line_arrives() -> None:
    parser = StreamParser()  # default cap: 64 KiB
    parser.feed(b"SIP/2.0 200 OK\r\n")
    assert parser.next_message() is NEED_DATA
    sent = 16
    chunk = b"X-Filler: " + b"a" * 1012 + b"\r\n"  # 1 KiB per chunk, never a blank line
    with pytest.raises(RemoteProtocolError) as excinfo:
        while sent < 70 * 1024:
            parser.feed(chunk)
            sent += len(chunk)
            assert parser.next_message() is NEED_DATA
    assert excinfo.value.code == "header_too_large"
    assert 64 * 1024 <= sent < 65 * 1024 + 16
    with pytest.raises(RemoteProtocolError):
        parser.feed(b"\r\n")  # the parser is dead


def test_header_cap_boundary_is_the_same_whole_and_bytewise() -> None:
    head = b"SIP/2.0 200 OK\r\nl: 0\r\n\r\n"
    assert whole(head, max_header_bytes=len(head))[1] is None
    assert bytewise(head, max_header_bytes=len(head))[1] is None
    assert whole(head, max_header_bytes=len(head) - 1) == ([], "header_too_large")
    assert bytewise(head, max_header_bytes=len(head) - 1) == ([], "header_too_large")


def test_a_crlf_split_in_two_never_counts_against_the_header_cap() -> None:
    assert bytewise(b"\r\n" + OK, max_header_bytes=len(OK)) == whole(b"\r\n" + OK, max_header_bytes=len(OK))
    assert bytewise(b"\r\n", max_header_bytes=1) == ([], None)
    assert whole(b"\r", max_header_bytes=1) == ([], "header_too_large")
    assert bytewise(b"\r", max_header_bytes=1) == ([], "header_too_large")


def test_endless_leading_crlfs_do_not_accumulate() -> None:
    parser = StreamParser(max_header_bytes=64)
    for _ in range(1000):
        parser.feed(b"\r\n")
        assert parser.next_message() is NEED_DATA
        assert parser.buffered == 0


def test_header_search_is_not_quadratic(monkeypatch: pytest.MonkeyPatch) -> None:
    scanned = 0
    real = parser_module._BLANK_LINE

    class CountingPattern:
        def search(self, buf: bytearray, pos: int) -> re.Match[bytes] | None:
            nonlocal scanned
            scanned += len(buf) - pos
            return real.search(buf, pos)

    monkeypatch.setattr(parser_module, "_BLANK_LINE", CountingPattern())
    data = b"SIP/2.0 200 OK\r\n" + b"X-Filler: " + b"a" * 20000 + b"\r\nContent-Length: 0\r\n\r\n"
    messages, error = bytewise(data)
    assert error is None
    assert len(messages) == 1
    assert scanned <= 3 * len(data)


# --- misuse ---------------------------------------------------------------------------------------


def test_feed_after_eof_is_local_misuse() -> None:
    parser = StreamParser()
    parser.feed(b"")
    with pytest.raises(LocalProtocolError):
        parser.feed(b"x")
    with pytest.raises(LocalProtocolError):
        parser.feed(b"")


@pytest.mark.parametrize(
    "caps",
    [
        {"max_header_bytes": 0},
        {"max_header_bytes": -1},
        {"max_header_bytes": True},
        {"max_body_bytes": -1},
        {"max_body_bytes": 1.5},
    ],
)
def test_bad_caps_are_local_misuse(caps: dict[str, Any]) -> None:
    with pytest.raises(LocalProtocolError):
        StreamParser(**caps)


def test_dead_parser_keeps_raising_the_same_code() -> None:
    parser = StreamParser()
    parser.feed(b"SIP/7.0 200 OK\r\nl: 0\r\n\r\n" + OK)
    for _ in range(3):
        with pytest.raises(RemoteProtocolError) as excinfo:
            parser.next_message()
        assert excinfo.value.code == "bad_version"
    with pytest.raises(RemoteProtocolError) as excinfo:
        parser.feed(OK)
    assert excinfo.value.code == "bad_version"


def test_need_data_sentinel() -> None:
    assert NEED_DATA is Event.NEED_DATA
    assert StreamParser().next_message() is NEED_DATA


def test_remote_protocol_error_code_is_validated() -> None:
    error = RemoteProtocolError("x", code="truncated")
    assert isinstance(error, SipError)
    assert "truncated" in repr(error)
    with pytest.raises(ValueError, match="unknown"):
        RemoteProtocolError("x", code="no_such_code")


# --- property tests -------------------------------------------------------------------------------


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({min(c, len(data)) for c in cuts})
    bounds = [0, *points, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


def checked_run(chunks: list[bytes], **caps: int) -> Outcome:
    try:
        return run(chunks, **caps)
    except SipError:
        raise
    except Exception as exc:  # pragma: no cover - the failure path of the property
        pytest.fail(f"non-SipError {exc!r} escaped the parser")


SIP_PIECES = st.sampled_from(
    [
        b"\r\n",
        b"\n",
        b"\r",
        b" ",
        b"\t",
        b":",
        b"SIP/2.0 ",
        b"sip/2.0 ",
        b"SIP/7.0 ",
        b"200 OK",
        b"100 ",
        b"4294967301",
        b"OPTIONS sip:a@b SIP/2.0",
        b"Content-Length: ",
        b"l:",
        b"L :",
        b"Via: SIP/2.0/TCP h;branch=z9hG4bK1",
        b"0",
        b"3",
        b"-1",
        b"abc",
        b"\x00",
        b"\xff",
    ]
)
SIP_ISH = st.lists(SIP_PIECES, max_size=40).map(b"".join)
CAPS = st.fixed_dictionaries(
    {
        "max_header_bytes": st.sampled_from([1, 16, 48, 65536]),
        "max_body_bytes": st.sampled_from([0, 2, 65536]),
    }
)


@settings(max_examples=300, deadline=None)
@example(data=b"\r\n", cuts=[1], caps={"max_header_bytes": 1, "max_body_bytes": 0})
@given(data=st.one_of(st.binary(max_size=300), SIP_ISH), cuts=st.lists(st.integers(0, 400)), caps=CAPS)
def test_arbitrary_bytes_chunking_does_not_change_the_result(
    data: bytes, cuts: list[int], caps: dict[str, int]
) -> None:
    expected = checked_run([data], **caps)
    assert len(expected[0]) <= len(data)
    assert checked_run(split(data, cuts), **caps) == expected


HEADER_NAMES = st.sampled_from(
    ["Via", "VIA", "v", "V", "Call-ID", "i", "CALL-ID", "Server", "SERVER", "Allow", "ALLOW", "X-Ext", "s"]
)
HEADER_VALUES = st.text(
    st.characters(codec="utf-8", exclude_characters="\r\n", exclude_categories=["Cs"]), max_size=30
).map(lambda s: s.strip(" \t"))


@st.composite
def valid_response(draw: st.DrawFn) -> tuple[bytes, int, bytes]:
    status = draw(st.integers(100, 699))
    reason = draw(st.text(st.characters(codec="utf-8", exclude_characters="\r\n"), max_size=20))
    body = draw(st.binary(max_size=40))
    length_name = draw(st.sampled_from(["Content-Length", "CONTENT-LENGTH", "l", "L", "content-length"]))
    rows = draw(st.lists(st.tuples(HEADER_NAMES, HEADER_VALUES), max_size=6))
    fold = draw(st.booleans())
    lines = [f"SIP/2.0 {status} {reason}".encode()]
    for name, value in rows:
        line = f"{name}: {value}".encode()
        if fold and value:
            line = f"{name}:\r\n {value}".encode()
        lines.append(line)
    lines.insert(draw(st.integers(1, len(lines))), f"{length_name}: {len(body)}".encode())
    eol = draw(st.sampled_from([b"\r\n", b"\n"]))
    prefix = draw(st.sampled_from([b"", b"\r\n", b"\r\n\r\n"]))
    return prefix + eol.join(lines) + eol + eol + body, status, body


@settings(max_examples=200, deadline=None)
@given(messages=st.lists(valid_response(), min_size=1, max_size=3), cuts=st.lists(st.integers(0, 2000)))
def test_valid_responses_cut_anywhere_parse_like_whole(
    messages: list[tuple[bytes, int, bytes]], cuts: list[int]
) -> None:
    data = b"".join(raw for raw, _, _ in messages)
    expected = checked_run([data])
    parsed, error = expected
    assert error is None
    assert [(m.status_code, m.body) for m in parsed if isinstance(m, Response)] == [
        (status, body) for _, status, body in messages
    ]
    assert checked_run(split(data, cuts)) == expected
    assert checked_run([data[i : i + 1] for i in range(len(data))]) == expected


def test_tls_client_hello_is_rejected_at_its_first_byte() -> None:
    # A TLS client on a plain SIP port: record type 0x16, no CRLF anywhere. Waiting for a header block would
    # idle until the deadline; the parser says no at once.
    parser = StreamParser()
    parser.feed(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")
    with pytest.raises(RemoteProtocolError) as info:
        parser.next_message()
    assert info.value.code == "bad_start_line"
    assert "TLS" in str(info.value)


def test_bad_start_line_is_judged_before_the_header_block_ends() -> None:
    parser = StreamParser()
    parser.feed(b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/html\r\n")
    with pytest.raises(RemoteProtocolError) as info:
        parser.next_message()
    assert info.value.code == "bad_start_line"
