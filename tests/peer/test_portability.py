"""The echo peer must run on Windows next to the Exchange servers: no Linux-only calls in anything it runs.

What `umprobe peer` runs is its import closure, not just peer/ and media/: the `umprobe` console script
imports umprobe.cli, which imports every command module at the top, and the peer command then imports the
exporter (for `parse_listen`), logging, TLS and secret-file helpers inside its function. SCANNED is that
closure, found by following umprobe's own imports statically from two roots: umprobe.cli, module-level
imports only (what `import umprobe.cli` executes), and umprobe.commands.peer_cmd, imports at any depth
(function bodies included, since the peer command runs them); imports under `if TYPE_CHECKING:` are
skipped. A test checks the static closure against what a real import of the peer's path loads.

An AST scan, not a text search, so comments and docstrings that *mention* a name (to say why it is not used)
do not count. A platform-specific call is allowed only behind a guard; the scan cannot prove a guard, so it
simply bans the names listed here outright. Code that needs one of them goes elsewhere or gets a reviewed
exemption below.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

import umprobe

PACKAGE = Path(umprobe.__file__).parent


def module_path(name: str) -> Path | None:
    """The source file of umprobe module `name` (a package's __init__.py), or None if it is not one."""
    parts = name.split(".")
    if parts[0] != "umprobe":
        return None
    base = PACKAGE.joinpath(*parts[1:])
    if base.with_suffix(".py").is_file():
        return base.with_suffix(".py")
    if (base / "__init__.py").is_file():
        return base / "__init__.py"
    return None


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imported_modules(name: str, *, in_functions: bool) -> set[str]:
    """The umprobe modules that importing `name` (and, with `in_functions`, running its functions) loads,
    with every parent package."""
    path = module_path(name)
    assert path is not None, name
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child.test):
                for stmt in child.orelse:
                    visit_statement(stmt)
                continue
            visit_statement(child)

    def visit_statement(child: ast.AST) -> None:
        if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda) and not in_functions:
            return
        if isinstance(child, ast.Import):
            found.update(alias.name for alias in child.names)
        elif isinstance(child, ast.ImportFrom):
            base = child.module or ""
            if child.level:
                anchor = package.split(".")[: len(package.split(".")) - child.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in child.names)  # `from pkg import submodule`
        visit(child)

    visit(ast.parse(path.read_text(encoding="utf-8"), filename=str(path)))
    modules: set[str] = set()
    for dotted in found:
        parts = dotted.split(".")
        modules.update(
            ".".join(parts[:i]) for i in range(1, len(parts) + 1) if module_path(".".join(parts[:i]))
        )
    return modules


def import_closure(root: str, *, in_functions: bool) -> set[str]:
    seen: set[str] = set()
    todo = [root]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        todo.extend(imported_modules(name, in_functions=in_functions) - seen)
        # Importing a.b.c runs a/__init__.py and a/b/__init__.py first (cli.py loads its commands by name).
        parts = name.split(".")
        todo.extend(parent for i in range(1, len(parts)) if (parent := ".".join(parts[:i])) not in seen)
    return seen


PEER_CLOSURE = import_closure("umprobe.cli", in_functions=False) | import_closure(
    "umprobe.commands.peer_cmd", in_functions=True
)
SCANNED = sorted({path for name in PEER_CLOSURE if (path := module_path(name)) is not None})

# What a real run of the peer's code path imports: the console script's module, then what peer_command
# and the peer's serving function import when they run.
_REAL_IMPORT = """
import json, sys
import umprobe.cli
from umprobe.commands import peer_cmd
from umprobe.exporter import parse_listen
from umprobe.logs import LOGGER_NAME, configure_logging, log_event
from umprobe.net.errors import TLSConfigError
from umprobe.net.tls import make_server_context
from umprobe.peer.echo_peer import PeerConfig, SipListen, serve_echo_peer
from umprobe.peer.reflector import normalise_ip
print(json.dumps(sorted(m for m in sys.modules if m == "umprobe" or m.startswith("umprobe."))))
"""

