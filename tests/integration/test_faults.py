"""DNS that stops answering, for real: `umprobe run` in a network namespace whose resolver is ours.

    test host  198.18.x.1  <--veth-->  198.18.x.2  namespace: DNS server + SIP responder + `umprobe run`

`ip netns exec` bind-mounts /etc/netns/NAME/resolv.conf over /etc/resolv.conf for what it runs, so the
daemon's C library asks our tiny DNS server on the namespace's loopback (the host's /etc/resolv.conf is
never touched). The server answers `um.faults.test` until SIGUSR1, then drops every query (UDP and TCP)
until SIGUSR2: exactly what a resolver sees when its server dies. The daemon probes that name on three
ports plus one IP literal; the test scrapes its /metrics from the host over the veth pair.

While the server is silent: every run of the name's probes ends at its deadline as `dns_error` (phase
resolve), the IP-literal probe keeps its schedule, and the daemon holds one resolver thread for the name,
not one per run (the C library keeps each hung lookup for timeout x attempts = 4 s here). When the server
answers again, the probes come back.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.daemon_helpers import WAIT, UmprobeProcess, probes_toml, target_toml
from tests.lab.netns import NetNamespace, sweep_stale_namespaces
from tests.lab.proc import LabError, LabProcess

pytestmark = pytest.mark.lab

NAME = "um.faults.test"
SIP_PORTS = (5060, 5070, 5080)
INTERVAL, TIMEOUT = 1.0, 0.5

PEER = r'''
"""Inside the namespace: DNS on :53 (UDP and TCP) that answers NAME until SIGUSR1, silent until SIGUSR2;
umprobe's SIP responder on the SIP ports."""
import signal, socket, struct, sys, threading
from functools import partial

import trio

from umprobe.peer.sip_responder import serve_sip_responder

NAME, SIP_PORTS = sys.argv[1].encode(), [int(p) for p in sys.argv[2].split(",")]
answering = threading.Event()
answering.set()
signal.signal(signal.SIGUSR1, lambda *_: answering.clear())
signal.signal(signal.SIGUSR2, lambda *_: answering.set())


def reply(query):
    qid, flags = struct.unpack("!HH", query[:4])
    i, labels = 12, []
    while query[i]:
        labels.append(query[i + 1 : i + 1 + query[i]])
        i += 1 + query[i]
    qtype = struct.unpack("!H", query[i + 1 : i + 3])[0]
    question = query[12 : i + 5]
    name = b".".join(labels).lower()
    head = 0x8480 | (flags & 0x0100)  # a response, authoritative, recursion available, RD copied
    if name != NAME:
        return struct.pack("!6H", qid, head | 3, 1, 0, 0, 0) + question  # NXDOMAIN
    if qtype != 1:
        return struct.pack("!6H", qid, head, 1, 0, 0, 0) + question  # no data of that type
    answer = b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, 0, 4) + socket.inet_aton("127.0.0.1")
    return struct.pack("!6H", qid, head, 1, 1, 0, 0) + question + answer


def udp():
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("0.0.0.0", 53))
    while True:
        query, peer = sock.recvfrom(4096)
        print("udp query", "answered" if answering.is_set() else "dropped", flush=True)
        if answering.is_set():
            sock.sendto(reply(query), peer)


def tcp_client(conn):
    with conn:
        while data := conn.recv(2):
            query = conn.recv(struct.unpack("!H", data)[0])
            while not answering.is_set():
                answering.wait(1)  # silent: hold the connection, answer nothing
            out = reply(query)
            conn.sendall(struct.pack("!H", len(out)) + out)


def tcp():
    listener = socket.create_server(("0.0.0.0", 53))
    while True:
        conn, _ = listener.accept()
        threading.Thread(target=tcp_client, args=(conn,), daemon=True).start()


async def main():
    listeners = []
    for port in SIP_PORTS:
        listeners += await trio.open_tcp_listeners(port, host="0.0.0.0")
    await serve_sip_responder(listeners)


