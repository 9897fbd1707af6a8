"""Packaging: the sdist and the wheel build, pass `twine check --strict`, carry the shipped files byte for
byte, and the wheel installs into a fresh venv whose `umprobe` runs; its dependencies exist as Windows wheels.

The build is `python -m build` with its default isolation: the build runs in a venv that holds only what
`[build-system] requires` names, fetched from the package index, so a missing build dependency fails here as
it would for a user. (`--no-isolation` would be faster and would build with whatever .venv happens to hold.)
It builds from a copy of the files git knows (tracked, or new and not ignored), never in the working tree,
so that nothing the tests leave behind ends up in the wheel and nothing is written into the checkout; and
like `python -m build`, it makes the sdist first and the wheel from the unpacked sdist, so a file missing
from MANIFEST.in breaks the wheel too.

The fresh venv is real: `python -m venv --without-pip`, then this environment's pip installs the wheel into
it (`pip --python`) with its dependencies, so a dependency missing from pyproject.toml shows.

Asking the package index is what costs time here (about 6 s per resolution, most of it waiting), so each
question is asked once per session: `pip download` of [build-system] requires (the isolated build envs
install from that directory, with PIP_NO_INDEX) and of the wheel with its dependencies (the fresh venv,
and pipx in tests/test_deploy.py, install from that one). Still honest: those directories hold exactly
what pyproject.toml asks for, resolved from the index.
"""

from __future__ import annotations

import ast
import email.parser
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tomllib
import zipfile
from dataclasses import dataclass
from email.message import Message
from pathlib import Path

import pytest
from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name, parse_wheel_filename

from tests.lab.proc import require_binary
from umprobe._version import __version__
from umprobe.commands.dashboards_cmd import ASSETS

ROOT = Path(__file__).resolve().parent.parent
BUILD_TIMEOUT = 300


@dataclass(frozen=True)
class Dist:
    sdist: Path
    wheel: Path


def source_files() -> list[str]:
    """The repository's files as a fresh clone would have them, plus new files not ignored by git."""
    out = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
        timeout=60,
    )
    return sorted(name for name in out.stdout.decode().split("\0") if name and (ROOT / name).is_file())


def copy_source(dest: Path) -> Path:
    for name in source_files():
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, target)
    return dest


def pip_download(dest: Path, *args: str) -> None:
    """`pip download` into `dest`: from the package index, the one step of these tests that asks it."""
    out = subprocess.run(
        [sys.executable, "-m", "pip", "download", "--quiet", "-d", str(dest), *args],
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT,
        check=False,
    )
    assert out.returncode == 0, f"pip download {args} failed:\n{out.stdout[-4000:]}\n{out.stderr[-4000:]}"


def offline(*wheelhouses: Path) -> dict[str, str]:
    """The environment for a pip (or build, or pipx) that installs from these directories only."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PIP_NO_INDEX"] = "1"
    env["PIP_FIND_LINKS"] = " ".join(str(w) for w in wheelhouses)
    return env


_HOUSES: dict[str, Path] = {}


def build_requirements(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """[build-system] requires, downloaded once: each isolated build env installs from here, and gets
    exactly what pyproject.toml asks for (resolving it from the index costs ~6 s per env here)."""
    if "build" not in _HOUSES:
        requires = tomllib.loads((ROOT / "pyproject.toml").read_text())["build-system"]["requires"]
        house = tmp_path_factory.mktemp("build-requires")
        pip_download(house, *requires)
        _HOUSES["build"] = house
    return _HOUSES["build"]


def runtime_wheelhouse(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel and its dependencies, resolved from the index once (so a dependency missing from
    pyproject.toml is missing here too), plus pip and wheel for pipx's shared venv."""
    if "runtime" not in _HOUSES:
        house = tmp_path_factory.mktemp("wheelhouse")
        pip_download(house, str(built_dist(tmp_path_factory).wheel), "pip", "wheel")
        _HOUSES["runtime"] = house
    return _HOUSES["runtime"]


