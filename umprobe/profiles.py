"""Profiles as data: a kind of server's SIP listeners, how its OPTIONS must look, and what policy it judges.

A *profile* turns one host (or, for Teams Direct Routing, Microsoft's own SIP proxies) into the listeners to
probe. Each `Profile` value names its listeners (port, transport, listener name, required or member of an
any-of group), the OPTIONS shape the far end expects (`OptionsShape`: Request-URI scheme, whose name goes
in From and Contact) and the policy umprobe judges each run against (`umprobe.policy.Policy`).

Exchange 2013/2016 Unified Messaging (PROTOCOL.md §3, from the Exchange docs), per UM startup mode
(`Set-UMService` / `Set-UMCallRouterSettings -UMStartupMode TCP|TLS|Dual`):

* the UM call router (Client Access role): 5060 plain TCP and 5061 mutual TLS; both ports are changeable
  with `Set-UMCallRouterSettings -SipTcpListeningPort / -SipTlsListeningPort`;
* the UM service (Mailbox role): 5062 plain TCP and 5063 mutual TLS, fixed;
* the UM worker process (Mailbox role): 5065 and 5067, plus 5066 and 5068 in Dual mode. Published sources
  disagree about which worker ports carry TLS, so umprobe hard-codes none: every worker port is probed with
  every transport the mode implies, as one *group* that is healthy when at least one member answers. A worker
  port that does not answer is shown but is not by itself a failure.

Beyond Exchange (docs/profiles/):

* `teams-direct-routing`: the SBC side of Microsoft Teams Direct Routing. umprobe stands where the SBC
  stands: it opens mutual TLS to Microsoft's SIP proxies on 5061 (`sip`, `sip2`, `sip3.pstnhub.microsoft.com`;
  the `gcch` and `dod` variants have one FQDN each) with the SBC's certificate and sends OPTIONS shaped as
  Microsoft requires (`sip:` Request-URI, the SBC FQDN in From, `Contact: <sip:SBC_FQDN:5061;transport=tls>`).
* `skype-mediation`: a Skype for Business / Lync mediation server's gateway listeners, 5067 TLS and 5068 TCP.
* `sip-trunk`: a generic SIP trunk peer, 5060 TCP and UDP and 5061 TLS, narrowed per target.

Transports are values: a listener with transport `"udp"` is data like any other (the `sip-trunk` profile has
one). `expand_profile` hands out only the transports the SIP probe speaks (`PROBED_TRANSPORTS`): all three
since SIP over UDP landed. Likewise a profile may later carry an up/down threshold
preset as one more field with a default.

Listener names are metric label values, so the set is small and fixed: see `LISTENER_NAMES`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Literal, cast

from umprobe.policy import (
    SIP_TRUNK_POLICY,
    SKYPE_MEDIATION_POLICY,
    TEAMS_POLICY,
    Policy,
)

__all__ = [
    "EXCHANGE_PROFILES",
    "LISTENER_NAMES",
    "PROBED_TRANSPORTS",
    "PROFILES",
    "PROFILE_DATA",
    "RTP_RANGE",
    "TEAMS_VARIANTS",
    "TRANSPORTS",
    "UM_MODES",
    "ListenerSpec",
    "OptionsShape",
    "PortFact",
    "Profile",
    "ProfileListener",
    "RequestShape",
    "expand_profile",
    "get_profile",
    "port_map",
    "request_shape",
]

UM_MODES = ("tcp", "tls", "dual")
EXCHANGE_PROFILES = ("exchange2013", "exchange2016")
PROFILES = (*EXCHANGE_PROFILES, "teams-direct-routing", "skype-mediation", "sip-trunk")
LISTENER_NAMES = (
    "call_router",
    "um_service",
    "um_worker",
    "custom",
    "sip_proxy",
    "mediation_server",
    "sip_trunk",
)
#: Every transport a profile may name; the SIP probe speaks `PROBED_TRANSPORTS` of them.
TRANSPORTS = ("tcp", "tls", "udp")
PROBED_TRANSPORTS = ("tcp", "tls", "udp")
#: Teams Direct Routing clouds: the SIP proxy FQDNs of each (Microsoft's Direct Routing docs).
TEAMS_VARIANTS: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {
        "commercial": (
            "sip.pstnhub.microsoft.com",
            "sip2.pstnhub.microsoft.com",
            "sip3.pstnhub.microsoft.com",
        ),
        "gcch": ("sip.pstnhub.gov.teams.microsoft.us",),
        "dod": ("sip.pstnhub.dod.teams.microsoft.us",),
    }
)

#: The documented RTP/RTCP range of the UM worker (UDP). MSExchangeUM.config's MinimumRtpPort defaults to
#: 1025 although the docs print 1024; both are reported by `umprobe ports`.
RTP_RANGE = (1024, 65535)

Transport = Literal["tcp", "tls", "udp"]


@dataclass(frozen=True, slots=True)
class ListenerSpec:
    """One expected SIP listener of a profile, in a transport the probe speaks."""

    listener: str  # a LISTENER_NAMES value
    port: int
    transport: Transport
    role: str  # what hosts it: the Exchange server role, "Microsoft SIP proxy", ...
    required: bool  # False: a member of an any-of group (the worker ports)
    group: str | None = None  # members of one group: healthy if at least one member is healthy


@dataclass(frozen=True, slots=True)
class ProfileListener:
    """One listener of a profile as data. `transport` is any of `TRANSPORTS`; `role` is the Exchange role
    name (`call_router`, `um_service`, `um_worker`) for Exchange, which `roles=` filters by."""

    listener: str
    port: int
    transport: str
    role: str
    required: bool = True
    group: str | None = None


@dataclass(frozen=True, slots=True)
class OptionsShape:
    """How a profile's OPTIONS look on the wire (umprobe.sip.builder).

    `identity` says whose name is in From (the domain) and Contact (the host): `"local"` is umprobe's own
    local address (Exchange's default, `sip:umprobe@ADDRESS:PORT;transport=T`); `"sbc_fqdn"` is the SBC FQDN
    the target is configured with, in From and, without userinfo, in Contact as
    `<sip:SBC_FQDN:SBC_PORT;transport=T>` (SBC_PORT defaults to `default_contact_port` for TLS, 5060 else).
    """

    request_uri_scheme: Literal["sip", "sips"] = "sip"
    identity: Literal["local", "sbc_fqdn"] = "local"
    default_contact_port: int = 5061


@dataclass(frozen=True, slots=True)
class Profile:
    """A kind of far end, as data."""

    name: str
    title: str
    listeners: tuple[ProfileListener, ...]
    shape: OptionsShape = OptionsShape()
    policy: Policy | None = None
    #: variant -> the far end's own hosts (Teams: Microsoft's SIP proxies); empty: the user names the hosts
    hosts: Mapping[str, tuple[str, ...]] = field(default_factory=lambda: MappingProxyType({}))
    default_variant: str | None = None
    requires_sbc_fqdn: bool = False  # the OPTIONS shape cannot be built without it
    requires_client_cert: bool = False  # the far end only talks mutual TLS: no client certificate, no check
    exchange: bool = False  # um_mode / roles / call_router_*_port apply

    @property
    def variants(self) -> tuple[str, ...]:
        return tuple(self.hosts)

    def default_hosts(self, variant: str | None = None) -> tuple[str, ...]:
        """The far end's own hosts for `variant` (default: the profile's default variant); () if none."""
        if not self.hosts:
            return ()
        chosen = variant or self.default_variant
        if chosen is None or chosen not in self.hosts:
            raise ValueError(
                f"unknown variant {chosen!r} of {self.name}: expected one of {', '.join(self.hosts)}"
            )
        return self.hosts[chosen]

    @property
    def transports(self) -> tuple[str, ...]:
        """The transports of the profile's listeners, in order of first appearance."""
        return tuple(dict.fromkeys(li.transport for li in self.listeners))


