"""umprobe's metrics as the real promtool and a real Prometheus see them, probing real Kamailio listeners.

One `umprobe run` subprocess (module-scoped) probes four listeners of the lab's Kamailio every second:
plain TCP (up), mutual TLS with the lab's client certificate (up), a closed port (down: connect refused)
and a TLS listener whose certificate carries another name (down: verification fails).

- promtool: `promtool check metrics` must be silent and exit 0 on the bytes of /metrics and of /probe
  pages for each of those listeners, fetched over HTTP from the running daemon.
- Prometheus 2.42 scrapes /metrics (scrape_interval 1 s) and three blackbox-style /probe targets with the
  standard relabelling; the series it stores are read back with PromQL through /api/v1/query.

Every wait polls with a bounded deadline; both processes run through `tests.lab.proc.LabProcess` (log in the
lab directory, SIGTERM then SIGKILL by PID, always reaped) and are registered with the conftest's list of
lab processes, so a failing test gets their log tails attached.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
from cryptography import x509
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import _LAB_PROCESSES, KamailioLab
from tests.lab.pki import LabPKI
from tests.lab.ports import allocate_port
from tests.lab.proc import LabError, LabProcess, LabStartError
from tests.lab.prometheus import PrometheusServer

pytestmark = pytest.mark.lab

_T = TypeVar("_T")

WAIT = 30.0  # upper bound of any single wait, in seconds
POLL = 0.2
PROBE_INTERVAL = 1.0
PROBE_TIMEOUT = 0.8
DOWN_REASON = "connect_refused"
WRONG_NAME_REASON = "tls_verify_failed"


@dataclass(frozen=True, slots=True)
class Case:
    """One configured probe of a Kamailio listener; `key` is its `lab_case` label."""

    key: str
    host: str
    port: int
    module: str
    up: bool

    @property
    def target(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @property
    def probe(self) -> str:
        """The `probe` label umprobe gives it."""
        transport = "tcp" if self.module == "sip_tcp" else "tls"
        return f"{self.target}/{transport}"


# -- the daemon ------------------------------------------------------------------------------------------


def _toml_str(value: object) -> str:
    return json.dumps(str(value))  # a JSON string of paths and names is a valid TOML basic string


def render_probes_toml(cases: list[Case], pki: LabPKI) -> str:
    lines = [
        "[defaults]",
        f"interval = {PROBE_INTERVAL}",
        f"timeout = {PROBE_TIMEOUT}",
        "",
        "[modules.mtls]",
        'transport = "tls"',
        f"ca_file = {_toml_str(pki.ca_file)}",
        f"cert_file = {_toml_str(pki.client.cert_file)}",
        f"key_file = {_toml_str(pki.client.key_file)}",
        "",
        "[modules.server_tls]",
        'transport = "tls"',
        f"ca_file = {_toml_str(pki.ca_file)}",
        "",
    ]
    for case in cases:
        lines += [
            "[[targets]]",
            f"host = {_toml_str(case.host)}",
            f"module = {_toml_str(case.module)}",
            f"port = {case.port}",
            f"labels = {{ lab_case = {_toml_str(case.key)} }}",
            "",
        ]
    lines += [
        "[exporter]",
        # /probe may reach the configured host anyway; the CIDRs also allow the ad-hoc [::1] target.
        'probe_allow = ["127.0.0.1/32", "::1/128"]',
        "",
        "[log]",
        'format = "json"',
        "",
    ]
    return "\n".join(lines)


@dataclass
class Umprobe:
    process: LabProcess
    port: int
    cases: dict[str, Case]
    adhoc_v6: Case  # a Kamailio TCP listener on ::1 that is not in probes.toml: /probe only

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        return f"http://{self.address}"

    def get(self, path: str, *, timeout: float = 5.0) -> tuple[int, str, bytes]:
        """(status, content type, body) of GET `path`; HTTP errors are returned, not raised."""
        try:
            with urllib.request.urlopen(self.base_url + path, timeout=timeout) as response:
                return response.status, response.headers.get("content-type", ""), response.read()
        except urllib.error.HTTPError as exc:
            with exc:
                return exc.code, exc.headers.get("content-type", ""), exc.read()

    def probe_path(self, case: Case) -> str:
        return "/probe?" + urllib.parse.urlencode({"target": case.target, "module": case.module})

    def samples(self, body: bytes) -> dict[str, list[tuple[dict[str, str], float]]]:
        """Sample name -> [(labels, value)] of a text-format page."""
        out: dict[str, list[tuple[dict[str, str], float]]] = {}
        for family in text_string_to_metric_families(body.decode("utf-8")):
            for sample in family.samples:
                out.setdefault(sample.name, []).append((dict(sample.labels), sample.value))
        return out

    def by_case(self, body: bytes, name: str, **match: str) -> dict[str, float]:
        """{lab_case: value} of one sample name, among the samples whose labels include `match`."""
        return {
            labels["lab_case"]: value
            for labels, value in self.samples(body).get(name, [])
            if "lab_case" in labels and all(labels.get(k) == v for k, v in match.items())
        }


def _start_with_retry(make: Callable[[], _T], start: Callable[[_T], object]) -> _T:
    """Build and start a process; if someone took its port meanwhile, try again with a fresh one."""
    for attempt in range(3):
        thing = make()
        try:
            start(thing)
        except LabStartError as exc:
            if exc.port_conflict and attempt < 2:
                continue
            pytest.fail(str(exc), pytrace=False)
        except LabError as exc:
            pytest.fail(str(exc), pytrace=False)
        return thing
    raise AssertionError("unreachable")


def _check_alive(*processes: LabProcess) -> None:
    for proc in processes:
        if not proc.is_alive():
            raise AssertionError(f"{proc.name} is not running\n{proc.describe(40)}")


def wait_for(
    what: str,
    fetch: Callable[[], _T],
    ok: Callable[[_T], bool],
    *,
    processes: tuple[LabProcess, ...],
    timeout: float = WAIT,
) -> _T:
    """Poll `fetch()` until `ok(value)`, at most `timeout` seconds; fail early if a process died."""
    deadline = time.monotonic() + timeout
    while True:
        _check_alive(*processes)
        last = fetch()
        if ok(last):
            return last
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}; last: {last!r}")
        time.sleep(POLL)


@pytest.fixture(scope="module")
def umprobe_daemon(
    kamailio_lab: KamailioLab, lab_pki: LabPKI, lab_dir: Path, closed_port: tuple[str, int]
) -> Iterator[Umprobe]:
    cases = [
        Case("tcp_up", *kamailio_lab["tcp4"], module="sip_tcp", up=True),
        Case("mtls_up", *kamailio_lab["mtls4"], module="mtls", up=True),
        Case("down", *closed_port, module="sip_tcp", up=False),
        Case("wrong_name", *kamailio_lab["tls_wrong_name"], module="server_tls", up=False),
    ]
    adhoc_v6 = Case("adhoc_v6", *kamailio_lab["tcp6"], module="sip_tcp", up=True)
    workdir = lab_dir / "prometheus-test"
    workdir.mkdir(exist_ok=True)
    config = workdir / "probes.toml"
    config.write_text(render_probes_toml(cases, lab_pki))

    def make() -> Umprobe:
        port = allocate_port()
        argv = [sys.executable, "-m", "umprobe.cli", "run", "-c", str(config)]
        argv += ["--listen", f"127.0.0.1:{port}", "--log-format", "json"]
        process = LabProcess("umprobe-prometheus-test", argv, log_dir=workdir, ready=[("127.0.0.1", port)])
        return Umprobe(process, port, {c.key: c for c in cases}, adhoc_v6)

    umprobe = _start_with_retry(make, lambda u: u.process.start())
    _LAB_PROCESSES.append(umprobe.process)
    try:
        wait_for(
            "/-/healthy",
            lambda: umprobe.get("/-/healthy")[:1],
            lambda got: got == (200,),
            processes=(umprobe.process,),
        )
        yield umprobe
        _check_alive(umprobe.process)
    finally:
        umprobe.process.stop()


def wait_first_results(umprobe: Umprobe) -> bytes:
    """/metrics once every configured listener has reported a run, with the TLS facts of the up mTLS one."""
    expected = {key: 1.0 if case.up else 0.0 for key, case in umprobe.cases.items()}

    def ready(body: bytes) -> bool:
        return umprobe.by_case(body, "umprobe_probe_success") == expected and "mtls_up" in umprobe.by_case(
            body, "umprobe_tls_version_info"
        )

    return wait_for(
        "every listener's first result on /metrics",
        lambda: umprobe.get("/metrics")[2],
        ready,
        processes=(umprobe.process,),
    )


# -- promtool --------------------------------------------------------------------------------------------


def promtool_check(page: bytes, what: str) -> None:
    """`promtool check metrics` on stdin: exit 0 and not a word on stdout or stderr."""
    promtool = shutil.which("promtool")
    assert promtool is not None, "promtool is not installed (Debian package prometheus; scripts/test)"
    done = subprocess.run(
        [promtool, "check", "metrics"], input=page, capture_output=True, timeout=30, check=False
    )
    assert (done.returncode, done.stdout, done.stderr) == (0, b"", b""), (
        f"promtool check metrics on {what}: exit {done.returncode}\n"
        f"stdout: {done.stdout.decode(errors='replace')}\nstderr: {done.stderr.decode(errors='replace')}"
    )


def test_promtool_is_clean_on_metrics_and_probe_pages(umprobe_daemon: Umprobe) -> None:
    umprobe = umprobe_daemon
    wait_first_results(umprobe)
    status, content_type, body = umprobe.get("/metrics")
    assert status == 200
    assert content_type.startswith("text/plain") and "version=0.0.4" in content_type
    # The page is the one we mean: every kind of listener is on it, with the series that differ by kind.
    assert umprobe.by_case(body, "umprobe_probe_success") == {
        "tcp_up": 1.0,
        "mtls_up": 1.0,
        "down": 0.0,
        "wrong_name": 0.0,
    }
    assert umprobe.by_case(body, "umprobe_probe_failures_total", reason=DOWN_REASON)["down"] >= 1
    assert umprobe.by_case(body, "umprobe_probe_failures_total", reason=WRONG_NAME_REASON)["wrong_name"] >= 1
    assert set(umprobe.by_case(body, "umprobe_tls_peer_verified")) >= {"mtls_up", "wrong_name"}
    assert umprobe.by_case(body, "umprobe_tls_peer_verified")["wrong_name"] == 0
    assert "mtls_up" in umprobe.by_case(body, "umprobe_tls_client_cert_expiry_timestamp_seconds")
    assert "umprobe_sip_response_seconds_bucket" in umprobe.samples(body)
    promtool_check(body, "/metrics")

    for case in [*umprobe.cases.values(), umprobe.adhoc_v6]:
        path = umprobe.probe_path(case)
        status, content_type, page = umprobe.get(path)
        assert status == 200, (path, page)
        assert content_type.startswith("text/plain") and "version=0.0.4" in content_type
        samples = umprobe.samples(page)
        assert samples["probe_success"] == [({}, 1.0 if case.up else 0.0)], (path, page.decode())
        assert [labels["probe"] for labels, _ in samples["umprobe_probe_success"]] == [case.probe]
        if case is umprobe.adhoc_v6:  # not configured: a custom listener without extra labels
            assert samples["umprobe_probe_success"][0][0]["listener"] == "custom"
            assert "lab_case" not in samples["umprobe_probe_success"][0][0]
        else:  # configured: the configured probe's labels
            assert samples["umprobe_probe_success"][0][0]["lab_case"] == case.key
        promtool_check(page, path)


# -- Prometheus ------------------------------------------------------------------------------------------


def prometheus_config(umprobe: Umprobe) -> dict[str, Any]:
    def probe_job(name: str, module: str, targets: list[str]) -> dict[str, Any]:
        return {
            "job_name": name,
            "metrics_path": "/probe",
            "params": {"module": [module]},
            "static_configs": [{"targets": targets}],
            "relabel_configs": [
                {"source_labels": ["__address__"], "target_label": "__param_target"},
                {"source_labels": ["__param_target"], "target_label": "instance"},
                {"target_label": "__address__", "replacement": umprobe.address},
            ],
        }

    cases = umprobe.cases
    return {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [
            {"job_name": "umprobe", "static_configs": [{"targets": [umprobe.address]}]},
            probe_job(
                "umprobe-probe-tcp",
                "sip_tcp",
                [cases["tcp_up"].target, umprobe.adhoc_v6.target, cases["down"].target],
            ),
            probe_job("umprobe-probe-mtls", "mtls", [cases["mtls_up"].target]),
        ],
    }


@dataclass
class Lab:
    umprobe: Umprobe
    prometheus: PrometheusServer

    def query(self, promql: str) -> list[tuple[dict[str, str], float]]:
        return self.prometheus.query(promql)

    def wait_query(
        self, promql: str, ok: Callable[[list[tuple[dict[str, str], float]]], bool], what: str = ""
    ) -> list[tuple[dict[str, str], float]]:
        return wait_for(
            f"{what or 'the expected answer'} to {promql!r}",
            lambda: self.query(promql),
            ok,
            processes=(self.umprobe.process, self.prometheus.process),
        )

    def wait_values(self, promql: str, expected: dict[str, float], *, by: str) -> None:
        """Wait until the query's series, keyed by the label `by`, are exactly `expected`."""

        def keyed(result: list[tuple[dict[str, str], float]]) -> dict[str, float]:
            return {labels.get(by, ""): value for labels, value in result}

        self.wait_query(promql, lambda result: keyed(result) == expected, f"{expected} by {by}")


