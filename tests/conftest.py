"""Session fixtures for the real-peer lab (tests/lab/): Kamailio, SIPp, socat, a network namespace.

Lab-dependent tests carry `@pytest.mark.lab`. A missing peer binary (or missing root for the namespace)
makes the fixture FAIL with a message pointing at scripts/install-test-peers; the lab never skips.
Every peer's log lives in the session's lab directory; a failing lab test gets the logs' tails attached,
and a peer that died during the session fails the session's teardown.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Generator, Iterator, Mapping
from pathlib import Path
from typing import TypeVar

import pytest

from tests.lab.kamailio import KamailioInstance, Listener, TlsPolicy
from tests.lab.netns import NetNamespace, blackhole_ruleset, sweep_stale_namespaces
from tests.lab.pki import LabPKI, build_lab_pki
from tests.lab.ports import allocate_port, hold_closed_port
from tests.lab.proc import LabError, LabProcess, LabStartError, require_binary
from tests.lab.sipp import SippServer, SippServers, SippSpec
from tests.lab.socat import SocatTlsFrontEnd

_T = TypeVar("_T")

# Every process the lab started this session, for failure reports; and start-up times for the summary.
_LAB_PROCESSES: list[LabProcess] = []
_LAB_TIMINGS: dict[str, float] = {}

# The Kamailio listeners one session needs: name -> (transport, host, TLS policy).
KAMAILIO_LISTENERS: dict[str, tuple[str, str, TlsPolicy | None]] = {
    "tcp4": ("tcp", "127.0.0.1", None),
    "tcp6": ("tcp", "::1", None),
    "mtls4": ("tls", "127.0.0.1", TlsPolicy(require_client_cert=True, method="TLSv1.2+")),
    "mtls6": ("tls", "::1", TlsPolicy(require_client_cert=True, method="TLSv1.2+")),
    "tls12_server_auth": ("tls", "127.0.0.1", TlsPolicy(require_client_cert=False, method="TLSv1.2")),
    "tls_expired": ("tls", "127.0.0.1", TlsPolicy(require_client_cert=False, server_cert="expired")),
    "tls_wrong_name": ("tls", "127.0.0.1", TlsPolicy(require_client_cert=False, server_cert="wrong_name")),
    "mtls_rsa": ("tls", "127.0.0.1", TlsPolicy(require_client_cert=True, server_cert="rsa")),
}

SIPP_SPECS = (
    SippSpec("delayed200", "answer200", delay_ms=1500),
    SippSpec("busy503", "busy503"),
    SippSpec("silent", "silent"),
    SippSpec("ok200", "answer200"),
)

BLACKHOLE_PORT = 5061  # SYN dropped inside the namespace: connect times out
REMOTE_REFUSED_PORT = 5060  # TCP RST from inside the namespace: connect refused
UNREACHABLE_PORT = 5062  # ICMP host-unreachable from inside the namespace: connect error


@contextlib.contextmanager
def _lab_failures() -> Iterator[None]:
    """Turn lab set-up problems into a plain fixture failure (never a skip)."""
    try:
        yield
    except LabError as exc:
        pytest.fail(str(exc), pytrace=False)


def _start_with_retry(what: str, make: Callable[[], _T], start: Callable[[_T], object]) -> _T:
    """Build and start a peer; on a port someone else grabbed meanwhile, try again with fresh ports."""
    t0 = time.monotonic()
    for attempt in range(3):
        peer = make()
        try:
            start(peer)
        except LabStartError as exc:
            if exc.port_conflict and attempt < 2:
                continue
            raise
        _LAB_TIMINGS[what] = time.monotonic() - t0
        return peer
    raise AssertionError("unreachable")


def _assert_survived(proc: LabProcess) -> None:
    if not proc.is_alive():
        pytest.fail(f"lab peer {proc.name} died during the session\n{proc.describe(80)}", pytrace=False)


@pytest.fixture(scope="session")
def lab_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Configs, certificates and peer logs for this session."""
    return tmp_path_factory.mktemp("lab")


@pytest.fixture(scope="session")
def lab_pki(lab_dir: Path) -> LabPKI:
    t0 = time.monotonic()
    pki = build_lab_pki(lab_dir / "pki")
    _LAB_TIMINGS["pki"] = time.monotonic() - t0
    return pki


class KamailioLab(Mapping[str, tuple[str, int]]):
    """Listener name -> (host, port) of the session's Kamailio; `.instance` is the running server."""

    def __init__(self, instance: KamailioInstance) -> None:
        self.instance = instance
        self.listeners: dict[str, Listener] = dict(instance.listeners)

    def __getitem__(self, name: str) -> tuple[str, int]:
        return self.listeners[name].address

    def __iter__(self) -> Iterator[str]:
        return iter(self.listeners)

    def __len__(self) -> int:
        return len(self.listeners)


@pytest.fixture(scope="session")
def kamailio_lab(lab_pki: LabPKI, lab_dir: Path) -> Iterator[KamailioLab]:
    def make() -> KamailioInstance:
        listeners = [
            Listener(name, transport, host, allocate_port(), tls)  # type: ignore[arg-type]
            for name, (transport, host, tls) in KAMAILIO_LISTENERS.items()
        ]
        return KamailioInstance(
            listeners, workdir=lab_dir, server_certs=lab_pki.server_certs, ca_file=lab_pki.ca_file
        )

    with _lab_failures():
        instance = _start_with_retry("kamailio", make, KamailioInstance.start)
    _LAB_PROCESSES.append(instance.process)
    try:
        yield KamailioLab(instance)
        _assert_survived(instance.process)
    finally:
        instance.stop()


