"""RFC 3263 §4 server location: a SIP URI's host to the ordered list of (address, port, transport) to probe.

What is looked up, in order (docs/resolution.md has the long form):

1. An IP literal: no DNS at all. Transport from the URI (``transport=``, ``sips:``) or the default, port
   from the URI or the transport's default (5060, 5061 for TLS). Step ``"literal"`` (§4.1, §4.2).
2. A domain with an explicit port: A/AAAA of the domain on that port, transport as in 1. Step
   ``"explicit_port"`` (§4.2: no NAPTR, no SRV).
3. A domain without a port and without an explicit transport: NAPTR of the domain. Records with flag
   ``S``, an empty regexp and a service we want (``SIP+D2U`` udp, ``SIP+D2T`` tcp, ``SIPS+D2T`` tls; a
   ``sips:`` URI keeps only ``SIPS+D2T``) are sorted by order, then preference, and each replacement is
   looked up as SRV. Step ``"naptr"``.
4. No usable NAPTR (or an explicit transport): SRV ``_sips._tcp``, ``_sip._tcp``, ``_sip._udp`` of the
   domain, for the wanted transports only, in that order. Step ``"srv"``.
5. Each SRV RRset is ordered by priority, then by RFC 2782 weighted random selection (the RNG is
   injectable), and *every* target is kept in that order; each target's A/AAAA records are all kept.
6. No SRV record at all (after 3 or 4): A/AAAA of the domain with the default transport and its default
   port. Step ``"a"``.

umprobe is a prober, not a user agent: it does not stop at the first target that answers, it returns all of
them so that each can be probed separately (PROTOCOL.md §2, "Several addresses").

DNS failures are data, never exceptions: every query ends in one :data:`Outcome` (``ok``, ``nxdomain``,
``no_answer``, ``timeout``, ``servfail``) recorded as a :class:`Lookup`, and the :class:`Resolution`
carries an overall outcome. Only our own misuse (an unknown transport or family, a ``sips:`` URI asked for
a non-TLS transport) raises ``ValueError``.

The caller owns the deadline (absolute, ``trio.current_time()`` units). Each query gets the time left
until it as its dnspython ``lifetime`` (dnspython's own per-attempt timeout, 2 s or ``options timeout:``
from resolv.conf, retries within it) and runs inside ``trio.move_on_at(deadline)``; a query that would
start after the deadline is recorded as ``timeout`` without being sent, so :func:`resolve_sip` returns by
the deadline with whatever it found. Independent queries (the SRV queries of one step, the A and AAAA
queries of all targets) run concurrently.

DNS goes through dnspython's asynchronous resolver on its trio backend (``dns.asyncbackend``), with the
nameservers of a :class:`DnsClient`: the system's resolv.conf by default, or an explicit list such as a
test's dnsmasq on 127.0.0.1 and a high port. Nothing is cached: every resolution asks again.
"""

from __future__ import annotations

import random
import time
from collections.abc import Awaitable, Callable, Collection, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Literal, Protocol, TypeVar

import dns.asyncbackend
import dns.asyncresolver
import dns.exception
import dns.name
import dns.nameserver
import dns.rdatatype
import dns.rdtypes.IN.A
import dns.rdtypes.IN.AAAA
import dns.rdtypes.IN.NAPTR
import dns.rdtypes.IN.SRV
import dns.resolver
import trio

from umprobe.net.resolve import FAMILIES, Family, ResolvedAddress, ip_literal
from umprobe.targets import Target

__all__ = [
    "DEFAULT_PORTS",
    "OUTCOMES",
    "STEPS",
    "TRANSPORTS",
    "AddressAnswer",
    "DnsClient",
    "DnsConfigError",
    "DnsLookup",
    "Lookup",
    "NaptrAnswer",
    "NaptrRecord",
    "Outcome",
    "Resolution",
    "Resolved",
    "SrvAnswer",
    "SrvRecord",
    "Step",
    "Transport",
    "order_srv",
    "parse_nameserver",
    "resolve_sip",
    "resolve_target",
]

