"""dnsmasq (Debian package dnsmasq-base) as a real DNS server for a test zone: NAPTR, SRV, A and AAAA.

    dnsmasq --no-daemon --conf-file=/dev/null --no-resolv --no-hosts --no-poll
            --port=P --listen-address=127.0.0.1 --bind-interfaces --local=/test/
            --log-queries --log-facility=-
            --naptr-record=NAME,ORDER,PREF,FLAGS,SERVICE,REGEXP,REPLACEMENT
            --srv-host=_sip._tcp.NAME,TARGET,PORT,PRIORITY,WEIGHT
            --host-record=NAME,ADDRESS

Facts this relies on (dnsmasq 2.90, Debian 12):
- `--no-daemon` keeps it in the foreground as our child and does not change user id, so it runs as root in a
  sandbox without `--user` (it does not fork per TCP query either). `--log-facility=-` sends the log,
  including each query with `--log-queries`, to stderr: ``query[SRV] _sip._tcp.x.test from 127.0.0.1``.
- `--conf-file=/dev/null`, `--no-resolv`, `--no-hosts`, `--no-poll`: nothing from /etc is read and nothing is
  ever forwarded; `--local=/test/` makes every unknown name under `test` NXDOMAIN (a known name asked for a
  type it lacks is NODATA), and names outside `test` get REFUSED.
- It serves UDP and TCP on the port, so the lab's TCP connect readiness check works.
- `--srv-host` takes target, port, priority, weight in that order (not BIND's order); with no target the
  record's target is "." (RFC 2782: service not available). A name may have several `--host-record`s, one
  per address; the answer holds all of them.
- A port taken by someone else ends start-up with "failed to create listening socket ... Address already in
  use": `start_dnsmasq` retries with a fresh port.

`.test` is reserved by RFC 6761 §6.2 and never reaches a real nameserver.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.lab.ports import allocate_port
from tests.lab.proc import LabProcess, LabStartError, require_binary

__all__ = [
    "LAB_DOMAINS",
    "Dnsmasq",
    "Host",
    "Naptr",
    "Srv",
    "Zone",
    "lab_zone",
    "start_dnsmasq",
]


@dataclass(frozen=True)
class Naptr:
    name: str
    order: int
    preference: int
    flags: str
    service: str
    replacement: str
    regexp: str = ""

    def arg(self) -> str:
        fields = [
            self.name,
            self.order,
            self.preference,
            self.flags,
            self.service,
            self.regexp,
            self.replacement,
        ]
        return "--naptr-record=" + ",".join(str(f) for f in fields)


@dataclass(frozen=True)
class Srv:
    name: str  # _service._proto.domain
    target: str | None  # None: the "." target (service not available)
    port: int = 0
    priority: int = 0
    weight: int = 0

    def arg(self) -> str:
        if self.target is None:
            return f"--srv-host={self.name}"
        return f"--srv-host={self.name},{self.target},{self.port},{self.priority},{self.weight}"


@dataclass(frozen=True)
class Host:
    name: str
    addresses: tuple[str, ...]

    def args(self) -> list[str]:
        return [f"--host-record={self.name},{address}" for address in self.addresses]


@dataclass(frozen=True)
class Zone:
    naptr: tuple[Naptr, ...] = ()
    srv: tuple[Srv, ...] = ()
    hosts: tuple[Host, ...] = ()
    local: tuple[str, ...] = ("test",)  # domains answered only from this zone (unknown names: NXDOMAIN)

    def args(self) -> list[str]:
        out = [f"--local=/{domain}/" for domain in self.local]
        out += [n.arg() for n in self.naptr]
        out += [s.arg() for s in self.srv]
        for host in self.hosts:
            out += host.args()
        return out

    def merged(self, other: Zone) -> Zone:
        return Zone(
            self.naptr + other.naptr,
            self.srv + other.srv,
            self.hosts + other.hosts,
            tuple(dict.fromkeys(self.local + other.local)),
        )


_QUERY = re.compile(r"query\[(?P<type>[A-Z0-9]+)\] (?P<name>\S+) from ")


@dataclass
class Dnsmasq:
    zone: Zone
    port: int
    log_dir: Path
    host: str = "127.0.0.1"
    name: str = "dnsmasq"
    process: LabProcess = field(init=False)

    def __post_init__(self) -> None:
        binary = require_binary("dnsmasq")
        argv = [
            binary,
            "--no-daemon",
            "--conf-file=/dev/null",
            "--no-resolv",
            "--no-hosts",
            "--no-poll",
            f"--port={self.port}",
            f"--listen-address={self.host}",
            "--bind-interfaces",
            "--log-queries",
            "--log-facility=-",
            *self.zone.args(),
        ]
        self.process = LabProcess(self.name, argv, log_dir=self.log_dir, ready=[(self.host, self.port)])

    @property
    def nameserver(self) -> tuple[str, int]:
        """(address, port) for umprobe.net.rfc3263.DnsClient."""
        return (self.host, self.port)

    def start(self) -> Dnsmasq:
        self.process.start()
        return self

    def stop(self) -> int | None:
        return self.process.stop()

    def queries(self) -> list[tuple[str, str]]:
        """Every query the server logged so far, as (type, name), in arrival order."""
        return [(m["type"], m["name"]) for m in _QUERY.finditer(self.process.log_text())]

    def wait_for_queries(self, count: int, timeout: float = 5.0) -> list[tuple[str, str]]:
        """The logged queries once there are at least `count` (dnsmasq writes its log asynchronously)."""
        end = time.monotonic() + timeout
        while True:
            seen = self.queries()
            if len(seen) >= count or time.monotonic() > end:
                return seen
            time.sleep(0.02)


def start_dnsmasq(zone: Zone, *, log_dir: Path, name: str = "dnsmasq", attempts: int = 3) -> Dnsmasq:
    """Start dnsmasq for `zone` on a free loopback port; retry with a new port if one was taken meanwhile."""
    for attempt in range(attempts):
        server = Dnsmasq(zone, allocate_port(), log_dir, name=name)
        try:
            return server.start()
        except LabStartError as exc:
            if not exc.port_conflict or attempt == attempts - 1:
                raise
    raise AssertionError("unreachable")


# -- the lab zone --------------------------------------------------------------------------------------------
# Addresses: 127.0.53.x for IPv4, 2001:db8::/32 (RFC 3849 documentation) for IPv6. The resolution tests only
# look these up; nothing connects to them. The end-to-end test builds its own zone pointing at 127.0.0.1.
LAB_DOMAINS = {
    "naptr": "naptr.sip.test",  # NAPTR (tls, tcp, udp and junk) -> SRV -> A/AAAA; decoy direct SRV
    "srv": "srv.sip.test",  # no NAPTR; _sip._tcp with two priorities and weights, _sips._tcp, _sip._udp
    "a_only": "a-only.sip.test",  # A and AAAA only
    "sips_only": "sips-only.sip.test",  # NAPTR SIPS+D2T only
    "dead": "dead.sip.test",  # _sip._tcp SRV with target "." (and an A record that must not be used)
    "naptr_broken": "naptr-broken.sip.test",  # NAPTR -> SRV name that does not exist; has an A record
    "missing": "nx.sip.test",  # does not exist
}


def lab_zone() -> Zone:
    d = LAB_DOMAINS
    naptr = (
        # Usable, deliberately listed out of order: the client must sort by order, then preference.
        Naptr(d["naptr"], 20, 10, "S", "SIP+D2U", f"_sip._udp.edge.{d['naptr']}"),
        Naptr(d["naptr"], 10, 20, "S", "SIP+D2T", f"_sip._tcp.edge.{d['naptr']}"),
        Naptr(d["naptr"], 10, 10, "S", "SIPS+D2T", f"_sips._tcp.edge.{d['naptr']}"),
        # Unusable: SCTP, an ENUM-style regexp record, a non-terminal record.
        Naptr(d["naptr"], 1, 1, "S", "SIP+D2S", f"_sip._sctp.edge.{d['naptr']}"),
        Naptr(d["naptr"], 2, 1, "U", "E2U+sip", ".", regexp="!^.*$!sip:info@naptr.sip.test!"),
        Naptr(d["naptr"], 3, 1, "", "SIP+D2T", f"other.{d['naptr']}"),
        Naptr(d["sips_only"], 10, 10, "S", "SIPS+D2T", f"_sips._tcp.{d['sips_only']}"),
        Naptr(d["naptr_broken"], 10, 10, "S", "SIP+D2T", f"_sip._tcp.nowhere.{d['naptr_broken']}"),
    )
    srv = (
        Srv(f"_sips._tcp.edge.{d['naptr']}", f"tls1.{d['naptr']}", 5061, 10, 0),
        Srv(f"_sip._tcp.edge.{d['naptr']}", f"tcp1.{d['naptr']}", 5060, 10, 0),
        Srv(f"_sip._udp.edge.{d['naptr']}", f"udp1.{d['naptr']}", 5060, 10, 0),
        # A decoy under the standard name: with usable NAPTR records it must never be queried or used.
        Srv(f"_sip._tcp.{d['naptr']}", f"decoy.{d['naptr']}", 5060, 0, 0),
        Srv(f"_sip._tcp.{d['srv']}", f"a.{d['srv']}", 5060, 10, 60),
        Srv(f"_sip._tcp.{d['srv']}", f"b.{d['srv']}", 5070, 10, 40),
        Srv(f"_sip._tcp.{d['srv']}", f"c.{d['srv']}", 5080, 20, 0),
        Srv(f"_sips._tcp.{d['srv']}", f"a.{d['srv']}", 5061, 10, 0),
        Srv(f"_sip._udp.{d['srv']}", f"a.{d['srv']}", 5060, 10, 0),
        Srv(f"_sips._tcp.{d['sips_only']}", f"tls.{d['sips_only']}", 5061, 0, 0),
        Srv(f"_sip._tcp.{d['dead']}", None),
    )
    hosts = (
        Host(f"tls1.{d['naptr']}", ("127.0.53.1", "2001:db8::531")),
        Host(f"tcp1.{d['naptr']}", ("127.0.53.2",)),
        Host(f"udp1.{d['naptr']}", ("127.0.53.3",)),
        Host(f"decoy.{d['naptr']}", ("127.0.53.99",)),
        Host(d["naptr"], ("127.0.53.98",)),  # the domain's own A record: not used while NAPTR works
        Host(f"a.{d['srv']}", ("127.0.53.11", "127.0.53.12", "2001:db8::5311")),
        Host(f"b.{d['srv']}", ("127.0.53.21",)),
        Host(f"c.{d['srv']}", ("127.0.53.31", "2001:db8::5331")),
        Host(d["a_only"], ("127.0.53.41", "127.0.53.42", "2001:db8::5341")),
        Host(f"tls.{d['sips_only']}", ("127.0.53.51",)),
        Host(d["dead"], ("127.0.53.61",)),
        Host(d["naptr_broken"], ("127.0.53.71",)),
    )
    return Zone(naptr=naptr, srv=srv, hosts=hosts)
