"""One lab peer process: start, wait until it accepts TCP connections, stop, always reap.

Every peer runs in the foreground as our direct child, in its own session (so its whole process group can be
found and cleaned up), with stdout and stderr going to one log file in the session's lab directory. Start-up
polls a TCP connect to each address the peer should listen on until a bounded deadline; if the process exits
first, or the deadline passes, the error carries the log's tail. Stopping sends SIGTERM to the peer's own
PID, waits up to 5 s, then SIGKILLs it, and always reaps it. Anything left in its process group afterwards
(socat's per-connection children) is killed too.

When started from the main thread the child also gets PR_SET_PDEATHSIG=SIGTERM, so a pytest run that is
killed outright does not leave peers behind. (The death signal follows the *thread* that forked, which is
why it is only set from the main thread.)
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import resource
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO

__all__ = [
    "INSTALL_HINT",
    "LabError",
    "LabProcess",
    "LabStartError",
    "require_binary",
    "require_root",
]

INSTALL_HINT = "run scripts/install-test-peers (as root) to install the lab peers"

_PR_SET_PDEATHSIG = 1
_LIBC = ctypes.CDLL(None, use_errno=True)


class LabError(RuntimeError):
    """The lab could not provide a peer; the message says what to do."""


class LabStartError(LabError):
    def __init__(self, message: str, *, port_conflict: bool) -> None:
        super().__init__(message)
        self.port_conflict = port_conflict


def require_binary(name: str) -> str:
    path = shutil.which(name, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin")
    if path is None:
        raise LabError(f"lab peer binary {name!r} is not installed: {INSTALL_HINT}")
    return path


def require_root(what: str) -> None:
    if os.geteuid() != 0:
        raise LabError(f"{what} needs root (network namespaces and nftables); run the lab tests as root")


def _preexec(no_core: bool, pdeathsig: bool) -> None:  # runs in the child between fork and exec
    if no_core:
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    if pdeathsig:
        _LIBC.prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)


def _process_group_members(pgid: int) -> list[int]:
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        # pid (comm) state ppid pgrp ...; comm may contain spaces, so split after the last ')'.
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(entry))
    return members


class LabProcess:
    """A peer process owned by the test session."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        log_dir: Path,
        ready: Sequence[tuple[str, int]] = (),
        cwd: Path | None = None,
        no_core: bool = False,
        stop_children_first: bool = False,
        start_timeout: float = 15.0,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_dir / f"{name}.log"
        self.ready = list(ready)
        self.cwd = cwd or log_dir
        self.no_core = no_core
        self.stop_children_first = stop_children_first
        self.start_timeout = start_timeout
        self.started_at: float | None = None
        self.startup_seconds: float | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    # -- lifecycle -------------------------------------------------------------------------------
    def start(self) -> LabProcess:
        if self._proc is not None:
            raise RuntimeError(f"{self.name} already started")
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self._log.write(f"=== {time.strftime('%H:%M:%S')} start: {' '.join(self.argv)}\n".encode())
        self._log.flush()
        pdeathsig = threading.current_thread() is threading.main_thread()
        self.started_at = time.monotonic()
        self._proc = subprocess.Popen(
            self.argv,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=self.cwd,
            start_new_session=True,
            preexec_fn=lambda: _preexec(self.no_core, pdeathsig),
        )
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - self.started_at
        return self

    def _wait_ready(self) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + self.start_timeout
        pending = list(self.ready)
        while pending:
            rc = self._proc.poll()
            if rc is not None:
                raise self._start_error(f"{self.name} exited with status {rc} during start-up")
            host, port = pending[0]
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            with socket.socket(family, socket.SOCK_STREAM) as sock:
                sock.settimeout(0.25)
                try:
                    sock.connect((host, port))
                except OSError:
                    if time.monotonic() > deadline:
                        raise self._start_error(
                            f"{self.name} did not accept TCP on {host}:{port} within {self.start_timeout} s"
                        ) from None
                    time.sleep(0.05)
                    continue
            pending.pop(0)

    def _start_error(self, message: str) -> LabStartError:
        if self._log is not None:
            self._log.flush()
        text = self.log_text()
        conflict = "Address already in use" in text or "EADDRINUSE" in text
        return LabStartError(f"{message}\n{self.describe()}", port_conflict=conflict)

    def stop(self, grace: float = 5.0) -> int | None:
        """SIGTERM our own PID, SIGKILL after `grace` seconds, reap; returns the exit status."""
        proc = self._proc
        if proc is None:
            return None
        try:
            if proc.poll() is None:
                if self.stop_children_first:
                    # socat: let the parent reap its per-connection children before it goes itself.
                    for pid in _process_group_members(proc.pid):
                        if pid != proc.pid:
                            with contextlib.suppress(ProcessLookupError):
                                os.kill(pid, signal.SIGTERM)
                    end = time.monotonic() + 1.0
                    while time.monotonic() < end and set(_process_group_members(proc.pid)) - {proc.pid}:
                        time.sleep(0.02)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=grace)
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(proc.pid, signal.SIGKILL)
                    proc.wait()
            # Leftovers in the peer's own process group (its session is ours alone).
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
        finally:
            if self._log is not None:
                self._log.write(f"=== {time.strftime('%H:%M:%S')} exit status {proc.returncode}\n".encode())
                self._log.close()
                self._log = None
        return proc.returncode

    def restart(self) -> LabProcess:
        self.stop()
        self._proc = None
        return self.start()

    # -- state ---------------------------------------------------------------------------------
    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    @property
    def returncode(self) -> int | None:
        return None if self._proc is None else self._proc.poll()

    def is_alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def describe(self, lines: int = 40) -> str:
        tail = "\n".join(self.log_text().splitlines()[-lines:])
        state = "running" if self.is_alive() else f"exit status {self.returncode}"
        return f"--- {self.name} (pid {self.pid}, {state}) log {self.log_path}, last {lines} lines:\n{tail}"

    def __enter__(self) -> LabProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
