"""Build-time copy of the shipped assets into the package; everything else is in pyproject.toml.

The Grafana dashboards, the Prometheus rules (and their promtool test), the example probes.toml and the
systemd units live once, at the top of the repository (dashboards/, probes.toml, deploy/), where people and
the tests find them. A wheel must carry them too, so that `umprobe dashboards export DIR` works after
`pip install` or `pipx install`: `build_py` copies them into umprobe/_assets/ of the build tree, with the
same relative paths. Nothing is checked in twice, so nothing can
drift; tests/test_packaging.py builds a wheel and compares its copies byte for byte with the originals.

An editable install (`pip install -e .`) gets no copy: umprobe.commands.dashboards_cmd then reads the files
from the source tree. The sdist carries the originals (MANIFEST.in), so a wheel built from it has them too.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

# Shipped assets, relative to the repository root; kept equal to umprobe.commands.dashboards_cmd.ASSETS by
# tests/test_packaging.py (this file cannot import the package it builds).
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
ROOT = Path(__file__).resolve().parent


class BuildPyWithAssets(build_py):
    """build_py, plus a copy of ASSETS into <build_lib>/umprobe/_assets/ (not in editable mode)."""

    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            return
        missing = [name for name in ASSETS if not (ROOT / name).is_file()]
        if missing:
            raise SystemExit(f"setup.py: shipped assets missing from the source tree: {', '.join(missing)}")
        for name in ASSETS:
            target = Path(self.build_lib) / "umprobe" / "_assets" / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(ROOT / name, target)

    def get_outputs(self, include_bytecode: bool = True) -> list[str]:
        outputs = list(super().get_outputs(include_bytecode))
        if not getattr(self, "editable_mode", False):
            outputs += [str(Path(self.build_lib) / "umprobe" / "_assets" / name) for name in ASSETS]
        return outputs


setup(cmdclass={"build_py": BuildPyWithAssets})
