"""The reflector is not a weapon (docs/rtp.md; PROTOCOL.md §5): abuse over real loopback sockets.

Forged and tampered packets, replays, a third address, closed sessions, wrong sizes: no reply, each drop
counted by reason, and never more bytes out than in. Floods: at most what the token buckets allow.
"""

from __future__ import annotations

import time

import trio

from tests.peer.helpers import (
    LOCAL,
    OTHER,
    SECRET,
    ControlClient,
    MediaSocket,
    free_even_ports,
    media_packet,
    running_peer,
)
from umprobe.media.packet import session_key
from umprobe.peer.reflector import DropReason

FORGED_KEY = session_key(SECRET, "0" * 32, "1" * 32)  # the right secret, another connection's nonces


async def test_abuse_run() -> None:
    with trio.fail_after(20):
        async with running_peer() as peer:
            p, q, r = free_even_ports(3)
            client = await ControlClient.connect(peer)
            await client.open([p, q])
            legit = await MediaSocket.bind(LOCAL)
            third = await MediaSocket.bind(OTHER)
            closer = await MediaSocket.bind(LOCAL)

            # A session that has been closed: its ports answer nothing (there is no socket any more).
            gone = await ControlClient.connect(peer)
            await gone.open([r])
            await gone.close()
            await gone.expect_hangup()
            for seq in range(5):
                await closer.send(gone.media(seq), r)
                await closer.send(gone.rtcp(seq), r + 1)

            # The only packets that deserve an answer: 10 media packets and one RTCP probe.
            valid = [client.media(seq) for seq in range(10)]
            for packet in valid:
                await legit.send(packet, p)
            await legit.send(client.rtcp(1), p + 1)

            # Replays of answered packets.
            for _ in range(5):
                await legit.send(valid[3], p)
            await legit.send(client.rtcp(1), p + 1)
            # Stale and future sender timestamps (outside ±10 s) with new sequence numbers.
            await legit.send(client.media(50, t1=time.time() - 60), p)
            await legit.send(client.media(51, t1=time.time() + 60), q)

            # Forged: the right shape under the wrong key; tampered: one bit flipped under the HMAC.
            for seq in range(20):
                await legit.send(media_packet(FORGED_KEY, client.ssid, 100 + seq), p)
            for index in (0, 2, 20, 60, 110):
                tampered = bytearray(client.media(200 + index))
                tampered[index] ^= 0x01
                await legit.send(bytes(tampered), q)

            # The right packets from a third address.
            for seq in range(300, 310):
                await third.send(client.media(seq), p)
            await third.send(client.rtcp(2), p + 1)

            # Wrong sizes: undersized and oversized, on both kinds of port.
            for size in (0, 1, 12, 100, 171):
                await legit.send(client.media(400 + size)[:size], p)
            for extra in (1, 100, 1400, 9000):
                await legit.send(client.media(500 + extra) + b"\xff" * extra, q)
            await legit.send(client.rtcp(3)[:40], p + 1)
            await legit.send(client.rtcp(4) + b"\x00" * 1000, p + 1)

            answered = await legit.drain(0.3)
            assert await third.drain(0.05) == []
            assert await closer.drain(0.05) == []
            assert len(answered) == 11
            assert sorted(len(a) for a in answered) == sorted([172] * 10 + [len(client.rtcp(1))])

            # Bytes: what came back never exceeds what was sent, on the wire and by the peer's own count.
            sent = legit.sent_bytes + third.sent_bytes + closer.sent_bytes
            received = legit.received_bytes + third.received_bytes + closer.received_bytes
            assert received <= sent
            assert peer.reflector.bytes_out <= peer.reflector.bytes_in

            stats = await client.stats()
            assert stats["dropped"] == {
                "auth": 20 + 5,
                "replay": 5 + 1 + 2,
                "rate": 0,
                "session": 0,
                "size": 5 + 4 + 2,
                "source": 10 + 1,
            }
            assert stats["ports"][str(p)] == {"rx": 10, "tx": 10, "rtcp_rx": 1, "rtcp_tx": 1}
            assert stats["ports"][str(q)] == {"rx": 0, "tx": 0, "rtcp_rx": 0, "rtcp_tx": 0}
            assert {str(k): v for k, v in peer.reflector.dropped.items()} == stats["dropped"]
            for s in (legit, third, closer):
                s.close()
            await client.aclose()


async def test_flood_from_one_source_gets_at_most_the_bucket_allowance() -> None:
    rate, burst = 100.0, 1.0
    with trio.fail_after(20):
        async with running_peer(rate_per_source=rate, rate_global=100_000, burst_seconds=burst) as peer:
            (p,) = free_even_ports(1)
            client = await ControlClient.connect(peer)
            await client.open([p])
            sock = await MediaSocket.bind()
            packets = [client.media(seq) for seq in range(5000)]
            start = time.time()  # the reflector's clock
            for packet in packets:
                await sock.send(packet, p)
            sending = time.time() - start
            replies = await sock.drain(0.3)
            stats = await client.stats()
            # On a loaded machine the peer may still be working through the flood after 0.3 s of quiet:
            # collect until every reply it counted has arrived (bounded by fail_after).
            while stats["ports"][str(p)]["tx"] > len(replies):
                replies += await sock.drain(0.3)
                stats = await client.stats()
            elapsed = time.time() - start
            # The most a bucket of `rate` starting full can allow over the whole run, replies' tail included.
            allowance = peer.reflector.allowance(rate, elapsed)
            assert allowance == int(rate * burst + rate * elapsed)
            assert 0 < len(replies) <= allowance, (len(replies), allowance, sending)
            counters = stats["ports"][str(p)]
            assert counters["tx"] == len(replies)
            # Every authenticated packet that reached the peer and got no answer was a rate drop.
            assert stats["dropped"]["rate"] == counters["rx"] - counters["tx"] > 0
            assert sending < 5  # sanity: the flood really was a flood
            sock.close()
            await client.aclose()


async def test_global_bucket_holds_with_two_sources() -> None:
    rate_global = 100.0
    with trio.fail_after(20):
        async with running_peer(rate_per_source=100_000, rate_global=rate_global) as peer:
            p, q = free_even_ports(2)
            a = await ControlClient.connect(peer)
            await a.open([p])
            b = await ControlClient.connect(peer, local_address=OTHER)  # its session belongs to 127.0.0.2
            await b.open([q])
            sock_a = await MediaSocket.bind(LOCAL)
            sock_b = await MediaSocket.bind(OTHER)
            start = time.time()
            for seq in range(2500):
                await sock_a.send(a.media(seq), p)
                await sock_b.send(b.media(seq), q)
            got_a, got_b = await sock_a.drain(0.3), await sock_b.drain(0.05)
            elapsed = time.time() - start
            assert len(got_a) + len(got_b) <= peer.reflector.allowance(rate_global, elapsed)
            stats_a, stats_b = await a.stats(), await b.stats()
            assert stats_a["dropped"]["rate"] > 0
            assert stats_b["dropped"]["rate"] > 0
            assert stats_a["dropped"]["source"] == stats_b["dropped"]["source"] == 0
            assert (
                peer.reflector.dropped[DropReason.RATE]
                == stats_a["dropped"]["rate"] + stats_b["dropped"]["rate"]
            )
            sock_a.close()
            sock_b.close()
            await a.aclose()
            await b.aclose()
