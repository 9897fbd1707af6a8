"""The exporter over a real loopback trio listener (port 0): every endpoint, the allowlist, bad requests, the
scrape-timeout header, keep-alive and the server's limits, plus its pure helpers. Every I/O test runs under
`trio.fail_after`. Only loopback traffic: /probe runs an injected fake, except one end-to-end test against
umprobe's own SIP responder on 127.0.0.1.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from types import MappingProxyType

import h11
import pytest
import trio

import umprobe.exporter as exporter
from tests.test_metrics import (
    TCP,
    TLS,
    parse_page,
    probe_config,
    promtool_check,
    result,
    rtp_config,
    rtp_result,
    tls_info,
)
from umprobe.commands.rtp_cmd import render_map
from umprobe.config import Config, ConfigError, ExporterConfig, ModuleConfig, ProbeConfig
from umprobe.errors import UserError
from umprobe.exporter import (
    ListenAddressError,
    RunProbe,
    allow_reason,
    parse_listen,
    probe_timeout,
    serve_exporter,
)
from umprobe.net.errors import TLSConfigError
from umprobe.net.tls import TLSClientConfig
from umprobe.peer.sip_responder import serve_sip_responder
from umprobe.probes.result import Phase, ProbeResult, Reason, TranscriptEntry
from umprobe.probes.rtp_result import RtpReason
from umprobe.sip import DEFAULT_ACCEPT
from umprobe.store import ResultStore

CAP = 10.0  # seconds: the fail_after cap of every I/O test

# -- fixtures and a small HTTP client --------------------------------------------------------------------


def module(
    name: str, transport: str = "tls", *, timeout: float = 5.0, port: int | None = None
) -> ModuleConfig:
    return ModuleConfig(
        name=name,
        transport=transport,  # type: ignore[arg-type]
        port=port,
        tls=TLSClientConfig(ca_file="/etc/umprobe/ca.pem") if transport == "tls" else None,
        server_name=None,
        accept_status=DEFAULT_ACCEPT,
        timeout=timeout,
        interval=30.0,
        families=("ipv4", "ipv6"),
        from_domain=None,
    )


def make_config(
    probes: Sequence[ProbeConfig] = (TLS, TCP),
    *,
    allow: tuple[str, ...] = (),
    modules: Sequence[ModuleConfig] = (),
) -> Config:
    mods = {m.name: m for m in (module("mtls"), module("tcp", "tcp"), *modules)}
    return Config(
        source="/etc/umprobe/probes.toml",
        modules=MappingProxyType(mods),
        probes=tuple(probes),
        exporter=ExporterConfig(probe_allow=allow),
    )


@dataclass
class FakeProbe:
    """An injected run_probe: records (probe, seconds left until the deadline) and returns canned results."""

    calls: list[tuple[ProbeConfig, float]] = field(default_factory=list)
    make: Callable[[ProbeConfig], Sequence[ProbeResult]] = lambda p: [result(p)]

    async def __call__(self, probe: ProbeConfig, deadline: float) -> Sequence[ProbeResult]:
        self.calls.append((probe, deadline - trio.current_time()))
        await trio.lowlevel.checkpoint()
        return self.make(probe)


@dataclass
class Harness:
    port: int
    store: ResultStore
    config: Config
    fake: FakeProbe
    reloads: list[int]


async def ok_reload() -> bool:
    return True


@asynccontextmanager
async def running(
    *,
    config: Config | None = None,
    store: ResultStore | None = None,
    reload: Callable[[], Awaitable[bool]] | None = None,
    fake: FakeProbe | None = None,
    run_probe: RunProbe | None = None,
    use_default_probe: bool = False,
    idle_timeout: float = exporter.IDLE_TIMEOUT,
) -> AsyncIterator[Harness]:
    config = config or make_config()
    if store is None:
        store = ResultStore()
        store.set_probes(config.probes)
    fake = fake or FakeProbe()
    reloads: list[int] = []

    async def counting_reload() -> bool:
        reloads.append(1)
        return await (reload or ok_reload)()

    async with trio.open_nursery() as nursery:
        bound = await nursery.start(
            lambda task_status: serve_exporter(
                "127.0.0.1:0",
                store,
                get_config=lambda: config,
                reload=counting_reload,
                run_probe=None if use_default_probe else (run_probe or fake),
                idle_timeout=idle_timeout,
                task_status=task_status,
            )
        )
        assert bound[0][0] == "127.0.0.1"
        yield Harness(bound[0][1], store, config, fake, reloads)
        nursery.cancel_scope.cancel()


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode()


async def exchange(
    stream: trio.SocketStream,
    conn: h11.Connection,
    method: str,
    target: str,
    headers: Sequence[tuple[str, str]] = (),
    body: bytes = b"",
) -> Reply:
    hdrs = [("host", "127.0.0.1"), *headers]
    if body:
        hdrs.append(("content-length", str(len(body))))
    data = conn.send(h11.Request(method=method, target=target, headers=hdrs)) or b""
    if body:
        data += conn.send(h11.Data(data=body)) or b""
    data += conn.send(h11.EndOfMessage()) or b""
    await stream.send_all(data)
    status, got, chunks = 0, {}, []
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            conn.receive_data(await stream.receive_some(65536))
        elif isinstance(event, h11.Response):
            status = event.status_code
            got = {k.decode().lower(): v.decode() for k, v in event.headers}
        elif isinstance(event, h11.Data):
            chunks.append(bytes(event.data))
        elif isinstance(event, h11.EndOfMessage):
            return Reply(status, got, b"".join(chunks))


async def http(
    port: int, method: str, target: str, headers: Sequence[tuple[str, str]] = (), body: bytes = b""
) -> Reply:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        return await exchange(stream, h11.Connection(h11.CLIENT), method, target, headers, body)


async def raw(port: int, data: bytes) -> bytes:
    """Send raw bytes and read until the server closes."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(data)
        out = b""
        while chunk := await stream.receive_some(65536):
            out += chunk
        return out


