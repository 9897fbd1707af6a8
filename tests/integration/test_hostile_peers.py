"""Hostile peers: every way a peer can misbehave ends the probe by its deadline, with the right reason and
phase, and leaves no socket open (issue 7, item 1).

The peers: the real ones of the lab where they fit (SIPp's never-reply server, Kamailio, socat's TLS front
end, blackbox_exporter's HTTP server) and, for the rest, `tests.lab.hostile`: one subprocess with one
listener per misbehaviour (see its module docstring for the modes). The hostile peer runs in its own process,
so the sockets in this process's /proc/self/fd are the probe's alone: each case checks that none is left
behind, and that the peer saw the probe's side close (its count of open connections falls back to 0).

Timing: a case that must wait (silence, a stalled handshake, slowloris) has a short deadline and must end
at it, not before and no later than SLACK after it; a case that must not wait (an alert, a reset, garbage)
gets a long deadline and must end well before it.

Response matching (RFC 3261 §17.1.3, decided here and in umprobe/sip/transaction.py): a response belongs to
our transaction when its top Via branch and CSeq method are ours (§17.1.3) and, stricter, its sent-by, CSeq
number, Call-ID and From tag are ours too. A response that does not match (a wrong Call-ID or branch, another
CSeq) is counted in `mismatched_responses` and waited past; the probe succeeds on the first matching final
response and, when none comes, ends in `sip_timeout` whose detail names the mismatch. A duplicate final
response changes nothing: the first one decides.

At the end, a real daemon (in this process) runs healthy probes beside one probe of every misbehaviour and
100 probes of a server that never answers, and must keep the healthy ones on schedule; and the RTP probe's
plain control channel meets the same reset as the SIP probe. docs/hostile-peers.md is the table of it all.
"""

from __future__ import annotations

import math
import resource
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from tests.lab.hostile import MODES, HostilePeer, socket_inodes
from tests.lab.pki import LabPKI
from tests.lab.ports import allocate_port
from tests.lab.proc import LabError
from tests.lab.sipp import SippServers
from umprobe.config import Config, parse_config
from umprobe.daemon import Daemon
from umprobe.net.tls import TLSClientConfig
from umprobe.probes.result import ProbeResult
from umprobe.probes.rtp import RtpProbeSpec, probe_rtp
from umprobe.probes.sip_options import SipProbeSpec, probe
from umprobe.store import ResultStore

pytestmark = pytest.mark.lab

SLACK = 0.5  # seconds a probe may run past its deadline
WAIT = 1.0  # the deadline of cases that must run into it
NO_WAIT = 5.0  # the deadline of cases that must not: they must end at least 2 s before it
HARD_CAP = 15.0
JITTER = 0.5  # seconds a scheduled run may end later than slot + timeout on a busy machine

# Listener name -> mode of the hostile peer. "thousands" is the silent peer of the many-connections case.
LISTENERS = {mode: mode for mode in MODES} | {
    f"tls+{mode}": f"tls+{mode}" for mode in ("rst", "half_close", "garbage", "trying")
}
LISTENERS["thousands"] = "silent"
LISTENERS["switch"] = "ok"


@pytest.fixture(scope="module")
def hostile(lab_pki: LabPKI, lab_dir: Path) -> Iterator[HostilePeer]:
    peer = HostilePeer(
        LISTENERS,
        log_dir=lab_dir,
        cert=lab_pki.server.cert_file,
        key=lab_pki.server.key_file,
        allocate=allocate_port,
    )
    try:
        peer.start()
    except LabError as exc:
        pytest.fail(str(exc), pytrace=False)
    try:
        yield peer
        assert peer.process.is_alive(), peer.process.describe()
    finally:
        peer.stop()


def tcp(address: tuple[str, int]) -> SipProbeSpec:
    return SipProbeSpec(host=address[0], port=address[1], transport="tcp")


def tls(address: tuple[str, int], pki: LabPKI) -> SipProbeSpec:
    config = TLSClientConfig(ca_file=str(pki.ca_file))
    return SipProbeSpec(host=address[0], port=address[1], transport="tls", tls=config)


