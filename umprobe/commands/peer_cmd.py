"""`umprobe peer`: run the echo peer that `umprobe rtp` and `[[rtp]]` targets measure against.

This module turns options into a `PeerConfig` (every bad input is a one-line `UserError`, exit 3) and runs
`umprobe.peer.echo_peer.serve_echo_peer` until Ctrl-C. The peer itself is explained in echo_peer.py and
docs/rtp.md.
"""

from __future__ import annotations

import ipaddress
import logging
import signal
from functools import partial
from typing import TYPE_CHECKING, Literal

import click
import trio

from umprobe.errors import UserError
from umprobe.secretfile import read_secret, warn_if_exposed

if TYPE_CHECKING:
    from umprobe.inbound import InboundBook
    from umprobe.peer.echo_peer import PeerConfig

__all__ = ["parse_allow", "parse_rtp_range", "parse_sip", "peer_command"]

_PEER_EPILOG = """\b
What it is for:
  Exchange UM sends and receives call audio (RTP) on UDP 1024-65535 of the
  Mailbox servers, and never echoes anything. `umprobe peer` is the far end
  that `umprobe rtp` (and the daemon's [[rtp]] targets) measure the firewall
  path against: on request over an authenticated control channel it opens the
  asked even ports (and the odd RTCP port above each) for a few seconds and
  reflects authenticated RTP-shaped packets, so the prober can tell which
  blocks of the range get through, loss per direction, RTT and jitter.

\b
Where to run it:
  On a host in the Mailbox servers' network segment, behind the same
  firewalls, or on a Mailbox server itself (ports Exchange holds at that
  moment are reported "in use", never unreachable). Give it the same secret
  file as the prober. With --sip tcp:5060 it also answers SIP OPTIONS, to
  prove the SIP path before Exchange is there, and logs who pings it: one
  line per calling identity (client certificate FQDN over TLS, else source
  address) when it first shows up and whenever it goes at_risk (3 min
  without OPTIONS) or demoted (5 min) or back to active (docs/inbound.md).

\b
Firewall ports to open towards this host (from the prober):
  TCP  the --listen port      control channel (TCP, or TLS with --tls-cert)
  UDP  all of --rtp-range     RTP on even ports, RTCP on odd ones
  TCP  each --sip port        SIP OPTIONS, if used

\b
It is not a reflection weapon: replies only to packets authenticated under a
per-session key, only to the address that opened the session, never larger
than the request, after a replay check, within per-source and global rate
limits; everything else is dropped silently and counted. Sessions end after
their ttl (at most 60 s), on close, or when the control connection ends.

\b
Windows: pure Python, no admin rights needed for ports above 1024.
  py -m pip install umprobe
  umprobe peer --listen :7900 --secret-file C:\\umprobe\\peer.secret
  (allow python.exe or the ports in Windows Defender Firewall)

\b
Examples:
  umprobe peer --listen :7900 --secret-file /etc/umprobe/peer.secret
  umprobe peer --listen 10.0.5.20:7900 --secret-file peer.secret --rtp-range 20000-29999 \\
      --allow 10.0.1.0/24 --sip tcp:5060
  umprobe peer --listen :7901 --secret-file peer.secret --tls-cert peer.pem --tls-key peer.key \\
      --tls-ca ca.pem --require-client-cert --sip tls:5061

\b
Logs go to stderr, one line per event (logfmt, or JSON with --log-format json):
start, each session opened and closed (with its counters and drops), refused
connections and failed authentications. Exit codes: 0 stopped by Ctrl-C or
SIGTERM (open sessions are closed first); 3 bad options, an unusable secret or
TLS file, or a port that cannot be bound.
"""


def parse_rtp_range(text: str) -> tuple[int, int]:
    """`"LO-HI"` -> (lo, hi), inside 1024-65535 and holding at least one even port; `UserError` if not."""
    from umprobe.media.sampling import even_ports

    lo_text, sep, hi_text = text.strip().partition("-")
    if not sep or not lo_text.strip().isdigit() or not hi_text.strip().isdigit():
        raise UserError(f"--rtp-range {text!r}: expected LO-HI, e.g. 1024-65535")
    lo, hi = int(lo_text), int(hi_text)
    try:
        even_ports(lo, hi)
    except ValueError as exc:
        raise UserError(f"--rtp-range {text!r}: {exc}") from None
    return lo, hi


