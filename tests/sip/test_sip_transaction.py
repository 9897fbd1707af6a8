"""Tests for umprobe.sip.transaction: response matching field by field, provisional counting, accept sets."""

from __future__ import annotations

import pytest

from umprobe.sip import (
    DEFAULT_ACCEPT,
    MAX_MISMATCH_REASONS,
    NEED_DATA,
    ClientTransaction,
    OptionsRequest,
    Request,
    Response,
    StreamParser,
    build_options,
    is_healthy,
    parse_accept_status,
)


def ours(local_host: str = "192.0.2.10") -> OptionsRequest:
    tokens = iter(["8c1f0e6a2d7b4e93", "7a61c2e9", "3b9f2d41c07e4a18"])
    return build_options(
        target_host="cas01.contoso.local",
        target_port=5060,
        transport="tcp",
        local_host=local_host,
        local_port=40123,
        from_domain="probe01.contoso.local",
        token=lambda n: next(tokens),
    )


def parse(raw: bytes) -> Response | Request:
    parser = StreamParser()
    parser.feed(raw)
    message = parser.next_message()
    assert message is not NEED_DATA
    return message


def reply(
    request: OptionsRequest,
    status: str = "200 OK",
    *,
    vias: list[str] | None = None,
    cseq: str | None = None,
    call_id: str | None = None,
    from_tag: str | None = None,
) -> Response:
    """A response to `request`, with any field overridden."""
    if vias is None:
        vias = [
            f"SIP/2.0/TCP {request.sent_by_host}:{request.sent_by_port};branch={request.branch};rport=40123"
        ]
    rows = [f"Via: {via}" for via in vias]
    rows += [
        f"From: <sip:umprobe@probe01.contoso.local>;tag={request.from_tag if from_tag is None else from_tag}",
        "To: <sip:cas01.contoso.local:5060;transport=tcp>;tag=srv",
        f"Call-ID: {request.call_id if call_id is None else call_id}",
        f"CSeq: {f'{request.cseq} OPTIONS' if cseq is None else cseq}",
        "Content-Length: 0",
    ]
    message = parse((f"SIP/2.0 {status}\r\n" + "\r\n".join(rows) + "\r\n\r\n").encode())
    assert isinstance(message, Response)
    return message


def test_matching_final_response_is_returned() -> None:
    request = ours()
    transaction = ClientTransaction(request)
    response = reply(request)
    assert transaction.receive(response) is response
    assert transaction.final is response
    assert (transaction.provisional, transaction.mismatched, transaction.mismatch_reasons) == (0, 0, [])


@pytest.mark.parametrize("status", ["403 Forbidden", "503 Service Unavailable", "604 Nope", "302 Moved"])
def test_any_matching_final_is_returned_healthy_or_not(status: str) -> None:
    request = ours()
    transaction = ClientTransaction(request)
    response = reply(request, status)
    assert transaction.receive(response) is response
    assert not is_healthy(response.status_code, DEFAULT_ACCEPT)


def test_provisional_responses_are_counted_then_the_final_is_returned() -> None:
    request = ours()
    transaction = ClientTransaction(request)
    assert transaction.receive(reply(request, "100 Trying")) is None
    assert transaction.receive(reply(request, "183 Session Progress")) is None
    assert transaction.provisional == 2
    assert transaction.final is None
    final = reply(request)
    assert transaction.receive(final) is final
    assert transaction.mismatched == 0


def test_a_second_matching_final_is_absorbed() -> None:
    request = ours()
    transaction = ClientTransaction(request)
    first = reply(request)
    assert transaction.receive(first) is first
    assert transaction.receive(reply(request, "500 Oops")) is None
    assert transaction.duplicates == 1
    assert transaction.final is first


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"vias": []}, "0 Via"),
        (
            {
                "vias": [
                    "SIP/2.0/TCP 192.0.2.10:40123;branch=z9hG4bK8c1f0e6a2d7b4e93",
                    "SIP/2.0/TCP x;branch=y",
                ]
            },
            "2 Via",
        ),
        (
            {"vias": ["SIP/2.0/TCP 192.0.2.10:40123;branch=z9hG4bK8c1f0e6a2d7b4e93, SIP/2.0/TCP x;branch=y"]},
            "2 Via",
        ),
        ({"vias": ["not a via"]}, "unparsable top Via"),
        ({"vias": ["SIP/2.0/TCP 192.0.2.10:40123;branch=z9hG4bKother"]}, "branch"),
        ({"vias": ["SIP/2.0/TCP 192.0.2.10:40123;branch=Z9HG4BK8C1F0E6A2D7B4E93"]}, "branch"),
        ({"vias": ["SIP/2.0/TCP 192.0.2.10:40123"]}, "branch"),
        ({"vias": ["SIP/2.0/TCP 192.0.2.99:40123;branch=z9hG4bK8c1f0e6a2d7b4e93"]}, "sent-by"),
        ({"cseq": "2 OPTIONS"}, "CSeq"),
        ({"cseq": "1 INVITE"}, "CSeq"),
        ({"cseq": "99999999999999999999 OPTIONS"}, "unparsable CSeq"),
        ({"cseq": "garbage"}, "unparsable CSeq"),
        ({"call_id": "someone-else@x"}, "Call-ID"),
        ({"from_tag": "othertag"}, "From tag"),
    ],
)
def test_mismatches(overrides: dict[str, object], reason: str) -> None:
    request = ours()
    transaction = ClientTransaction(request)
    assert transaction.receive(reply(request, **overrides)) is None  # type: ignore[arg-type]
    assert transaction.mismatched == 1
    assert len(transaction.mismatch_reasons) == 1
    assert reason in transaction.mismatch_reasons[0]
    assert transaction.final is None
    assert transaction.provisional == 0


