"""One-shot checks: run a set of listener probes under one deadline, judge them the Nagios way, render them.

`umprobe check` and `umprobe demo` both go through here, so a row means the same everywhere:

* a *required* listener that fails is CRITICAL;
* an *optional* listener (a UM worker port; see `umprobe.profiles`) that fails is shown but judged only
  through its group: a group with no healthy member is CRITICAL;
* a healthy listener is WARNING/CRITICAL when its total probe time passes `--warn-rtt`/`--crit-rtt` or when
  the peer's leaf certificate or our client certificate has fewer days left than `--warn-days`/`--crit-days`.

Exit codes follow the Nagios plugin guidelines: 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN (usage or configuration
errors, raised before anything is probed).
"""

from __future__ import annotations

import enum
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import trio

from umprobe.net.tls import CertInfo
from umprobe.policy import PolicyReport, Verdict, evaluate_probe
from umprobe.probes.result import ProbeResult, Reason
from umprobe.probes.sip_options import SipProbeSpec, TLSContextCache, probe
from umprobe.profiles import get_profile

if TYPE_CHECKING:
    from umprobe.net.rfc3263 import DnsLookup

__all__ = [
    "CheckItem",
    "CheckReport",
    "Row",
    "State",
    "Thresholds",
    "evaluate",
    "render_json",
    "render_text",
    "run_check",
]

_MAX_CONCURRENT_PROBES = 64


class State(enum.IntEnum):
    OK = 0
    WARNING = 1
    CRITICAL = 2
    UNKNOWN = 3


@dataclass(frozen=True, slots=True)
class CheckItem:
    spec: SipProbeSpec
    required: bool = True
    group: str | None = None
    profile: str | None = None  # a profile with a policy (umprobe.policy) judges every row of this item


@dataclass(frozen=True, slots=True)
class Thresholds:
    warn_rtt: float | None = None
    crit_rtt: float | None = None
    warn_days: float | None = 30.0
    crit_days: float | None = 7.0


@dataclass(frozen=True, slots=True)
class Row:
    item: CheckItem
    result: ProbeResult
    state: State
    note: str  # why the state is not OK, or "" (the probe's own detail is in result.detail)
    policy: PolicyReport | None = None  # only for an item whose profile has a policy


@dataclass(frozen=True, slots=True)
class CheckReport:
    rows: tuple[Row, ...]
    state: State
    summary: str
    problems: tuple[str, ...]


async def run_check(
    items: Sequence[CheckItem],
    *,
    deadline: float,
    contexts: TLSContextCache | None = None,
    dns: DnsLookup | None = None,
) -> list[tuple[CheckItem, ProbeResult]]:
    """Probe every item concurrently under one absolute `deadline` (`trio.current_time()` units); `dns` is
    the nameserver client of items with `resolution = "rfc3263"` (one for the whole check)."""
    limiter = trio.CapacityLimiter(_MAX_CONCURRENT_PROBES)
    found: list[list[ProbeResult]] = [[] for _ in items]
    contexts = contexts or TLSContextCache()

    async def one(i: int, item: CheckItem) -> None:
        async with limiter:
            found[i] = await probe(item.spec, deadline=deadline, contexts=contexts, dns=dns)

    async with trio.open_nursery() as nursery:
        for i, item in enumerate(items):
            nursery.start_soon(one, i, item)
    return [(item, result) for item, results in zip(items, found, strict=True) for result in results]


def _days_left(cert: CertInfo | None, now: datetime) -> float | None:
    return None if cert is None else cert.days_left(now)


def _where(result: ProbeResult) -> str:
    host = f"[{result.address}]" if ":" in result.address else (result.address or result.target)
    return f"{result.listener} {result.transport} {host}:{result.port}"


