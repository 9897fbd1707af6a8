"""The exporter's simple-request path: a plain `GET /probe` is read and answered without h11
(`umprobe.exporter._simple_request`, `_response_bytes`). Held here to what h11 makes of the same bytes:
the same request, byte for byte the same response, and h11 untouched for everything else."""

from __future__ import annotations

import h11
import pytest
import trio

import umprobe.exporter as exporter
from tests.test_exporter import CAP, exchange, http, running
from umprobe.exporter import _App, _make_request, _Response, _response_bytes, _simple_request, _text

PROBE = b"/probe?module=tcp&target=cas01.contoso.local:5060"


def h11_request(data: bytes) -> exporter._Request | None:
    """What the h11 path makes of `data` (None: h11 does not see one whole request)."""
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(data)
    head = conn.next_event()
    if not isinstance(head, h11.Request) or not isinstance(conn.next_event(), h11.EndOfMessage):
        return None
    return _make_request(head, b"")


SIMPLE = [
    b"GET " + PROBE + b" HTTP/1.1\r\nHost: 127.0.0.1:9874\r\n\r\n",
    b"GET /probe HTTP/1.1\r\nhost: x\r\n\r\n",
    b"GET /probe?target=a&target=b&debug=1&module= HTTP/1.1\r\nHOST: x\r\n\r\n",
    b"GET " + PROBE + b" HTTP/1.1\r\nHost: x\r\nUser-Agent: Prometheus/2.42.0\r\n"
    b"Accept: text/plain;version=0.0.4;q=1,*/*;q=0.1\r\nAccept-Encoding: gzip\r\n"
    b"X-Prometheus-Scrape-Timeout-Seconds: 4.5\r\nx-prometheus-scrape-timeout-seconds: 2\r\n\r\n",
    b"GET /probe?target=%5B::1%5D:5061&module=mtls HTTP/1.1\r\nHost: [::1]:9874\r\n\r\n",
]

NOT_SIMPLE = [
    b"GET " + PROBE + b" HTTP/1.1\r\n\r\n",  # no Host: h11 answers 400
    b"GET " + PROBE + b" HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",  # two: h11 answers 400
    b"GET " + PROBE + b" HTTP/1.0\r\nHost: x\r\n\r\n",
    b"HEAD " + PROBE + b" HTTP/1.1\r\nHost: x\r\n\r\n",
    b"get " + PROBE + b" HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /probes HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET " + PROBE + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    b"GET " + PROBE + b" HTTP/1.1\r\nHost: x\r\nconnection: keep-alive\r\n\r\n",
    b"GET " + PROBE + b" HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
    b"GET " + PROBE + b" HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    b"GET " + PROBE + b" HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n\r\n",
    b"GET " + PROBE + b" HTTP/1.1\r\nHost: x\r\nUpgrade: h2c\r\n\r\n",
    b"GET " + PROBE + b" HTTP/1.1\r\nHost:x\r\n\r\n",  # h11 reads these; the simple path leaves them
    b"GET " + PROBE + b" HTTP/1.1\r\nHost: x \r\n\r\n",
    b"GET " + PROBE + b" HTTP/1.1\r\nHost: x\r\nX-A:  b\r\n\r\n",
    b"GET " + PROBE + b" HTTP/1.1\nHost: x\n\n",
    b"GET " + PROBE + b" HTTP/1.1\r\nHost: x\r\n",  # incomplete
    b"GET " + PROBE + b" HTTP/1.1\r\nHost: x\r\n\r\nGET /probe HTTP/1.1\r\nHost: x\r\n\r\n",  # pipelined
    b"GET /probe?a=\xff HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /probe HTTP/1.1\r\nHost: \xe9\r\n\r\n",
    b"GET /probe HTTP/1.1\r\nHost: x\r\nBad Name: y\r\n\r\n",
]


@pytest.mark.parametrize("data", SIMPLE)
def test_simple_requests_read_as_h11_reads_them(data: bytes) -> None:
    ours = _simple_request(data, h11.Connection(h11.SERVER))
    assert ours is not None and ours.simple
    theirs = h11_request(data)
    assert theirs is not None and not theirs.simple
    assert (ours.method, ours.path, ours.query, ours.headers, ours.body) == (
        theirs.method,
        theirs.path,
        theirs.query,
        theirs.headers,
        theirs.body,
    )


