"""The echo peer must run on Windows next to the Exchange servers: no Linux-only calls in peer/ or media/.

An AST scan, not a text search, so comments and docstrings that *mention* a name (to say why it is not used)
do not count. A platform-specific call is allowed only behind a guard; the scan cannot prove a guard, so it
simply bans the names listed here outright. Code that needs one of them goes elsewhere or gets a reviewed
exemption below.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import umprobe

PACKAGE = Path(umprobe.__file__).parent
SCANNED = sorted([*PACKAGE.glob("peer/*.py"), *PACKAGE.glob("media/*.py")])

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
    names = {p.name for p in SCANNED}
    assert {"reflector.py", "echo_peer.py", "sip_responder.py"} <= names


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