def _exchange(name: str, title: str) -> Profile:
    worker_ports = (5065, 5066, 5067, 5068)
    listeners = [
        ProfileListener("call_router", 5060, "tcp", "call_router"),
        ProfileListener("call_router", 5061, "tls", "call_router"),
        ProfileListener("um_service", 5062, "tcp", "um_service"),
        ProfileListener("um_service", 5063, "tls", "um_service"),
    ]
    for transport in ("tcp", "tls"):
        for port in worker_ports:
            listeners.append(
                ProfileListener("um_worker", port, transport, "um_worker", False, f"um_worker_{transport}")
            )
    return Profile(name=name, title=title, listeners=tuple(listeners), exchange=True)


PROFILE_DATA: Mapping[str, Profile] = MappingProxyType(
    {
        "exchange2013": _exchange("exchange2013", "Exchange 2013 Unified Messaging"),
        "exchange2016": _exchange("exchange2016", "Exchange 2016 Unified Messaging"),
        "teams-direct-routing": Profile(
            name="teams-direct-routing",
            title="Microsoft Teams Direct Routing (the SBC's side)",
            listeners=(ProfileListener("sip_proxy", 5061, "tls", "Microsoft SIP proxy"),),
            shape=OptionsShape(request_uri_scheme="sip", identity="sbc_fqdn", default_contact_port=5061),
            policy=TEAMS_POLICY,
            hosts=TEAMS_VARIANTS,
            default_variant="commercial",
            requires_sbc_fqdn=True,
            requires_client_cert=True,
        ),
        "skype-mediation": Profile(
            name="skype-mediation",
            title="Skype for Business / Lync mediation server (the gateway's side)",
            listeners=(
                ProfileListener("mediation_server", 5067, "tls", "Mediation Server"),
                ProfileListener("mediation_server", 5068, "tcp", "Mediation Server"),
            ),
            shape=OptionsShape(request_uri_scheme="sip", identity="sbc_fqdn", default_contact_port=5067),
            policy=SKYPE_MEDIATION_POLICY,
        ),
        "sip-trunk": Profile(
            name="sip-trunk",
            title="a generic SIP trunk peer",
            listeners=(
                ProfileListener("sip_trunk", 5060, "tcp", "SIP trunk"),
                ProfileListener("sip_trunk", 5060, "udp", "SIP trunk"),
                ProfileListener("sip_trunk", 5061, "tls", "SIP trunk"),
            ),
            shape=OptionsShape(request_uri_scheme="sip", identity="sbc_fqdn", default_contact_port=5061),
            policy=SIP_TRUNK_POLICY,
        ),
    }
)