@pytest.fixture(scope="module")
def prom_lab(umprobe_daemon: Umprobe, lab_dir: Path) -> Iterator[Lab]:
    workdir = lab_dir / "prometheus-test"
    config = prometheus_config(umprobe_daemon)
    prometheus = _start_with_retry(
        lambda: PrometheusServer(config, port=allocate_port(), log_dir=workdir),
        PrometheusServer.start,
    )
    _LAB_PROCESSES.append(prometheus.process)
    try:
        yield Lab(umprobe_daemon, prometheus)
        _check_alive(prometheus.process)
    finally:
        prometheus.stop()


def test_prometheus_scrapes_both_jobs(prom_lab: Lab) -> None:
    """`up` is 1 for the /metrics job and for every /probe target; the relabelling made `instance` the
    target and sent the scrape to the daemon."""
    umprobe = prom_lab.umprobe
    cases = umprobe.cases
    prom_lab.wait_values('up{job="umprobe"}', {umprobe.address: 1.0}, by="instance")
    tcp_targets = [cases["tcp_up"].target, umprobe.adhoc_v6.target, cases["down"].target]
    prom_lab.wait_values('up{job="umprobe-probe-tcp"}', dict.fromkeys(tcp_targets, 1.0), by="instance")
    prom_lab.wait_values('up{job="umprobe-probe-mtls"}', {cases["mtls_up"].target: 1.0}, by="instance")
    targets = prom_lab.prometheus.api("targets", state="active")["activeTargets"]
    assert len(targets) == 5, targets
    problems = [t for t in targets if t["health"] != "up" or t["lastError"]]
    assert not problems, problems
    scraped = {(t["labels"]["job"], t["labels"]["instance"]): t["scrapeUrl"] for t in targets}
    for target in tcp_targets:
        url = urllib.parse.urlsplit(scraped[("umprobe-probe-tcp", target)])
        assert (url.netloc, url.path) == (umprobe.address, "/probe")
        assert urllib.parse.parse_qs(url.query) == {"module": ["sip_tcp"], "target": [target]}