Transport = Literal["udp", "tcp", "tls"]
Step = Literal["naptr", "srv", "a", "literal", "explicit_port"]
Outcome = Literal["ok", "nxdomain", "no_answer", "timeout", "servfail"]

TRANSPORTS: tuple[Transport, ...] = ("udp", "tcp", "tls")
STEPS: tuple[Step, ...] = ("naptr", "srv", "a", "literal", "explicit_port")
OUTCOMES: tuple[Outcome, ...] = ("ok", "nxdomain", "no_answer", "timeout", "servfail")
DEFAULT_PORTS: dict[Transport, int] = {"udp": 5060, "tcp": 5060, "tls": 5061}

# RFC 3263 §4.1 NAPTR services (RFC 3263 §4.1 table; SCTP and WebSocket services are ignored).
_NAPTR_SERVICES: dict[str, Transport] = {"SIP+D2U": "udp", "SIP+D2T": "tcp", "SIPS+D2T": "tls"}
# RFC 3263 §4.1 SRV prefixes, in the order they are queried when there is no NAPTR.
_SRV_PREFIXES: tuple[tuple[Transport, str], ...] = (
    ("tls", "_sips._tcp"),
    ("tcp", "_sip._tcp"),
    ("udp", "_sip._udp"),
)
# The transport a URI without transport= gets when no NAPTR/SRV says otherwise (§4.1: UDP for sip:, TLS
# for sips:), restricted to the wanted transports.
_DEFAULT_TRANSPORT_ORDER: tuple[Transport, ...] = ("udp", "tcp", "tls")
_DETAIL_CAP = 300

_T = TypeVar("_T")


# -- records and answers ----------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class NaptrRecord:
    order: int
    preference: int
    flags: str
    service: str
    regexp: str
    replacement: str  # a domain name without the trailing dot; "." for none


@dataclass(frozen=True, slots=True)
class SrvRecord:
    priority: int
    weight: int
    port: int
    target: str  # a host name without the trailing dot; "." means "service decidedly not available"


@dataclass(frozen=True, slots=True)
class NaptrAnswer:
    outcome: Outcome
    records: tuple[NaptrRecord, ...] = ()
    detail: str = ""


@dataclass(frozen=True, slots=True)
class SrvAnswer:
    outcome: Outcome
    records: tuple[SrvRecord, ...] = ()
    detail: str = ""


@dataclass(frozen=True, slots=True)
class AddressAnswer:
    outcome: Outcome
    records: tuple[str, ...] = ()  # bare address literals, IPv6 compressed
    detail: str = ""


class DnsLookup(Protocol):
    """The three queries RFC 3263 needs. Implementations never raise for DNS failures: they answer an
    outcome. ``ok`` means at least one record; an empty RRset is ``no_answer``."""

    async def naptr(self, name: str, *, deadline: float) -> NaptrAnswer: ...

    async def srv(self, name: str, *, deadline: float) -> SrvAnswer: ...

    async def addresses(self, name: str, family: Family, *, deadline: float) -> AddressAnswer: ...


# -- results -------------------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Resolved:
    """One place to probe. ``step`` is how it was found (a bounded metric label value, see STEPS);
    ``target`` is the host name whose A/AAAA record gave ``address`` (the SRV target, or the domain)."""

    address: str
    family: Family
    port: int
    transport: Transport
    step: Step
    target: str = ""

    def as_address(self) -> ResolvedAddress:
        return ResolvedAddress(address=self.address, family=self.family)


@dataclass(frozen=True, slots=True)
class Lookup:
    """One DNS query made during a resolution and how it ended."""

    name: str
    rdtype: Literal["NAPTR", "SRV", "A", "AAAA"]
    outcome: Outcome
    records: int
    detail: str = ""


@dataclass(frozen=True, slots=True)
class Resolution:
    """Everything :func:`resolve_sip` found. ``outcome`` is ``"ok"`` when there is at least one target (even
    if some queries failed: see ``lookups``); otherwise it says why there is none."""

    domain: str  # the host as given (the SIP domain: the name a TLS certificate must carry, RFC 5922)
    targets: tuple[Resolved, ...]
    outcome: Outcome
    detail: str
    lookups: tuple[Lookup, ...]

    @property
    def ok(self) -> bool:
        return bool(self.targets)

    @property
    def failed_lookups(self) -> tuple[Lookup, ...]:
        """Queries that timed out or failed on the server side (not NXDOMAIN/NODATA, which are answers)."""
        return tuple(lk for lk in self.lookups if lk.outcome in ("timeout", "servfail"))


