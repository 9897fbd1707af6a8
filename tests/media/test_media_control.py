"""Tests for umprobe.media.control: JSON lines, hello, the control MAC, `open` validation (docs/rtp.md)."""

from __future__ import annotations

import hashlib
import hmac
import json

import pytest

from umprobe.media import (
    MAX_LINE,
    ControlError,
    ControlSigner,
    LineBuffer,
    OpenRequest,
    canonical,
    control_mac,
    make_hello,
    new_nonce,
    parse_hello,
    parse_message,
    parse_open_request,
)

SECRET = b"a shared secret of at least 16 bytes"
PEER_NONCE = "0123456789abcdef0123456789abcdef"
CLIENT_NONCE = "fedcba9876543210fedcba9876543210"
OPEN = {"type": "open", "client_nonce": CLIENT_NONCE, "ports": [20000, 20480], "rtcp": True, "ttl": 10}
RANGE = (1024, 65535)


def control_error(call: object, *args: object, **kwargs: object) -> str:
    with pytest.raises(ControlError) as info:
        call(*args, **kwargs)  # type: ignore[operator]
    return info.value.code


def pair() -> tuple[ControlSigner, ControlSigner]:
    client = ControlSigner(SECRET, PEER_NONCE, CLIENT_NONCE, role="client")
    peer = ControlSigner(SECRET, PEER_NONCE, None, role="peer")
    return client, peer


# --- MAC ----------------------------------------------------------------------------------------------------


def test_mac_known_answer() -> None:
    # Computed here from the recipe in docs/rtp.md, independently of umprobe.media.control.
    canonical_text = (
        '{"client_nonce":"fedcba9876543210fedcba9876543210","ports":[20000,20480],"rtcp":true,"ttl":10,'
        '"type":"open"}'
    )
    signed = (
        b"umprobe-ctl-v1|0123456789abcdef0123456789abcdef|fedcba9876543210fedcba9876543210|c2p|0|"
        + canonical_text.encode()
    )
    expected = hmac.new(SECRET, signed, hashlib.sha256).hexdigest()
    assert canonical(OPEN) == canonical_text.encode()
    assert control_mac(SECRET, PEER_NONCE, CLIENT_NONCE, "c2p", 0, OPEN) == expected
    assert control_mac(SECRET, PEER_NONCE, CLIENT_NONCE, "c2p", 0, {**OPEN, "mac": "ignored"}) == expected
    line = ControlSigner(SECRET, PEER_NONCE, CLIENT_NONCE, role="client").seal(OPEN)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert json.loads(line) == {**OPEN, "mac": expected}
    # The second c2p message uses n=1; a p2c message the other direction.
    second = hmac.new(SECRET, signed.replace(b"|c2p|0|", b"|c2p|1|"), hashlib.sha256).hexdigest()
    assert control_mac(SECRET, PEER_NONCE, CLIENT_NONCE, "c2p", 1, OPEN) == second
    reverse = hmac.new(SECRET, signed.replace(b"|c2p|0|", b"|p2c|0|"), hashlib.sha256).hexdigest()
    assert control_mac(SECRET, PEER_NONCE, CLIENT_NONCE, "p2c", 0, OPEN) == reverse


def test_canonical_escapes_non_ascii_and_sorts() -> None:
    assert canonical({"b": 1, "a": "é", "mac": "x"}) == b'{"a":"\\u00e9","b":1}'
    with pytest.raises(ValueError):
        canonical({"a": float("nan")})
    with pytest.raises(ValueError):
        canonical({"a": object()})


def test_a_conversation_in_both_directions() -> None:
    client, peer = pair()
    assert peer.open(client.seal(OPEN)) == OPEN
    assert peer.client_nonce == CLIENT_NONCE  # learnt from the first, verified message
    opened = {"type": "opened", "session": "00" * 8, "ssid": 7, "ttl": 10, "ports": {"open": [20000]}}
    assert client.open(peer.seal(opened)) == opened
    assert peer.open(client.seal({"type": "stats"})) == {"type": "stats"}
    assert client.open(peer.seal({"type": "stats", "ports": {}})) == {"type": "stats", "ports": {}}
    assert (client.sent, client.received, peer.sent, peer.received) == (2, 2, 2, 2)


def test_replayed_line_fails() -> None:
    client, peer = pair()
    line = client.seal(OPEN)
    peer.open(line)
    assert control_error(peer.open, line) == "auth"
    # The failure did not advance the counter: the genuine next message still opens.
    assert peer.open(client.seal({"type": "stats"})) == {"type": "stats"}


