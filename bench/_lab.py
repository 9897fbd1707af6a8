"""Launchers and a load generator the benchmarks share (stable API; other bench modules may import it).

* `build_bench_pki(dir)`: a lab CA with ECDSA and RSA server certificates AND ECDSA and RSA client
  certificates (tests/lab/pki.py has only an ECDSA client), for mutual TLS with one key type end to end.
* `start_kamailio(listeners, workdir, pki)`: tests.lab.kamailio's Kamailio (tcp_children=1: LAB.md), with
  `"good"` = the ECDSA server certificate and `"rsa"` = the RSA one; retried on a port someone took.
* `Blackbox`: prometheus-blackbox-exporter with a generated config (JSON is YAML) on a free port.
* `UmprobeDaemon`: `umprobe run -c CFG --listen 127.0.0.1:PORT` as a subprocess, ready when /-/healthy is 200.
* `sip_options_text(...)`: one whole SIP OPTIONS request, e.g. for blackbox's `query_response`.
* `http_get(...)`, `scrape_sum(text, metric)`: fetch a page; add up a metric's samples.
* `http_load(...)`: the same asyncio HTTP/1.1 keep-alive load generator for every prober: `concurrency`
  connections each with one request in flight, for `seconds`; counts `probe_success 1` answers.

Every peer is a `tests.lab.proc.LabProcess`: our direct child in its own session, log in the workdir,
stopped by SIGTERM to its own PID (SIGKILL after 5 s) and always reaped.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import secrets
import sys
import time
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self, TypeVar

from bench._common import which
from tests.lab.kamailio import CertPair, KamailioInstance, Listener
from tests.lab.ports import allocate_port
from tests.lab.proc import LabProcess, LabStartError, require_binary
from umprobe.devcerts import DevCA

__all__ = [
    "REPO",
    "SERVER_NAMES",
    "BenchPKI",
    "Blackbox",
    "LoadResult",
    "UmprobeDaemon",
    "build_bench_pki",
    "http_get",
    "http_load",
    "scrape_sum",
    "sip_options_text",
    "start_kamailio",
    "tool_version",
    "umprobe_argv",
]

REPO = Path(__file__).resolve().parent.parent
SERVER_NAMES = ("localhost", "127.0.0.1", "::1", "um.lab.test")
CLIENT_NAME = "probe.lab.test"
_T = TypeVar("_T")


def umprobe_argv() -> list[str]:
    """The umprobe command of this interpreter's environment (the venv's script, else `python -c`)."""
    script = Path(sys.executable).parent / "umprobe"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "import sys; from umprobe.cli import main; sys.exit(main())"]


# -- certificates ------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BenchPKI:
    directory: Path
    ca_file: Path
    server_ec: CertPair
    server_rsa: CertPair
    client_ec: CertPair
    client_rsa: CertPair

    @property
    def server_certs(self) -> dict[str, CertPair]:
        """Kamailio's certificate choices (tests.lab.kamailio.TlsPolicy.server_cert): good = ECDSA."""
        return {"good": self.server_ec, "rsa": self.server_rsa}

    def client(self, key_type: str) -> CertPair:
        return self.client_rsa if key_type == "rsa" else self.client_ec


def build_bench_pki(directory: Path) -> BenchPKI:
    directory.mkdir(parents=True, exist_ok=True)
    ca = DevCA.create("umprobe bench CA")
    return BenchPKI(
        directory=directory,
        ca_file=ca.write_ca(directory, "bench-ca"),
        server_ec=CertPair(*ca.issue(SERVER_NAMES).write(directory, "server-ec")),
        server_rsa=CertPair(*ca.issue(SERVER_NAMES, key_type="rsa").write(directory, "server-rsa")),
        client_ec=CertPair(*ca.issue([CLIENT_NAME]).write(directory, "client-ec")),
        client_rsa=CertPair(*ca.issue([CLIENT_NAME], key_type="rsa").write(directory, "client-rsa")),
    )


# -- peers -------------------------------------------------------------------------------------------------


def _with_fresh_ports(start: Callable[[], _T]) -> _T:
    """`start()`, which picks its ports; on a port someone else took meanwhile, again (3 tries in all)."""
    for attempt in range(3):
        try:
            return start()
        except LabStartError as exc:
            if exc.port_conflict and attempt < 2:
                continue
            raise
    raise AssertionError("unreachable")


def start_kamailio(
    make_listeners: Callable[[], Sequence[Listener]], workdir: Path, pki: BenchPKI, name: str = "kamailio"
) -> KamailioInstance:
    """Start Kamailio on `make_listeners()`; on a port conflict call it again for fresh ports (3 tries)."""
    return _with_fresh_ports(
        lambda: KamailioInstance(
            make_listeners(), workdir=workdir, server_certs=pki.server_certs, ca_file=pki.ca_file, name=name
        ).start()
    )