@dataclass(frozen=True, slots=True)
class PortFact:
    """A row of the UM port map as `umprobe ports` prints it."""

    component: str
    role: str
    protocol: str
    ports: str
    carries: str
    changeable: str


def get_profile(name: str) -> Profile:
    """The profile called `name`; ValueError naming the known ones otherwise."""
    profile = PROFILE_DATA.get(name)
    if profile is None:
        raise ValueError(f"unknown profile {name!r}: expected one of {', '.join(PROFILES)}")
    return profile


def _transports(mode: str) -> tuple[Transport, ...]:
    if mode not in UM_MODES:
        raise ValueError(f"unknown UM startup mode {mode!r}: expected one of {', '.join(UM_MODES)}")
    return {"tcp": ("tcp",), "tls": ("tls",), "dual": ("tcp", "tls")}[mode]  # type: ignore[return-value]


_EXCHANGE_ROLE_TITLES = {"call_router": "Client Access", "um_service": "Mailbox", "um_worker": "Mailbox"}


def expand_profile(
    profile: str,
    mode: str = "dual",
    *,
    call_router_tcp_port: int = 5060,
    call_router_tls_port: int = 5061,
    roles: tuple[str, ...] = ("call_router", "um_service", "um_worker"),
    transports: tuple[str, ...] | None = None,
) -> list[ListenerSpec]:
    """The listeners one host of `profile` is expected to have, in the transports the probe speaks.

    Exchange 2013 and 2016 share the UM port map: `mode` (the UM startup mode) picks the transports, `roles`
    narrows the expansion (e.g. to just the call router of a Client Access server that holds no Mailbox role)
    and the call router's ports are changeable. The other profiles ignore those three; `transports` narrows
    them to some of their transports (e.g. a TLS-only trunk). Listeners in a transport the probe does not
    speak yet (`PROBED_TRANSPORTS`) are left out.
    """
    data = get_profile(profile)
    out: list[ListenerSpec] = []
    if data.exchange:
        wanted: tuple[str, ...] = _transports(mode)
        for li in data.listeners:
            if li.transport not in wanted or li.role not in roles:
                continue
            port = li.port
            if li.listener == "call_router":
                port = call_router_tcp_port if li.transport == "tcp" else call_router_tls_port
            out.append(
                ListenerSpec(
                    li.listener,
                    port,
                    cast("Transport", li.transport),
                    _EXCHANGE_ROLE_TITLES[li.role],
                    li.required,
                    li.group,
                )
            )
        return out
    if transports is not None:
        unknown = [t for t in transports if t not in data.transports]
        if unknown:
            raise ValueError(
                f"profile {profile} has no {unknown[0]!r} listener:"
                f" expected some of {', '.join(data.transports)}"
            )
    for li in data.listeners:
        if transports is not None and li.transport not in transports:
            continue
        if li.transport not in PROBED_TRANSPORTS:
            continue
        out.append(
            ListenerSpec(
                li.listener, li.port, cast("Transport", li.transport), li.role, li.required, li.group
            )
        )
    return out


