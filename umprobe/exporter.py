"""The daemon's HTTP face: /metrics, /probe, /-/healthy, /-/reload and a status page at /.

Theory of operation
-------------------
A small HTTP/1.1 server: trio does the I/O, h11 (sans-I/O) the protocol. `serve_exporter` binds the
listen address (a taken port is a one-line `ListenError` naming it), reports the bound addresses through
`task_status.started(...)` and serves until cancelled. One task per connection, in one nursery fed by an
accept loop per listener (`_accept_forever`: trio's `serve_listeners`, but when the process is out of file
descriptors it backs off to one retry a second and logs the shortage at most once a minute, instead of an
ERROR line every 0.1 s; waiting connections stay in the backlog and are served when descriptors free up);
each connection is a loop of read request -> route -> write response, with keep-alive as h11 allows it.
Server policy, per connection:

* at most `MAX_HEADER_BYTES` of request line and headers (h11 answers 431 beyond that) and
  `MAX_BODY_BYTES` of body (413);
* `idle_timeout` to wait for the first byte of a request (a keep-alive connection that goes quiet is
  closed silently), then `REQUEST_TIMEOUT` for the rest of it (408: no slow-drip requests), and
  `WRITE_TIMEOUT` to hand a response to a client that has stopped reading;
* at most `MAX_CONNECTIONS` at once; beyond that a connection gets a 503 line and is closed;
* a handler that raises becomes a 500 with one line (and a logged traceback); a connection that breaks is
  closed. Nothing a client does ends `serve_exporter`.

Endpoints:

* `GET /metrics`: the `UmprobeCollector` over the store plus prometheus_client's process collector, in
  the Prometheus text format 0.0.4.
* `GET /probe?target=HOST[:PORT]&module=NAME[&debug=true]`: one run now, blackbox_exporter style (see
  `probe_timeout` for the deadline), rendered by `umprobe.metrics.probe_page`; never
  recorded in the store. TARGET is parsed by `umprobe.targets.parse_target` (a `sip:`/`sips:` URI works);
  the port defaults to the module's port, then 5060 (tcp) / 5061 (tls). When the target, port and module
  match a configured probe, that probe's labels and listener name are used. The host must be allowed
  (`allow_reason`), else 403. A failed probe is still a 200 with `probe_success 0`, as in blackbox.
* `GET /-/healthy`: 200 "OK" while the server runs.
* `POST /-/reload`: awaits the `reload` callback: 200 "OK" when it returns True; 500 with the error line
  when it raises (the message of a `UserError`/`ConfigError`) or returns False.
* `GET /`: an HTML status page (every interpolated value escaped) of every probe's last result and the
  story of its last failure: transcript and TLS details, file paths but never file contents; then a
  section per RTP peer (`[[rtp]]`): its last run (cycle, result, reason, loss, RTT, jitter, ports by
  state), the block map of that run and the map of every block as last sampled (`render_map`, the same
  one-character-per-block map `umprobe rtp` prints), and its last failure. The secret file's path is
  shown; the secret never is.
"""

from __future__ import annotations

import errno
import html
import ipaddress
import logging
import math
import re
import urllib.parse
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from http import HTTPStatus
from typing import TypeVar

import h11
import trio
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import CollectorRegistry

from umprobe._version import __version__
from umprobe.config import Config, ModuleConfig, ProbeConfig, RtpProbeConfig, duration_text
from umprobe.errors import UserError
from umprobe.metrics import (
    CONTENT_TYPE,
    UmprobeCollector,
    describe_result,
    probe_page,
    render_metrics,
    write_metrics,
)
from umprobe.net.errors import TLSConfigError
from umprobe.policy import Verdict, evaluate_probe
from umprobe.probes.result import ProbeResult
from umprobe.probes.rtp_result import BLOCK_SYMBOLS, RtpResult, render_map
from umprobe.probes.sip_options import TLSContextCache
from umprobe.probes.sip_options import probe as sip_probe
from umprobe.profiles import get_profile
from umprobe.store import AddressStats, ResultStore
from umprobe.targets import TargetError, parse_target

__all__ = [
    "DEFAULT_SCRAPE_TIMEOUT",
    "IDLE_TIMEOUT",
    "MAX_BODY_BYTES",
    "MAX_CONNECTIONS",
    "MAX_HEADER_BYTES",
    "REQUEST_TIMEOUT",
    "SCRAPE_TIMEOUT_OFFSET",
    "WRITE_TIMEOUT",
    "ListenAddressError",
    "ListenError",
    "RunProbe",
    "allow_reason",
    "parse_listen",
    "probe_timeout",
    "serve_exporter",
]

_log = logging.getLogger(__name__)

#: `run_probe(probe, deadline)`: one run of `probe` with an absolute `trio.current_time()` deadline.
RunProbe = Callable[[ProbeConfig, float], Awaitable[Sequence[ProbeResult]]]

MAX_HEADER_BYTES = 16 * 1024
MAX_BODY_BYTES = 64 * 1024
MAX_CONNECTIONS = 256
IDLE_TIMEOUT = 60.0
REQUEST_TIMEOUT = 10.0
WRITE_TIMEOUT = 30.0
#: Seconds kept back from Prometheus's scrape timeout for the answer to travel (blackbox's default).
SCRAPE_TIMEOUT_OFFSET = 0.5
#: The scrape timeout assumed without an X-Prometheus-Scrape-Timeout-Seconds header (Prometheus's default).
DEFAULT_SCRAPE_TIMEOUT = 10.0
#: How long past its deadline a /probe run may take before it is cancelled and answered with a 500.
_PROBE_OVERRUN_GRACE = 1.0
_RECEIVE_CHUNK = 16384
#: After an error response: how long, and how many bytes, to drain before closing (see `_linger`).
_LINGER = 1.0
_LINGER_BYTES = 1024 * 1024
_DEFAULT_PORTS = {"tcp": 5060, "tls": 5061}
_TEXT = "text/plain; charset=utf-8"
_HTML = "text/html; charset=utf-8"


