"""Address resolution: a host name or IP literal to the list of addresses a probe should try, each separately.

PROTOCOL.md §2 ("Several addresses"): umprobe does not fail over the way a user agent would; it resolves
every A/AAAA record and probes each address on its own, so :func:`resolve` returns all of them, in the
resolver's order (RFC 6724 destination ordering from ``getaddrinfo``), without duplicates.

IP literals (``192.0.2.1``, ``2001:db8::1``, ``[2001:db8::1]``) never touch DNS (RFC 3263 §4.2).
RFC 3263 NAPTR/SRV resolution would live beside this function, not inside it.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Collection
from dataclasses import dataclass
from typing import Literal

import trio

from umprobe.net.errors import ResolveError

__all__ = ["FAMILIES", "Family", "ResolvedAddress", "ip_literal", "resolve"]

Family = Literal["ipv4", "ipv6"]
FAMILIES: tuple[Family, ...] = ("ipv4", "ipv6")

_AF_TO_FAMILY: dict[int, Family] = {socket.AF_INET: "ipv4", socket.AF_INET6: "ipv6"}


@dataclass(frozen=True, slots=True)
class ResolvedAddress:
    """One address to probe. ``address`` is the bare literal: no brackets, IPv6 in compressed form."""

    address: str
    family: Family


def ip_literal(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The address if `host` is an IP literal (IPv6 with or without brackets), else None."""
    bare = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        return ipaddress.ip_address(bare)
    except ValueError:
        return None


def _describe(families: Collection[str]) -> str:
    wanted = [f for f in FAMILIES if f in families]
    return " or ".join(wanted)


async def resolve(host: str, port: int, *, families: Collection[str] = FAMILIES) -> list[ResolvedAddress]:
    """Resolve ``host`` to every address of the wanted ``families`` (``"ipv4"``, ``"ipv6"``).

    Raises :class:`ResolveError` when the name does not resolve or has no address of a wanted family,
    and ``ValueError`` for our own misuse (an unknown family name, an empty family set).
    """
    unknown = sorted(set(families) - set(FAMILIES))
    if unknown or not families:
        raise ValueError(f"families must be a non-empty subset of {FAMILIES}, got {sorted(families)}")

    literal = ip_literal(host)
    if literal is not None:
        await trio.lowlevel.checkpoint()
        family: Family = "ipv4" if literal.version == 4 else "ipv6"
        if family not in families:
            raise ResolveError(f"{host} is an {family} address but only {_describe(families)} is enabled")
        return [ResolvedAddress(address=str(literal), family=family)]

    if host.rstrip(".").lower().endswith(".invalid") or host.lower() in ("invalid", "invalid."):
        # RFC 6761 §6.4: name lookups for .invalid are negative by definition; asking a server is waste.
        await trio.lowlevel.checkpoint()
        raise ResolveError(f"cannot resolve {host}: .invalid names never resolve (RFC 6761)")

    if set(FAMILIES) <= set(families):
        af = socket.AF_UNSPEC
    else:
        af = socket.AF_INET if "ipv4" in families else socket.AF_INET6
    try:
        infos = await trio.socket.getaddrinfo(host, port, af, socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise ResolveError(f"cannot resolve {host}: {exc.strerror or exc}") from exc
    except UnicodeError as exc:
        # The IDNA codec refuses the name (an empty label, a label over 63 characters, ...).
        raise ResolveError(f"cannot resolve {host}: not a valid host name ({exc})") from exc

    found: list[ResolvedAddress] = []
    seen: set[str] = set()
    for info_family, _type, _proto, _canon, sockaddr in infos:
        fam = _AF_TO_FAMILY.get(info_family)
        if fam is None or fam not in families:
            continue
        address = str(sockaddr[0])
        if address in seen:
            continue
        seen.add(address)
        found.append(ResolvedAddress(address=address, family=fam))
    if not found:
        raise ResolveError(f"{host} has no {_describe(families)} address")
    return found
