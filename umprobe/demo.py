"""`umprobe demo`: a UM server's SIP listeners and an RTP echo peer on loopback, watched by the daemon.

No Exchange, no root and nothing outside this package. The demo makes a throwaway CA, a server certificate
and a client certificate in a temporary directory, binds one loopback listener per UM port of the
`exchange2016` profile in Dual mode and answers SIP OPTIONS on them with umprobe's own responder (mutual TLS
where Exchange uses it): the *lab* (`open_demo_lab`). The worker ports are laid out the way one vendor
documents them (TCP on 5065/5067, TLS on 5066/5068).

Exchange's real ports (5060-5068) may be taken (a SIP server on the same machine, or the test lab's
Kamailio), so each is served on a free ephemeral port; the demo prints which port stands for which.

Two ways to run it:

* live (`serve_demo`, the default): the demo writes a probes.toml for the lab *in memory*
  (`demo_config_text`, validated by the same `parse_config` as any file), runs the daemon on it in this
  process (`umprobe.daemon.Daemon`: scheduler, results store, exporter with /metrics, /probe and the status
  page), prints the exporter's addresses, then a summary block every `SUMMARY_EVERY` seconds and a final
  one when `--duration` has passed or on SIGINT/SIGTERM (both end it within a second, exit 0).
* once (`run_demo`, `--once`): one check round over the lab with the same code as
  `umprobe check --profile exchange2016 --um-mode dual`, rendered as that command renders it.

Where the exporter listens: `--listen HOST:PORT` if given (a taken port is then a one-line error, exit 3,
as for `umprobe run`); otherwise `DEFAULT_LISTEN`, 127.0.0.1:9874 (the daemon's own default), and if that is
taken, for instance by a real `umprobe run` on the same machine, a free port on 127.0.0.1, said so in the
output. The printed addresses are always the ones actually bound.

Stopping. The demo holds a signal receiver for SIGINT and SIGTERM from start-up on; while the daemon runs,
`Daemon.serve` opens its own inside it and takes them (and SIGHUP, which re-parses the same generated
text), and the demo ends as soon as `serve` returns. `--duration` is a deadline on the demo's nursery,
counted from when the daemon is up. Either way the final summary is printed after the nursery is done.

The generated config. The SIP part is what a real deployment would write for one server holding both
roles: a single `exchange2016` profile target in Dual mode, 12 probes, the worker ports probed with both
transports and judged as two groups (`um_worker_tcp`, `um_worker_tls`: healthy when any member answers).
Because the lab's listeners are on loopback ports rather than 5060-5068, the target says where each is
reached with `port_map = { 5060 = ..., 5062 = ..., ... }`, as one would for a server behind NAT or port
forwarding; the probes keep their listener names, required flags and groups. The lab serves each worker
port with one transport only, so four of the twelve probes find no listener: they show as "down,
optional", and their groups are still up.

RTP. The lab also runs umprobe's echo peer (`serve_echo_peer`, the code of `umprobe peer`) on loopback,
with a throwaway secret in the lab's directory, serving the small RTP range `DEMO_RTP_RANGE`; the config
has an `[[rtp]]` entry for it, so the daemon sweeps that range one cycle per `DEMO_RTP_INTERVAL` and
/metrics carries the `umprobe_rtp_*` series. The summary shows the peer's last run and its block map (every
block as last sampled). The range lies below Linux's ephemeral port range, so the prober's own UDP
sockets never take a port the peer is asked to open.
"""

from __future__ import annotations

import math
import os
import secrets
import signal
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import trio

from umprobe.check import CheckItem, CheckReport, Thresholds, evaluate, run_check
from umprobe.config import Config, RtpProbeConfig, parse_config
from umprobe.daemon import Daemon, lone_user_error
from umprobe.devcerts import DevCA
from umprobe.logs import configure_logging
from umprobe.net.tls import TLSClientConfig, make_server_context
from umprobe.peer.echo_peer import PeerConfig, serve_echo_peer
from umprobe.peer.sip_responder import serve_sip_responder
from umprobe.probes.rtp_result import render_map
from umprobe.probes.sip_options import SipProbeSpec
from umprobe.profiles import expand_profile
from umprobe.store import ResultStore