def one_line(reply: Reply) -> str:
    assert reply.headers["content-type"].startswith("text/plain")
    assert reply.text.endswith("\n") and reply.text.count("\n") == 1, reply.text
    return reply.text.strip()


# -- pure helpers ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:9874", ("127.0.0.1", 9874)),
        ("[::1]:9874", ("::1", 9874)),
        (":9874", (None, 9874)),
        ("localhost:0", ("localhost", 0)),
        ("probe01.contoso.local:80", ("probe01.contoso.local", 80)),
    ],
)
def test_parse_listen(text: str, expected: tuple[str | None, int]) -> None:
    assert parse_listen(text) == expected


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("9874", "expected HOST:PORT"),
        ("", "expected HOST:PORT"),
        ("::1:9874", "needs brackets"),
        ("[::1]9874", "expected [IPv6]:PORT"),
        ("[::1:9874", "missing ']'"),
        ("[127.0.0.1]:1", "not an IPv6 address"),
        ("host:http", "port 'http'"),
        ("host:70000", "port '70000'"),
        ("bad host:1", "not a host name"),
    ],
)
def test_parse_listen_errors(text: str, fragment: str) -> None:
    with pytest.raises(ListenAddressError) as info:
        parse_listen(text)
    assert isinstance(info.value, ValueError) and isinstance(info.value, UserError)
    message = str(info.value)
    assert repr(text) in message and fragment in message and "\n" not in message


@pytest.mark.parametrize(
    ("header", "limit", "expected"),
    [
        (None, 5.0, 5.0),  # default 10 s, capped by the module
        (None, 30.0, 10.0),
        ("", 30.0, 10.0),
        ("10", 30.0, 9.5),  # minus blackbox's 0.5 s offset
        ("10", 5.0, 5.0),  # never more than the module's timeout
        ("4", 5.0, 3.5),
        ("0.6", 5.0, 0.3),  # never keep back more than half
        ("2.5e0", 5.0, 2.0),
    ],
)
def test_probe_timeout(header: str | None, limit: float, expected: float) -> None:
    assert probe_timeout(header, limit) == pytest.approx(expected)