class ListenAddressError(UserError, ValueError):
    """A listen address that is not HOST:PORT, [IPv6]:PORT or :PORT; the message names the value."""


class ListenError(UserError):
    """The listen address is well formed but cannot be bound (in use, not an address of this host, not
    permitted); the message names the address and the system's reason. `umprobe run` exits 4 on it."""


# -- pure helpers ----------------------------------------------------------------------------------------


def parse_listen(text: str) -> tuple[str | None, int]:
    """`"HOST:PORT"`, `"[v6]:PORT"` or `":PORT"` -> (host or None for every interface, port)."""
    what = f"listen address {text!r}"
    if text.startswith("["):
        inner, sep, rest = text[1:].partition("]")
        if not sep:
            raise ListenAddressError(f"{what}: missing ']' after the IPv6 address")
        try:
            if ipaddress.ip_address(inner).version != 6:
                raise ValueError(inner)
        except ValueError:
            raise ListenAddressError(f"{what}: {inner!r} in brackets is not an IPv6 address") from None
        if not rest.startswith(":"):
            raise ListenAddressError(f"{what}: expected [IPv6]:PORT")
        host: str | None = inner
        port_text = rest[1:]
    else:
        host_text, sep, port_text = text.rpartition(":")
        if not sep:
            raise ListenAddressError(f"{what}: expected HOST:PORT, [IPv6]:PORT or :PORT")
        if ":" in host_text:
            raise ListenAddressError(f"{what}: an IPv6 address needs brackets, e.g. [::1]:9874")
        if host_text and not all(c.isalnum() or c in ".-_" for c in host_text):
            raise ListenAddressError(f"{what}: {host_text!r} is not a host name or IP address")
        host = host_text or None
    if not port_text.isdigit() or int(port_text) > 65535:
        raise ListenAddressError(f"{what}: port {port_text!r} is not a number from 0 to 65535")
    return host, int(port_text)


def probe_timeout(header: str | None, limit: float) -> float:
    """The time budget of a /probe run, in seconds.

    Prometheus sends its scrape timeout in `X-Prometheus-Scrape-Timeout-Seconds`; like blackbox_exporter we
    keep `SCRAPE_TIMEOUT_OFFSET` (0.5 s) of it back for the answer, but never more than half of it, so a
    very short scrape timeout still leaves a positive budget. Without the header, `DEFAULT_SCRAPE_TIMEOUT`.
    The budget never exceeds `limit`, the probe's own timeout (the module's, or a configured target's
    override): that is what the daemon gives every run of it, so /probe and /metrics judge a listener alike
    (blackbox caps at the module's timeout the same way). Raises ValueError on a header that is not a
    positive number.
    """
    if header is None or not header.strip():
        budget = DEFAULT_SCRAPE_TIMEOUT
    else:
        try:
            value = float(header)
        except ValueError:
            raise ValueError(f"X-Prometheus-Scrape-Timeout-Seconds {header!r} is not a number") from None
        if not math.isfinite(value) or value <= 0:
            raise ValueError(f"X-Prometheus-Scrape-Timeout-Seconds {header!r} is not a positive number")
        budget = max(value - SCRAPE_TIMEOUT_OFFSET, value / 2)
    return min(budget, limit) if limit > 0 else budget


def _norm_host(host: str) -> str:
    bare = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        return str(ipaddress.ip_address(bare))
    except ValueError:
        return bare.rstrip(".").lower()


@dataclass(frozen=True, slots=True)
class _ConfigIndex:
    """What /probe looks up in a config on every request, built once per config object (not once per
    request: with 10,000 probes a scan that parses every host costs tens of milliseconds)."""

    hosts: frozenset[str]  # normalised hosts and targets of every configured probe
    probes: dict[tuple[str, int, str], ProbeConfig]  # (module, port, normalised host) -> the first probe
    # What /probe worked out for this config before (Prometheus asks for the same few targets again and
    # again), at most _REMEMBERED of each: (target, module) -> its probe; host -> `allow_reason`'s answer.
    adhoc: dict[tuple[str, str], ProbeConfig] = field(default_factory=dict)
    allowed: dict[str, str | None] = field(default_factory=dict)


_REMEMBERED = 1024
_K = TypeVar("_K")
_V = TypeVar("_V")


def _remember(cache: dict[_K, _V], key: _K, value: _V) -> _V:
    if len(cache) >= _REMEMBERED:
        cache.clear()
    cache[key] = value
    return value


_INDEX_CACHE: list[tuple[Config, _ConfigIndex]] = []  # the last config indexed (a reload replaces it)


def _index(config: Config) -> _ConfigIndex:
    if _INDEX_CACHE and _INDEX_CACHE[0][0] is config:
        return _INDEX_CACHE[0][1]
    hosts: set[str] = set()
    probes: dict[tuple[str, int, str], ProbeConfig] = {}
    for probe in config.probes:
        host = _norm_host(probe.spec.host)
        hosts.update((host, _norm_host(probe.target)))
        probes.setdefault((probe.module, probe.spec.port, host), probe)
    index = _ConfigIndex(frozenset(hosts), probes)
    _INDEX_CACHE[:] = [(config, index)]
    return index


def allow_reason(host: str, config: Config) -> str | None:
    """None if /probe may probe `host`, else the one-line reason why not.

    Allowed: every host of a configured probe, plus what `exporter.probe_allow` lists: `"*"` (anything),
    CIDRs (match IP-literal targets only: a name is not resolved to be checked), host names (exact, case
    does not matter) and `*.suffix` patterns (names under the suffix).
    """
    allowed = _index(config).allowed
    if host in allowed:
        return allowed[host]
    return _remember(allowed, host, _allow_reason(host, config))