threading.Thread(target=udp, daemon=True).start()
threading.Thread(target=tcp, daemon=True).start()
trio.run(main)
'''


@pytest.fixture
def dns_netns(lab_dir: Path) -> Iterator[NetNamespace]:
    """A namespace of its own whose resolv.conf names our server on its loopback."""
    ns = NetNamespace(log_dir=lab_dir)
    etc = Path("/etc/netns") / ns.name
    try:
        sweep_stale_namespaces()
        ns.create()
        etc.mkdir(parents=True)
        (etc / "resolv.conf").write_text("nameserver 127.0.0.1\noptions timeout:2 attempts:2\n")
    except LabError as exc:
        ns.delete()
        pytest.fail(str(exc), pytrace=False)
    try:
        yield ns
    finally:
        shutil.rmtree(etc, ignore_errors=True)
        ns.delete()


def test_a_name_whose_dns_goes_silent_fails_at_the_deadline_and_holds_one_thread(
    tmp_path: Path, lab_dir: Path, dns_netns: NetNamespace
) -> None:
    assert dns_netns.address is not None
    ns_ip = dns_netns.address.ns_ip
    script = tmp_path / "dns_peer.py"
    script.write_text(PEER)
    peer = LabProcess(
        "faults-dns-peer",
        dns_netns.exec_argv([sys.executable, str(script), NAME, ",".join(map(str, SIP_PORTS))]),
        log_dir=lab_dir,
        ready=[(ns_ip, 53), *((ns_ip, port) for port in SIP_PORTS)],
    )
    config = tmp_path / "probes.toml"
    config.write_text(
        probes_toml(SIP_PORTS, host=NAME, interval=INTERVAL, timeout=TIMEOUT) + target_toml(SIP_PORTS[0])
    )
    by_name = {f"{NAME}:{port}/tcp" for port in SIP_PORTS}
    literal = f"127.0.0.1:{SIP_PORTS[0]}/tcp"

    with contextlib.ExitStack() as stack:
        try:
            peer.start()
        except LabError as exc:
            pytest.fail(str(exc), pytrace=False)
        stack.callback(peer.stop)
        daemon = UmprobeProcess(
            ["-c", str(config), "--listen", f"{ns_ip}:9874", "--log-format", "json"],
            prefix=dns_netns.exec_argv([]),
        )
        stack.callback(daemon.kill)
        daemon.wait_running()
        daemon.wait_until(
            "every probe up",
            lambda: daemon.by_probe("umprobe_probe_success") == dict.fromkeys([*by_name, literal], 1.0),
        )

        # The DNS server goes silent.
        assert peer.pid is not None
        os.kill(peer.pid, signal.SIGUSR1)
        runs_before = daemon.by_probe("umprobe_probe_runs_total")[literal]
        t0 = time.monotonic()
        daemon.wait_until(
            "the name's probes to fail",
            lambda: all(
                v >= 1
                for p, v in daemon.by_probe("umprobe_probe_failures_total", reason="dns_error").items()
                if p in by_name
            ),
        )
        peak_threads = 0
        while time.monotonic() - t0 < 10.0:  # two and a half hung lookups' worth of runs
            peak_threads = max(peak_threads, daemon.threads())
            time.sleep(0.05)
        elapsed = time.monotonic() - t0

        assert peak_threads <= 3, f"{peak_threads} threads: one per run instead of one per name?"
        failures = daemon.by_probe("umprobe_probe_failures_total", reason="dns_error")
        assert all(failures[p] >= 5 for p in by_name), failures
        # Each run ends by its deadline (or sooner, with the C library's own "temporary failure", when it
        # joined a lookup that was about to give up).
        durations = daemon.metrics()["umprobe_probe_duration_seconds"]
        for labels, seconds in durations.items():
            label = dict(labels)
            if label["probe"] in by_name and label["phase"] in ("resolve", "total"):
                assert seconds <= TIMEOUT + 0.5, (label, seconds)
        assert daemon.by_probe("umprobe_probe_success") == {**dict.fromkeys(by_name, 0.0), literal: 1.0}
        # The IP literal kept its schedule: one run per interval, none skipped, no lag to speak of.
        runs = daemon.by_probe("umprobe_probe_runs_total")[literal] - runs_before
        assert runs >= elapsed / INTERVAL - 2, (runs, elapsed)
        metrics = daemon.metrics()
        assert metrics["umprobe_scheduler_skipped_slots_total"][()] == 0
        lag_sum = metrics["umprobe_scheduler_lag_seconds_sum"][()]
        lag_count = metrics["umprobe_scheduler_lag_seconds_count"][()]
        assert lag_count > 0 and lag_sum / lag_count < 0.1, (lag_sum, lag_count)
        changed = [
            r for r in daemon.records() if r.get("msg") == "probe state changed" and r.get("probe") in by_name
        ]
        assert {r["probe"] for r in changed} == by_name
        assert all(
            (r["reason"], r["phase"]) == ("dns_error", "resolve")
            and r["detail"] == f"name resolution of {NAME} did not finish before the deadline"
            for r in changed
        ), changed

        # It answers again: the probes come back.
        os.kill(peer.pid, signal.SIGUSR2)
        daemon.wait_until(
            "the name's probes back up",
            lambda: daemon.by_probe("umprobe_probe_success") == dict.fromkeys([*by_name, literal], 1.0),
            timeout=WAIT,
        )
        assert daemon.proc.poll() is None
        assert "Traceback" not in daemon.log()
        assert peer.is_alive()