# Modules that do not exist (or do nothing useful) on Windows.
BANNED_MODULES = frozenset({"fcntl", "resource", "pwd", "grp", "termios", "posix"})
# Attribute names that are Linux- or POSIX-only, whatever object they are read from.
BANNED_ATTRIBUTES = frozenset(
    {
        "SO_REUSEPORT",
        "IP_TRANSPARENT",
        "IP_RECVORIGDSTADDR",
        "IP_ORIGDSTADDR",
        "IPV6_TRANSPARENT",
        "SO_BINDTODEVICE",
        "getuid",
        "geteuid",
        "getgid",
        "getegid",
        "fork",
        "setuid",
        "setgid",
        "SIGHUP",
        "SIGUSR1",
        "SIGUSR2",
    }
)


def _violations(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] in BANNED_MODULES:
                    found.append(f"{path.name}:{node.lineno}: import {alias.name}")
        elif isinstance(node, ast.ImportFrom):
            module = (node.module or "").split(".")[0]
            if module in BANNED_MODULES:
                found.append(f"{path.name}:{node.lineno}: from {node.module} import ...")
            for alias in node.names:
                if alias.name in BANNED_ATTRIBUTES:
                    found.append(f"{path.name}:{node.lineno}: from {node.module} import {alias.name}")
        elif isinstance(node, ast.Attribute) and node.attr in BANNED_ATTRIBUTES:
            found.append(f"{path.name}:{node.lineno}: .{node.attr}")
        elif isinstance(node, ast.Name) and node.id in BANNED_ATTRIBUTES:
            found.append(f"{path.name}:{node.lineno}: {node.id}")
        elif isinstance(node, ast.Constant) and node.value in BANNED_ATTRIBUTES:
            # getattr(socket, "SO_REUSEPORT") is the same call spelled differently.
            found.append(f"{path.name}:{node.lineno}: {node.value!r}")
    return found


def test_the_scan_covers_the_peer() -> None:
    scanned = {p.relative_to(PACKAGE).as_posix() for p in SCANNED}
    assert {
        "cli.py",
        "commands/peer_cmd.py",
        "peer/reflector.py",
        "peer/echo_peer.py",
        "peer/sip_responder.py",
        "media/control.py",
        "exporter.py",
        "logs.py",
        "secretfile.py",
        "net/tls.py",
    } <= scanned
    # The daemon is not part of it (it is imported only inside `umprobe run`), and uses SIGHUP.
    assert "daemon.py" not in scanned


def test_the_static_closure_holds_what_a_real_import_loads() -> None:
    out = subprocess.run(
        [sys.executable, "-c", _REAL_IMPORT], capture_output=True, text=True, timeout=60, check=True
    )
    loaded = set(json.loads(out.stdout))
    assert loaded - PEER_CLOSURE == set()


def test_the_closure_follows_function_level_imports_only_where_they_run() -> None:
    top = imported_modules("umprobe.commands.peer_cmd", in_functions=False)
    deep = imported_modules("umprobe.commands.peer_cmd", in_functions=True)
    assert "umprobe.peer.echo_peer" not in top  # imported inside peer_command only
    assert {"umprobe.peer.echo_peer", "umprobe.exporter", "umprobe.peer"} <= deep


@pytest.mark.parametrize("path", SCANNED, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_no_linux_only_calls(path: Path) -> None:
    assert _violations(path) == []


@pytest.mark.parametrize(
    "source",
    [
        "import fcntl",
        "import resource as r",
        "from pwd import getpwnam",
        "import grp",
        "import os\nos.getuid()",
        "import os\nos.geteuid()",
        "import os\nos.fork()",
        "import socket\ns.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)",
        "from socket import IP_TRANSPARENT",
        "import socket\nsocket.IP_RECVORIGDSTADDR",
        "import signal\nsignal.signal(signal.SIGHUP, h)",
        "import signal\nsignal.SIGUSR1",
        "import socket\ngetattr(socket, 'SO_REUSEPORT')",
    ],
)
def test_the_scan_catches(source: str, tmp_path: Path) -> None:
    path = tmp_path / "sample.py"
    path.write_text(source + "\n", encoding="utf-8")
    assert _violations(path)


def test_the_scan_ignores_prose(tmp_path: Path) -> None:
    path = tmp_path / "sample.py"
    path.write_text('"""We never use SO_REUSEPORT or os.getuid here."""\n# nor fcntl\nx = 1\n')
    assert _violations(path) == []