@dataclass
class Outcome:
    result: ProbeResult
    deadline: float
    ended: float

    @property
    def overrun(self) -> float:
        return self.ended - self.deadline

    def assert_waited(self) -> None:
        """Ended at the deadline: not before it, and within SLACK after it."""
        assert 0 <= self.overrun <= SLACK, f"ended {self.overrun:+.3f} s from the deadline"

    def assert_quick(self) -> None:
        assert self.overrun < -2.0, f"ended {self.overrun:+.3f} s from the deadline: it waited"


async def run_probe(spec: SipProbeSpec, budget: float, peer: HostilePeer | None = None) -> Outcome:
    """Probe once; check that no socket of ours outlives the probe and that the peer saw us close."""
    before = socket_inodes()
    with trio.fail_after(HARD_CAP):
        deadline = trio.current_time() + budget
        results = await probe(spec, deadline=deadline)
        ended = trio.current_time()
    leaked = socket_inodes() - before
    assert not leaked, f"sockets left open by the probe: {sorted(leaked)}"
    if peer is not None:
        assert await peer.wait_all_closed() == 0, (
            "the peer still holds a connection the probe should have closed"
        )
    assert len(results) == 1, results
    return Outcome(results[0], deadline, ended)


def assert_failed(outcome: Outcome, reason: str, phase: str, *fragments: str) -> None:
    result = outcome.result
    assert (result.reason, result.phase) == (reason, phase), result.detail
    assert not result.success
    for fragment in fragments:
        assert fragment in result.detail, result.detail


async def fails_at_the_deadline(
    spec: SipProbeSpec,
    reason: str,
    phase: str,
    *fragments: str,
    peer: HostilePeer | None = None,
    budget: float = WAIT,
) -> ProbeResult:
    """A case that must wait: with a short deadline (`budget`), the probe fails with `reason` in `phase`,
    its detail naming each of `fragments`, and ends at the deadline (not before, within SLACK after)."""
    outcome = await run_probe(spec, budget, peer)
    assert_failed(outcome, reason, phase, *fragments)
    outcome.assert_waited()
    return outcome.result


async def fails_at_once(
    spec: SipProbeSpec, reason: str, phase: str, *fragments: str, peer: HostilePeer | None = None
) -> ProbeResult:
    """A case that must not wait: with a long deadline (NO_WAIT), the probe fails with `reason` in `phase`,
    its detail naming each of `fragments`, and ends at least 2 s before the deadline."""
    outcome = await run_probe(spec, NO_WAIT, peer)
    assert_failed(outcome, reason, phase, *fragments)
    outcome.assert_quick()
    return outcome.result


# -- one probe of one misbehaviour -------------------------------------------------------------------------


@dataclass(frozen=True)
class Misbehaviour:
    """A listener of the hostile peer, and how every probe of it must fail."""

    listener: str
    transport: str  # how it is probed: "tcp" or "tls"
    reason: str
    phase: str
    fragments: tuple[str, ...] = ()  # what the detail must say
    waits: float | None = None  # the short deadline it must run into; None: it must end at once


