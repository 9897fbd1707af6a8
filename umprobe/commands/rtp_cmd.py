"""`umprobe rtp`: one RTP range check against an umprobe echo peer, judged and rendered the Nagios way.

The measuring is `umprobe.probes.rtp.probe_rtp`; this module reads the secret, builds the spec, picks the
cycle, judges the result (`evaluate_rtp`) and renders it (`render_rtp_text`, `render_rtp_json`).

Judgement (exit codes, Nagios plugin rules):

* 3 UNKNOWN: bad arguments, an unusable secret or TLS file, or the control channel failed (nothing measured
  can be trusted without the peer's counters); also when no port could be measured at all;
* 2 CRITICAL: a sampled block where no sampled port answered, or loss in either direction over `--crit-loss`;
* 1 WARNING: a block only partly reachable, loss over `--warn-loss`, or ports left unmeasured by the deadline;
* 0 OK otherwise. Ports the peer reports `in_use` are shown but never count as unreachable.
"""

from __future__ import annotations

import json
import math
import secrets
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import click
import trio

from umprobe.check import State
from umprobe.errors import UserError
from umprobe.net.errors import TLSConfigError
from umprobe.net.tls import TLSClientConfig
from umprobe.probes.rtp import RtpProbeSpec, estimate_seconds, probe_rtp
from umprobe.probes.rtp_result import BlockResult, PortResult, RtpResult, merge_results, render_map
from umprobe.probes.sip_options import TLSContextCache
from umprobe.secretfile import MIN_SECRET_BYTES, read_secret, warn_if_exposed
from umprobe.targets import TargetError, parse_target

__all__ = [
    "JSON_RTT_SAMPLES",
    "MIN_SECRET_BYTES",
    "RTT_BUCKETS",
    "RtpReport",
    "RtpThresholds",
    "evaluate_rtp",
    "read_secret",
    "render_map",
    "render_rtp_json",
    "render_rtp_text",
    "rtp_command",
]

RTT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)  # seconds
JSON_RTT_SAMPLES = 10_000  # a full --sweep collects ~1.6 million: the histogram carries them all
_LEGEND = "# all sampled ports reachable, ~ some, x none, u in use on the peer, . not sampled"

_RTP_EPILOG = """\b
What it measures:
  The static UDP path to an umprobe echo peer (`umprobe peer`) run next to the
  Mailbox servers: per cycle it picks K even ports of the range (a fixed,
  stratified order, so a full sweep takes ceil(even ports / K) cycles), sends N
  authenticated 172-byte RTP packets 20 ms apart to each (and one RTCP packet
  to the odd port above), and reads the peer's own counters to split loss into
  forward and return. A SIP-aware firewall (ALG) that opens RTP pinholes only
  for negotiated ports looks closed here: this is static-path reachability.

\b
Cycles:
  Without --cycle each run picks a random cycle, so repeated runs (e.g. every
  5 minutes from Nagios) cover the whole range over time without any state
  kept between runs. --cycle C measures one fixed cycle (C modulo the number of
  cycles); --sweep measures every cycle, one after another: with the defaults
  on 1024-65535 that is 1008 cycles of about 11 s each, over three hours.
  One cycle with the defaults (32 ports, 3 at a time, 1 s of packets each)
  takes about 11 s: give the check 30 s or more in Nagios (NRPE's default
  10 s is too short), or lower --samples / --packets.

\b
Map (one character per block of the range, at most 64 blocks):
  #  every sampled port in the block answered     x  no sampled port answered
  ~  some answered                                 u  only ports in use on the peer
  .  not sampled in this run

\b
Plain-echo mode (--plain-echo --ports P1,P2): no peer, no control channel and
NO AUTHENTICATION: RTP-shaped packets to a plain UDP echo (socat, a device's
echo service), reachability, round-trip loss and RTT only. Anyone on the path
can forge its answers; the output says so.

\b
Examples:
  umprobe rtp --secret-file /etc/umprobe/peer.secret mbx01:7900
  umprobe rtp --secret-file s.key --range 20000-29999 --samples 64 mbx01:7900
  umprobe rtp --secret-file s.key --tls --ca ca.pem --cert probe.pem --key probe.key mbx01:7901
  umprobe rtp --plain-echo --ports 20000,20002 echo01

\b
Exit codes (Nagios): 0 OK, 1 WARNING, 2 CRITICAL (a block unreachable or loss
over --crit-loss), 3 UNKNOWN (bad arguments, secret or TLS files, or the
control channel failed: one line on stderr or in the first line says why).
"""


