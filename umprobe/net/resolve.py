"""Address resolution: a host name or IP literal to the list of addresses a probe should try, each separately.

PROTOCOL.md §2 ("Several addresses"): umprobe does not fail over the way a user agent would; it resolves
every A/AAAA record and probes each address on its own, so :func:`resolve` returns all of them, in the
resolver's order (RFC 6724 destination ordering from ``getaddrinfo``), without duplicates.

IP literals (``192.0.2.1``, ``2001:db8::1``, ``[2001:db8::1]``) never touch DNS (RFC 3263 §4.2).
RFC 3263 NAPTR/SRV resolution would live beside this function, not inside it.

A lookup is the C library's ``getaddrinfo`` in a thread (``trio.socket.getaddrinfo``), and a thread cannot
be cancelled: when the resolver's server stops answering, the call blocks for the resolver's own timeouts
(``timeout:`` x ``attempts:`` x nameservers in resolv.conf, 10 s and more by default), long after the
probe's deadline. So a caller never runs the lookup itself. Each distinct (name, family) has at most one
lookup in flight, run by a trio system task in a thread of its own bounded pool (``MAX_LOOKUP_THREADS``);
every caller that wants that name waits for that one lookup, and stops waiting at its own deadline (the
probe then reports ``dns_error``, "did not finish before the deadline"). Twelve probes of one server whose
name hangs, each run every few seconds, hold one thread, not one per run; and other names keep their own
threads instead of queueing behind the dead ones for trio's shared pool. A result is not kept: the next
caller after a lookup has ended starts a new one (caching is the system resolver's business).
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any, Literal

import trio
from trio.lowlevel import RunVar

from umprobe.net.errors import LOCAL_RESOURCE_ERRNOS, LocalResourceError, ResolveError

__all__ = ["FAMILIES", "MAX_LOOKUP_THREADS", "Family", "ResolvedAddress", "ip_literal", "resolve"]

#: At most this many getaddrinfo threads at once, one per distinct name (and address family) in flight.
MAX_LOOKUP_THREADS = 16

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
    lookup = await _lookup(host, af)
    exc = lookup.error
    if isinstance(exc, socket.gaierror):
        if _out_of_descriptors():
            # The C library cannot open /etc/hosts or a socket to the server, and says "Name or service not
            # known" (EAI_NONAME) or the like: the name is not at fault, this process is.
            raise _LocalResolveError(
                f"cannot resolve {host}: this process is out of file descriptors (EMFILE) "
                f"and the resolver answered {exc.strerror or exc!r}"
            ) from exc
        raise ResolveError(f"cannot resolve {host}: {exc.strerror or exc}") from exc
    if isinstance(exc, UnicodeError):
        # The IDNA codec refuses the name (an empty label, a label over 63 characters, ...).
        raise ResolveError(f"cannot resolve {host}: not a valid host name ({exc})") from exc
    if isinstance(exc, OSError) and exc.errno in LOCAL_RESOURCE_ERRNOS:
        # EAI_SYSTEM with errno EMFILE (Python raises that as a plain OSError), or no descriptor to load
        # the IDNA codec with.
        name = errno.errorcode.get(exc.errno or 0, str(exc.errno))
        raise _LocalResolveError(f"cannot resolve {host}: {exc.strerror or exc} ({name})") from exc
    if exc is not None:
        raise exc
    infos = lookup.infos

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


class _LocalResolveError(ResolveError, LocalResourceError):
    """A lookup that failed because this host is out of a resource: a `ResolveError` to callers that only
    know those, `local_resource_error` to the SIP probe, which asks `isinstance(exc, LocalResourceError)`."""


def _out_of_descriptors() -> bool:
    try:
        fd = os.open(os.devnull, os.O_RDONLY)
    except OSError as exc:
        return exc.errno in (errno.EMFILE, errno.ENFILE)
    os.close(fd)
    return False


# -- one lookup per name at a time -------------------------------------------------------------------------


@dataclass(eq=False, slots=True)
class _Lookup:
    done: trio.Event = field(default_factory=trio.Event)
    infos: list[tuple[Any, ...]] = field(default_factory=list)
    error: Exception | None = None


@dataclass(eq=False, slots=True)
class _Lookups:
    limiter: trio.CapacityLimiter = field(default_factory=lambda: trio.CapacityLimiter(MAX_LOOKUP_THREADS))
    running: dict[tuple[str, int], _Lookup] = field(default_factory=dict)


_LOOKUPS: RunVar[_Lookups] = RunVar("umprobe_lookups")


async def _lookup(host: str, af: int) -> _Lookup:
    """The finished lookup of (host, af): the one in flight if there is one, else a new one. Cancelling the
    caller stops its wait, not the lookup."""
    try:
        table = _LOOKUPS.get()
    except LookupError:
        table = _Lookups()
        _LOOKUPS.set(table)
    key = (host, af)
    lookup = table.running.get(key)
    if lookup is None:
        lookup = table.running[key] = _Lookup()
        trio.lowlevel.spawn_system_task(_run_lookup, table, key, lookup, name=f"getaddrinfo {host}")
    await lookup.done.wait()
    return lookup


async def _run_lookup(table: _Lookups, key: tuple[str, int], lookup: _Lookup) -> None:
    host, af = key
    try:
        # Our limiter is held until the thread really ends (nothing cancels this task but the end of the
        # run), so it bounds the threads, not just the waiting.
        async with table.limiter:
            lookup.infos = list(await trio.socket.getaddrinfo(host, None, af, socket.SOCK_STREAM))
    except Exception as exc:  # handed to every waiter; a system task must not raise
        lookup.error = exc
    finally:
        if table.running.get(key) is lookup:
            del table.running[key]
        lookup.done.set()