MISBEHAVIOURS = {
    # silence
    "100_trying_then_silence_over_tls": Misbehaviour(
        "tls+trying", "tls", "sip_timeout", "sip", ("1 provisional response",), waits=WAIT
    ),
    # TLS failures
    "tls_alert_is_handshake_failed_at_once": Misbehaviour(
        "tls_alert", "tls", "tls_handshake_failed", "tls", ("alert internal_error",)
    ),
    # A TLS server takes our OPTIONS for a broken ClientHello and hangs up without a word.
    "tls_server_on_a_plain_port": Misbehaviour(
        "tls_ok", "tcp", "connection_closed", "sip", ("without answering",)
    ),
    # A plain SIP server takes our ClientHello for the start of a request and waits for the rest.
    "plain_server_on_a_tls_port_that_waits_is_handshake_timeout": Misbehaviour(
        "ok", "tls", "tls_handshake_timeout", "tls", ("plain-TCP SIP port",), waits=WAIT
    ),
    # connections that die
    "rst_after_the_request_is_connection_closed": Misbehaviour(
        "rst", "tcp", "connection_closed", "sip", ("ECONNRESET",)
    ),
    "rst_after_the_request_over_tls": Misbehaviour("tls+rst", "tls", "connection_closed", "sip"),
    "close_after_half_a_response_over_tls": Misbehaviour("tls+half_close", "tls", "connection_closed", "sip"),
    # framing and bytes
    "one_byte_per_second_ends_at_the_deadline": Misbehaviour(
        "slowloris", "tcp", "sip_timeout", "sip", ("bytes of an incomplete message",), waits=WAIT + 1.0
    ),
    "endless_headers_stop_at_the_cap": Misbehaviour(
        "endless_headers", "tcp", "sip_protocol_error", "sip", ("header_too_large", "65536")
    ),
    # RFC 3261 §18.3: on a stream the rest of the body may still come, so this is a wait, not an error.
    "content_length_beyond_the_body_waits_for_the_rest": Misbehaviour(
        "short_body", "tcp", "sip_timeout", "sip", ("bytes of an incomplete message",), waits=WAIT
    ),
    "content_length_beyond_the_body_then_close": Misbehaviour(
        "short_body_close", "tcp", "connection_closed", "sip", ("in the middle of a message",)
    ),
    "two_content_lengths_are_a_protocol_error": Misbehaviour(
        "two_lengths", "tcp", "sip_protocol_error", "sip", ("bad_content_length",)
    ),
    "binary_garbage_is_a_protocol_error": Misbehaviour(
        "garbage", "tcp", "sip_protocol_error", "sip", ("bad_start_line",)
    ),
    "binary_garbage_over_tls": Misbehaviour(
        "tls+garbage", "tls", "sip_protocol_error", "sip", ("bad_start_line",)
    ),
    "http_server_on_the_port_hostile": Misbehaviour(
        "http", "tcp", "sip_protocol_error", "sip", ("HTTP server",)
    ),
}


@pytest.mark.parametrize("case", MISBEHAVIOURS.values(), ids=MISBEHAVIOURS.keys())
async def test_misbehaviour(hostile: HostilePeer, lab_pki: LabPKI, case: Misbehaviour) -> None:
    address = hostile.address(case.listener)
    spec = tls(address, lab_pki) if case.transport == "tls" else tcp(address)
    if case.waits is None:
        await fails_at_once(spec, case.reason, case.phase, *case.fragments, peer=hostile)
    else:
        await fails_at_the_deadline(
            spec, case.reason, case.phase, *case.fragments, peer=hostile, budget=case.waits
        )


# -- silence --------------------------------------------------------------------------------------------


async def test_accept_then_silence_is_sip_timeout_at_the_deadline(sipp_servers: SippServers) -> None:
    # SIPp: reads our OPTIONS, never answers
    result = await fails_at_the_deadline(
        tcp(sipp_servers["silent"]), "sip_timeout", "sip", "no answer within the deadline"
    )
    assert not result.alive


async def test_accept_then_silence_hostile(hostile: HostilePeer) -> None:
    await fails_at_the_deadline(tcp(hostile.address("silent")), "sip_timeout", "sip", peer=hostile)
    assert hostile.stats("silent")["accepted"] >= 1


async def test_silence_mid_tls_handshake_is_handshake_timeout(hostile: HostilePeer, lab_pki: LabPKI) -> None:
    # Half of a real ServerHello flight, then nothing: the handshake has started and never finishes.
    result = await fails_at_the_deadline(
        tls(hostile.address("tls_stall"), lab_pki), "tls_handshake_timeout", "tls", "during tls", peer=hostile
    )
    assert result.timings.tls is not None and result.timings.tls >= WAIT - 0.1


async def test_100_trying_then_silence_is_sip_timeout_naming_the_provisional(hostile: HostilePeer) -> None:
    result = await fails_at_the_deadline(
        tcp(hostile.address("trying")), "sip_timeout", "sip", "1 provisional response", peer=hostile
    )
    assert result.provisional_responses == 1
    assert not result.alive  # a 1xx is not a final response


# -- TLS failures -----------------------------------------------------------------------------------------