@pytest.mark.parametrize("data", NOT_SIMPLE)
def test_everything_else_is_left_to_h11(data: bytes) -> None:
    assert _simple_request(data, h11.Connection(h11.SERVER)) is None


def test_only_between_requests_with_nothing_buffered() -> None:
    data = SIMPLE[0]
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(b"GET /")  # a request h11 has begun to read
    assert _simple_request(data, conn) is None
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(data)
    assert isinstance(conn.next_event(), h11.Request)  # h11 is in the middle of an exchange
    assert _simple_request(data, conn) is None
    assert _simple_request(b"x" * exporter.MAX_HEADER_BYTES + data, h11.Connection(h11.SERVER)) is None


class _Sink:
    def __init__(self) -> None:
        self.data = b""

    async def send_all(self, data: bytes) -> None:
        self.data += data


RESPONSES = [
    _Response(200, b"probe_success 1\n", exporter.CONTENT_TYPE),
    _Response(200, b"", exporter.CONTENT_TYPE),
    _text(400, "target parameter is missing"),
    _text(403, "target host 'x' is not allowed"),
    _text(500, "internal error: ValueError: boom"),
    _text(405, "use GET", headers=(("allow", "GET, HEAD"),)),
    _text(500, "bye", close=True),
    _Response(599, b"odd\n"),
]


@pytest.mark.parametrize("response", RESPONSES)
async def test_responses_are_written_as_h11_writes_them(response: _Response) -> None:
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(SIMPLE[0])
    assert isinstance(conn.next_event(), h11.Request)
    assert isinstance(conn.next_event(), h11.EndOfMessage)
    sink = _Sink()
    app = object.__new__(_App)  # `_send` needs no state of the app
    await _App._send(app, conn, sink, response, head=False)  # type: ignore[arg-type]
    assert _response_bytes(response) == sink.data


def test_a_streamed_body_is_never_a_simple_answer() -> None:
    async def stream(write: object) -> None:
        raise AssertionError("not called")

    with pytest.raises(AssertionError):
        _response_bytes(_Response(200, b"", stream=stream))  # type: ignore[arg-type]


async def test_simple_and_h11_requests_share_one_keep_alive_connection(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    simple: list[bool] = []

    def spy(data: bytes, conn: h11.Connection) -> exporter._Request | None:
        request = _simple_request(data, conn)
        simple.append(request is not None)
        return request

    monkeypatch.setattr(exporter, "_simple_request", spy)
    with trio.fail_after(CAP):
        async with running() as h:
            stream = await trio.open_tcp_stream("127.0.0.1", h.port)
            async with stream:
                conn = h11.Connection(h11.CLIENT)
                steps = [
                    ("GET", PROBE.decode(), ()),  # simple
                    ("GET", "/-/healthy", ()),  # h11
                    ("GET", PROBE.decode(), ()),  # simple again, after h11's cycle
                    ("GET", PROBE.decode(), (("connection", "keep-alive"),)),  # h11
                    ("GET", "/probe?module=tcp", ()),  # simple, answered 400
                    ("GET", PROBE.decode(), ()),
                ]
                for method, target, headers in steps:
                    reply = await exchange(stream, conn, method, target, headers)
                    if target == "/-/healthy":
                        assert (reply.status, reply.body) == (200, b"OK")
                    elif "target=" in target:
                        assert reply.status == 200 and b"probe_success 1" in reply.body
                    else:
                        assert reply.status == 400 and reply.body == b"target parameter is missing\n"
                    assert reply.headers["server"].startswith("umprobe/")
                    conn.start_next_cycle()
            assert simple == [True, False, True, False, True, True]
            assert len(h.fake.calls) == 4
            reply = await http(h.port, "GET", PROBE.decode(), (("connection", "close"),))
            assert reply.status == 200 and reply.headers["connection"] == "close"