__all__ = [
    "DEFAULT_LISTEN",
    "DEMO_INTERVAL",
    "DEMO_LAYOUT",
    "DEMO_RTP_INTERVAL",
    "DEMO_RTP_RANGE",
    "DEMO_SOURCE",
    "DEMO_TIMEOUT",
    "SUMMARY_EVERY",
    "DemoLab",
    "DemoListener",
    "DemoPort",
    "demo_config",
    "demo_config_text",
    "open_demo_lab",
    "render_summary",
    "run_demo",
    "serve_demo",
]

DEMO_SERVER_HEADER = "RTCC/5.0.0.0 MSExchangeUM/15.01.2507.017 (umprobe demo)"
#: Where the live demo's exporter listens without --listen; a free port on 127.0.0.1 if this one is taken.
DEFAULT_LISTEN = "127.0.0.1:9874"
_FALLBACK_LISTEN = "127.0.0.1:0"
#: Seconds between two probes of a listener, and the deadline of one (loopback answers in milliseconds).
DEMO_INTERVAL = 2.0
DEMO_TIMEOUT = 1.5
#: The echo peer's RTP range: 256 even ports in 64 blocks of four; 32 ports a run, a full sweep in 8 runs.
DEMO_RTP_RANGE = (20000, 20511)
#: Seconds between two RTP runs (one cycle of the sweep each); a run's deadline is derived from it.
DEMO_RTP_INTERVAL = 10.0
DEMO_RTP_PEER = "demo-mbx"
_RTP_SAMPLES = 32
_RTP_PACKETS = 5
_RTP_CONCURRENCY = 8  # 8 ports x 50 packets/s: the demo's peer allows it (the default limit is 200/s)
#: Seconds between two summary blocks of the live demo.
SUMMARY_EVERY = 5.0
#: The `source` of the generated config (in log lines and on the status page).
DEMO_SOURCE = "<umprobe demo: generated probes.toml>"
_HOST = "127.0.0.1"
_POLL = 0.1
_CLIENT_NAME = "probe.demo.invalid"


@dataclass(frozen=True, slots=True)
class DemoPort:
    exchange_port: int
    transport: str  # what the demo serves on it
    component: str
    listener: str  # the profile's listener name (umprobe.profiles)


DEMO_LAYOUT = (
    DemoPort(5060, "tcp", "UM call router", "call_router"),
    DemoPort(5061, "tls", "UM call router", "call_router"),
    DemoPort(5062, "tcp", "UM service", "um_service"),
    DemoPort(5063, "tls", "UM service", "um_service"),
    DemoPort(5065, "tcp", "UM worker", "um_worker"),
    DemoPort(5066, "tls", "UM worker", "um_worker"),
    DemoPort(5067, "tcp", "UM worker", "um_worker"),
    DemoPort(5068, "tls", "UM worker", "um_worker"),
)


@dataclass(frozen=True, slots=True)
class DemoListener:
    """One lab listener: the Exchange port it stands for, and the loopback port it is really on."""

    port: DemoPort
    host: str
    bound_port: int


@dataclass(frozen=True, slots=True)
class DemoLab:
    """The running lab: certificate files (in `directory`), the SIP listeners, and the echo peer: its
    control address, its secret file (in `directory`) and the RTP range it serves."""

    directory: Path
    ca_file: Path
    client_cert: Path
    client_key: Path
    listeners: tuple[DemoListener, ...]
    rtp_control: tuple[str, int]
    secret_file: Path
    rtp_range: tuple[int, int] = DEMO_RTP_RANGE

    def bound_port(self, exchange_port: int) -> int:
        return next(item.bound_port for item in self.listeners if item.port.exchange_port == exchange_port)

    def listener_on(self, bound_port: int) -> DemoListener | None:
        return next((item for item in self.listeners if item.bound_port == bound_port), None)