async def test_tls_server_on_a_plain_port_socat(socat_mtls_sipp: tuple[str, int]) -> None:
    # OpenSSL (socat) answers the plain OPTIONS with a TLS alert record: not SIP, said at once.
    outcome = await run_probe(tcp(socat_mtls_sipp), NO_WAIT)
    assert outcome.result.phase == "sip", outcome.result.detail
    assert outcome.result.reason in ("sip_protocol_error", "connection_closed"), outcome.result.detail
    if outcome.result.reason == "sip_protocol_error":
        assert "TLS alert record" in outcome.result.detail
    outcome.assert_quick()


async def test_tls_server_on_a_plain_port_kamailio(kamailio_lab) -> None:  # type: ignore[no-untyped-def]
    await fails_at_once(tcp(kamailio_lab["mtls4"]), "connection_closed", "sip", "without answering")


async def test_plain_server_on_a_tls_port_kamailio(kamailio_lab, lab_pki: LabPKI) -> None:  # type: ignore[no-untyped-def]
    await fails_at_the_deadline(tls(kamailio_lab["tcp4"], lab_pki), "tls_handshake_timeout", "tls")


async def test_plain_server_on_a_tls_port_that_answers_is_handshake_failed(
    http_server: tuple[str, int], lab_pki: LabPKI
) -> None:
    # blackbox_exporter's Go HTTP server answers a ClientHello with "HTTP/1.1 400 Bad Request".
    await fails_at_once(
        tls(http_server, lab_pki), "tls_handshake_failed", "tls", "does not speak TLS", "HTTP/1.1 400"
    )


# -- connections that die ---------------------------------------------------------------------------------


async def test_close_after_half_a_response_is_connection_closed(hostile: HostilePeer) -> None:
    # What arrived was good SIP so far: the failure is the close, not the syntax.
    result = await fails_at_once(
        tcp(hostile.address("half_close")),
        "connection_closed",
        "sip",
        "in the middle of a message",
        peer=hostile,
    )
    assert not result.alive


async def test_rtp_control_channel_reset_is_a_result(hostile: HostilePeer) -> None:
    # The same reset on the RTP probe's plain control channel: it raised trio.BrokenResourceError out of
    # probe_rtp (the scheduler logged "could not run" and recorded nothing); now it is a failed run.
    host, port = hostile.address("rst_soon")
    spec = RtpProbeSpec(host=host, port=port, secret=b"s" * 32, families=("ipv4",))
    before = socket_inodes()
    with trio.fail_after(HARD_CAP):
        deadline = trio.current_time() + NO_WAIT
        result = await probe_rtp(spec, deadline=deadline, cycle=0)
        ended = trio.current_time()
    assert (result.reason, result.success) == ("control_protocol_error", False), result.detail
    assert "ECONNRESET" in result.detail
    assert ended < deadline - 2.0
    assert not socket_inodes() - before
    assert await hostile.wait_all_closed() == 0


# -- framing and bytes ------------------------------------------------------------------------------------


async def test_http_server_on_the_port_blackbox_exporter(http_server: tuple[str, int]) -> None:
    await fails_at_once(tcp(http_server), "sip_protocol_error", "sip", "HTTP server")


# -- responses that are not ours --------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["wrong_callid", "wrong_branch"])
async def test_a_200_not_ours_then_ours_succeeds_on_ours(hostile: HostilePeer, mode: str) -> None:
    outcome = await run_probe(tcp(hostile.address(mode)), NO_WAIT, hostile)
    result = outcome.result
    assert (result.reason, result.status_code) == ("ok", 200), result.detail
    assert result.mismatched_responses == 1
    why = "Call-ID" if mode == "wrong_callid" else "Via branch"
    assert any("does not match" in e.text and why in e.text for e in result.transcript), result.transcript
    outcome.assert_quick()


@pytest.mark.parametrize("mode", ["wrong_callid", "wrong_branch"])
async def test_a_200_not_ours_alone_is_a_timeout_naming_it(hostile: HostilePeer, mode: str) -> None:
    hostile.queue("switch", f"{mode}_only")
    result = await fails_at_the_deadline(
        tcp(hostile.address("switch")), "sip_timeout", "sip", "did not match our request", peer=hostile
    )
    assert result.mismatched_responses == 1


async def test_duplicate_responses_count_once(hostile: HostilePeer) -> None:
    outcome = await run_probe(tcp(hostile.address("duplicate")), NO_WAIT, hostile)
    result = outcome.result
    assert (result.reason, result.status_code, result.mismatched_responses) == ("ok", 200, 0), result.detail
    outcome.assert_quick()


