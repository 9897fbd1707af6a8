"""Metrics are rendered in ONE place: here. Probes return values, the store keeps them, this turns them into
Prometheus metric families (docs/metrics.md lists every one, and a test holds the two to each other).

Two faces use it:

* `UmprobeCollector`: a custom prometheus_client `Collector` over a `ResultStore`, for the daemon's
  /metrics. Nothing is registered in prometheus_client's global registry and nothing is kept here: every
  scrape builds fresh families from the store's latest results and snapshots.
* `probe_page`: the blackbox_exporter-style /probe answer for one on-demand run, rendered from a fresh
  registry: `probe_success` and `probe_duration_seconds` with blackbox's exact names and meaning, plus the
  per-listener `umprobe_` gauges of that run (the same code as /metrics, `_listener_samples`). With
  `debug=True` it is a text/plain story of the run instead (transcript, TLS details, the metrics that
  would have been returned, the probe's settings; file paths but never file contents).

Labels (ARCHITECTURE.md rule 6): every per-listener series carries `probe`, `target`, `address`, `port`,
`transport`, `listener`, then `vantage` when the collector has one, then the target's extra labels from the
config. All of these come from the configuration or from DNS answers for configured names, so they are
bounded (`port` is the configured listener port, never a local or ephemeral one). Nothing the peer sends
ever becomes a label value: no reason phrase, no Server header, no Call-ID, no cipher string. The only
peer-influenced label value is the TLS `version`, one of a handful of protocol names. The config keeps
`probe` values unique; should two probes still share a label set, the collector keeps the first and logs.

RTP peers (`[[rtp]]`) have series of their own, `umprobe_rtp_*`, labelled by *peer labels*: `peer` (the
entry's name, unique in the config), `vantage`, then the entry's extra labels; plus `block` ("LO-HI", one
of at most 64 fixed blocks of the configured range), `direction` (`forward`, `return`), `result` (a port
state) or `reason` (an `RtpReason`). A port number is never a label value: per-port detail lives on the
status page only. Blocks are reported from the store's last sample of each (a run samples only one cycle
of the sweep), with the time of that sample beside the ratio.

Samples are built with `add_sample` on families from `prometheus_client.core` created without fixed label
names, because the set of extra labels differs from target to target.
"""

from __future__ import annotations

import logging
import platform
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import OpenSSL
from OpenSSL import SSL
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, generate_latest
from prometheus_client.registry import Collector, CollectorRegistry

from umprobe._version import __version__
from umprobe.config import BUILTIN_LABELS
from umprobe.probes.result import ProbeResult
from umprobe.store import HistogramSnapshot, ResultStore

if TYPE_CHECKING:
    from umprobe.config import ProbeConfig, RtpProbeConfig

__all__ = [
    "BASE_LABELS",
    "CONTENT_TYPE",
    "RESERVED_LABELS",
    "UmprobeCollector",
    "build_info_labels",
    "describe_result",
    "listener_labels",
    "peer_labels",
    "probe_page",
    "render_metrics",
]

_log = logging.getLogger(__name__)

#: The Prometheus text format (0.0.4): what every Prometheus and promtool version reads.
CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4

#: Labels every per-listener series carries, in this order (then `vantage`, then the extra labels).
BASE_LABELS: tuple[str, ...] = ("probe", "target", "address", "port", "transport", "listener")

#: Label names a target's extra labels must not use; the config rejects them, and should one slip through it
#: is exported as `exported_<name>` rather than clash.
RESERVED_LABELS: frozenset[str] = BUILTIN_LABELS

_PHASES = ("resolve", "connect", "tls", "sip", "total")