def test_prometheus_sees_listener_series_from_metrics(prom_lab: Lab, lab_pki: LabPKI) -> None:
    umprobe = prom_lab.umprobe
    job = 'job="umprobe"'
    prom_lab.wait_values(
        f"umprobe_probe_success{{{job}}}",
        {"tcp_up": 1.0, "mtls_up": 1.0, "down": 0.0, "wrong_name": 0.0},
        by="lab_case",
    )
    # Every series of the job carries the daemon as `instance` and the listener labels from the config.
    for labels, _ in prom_lab.query(f"umprobe_probe_success{{{job}}}"):
        case = umprobe.cases[labels["lab_case"]]
        assert labels["instance"] == umprobe.address
        assert (labels["probe"], labels["target"], labels["address"], labels["port"]) == (
            case.probe,
            case.host,
            case.host,
            str(case.port),
        )
    prom_lab.wait_values(
        f'umprobe_sip_status_code{{{job},lab_case=~"tcp_up|mtls_up|down"}}',
        {"tcp_up": 200.0, "mtls_up": 200.0, "down": 0.0},
        by="lab_case",
    )

    # TLS: the negotiated version of the mutual-TLS listener, exactly one series, TLS 1.2 or 1.3.
    versions = prom_lab.wait_query(
        f'umprobe_tls_version_info{{{job},lab_case="mtls_up"}}', lambda r: len(r) == 1, "one series"
    )
    ((labels, value),) = versions
    assert value == 1.0
    assert re.fullmatch(r"TLSv1\.[23]", labels["version"]), labels

    # The peer certificate's notAfter: in the future, and exactly the one Kamailio serves.
    not_after = x509.load_pem_x509_certificate(lab_pki.server.cert_file.read_bytes()).not_valid_after_utc
    ((_, expiry),) = prom_lab.wait_query(
        f'umprobe_tls_peer_cert_expiry_timestamp_seconds{{{job},lab_case="mtls_up"}}',
        lambda r: len(r) == 1,
        "one series",
    )
    assert expiry == not_after.timestamp()
    ((_, left),) = prom_lab.query(
        f'umprobe_tls_peer_cert_expiry_timestamp_seconds{{{job},lab_case="mtls_up"}} - time()'
    )
    assert left > 86400, left
    prom_lab.wait_values(
        f'umprobe_tls_peer_verified{{{job},lab_case=~"mtls_up|wrong_name"}}',
        {"mtls_up": 1.0, "wrong_name": 0.0},
        by="lab_case",
    )
    # Our own client certificate, on the mutual-TLS listener only.
    client_after = x509.load_pem_x509_certificate(lab_pki.client.cert_file.read_bytes()).not_valid_after_utc
    prom_lab.wait_values(
        f"umprobe_tls_client_cert_expiry_timestamp_seconds{{{job}}}",
        {"mtls_up": client_after.timestamp()},
        by="lab_case",
    )


