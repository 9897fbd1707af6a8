"""trio I/O for umprobe: address resolution, TCP connect, and TLS over memory BIOs.

This package is the only place that touches sockets and OpenSSL. Each transport translates the foreign
exceptions it meets (``OSError``, ``OpenSSL.SSL.Error``, trio's resource errors) into the
:mod:`umprobe.net.errors` hierarchy at one boundary, so callers above (probes, the CLI) only ever see
:class:`~umprobe.net.errors.NetError` subclasses for the peer's or the network's fault and
:class:`~umprobe.net.errors.TLSConfigError` for our own bad configuration.

Nothing here takes a timeout: the caller owns the deadline and wraps calls in trio cancel scopes.
"""

__all__: list[str] = []
