"""Build the OPTIONS request a probe sends (RFC 3261 §11.1, §8.1.1; wire layout in PROTOCOL.md §1.1).

`build_options` returns an `OptionsRequest`: the exact wire bytes plus the identifiers the transaction matcher
needs (branch, Call-ID, From tag, CSeq, sent-by). Randomness comes from an injectable ``token`` callable
(default `secrets.token_hex`), so tests can make the output deterministic.

Decisions:

* Hosts are validated against a whitelist (hostname / IPv4 characters, or an IPv6 literal, RFC 3261 §25.1
  hostport) and IPv6 literals are always bracketed on the wire, whether or not the caller bracketed them.
  `OptionsRequest.sent_by_host` holds the host *without* brackets (the form `same_host` and sockets use).
* ``uri_scheme="sips"`` requires TLS (§26.2.2) and writes ``sips:host:port`` with no ``transport`` parameter
  (RFC 5630 §3.1.3 deprecates ``transport=tls``); the Contact then uses ``sips:`` too (§8.1.1.8). The default
  ``sip:host:port;transport=tls`` is what Exchange itself advertises.
* The Contact is ``sip:umprobe@LOCAL:PORT;transport=T`` by default. With ``contact_host`` it is
  ``sip:CONTACT_HOST:CONTACT_PORT;transport=T`` with no userinfo (``contact_port`` defaults to the local
  port): the shape Teams Direct Routing requires, ``<sip:SBC_FQDN:5061;transport=tls>`` (umprobe.profiles).
* ``transport="udp"`` writes ``SIP/2.0/UDP`` in the Via and ``;transport=udp`` in the Request-URI and Contact;
  the request keeps ``Content-Length: 0`` (optional on UDP, §18.3, but harmless and what peers expect).
* ``;rport`` is always sent (RFC 3581); ``;alias`` (RFC 5923) and ``;keep`` (RFC 6223) never are.
"""

from __future__ import annotations

import ipaddress
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, Literal

from umprobe._version import __version__
from umprobe.sip.errors import LocalProtocolError
from umprobe.sip.message import CSEQ_MAX

__all__ = ["BRANCH_MAGIC", "DEFAULT_USER_AGENT", "OptionsRequest", "build_options", "format_host"]

BRANCH_MAGIC: Final = "z9hG4bK"
"""RFC 3261 §8.1.1.7 magic cookie that starts every branch of a 3261-compliant request."""

DEFAULT_USER_AGENT: Final = f"umprobe/{__version__}"

_HOSTNAME_RE: Final = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_.\-]{0,252})", re.ASCII)
_TOKEN_RE: Final = re.compile(r"[A-Za-z0-9\-.!%*_+`'~]+", re.ASCII)  # §25.1 token
_USER_AGENT_RE: Final = re.compile(r"[\x20-\x7e]+")  # printable ASCII, no CR/LF/controls (§20.41)


@dataclass(frozen=True, slots=True)
class OptionsRequest:
    """An OPTIONS request ready to send: `raw` is the complete wire bytes; the rest are its identifiers.

    `transport` is the Via transport, ``"TCP"``, ``"TLS"`` or ``"UDP"``; `sent_by_host` has no IPv6 brackets;
    `call_id` is the whole Call-ID value (``<hex>@<domain>``).
    """

    request_uri: str
    transport: str
    sent_by_host: str
    sent_by_port: int
    branch: str
    call_id: str
    from_tag: str
    cseq: int
    raw: bytes

    @property
    def method(self) -> str:
        """Always ``"OPTIONS"``."""
        return "OPTIONS"


def format_host(host: str, *, what: str = "host") -> tuple[str, str]:
    """Validate `host`; return ``(bare, wire)``, wire form with IPv6 literals bracketed (RFC 3261 §25.1).

    Accepts hostnames, IPv4 literals and IPv6 literals with or without brackets; raises LocalProtocolError for
    anything else (whitespace, CR/LF, ``<>;"@``, zone ids, empty strings).
    """
    if not isinstance(host, str) or not host:
        raise LocalProtocolError(f"{what} must be a non-empty string, got {host!r}")
    bracketed = host.startswith("[") and host.endswith("]")
    inner = host[1:-1] if bracketed else host
    if bracketed or ":" in inner:
        if "%" in inner or "[" in inner or "]" in inner:
            raise LocalProtocolError(
                f"{what} {host!r} is not a valid IPv6 literal (zone ids are not allowed)"
            )
        try:
            ipaddress.IPv6Address(inner)
        except ValueError:
            raise LocalProtocolError(f"{what} {host!r} is not a valid IPv6 literal") from None
        return inner, f"[{inner}]"
    if not _HOSTNAME_RE.fullmatch(host):
        raise LocalProtocolError(f"{what} {host!r} is not a valid hostname or IP address")
    return host, host


def _check_port(port: int, what: str) -> int:
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise LocalProtocolError(f"{what} must be an int in 1..65535, got {port!r}")
    return port


def _fresh_token(token: Callable[[int], str], nbytes: int, what: str) -> str:
    value = token(nbytes)
    if not isinstance(value, str) or not _TOKEN_RE.fullmatch(value):
        raise LocalProtocolError(
            f"token({nbytes}) for the {what} must return a non-empty SIP token, got {value!r}"
        )
    return value