# -- RFC 2782 ordering -------------------------------------------------------------------------------------
def order_srv(records: Sequence[SrvRecord], rng: random.Random | None = None) -> list[SrvRecord]:
    """All records, lowest priority first; within a priority, RFC 2782 weighted random selection.

    For each pick: zero-weight records first, running sums of the weights, a uniform integer from 0 to
    the total (inclusive), the first record whose running sum reaches it. Records whose target is "."
    are dropped (RFC 2782: the service is decidedly not available there).
    """
    rng = rng or random.Random()
    usable = [r for r in records if r.target != "."]
    ordered: list[SrvRecord] = []
    for priority in sorted({r.priority for r in usable}):
        group = [r for r in usable if r.priority == priority]
        while group:
            group.sort(key=lambda r: r.weight != 0)  # stable: zero weights first, otherwise DNS order
            total = sum(r.weight for r in group)
            pick = rng.randint(0, total)
            running = 0
            for i, record in enumerate(group):
                running += record.weight
                if running >= pick:
                    ordered.append(group.pop(i))
                    break
            else:  # only an injected RNG that draws outside 0..total gets here
                ordered.append(group.pop())
    return ordered


# -- the resolver -----------------------------------------------------------------------------------------
def _default_transport(scheme: str, wanted: Sequence[Transport]) -> Transport:
    if scheme == "sips":
        return "tls"
    for transport in _DEFAULT_TRANSPORT_ORDER:
        if transport in wanted:
            return transport
    raise AssertionError("wanted transports are never empty")  # pragma: no cover


def _is_invalid(name: str) -> bool:
    return name.rstrip(".").lower() == "invalid" or name.rstrip(".").lower().endswith(".invalid")


async def _gather(calls: Sequence[Callable[[], Awaitable[_T]]]) -> list[_T]:
    """Run the calls concurrently; results in the order of `calls`."""
    results: list[_T | None] = [None] * len(calls)

    async def one(i: int) -> None:
        results[i] = await calls[i]()

    async with trio.open_nursery() as nursery:
        for i in range(len(calls)):
            nursery.start_soon(one, i)
    return [r for r in results if r is not None]


async def resolve_sip(
    host: str,
    *,
    deadline: float,
    port: int | None = None,
    transport: Transport | None = None,
    scheme: Literal["sip", "sips"] = "sip",
    transports: Collection[Transport] = TRANSPORTS,
    families: Collection[str] = FAMILIES,
    dns_client: DnsLookup | None = None,
    rng: random.Random | None = None,
) -> Resolution:
    """Locate the SIP servers for ``host`` (RFC 3263 §4); see the module docstring for the steps.

    ``transport`` is an explicit transport (``transport=`` in the URI, or configured); ``transports`` is
    what the caller can probe and wants (NAPTR and SRV records for other transports are ignored).
    ``dns_client`` defaults to a :class:`DnsClient` on the system's resolv.conf; ``rng`` drives the RFC 2782
    weighted selection. Returns by ``deadline``; never raises for DNS failures.
    """
    wanted = _check_args(port, transport, scheme, transports, families)
    fams: tuple[Family, ...] = tuple(f for f in FAMILIES if f in families)

    literal = ip_literal(host)
    if literal is not None:
        await trio.lowlevel.checkpoint()
        family: Family = "ipv4" if literal.version == 4 else "ipv6"
        chosen = transport or _default_transport(scheme, wanted)
        if family not in fams:
            detail = f"{host} is an {family} address but only {' and '.join(fams)} is enabled"
            return Resolution(host, (), "no_answer", detail, ())
        resolved = Resolved(
            str(literal), family, port or DEFAULT_PORTS[chosen], chosen, "literal", str(literal)
        )
        return Resolution(host, (resolved,), "ok", "", ())

    domain = host.rstrip(".").lower()
    if _is_invalid(domain):
        # RFC 6761 §6.4: lookups for .invalid are negative by definition; asking a server is waste.
        await trio.lowlevel.checkpoint()
        return Resolution(domain, (), "nxdomain", f"{host}: .invalid names never resolve (RFC 6761)", ())

    if dns_client is None:
        try:
            dns_client = DnsClient()
        except DnsConfigError as exc:
            await trio.lowlevel.checkpoint()
            return Resolution(domain, (), "servfail", str(exc), ())
    resolver = _Resolver(domain, deadline, fams, dns_client, rng or random.Random())

    if port is not None:
        chosen = transport or _default_transport(scheme, wanted)
        targets = await resolver.hosts([(domain, port, chosen)], "explicit_port")
        return resolver.finish(targets)

    srv_plan: list[tuple[str, Transport]] = []
    step: Step = "srv"
    if transport is None:
        srv_plan = await resolver.naptr(domain, scheme, wanted)
        step = "naptr"
    if not srv_plan:
        step = "srv"
        only = (transport,) if transport is not None else wanted
        srv_plan = [(f"{prefix}.{domain}", t) for t, prefix in _SRV_PREFIXES if t in only]
    found, srv_hosts = await resolver.srv(srv_plan)
    if found:
        return resolver.finish(await resolver.hosts(srv_hosts, step))
    chosen = transport or _default_transport(scheme, wanted)
    return resolver.finish(await resolver.hosts([(domain, DEFAULT_PORTS[chosen], chosen)], "a"))