def test_a_mismatched_provisional_is_a_mismatch_not_a_provisional() -> None:
    request = ours()
    transaction = ClientTransaction(request)
    assert transaction.receive(reply(request, "100 Trying", call_id="other")) is None
    assert (transaction.provisional, transaction.mismatched) == (0, 1)


def test_missing_call_id_and_from_tag_are_mismatches() -> None:
    request = ours()
    raw = (
        "SIP/2.0 200 OK\r\n"
        f"Via: SIP/2.0/TCP 192.0.2.10:40123;branch={request.branch}\r\n"
        "CSeq: 1 OPTIONS\r\n"
        "Content-Length: 0\r\n\r\n"
    ).encode()
    transaction = ClientTransaction(request)
    message = parse(raw)
    assert isinstance(message, Response)
    assert transaction.receive(message) is None
    assert "Call-ID" in transaction.mismatch_reasons[0]


def test_a_request_from_the_peer_is_a_mismatch() -> None:
    request = ours()
    incoming = parse(ours().raw)  # e.g. the server pinging us back over the same connection
    assert isinstance(incoming, Request)
    transaction = ClientTransaction(request)
    assert transaction.receive(incoming) is None
    assert transaction.mismatched == 1
    assert "OPTIONS" in transaction.mismatch_reasons[0]
    assert "request" in transaction.mismatch_reasons[0]


def test_sent_by_host_compare_ignores_case_brackets_and_ipv6_spelling() -> None:
    request = ours("2001:db8::10")
    via = f"SIP/2.0/TCP [2001:DB8:0::10]:40123;branch={request.branch}"
    transaction = ClientTransaction(request)
    response = reply(request, vias=[via])
    assert transaction.receive(response) is response

    named = build_options(
        target_host="cas01.contoso.local",
        target_port=5060,
        transport="tcp",
        local_host="Probe01.Contoso.Local",
        local_port=40123,
    )
    transaction = ClientTransaction(named)
    response = reply(named, vias=[f"SIP/2.0/TCP probe01.contoso.local:40123;branch={named.branch}"])
    assert transaction.receive(response) is response


def test_mismatch_reasons_are_capped_but_counted() -> None:
    request = ours()
    transaction = ClientTransaction(request)
    for i in range(MAX_MISMATCH_REASONS + 5):
        assert transaction.receive(reply(request, call_id=f"other{i}")) is None
    assert transaction.mismatched == MAX_MISMATCH_REASONS + 5
    assert len(transaction.mismatch_reasons) == MAX_MISMATCH_REASONS == 10


def test_mismatch_reasons_truncate_peer_text() -> None:
    request = ours()
    transaction = ClientTransaction(request)
    transaction.receive(reply(request, call_id="x" * 5000))
    assert len(transaction.mismatch_reasons[0]) < 100


# --- accept sets ----------------------------------------------------------------------------------


def test_default_accept_is_200_only() -> None:
    assert frozenset({200}) == DEFAULT_ACCEPT
    assert is_healthy(200, DEFAULT_ACCEPT)
    assert not is_healthy(202, DEFAULT_ACCEPT)
    assert not is_healthy(503, DEFAULT_ACCEPT)


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("200", {200}),
        ("200,202", {200, 202}),
        (" 200 , 202 ", {200, 202}),
        ("2xx", set(range(200, 300))),
        ("2XX", set(range(200, 300))),
        ("200-299", set(range(200, 300))),
        ("200 - 204, 403", {200, 201, 202, 203, 204, 403}),
        ("2xx,403,501", set(range(200, 300)) | {403, 501}),
        ("699", {699}),
    ],
)
def test_parse_accept_status(spec: str, expected: set[int]) -> None:
    assert parse_accept_status(spec) == frozenset(expected)


@pytest.mark.parametrize(
    ("spec", "token"),
    [
        ("", "empty"),
        ("  ", "empty"),
        ("200,", "empty token"),
        ("200,,202", "empty token"),
        ("abc", "'abc'"),
        ("200,abc", "'abc'"),
        ("20", "'20'"),
        ("2000", "'2000'"),
        ("700", "'700'"),
        ("100", "'100'"),
        ("1xx", "'1xx'"),
        ("7xx", "'7xx'"),
        ("299-200", "'299-200'"),
        ("100-200", "'100-200'"),
        ("200-700", "'200-700'"),
        ("-200", "'-200'"),
    ],
)
def test_parse_accept_status_errors_name_the_bad_token(spec: str, token: str) -> None:
    with pytest.raises(ValueError, match=token):
        parse_accept_status(spec)
