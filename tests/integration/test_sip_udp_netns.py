"""SIP over UDP against a real Kamailio in a network namespace whose nftables drop the first N requests.

The namespace (198.18.0.0/15) runs Kamailio with a UDP listener (and a TCP one on the same port, which the
lab launcher uses to see that it answers). An input rule `udp dport P quota until B bytes counter drop`
drops datagrams to P while the bytes seen so far stay under B. Every request of one probe is the same
datagram (retransmissions are byte-identical; its size depends only on fixed-width fields because the
local port is a 5-digit ephemeral port), so B = N * size + 1 drops exactly the first N: the rule's counter
proves it.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio

from tests.lab.kamailio import KamailioInstance, Listener
from tests.lab.netns import NetNamespace, sweep_stale_namespaces
from tests.lab.pki import LabPKI
from tests.lab.proc import LabError
from umprobe.probes.result import Reason
from umprobe.probes.sip_options import SipProbeSpec, probe
from umprobe.sip import build_options

pytestmark = pytest.mark.lab

PORT = 5060
DROPPED = 3
IPV4_UDP_HEADERS = 28  # nftables' input hook counts the IP packet: 20-byte IPv4 header + 8-byte UDP header


@dataclass
class UdpLab:
    ns: NetNamespace
    kamailio: KamailioInstance

    @property
    def ns_ip(self) -> str:
        assert self.ns.address is not None
        return self.ns.address.ns_ip

    @property
    def host_ip(self) -> str:
        assert self.ns.address is not None
        return self.ns.address.host_ip


@pytest.fixture(scope="module")
def udp_lab(lab_dir: Path, lab_pki: LabPKI) -> Iterator[UdpLab]:
    with contextlib.ExitStack() as cleanup:
        try:
            sweep_stale_namespaces()
            ns = NetNamespace(log_dir=lab_dir)
            cleanup.callback(ns.delete)
            ns.create()
            assert ns.address is not None
            kamailio = KamailioInstance(
                [
                    Listener("udp", "udp", ns.address.ns_ip, PORT),
                    Listener("tcp", "tcp", ns.address.ns_ip, PORT),
                ],
                workdir=lab_dir,
                server_certs=lab_pki.server_certs,
                ca_file=lab_pki.ca_file,
                name="kamailio-udp-netns",
            )
            kamailio.process.argv = ns.exec_argv(kamailio.process.argv)  # the same launcher, in the namespace
            cleanup.callback(kamailio.stop)  # before ns.delete: last in, first out
            kamailio.start()
        except LabError as exc:
            pytest.fail(str(exc), pytrace=False)
        yield UdpLab(ns, kamailio)
        if not kamailio.process.is_alive():
            pytest.fail(f"kamailio died during the tests\n{kamailio.process.describe(40)}", pytrace=False)


def _drop_first(lab: UdpLab, packets: int) -> None:
    size = len(
        build_options(
            target_host=lab.ns_ip, target_port=PORT, transport="udp", local_host=lab.host_ip, local_port=40000
        ).raw
    )
    quota = packets * (size + IPV4_UDP_HEADERS) + 1
    lab.ns.load_nft(
        "table inet umprobe_sipudp {}\ndelete table inet umprobe_sipudp\n"
        "table inet umprobe_sipudp {\n    chain input {\n"
        "        type filter hook input priority 0; policy accept;\n"
        f"        udp dport {PORT} quota until {quota} bytes counter drop\n"
        "    }\n}\n"
    )


def _dropped_packets(lab: UdpLab) -> int:
    match = re.search(r"udp dport \d+ quota (?:until )?\d+ bytes.*? counter packets (\d+)", lab.ns.nft_list())
    assert match is not None, lab.ns.nft_list()
    return int(match[1])


async def test_kamailio_udp_answers_without_loss(udp_lab: UdpLab) -> None:
    _drop_first(udp_lab, 0)
    spec = SipProbeSpec(host=udp_lab.ns_ip, port=PORT, transport="udp", families=("ipv4",))
    (result,) = await probe(spec, deadline=trio.current_time() + 10)
    assert result.reason is Reason.OK, result.detail
    assert (result.status_code, result.retransmissions, result.mismatched_responses) == (200, 0, 0)
    assert result.timings.connect == 0.0
    assert "SIP/2.0/UDP" in next(e.text for e in result.transcript if e.kind == "recv")


async def test_kamailio_udp_succeeds_after_the_first_requests_are_dropped(udp_lab: UdpLab) -> None:
    _drop_first(udp_lab, DROPPED)
    spec = SipProbeSpec(host=udp_lab.ns_ip, port=PORT, transport="udp", families=("ipv4",))
    start = trio.current_time()
    (result,) = await probe(spec, deadline=start + 15)
    assert result.reason is Reason.OK, result.detail
    assert result.status_code == 200
    assert _dropped_packets(udp_lab) == DROPPED
    assert result.retransmissions == DROPPED
    # Answered on the 3rd retransmission, sent T1 + 2*T1 + 4*T1 = 3.5 s after the first send.
    assert result.timings.sip is not None and result.timings.sip >= 3.5
    assert trio.current_time() - start < 15
    recv = next(e.text for e in result.transcript if e.kind == "recv")
    assert f"received={udp_lab.host_ip}" in recv or "rport=" in recv


async def test_kamailio_udp_all_dropped_ends_at_the_deadline(udp_lab: UdpLab) -> None:
    _drop_first(udp_lab, 1000)
    spec = SipProbeSpec(host=udp_lab.ns_ip, port=PORT, transport="udp", families=("ipv4",))
    start = trio.current_time()
    (result,) = await probe(spec, deadline=start + 2.0)
    elapsed = trio.current_time() - start
    assert result.reason is Reason.SIP_TIMEOUT, result.detail
    assert result.retransmissions == 2  # at 0.5 s and 1.5 s; the next (3.5 s) is past the deadline
    assert 2.0 <= elapsed < 2.5
