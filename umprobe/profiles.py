"""The Exchange 2013/2016 Unified Messaging port map as data (PROTOCOL.md §3, from the Exchange docs).

A profile turns one host into the listeners a UM deployment is expected to have, for a startup mode
(`Set-UMService` / `Set-UMCallRouterSettings -UMStartupMode TCP|TLS|Dual`):

* the UM call router (Client Access role): 5060 plain TCP and 5061 mutual TLS; both ports are changeable
  with `Set-UMCallRouterSettings -SipTcpListeningPort / -SipTlsListeningPort`;
* the UM service (Mailbox role): 5062 plain TCP and 5063 mutual TLS, fixed;
* the UM worker process (Mailbox role): 5065 and 5067, plus 5066 and 5068 in Dual mode. Published sources
  disagree about which worker ports carry TLS, so umprobe hard-codes none: every worker port is probed with
  every transport the mode implies, as one *group* that is healthy when at least one member answers. A worker
  port that does not answer is shown but is not by itself a failure.

Listener names are metric label values, so the set is small and fixed: see `LISTENER_NAMES`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = [
    "LISTENER_NAMES",
    "PROFILES",
    "RTP_RANGE",
    "UM_MODES",
    "ListenerSpec",
    "PortFact",
    "expand_profile",
    "port_map",
]

UM_MODES = ("tcp", "tls", "dual")
PROFILES = ("exchange2013", "exchange2016")
LISTENER_NAMES = ("call_router", "um_service", "um_worker", "custom")

#: The documented RTP/RTCP range of the UM worker (UDP). MSExchangeUM.config's MinimumRtpPort defaults to
#: 1025 although the docs print 1024; both are reported by `umprobe ports`.
RTP_RANGE = (1024, 65535)

Transport = Literal["tcp", "tls"]


@dataclass(frozen=True, slots=True)
class ListenerSpec:
    """One expected SIP listener of a profile."""

    listener: str  # a LISTENER_NAMES value
    port: int
    transport: Transport
    role: str  # the Exchange server role that hosts it
    required: bool  # False: a member of an any-of group (the worker ports)
    group: str | None = None  # members of one group: healthy if at least one member is healthy


@dataclass(frozen=True, slots=True)
class PortFact:
    """A row of the UM port map as `umprobe ports` prints it."""

    component: str
    role: str
    protocol: str
    ports: str
    carries: str
    changeable: str


def _transports(mode: str) -> tuple[Transport, ...]:
    if mode not in UM_MODES:
        raise ValueError(f"unknown UM startup mode {mode!r}: expected one of {', '.join(UM_MODES)}")
    return {"tcp": ("tcp",), "tls": ("tls",), "dual": ("tcp", "tls")}[mode]  # type: ignore[return-value]


def expand_profile(
    profile: str,
    mode: str = "dual",
    *,
    call_router_tcp_port: int = 5060,
    call_router_tls_port: int = 5061,
    roles: tuple[str, ...] = ("call_router", "um_service", "um_worker"),
) -> list[ListenerSpec]:
    """The listeners one host of `profile` is expected to have in UM startup `mode`.

    Exchange 2013 and 2016 share the UM port map. `roles` narrows the expansion, e.g. to just the call router
    for a Client Access server that holds no Mailbox role.
    """
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}: expected one of {', '.join(PROFILES)}")
    transports = _transports(mode)
    out: list[ListenerSpec] = []
    if "call_router" in roles:
        if "tcp" in transports:
            out.append(ListenerSpec("call_router", call_router_tcp_port, "tcp", "Client Access", True))
        if "tls" in transports:
            out.append(ListenerSpec("call_router", call_router_tls_port, "tls", "Client Access", True))
    if "um_service" in roles:
        if "tcp" in transports:
            out.append(ListenerSpec("um_service", 5062, "tcp", "Mailbox", True))
        if "tls" in transports:
            out.append(ListenerSpec("um_service", 5063, "tls", "Mailbox", True))
    if "um_worker" in roles:
        worker_ports = (5065, 5066, 5067, 5068)
        for transport in transports:
            for port in worker_ports:
                out.append(
                    ListenerSpec(
                        "um_worker", port, transport, "Mailbox", False, group=f"um_worker_{transport}"
                    )
                )
    return out


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