def _allow_reason(host: str, config: Config) -> str | None:
    host = _norm_host(host)
    if host in _index(config).hosts:
        return None
    try:
        ip: ipaddress.IPv4Address | ipaddress.IPv6Address | None = ipaddress.ip_address(host)
    except ValueError:
        ip = None
    for entry in config.exporter.probe_allow:
        entry = entry.strip()
        if entry == "*":
            return None
        if ip is not None and ("/" in entry or _is_ip(entry)):
            try:
                if ip in ipaddress.ip_network(entry, strict=False):
                    return None
            except ValueError:
                continue
        elif ip is None:
            name = entry.rstrip(".").lower()
            if name.startswith("*.") and host.endswith(name[1:]):
                return None
            if host == name:
                return None
    return (
        f"target host {host!r} is not allowed: it is not a configured target "
        "and exporter.probe_allow does not match it"
    )


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _phrase(status: int) -> bytes:
    try:
        return HTTPStatus(status).phrase.encode("ascii")
    except ValueError:
        return b""


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


# -- requests and responses ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]  # lower-case name -> value (the last one)
    body: bytes
    # Read by `_simple_request`, not h11: answer it with `_response_bytes`, not through h11.
    simple: bool = False


@dataclass(frozen=True, slots=True)
class _Response:
    status: int
    body: bytes
    content_type: str = _TEXT
    headers: tuple[tuple[str, str], ...] = ()
    close: bool = False
    # A body written piece by piece while it is made (`body` is then empty): sent chunked, no length.
    stream: Callable[[Callable[[bytes], Awaitable[None]]], Awaitable[None]] | None = None


def _text(
    status: int, line: str, *, headers: tuple[tuple[str, str], ...] = (), close: bool = False
) -> _Response:
    return _Response(status, (_one_line(line) + "\n").encode("utf-8"), _TEXT, headers, close)


class _BadRequest(Exception):
    """A request the client got wrong: answered 400 with the message."""


class _Timeout(Exception):
    """The client was too slow (reading or writing): the connection is closed."""


# -- the application -------------------------------------------------------------------------------------


