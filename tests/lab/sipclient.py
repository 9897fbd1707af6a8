"""A deliberately tiny stdlib SIP OPTIONS client for the lab's own sanity tests (not umprobe code).

It builds one OPTIONS request, sends it on an already connected (TLS) socket and reads one response
framed by Content-Length. Every call is bounded by the socket timeout the caller sets.
"""

from __future__ import annotations

import secrets
import socket
import ssl
from dataclasses import dataclass

__all__ = ["SipReply", "connect", "exchange_options", "options_request", "tls_client_context"]


@dataclass(frozen=True, slots=True)
class SipReply:
    status: int
    headers: dict[str, str]  # lower-case names, last value wins
    raw: bytes


def _literal(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def options_request(host: str, port: int, transport: str, local: tuple[str, int]) -> bytes:
    h = _literal(host)
    token = secrets.token_hex(8)
    lines = [
        f"OPTIONS sip:{h}:{port};transport={transport.lower()} SIP/2.0",
        f"Via: SIP/2.0/{transport.upper()} {_literal(local[0])}:{local[1]};branch=z9hG4bK{token};rport",
        "Max-Forwards: 70",
        f"From: <sip:labcheck@lab.test>;tag={token[:8]}",
        f"To: <sip:{h}:{port};transport={transport.lower()}>",
        f"Call-ID: {token}@lab.test",
        "CSeq: 1 OPTIONS",
        "Accept: application/sdp",
        "User-Agent: umprobe-labcheck",
        "Content-Length: 0",
        "",
        "",
    ]
    return "\r\n".join(lines).encode()


def read_reply(sock: socket.socket) -> SipReply:
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(4096)
        if not chunk:
            raise EOFError(f"connection closed after {len(buf)} bytes: {buf!r}")
        buf += chunk
    head, _, body = buf.partition(b"\r\n\r\n")
    lines = head.decode("utf-8", "replace").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", headers.get("l", "0")))
    while len(body) < length:
        chunk = sock.recv(4096)
        if not chunk:
            raise EOFError("connection closed inside the body")
        body += chunk
    return SipReply(status, headers, head + b"\r\n\r\n" + body)


def connect(address: tuple[str, int], timeout: float) -> socket.socket:
    host, port = address
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect((host, port))
    except BaseException:
        sock.close()
        raise
    return sock


def tls_client_context(
    ca_file: object | None,
    *,
    cert: tuple[object, object] | None = None,
    check_hostname: bool = True,
    minimum: ssl.TLSVersion | None = None,
    maximum: ssl.TLSVersion | None = None,
) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if ca_file is None:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    else:
        ctx.load_verify_locations(cafile=str(ca_file))
        ctx.check_hostname = check_hostname
    if cert is not None:
        ctx.load_cert_chain(str(cert[0]), str(cert[1]))
    if minimum is not None:
        ctx.minimum_version = minimum
    if maximum is not None:
        ctx.maximum_version = maximum
    return ctx


def exchange_options(
    address: tuple[str, int],
    *,
    timeout: float = 5.0,
    tls: ssl.SSLContext | None = None,
    server_name: str | None = None,
) -> tuple[SipReply, str | None]:
    """Connect, (TLS handshake,) send one OPTIONS, read one reply; returns it and the TLS version."""
    host, port = address
    raw = connect(address, timeout)
    sock: socket.socket = raw
    local = raw.getsockname()[:2]
    try:
        version = None
        if tls is not None:
            sock = tls.wrap_socket(raw, server_hostname=server_name or host)
            version = sock.version()
        sock.sendall(options_request(host, port, "tls" if tls else "tcp", local))
        return read_reply(sock), version
    finally:
        sock.close()
        raw.close()
