"""SIPp as misbehaving SIP servers over TCP: a delayed 200, a 503 with Retry-After, one that never answers,
and a plain fast 200.

Facts this relies on (SIPp 3.6.1 as packaged by Debian as sip-tester):
- No TLS in this build: a TLS front end is socat's job (tests/lab/socat.py).
- `-t t1` as a server accepts any number of sequential and concurrent TCP connections, one call per
  Call-ID; a client closing its connection mid-call does not disturb it (checked with 1,000 sequential
  probes and 300 abandoned never-answered ones). No `-m` (it would stop after that many calls) and no `-bg`
  (it would fork and we would lose the PID).
- `<pause/>` takes its length from `-d MS`; `<pause variable=...>` with `-set` fails in this version.
- `-timeout` is a global lifetime: SIPp exits with status 97 when it is reached. It is set long here, as a
  safety net only; a server that exited that way is restarted on the same port when next asked for, and
  any other exit counts as a crash that the session reports at teardown.
- `-trace_err` writes unexpected messages to `-error_file` (by default `<scenario>_<pid>_errors.log` in the
  working directory); the stats screen is printed to stdout only on exit when stdout is not a terminal.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from tests.lab.proc import LabProcess, require_binary

__all__ = ["SCENARIO_DIR", "SippServer", "SippServers", "SippSpec", "scenario_path"]

SCENARIO_DIR = Path(__file__).parent / "sipp"
GLOBAL_TIMEOUT_S = 3600
_TIMEOUT_EXIT_STATUS = 97


def scenario_path(name: str) -> Path:
    path = SCENARIO_DIR / f"{name}.xml"
    if not path.is_file():
        raise FileNotFoundError(path)
    return path


@dataclass(frozen=True, slots=True)
class SippSpec:
    name: str
    scenario: str
    delay_ms: int = 0


class SippServer:
    """One SIPp UAS on 127.0.0.1:`port` running `spec.scenario`."""

    def __init__(self, spec: SippSpec, *, port: int, log_dir: Path, host: str = "127.0.0.1") -> None:
        self.spec = spec
        self.host = host
        self.port = port
        self.crashes: list[str] = []
        self.restarts = 0
        binary = require_binary("sipp")
        argv = [
            binary,
            "-sf", str(scenario_path(spec.scenario)),
            "-t", "t1",
            "-i", host,
            "-p", str(port),
            "-d", str(spec.delay_ms),
            "-nostdin",
            "-trace_err",
            "-error_file", str(log_dir / f"sipp-{spec.name}-errors.log"),
            "-timeout", f"{GLOBAL_TIMEOUT_S}s",
        ]  # fmt: skip
        self.process = LabProcess(f"sipp-{spec.name}", argv, log_dir=log_dir, ready=[(host, port)])

    @property
    def address(self) -> tuple[str, int]:
        return (self.host, self.port)

    def start(self) -> SippServer:
        self.process.start()
        return self

    def stop(self) -> int | None:
        return self.process.stop()

    def _record_exit(self) -> None:
        """Remember an exit as a crash unless it was SIPp's global timeout running out."""
        rc = self.process.returncode
        lived = time.monotonic() - (self.process.started_at or 0.0)
        if not (rc == _TIMEOUT_EXIT_STATUS and lived >= GLOBAL_TIMEOUT_S - 5):
            self.crashes.append(f"exit status {rc} after {lived:.1f} s\n{self.process.describe()}")

    def ensure_running(self) -> None:
        """Restart a server that has exited (on the same port)."""
        if self.process.is_alive():
            return
        self._record_exit()
        self.restarts += 1
        self.process.restart()

    def problems(self) -> list[str]:
        """Crashes seen so far, including a death right now; for the session's teardown check."""
        if not self.process.is_alive():
            self._record_exit()
        return list(self.crashes)


class SippServers(Mapping[str, tuple[str, int]]):
    """name -> (host, port); looking a server up restarts it first if it has exited."""

    def __init__(self, servers: Mapping[str, SippServer]) -> None:
        self.servers = dict(servers)

    def __getitem__(self, name: str) -> tuple[str, int]:
        server = self.servers[name]
        server.ensure_running()
        return server.address

    def __iter__(self) -> Iterator[str]:
        return iter(self.servers)

    def __len__(self) -> int:
        return len(self.servers)