@pytest.mark.parametrize("header", ["abc", "-1", "0", "nan", "inf"])
def test_probe_timeout_rejects_bad_headers(header: str) -> None:
    with pytest.raises(ValueError, match="X-Prometheus-Scrape-Timeout-Seconds"):
        probe_timeout(header, 5.0)


@pytest.mark.parametrize(
    ("host", "allow", "ok"),
    [
        ("cas01.contoso.local", (), True),  # configured
        ("CAS01.Contoso.Local.", (), True),
        ("192.0.2.10", (), True),  # configured IP literal
        ("mbx09.contoso.local", (), False),
        ("192.0.2.11", (), False),
        ("anything.example", ("*",), True),
        ("198.51.100.7", ("198.51.100.0/24",), True),
        ("198.51.101.7", ("198.51.100.0/24",), False),
        ("2001:db8::5", ("2001:db8::/32",), True),
        ("mbx09.contoso.local", ("10.0.0.0/8",), False),  # a name is not resolved for a CIDR
        ("mbx09.contoso.local", ("MBX09.contoso.local",), True),
        ("mbx09.contoso.local", ("*.contoso.local",), True),
        ("evilcontoso.local", ("*.contoso.local",), False),
        ("198.51.100.7", ("198.51.100.7",), True),
    ],
)
def test_allow_reason(host: str, allow: tuple[str, ...], ok: bool) -> None:
    why = allow_reason(host, make_config(allow=allow))
    assert (why is None) is ok, why
    if why is not None:
        assert "not allowed" in why and "\n" not in why


# -- the endpoints ---------------------------------------------------------------------------------------


async def test_healthy_and_not_found() -> None:
    with trio.fail_after(CAP):
        async with running() as h:
            reply = await http(h.port, "GET", "/-/healthy")
            assert (reply.status, reply.body) == (200, b"OK")
            reply = await http(h.port, "GET", "/nope?x=<b>")
            assert reply.status == 404
            assert one_line(reply) == "not found: /nope"
            reply = await http(h.port, "DELETE", "/-/healthy")
            assert reply.status == 405 and "GET" in reply.headers["allow"]


async def test_metrics_endpoint() -> None:
    with trio.fail_after(CAP):
        store = ResultStore()
        store.set_probes([TLS, TCP])
        store.record(TLS, [result(TLS, tls=tls_info())])
        store.record(TCP, [result(TCP, reason=Reason.CONNECT_REFUSED, phase=Phase.CONNECT, status=None)])
        store.set_reload(success=True, at=1_800_000_000.0)
        async with running(store=store) as h:
            reply = await http(h.port, "GET", "/metrics")
            assert reply.status == 200
            assert reply.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
            page = parse_page(reply.text)
            assert page.value("umprobe_probe_success", probe=TLS.name) == 1
            assert page.value("umprobe_probe_failures_total", probe=TCP.name, reason="connect_refused") == 1
            assert page.value("umprobe_config_last_reload_successful") == 1
            assert page.get("process_open_fds")
            promtool_check(reply.body)
            head = await http(h.port, "HEAD", "/metrics")
            assert head.status == 200 and head.body == b""
            assert int(head.headers["content-length"]) > 0