def parse_allow(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    """`"10.0.1.0/24"`, `"2001:db8::/32"` or a single address -> a network; `UserError` if not one."""
    try:
        return ipaddress.ip_network(text.strip())
    except ValueError as exc:
        try:
            loose = ipaddress.ip_network(text.strip(), strict=False)
        except ValueError:
            raise UserError(f"--allow {text!r} is not a network in CIDR form ({exc})") from None
        raise UserError(f"--allow {text!r} has host bits set; did you mean {loose}?") from None


def parse_sip(text: str) -> tuple[Literal["tcp", "tls"], int]:
    """`"tcp:5060"` / `"tls:5061"` -> (transport, port); `UserError` if not."""
    transport, sep, port = text.strip().lower().partition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise UserError(f"--sip {text!r}: expected tcp:PORT or tls:PORT, e.g. tcp:5060")
    if transport == "tcp":
        return "tcp", int(port)
    if transport == "tls":
        return "tls", int(port)
    raise UserError(f"--sip {text!r}: the transport is tcp or tls")


@click.command("peer", epilog=_PEER_EPILOG)
@click.option(
    "--listen",
    required=True,
    metavar="HOST:PORT",
    help="Control channel address: HOST:PORT, [IPv6]:PORT or :PORT (every interface).",
)
@click.option(
    "--secret-file",
    required=True,
    type=click.Path(dir_okay=False),
    metavar="FILE",
    help="The shared secret (at least 16 bytes; the same file as the prober's). Keep it private.",
)
@click.option(
    "--media-host",
    metavar="ADDR",
    help="IP address to bind the UDP media ports on. [default: the address each control connection "
    "arrived on]",
)
@click.option(
    "--rtp-range",
    default="1024-65535",
    show_default=True,
    metavar="LO-HI",
    help="Ports the peer will open (Exchange: MinimumRtpPort-MaximumRtpPort in MSExchangeUM.config).",
)
@click.option(
    "--tls-cert", type=click.Path(dir_okay=False), help="Certificate (PEM): TLS on the control channel."
)
@click.option("--tls-key", type=click.Path(dir_okay=False), help="Private key (PEM) of --tls-cert.")
@click.option(
    "--tls-ca", type=click.Path(dir_okay=False), help="CA bundle (PEM) to verify client certificates."
)
@click.option(
    "--require-client-cert",
    is_flag=True,
    help="Refuse TLS clients without a certificate from --tls-ca (control channel and SIP tls listeners).",
)
@click.option(
    "--allow",
    "allow",
    multiple=True,
    metavar="CIDR",
    help="Accept control connections only from this network (repeatable). [default: any]",
)
@click.option(
    "--rate-per-source",
    type=click.FloatRange(min=0, min_open=True),
    default=200.0,
    show_default=True,
    help="Replies per second to one prober address (each port it measures at once takes 50).",
)
@click.option(
    "--rate-global",
    type=click.FloatRange(min=0, min_open=True),
    default=2000.0,
    show_default=True,
    help="Replies per second in all.",
)
@click.option(
    "--max-sessions",
    type=click.IntRange(1, 1024),
    default=16,
    show_default=True,
    help="Sessions (control connections with open ports) at once.",
)
@click.option(
    "--max-clock-skew",
    type=click.FloatRange(min=0, min_open=True),
    default=10.0,
    show_default=True,
    help="Seconds a packet's sender timestamp may differ from this host's clock (replay protection).",
)
@click.option(
    "--no-clock-check",
    is_flag=True,
    help="Skip the timestamp check (for unsynchronised clocks); the sequence window still stops replays.",
)
@click.option(
    "--sip",
    "sip",
    multiple=True,
    metavar="tcp:PORT|tls:PORT",
    help="Also answer SIP OPTIONS with 200 on this port, on the --listen host (repeatable; tls needs "
    "--tls-cert).",
)
@click.option(
    "--log-format",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    help="text: logfmt key=value lines; json: one JSON object per line.",
)
@click.option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning", "error"]),
    default="info",
    show_default=True,
)
def peer_command(
    listen: str,
    secret_file: str,
    media_host: str | None,
    rtp_range: str,
    tls_cert: str | None,
    tls_key: str | None,
    tls_ca: str | None,
    require_client_cert: bool,
    allow: tuple[str, ...],
    rate_per_source: float,
    rate_global: float,
    max_sessions: int,
    max_clock_skew: float,
    no_clock_check: bool,
    sip: tuple[str, ...],
    log_format: str,
    log_level: str,
) -> None:
    """Run the echo peer for RTP range checks (`umprobe rtp`), next to the Exchange Mailbox servers.

    It answers an authenticated control channel, opens the asked UDP ports of --rtp-range for a few
    seconds at a time and reflects authenticated packets on them; optionally it answers SIP OPTIONS too.
    Runs until Ctrl-C.
    """
    from umprobe.exporter import parse_listen
    from umprobe.logs import configure_logging
    from umprobe.net.errors import TLSConfigError
    from umprobe.net.tls import make_server_context
    from umprobe.peer.echo_peer import PeerConfig, SipListen
    from umprobe.peer.reflector import normalise_ip

    host, port = parse_listen(listen)  # ListenAddressError is a UserError
    if media_host is not None and normalise_ip(media_host) is None:
        raise UserError(f"--media-host {media_host!r} is not an IP address")
    lo_hi = parse_rtp_range(rtp_range)
    networks = tuple(parse_allow(a) for a in allow)
    sip_listeners = tuple(SipListen(*parse_sip(s)) for s in sip)
    if (tls_cert is None) != (tls_key is None):
        raise UserError("--tls-cert and --tls-key go together")
    if tls_cert is None and (tls_ca is not None or require_client_cert):
        raise UserError("--tls-ca and --require-client-cert need --tls-cert and --tls-key")
    if require_client_cert and tls_ca is None:
        raise UserError("--require-client-cert needs --tls-ca to verify client certificates against")
    if any(s.transport == "tls" for s in sip_listeners) and tls_cert is None:
        raise UserError("--sip tls:PORT needs --tls-cert and --tls-key")
    secret = read_secret(secret_file)
    tls = None
    if tls_cert is not None and tls_key is not None:
        try:
            tls = make_server_context(
                cert_file=tls_cert, key_file=tls_key, ca_file=tls_ca, require_client_cert=require_client_cert
            )
        except TLSConfigError as exc:
            raise UserError(str(exc)) from None
        warn_if_exposed(tls_key, what="--tls-key")
    inbound = None
    if sip_listeners:
        import time

        from umprobe.inbound import InboundBook

        inbound = InboundBook("peer-sip", started_at=time.time())
    config = PeerConfig(
        secret=secret,
        listen_host=host,
        listen_port=port,
        media_host=media_host,
        rtp_range=lo_hi,
        control_tls=tls,
        sip_tls=tls,
        allow=networks,
        rate_per_source=rate_per_source,
        rate_global=rate_global,
        max_sessions=max_sessions,
        max_clock_skew=None if no_clock_check else max_clock_skew,
        sip=sip_listeners,
        sip_inbound=inbound,
    )
    configure_logging(fmt="json" if log_format == "json" else "text", level=log_level)
    try:
        trio.run(_serve_until_signal, config)
    except BaseExceptionGroup as group:
        error = _lone_user_error(group)
        if error is None:
            raise
        raise error from None