def build_options(
    *,
    target_host: str,
    target_port: int | None,
    transport: Literal["tcp", "tls", "udp"],
    local_host: str,
    local_port: int,
    from_domain: str | None = None,
    uri_scheme: Literal["sip", "sips"] = "sip",
    cseq: int = 1,
    user_agent: str = DEFAULT_USER_AGENT,
    contact: bool = True,
    token: Callable[[int], str] = secrets.token_hex,
    contact_host: str | None = None,
    contact_port: int | None = None,
) -> OptionsRequest:
    """Build an OPTIONS request for `target_host`:`target_port` sent from `local_host`:`local_port`.

    The branch is ``z9hG4bK`` + token(8) (64 random bits, §8.1.1.7), the From tag token(4) (32 bits, §19.3)
    and the Call-ID token(8) ``@`` from_domain (§8.1.1.4); from_domain defaults to local_host.
    `target_port` None leaves the port out of the Request-URI (a SIP domain whose servers RFC 3263 found:
    the request goes to the URI as the user gave it, RFC 3263 §4).
    Raises LocalProtocolError on invalid arguments.
    """
    if transport not in ("tcp", "tls", "udp"):
        raise LocalProtocolError(f"transport must be 'tcp', 'tls' or 'udp', got {transport!r}")
    if uri_scheme not in ("sip", "sips"):
        raise LocalProtocolError(f"uri_scheme must be 'sip' or 'sips', got {uri_scheme!r}")
    if uri_scheme == "sips" and transport != "tls":
        raise LocalProtocolError("a sips: URI requires transport='tls' (RFC 3261 §26.2.2)")
    _, target = format_host(target_host, what="target_host")
    sent_by_host, local = format_host(local_host, what="local_host")
    _, domain = format_host(local_host if from_domain is None else from_domain, what="from_domain")
    if target_port is not None:
        _check_port(target_port, "target_port")
    _check_port(local_port, "local_port")
    contact_at = f"umprobe@{local}:{local_port}"
    if contact_host is not None:
        port = local_port if contact_port is None else _check_port(contact_port, "contact_port")
        contact_at = f"{format_host(contact_host, what='contact_host')[1]}:{port}"
    if isinstance(cseq, bool) or not isinstance(cseq, int) or not 1 <= cseq <= CSEQ_MAX:
        raise LocalProtocolError(f"cseq must be an int in 1..2**31-1 (RFC 3261 §8.1.1.5), got {cseq!r}")
    if not isinstance(user_agent, str) or not _USER_AGENT_RE.fullmatch(user_agent):
        raise LocalProtocolError(f"user_agent must be non-empty printable ASCII, got {user_agent!r}")

    if token is secrets.token_hex:
        # The default: the same 20 random bytes in one draw instead of three (hex is always a token).
        hex20 = secrets.token_hex(20)
        branch, from_tag, call_id = BRANCH_MAGIC + hex20[:16], hex20[16:24], f"{hex20[24:]}@{domain}"
    else:
        branch = BRANCH_MAGIC + _fresh_token(token, 8, "branch")
        from_tag = _fresh_token(token, 4, "From tag")
        call_id = f"{_fresh_token(token, 8, 'Call-ID')}@{domain}"

    # §19.1.1: sip:host:port;transport=... ; Exchange's own pings use exactly this shape.
    hostport = target if target_port is None else f"{target}:{target_port}"
    if uri_scheme == "sips":
        request_uri = f"sips:{hostport}"
        contact_uri = f"sips:{contact_at}"
    else:
        request_uri = f"sip:{hostport};transport={transport}"
        contact_uri = f"sip:{contact_at};transport={transport}"
    via_transport = transport.upper()
    lines = [
        f"OPTIONS {request_uri} SIP/2.0",
        # §8.1.1.7 Via with branch; RFC 3581 rport without a value.
        f"Via: SIP/2.0/{via_transport} {local}:{local_port};branch={branch};rport",
        "Max-Forwards: 70",  # §8.1.1.6
        f"From: <sip:umprobe@{domain}>;tag={from_tag}",  # §8.1.1.3
        f"To: <{request_uri}>",  # §8.1.1.2: no tag outside a dialog
        f"Call-ID: {call_id}",  # §8.1.1.4
        f"CSeq: {cseq} OPTIONS",  # §8.1.1.5
    ]
    if contact:
        lines.append(f"Contact: <{contact_uri}>")  # optional for OPTIONS (§11.1)
    lines += [
        "Accept: application/sdp",  # §11.1, as Exchange's own ping
        f"User-Agent: {user_agent}",
        "Content-Length: 0",  # §18.3, mandatory on stream transports
    ]
    raw = ("\r\n".join(lines) + "\r\n\r\n").encode("ascii")
    return OptionsRequest(
        request_uri=request_uri,
        transport=via_transport,
        sent_by_host=sent_by_host,
        sent_by_port=local_port,
        branch=branch,
        call_id=call_id,
        from_tag=from_tag,
        cseq=cseq,
        raw=raw,
    )