@asynccontextmanager
async def open_demo_lab() -> AsyncIterator[DemoLab]:
    """Make the throwaway CA and certificates and serve the UM listeners on loopback until the block ends."""
    with tempfile.TemporaryDirectory(prefix="umprobe-demo-") as tmp:
        directory = Path(tmp)
        ca = DevCA.create("umprobe demo CA")
        ca_file = ca.write_ca(directory, "ca")
        server_crt, server_key = ca.issue(["localhost", _HOST], common_name="localhost").write(
            directory, "server"
        )
        client_crt, client_key = ca.issue([_CLIENT_NAME], common_name=_CLIENT_NAME).write(directory, "client")
        server_ctx = make_server_context(
            cert_file=str(server_crt),
            key_file=str(server_key),
            ca_file=str(ca_file),
            require_client_cert=True,
        )
        async with trio.open_nursery() as nursery:
            listeners: list[DemoListener] = []
            for port in DEMO_LAYOUT:
                sockets = await trio.open_tcp_listeners(0, host=_HOST)
                listeners.append(DemoListener(port, _HOST, int(sockets[0].socket.getsockname()[1])))
                await nursery.start(
                    partial(
                        serve_sip_responder,
                        sockets,
                        tls_context=server_ctx if port.transport == "tls" else None,
                        server_header=DEMO_SERVER_HEADER,
                    )
                )
            secret_file = _write_secret(directory / "rtp.secret")
            peer = await nursery.start(
                partial(
                    serve_echo_peer,
                    PeerConfig(
                        secret=secret_file.read_bytes().strip(),
                        listen_host=_HOST,
                        media_host=_HOST,
                        rtp_range=DEMO_RTP_RANGE,
                        rate_per_source=2000.0,
                        rate_global=4000.0,
                    ),
                )
            )
            try:
                yield DemoLab(
                    directory,
                    ca_file,
                    client_crt,
                    client_key,
                    tuple(listeners),
                    rtp_control=peer.control[0],
                    secret_file=secret_file,
                )
            finally:
                nursery.cancel_scope.cancel()


def _write_secret(path: Path) -> Path:
    """A fresh 32-byte secret (hex, one line) in a file only we can read, as `umprobe peer` wants it."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as file:
        file.write(secrets.token_hex(32) + "\n")
    return path


# -- the generated probes.toml ---------------------------------------------------------------------------


def _toml_str(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def demo_config_text(
    lab: DemoLab,
    *,
    interval: float = DEMO_INTERVAL,
    timeout: float = DEMO_TIMEOUT,
    log_level: str = "warning",
) -> str:
    """The probes.toml the live demo runs: the lab's listeners as an Exchange 2016 UM server in Dual mode,
    and its echo peer as an [[rtp]] entry.

    File paths are relative to `lab.directory` (parse it with that as `base_dir`)."""
    port_map = ", ".join(f"{item.port.exchange_port} = {item.bound_port}" for item in lab.listeners)
    host, port = lab.rtp_control
    lo, hi = lab.rtp_range
    out = [
        "# probes.toml of `umprobe demo`, generated in memory: an Exchange 2016 UM server in Dual mode whose",
        "# listeners are on loopback ports (see the mapping above), and an umprobe echo peer next to it.",
        f"# Paths are relative to {lab.directory}, which holds the throwaway CA, the probe's client",
        "# certificate and the echo peer's secret.",
        "",
        "[defaults]",
        f"interval = {interval:g}",
        f"timeout = {timeout:g}",
        'families = ["ipv4"]',
        f"from_domain = {_toml_str(_CLIENT_NAME)}",
        "",
        "# Mutual TLS as the UM IP gateway probe.demo.invalid, verified against the demo CA.",
        "[modules.mtls]",
        'transport = "tls"',
        f"ca_file = {_toml_str(lab.ca_file.name)}",
        f"cert_file = {_toml_str(lab.client_cert.name)}",
        f"key_file = {_toml_str(lab.client_key.name)}",
        'server_name = "localhost"',
        "",
        "[log]",
        f"level = {_toml_str(log_level)}",
        "",
        "# Every UM listener of a server holding both roles, in Dual mode: 12 probes, the worker ports with",
        "# both transports as two any-of groups. port_map: where each listener is reached (as behind NAT).",
        "[[targets]]",
        f"host = {_toml_str(_HOST)}",
        'profile = "exchange2016"',
        'um_mode = "dual"',
        'tls_module = "mtls"',
        f"port_map = {{ {port_map} }}",
        "",
        f"# The echo peer next to the Mailbox server: its range {lo}-{hi}, {_RTP_SAMPLES} ports a run.",
        "[[rtp]]",
        f"peer = {_toml_str(f'{host}:{port}')}",
        f"name = {_toml_str(DEMO_RTP_PEER)}",
        f"secret_file = {_toml_str(lab.secret_file.name)}",
        f'range = "{lo}-{hi}"',
        f"samples = {_RTP_SAMPLES}",
        f"packets = {_RTP_PACKETS}",
        f"concurrency = {_RTP_CONCURRENCY}",
        f"interval = {DEMO_RTP_INTERVAL:g}",
    ]
    return "\n".join(out) + "\n"


def demo_config(lab: DemoLab, text: str | None = None, *, log_level: str = "warning") -> Config:
    """Validate the demo's probes.toml (`text`, default `demo_config_text(lab)`) like any file."""
    if text is None:
        text = demo_config_text(lab, log_level=log_level)
    return parse_config(text, source=DEMO_SOURCE, base_dir=lab.directory)