# name -> (type, help). The order here is the order on the page.
_FAMILIES: dict[str, tuple[str, str]] = {
    # per listener (latest run); also on the /probe page
    "umprobe_probe_success": (
        "gauge",
        "1 if the listener answered with an accepted SIP status over a good connection, else 0.",
    ),
    "umprobe_probe_alive": (
        "gauge",
        "1 if the listener sent a final SIP response (accepted or not), else 0.",
    ),
    "umprobe_probe_duration_seconds": (
        "gauge",
        "Seconds spent in each phase of the last run; phases that never ran are omitted.",
    ),
    "umprobe_sip_status_code": (
        "gauge",
        "Status code of the final SIP response of the last run; 0 when there was none.",
    ),
    "umprobe_sip_retry_after_seconds": (
        "gauge",
        "Retry-After of the last SIP response, in seconds; present only when the peer sent one.",
    ),
    "umprobe_tls_version_info": (
        "gauge",
        "The TLS version the last handshake negotiated (value 1).",
    ),
    "umprobe_tls_peer_cert_expiry_timestamp_seconds": (
        "gauge",
        "notAfter of the peer's leaf certificate, unix seconds; present when the peer sent one.",
    ),
    "umprobe_tls_peer_verified": (
        "gauge",
        "1 if the peer's certificate chain and name verified, else 0 (also when verification is off).",
    ),
    "umprobe_tls_client_cert_expiry_timestamp_seconds": (
        "gauge",
        "notAfter of our client certificate for this listener, unix seconds.",
    ),
    "umprobe_tls_insecure": (
        "gauge",
        "1 if this TLS listener is probed with certificate verification off (insecure), else 0.",
    ),
    "umprobe_probe_last_run_timestamp_seconds": (
        "gauge",
        "When the last run of this listener started, unix seconds.",
    ),
    # per listener, accumulated over all runs
    "umprobe_probe_runs_total": ("counter", "Runs of this listener (one per address per run)."),
    "umprobe_probe_failures_total": ("counter", "Failed runs of this listener, by reason."),
    "umprobe_sip_response_seconds": (
        "histogram",
        "SIP phase (request sent .. final response parsed) of runs that got a final response.",
    ),
    # per probe
    "umprobe_probe_interval_seconds": ("gauge", "The configured interval between runs of the probe."),
    # per RTP peer ([[rtp]])
    "umprobe_rtp_probe_success": (
        "gauge",
        "1 if the last RTP run completed (control channel and measurement worked), else 0.",
    ),
    "umprobe_rtp_block_reachable_ratio": (
        "gauge",
        "Share of the sampled ports of a block of the RTP range that answered, when it was last sampled.",
    ),
    "umprobe_rtp_block_last_sampled_timestamp_seconds": (
        "gauge",
        "When a port of this block of the RTP range was last measured, unix seconds.",
    ),
    "umprobe_rtp_loss_ratio": (
        "gauge",
        "Packet loss of the last RTP run over its reachable ports, per direction (peer mode only).",
    ),
    "umprobe_rtp_jitter_seconds": (
        "gauge",
        "RFC 3550 interarrival jitter of the last RTP run (its worst port), per direction.",
    ),
    "umprobe_rtp_sweep_progress_ratio": (
        "gauge",
        "How far through the sweep of the RTP range the last run got: (cycle + 1) / cycles per sweep.",
    ),
    "umprobe_rtp_last_run_timestamp_seconds": ("gauge", "When the last RTP run started, unix seconds."),
    "umprobe_rtp_runs_total": ("counter", "RTP runs (one cycle of the sweep each)."),
    "umprobe_rtp_failures_total": ("counter", "RTP runs that failed, by reason."),
    "umprobe_rtp_ports_probed_total": ("counter", "Sampled RTP ports, by what was found."),
    "umprobe_rtp_rtt_seconds": ("histogram", "Round-trip time of every RTP echo (peer processing excluded)."),
    # the daemon
    "umprobe_build_info": ("gauge", "umprobe's version and the Python, pyOpenSSL and OpenSSL it runs on."),
    "umprobe_config_last_reload_successful": (
        "gauge",
        "1 if the last configuration (re)load succeeded, else 0.",
    ),
    "umprobe_config_last_reload_success_timestamp_seconds": (
        "gauge",
        "When the configuration was last (re)loaded successfully, unix seconds; 0 if never.",
    ),
    "umprobe_scheduler_lag_seconds": (
        "histogram",
        "How late scheduled runs started against their planned slot.",
    ),
    "umprobe_probes_in_flight": ("gauge", "Scheduled runs in progress right now."),
    "umprobe_scheduler_skipped_slots_total": (
        "counter",
        "Planned runs not started because the probe's previous run was still going (no overlap).",
    ),
}