@dataclass(eq=False)
class _App:
    store: ResultStore
    get_config: Callable[[], Config]
    reload: Callable[[], Awaitable[bool]]
    run_probe: RunProbe | None
    vantage: str | None
    idle_timeout: float
    registry: CollectorRegistry = field(init=False)
    active: int = 0
    _reload_lock: trio.Lock = field(default_factory=trio.Lock)
    _contexts: TLSContextCache = field(default_factory=TLSContextCache)
    _contexts_for: object = None

    def __post_init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(UmprobeCollector(self.store, vantage=self.vantage))
        ProcessCollector(registry=self.registry)

    # -- connections -----------------------------------------------------------------------------------

    async def serve_connection(self, stream: trio.SocketStream) -> None:
        try:
            if self.active >= MAX_CONNECTIONS:
                conn = h11.Connection(h11.SERVER)
                await self._refuse(conn, stream)
                return
            self.active += 1
            try:
                await self._connection_loop(stream)
            finally:
                self.active -= 1
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError, h11.ProtocolError, _Timeout):
            pass
        except Exception:
            _log.exception("exporter: connection handler failed")
        finally:
            await trio.aclose_forcefully(stream)

    async def _refuse(self, conn: h11.Connection, stream: trio.SocketStream) -> None:
        # Read nothing: answer a 503 straight away and close.
        data = conn.send(
            h11.Response(
                status_code=503,
                headers=[("content-type", _TEXT), ("content-length", "21"), ("connection", "close")],
                reason=_phrase(503),
            )
        )
        with trio.move_on_after(_LINGER):
            await stream.send_all((data or b"") + b"too many connections\n")
        await _linger(stream)

    async def _connection_loop(self, stream: trio.SocketStream) -> None:
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEADER_BYTES)
        while True:
            request = await self._read_request(conn, stream)
            if request is None:
                return
            if isinstance(request, _Response):  # the client got the protocol wrong or was too slow
                if conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
                    await self._send(conn, stream, request, head=False)
                    await _linger(stream)
                return
            response = await self._dispatch(request)
            if request.simple:  # h11 has not seen it and stays idle, waiting for the next request
                await self._write(stream, _response_bytes(response))
                if response.close:
                    return
                continue
            await self._send(conn, stream, response, head=request.method == "HEAD")
            if response.close or conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                return
            conn.start_next_cycle()

    async def _read_request(
        self, conn: h11.Connection, stream: trio.SocketStream
    ) -> _Request | _Response | None:
        deadline = trio.current_time() + self.idle_timeout
        started = False
        head: h11.Request | None = None
        body = bytearray()
        while True:
            try:
                event = conn.next_event()
            except h11.RemoteProtocolError as exc:
                return _text(exc.error_status_hint, f"bad request: {exc}", close=True)
            if event is h11.NEED_DATA:
                if conn.they_are_waiting_for_100_continue:
                    await self._write(
                        stream, conn.send(h11.InformationalResponse(status_code=100, headers=[]))
                    )
                with trio.move_on_at(deadline) as scope:
                    data = await stream.receive_some(_RECEIVE_CHUNK)
                if scope.cancelled_caught:
                    if started:
                        return _text(408, "request not complete in time", close=True)
                    return None  # an idle keep-alive connection: close quietly
                if data and not started:
                    started = True
                    deadline = min(deadline, trio.current_time() + REQUEST_TIMEOUT)
                    simple = _simple_request(data, conn)
                    if simple is not None:
                        return simple
                conn.receive_data(data)
                continue
            if isinstance(event, h11.ConnectionClosed):
                return None
            if isinstance(event, h11.Request):
                # h11 caps an *incomplete* head; one that arrived complete in a single read is measured here
                size = (
                    len(event.method) + len(event.target) + sum(len(n) + len(v) + 4 for n, v in event.headers)
                )
                if size > MAX_HEADER_BYTES:
                    return _text(431, f"request head larger than {MAX_HEADER_BYTES} bytes", close=True)
                started = True
                head = event
            elif isinstance(event, h11.Data):
                body += event.data
                if len(body) > MAX_BODY_BYTES:
                    return _text(413, f"request body larger than {MAX_BODY_BYTES} bytes", close=True)
            elif isinstance(event, h11.EndOfMessage):
                assert head is not None
                return _make_request(head, bytes(body))

    async def _write(self, stream: trio.SocketStream, data: bytes | None) -> None:
        if not data:
            return
        with trio.move_on_after(WRITE_TIMEOUT) as scope:
            await stream.send_all(data)
        if scope.cancelled_caught:
            raise _Timeout

    async def _send(
        self, conn: h11.Connection, stream: trio.SocketStream, response: _Response, *, head: bool
    ) -> None:
        headers = _response_headers(response)
        data = conn.send(
            h11.Response(status_code=response.status, headers=headers, reason=_phrase(response.status))
        )
        data = data or b""
        if response.body and not head:
            data += conn.send(h11.Data(data=response.body)) or b""
        if response.stream is not None and not head:
            await self._write(stream, data)
            data = b""

            async def send_piece(piece: bytes) -> None:
                await self._write(stream, conn.send(h11.Data(data=piece)))

            await response.stream(send_piece)
        data += conn.send(h11.EndOfMessage()) or b""
        await self._write(stream, data)

    # -- routing ---------------------------------------------------------------------------------------

    async def _dispatch(self, request: _Request) -> _Response:
        try:
            return await self._route(request)
        except _BadRequest as exc:
            return _text(400, str(exc))
        except Exception as exc:
            _log.exception("exporter: %s %s failed", request.method, request.path)
            return _text(500, f"internal error: {type(exc).__name__}: {exc}")

    async def _route(self, request: _Request) -> _Response:
        path, method = request.path, request.method
        if path == "/-/reload":
            if method != "POST":
                return _text(405, "use POST to reload", headers=(("allow", "POST"),))
            return await self._reload()
        routes = {
            "/": self._status_page,
            "/metrics": self._metrics,
            "/-/healthy": self._healthy,
            "/probe": self._probe,
        }
        handler = routes.get(path)
        if handler is None:
            return _text(404, f"not found: {path}")
        if method not in ("GET", "HEAD"):
            return _text(405, f"{method} is not allowed here; use GET", headers=(("allow", "GET, HEAD"),))
        return await handler(request)

    async def _healthy(self, request: _Request) -> _Response:
        return _Response(200, b"OK", _TEXT)

    async def _metrics(self, request: _Request) -> _Response:
        if request.method == "HEAD":  # the length of the page, without it
            return _Response(200, render_metrics(self.registry), CONTENT_TYPE)
        # At 10,000 listeners the page is ~60 MB: made and sent piece by piece, letting the scheduler run.
        return _Response(200, b"", CONTENT_TYPE, stream=partial(write_metrics, self.registry))

    async def _reload(self) -> _Response:
        async with self._reload_lock:
            try:
                ok = await self.reload()
            except Exception as exc:
                if not isinstance(exc, UserError):
                    _log.exception("exporter: reload failed")
                return _text(500, f"reload failed: {exc}")
        if not ok:
            why = self.store.reload_status().last_error or "see the daemon log"
            return _text(500, f"reload failed: {why}")
        return _Response(200, b"OK", _TEXT)

    # -- /probe ----------------------------------------------------------------------------------------

    async def _probe(self, request: _Request) -> _Response:
        target = _param(request, "target")
        if not target:
            return _text(400, "target parameter is missing")
        module_name = _param(request, "module")
        if not module_name:
            return _text(400, "module parameter is missing")
        debug_text = _param(request, "debug") or "false"
        if debug_text.lower() not in ("true", "false", "1", "0"):
            return _text(400, f"debug={debug_text!r}: expected true or false")
        debug = debug_text.lower() in ("true", "1")
        config = self.get_config()
        module = config.modules.get(module_name)
        if module is None:
            return _text(400, f"unknown module {module_name!r}")
        try:
            probe = _probe_config(target, module, config)
        except (TargetError, _BadRequest) as exc:
            return _text(400, str(exc))
        why_not = allow_reason(probe.spec.host, config)
        if why_not is not None:
            return _text(403, why_not)
        try:
            timeout = probe_timeout(request.headers.get("x-prometheus-scrape-timeout-seconds"), probe.timeout)
        except ValueError as exc:
            return _text(400, str(exc))
        run = self.run_probe or self._default_run_probe(config)
        start = trio.current_time()
        deadline = start + timeout
        results: Sequence[ProbeResult] | None = None
        try:
            with trio.move_on_at(deadline + _PROBE_OVERRUN_GRACE):
                results = await run(probe, deadline)
        except TLSConfigError as exc:
            return _text(500, f"module {module_name}: {exc}")
        duration = trio.current_time() - start
        if results is None:
            return _text(500, f"the probe overran its {timeout:g} s deadline and was cancelled")
        body, content_type = probe_page(
            probe, results, duration=duration, debug=debug, timeout=timeout, vantage=self.vantage
        )
        return _Response(200, body, content_type)

    def _default_run_probe(self, config: Config) -> RunProbe:
        if self._contexts_for is not config:  # a reload may have replaced certificate files: read them again
            self._contexts.clear()
            self._contexts_for = config
        contexts = self._contexts

        async def run(probe: ProbeConfig, deadline: float) -> Sequence[ProbeResult]:
            return await sip_probe(probe.spec, deadline=deadline, contexts=contexts)

        return run

    # -- the status page -------------------------------------------------------------------------------

    async def _status_page(self, request: _Request) -> _Response:
        return _Response(
            200,
            _render_status(self.store, self.get_config).encode("utf-8"),
            _HTML,
            (("content-security-policy", "default-src 'none'; style-src 'unsafe-inline'"),),
        )


