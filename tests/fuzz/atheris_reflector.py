"""Fuzz the echo peer's packet handler: `umprobe.peer.reflector.Reflector.handle`, a stream of datagrams.

Run: ``.venv/bin/python tests/fuzz/atheris_reflector.py -runs=20000`` (any libFuzzer option works).

"The module's own error": none. `Reflector.handle` never raises for anything a datagram, its source address
or its arrival port holds (its docstring); every datagram ends in exactly one reply or one counted drop.
The promises checked after every datagram (docs/rtp.md "The reflector is not a weapon"):

* a reply goes only to a datagram that arrived on a port of the open session, from the session's client
  address, and that verifies under the session key with the session's SSID, checked here independently
  with the codecs (so an unauthenticated datagram never gets a reply);
* a reply is never longer than its request, and is the reflection of it (it decodes, and carries the
  request's sequence number);
* one authenticated packet is answered at most once per port (replay window);
* replies stay within the token buckets' allowance;
* bytes out never exceed bytes in, at any point of the stream (the amplification ratio is at most 1.0).

The input is a script of datagrams: each step picks a kind (raw bytes, a valid media or RTCP probe, a replay,
a bit-flipped, stale, forged or other-session probe, an RTCP probe longer than the reply), a source address
(the client, its IPv4-mapped form, a third party, IPv6, malformed tuples), a port and a clock step.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

from umprobe.media import (
    Measurement,
    MediaError,
    RtpHeader,
    decode_media,
    decode_rtcp,
    encode_media,
    encode_rtcp,
    ntp_from_unix,
    session_key,
)
from umprobe.peer.reflector import MAX_RTCP_SIZE, Reflector, normalise_ip

SECRET = b"reflector fuzzing secret, 32 byte"
KEY = session_key(SECRET, "a" * 32, "b" * 32)
FORGED_KEY = session_key(SECRET, "a" * 32, "f" * 32)  # the right secret, another connection's nonces
SSID = 4242
CLIENT = "192.0.2.10"
P, Q = 20000, 20010  # RTP ports of the session; RTCP on P + 1 and Q + 1
RTP_PORTS = (P, Q)
RTCP_PORTS = (P + 1, Q + 1)
T0 = 1_700_000_000.0
RATE = 5.0  # small buckets, so that the rate limit is reached within a short script
SOURCES: tuple[tuple[object, ...], ...] = (
    (CLIENT, 40000),
    (CLIENT, 1),
    ("::ffff:192.0.2.10", 40000, 0, 0),
    ("192.0.2.11", 40000),
    ("2001:db8::10", 40000, 0, 0),
    ("fe80::1%eth0", 40000, 0, 2),
    ("", 0),
    (),
    (None,),
    (b"192.0.2.10", 40000),
    (3221225994, 40000),  # 192.0.2.10 as an int: not what a socket gives, never the client
    ("192.0.2.10 ", 40000),
)
PORTS = (P, P + 1, Q, Q + 1, P + 2, 30000, 0, 65535, -1, 1 << 20)


def media(seq: int, t1: float, *, key: bytes = KEY, ssid: int = SSID) -> bytes:
    header = RtpHeader(sequence=seq & 0xFFFF, timestamp=(seq * 160) & 0xFFFFFFFF, ssrc=0x5EED)
    return encode_media(key, header, Measurement(seq=seq, timestamp=ntp_from_unix(t1), ssid=ssid))


def rtcp(seq: int, t1: float, *, cname: str | None = None, key: bytes = KEY) -> bytes:
    return encode_rtcp(
        key,
        ssrc=0x5EED,
        ssid=SSID,
        seq=seq & 0xFFFF,
        timestamp=ntp_from_unix(t1),
        cname=cname or f"umprobe@{SSID}",
    )


def authentic(data: bytes, port: int) -> int | None:
    """The sequence number of `data` if it verifies under the session key with the session's SSID on a
    port of the session (checked with the codecs, not with the reflector), else None."""
    try:
        if port in RTP_PORTS:
            return decode_media(KEY, data, expected_ssid=SSID)[1].seq
        if port in RTCP_PORTS and len(data) <= MAX_RTCP_SIZE:
            return decode_rtcp(KEY, data, expected_ssid=SSID).seq
    except MediaError:
        return None
    return None


@dataclass
class Run:
    """One reflector with one session, the datagrams handed to it and what the oracle knows."""

    reflector: Reflector = field(
        default_factory=lambda: Reflector(rate_per_source=RATE, rate_global=4 * RATE, now=T0)
    )
    now: float = T0
    forward: float = 0.0  # seconds the clock moved forward: what refills the buckets
    handled: int = 0
    answered: set[tuple[int, int]] = field(default_factory=set)
    replies: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    seq: int = 0
    last_valid: tuple[bytes, int] | None = None

    def __post_init__(self) -> None:
        self.reflector.add_session(
            "s1", key=KEY, ssid=SSID, client=CLIENT, rtp_ports=RTP_PORTS, rtcp=True, now=T0, rtcp_ssrc=9
        )

    def tick(self, step: int) -> None:
        if step == 255:
            self.now -= 5.0  # the clock steps back
        else:
            self.now += step / 100
            self.forward += step / 100

    def send(self, data: bytes, source: tuple[object, ...], port: int) -> bytes | None:
        r = self.reflector
        reply = r.handle(data, source, port, self.now)
        self.handled += 1
        self.bytes_in += len(data)
        assert sum(r.dropped.values()) + r.replies == self.handled  # one reply or one counted drop each
        if reply is None:
            return None
        self.replies += 1
        self.bytes_out += len(reply)
        assert isinstance(reply, bytes) and len(reply) <= len(data), (len(reply), len(data))
        host = source[0] if source else None
        assert isinstance(host, str) and normalise_ip(host) == normalise_ip(CLIENT), source
        seq = authentic(data, port)
        assert seq is not None, ("a reply to a datagram that does not verify", port, data[:16])
        assert (port, seq) not in self.answered, ("a replay was answered", port, seq)
        self.answered.add((port, seq))
        if port in RTP_PORTS:
            assert decode_media(KEY, reply, expected_ssid=SSID)[1].sender_seq == seq
        else:
            assert decode_rtcp(KEY, reply, expected_ssid=SSID).seq == seq
        return reply

    def check_totals(self) -> None:
        r = self.reflector
        assert (r.bytes_in, r.bytes_out, r.replies) == (self.bytes_in, self.bytes_out, self.replies)
        assert self.bytes_out <= self.bytes_in  # amplification ratio <= 1.0
        assert self.replies <= r.allowance(RATE, self.forward)


def run_script(data: bytes) -> Run:
    """Interpret `data` as datagrams (module docstring); check every promise after each one."""
    run = Run()
    i = 0
    while i + 4 <= len(data) and run.handled < 200:
        kind, source_ix, port_ix, step = data[i : i + 4]
        i += 4
        run.tick(step)
        source = SOURCES[source_ix % len(SOURCES)]
        port = PORTS[port_ix % len(PORTS)]
        if source_ix & 0x80:  # mostly the client, on a port of the session that suits the kind
            source = SOURCES[0]
            port = (RTCP_PORTS if kind % 9 in (2, 6) else RTP_PORTS)[port_ix & 1]
        run.seq += 1
        choice = kind % 9
        if choice == 0:  # raw bytes of the input
            size = data[i] * 3 if i < len(data) else 0
            packet = data[i + 1 : i + 1 + size]
            i += 1 + size
        elif choice == 1:
            packet = media(run.seq, run.now)
        elif choice == 2:
            packet = rtcp(run.seq, run.now)
        elif choice == 3 and run.last_valid is not None:  # a replay, perhaps to the other port
            packet = run.last_valid[0]
        elif choice == 4:  # one bit flipped anywhere, the unauthenticated padding included
            flipped = bytearray(media(run.seq, run.now))
            flipped[(kind >> 4) * 11 % len(flipped)] ^= 1 << (step % 8)
            packet = bytes(flipped)
        elif choice == 5:  # stale or future T1
            packet = media(run.seq, run.now + (60 if step & 1 else -60))
        elif choice == 6:  # longer than our reply: answered padded to the same length
            packet = rtcp(run.seq, run.now, cname="umprobe@" + "x" * (kind % 64))
        elif choice == 7:  # forged: the right shape under another connection's key
            packet = media(run.seq, run.now, key=FORGED_KEY)
        else:  # authenticated, but for another session
            packet = media(run.seq, run.now, ssid=SSID + 1)
        if choice in (1, 2, 6):
            run.last_valid = (packet, port)
        run.send(packet, source, port)
        run.check_totals()
    run.check_totals()
    return run


def check_reflector(data: bytes) -> None:
    """The oracle."""
    run_script(data)


SEEDS = [bytes([k, 0x80, p, 2]) for k in range(9) for p in range(2)]

if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root: tests.fuzz._driver
    from tests.fuzz._driver import fuzz

    fuzz(check_reflector, sys.argv, [b"".join(SEEDS)])