async def resolve_target(
    target: Target,
    *,
    deadline: float,
    transports: Collection[Transport] = TRANSPORTS,
    families: Collection[str] = FAMILIES,
    dns_client: DnsLookup | None = None,
    rng: random.Random | None = None,
) -> Resolution:
    """:func:`resolve_sip` for a :class:`umprobe.targets.Target` (what ``parse_target`` returns).

    ``parse_target`` gives a ``sips:`` URI the transport ``tls`` whether or not it said ``transport=tls``;
    that is not taken as an explicit transport, so a ``sips:`` target still goes through NAPTR (which keeps
    only ``SIPS+D2T`` records for it).
    """
    sips = target.scheme == "sips"
    return await resolve_sip(
        target.host,
        deadline=deadline,
        port=target.port,
        transport=None if sips else _as_transport(target.transport),
        scheme="sips" if sips else "sip",
        transports=transports,
        families=families,
        dns_client=dns_client,
        rng=rng,
    )


def _as_transport(value: str | None) -> Transport | None:
    if value is None:
        return None
    for transport in TRANSPORTS:
        if transport == value:
            return transport
    raise ValueError(f"unknown transport {value!r}; expected one of {TRANSPORTS}")


def _check_args(
    port: int | None,
    transport: Transport | None,
    scheme: str,
    transports: Collection[Transport],
    families: Collection[str],
) -> tuple[Transport, ...]:
    if not transports or set(transports) - set(TRANSPORTS):
        raise ValueError(f"transports must be a non-empty subset of {TRANSPORTS}, got {sorted(transports)}")
    if not families or set(families) - set(FAMILIES):
        raise ValueError(f"families must be a non-empty subset of {FAMILIES}, got {sorted(families)}")
    if scheme not in ("sip", "sips"):
        raise ValueError(f"scheme must be 'sip' or 'sips', got {scheme!r}")
    if transport is not None and transport not in TRANSPORTS:
        raise ValueError(f"unknown transport {transport!r}; expected one of {TRANSPORTS}")
    if port is not None and not 1 <= port <= 65535:
        raise ValueError(f"port {port} is not from 1 to 65535")
    wanted = tuple(t for t in TRANSPORTS if t in transports)
    if scheme == "sips":
        if transport not in (None, "tls"):
            raise ValueError(f"a sips: URI cannot use transport {transport!r} (RFC 3261 §26.2.2)")
        if "tls" not in wanted and transport is None:
            raise ValueError("a sips: URI needs the tls transport, which is not among the wanted ones")
        wanted = ("tls",)
    return wanted