def run_build(source: Path, outdir: Path, requirements: Path, *args: str) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "build", "--outdir", str(outdir), *args, str(source)],
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT,
        check=False,
        env=offline(requirements),
    )
    assert out.returncode == 0, f"python -m build failed:\n{out.stdout[-4000:]}\n{out.stderr[-4000:]}"


_BUILT: dict[str, Dist] = {}


def built_dist(tmp_path_factory: pytest.TempPathFactory, version: str | None = None) -> Dist:
    """The sdist and wheel of the working tree (once per session), or a wheel with another `version`
    (umprobe/_version.py changed in the copy; for the upgrade and rollback walk-through)."""
    key = version or __version__
    if key not in _BUILT:
        base = tmp_path_factory.mktemp(f"build-{key}")
        source = copy_source(base / "src")
        outdir = base / "dist"
        if version is not None:
            version_file = source / "umprobe" / "_version.py"
            text = version_file.read_text()
            assert f'__version__ = "{__version__}"' in text
            version_file.write_text(text.replace(f'"{__version__}"', f'"{version}"'))
        # Another version is needed as a wheel only: built straight from the copy, not through an sdist.
        run_build(source, outdir, build_requirements(tmp_path_factory), *(("--wheel",) if version else ()))
        sdists = list(outdir.glob("*.tar.gz"))
        (wheel,) = outdir.glob("*.whl")
        _BUILT[key] = Dist(sdist=sdists[0] if sdists else outdir / "(not built)", wheel=wheel)
    return _BUILT[key]


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Dist:
    return built_dist(tmp_path_factory)


def wheel_metadata(wheel: Path) -> Message:
    with zipfile.ZipFile(wheel) as archive:
        text = archive.read(f"umprobe-{__version__}.dist-info/METADATA").decode()
    return email.parser.Parser().parsestr(text)


# -- the artifacts -----------------------------------------------------------------------------------------


def test_names_and_versions(dist: Dist) -> None:
    assert dist.sdist.name == f"umprobe-{__version__}.tar.gz"
    name, version, _build, tags = parse_wheel_filename(dist.wheel.name)
    assert (name, str(version)) == ("umprobe", __version__)
    assert {str(tag) for tag in tags} == {"py3-none-any"}


def test_twine_check_strict(dist: Dist) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "twine", "check", "--strict", str(dist.sdist), str(dist.wheel)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.count("PASSED") == 2, out.stdout


def test_wheel_carries_the_shipped_files_byte_for_byte(dist: Dist) -> None:
    with zipfile.ZipFile(dist.wheel) as archive:
        names = set(archive.namelist())
        for asset in ASSETS:
            member = f"umprobe/_assets/{asset}"
            assert member in names, f"{asset} is missing from the wheel"
            assert archive.read(member) == (ROOT / asset).read_bytes(), f"{asset} differs in the wheel"
        assert "umprobe/py.typed" in names
        assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]
        assert not [n for n in names if n.startswith(("tests/", "bench/", "docs/"))]


def test_sdist_holds_what_the_wheel_is_built_from(dist: Dist) -> None:
    prefix = f"umprobe-{__version__}/"
    with tarfile.open(dist.sdist) as archive:
        names = {m.name.removeprefix(prefix) for m in archive.getmembers() if m.isfile()}
    wanted = {
        "pyproject.toml",
        "setup.py",
        "MANIFEST.in",
        "README.md",
        "LICENSE",
        "CHANGELOG.md",
        "umprobe/_version.py",
        "umprobe/py.typed",
        "docs/operations.md",
        "docs/windows-peer.md",
        *ASSETS,
    }
    assert wanted - names == set()
    assert not [n for n in names if n.startswith("tests/") or "__pycache__" in n or n.endswith(".pyc")]