@dataclass(frozen=True, slots=True)
class RtpThresholds:
    """Loss thresholds in percent, applied to each direction (round-trip in plain-echo mode)."""

    warn_loss: float = 1.0
    crit_loss: float = 5.0


@dataclass(frozen=True, slots=True)
class RtpReport:
    result: RtpResult
    state: State
    summary: str
    problems: tuple[str, ...]


def _pct(ratio: float | None) -> str:
    return "-" if ratio is None else f"{ratio * 100:.2f}%"


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.2f}ms"


def evaluate_rtp(result: RtpResult, thresholds: RtpThresholds) -> RtpReport:
    """Judge a result (see the module docstring); the worst finding wins."""
    counts = result.totals.state_counts
    reachable = counts.get("reachable", 0)
    measured = reachable + counts.get("unreachable", 0)
    sampled_blocks = sum(1 for b in result.blocks if b.sampled)
    if not result.success:
        return RtpReport(result, State.UNKNOWN, f"{result.reason.value}: {result.detail}", ())
    if measured == 0:
        return RtpReport(
            result,
            State.UNKNOWN,
            f"no port could be measured ({result.detail}); check the peer's --rtp-range against --range",
            (),
        )
    state = State.OK
    problems: list[str] = []
    for block in result.unreachable_blocks:
        state = State.CRITICAL
        problems.append(f"block {block.label} unreachable ({block.measured} sampled port(s) silent)")
    for block in result.partial_blocks:
        state = max(state, State.WARNING)
        problems.append(f"block {block.label} partly reachable ({block.reachable} of {block.measured})")
    t = result.totals
    directions = (
        [
            ("forward", t.loss_forward),
            ("return", t.loss_return),
            ("unanswered by the peer", t.loss_unanswered),
        ]
        if result.authenticated
        else [("round-trip", t.loss_roundtrip)]
    )
    for name, ratio in directions:
        if ratio is None:
            continue
        pct = ratio * 100
        if pct > thresholds.crit_loss:
            state = State.CRITICAL
            problems.append(f"{name} loss {pct:.2f}% > crit-loss {thresholds.crit_loss:g}%")
        elif pct > thresholds.warn_loss:
            state = max(state, State.WARNING)
            problems.append(f"{name} loss {pct:.2f}% > warn-loss {thresholds.warn_loss:g}%")
    skipped = counts.get("not_measured", 0)
    if skipped:
        state = max(state, State.WARNING)
        problems.append(f"{skipped} port(s) not measured before the deadline (raise --timeout)")
    rate = result.peer_dropped.get("rate", 0)
    if rate:
        problems.append(
            f"the peer rate-limited {rate} packet(s): lower --concurrency or raise its --rate-per-source"
        )
    other = {k: v for k, v in result.peer_dropped.items() if v and k != "rate"}
    if other:
        problems.append("the peer dropped " + ", ".join(f"{v} ({k})" for k, v in sorted(other.items())))
    loss = (
        f"loss fwd {_pct(t.loss_forward)} ret {_pct(t.loss_return)}"
        if result.authenticated
        else f"round-trip loss {_pct(t.loss_roundtrip)}"
    )
    if t.loss_unanswered:
        loss += f" unanswered {_pct(t.loss_unanswered)}"
    summary = (
        f"{reachable} of {measured} sampled ports reachable in {sampled_blocks} block(s), {loss}, "
        f"rtt p50 {_ms(t.rtt_p50)}"
    )
    if counts.get("in_use", 0):
        summary += f", {counts['in_use']} in use on the peer"
    return RtpReport(result, state, summary, tuple(problems))


# ---------------------------------------------------------------------------------------------- rendering


def _where(result: RtpResult) -> str:
    lo, hi = result.range_lo, result.range_hi
    cycles = result.cycles
    if len(cycles) == 1:
        which = f"cycle {cycles[0]} of {result.cycles_per_sweep}"
    else:
        which = f"{len(cycles)} of {result.cycles_per_sweep} cycles"
    return f"{lo}-{hi}, {which}"