async def test_reload_endpoint() -> None:
    with trio.fail_after(CAP):
        async with running() as h:
            reply = await http(h.port, "GET", "/-/reload")
            assert reply.status == 405 and reply.headers["allow"] == "POST"
            assert h.reloads == []
            reply = await http(h.port, "POST", "/-/reload")
            assert (reply.status, reply.body) == (200, b"OK")
            assert h.reloads == [1]

        store = ResultStore()

        async def rejected() -> bool:
            store.set_reload(success=False, at=1.0, error="probes.toml:7: modules.x.timeout = 9.0: too long")
            return False

        async with running(store=store, reload=rejected) as h:
            reply = await http(h.port, "POST", "/-/reload", body=b"ignored")
            assert reply.status == 500
            assert one_line(reply) == "reload failed: probes.toml:7: modules.x.timeout = 9.0: too long"

        async def raising() -> bool:
            raise ConfigError("probes.toml: bad\nsecond line", source="probes.toml")

        async with running(reload=raising) as h:
            reply = await http(h.port, "POST", "/-/reload")
            assert reply.status == 500
            assert one_line(reply) == "reload failed: probes.toml: bad second line"


async def test_status_page_escapes_everything() -> None:
    with trio.fail_after(CAP):
        evil = probe_config(name="<script>alert(1)</script>", labels=(("site", '"><img src=x>'),))
        store = ResultStore()
        store.set_probes([evil])
        transcript = (TranscriptEntry(0.001, "recv", "SIP/2.0 503 <b>busy</b> & co"),)
        store.record(
            evil,
            [
                result(
                    evil,
                    reason=Reason.SIP_UNHEALTHY_STATUS,
                    phase=Phase.SIP,
                    status=503,
                    detail="status 503 <i>not accepted</i>",
                    transcript=transcript,
                )
            ],
        )
        async with running(store=store, config=make_config([evil])) as h:
            reply = await http(h.port, "GET", "/")
            assert reply.status == 200
            assert reply.headers["content-type"] == "text/html; charset=utf-8"
            assert "default-src 'none'" in reply.headers["content-security-policy"]
            page = reply.text
            for bad in ("<script>", "<b>busy", "<i>not", "<img"):
                assert bad not in page, bad
            for escaped in (
                "&lt;script&gt;alert(1)&lt;/script&gt;",
                "&lt;b&gt;busy&lt;/b&gt; &amp; co",
                "status 503 &lt;i&gt;not accepted&lt;/i&gt;",
                "sip_unhealthy_status",
            ):
                assert escaped in page, escaped
            assert "/etc/umprobe/probes.toml" in page


async def test_status_page_has_a_section_per_rtp_peer() -> None:
    with trio.fail_after(CAP):
        peer = rtp_config(name="mbx01 <b>", labels=())
        waiting = rtp_config(name="mbx02", host="mbx02.contoso.local")
        store = ResultStore()
        store.set_rtp([peer, waiting])
        store.record_rtp(peer, rtp_result(peer.spec, cycle=0))
        store.record_rtp(peer, rtp_result(peer.spec, cycle=1, reason=RtpReason.CONTROL_AUTH_FAILED))
        # cycle 2 samples the same 32 blocks as cycle 0 (the other 32 are cycle 1's and 3's)
        second = rtp_result(peer.spec, cycle=2, silent=frozenset(peer.spec.ports_for_cycle(2)[:1]))
        store.record_rtp(peer, second)
        async with running(store=store) as h:
            reply = await http(h.port, "GET", "/")
            assert reply.status == 200
            page = reply.text
    assert "<h2>RTP peers</h2>" in page
    assert "<b>" not in page and "mbx01 &lt;b&gt;" in page
    assert "echo peer mbx01.contoso.local:7900 (TCP control, secret /etc/umprobe/peer.secret)" in page
    assert "range 20000-20511; full sweep 8 runs of 60 s = 8 min" in page
    assert "2 of 8" in page  # the last run's cycle
    assert "forward 0.00%, return 20.00%" in page
    assert "2.00 ms / 4.00 ms" in page and "0.30 ms / 0.40 ms" in page  # RTT p50 / max, jitter fwd / ret
    # the last run's map, and every block as last sampled: a silent block "x", the unsampled half "."
    for line in render_map(second.blocks):
        assert line in page, line
    known = render_map(store.rtp_known_blocks(peer.id))
    for line in known:
        assert line in page, line
    symbols = "".join(line.split()[-1] for line in known)
    assert (symbols.count("x"), symbols.count("#"), symbols.count(".")) == (1, 31, 32)
    assert "last failure: control_auth_failed" in page and "failed: control_auth_failed" in page
    assert "<h3>mbx02</h3>" in page and "not run yet" in page
    assert "ssss" not in page  # the secret never