def evaluate(
    pairs: Sequence[tuple[CheckItem, ProbeResult]], thresholds: Thresholds, *, now: datetime | None = None
) -> CheckReport:
    """Judge every row and the groups; the worst state wins."""
    now = now or datetime.now(UTC)
    rows: list[Row] = []
    problems: list[str] = []
    groups: dict[str, list[ProbeResult]] = {}
    local = [r for _, r in pairs if r.reason is Reason.LOCAL_RESOURCE_ERROR]
    if local:
        # This host, not the listeners: the check is incomplete, so UNKNOWN, and the first thing said.
        fds = any("EMFILE" in r.detail or "ENFILE" in r.detail for r in local)
        what = "file descriptors" if fds else "local resources"
        problems.append(
            f"umprobe ran out of {what} for {len(local)} of {len(pairs)} listener probes "
            f"(local_resource_error): raise the open-file limit (ulimit -n) or check fewer targets at once"
        )
    for item, result in pairs:
        if item.group:
            groups.setdefault(item.group, []).append(result)
        state, note = State.OK, ""
        if result.reason is Reason.LOCAL_RESOURCE_ERROR:
            state, note = State.UNKNOWN, result.reason.value
            rows.append(Row(item, result, state, note))
            continue
        if not result.success:
            state = State.CRITICAL if item.required else State.OK
            note = result.reason.value if item.required else f"{result.reason.value} (optional)"
        else:
            state, note = _thresholds(result, thresholds, now)
        report = _policy(item, result, now)
        if report is not None and report.failed:  # the far end would refuse this SBC: CRITICAL
            state = State.CRITICAL
            note = "; ".join(n for n in (note, f"policy: {', '.join(report.failed)} failed") if n)
        if state is not State.OK:
            problems.append(f"{_where(result)} {note}")
        rows.append(Row(item, result, state, note, report))
    worst = max((row.state for row in rows), default=State.UNKNOWN)
    for group, members in groups.items():
        if not any(member.success for member in members):
            worst = max(worst, State.CRITICAL)
            problems.append(f"no {group} listener answered ({len(members)} tried)")
    healthy = sum(1 for row in rows if row.result.success)
    summary = f"{healthy} of {len(rows)} listener probes healthy"
    judged = [row.policy for row in rows if row.policy is not None]
    if judged:
        compliant = sum(1 for report in judged if report.compliant)
        summary += f", {compliant} of {len(judged)} compliant with the {judged[0].policy} policy"
    return CheckReport(tuple(rows), State(worst), summary, tuple(problems))


def _policy(item: CheckItem, result: ProbeResult, now: datetime) -> PolicyReport | None:
    if item.profile is None:
        return None
    policy = get_profile(item.profile).policy
    return None if policy is None else evaluate_probe(policy, item.spec, result, now=now)


def _policy_lines(row: Row, *, verbose: bool) -> list[str]:
    report = row.policy
    if report is None:
        return []
    verdict = {True: "compliant", False: "NOT compliant", None: "not judged yet"}[report.compliant]
    lines = [f"{_where(row.result)}: {report.policy} policy: {verdict}"]
    for rule in report.results:
        if verbose or rule.verdict in (Verdict.FAIL, Verdict.UNKNOWN):
            lines.append(f"    {rule.verdict.value:7} {rule.rule}: {rule.detail}")
    return lines


def _thresholds(result: ProbeResult, t: Thresholds, now: datetime) -> tuple[State, str]:
    state, notes = State.OK, []
    total = result.timings.total or 0.0
    if t.crit_rtt is not None and total > t.crit_rtt:
        state = State.CRITICAL
        notes.append(f"total {total * 1000:.1f} ms > crit-rtt {t.crit_rtt * 1000:.0f} ms")
    elif t.warn_rtt is not None and total > t.warn_rtt:
        state = State.WARNING
        notes.append(f"total {total * 1000:.1f} ms > warn-rtt {t.warn_rtt * 1000:.0f} ms")
    leaf = result.tls.peer_chain[0] if result.tls and result.tls.peer_chain else None
    for label, cert in (("peer certificate", leaf), ("client certificate", result.client_cert)):
        days = _days_left(cert, now)
        if days is None:
            continue
        if t.crit_days is not None and days < t.crit_days:
            state = State.CRITICAL
            notes.append(f"{label} expires in {days:.1f} days (crit-days {t.crit_days:g})")
        elif t.warn_days is not None and days < t.warn_days:
            state = max(state, State.WARNING)
            notes.append(f"{label} expires in {days:.1f} days (warn-days {t.warn_days:g})")
    return state, "; ".join(notes)


# ---------------------------------------------------------------------------------------------- rendering


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value * 1000:.1f}ms"


def _perf_label(result: ProbeResult) -> str:
    return f"{result.listener}_{result.transport}_{result.port}_{result.address or result.target}"


def _perfdata(report: CheckReport, t: Thresholds) -> str:
    warn = "" if t.warn_rtt is None else f"{t.warn_rtt:g}"
    crit = "" if t.crit_rtt is None else f"{t.crit_rtt:g}"
    parts = []
    for row in report.rows:
        total = row.result.timings.total
        if total is not None:
            parts.append(f"'{_perf_label(row.result)}'={total:.6f}s;{warn};{crit};0;")
    return " ".join(parts)