_PROBE_SUCCESS_HELP = "Displays whether or not the probe was a success"
_PROBE_DURATION_HELP = "Returns how long the probe took to complete in seconds"


class _Families:
    """Families by name, created on first use, emitted in `_FAMILIES` order; empty ones are left out."""

    def __init__(self) -> None:
        self._families: dict[str, Metric] = {}

    def _family(self, name: str) -> Metric:
        family = self._families.get(name)
        if family is None:
            typ, doc = _FAMILIES[name]
            if typ == "counter":
                family = CounterMetricFamily(name, doc)
            elif typ == "histogram":
                family = HistogramMetricFamily(name, doc)
            else:
                family = GaugeMetricFamily(name, doc)
            self._families[name] = family
        return family

    def add(self, name: str, labels: dict[str, str], value: float) -> None:
        self._family(name).add_sample(name, labels, value)

    def histogram(self, name: str, labels: dict[str, str], snap: HistogramSnapshot) -> None:
        family = self._family(name)
        for bound, count in snap.buckets:
            family.add_sample(f"{name}_bucket", {**labels, "le": repr(float(bound))}, float(count))
        family.add_sample(f"{name}_bucket", {**labels, "le": "+Inf"}, float(snap.count))
        family.add_sample(f"{name}_count", labels, float(snap.count))
        family.add_sample(f"{name}_sum", labels, snap.sum)

    def emit(self) -> Iterator[Metric]:
        for name in _FAMILIES:
            family = self._families.get(name)
            if family is not None and family.samples:
                yield family


def _probe_labels(probe: ProbeConfig, vantage: str | None) -> dict[str, str]:
    """The labels of a probe without `address`, in exposition order."""
    spec = probe.spec
    labels = {
        "probe": probe.name,
        "target": probe.target,
        "port": str(spec.port),
        "transport": spec.transport,
        "listener": spec.listener,
    }
    if vantage:
        labels["vantage"] = vantage
    for name, value in probe.labels:
        labels[f"exported_{name}" if name in RESERVED_LABELS else name] = value
    return labels


def peer_labels(probe: RtpProbeConfig, *, vantage: str | None = None) -> dict[str, str]:
    """The label set of an RTP peer's series: `peer`, `vantage`, extra labels."""
    labels = {"peer": probe.name}
    if vantage:
        labels["vantage"] = vantage
    for name, value in probe.labels:
        labels[f"exported_{name}" if name in RESERVED_LABELS else name] = value
    return labels


def _rtp_samples(families: _Families, store: ResultStore, probe: RtpProbeConfig, vantage: str | None) -> None:
    """Every `umprobe_rtp_*` series of one peer: the one place an `RtpResult` becomes samples."""
    labels = peer_labels(probe, vantage=vantage)
    latest = store.rtp_latest(probe.id)
    if latest is not None:
        families.add("umprobe_rtp_probe_success", labels, 1.0 if latest.success else 0.0)
        totals = latest.totals
        if latest.authenticated:  # a plain echo cannot tell the directions apart
            for direction, ratio in (("forward", totals.loss_forward), ("return", totals.loss_return)):
                if ratio is not None:
                    families.add("umprobe_rtp_loss_ratio", {**labels, "direction": direction}, ratio)
        for direction, jitter in (("forward", totals.jitter_forward), ("return", totals.jitter_return)):
            if jitter is not None:
                families.add("umprobe_rtp_jitter_seconds", {**labels, "direction": direction}, jitter)
        if latest.cycles_per_sweep > 0:
            progress = (latest.cycle % latest.cycles_per_sweep + 1) / latest.cycles_per_sweep
            families.add("umprobe_rtp_sweep_progress_ratio", labels, progress)
        started = latest.started_at.timestamp() if latest.started_at else store.rtp_recorded_at(probe.id)
        if started is not None:
            families.add("umprobe_rtp_last_run_timestamp_seconds", labels, started)
    stats = store.rtp_stats(probe.id)
    if stats is None:
        return
    for seen in stats.blocks:
        ratio = seen.block.ratio
        if ratio is None:  # pragma: no cover - the store keeps measured blocks only
            continue
        block = {**labels, "block": seen.block.label}
        families.add("umprobe_rtp_block_reachable_ratio", block, ratio)
        families.add("umprobe_rtp_block_last_sampled_timestamp_seconds", block, seen.sampled_at)
    families.add("umprobe_rtp_runs_total", labels, float(stats.runs))
    for reason, count in stats.failures:
        families.add("umprobe_rtp_failures_total", {**labels, "reason": reason.value}, float(count))
    for state, count in stats.ports:
        families.add("umprobe_rtp_ports_probed_total", {**labels, "result": state}, float(count))
    families.histogram("umprobe_rtp_rtt_seconds", labels, stats.rtt)