def test_wrong_direction_fails() -> None:
    client, peer = pair()
    line = client.seal(OPEN)
    assert control_error(client.open, line) == "auth"  # our own line reflected back to us
    peer.open(line)
    reply = peer.seal({"type": "opened"})
    assert control_error(peer.open, reply) == "auth"


def test_tampered_fields_fail() -> None:
    client, peer = pair()
    message = json.loads(client.seal(OPEN))
    for key, value in [("ttl", 11), ("rtcp", False), ("ports", [20000]), ("extra", 1)]:
        tampered = {**message, key: value}
        assert control_error(peer.open, json.dumps(tampered).encode()) == "auth", key
    assert control_error(peer.open, json.dumps({**message, "client_nonce": "a" * 32}).encode()) == "auth"
    assert peer.client_nonce is None  # nothing was learnt from the failed attempts
    assert peer.open(json.dumps(message).encode()) == OPEN  # key order and spacing do not matter


@pytest.mark.parametrize("mac", [None, 5, "", "zz" * 32, "AB" * 32, "ab" * 31, "\ud800" * 64])
def test_missing_or_malformed_mac_is_auth(mac: object) -> None:
    client = ControlSigner(SECRET, PEER_NONCE, CLIENT_NONCE, role="client")
    message: dict[str, object] = {"type": "opened"}
    if mac is not None:
        message["mac"] = mac
    assert control_error(client.open, json.dumps(message).encode()) == "auth"


def test_other_secret_or_nonce_fails() -> None:
    line = ControlSigner(SECRET, PEER_NONCE, CLIENT_NONCE, role="client").seal(OPEN)
    assert control_error(ControlSigner(SECRET + b"!", PEER_NONCE, None, role="peer").open, line) == "auth"
    assert control_error(ControlSigner(SECRET, CLIENT_NONCE, None, role="peer").open, line) == "auth"


def test_peer_needs_a_client_nonce_in_the_first_message() -> None:
    _, peer = pair()
    line = ControlSigner(SECRET, PEER_NONCE, CLIENT_NONCE, role="client").seal({"type": "stats"})
    assert control_error(peer.open, line) == "protocol"
    with pytest.raises(ValueError, match="client"):
        peer.seal({"type": "opened"})


def test_signer_misuse_is_value_error() -> None:
    client, _ = pair()
    with pytest.raises(ValueError, match="mac"):
        client.seal({"type": "x", "mac": "y"})
    with pytest.raises(ValueError, match="limit"):
        client.seal({"type": "x", "pad": "p" * MAX_LINE})
    assert client.sent == 0
    with pytest.raises(ValueError, match="client_nonce"):
        ControlSigner(SECRET, PEER_NONCE, None, role="client")
    with pytest.raises(ValueError, match="peer_nonce"):
        ControlSigner(SECRET, "ABC", CLIENT_NONCE, role="client")
    with pytest.raises(ValueError, match="role"):
        ControlSigner(SECRET, PEER_NONCE, CLIENT_NONCE, role="both")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="direction"):
        control_mac(SECRET, PEER_NONCE, CLIENT_NONCE, "x2y", 0, {})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="n must"):
        control_mac(SECRET, PEER_NONCE, CLIENT_NONCE, "c2p", -1, {})


@pytest.mark.parametrize(
    "line",
    [
        b"",
        b"not json",
        b"[1, 2]",
        b'"string"',
        b"\xff\xfe{}",
        '{"a": "é"}'.encode("utf-16"),
        b'{"a": NaN}',
        b'{"a": Infinity}',
        b'{"a": 1e400}',
        b'{"a": 1, "a": 2}',
        b"[" * 3000 + b"]" * 3000,
        b'{"a": 1}\n{"b": 2}',
    ],
)
def test_format_errors(line: bytes) -> None:
    if len(line) > MAX_LINE:
        line = line[:2048] + line[-2048:]
    client, _ = pair()
    assert control_error(client.open, line) == "format"
    assert control_error(parse_message, line) == "format"


def test_too_long_lines() -> None:
    client, _ = pair()
    big = b'{"a":"' + b"x" * MAX_LINE + b'"}'
    assert control_error(client.open, big) == "too_long"
    assert control_error(parse_hello, big + b"\n") == "too_long"
    assert parse_message(b'{"a":"' + b"x" * (MAX_LINE - 8) + b'"}\n') == {"a": "x" * (MAX_LINE - 8)}