# -- once: one check round, like `umprobe check --profile exchange2016 --um-mode dual` ------------------


def _mapping_lines(lab: DemoLab) -> list[str]:
    return [
        f"  {item.port.component:15} {item.port.exchange_port}/{item.port.transport:3} "
        f"served on {item.host}:{item.bound_port}"
        for item in lab.listeners
    ]


async def run_demo(*, check_seconds: float = 5.0, say: Callable[[str], None] = print) -> CheckReport:
    """Start the lab, probe it once with the exchange2016 profile in Dual mode, return the report."""
    async with open_demo_lab() as lab:
        say("umprobe demo: an Exchange 2016 UM server in Dual mode, on loopback (no Exchange needed)")
        for line in _mapping_lines(lab):
            say(line)
        say(f"  certificates (throwaway CA, mutual TLS) in {lab.directory}")
        say("")
        tls = TLSClientConfig(
            ca_file=str(lab.ca_file), cert_file=str(lab.client_cert), key_file=str(lab.client_key)
        )
        items = [
            CheckItem(
                SipProbeSpec(
                    host=_HOST,
                    port=lab.bound_port(spec.port),
                    transport=spec.transport,
                    listener=spec.listener,
                    tls=tls,
                    server_name="localhost",
                    families=("ipv4",),
                ),
                required=spec.required,
                group=spec.group,
            )
            for spec in expand_profile("exchange2016", "dual")
        ]
        pairs = await run_check(items, deadline=trio.current_time() + check_seconds)
    return evaluate(pairs, Thresholds())


# -- live: the daemon on the lab --------------------------------------------------------------------------


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.1f} ms"


def _ago(seconds: float) -> str:
    return f"{max(0.0, seconds):.1f}s ago"