# -- /probe ----------------------------------------------------------------------------------------------


async def test_probe_configured_target() -> None:
    with trio.fail_after(CAP):
        async with running() as h:
            reply = await http(h.port, "GET", "/probe?target=cas01.contoso.local:5061&module=mtls")
            assert reply.status == 200
            assert reply.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
            page = parse_page(reply.text)
            assert page.value("probe_success") == 1
            assert page.value("probe_duration_seconds") >= 0
            # the configured probe's labels
            assert (
                page.value("umprobe_probe_success", probe=TLS.name, site="ams", listener="call_router") == 1
            )
            promtool_check(reply.body)
            assert [p for p, _ in h.fake.calls] == [TLS]
            assert h.store.latest(TLS.id) == ()  # never recorded


async def test_probe_ad_hoc_target() -> None:
    with trio.fail_after(CAP):
        failing = FakeProbe(
            make=lambda p: [result(p, reason=Reason.SIP_TIMEOUT, phase=Phase.SIP, status=None, address="::1")]
        )
        async with running(config=make_config(allow=("::1/128",)), fake=failing) as h:
            reply = await http(h.port, "GET", "/probe?target=%5B%3A%3A1%5D&module=tcp")
            assert reply.status == 200
            page = parse_page(reply.text)
            assert page.value("probe_success") == 0
            ((labels, _),) = page.get("umprobe_probe_success")
            assert labels == {
                "probe": "[::1]:5060/tcp",
                "target": "::1",
                "address": "::1",
                "port": "5060",
                "transport": "tcp",
                "listener": "custom",
            }
            promtool_check(reply.body)
            probe, _ = failing.calls[0]
            assert (probe.spec.host, probe.spec.port, probe.spec.transport) == ("::1", 5060, "tcp")
            # a sips: URI picks the module's default TLS port and the sips scheme
            reply = await http(h.port, "GET", "/probe?target=sips:%5B::1%5D&module=mtls")
            assert reply.status == 200
            probe, _ = failing.calls[1]
            assert (probe.spec.port, probe.spec.transport, probe.spec.uri_scheme) == (5061, "tls", "sips")


@pytest.mark.parametrize(
    ("query", "headers", "message"),
    [
        ("module=mtls", (), "target parameter is missing"),
        ("target=cas01.contoso.local", (), "module parameter is missing"),
        ("target=cas01.contoso.local&module=nope", (), "unknown module 'nope'"),
        ("target=bad%20host&module=mtls", (), "neither a host name nor an IP address"),
        ("target=cas01.contoso.local:0&module=mtls", (), "port '0'"),
        ("target=sip:cas01.contoso.local;transport=tcp&module=mtls", (), "asks for transport tcp"),
        ("target=a&target=b&module=mtls", (), "parameter 'target' is given 2 times"),
        ("target=cas01.contoso.local&module=mtls&debug=yes", (), "debug='yes'"),
        (
            "target=cas01.contoso.local&module=mtls",
            (("X-Prometheus-Scrape-Timeout-Seconds", "soon"),),
            "X-Prometheus-Scrape-Timeout-Seconds 'soon' is not a number",
        ),
    ],
)
async def test_probe_bad_params(query: str, headers: tuple[tuple[str, str], ...], message: str) -> None:
    with trio.fail_after(CAP):
        async with running() as h:
            reply = await http(h.port, "GET", f"/probe?{query}", headers)
            assert reply.status == 400
            assert message in one_line(reply)
            assert h.fake.calls == []


