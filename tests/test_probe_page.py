"""The /probe page is written as text by `umprobe.metrics._probe_text`: byte for byte what prometheus_client's
`generate_latest` renders for the same families (`_probe_families`, the reference), whatever the result."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace

import pytest
from prometheus_client.exposition import generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector, CollectorRegistry

from tests.test_metrics import TCP, TLS, cert, probe_config, result, tls_info
from umprobe.config import ProbeConfig
from umprobe.metrics import _probe_families, _probe_text, probe_page
from umprobe.probes.result import Phase, ProbeResult, Reason, Timings


class _Families(Collector):
    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterator[Metric]:
        yield from self._families


def _reference(
    config: ProbeConfig, results: list[ProbeResult], duration: float, vantage: str | None
) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Families(_probe_families(config, results, duration, vantage)))
    return generate_latest(registry)


ODD = probe_config(
    host="2001:db8::5",
    labels=(("site", 'a"b\\c\nd'), ("zone", "é")),
    listener="a\\listener",
)

CASES: list[tuple[str, ProbeConfig, list[ProbeResult]]] = [
    ("tls ok", TLS, [result(TLS, tls=tls_info(), client_cert=cert(90.0))]),
    ("tcp ok", TCP, [result(TCP)]),
    ("no results", TLS, []),
    (
        "two addresses, one refused",
        TLS,
        [
            result(TLS, tls=tls_info()),
            result(
                TLS,
                address="2001:db8::1",
                reason=Reason.CONNECT_REFUSED,
                phase=Phase.CONNECT,
                status=None,
                timings=Timings(resolve=0.0, connect=0.0002, total=0.0003),
            ),
        ],
    ),
    (
        "503 with retry-after, insecure, unverified",
        TLS,
        [
            result(
                TLS,
                reason=Reason.SIP_UNHEALTHY_STATUS,
                phase=Phase.SIP,
                status=503,
                retry_after=30,
                insecure=True,
                tls=tls_info(verified=False, version="TLSv1.2"),
            )
        ],
    ),
    ("tls without version or chain", TLS, [result(TLS, tls=tls_info(version=None, chain=False))]),
    ("dns error, no address", TLS, [result(TLS, address="", reason=Reason.DNS_ERROR, status=None)]),
    ("no start time", TCP, [result(TCP, started_at=None)]),
    ("escaped labels", ODD, [result(ODD, address="2001:db8::5", tls=tls_info())]),
    (
        "odd timings",
        TCP,
        [result(TCP, timings=Timings(resolve=0.0, connect=1e-7, sip=2.5, total=1234567.25))],
    ),
]


@pytest.mark.parametrize(("config", "results"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
@pytest.mark.parametrize("vantage", [None, "ams-1"])
@pytest.mark.parametrize("duration", [0.25, 0.0, 1e-6, 3.0, 12345678.5])
def test_probe_text_is_what_generate_latest_writes(
    config: ProbeConfig, results: list[ProbeResult], vantage: str | None, duration: float
) -> None:
    expected = _reference(config, results, duration, vantage)
    assert _probe_text(config, results, duration, vantage) == expected
    body, _ = probe_page(config, results, duration=duration, debug=False, vantage=vantage)
    assert body == expected


def test_the_reference_has_every_family_the_cases_can_make() -> None:
    """The cases above reach the optional families too, so the comparison covers them."""
    names = {
        sample.name
        for _, config, results in CASES
        for family in _probe_families(config, results, 0.1, None)
        for sample in family.samples
    }
    assert {
        "probe_success",
        "probe_duration_seconds",
        "umprobe_sip_retry_after_seconds",
        "umprobe_tls_version_info",
        "umprobe_tls_peer_cert_expiry_timestamp_seconds",
        "umprobe_tls_client_cert_expiry_timestamp_seconds",
        "umprobe_tls_insecure",
        "umprobe_probe_last_run_timestamp_seconds",
    } <= names


def test_debug_page_embeds_the_same_text() -> None:
    results = [replace(result(TLS, tls=tls_info()), detail="200 OK")]
    body, content_type = probe_page(TLS, results, duration=0.5, debug=True)
    assert content_type.startswith("text/plain")
    assert _reference(TLS, results, 0.5, None).decode().rstrip("\n") in body.decode()
