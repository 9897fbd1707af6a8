"""What the tests that run umprobe as a subprocess share: the config writer, the launcher, and peers.

* `probes_toml` / `write_config`: a probes.toml of loopback SIP targets, written atomically (a reload
  never reads half a file).
* `ChildProcess`: a subprocess whose stdout and stderr lines reader threads collect as they come;
  `UmprobeProcess`: `umprobe run` (or another command) through `umprobe.cli.main`, so exit codes and error
  lines are the real ones, with its JSON log records, its HTTP endpoints and its /metrics.
* `starter`: the body of a fixture that starts such processes and kills each by its PID at teardown.
* `BackgroundService`, `sip_responders`, `echo_peer`: umprobe's own peers on a trio loop of their own.

Only 127.0.0.1 is used here; every wait is bounded.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from functools import partial
from pathlib import Path
from typing import IO, Any, TypeVar

import trio
from OpenSSL import SSL
from prometheus_client.parser import text_string_to_metric_families

from umprobe.peer.echo_peer import PeerConfig, serve_echo_peer
from umprobe.peer.sip_responder import serve_sip_responder

# `umprobe.cli.main`, the real entry point (one-line errors, exit codes).
RUNNER = "import sys\nfrom umprobe.cli import main\nmain(sys.argv[1:])\n"

WAIT = 15.0  # upper bound of any single wait for the daemon, in seconds

Metrics = dict[str, dict[tuple[tuple[str, str], ...], float]]  # name -> {sorted label items: value}


# -- the config ------------------------------------------------------------------------------------------


def target_toml(port: int, *, host: str = "127.0.0.1", module: str = "sip_tcp") -> str:
    """One [[targets]] table."""
    return f'[[targets]]\nhost = "{host}"\nmodule = "{module}"\nport = {port}\n\n'


def probes_toml(
    ports: Iterable[int],
    *,
    host: str = "127.0.0.1",
    module: str = "sip_tcp",
    interval: float = 0.5,
    timeout: float = 0.4,
    defaults: str = "",
    extra: str = "",
) -> str:
    """probes.toml text: [defaults] (IPv4 only, then the `defaults` lines), the `extra` tables, then one
    target of `host` per port."""
    text = (
        f'[defaults]\ninterval = {interval}\ntimeout = {timeout}\nfamilies = ["ipv4"]\n{defaults}\n{extra}\n'
    )
    return text + "".join(target_toml(port, host=host, module=module) for port in ports)


def mtls_module(ca_file: str) -> str:
    """[modules.mtls]: mutual TLS with client.crt and client.key next to the config."""
    return (
        f'[modules.mtls]\ntransport = "tls"\nca_file = "{ca_file}"\ncert_file = "client.crt"\n'
        'key_file = "client.key"\n\n'
    )


def write_atomically(path: Path, text: str) -> Path:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
    return path


def write_config(path: Path, ports: Iterable[int], **kwargs: Any) -> Path:
    """`probes_toml(ports, **kwargs)` (by default a plain-TCP probe of 127.0.0.1 per port, every 0.5 s),
    replaced atomically."""
    return write_atomically(path, probes_toml(ports, **kwargs))


# -- /metrics ---------------------------------------------------------------------------------------------


def parse_metrics(text: str) -> Metrics:
    out: Metrics = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return out


def by_probe(metrics: Metrics, name: str, **match: str) -> dict[str, float]:
    """{probe label: value} of one per-listener metric, among the series whose other labels `match`."""
    found = {}
    for labels, value in metrics.get(name, {}).items():
        label = dict(labels)
        if all(label.get(k) == v for k, v in match.items()):
            found[label["probe"]] = value
    return found


# -- subprocesses -----------------------------------------------------------------------------------------


class ChildProcess:
    """A subprocess; reader threads collect its stdout lines into `out` and its stderr lines into `lines`."""

    kill_timeout = 10.0  # seconds to wait for the process and the readers at `kill()`

    def __init__(self, argv: Sequence[str], *, preexec: Callable[[], None] | None = None) -> None:
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            preexec_fn=preexec,
        )
        self.lines: list[str] = []
        self.out: list[str] = []
        self._cond = threading.Condition()
        self._readers = [
            threading.Thread(target=self._read, args=(self.proc.stderr, self.lines), daemon=True),
            threading.Thread(target=self._read, args=(self.proc.stdout, self.out), daemon=True),
        ]
        for reader in self._readers:
            reader.start()

    def _read(self, stream: IO[str], into: list[str]) -> None:
        for line in stream:
            with self._cond:
                into.append(line.rstrip("\n"))
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def log(self) -> str:
        """stderr so far."""
        with self._cond:
            return "\n".join(self.lines)

    def output(self) -> str:
        """stdout so far."""
        with self._cond:
            return "\n".join(self.out)

    def join_readers(self, timeout: float) -> None:
        for reader in self._readers:
            reader.join(timeout=timeout)

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=self.kill_timeout)
        self.join_readers(self.kill_timeout)
        for stream in (self.proc.stderr, self.proc.stdout):
            if stream is not None:
                stream.close()


class UmprobeProcess(ChildProcess):
    """One `umprobe run` subprocess (or `command`), optionally behind a `prefix` such as `ip netns exec NS`
    and with a `preexec` hook such as a lower RLIMIT_NOFILE; its log is stderr."""

    def __init__(
        self,
        args: Sequence[str],
        *,
        prefix: Sequence[str] = (),
        preexec: Callable[[], None] | None = None,
        command: str = "run",
    ) -> None:
        super().__init__([*prefix, sys.executable, "-c", RUNNER, command, *args], preexec=preexec)
        self.base_url = ""

    def records(self) -> list[dict[str, Any]]:
        """The JSON log records so far (lines that are not JSON are skipped)."""
        out = []
        with self._cond:
            lines = list(self.lines)
        for line in lines:
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict):
                out.append(record)
        return out

    def wait_for_record(
        self, match: Callable[[dict[str, Any]], bool], timeout: float = WAIT
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            for record in self.records():
                if match(record):
                    return record
            left = deadline - time.monotonic()
            if left <= 0 or self.proc.poll() is not None:
                raise AssertionError(
                    f"no such log record; rc={self.proc.poll()}; log:\n" + self.log()[-6000:]
                )
            with self._cond:
                self._cond.wait(min(left, 0.2))

    def wait_running(self) -> str:
        record = self.wait_for_record(lambda r: r.get("msg") == "umprobe running")
        self.base_url = "http://" + str(record["listen"]).split()[0]
        return self.base_url

    def request(self, path: str, *, method: str = "GET", timeout: float = 5.0) -> tuple[int, str]:
        data = b"" if method == "POST" else None
        request = urllib.request.Request(self.base_url + path, data=data, method=method)
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as exc:
            with exc:
                return exc.code, exc.read().decode()

    def get(self, path: str) -> tuple[int, str]:
        return self.request(path)

    def post(self, path: str) -> tuple[int, str]:
        return self.request(path, method="POST", timeout=10.0)

    def metrics(self) -> Metrics:
        status, text = self.request("/metrics")
        assert status == 200, text
        return parse_metrics(text)

    def by_probe(self, name: str, **match: str) -> dict[str, float]:
        return by_probe(self.metrics(), name, **match)

    def scalar(self, name: str) -> float:
        return self.metrics()[name][()]

    def wait_until(self, what: str, check: Callable[[], bool], timeout: float = WAIT) -> None:
        deadline = time.monotonic() + timeout
        while not check():
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise AssertionError(
                    f"timed out waiting for {what}; rc={self.proc.poll()}; log:\n{self.log()[-6000:]}"
                )
            time.sleep(0.1)

    def threads(self) -> int:
        return len(os.listdir(f"/proc/{self.proc.pid}/task"))

    def fds(self) -> int:
        return len(os.listdir(f"/proc/{self.proc.pid}/fd"))


_P = TypeVar("_P", bound=ChildProcess)


def starter(factory: Callable[..., _P]) -> Iterator[Callable[..., _P]]:
    """The body of a fixture (`yield from starter(UmprobeProcess)`): `start(*args, **kwargs)` makes
    `factory(list(args), **kwargs)`; every process started is killed by its PID at teardown."""
    started: list[_P] = []

    def start(*args: str, **kwargs: Any) -> _P:
        process = factory(list(args), **kwargs)
        started.append(process)
        return process

    try:
        yield start
    finally:
        for process in started:
            process.kill()


# -- peers on a trio loop of their own --------------------------------------------------------------------


class BackgroundService:
    """A trio service (`serve(task_status=...)` style) in its own trio loop on a background thread.

    `start()` returns what the service passed to `task_status.started()`; `stop()` cancels it and checks the
    thread did not die early. The daemon under test is a subprocess, so its peers need a loop of their own.
    """

    def __init__(self, name: str, serve: Callable[..., Awaitable[object]]) -> None:
        self.name = name
        self._serve = serve
        self._thread: threading.Thread | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self._stop: trio.Event | None = None
        self._error: BaseException | None = None

    def start(self) -> Any:
        ready: queue.Queue[Any] = queue.Queue()

        async def main() -> None:
            self._token = trio.lowlevel.current_trio_token()
            self._stop = trio.Event()
            async with trio.open_nursery() as nursery:
                ready.put(await nursery.start(self._serve))
                await self._stop.wait()
                nursery.cancel_scope.cancel()

        def thread_main() -> None:
            try:
                trio.run(main)
            except BaseException as exc:  # pragma: no cover - reported to start() or stop()
                self._error = exc
                ready.put(exc)

        self._thread = threading.Thread(target=thread_main, name=self.name, daemon=True)
        self._thread.start()
        got = ready.get(timeout=10)
        if isinstance(got, BaseException):
            raise got
        return got

    def stop(self) -> None:
        if self._thread is None:
            return
        if not self._thread.is_alive():
            raise AssertionError(f"the {self._thread.name} thread ended early: {self._error!r}")
        if self._token is not None and self._stop is not None:
            trio.from_thread.run_sync(self._stop.set, trio_token=self._token)
        self._thread.join(timeout=10)
        assert not self._thread.is_alive()


def sip_responders(count: int, *, tls_context: SSL.Context | None = None) -> BackgroundService:
    """umprobe's SIP OPTIONS responder on `count` loopback ports; `start()` returns the ports."""

    async def serve(task_status: trio.TaskStatus[list[int]]) -> None:
        listeners: list[trio.SocketListener] = []
        for _ in range(count):
            listeners += await trio.open_tcp_listeners(0, host="127.0.0.1")
        async with trio.open_nursery() as nursery:
            await nursery.start(partial(serve_sip_responder, listeners, tls_context=tls_context))
            task_status.started([listener.socket.getsockname()[1] for listener in listeners])
            await trio.sleep_forever()

    return BackgroundService("sip-responders", serve)


def echo_peer(config: PeerConfig) -> BackgroundService:
    """umprobe's echo peer, as `umprobe peer` runs it; `start()` returns its control port."""

    async def serve(task_status: trio.TaskStatus[int]) -> None:
        async with trio.open_nursery() as nursery:
            running = await nursery.start(partial(serve_echo_peer, config))
            task_status.started(running.control[0][1])
            await trio.sleep_forever()

    return BackgroundService("echo-peer", serve)
