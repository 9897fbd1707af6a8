"""The daemon's HTTP face: /metrics, /probe, /-/healthy, /-/reload and a status page at /.

Theory of operation
-------------------
A small HTTP/1.1 server: trio does the I/O, h11 (sans-I/O) the protocol. `serve_exporter` binds the
listen address (a taken port is a one-line `UserError` naming it), reports the bound addresses through
`task_status.started(...)` and serves until cancelled. One task per connection, in trio's
`serve_listeners` nursery; each connection is a loop of read request -> route -> write response, with
keep-alive as h11 allows it. Server policy, per connection:

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
  `probe_timeout` for the deadline), rendered from a fresh registry by `umprobe.metrics.probe_page`; never
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

import html
import ipaddress
import logging
import math
import urllib.parse
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http import HTTPStatus

import h11
import trio
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import CollectorRegistry

from umprobe._version import __version__
from umprobe.config import Config, ModuleConfig, ProbeConfig, RtpProbeConfig, duration_text
from umprobe.errors import UserError
from umprobe.metrics import CONTENT_TYPE, UmprobeCollector, describe_result, probe_page, render_metrics
from umprobe.net.errors import TLSConfigError
from umprobe.probes.result import ProbeResult
from umprobe.probes.rtp_result import BLOCK_SYMBOLS, RtpResult, render_map
from umprobe.probes.sip_options import TLSContextCache
from umprobe.probes.sip_options import probe as sip_probe
from umprobe.store import ResultStore
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


def allow_reason(host: str, config: Config) -> str | None:
    """None if /probe may probe `host`, else the one-line reason why not.

    Allowed: every host of a configured probe, plus what `exporter.probe_allow` lists: `"*"` (anything),
    CIDRs (match IP-literal targets only: a name is not resolved to be checked), host names (exact, case
    does not matter) and `*.suffix` patterns (names under the suffix).
    """
    host = _norm_host(host)
    if any(_norm_host(p.spec.host) == host or _norm_host(p.target) == host for p in config.probes):
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


@dataclass(frozen=True, slots=True)
class _Response:
    status: int
    body: bytes
    content_type: str = _TEXT
    headers: tuple[tuple[str, str], ...] = ()
    close: bool = False


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
        headers = [
            ("content-type", response.content_type),
            ("content-length", str(len(response.body))),
            ("server", f"umprobe/{__version__}"),
            ("x-content-type-options", "nosniff"),
            ("cache-control", "no-store"),
            *response.headers,
        ]
        if response.close:
            headers.append(("connection", "close"))
        data = conn.send(
            h11.Response(status_code=response.status, headers=headers, reason=_phrase(response.status))
        )
        data = data or b""
        if response.body and not head:
            data += conn.send(h11.Data(data=response.body)) or b""
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
        return _Response(200, render_metrics(self.registry), CONTENT_TYPE)

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
    target = head.target.decode("latin-1")
    parts = urllib.parse.urlsplit(target)
    query = urllib.parse.parse_qs(parts.query, keep_blank_values=True)
    headers = {name.decode("latin-1").lower(): value.decode("latin-1") for name, value in head.headers}
    return _Request(head.method.decode("latin-1").upper(), parts.path or "/", query, headers, body)


def _param(request: _Request, name: str) -> str | None:
    values = request.query.get(name)
    if not values:
        return None
    if len(values) > 1:
        raise _BadRequest(f"parameter {name!r} is given {len(values)} times")
    return values[0]


def _probe_config(target: str, module: ModuleConfig, config: Config) -> ProbeConfig:
    """The probe /probe runs: the configured one if target, port and module match, else an ad-hoc one."""
    parsed = parse_target(target)
    if parsed.transport is not None and parsed.transport != module.transport:
        raise _BadRequest(
            f"target {target!r} asks for transport {parsed.transport} but module {module.name!r} "
            f"uses {module.transport}"
        )
    port = parsed.port or module.port or _DEFAULT_PORTS[module.transport]
    host = _norm_host(parsed.host)
    for probe in config.probes:
        if probe.module == module.name and probe.spec.port == port and _norm_host(probe.spec.host) == host:
            return probe
    spec = module.spec_for(parsed.host, port, uri_scheme="sips" if parsed.scheme == "sips" else "sip")
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
            out.append(f'<tr>{cells_probe}<td colspan="7" class="none">not run yet</td></tr>')
            continue
        for r in results:
            verdict = '<td class="ok">ok</td>' if r.success else f'<td class="fail">{_e(r.reason.value)}</td>'
            total = "-" if r.timings.total is None else f"{r.timings.total * 1000:.1f} ms"
            out.append(
                f"<tr>{cells_probe}<td>{_e(r.address or '-')}</td>{verdict}"
                f"<td>{_e(r.phase.value if r.phase else '')}</td>"
                f"<td>{_e(r.status_code if r.status_code is not None else '-')}</td>"
                f"<td>{_e(total)}</td><td>{_e(_when(r))}</td><td>{_e(r.detail)}</td></tr>"
            )
    out.append("</table>")
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
    and a `ValueError`) for a malformed `listen`, and `UserError` naming the address when it cannot be bound.
    """
    host, port = parse_listen(listen)
    try:
        listeners = await trio.open_tcp_listeners(port, host=host)
    except OSError as exc:
        raise UserError(f"exporter: cannot listen on {listen}: {exc.strerror or exc}") from exc
    app = _App(store, get_config, reload, run_probe, vantage, idle_timeout)
    bound = tuple(_sockname(listener) for listener in listeners)
    _log.info("exporter listening on %s", ", ".join(_hostport(h, p) for h, p in bound))
    task_status.started(bound)
    await trio.serve_listeners(app.serve_connection, listeners)


def _sockname(listener: trio.SocketListener) -> tuple[str, int]:
    name = listener.socket.getsockname()
    return str(name[0]), int(name[1])
