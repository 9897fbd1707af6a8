"""`umprobe run`: the daemon's command line. The work is in `umprobe.daemon.run_daemon`."""

from __future__ import annotations

import sys
from functools import partial
from pathlib import Path

import click
import trio

from umprobe.shard import ALL, Shard, parse_shard, valid_vantage

__all__ = ["EXIT_CANNOT_LISTEN", "run_command"]

_RUN_EPILOG = """\b
What it does:
  Every probe in the config runs once per interval (its module's `interval`), at a
  fixed offset inside the interval derived from the probe's id, so 1,000 probes
  with a 60 s interval run about 17 per second instead of 1,000 at once. A probe
  whose previous run has not finished skips its slot (logged) rather than piling
  up; at most scheduler.max_concurrency probes run at the same time. The first
  results arrive within one interval of start-up.

\b
HTTP (default 127.0.0.1:9874; [exporter] listen in the file, or --listen):
  /metrics        every probe's latest results and counters, for Prometheus
  /probe          one probe on demand (blackbox_exporter style)
  /-/healthy      200 while running
  /-/reload       POST: re-read the config file, like SIGHUP

\b
Signals:
  SIGHUP          re-read the config file. Unchanged probes keep their schedule
                  and series; removed probes' series disappear; TLS certificate
                  files are read again. A broken file is rejected with one log
                  line and the running config stays in force
                  (umprobe_config_last_reload_successful drops to 0).
  SIGTERM, SIGINT stop within a second; exit code 0.

\b
Logs go to stderr, one line per event (logfmt, or JSON with --log-format json):
start, reloads, and each listener's first result and state changes (up/down,
reason), not one line per probe run.

\b
Examples:
  umprobe config check probes.toml       validate first (exit 3 names the bad key)
  umprobe run -c probes.toml
  umprobe run -c probes.toml --listen [::1]:9874 --log-format json
  kill -HUP PID                          reload after editing probes.toml
  curl -X POST http://127.0.0.1:9874/-/reload
                                         the same reload, over HTTP
  (systemd: ExecReload=/bin/kill -HUP $MAINPID, then `systemctl reload umprobe`)

\b
Several daemons, several sites (docs/scale-out.md):
  umprobe run -c probes.toml --shard 1/2      two daemons split one config;
  umprobe run -c probes.toml --shard 2/2      every probe runs on exactly one
  umprobe run -c probes.toml --vantage dublin label every series with the site

\b
Exit codes (one line on stderr says why): 0 stopped by a signal; 3 the config is
invalid; 4 the HTTP address cannot be bound (in use, not an address of this host,
or not permitted). Under systemd: Restart=on-failure, RestartSec=10s and
RestartPreventExitStatus=3 (see docs/operations-faults.md).
"""

#: `umprobe run`'s exit code when the HTTP address cannot be bound (3 stays "the config is invalid").
EXIT_CANNOT_LISTEN = 4


def _check_listen(_ctx: click.Context, _param: click.Parameter, value: str | None) -> str | None:
    if value is None:
        return None
    from umprobe.exporter import parse_listen

    try:
        parse_listen(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    return value


def _check_shard(_ctx: click.Context, _param: click.Parameter, value: str | None) -> Shard:
    if value is None:
        return ALL
    try:
        return parse_shard(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def _check_vantage(_ctx: click.Context, _param: click.Parameter, value: str | None) -> str | None:
    if value is not None and not valid_vantage(value):
        raise click.BadParameter(
            f"{value!r}: use 1-63 letters, digits, '_', '.' or '-', starting with a letter or digit"
        )
    return value


@click.command("run", epilog=_RUN_EPILOG)
@click.option(
    "-c",
    "--config",
    "config_path",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    metavar="FILE",
    help="The probes file (TOML): targets, modules, exporter, scheduler and log settings.",
)
@click.option(
    "--listen",
    metavar="HOST:PORT",
    callback=_check_listen,
    help="Serve HTTP here instead of the config's exporter.listen: HOST:PORT, [IPv6]:PORT or :PORT (every "
    "interface). [default: 127.0.0.1:9874]",
)
@click.option(
    "--log-format",
    type=click.Choice(["text", "json"]),
    help="text: logfmt key=value lines; json: one JSON object per line. [default: the config's log.format]",
)
@click.option(
    "--shard",
    metavar="K/N",
    envvar="UMPROBE_SHARD",
    callback=_check_shard,
    help="Run only shard K of N (1 <= K <= N): the probes whose id hashes to K. N daemons with 1/N .. N/N "
    "share one config without overlap. [env: UMPROBE_SHARD; default: 1/1, everything]",
)
@click.option(
    "--vantage",
    metavar="NAME",
    envvar="UMPROBE_VANTAGE",
    callback=_check_vantage,
    help="The site this daemon probes from: a `vantage` label on every probe series, so several sites can "
    "feed one Prometheus. [env: UMPROBE_VANTAGE; default: the config's exporter.vantage, else none]",
)
def run_command(
    config_path: Path, listen: str | None, log_format: str | None, shard: Shard, vantage: str | None
) -> None:
    """Run the prober: probe every configured SIP listener on a schedule and serve the results.

    Reads FILE (see `umprobe config check`), sends SIP OPTIONS to every listener it lists, over TCP and
    mutual TLS, on each probe's interval, and serves the results as Prometheus metrics until stopped.
    """
    from umprobe.daemon import run_daemon
    from umprobe.exporter import ListenError

    try:
        trio.run(
            partial(
                run_daemon, config_path, listen=listen, log_format=log_format, shard=shard, vantage=vantage
            )
        )
    except ListenError as exc:
        click.echo(f"umprobe: error: {exc}", err=True)
        sys.exit(EXIT_CANNOT_LISTEN)