async def _serve_until_signal(config: PeerConfig) -> None:
    """Serve until SIGINT (Ctrl-C) or SIGTERM, then stop in order: every session closes and is logged."""
    from umprobe.logs import LOGGER_NAME, log_event
    from umprobe.peer.echo_peer import serve_echo_peer
    from umprobe.peer.sip_responder import watch_inbound

    # SIGINT and SIGTERM exist on Windows too (SIGTERM is never sent there, but may be listened for).
    received = None
    logger = logging.getLogger(f"{LOGGER_NAME}.peer")
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            await nursery.start(serve_echo_peer, config)
            if config.sip_inbound is not None:
                # A peer has no /metrics: who pings its SIP listeners is told in the log, per state change.
                nursery.start_soon(partial(watch_inbound, config.sip_inbound, logger=logger))
            async for signum in signals:
                received = signal.Signals(signum).name
                nursery.cancel_scope.cancel()
                break
    if config.sip_inbound is not None:
        _log_inbound_summary(config.sip_inbound, logger)
    log_event(logger, logging.INFO, "peer stopped", signal=received)


def _log_inbound_summary(book: InboundBook, logger: logging.Logger) -> None:
    """One line per calling identity of the peer's SIP listeners, at stop."""
    import time

    from umprobe.logs import log_event

    for identity in book.view(time.time()).identities:
        log_event(
            logger,
            logging.INFO,
            "inbound OPTIONS summary",
            identity=identity.identity,
            state=identity.state,
            options=identity.total,
            interval_s=None if identity.interval is None else round(identity.interval, 3),
            silence_s=round(identity.silence, 3),
            source=identity.source,
            from_host=identity.from_host,
        )


def _lone_user_error(group: BaseExceptionGroup[BaseException]) -> UserError | None:
    leaves: list[BaseException] = []
    pending: list[BaseException] = [group]
    while pending:
        exc = pending.pop()
        if isinstance(exc, BaseExceptionGroup):
            pending.extend(exc.exceptions)
        else:
            leaves.append(exc)
    if len(leaves) == 1 and isinstance(leaves[0], UserError):
        return leaves[0]
    return None