@pytest.fixture(scope="session")
def sipp_servers(lab_dir: Path) -> Iterator[SippServers]:
    """delayed200, busy503, silent, ok200 -> (host, port); a lookup restarts a server that exited."""
    servers: dict[str, SippServer] = {}
    try:
        with _lab_failures():
            for spec in SIPP_SPECS:
                servers[spec.name] = _start_with_retry(
                    f"sipp-{spec.name}",
                    lambda spec=spec: SippServer(spec, port=allocate_port(), log_dir=lab_dir),  # type: ignore[misc]
                    SippServer.start,
                )
                _LAB_PROCESSES.append(servers[spec.name].process)
        yield SippServers(servers)
        problems = [f"SIPp {name}: {p}" for name, server in servers.items() for p in server.problems()]
        if problems:
            pytest.fail("lab SIPp servers died during the session:\n" + "\n".join(problems), pytrace=False)
    finally:
        for server in servers.values():
            server.stop()


@pytest.fixture(scope="session")
def socat_mtls_sipp(lab_pki: LabPKI, lab_dir: Path, sipp_servers: SippServers) -> Iterator[tuple[str, int]]:
    """A socat mutual-TLS front end (lab CA, TLS 1.2+) in front of the ok200 SIPp server."""
    upstream = sipp_servers["ok200"]
    with _lab_failures():
        front = _start_with_retry(
            "socat",
            lambda: SocatTlsFrontEnd(
                port=allocate_port(),
                upstream=upstream,
                cert_file=lab_pki.server.cert_file,
                key_file=lab_pki.server.key_file,
                ca_file=lab_pki.ca_file,
                log_dir=lab_dir,
            ),
            SocatTlsFrontEnd.start,
        )
    _LAB_PROCESSES.append(front.process)
    try:
        yield front.address
        _assert_survived(front.process)
    finally:
        front.stop()


@pytest.fixture(scope="session")
def lab_netns(lab_dir: Path) -> Iterator[NetNamespace]:
    """A namespace whose address drops SYNs to BLACKHOLE_PORT and resets REMOTE_REFUSED_PORT."""
    ns = NetNamespace(
        nft_rules=blackhole_ruleset(
            drop_ports=[BLACKHOLE_PORT],
            reset_ports=[REMOTE_REFUSED_PORT],
            unreachable_ports=[UNREACHABLE_PORT],
        ),
        log_dir=lab_dir,
    )
    t0 = time.monotonic()
    with _lab_failures():
        sweep_stale_namespaces()
        ns.create()
    _LAB_TIMINGS["netns"] = time.monotonic() - t0
    try:
        yield ns
    finally:
        ns.delete()


@pytest.fixture(scope="session")
def blackhole(lab_netns: NetNamespace) -> tuple[str, int]:
    """(address, port) where a TCP connect times out for real: nftables drops the SYN."""
    assert lab_netns.address is not None
    return (lab_netns.address.ns_ip, BLACKHOLE_PORT)


@pytest.fixture(scope="session")
def blackhole_address(blackhole: tuple[str, int]) -> tuple[str, int]:
    """Alias of `blackhole`."""
    return blackhole


@pytest.fixture(scope="session")
def remote_refused(lab_netns: NetNamespace) -> tuple[str, int]:
    """(address, port) on the namespace host that answers a SYN with a TCP reset."""
    assert lab_netns.address is not None
    return (lab_netns.address.ns_ip, REMOTE_REFUSED_PORT)


@pytest.fixture(scope="session")
def remote_unreachable(lab_netns: NetNamespace) -> tuple[str, int]:
    """(address, port) on the namespace host that answers a SYN with ICMP host-unreachable."""
    assert lab_netns.address is not None
    return (lab_netns.address.ns_ip, UNREACHABLE_PORT)


@pytest.fixture(scope="session")
def http_server(lab_dir: Path) -> Iterator[tuple[str, int]]:
    """(host, port) of a real HTTP server (Debian's blackbox_exporter) standing where SIP is expected."""
    port = allocate_port()
    config = lab_dir / "blackbox.yml"
    config.write_text("modules:\n  tcp_connect:\n    prober: tcp\n")
    proc = LabProcess(
        "blackbox-exporter",
        [
            require_binary("prometheus-blackbox-exporter"),
            f"--config.file={config}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        log_dir=lab_dir,
        ready=[("127.0.0.1", port)],
    )
    with _lab_failures():
        proc.start()
    _LAB_PROCESSES.append(proc)
    try:
        yield ("127.0.0.1", port)
    finally:
        proc.stop()


@pytest.fixture(scope="session")
def closed_port() -> Iterator[tuple[str, int]]:
    """("127.0.0.1", port): bound by us, never listening: connects are refused and nobody can take it."""
    sock = hold_closed_port("127.0.0.1")
    try:
        yield sock.getsockname()[:2]
    finally:
        sock.close()


# -- reporting ------------------------------------------------------------------------------------------


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if report.failed and item.get_closest_marker("lab") is not None and _LAB_PROCESSES:
        report.sections.append(("lab peer logs", "\n\n".join(p.describe(20) for p in _LAB_PROCESSES)))
    return report


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _LAB_TIMINGS:
        parts = ", ".join(f"{name} {secs:.2f}s" for name, secs in _LAB_TIMINGS.items())
        terminalreporter.write_line(f"lab start-up: {parts}")
