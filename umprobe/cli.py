"""umprobe's command line (click).

Every command that can fail because of its input ends with one clear line on stderr that names what is wrong,
and exit code 3 (Nagios UNKNOWN): click's own usage errors are mapped to 3 too, so a monitoring system never
mistakes a typo for a CRITICAL listener.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence
from typing import ClassVar

import click
import trio

from umprobe._version import __version__
from umprobe.check import CheckItem, Thresholds, evaluate, render_json, render_text, run_check
from umprobe.errors import UserError
from umprobe.net.errors import TLSConfigError
from umprobe.net.tls import TLS_VERSIONS, TLSClientConfig
from umprobe.probes.result import ProbeResult
from umprobe.probes.sip_options import SipProbeSpec, TLSContextCache
from umprobe.profiles import PROFILES, UM_MODES, expand_profile, get_profile, port_map, request_shape
from umprobe.sip import DEFAULT_ACCEPT, parse_accept_status
from umprobe.targets import TargetError, parse_target

__all__ = ["main"]

EXIT_UNKNOWN = 3

_CHECK_EPILOG = """\b
Examples:
  umprobe check cas01.contoso.local                 plain SIP OPTIONS to 5060/tcp
  umprobe check --transport tls --ca ca.pem --cert probe.pem --key probe.key cas01.contoso.local
                                                    mutual TLS to 5061
  umprobe check 'sip:cas01.contoso.local:5061;transport=tls' --ca ca.pem ...
  umprobe check --profile exchange2016 --um-mode dual --ca ca.pem --cert probe.pem --key probe.key mbx01
                                                    every UM listener of one server
  umprobe check --profile teams-direct-routing --sbc-fqdn sbc1.contoso.com --cert sbc1.pem --key sbc1.key
                                                    Microsoft's SIP proxies, as the SBC: TLS and policy
  umprobe check --json [::1]:5060                   machine-readable result
  umprobe check --resolution rfc3263 --dns-server 192.0.2.53 sip.contoso.com
                                                    every NAPTR/SRV target of the SIP domain