def test_asset_lists_agree_and_cover_the_shipped_directories() -> None:
    tree = ast.parse((ROOT / "setup.py").read_text())
    (setup_assets,) = [
        ast.literal_eval(node.value)
        for node in tree.body
        if isinstance(node, ast.Assign)
        and any(isinstance(t, ast.Name) and t.id == "ASSETS" for t in node.targets)
    ]
    assert tuple(setup_assets) == ASSETS
    shipped = {
        p.relative_to(ROOT).as_posix() for d in ("dashboards", "deploy") for p in (ROOT / d).rglob("*")
    }
    shipped = {name for name in shipped if (ROOT / name).is_file()}
    assert shipped - set(ASSETS) == set(), "a file under dashboards/ or deploy/ is not shipped in the wheel"


def test_metadata(dist: Dist) -> None:
    meta = wheel_metadata(dist.wheel)
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert meta["Name"] == "umprobe"
    assert meta["Version"] == __version__
    assert meta["Requires-Python"] == ">=3.11"
    assert meta["License-Expression"] == "MIT"
    assert meta["Summary"] == project["description"]
    assert meta["Description-Content-Type"] == "text/markdown"
    assert meta.get_payload().startswith("# umprobe\n")
    assert set(meta.get_all("Classifier") or []) == set(project["classifiers"])
    assert "Programming Language :: Python :: 3.11" in project["classifiers"]
    assert set((meta["Keywords"] or "").split(",")) == set(project["keywords"])
    requires = {Requirement(r) for r in meta.get_all("Requires-Dist") or [] if "extra ==" not in r}
    assert {str(r) for r in requires} == {str(Requirement(r)) for r in project["dependencies"]}
    with zipfile.ZipFile(dist.wheel) as archive:
        entry_points = archive.read(f"umprobe-{__version__}.dist-info/entry_points.txt").decode()
    assert "[console_scripts]\numprobe = umprobe.cli:main" in entry_points


