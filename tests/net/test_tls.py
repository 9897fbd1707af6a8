"""TLSStream against in-process peers: umprobe's own server-side TLSStream or a raw fake, over memory streams.

The raw OpenSSL reason strings behind each failure class (pyOpenSSL 26.4 on the OpenSSL 4.0 bundled with
cryptography 50) are asserted next to the classification, so a library upgrade that renames them shows up
here first. Where OpenSSL 3.0 spells one differently, both spellings are accepted.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import re
import weakref
from dataclasses import dataclass, field
from datetime import UTC, datetime

import pytest
import trio
import trio.testing
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from OpenSSL import SSL

from tests.net.conftest import PKI, ClientCtxFactory, ServerCtxFactory
from umprobe.net.errors import ConnectionClosed, NetError, TLSError
from umprobe.net.tls import TLSInfo, TLSStream, _reasons, make_server_context

CAP = 10  # seconds: the fail_after cap on every I/O test


@dataclass
class ServerOutcome:
    info: TLSInfo | None = None
    error: NetError | None = None
    received: bytearray = field(default_factory=bytearray)
    eof: bool = False


async def serve(server: TLSStream, outcome: ServerOutcome, *, echo: bool = True) -> None:
    """The in-process peer: handshake, then echo until the client says goodbye; record what happened."""
    try:
        outcome.info = await server.do_handshake()
        while echo:
            data = await server.receive_some()
            if not data:
                outcome.eof = True
                break
            outcome.received += data
            await server.send_all(data)
    except NetError as exc:
        outcome.error = exc
    finally:
        await server.aclose()


def make_pair(
    client_ctx: SSL.Context,
    server_ctx: SSL.Context,
    *,
    server_hostname: str | None = "localhost",
    verify_hostname: str | None = None,
    insecure: bool = False,
    lockstep: bool = False,
) -> tuple[TLSStream, TLSStream]:
    client_transport: trio.abc.Stream
    server_transport: trio.abc.Stream
    if lockstep:
        client_transport, server_transport = trio.testing.lockstep_stream_pair()
    else:
        client_transport, server_transport = trio.testing.memory_stream_pair()
    client = TLSStream(
        client_transport,
        client_ctx,
        server_hostname=server_hostname,
        verify_hostname=verify_hostname,
        insecure=insecure,
    )
    server = TLSStream(server_transport, server_ctx, server_side=True)
    return client, server


async def echo_once(client: TLSStream, payload: bytes) -> bytes:
    await client.send_all(payload)
    got = b""
    while len(got) < len(payload):
        chunk = await client.receive_some()
        assert chunk, "server closed before echoing"
        got += chunk
    return got


def der_sha256(pem: bytes) -> str:
    cert = x509.load_pem_x509_certificate(pem)
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


# -- success paths ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("version", "expected"), [("1.2", "TLSv1.2"), ("1.3", "TLSv1.3")])
async def test_handshake_and_echo(
    pki: PKI, client_ctx: ClientCtxFactory, server_ctx: ServerCtxFactory, version: str, expected: str
) -> None:
    client, server = make_pair(client_ctx(min_version=version, max_version=version), server_ctx())
    outcome = ServerOutcome()
    with trio.fail_after(CAP):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve, server, outcome)
            info = await client.do_handshake()
            assert (
                await echo_once(client, b"OPTIONS sip:x SIP/2.0\r\n\r\n") == b"OPTIONS sip:x SIP/2.0\r\n\r\n"
            )
            big = bytes(range(256)) * 300  # several TLS records
            assert await echo_once(client, big) == big
            await client.aclose()
    assert info.version == expected
    assert info.cipher
    assert info.verified
    assert info.verify_error is None
    assert info.client_cert_requested is False
    assert info.client_cert_sent is False
    leaf = info.peer_chain[0]
    assert leaf.subject == "CN=localhost"
    assert leaf.sha256 == der_sha256(pki.server.issued.cert_pem)
    assert client.info() is info
    # The client's aclose sent close_notify: the server saw a clean end of stream, not an error.
    assert outcome.eof and outcome.error is None


@pytest.mark.parametrize("version", ["1.2", "1.3"])
async def test_mutual_tls_success(
    pki: PKI, client_ctx: ClientCtxFactory, server_ctx: ServerCtxFactory, version: str
) -> None:
    client, server = make_pair(
        client_ctx(cert=pki.client, max_version=version), server_ctx(require_client_cert=True)
    )
    outcome = ServerOutcome()
    with trio.fail_after(CAP):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve, server, outcome)
            info = await client.do_handshake()
            assert await echo_once(client, b"ping") == b"ping"
            await client.aclose()
    assert info.version == f"TLSv{version}"
    assert info.verified
    assert info.client_cert_requested and info.client_cert_sent
    # make_server_context sends the CA bundle's subjects as acceptable CA names.
    assert info.client_ca_names == ("CN=umprobe test CA,O=umprobe development",)
    assert outcome.error is None
    assert outcome.info is not None
    assert outcome.info.verified
    assert outcome.info.client_cert_requested and outcome.info.client_cert_sent
    assert outcome.info.peer_chain[0].subject == "CN=probe.test"


async def test_optional_client_cert_request_is_reported(pki: PKI, client_ctx: ClientCtxFactory) -> None:
    # A server that asks for a certificate but does not insist: the client without one still gets in.
    ctx = make_server_context(cert_file=pki.server.crt, key_file=pki.server.key, ca_file=pki.ca_file)
    client, server = make_pair(client_ctx(), ctx)
    outcome = ServerOutcome()
    with trio.fail_after(CAP):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve, server, outcome)
            info = await client.do_handshake()
            assert await echo_once(client, b"x") == b"x"
            await client.aclose()
    assert info.client_cert_requested and not info.client_cert_sent
    assert outcome.info is not None and not outcome.info.client_cert_sent


# -- client certificate rejected ---------------------------------------------------------------------------


async def test_missing_client_cert_tls12_fails_in_handshake(
    pki: PKI, client_ctx: ClientCtxFactory, server_ctx: ServerCtxFactory
) -> None:
    client, server = make_pair(client_ctx(max_version="1.2"), server_ctx(require_client_cert=True))
    outcome = ServerOutcome()
    with trio.fail_after(CAP):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve, server, outcome)
            with pytest.raises(TLSError) as caught:
                await client.do_handshake()
            await client.aclose()
    err = caught.value
    assert err.kind == "client_cert_rejected"
    assert err.alert == "handshake_failure"
    assert _reasons(err.__cause__)[0] in ("tls alert handshake failure", "sslv3 alert handshake failure")  # type: ignore[arg-type]
    assert "none was sent" in err.detail
    # The server's chain was already received and is reported with the failure.
    assert err.info is not None and err.info.peer_chain[0].subject == "CN=localhost"
    assert err.info.client_cert_requested and not err.info.client_cert_sent
    assert isinstance(outcome.error, TLSError)
    assert _reasons(outcome.error.__cause__) == ["peer did not return a certificate"]  # type: ignore[arg-type]


async def test_missing_client_cert_tls13_surfaces_on_first_read(
    pki: PKI, client_ctx: ClientCtxFactory, server_ctx: ServerCtxFactory
) -> None:
    client, server = make_pair(client_ctx(min_version="1.3"), server_ctx(require_client_cert=True))
    outcome = ServerOutcome()
    with trio.fail_after(CAP):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve, server, outcome)
            # Step 1: the client's handshake completes: TLS 1.3 finishes before the server checks us.
            info = await client.do_handshake()
            assert info.version == "TLSv1.3"
            assert info.verified
            assert info.client_cert_requested and not info.client_cert_sent
            # Step 2: the request goes out without complaint.
            await client.send_all(b"OPTIONS sip:x SIP/2.0\r\n\r\n")
            # Step 3: the refusal arrives as an alert on the first read, and only there.
            with pytest.raises(TLSError) as caught:
                await client.receive_some()
            await client.aclose()
    err = caught.value
    assert err.kind == "client_cert_rejected"
    assert err.alert == "certificate_required"
    assert "after the handshake" in err.detail
    assert err.info is info
    assert _reasons(err.__cause__) == ["tlsv13 alert certificate required"]  # type: ignore[arg-type]


@pytest.mark.parametrize("version", ["1.2", "1.3"])
async def test_client_cert_from_another_ca_is_rejected(
    pki: PKI, client_ctx: ClientCtxFactory, server_ctx: ServerCtxFactory, version: str
) -> None:
    client, server = make_pair(
        client_ctx(cert=pki.client_rogue, max_version=version), server_ctx(require_client_cert=True)
    )
    outcome = ServerOutcome()
    with trio.fail_after(CAP):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve, server, outcome)
            if version == "1.2":
                with pytest.raises(TLSError) as caught:
                    await client.do_handshake()
            else:
                info = await client.do_handshake()
                assert info.client_cert_sent
                with pytest.raises(TLSError) as caught:
                    await client.receive_some()
            await client.aclose()
    assert caught.value.kind == "client_cert_rejected"
    assert caught.value.alert == "unknown_ca"
    assert _reasons(caught.value.__cause__) == ["tlsv1 alert unknown ca"]  # type: ignore[arg-type]
    assert "rejected our client certificate" in caught.value.detail
    assert isinstance(outcome.error, TLSError)
    assert _reasons(outcome.error.__cause__) == ["certificate verify failed"]  # type: ignore[arg-type]


# -- server certificate verification ---------------------------------------------------------------------


async def test_unknown_server_ca_is_verify_failed_with_chain(
    pki: PKI, client_ctx: ClientCtxFactory, server_ctx: ServerCtxFactory
) -> None:
    client, server = make_pair(client_ctx(), server_ctx(pki.server_rogue))
    outcome = ServerOutcome()
    with trio.fail_after(CAP):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve, server, outcome)
            with pytest.raises(TLSError) as caught:
                await client.do_handshake()
            # Refused is refused: data calls re-raise the verdict.
            with pytest.raises(TLSError, match="refused"):
                await client.send_all(b"x")
            await client.aclose()
    err = caught.value
    assert err.kind == "verify_failed"
    assert "unable to get local issuer certificate" in err.detail
    info = err.info
    assert info is not None and not info.verified
    assert info.verify_error is not None and "CN=localhost" in info.verify_error
    leaf = info.peer_chain[0]
    cert = pki.server_rogue.issued.certificate
    assert leaf.subject == "CN=localhost"
    assert leaf.issuer == "CN=rogue CA,O=umprobe development"
    assert leaf.san == ("DNS:localhost",)
    assert leaf.not_before == cert.not_valid_before_utc
    assert leaf.not_after == cert.not_valid_after_utc
    assert leaf.sha256 == der_sha256(pki.server_rogue.issued.cert_pem)
    assert leaf.serial == format(cert.serial_number, "x")
    assert leaf.key_type == "EC-secp256r1"
    # The session itself was fine, so the client said goodbye and the server saw a clean close.
    assert outcome.error is None and outcome.eof


async def test_hostname_mismatch_names_both(
    client_ctx: ClientCtxFactory, server_ctx: ServerCtxFactory
) -> None:
    client, server = make_pair(client_ctx(), server_ctx(), server_hostname="cas01.contoso.local")
    outcome = ServerOutcome()
    with trio.fail_after(CAP):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve, server, outcome)
            with pytest.raises(TLSError) as caught:
                await client.do_handshake()
            await client.aclose()
    assert caught.value.kind == "verify_failed"
    assert (
        "hostname mismatch: wanted cas01.contoso.local, certificate has DNS:localhost, IP:127.0.0.1, IP:::1"
        in caught.value.detail
    )


async def test_verify_hostname_overrides_sni(
    client_ctx: ClientCtxFactory, server_ctx: ServerCtxFactory
) -> None:
    seen: list[bytes | None] = []
    ctx = server_ctx()
    ctx.set_tlsext_servername_callback(lambda conn: seen.append(conn.get_servername()))
    client, server = make_pair(
        client_ctx(), ctx, server_hostname="localhost", verify_hostname="cas01.contoso.local"
    )
    with trio.fail_after(CAP):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve, server, ServerOutcome())
            with pytest.raises(TLSError, match=re.escape("wanted cas01.contoso.local")):
                await client.do_handshake()
            await client.aclose()
    assert seen == [b"localhost"]


@pytest.mark.parametrize("name", ["127.0.0.1", "::1", "[::1]"])
async def test_ip_san_match_without_sni(
    pki: PKI, client_ctx: ClientCtxFactory, server_ctx: ServerCtxFactory, name: str
) -> None:
    seen: list[bytes | None] = []
    ctx = server_ctx(pki.server_ip_only)
    ctx.set_tlsext_servername_callback(lambda conn: seen.append(conn.get_servername()))
    client, server = make_pair(client_ctx(), ctx, server_hostname=name)
    with trio.fail_after(CAP):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve, server, ServerOutcome())
            info = await client.do_handshake()
            await client.aclose()
    assert info.verified
    assert info.peer_chain[0].san == ("IP:127.0.0.1", "IP:::1")
    assert seen in ([], [None])  # an IP literal is never sent as SNI (RFC 6066 §3)


async def test_ip_san_does_not_match_other_ip(
    pki: PKI, client_ctx: ClientCtxFactory, server_ctx: ServerCtxFactory
) -> None:
    client, server = make_pair(client_ctx(), server_ctx(pki.server_ip_only), server_hostname="127.0.0.2")
    with trio.fail_after(CAP):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve, server, ServerOutcome())
            with pytest.raises(
                TLSError, match=re.escape("wanted 127.0.0.2, certificate has IP:127.0.0.1, IP:::1")
            ):
                await client.do_handshake()
            await client.aclose()


async def test_expired_server_cert_is_verify_failed(
    pki: PKI, client_ctx: ClientCtxFactory, server_ctx: ServerCtxFactory
) -> None:
    client, server = make_pair(client_ctx(), server_ctx(pki.server_expired))
    with trio.fail_after(CAP):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve, server, ServerOutcome())
            with pytest.raises(TLSError) as caught:
                await client.do_handshake()
            await client.aclose()
    err = caught.value
    assert err.kind == "verify_failed"
    assert "certificate has expired (depth 0: CN=localhost)" in err.detail
    assert err.info is not None and err.info.peer_chain[0].days_left(datetime.now(UTC)) < -1.9


async def test_insecure_completes_and_reports_unverified(
    pki: PKI, client_ctx: ClientCtxFactory, server_ctx: ServerCtxFactory
) -> None:
    client, server = make_pair(client_ctx(), server_ctx(pki.server_rogue), insecure=True)
    with trio.fail_after(CAP):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve, server, ServerOutcome())
            info = await client.do_handshake()
            assert await echo_once(client, b"hello") == b"hello"
            await client.aclose()
    assert info.verified is False
    assert info.verify_error is not None and "unable to get local issuer certificate" in info.verify_error


# -- handshake failures ----------------------------------------------------------------------------------


async def test_version_mismatch_client_13_server_12(
    client_ctx: ClientCtxFactory, server_ctx: ServerCtxFactory
) -> None:
    client, server = make_pair(client_ctx(min_version="1.3"), server_ctx(max_version="1.2"))
    outcome = ServerOutcome()
    with trio.fail_after(CAP):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve, server, outcome)
            with pytest.raises(TLSError) as caught:
                await client.do_handshake()
            await client.aclose()
    err = caught.value
    assert err.kind == "handshake_failed"
    assert err.alert == "protocol_version"
    assert err.detail == "peer sent alert protocol_version: no shared TLS version: offered 1.3-1.3"
    assert _reasons(err.__cause__) == ["tlsv1 alert protocol version"]  # type: ignore[arg-type]
    assert isinstance(outcome.error, TLSError)
    assert outcome.error.detail == "no shared TLS version: offered 1.2-1.2 (OpenSSL: unsupported protocol)"


async def test_version_mismatch_client_12_server_13(
    client_ctx: ClientCtxFactory, server_ctx: ServerCtxFactory
) -> None:
    client, server = make_pair(client_ctx(max_version="1.2"), server_ctx(min_version="1.3"))
    with trio.fail_after(CAP):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve, server, ServerOutcome())
            with pytest.raises(TLSError) as caught:
                await client.do_handshake()
            await client.aclose()
    assert caught.value.kind == "handshake_failed"
    assert caught.value.detail == "peer sent alert protocol_version: no shared TLS version: offered 1.2-1.2"


async def plain_text_peer(stream: trio.abc.Stream, *, hang_up: bool) -> None:
    hello = await stream.receive_some()
    assert hello[:1] == b"\x16"  # a TLS handshake record: the ClientHello
    await stream.send_all(b"SIP/2.0 400 Bad\r\n\r\n")
    if hang_up:
        await stream.aclose()
    else:
        await trio.sleep_forever()


@pytest.mark.parametrize("hang_up", [False, True])
async def test_plain_text_peer_is_handshake_failed(client_ctx: ClientCtxFactory, hang_up: bool) -> None:
    client_transport, server_transport = trio.testing.memory_stream_pair()
    client = TLSStream(client_transport, client_ctx(), server_hostname="localhost")
    with trio.fail_after(CAP):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(lambda: plain_text_peer(server_transport, hang_up=hang_up))
            with pytest.raises(TLSError) as caught:
                await client.do_handshake()
            await client.aclose()
            nursery.cancel_scope.cancel()
    assert caught.value.kind == "handshake_failed"
    assert "peer does not speak TLS: it sent 'SIP/2.0 400 Bad'" in caught.value.detail
    assert _reasons(caught.value.__cause__) == ["wrong version number"]  # type: ignore[arg-type]
    assert caught.value.info is None


async def test_peer_closing_mid_handshake_is_connection_closed(client_ctx: ClientCtxFactory) -> None:
    client_transport, server_transport = trio.testing.memory_stream_pair()
    client = TLSStream(client_transport, client_ctx(), server_hostname="localhost")

    async def hang_up_after_hello() -> None:
        await server_transport.receive_some()
        await server_transport.aclose()

    with trio.fail_after(CAP):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(hang_up_after_hello)
            with pytest.raises(ConnectionClosed, match="during the TLS handshake") as caught:
                await client.do_handshake()
            await client.aclose()
    assert isinstance(caught.value.__cause__, SSL.SysCallError)
    assert caught.value.__cause__.args == (-1, "Unexpected EOF")
    partial = client.info()
    assert partial.version is None and partial.verified is False and partial.peer_chain == ()


async def test_peer_closing_after_cert_request_says_so(
    pki: PKI, client_ctx: ClientCtxFactory, server_ctx: ServerCtxFactory
) -> None:
    """A TLS 1.2 server that hangs up (no alert) on a missing client certificate: ConnectionClosed + hint."""
    client_transport, server_transport = trio.testing.memory_stream_pair()
    client = TLSStream(client_transport, client_ctx(max_version="1.2"), server_hostname="localhost")
    server_conn = SSL.Connection(server_ctx(require_client_cert=True), None)
    server_conn.set_accept_state()

    async def rude_server() -> None:
        # Drive a raw pyOpenSSL server until it has sent its flight (incl. CertificateRequest), then vanish.
        while True:
            server_conn.bio_write(await server_transport.receive_some())
            with contextlib.suppress(SSL.WantReadError):
                server_conn.do_handshake()
            out = server_conn.bio_read(65536)
            if out:
                await server_transport.send_all(out)
                await server_transport.aclose()
                return

    with trio.fail_after(CAP):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(rude_server)
            with pytest.raises(ConnectionClosed) as caught:
                await client.do_handshake()
            await client.aclose()
    assert "requested a client certificate and none was sent" in caught.value.detail


async def test_cancelled_handshake_leaves_stream_closable(client_ctx: ClientCtxFactory) -> None:
    client_transport, server_transport = trio.testing.memory_stream_pair()
    client = TLSStream(client_transport, client_ctx(), server_hostname="localhost")
    with trio.fail_after(CAP):
        with trio.move_on_after(0.05) as scope:
            await client.do_handshake()  # the peer never answers
        assert scope.cancelled_caught
        await client.aclose()
        await client.aclose()  # idempotent
        # The transport really is closed: the silent peer sees the ClientHello, then EOF.
        received = b""
        while chunk := await server_transport.receive_some():
            received += chunk
        assert received[:1] == b"\x16"
    with pytest.raises(trio.ClosedResourceError):
        await client.receive_some()


async def test_aclose_under_cancelled_scope_still_closes_transport(
    client_ctx: ClientCtxFactory, server_ctx: ServerCtxFactory
) -> None:
    client, server = make_pair(client_ctx(), server_ctx())
    with trio.fail_after(CAP):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve, server, ServerOutcome())
            await client.do_handshake()
            with trio.CancelScope() as scope:
                scope.cancel()
                await client.aclose()
    assert isinstance(client.transport_stream, trio.StapledStream)
    with pytest.raises(trio.ClosedResourceError):
        await client.transport_stream.send_all(b"x")


# -- end of stream ---------------------------------------------------------------------------------------


async def test_close_notify_is_clean_eof_and_abrupt_eof_is_connection_closed(
    client_ctx: ClientCtxFactory, server_ctx: ServerCtxFactory
) -> None:
    with trio.fail_after(CAP):
        # Clean: the server says goodbye with close_notify -> b"" (and again b"" on the next call).
        client, server = make_pair(client_ctx(), server_ctx())
        async with trio.open_nursery() as nursery:
            nursery.start_soon(client.do_handshake)
            await server.do_handshake()
        await server.aclose()
        assert await client.receive_some() == b""
        assert await client.receive_some() == b""
        await client.aclose()

        # Abrupt: the server's transport just goes away -> ConnectionClosed.
        client, server = make_pair(client_ctx(), server_ctx())
        async with trio.open_nursery() as nursery:
            nursery.start_soon(client.do_handshake)
            await server.do_handshake()
        await server.transport_stream.aclose()
        with pytest.raises(ConnectionClosed, match="without a TLS close_notify"):
            await client.receive_some()
        with pytest.raises(ConnectionClosed):  # and the stream stays broken
            await client.send_all(b"x")
        await client.aclose()


async def test_full_duplex_over_lockstep_streams(
    client_ctx: ClientCtxFactory, server_ctx: ServerCtxFactory
) -> None:
    """Both sides send and receive at once on an unbuffered transport: no deadlock (TLS 1.3 tickets too)."""
    client, server = make_pair(client_ctx(), server_ctx(), lockstep=True)
    payload = b"z" * 100_000

    async def send_and_receive(stream: TLSStream, got: bytearray) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(stream.send_all, payload)
            while len(got) < len(payload):
                got += await stream.receive_some(4096)

    client_got, server_got = bytearray(), bytearray()
    with trio.fail_after(CAP):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(send_and_receive, client, client_got)
            nursery.start_soon(send_and_receive, server, server_got)
    assert client_got == payload and server_got == payload


async def test_concurrent_receives_are_busy(
    client_ctx: ClientCtxFactory, server_ctx: ServerCtxFactory
) -> None:
    client, server = make_pair(client_ctx(), server_ctx())
    with trio.fail_after(CAP):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve, server, ServerOutcome())
            await client.do_handshake()
            nursery.start_soon(client.receive_some)
            await trio.testing.wait_all_tasks_blocked()
            with pytest.raises(trio.BusyResourceError):
                await client.receive_some()
            await client.send_all(b"unblock")
            await trio.testing.wait_all_tasks_blocked()
            await client.aclose()


# -- legacy TLS ------------------------------------------------------------------------------------------


async def test_tls10_with_legacy_cipher_at_seclevel_0(
    pki: PKI, client_ctx: ClientCtxFactory, server_ctx: ServerCtxFactory
) -> None:
    """RFC 3261's TLS_RSA_WITH_AES_128_CBC_SHA over TLS 1.0, as an old Schannel would speak it.

    Works with the OpenSSL in cryptography's wheel because min_version 1.0 appends ":@SECLEVEL=0".
    """
    server = server_ctx(pki.server_rsa, min_version="1.0", max_version="1.0")
    client, server_stream = make_pair(
        client_ctx(min_version="1.0", ciphers="AES128-SHA"), server, server_hostname="localhost"
    )
    with trio.fail_after(CAP):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve, server_stream, ServerOutcome())
            info = await client.do_handshake()
            assert await echo_once(client, b"legacy") == b"legacy"
            await client.aclose()
    assert info.version == "TLSv1"
    assert info.cipher == "AES128-SHA"
    assert info.verified
    assert info.peer_chain[0].key_type == "RSA-2048"


async def test_tls10_server_vs_default_client(
    pki: PKI, client_ctx: ClientCtxFactory, server_ctx: ServerCtxFactory
) -> None:
    server = server_ctx(pki.server_rsa, min_version="1.0", max_version="1.0")
    client, server_stream = make_pair(client_ctx(), server)
    with trio.fail_after(CAP):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve, server_stream, ServerOutcome())
            with pytest.raises(TLSError) as caught:
                await client.do_handshake()
            await client.aclose()
    assert caught.value.kind == "handshake_failed"
    assert caught.value.alert == "protocol_version"
    assert "offered 1.2-1.3" in caught.value.detail


# -- resources -------------------------------------------------------------------------------------------


async def test_failed_streams_release_their_ssl_objects(
    pki: PKI, client_ctx: ClientCtxFactory, server_ctx: ServerCtxFactory
) -> None:
    """The memory BIOs belong to the SSL object; after aclose nothing keeps a failed connection alive."""
    refs = []
    cctx, sctx = client_ctx(), server_ctx(pki.server_rogue)
    with trio.fail_after(CAP):
        for _ in range(5):
            client, server = make_pair(cctx, sctx)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(serve, server, ServerOutcome())
                with pytest.raises(TLSError):
                    await client.do_handshake()
                await client.aclose()
            refs.append(weakref.ref(client._conn))
            refs.append(weakref.ref(server._conn))
            del client, server
    gc.collect()
    assert all(ref() is None for ref in refs)


async def test_info_before_handshake_is_partial(client_ctx: ClientCtxFactory) -> None:
    client_transport, _ = trio.testing.memory_stream_pair()
    client = TLSStream(client_transport, client_ctx(), server_hostname="localhost")
    info = client.info()
    assert info == TLSInfo(
        version=None,
        cipher=None,
        verified=False,
        verify_error=None,
        peer_chain=(),
        client_cert_requested=False,
        client_cert_sent=False,
    )
    with trio.fail_after(CAP):
        await client.aclose()


# -- robustness ------------------------------------------------------------------------------------------


def trickle_stream_pair(
    max_bytes: int,
) -> tuple[trio.StapledStream[trio.abc.SendStream, trio.abc.ReceiveStream], ...]:
    """Like memory_stream_pair, but the transport delivers at most ``max_bytes`` per receive."""

    def one_way() -> tuple[trio.testing.MemorySendStream, trio.testing.MemoryReceiveStream]:
        send = trio.testing.MemorySendStream()
        recv = trio.testing.MemoryReceiveStream()

        def pump() -> None:
            trio.testing.memory_stream_pump(send, recv, max_bytes=max_bytes)

        async def apump() -> None:
            pump()

        def pump_on_close() -> None:
            # Like a kernel: a sender may close after its receiver went away, and that is no error.
            with contextlib.suppress(trio.BrokenResourceError):
                pump()

        send.send_all_hook = apump
        send.close_hook = pump_on_close
        recv.receive_some_hook = apump
        return send, recv

    a_send, b_recv = one_way()
    b_send, a_recv = one_way()
    return trio.StapledStream(a_send, a_recv), trio.StapledStream(b_send, b_recv)


@pytest.mark.parametrize("max_bytes", [1, 7, 500])
@pytest.mark.parametrize("version", ["1.2", "1.3"])
async def test_tiny_transport_reads(
    pki: PKI, client_ctx: ClientCtxFactory, server_ctx: ServerCtxFactory, max_bytes: int, version: str
) -> None:
    client_transport, server_transport = trickle_stream_pair(max_bytes)
    client = TLSStream(
        client_transport, client_ctx(cert=pki.client, max_version=version), server_hostname="localhost"
    )
    server = TLSStream(server_transport, server_ctx(require_client_cert=True), server_side=True)
    outcome = ServerOutcome()
    payload = bytes(range(256)) * 12
    with trio.fail_after(CAP):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve, server, outcome)
            info = await client.do_handshake()
            assert await echo_once(client, payload) == payload
            await client.aclose()
    assert info.verified and info.client_cert_sent
    assert outcome.eof and outcome.received == payload


async def test_implicit_handshake_on_first_send(
    pki: PKI, client_ctx: ClientCtxFactory, server_ctx: ServerCtxFactory
) -> None:
    with trio.fail_after(CAP):
        client, server = make_pair(client_ctx(), server_ctx())
        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve, server, ServerOutcome())
            assert await echo_once(client, b"no explicit handshake") == b"no explicit handshake"
            assert client.info().verified
            await client.aclose()
        # ...and the verdict still applies when the handshake is implicit.
        client, server = make_pair(client_ctx(), server_ctx(pki.server_rogue))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve, server, ServerOutcome())
            with pytest.raises(TLSError) as caught:
                await client.send_all(b"x")
            assert caught.value.kind == "verify_failed"
            await client.aclose()


async def test_server_cert_without_server_auth_eku(
    pki: PKI, client_ctx: ClientCtxFactory, server_ctx: ServerCtxFactory
) -> None:
    """A certificate marked for clientAuth only is not good for a server ("invalid usage")."""
    client, server = make_pair(client_ctx(), server_ctx(pki.client), server_hostname="probe.test")
    with trio.fail_after(CAP):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve, server, ServerOutcome())
            with pytest.raises(TLSError) as caught:
                await client.do_handshake()
            await client.aclose()
    assert caught.value.kind == "verify_failed"
    assert "unsuitable certificate purpose (depth 0: CN=probe.test)" in caught.value.detail


async def test_cancelled_receive_leaves_stream_usable(
    client_ctx: ClientCtxFactory, server_ctx: ServerCtxFactory
) -> None:
    client, server = make_pair(client_ctx(), server_ctx())
    with trio.fail_after(CAP):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve, server, ServerOutcome())
            await client.do_handshake()
            with trio.move_on_after(0.02) as scope:
                await client.receive_some()  # nothing to read yet
            assert scope.cancelled_caught
            assert await echo_once(client, b"still fine") == b"still fine"
            await client.aclose()


async def test_cancelled_send_breaks_stream(
    client_ctx: ClientCtxFactory, server_ctx: ServerCtxFactory
) -> None:
    """Lockstep transport: the peer stops reading, our send blocks, is cancelled, and the stream is broken."""
    client, server = make_pair(client_ctx(), server_ctx(), lockstep=True)
    with trio.fail_after(CAP):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(client.do_handshake)
            await server.do_handshake()
        with trio.move_on_after(0.05) as scope:
            await client.send_all(b"y" * 50_000)  # nobody reads on the other side
        assert scope.cancelled_caught
        with pytest.raises(ConnectionClosed, match="interrupted midway"):
            await client.send_all(b"more")
        await client.aclose()
        await server.aclose()


async def test_no_shared_cipher(client_ctx: ClientCtxFactory, server_ctx: ServerCtxFactory) -> None:
    """A TLS 1.2 client offering only RSA key exchange to a server with an EC certificate."""
    client, server = make_pair(client_ctx(max_version="1.2", ciphers="AES128-SHA"), server_ctx())
    outcome = ServerOutcome()
    with trio.fail_after(CAP):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve, server, outcome)
            with pytest.raises(TLSError) as caught:
                await client.do_handshake()
            await client.aclose()
    assert caught.value.kind == "handshake_failed"
    assert caught.value.alert == "handshake_failure"
    assert "no cipher suite or signature algorithm in common" in caught.value.detail
    assert isinstance(outcome.error, TLSError)
    assert _reasons(outcome.error.__cause__) == ["no shared cipher"]  # type: ignore[arg-type]