async def test_probe_allowlist() -> None:
    with trio.fail_after(CAP):
        async with running() as h:
            reply = await http(h.port, "GET", "/probe?target=mbx09.contoso.local&module=mtls")
            assert reply.status == 403
            assert one_line(reply).startswith("target host 'mbx09.contoso.local' is not allowed")
            reply = await http(h.port, "GET", "/probe?target=127.0.0.2&module=tcp")
            assert reply.status == 403
            assert h.fake.calls == []  # nothing was sent anywhere
        async with running(config=make_config(allow=("127.0.0.0/8",))) as h:
            reply = await http(h.port, "GET", "/probe?target=127.0.0.2&module=tcp")
            assert reply.status == 200


async def test_probe_debug() -> None:
    with trio.fail_after(CAP):
        transcript = (
            TranscriptEntry(0.0, "info", "connected to 192.0.2.10:5061 from 192.0.2.99:40000"),
            TranscriptEntry(0.002, "send", "OPTIONS sip:cas01.contoso.local:5061;transport=tls SIP/2.0"),
        )
        fake = FakeProbe(make=lambda p: [result(p, tls=tls_info(), transcript=transcript)])
        async with running(fake=fake) as h:
            reply = await http(h.port, "GET", "/probe?target=cas01.contoso.local&module=mtls&debug=true")
            assert reply.status == 200
            assert reply.headers["content-type"] == "text/plain; charset=utf-8"
            text = reply.text
            assert "OPTIONS sip:cas01.contoso.local:5061;transport=tls SIP/2.0" in text
            assert "TLSv1.3 TLS_AES_256_GCM_SHA384" in text
            assert "probe_success 1" in text
            assert "tls.ca_file: /etc/umprobe/ca.pem" in text


async def test_probe_honours_the_scrape_timeout_header() -> None:
    with trio.fail_after(CAP):
        # the TCP probe overrides its module's 5 s timeout with 2 s
        config = make_config([TLS, replace(TCP, timeout=2.0)], modules=[module("slow", "tcp", timeout=30.0)])
        async with running(config=config) as h:
            target = "/probe?target=cas01.contoso.local&module="
            await http(h.port, "GET", target + "mtls", [("X-Prometheus-Scrape-Timeout-Seconds", "4")])
            await http(h.port, "GET", target + "mtls", [("X-Prometheus-Scrape-Timeout-Seconds", "20")])
            await http(h.port, "GET", target + "mtls")
            await http(h.port, "GET", "/probe?target=192.0.2.10&module=slow")
            await http(
                h.port,
                "GET",
                "/probe?target=192.0.2.10&module=slow",
                [("x-prometheus-scrape-timeout-seconds", "15")],
            )
            await http(h.port, "GET", "/probe?target=192.0.2.10&module=tcp")
            left = [seconds for _, seconds in h.fake.calls]
            assert left == pytest.approx([3.5, 5.0, 5.0, 10.0, 14.5, 2.0], abs=0.05)


async def test_probe_errors_become_500_and_the_server_lives_on() -> None:
    async def broken(probe: ProbeConfig, deadline: float) -> Sequence[ProbeResult]:
        raise RuntimeError("bug\nin a probe")

    async def bad_files(probe: ProbeConfig, deadline: float) -> Sequence[ProbeResult]:
        raise TLSConfigError("cannot read client certificate /etc/umprobe/probe01.pem: No such file")

    async def stuck(probe: ProbeConfig, deadline: float) -> Sequence[ProbeResult]:
        await trio.sleep_forever()
        raise AssertionError

    target = "/probe?target=cas01.contoso.local&module=mtls"
    with trio.fail_after(CAP):
        for fn, fragment in (
            (broken, "internal error: RuntimeError: bug in a probe"),
            (bad_files, "module mtls: cannot read client certificate /etc/umprobe/probe01.pem"),
        ):
            async with running(run_probe=fn) as h:
                reply = await http(h.port, "GET", target)
                assert reply.status == 500
                assert fragment in one_line(reply)
                assert (await http(h.port, "GET", "/-/healthy")).status == 200
        async with running(run_probe=stuck) as h:
            start = trio.current_time()
            reply = await http(h.port, "GET", target, [("X-Prometheus-Scrape-Timeout-Seconds", "0.4")])
            assert reply.status == 500
            assert "overran" in one_line(reply)
            assert trio.current_time() - start < 3.0