# --- LineBuffer ---------------------------------------------------------------------------------------------


def test_line_buffer_splits_lines_and_keeps_partial_ones() -> None:
    buffer = LineBuffer()
    assert buffer.next_line() is None
    buffer.feed(b'{"a":1}\n{"b"')
    assert buffer.next_line() == b'{"a":1}'
    assert buffer.next_line() is None
    assert buffer.buffered == 4
    buffer.feed(b":2}\r\n\n")
    assert buffer.next_line() == b'{"b":2}\r'
    assert buffer.next_line() == b""
    assert buffer.next_line() is None
    assert buffer.buffered == 0


def test_line_buffer_byte_by_byte_equals_whole() -> None:
    stream = b"".join(f'{{"n":{i}}}\n'.encode() for i in range(200)) + b"tail"
    whole, single = LineBuffer(), LineBuffer()
    whole.feed(stream)
    lines_whole = list(iter(whole.next_line, None))
    lines_single: list[bytes] = []
    for i in range(len(stream)):
        single.feed(stream[i : i + 1])
        lines_single.extend(iter(single.next_line, None))
    assert lines_whole == lines_single == [f'{{"n":{i}}}'.encode() for i in range(200)]
    assert whole.buffered == single.buffered == 4


def test_line_buffer_cap() -> None:
    exact = LineBuffer()
    exact.feed(b"x" * MAX_LINE)  # MAX_LINE bytes without a newline are still allowed
    exact.feed(b"\n")
    assert exact.next_line() == b"x" * MAX_LINE

    over = LineBuffer()
    over.feed(b"ok\n" + b"x" * MAX_LINE)
    assert control_error(over.feed, b"x") == "too_long"
    assert control_error(over.next_line) == "too_long"  # the buffer stays dead
    assert control_error(over.feed, b"\n") == "too_long"

    complete = LineBuffer()
    complete.feed(b"x" * (MAX_LINE + 1) + b"\nnext\n")  # a whole long line in one chunk
    assert control_error(complete.next_line) == "too_long"

    small = LineBuffer(max_line=4)
    small.feed(b"abcd\nabcd")
    assert small.next_line() == b"abcd"
    assert control_error(small.feed, b"e") == "too_long"
    with pytest.raises(ValueError):
        LineBuffer(max_line=0)


def test_line_buffer_is_linear_in_the_bytes_fed() -> None:
    # 1 MiB of newline-free data in 1-byte chunks would be quadratic if each feed rescanned the buffer;
    # a large cap keeps it legal. No timing: this must merely finish quickly.
    buffer = LineBuffer(max_line=1 << 21)
    for _ in range(1 << 16):
        buffer.feed(b"0123456789abcdef")
        assert buffer.next_line() is None
    buffer.feed(b"\n")
    line = buffer.next_line()
    assert line is not None and len(line) == 1 << 20


# --- hello --------------------------------------------------------------------------------------------------


def test_hello_round_trip() -> None:
    line = make_hello(PEER_NONCE, "umprobe-peer/1.2.3")
    assert json.loads(line) == {"v": 1, "type": "hello", "nonce": PEER_NONCE, "peer": "umprobe-peer/1.2.3"}
    assert line.endswith(b"\n")
    assert parse_hello(line) == (PEER_NONCE, "umprobe-peer/1.2.3")
    assert parse_hello(line.rstrip(b"\n")) == (PEER_NONCE, "umprobe-peer/1.2.3")
    extra = json.dumps({**json.loads(line), "future": [1]}).encode()
    assert parse_hello(extra) == (PEER_NONCE, "umprobe-peer/1.2.3")


@pytest.mark.parametrize(
    "changes",
    [
        {"type": "opened"},
        {"type": None},
        {"v": 2},
        {"v": True},
        {"v": "1"},
        {"v": None},
        {"nonce": PEER_NONCE.upper()},
        {"nonce": PEER_NONCE[:-1]},
        {"nonce": 5},
        {"peer": ""},
        {"peer": "evil\nbanner"},
        {"peer": "x" * 129},
        {"peer": None},
    ],
)
def test_hello_protocol_errors(changes: dict[str, object]) -> None:
    message = {"v": 1, "type": "hello", "nonce": PEER_NONCE, "peer": "umprobe-peer/1"}
    message.update(changes)
    assert control_error(parse_hello, json.dumps(message).encode()) == "protocol"


