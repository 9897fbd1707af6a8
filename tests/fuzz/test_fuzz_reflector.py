"""Hypothesis over the echo peer's packet handler with the oracle of atheris_reflector.py: datagram scripts
(valid, replayed, tampered, forged, stale, other-session, raw) from arbitrary addresses to arbitrary ports.
`Reflector.handle` has no error of its own: it must never raise, and everything it returns is checked there.

tests/peer/test_reflector.py fuzzes one datagram at a time from the client; this drives whole streams,
odd source tuples and the clock, and checks the byte and reply budgets after every datagram.
"""

from __future__ import annotations

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tests.fuzz.atheris_reflector import (
    CLIENT,
    KEY,
    SSID,
    T0,
    P,
    check_reflector,
    media,
    rtcp,
    run_script,
)
from umprobe.peer.reflector import Reflector, normalise_ip

FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
STEPS = st.lists(
    st.tuples(st.integers(0, 255), st.integers(0, 255), st.integers(0, 255), st.integers(0, 255)),
    max_size=40,
).map(lambda steps: b"".join(bytes(step) for step in steps))


@FUZZ
@example(b"")
@example(bytes([1, 0x80, 0, 2]) * 3)
@given(st.binary(max_size=600))
def test_the_atheris_oracle_holds_for_any_input(data: bytes) -> None:
    check_reflector(data)


@FUZZ
@given(STEPS)
def test_datagram_scripts(script: bytes) -> None:
    check_reflector(script)


def test_the_oracle_sees_replies_and_drops() -> None:
    """Not vacuous: valid probes from the client get replies, the rest is dropped, all within budget."""
    valid = bytes([1, 0x80, 0, 2, 2, 0x80, 1, 2, 6, 0x80, 0, 2])  # media, RTCP, a longer RTCP compound
    run = run_script(valid + bytes([3, 0x80, 0, 2]) + bytes([7, 0x80, 0, 2]) + bytes([4, 0x80, 1, 2]))
    assert run.replies == 3
    assert run.handled == 6
    assert 0 < run.bytes_out < run.bytes_in


ODD_HOSTS = st.one_of(
    st.text(max_size=40),
    st.binary(max_size=16),
    st.integers(),
    st.none(),
    st.sampled_from([CLIENT, f"::ffff:{CLIENT}", f"{CLIENT}%lo", "[192.0.2.10]", "192.0.2.010"]),
)


@FUZZ
@given(
    source=st.one_of(st.tuples(), st.tuples(ODD_HOSTS), st.tuples(ODD_HOSTS, st.integers())),
    port=st.integers(-(2**16), 2**20),
    now=st.floats(min_value=0, max_value=4e9),
)
def test_any_source_tuple_port_and_time(source: tuple[object, ...], port: int, now: float) -> None:
    reflector = Reflector(now=T0)
    reflector.add_session("s", key=KEY, ssid=SSID, client=CLIENT, rtp_ports=[P], rtcp=True, now=T0)
    for packet in (media(1, now), rtcp(1, now), b"", b"\x80" * 172):
        reply = reflector.handle(packet, source, port, now)
        if reply is not None:
            assert port in (P, P + 1) and len(reply) <= len(packet)
            assert isinstance(source[0], str) and normalise_ip(source[0]) == normalise_ip(CLIENT)
    assert reflector.bytes_out <= reflector.bytes_in
