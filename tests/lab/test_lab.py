"""Sanity checks that every lab peer is real and answers as configured.

Only the stdlib (socket, ssl) and cryptography are used to talk to the peers here, never umprobe code, so
a failure in this file is a lab problem, not a probe bug. Every I/O runs under a socket timeout.
"""

from __future__ import annotations

import socket
import ssl
import threading
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.lab.kamailio import EXCHANGE_SERVER_HEADER
from tests.lab.netns import NetNamespace
from tests.lab.pki import LabPKI
from tests.lab.ports import allocate_port
from tests.lab.sipclient import connect, exchange_options, options_request, read_reply, tls_client_context
from tests.lab.sipp import SippServer, SippSpec

pytestmark = pytest.mark.lab

TIMEOUT = 5.0


def _mtls(pki: LabPKI, **kwargs: object) -> ssl.SSLContext:
    return tls_client_context(pki.ca_file, cert=(pki.client.cert_file, pki.client.key_file), **kwargs)  # type: ignore[arg-type]


def _expect_tls_rejection(address: tuple[str, int], ctx: ssl.SSLContext) -> str:
    """Handshake (which may itself fail), send OPTIONS, read: no SIP response may arrive.

    Returns the error texts seen. A peer that rejects us after a TLS 1.3 handshake may already have closed
    the connection when our request goes out, so the send can fail with EOF or a reset while the alert that
    says why is still waiting in our receive buffer: read it anyway.
    """
    host, port = address
    errors: list[str] = []
    with connect(address, TIMEOUT) as raw:
        try:
            tls = ctx.wrap_socket(raw, server_hostname=host)
        except (ssl.SSLError, ConnectionResetError) as exc:
            return str(exc)
        with tls:
            try:
                tls.sendall(options_request(host, port, "tls", tls.getsockname()[:2]))
            except (ssl.SSLError, ConnectionResetError, BrokenPipeError) as exc:
                errors.append(str(exc))
            try:
                data = tls.recv(4096)
            except (ssl.SSLError, ConnectionResetError) as exc:
                errors.append(str(exc))
                return " / ".join(errors)
    pytest.fail(f"expected a TLS rejection, got {data!r} (errors: {errors})")


# -- Kamailio ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("listener", ["tcp4", "tcp6"])
def test_kamailio_answers_options_over_tcp(kamailio_lab, listener):
    reply, _ = exchange_options(kamailio_lab[listener], timeout=TIMEOUT)
    assert reply.status == 200
    assert reply.headers["server"] == EXCHANGE_SERVER_HEADER


@pytest.mark.parametrize("listener", ["mtls4", "mtls6"])
def test_kamailio_answers_options_over_mutual_tls(kamailio_lab, lab_pki, listener):
    reply, version = exchange_options(kamailio_lab[listener], timeout=TIMEOUT, tls=_mtls(lab_pki))
    assert reply.status == 200
    assert version == "TLSv1.3"
    assert reply.headers["via"].startswith("SIP/2.0/TLS")


def test_kamailio_mtls_over_tls12_answers_too(kamailio_lab, lab_pki):
    ctx = _mtls(lab_pki, maximum=ssl.TLSVersion.TLSv1_2)
    reply, version = exchange_options(kamailio_lab["mtls4"], timeout=TIMEOUT, tls=ctx)
    assert (reply.status, version) == (200, "TLSv1.2")


@pytest.mark.parametrize("listener", ["mtls4", "mtls6", "mtls_rsa"])
def test_kamailio_mtls_without_client_cert_is_rejected_on_first_read(kamailio_lab, lab_pki, listener):
    # TLS 1.3: our handshake completes; the server's verdict arrives as an alert on the first read.
    error = _expect_tls_rejection(kamailio_lab[listener], tls_client_context(lab_pki.ca_file))
    assert "CERTIFICATE_REQUIRED" in error


