"""Fuzz the sans-I/O SIP package: the stream parser, the message values, build_response, response matching.

Run: ``.venv/bin/python tests/fuzz/atheris_sip.py -runs=20000`` (any libFuzzer option works).

"The module's own error", per module (umprobe/sip/errors.py splits errors by blame):

* `umprobe.sip.parser.StreamParser`: peer bytes raise only `RemoteProtocolError`, with a `code` from
  `ERROR_CODES`; a dead parser raises the same code again. `LocalProtocolError` is our misuse (feeding
  after EOF) and must never come out of a correct caller, so here it counts as a crash.
* `umprobe.sip.message`: the readers (`Message.cseq`, `.via`, `.retry_after`, `parse_via`, `parse_cseq`,
  `split_header_list`, `parse_header_params`...) never raise on peer text; they return None.
  `build_response` raises `LocalProtocolError` for a request it cannot answer (a mandatory header missing,
  a NUL in a header): the responder catches `SipError` and drops the connection. What it does build must
  parse back as one 200 with the request's Call-ID and CSeq.
* `umprobe.sip.transaction.ClientTransaction.receive`: never raises; returns a response only when it is
  final and matches our request on every identifier (Via count, branch, sent-by, CSeq, Call-ID, From tag).

The input's first byte picks what the rest becomes: raw bytes, an RFC 4475 message (tests/data/rfc4475) or
its response twin, or a real response to our own OPTIONS, edited by a small script in the input. Every
stream is parsed whole, byte by byte and in pseudo-random chunks: the outcome must be the same.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

from umprobe.sip import (
    ERROR_CODES,
    MAX_MISMATCH_REASONS,
    NEED_DATA,
    ClientTransaction,
    LocalProtocolError,
    RemoteProtocolError,
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

CORPUS_DIR = Path(__file__).resolve().parent.parent / "data" / "rfc4475"
CORPUS = [path.read_bytes() for path in sorted(CORPUS_DIR.glob("*.dat"))]


def as_response(message: bytes) -> bytes:
    """The message with its start line swapped for a Status-Line (PROTOCOL.md §6: requests as responses)."""
    return b"SIP/2.0 200 OK\r\n" + message.split(b"\n", 1)[-1]


OURS = build_options(
    target_host="cas01.contoso.local",
    target_port=5061,
    transport="tls",
    local_host="192.0.2.99",
    local_port=40000,
    token=lambda n: "5eed" * (n // 2) if n % 2 == 0 else "a" * (2 * n),
)


def _first(data: bytes) -> Request | Response:
    parser = StreamParser()
    parser.feed(data)
    message = parser.next_message()
    assert message is not NEED_DATA
    return message


_OUR_REQUEST = _first(OURS.raw)
assert isinstance(_OUR_REQUEST, Request)
ANSWERS = [
    build_response(_OUR_REQUEST, 200, "OK", to_tag="t0", server="RTCC/5.0.0.0 MSExchangeUM/15.01.2507.017"),
    build_response(_OUR_REQUEST, 100, "Trying", to_tag="t1"),
    build_response(
        _OUR_REQUEST, 503, "Service Unavailable", to_tag="t2", extra_headers=[("Retry-After", "30 (busy)")]
    ),
]
SEEDS = [*CORPUS, *(as_response(m) for m in CORPUS), *ANSWERS, OURS.raw]
CAPS = [(65536, 65536), (64, 8), (1, 0), (300, 65536)]
BYTEWISE_MAX = 64  # streams up to this long are also fed one byte at a time (longer ones: in chunks)

Outcome = tuple[list[Request | Response], str | None]


# -- input decoding ------------------------------------------------------------------------------------


def edit(seed: bytes, script: bytes) -> bytes:
    """Apply an edit script to `seed`: 4-byte steps (op, position high, position low, value).

    op & 3: 0 overwrite one byte with value, 1 insert value, 2 delete value % 16 + 1 bytes, 3 insert the
    rest of the script as one blob and stop.
    """
    out = bytearray(seed)
    i = 0
    while i + 4 <= len(script):
        op, hi, lo, value = script[i : i + 4]
        i += 4
        at = ((hi << 8) | lo) % (len(out) + 1)
        kind = op & 3
        if kind == 0 and out:
            out[at % len(out)] = value
        elif kind == 1:
            out.insert(at, value)
        elif kind == 2:
            del out[at : at + value % 16 + 1]
        elif kind == 3:
            out[at:at] = script[i:]
            break
    return bytes(out)


def chunks(data: bytes, salt: int) -> list[bytes]:
    """`data` cut at pseudo-random places (a small LCG seeded by `salt`)."""
    out: list[bytes] = []
    state = salt * 2654435761 + 1
    i = 0
    while i < len(data):
        state = (state * 1103515245 + 12345) & 0x7FFFFFFF
        step = 1 + state % 23
        out.append(data[i : i + step])
        i += step
    return out


# -- the properties --------------------------------------------------------------------------------------


def parse(pieces: Iterable[bytes], caps: tuple[int, int] = CAPS[0]) -> Outcome:
    """Feed `pieces` (empty ones are skipped) then EOF: the messages, and the RemoteProtocolError code or
    None."""
    parser = StreamParser(max_header_bytes=caps[0], max_body_bytes=caps[1])
    out: list[Request | Response] = []
    try:
        for piece in [*(p for p in pieces if p), b""]:
            parser.feed(piece)
            while (message := parser.next_message()) is not NEED_DATA:
                assert isinstance(message, Request | Response), message
                out.append(message)
    except RemoteProtocolError as exc:
        assert exc.code in ERROR_CODES, exc.code
        try:
            parser.next_message()
        except RemoteProtocolError as again:  # a dead parser stays dead, with the same code
            assert again.code == exc.code, (again.code, exc.code)
        else:
            raise AssertionError("a parser that raised RemoteProtocolError answered again") from None
        return out, exc.code
    assert parser.buffered == 0, parser.buffered  # anything left at EOF must have been `truncated`
    return out, None


def exercise(message: Request | Response) -> None:
    """Read every field a prober or responder reads; none of it may raise on peer text."""
    for name, value in message.headers:
        assert canonical_name(name)
        message.headers.get(name)
        message.headers.get_all(name)
        split_header_list(value)
        parse_header_params(value)
        parse_via(value)
        parse_cseq(value)
        parse_retry_after(value)
        same_host(value, "192.0.2.99")
    via = message.via
    if via is not None:
        via.param("branch")
        via.has_param("rport")
    _ = (
        message.call_id,
        message.cseq,
        message.top_via,
        message.via_count,
        message.via_branch,
        message.via_sent_by,
        message.from_tag,
        message.to_tag,
    )
    cseq = message.cseq
    assert cseq is None or 0 <= cseq[0] < 2**31
    if isinstance(message, Response):
        assert 100 <= message.status_code <= 699
        retry = message.retry_after
        assert retry is None or 0 <= retry < 2**32
        _ = (message.is_final, message.server, message.ms_diagnostics)
    else:
        answer(message)


def answer(request: Request) -> None:
    """What the responder does with a peer's request: answer it, or get LocalProtocolError and drop it."""
    try:
        reply = build_response(
            request, 200, "OK", to_tag="fuzz", server="umprobe-fuzz", received_from=("192.0.2.1", 5060)
        )
    except LocalProtocolError:
        return
    messages, error = parse([reply])
    assert error is None and len(messages) == 1, (reply, error)
    (response,) = messages
    assert isinstance(response, Response) and response.status_code == 200
    assert response.call_id == request.call_id
    assert response.headers.get("CSeq") == request.headers.get("CSeq")