async def test_a_response_to_another_cseq_is_not_ours(hostile: HostilePeer) -> None:
    result = await fails_at_the_deadline(
        tcp(hostile.address("other_cseq")),
        "sip_timeout",
        "sip",
        "did not match our request",
        "CSeq",
        peer=hostile,
    )
    assert result.mismatched_responses == 1


async def test_misbehaviour_is_per_connection(hostile: HostilePeer) -> None:
    # The peer takes commands per connection: a reset, then garbage, then its default (a correct 200).
    hostile.queue("switch", "rst", "garbage")
    reasons = [
        (await run_probe(tcp(hostile.address("switch")), NO_WAIT, hostile)).result.reason for _ in range(3)
    ]
    assert reasons == ["connection_closed", "sip_protocol_error", "ok"]


# -- many connections -------------------------------------------------------------------------------------


async def test_thousands_of_connections_never_answered(hostile: HostilePeer) -> None:
    """2,000 probes at once against one server that accepts every connection and never answers.

    The deadlines are spread over 3 s, as the scheduler spreads its slots: winding a probe down after its
    deadline (cancel, close, build the result) is ~0.3 ms of CPU, so 2,000 probes sharing one deadline need
    most of a second of one core to end and the last would end late for lack of CPU, not for waiting.
    """
    count, first, spread = 2000, 4.0, 3.0
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert soft >= count + 200, f"this test needs {count + 200} file descriptors, the limit is {soft}"
    before = socket_inodes()
    accepted_before = hostile.stats("thousands")["accepted"]
    overruns: list[float] = []
    reasons: dict[str, int] = {}
    held: list[int] = []
    with trio.fail_after(HARD_CAP):
        start = trio.current_time()

        async def one(i: int) -> None:
            deadline = start + first + spread * i / count
            (result,) = await probe(tcp(hostile.address("thousands")), deadline=deadline)
            overruns.append(trio.current_time() - deadline)
            reasons[result.reason] = reasons.get(result.reason, 0) + 1

        async def count_held() -> None:
            await trio.sleep_until(start + first - 0.1)
            held.append(hostile.stats("thousands")["open"])

        async with trio.open_nursery() as nursery:
            nursery.start_soon(count_held)
            for i in range(count):
                nursery.start_soon(one, i)
    print(
        f"\n{count} probes: {held[0]} connections held at once; overrun after the deadline: "
        f"min {min(overruns):+.3f} s, max {max(overruns):+.3f} s"
    )
    assert held[0] >= 1000, f"only {held[0]} connections were open at once"
    assert reasons == {"sip_timeout": count}, reasons
    assert min(overruns) >= 0
    late = [o for o in overruns if o > SLACK]
    assert not late, (
        f"{len(late)} probes ended more than {SLACK} s after their deadline, worst {max(late):.2f} s"
    )
    assert hostile.stats("thousands")["accepted"] - accepted_before == count
    leaked = socket_inodes() - before
    assert not leaked, f"{len(leaked)} sockets left open"
    assert await hostile.wait_all_closed(5.0) == 0


# -- the daemon keeps every other probe on schedule meanwhile ---------------------------------------------


@dataclass(frozen=True)
class Case:
    """One probe of a daemon config: where, how, and the reason every run of it must end with."""

    name: str
    address: tuple[str, int]
    transport: str
    expect: str  # "ok" for a healthy peer
    tls: str = "server_auth"  # for transport "tls": "server_auth" or "mtls"
    interval: float | None = None  # None: the config's
    timeout: float | None = None

    @property
    def probe_label(self) -> str:
        return f"{self.name}:{self.address[1]}/{self.transport}"