class _Resolver:
    """The state of one resolution: the trace of lookups, in the order they were planned."""

    def __init__(
        self,
        domain: str,
        deadline: float,
        families: tuple[Family, ...],
        dns_client: DnsLookup,
        rng: random.Random,
    ) -> None:
        self.domain = domain
        self.deadline = deadline
        self.families = families
        self.dns = dns_client
        self.rng = rng
        self.lookups: list[Lookup] = []

    def _note(self, name: str, rdtype: Literal["NAPTR", "SRV", "A", "AAAA"], answer: _AnyAnswer) -> None:
        self.lookups.append(Lookup(name, rdtype, answer.outcome, len(answer.records), answer.detail))

    async def naptr(
        self, domain: str, scheme: str, wanted: Sequence[Transport]
    ) -> list[tuple[str, Transport]]:
        """The usable NAPTR records as (SRV name, transport), best first; [] when there are none."""
        answer = await self.dns.naptr(domain, deadline=self.deadline)
        self._note(domain, "NAPTR", answer)
        usable: list[tuple[int, int, int, str, Transport]] = []
        for index, record in enumerate(answer.records):
            transport = _NAPTR_SERVICES.get(record.service.upper())
            if transport is None or transport not in wanted:
                continue
            if scheme == "sips" and record.service.upper() != "SIPS+D2T":
                continue
            if record.flags.upper() != "S" or record.regexp or record.replacement in ("", "."):
                continue  # §4.1: SIP uses terminal "S" records with a replacement, never a regexp
            usable.append((record.order, record.preference, index, record.replacement, transport))
        plan: list[tuple[str, Transport]] = []
        for _order, _pref, _index, replacement, transport in sorted(usable):
            if (replacement, transport) not in plan:
                plan.append((replacement, transport))
        return plan

    async def srv(
        self, plan: Sequence[tuple[str, Transport]]
    ) -> tuple[bool, list[tuple[str, int, Transport]]]:
        """Query every SRV name of the plan; (any record found, the ordered (host, port, transport) list)."""
        client = self.dns
        answers = await _gather([partial(client.srv, name, deadline=self.deadline) for name, _t in plan])
        found = False
        hosts: list[tuple[str, int, Transport]] = []
        for (name, transport), answer in zip(plan, answers, strict=True):
            self._note(name, "SRV", answer)
            if answer.records:
                found = True
            for record in order_srv(answer.records, self.rng):
                hosts.append((record.target, record.port, transport))
        return found, hosts

    async def hosts(self, hosts: Sequence[tuple[str, int, Transport]], step: Step) -> list[Resolved]:
        """A/AAAA of every host (each name queried once per family), expanded in order."""
        client = self.dns
        queries: list[tuple[str, Family]] = []
        for name, _port, _transport in hosts:
            for family in self.families:
                if (name, family) not in queries:
                    queries.append((name, family))
        answers = await _gather(
            [partial(client.addresses, name, family, deadline=self.deadline) for name, family in queries]
        )
        by_query: dict[tuple[str, Family], AddressAnswer] = {}
        for (name, family), answer in zip(queries, answers, strict=True):
            self._note(name, "A" if family == "ipv4" else "AAAA", answer)
            by_query[(name, family)] = answer
        targets: list[Resolved] = []
        seen: set[tuple[str, int, Transport]] = set()
        for name, port, transport in hosts:
            for family in self.families:
                for address in by_query[(name, family)].records:
                    key = (address, port, transport)
                    if key not in seen:
                        seen.add(key)
                        targets.append(Resolved(address, family, port, transport, step, name))
        return targets

    def finish(self, targets: list[Resolved]) -> Resolution:
        lookups = tuple(self.lookups)
        if targets:
            return Resolution(self.domain, tuple(targets), "ok", "", lookups)
        outcome: Outcome
        failures = [lk for lk in lookups if lk.outcome in ("timeout", "servfail")]
        if any(lk.outcome == "timeout" for lk in failures):
            outcome = "timeout"
        elif failures:
            outcome = "servfail"
        elif any(lk.outcome == "nxdomain" and lk.name == self.domain for lk in lookups):
            outcome = "nxdomain"
        else:
            outcome = "no_answer"
        return Resolution(self.domain, (), outcome, _summary(self.domain, outcome, lookups), lookups)