def listener_labels(probe: ProbeConfig, address: str, *, vantage: str | None = None) -> dict[str, str]:
    """The label set of one listener (a probe on one address): `BASE_LABELS`, `vantage`, extra labels."""
    base = _probe_labels(probe, vantage)
    labels = {"probe": base.pop("probe"), "target": base.pop("target"), "address": address}
    labels.update(base)
    return labels


def _listener_samples(
    families: _Families, labels: dict[str, str], result: ProbeResult, *, fallback_ts: float | None
) -> None:
    """The per-listener gauges of one result: the one place a `ProbeResult` becomes samples."""
    families.add("umprobe_probe_success", labels, 1.0 if result.success else 0.0)
    families.add("umprobe_probe_alive", labels, 1.0 if result.alive else 0.0)
    for phase, seconds in result.timings.as_dict().items():
        if seconds is not None:
            families.add("umprobe_probe_duration_seconds", {**labels, "phase": phase}, seconds)
    families.add("umprobe_sip_status_code", labels, float(result.status_code or 0))
    if result.retry_after is not None:
        families.add("umprobe_sip_retry_after_seconds", labels, float(result.retry_after))
    tls = result.tls
    if tls is not None:
        if tls.version:
            families.add("umprobe_tls_version_info", {**labels, "version": tls.version}, 1.0)
        if tls.peer_chain:
            leaf = tls.peer_chain[0]
            families.add("umprobe_tls_peer_cert_expiry_timestamp_seconds", labels, leaf.not_after.timestamp())
            families.add("umprobe_tls_peer_verified", labels, 1.0 if tls.verified else 0.0)
    if result.client_cert is not None:
        families.add(
            "umprobe_tls_client_cert_expiry_timestamp_seconds",
            labels,
            result.client_cert.not_after.timestamp(),
        )
    if result.transport == "tls":
        families.add("umprobe_tls_insecure", labels, 1.0 if result.insecure else 0.0)
    ts = result.started_at.timestamp() if result.started_at is not None else fallback_ts
    if ts is not None:
        families.add("umprobe_probe_last_run_timestamp_seconds", labels, ts)


def build_info_labels() -> dict[str, str]:
    """The labels of `umprobe_build_info`: versions fixed for the life of the process."""
    openssl = SSL.OpenSSL_version(SSL.OPENSSL_VERSION).decode("ascii", "replace")
    parts = openssl.split()
    if len(parts) >= 2 and parts[0] == "OpenSSL":
        openssl = parts[1]
    return {
        "version": __version__,
        "python": platform.python_version(),
        "pyopenssl": OpenSSL.__version__,
        "openssl": openssl,
    }


