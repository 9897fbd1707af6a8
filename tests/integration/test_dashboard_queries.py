"""Every query of both Grafana dashboards, run through a real Prometheus against real series.

A module-scoped lab: the session's Kamailio (plain TCP and mutual TLS listeners, plus a closed port), an
`umprobe peer` echo peer on loopback, an `umprobe run` daemon probing them (SIP every second, one [[rtp]]
entry every 5 s), and a Prometheus 2.42 scraping the daemon's /metrics and a blackbox-style /probe target
every second. Each panel query has its Grafana variables substituted twice, once with the "All" value
(`.*`) and once with concrete label values, and must parse and return a non-empty instant vector.

The daemon also carries what the optional sections of the dashboards need, at no extra process:

- a `teams-direct-routing` profile target pointed at the same Kamailio mutual-TLS listener (`port_map`),
  so its policy is evaluated: the lab's client certificate is ECDSA (Teams takes RSA only), so at least
  `cert_key_size` fails and the listener is out of policy (gauges 0 and 1);
- a `[[listen]]` TCP section, pinged by the daemon itself (a module target pointed at it), so the caller
  127.0.0.1 is active with an interval, and an `expect`ed identity that never pings goes at_risk and
  demoted within seconds (thresholds of 5 and 7 s: far above the self-ping's 1 s interval);
- a module with up/down thresholds (`failures_before_down = 3`) on the closed port, so
  `umprobe_listener_up` is 0 there after three runs.
"""

from __future__ import annotations

import contextlib
import json
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import _LAB_PROCESSES, KamailioLab
from tests.integration.test_prometheus import _check_alive, _start_with_retry, _toml_str, wait_for
from tests.lab.pki import LabPKI
from tests.lab.ports import allocate_port
from tests.lab.proc import LabProcess
from tests.lab.prometheus import PrometheusServer

pytestmark = pytest.mark.lab

DASHBOARDS = Path(__file__).resolve().parents[2] / "dashboards"
RTP_RANGE = (21000, 21255)
PEER = "lab-peer"
WAIT = 40.0
TEAMS_NAME = "teams-lab"  # the teams-direct-routing target's name, in its `probe` label
SBC_FQDN = "probe.lab.test"  # the lab client certificate's name (tests/lab/pki.py), so cert_name_match passes
NEVER = "198.18.0.7"  # an expected inbound caller that never pings (an identity only: nothing is sent to it)

# Panels allowed to return no data in this lab, each with the reason; everything else must return data.
# The local_resource_error panels need no entry: umprobe_probe_failures_total has that reason at 0 from a
# listener's first run (docs/metrics.md), so their queries select real series here without exhausting
# the descriptors of a shared test machine. An entry must name an existing panel (checked below).
ALLOWED_EMPTY: dict[tuple[str, str], str] = {}

# Grafana's built-in variables, as they might be on a dashboard of the last few minutes.
BUILTINS = {
    "__rate_interval": "1m",
    "__interval": "15s",
    "__range": "5m",
    "__range_s": "300",
    "__range_ms": "300000",
    "__interval_ms": "15000",
}


@dataclass
class DashLab:
    daemon: LabProcess
    peer: LabProcess
    prometheus: PrometheusServer
    detail_probe: str  # the listener dashboard's `probe`: the Teams profile's mutual-TLS listener

    def check_alive(self) -> None:
        _check_alive(self.daemon, self.peer, self.prometheus.process)