def test_hello_format_errors_and_misuse() -> None:
    assert control_error(parse_hello, b"hello") == "format"
    assert control_error(parse_hello, b"[]") == "format"
    with pytest.raises(ValueError):
        make_hello("xyz", "umprobe-peer/1")
    with pytest.raises(ValueError):
        make_hello(PEER_NONCE, "bad\x00banner")


def test_new_nonce() -> None:
    nonce = new_nonce()
    assert len(nonce) == 32 and int(nonce, 16) >= 0 and nonce == nonce.lower()
    assert new_nonce() != nonce
    assert new_nonce(lambda n: "ab" * n) == "ab" * 16
    with pytest.raises(ValueError):
        new_nonce(lambda n: "Z" * 2 * n)


# --- open ---------------------------------------------------------------------------------------------------


def test_open_request_partitions_ports() -> None:
    message = {**OPEN, "ports": [20000, 20001, 1000, 30002, 20000, 40000, 65534, 1024, 30001], "ttl": 90}
    request = parse_open_request(message, rtp_range=(1024, 40000), max_ports=3)
    assert request == OpenRequest(
        client_nonce=CLIENT_NONCE,
        ports=(20000, 30002, 40000),  # even, in range, in the order asked, repeats counted once
        refused=(20001, 1000, 65534, 1024, 30001),  # odd, outside the range, or over max_ports (1024)
        rtcp=True,
        ttl=60,  # capped at max_ttl
    )
    assert parse_open_request(OPEN, rtp_range=RANGE).ports == (20000, 20480)


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"type": "stats"}, "open"),
        ({"client_nonce": "x"}, "client_nonce"),
        ({"client_nonce": None}, "client_nonce"),
        ({"ports": []}, "ports"),
        ({"ports": "20000"}, "ports"),
        ({"ports": {"20000": 1}}, "ports"),
        ({"ports": [20000, "20002"]}, "ports"),
        ({"ports": [20000, True]}, "ports"),
        ({"ports": [20000.0]}, "ports"),
        ({"ports": [-2]}, "ports"),
        ({"ports": [65536]}, "ports"),
        ({"ports": [10**30]}, "ports"),
        ({"ports": list(range(20000, 20514, 2))}, "257 ports"),
        ({"rtcp": 1}, "rtcp"),
        ({"rtcp": None}, "rtcp"),
        ({"ttl": 0}, "ttl"),
        ({"ttl": -5}, "ttl"),
        ({"ttl": True}, "ttl"),
        ({"ttl": 1.5}, "ttl"),
        ({"ttl": "10"}, "ttl"),
    ],
)
def test_open_request_protocol_errors_name_the_field(changes: dict[str, object], field: str) -> None:
    with pytest.raises(ControlError) as info:
        parse_open_request({**OPEN, **changes}, rtp_range=RANGE)
    assert info.value.code == "protocol"
    assert field in str(info.value)


def test_open_request_missing_fields() -> None:
    for key in ("type", "client_nonce", "ports", "rtcp", "ttl"):
        message = {k: v for k, v in OPEN.items() if k != key}
        with pytest.raises(ControlError) as info:
            parse_open_request(message, rtp_range=RANGE)
        assert info.value.code == "protocol"


def test_open_request_misuse() -> None:
    for kwargs in (
        {"rtp_range": (1000, 2000)},
        {"rtp_range": (2000, 1990)},
        {"rtp_range": RANGE, "max_ports": 0},
        {"rtp_range": RANGE, "max_ttl": 0},
    ):
        with pytest.raises(ValueError):
            parse_open_request(OPEN, **kwargs)


def test_the_open_reply_for_the_largest_request_fits_a_line() -> None:
    # 256 ports, all refused (odd): the `opened` answer listing them must still fit MAX_LINE.
    ports = list(range(65535 - 2 * 255, 65536, 2))
    request = parse_open_request({**OPEN, "ports": ports}, rtp_range=(1024, 2048))
    assert len(request.refused) == 256
    _, peer = pair()
    peer.client_nonce = CLIENT_NONCE
    reply = {
        "type": "opened",
        "session": "0" * 16,
        "ssid": 65535,
        "ttl": 60,
        "ports": {"open": [], "in_use": [], "refused": list(request.refused)},
    }
    assert len(peer.seal(reply)) <= MAX_LINE