def _perfdata(report: RtpReport, t: RtpThresholds) -> str:
    r = report.result
    tot = r.totals
    parts: list[str] = []

    def pct(label: str, ratio: float | None) -> None:
        if ratio is not None:
            parts.append(f"'{label}'={ratio * 100:.3f}%;{t.warn_loss:g};{t.crit_loss:g};0;100")

    def secs(label: str, value: float | None) -> None:
        if value is not None:
            parts.append(f"'{label}'={value:.6f}s;;;0;")

    if r.authenticated:
        pct("loss_fwd", tot.loss_forward)
        pct("loss_ret", tot.loss_return)
        pct("loss_peer", tot.loss_unanswered)
    else:
        pct("loss_rt", tot.loss_roundtrip)
    secs("rtt_p50", tot.rtt_p50)
    secs("rtt_max", tot.rtt_max)
    secs("jitter_fwd", tot.jitter_forward)
    secs("jitter_ret", tot.jitter_return)
    measured = tot.state_counts.get("reachable", 0) + tot.state_counts.get("unreachable", 0)
    parts.append(f"'reachable_ports'={tot.state_counts.get('reachable', 0)};;;0;{measured}")
    parts.append(f"'unreachable_blocks'={len(r.unreachable_blocks)};;1;0;{len(r.blocks)}")
    return " ".join(parts)


def _port_row(p: PortResult) -> tuple[str, ...]:
    rtcp = "-" if p.rtcp_reachable is None else ("yes" if p.rtcp_reachable else "no")
    return (
        str(p.port),
        p.state,
        str(p.sent) if p.measured else "-",
        str(p.received) if p.measured else "-",
        _pct(p.loss_forward),
        _pct(p.loss_return),
        _pct(p.loss_unanswered),
        _pct(p.loss_roundtrip),
        _ms(p.rtt_p50),
        _ms(p.rtt_max),
        _ms(p.jitter_forward),
        _ms(p.jitter_return),
        str(p.reordered),
        str(p.duplicates),
        rtcp,
        p.block,
    )


