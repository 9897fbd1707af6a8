"""Metrics are rendered in ONE place: here. Probes return values, the store keeps them, this turns them into
Prometheus metric families (docs/metrics.md lists every one, and a test holds the two to each other).

Two faces use it:

* `UmprobeCollector`: a custom prometheus_client `Collector` over a `ResultStore`, for the daemon's
  /metrics. Nothing is registered in prometheus_client's global registry and nothing is kept here: every
  scrape builds fresh families from the store's latest results and snapshots.
* `probe_page`: the blackbox_exporter-style /probe answer for one on-demand run, written as text (what a
  fresh registry would render): `probe_success` and `probe_duration_seconds` with blackbox's exact names
  and meaning, plus the per-listener `umprobe_` gauges of that run (the same code as /metrics,
  `_listener_samples`). With `debug=True` it is a text/plain story of the run instead (transcript, TLS
  details, the metrics that would have been returned, the probe's settings; file paths but never file
  contents).

Labels (ARCHITECTURE.md rule 6): every per-listener series carries `probe`, `target`, `address`, `port`,
`transport`, `listener`, then `vantage` when the collector has one, then the target's extra labels from the
config. All of these come from the configuration or from DNS answers for configured names, so they are
bounded (`port` is the configured listener port, or for `resolution = "rfc3263"` the port an SRV record of
a configured name gave; never a local or ephemeral one). Nothing the peer sends ever becomes a label
value: no reason phrase, no Server header, no Call-ID, no cipher string. The only peer-influenced label
value is the TLS `version`, one of a handful of protocol names (the RFC 3263 `step` is one of the five
fixed `umprobe.net.rfc3263.STEPS`). The config keeps
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

import bisect
import logging
import math
import platform
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, NamedTuple, cast

import OpenSSL
import trio
from OpenSSL import SSL
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, generate_latest
from prometheus_client.openmetrics.exposition import escape_label_name
from prometheus_client.registry import Collector, CollectorRegistry
from prometheus_client.utils import floatToGoString

from umprobe._version import __version__
from umprobe.config import BUILTIN_LABELS
from umprobe.inbound import OTHER as INBOUND_OTHER
from umprobe.inbound import STATES as INBOUND_STATES
from umprobe.inbound import InboundView
from umprobe.policy import Verdict, evaluate_probe
from umprobe.probes.result import ProbeResult, Reason
from umprobe.profiles import get_profile
from umprobe.store import AddressStats, HistogramSnapshot, ResultStore

if TYPE_CHECKING:
    from umprobe.config import ProbeConfig, RtpProbeConfig

__all__ = [
    "BASE_LABELS",
    "CONTENT_TYPE",
    "RESERVED_LABELS",
    "UmprobeCollector",
    "build_info_labels",
    "describe_result",
    "insecure_probes",
    "listener_labels",
    "peer_labels",
    "probe_page",
    "render_metrics",
    "write_metrics",
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
    "umprobe_sip_resolution_step_info": (
        "gauge",
        "How RFC 3263 resolution found this listener's address and port in the last run (value 1).",
    ),
    # per listener of a target whose profile has a policy (umprobe.policy)
    "umprobe_policy_compliant": (
        "gauge",
        "1 if the last run met every rule of the profile's policy, 0 if a rule failed; absent until judged.",
    ),
    "umprobe_policy_rule_failed": (
        "gauge",
        "1 if this rule of the profile's policy failed in the last run, 0 if it passed.",
    ),
    # per listener, accumulated over all runs
    "umprobe_probe_runs_total": ("counter", "Runs of this listener (one per address per run)."),
    "umprobe_probe_failures_total": ("counter", "Failed runs of this listener, by reason."),
    "umprobe_sip_retransmissions_total": (
        "counter",
        "SIP over UDP: OPTIONS requests re-sent to this listener per RFC 3261 Timer E, over all runs.",
    ),
    # per listener, judged by the module's up/down thresholds (umprobe.updown)
    "umprobe_listener_up": (
        "gauge",
        "1 if the listener is up by its module's thresholds, 0 if down; absent until first judged.",
    ),
    "umprobe_listener_transitions_total": (
        "counter",
        "Changes of the listener's up/down state by its module's thresholds, by the state changed to.",
    ),
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
    # per inbound OPTIONS listener ([[listen]]) and calling identity (umprobe.inbound)
    "umprobe_inbound_options_total": (
        "counter",
        "Inbound OPTIONS from the identity, by the answer sent (200, or unsent when writing it failed).",
    ),
    "umprobe_inbound_last_seen_timestamp_seconds": (
        "gauge",
        "When the identity's latest inbound OPTIONS arrived, unix seconds.",
    ),
    "umprobe_inbound_last_good_timestamp_seconds": (
        "gauge",
        "When the identity last got a 2xx answer to an OPTIONS, unix seconds.",
    ),
    "umprobe_inbound_interval_seconds": (
        "gauge",
        "Observed interval between two OPTIONS of the identity: the median of the latest 8 gaps.",
    ),
    "umprobe_inbound_silence_seconds": (
        "gauge",
        "Seconds since the identity's last good OPTIONS exchange (expected and never seen: since start).",
    ),
    "umprobe_inbound_demotion_state": (
        "gauge",
        "1 for the identity's state in the demotion view (active, at_risk, demoted, waiting), else 0.",
    ),
    "umprobe_inbound_expected": ("gauge", "1 if the identity is listed in the listener's expect, else 0."),
    "umprobe_inbound_demotion_threshold_seconds": (
        "gauge",
        "Silence beyond which an identity of the listener is at_risk or demoted.",
    ),
    "umprobe_inbound_identities_evicted_total": (
        "counter",
        "Identities dropped to stay within max_identities; their counts moved to the (other) identity.",
    ),
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
    "umprobe_config_insecure_probes": (
        "gauge",
        "Configured TLS probes (SIP listeners, [[rtp]] control channels) with certificate verification off.",
    ),
    "umprobe_scheduler_skipped_slots_total": (
        "counter",
        "Planned runs not started because the probe's previous run was still going (no overlap).",
    ),
}

_PROBE_SUCCESS_HELP = "Displays whether or not the probe was a success"
_PROBE_DURATION_HELP = "Returns how long the probe took to complete in seconds"

#: Probes walked between two `yield`s of `UmprobeCollector._walk` (a checkpoint in the async renderer).
_WALK_CHUNK = 50


def _escape_value(value: str) -> str:
    """A label value as the text format writes it (prometheus_client's escaping, exactly)."""
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


_float_to_go = cast("Callable[[float], str]", floatToGoString)  # prometheus_client's, untyped
_VALUE_TEXT: dict[float, str] = {}
_VALUE_TEXT_CAP = 16384


def _value_text(value: float) -> str:
    """`floatToGoString(value)`: remembered for whole numbers (counters and bucket counts repeat a lot);
    `repr` for the positive numbers below 1e6, where floatToGoString is `repr` too."""
    if type(value) is not float:
        value = float(value)
    if value == 0.0:  # 0.0 and -0.0 are one key of a dict, but two texts
        return "0.0" if math.copysign(1.0, value) > 0 else "-0.0"
    text = _VALUE_TEXT.get(value)
    if text is None:
        if 0.0 < value < 1e6 and not value.is_integer():
            return repr(value)
        text = _float_to_go(value)
        if len(_VALUE_TEXT) < _VALUE_TEXT_CAP and value.is_integer():
            _VALUE_TEXT[value] = text
    return text


_REASON_TEXT: dict[Reason, str] = {reason: reason.value for reason in Reason}  # Enum.value is slow
_PAIR_TEXT: dict[tuple[str, str], str] = {}
_PAIR_TEXT_CAP = 4096


def _pair_text(name: str, value: str) -> str:
    """`name="value"` as the text format writes it; remembered, since the names and values an extra label
    takes (`phase`, `reason`, `le`, `version`, ...) are a fixed few."""
    text = _PAIR_TEXT.get((name, value))
    if text is None:
        text = f'{escape_label_name(name)}="{_escape_value(value)}"'
        if len(_PAIR_TEXT) < _PAIR_TEXT_CAP:
            _PAIR_TEXT[(name, value)] = text
    return text


class _LabelSet:
    """One series' labels: the dict (for prometheus_client's families) and, made once, its text form.

    The text form is what `generate_latest` writes between the braces: names sorted, values escaped.
    `with_extra(name, value)` inserts one more label (`phase`, `reason`, `le`, ...) in its sorted place by
    cutting the text where it goes, so a listener's 37 lines cost string joins, not 37 sorts and escapes.
    A collector keeps a listener's `_LabelSet` from scrape to scrape while its `ProbeConfig` is the same
    (10,000 listeners keep 20,000 of them: they hold the text and the cut points, nothing more).
    """

    __slots__ = ("_cuts", "_keys", "labels", "text")

    def __init__(self, labels: dict[str, str]) -> None:
        self.labels = labels
        items = sorted(labels.items())
        pairs = [f'{escape_label_name(name)}="{_escape_value(value)}"' for name, value in items]
        self.text = ",".join(pairs)
        self._keys = tuple(name for name, _ in items)
        cuts: list[int] = []
        at = 0
        for pair in pairs:
            cuts.append(at)  # where the pair starts in `text`
            at += len(pair) + 1
        self._cuts = tuple(cuts)

    def split(self, name: str) -> tuple[str, str]:
        """(text before, text after) label `name` in sorted order, commas included."""
        at = bisect.bisect_left(self._keys, name)
        if at == len(self._keys):
            return (f"{self.text}," if self.text else "", "")
        cut = self._cuts[at]
        return self.text[:cut], f",{self.text[cut:]}"

    def with_extra(self, name: str, value: str) -> str:
        """The text form with one more label (replacing one of that name, as `{**labels, name: value}`)."""
        if name in self.labels:
            return _LabelSet({**self.labels, name: value}).text
        before, after = self.split(name)
        return before + _pair_text(name, value) + after


_Labels = _LabelSet | dict[str, str]


def _label_set(labels: _Labels) -> _LabelSet:
    return labels if isinstance(labels, _LabelSet) else _LabelSet(labels)


class _Families:
    """Families by name, created on first use, emitted in `_FAMILIES` order; empty ones are left out.

    The prometheus_client face (`collect()`; the reference the /probe page is tested against).
    `_TextFamilies` is its fast twin for /metrics and /probe; both take the same calls, so a result becomes
    samples in one place whichever renders it."""

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

    def add(self, name: str, labels: _Labels, value: float, extra: tuple[str, str] | None = None) -> None:
        plain = labels.labels if isinstance(labels, _LabelSet) else labels
        if extra is not None:
            plain = {**plain, extra[0]: extra[1]}
        self._family(name).add_sample(name, plain, value)

    def add_many(self, name: str, labels: _Labels, extra: str, values: Iterable[tuple[str, float]]) -> None:
        """`add` of one sample per (value of label `extra`, sample value)."""
        for label_value, value in values:
            self.add(name, labels, value, (extra, label_value))

    def histogram(self, name: str, labels: _Labels, snap: HistogramSnapshot) -> None:
        plain = labels.labels if isinstance(labels, _LabelSet) else labels
        family = self._family(name)
        for bound, count in snap.buckets:
            family.add_sample(f"{name}_bucket", {**plain, "le": repr(float(bound))}, float(count))
        family.add_sample(f"{name}_bucket", {**plain, "le": "+Inf"}, float(snap.count))
        family.add_sample(f"{name}_count", plain, float(snap.count))
        family.add_sample(f"{name}_sum", plain, snap.sum)

    def emit(self) -> Iterator[Metric]:
        for name in _FAMILIES:
            family = self._families.get(name)
            if family is not None and family.samples:
                yield family

    def flush(self) -> None:
        """Nothing to do: the prometheus_client families are the output."""


class _TextFamilies:
    """The text-format twin of `_Families`: each sample becomes its exposition line at once, byte for byte
    what `generate_latest` writes for the same families (a test holds the two together).

    Lines are kept per family, so the page comes out family by family in `_FAMILIES` order: `flush()`
    (called every `_WALK_CHUNK` probes) encodes the lines gathered since the last flush into one chunk of
    their family, and `parts()` hands out every family's HELP and TYPE lines and chunks in order. At 10,000
    listeners the page (~60 MB) is then held once, as some hundred chunks, never as 370,000 small strings
    nor copied into one body.
    """

    def __init__(self) -> None:
        self._lines: defaultdict[str, list[str]] = defaultdict(list)
        self._chunks: dict[str, list[bytes]] = {}
        self.started: set[str] = set()  # families whose HELP and TYPE lines are out (or in `_chunks`)

    @staticmethod
    def _line(name: str, text: str, value: float) -> str:
        if text:
            return f"{name}{{{text}}} {_value_text(float(value))}\n"
        return f"{name} {_value_text(float(value))}\n"

    def add(self, name: str, labels: _Labels, value: float, extra: tuple[str, str] | None = None) -> None:
        if not isinstance(labels, _LabelSet):
            labels = _LabelSet(labels)
        text = labels.text if extra is None else labels.with_extra(*extra)
        if text:
            self._lines[name].append(f"{name}{{{text}}} {_value_text(value)}\n")
        else:
            self._lines[name].append(f"{name} {_value_text(value)}\n")

    def add_many(self, name: str, labels: _Labels, extra: str, values: Iterable[tuple[str, float]]) -> None:
        """`add` of one sample per (value of label `extra`, sample value), cutting the label text once."""
        labels = _label_set(labels)
        if extra in labels.labels:
            for label_value, value in values:
                self.add(name, labels, value, (extra, label_value))
            return
        before, after = labels.split(extra)
        head = f"{name}{{{before}"
        tail = f"{after}}} "
        lines = self._lines[name]
        for label_value, value in values:
            lines.append(f"{head}{_pair_text(extra, label_value)}{tail}{_value_text(value)}\n")

    def histogram(self, name: str, labels: _Labels, snap: HistogramSnapshot) -> None:
        labels = _label_set(labels)
        lines = self._lines[name]
        if "le" in labels.labels:  # `le` is reserved, so never; but then exactly as `_Families` does
            for bound, count in snap.buckets:
                lines.append(self._line(f"{name}_bucket", labels.with_extra("le", repr(float(bound))), count))
            lines.append(self._line(f"{name}_bucket", labels.with_extra("le", "+Inf"), snap.count))
        else:
            before, after = labels.split("le")
            head = f'{name}_bucket{{{before}le="'
            tail = f'"{after}}} '
            for bound, count in snap.buckets:
                lines.append(f"{head}{_le_text(bound)}{tail}{_value_text(float(count))}\n")
            lines.append(f"{head}+Inf{tail}{_value_text(float(snap.count))}\n")
        braces = f"{{{labels.text}}}" if labels.text else ""
        lines.append(f"{name}_count{braces} {_value_text(float(snap.count))}\n")
        lines.append(f"{name}_sum{braces} {_value_text(snap.sum)}\n")

    def flush(self) -> None:
        for name, lines in self._lines.items():
            if lines:
                chunks = self._chunks.get(name)
                if chunks is None:
                    chunks = self._chunks[name] = [] if name in self.started else [_HEADERS[name]]
                    self.started.add(name)
                chunks.append("".join(lines).encode("utf-8"))
                lines.clear()

    def parts(self) -> list[bytes]:
        """What was gathered since the last call, in pieces: per family with samples, in `_FAMILIES` order,
        its HELP and TYPE lines (the first time only), then its chunks. Calling it more than once splits a
        family only if there is more than one: callers do that only for one-family sections."""
        self.flush()
        chunks, self._chunks = self._chunks, {}
        return [part for name in _FAMILIES if name in chunks for part in chunks[name]]


_LE_TEXT: dict[float, str] = {}


def _le_text(bound: float) -> str:
    text = _LE_TEXT.get(bound)
    if text is None:
        text = _LE_TEXT[bound] = _escape_value(repr(float(bound)))  # bucket bounds are a fixed few
    return text


def _header(name: str) -> bytes:
    """The HELP and TYPE lines `generate_latest` writes for family `name`."""
    typ, doc = _FAMILIES[name]
    if typ == "counter":  # prometheus_client keeps a counter's name without `_total` and adds it back
        name = name.removesuffix("_total") + "_total"
    doc = doc.replace("\\", r"\\").replace("\n", r"\n")
    return f"# HELP {name} {doc}\n# TYPE {name} {typ}\n".encode()


_Sink = _Families | _TextFamilies


_HEADERS: dict[str, bytes] = {name: _header(name) for name in _FAMILIES}


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


def _rtp_samples(families: _Sink, store: ResultStore, probe: RtpProbeConfig, vantage: str | None) -> None:
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


def _inbound_samples(families: _Sink, view: InboundView) -> None:
    """Every `umprobe_inbound_*` series of one listener. `identity` is a certificate FQDN or a source
    address: bounded by the listener's `expect` plus `max_identities` (umprobe.inbound), never more."""
    listen = {"listen": view.listen}
    for identity in view.identities:
        labels = _LabelSet({"listen": view.listen, "identity": identity.identity})
        for answer, count in identity.answers:
            families.add("umprobe_inbound_options_total", labels, float(count), ("status", answer))
        if identity.last_seen is not None:
            families.add("umprobe_inbound_last_seen_timestamp_seconds", labels, identity.last_seen)
        if identity.last_good is not None:
            families.add("umprobe_inbound_last_good_timestamp_seconds", labels, identity.last_good)
        if identity.interval is not None:
            families.add("umprobe_inbound_interval_seconds", labels, identity.interval)
        families.add("umprobe_inbound_silence_seconds", labels, identity.silence)
        for state in INBOUND_STATES:
            value = 1.0 if identity.state == state else 0.0
            families.add("umprobe_inbound_demotion_state", labels, value, ("state", state))
        families.add("umprobe_inbound_expected", labels, 1.0 if identity.expected else 0.0)
    other = _LabelSet({"listen": view.listen, "identity": INBOUND_OTHER})
    for answer, count in view.other:
        families.add("umprobe_inbound_options_total", other, float(count), ("status", answer))
    for state, seconds in (("at_risk", view.at_risk_after), ("demoted", view.demoted_after)):
        families.add("umprobe_inbound_demotion_threshold_seconds", listen, seconds, ("state", state))
    families.add("umprobe_inbound_identities_evicted_total", listen, float(view.evicted))


def listener_labels(
    probe: ProbeConfig, address: str, *, vantage: str | None = None, port: int | None = None
) -> dict[str, str]:
    """The label set of one listener (a probe on one address and port): `BASE_LABELS`, `vantage`, extra
    labels. `port` defaults to the configured one (what every result has unless NAPTR/SRV chose it)."""
    base = _probe_labels(probe, vantage)
    labels = {"probe": base.pop("probe"), "target": base.pop("target"), "address": address}
    labels.update(base)
    if port is not None and port != probe.spec.port:
        labels["port"] = str(port)
    return labels


def _policy_samples(families: _Sink, labels: _LabelSet, probe: ProbeConfig, result: ProbeResult) -> None:
    """The policy gauges of one result of a profile target: `profile` is the profile's name and `rule` one
    of the fixed `umprobe.policy.RULES`, so both are bounded; the details stay on the status page."""
    assert probe.profile is not None
    policy = get_profile(probe.profile).policy
    if policy is None:
        return
    report = evaluate_probe(policy, probe.spec, result)
    with_profile = _LabelSet({**labels.labels, "profile": probe.profile})
    if report.compliant is not None:
        families.add("umprobe_policy_compliant", with_profile, 1.0 if report.compliant else 0.0)
    for rule in report.results:
        if rule.verdict in (Verdict.PASS, Verdict.FAIL):
            value = 1.0 if rule.verdict is Verdict.FAIL else 0.0
            families.add("umprobe_policy_rule_failed", with_profile, value, ("rule", rule.rule))


def _listener_samples(
    families: _Sink, labels: _LabelSet, result: ProbeResult, *, fallback_ts: float | None
) -> None:
    """The per-listener gauges of one result: the one place a `ProbeResult` becomes samples."""
    families.add("umprobe_probe_success", labels, 1.0 if result.success else 0.0)
    families.add("umprobe_probe_alive", labels, 1.0 if result.alive else 0.0)
    phases = [(phase, seconds) for phase, seconds in result.timings.as_dict().items() if seconds is not None]
    families.add_many("umprobe_probe_duration_seconds", labels, "phase", phases)
    families.add("umprobe_sip_status_code", labels, float(result.status_code or 0))
    if result.retry_after is not None:
        families.add("umprobe_sip_retry_after_seconds", labels, float(result.retry_after))
    tls = result.tls
    if tls is not None:
        if tls.version:
            families.add("umprobe_tls_version_info", labels, 1.0, ("version", tls.version))
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
    if result.step is not None:
        families.add("umprobe_sip_resolution_step_info", labels, 1.0, ("step", result.step))


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


def insecure_probes(store: ResultStore) -> int:
    """How many of the store's configured probes verify no certificate: TLS SIP listeners and `[[rtp]]`
    control channels over TLS with `insecure = true` (label-free, so one alert covers every probe)."""
    sip = sum(
        1
        for p in store.probes()
        if p.spec.transport == "tls" and p.spec.tls is not None and p.spec.tls.insecure
    )
    rtp = sum(1 for r in store.rtp_probes() if r.spec.tls is not None and r.spec.tls.insecure)
    return sip + rtp


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
        # (probe id, address or None, port) -> (the ProbeConfig it was made for, its label set)
        self._labels: dict[tuple[str, str | None, int], tuple[ProbeConfig, _LabelSet]] = {}
        self._next_labels: dict[tuple[str, str | None, int], tuple[ProbeConfig, _LabelSet]] = {}

    def collect(self) -> Iterator[Metric]:
        families = _Families()
        rows: list[_Row] = []
        for _ in self._take_rows(rows):
            pass
        for section, _streamed in _SECTIONS:
            for _ in section(self, families, rows):
                pass
        yield from families.emit()

    def pieces(self) -> Iterator[bytes | None]:
        """The text format of every family (byte for byte what `generate_latest` writes for `collect()`), in
        pieces, with a None every `_WALK_CHUNK` probes where an async caller can let other tasks run.

        The store is read first, probe by probe (`_take_rows`: each probe's results and counters belong
        together), then the page is written section by section from what was read. A section that writes
        one family hands out its chunks as they are made; the others hold theirs until the section ends
        (at 10,000 listeners the largest, the per-result gauges, is ~20 MB of the ~60 MB page), so the whole
        page never has to be in memory at once."""
        rows: list[_Row] = []
        yield from self._take_rows(rows)
        emitted: set[str] = set()
        for section, streamed in _SECTIONS:
            text = _TextFamilies()
            for _ in section(self, text, rows):
                if streamed:
                    if len(text.started) > 1:  # parts() mid-section would split a family
                        raise RuntimeError(f"a streamed section writes {sorted(text.started)}")
                    yield from text.parts()
                else:
                    text.flush()
                yield None
            yield from text.parts()
            if emitted & text.started:  # a family split over two sections would make the page invalid
                raise RuntimeError(f"families in two sections: {sorted(emitted & text.started)}")
            emitted |= text.started

    def _listener_labels(self, probe: ProbeConfig, address: str | None, port: int) -> _LabelSet:
        """The cached label set of `probe` on `address` and `port` (address None: the probe labels, without
        `address`)."""
        key = (probe.id, address, port)
        cached = self._labels.get(key)
        if cached is None or cached[0] is not probe:
            if address is None:
                labels = _LabelSet(_probe_labels(probe, self._vantage))
            else:
                labels = _LabelSet(listener_labels(probe, address, vantage=self._vantage, port=port))
            cached = (probe, labels)
        self._next_labels[key] = cached
        return cached[1]

    def _labels_of(self, probe: ProbeConfig, address: str, port: int) -> _LabelSet:
        """The label set `_take_rows` made for `probe` on `address` and `port`."""
        cached = self._labels.get((probe.id, address, port))
        if cached is None or cached[0] is not probe:  # another scrape's `_take_rows` ran meanwhile
            return _LabelSet(listener_labels(probe, address, vantage=self._vantage, port=port))
        return cached[1]

    def _take_rows(self, rows: list[_Row]) -> Iterator[None]:
        """Read every probe's latest results and counters from the store into `rows`, with their label
        sets; yields every `_WALK_CHUNK` probes. A probe is read in one step, so its series agree with each
        other; a scrape that pauses in between may show some probes after a run that others do not show
        yet, as any scrape that is not instantaneous."""
        store = self._store
        self._next_labels = {}
        seen: set[str] = set()
        for index, probe in enumerate(store.probes()):
            if index and index % _WALK_CHUNK == 0:
                yield
            labels = self._listener_labels(probe, None, probe.spec.port)
            if labels.text in seen:
                # Two probes with the same labels would make the whole page invalid; keep the first.
                if probe.id not in self._warned:
                    self._warned.add(probe.id)
                    _log.warning(
                        "probe %s has the same labels as another probe; its series are left out", probe.id
                    )
                continue
            seen.add(labels.text)
            results = store.latest(probe.id)
            stats = store.address_stats(probe.id)
            for address, port in {(r.address, r.port) for r in results} | {
                (s.address, s.port) for s in stats
            }:
                self._listener_labels(probe, address, port)
            rows.append(_Row(probe, labels, results, store.recorded_at(probe.id), stats))
        # Label sets of probes and addresses not seen in this walk are dropped (reloads, stale addresses).
        self._labels, self._next_labels = self._next_labels, {}

    # -- the sections of the page, in `_FAMILIES` order ----------------------------------------------------

    def _results_section(self, families: _Sink, rows: list[_Row]) -> Iterator[None]:
        for index, row in enumerate(rows):
            if index and index % _WALK_CHUNK == 0:
                yield
            for result in row.results:
                labels = self._labels_of(row.probe, result.address, result.port)
                _listener_samples(families, labels, result, fallback_ts=row.recorded)
                if row.probe.profile is not None:
                    _policy_samples(families, labels, row.probe, result)

    def _runs_section(self, families: _Sink, rows: list[_Row]) -> Iterator[None]:
        for index, row in enumerate(rows):
            if index and index % _WALK_CHUNK == 0:
                yield
            for stats in row.stats:
                labels = self._labels_of(row.probe, stats.address, stats.port)
                families.add("umprobe_probe_runs_total", labels, float(stats.runs))

    def _failures_section(self, families: _Sink, rows: list[_Row]) -> Iterator[None]:
        for index, row in enumerate(rows):
            if index and index % _WALK_CHUNK == 0:
                yield
            for stats in row.stats:
                labels = self._labels_of(row.probe, stats.address, stats.port)
                counts = [(_REASON_TEXT[reason], float(count)) for reason, count in stats.failures]
                families.add_many("umprobe_probe_failures_total", labels, "reason", counts)

    def _retransmissions_section(self, families: _Sink, rows: list[_Row]) -> Iterator[None]:
        for index, row in enumerate(rows):
            if index and index % _WALK_CHUNK == 0:
                yield
            if row.probe.spec.transport != "udp":
                continue
            for stats in row.stats:
                if stats.address:  # no address, nothing sent: the address-less key has no retransmissions
                    labels = self._labels_of(row.probe, stats.address, stats.port)
                    families.add("umprobe_sip_retransmissions_total", labels, float(stats.retransmissions))

    def _updown_section(self, families: _Sink, rows: list[_Row]) -> Iterator[None]:
        for index, row in enumerate(rows):
            if index and index % _WALK_CHUNK == 0:
                yield
            for stats in row.stats:
                if stats.state != "unknown":
                    labels = self._labels_of(row.probe, stats.address, stats.port)
                    families.add("umprobe_listener_up", labels, 1.0 if stats.state == "up" else 0.0)
        for index, row in enumerate(rows):
            if index and index % _WALK_CHUNK == 0:
                yield
            for stats in row.stats:
                labels = self._labels_of(row.probe, stats.address, stats.port)
                for to, count in (("up", stats.up_transitions), ("down", stats.down_transitions)):
                    families.add("umprobe_listener_transitions_total", labels, float(count), ("to", to))

    def _sip_response_section(self, families: _Sink, rows: list[_Row]) -> Iterator[None]:
        for index, row in enumerate(rows):
            if index and index % _WALK_CHUNK == 0:
                yield
            for stats in row.stats:
                if stats.address:  # no address, no SIP exchange: the address-less key has no histogram
                    labels = self._labels_of(row.probe, stats.address, stats.port)
                    families.histogram("umprobe_sip_response_seconds", labels, stats.sip_response)

    def _interval_section(self, families: _Sink, rows: list[_Row]) -> Iterator[None]:
        for index, row in enumerate(rows):
            if index and index % _WALK_CHUNK == 0:
                yield
            families.add("umprobe_probe_interval_seconds", row.labels, row.probe.interval)

    def _daemon_section(self, families: _Sink, rows: list[_Row]) -> Iterator[None]:
        store = self._store
        for rtp in store.rtp_probes():
            _rtp_samples(families, store, rtp, self._vantage)
        for view in store.inbound_views():
            _inbound_samples(families, view)
        families.add("umprobe_build_info", self._build_info, 1.0)
        reload = store.reload_status()
        families.add("umprobe_config_last_reload_successful", {}, 1.0 if reload.successful else 0.0)
        families.add(
            "umprobe_config_last_reload_success_timestamp_seconds", {}, reload.last_success_at or 0.0
        )
        families.histogram("umprobe_scheduler_lag_seconds", {}, store.scheduler_lag())
        families.add("umprobe_probes_in_flight", {}, float(store.in_flight))
        families.add("umprobe_config_insecure_probes", {}, float(insecure_probes(store)))
        families.add("umprobe_scheduler_skipped_slots_total", {}, float(store.skipped_slots))
        yield


class _Row(NamedTuple):
    """One probe as a scrape read it from the store: its labels, latest results and counters. (A tuple
    holding the store's own tuples: a scrape at 10,000 listeners makes 10,000 of these and nothing else
    that lives long enough for the garbage collector to care.)"""

    probe: ProbeConfig
    labels: _LabelSet  # the probe labels (no `address`)
    results: tuple[ProbeResult, ...]
    recorded: float | None
    stats: tuple[AddressStats, ...]


_Section = Callable[[UmprobeCollector, _Sink, list[_Row]], Iterator[None]]

#: The page's sections in order, and whether the section writes one family (so its chunks can go out as
#: they are made). Their families follow `_FAMILIES` order, and no family is in two sections.
_SECTIONS: tuple[tuple[_Section, bool], ...] = (
    (UmprobeCollector._results_section, False),
    (UmprobeCollector._runs_section, True),
    (UmprobeCollector._failures_section, True),
    (UmprobeCollector._retransmissions_section, True),
    (UmprobeCollector._updown_section, False),
    (UmprobeCollector._sip_response_section, True),
    (UmprobeCollector._interval_section, True),
    (UmprobeCollector._daemon_section, False),
)


def _collectors(registry: Collector) -> list[Collector] | None:
    """The collectors behind `registry` (itself, or those registered in a `CollectorRegistry`); None when
    they cannot be listed, and then `generate_latest` renders the registry as a whole."""
    if not isinstance(registry, CollectorRegistry):
        return [registry]
    # prometheus_client has no public list of a registry's collectors; its own collect() reads this.
    registered = getattr(registry, "_collector_to_names", None)
    if not isinstance(registered, dict) or getattr(registry, "_target_info", None):
        return None
    return list(registered)


def _pieces(registry: Collector) -> Iterator[bytes | None]:
    collectors = _collectors(registry)
    if collectors is None:
        yield generate_latest(registry)
        return
    for collector in collectors:
        if isinstance(collector, UmprobeCollector):
            yield from collector.pieces()
        else:
            yield generate_latest(collector)


def render_metrics(registry: Collector) -> bytes:
    """The Prometheus text format (0.0.4) of everything `registry` collects: byte for byte what
    `generate_latest(registry)` gives, but an `UmprobeCollector` writes its text itself (`_TextFamilies`),
    several times faster and without a prometheus_client object per sample."""
    return b"".join(piece for piece in _pieces(registry) if piece is not None)


#: `write_metrics` hands out pieces of about this size.
_WRITE_SIZE = 256 * 1024


async def write_metrics(registry: Collector, write: Callable[[bytes], Awaitable[None]]) -> None:
    """`render_metrics` for the daemon's /metrics, handed to `write` piece by piece as it is made, letting
    other trio tasks run every `_WALK_CHUNK` probes (a few milliseconds): at 10,000 listeners the page is
    ~65 MB, the scheduler must not wait for it, and the daemon never holds all of it. (Past the knee, with
    hundreds of runs a second waiting, each step waits for all of them: the page then takes long.)"""
    pending: list[bytes] = []
    size = 0
    for piece in _pieces(registry):
        if piece is None:
            await trio.lowlevel.checkpoint()
            continue
        pending.append(piece)
        size += len(piece)
        if size >= _WRITE_SIZE:
            await write(b"".join(pending))
            pending, size = [], 0
    if pending:
        await write(b"".join(pending))


def _probe_families(
    config: ProbeConfig, results: Sequence[ProbeResult], duration: float, vantage: str | None
) -> list[Metric]:
    success = GaugeMetricFamily("probe_success", _PROBE_SUCCESS_HELP)
    success.add_metric([], 1.0 if results and all(r.success for r in results) else 0.0)
    took = GaugeMetricFamily("probe_duration_seconds", _PROBE_DURATION_HELP)
    took.add_metric([], duration)
    families = _Families()
    for result in results:
        labels = _LabelSet(listener_labels(config, result.address, vantage=vantage, port=result.port))
        _listener_samples(families, labels, result, fallback_ts=None)
    return [success, took, *families.emit()]


def _probe_text(
    config: ProbeConfig, results: Sequence[ProbeResult], duration: float, vantage: str | None
) -> bytes:
    """What `generate_latest` writes for `_probe_families(...)`, byte for byte (tests/test_probe_page.py
    holds the two together), written by `_TextFamilies` without a prometheus_client object per sample."""
    text = _TextFamilies()
    for result in results:
        labels = _probe_label_set(config, result.address, result.port, vantage)
        _listener_samples(text, labels, result, fallback_ts=None)
    success = 1.0 if results and all(r.success for r in results) else 0.0
    page = [
        f"{_PROBE_HEADERS}probe_success {_value_text(success)}\n"
        f"{_PROBE_DURATION_HEADERS}probe_duration_seconds {_value_text(float(duration))}\n"
    ]
    # A page of a result or two: its lines joined once, in family order (not chunked per family).
    lines = text._lines
    for name in sorted(lines, key=_FAMILY_ORDER.__getitem__):
        if lines[name]:
            page.append(_HEADER_TEXT[name])
            page += lines[name]
    return "".join(page).encode("utf-8")


_HEADER_TEXT = {name: header.decode("utf-8") for name, header in _HEADERS.items()}
_FAMILY_ORDER = {name: index for index, name in enumerate(_FAMILIES)}


#: /probe label sets by (probe, address, vantage): /probe runs the same few probes again and again (the
#: exporter keeps their `ProbeConfig`s). The probe is held, so its id is never another's while cached.
_PROBE_LABELS: dict[tuple[int, str, int, str | None], tuple[ProbeConfig, _LabelSet]] = {}
_PROBE_LABELS_KEPT = 1024


def _probe_label_set(config: ProbeConfig, address: str, port: int, vantage: str | None) -> _LabelSet:
    key = (id(config), address, port, vantage)
    cached = _PROBE_LABELS.get(key)
    if cached is None or cached[0] is not config:
        if len(_PROBE_LABELS) >= _PROBE_LABELS_KEPT:
            _PROBE_LABELS.clear()
        labels = _LabelSet(listener_labels(config, address, vantage=vantage, port=port))
        cached = _PROBE_LABELS[key] = (config, labels)
    return cached[1]


_PROBE_HEADERS = f"# HELP probe_success {_PROBE_SUCCESS_HELP}\n# TYPE probe_success gauge\n"
_PROBE_DURATION_HEADERS = (
    f"# HELP probe_duration_seconds {_PROBE_DURATION_HELP}\n# TYPE probe_duration_seconds gauge\n"
)


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
    page = _probe_text(config, results, duration, vantage)
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
    if result.step is not None:
        lines.append(f"resolution: RFC 3263, step {result.step}")
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
    if result.retransmissions:
        lines.append(f"sip: {result.retransmissions} retransmission(s) (UDP, RFC 3261 Timer E)")
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
        *(
            [f"resolution: rfc3263 ({'port given' if spec.port_given else 'ports from NAPTR/SRV'})"]
            if spec.resolution == "rfc3263"
            else []
        ),
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
