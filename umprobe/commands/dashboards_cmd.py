"""`umprobe dashboards export DIR`: write the shipped dashboards, rules, example config and service units.

The files live once, at the top of the source tree (dashboards/, probes.toml, deploy/). A wheel carries
copies in umprobe/_assets/, made by setup.py at build time with the same relative paths; an editable install
or a source checkout has no copies, and the files are read from the source tree instead. DIR gets the source
tree's layout, so the commands in docs/dashboards.md and docs/operations.md (`promtool test rules
dashboards/tests/...`, the `sed` for provisioning, `cp deploy/systemd/...`) work the same in DIR as in a
clone.
"""

from __future__ import annotations

from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path

import click

from umprobe.errors import UserError

__all__ = ["ASSETS", "asset_root", "dashboards_group", "export_assets"]

# Relative to the source tree's root and to umprobe/_assets/ in a wheel. setup.py has the same tuple
# (it cannot import the package it builds); tests/test_packaging.py keeps the two equal.
ASSETS = (
    "dashboards/umprobe-overview.json",
    "dashboards/umprobe-listener.json",
    "dashboards/umprobe.rules.yml",
    "dashboards/tests/umprobe.rules.test.yml",
    "probes.toml",
    "deploy/systemd/umprobe.service",
    "deploy/systemd/umprobe-peer.service",
    "deploy/sysusers.d/umprobe.conf",
)


def asset_root() -> Traversable:
    """Where ASSETS are: umprobe/_assets/ of an installed wheel, else the source tree umprobe runs from."""
    packaged = resources.files("umprobe") / "_assets"
    if packaged.is_dir():
        return packaged
    source = Path(__file__).resolve().parents[2]
    if all((source / name).is_file() for name in ASSETS):
        return source
    raise UserError(
        "this umprobe installation has no dashboards (umprobe/_assets is missing and umprobe does not run "
        "from a source tree); reinstall it from a wheel"
    )


def export_assets(directory: Path, *, force: bool = False) -> list[Path]:
    """Write every asset under `directory` (created if missing) and return the paths written, in order.

    An existing file with the same bytes is left alone (it is still listed); one with other bytes is an
    error unless `force`, so a re-export never overwrites an edited probes.toml or dashboard by surprise.
    Nothing is written when any file would conflict.
    """
    root = asset_root()
    contents = [(directory / name, _read(root, name)) for name in ASSETS]
    if directory.exists() and not directory.is_dir():
        raise UserError(f"{directory} exists and is not a directory")
    if not force:
        conflicts = [str(path) for path, data in contents if path.is_file() and path.read_bytes() != data]
        if conflicts:
            raise UserError(
                f"{', '.join(conflicts)} already exist{'s' if len(conflicts) == 1 else ''} with other "
                "content; move it away or use --force to overwrite"
            )
    for path, data in contents:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            if not path.is_file() or path.read_bytes() != data:
                path.write_bytes(data)
        except OSError as exc:
            raise UserError(f"cannot write {path}: {exc.strerror or exc}") from None
    return [path for path, _ in contents]


def _read(root: Traversable, name: str) -> bytes:
    node = root
    for part in name.split("/"):
        node = node / part
    return node.read_bytes()


@click.group("dashboards")
def dashboards_group() -> None:
    """The Grafana dashboards, Prometheus rules, example probes.toml and systemd units shipped in umprobe."""


@dashboards_group.command(
    "export", short_help="Write the dashboards, rules, example config and units to DIR."
)
@click.argument("directory", metavar="DIR", type=click.Path(file_okay=False, path_type=Path))
@click.option("--force", is_flag=True, help="Overwrite files in DIR that differ from the shipped ones.")
def export_command(directory: Path, force: bool) -> None:
    """Write the shipped files into DIR (created if missing), with the source tree's layout:

    \b
      DIR/dashboards/umprobe-overview.json            Grafana dashboard: every listener and RTP peer
      DIR/dashboards/umprobe-listener.json            Grafana dashboard: one listener in detail
      DIR/dashboards/umprobe.rules.yml                Prometheus alert and recording rules
      DIR/dashboards/tests/umprobe.rules.test.yml     their unit tests: promtool test rules FILE
      DIR/probes.toml                                 the commented example config (docs/configuration.md)
      DIR/deploy/systemd/umprobe.service              the daemon's hardened systemd unit
      DIR/deploy/systemd/umprobe-peer.service         the RTP echo peer's unit
      DIR/deploy/sysusers.d/umprobe.conf              the daemon's system user, for systemd-sysusers

    Files already there with the same content are left alone; files with other content stop the export
    (exit 3, nothing written) unless --force. Prints each path. docs/operations.md says where each goes.
    """
    for path in export_assets(directory, force=force):
        click.echo(str(path))