async def _linger(stream: trio.SocketStream) -> None:
    """Close our side, then read and drop what the client still sends, briefly: closing a socket with unread
    data makes the kernel send a reset, which can destroy the error response before the client reads it."""
    with trio.move_on_after(_LINGER):
        await stream.send_eof()
        drained = 0
        while drained < _LINGER_BYTES:
            chunk = await stream.receive_some(_RECEIVE_CHUNK)
            if not chunk:
                break
            drained += len(chunk)


def _make_request(head: h11.Request, body: bytes) -> _Request:
    return _request(head.method, head.target, head.headers, body)


def _request(
    method: bytes, target: bytes, headers: Iterable[tuple[bytes, bytes]], body: bytes, *, simple: bool = False
) -> _Request:
    parts = urllib.parse.urlsplit(target.decode("latin-1"))
    query = urllib.parse.parse_qs(parts.query, keep_blank_values=True)
    names = {name.decode("latin-1").lower(): value.decode("latin-1") for name, value in headers}
    return _Request(method.decode("latin-1").upper(), parts.path or "/", query, names, body, simple)


# The /probe request Prometheus sends, whole in one read, is read without h11 (h11's parsing and writing
# cost about a tenth of a TCP probe's CPU): `GET /probe?... HTTP/1.1`, one Host header, no body and no
# header that changes the exchange (framing, Connection, Expect, Upgrade), every line in the plain form
# below, and nothing after it. Anything else goes to h11, which then sees the bytes as if this did not exist.
_SIMPLE_HEAD = re.compile(
    rb"GET (/probe(?:\?[\x21-\x7e]*)?) HTTP/1\.1\r\n"
    rb"((?:[!#$%&'*+\-.^_`|~0-9A-Za-z]+: [\x21-\x7e](?:[\x20-\x7e]*[\x21-\x7e])?\r\n)*)\r\n"
)
_NOT_SIMPLE = frozenset({b"content-length", b"transfer-encoding", b"connection", b"expect", b"upgrade"})


def _simple_request(data: bytes, conn: h11.Connection) -> _Request | None:
    """`data` as a `_Request` if it is exactly one simple /probe request (above) and h11 is between
    requests with nothing buffered; else None (h11 reads it)."""
    if len(data) > MAX_HEADER_BYTES or conn.our_state is not h11.IDLE or conn.their_state is not h11.IDLE:
        return None
    if conn.trailing_data != (b"", False):
        return None
    if data in _SIMPLE_SEEN:  # Prometheus sends the same request for a target at every scrape
        return _SIMPLE_SEEN[data]
    request = _read_simple(data)
    if len(data) <= _SIMPLE_SEEN_SIZE:
        if len(_SIMPLE_SEEN) >= _SIMPLE_SEEN_KEPT:
            _SIMPLE_SEEN.clear()
        _SIMPLE_SEEN[data] = request
    return request


#: `_read_simple`'s answers by request bytes (requests up to _SIMPLE_SEEN_SIZE bytes, at most
#: _SIMPLE_SEEN_KEPT of them); its requests are never changed, so they can be handed out again.
_SIMPLE_SEEN: dict[bytes, _Request | None] = {}
_SIMPLE_SEEN_SIZE = 2048
_SIMPLE_SEEN_KEPT = 256


def _read_simple(data: bytes) -> _Request | None:
    match = _SIMPLE_HEAD.fullmatch(data)
    if match is None:
        return None
    headers: list[tuple[bytes, bytes]] = []
    hosts = 0
    for line in match[2].split(b"\r\n")[:-1]:
        name, _, value = line.partition(b": ")
        name = name.lower()
        if name in _NOT_SIMPLE:
            return None
        hosts += name == b"host"
        headers.append((name, value))
    if hosts != 1:
        return None
    return _request(b"GET", match[1], headers, b"", simple=True)


def _response_headers(response: _Response) -> list[tuple[str, str]]:
    headers = [
        ("content-type", response.content_type),
        *([("content-length", str(len(response.body)))] if response.stream is None else []),
        ("server", f"umprobe/{__version__}"),
        ("x-content-type-options", "nosniff"),
        ("cache-control", "no-store"),
        *response.headers,
    ]
    if response.close:
        headers.append(("connection", "close"))
    return headers


def _response_bytes(response: _Response) -> bytes:
    """What h11 writes for `response` to a simple request (a GET with keep-alive, no body): the status
    line, the headers as `_send` gives them and the body, framed by its Content-Length."""
    if response.stream is not None:
        raise AssertionError("a simple request is never answered with a streamed body")
    key = (response.status, response.content_type, response.headers, response.close)
    frame = _FRAMES.get(key)
    if frame is None:  # the head around the Content-Length value, made once per kind of response
        lines = [f"{name}: {value}\r\n".encode("ascii") for name, value in _response_headers(response)]
        at = next(i for i, line in enumerate(lines) if line.startswith(b"content-length: "))
        status = b"HTTP/1.1 %d %s\r\n" % (response.status, _phrase(response.status))
        frame = (b"".join([status, *lines[:at], b"content-length: "]), b"".join([b"\r\n", *lines[at + 1 :]]))
        if len(_FRAMES) >= _SIMPLE_SEEN_KEPT:
            _FRAMES.clear()
        _FRAMES[key] = frame
    return b"".join([frame[0], b"%d" % len(response.body), frame[1], b"\r\n", response.body])


