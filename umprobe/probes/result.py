"""Probe results: plain values that every face of umprobe renders (CLI, JSON, metrics, status page).

Failures are data (blackbox_exporter's model): a probe that fails returns a `ProbeResult` whose `reason` comes
from the fixed `Reason` set and whose `phase` says where it happened. Only bugs raise.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime

from umprobe.net.tls import CertInfo, TLSInfo

__all__ = [
    "PHASES",
    "Phase",
    "ProbeResult",
    "Reason",
    "Timings",
    "TranscriptEntry",
]


class Reason(enum.StrEnum):
    """Why a probe ended. The set is fixed and small so it can be a metric label."""

    OK = "ok"
    DNS_ERROR = "dns_error"
    CONNECT_REFUSED = "connect_refused"
    CONNECT_TIMEOUT = "connect_timeout"
    CONNECT_ERROR = "connect_error"
    TLS_HANDSHAKE_FAILED = "tls_handshake_failed"
    TLS_HANDSHAKE_TIMEOUT = "tls_handshake_timeout"
    TLS_VERIFY_FAILED = "tls_verify_failed"
    TLS_CLIENT_CERT_REJECTED = "tls_client_cert_rejected"
    SIP_TIMEOUT = "sip_timeout"
    SIP_PROTOCOL_ERROR = "sip_protocol_error"
    SIP_UNHEALTHY_STATUS = "sip_unhealthy_status"
    CONNECTION_CLOSED = "connection_closed"
    LOCAL_RESOURCE_ERROR = "local_resource_error"  # our host, not the target: out of file descriptors, ...


class Phase(enum.StrEnum):
    """Where a probe spends its time, in order. `total` is only a timing, never a failure phase."""

    RESOLVE = "resolve"
    CONNECT = "connect"
    TLS = "tls"
    SIP = "sip"


PHASES: tuple[str, ...] = ("resolve", "connect", "tls", "sip", "total")


@dataclass(frozen=True, slots=True)
class Timings:
    """Seconds spent in each phase, measured with trio's monotonic clock; None if the phase never ran.

    `sip` runs from the first byte of the request handed to the transport to the arrival of the bytes that
    complete the final response (parsing them is not counted).
    With TLS 1.3 the server checks a client certificate after the client's handshake is done, so that check
    lands in `sip`, not in `tls` (a TLS 1.2 handshake contains it).
    """

    resolve: float | None = None
    connect: float | None = None
    tls: float | None = None
    sip: float | None = None
    total: float | None = None

    def as_dict(self) -> dict[str, float | None]:
        return {
            "resolve": self.resolve,
            "connect": self.connect,
            "tls": self.tls,
            "sip": self.sip,
            "total": self.total,
        }


@dataclass(frozen=True, slots=True)
class TranscriptEntry:
    """One line of a probe's story, for debug output and the status page; `at` is seconds since start."""

    at: float
    kind: str  # "info", "send", "recv", "error"
    text: str


@dataclass(frozen=True, slots=True)
class ProbeResult:
    """The outcome of probing one listener on one resolved address."""

    target: str
    address: str
    family: str
    port: int
    transport: str
    listener: str
    success: bool
    alive: bool
    reason: Reason
    phase: Phase | None
    detail: str
    timings: Timings
    status_code: int | None = None
    reason_phrase: str | None = None
    server: str | None = None
    ms_diagnostics: str | None = None
    retry_after: int | None = None
    provisional_responses: int = 0
    mismatched_responses: int = 0
    retransmissions: int = 0  # SIP over UDP: requests re-sent per Timer E (RFC 3261 §17.1.2.2)
    tls: TLSInfo | None = None
    client_cert: CertInfo | None = None
    insecure: bool = False
    started_at: datetime | None = None
    transcript: tuple[TranscriptEntry, ...] = field(default=(), repr=False)
    # How the address was found when the probe resolves by RFC 3263 (`resolution = "rfc3263"`): one of
    # `umprobe.net.rfc3263.STEPS` ("naptr", "srv", "a", "literal", "explicit_port"); None for plain A/AAAA
    # resolution and for a result without an address.
    step: str | None = None