def render_rtp_text(report: RtpReport, thresholds: RtpThresholds) -> str:
    """Nagios first line with perfdata, then the map of the range, then one row per sampled port."""
    r = report.result
    first = f"UMPROBE RTP {report.state.name} - "
    if not r.authenticated:
        first += "plain echo, UNAUTHENTICATED (reachability/RTT only): "
    first += f"{report.summary} ({_where(r)})"
    if report.problems:
        first += "; " + "; ".join(report.problems[:5])
        if len(report.problems) > 5:
            first += f"; and {len(report.problems) - 5} more"
    perf = _perfdata(report, thresholds) if r.success else ""
    lines = [f"{first} | {perf}" if perf else first]
    if not r.ports:
        return "\n".join(lines)
    lines += [
        "",
        f"MAP {r.range_lo}-{r.range_hi}, {len(r.blocks)} blocks ({_LEGEND}):",
        *render_map(r.blocks),
    ]
    header = (
        "PORT",
        "STATE",
        "SENT",
        "RECV",
        "LOSS_FWD",
        "LOSS_RET",
        "LOSS_PEER",
        "LOSS_RT",
        "RTT_P50",
        "RTT_MAX",
        "JIT_FWD",
        "JIT_RET",
        "REORD",
        "DUP",
        "RTCP",
        "BLOCK",
    )
    table = [header, *(_port_row(p) for p in r.ports)]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    lines.append("")
    for row in table:
        lines.append("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip())
    where = f"peer {r.target}:{r.control_port} ({r.peer_banner or 'no banner'})" if r.authenticated else ""
    if where:
        lines += ["", where + f", media {r.media_address or r.address}, {r.duration:.1f} s"]
    else:
        lines += [
            "",
            f"echo {r.target} ({r.media_address}), {r.duration:.1f} s. WARNING: plain-echo mode is "
            "unauthenticated; loss cannot be split by direction.",
        ]
    return "\n".join(lines)


def _port_json(p: PortResult) -> dict[str, Any]:
    return {
        "port": p.port,
        "state": p.state,
        "block": p.block,
        "sent": p.sent,
        "received": p.received,
        "peer_rx": p.peer_rx,
        "peer_tx": p.peer_tx,
        "loss_forward_ratio": p.loss_forward,
        "loss_return_ratio": p.loss_return,
        "loss_unanswered_ratio": p.loss_unanswered,
        "loss_roundtrip_ratio": p.loss_roundtrip,
        "rtt_p50_seconds": p.rtt_p50,
        "rtt_max_seconds": p.rtt_max,
        "jitter_forward_seconds": p.jitter_forward,
        "jitter_return_seconds": p.jitter_return,
        "reordered": p.reordered,
        "duplicates": p.duplicates,
        "rtcp_reachable": p.rtcp_reachable,
        "peer_rtcp_rx": p.peer_rtcp_rx,
        "peer_rtcp_tx": p.peer_rtcp_tx,
        "socket_errors": p.socket_errors,
        "bad_replies": p.bad_replies,
    }


def _block_json(b: BlockResult) -> dict[str, Any]:
    return {
        "label": b.label,
        "lo": b.lo,
        "hi": b.hi,
        "symbol": b.symbol,
        "measured": b.measured,
        "reachable": b.reachable,
        "reachable_ratio": b.ratio,
        "in_use": b.in_use,
        "refused": b.refused,
        "not_measured": b.not_measured,
    }


def _histogram(samples: Sequence[float]) -> dict[str, int]:
    """Cumulative counts per upper bound, Prometheus style (`le`), the last bound "+Inf"."""
    counts = {f"{bound:g}": sum(1 for s in samples if s <= bound) for bound in RTT_BUCKETS}
    counts["+Inf"] = len(samples)
    return counts


def render_rtp_json(report: RtpReport, thresholds: RtpThresholds) -> str:
    """One JSON object; RTT samples beyond the first `JSON_RTT_SAMPLES` are only in the histogram."""
    r = report.result
    t = r.totals
    return json.dumps(
        {
            "status": report.state.name,
            "exit_code": int(report.state),
            "summary": report.summary,
            "problems": list(report.problems),
            "mode": r.mode,
            "authenticated": r.authenticated,
            "target": r.target,
            "control_port": r.control_port,
            "address": r.address,
            "media_address": r.media_address,
            "reason": r.reason.value,
            "detail": r.detail,
            "peer_banner": r.peer_banner,
            "range": {"lo": r.range_lo, "hi": r.range_hi},
            "cycles": list(r.cycles),
            "cycles_per_sweep": r.cycles_per_sweep,
            "duration_seconds": r.duration,
            "thresholds": {
                "warn_loss_percent": thresholds.warn_loss,
                "crit_loss_percent": thresholds.crit_loss,
            },
            "totals": {
                "sent": t.sent,
                "received": t.received,
                "peer_rx": t.peer_rx,
                "peer_tx": t.peer_tx,
                "loss_forward_ratio": t.loss_forward,
                "loss_return_ratio": t.loss_return,
                "loss_unanswered_ratio": t.loss_unanswered,
                "loss_roundtrip_ratio": t.loss_roundtrip,
                "rtt_p50_seconds": t.rtt_p50,
                "rtt_max_seconds": t.rtt_max,
                "jitter_forward_seconds": t.jitter_forward,
                "jitter_return_seconds": t.jitter_return,
                "reordered": t.reordered,
                "duplicates": t.duplicates,
                "rtcp_answered": t.rtcp_answered,
                "rtcp_tried": t.rtcp_tried,
                "ports_by_state": dict(t.state_counts),
            },
            "peer_dropped": dict(r.peer_dropped),
            "map": "".join(b.symbol for b in r.blocks),
            "blocks": [_block_json(b) for b in r.blocks],
            "ports": [_port_json(p) for p in r.ports],
            "rtt_histogram_seconds": _histogram(r.rtt_samples),
            "rtt_samples_count": len(r.rtt_samples),
            "rtt_samples_seconds": [round(s, 9) for s in r.rtt_samples[:JSON_RTT_SAMPLES]],
        },
        indent=2,
    )


# ---------------------------------------------------------------------------------------------- command


def _parse_range(_ctx: click.Context, _param: click.Parameter, value: str | None) -> tuple[int, int] | None:
    if value is None:
        return None
    lo_text, sep, hi_text = value.partition("-")
    if not sep or not lo_text.strip().isdigit() or not hi_text.strip().isdigit():
        raise click.BadParameter(f"{value!r} is not LO-HI, e.g. 1024-65535")
    lo, hi = int(lo_text), int(hi_text)
    if not 1 <= lo <= hi <= 65535:
        raise click.BadParameter(f"{value!r}: need 1 <= LO <= HI <= 65535")
    if lo == hi and lo % 2:
        raise click.BadParameter(f"{value!r} holds no even (RTP) port")
    return lo, hi


def _parse_ports(_ctx: click.Context, _param: click.Parameter, value: str | None) -> tuple[int, ...]:
    if not value:
        return ()
    ports = []
    for part in value.split(","):
        part = part.strip()
        if not part.isdigit() or not 1 <= int(part) <= 65535:
            raise click.BadParameter(f"{part!r} is not a port number from 1 to 65535")
        ports.append(int(part))
    return tuple(dict.fromkeys(ports))


@click.command("rtp", epilog=_RTP_EPILOG)
@click.argument("target", metavar="HOST:PORT")
@click.option(
    "--secret-file",
    type=click.Path(dir_okay=False),
    metavar="FILE",
    help="The peer's shared secret (one line, at least 16 bytes). Required unless --plain-echo.",
)
@click.option(
    "--range",
    "rtp_range",
    callback=_parse_range,
    metavar="LO-HI",
    help="The RTP range to sample (Exchange: MinimumRtpPort-MaximumRtpPort). [default: 1024-65535; "
    "plain-echo: the span of --ports]",
)
@click.option(
    "--samples",
    type=click.IntRange(1, 256),
    default=32,
    show_default=True,
    help="Even ports per cycle (K).",
)
@click.option(
    "--packets",
    type=click.IntRange(1, 3000),
    default=50,
    show_default=True,
    help="RTP packets per port (N), 20 ms apart: 50 is one second of a G.711 call.",
)
@click.option(
    "--cycle",
    type=click.IntRange(min=0),
    help="Which cycle of the sweep to measure (modulo the number of cycles). [default: a random one, so "
    "repeated runs cover the range]",
)
@click.option("--sweep", is_flag=True, help="Measure every cycle of a full sweep (slow: see below).")
@click.option(
    "--concurrency",
    type=click.IntRange(1, 64),
    default=3,
    show_default=True,
    help="Ports measured at the same time (50 packets/s each; the peer allows 200/s per source by default).",
)
@click.option("--no-rtcp", is_flag=True, help="Do not probe the RTCP port (p+1).")
@click.option("--media-host", help="The peer's media address, if not the control host (`peer --media-host`).")
@click.option("--tls", "use_tls", is_flag=True, help="Use TLS on the control channel.")
@click.option("--ca", "ca_file", type=click.Path(dir_okay=False), help="CA bundle (PEM) for the peer.")
@click.option("--cert", "cert_file", type=click.Path(dir_okay=False), help="Client certificate (PEM).")
@click.option("--key", "key_file", type=click.Path(dir_okay=False), help="Private key (PEM) of --cert.")
@click.option("--server-name", help="Name to verify in the peer's certificate. [default: the host]")
@click.option("--plain-echo", is_flag=True, help="UNAUTHENTICATED: probe a plain UDP echo on --ports.")
@click.option("--ports", callback=_parse_ports, metavar="P1,P2,...", help="Echo ports for --plain-echo.")
@click.option("--warn-loss", type=float, default=1.0, show_default=True, help="WARNING above this loss (%).")
@click.option("--crit-loss", type=float, default=5.0, show_default=True, help="CRITICAL above this loss (%).")
@click.option(
    "--timeout",
    type=float,
    help="Deadline in seconds for one cycle (each cycle with --sweep). [default: estimated from --samples, "
    "--packets and --concurrency, with room to spare]",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object (ports, blocks, totals).")
def rtp_command(
    target: str,
    secret_file: str | None,
    rtp_range: tuple[int, int] | None,
    samples: int,
    packets: int,
    cycle: int | None,
    sweep: bool,
    concurrency: int,
    no_rtcp: bool,
    media_host: str | None,
    use_tls: bool,
    ca_file: str | None,
    cert_file: str | None,
    key_file: str | None,
    server_name: str | None,
    plain_echo: bool,
    ports: tuple[int, ...],
    warn_loss: float,
    crit_loss: float,
    timeout: float | None,
    as_json: bool,
) -> None:
    """Check which blocks of an RTP port range reach an umprobe echo peer, with loss, RTT and jitter.

    HOST:PORT is the peer's control address (`umprobe peer --listen`). With --plain-echo it is the echo
    host (a port there is used when --ports is not given).
    """
    try:
        parsed = parse_target(target)
    except TargetError as exc:
        raise click.BadParameter(str(exc), param_hint="HOST:PORT") from None
    if timeout is not None and timeout <= 0:
        raise click.BadParameter(f"{timeout} must be a positive number of seconds", param_hint="--timeout")
    if not 0 <= warn_loss <= crit_loss <= 100:
        raise click.UsageError("need 0 <= --warn-loss <= --crit-loss <= 100")
    if sweep and cycle is not None:
        raise click.UsageError("--sweep and --cycle exclude each other")
    if (cert_file is None) != (key_file is None):
        raise click.UsageError("--cert and --key go together: give both or neither")
    tls_options = ca_file or cert_file or server_name
    if tls_options and not use_tls:
        raise click.UsageError("--ca, --cert, --key and --server-name need --tls")
    if plain_echo:
        if secret_file or use_tls:
            raise click.UsageError("--plain-echo is unauthenticated: --secret-file and --tls do not apply")
        echo_ports = ports or ((parsed.port,) if parsed.port else ())
        if not echo_ports:
            raise click.UsageError("--plain-echo needs --ports P1,P2,... (or HOST:PORT)")
        span = rtp_range or (min(echo_ports), max(echo_ports))
        outside = [p for p in echo_ports if not span[0] <= p <= span[1]]
        if outside:
            raise click.UsageError(f"--ports {outside[:5]} are outside --range {span[0]}-{span[1]}")
        spec = _spec(
            host=parsed.host,
            mode="plain-echo",
            ports=echo_ports,
            rtp_range=span,
            packets=packets,
            concurrency=concurrency,
            rtcp=False,
            samples=len(echo_ports),
        )
    else:
        if ports:
            raise click.UsageError("--ports is for --plain-echo; the peer mode samples --range")
        if parsed.port is None:
            raise click.BadParameter(
                f"{target!r} needs a port: the peer's control port (`umprobe peer --listen`)",
                param_hint="HOST:PORT",
            )
        if secret_file is None:
            raise click.UsageError("--secret-file is required (or --plain-echo for an unauthenticated echo)")
        secret = read_secret(secret_file)
        tls = TLSClientConfig(ca_file=ca_file, cert_file=cert_file, key_file=key_file) if use_tls else None
        if use_tls:
            warn_if_exposed(key_file, what="--key")
        spec = _spec(
            host=parsed.host,
            port=parsed.port,
            secret=secret,
            tls=tls,
            server_name=server_name,
            media_host=media_host,
            rtp_range=rtp_range or (1024, 65535),
            samples=samples,
            packets=packets,
            concurrency=concurrency,
            rtcp=not no_rtcp,
        )
    contexts = TLSContextCache()
    if spec.tls is not None:
        try:
            contexts.context(spec.tls)
        except TLSConfigError as exc:
            raise UserError(str(exc)) from None
    per_cycle = timeout or math.ceil(estimate_seconds(spec) * 1.5 + 2)
    total = spec.cycles_per_sweep()
    cycles = list(range(total)) if sweep else [cycle if cycle is not None else secrets.randbelow(total)]
    if sweep and total > 1:
        # Typical time: bursts plus a little; estimate_seconds() is the generous upper bound per cycle.
        typical = total * math.ceil(spec.samples / spec.concurrency) * (spec.packets * 0.02 + 0.05)
        click.echo(
            f"umprobe: --sweep measures {total} cycles of {spec.samples} ports, about {_duration(typical)}; "
            "interrupt with Ctrl-C",
            err=True,
        )

    async def run() -> RtpResult:
        results: list[RtpResult] = []
        for c in cycles:
            result = await probe_rtp(
                spec, deadline=trio.current_time() + per_cycle, cycle=c, contexts=contexts
            )
            results.append(result)
            if not result.success:
                break
        return results[0] if len(results) == 1 else merge_results(results, spec.blocks())

    result = trio.run(run)
    thresholds = RtpThresholds(warn_loss=warn_loss, crit_loss=crit_loss)
    report = evaluate_rtp(result, thresholds)
    click.echo(render_rtp_json(report, thresholds) if as_json else render_rtp_text(report, thresholds))
    sys.exit(int(report.state))


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _spec(**kwargs: Any) -> RtpProbeSpec:
    try:
        return RtpProbeSpec(**kwargs)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
