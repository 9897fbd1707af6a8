"""The exceptions of umprobe's network layer, sorted by blame.

``NetError`` and its subclasses are the network's or the peer's fault: a name that does not resolve, a port
that refuses, a connection that drops, a TLS handshake the peer rejects. Probes turn them into failure
*data* (a reason and a phase), never into crashes. Each carries ``detail``: one human-readable line.

``TLSConfigError`` is *our* fault: a CA, certificate or key file that cannot be read, a key that does not
belong to its certificate, a version or cipher string that OpenSSL refuses. It deliberately does not
derive from ``NetError`` so that a probe loop which catches ``NetError`` lets it escape: a broken
configuration must fail loudly (``umprobe config check`` exits non-zero), not be reported as "target down".
"""

from __future__ import annotations

import errno
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from umprobe.net.tls import TLSInfo

__all__ = [
    "LOCAL_RESOURCE_ERRNOS",
    "ConnectError",
    "ConnectRefused",
    "ConnectionClosed",
    "LocalResourceError",
    "NetError",
    "ResolveError",
    "TLSConfigError",
    "TLSError",
    "TLSErrorKind",
]

TLSErrorKind = Literal["handshake_failed", "verify_failed", "client_cert_rejected"]


class NetError(Exception):
    """Base class for failures caused by the network or the peer. ``detail`` is one human line."""

    detail: str

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


#: errno values that mean "this host is out of something", not "the network or the peer failed".
LOCAL_RESOURCE_ERRNOS: frozenset[int] = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


class LocalResourceError(NetError):
    """Not the network's fault nor the peer's: this host ran out of something a probe needs (file
    descriptors: EMFILE, ENFILE; memory or socket buffers: ENOMEM, ENOBUFS; local ports: EADDRNOTAVAIL on
    connect). Reported as data all the same (reason `local_resource_error`), because it passes when the
    resource frees up, and so that it is never blamed on the target."""


class ResolveError(NetError):
    """The host name has no usable address (NXDOMAIN, no address of the wanted family, resolver failure)."""


class ConnectRefused(NetError):
    """The TCP connect was actively refused (ECONNREFUSED: a RST, nothing listens on the port)."""


class ConnectError(NetError):
    """Any other TCP connect failure: EHOSTUNREACH, ENETUNREACH, EADDRNOTAVAIL, ICMP errors and so on."""


class ConnectionClosed(NetError):
    """The peer went away while we were sending or receiving: EOF, RST or a broken pipe.

    Covers the TLS layer too: EOF in the middle of the handshake, and an EOF without close_notify after
    it. (A clean TLS close_notify is not an error: ``receive_some`` returns ``b""``.)
    """


class TLSError(NetError):
    """The TLS handshake failed or its result was refused.

    ``kind``:

    - ``"handshake_failed"``: no TLS session (no shared version or cipher, the peer does not speak TLS,
      a non-certificate alert such as protocol_version or internal_error);
    - ``"verify_failed"``: the session was established but we refuse it: the server's chain does not verify
      or its name does not match (``info`` then holds the captured chain);
    - ``"client_cert_rejected"``: the peer refused our client certificate, or demanded one we did not send
      (with TLS 1.3 this surfaces on the first read after the handshake).

    ``alert`` is the short RFC 8446 name of the alert the peer sent (``"certificate_required"``,
    ``"unknown_ca"``, ``"protocol_version"``), when the failure came from a received alert.
    """

    kind: TLSErrorKind
    alert: str | None
    info: TLSInfo | None

    def __init__(
        self,
        detail: str,
        *,
        kind: TLSErrorKind,
        alert: str | None = None,
        info: TLSInfo | None = None,
    ) -> None:
        super().__init__(detail)
        self.kind = kind
        self.alert = alert
        self.info = info


class TLSConfigError(Exception):
    """Our own TLS configuration is unusable; the message names the offending file or value."""
