"""Hypothesis over umprobe.sip with the oracles of atheris_sip.py (what "the module's own error" is, per
module, is written there): arbitrary bytes and arbitrary splits, mutated RFC 4475 messages, and tampered
answers to our own OPTIONS through response matching.

tests/sip/test_sip_parser.py already holds chunking invariance over arbitrary bytes; this adds the message
readers, build_response and the transaction to every parsed message, and mutations of the corpus.
"""

from __future__ import annotations

import itertools

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tests.fuzz.atheris_sip import (
    ANSWERS,
    CAPS,
    CORPUS,
    OURS,
    as_response,
    check_sip,
    check_stream,
    edit,
    match,
    parse,
)
from umprobe.sip import ClientTransaction, Response

FUZZ = settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
CUTS = st.lists(st.integers(0, 5000), max_size=40)


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({min(c, len(data)) for c in cuts})
    return [data[a:b] for a, b in itertools.pairwise([0, *points, len(data)])]


def test_the_corpus_is_there() -> None:
    assert len(CORPUS) == 49  # tests/data/rfc4475: what the mutations start from


@FUZZ
@example(b"")
@example(b"\x00SIP/2.0 200 OK\r\nContent-Length: 0\r\n\r\n")
@example(b"\x03\x00")  # our own 200, unedited
@given(st.binary(max_size=700))
def test_the_atheris_oracle_holds_for_any_input(data: bytes) -> None:
    check_sip(data)


@FUZZ
@given(data=st.binary(max_size=500), cuts=CUTS, caps=st.sampled_from(CAPS))
def test_arbitrary_bytes_in_arbitrary_splits(data: bytes, cuts: list[int], caps: tuple[int, int]) -> None:
    expected = check_stream(data, caps=caps)
    assert parse(split(data, cuts), caps) == expected


EDIT_OPS = st.lists(
    st.tuples(st.integers(0, 3), st.integers(0, 0xFFFF), st.integers(0, 255)), max_size=6
).map(lambda ops: b"".join(bytes([op, hi >> 8, hi & 0xFF, value]) for op, hi, value in ops))
SEED_MESSAGES = st.sampled_from([*CORPUS, *(as_response(m) for m in CORPUS), *ANSWERS, OURS.raw])
# Fragments that matter to a SIP parser, spliced in by the blob step of an edit script (op 3).
FRAGMENTS = st.lists(
    st.sampled_from(
        [
            b"\r\n",
            b"\r\n\r\n",
            b"\n",
            b"\r",
            b" ",
            b"\t",
            b"Content-Length: 99999999999999999999999",
            b"l: 5",
            b"Content-Length: -1",
            b"Via: SIP/2.0/TCP a;branch=z9hG4bK1, SIP/2.0/UDP b",
            b"CSeq: 18446744073709551616 OPTIONS",
            b"Retry-After: 99999999999999999999 (x)",
            b"\x00",
            b"\xff\xfe",
            b"SIP/2.0 ",
            b'<sip:a;b>;tag="x',
        ]
    ),
    max_size=4,
).map(b"".join)


@FUZZ
@given(seed=SEED_MESSAGES, script=EDIT_OPS, blob=FRAGMENTS, cuts=CUTS, twice=st.booleans())
def test_mutated_rfc4475_messages(
    seed: bytes, script: bytes, blob: bytes, cuts: list[int], twice: bool
) -> None:
    stream = edit(seed, script + bytes([3, 0, len(seed) % 256, 0]) + blob if blob else script)
    if twice:  # one message after another on the same connection
        stream += stream
    expected = check_stream(stream)
    assert parse(split(stream, cuts)) == expected


# -- response matching -----------------------------------------------------------------------------------

TAMPER = st.sampled_from(
    [
        (b"branch=z9hG4bK", b"branch=z9hG4bKx"),
        (b"branch=z9hG4bK", b"branch=Z9HG4BK"),
        (b"192.0.2.99", b"192.0.2.98"),
        (b"Call-ID: ", b"Call-ID: x"),
        (b"CSeq: 1 ", b"CSeq: 2 "),
        (b"CSeq: 1 OPTIONS", b"CSeq: 1 INVITE"),
        (b"CSeq: 1 ", b"CSeq: 2147483649 "),
        (b";tag=5eed", b";tag=5eee"),
        (b"Via: ", b"Via: SIP/2.0/TLS 192.0.2.1;branch=z9hG4bKother\r\nVia: "),
        (b"SIP/2.0/TLS", b"SIP/2.0/TLS"),  # untouched
    ]
)


@FUZZ
@given(tamper=TAMPER, which=st.integers(0, len(ANSWERS) - 1), cuts=CUTS)
def test_only_a_true_match_is_returned(tamper: tuple[bytes, bytes], which: int, cuts: list[int]) -> None:
    old, new = tamper
    answer = ANSWERS[which]
    tampered = answer.replace(old, new, 1)
    stream = tampered + ANSWERS[0]  # then the pristine 200: it must still be found
    messages, error = parse(split(stream, cuts))
    assert error is None and len(messages) == 2
    match(messages)  # the oracle: whatever comes back matches on every identifier
    transaction = ClientTransaction(OURS)
    found = [m for m in messages if transaction.receive(m) is not None]
    assert len(found) == 1 and isinstance(found[0], Response)
    first_is_final = tampered == answer and messages[0].is_final  # type: ignore[union-attr]
    if first_is_final:  # an untouched final answer wins; the 200 after it is a retransmission
        assert found[0] is messages[0] and transaction.duplicates == 1
    else:  # a tampered answer (or a 1xx) is passed over, the pristine 200 is found
        assert found[0] is messages[1] and found[0].raw == ANSWERS[0]
        assert transaction.mismatched == (0 if tampered == answer else 1)
