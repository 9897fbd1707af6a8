"""`umprobe config ...`: work with probes.toml without running the daemon.

`umprobe config check FILE` validates the file exactly as `umprobe run` would load it and prints the
probes it expands to, one line each. A bad file ends with one line on stderr naming the file, line, key
and value, and exit code 3: the `ConfigError` (a `UserError`) is raised to cli.main, which prints it.
"""

from __future__ import annotations

import click

from umprobe.config import describe, load_config
from umprobe.secretfile import config_exposures

__all__ = ["config_group"]


@click.group("config")
def config_group() -> None:
    """Validate and inspect probes.toml, the daemon's configuration."""


@config_group.command("check", short_help="Validate FILE and print the probes it expands to.")
@click.argument("file", metavar="FILE", type=click.Path(dir_okay=False))
@click.option(
    "--no-check-files",
    "no_check_files",
    is_flag=True,
    help="Do not open the certificate and key files (check a config on a machine that does not hold them).",
)
def check_command(file: str, no_check_files: bool) -> None:
    """Validate FILE and print every probe it expands to; exit 3 with one line naming the error.

    Each line shows the probe (its `probe` label), the target host, the Exchange UM listener, transport,
    port, module, interval, timeout and the target's extra labels. Certificate and key files are opened
    and a key is matched against its certificate, as the daemon would, unless --no-check-files is given.
    """
    config = load_config(file, check_files=not no_check_files)
    if not no_check_files:
        for exposed in config_exposures(config):  # key and secret files others may read
            click.echo(f"umprobe: warning: {exposed.message()}", err=True)
    click.echo(describe(config))