class UmprobeCollector(Collector):
    """Every umprobe family for /metrics, built from the store at each scrape.

    `vantage`, when given, is added as a label to every per-probe series (where the probing happens from,
    for when several umprobe instances feed one Prometheus).
    """

    def __init__(self, store: ResultStore, *, vantage: str | None = None) -> None:
        self._store = store
        self._vantage = vantage or None
        self._build_info = build_info_labels()
        self._warned: set[str] = set()

    def collect(self) -> Iterator[Metric]:
        store = self._store
        families = _Families()
        seen: set[tuple[tuple[str, str], ...]] = set()
        for probe in store.probes():
            labels = _probe_labels(probe, self._vantage)
            identity = tuple(sorted(labels.items()))
            if identity in seen:
                # Two probes with the same labels would make the whole page invalid; keep the first.
                if probe.id not in self._warned:
                    self._warned.add(probe.id)
                    _log.warning(
                        "probe %s has the same labels as another probe; its series are left out", probe.id
                    )
                continue
            seen.add(identity)
            families.add("umprobe_probe_interval_seconds", labels, probe.interval)
            recorded = store.recorded_at(probe.id)
            for result in store.latest(probe.id):
                address_labels = listener_labels(probe, result.address, vantage=self._vantage)
                _listener_samples(families, address_labels, result, fallback_ts=recorded)
            for stats in store.address_stats(probe.id):
                address_labels = listener_labels(probe, stats.address, vantage=self._vantage)
                families.add("umprobe_probe_runs_total", address_labels, float(stats.runs))
                for reason, count in stats.failures:
                    families.add(
                        "umprobe_probe_failures_total",
                        {**address_labels, "reason": reason.value},
                        float(count),
                    )
                if stats.address:  # no address, no SIP exchange: the address-less key has no histogram
                    families.histogram("umprobe_sip_response_seconds", address_labels, stats.sip_response)
        for rtp in store.rtp_probes():
            _rtp_samples(families, store, rtp, self._vantage)
        families.add("umprobe_build_info", self._build_info, 1.0)
        reload = store.reload_status()
        families.add("umprobe_config_last_reload_successful", {}, 1.0 if reload.successful else 0.0)
        families.add(
            "umprobe_config_last_reload_success_timestamp_seconds", {}, reload.last_success_at or 0.0
        )
        families.histogram("umprobe_scheduler_lag_seconds", {}, store.scheduler_lag())
        families.add("umprobe_probes_in_flight", {}, float(store.in_flight))
        families.add("umprobe_scheduler_skipped_slots_total", {}, float(store.skipped_slots))
        yield from families.emit()