def test_kamailio_mtls_without_client_cert_fails_tls12_handshake(kamailio_lab, lab_pki):
    ctx = tls_client_context(lab_pki.ca_file, maximum=ssl.TLSVersion.TLSv1_2)
    error = _expect_tls_rejection(kamailio_lab["mtls4"], ctx)
    assert "HANDSHAKE_FAILURE" in error  # alert 40


def test_kamailio_rejects_client_cert_from_rogue_ca(kamailio_lab, lab_pki):
    ctx = tls_client_context(
        lab_pki.ca_file, cert=(lab_pki.rogue_client.cert_file, lab_pki.rogue_client.key_file)
    )
    error = _expect_tls_rejection(kamailio_lab["mtls4"], ctx)
    assert "UNKNOWN_CA" in error


def test_kamailio_server_auth_only_listener_is_tls12_only(kamailio_lab, lab_pki):
    address = kamailio_lab["tls12_server_auth"]
    reply, version = exchange_options(address, timeout=TIMEOUT, tls=tls_client_context(lab_pki.ca_file))
    assert (reply.status, version) == (200, "TLSv1.2")
    with pytest.raises(ssl.SSLError, match="PROTOCOL_VERSION"):
        exchange_options(
            address, timeout=TIMEOUT, tls=tls_client_context(lab_pki.ca_file, minimum=ssl.TLSVersion.TLSv1_3)
        )


def test_kamailio_expired_cert_fails_verification_but_listener_works(kamailio_lab, lab_pki):
    address = kamailio_lab["tls_expired"]
    with pytest.raises(ssl.SSLCertVerificationError, match="expired"):
        exchange_options(address, timeout=TIMEOUT, tls=tls_client_context(lab_pki.ca_file))
    reply, _ = exchange_options(address, timeout=TIMEOUT, tls=tls_client_context(None))
    assert reply.status == 200


def test_kamailio_wrong_name_cert_fails_hostname_check(kamailio_lab, lab_pki):
    address = kamailio_lab["tls_wrong_name"]
    with pytest.raises(ssl.SSLCertVerificationError, match="mismatch"):
        exchange_options(address, timeout=TIMEOUT, tls=tls_client_context(lab_pki.ca_file))
    # The chain is good: asking for the name the certificate does carry succeeds.
    ctx = tls_client_context(lab_pki.ca_file)
    reply, _ = exchange_options(address, timeout=TIMEOUT, tls=ctx, server_name="other.lab.test")
    assert reply.status == 200


def test_kamailio_rsa_listener_presents_rsa_2048(kamailio_lab, lab_pki):
    host, port = kamailio_lab["mtls_rsa"]
    ctx = _mtls(lab_pki)
    with connect((host, port), TIMEOUT) as raw, ctx.wrap_socket(raw, server_hostname="um.lab.test") as tls:
        der = tls.getpeercert(binary_form=True)
        tls.sendall(options_request(host, port, "tls", tls.getsockname()[:2]))
        assert read_reply(tls).status == 200
    assert der is not None
    key = x509.load_der_x509_certificate(der).public_key()
    assert isinstance(key, rsa.RSAPublicKey)
    assert key.key_size == 2048


def test_kamailio_survives_concurrent_mtls(kamailio_lab, lab_pki):
    """The tcp_children=1 guard: concurrent TLS handshakes crash 5.6.3 with 2+ TCP workers."""
    ctx = _mtls(lab_pki)
    statuses: list[int] = []
    errors: list[BaseException] = []

    def worker() -> None:
        for _ in range(4):
            try:
                statuses.append(exchange_options(kamailio_lab["mtls4"], timeout=TIMEOUT, tls=ctx)[0].status)
            except BaseException as exc:
                errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors
    assert statuses == [200] * 32
    assert kamailio_lab.instance.process.is_alive()


# -- SIPp --------------------------------------------------------------------------------------------


def test_sipp_delayed_200_takes_at_least_1_5_s(sipp_servers):
    t0 = time.monotonic()
    reply, _ = exchange_options(sipp_servers["delayed200"], timeout=TIMEOUT)
    elapsed = time.monotonic() - t0
    assert reply.status == 200
    assert 1.5 <= elapsed < 3.0


