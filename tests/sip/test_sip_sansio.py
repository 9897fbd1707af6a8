"""The sans-I/O rule, enforced: protocol packages import no I/O, event-loop or clock modules.

The check reads the source with `ast` (so it also catches imports inside functions and behind TYPE_CHECKING)
and names the offending file and line. It covers umprobe/sip and, once it exists, umprobe/media. A second test
imports the packages in a fresh interpreter and compares sys.modules against a bare-interpreter baseline.
"""

from __future__ import annotations

import ast
import importlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SANS_IO_PACKAGES = [REPO / "umprobe" / "sip", REPO / "umprobe" / "media"]
FORBIDDEN = frozenset(
    {
        "asyncio",
        "datetime",
        "OpenSSL",
        "select",
        "selectors",
        "socket",
        "socketserver",
        "ssl",
        "subprocess",
        "threading",
        "time",
        "trio",
    }
)


def sans_io_files() -> list[Path]:
    return sorted(p for pkg in SANS_IO_PACKAGES if pkg.is_dir() for p in pkg.rglob("*.py"))


def module_name(path: Path) -> str:
    return ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")


def forbidden_imports(path: Path, root: Path = REPO) -> list[str]:
    """Return ``file:line: imports X`` for each forbidden (or unreadable dynamic) import in `path`."""
    problems: list[tuple[int, str]] = []
    where = path.relative_to(root)
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name | ast.Attribute)
            and (node.func.id if isinstance(node.func, ast.Name) else node.func.attr)
            in ("__import__", "import_module")
        ):
            names = [
                arg.value
                for arg in node.args[:1]
                if isinstance(arg, ast.Constant) and isinstance(arg.value, str)
            ]
            if not names:
                problems.append((node.lineno, f"{where}:{node.lineno}: dynamic import"))
        line = getattr(node, "lineno", 0)
        for name in names:
            if name.split(".")[0] in FORBIDDEN:
                problems.append((line, f"{where}:{line}: imports {name}"))
    return [text for _, text in sorted(problems)]


def test_there_are_files_to_check() -> None:
    assert len(sans_io_files()) >= 6


@pytest.mark.parametrize("path", sans_io_files(), ids=lambda p: str(p.relative_to(REPO)))
def test_no_io_imports(path: Path) -> None:
    assert forbidden_imports(path) == []


def test_the_checker_catches_offenders(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text(
        "import os\nimport time\nfrom trio import sleep\n"
        "def f():\n    import socket as s\n    from ssl import SSLContext\n"
        "__import__('asyncio')\nimport datetime\nimport importlib\nimportlib.import_module(name)\n"
    )
    assert forbidden_imports(bad, root=tmp_path) == [
        "bad.py:2: imports time",
        "bad.py:3: imports trio",
        "bad.py:5: imports socket",
        "bad.py:6: imports ssl",
        "bad.py:7: imports asyncio",
        "bad.py:8: imports datetime",
        "bad.py:10: dynamic import",
    ]


def test_importing_the_packages_loads_no_io_modules() -> None:
    modules = [module_name(p) for p in sans_io_files()]
    script = (
        "import json, sys\n"
        f"sys.path.insert(0, {str(REPO)!r})\n"
        "before = set(sys.modules)\n"
        f"for name in {modules!r}:\n"
        "    __import__(name)\n"
        "print(json.dumps(sorted(set(sys.modules) - before)))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, check=True
    )
    loaded = json.loads(result.stdout)
    assert "umprobe.sip.parser" in loaded
    assert [name for name in loaded if name.split(".")[0] in FORBIDDEN] == []


@pytest.mark.parametrize("path", sans_io_files(), ids=lambda p: str(p.relative_to(REPO)))
def test_every_module_has_a_docstring_and_a_complete_all(path: Path) -> None:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    assert ast.get_docstring(tree), f"{path.relative_to(REPO)} has no opening docstring"
    module = importlib.import_module(module_name(path))
    exported = getattr(module, "__all__", None)
    assert isinstance(exported, list), f"{path.relative_to(REPO)} has no __all__ list"
    missing = [name for name in exported if not hasattr(module, name)]
    assert missing == []


def test_the_stream_parser_opens_with_a_theory_of_operation() -> None:
    source = (REPO / "umprobe" / "sip" / "parser.py").read_text(encoding="utf-8")
    assert "# Theory of operation" in source.split("class StreamParser")[0]