class _Service:
    """A peer in a LabProcess of its own, on `port` of 127.0.0.1: `pid`, `stop()`, `with` around `start()`."""

    def __init__(self, workdir: Path, name: str) -> None:
        self.workdir = workdir
        self.name = name
        self.port = 0
        self.process: LabProcess | None = None

    def start(self) -> Self:
        raise NotImplementedError

    @property
    def pid(self) -> int:
        assert self.process is not None and self.process.pid is not None
        return self.process.pid

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class Blackbox(_Service):
    """prometheus-blackbox-exporter with `modules` (a dict, written as JSON, which is YAML) on a free port."""

    BINARY = "prometheus-blackbox-exporter"

    def __init__(self, modules: Mapping[str, Any], workdir: Path, name: str = "blackbox") -> None:
        super().__init__(workdir, name)
        self.config_path = workdir / f"{name}.yml"
        self.config_path.write_text(json.dumps({"modules": modules}, indent=2))

    def start(self) -> Self:
        binary = require_binary(self.BINARY)

        def attempt() -> LabProcess:
            self.port = allocate_port()
            self.process = LabProcess(
                self.name,
                [
                    binary,
                    f"--config.file={self.config_path}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                    "--log.level=error",
                ],
                log_dir=self.workdir,
                ready=[("127.0.0.1", self.port)],
            )
            self.process.start()
            return self.process

        _with_fresh_ports(attempt)
        return self


class UmprobeDaemon(_Service):
    """`umprobe run -c CONFIG --listen 127.0.0.1:PORT` with `config_text` written to the workdir."""

    def __init__(self, config_text: str, workdir: Path, name: str = "umprobe") -> None:
        super().__init__(workdir, name)
        self.config_path = workdir / f"{name}.toml"
        self.config_path.write_text(config_text)

    def start(self, timeout: float = 30.0) -> Self:
        def attempt() -> LabProcess:
            self.port = allocate_port()
            self.process = LabProcess(
                self.name,
                [*umprobe_argv(), "run", "-c", str(self.config_path), "--listen", f"127.0.0.1:{self.port}"],
                log_dir=self.workdir,
                ready=[("127.0.0.1", self.port)],
                cwd=REPO,
                start_timeout=timeout,
            )
            self.process.start()
            return self.process

        process = _with_fresh_ports(attempt)
        status, _ = http_get(self.port, "/-/healthy", timeout=timeout)
        if status != 200:
            self.stop()
            raise RuntimeError(f"{self.name}: /-/healthy answered {status}\n{process.describe()}")
        return self

    def metrics(self) -> str:
        status, body = http_get(self.port, "/metrics", timeout=30.0)
        if status != 200:
            raise RuntimeError(f"{self.name}: /metrics answered {status}")
        return body.decode("utf-8")


def tool_version(argv: Sequence[str]) -> str:
    """The version a tool prints (the first x.y[.z] in its output), "not installed", or "unknown"."""
    import subprocess

    path = which(argv[0])
    if path is None:
        return "not installed"
    try:
        out = subprocess.run([path, *argv[1:]], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    match = re.search(r"(\d+\.\d+(?:\.\d+)*)", out.stdout + out.stderr)
    return match.group(1) if match else "unknown"


# -- SIP ---------------------------------------------------------------------------------------------------


def sip_options_text(host: str, port: int, transport: str, *, final_crlf: bool = True) -> str:
    """A whole SIP OPTIONS request. With final_crlf=False the last "\\n" is left off (blackbox's `send`
    appends one: the bytes on the wire are then exactly the request)."""
    literal = f"[{host}]" if ":" in host else host
    branch = "z9hG4bK" + secrets.token_hex(8)
    via_transport = "TLS" if transport == "tls" else "TCP"
    scheme = "sip"
    text = (
        f"OPTIONS {scheme}:{literal}:{port};transport={transport} SIP/2.0\r\n"
        f"Via: SIP/2.0/{via_transport} 127.0.0.1:9;branch={branch};rport\r\n"
        "Max-Forwards: 70\r\n"
        f"From: <sip:bench@127.0.0.1>;tag={secrets.token_hex(4)}\r\n"
        f"To: <{scheme}:{literal}:{port}>\r\n"
        f"Call-ID: {secrets.token_hex(8)}@127.0.0.1\r\n"
        "CSeq: 1 OPTIONS\r\n"
        "Accept: application/sdp\r\n"
        "Content-Length: 0\r\n"
        "\r\n"
    )
    return text if final_crlf else text[:-1]


# -- HTTP --------------------------------------------------------------------------------------------------


def http_get(port: int, path: str, *, host: str = "127.0.0.1", timeout: float = 10.0) -> tuple[int, bytes]:
    """GET http://host:port/path; (status, body); HTTP error statuses are returned, not raised."""
    url = f"http://{host}:{port}{path}"
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response:  # loopback only
                return int(response.status), bytes(response.read())
        except urllib.error.HTTPError as exc:
            return int(exc.code), exc.read()
        except (TimeoutError, ConnectionError, urllib.error.URLError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})? (\S+)", re.MULTILINE)