def test_prometheus_sees_failure_counters_increase(prom_lab: Lab) -> None:
    job = 'job="umprobe"'
    refused = f'umprobe_probe_failures_total{{{job},lab_case="down",reason="{DOWN_REASON}"}}'
    ((_, first),) = prom_lab.wait_query(refused, lambda r: len(r) == 1 and r[0][1] >= 1, "a first failure")
    prom_lab.wait_query(refused, lambda r: len(r) == 1 and r[0][1] > first, f"more than {first} failures")
    # rate() sees it too (two samples of a growing counter within the window), and the up listeners'
    # counters exist from zero and stay there.
    prom_lab.wait_query(f"rate({refused}[10s]) > 0", lambda r: len(r) == 1, "a positive rate")
    verify = f'umprobe_probe_failures_total{{{job},lab_case="wrong_name",reason="{WRONG_NAME_REASON}"}}'
    prom_lab.wait_query(verify, lambda r: len(r) == 1 and r[0][1] >= 1, "a verification failure")
    prom_lab.wait_values(
        f'umprobe_probe_failures_total{{{job},lab_case="tcp_up",reason="{DOWN_REASON}"}}',
        {"tcp_up": 0.0},
        by="lab_case",
    )


def test_prometheus_sees_probe_job_results(prom_lab: Lab) -> None:
    umprobe = prom_lab.umprobe
    cases = umprobe.cases
    prom_lab.wait_values(
        'probe_success{job="umprobe-probe-tcp"}',
        {cases["tcp_up"].target: 1.0, umprobe.adhoc_v6.target: 1.0, cases["down"].target: 0.0},
        by="instance",
    )
    prom_lab.wait_values(
        'probe_success{job="umprobe-probe-mtls"}', {cases["mtls_up"].target: 1.0}, by="instance"
    )
    # The per-listener series of the /probe page come along, labelled with the target as `instance`.
    prom_lab.wait_values(
        'umprobe_sip_status_code{job=~"umprobe-probe-.*"}',
        {
            cases["tcp_up"].target: 200.0,
            umprobe.adhoc_v6.target: 200.0,
            cases["down"].target: 0.0,
            cases["mtls_up"].target: 200.0,
        },
        by="instance",
    )
    ((labels, _),) = prom_lab.query(
        f'umprobe_tls_version_info{{job="umprobe-probe-mtls",instance="{cases["mtls_up"].target}"}}'
    )
    assert re.fullmatch(r"TLSv1\.[23]", labels["version"]), labels
    assert labels["lab_case"] == "mtls_up"  # a configured target: the configured probe's labels
    durations = prom_lab.query('probe_duration_seconds{job=~"umprobe-probe-.*"}')
    assert len(durations) == 4
    assert all(0 < value < 1.0 for _, value in durations), durations


def test_prometheus_logged_no_scrape_problems(prom_lab: Lab) -> None:
    """A page promtool accepts can still be refused sample by sample at ingestion (duplicate series, a
    value changing under the same timestamp); Prometheus logs each such scrape at warn level."""
    for job in ("umprobe", "umprobe-probe-tcp", "umprobe-probe-mtls"):
        prom_lab.wait_query(
            f'count_over_time(up{{job="{job}"}}[1m]) >= 3', lambda r: len(r) >= 1, "three scrapes"
        )
    log = prom_lab.prometheus.process.log_text()
    scrape_problems = [
        line
        for line in log.splitlines()
        if "scrape_pool=" in line and ("level=warn" in line or "level=error" in line)
    ]
    assert not scrape_problems, "\n".join(scrape_problems)