_AnyAnswer = NaptrAnswer | SrvAnswer | AddressAnswer


def _summary(domain: str, outcome: Outcome, lookups: Sequence[Lookup]) -> str:
    """One line: why no address came out of the lookups."""
    if outcome == "nxdomain":
        return f"{domain} does not exist (NXDOMAIN)"
    if outcome == "no_answer":
        if any(lk.rdtype == "SRV" and lk.outcome == "ok" for lk in lookups):
            return f"{domain}: no SRV target has an address of the enabled families (or all say '.')"
        if any(lk.rdtype in ("NAPTR", "SRV") for lk in lookups):
            return f"{domain} has no NAPTR, SRV or address record of the enabled families"
        return f"{domain} has no address record of the enabled families"
    bad = [lk for lk in lookups if lk.outcome == outcome]
    first = bad[0] if bad else None
    what = "timed out" if outcome == "timeout" else "failed"
    text = f"{domain}: {len(bad)} DNS quer{'y' if len(bad) == 1 else 'ies'} {what}"
    if first is not None:
        text += f", first {first.rdtype} {first.name}"
        if first.detail:
            text += f": {first.detail}"
    return text[:_DETAIL_CAP]


# -- dnspython ---------------------------------------------------------------------------------------------
class DnsConfigError(Exception):
    """The resolver cannot be set up: no usable resolv.conf, or a nameserver that is not an address."""


