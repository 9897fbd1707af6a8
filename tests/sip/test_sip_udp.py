"""SIP over UDP, sans-I/O: build_options(transport="udp"), parse_datagram, the Timer E/F schedule."""

from __future__ import annotations

import itertools
from collections.abc import Callable

import pytest

from umprobe.sip import (
    ClientTransaction,
    LocalProtocolError,
    OptionsRequest,
    RemoteProtocolError,
    Request,
    Response,
    build_options,
)
from umprobe.sip.datagram import T1, T2, next_timer_e, parse_datagram, retransmit_offsets, timer_f


def _counter_token() -> Callable[[int], str]:
    counter = itertools.count(1)
    return lambda n: f"{next(counter):0{2 * n}x}"


def _request() -> OptionsRequest:
    return build_options(
        target_host="198.18.0.1",
        target_port=5060,
        transport="udp",
        local_host="198.18.0.2",
        local_port=40000,
        token=_counter_token(),
    )


def test_build_options_udp_via_uri_and_contact() -> None:
    req = build_options(
        target_host="198.18.0.1",
        target_port=5060,
        transport="udp",
        local_host="198.18.0.2",
        local_port=40000,
        token=_counter_token(),
    )
    text = req.raw.decode()
    assert req.transport == "UDP"
    assert text.startswith("OPTIONS sip:198.18.0.1:5060;transport=udp SIP/2.0\r\n")
    assert f"\r\nVia: SIP/2.0/UDP 198.18.0.2:40000;branch={req.branch};rport\r\n" in text
    assert "\r\nContact: <sip:umprobe@198.18.0.2:40000;transport=udp>\r\n" in text
    assert text.endswith("\r\nContent-Length: 0\r\n\r\n")
    assert req.branch.startswith("z9hG4bK")


def test_build_options_udp_without_contact_and_sips_refused() -> None:
    req = build_options(
        target_host="198.18.0.1",
        target_port=5060,
        transport="udp",
        local_host="198.18.0.2",
        local_port=1,
        contact=False,
    )
    assert b"Contact:" not in req.raw
    with pytest.raises(LocalProtocolError, match="sips"):
        build_options(
            target_host="h",
            target_port=5060,
            transport="udp",
            local_host="h",
            local_port=1,
            uri_scheme="sips",
        )
    with pytest.raises(LocalProtocolError, match="'udp'"):
        build_options(target_host="h", target_port=5060, transport="sctp", local_host="h", local_port=1)  # type: ignore[arg-type]


def _response(
    req: OptionsRequest, *, branch: str | None = None, code: int = 200, length: str | None = "0"
) -> bytes:
    lines = [
        f"SIP/2.0 {code} OK",
        f"Via: SIP/2.0/UDP 198.18.0.2:40000;branch={branch or req.branch};rport=40000;received=198.18.0.2",
        f"From: <sip:umprobe@198.18.0.2>;tag={req.from_tag}",
        "To: <sip:198.18.0.1:5060;transport=udp>;tag=x",
        f"Call-ID: {req.call_id}",
        f"CSeq: {req.cseq} OPTIONS",
    ]
    if length is not None:
        lines.append(f"Content-Length: {length}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def test_parse_datagram_whole_message_and_transaction_match() -> None:
    req = _request()
    message = parse_datagram(_response(req))
    assert isinstance(message, Response)
    assert message.status_code == 200
    tx = ClientTransaction(req)
    assert tx.receive(message) is message


def test_parse_datagram_without_content_length_takes_the_rest_as_body() -> None:
    data = _response(_request(), length=None) + b"v=0\r\n"
    message = parse_datagram(data)
    assert isinstance(message, Response)
    assert message.body == b"v=0\r\n"


def test_parse_datagram_drops_bytes_beyond_content_length_and_rejects_short_body() -> None:
    req = _request()
    message = parse_datagram(_response(req, length="2") + b"okEXTRA")
    assert isinstance(message, Response)
    assert message.body == b"ok"
    with pytest.raises(RemoteProtocolError) as info:
        parse_datagram(_response(req, length="10") + b"short")
    assert info.value.code == "truncated"


def test_parse_datagram_keepalive_garbage_and_request() -> None:
    assert parse_datagram(b"\r\n\r\n") is None
    with pytest.raises(RemoteProtocolError) as info:
        parse_datagram(b"\x16\x03\x01\x00\x05hello\r\n\r\n")
    assert info.value.code == "bad_start_line"
    with pytest.raises(RemoteProtocolError) as info:
        parse_datagram(b"SIP/2.0 200 OK\r\nVia: x\r\n")
    assert info.value.code == "truncated"
    request = parse_datagram(b"OPTIONS sip:a SIP/2.0\r\nCall-ID: 1\r\n\r\n")
    assert isinstance(request, Request)


def test_wrong_branch_is_a_mismatch() -> None:
    req = _request()
    tx = ClientTransaction(req)
    wrong = parse_datagram(_response(req, branch="z9hG4bKother"))
    assert wrong is not None
    assert tx.receive(wrong) is None
    assert tx.mismatched == 1
    assert "branch" in tx.mismatch_reasons[0]


def test_timer_e_schedule_non_invite() -> None:
    assert (T1, T2) == (0.5, 4.0)
    # 0.5, 1, 2, 4, 4, ... (§17.1.2.2) until Timer F = 64*T1 = 32 s.
    assert retransmit_offsets(100.0) == (0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5)
    assert timer_f(100.0) == 32.0
    assert timer_f(5.0) == 5.0
    assert timer_f(-1.0) == 0.0
    # Capped by the caller's deadline.
    assert retransmit_offsets(5.0) == (0.5, 1.5, 3.5)
    assert retransmit_offsets(0.5) == ()


def test_timer_e_after_provisional_is_t2() -> None:
    assert next_timer_e(0.5, provisional=False) == 1.0
    assert next_timer_e(4.0, provisional=False) == 4.0
    assert next_timer_e(0.5, provisional=True) == 4.0
    assert retransmit_offsets(20.0, provisional_at=0.7) == (0.5, 1.5, 5.5, 9.5, 13.5, 17.5)
    with pytest.raises(LocalProtocolError):
        next_timer_e(1.0, provisional=False, t1=5.0, t2=4.0)