_FRAMES: dict[tuple[int, str, tuple[tuple[str, str], ...], bool], tuple[bytes, bytes]] = {}


def _param(request: _Request, name: str) -> str | None:
    values = request.query.get(name)
    if not values:
        return None
    if len(values) > 1:
        raise _BadRequest(f"parameter {name!r} is given {len(values)} times")
    return values[0]


def _probe_config(target: str, module: ModuleConfig, config: Config) -> ProbeConfig:
    """The probe /probe runs: the configured one if target, port and module match, else an ad-hoc one."""
    adhoc = _index(config).adhoc
    probe = adhoc.get((target, module.name))
    if probe is None:
        probe = _remember(adhoc, (target, module.name), _make_probe_config(target, module, config))
    return probe


def _make_probe_config(target: str, module: ModuleConfig, config: Config) -> ProbeConfig:
    parsed = parse_target(target)
    if parsed.transport is not None and parsed.transport != module.transport:
        raise _BadRequest(
            f"target {target!r} asks for transport {parsed.transport} but module {module.name!r} "
            f"uses {module.transport}"
        )
    port = parsed.port or module.port or _DEFAULT_PORTS[module.transport]
    given = parsed.port is not None or module.port is not None  # else an RFC 3263 module asks NAPTR/SRV
    configured = _index(config).probes.get((module.name, port, _norm_host(parsed.host)))
    if configured is not None and (module.resolution == "a" or configured.spec.port_given == given):
        return configured
    spec = module.spec_for(
        parsed.host, port, uri_scheme="sips" if parsed.scheme == "sips" else "sip", port_given=given
    )
    return ProbeConfig(
        id=f"{parsed.host}|{spec.listener}|{spec.transport}|{port}|{module.name}",
        name=f"{_hostport(parsed.host, port)}/{spec.transport}",
        target=parsed.host,
        module=module.name,
        spec=spec,
        interval=module.interval,
        timeout=module.timeout,
        labels=(),
        required=True,
        group=None,
    )


# -- the status page -------------------------------------------------------------------------------------

_STYLE = """
body { font-family: sans-serif; margin: 1.5em; }
table { border-collapse: collapse; }
th, td { border: 1px solid #ccc; padding: 0.2em 0.5em; text-align: left; vertical-align: top; }
.ok { color: #060; } .fail { color: #a00; } .none { color: #777; }
pre { background: #f6f6f6; padding: 0.5em; white-space: pre-wrap; }
"""


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _when(result: ProbeResult) -> str:
    if result.started_at is None:
        return "-"
    return result.started_at.astimezone(UTC).isoformat(timespec="seconds")


def _render_status(store: ResultStore, get_config: Callable[[], Config]) -> str:
    try:
        source = get_config().source
    except Exception as exc:  # the status page must render even if the config is unavailable
        source = f"(unavailable: {type(exc).__name__})"
    reload = store.reload_status()
    loaded = (
        datetime.fromtimestamp(reload.last_success_at, UTC).isoformat(timespec="seconds")
        if reload.last_success_at is not None
        else "never"
    )
    probes = store.probes()
    out = [
        "<!DOCTYPE html>",
        '<html><head><meta charset="utf-8"><title>umprobe</title>',
        f"<style>{_STYLE}</style></head><body>",
        f"<h1>umprobe {_e(__version__)}</h1>",
        "<p>",
        f"configuration: {_e(source)}; last reload {'successful' if reload.successful else 'FAILED'};",
        f" last successful load: {_e(loaded)}; probes: {len(probes)}; runs in flight: {store.in_flight}",
        "</p>",
        '<p><a href="/metrics">metrics</a> &middot; <a href="/-/healthy">health</a></p>',
        "<table><tr><th>probe</th><th>module</th><th>listener</th><th>address</th><th>result</th>"
        "<th>state (thresholds)</th>"
        "<th>phase</th><th>SIP status</th><th>total</th><th>when (UTC)</th><th>detail</th></tr>",
    ]
    failures: list[tuple[ProbeConfig, ProbeResult]] = []
    for probe in probes:
        results = store.latest(probe.id)
        failures += [(probe, r) for r in store.last_failure(probe.id)]
        cells_probe = (
            f"<td>{_e(probe.name)}</td><td>{_e(probe.module)}</td><td>{_e(probe.spec.listener)}</td>"
        )
        if not results:
            out.append(f'<tr>{cells_probe}<td colspan="8" class="none">not run yet</td></tr>')
            continue
        stats = {(s.address, s.port): s for s in store.address_stats(probe.id)}
        for r in results:
            verdict = '<td class="ok">ok</td>' if r.success else f'<td class="fail">{_e(r.reason.value)}</td>'
            total = "-" if r.timings.total is None else f"{r.timings.total * 1000:.1f} ms"
            out.append(
                f"<tr>{cells_probe}<td>{_e(_address_cell(r))}</td>{verdict}"
                f"{_threshold_cell(probe, stats.get((r.address, r.port)))}"
                f"<td>{_e(r.phase.value if r.phase else '')}</td>"
                f"<td>{_e(r.status_code if r.status_code is not None else '-')}</td>"
                f"<td>{_e(total)}</td><td>{_e(_when(r))}</td><td>{_e(r.detail)}</td></tr>"
            )
    out.append("</table>")
    out += _policy_section(store, probes)
    out += _inbound_section(store)
    out.append("<h2>Last failure of each probe</h2>")
    if not failures:
        out.append('<p class="none">none yet</p>')
    for probe, r in failures:
        summary = f"{probe.name} ({probe.module}) {r.address or '-'}: {r.reason.value} at {_when(r)}"
        out.append(f"<details><summary>{_e(summary)}</summary><pre>")
        out.append(_e("\n".join(describe_result(r))))
        out.append("</pre></details>")
    rtp = store.rtp_probes()
    if rtp:
        out.append("<h2>RTP peers</h2>")
        legend = ", ".join(f"{symbol} {meaning}" for symbol, meaning in BLOCK_SYMBOLS.items())
        out.append(f"<p>block map, one character per block of the range: {_e(legend)}</p>")
    for entry in rtp:
        out += _rtp_section(store, entry)
    out.append("</body></html>")
    return "\n".join(out) + "\n"