def render_text(report: CheckReport, thresholds: Thresholds, *, verbose: bool = False) -> str:
    """Nagios-style first line (state, summary, perfdata), then one aligned row per listener and address."""
    now = datetime.now(UTC)
    first = f"UMPROBE {report.state.name} - {report.summary}"
    if report.problems:
        first += "; " + "; ".join(report.problems[:5])
        if len(report.problems) > 5:
            first += f"; and {len(report.problems) - 5} more"
    perf = _perfdata(report, thresholds)
    lines = [f"{first} | {perf}" if perf else first, ""]
    header: tuple[str, ...] = (
        "LISTENER",
        "TRANSPORT",
        "ADDRESS",
        "PORT",
        "STATUS",
        "CONNECT",
        "TLS",
        "SIP",
        "TOTAL",
        "CERT",
        "RESULT",
    )
    steps = any(row.result.step is not None for row in report.rows)  # RFC 3263: how each address was found
    if steps:
        header = (*header[:4], "STEP", *header[4:])
    table: list[tuple[str, ...]] = [header]
    for row in report.rows:
        r = row.result
        leaf = r.tls.peer_chain[0] if r.tls and r.tls.peer_chain else None
        days = _days_left(leaf, now)
        status = "-" if r.status_code is None else str(r.status_code)
        if row.state is State.OK and r.success:
            verdict = "OK" + (f" ({row.note})" if row.note else "")
        elif row.state is State.OK:
            verdict = f"down, optional: {r.reason.value}"
        else:
            verdict = f"{row.state.name}: {row.note}"
        cells = (
            r.listener,
            r.transport + (" (insecure)" if r.insecure else ""),
            r.address or r.target,
            str(r.port),
            *((r.step or "-",) if steps else ()),
            status,
            _ms(r.timings.connect),
            _ms(r.timings.tls),
            _ms(r.timings.sip),
            _ms(r.timings.total),
            "-" if days is None else f"{days:.0f}d",
            verdict,
        )
        table.append(cells)
    widths = [max(len(line[i]) for line in table) for i in range(len(header))]
    for line in table:
        lines.append("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(line)).rstrip())
    details = []
    for row in report.rows:
        r = row.result
        if not r.success or verbose:
            text = f"{_where(r)}: {r.reason.value}"
            if r.phase is not None:
                text += f" in phase {r.phase.value}"
            if r.detail:
                text += f": {r.detail}"
            if r.server:
                text += f" [Server: {r.server}]"
            if r.ms_diagnostics:
                text += f" [ms-diagnostics: {r.ms_diagnostics}]"
            if r.retry_after is not None:
                text += f" [Retry-After: {r.retry_after}s]"
            details.append(text)
            if verbose:
                details.extend(f"    {e.at * 1000:8.1f}ms {e.kind:5} {_indent(e.text)}" for e in r.transcript)
    for row in report.rows:
        details.extend(_policy_lines(row, verbose=verbose))
    if details:
        lines.append("")
        lines.extend(details)
    if any(row.result.insecure for row in report.rows):
        lines.append("")
        lines.append(
            "WARNING: --insecure: TLS certificates were NOT verified for the rows marked (insecure)."
        )
    return "\n".join(lines)


def _indent(text: str) -> str:
    return text.rstrip("\r\n").replace("\r\n", "\n").replace("\n", "\n" + " " * 20)


def _cert_json(cert: CertInfo | None, now: datetime) -> dict[str, Any] | None:
    if cert is None:
        return None
    return {
        "subject": cert.subject,
        "issuer": cert.issuer,
        "san": list(cert.san),
        "not_before": cert.not_before.isoformat(),
        "not_after": cert.not_after.isoformat(),
        "days_left": round(cert.days_left(now), 3),
        "sha256": cert.sha256,
        "key_type": cert.key_type,
    }


def result_json(row: Row, now: datetime) -> dict[str, Any]:
    r = row.result
    tls: dict[str, Any] | None = None
    if r.tls is not None:
        tls = {
            "version": r.tls.version,
            "cipher": r.tls.cipher,
            "verified": r.tls.verified,
            "verify_error": r.tls.verify_error,
            "peer_certificate": _cert_json(r.tls.peer_chain[0] if r.tls.peer_chain else None, now),
            "chain_length": len(r.tls.peer_chain),
            "client_certificate_requested": r.tls.client_cert_requested,
        }
    out: dict[str, Any] = {
        "target": r.target,
        "address": r.address,
        "family": r.family,
        "port": r.port,
        "transport": r.transport,
        "listener": r.listener,
        "required": row.item.required,
        "state": row.state.name,
        "success": r.success,
        "alive": r.alive,
        "reason": r.reason.value,
        "phase": None if r.phase is None else r.phase.value,
        "detail": r.detail,
        "status_code": r.status_code,
        "reason_phrase": r.reason_phrase,
        "timings": r.timings.as_dict(),
        "tls": tls,
        "client_certificate": _cert_json(r.client_cert, now),
        "insecure": r.insecure,
        "server": r.server,
        "ms_diagnostics": r.ms_diagnostics,
        "retry_after": r.retry_after,
        "provisional_responses": r.provisional_responses,
        "mismatched_responses": r.mismatched_responses,
        "retransmissions": r.retransmissions,
        "step": r.step,  # RFC 3263 (--resolution rfc3263): how the address was found; null for A/AAAA
    }
    if row.policy is not None:  # only rows of a profile with a policy: Exchange's JSON is unchanged
        out["policy"] = row.policy.as_dict()
    return out


def render_json(report: CheckReport) -> str:
    now = datetime.now(UTC)
    return json.dumps(
        {
            "status": report.state.name,
            "exit_code": int(report.state),
            "summary": report.summary,
            "problems": list(report.problems),
            "results": [result_json(row, now) for row in report.rows],
        },
        indent=2,
    )