async def test_probe_end_to_end_against_a_loopback_sip_responder() -> None:
    with trio.fail_after(CAP):
        async with trio.open_nursery() as nursery:
            listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
            port = listeners[0].socket.getsockname()[1]
            await nursery.start(serve_sip_responder, listeners)
            async with running(use_default_probe=True) as h:
                reply = await http(h.port, "GET", f"/probe?target=127.0.0.1:{port}&module=tcp")
                # 127.0.0.1 is not configured: refused first
                assert reply.status == 403
            async with running(use_default_probe=True, config=make_config(allow=("127.0.0.1",))) as h:
                reply = await http(h.port, "GET", f"/probe?target=127.0.0.1:{port}&module=tcp")
                assert reply.status == 200, reply.text
                page = parse_page(reply.text)
                assert page.value("probe_success") == 1
                assert page.value("umprobe_sip_status_code", address="127.0.0.1", port=str(port)) == 200
                promtool_check(reply.body)
            nursery.cancel_scope.cancel()


# -- the server ------------------------------------------------------------------------------------------


async def test_keep_alive() -> None:
    with trio.fail_after(CAP):
        async with running() as h:
            stream = await trio.open_tcp_stream("127.0.0.1", h.port)
            async with stream:
                conn = h11.Connection(h11.CLIENT)
                for target in ("/-/healthy", "/metrics", "/"):
                    reply = await exchange(stream, conn, "GET", target)
                    assert reply.status == 200
                    conn.start_next_cycle()


async def test_limits() -> None:
    with trio.fail_after(CAP):
        async with running() as h:
            huge = (
                b"GET / HTTP/1.1\r\nhost: x\r\nx-big: "
                + b"a" * (exporter.MAX_HEADER_BYTES + 10)
                + b"\r\n\r\n"
            )
            assert (await raw(h.port, huge)).startswith(b"HTTP/1.1 431 ")
            reply = await http(h.port, "POST", "/-/reload", body=b"x" * (exporter.MAX_BODY_BYTES + 1))
            assert reply.status == 413
            assert h.reloads == []
            assert (await raw(h.port, b"NOT HTTP AT ALL\r\n\r\n")).startswith(b"HTTP/1.1 400 ")
            assert (await http(h.port, "GET", "/-/healthy")).status == 200


async def test_idle_and_slow_connections_are_closed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(exporter, "REQUEST_TIMEOUT", 0.3)
    with trio.fail_after(CAP):
        async with running(idle_timeout=0.3) as h:
            stream = await trio.open_tcp_stream("127.0.0.1", h.port)
            async with stream:
                assert await stream.receive_some(100) == b""  # idle: closed without a word
            stream = await trio.open_tcp_stream("127.0.0.1", h.port)
            async with stream:
                await stream.send_all(b"GET /metrics HTTP/1.1\r\nhost: x\r\n")  # ...and never finishes
                answer = b""
                while chunk := await stream.receive_some(100):
                    answer += chunk
                assert answer.startswith(b"HTTP/1.1 408 ")