def test_the_version_is_single_sourced() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "version" not in pyproject["project"]
    assert pyproject["project"]["dynamic"] == ["version"]
    assert pyproject["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "umprobe._version.__version__"}
    assert re.fullmatch(r"\d+\.\d+\.\d+", __version__)
    literal = re.compile(rf"['\"]{re.escape(__version__)}['\"]")
    elsewhere = [
        p.relative_to(ROOT).as_posix()
        for p in (ROOT / "umprobe").rglob("*.py")
        if p.name != "_version.py" and literal.search(p.read_text())
    ]
    assert elsewhere == []
    out = subprocess.run(
        [sys.executable, "-m", "umprobe.cli", "--version"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert out.stdout == f"umprobe, version {__version__}\n"


def test_versions_named_in_the_docs_are_this_version() -> None:
    """Install commands in the docs name the wheel of this version: a version bump must update them."""
    pattern = re.compile(r"umprobe(?:-|==)(\d+\.\d+\.\d+)|^VERSION=(\S+)$", re.M)
    for doc in (ROOT / "README.md", ROOT / "docs" / "operations.md", ROOT / "docs" / "windows-peer.md"):
        found = {a or b for a, b in pattern.findall(doc.read_text())}
        assert found <= {__version__}, f"{doc.name} names {found - {__version__}}"


# -- the wheel, installed ----------------------------------------------------------------------------------


def test_wheel_in_a_fresh_venv(dist: Dist, tmp_path: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    house = runtime_wheelhouse(tmp_path_factory)
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(python),
            "install",
            "--quiet",
            f"umprobe=={__version__}",
        ],
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT,
        check=False,
        env=offline(house),
    )
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-4000:]
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PATH"] = f"{venv / 'bin'}:{env.get('PATH', '')}"

    def umprobe(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(venv / "bin" / "umprobe"), *args],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            env=env,
            cwd=tmp_path,
        )

    version = umprobe("--version")
    assert (version.returncode, version.stdout) == (0, f"umprobe, version {__version__}\n"), version.stderr
    where = subprocess.run(
        [str(python), "-c", "import umprobe; print(umprobe.__file__)"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        env=env,
        cwd=tmp_path,
    )
    assert Path(where.stdout.strip()).is_relative_to(venv), "the test did not run the installed wheel"

    export = umprobe("dashboards", "export", "files")
    assert export.returncode == 0, export.stderr
    assert export.stdout.splitlines() == [str(Path("files") / name) for name in ASSETS]
    for name in ASSETS:
        assert (tmp_path / "files" / name).read_bytes() == (ROOT / name).read_bytes(), name

    check = umprobe("config", "check", "--no-check-files", "files/probes.toml")
    assert check.returncode == 0, check.stderr
    assert "cas01.contoso.local" in check.stdout
    promtool = subprocess.run(
        [require_binary("promtool"), "test", "rules", "files/dashboards/tests/umprobe.rules.test.yml"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=tmp_path,
    )
    assert promtool.returncode == 0, promtool.stdout + promtool.stderr


# -- the Windows peer: every dependency is a ready-made wheel ----------------------------------------------


def _windows_environment(python_version: str) -> dict[str, str]:
    return {
        "os_name": "nt",
        "sys_platform": "win32",
        "platform_system": "Windows",
        "platform_machine": "AMD64",
        "platform_release": "2016Server",
        "platform_version": "10.0.14393",
        "python_version": python_version,
        "python_full_version": f"{python_version}.0",
        "implementation_name": "cpython",
        "implementation_version": f"{python_version}.0",
        "platform_python_implementation": "CPython",
        "extra": "",
    }


@pytest.mark.parametrize("python_version", ["3.11", "3.12"])
def test_dependencies_install_on_windows_from_wheels(dist: Dist, tmp_path: Path, python_version: str) -> None:
    """What docs/windows-peer.md runs to install offline: every dependency as a win_amd64 or pure wheel (no
    compiler on the Exchange server), and no Windows-only requirement that pip, evaluating markers for
    this Linux machine, would leave out of the download."""
    pip_download(
        tmp_path,
        "--only-binary=:all:",
        "--platform",
        "win_amd64",
        "--python-version",
        python_version,
        "--implementation",
        "cp",
        str(dist.wheel),
    )
    wheels = sorted(tmp_path.glob("*.whl"))
    assert len(wheels) == len(list(tmp_path.iterdir())), "pip fetched something that is not a wheel"
    names = {parse_wheel_filename(w.name)[0] for w in wheels}
    requirements: dict[str, list[Requirement]] = {}
    for wheel in wheels:
        with zipfile.ZipFile(wheel) as archive:
            (meta_name,) = [n for n in archive.namelist() if n.endswith(".dist-info/METADATA")]
            meta = email.parser.Parser().parsestr(archive.read(meta_name).decode())
        requirements[parse_wheel_filename(wheel.name)[0]] = [
            Requirement(text) for text in meta.get_all("Requires-Dist") or []
        ]
        for tag in parse_wheel_filename(wheel.name)[3]:
            assert tag.platform in ("any", "win_amd64"), wheel.name
    # What Windows would install: umprobe's requirements, and theirs, with the extras they ask for.
    environment = _windows_environment(python_version)
    wanted: dict[str, set[str]] = {}
    todo: list[tuple[str, frozenset[str]]] = [("umprobe", frozenset())]
    while todo:
        name, extras = todo.pop()
        known = wanted.get(name)
        if known is not None and extras <= known:
            continue
        wanted[name] = (known or set()) | extras
        for requirement in requirements.get(name, []):
            marker: Marker | None = requirement.marker
            if marker is None or any(
                marker.evaluate(environment | {"extra": extra}) for extra in ("", *wanted[name])
            ):
                todo.append((canonicalize_name(requirement.name), frozenset(requirement.extras)))
    assert {"trio", "pyopenssl", "cryptography", "cffi"} <= names
    assert set(wanted) - names == set(), "Windows-only dependencies pip did not download"