def test_sipp_503_carries_retry_after(sipp_servers):
    t0 = time.monotonic()
    reply, _ = exchange_options(sipp_servers["busy503"], timeout=TIMEOUT)
    assert reply.status == 503
    assert reply.headers["retry-after"] == "30"
    assert reply.headers["server"] == EXCHANGE_SERVER_HEADER
    assert time.monotonic() - t0 < 0.5


def test_sipp_ok200_answers_fast(sipp_servers):
    for _ in range(3):
        t0 = time.monotonic()
        reply, _ = exchange_options(sipp_servers["ok200"], timeout=TIMEOUT)
        assert reply.status == 200
        assert reply.headers["to"].endswith("SIPpTag01" + reply.headers["to"].rsplit("SIPpTag01", 1)[1])
        assert time.monotonic() - t0 < 0.5


def test_sipp_silent_stays_silent_with_connection_open(sipp_servers):
    host, port = sipp_servers["silent"]
    with connect((host, port), TIMEOUT) as sock:
        sock.sendall(options_request(host, port, "tcp", sock.getsockname()[:2]))
        sock.settimeout(2.0)
        t0 = time.monotonic()
        with pytest.raises(TimeoutError):
            sock.recv(4096)  # neither data nor EOF
        assert time.monotonic() - t0 >= 1.9


def test_sipp_server_restarts_on_demand_after_exit(lab_dir: Path) -> None:
    server = SippServer(SippSpec("restart-check", "answer200"), port=allocate_port(), log_dir=lab_dir).start()
    try:
        first_pid = server.process.pid
        server.process.stop()
        server.ensure_running()
        assert server.process.pid != first_pid
        assert server.restarts == 1
        assert len(server.crashes) == 1  # an exit that was not SIPp's global timeout counts as a crash
        assert exchange_options(server.address, timeout=TIMEOUT)[0].status == 200
    finally:
        server.stop()


# -- socat -------------------------------------------------------------------------------------------


def test_socat_mtls_front_end_answers_200(socat_mtls_sipp, lab_pki):
    reply, version = exchange_options(socat_mtls_sipp, timeout=TIMEOUT, tls=_mtls(lab_pki))
    assert reply.status == 200
    assert version == "TLSv1.3"
    assert reply.headers["server"] == EXCHANGE_SERVER_HEADER


def test_socat_mtls_front_end_requires_client_cert(socat_mtls_sipp, lab_pki):
    error = _expect_tls_rejection(socat_mtls_sipp, tls_client_context(lab_pki.ca_file))
    assert "CERTIFICATE_REQUIRED" in error


# -- network ---------------------------------------------------------------------------------------


def test_blackhole_connect_times_out(blackhole):
    t0 = time.monotonic()
    with pytest.raises(TimeoutError), socket.create_connection(blackhole, timeout=2.0):
        pass
    assert 1.9 <= time.monotonic() - t0 < 3.0


def test_remote_refused_address_resets(remote_refused):
    with pytest.raises(ConnectionRefusedError), socket.create_connection(remote_refused, timeout=2.0):
        pass


def test_closed_port_refuses(closed_port):
    with pytest.raises(ConnectionRefusedError), socket.create_connection(closed_port, timeout=2.0):
        pass


def test_netns_teardown_removes_everything(lab_dir):
    ns = NetNamespace(log_dir=lab_dir).create()
    try:
        assert ns.exists()
        assert Path(f"/sys/class/net/{ns.host_if}").exists()
    finally:
        ns.delete()
    assert not ns.exists()
    assert not Path(f"/sys/class/net/{ns.host_if}").exists()


@pytest.mark.parametrize("binary", ["umprobe-lab-no-such-peer"])
def test_missing_peer_binary_fails_with_install_hint(binary):
    from tests.lab.proc import LabError, require_binary

    with pytest.raises(LabError, match="scripts/install-test-peers"):
        require_binary(binary)