\b
Exit codes (Nagios plugin rules): 0 OK, 1 WARNING, 2 CRITICAL (a listener failed),
3 UNKNOWN (bad arguments or unusable certificate files).
"""


def _parse_version(value: str | None, option: str) -> str | None:
    if value is None:
        return None
    if value not in TLS_VERSIONS:
        raise click.BadParameter(f"{value!r} is not one of {', '.join(TLS_VERSIONS)}", param_hint=option)
    return value


def _accept(_ctx: click.Context, _param: click.Parameter, value: str | None) -> frozenset[int]:
    if value is None:
        return DEFAULT_ACCEPT
    try:
        return parse_accept_status(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def _seconds(value: float | None, option: str) -> float | None:
    if value is not None and value <= 0:
        raise click.BadParameter(f"{value} must be a positive number of seconds", param_hint=option)
    return value


class _LazyGroup(click.Group):
    """A click group whose bigger subcommands are imported only when they run (or when help lists them).

    `umprobe check` is what monitoring systems start every minute: it should not pay for importing the
    daemon's config reader, the RTP sampler or the echo peer. Each lazy command is "module:attribute".
    """

    _LAZY: ClassVar[dict[str, str]] = {
        "config": "umprobe.commands.config_cmd:config_group",
        "dashboards": "umprobe.commands.dashboards_cmd:dashboards_group",
        "peer": "umprobe.commands.peer_cmd:peer_command",
        "rtp": "umprobe.commands.rtp_cmd:rtp_command",
        "run": "umprobe.commands.run_cmd:run_command",
    }

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self._LAZY})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        command = super().get_command(ctx, cmd_name)
        if command is None and cmd_name in self._LAZY:
            import importlib

            module_name, _, attribute = self._LAZY[cmd_name].partition(":")
            command = getattr(importlib.import_module(module_name), attribute)
            if not isinstance(command, click.Command):  # pragma: no cover - a wrong table entry
                raise TypeError(f"{self._LAZY[cmd_name]} is not a click command")
            self.add_command(command, cmd_name)
        return command


@click.group(
    cls=_LazyGroup,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110},
)
@click.version_option(__version__, "-V", "--version", prog_name="umprobe")
def cli() -> None:
    """umprobe: reachability probe and synthetic monitor for Exchange UM voice infrastructure.

    It sends SIP OPTIONS over TCP and mutual TLS to every UM listener, times each phase (resolve, connect,
    TLS handshake, SIP response) and inspects certificates. Start with `umprobe ports` for the Exchange UM
    port map and `umprobe check --help` for one-shot checks.
    """


@cli.command(epilog=_CHECK_EPILOG)
@click.argument("targets", nargs=-1, required=False, metavar="TARGET...")
@click.option(
    "--transport",
    type=click.Choice(["tcp", "tls", "udp"]),
    help="Transport when TARGET does not say. [default: tcp]",
)
@click.option(
    "--port",
    type=click.IntRange(1, 65535),
    help="Port when TARGET does not say. [default: 5060 tcp, 5061 tls]",
)
@click.option(
    "--profile",
    type=click.Choice(PROFILES),
    help="Expand each host into the listeners of this kind of server: Exchange UM (see `umprobe ports`), "
    "or an SBC's far end, judged by its policy (docs/profiles/).",
)
@click.option(
    "--um-mode",
    type=click.Choice(UM_MODES),
    default="dual",
    show_default=True,
    help="UM startup mode of the servers (-UMStartupMode): which listeners --profile expects.",
)
@click.option(
    "--sbc-fqdn",
    help="With --profile teams-direct-routing (required), skype-mediation or sip-trunk: the SBC's FQDN, "
    "sent in From and Contact and matched against --cert by the profile's policy.",
)
@click.option(
    "--sbc-port",
    type=click.IntRange(1, 65535),
    help="With --sbc-fqdn: the SBC's own SIP port in Contact. "
    "[default: 5061 for TLS (5067 skype-mediation), 5060 else]",
)
@click.option(
    "--variant",
    type=click.Choice(["commercial", "gcch", "dod"]),
    help="With --profile teams-direct-routing and no TARGET: which Microsoft cloud's SIP proxies. "
    "[default: commercial]",
)
@click.option(
    "--ca", "ca_file", type=click.Path(dir_okay=False), help="CA bundle (PEM) to verify the server with."
)
@click.option(
    "--cert", "cert_file", type=click.Path(dir_okay=False), help="Client certificate (PEM) for mutual TLS."
)
@click.option("--key", "key_file", type=click.Path(dir_okay=False), help="Private key (PEM) of --cert.")
@click.option(
    "--server-name", help="Name to send as SNI and to verify in the server certificate. [default: the host]"
)
@click.option(
    "--insecure", is_flag=True, help="Do not verify the server certificate (shown in every output)."
)
@click.option(
    "--min-tls", default="1.2", show_default=True, help="Lowest TLS version to offer: 1.0, 1.1, 1.2, 1.3."
)
@click.option("--max-tls", help="Highest TLS version to offer. [default: the library's highest]")
@click.option("--ciphers", help="OpenSSL cipher string for TLS 1.2 and older (e.g. for old Schannel peers).")
@click.option(
    "--timeout",
    type=float,
    default=5.0,
    show_default=True,
    help="Deadline in seconds for the whole check, all listeners together.",
)
@click.option(
    "--accept-status",
    callback=_accept,
    metavar="CODES",
    help="SIP status codes that count as healthy: '200', '200,202', '2xx', '200-299'. [default: 200]",
)
@click.option(
    "--resolution",
    type=click.Choice(["a", "rfc3263"]),
    default="a",
    show_default=True,
    help="How a name becomes addresses: its A/AAAA records, or RFC 3263 NAPTR -> SRV -> A/AAAA, where SRV "
    "records give the ports unless TARGET or --port names one; every target found is probed.",
)
@click.option(
    "--dns-server",
    "dns_servers",
    multiple=True,
    metavar="ADDR[:PORT]",
    help="With --resolution rfc3263: a nameserver to ask ('192.0.2.53', '127.0.0.1:5353', '[::1]:53'); "
    "repeatable. [default: those of /etc/resolv.conf]",
)
@click.option("-4", "ipv4_only", is_flag=True, help="Probe IPv4 addresses only.")
@click.option("-6", "ipv6_only", is_flag=True, help="Probe IPv6 addresses only.")
@click.option("--from-domain", help="Domain for the From URI. [default: the probe's local address]")
@click.option(
    "--warn-rtt", type=float, help="WARNING when a listener's total probe time exceeds this (seconds)."
)
@click.option(
    "--crit-rtt", type=float, help="CRITICAL when a listener's total probe time exceeds this (seconds)."
)
@click.option(
    "--warn-days",
    type=float,
    default=30.0,
    show_default=True,
    help="WARNING below this many certificate days.",
)
@click.option(
    "--crit-days",
    type=float,
    default=7.0,
    show_default=True,
    help="CRITICAL below this many certificate days.",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object with a `results` list.")
@click.option(
    "-v", "--verbose", is_flag=True, help="Print every probe's transcript (SIP messages, TLS facts)."
)
def check(
    targets: Sequence[str],
    transport: str | None,
    port: int | None,
    profile: str | None,
    um_mode: str,
    sbc_fqdn: str | None,
    sbc_port: int | None,
    variant: str | None,
    ca_file: str | None,
    cert_file: str | None,
    key_file: str | None,
    server_name: str | None,
    insecure: bool,
    min_tls: str,
    max_tls: str | None,
    ciphers: str | None,
    timeout: float,
    accept_status: frozenset[int],
    resolution: str,
    dns_servers: Sequence[str],
    ipv4_only: bool,
    ipv6_only: bool,
    from_domain: str | None,
    warn_rtt: float | None,
    crit_rtt: float | None,
    warn_days: float,
    crit_days: float,
    as_json: bool,
    verbose: bool,
) -> None:
    """Send SIP OPTIONS to each TARGET and report every listener and address.

    TARGET is `host`, `host:port`, `[v6addr]:port`, `v6addr`, or a SIP URI such as
    `sip:host:5061;transport=tls` or `sips:host`. Every A/AAAA address of a name is probed separately
    (with --resolution rfc3263 every address of every NAPTR/SRV target, each on its SRV port).
    A listener is healthy when it answers with an accepted status code over a verified connection.
    """
    timeout = _seconds(timeout, "--timeout") or 5.0
    _seconds(warn_rtt, "--warn-rtt")
    _seconds(crit_rtt, "--crit-rtt")
    if ipv4_only and ipv6_only:
        raise click.UsageError("-4 and -6 exclude each other")
    if (cert_file is None) != (key_file is None):
        raise click.UsageError("--cert and --key go together: give both or neither")
    families = ("ipv4",) if ipv4_only else ("ipv6",) if ipv6_only else ("ipv4", "ipv6")
    nameservers = _nameservers(dns_servers, resolution)
    tls = TLSClientConfig(
        ca_file=ca_file,
        cert_file=cert_file,
        key_file=key_file,
        insecure=insecure,
        min_version=_parse_version(min_tls, "--min-tls") or "1.2",
        max_version=_parse_version(max_tls, "--max-tls"),
        ciphers=ciphers,
    )
    items: list[CheckItem] = []
    common = {
        "tls": tls,
        "server_name": server_name,
        "accept_status": accept_status,
        "families": families,
        "from_domain": from_domain,
        "resolution": resolution,
    }
    if profile and not get_profile(profile).exchange:
        items = _profile_items(profile, targets, transport, sbc_fqdn, sbc_port, variant, cert_file, common)
        targets = ()
    elif sbc_fqdn is not None or sbc_port is not None or variant is not None:
        raise click.UsageError(
            "--sbc-fqdn, --sbc-port and --variant go with --profile teams-direct-routing, skype-mediation "
            "or sip-trunk"
        )
    elif not targets:
        raise click.UsageError("Missing argument 'TARGET...'.")
    for text in targets:
        try:
            target = parse_target(text)
        except TargetError as exc:
            raise click.BadParameter(str(exc), param_hint="TARGET") from None
        if profile:
            if target.port is not None or target.transport is not None:
                raise click.BadParameter(
                    f"{text!r}: with --profile give a bare host; the profile decides ports and transports",
                    param_hint="TARGET",
                )
            for spec in expand_profile(profile, um_mode):
                items.append(
                    CheckItem(
                        SipProbeSpec(
                            host=target.host,
                            port=spec.port,
                            transport=spec.transport,
                            listener=spec.listener,
                            **common,  # type: ignore[arg-type]
                        ),
                        required=spec.required,
                        group=spec.group,
                    )
                )
            continue
        chosen = target.transport or transport or "tcp"
        items.append(
            CheckItem(
                SipProbeSpec(
                    host=target.host,
                    port=target.port or port or (5061 if chosen == "tls" else 5060),
                    transport="tls" if chosen == "tls" else "udp" if chosen == "udp" else "tcp",
                    uri_scheme="sips" if target.scheme == "sips" else "sip",
                    # RFC 3263: without a port in TARGET or --port, NAPTR/SRV choose the ports
                    port_given=resolution == "a" or target.port is not None or port is not None,
                    **common,  # type: ignore[arg-type]
                )
            )
        )
    contexts = TLSContextCache()
    if any(item.spec.transport == "tls" for item in items):
        try:
            contexts.context(tls)
            contexts.client_cert(tls)
        except TLSConfigError as exc:
            raise UserError(str(exc)) from None
        from umprobe.secretfile import warn_if_exposed

        warn_if_exposed(key_file, what="--key")  # a key others may read: one warning line on stderr

    dns = None
    if resolution == "rfc3263":
        from umprobe.net.rfc3263 import DnsClient, DnsConfigError

        try:  # one client for the whole check: resolv.conf is read once
            dns = DnsClient(nameservers)
        except DnsConfigError as exc:  # no nameserver in /etc/resolv.conf: each probe says so (dns_error)
            click.echo(f"umprobe: warning: {exc}", err=True)

    async def run() -> list[tuple[CheckItem, ProbeResult]]:
        return await run_check(items, deadline=trio.current_time() + timeout, contexts=contexts, dns=dns)

    pairs = trio.run(run)
    thresholds = Thresholds(warn_rtt=warn_rtt, crit_rtt=crit_rtt, warn_days=warn_days, crit_days=crit_days)
    report = evaluate(pairs, thresholds)
    click.echo(render_json(report) if as_json else render_text(report, thresholds, verbose=verbose))
    sys.exit(int(report.state))


def _nameservers(texts: Sequence[str], resolution: str) -> list[tuple[str, int]] | None:
    """--dns-server values as (address, port); None (the system's resolv.conf) when there are none."""
    if not texts:
        return None
    if resolution != "rfc3263":
        raise click.UsageError(
            "--dns-server goes with --resolution rfc3263 (A/AAAA uses the system resolver)"
        )
    from umprobe.net.rfc3263 import parse_nameserver

    servers: list[tuple[str, int]] = []
    for text in texts:
        try:
            servers.append(parse_nameserver(text))
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--dns-server") from None
    return servers


def _profile_items(
    profile: str,
    targets: Sequence[str],
    transport: str | None,
    sbc_fqdn: str | None,
    sbc_port: int | None,
    variant: str | None,
    cert_file: str | None,
    common: Mapping[str, object],
) -> list[CheckItem]:
    """The probes of a profile beyond Exchange (umprobe.profiles): its listeners on each TARGET, or, for Teams
    Direct Routing without TARGET, on Microsoft's SIP proxies of the chosen cloud."""
    data = get_profile(profile)
    ctx = click.get_current_context()
    if ctx.get_parameter_source("um_mode") is click.core.ParameterSource.COMMANDLINE:
        raise click.UsageError(f"--um-mode is Exchange's: it does not go with --profile {profile}")
    if variant is not None and not data.hosts:
        raise click.UsageError(f"--variant goes with --profile teams-direct-routing, not {profile}")
    if data.requires_sbc_fqdn and not sbc_fqdn:
        raise click.UsageError(
            f"--profile {profile} needs --sbc-fqdn: the SBC's FQDN goes in From and Contact"
        )
    if sbc_port is not None and not sbc_fqdn:
        raise click.UsageError("--sbc-port goes with --sbc-fqdn")
    if sbc_fqdn is not None:
        try:
            sbc = parse_target(sbc_fqdn)
        except TargetError as exc:
            raise click.BadParameter(str(exc), param_hint="--sbc-fqdn") from None
        if sbc.port is not None or sbc.scheme is not None:
            raise click.BadParameter(f"{sbc_fqdn!r} must be a bare FQDN", param_hint="--sbc-fqdn")
        sbc_fqdn = sbc.host
    if data.requires_client_cert and cert_file is None:
        raise click.UsageError(
            f"--profile {profile} needs --cert and --key: the far end only talks mutual TLS, and its policy "
            "judges that certificate"
        )
    try:
        listeners = expand_profile(profile, transports=(transport,) if transport else None)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--transport") from None
    policy_needs_cert = data.policy is not None and data.policy.client_cert_required
    if policy_needs_cert and cert_file is None and any(spec.transport == "tls" for spec in listeners):
        raise click.UsageError(
            f"--profile {profile} needs --cert and --key for its TLS listeners: its policy judges the client "
            "certificate (or check only its TCP listeners with --transport tcp)"
        )
    hosts: list[tuple[str, int | None]] = []
    for text in targets:
        try:
            target = parse_target(text)
        except TargetError as exc:
            raise click.BadParameter(str(exc), param_hint="TARGET") from None
        # Teams: a TARGET stands in for Microsoft's proxies (a lab, a relay) and may name the port.
        if target.scheme is not None or target.transport is not None or (target.port and not data.hosts):
            raise click.BadParameter(
                f"{text!r}: with --profile give a bare host"
                + (" or host:port" if data.hosts else "")
                + "; the profile decides ports and transports",
                param_hint="TARGET",
            )
        hosts.append((target.host, target.port))
    if not hosts:
        if not data.hosts:
            raise click.UsageError("Missing argument 'TARGET...'.")
        hosts = [(host, None) for host in data.default_hosts(variant)]
    elif variant is not None:
        raise click.UsageError("--variant chooses Microsoft's hosts: it does not go with a TARGET")
    items: list[CheckItem] = []
    for host, port in hosts:
        for spec in listeners:
            shape = request_shape(profile, spec.transport, sbc_fqdn=sbc_fqdn, sbc_port=sbc_port)
            fields = {**common, "from_domain": shape.from_domain or common["from_domain"]}
            items.append(
                CheckItem(
                    SipProbeSpec(
                        host=host,
                        port=port or spec.port,
                        transport=spec.transport,
                        listener=spec.listener,
                        uri_scheme=shape.uri_scheme,
                        contact_host=shape.contact_host,
                        contact_port=shape.contact_port,
                        **fields,  # type: ignore[arg-type]
                    ),
                    required=spec.required,
                    group=spec.group,
                    profile=profile,
                )
            )
    return items


@cli.command()
def ports() -> None:
    """Print the Exchange 2013/2016 UM port map: listeners, transports, RTP range, what is changeable."""
    facts = port_map()
    header = ("COMPONENT", "ROLE", "PROTOCOL", "PORTS", "CARRIES", "CHANGEABLE")
    rows = [header] + [(f.component, f.role, f.protocol, f.ports, f.carries, f.changeable) for f in facts]
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    for r in rows:
        click.echo("  ".join(c.ljust(widths[i]) for i, c in enumerate(r)).rstrip())
    click.echo(
        "\nUM startup mode (-UMStartupMode TCP|TLS|Dual) decides which SIP listeners exist: "
        "`umprobe check --profile exchange2016 --um-mode dual HOST` probes them all."
    )


_DEMO_EPILOG = """\b
What it shows:
  A throwaway CA and certificates, and one loopback port per UM SIP listener of an
  Exchange 2016 server in Dual mode (5060-5063, 5065-5068; plain TCP, and mutual TLS
  where Exchange uses it), answered by umprobe's own SIP responder. The umprobe
  daemon probes them every 2 s from a probes.toml generated in memory and serves
  /metrics, /probe and a status page; the terminal gets the addresses first, then a
  summary of every listener every 5 s, and a final one at the end.

\b
HTTP: --listen HOST:PORT, or 127.0.0.1:9874, or a free port on 127.0.0.1 when 9874
is taken (said so in the output). An explicit --listen that is taken is an error.

\b
Examples:
  umprobe demo                         until Ctrl-C; then curl http://127.0.0.1:9874/metrics
  umprobe demo --duration 30           stop by itself after 30 s
  umprobe demo --listen 127.0.0.1:0    any free port (printed)
  umprobe demo --once                  one check round, printed like `umprobe check`
  umprobe demo --once --json           the same as one JSON object

\b
Exit codes: 0 when --duration is over or on Ctrl-C (SIGINT) or SIGTERM; with --once
the Nagios code of the check; 3 for bad options or an --listen that cannot be bound.
"""


@cli.command(epilog=_DEMO_EPILOG)
@click.option(
    "--listen",
    metavar="HOST:PORT",
    help="Serve /metrics and the status page here: HOST:PORT, [IPv6]:PORT or :PORT. "
    "[default: 127.0.0.1:9874, or a free port if that is taken]",
)
@click.option(
    "--duration",
    type=float,
    metavar="SECONDS",
    help="Stop after this many seconds. [default: run until Ctrl-C]",
)
@click.option("--once", is_flag=True, help="Run one check round, print it and exit (no daemon, no HTTP).")
@click.option(
    "--json", "as_json", is_flag=True, help="With --once: print the result as JSON, like `check --json`."
)
@click.option(
    "--timeout", type=float, help="With --once: deadline of the check round in seconds. [default: 5]"
)
@click.option(
    "-v",
    "--verbose",
    is_flag=True,
    help="With --once: every probe's transcript. Live: the generated probes.toml, and the daemon's log on "
    "stderr.",
)
def demo(
    listen: str | None,
    duration: float | None,
    once: bool,
    as_json: bool,
    timeout: float | None,
    verbose: bool,
) -> None:
    """Run an Exchange UM server's SIP listeners on loopback and watch them with the daemon (no Exchange).

    Needs no root, no Exchange and nothing outside umprobe: the listeners, the certificates and the daemon
    all run in this one process, on 127.0.0.1. With --once it checks them once, as
    `umprobe check --profile exchange2016 --um-mode dual` would, and exits with that check's code.
    """
    if once:
        for value, option in ((listen, "--listen"), (duration, "--duration")):
            if value is not None:
                raise click.UsageError(f"{option} does not go with --once (a one-shot check serves nothing)")
        from umprobe.demo import run_demo

        seconds = _seconds(timeout, "--timeout") or 5.0
        report = trio.run(
            lambda: run_demo(check_seconds=seconds, say=(lambda _t: None) if as_json else click.echo)
        )
        click.echo(render_json(report) if as_json else render_text(report, Thresholds(), verbose=verbose))
        sys.exit(int(report.state))
    for flag, option in ((as_json, "--json"), (timeout is not None, "--timeout")):
        if flag:
            raise click.UsageError(f"{option} goes with --once")
    _seconds(duration, "--duration")
    if listen is not None:
        from umprobe.exporter import parse_listen

        try:
            parse_listen(listen)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--listen") from None
    from umprobe.demo import serve_demo

    try:
        trio.run(lambda: serve_demo(listen=listen, duration=duration, verbose=verbose, say=click.echo))
    except BrokenPipeError:
        # Whoever read the output has gone (`umprobe demo | head`): stop quietly, as Python's docs advise.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point: run the click group, mapping usage and input errors to one line and exit 3."""
    try:
        cli.main(args=list(argv) if argv is not None else None, prog_name="umprobe", standalone_mode=False)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        click.echo(f"umprobe: error: {exc.format_message()}", err=True)
        sys.exit(EXIT_UNKNOWN)
    except click.exceptions.Abort:
        click.echo("umprobe: aborted", err=True)
        sys.exit(EXIT_UNKNOWN)
    except UserError as exc:
        click.echo(f"umprobe: error: {exc}", err=True)
        sys.exit(EXIT_UNKNOWN)
    except KeyboardInterrupt:
        sys.exit(130)
    sys.exit(0)


if __name__ == "__main__":  # pragma: no cover
    main()
