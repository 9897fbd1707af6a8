"""The result store and the metrics collector: families, label sets, buckets, counters from zero, reloads,
the /probe page, docs/metrics.md held to what is emitted, and `promtool check metrics` on real output.

The helpers at the top (`probe_config`, `result`, `cert`, `parse_page`, `promtool_check`, and for RTP
peers `rtp_config` and `rtp_result`) are shared with tests/test_exporter.py, test_scheduler.py and
test_demo.py.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import CollectorRegistry

from umprobe.config import ProbeConfig, RtpProbeConfig
from umprobe.metrics import (
    BASE_LABELS,
    UmprobeCollector,
    build_info_labels,
    listener_labels,
    peer_labels,
    probe_page,
    render_metrics,
)
from umprobe.net.tls import CertInfo, TLSClientConfig, TLSInfo
from umprobe.probes.result import Phase, ProbeResult, Reason, Timings, TranscriptEntry
from umprobe.probes.rtp import RtpProbeSpec
from umprobe.probes.rtp_result import PortResult, RtpReason, RtpResult, aggregate
from umprobe.probes.sip_options import SipProbeSpec
from umprobe.store import (
    ADDRESS_FAILURE_REASONS,
    RTP_FAILURE_REASONS,
    RTP_PORT_RESULTS,
    RTP_RTT_BUCKETS,
    SCHEDULER_LAG_BUCKETS,
    SIP_RESPONSE_BUCKETS,
    STALE_RUNS,
    ResultStore,
)

DOCS = Path(__file__).resolve().parent.parent / "docs" / "metrics.md"
NOW = datetime(2026, 11, 27, 12, 0, 0, tzinfo=UTC)

# -- shared helpers --------------------------------------------------------------------------------------


def probe_config(
    *,
    host: str = "cas01.contoso.local",
    port: int = 5061,
    transport: str = "tls",
    listener: str = "call_router",
    module: str = "mtls",
    name: str | None = None,
    labels: tuple[tuple[str, str], ...] = (("site", "ams"),),
    tls: TLSClientConfig | None = None,
    interval: float = 30.0,
    timeout: float = 5.0,
    probe_id: str | None = None,
) -> ProbeConfig:
    short = host.split(".")[0] if not host[0].isdigit() and ":" not in host else host
    spec = SipProbeSpec(
        host=host,
        port=port,
        transport=transport,  # type: ignore[arg-type]
        listener=listener,
        tls=tls
        if tls is not None
        else (TLSClientConfig(ca_file="/etc/umprobe/ca.pem") if transport == "tls" else None),
    )
    return ProbeConfig(
        id=probe_id or f"{host}|{listener}|{transport}|{port}|{module}",
        name=name or f"{short}:{port}/{transport}",
        target=host,
        module=module,
        spec=spec,
        interval=interval,
        timeout=timeout,
        labels=labels,
    )


def cert(days: float = 30.0, subject: str = "CN=cas01.contoso.local") -> CertInfo:
    return CertInfo(
        subject=subject,
        issuer="CN=Contoso Root",
        san=("DNS:cas01.contoso.local",),
        not_before=NOW - timedelta(days=365),
        not_after=NOW + timedelta(days=days),
        sha256="ab" * 32,
        serial="01",
        key_type="RSA-2048",
    )


def tls_info(*, verified: bool = True, version: str | None = "TLSv1.3", chain: bool = True) -> TLSInfo:
    return TLSInfo(
        version=version,
        cipher="TLS_AES_256_GCM_SHA384",
        verified=verified,
        verify_error=None if verified else "certificate has expired (depth 0, CN=cas01.contoso.local)",
        peer_chain=(cert(-3.0),) if chain else (),
        client_cert_requested=True,
        client_cert_sent=True,
    )


def result(
    probe: ProbeConfig,
    *,
    address: str = "192.0.2.10",
    reason: Reason = Reason.OK,
    phase: Phase | None = None,
    status: int | None = 200,
    timings: Timings | None = None,
    **kw: Any,
) -> ProbeResult:
    spec = probe.spec
    if timings is None:
        timings = Timings(
            resolve=0.0005,
            connect=0.001,
            tls=0.004 if spec.transport == "tls" else None,
            sip=0.003 if status is not None else None,
            total=0.009,
        )
    fields: dict[str, Any] = {
        "target": spec.host,
        "address": address,
        "family": "ipv6" if ":" in address else ("ipv4" if address else ""),
        "port": spec.port,
        "transport": spec.transport,
        "listener": spec.listener,
        "success": reason is Reason.OK,
        "alive": status is not None,
        "reason": reason,
        "phase": phase,
        "detail": "200 OK" if reason is Reason.OK else f"failed: {reason.value}",
        "timings": timings,
        "status_code": status,
        "reason_phrase": {200: "OK", 503: "Service Unavailable"}.get(status or 0),
        "started_at": NOW,
    }
    fields.update(kw)
    return ProbeResult(**fields)


def rtp_config(
    *,
    name: str = "mbx01",
    host: str = "mbx01.contoso.local",
    port: int = 7900,
    rtp_range: tuple[int, int] = (20000, 20511),
    samples: int = 32,
    labels: tuple[tuple[str, str], ...] = (("site", "ams"),),
    interval: float = 60.0,
    timeout: float = 30.0,
    plain_ports: tuple[int, ...] = (),
) -> RtpProbeConfig:
    """An [[rtp]] entry. 20000-20511: 256 even ports in 64 blocks of four, 8 cycles of 32 ports a sweep."""
    if plain_ports:
        span = (min(plain_ports), max(plain_ports))
        spec = RtpProbeSpec(host=host, mode="plain-echo", ports=plain_ports, rtp_range=span, rtcp=False)
    else:
        spec = RtpProbeSpec(host=host, port=port, secret=b"s" * 16, rtp_range=rtp_range, samples=samples)
    return RtpProbeConfig(
        id=f"rtp|{host}|{spec.port}|{spec.mode}|{name}",
        name=name,
        target=host,
        spec=spec,
        interval=interval,
        timeout=timeout,
        labels=labels,
        secret_file=None if plain_ports else "/etc/umprobe/peer.secret",
    )


def rtp_result(
    spec: RtpProbeSpec,
    *,
    cycle: int = 0,
    reason: RtpReason = RtpReason.OK,
    silent: frozenset[int] = frozenset(),
    in_use: frozenset[int] = frozenset(),
    started_at: datetime = NOW,
) -> RtpResult:
    """A run of `cycle`: every port answers 5 of 5 packets (the peer saw 5, sent 5, one echo lost on the way
    back, so loss return 20 %), except the `silent` ports (nothing back) and the `in_use` ones; a failed
    run (`reason`) measured nothing."""
    ports: list[PortResult] = []
    for p in spec.ports_for_cycle(cycle) if reason is RtpReason.OK else ():
        if p in in_use:
            ports.append(PortResult(port=p, state="in_use"))
        elif p in silent:
            ports.append(
                PortResult(port=p, state="unreachable", sent=5, peer_rx=0, peer_tx=0, loss_roundtrip=1.0)
            )
        else:
            authenticated = spec.mode == "peer"
            ports.append(
                PortResult(
                    port=p,
                    state="reachable",
                    sent=5,
                    received=4,
                    peer_rx=5 if authenticated else None,
                    peer_tx=5 if authenticated else None,
                    loss_forward=0.0 if authenticated else None,
                    loss_return=0.2 if authenticated else None,
                    loss_roundtrip=0.2,
                    rtt_p50=0.002,
                    rtt_max=0.004,
                    jitter_forward=0.0003 if authenticated else None,
                    jitter_return=0.0004 if authenticated else None,
                    rtt_samples=(0.0004, 0.002, 0.002, 0.004),
                )
            )
    port_results, blocks, totals, samples = aggregate(ports, spec.blocks())
    return RtpResult(
        target=spec.host,
        control_port=spec.port if spec.mode == "peer" else None,
        address="192.0.2.50",
        media_address="192.0.2.50",
        mode=spec.mode,
        authenticated=spec.mode == "peer",
        reason=reason,
        detail="fine" if reason is RtpReason.OK else f"failed: {reason.value}",
        range_lo=spec.rtp_range[0],
        range_hi=spec.rtp_range[1],
        cycles=(cycle % spec.cycles_per_sweep(),),
        cycles_per_sweep=spec.cycles_per_sweep(),
        ports=port_results,
        blocks=blocks,
        totals=totals,
        rtt_samples=samples,
        started_at=started_at,
        duration=0.8,
    )


@dataclass(frozen=True)
class Page:
    """A parsed exposition: TYPE per family, and every sample as (name, labels, value)."""

    types: dict[str, str]
    samples: list[tuple[str, dict[str, str], float]]

    def family_of(self, sample_name: str) -> str:
        for suffix in ("_bucket", "_count", "_sum", ""):
            base = sample_name[: len(sample_name) - len(suffix)] if suffix else sample_name
            if sample_name.endswith(suffix) and base in self.types:
                return base
        raise KeyError(sample_name)

    def get(self, name: str, **labels: str) -> list[tuple[dict[str, str], float]]:
        return [
            (lab, value)
            for n, lab, value in self.samples
            if n == name and all(lab.get(k) == v for k, v in labels.items())
        ]

    def value(self, name: str, **labels: str) -> float:
        found = self.get(name, **labels)
        assert len(found) == 1, (name, labels, found)
        return found[0][1]

    def names(self) -> set[str]:
        return {self.family_of(n) for n, _, _ in self.samples}


def parse_page(text: str) -> Page:
    types = dict(re.findall(r"^# TYPE (\S+) (\S+)$", text, re.MULTILINE))
    samples = [
        (s.name, dict(s.labels), s.value)
        for family in text_string_to_metric_families(text)
        for s in family.samples
    ]
    return Page(types, samples)


PROMTOOL = shutil.which("promtool")


def promtool_check(page: bytes) -> None:
    """`promtool check metrics` reads the page on stdin: 0 clean, 3 lint problems, 1 parse error."""
    assert PROMTOOL is not None, (
        "promtool is not installed (Debian package prometheus; scripts/test installs it)"
    )
    done = subprocess.run(
        [PROMTOOL, "check", "metrics"], input=page, capture_output=True, timeout=30, check=False
    )
    assert done.returncode == 0, (done.returncode, done.stdout.decode(), done.stderr.decode())


def collect(store: ResultStore, *, vantage: str | None = None) -> tuple[Page, bytes]:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(UmprobeCollector(store, vantage=vantage))
    raw = render_metrics(registry)
    return parse_page(raw.decode()), raw


def store_with(probe: ProbeConfig, *runs: Sequence[ProbeResult]) -> ResultStore:
    store = ResultStore()
    store.set_probes([probe])
    for results in runs:
        store.record(probe, results)
    return store


def expected_listener_labels(probe: ProbeConfig, address: str, vantage: str | None = None) -> set[str]:
    return set(BASE_LABELS) | {k for k, _ in probe.labels} | ({"vantage"} if vantage else set())


def expected_peer_labels(entry: RtpProbeConfig, vantage: str | None = None) -> set[str]:
    return {"peer"} | {k for k, _ in entry.labels} | ({"vantage"} if vantage else set())


def rtp_store(entry: RtpProbeConfig, *runs: RtpResult) -> ResultStore:
    store = ResultStore(clock=lambda: NOW.timestamp() + 1)
    store.set_rtp([entry])
    for run in runs:
        store.record_rtp(entry, run)
    return store


# -- the three canonical results -------------------------------------------------------------------------

TCP = probe_config(
    host="192.0.2.10", port=5060, transport="tcp", listener="call_router", module="tcp", labels=()
)
TLS = probe_config()
RTP = rtp_config(labels=(("role", "mailbox"), ("site", "ams")))


def test_ok_tcp_result() -> None:
    store = store_with(TCP, [result(TCP)])
    page, _ = collect(store)
    sel = {"probe": TCP.name, "address": "192.0.2.10"}
    assert page.value("umprobe_probe_success", **sel) == 1
    assert page.value("umprobe_probe_alive", **sel) == 1
    assert page.value("umprobe_sip_status_code", **sel) == 200
    phases = {lab["phase"]: v for lab, v in page.get("umprobe_probe_duration_seconds", **sel)}
    assert phases == {"resolve": 0.0005, "connect": 0.001, "sip": 0.003, "total": 0.009}  # no tls phase
    assert page.value("umprobe_probe_last_run_timestamp_seconds", **sel) == NOW.timestamp()
    assert page.value("umprobe_probe_runs_total", **sel) == 1
    failures = {lab["reason"]: v for lab, v in page.get("umprobe_probe_failures_total", **sel)}
    assert failures == dict.fromkeys((r.value for r in ADDRESS_FAILURE_REASONS), 0.0)
    assert page.value("umprobe_sip_response_seconds_count", **sel) == 1
    assert page.value("umprobe_sip_response_seconds_sum", **sel) == 0.003
    for name in (
        "umprobe_tls_version_info",
        "umprobe_tls_insecure",
        "umprobe_tls_peer_verified",
        "umprobe_tls_peer_cert_expiry_timestamp_seconds",
        "umprobe_tls_client_cert_expiry_timestamp_seconds",
        "umprobe_sip_retry_after_seconds",
    ):
        assert page.get(name) == [], name
    # an IP-literal target has no address-less series: its address is known before the first run
    assert page.get("umprobe_probe_failures_total", address="") == []


def test_failed_tls_result() -> None:
    failed = result(
        TLS,
        reason=Reason.TLS_VERIFY_FAILED,
        phase=Phase.TLS,
        status=None,
        tls=tls_info(verified=False),
        client_cert=cert(200.0, "CN=probe01.contoso.local"),
    )
    store = store_with(TLS, [failed])
    page, _ = collect(store)
    sel = {"probe": TLS.name, "address": "192.0.2.10"}
    assert page.value("umprobe_probe_success", **sel) == 0
    assert page.value("umprobe_probe_alive", **sel) == 0
    assert page.value("umprobe_sip_status_code", **sel) == 0
    phases = {lab["phase"] for lab, _ in page.get("umprobe_probe_duration_seconds", **sel)}
    assert phases == {"resolve", "connect", "tls", "total"}
    assert page.value("umprobe_tls_version_info", **sel) == 1
    assert page.get("umprobe_tls_version_info", **sel)[0][0]["version"] == "TLSv1.3"
    assert page.value("umprobe_tls_peer_verified", **sel) == 0
    assert (
        page.value("umprobe_tls_peer_cert_expiry_timestamp_seconds", **sel)
        == (NOW - timedelta(days=3)).timestamp()
    )
    assert (
        page.value("umprobe_tls_client_cert_expiry_timestamp_seconds", **sel)
        == (NOW + timedelta(days=200)).timestamp()
    )
    assert page.value("umprobe_tls_insecure", **sel) == 0
    assert page.value("umprobe_probe_failures_total", reason="tls_verify_failed", **sel) == 1
    assert sum(v for _, v in page.get("umprobe_probe_failures_total", **sel)) == 1
    assert page.value("umprobe_sip_response_seconds_count", **sel) == 0  # no response, no observation
    # the cipher string is never a label value
    assert not any("TLS_AES" in v for _, lab, _ in page.samples for v in lab.values())


def test_503_result() -> None:
    busy = result(
        TLS,
        reason=Reason.SIP_UNHEALTHY_STATUS,
        phase=Phase.SIP,
        status=503,
        retry_after=30,
        server="RTC/6.0 <script>",
        ms_diagnostics='1; reason="busy"',
        tls=tls_info(),
    )
    page, _ = collect(store_with(TLS, [busy]))
    sel = {"probe": TLS.name, "address": "192.0.2.10"}
    assert page.value("umprobe_probe_success", **sel) == 0
    assert page.value("umprobe_probe_alive", **sel) == 1
    assert page.value("umprobe_sip_status_code", **sel) == 503
    assert page.value("umprobe_sip_retry_after_seconds", **sel) == 30
    assert page.value("umprobe_tls_peer_verified", **sel) == 1
    assert page.value("umprobe_probe_failures_total", reason="sip_unhealthy_status", **sel) == 1
    assert page.value("umprobe_sip_response_seconds_count", **sel) == 1  # an answer, even an unhealthy one
    values = {v for _, lab, _ in page.samples for v in lab.values()}
    assert not values & {"Service Unavailable", "RTC/6.0 <script>", '1; reason="busy"'}


def test_dns_error_is_counted_on_the_address_less_series() -> None:
    store = store_with(TLS)
    page, _ = collect(store)
    # configured, never run: the dns_error counter already exists at 0 and nothing else per listener
    assert page.value("umprobe_probe_failures_total", address="", reason="dns_error") == 0
    assert page.get("umprobe_probe_success") == []
    store.record(TLS, [result(TLS, address="", reason=Reason.DNS_ERROR, phase=Phase.RESOLVE, status=None)])
    page, _ = collect(store)
    assert page.value("umprobe_probe_failures_total", address="", reason="dns_error") == 1
    assert page.value("umprobe_probe_success", address="") == 0
    assert page.get("umprobe_sip_response_seconds_count", address="") == []


def test_insecure_and_vantage() -> None:
    insecure = probe_config(tls=TLSClientConfig(insecure=True))
    page, _ = collect(
        store_with(insecure, [result(insecure, insecure=True, tls=tls_info(verified=False))]), vantage="dc1"
    )
    assert page.value("umprobe_tls_insecure", address="192.0.2.10") == 1
    assert page.value("umprobe_probe_success", address="192.0.2.10", vantage="dc1") == 1
    assert all(lab.get("vantage") == "dc1" for n, lab, _ in page.samples if n.startswith("umprobe_probe_"))
    assert "vantage" not in page.get("umprobe_build_info")[0][0]


# -- label sets ------------------------------------------------------------------------------------------


def test_label_sets() -> None:
    probe = probe_config(labels=(("role", "cas"), ("site", "ams")))
    runs = [
        result(probe, address="192.0.2.10", tls=tls_info(), client_cert=cert()),
        result(probe, address="2001:db8::10"),
    ]
    page, _ = collect(store_with(probe, runs), vantage="dc1")
    listener = expected_listener_labels(probe, "", vantage="dc1")
    extra = {
        "umprobe_probe_duration_seconds": {"phase"},
        "umprobe_probe_failures_total": {"reason"},
        "umprobe_listener_transitions_total": {"to"},
        "umprobe_tls_version_info": {"version"},
        "umprobe_sip_response_seconds": {"le"},
    }
    for name, labels, _ in page.samples:
        family = page.family_of(name)
        if family == "umprobe_build_info":
            assert set(labels) == {"version", "python", "pyopenssl", "openssl"}
        elif family == "umprobe_probe_interval_seconds":
            assert set(labels) == listener - {"address"}
        elif family == "umprobe_scheduler_lag_seconds":
            assert set(labels) <= {"le"}
        elif family.startswith(("umprobe_config_", "umprobe_probes_in_flight", "umprobe_scheduler_skipped")):
            assert labels == {}
        else:
            wanted = listener | extra.get(family, set())
            if family == "umprobe_sip_response_seconds" and not name.endswith("_bucket"):
                wanted = listener
            assert set(labels) == wanted, (name, labels)
    assert {lab["address"] for lab, _ in page.get("umprobe_probe_success")} == {"192.0.2.10", "2001:db8::10"}
    sample = page.get("umprobe_probe_success", address="2001:db8::10")[0][0]
    assert sample == {
        "probe": probe.name,
        "target": "cas01.contoso.local",
        "address": "2001:db8::10",
        "port": "5061",
        "transport": "tls",
        "listener": "call_router",
        "vantage": "dc1",
        "role": "cas",
        "site": "ams",
    }


def test_extra_label_clashing_with_a_builtin_is_exported_not_overwritten() -> None:
    probe = probe_config(labels=(("phase", "x"), ("target", "y")))
    labels = listener_labels(probe, "192.0.2.10")
    assert labels["target"] == "cas01.contoso.local"
    assert labels["exported_target"] == "y"
    assert labels["exported_phase"] == "x"


def test_duplicate_label_sets_keep_the_first_probe(caplog: pytest.LogCaptureFixture) -> None:
    a = probe_config(probe_id="a")
    b = probe_config(probe_id="b")
    store = ResultStore()
    store.set_probes([a, b])
    store.record(a, [result(a)])
    store.record(b, [result(b, reason=Reason.SIP_TIMEOUT, phase=Phase.SIP, status=None)])
    page, raw = collect(store)
    assert page.value("umprobe_probe_success") == 1
    assert "same labels" in caplog.text
    promtool_check(raw)


def test_build_info() -> None:
    import platform

    import OpenSSL

    from umprobe import __version__

    labels = build_info_labels()
    assert labels["version"] == __version__
    assert labels["python"] == platform.python_version()
    assert labels["pyopenssl"] == OpenSSL.__version__
    assert re.fullmatch(r"\d+\.\d+\.\d+\S*", labels["openssl"]), labels["openssl"]


# -- histograms ------------------------------------------------------------------------------------------


def test_sip_histogram_buckets() -> None:
    values = [0.0004, 0.001, 0.005, 0.0051, 0.3, 9.0, 12.0]
    runs = [[result(TCP, timings=Timings(sip=v, total=v))] for v in values]
    page, _ = collect(store_with(TCP, *runs))
    buckets = page.get("umprobe_sip_response_seconds_bucket", address="192.0.2.10")
    les = [lab["le"] for lab, _ in buckets]
    assert les == [*(repr(float(b)) for b in SIP_RESPONSE_BUCKETS), "+Inf"]
    assert SIP_RESPONSE_BUCKETS[0] == 0.001 and SIP_RESPONSE_BUCKETS[-1] == 10.0
    counts = {lab["le"]: v for lab, v in buckets}
    assert counts["0.001"] == 2  # a value on a bound counts in that bucket (le)
    assert counts["0.005"] == 3
    assert counts["0.01"] == 4
    assert counts["0.5"] == 5
    assert counts["10.0"] == 6
    assert counts["+Inf"] == 7
    cumulative = [v for _, v in buckets]
    assert cumulative == sorted(cumulative)
    assert page.value("umprobe_sip_response_seconds_count", address="192.0.2.10") == 7
    assert page.value("umprobe_sip_response_seconds_sum", address="192.0.2.10") == pytest.approx(sum(values))


def test_scheduler_lag_in_flight_and_reload() -> None:
    store = ResultStore()
    page, _ = collect(store)
    assert page.value("umprobe_config_last_reload_successful") == 0
    assert page.value("umprobe_config_last_reload_success_timestamp_seconds") == 0
    for lag in (0.0, 0.02, 3.0, 100.0, -1.0):
        store.observe_lag(lag)
    store.probe_started()
    store.probe_started()
    store.probe_finished()
    store.set_reload(success=True, at=1_800_000_000.0)
    store.set_reload(success=False, at=1_800_000_100.0, error="probes.toml: boom")
    page, _ = collect(store)
    les = [lab["le"] for lab, _ in page.get("umprobe_scheduler_lag_seconds_bucket")]
    assert les == [*(repr(float(b)) for b in SCHEDULER_LAG_BUCKETS), "+Inf"]
    assert page.value("umprobe_scheduler_lag_seconds_bucket", le="0.001") == 2
    assert page.value("umprobe_scheduler_lag_seconds_bucket", le="60.0") == 4
    assert page.value("umprobe_scheduler_lag_seconds_count") == 5
    assert page.value("umprobe_probes_in_flight") == 1
    assert page.value("umprobe_scheduler_skipped_slots_total") == 0
    store.slot_skipped()
    store.slot_skipped()
    assert collect(store)[0].value("umprobe_scheduler_skipped_slots_total") == 2
    assert page.value("umprobe_config_last_reload_successful") == 0
    assert page.value("umprobe_config_last_reload_success_timestamp_seconds") == 1_800_000_000.0
    assert store.reload_status().last_error == "probes.toml: boom"
    store.probe_finished()
    store.probe_finished()  # never below zero
    assert store.in_flight == 0


# -- the store: counters from zero, reloads, stale addresses ---------------------------------------------


def test_counters_exist_before_the_first_failure() -> None:
    store = store_with(TLS, [result(TLS)])
    page, _ = collect(store)
    sel = {"address": "192.0.2.10"}
    assert len(page.get("umprobe_probe_failures_total", **sel)) == len(ADDRESS_FAILURE_REASONS)
    assert {lab["reason"] for lab, _ in page.get("umprobe_probe_failures_total", **sel)} == {
        r.value for r in Reason if r not in (Reason.OK, Reason.DNS_ERROR)
    }
    store.record(TLS, [result(TLS, reason=Reason.CONNECT_REFUSED, phase=Phase.CONNECT, status=None)])
    page, _ = collect(store)
    assert page.value("umprobe_probe_failures_total", reason="connect_refused", **sel) == 1
    assert page.value("umprobe_probe_runs_total", **sel) == 2


def test_ip_literal_target_is_initialised_at_configuration() -> None:
    store = store_with(TCP)
    page, _ = collect(store)
    assert len(page.get("umprobe_probe_failures_total", address="192.0.2.10")) == len(ADDRESS_FAILURE_REASONS)
    assert page.value("umprobe_probe_runs_total", address="192.0.2.10") == 0
    assert page.value("umprobe_probe_interval_seconds") == 30.0


def test_set_probes_drops_removed_and_keeps_unchanged() -> None:
    other = probe_config(host="mbx01.contoso.local", port=5063, listener="um_service")
    store = ResultStore()
    store.set_probes([TLS, other])
    store.record(TLS, [result(TLS, reason=Reason.SIP_TIMEOUT, phase=Phase.SIP, status=None)])
    store.record(other, [result(other, address="192.0.2.20")])
    changed = replace(TLS, interval=60.0, labels=(("site", "fra"),))  # same id, new settings
    store.set_probes([changed])
    assert store.probes() == (changed,)
    page, _ = collect(store)
    assert page.get("umprobe_probe_success", probe=other.name) == []
    assert page.get("umprobe_probe_runs_total", probe=other.name) == []
    assert (
        page.value("umprobe_probe_failures_total", reason="sip_timeout", address="192.0.2.10", site="fra")
        == 1
    )
    assert page.value("umprobe_probe_interval_seconds") == 60.0
    # a run of the removed probe that was in flight during the reload is ignored
    store.record(other, [result(other, address="192.0.2.20")])
    assert store.latest(other.id) == ()
    page, _ = collect(store)
    assert page.get("umprobe_probe_success", probe=other.name) == []
    # and a probe that comes back starts from zero
    store.set_probes([changed, other])
    page, _ = collect(store)
    assert page.get("umprobe_probe_runs_total", probe=other.name, address="192.0.2.20") == []


def test_stale_addresses_are_forgotten() -> None:
    store = store_with(TLS, [result(TLS, address="192.0.2.1")])
    for _ in range(STALE_RUNS - 1):
        store.record(TLS, [result(TLS, address="192.0.2.2")])
    assert "192.0.2.1" in {s.address for s in store.address_stats(TLS.id)}
    store.record(TLS, [result(TLS, address="192.0.2.2")])
    addresses = {s.address for s in store.address_stats(TLS.id)}
    assert addresses == {"", "192.0.2.2"}  # the address-less key of a name is never dropped


def test_last_failure_and_latest() -> None:
    bad = result(TLS, reason=Reason.SIP_TIMEOUT, phase=Phase.SIP, status=None, address="192.0.2.2")
    good = result(TLS, address="192.0.2.1")
    store = store_with(TLS, [good, bad], [good])
    assert store.latest(TLS.id) == (good,)
    assert store.last_failure(TLS.id) == (bad,)
    assert store.latest("nope") == () and store.last_failure("nope") == ()
    assert store.recorded_at(TLS.id) is not None


# -- the /probe page -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("results", "success"),
    [
        ([("192.0.2.1", Reason.OK)], 1.0),
        ([("192.0.2.1", Reason.OK), ("2001:db8::1", Reason.CONNECT_REFUSED)], 0.0),
        ([], 0.0),
    ],
)
def test_probe_page_success(results: list[tuple[str, Reason]], success: float) -> None:
    rs = [result(TLS, address=a, reason=r, status=200 if r is Reason.OK else None) for a, r in results]
    body, content_type = probe_page(TLS, rs, duration=0.25, debug=False)
    assert content_type == "text/plain; version=0.0.4; charset=utf-8"
    page = parse_page(body.decode())
    assert page.value("probe_success") == success
    assert page.value("probe_duration_seconds") == 0.25
    assert len(page.get("umprobe_probe_success")) == len(results)
    promtool_check(body)


def test_probe_page_debug_has_the_story_but_no_secrets(tmp_path: Path) -> None:
    key = tmp_path / "probe01.key"
    key.write_text("-----BEGIN PRIVATE KEY-----\nSECRETKEYMATERIAL\n-----END PRIVATE KEY-----\n")
    probe = probe_config(
        tls=TLSClientConfig(ca_file="/etc/ca.pem", cert_file=str(tmp_path / "probe01.pem"), key_file=str(key))
    )
    transcript = (
        TranscriptEntry(0.0, "info", "connected to 192.0.2.10:5061 from 192.0.2.99:40000"),
        TranscriptEntry(
            0.002, "send", "OPTIONS sip:cas01.contoso.local:5061;transport=tls SIP/2.0\r\nVia: x\r\n"
        ),
        TranscriptEntry(0.005, "recv", "SIP/2.0 503 Service Unavailable\r\nRetry-After: 30\r\n"),
    )
    busy = result(
        probe,
        reason=Reason.SIP_UNHEALTHY_STATUS,
        phase=Phase.SIP,
        status=503,
        retry_after=30,
        server="RTC/6.0",
        tls=tls_info(),
        transcript=transcript,
    )
    body, content_type = probe_page(probe, [busy], duration=0.01, debug=True, timeout=4.5)
    text = body.decode()
    assert content_type == "text/plain; charset=utf-8"
    assert "SECRETKEYMATERIAL" not in text
    assert str(key) in text  # the path is fine
    for fragment in (
        "sip_unhealthy_status",
        "OPTIONS sip:cas01.contoso.local:5061;transport=tls SIP/2.0",
        "SIP/2.0 503 Service Unavailable",
        "TLSv1.3 TLS_AES_256_GCM_SHA384",
        "sip server: RTC/6.0",
        "tls peer certificate 0: subject CN=cas01.contoso.local",
        "probe_success 0",
        "timeout used: 4.500 s",
        "Metrics that would have been returned:",
    ):
        assert fragment in text, fragment


# -- docs/metrics.md and promtool ------------------------------------------------------------------------


def documented(section: str) -> dict[str, tuple[str, set[str]]]:
    """name -> (type, label names) from the table under the `## section` heading of docs/metrics.md."""
    text = DOCS.read_text()
    start = text.index(f"\n## {section}\n")
    end = text.find("\n## ", start + 1)
    body = text[start : end if end != -1 else len(text)]
    out: dict[str, tuple[str, set[str]]] = {}
    for line in body.splitlines():
        m = re.match(r"^\| `([a-z_]+)` \| (\w+) \|([^|]*)\|", line)
        if not m:
            continue
        name, typ, labels_cell = m.groups()
        labels: set[str] = set()
        for token in (t.strip() for t in labels_cell.split(",")):
            if token == "listener labels":
                labels |= {"LISTENER"}
            elif token == "probe labels":
                labels |= {"PROBE"}
            elif token == "peer labels":
                labels |= {"PEER"}
            elif token:
                labels.add(token.strip("`"))
        out[name] = (typ, labels)
    return out


def expand(labels: set[str], probe: ProbeConfig, vantage: str | None) -> set[str]:
    out = set(labels) - {"LISTENER", "PROBE", "PEER"}
    if "LISTENER" in labels:
        out |= expected_listener_labels(probe, "x", vantage)
    if "PROBE" in labels:
        out |= expected_listener_labels(probe, "x", vantage) - {"address"}
    if "PEER" in labels:
        out |= expected_peer_labels(RTP, vantage)
    return out


#: A UDP probe through an RFC 3263 module (same extra labels as TLS, so the docs check covers it): its
#: port comes from SRV, so its listeners have ports of their own, a step, and retransmissions.
UDP_SRV = replace(
    probe_config(host="sip.contoso.com", port=5060, transport="udp", listener="custom", module="srv_udp"),
    id="sip.contoso.com|custom|udp|naptr|srv_udp",
    name="sip.contoso.com/udp",
)
UDP_SRV = replace(UDP_SRV, spec=replace(UDP_SRV.spec, resolution="rfc3263", port_given=False))


def everything_store(probe: ProbeConfig) -> ResultStore:
    """A store whose output has every family: TLS with a client certificate, Retry-After, some lag, and
    an RFC 3263 UDP listener with its step and retransmissions."""
    store = store_with(
        probe,
        [
            result(
                probe,
                tls=tls_info(),
                client_cert=cert(),
                retry_after=5,
                status=503,
                reason=Reason.SIP_UNHEALTHY_STATUS,
                phase=Phase.SIP,
            )
        ],
    )
    store.set_probes([probe, UDP_SRV])
    store.record(UDP_SRV, [result(UDP_SRV, address="192.0.2.30", port=5070, step="srv", retransmissions=2)])
    store.observe_lag(0.01)
    store.set_reload(success=True, at=1_800_000_000.0)
    store.set_rtp([RTP])
    store.record_rtp(RTP, rtp_result(RTP.spec, cycle=0, silent=frozenset(RTP.spec.ports_for_cycle(0)[:1])))
    return store


def check_against_docs(page: Page, section: str, probe: ProbeConfig, vantage: str | None) -> None:
    docs = documented(section)
    assert docs, f"no metric table under '## {section}' in {DOCS}"
    assert page.names() == set(docs), (
        f"emitted but not documented: {sorted(page.names() - set(docs))}; "
        f"documented but not emitted: {sorted(set(docs) - page.names())}"
    )
    for family, typ in page.types.items():
        assert docs[family][0] == typ, (family, typ, docs[family][0])
    for name, labels, _ in page.samples:
        family = page.family_of(name)
        wanted = expand(docs[family][1], probe, vantage)
        if name.endswith("_bucket"):
            wanted |= {"le"}
        assert set(labels) == wanted, (name, sorted(labels), sorted(wanted))


@pytest.mark.parametrize("vantage", [None, "dc1"])
def test_metrics_page_matches_docs(vantage: str | None) -> None:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(UmprobeCollector(everything_store(TLS), vantage=vantage))
    ProcessCollector(registry=registry)  # /metrics serves the process collector too (see test_exporter)
    page = parse_page(render_metrics(registry).decode())
    check_against_docs(page, "/metrics", TLS, vantage)


def test_probe_page_matches_docs() -> None:
    r = result(
        TLS,
        tls=tls_info(),
        client_cert=cert(),
        retry_after=5,
        status=503,
        reason=Reason.SIP_UNHEALTHY_STATUS,
        step="naptr",
        port=5071,
    )
    body, _ = probe_page(TLS, [r], duration=0.1, debug=False)
    check_against_docs(parse_page(body.decode()), "The probe page", TLS, None)


def test_metrics_page_passes_promtool() -> None:
    store = everything_store(TLS)
    store.set_probes([TLS, TCP, UDP_SRV])
    store.record(TCP, [result(TCP)])
    _, raw = collect(store, vantage="dc1")
    promtool_check(raw)


def test_promtool_catches_problems() -> None:
    """The check is real: promtool fails a counter without _total (so a clean run means something)."""
    assert PROMTOOL is not None
    done = subprocess.run(
        [PROMTOOL, "check", "metrics"],
        input=b"# HELP x_requests Requests.\n# TYPE x_requests counter\nx_requests 1\n",
        capture_output=True,
        check=False,
        timeout=30,
    )
    assert done.returncode != 0


# -- RTP peers -------------------------------------------------------------------------------------------


def test_rtp_families_from_a_fabricated_result() -> None:
    ports = RTP.spec.ports_for_cycle(0)
    silent = frozenset(ports[:2])
    store = rtp_store(RTP, rtp_result(RTP.spec, cycle=0, silent=silent, in_use=frozenset(ports[2:3])))
    page, raw = collect(store)
    peer = {"peer": "mbx01"}
    assert page.value("umprobe_rtp_probe_success", **peer) == 1
    assert page.value("umprobe_rtp_loss_ratio", direction="forward", **peer) == 0.0
    assert page.value("umprobe_rtp_loss_ratio", direction="return", **peer) == pytest.approx(0.2)
    assert page.value("umprobe_rtp_jitter_seconds", direction="forward", **peer) == 0.0003
    assert page.value("umprobe_rtp_jitter_seconds", direction="return", **peer) == 0.0004
    assert page.value("umprobe_rtp_sweep_progress_ratio", **peer) == 1 / 8
    assert page.value("umprobe_rtp_last_run_timestamp_seconds", **peer) == NOW.timestamp()
    assert page.value("umprobe_rtp_runs_total", **peer) == 1
    failures = {lab["reason"]: v for lab, v in page.get("umprobe_rtp_failures_total", **peer)}
    assert failures == dict.fromkeys((r.value for r in RTP_FAILURE_REASONS), 0.0)
    assert "ok" not in failures
    probed = {lab["result"]: v for lab, v in page.get("umprobe_rtp_ports_probed_total", **peer)}
    assert probed == {"reachable": 29, "unreachable": 2, "in_use": 1, "refused": 0, "not_measured": 0}
    assert set(probed) == set(RTP_PORT_RESULTS)
    # RTT: every echo of every reachable port, in the RTT buckets
    assert page.value("umprobe_rtp_rtt_seconds_count", **peer) == 29 * 4
    assert page.value("umprobe_rtp_rtt_seconds_bucket", le="0.0005", **peer) == 29
    les = [lab["le"] for lab, _ in page.get("umprobe_rtp_rtt_seconds_bucket", **peer)]
    assert les == [*(repr(float(b)) for b in RTP_RTT_BUCKETS), "+Inf"]
    # Blocks: cycle 0 samples 32 of the 64 blocks, one port each; the silent ports' blocks are at 0, the
    # in-use port's block was not measured (never counted against it), the others are at 1.
    ratios = {lab["block"]: v for lab, v in page.get("umprobe_rtp_block_reachable_ratio", **peer)}
    stamps = {lab["block"]: v for lab, v in page.get("umprobe_rtp_block_last_sampled_timestamp_seconds")}
    assert len(ratios) == 31 and set(stamps) == set(ratios)
    assert set(stamps.values()) == {NOW.timestamp()}
    blocks = {b.label: b for b in rtp_result(RTP.spec, cycle=0).blocks}
    silent_blocks = {label for label, b in blocks.items() if any(b.lo <= p <= b.hi for p in silent)}
    assert {label for label, v in ratios.items() if v == 0} == silent_blocks
    assert all(v == 1 for label, v in ratios.items() if label not in silent_blocks)
    # Never a port as a label: no `port` label, and no label value is a sampled port
    rtp_samples = [(n, lab) for n, lab, _ in page.samples if n.startswith("umprobe_rtp_")]
    assert rtp_samples
    port_texts = {str(p) for p in ports}
    for name, labels in rtp_samples:
        assert "port" not in labels, name
        assert not port_texts & set(labels.values()), (name, labels)
        if "block" in labels:
            assert re.fullmatch(r"\d+-\d+", labels["block"]), labels
    promtool_check(raw)


def test_rtp_label_sets_with_vantage_and_extra_labels() -> None:
    page, raw = collect(rtp_store(RTP, rtp_result(RTP.spec)), vantage="dc1")
    base = expected_peer_labels(RTP, "dc1")
    extra = {
        "umprobe_rtp_block_reachable_ratio": {"block"},
        "umprobe_rtp_block_last_sampled_timestamp_seconds": {"block"},
        "umprobe_rtp_loss_ratio": {"direction"},
        "umprobe_rtp_jitter_seconds": {"direction"},
        "umprobe_rtp_failures_total": {"reason"},
        "umprobe_rtp_ports_probed_total": {"result"},
    }
    seen: set[str] = set()
    for name, labels, _ in page.samples:
        family = page.family_of(name)
        if not family.startswith("umprobe_rtp_"):
            continue
        seen.add(family)
        wanted = base | extra.get(family, set()) | ({"le"} if name.endswith("_bucket") else set())
        assert set(labels) == wanted, (name, labels)
        assert labels["peer"] == "mbx01" and labels["vantage"] == "dc1" and labels["role"] == "mailbox"
    assert len(seen) == 11
    sample = page.get("umprobe_rtp_probe_success")[0][0]
    assert (
        sample
        == peer_labels(RTP, vantage="dc1")
        == {
            "peer": "mbx01",
            "vantage": "dc1",
            "role": "mailbox",
            "site": "ams",
        }
    )
    promtool_check(raw)


def test_rtp_blocks_are_kept_across_cycles_with_their_time() -> None:
    later = NOW + timedelta(minutes=1)
    first = rtp_result(RTP.spec, cycle=0)
    second = rtp_result(RTP.spec, cycle=1, silent=frozenset(RTP.spec.ports_for_cycle(1)), started_at=later)
    store = rtp_store(RTP, first)
    page, _ = collect(store)
    assert len(page.get("umprobe_rtp_block_reachable_ratio")) == 32
    store.record_rtp(RTP, second)
    page, _ = collect(store)
    ratios = {lab["block"]: v for lab, v in page.get("umprobe_rtp_block_reachable_ratio")}
    stamps = {lab["block"]: v for lab, v in page.get("umprobe_rtp_block_last_sampled_timestamp_seconds")}
    assert len(ratios) == 64, "cycle 1 samples the other 32 blocks; cycle 0's stay"
    first_blocks = {b.label for b in first.blocks if b.sampled}
    for label, value in ratios.items():
        if label in first_blocks:
            assert (value, stamps[label]) == (1.0, NOW.timestamp())
        else:
            assert (value, stamps[label]) == (0.0, later.timestamp())
    assert page.value("umprobe_rtp_sweep_progress_ratio") == 2 / 8
    assert page.value("umprobe_rtp_ports_probed_total", result="unreachable") == 32
    # the status page's map of every block as last sampled: cycle 0's blocks "#", cycle 1's "x"
    known = store.rtp_known_blocks(RTP.id)
    assert len(known) == 64 and all(b.sampled for b in known)
    assert {b.symbol for b in known if b.label in first_blocks} == {"#"}
    assert {b.symbol for b in known if b.label not in first_blocks} == {"x"}


def test_a_failed_rtp_run_counts_its_reason_and_keeps_the_blocks() -> None:
    store = rtp_store(RTP, rtp_result(RTP.spec, cycle=0))
    store.record_rtp(RTP, rtp_result(RTP.spec, cycle=1, reason=RtpReason.CONTROL_AUTH_FAILED))
    page, raw = collect(store)
    assert page.value("umprobe_rtp_probe_success") == 0
    assert page.value("umprobe_rtp_failures_total", reason="control_auth_failed") == 1
    assert sum(v for _, v in page.get("umprobe_rtp_failures_total")) == 1
    assert page.value("umprobe_rtp_runs_total") == 2
    assert page.get("umprobe_rtp_loss_ratio") == [] and page.get("umprobe_rtp_jitter_seconds") == []
    assert len(page.get("umprobe_rtp_block_reachable_ratio")) == 32, "what cycle 0 found still stands"
    failed = store.rtp_last_failure(RTP.id)
    assert failed is not None and failed.reason is RtpReason.CONTROL_AUTH_FAILED
    promtool_check(raw)


def test_rtp_counters_exist_before_the_first_run() -> None:
    page, raw = collect(rtp_store(RTP))
    assert page.get("umprobe_rtp_probe_success") == []
    assert page.value("umprobe_rtp_runs_total") == 0
    assert len(page.get("umprobe_rtp_failures_total")) == len(RTP_FAILURE_REASONS)
    assert len(page.get("umprobe_rtp_ports_probed_total")) == len(RTP_PORT_RESULTS)
    assert page.value("umprobe_rtp_rtt_seconds_count") == 0
    assert page.get("umprobe_rtp_block_reachable_ratio") == []
    promtool_check(raw)


def test_plain_echo_has_no_directional_loss() -> None:
    entry = rtp_config(name="echo01", host="echo01.contoso.local", plain_ports=(40000, 40002), labels=())
    page, raw = collect(rtp_store(entry, rtp_result(entry.spec)))
    assert page.value("umprobe_rtp_probe_success", peer="echo01") == 1
    assert page.get("umprobe_rtp_loss_ratio") == [] and page.get("umprobe_rtp_jitter_seconds") == []
    assert page.value("umprobe_rtp_ports_probed_total", result="reachable") == 2
    assert page.value("umprobe_rtp_sweep_progress_ratio") == 1
    assert {lab["block"] for lab, _ in page.get("umprobe_rtp_block_reachable_ratio")} == {
        "40000-40001",
        "40002-40002",
    }
    promtool_check(raw)


def test_set_rtp_keeps_unchanged_drops_removed_and_blocks_of_another_range() -> None:
    other = rtp_config(name="mbx02", host="mbx02.contoso.local")
    store = ResultStore()
    store.set_rtp([RTP, other])
    store.record_rtp(RTP, rtp_result(RTP.spec, cycle=0))
    store.record_rtp(other, rtp_result(other.spec, cycle=0))
    # a reload: mbx02 removed, mbx01 keeps its id with a wider range (blocks change, counters stay)
    wider = replace(RTP, spec=replace(RTP.spec, rtp_range=(20000, 21023)))
    store.set_rtp([wider])
    page, _ = collect(store)
    assert page.get("umprobe_rtp_runs_total", peer="mbx02") == []
    assert page.value("umprobe_rtp_runs_total", peer="mbx01") == 1
    new_labels = {f"{lo}-{hi}" for lo, hi in wider.spec.blocks()}
    kept = {lab["block"] for lab, _ in page.get("umprobe_rtp_block_reachable_ratio")}
    assert kept <= new_labels
    # a run of the removed peer that was in flight is ignored
    store.record_rtp(other, rtp_result(other.spec, cycle=1))
    assert store.rtp_latest(other.id) is None and store.rtp_stats(other.id) is None
    # an unchanged range keeps every block
    store.set_rtp([wider, other])
    store.record_rtp(wider, rtp_result(wider.spec, cycle=0))
    before = len(collect(store)[0].get("umprobe_rtp_block_reachable_ratio", peer="mbx01"))
    store.set_rtp([replace(wider, interval=120.0)])
    assert len(collect(store)[0].get("umprobe_rtp_block_reachable_ratio", peer="mbx01")) == before


# -- RFC 3263 listeners (address and port) and UDP retransmissions ---------------------------------------


def test_one_address_on_two_srv_ports_is_two_listeners() -> None:
    store = ResultStore()
    store.set_probes([UDP_SRV])
    a = result(UDP_SRV, address="127.0.0.1", port=5070, step="srv", retransmissions=1)
    b = result(
        UDP_SRV, address="127.0.0.1", port=5080, step="srv", reason=Reason.SIP_TIMEOUT, phase=Phase.SIP
    )
    store.record(UDP_SRV, [a, b])
    store.record(UDP_SRV, [replace(a, retransmissions=2), b])
    stats = {(s.address, s.port): s for s in store.address_stats(UDP_SRV.id)}
    assert set(stats) == {("", 5060), ("127.0.0.1", 5070), ("127.0.0.1", 5080)}  # ("", 5060): pinned
    assert (stats["127.0.0.1", 5070].runs, stats["127.0.0.1", 5080].runs) == (2, 2)
    assert dict(stats["127.0.0.1", 5080].failures)[Reason.SIP_TIMEOUT] == 2
    assert dict(stats["127.0.0.1", 5070].failures)[Reason.SIP_TIMEOUT] == 0
    assert (stats["127.0.0.1", 5070].retransmissions, stats["127.0.0.1", 5080].retransmissions) == (3, 0)
    page, raw = collect(store)
    sel = {"probe": "sip.contoso.com/udp", "address": "127.0.0.1"}
    assert page.value("umprobe_probe_success", port="5070", **sel) == 1
    assert page.value("umprobe_probe_success", port="5080", **sel) == 0
    assert page.value("umprobe_probe_failures_total", port="5080", reason="sip_timeout", **sel) == 2
    assert page.value("umprobe_sip_retransmissions_total", port="5070", **sel) == 3
    assert page.value("umprobe_sip_retransmissions_total", port="5080", **sel) == 0
    assert page.value("umprobe_sip_resolution_step_info", port="5070", step="srv", **sel) == 1
    assert page.value("umprobe_sip_resolution_step_info", port="5080", step="srv", **sel) == 1
    # the address-less key keeps the configured port and has neither a step nor retransmissions
    assert page.value("umprobe_probe_runs_total", address="", port="5060") == 0
    assert page.get("umprobe_sip_retransmissions_total", address="") == []
    assert page.value("umprobe_probe_interval_seconds", port="5060") == 30.0
    promtool_check(raw)


def test_stale_address_and_port_keys_are_forgotten_each_on_its_own() -> None:
    store = ResultStore()
    store.set_probes([UDP_SRV])
    store.record(UDP_SRV, [result(UDP_SRV, address="127.0.0.1", port=5070, step="srv")])
    for _ in range(STALE_RUNS):
        store.record(UDP_SRV, [result(UDP_SRV, address="127.0.0.1", port=5080, step="srv")])
    assert {(s.address, s.port) for s in store.address_stats(UDP_SRV.id)} == {("", 5060), ("127.0.0.1", 5080)}


def test_dns_error_of_an_rfc3263_probe_is_the_pinned_series() -> None:
    failed = result(UDP_SRV, address="", reason=Reason.DNS_ERROR, phase=Phase.RESOLVE, status=None, step=None)
    store = store_with(UDP_SRV, [failed])
    page, _ = collect(store)
    assert page.value("umprobe_probe_failures_total", address="", port="5060", reason="dns_error") == 1
    assert page.get("umprobe_sip_resolution_step_info") == []
    assert page.get("umprobe_sip_retransmissions_total") == []


def test_a_resolution_pages_have_no_step_and_only_udp_has_retransmissions() -> None:
    """The Exchange path: a/AAAA results carry no step, so no new series; TCP/TLS get no retransmissions."""
    store = everything_store(TLS)
    store.set_probes([TLS, TCP])  # UDP_SRV removed
    store.record(TCP, [result(TCP, address="192.0.2.10")])
    page, _ = collect(store)
    assert page.get("umprobe_sip_resolution_step_info") == []
    assert page.get("umprobe_sip_retransmissions_total") == []
    udp = probe_config(host="192.0.2.40", port=5060, transport="udp", listener="custom", module="sip_udp")
    store = store_with(udp, [result(udp, address="192.0.2.40", retransmissions=2)])
    page, _ = collect(store)
    assert page.value("umprobe_sip_retransmissions_total", address="192.0.2.40", port="5060") == 2
    assert page.get("umprobe_sip_resolution_step_info") == []


def test_probe_page_has_the_step_and_the_srv_port_but_no_counters() -> None:
    rs = [
        result(UDP_SRV, address="127.0.0.1", port=5070, step="naptr", retransmissions=2),
        result(UDP_SRV, address="127.0.0.1", port=5080, step="naptr"),
    ]
    body, _ = probe_page(UDP_SRV, rs, duration=0.2, debug=False)
    page = parse_page(body.decode())
    assert page.value("umprobe_sip_resolution_step_info", port="5070", step="naptr") == 1
    assert page.value("umprobe_probe_success", port="5080", address="127.0.0.1") == 1
    assert "umprobe_sip_retransmissions_total" not in page.names()
    promtool_check(body)
    debug, _ = probe_page(UDP_SRV, rs, duration=0.2, debug=True)
    assert b"resolution: RFC 3263, step naptr" in debug
    assert b"resolution: rfc3263 (ports from NAPTR/SRV)" in debug