def render_config(
    kamailio: KamailioLab, closed: tuple[str, int], pki: LabPKI, peer_port: int, inbound_port: int
) -> str:
    lo, hi = RTP_RANGE
    mtls_host, mtls_port = kamailio["mtls4"]
    lines = [
        "[defaults]",
        "interval = 1",
        "timeout = 0.8",
        "",
        "[modules.mtls]",
        'transport = "tls"',
        f"ca_file = {_toml_str(pki.ca_file)}",
        f"cert_file = {_toml_str(pki.client.cert_file)}",
        f"key_file = {_toml_str(pki.client.key_file)}",
        "",
        "[modules.sbc_thresholds]",
        'transport = "tcp"',
        "failures_before_down = 3",
        "successes_before_up = 2",
        "",
    ]
    for (host, port), module in (
        (kamailio["tcp4"], "sip_tcp"),
        (kamailio["mtls4"], "mtls"),
        (closed, "sbc_thresholds"),
    ):
        lines += ["[[targets]]", f"host = {_toml_str(host)}", f"port = {port}", f'module = "{module}"', ""]
    lines += [
        "[[targets]]",
        'profile = "teams-direct-routing"',
        f"host = {_toml_str(mtls_host)}",
        f'name = "{TEAMS_NAME}"',
        f'sbc_fqdn = "{SBC_FQDN}"',
        'tls_module = "mtls"',
        f"port_map = {{ 5061 = {mtls_port} }}",
        "",
        "[[targets]]",
        'host = "127.0.0.1"',
        'name = "inbound-pinger"',
        f"port = {inbound_port}",
        'module = "sip_tcp"',
        "",
        "[[listen]]",
        'name = "lab-gw"',
        f'address = "127.0.0.1:{inbound_port}"',
        f'expect = ["127.0.0.1", "{NEVER}"]',
        "at_risk_after = 5",
        "demoted_after = 7",
        "",
        "[[rtp]]",
        f'peer = "127.0.0.1:{peer_port}"',
        f'name = "{PEER}"',
        'secret_file = "peer.secret"',
        f'range = "{lo}-{hi}"',
        "samples = 8",
        "packets = 5",
        "concurrency = 8",
        "interval = 5",
        "",
        "[exporter]",
        'probe_allow = ["127.0.0.1/32"]',
        "",
    ]
    return "\n".join(lines)


@pytest.fixture(scope="module")
def dash_lab(
    kamailio_lab: KamailioLab, lab_pki: LabPKI, lab_dir: Path, closed_port: tuple[str, int]
) -> Iterator[DashLab]:
    workdir = lab_dir / "dashboard-queries"
    workdir.mkdir(exist_ok=True)
    secret = workdir / "peer.secret"
    secret.write_text("dashboards need a peer that shares this secret\n")
    secret.chmod(0o600)
    lo, hi = RTP_RANGE
    started: list[Any] = []
    try:

        def make_peer() -> tuple[LabProcess, int]:
            port = allocate_port()
            argv = [sys.executable, "-m", "umprobe.cli", "peer", "--listen", f"127.0.0.1:{port}"]
            argv += ["--secret-file", str(secret), "--media-host", "127.0.0.1", "--rtp-range", f"{lo}-{hi}"]
            argv += ["--rate-per-source", "2000", "--rate-global", "4000"]
            return LabProcess(
                "umprobe-peer-dashboards", argv, log_dir=workdir, ready=[("127.0.0.1", port)]
            ), port

        peer, peer_port = _start_with_retry(make_peer, lambda p: p[0].start())
        started.append(peer)
        _LAB_PROCESSES.append(peer)

        config = workdir / "probes.toml"

        def make_daemon() -> tuple[LabProcess, int]:
            # A fresh [[listen]] port on each attempt too: a taken one stops the daemon (EADDRINUSE).
            config.write_text(render_config(kamailio_lab, closed_port, lab_pki, peer_port, allocate_port()))
            port = allocate_port()
            argv = [sys.executable, "-m", "umprobe.cli", "run", "-c", str(config)]
            argv += ["--listen", f"127.0.0.1:{port}", "--log-format", "json"]
            return LabProcess("umprobe-dashboards", argv, log_dir=workdir, ready=[("127.0.0.1", port)]), port

        daemon, daemon_port = _start_with_retry(make_daemon, lambda d: d[0].start())
        started.append(daemon)
        _LAB_PROCESSES.append(daemon)

        address = f"127.0.0.1:{daemon_port}"
        mtls_port = kamailio_lab["mtls4"][1]
        tcp_host, tcp_port = kamailio_lab["tcp4"]
        prom_config = {
            "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
            "scrape_configs": [
                {"job_name": "umprobe", "static_configs": [{"targets": [address]}]},
                {
                    "job_name": "umprobe-probe",
                    "metrics_path": "/probe",
                    "params": {"module": ["sip_tcp"]},
                    "static_configs": [{"targets": [f"{tcp_host}:{tcp_port}"]}],
                    "relabel_configs": [
                        {"source_labels": ["__address__"], "target_label": "__param_target"},
                        {"source_labels": ["__param_target"], "target_label": "instance"},
                        {"target_label": "__address__", "replacement": address},
                    ],
                },
            ],
        }
        prometheus = _start_with_retry(
            lambda: PrometheusServer(
                prom_config, port=allocate_port(), log_dir=workdir, name="prometheus-dash"
            ),
            PrometheusServer.start,
        )
        started.append(prometheus)
        _LAB_PROCESSES.append(prometheus.process)
        lab = DashLab(daemon, peer, prometheus, f"{TEAMS_NAME}:{mtls_port}/tls")
        yield lab
        lab.check_alive()
    finally:
        for thing in reversed(started):
            thing.stop()