def daemon_config(
    cases: Sequence[Case], pki: LabPKI, *, interval: float, timeout: float, max_concurrency: int
) -> Config:
    """A probes.toml with one module and one target per case (a module each, so that many probes of one
    address are distinct probes), parsed as `umprobe run` parses it."""
    lines = [f"[scheduler]\nmax_concurrency = {max_concurrency}\n"]
    for i, case in enumerate(cases):
        lines += [
            f"[modules.m{i}]",
            f'transport = "{case.transport}"',
            f"interval = {case.interval or interval}",
            f"timeout = {case.timeout or timeout}",
            'families = ["ipv4"]',
        ]
        if case.transport == "tls":
            lines.append(f'ca_file = "{pki.ca_file}"')
            if case.tls == "mtls":
                lines += [f'cert_file = "{pki.client.cert_file}"', f'key_file = "{pki.client.key_file}"']
        host, port = case.address
        lines += [
            "",
            "[[targets]]",
            f'host = "{host}"',
            f"port = {port}",
            f'module = "m{i}"',
            f'name = "{case.name}"',
            "",
        ]
    return parse_config("\n".join(lines), source="hostile-daemon.toml")


def probe_ids(config: Config) -> dict[str, str]:
    """probe label -> probe id."""
    return {probe.name: probe.id for probe in config.probes}


def runs_and_failures(store: ResultStore, probe_id: str) -> tuple[int, dict[str, int]]:
    """Runs and failures by reason of a probe's one address (its address-less dns_error key aside)."""
    runs = 0
    failures: dict[str, int] = {}
    for stats in store.address_stats(probe_id):
        if not stats.address:
            continue
        runs += stats.runs
        for reason, count in stats.failures:
            if count:
                failures[reason.value] = failures.get(reason.value, 0) + count
    return runs, failures


def hostile_cases(hostile: HostilePeer, sipp: SippServers, http: tuple[str, int]) -> list[Case]:
    """One probe per way to misbehave, each with the reason it must fail with."""
    h = hostile.address
    return [
        Case("sipp-silent", sipp["silent"], "tcp", "sip_timeout"),
        Case("tls-stall", h("tls_stall"), "tls", "tls_handshake_timeout"),
        Case("tls-alert", h("tls_alert"), "tls", "tls_handshake_failed"),
        Case("rst", h("rst"), "tcp", "connection_closed"),
        Case("half-close", h("half_close"), "tcp", "connection_closed"),
        Case("slowloris", h("slowloris"), "tcp", "sip_timeout"),
        Case("endless-headers", h("endless_headers"), "tcp", "sip_protocol_error"),
        Case("short-body", h("short_body"), "tcp", "sip_timeout"),
        Case("short-body-close", h("short_body_close"), "tcp", "connection_closed"),
        Case("two-lengths", h("two_lengths"), "tcp", "sip_protocol_error"),
        Case("garbage", h("garbage"), "tcp", "sip_protocol_error"),
        Case("http", http, "tcp", "sip_protocol_error"),
        Case("trying", h("trying"), "tcp", "sip_timeout"),
        Case("other-cseq", h("other_cseq"), "tcp", "sip_timeout"),
        Case("tls-on-plain", h("tls_ok"), "tcp", "connection_closed"),
        Case("plain-on-tls", h("ok"), "tls", "tls_handshake_timeout"),
        Case("tls-rst", h("tls+rst"), "tls", "connection_closed"),
    ]


async def scrape(bound: tuple[tuple[str, int], ...]) -> dict[str, list[tuple[dict[str, str], float]]]:
    """GET /metrics of an in-process daemon: metric sample name -> [(labels, value)]."""
    host, port = bound[0]

    def get() -> str:
        with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=10) as answer:
            return str(answer.read().decode())

    text = await trio.to_thread.run_sync(get)
    samples: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((dict(sample.labels), sample.value))
    return samples