def _address_cell(result: ProbeResult) -> str:
    """The address of a result; for RFC 3263 resolution also its port and the step that found it."""
    if result.step is None:
        return result.address or "-"
    return f"{_hostport(result.address, result.port)} ({result.step})"


_POLICY_STATE = {True: ("ok", "compliant"), False: ("fail", "NOT compliant"), None: ("none", "not judged")}


def _threshold_cell(probe: ProbeConfig, stats: AddressStats | None) -> str:
    """The up/down state of one listener by its module's thresholds (umprobe.updown), with its counts."""
    t = probe.thresholds
    if stats is None:
        return '<td class="none">-</td>'
    css = {"up": "ok", "down": "fail"}.get(stats.state, "none")
    text = (
        f"{stats.state}; in a row: {stats.consecutive_successes} ok, {stats.consecutive_failures} failed;"
        f" transitions: {stats.down_transitions} down, {stats.up_transitions} up;"
        f" thresholds: down after {t.failures_before_down}, up after {t.successes_before_up}"
    )
    return f'<td class="{css}">{_e(text)}</td>'


def _policy_section(store: ResultStore, probes: Sequence[ProbeConfig]) -> list[str]:
    """Probes of a profile with a policy: compliant or not, the failed (and not yet known) rules and why.
    Nothing at all when no probe has one, so an Exchange-only page is as it was."""
    rows: list[str] = []
    for probe in probes:
        policy = get_profile(probe.profile).policy if probe.profile is not None else None
        if policy is None:
            continue
        for r in store.latest(probe.id):
            report = evaluate_probe(policy, probe.spec, r)
            css, text = _POLICY_STATE[report.compliant]
            why = [
                f"{rule.rule} ({rule.verdict.value}): {rule.detail}"
                for rule in report.results
                if rule.verdict in (Verdict.FAIL, Verdict.UNKNOWN)
            ]
            rows.append(
                f"<tr><td>{_e(probe.name)}</td><td>{_e(probe.profile)}</td><td>{_e(r.address or '-')}</td>"
                f'<td class="{css}">{_e(text)}</td><td>{_e(", ".join(report.failed) or "-")}</td>'
                f"<td>{'<br>'.join(_e(line) for line in why) or '-'}</td></tr>"
            )
    if not rows:
        return []
    return [
        "<h2>Profile policy</h2>",
        "<table><tr><th>probe</th><th>profile</th><th>address</th><th>policy</th><th>failed rules</th>"
        "<th>why</th></tr>",
        *rows,
        "</table>",
    ]


_INBOUND_CSS = {"active": "ok", "waiting": "none", "at_risk": "fail", "demoted": "fail"}


def _inbound_section(store: ResultStore) -> list[str]:
    """Inbound OPTIONS ([[listen]]): per calling identity, its state in the demotion view, the silence
    since its last good exchange, interval, counts and detail. Nothing when there is no listener."""
    out: list[str] = []
    for view in store.inbound_views():
        if not out:
            out.append("<h2>Inbound OPTIONS</h2>")
        other = sum(count for _, count in view.other)
        out.append(
            f"<p>listen {_e(view.listen)}: at_risk after {view.at_risk_after:g} s, demoted after"
            f" {view.demoted_after:g} s of silence; {len(view.identities)} identities"
            f" (at most {view.max_identities} not expected); evicted {view.evicted}"
            f" (their OPTIONS: {other})</p>"
        )
        out.append(
            "<table><tr><th>identity</th><th>expected</th><th>state</th><th>since last good</th>"
            "<th>interval</th><th>last seen (UTC)</th><th>OPTIONS</th><th>source</th><th>From host</th>"
            "<th>Contact host</th></tr>"
        )
        for i in view.identities:
            seen = (
                "-"
                if i.last_seen is None
                else datetime.fromtimestamp(i.last_seen, UTC).isoformat("T", "seconds")
            )
            answers = ", ".join(f"{answer}: {count}" for answer, count in i.answers if count) or "0"
            out.append(
                f"<tr><td>{_e(i.identity)}</td><td>{'yes' if i.expected else 'no'}</td>"
                f'<td class="{_INBOUND_CSS[i.state]}">{_e(i.state)}</td><td>{i.silence:.1f} s</td>'
                f"<td>{'-' if i.interval is None else f'{i.interval:.2f} s'}</td><td>{_e(seen)}</td>"
                f"<td>{_e(answers)}</td><td>{_e(i.source or '-')}</td><td>{_e(i.from_host or '-')}</td>"
                f"<td>{_e(i.contact_host or '-')}</td></tr>"
            )
        out.append("</table>")
    return out


def _pct(ratio: float | None) -> str:
    return "-" if ratio is None else f"{ratio * 100:.2f}%"


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.2f} ms"


def _rtp_when(result: RtpResult) -> str:
    if result.started_at is None:
        return "-"
    return result.started_at.astimezone(UTC).isoformat(timespec="seconds")