def match(messages: Sequence[Request | Response]) -> None:
    """Feed every message to a transaction for our OPTIONS: only a true match may come back."""
    transaction = ClientTransaction(OURS)
    for message in messages:
        got = transaction.receive(message)
        if got is None:
            continue
        assert got is message and isinstance(got, Response) and got.is_final
        via = got.via
        assert got.via_count == 1 and via is not None
        assert via.param("branch") == OURS.branch
        assert same_host(via.host, OURS.sent_by_host)
        assert got.cseq == (OURS.cseq, "OPTIONS")
        assert got.call_id == OURS.call_id
        assert got.from_tag == OURS.from_tag
    final = 1 if transaction.final is not None else 0
    counted = transaction.provisional + transaction.mismatched + transaction.duplicates + final
    assert counted == len(messages), (counted, len(messages))
    assert len(transaction.mismatch_reasons) <= MAX_MISMATCH_REASONS
    assert all(len(reason) <= 120 for reason in transaction.mismatch_reasons)


def check_stream(stream: bytes, salt: int = 0, caps: tuple[int, int] = CAPS[0]) -> Outcome:
    """Parse `stream` whole, byte by byte and in chunks (same outcome), then exercise and match the result."""
    expected = parse([stream], caps)
    if len(stream) <= BYTEWISE_MAX:
        assert parse([stream[i : i + 1] for i in range(len(stream))], caps) == expected
    assert parse(chunks(stream, salt), caps) == expected
    messages, _ = expected
    assert sum(len(m.raw) for m in messages) <= len(stream)
    for message in messages:
        exercise(message)
    match(messages)
    return expected


def check_sip(data: bytes) -> None:
    """The oracle: any bytes in, nothing but the promises above out."""
    if not data:
        check_stream(b"")
        return
    mode, rest = data[0], data[1:]
    caps = CAPS[(mode >> 2) % len(CAPS)]
    if mode & 3 == 0 or not rest:
        check_stream(rest, salt=mode, caps=caps)
        return
    pool = {1: CORPUS, 2: [as_response(m) for m in CORPUS], 3: [*ANSWERS, OURS.raw]}[mode & 3]
    seed = pool[rest[0] % len(pool)]
    check_stream(edit(seed, rest[1:]), salt=mode, caps=caps)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root: tests.fuzz._driver
    from tests.fuzz._driver import fuzz

    fuzz(check_sip, sys.argv, SEEDS)