async def test_daemon_keeps_healthy_probes_on_schedule_among_hostile_ones(
    hostile: HostilePeer,
    sipp_servers: SippServers,
    http_server: tuple[str, int],
    kamailio_lab,  # type: ignore[no-untyped-def]
    lab_pki: LabPKI,
) -> None:
    """A real daemon: healthy probes (Kamailio over TCP and mutual TLS, healthy hostile-peer listeners) run
    beside one probe per misbehaviour and 100 probes of a server that holds every connection and never
    answers. Over a measured window every healthy probe runs once per interval and succeeds every time,
    every hostile one fails every run with its reason, and (almost) no slot is skipped or starts late."""
    interval, timeout, window = 1.0, 0.8, 6.0
    healthy = [
        Case("kamailio-tcp", kamailio_lab["tcp4"], "tcp", "ok"),
        Case("kamailio-mtls", kamailio_lab["mtls4"], "tls", "ok", tls="mtls"),
        Case("hostile-ok", hostile.address("ok"), "tcp", "ok"),
        Case("hostile-tls-ok", hostile.address("tls_ok"), "tls", "ok"),
        Case("wrong-callid-then-ours", hostile.address("wrong_callid"), "tcp", "ok"),
        Case("duplicates", hostile.address("duplicate"), "tcp", "ok"),
    ]
    bad = hostile_cases(hostile, sipp_servers, http_server)
    holders = [Case(f"hold{i}", hostile.address("thousands"), "tcp", "sip_timeout") for i in range(100)]
    cases = healthy + bad + holders
    config = daemon_config(cases, lab_pki, interval=interval, timeout=timeout, max_concurrency=256)
    ids = probe_ids(config)
    daemon = Daemon.from_config(config, listen="127.0.0.1:0", load=lambda: config)
    store = daemon.store
    before = socket_inodes()

    with trio.fail_after(window + 20):
        async with trio.open_nursery() as nursery:
            bound = await nursery.start(daemon.serve)
            await trio.sleep(interval + timeout + 0.5)  # every probe has had its first slot and run
            first = {c.probe_label: runs_and_failures(store, ids[c.probe_label]) for c in cases}
            lag_before, skipped_before = store.scheduler_lag(), store.skipped_slots
            t0 = trio.current_time()
            await trio.sleep(window)
            last = {c.probe_label: runs_and_failures(store, ids[c.probe_label]) for c in cases}
            elapsed = trio.current_time() - t0
            lag, skipped = store.scheduler_lag(), store.skipped_slots
            samples = await scrape(bound)
            nursery.cancel_scope.cancel()

    # Runs completed in the window: a run ends between its slot and slot + timeout (+ a little for a busy
    # machine), so a window of W seconds sees between (W - JITTER) / interval and (W + JITTER) / interval of
    # them, rounded outwards.
    low, high = math.floor((elapsed - JITTER) / interval), math.ceil((elapsed + JITTER) / interval)
    problems = []
    for case in cases:
        runs0, _ = first[case.probe_label]
        runs1, failures1 = last[case.probe_label]
        runs = runs1 - runs0
        if not low <= runs <= high:
            problems.append(f"{case.probe_label}: {runs} runs in {elapsed:.2f} s, expected {low} to {high}")
        wanted = {} if case.expect == "ok" else {case.expect: runs1}
        if failures1 != wanted:
            problems.append(f"{case.probe_label}: failures {failures1}, expected {wanted}")
        latest = store.latest(ids[case.probe_label])
        if [r.reason.value for r in latest] != [case.expect]:
            problems.append(f"{case.probe_label}: last run {[(r.reason.value, r.detail) for r in latest]}")
    assert not problems, "\n".join(problems)

    late = lag.count - dict(lag.buckets)[0.25] - (lag_before.count - dict(lag_before.buckets)[0.25])
    runs_in_window = lag.count - lag_before.count
    print(
        f"\n{len(cases)} probes, {runs_in_window} runs in {elapsed:.1f} s: "
        f"{late} started more than 0.25 s late, {skipped - skipped_before} slots skipped"
    )
    # The schedule itself is held above, probe by probe (runs in the window). A machine shared with other
    # work may still stall the loop now and then (seen in CI next to CPU benchmarks: 30 skipped slots of
    # ~1,500 runs, every probe still within its run count): allow 5 % of slots, not a pattern.
    skipped_in_window = skipped - skipped_before
    assert skipped_in_window <= 0.05 * runs_in_window, f"{skipped_in_window} of {runs_in_window} skipped"
    assert late <= 0.05 * runs_in_window, f"{late} of {runs_in_window} runs started > 0.25 s after their slot"
    success = {labels["probe"]: value for labels, value in samples["umprobe_probe_success"]}
    assert success == {c.probe_label: (1.0 if c.expect == "ok" else 0.0) for c in cases}
    left = socket_inodes() - before
    assert not left, f"{len(left)} sockets still open after the daemon stopped"
    assert await hostile.wait_all_closed(5.0) == 0