def _rtp_section(store: ResultStore, entry: RtpProbeConfig) -> list[str]:
    """One RTP peer on the status page: settings, last run, the two block maps, the last failure."""
    spec = entry.spec
    lo, hi = spec.rtp_range
    if spec.mode == "plain-echo":
        how = f"plain UDP echo on {spec.host}, ports {', '.join(map(str, spec.ports))} (UNAUTHENTICATED)"
    else:
        channel = "TLS" if spec.tls is not None else "TCP"
        how = f"echo peer {_hostport(spec.host, spec.port)} ({channel} control, secret {entry.secret_file})"
    sweep = f"{entry.cycles_per_sweep} runs of {entry.interval:g} s = {duration_text(entry.sweep_seconds)}"
    out = [
        f"<h3>{_e(entry.name)}</h3>",
        f"<p>{_e(how)}; range {lo}-{hi}; full sweep {_e(sweep)}</p>",
    ]
    latest = store.rtp_latest(entry.id)
    if latest is None:
        out.append('<p class="none">not run yet</p>')
        return out
    t = latest.totals
    verdict = (
        '<td class="ok">ok</td>' if latest.success else f'<td class="fail">{_e(latest.reason.value)}</td>'
    )
    counts = ", ".join(f"{n} {state}" for state, n in t.state_counts.items() if n) or "none"
    loss = (
        f"forward {_pct(t.loss_forward)}, return {_pct(t.loss_return)}"
        if latest.authenticated
        else f"round trip {_pct(t.loss_roundtrip)} (direction unknown)"
    )
    out += [
        "<table><tr><th>when (UTC)</th><th>cycle</th><th>result</th><th>ports</th><th>loss</th>"
        "<th>RTT p50 / max</th><th>jitter forward / return</th><th>detail</th></tr>",
        f"<tr><td>{_e(_rtp_when(latest))}</td><td>{latest.cycle} of {latest.cycles_per_sweep}</td>{verdict}"
        f"<td>{_e(counts)}</td><td>{_e(loss)}</td><td>{_e(_ms(t.rtt_p50))} / {_e(_ms(t.rtt_max))}</td>"
        f"<td>{_e(_ms(t.jitter_forward))} / {_e(_ms(t.jitter_return))}</td><td>{_e(latest.detail)}</td></tr>",
        "</table>",
    ]
    if latest.blocks:
        out.append("<pre>")
        out.append(_e("last run:\n" + "\n".join(render_map(latest.blocks))))
        out.append(
            _e("every block as last sampled:\n" + "\n".join(render_map(store.rtp_known_blocks(entry.id))))
        )
        out.append("</pre>")
    failed = store.rtp_last_failure(entry.id)
    if failed is not None:
        summary = f"last failure: {failed.reason.value} at {_rtp_when(failed)}"
        out.append(f"<details><summary>{_e(summary)}</summary><pre>{_e(failed.detail)}</pre></details>")
    return out


# -- the server ------------------------------------------------------------------------------------------


async def serve_exporter(
    listen: str,
    store: ResultStore,
    *,
    get_config: Callable[[], Config],
    reload: Callable[[], Awaitable[bool]],
    run_probe: RunProbe | None = None,
    vantage: str | None = None,
    idle_timeout: float = IDLE_TIMEOUT,
    task_status: trio.TaskStatus[tuple[tuple[str, int], ...]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the exporter on `listen` until cancelled.

    `task_status.started()` gets the bound (host, port) pairs (one per address family for `":PORT"`; with
    port 0 the ports are the ones the system picked). `run_probe` replaces the SIP probe of /probe (tests);
    `vantage` adds a `vantage` label to every per-probe series. Raises `ListenAddressError` (a `UserError`
    and a `ValueError`) for a malformed `listen`, and `ListenError` (a `UserError`) naming the address when
    it cannot be bound.
    """
    host, port = parse_listen(listen)
    try:
        listeners = await trio.open_tcp_listeners(port, host=host)
    except OSError as exc:
        raise ListenError(f"exporter: cannot listen on {listen}: {exc.strerror or exc}") from exc
    app = _App(store, get_config, reload, run_probe, vantage, idle_timeout)
    bound = tuple(_sockname(listener) for listener in listeners)
    _log.info("exporter listening on %s", ", ".join(_hostport(h, p) for h, p in bound))
    task_status.started(bound)
    async with trio.open_nursery() as nursery:
        for listener in listeners:
            nursery.start_soon(_accept_forever, listener, app.serve_connection, nursery)


#: accept() errors that mean "this process is short of something", not "this listener is broken".
_ACCEPT_SHORTAGE = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
_ACCEPT_RETRY_MAX = 1.0
_ACCEPT_LOG_EVERY = 60.0


async def _accept_forever(
    listener: trio.SocketListener,
    handler: Callable[[trio.SocketStream], Awaitable[None]],
    nursery: trio.Nursery,
) -> None:
    """trio.serve_listeners, with a quieter answer to a descriptor shortage: trio logs an ERROR and retries
    every 0.1 s (ten lines a second for as long as it lasts); here the retries back off to one a second
    and the shortage is logged at most once a minute. A connection waiting meanwhile stays in the listen
    backlog and is served when a descriptor frees up. (The daemon's `ResourceAlarm` says when it is over.)"""
    delay = 0.0
    logged_at = -math.inf
    where = _hostport(*_sockname(listener))
    async with listener:  # closed when cancelled, as serve_listeners does
        while True:
            try:
                stream = await listener.accept()
            except OSError as exc:
                if exc.errno not in _ACCEPT_SHORTAGE:
                    raise
                if trio.current_time() - logged_at >= _ACCEPT_LOG_EVERY:
                    logged_at = trio.current_time()
                    _log.error(
                        "exporter: cannot accept connections on %s: %s (%s); they wait until it passes",
                        where,
                        exc.strerror,
                        errno.errorcode.get(exc.errno or 0, "?"),
                    )
                delay = min(max(delay * 2, 0.1), _ACCEPT_RETRY_MAX)
                await trio.sleep(delay)
                continue
            delay = 0.0
            nursery.start_soon(handler, stream)


def _sockname(listener: trio.SocketListener) -> tuple[str, int]:
    name = listener.socket.getsockname()
    return str(name[0]), int(name[1])
