"""Target strings as users type them: `host`, `host:port`, `[v6addr]:port`, a bare IPv6 address, or a SIP URI.

`sip:host[:port][;transport=tcp|tls|udp]` and `sips:host[:port]` are accepted (RFC 3261 §19.1). `sips:`
means TLS (§26.2.2); `transport=` picks the transport of a `sip:` URI. Userinfo (`user@`) and URI headers
are ignored beyond validation. The result leaves port and transport as None when the string does not say, so
the CLI can apply `--port` / `--transport` / profile defaults.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from umprobe.net.resolve import ip_literal

__all__ = ["Target", "TargetError", "parse_target"]

_HOSTNAME = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,62})(?:\.[A-Za-z0-9_-]{1,63})*\.?$")


class TargetError(ValueError):
    """A target string that cannot be probed; the message names the string and what is wrong."""


@dataclass(frozen=True, slots=True)
class Target:
    host: str  # a DNS name or an IP literal without brackets
    port: int | None
    transport: str | None  # "tcp", "tls", "udp" or None
    scheme: str | None  # "sip", "sips" or None

    @property
    def is_ip(self) -> bool:
        return ip_literal(self.host) is not None


def _port(text: str, original: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise TargetError(f"target {original!r}: port {text!r} is not a number from 1 to 65535")
    return int(text)


def _host(text: str, original: str) -> str:
    if not text:
        raise TargetError(f"target {original!r}: no host")
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        pass
    if not _HOSTNAME.match(text):
        raise TargetError(f"target {original!r}: {text!r} is neither a host name nor an IP address")
    return text.rstrip(".").lower() if text != "." else text


def parse_target(text: str) -> Target:
    """Parse one TARGET argument; raise `TargetError` naming the string on anything unusable."""
    original = text
    text = text.strip()
    scheme: str | None = None
    transport: str | None = None
    lowered = text.lower()
    if lowered.startswith(("sip:", "sips:")):
        scheme, _, text = text.partition(":")
        scheme = scheme.lower()
        text, _, params = text.partition(";")
        text = text.split("?", 1)[0]
        if "@" in text:
            text = text.rsplit("@", 1)[1]
        for param in params.split(";") if params else ():
            name, _, value = param.partition("=")
            if name.lower() == "transport":
                value = value.lower()
                if value not in ("tcp", "tls", "udp"):
                    raise TargetError(
                        f"target {original!r}: transport={value!r} is not supported (tcp, tls or udp)"
                    )
                transport = value
        if scheme == "sips":
            if transport in ("tcp", "udp"):
                raise TargetError(f"target {original!r}: a sips: URI cannot use transport={transport}")
            transport = "tls"
    port: int | None = None
    if text.startswith("["):
        host_text, sep, rest = text[1:].partition("]")
        if not sep:
            raise TargetError(f"target {original!r}: missing ']' after the IPv6 address")
        if rest:
            if not rest.startswith(":"):
                raise TargetError(f"target {original!r}: unexpected {rest!r} after ']'")
            port = _port(rest[1:], original)
        try:
            if ipaddress.ip_address(host_text).version != 6:
                raise ValueError
        except ValueError:
            raise TargetError(
                f"target {original!r}: {host_text!r} in brackets is not an IPv6 address"
            ) from None
        host = str(ipaddress.ip_address(host_text))
    elif text.count(":") > 1:
        host = _host(text, original)  # only a bare IPv6 literal passes: it cannot carry a port
    else:
        host_text, sep, port_text = text.partition(":")
        host = _host(host_text, original)
        if sep:
            port = _port(port_text, original)
    return Target(host=host, port=port, transport=transport, scheme=scheme)
