"""The fast /metrics renderer (issue 6, daemon scale): byte for byte what prometheus_client writes, streamed
in pieces that let other tasks run, cached label sets and counter snapshots that follow the store, and the
daemon's garbage collector thresholds.

The renderer is checked against `generate_latest` over the same collector, so the two can never drift: every
family, awkward label values (quotes, backslashes, newlines, non-ASCII), IPv6 and address-less listeners,
several addresses per probe, a vantage label, RTP peers, and a reload between two scrapes.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest
import trio
from prometheus_client.exposition import generate_latest
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import CollectorRegistry

from tests.test_exporter import http, running
from tests.test_metrics import (
    NOW,
    RTP,
    TCP,
    TLS,
    cert,
    everything_store,
    parse_page,
    probe_config,
    result,
    rtp_result,
    tls_info,
)
from umprobe import metrics
from umprobe.metrics import UmprobeCollector, render_metrics, write_metrics
from umprobe.probes.result import Phase, Reason, Timings
from umprobe.scheduler import GC_THRESHOLDS, tune_gc
from umprobe.store import ResultStore

AWKWARD = probe_config(
    host="2001:db8::10",
    port=5067,
    transport="tcp",
    listener="um_worker",
    module="sip_tcp",
    name='mbx "02":5067/tcp',
    labels=(("site", 'a\\b"c\nd'), ("zone", "Zürich"), ("aaa", "first"), ("tier", "")),
)
NAME = probe_config(
    host="mbx03.contoso.local", port=5062, transport="tcp", listener="um_service", module="sip_tcp"
)


def busy_store() -> ResultStore:
    """Every family and every awkward case in one store."""
    store = everything_store(TLS)
    store.set_probes([TLS, TCP, AWKWARD, NAME])
    store.record(TCP, [result(TCP, reason=Reason.CONNECT_REFUSED, phase=Phase.CONNECT, status=None)])
    store.record(AWKWARD, [result(AWKWARD, address="2001:db8::10", timings=Timings(total=0.25, sip=0.2))])
    store.record(
        NAME,
        [
            result(NAME, address="192.0.2.31", tls=tls_info(version="TLSv1.2"), client_cert=cert(1.5)),
            result(NAME, address="2001:db8::31", reason=Reason.SIP_TIMEOUT, phase=Phase.SIP, status=None),
        ],
    )
    store.record(NAME, [result(NAME, address="", reason=Reason.DNS_ERROR, phase=Phase.RESOLVE, status=None)])
    for lag in (0.0, 0.004, 0.2, 75.0):
        store.observe_lag(lag)
    store.probe_started()
    store.slot_skipped()
    return store


def registry_of(collector: UmprobeCollector, *, process: bool = False) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    if process:
        ProcessCollector(registry=registry)
    return registry


async def streamed(registry: CollectorRegistry) -> tuple[bytes, list[bytes]]:
    pieces: list[bytes] = []

    async def write(piece: bytes) -> None:
        pieces.append(piece)

    await write_metrics(registry, write)
    return b"".join(pieces), pieces


@pytest.mark.parametrize("vantage", [None, "dublin"])
def test_text_is_byte_for_byte_what_prometheus_client_writes(vantage: str | None) -> None:
    collector = UmprobeCollector(busy_store(), vantage=vantage)
    page = render_metrics(collector)
    assert page == generate_latest(collector)
    text = page.decode()
    assert 'zone="Zürich"' in text and r'site="a\\b\"c\nd"' in text and 'address="2001:db8::31"' in text
    assert "umprobe_rtp_block_reachable_ratio" in text and "umprobe_tls_version_info" in text
    assert ('vantage="dublin"' in text) is (vantage is not None)
    # A second scrape from the cached label sets and counter snapshots writes the same page.
    assert render_metrics(collector) == page


async def test_streamed_pieces_make_the_same_page() -> None:
    store = busy_store()
    registry = registry_of(UmprobeCollector(store))
    page, pieces = await streamed(registry)
    assert page == render_metrics(registry) == generate_latest(registry)
    assert all(pieces)
    parse_page(page.decode())  # one group per family: prometheus_client's parser takes it


async def test_a_big_page_comes_in_pieces_while_other_tasks_run(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(metrics, "_WRITE_SIZE", 4096)
    probes = [
        probe_config(
            host=f"192.0.2.{i % 250}", port=5060 + i, transport="tcp", module="sip_tcp", name=f"p{i}"
        )
        for i in range(600)
    ]
    store = ResultStore()
    store.set_probes(probes)
    for probe in probes:
        store.record(probe, [result(probe, address=probe.spec.host)])
    registry = registry_of(UmprobeCollector(store))
    ticks: list[int] = []
    seen_at_piece: list[int] = []
    pieces: list[bytes] = []

    async def write(piece: bytes) -> None:
        pieces.append(piece)
        seen_at_piece.append(len(ticks))

    async def ticker(done: trio.Event) -> None:
        while not done.is_set():
            ticks.append(1)
            await trio.lowlevel.checkpoint()

    done = trio.Event()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(ticker, done)
        await trio.lowlevel.checkpoint()
        await write_metrics(registry, write)
        done.set()
    assert b"".join(pieces) == render_metrics(registry)
    assert len(pieces) > 10
    assert all(len(piece) < 200_000 for piece in pieces)  # never the whole page in one piece
    # The ticker ran between the pieces, not only before or after the page.
    assert 0 < seen_at_piece[len(seen_at_piece) // 2] < seen_at_piece[-1]


async def test_a_reload_between_scrapes_drops_label_sets_and_renames() -> None:
    store = busy_store()
    collector = UmprobeCollector(store, vantage="ams")
    await streamed(registry_of(collector))
    renamed = probe_config(
        host=TCP.spec.host,
        port=TCP.spec.port,
        transport="tcp",
        listener=TCP.spec.listener,
        module=TCP.module,
        name="renamed:5060/tcp",
        probe_id=TCP.id,
    )
    store.set_probes([renamed, AWKWARD])
    page, _ = await streamed(registry_of(collector))
    assert page == generate_latest(collector)
    text = page.decode()
    assert 'probe="renamed:5060/tcp"' in text and TCP.name not in text and TLS.name not in text
    assert {key[0] for key in collector._labels} == {TCP.id, AWKWARD.id}


async def test_two_scrapes_at_once_write_the_same_page() -> None:
    registry = registry_of(UmprobeCollector(busy_store()))
    pages: list[bytes] = []

    async def one() -> None:
        pages.append((await streamed(registry))[0])

    async with trio.open_nursery() as nursery:
        nursery.start_soon(one)
        nursery.start_soon(one)
    assert pages[0] == pages[1] == render_metrics(registry)


def test_a_family_in_two_sections_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    sections = metrics._SECTIONS
    monkeypatch.setattr(metrics, "_SECTIONS", (*sections, sections[1]))
    with pytest.raises(RuntimeError, match="umprobe_probe_runs_total"):
        render_metrics(UmprobeCollector(busy_store()))


def test_a_streamed_section_with_two_families_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    def two_families(
        self: UmprobeCollector, families: metrics._Sink, rows: list[metrics._Row]
    ) -> Iterator[None]:
        for row in rows:
            families.add("umprobe_probe_interval_seconds", row.labels, row.probe.interval)
            families.add("umprobe_probe_success", row.labels, 1.0)
            yield

    monkeypatch.setattr(metrics, "_SECTIONS", ((two_families, True),))
    with pytest.raises(RuntimeError, match="streamed section"):
        render_metrics(UmprobeCollector(busy_store()))


@pytest.mark.parametrize(
    ("labels", "extra", "expected"),
    [
        ({}, ("le", "0.1"), 'le="0.1"'),
        ({"b": "2", "d": "4"}, ("a", "x"), 'a="x",b="2",d="4"'),
        ({"b": "2", "d": "4"}, ("c", "x"), 'b="2",c="x",d="4"'),
        ({"b": "2", "d": "4"}, ("e", "x"), 'b="2",d="4",e="x"'),
        ({"b": "2", "d": "4"}, ("d", 'q"'), r'b="2",d="q\""'),  # as {**labels, name: value}
    ],
)
def test_label_set_inserts_an_extra_label_in_its_sorted_place(
    labels: dict[str, str], extra: tuple[str, str], expected: str
) -> None:
    assert metrics._LabelSet(labels).with_extra(*extra) == expected


def test_counter_snapshots_are_kept_until_the_next_run() -> None:
    store = ResultStore()
    store.set_probes([TCP])
    store.record(TCP, [result(TCP)])
    first = store.address_stats(TCP.id)
    assert store.address_stats(TCP.id)[0] is first[0]  # no new snapshot without a new run
    store.record(TCP, [result(TCP, reason=Reason.SIP_TIMEOUT, phase=Phase.SIP, status=None)])
    second = store.address_stats(TCP.id)
    assert second[0] is not first[0]
    assert (first[0].runs, second[0].runs) == (1, 2)
    assert (
        dict(second[0].failures)[Reason.SIP_TIMEOUT] == 1 and dict(first[0].failures)[Reason.SIP_TIMEOUT] == 0
    )
    assert second[0].sip_response.count == 1  # the timeout is no response time


def test_value_text_matches_prometheus_client() -> None:
    from prometheus_client.utils import floatToGoString

    for value in (
        0.0,
        -0.0,
        1.0,
        2.0,
        0.5,
        1e-05,
        123456.7,
        999999.9,
        1e6,
        1234567.0,
        1.795e9,
        17.25,
        float("inf"),
        float("-inf"),
        -3.5,
        5,
        NOW.timestamp(),
    ):
        assert metrics._value_text(value) == floatToGoString(value), value  # type: ignore[no-untyped-call]
    assert metrics._value_text(float("nan")) == "NaN"


async def test_exporter_streams_metrics_and_head_gives_the_length() -> None:
    store = busy_store()
    store.set_rtp([RTP])
    store.record_rtp(RTP, rtp_result(RTP.spec, cycle=0))
    with trio.fail_after(10):
        async with running(store=store) as h:
            reply = await http(h.port, "GET", "/metrics")
            assert reply.status == 200
            assert (
                reply.headers.get("transfer-encoding") == "chunked" and "content-length" not in reply.headers
            )
            page = parse_page(reply.text)
            assert page.value("umprobe_probe_success", probe=NAME.name, address="") == 0
            head = await http(h.port, "HEAD", "/metrics")
            assert head.status == 200 and head.body == b""
            assert abs(int(head.headers["content-length"]) - len(reply.body)) < 200  # process_* values move


@pytest.fixture
def gc_thresholds() -> Iterator[None]:
    before = gc.get_threshold()
    yield
    gc.set_threshold(*before)


def test_tune_gc_sets_the_daemon_thresholds(gc_thresholds: None) -> None:
    gc.set_threshold(700, 10, 10)
    tune_gc()
    assert gc.get_threshold() == GC_THRESHOLDS
    assert GC_THRESHOLDS[0] > 700