def scrape_sum(text: str, metric: str, label_filter: str | None = None) -> float:
    """Sum of every sample of `metric` in a Prometheus text page (optionally only samples whose label
    block contains `label_filter`, e.g. 'reason="ok"')."""
    total = 0.0
    for match in _SAMPLE.finditer(text):
        if match.group(1) != metric:
            continue
        if label_filter is not None and label_filter not in (match.group(2) or ""):
            continue
        total += float(match.group(3))
    return total


_SUCCESS = re.compile(rb"^probe_success(?:\{[^}]*\})? (\S+)", re.MULTILINE)


@dataclass(slots=True)
class LoadResult:
    """What `http_load` saw in its timed window (after the warm-up)."""

    requests: int = 0  # answers received
    success: int = 0  # answers with probe_success 1
    failed: int = 0  # answers with probe_success 0, or no probe_success, or not HTTP 200
    seconds: float = 0.0  # wall time of the window
    first_failure: str = ""
    statuses: dict[int, int] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.requests / self.seconds if self.seconds > 0 else 0.0


async def _worker(
    host: str,
    port: int,
    paths: Sequence[str],
    offset: int,
    state: dict[str, float],
    result: LoadResult,
    read_timeout: float,
) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    heads = [f"GET {p} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode() for p in paths]
    i = offset
    try:
        while state["stop"] == 0.0:
            writer.write(heads[i % len(heads)])
            i += 1
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), read_timeout)
            status = int(head.split(b" ", 2)[1])
            length = 0
            chunked = False
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                name = name.strip().lower()
                if name == b"content-length":
                    length = int(value.strip())
                elif name == b"transfer-encoding" and b"chunked" in value.lower():
                    chunked = True
            if chunked:
                body = bytearray()
                while True:
                    size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
                    chunk = await reader.readexactly(size + 2)
                    if size == 0:
                        break
                    body += chunk[:-2]
            else:
                body = bytearray(await reader.readexactly(length))
            if state["counting"] == 0.0:
                continue
            result.requests += 1
            result.statuses[status] = result.statuses.get(status, 0) + 1
            match = _SUCCESS.search(body)
            if status == 200 and match is not None and float(match.group(1)) == 1.0:
                result.success += 1
            else:
                result.failed += 1
                if not result.first_failure:
                    result.first_failure = f"HTTP {status}: {bytes(body[:300])!r}"
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await writer.wait_closed()


async def _load(
    host: str,
    port: int,
    paths: Sequence[str],
    concurrency: int,
    seconds: float,
    warmup: float,
    read_timeout: float,
    on_window: Callable[[bool], None] | None,
) -> LoadResult:
    result = LoadResult()
    state = {"stop": 0.0, "counting": 0.0}
    tasks = [
        asyncio.create_task(_worker(host, port, paths, k, state, result, read_timeout))
        for k in range(concurrency)
    ]
    try:
        await asyncio.sleep(warmup)
        _check(tasks)
        if on_window is not None:
            on_window(True)
        state["counting"] = 1.0
        t0 = time.perf_counter()
        await asyncio.sleep(seconds)
        state["counting"] = 0.0
        result.seconds = time.perf_counter() - t0
        if on_window is not None:
            on_window(False)
        _check(tasks)
        state["stop"] = 1.0
        await asyncio.wait_for(asyncio.gather(*tasks), read_timeout + 1.0)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return result


def _check(tasks: Sequence[asyncio.Task[None]]) -> None:
    for task in tasks:
        if task.done() and task.exception() is not None:
            raise RuntimeError(f"load generator connection failed: {task.exception()!r}")


def http_load(
    port: int,
    paths: Sequence[str],
    *,
    concurrency: int = 4,
    seconds: float = 3.0,
    warmup: float = 0.5,
    host: str = "127.0.0.1",
    timeout: float = 10.0,
    on_window: Callable[[bool], None] | None = None,
) -> LoadResult:
    """Keep `concurrency` requests in flight (one per keep-alive connection, paths taken in turn) against
    http://host:port for `warmup` + `seconds`; count only answers that arrive inside the timed window.

    `on_window(True)` is called as the window opens and `on_window(False)` as it closes (from the event
    loop, so a caller can read a process's CPU counter at exactly those moments)."""

    return asyncio.run(_load(host, port, paths, concurrency, seconds, warmup, timeout, on_window))