def panel_queries() -> list[tuple[str, str, str]]:
    """(dashboard file, panel title, expr) of every target of every panel of both dashboards."""
    out = []
    for path in sorted(DASHBOARDS.glob("*.json")):
        dashboard = json.loads(path.read_text())
        panels = [*dashboard["panels"], *(p for row in dashboard["panels"] for p in row.get("panels", []))]
        for panel in panels:
            for target in panel.get("targets", []):
                out.append((path.name, panel["title"], target["expr"]))
    return out


def substitute(expr: str, values: dict[str, str]) -> str:
    def one(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        if name not in values:
            raise AssertionError(f"unknown variable ${name} in {expr!r}")
        return values[name]

    return re.sub(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)", one, expr)


def variable_sets(lab: DashLab) -> dict[str, dict[str, str]]:
    everything = {"job": ".*", "target": ".*", "listener": ".*", "peer": ".*", "probe": lab.detail_probe}
    concrete = {
        "job": "umprobe",
        # Grafana regex-escapes a selected value of a =~ matcher: the PromQL literal "127\\\\.0\\\\.0\\\\.1"
        "target": "127\\\\.0\\\\.0\\\\.1",
        # two values selected: Grafana joins them as a regex group
        "listener": "(custom|sip_proxy)",
        "peer": PEER,
        "probe": lab.detail_probe,
    }
    return {"all": everything | BUILTINS, "concrete": concrete | BUILTINS}


def test_allow_list_names_existing_panels() -> None:
    titles = {(file, title) for file, title, _ in panel_queries()}
    assert set(ALLOWED_EMPTY) <= titles, set(ALLOWED_EMPTY) - titles
    assert all(reason.strip() for reason in ALLOWED_EMPTY.values())


def test_every_dashboard_query_returns_data(dash_lab: DashLab) -> None:
    queries = panel_queries()
    assert len(queries) >= 30, queries
    prometheus = dash_lab.prometheus

    def ready() -> bool:
        # RTP series with a completed run, and rate()-able histograms: two scrapes after the first samples.
        need = [
            f'umprobe_rtp_probe_success{{peer="{PEER}"}} == 1',
            'increase(umprobe_rtp_rtt_seconds_count{job="umprobe"}[1m]) > 0',
            'increase(umprobe_sip_response_seconds_count{job="umprobe"}[1m]) > 0',
            'umprobe_tls_version_info{job="umprobe"}',
            'umprobe_rtp_jitter_seconds{job="umprobe"}',
            'probe_success{job="umprobe-probe"}',
            # the optional sections: policy gauges, inbound callers in every state, thresholds judged down
            'umprobe_policy_rule_failed{job="umprobe"} == 1',
            'umprobe_policy_compliant{job="umprobe"}',
            'umprobe_inbound_interval_seconds{job="umprobe", identity="127.0.0.1"}',
            f'umprobe_inbound_demotion_state{{job="umprobe", identity="{NEVER}", state="demoted"}} == 1',
            'increase(umprobe_inbound_options_total{job="umprobe", status="200"}[1m]) > 0',
            'umprobe_listener_up{job="umprobe"} == 0',
        ]
        return all(prometheus.query(q) for q in need)

    wait_for(
        "RTP and SIP series in Prometheus",
        ready,
        bool,
        processes=(dash_lab.daemon, dash_lab.peer),
        timeout=WAIT,
    )

    sets = variable_sets(dash_lab)
    pending = {
        (name, file, title, expr)
        for name in sets
        for file, title, expr in queries
        if (file, title) not in ALLOWED_EMPTY
    }
    problems: dict[tuple[str, str, str, str], str] = {}

    def attempt() -> bool:
        for key in sorted(pending):
            name, _file, _title, expr = key
            promql = substitute(expr, sets[name])
            try:
                data = prometheus.api("query", query=promql)
            except AssertionError as exc:  # a parse error is final: no waiting makes it parse
                problems[key] = f"error: {exc}"
                pending.discard(key)
                continue
            if data["result"]:
                pending.discard(key)
                problems.pop(key, None)
            else:
                problems[key] = f"no data for {promql!r}"
        return not pending

    # A query may still lack its second sample right after `ready`: poll briefly before judging.
    with contextlib.suppress(AssertionError):  # the timeout: judged below, query by query
        wait_for("every panel query to return data", attempt, bool, processes=(), timeout=15)
    dash_lab.check_alive()
    assert not problems, "\n".join(
        f"[{name}] {file} / {title}: {why}" for (name, file, title, _), why in sorted(problems.items())
    )
    values_of_new_sections(dash_lab)


def panel_expr(file: str, title: str, ref: str = "A") -> str:
    dashboard = json.loads((DASHBOARDS / file).read_text())
    panels = [*dashboard["panels"], *(p for row in dashboard["panels"] for p in row.get("panels", []))]
    (panel,) = [p for p in panels if p["title"] == title]
    (target,) = [t for t in panel["targets"] if t["refId"] == ref]
    return str(target["expr"])


def values_of_new_sections(lab: DashLab) -> None:
    """Not only data: the values the lab's set-up implies, from the panels' own queries ("All" selected)."""
    everything = variable_sets(lab)["all"]

    def query(file: str, title: str, ref: str = "A") -> list[tuple[dict[str, str], float]]:
        return lab.prometheus.query(substitute(panel_expr(file, title, ref), everything))

    overview = "umprobe-overview.json"
    # The demotion state, encoded from the one-hot gauge: the self-pinging caller active (0), the
    # expected caller that never pings demoted (2); nobody else.
    states = {labels["identity"]: value for labels, value in query(overview, "Demotion state per caller")}
    assert states == {"127.0.0.1": 0.0, NEVER: 2.0}, states
    [(_, at_risk)] = query(overview, "Expected callers at risk or demoted")
    assert at_risk == 1.0
    # The Teams target against Kamailio: the ECDSA client certificate fails cert_key_size (Teams takes RSA
    # only); the name matches (sbc_fqdn is the certificate's name) and both EKUs are there. (Kamailio's
    # TLS 1.3 also fails tls_version_allowed today; that depends on the session Kamailio's TLS settings.)
    failing = {labels["rule"] for labels, _ in query(overview, "Failing rules now")}
    assert "cert_key_size" in failing and not failing & {"cert_name_match", "cert_eku_server_client"}, failing
    [(_, out_of_policy)] = query(overview, "Listeners out of policy")
    [(_, in_policy)] = query(overview, "Listeners in policy")
    assert (out_of_policy, in_policy) == (1.0, 0.0)
    # Thresholds: the closed port is down by them; nothing flapped.
    [(_, down)] = query(overview, "Down by thresholds")
    assert down == 1.0
    assert all(value == 0.0 for _, value in query(overview, "Transitions to down per hour"))
    # umprobe itself: no insecure probe configured, no local resource error.
    assert [value for _, value in query(overview, "Probes with verification off")] == [0.0]
    assert [value for _, value in query(overview, "Runs failed for lack of local resources (1 h)")] == [0.0]
    # The listener dashboard on the Teams probe: out of policy, the same two rules failing.
    [(_, compliant)] = query("umprobe-listener.json", "Policy")
    rules = {labels["rule"]: value for labels, value in query("umprobe-listener.json", "Policy rules")}
    assert compliant == 0.0 and {r for r, v in rules.items() if v == 1.0} == failing, rules
    assert rules["cert_name_match"] == 0.0 and rules["cert_eku_server_client"] == 0.0, rules