async def test_too_many_connections(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(exporter, "MAX_CONNECTIONS", 1)
    with trio.fail_after(CAP):
        async with running() as h:
            first = await trio.open_tcp_stream("127.0.0.1", h.port)
            async with first:
                conn = h11.Connection(h11.CLIENT)
                assert (await exchange(first, conn, "GET", "/-/healthy")).status == 200
                second = await raw(h.port, b"GET /-/healthy HTTP/1.1\r\nhost: x\r\n\r\n")
                assert second.startswith(b"HTTP/1.1 503 ") and second.endswith(b"too many connections\n")
            # once the server has seen the first connection go, a new one is served again
            request = b"GET /-/healthy HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n"
            for _ in range(200):
                answer = await raw(h.port, request)
                if not answer.startswith(b"HTTP/1.1 503 "):
                    break
                await trio.sleep(0.02)
            assert answer.startswith(b"HTTP/1.1 200 ")


async def test_port_in_use_is_a_user_error() -> None:
    with trio.fail_after(CAP):
        (taken,) = await trio.open_tcp_listeners(0, host="127.0.0.1")
        async with taken:
            port = taken.socket.getsockname()[1]
            with pytest.raises(UserError) as info:
                await serve_exporter(
                    f"127.0.0.1:{port}", ResultStore(), get_config=make_config, reload=ok_reload
                )
            message = str(info.value)
            assert f"127.0.0.1:{port}" in message and "\n" not in message
            with pytest.raises(ListenAddressError, match="'nonsense'"):
                await serve_exporter("nonsense", ResultStore(), get_config=make_config, reload=ok_reload)


def test_probe_config_reuses_configured_labels_only_for_the_same_module() -> None:
    config = make_config()
    same = exporter._probe_config("cas01.contoso.local:5061", config.modules["mtls"], config)
    assert same is TLS
    other = exporter._probe_config(
        "cas01.contoso.local:5061", replace(config.modules["mtls"], name="mtls2"), config
    )
    assert other is not TLS and other.labels == () and other.spec.listener == "custom"


# -- RFC 3263 modules ------------------------------------------------------------------------------------


async def test_status_page_shows_port_and_step_for_rfc3263_listeners() -> None:
    with trio.fail_after(CAP):
        srv = probe_config(host="sip.contoso.com", port=5060, transport="tcp", module="srv", name="sip/tcp")
        srv = replace(srv, spec=replace(srv.spec, resolution="rfc3263", port_given=False))
        store = ResultStore()
        store.set_probes([srv, TCP])
        store.record(
            srv,
            [
                result(srv, address="127.0.0.1", port=5070, step="srv"),
                result(
                    srv,
                    address="127.0.0.1",
                    port=5080,
                    step="srv",
                    reason=Reason.CONNECT_REFUSED,
                    phase=Phase.CONNECT,
                    status=None,
                ),
            ],
        )
        store.record(TCP, [result(TCP, address="192.0.2.10")])
        async with running(store=store, config=make_config([srv, TCP])) as h:
            page = (await http(h.port, "GET", "/")).text
    assert "<td>127.0.0.1:5070 (srv)</td>" in page
    assert "<td>127.0.0.1:5080 (srv)</td>" in page
    assert "<td>192.0.2.10</td>" in page  # A/AAAA listeners as before: the address alone
    # each row has its own up/down state: the two SRV ports of one address are two listeners
    assert page.count('<td class="ok">up; in a row: 1 ok') == 2
    assert page.count('<td class="fail">down; in a row: 0 ok, 1 failed') == 1


async def test_probe_ad_hoc_target_of_an_rfc3263_module_lets_srv_choose_the_port() -> None:
    with trio.fail_after(CAP):
        srv = replace(module("srv", "tcp"), resolution="rfc3263")
        fake = FakeProbe()
        async with running(config=make_config(allow=("*",), modules=[srv]), fake=fake) as h:
            assert (await http(h.port, "GET", "/probe?target=sip.contoso.com&module=srv")).status == 200
            assert (await http(h.port, "GET", "/probe?target=sip.contoso.com:5070&module=srv")).status == 200
            assert (await http(h.port, "GET", "/probe?target=sip.contoso.com&module=tcp")).status == 200
        shapes = [(p.spec.port, p.spec.resolution, p.spec.port_given) for p, _ in fake.calls]
        assert shapes == [(5060, "rfc3263", False), (5070, "rfc3263", True), (5060, "a", True)]