@dataclass(frozen=True, slots=True)
class RequestShape:
    """The OPTIONS fields of one listener of a profile (SipProbeSpec's uri_scheme, from_domain, contact_*).
    `from_domain` None keeps the module's (or the local address); `contact_host` None the default Contact."""

    uri_scheme: Literal["sip", "sips"]
    from_domain: str | None
    contact_host: str | None
    contact_port: int | None


def request_shape(
    profile: str, transport: str, *, sbc_fqdn: str | None = None, sbc_port: int | None = None
) -> RequestShape:
    """How a listener of `profile` over `transport` must shape its OPTIONS, given the target's SBC FQDN.

    With an `sbc_fqdn` and a profile whose identity is the SBC's, From carries `sip:umprobe@SBC_FQDN` and
    Contact `<sip:SBC_FQDN:PORT;transport=T>` (PORT: `sbc_port`, else 5061 or the profile's TLS port for TLS,
    5060 otherwise); without one (or for Exchange) the default shape stays.
    """
    shape = get_profile(profile).shape
    if shape.identity != "sbc_fqdn" or not sbc_fqdn:
        return RequestShape(shape.request_uri_scheme, None, None, None)
    port = sbc_port if sbc_port is not None else (shape.default_contact_port if transport == "tls" else 5060)
    return RequestShape(shape.request_uri_scheme, sbc_fqdn, sbc_fqdn, port)


def port_map() -> list[PortFact]:
    """The whole UM port map with its provenance, for `umprobe ports`."""
    return [
        PortFact(
            "UM call router",
            "Client Access",
            "SIP/TCP",
            "5060",
            "plain SIP",
            "yes: Set-UMCallRouterSettings -SipTcpListeningPort",
        ),
        PortFact(
            "UM call router",
            "Client Access",
            "SIP/TLS",
            "5061",
            "mutual TLS",
            "yes: Set-UMCallRouterSettings -SipTlsListeningPort",
        ),
        PortFact("UM service", "Mailbox", "SIP/TCP", "5062", "plain SIP", "no"),
        PortFact("UM service", "Mailbox", "SIP/TLS", "5063", "mutual TLS", "no"),
        PortFact(
            "UM worker process",
            "Mailbox",
            "SIP/TCP+TLS",
            "5065, 5067 (+5066, 5068 in Dual mode)",
            "sources disagree which carry TLS: umprobe probes all",
            "no",
        ),
        PortFact(
            "RTP/RTCP media",
            "Mailbox (worker)",
            "UDP",
            f"{RTP_RANGE[0]}-{RTP_RANGE[1]}",
            "RTP on even ports, RTCP on the next odd port",
            "yes: MinimumRtpPort / MaximumRtpPort in MSExchangeUM.config (MinimumRtpPort defaults to 1025)",
        ),
    ]