def _table(rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return ["  " + "  ".join(c.ljust(widths[i]) for i, c in enumerate(row)).rstrip() for row in rows]


def _rtp_state(store: ResultStore, entry: RtpProbeConfig) -> tuple[str, str]:
    """(STATE, what was found) of an RTP peer's last run, for the summary table."""
    latest = store.rtp_latest(entry.id)
    if latest is None:
        return "waiting", "-"
    if not latest.success:
        return f"DOWN: {latest.reason.value}", "-"
    counts = latest.totals.state_counts
    reachable, measured = (
        counts.get("reachable", 0),
        counts.get("reachable", 0) + counts.get("unreachable", 0),
    )
    t = latest.totals
    loss = "-" if t.loss_forward is None else f"{t.loss_forward * 100:.1f}%/{(t.loss_return or 0) * 100:.1f}%"
    found = f"{reachable}/{measured} ports, rtt {_ms(t.rtt_p50)}, loss {loss}"
    return ("up" if reachable == measured and measured else f"DOWN: {measured - reachable} silent"), found


def _rtp_rows(store: ResultStore, now: float) -> list[tuple[str, ...]]:
    """One row per [[rtp]] peer: its range, last run (reachable ports, RTT, loss fwd/ret), runs, failures."""
    rows: list[tuple[str, ...]] = []
    for entry in store.rtp_probes():
        lo, hi = entry.spec.rtp_range
        state, found = _rtp_state(store, entry)
        stats = store.rtp_stats(entry.id)
        runs = stats.runs if stats else 0
        failed = sum(count for _, count in stats.failures) if stats else 0
        recorded = store.rtp_recorded_at(entry.id)
        last = _ago(now - recorded) if recorded is not None else "-"
        rows.append(("RTP media", f"{lo}-{hi}/udp", entry.name, state, found, last, str(runs), str(failed)))
    return rows


def _rtp_maps(store: ResultStore) -> list[str]:
    """Each peer's block map: every block of its range as last sampled (the map `umprobe rtp` prints)."""
    lines: list[str] = []
    for entry in store.rtp_probes():
        blocks = store.rtp_known_blocks(entry.id)
        sampled = sum(1 for block in blocks if block.sampled)
        lines.append(
            f"  RTP blocks of {entry.name}, {sampled} of {len(blocks)} sampled so far"
            " (# every sampled port answered, ~ some, x none, . not sampled yet):"
        )
        lines += ["  " + line for line in render_map(blocks)]
    return lines


def _rtp_headline(store: ResultStore) -> str:
    entries = store.rtp_probes()
    if not entries:
        return ""
    blocks = [block for entry in entries for block in store.rtp_known_blocks(entry.id) if block.sampled]
    if not blocks:
        return "; RTP waiting"
    good = sum(1 for block in blocks if block.reachable == block.measured)
    return f"; RTP {good}/{len(blocks)} sampled blocks reachable"


def render_summary(lab: DemoLab, store: ResultStore, *, title: str, now: float | None = None) -> str:
    """One compact block: a headline, then per probe the Exchange port it stands for, its `probe` label,
    its state, the last SIP answer and how long it took, when it last ran, and its runs and failures; then
    the RTP peer's row and its block map.

    The headline counts the lab's listeners: one is up when the probe with its port and transport is. The
    profile's worker probes with the other transport find no listener here: "down, optional"."""
    now = time.time() if now is None else now
    probes = store.probes()
    rows: list[tuple[str, ...]] = [
        ("LISTENER", "STANDS FOR", "PROBE", "STATE", "SIP / RTP", "LAST RUN", "RUNS", "FAILED")
    ]
    up = total_runs = total_failed = optional_failed = 0
    for probe in probes:
        item = lab.listener_on(probe.spec.port)
        component = item.port.component if item else probe.spec.listener
        stands_for = f"{item.port.exchange_port}/{probe.spec.transport}" if item else "-"
        served = item is not None and item.port.transport == probe.spec.transport
        stats = store.address_stats(probe.id)
        runs = sum(s.runs for s in stats)
        failed = sum(count for s in stats for _, count in s.failures)
        total_runs += runs
        total_failed += failed
        optional_failed += 0 if probe.required else failed
        latest = store.latest(probe.id)
        state, sip, last = "waiting", "-", "-"
        if latest:
            bad = [r for r in latest if not r.success]
            if not bad:
                state = "up"
            elif probe.required:
                state = f"DOWN: {bad[0].reason.value}"
            else:
                state = f"down, optional: {bad[0].reason.value}"
            up += 1 if served and not bad else 0
            shown = bad[0] if bad else latest[0]
            if shown.status_code is not None:
                sip = f"{shown.status_code} in {_ms(shown.timings.sip)}"
            recorded = store.recorded_at(probe.id)
            if recorded is not None:
                last = _ago(now - recorded)
        rows.append((component, stands_for, probe.name, state, sip, last, str(runs), str(failed)))
    rows += _rtp_rows(store, now)
    optional = f", {optional_failed} of them optional" if optional_failed else ""
    headline = (
        f"{title}: {up} of {len(lab.listeners)} SIP listeners up"
        f" ({total_runs} probes run, {total_failed} failed{optional}){_rtp_headline(store)}"
    )
    return "\n".join([headline, *_table(rows), *_rtp_maps(store)])


def _print(text: str) -> None:
    print(text, flush=True)


def _hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


async def _start_daemon(
    nursery: trio.Nursery, daemon: Daemon, *, fallback: bool
) -> tuple[tuple[tuple[str, int], ...], str | None]:
    """Start `daemon.serve` in `nursery` (the demo ends when the daemon does, i.e. on SIGINT/SIGTERM).

    Returns the bound addresses, and a note when the default address was taken and a free port used."""

    async def run(task_status: trio.TaskStatus[tuple[tuple[str, int], ...]]) -> None:
        await daemon.serve(task_status=task_status)
        nursery.cancel_scope.cancel()  # the daemon took a stop signal: so does the demo

    try:
        return await nursery.start(run), None
    except BaseExceptionGroup as group:
        error = lone_user_error(group)
        if error is None or not fallback:
            raise
        taken = daemon.listen
    daemon.listen = _FALLBACK_LISTEN
    why = str(error).rpartition(": ")[2]
    return await nursery.start(run), f"{taken} is not available ({why}): a free port instead"


async def _stop_on_signal(signals: AsyncIterator[int], scope: trio.CancelScope) -> None:
    """SIGINT/SIGTERM while the daemon is not running (start-up, or after it stopped): stop the demo."""
    async for _ in signals:
        scope.cancel()
        return


async def _summaries(lab: DemoLab, store: ResultStore, say: Callable[[str], None], start: float) -> None:
    # The first block once every listener has been probed (within one interval), then every SUMMARY_EVERY.
    # The store has no "changed" event, so this polls, a bounded number of times.
    for _ in range(math.ceil((DEMO_INTERVAL + DEMO_TIMEOUT + 1.0) / _POLL)):
        if all(store.latest(probe.id) for probe in store.probes()):
            break
        await trio.sleep(_POLL)
    while True:
        say("")
        say(render_summary(lab, store, title=f"{time.strftime('%H:%M:%S')} (+{time.time() - start:.0f}s)"))
        await trio.sleep(SUMMARY_EVERY)


async def serve_demo(
    *,
    listen: str | None = None,
    duration: float | None = None,
    verbose: bool = False,
    say: Callable[[str], None] | None = None,
) -> None:
    """The live demo: the lab, the daemon on it, addresses, summaries; returns after `duration` seconds or
    on SIGINT/SIGTERM. Raises `UserError` (one line) when an explicit `listen` cannot be bound, and a bare
    `BrokenPipeError` when `say` fails because the reader of the output went away."""
    try:
        await _serve_demo(listen=listen, duration=duration, verbose=verbose, say=say or _print)
    except BaseExceptionGroup as group:
        error = lone_user_error(group)
        if error is not None:
            raise error from None
        broken = group.subgroup(BrokenPipeError)
        if broken is not None and broken.split(BrokenPipeError)[1] is None:
            raise BrokenPipeError("the demo's output was closed") from None  # e.g. `umprobe demo | head`
        raise


async def _serve_demo(
    *, listen: str | None, duration: float | None, verbose: bool, say: Callable[[str], None]
) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with open_demo_lab() as lab:
            text = demo_config_text(lab, log_level="info" if verbose else "warning")
            config = demo_config(lab, text)
            configure_logging(fmt=config.log.format, level=config.log.level)
            daemon = Daemon.from_config(
                config,
                listen=listen or DEFAULT_LISTEN,
                load=partial(demo_config, lab, text),
            )
            start = time.time()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_stop_on_signal, signals, nursery.cancel_scope)
                bound, note = await _start_daemon(nursery, daemon, fallback=listen is None)
                if duration is not None:
                    nursery.cancel_scope.deadline = trio.current_time() + duration
                _say_header(
                    lab, bound, note, duration=duration, config_text=text if verbose else None, say=say
                )
                nursery.start_soon(_summaries, lab, daemon.store, say, start)
            timed_out = trio.current_time() >= nursery.cancel_scope.deadline
            how = f"--duration {duration:g}s is over" if timed_out else "stopped by a signal"
            say("")
            say(render_summary(lab, daemon.store, title=f"final ({how}; ran {time.time() - start:.1f}s)"))