def parse_nameserver(text: str) -> tuple[str, int]:
    """``"127.0.0.1"``, ``"127.0.0.1:5353"``, ``"::1"``, ``"[::1]:5353"`` to (address, port); port 53 when
    omitted. Raises ``ValueError`` naming the text."""
    value = text.strip()
    host, port_text = value, ""
    if value.startswith("["):
        host, sep, rest = value[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ValueError(f"nameserver {text!r}: expected [IPv6]:PORT")
        port_text = rest[1:]
    elif value.count(":") == 1:
        host, _, port_text = value.partition(":")
    literal = ip_literal(host)
    if literal is None:
        raise ValueError(f"nameserver {text!r}: {host!r} is not an IP address")
    port = 53
    if port_text:
        if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
            raise ValueError(f"nameserver {text!r}: port {port_text!r} is not a number from 1 to 65535")
        port = int(port_text)
    return str(literal), port


class DnsClient:
    """:class:`DnsLookup` on dnspython's asynchronous resolver with its trio backend.

    ``nameservers``: ``(address, port)`` pairs (see :func:`parse_nameserver`); when omitted, the ones in
    ``resolv_conf`` (the system's /etc/resolv.conf by default, read once, here). No search list, no cache.
    Raises :class:`DnsConfigError` when there is no nameserver to ask.
    """

    def __init__(
        self,
        nameservers: Sequence[tuple[str, int]] | None = None,
        *,
        resolv_conf: str = "/etc/resolv.conf",
    ) -> None:
        try:
            if nameservers is None:
                resolver = dns.asyncresolver.Resolver(filename=resolv_conf)
            else:
                resolver = dns.asyncresolver.Resolver(configure=False)
                if not nameservers:
                    raise DnsConfigError("no nameserver given")
                for address, port in nameservers:
                    if ip_literal(address) is None or not 1 <= port <= 65535:
                        raise DnsConfigError(f"bad nameserver {address!r} port {port}: need an IP address")
                resolver.nameservers = [
                    dns.nameserver.Do53Nameserver(str(ip_literal(a)), p) for a, p in nameservers
                ]
        except dns.resolver.NoResolverConfiguration as exc:
            raise DnsConfigError(f"no usable nameserver in {resolv_conf}: {exc}") from None
        except ValueError as exc:  # a `nameserver` line that is not an IP address
            raise DnsConfigError(f"{resolv_conf}: {exc}") from None
        resolver.cache = None
        self._resolver = resolver
        self._backend = dns.asyncbackend.get_backend("trio")

    @property
    def nameservers(self) -> tuple[tuple[str, int], ...]:
        """The nameservers asked, as (address, port)."""
        found: list[tuple[str, int]] = []
        for ns in self._resolver.nameservers:
            if isinstance(ns, dns.nameserver.Do53Nameserver):
                found.append((str(ns.address), int(ns.port)))
            else:
                found.append((str(ns), int(self._resolver.port)))
        return tuple(found)

    async def _query(self, name: str, rdtype: str, deadline: float) -> tuple[Outcome, list[object], str]:
        remaining = deadline - trio.current_time()
        if remaining <= 0:
            await trio.lowlevel.checkpoint()
            return "timeout", [], "not sent: the deadline had passed"
        started = time.monotonic()
        with trio.move_on_at(deadline):
            try:
                answer = await self._resolver.resolve(
                    name,
                    rdtype,
                    raise_on_no_answer=False,
                    lifetime=remaining,
                    search=False,
                    backend=self._backend,
                )
            except dns.resolver.NXDOMAIN:
                return "nxdomain", [], ""
            except dns.exception.Timeout:  # LifetimeTimeout included
                return "timeout", [], f"no answer within {remaining:.2f} s"
            except dns.resolver.NoNameservers as exc:  # SERVFAIL, REFUSED, FORMERR, unreachable servers
                return "servfail", [], _clip(str(exc))
            except dns.resolver.YXDOMAIN as exc:
                return "servfail", [], _clip(str(exc))
            except (dns.name.LabelTooLong, dns.name.NameTooLong, dns.name.EmptyLabel) as exc:
                return "nxdomain", [], _clip(f"not a valid DNS name: {exc}")
            except dns.exception.DNSException as exc:
                return "servfail", [], _clip(f"{type(exc).__name__}: {exc}")
            if answer.rrset is None or len(answer.rrset) == 0:
                return "no_answer", [], ""
            return "ok", list(answer.rrset), ""
        return "timeout", [], f"no answer within {time.monotonic() - started:.2f} s (deadline)"

    async def naptr(self, name: str, *, deadline: float) -> NaptrAnswer:
        outcome, rdatas, detail = await self._query(name, "NAPTR", deadline)
        records = tuple(
            NaptrRecord(
                order=int(r.order),
                preference=int(r.preference),
                flags=bytes(r.flags).decode("ascii", "replace"),
                service=bytes(r.service).decode("ascii", "replace"),
                regexp=bytes(r.regexp).decode("ascii", "replace"),
                replacement=_name_text(r.replacement),
            )
            for r in rdatas
            if isinstance(r, dns.rdtypes.IN.NAPTR.NAPTR)
        )
        return NaptrAnswer(outcome, records, detail)

    async def srv(self, name: str, *, deadline: float) -> SrvAnswer:
        outcome, rdatas, detail = await self._query(name, "SRV", deadline)
        records = tuple(
            SrvRecord(
                priority=int(r.priority), weight=int(r.weight), port=int(r.port), target=_name_text(r.target)
            )
            for r in rdatas
            if isinstance(r, dns.rdtypes.IN.SRV.SRV)
        )
        return SrvAnswer(outcome, records, detail)

    async def addresses(self, name: str, family: Family, *, deadline: float) -> AddressAnswer:
        rdtype = "A" if family == "ipv4" else "AAAA"
        outcome, rdatas, detail = await self._query(name, rdtype, deadline)
        kind = dns.rdtypes.IN.A.A if family == "ipv4" else dns.rdtypes.IN.AAAA.AAAA
        found: list[str] = []
        for r in rdatas:
            if isinstance(r, kind):
                literal = ip_literal(str(r.address))
                if literal is not None and str(literal) not in found:
                    found.append(str(literal))
        return AddressAnswer(outcome, tuple(found), detail)


def _name_text(name: object) -> str:
    """A dnspython Name as text without the trailing dot; the root stays "."."""
    if isinstance(name, dns.name.Name):
        text = name.to_text(omit_final_dot=True)
        return text if text and text != "@" else "."
    return str(name).rstrip(".") or "."


def _clip(text: str) -> str:
    return text if len(text) <= _DETAIL_CAP else text[: _DETAIL_CAP - 3] + "..."