class _Static(Collector):
    def __init__(self, families: Sequence[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterator[Metric]:
        yield from self._families


def render_metrics(registry: Collector) -> bytes:
    """The Prometheus text format (0.0.4) of everything `registry` collects."""
    return generate_latest(registry)


def _probe_families(
    config: ProbeConfig, results: Sequence[ProbeResult], duration: float, vantage: str | None
) -> list[Metric]:
    success = GaugeMetricFamily("probe_success", _PROBE_SUCCESS_HELP)
    success.add_metric([], 1.0 if results and all(r.success for r in results) else 0.0)
    took = GaugeMetricFamily("probe_duration_seconds", _PROBE_DURATION_HELP)
    took.add_metric([], duration)
    families = _Families()
    for result in results:
        _listener_samples(
            families, listener_labels(config, result.address, vantage=vantage), result, fallback_ts=None
        )
    return [success, took, *families.emit()]


def probe_page(
    config: ProbeConfig,
    results: Sequence[ProbeResult],
    *,
    duration: float,
    debug: bool,
    timeout: float | None = None,
    vantage: str | None = None,
) -> tuple[bytes, str]:
    """The /probe answer for one run: (body, content type); `debug=True` gives the text/plain story."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Static(_probe_families(config, results, duration, vantage)))
    page = render_metrics(registry)
    if not debug:
        return page, CONTENT_TYPE
    text = _debug_text(config, results, duration=duration, timeout=timeout, page=page.decode("utf-8"))
    return text.encode("utf-8"), "text/plain; charset=utf-8"


# -- debug text ------------------------------------------------------------------------------------------


def _fmt_seconds(value: float | None) -> str:
    return "-" if value is None else f"{value * 1000:.1f} ms"


def _indent(text: str, prefix: str) -> str:
    return "\n".join(prefix + line for line in text.replace("\r\n", "\n").rstrip("\n").split("\n"))


def describe_result(result: ProbeResult) -> list[str]:
    """A result as text lines: verdict, timings, SIP answer, TLS details, transcript (no file contents)."""
    where = result.address or "(no address)"
    lines = [f"== {result.listener} {result.transport} {where} port {result.port} ({result.family or '-'})"]
    verdict = "OK" if result.success else f"FAILED: {result.reason.value}"
    if result.phase is not None:
        verdict += f" in phase {result.phase.value}"
    lines.append(f"result: {verdict}")
    if result.detail:
        lines.append(f"detail: {result.detail}")
    if result.started_at is not None:
        lines.append(f"started: {result.started_at.astimezone(UTC).isoformat()}")
    lines.append(
        "timings: " + ", ".join(f"{p} {_fmt_seconds(v)}" for p, v in result.timings.as_dict().items())
    )
    if result.status_code is not None:
        lines.append(f"sip: {result.status_code} {result.reason_phrase or ''}".rstrip())
        if result.server:
            lines.append(f"sip server: {result.server}")
        if result.ms_diagnostics:
            lines.append(f"sip ms-diagnostics: {result.ms_diagnostics}")
        if result.retry_after is not None:
            lines.append(f"sip retry-after: {result.retry_after} s")
    if result.provisional_responses or result.mismatched_responses:
        lines.append(
            f"sip: {result.provisional_responses} provisional, "
            f"{result.mismatched_responses} mismatched response(s) ignored"
        )
    tls = result.tls
    if tls is not None:
        lines.append(
            f"tls: {tls.version or '-'} {tls.cipher or '-'}, verified={tls.verified}"
            + (" (verification off: insecure)" if result.insecure else "")
        )
        if tls.verify_error:
            lines.append(f"tls verify error: {tls.verify_error}")
        lines.append(
            f"tls client certificate: requested={tls.client_cert_requested}, sent={tls.client_cert_sent}"
        )
        for name in tls.client_ca_names:
            lines.append(f"tls acceptable client CA: {name}")
        for depth, cert in enumerate(tls.peer_chain):
            lines.append(
                f"tls peer certificate {depth}: subject {cert.subject}; issuer {cert.issuer}; "
                f"not after {cert.not_after.isoformat()}; sha256 {cert.sha256}"
            )
            if cert.san:
                lines.append(f"  names: {', '.join(cert.san)}")
    if result.client_cert is not None:
        cert = result.client_cert
        lines.append(
            f"our client certificate: subject {cert.subject}; issuer {cert.issuer}; "
            f"not after {cert.not_after.isoformat()}"
        )
    if result.transcript:
        lines.append("transcript:")
        for entry in result.transcript:
            lines.append(
                f"  +{entry.at * 1000:8.1f} ms {entry.kind:<5} " + _indent(entry.text, " " * 20).lstrip()
            )
    return lines


def _settings(config: ProbeConfig, timeout: float | None) -> list[str]:
    spec = config.spec
    lines = [
        f"module: {config.module}",
        f"host: {spec.host}",
        f"port: {spec.port}",
        f"transport: {spec.transport}",
        f"listener: {spec.listener}",
        f"families: {', '.join(spec.families)}",
        f"accept_status: {', '.join(str(c) for c in sorted(spec.accept_status))}",
        f"server_name: {spec.server_name or '-'}",
        f"from_domain: {spec.from_domain or '-'}",
        f"timeout used: {'-' if timeout is None else f'{timeout:.3f} s'}"
        f" (module timeout {config.timeout:g} s)",
    ]
    if spec.tls is not None:
        tls = spec.tls
        lines += [
            f"tls.ca_file: {tls.ca_file or '(system trust store)'}",
            f"tls.cert_file: {tls.cert_file or '-'}",
            f"tls.key_file: {tls.key_file or '-'}",
            f"tls.insecure: {tls.insecure}",
            f"tls.min_version: {tls.min_version}",
            f"tls.max_version: {tls.max_version or '-'}",
            f"tls.ciphers: {tls.ciphers or '-'}",
        ]
    return lines


def _debug_text(
    config: ProbeConfig,
    results: Sequence[ProbeResult],
    *,
    duration: float,
    timeout: float | None,
    page: str,
) -> str:
    now = datetime.now(UTC).isoformat(timespec="seconds")
    success = bool(results) and all(r.success for r in results)
    out = [
        f"Probe {config.name} (module {config.module}) at {now}",
        f"probe_success {1 if success else 0} after {duration:.6f} s, {len(results)} address(es)",
        "",
    ]
    for result in results:
        out += describe_result(result)
        out.append("")
    out += ["", "Metrics that would have been returned:", page.rstrip("\n"), "", "", "Probe settings:"]
    out += [f"  {line}" for line in _settings(config, timeout)]
    return "\n".join(out) + "\n"