def _say_header(
    lab: DemoLab,
    bound: Sequence[tuple[str, int]],
    note: str | None,
    *,
    duration: float | None,
    config_text: str | None,
    say: Callable[[str], None],
) -> None:
    say("umprobe demo: an Exchange 2016 UM server in Dual mode on loopback, watched by the umprobe daemon")
    for host, port in bound:
        base = f"http://{_hostport(host, port)}"
        say(f"  metrics      {base}/metrics")
        say(f"  status page  {base}/")
    if note:
        say(f"  ({note})")
    say(f"  try          curl -s http://{_hostport(*bound[0])}/metrics | grep ^umprobe_probe_success")
    say(f"               curl -s http://{_hostport(*bound[0])}/metrics | grep ^umprobe_rtp_block")
    say(f"  SIP listeners (plain TCP, and mutual TLS with a throwaway CA in {lab.directory}):")
    for line in _mapping_lines(lab):
        say("  " + line)
    lo, hi = lab.rtp_range
    say(
        f"  RTP echo peer: control {_hostport(*lab.rtp_control)}, media {lo}-{hi}/udp on {_HOST},"
        f" secret {lab.secret_file}"
    )
    stop = f"stops after {duration:g}s or on Ctrl-C" if duration is not None else "Ctrl-C stops it"
    sweep = (hi - lo + 2) // 2 // _RTP_SAMPLES
    say(
        f"  every listener is probed every {DEMO_INTERVAL:g}s, {_RTP_SAMPLES} RTP ports every"
        f" {DEMO_RTP_INTERVAL:g}s (the whole range in {sweep * DEMO_RTP_INTERVAL:g}s);"
        f" a summary every {SUMMARY_EVERY:g}s; {stop}"
    )
    if config_text is not None:
        say("")
        say(config_text.rstrip("\n"))
