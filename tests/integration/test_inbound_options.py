"""Inbound OPTIONS against real pingers: a `umprobe run` subprocess with a TCP and a mutual-TLS `[[listen]]`,
and three real SIP clients pinging it:

- SIPp over TCP, 2 OPTIONS a second (`-r 2`, `-m 16`): the caller is its source address, 127.0.0.1;
- SIPp through socat, which opens mutual TLS to the listener with a client certificate for um01.lab.test
  (SIPp 3.6.1 here has no TLS): the caller is the certificate's FQDN;
- Kamailio's dispatcher, probing the listener over mutual TLS once a second with a client certificate for
  msproxy.lab.test: a real SIP stack keeping a peer alive on its own schedule, as Microsoft's proxies do.

/metrics must show each caller's last-seen time and its interval (the SIPp ones 0.4-0.7 s, Kamailio's
0.8-1.5 s: correctness bounds, not performance), its OPTIONS counted, and, once the pingers are stopped,
each caller moving active -> at_risk -> demoted (thresholds shrunk to seconds so the test does not wait 3
and 5 minutes). An expected identity that never pings is demoted too. Only 127.0.0.1 is used; every
process is ours and stopped by PID.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.daemon_helpers import UmprobeProcess
from tests.lab.kamailio import find_module_dir
from tests.lab.ports import allocate_port
from tests.lab.proc import LabProcess, require_binary
from tests.test_metrics import promtool_check
from umprobe.devcerts import DevCA

pytestmark = pytest.mark.lab

SIPP_CALLS = 16
SIPP_RATE = 2  # OPTIONS per second: one every 0.5 s
SIPP_INTERVAL = (0.4, 0.7)
KAMAILIO_INTERVAL = (0.8, 1.5)  # ds_ping_interval = 1
WAIT = 30.0

# A SIPp UAC: one OPTIONS per call, then the 200. No [last_*] keywords: it sends, it does not answer.
UAC_SCENARIO = """<?xml version="1.0" encoding="ISO-8859-1" ?>
<!DOCTYPE scenario SYSTEM "sipp.dtd">
<scenario name="umprobe inbound pinger">
  <send>
    <![CDATA[
OPTIONS sip:[remote_ip]:[remote_port] SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
From: <sip:pinger@um01.lab.test>;tag=[pid]SIPpTag00[call_number]
To: <sip:[remote_ip]:[remote_port]>
Call-ID: [call_id]
CSeq: 1 OPTIONS
Contact: <sip:um01.lab.test:[local_port];transport=[transport]>
Max-Forwards: 70
Content-Length: 0

    ]]>
  </send>
  <recv response="200"/>
</scenario>
"""

Metrics = dict[str, dict[tuple[tuple[str, str], ...], float]]


def sipp_pinger(name: str, target: tuple[str, int], scenario: Path, log_dir: Path) -> LabProcess:
    host, port = target
    argv = [
        require_binary("sipp"),
        "-sf", str(scenario),
        "-t", "t1",
        "-i", "127.0.0.1",
        "-p", str(allocate_port()),
        f"{host}:{port}",
        "-m", str(SIPP_CALLS),
        "-r", str(SIPP_RATE),
        "-nostdin",
        "-trace_err",
        "-error_file", str(log_dir / f"{name}-errors.log"),
        "-timeout", "60s",
    ]  # fmt: skip
    return LabProcess(name, argv, log_dir=log_dir)


def socat_mtls_client(
    port: int, upstream: int, cert: tuple[Path, Path], ca: Path, log_dir: Path
) -> LabProcess:
    """socat taking plain TCP on `port` and opening mutual TLS to the listener on `upstream`."""
    cert_file, key_file = cert
    connect = (
        f"OPENSSL:127.0.0.1:{upstream},cert={cert_file},key={key_file},cafile={ca},verify=1"
        ",commonname=localhost"
    )
    return LabProcess(
        "socat-mtls-client",
        [require_binary("socat"), "-d", "-d", f"TCP-LISTEN:{port},bind=127.0.0.1,fork,reuseaddr", connect],
        log_dir=log_dir,
        ready=[("127.0.0.1", port)],
        stop_children_first=True,
    )


def kamailio_pinger(
    target: int, cert: tuple[Path, Path], ca: Path, server: tuple[Path, Path], workdir: Path
) -> LabProcess:
    """Kamailio whose dispatcher sends OPTIONS to sip:127.0.0.1:TARGET;transport=tls every second."""
    tcp, tls = allocate_port(), allocate_port()
    (workdir / "dispatcher.list").write_text(f"1 sip:127.0.0.1:{target};transport=tls\n")
    (workdir / "tls.cfg").write_text(
        "[server:default]\nmethod = TLSv1.2+\nverify_certificate = no\nrequire_certificate = no\n"
        f"certificate = {server[0]}\nprivate_key = {server[1]}\nca_list = {ca}\n\n"
        "[client:default]\nmethod = TLSv1.2+\nverify_certificate = yes\nrequire_certificate = yes\n"
        f"certificate = {cert[0]}\nprivate_key = {cert[1]}\nca_list = {ca}\n"
    )
    cfg = workdir / "kamailio-pinger.cfg"
    cfg.write_text(
        "\n".join(
            [
                "#!KAMAILIO",
                "debug=2",
                "log_stderror=yes",
                "children=1",
                "tcp_children=1",  # 2+ TCP workers crash 5.6.3 under concurrent TLS (tests/lab/README.md)
                "auto_aliases=no",
                "dns=no",
                "rev_dns=no",
                "enable_tls=yes",
                f"listen=tcp:127.0.0.1:{tcp}",
                f"listen=tls:127.0.0.1:{tls}",
                f'mpath="{find_module_dir()}/"',
                'loadmodule "tm.so"',
                'loadmodule "tls.so"',
                'loadmodule "sl.so"',
                'loadmodule "dispatcher.so"',
                'loadmodule "xlog.so"',
                'loadmodule "pv.so"',
                f'modparam("tls", "config", "{workdir / "tls.cfg"}")',
                f'modparam("dispatcher", "list_file", "{workdir / "dispatcher.list"}")',
                'modparam("dispatcher", "ds_ping_interval", 1)',
                'modparam("dispatcher", "ds_probing_mode", 1)',
                'modparam("dispatcher", "ds_ping_from", "sip:msproxy@msproxy.lab.test")',
                "request_route {",
                '    if (method == "OPTIONS") { sl_send_reply("200", "OK"); exit; }',
                '    sl_send_reply("501", "Not Implemented");',
                "}",
                "",
            ]
        )
    )
    argv = [require_binary("kamailio"), "-DD", "-E", "-m", "32", "-M", "8", "-f", str(cfg)]
    return LabProcess("kamailio-pinger", argv, log_dir=workdir, ready=[("127.0.0.1", tcp)], no_core=True)


def scrape(daemon: UmprobeProcess) -> tuple[str, Metrics]:
    status, text = daemon.get("/metrics")
    assert status == 200
    out: Metrics = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return text, out


def value(metrics: Metrics, name: str, **labels: str) -> float | None:
    return metrics.get(name, {}).get(tuple(sorted(labels.items())))


def state(metrics: Metrics, listen: str, identity: str) -> str | None:
    for labels, v in metrics.get("umprobe_inbound_demotion_state", {}).items():
        got = dict(labels)
        if got["listen"] == listen and got["identity"] == identity and v == 1.0:
            return got["state"]
    return None


def wait_for(what: str, check: Callable[[], bool], daemon: UmprobeProcess, timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}; daemon log:\n{daemon.log()}")
        time.sleep(0.2)


@pytest.fixture
def processes() -> Iterator[list[LabProcess]]:
    started: list[LabProcess] = []
    try:
        yield started
    finally:
        for process in reversed(started):
            process.stop()


def test_inbound_options_from_sipp_socat_and_kamailio(tmp_path: Path, processes: list[LabProcess]) -> None:
    ca = DevCA.create("umprobe inbound lab CA")
    ca_file = ca.write_ca(tmp_path, "ca")
    server = ca.issue(["localhost", "127.0.0.1"]).write(tmp_path, "listener")
    um01 = ca.issue(["um01.lab.test"]).write(tmp_path, "um01")
    msproxy = ca.issue(["msproxy.lab.test"]).write(tmp_path, "msproxy")
    scenario = tmp_path / "uac-options.xml"
    scenario.write_text(UAC_SCENARIO)

    tcp, tls, http = allocate_port(), allocate_port(), allocate_port()
    config = tmp_path / "probes.toml"
    config.write_text(
        f"""
[[listen]]
name = "um-tcp"
address = "127.0.0.1:{tcp}"
expect = ["127.0.0.1"]
at_risk_after = 1
demoted_after = 2

[[listen]]
name = "teams-mtls"
transport = "tls"
address = "127.0.0.1:{tls}"
cert_file = "{server[0]}"
key_file = "{server[1]}"
ca_file = "{ca_file}"
require_client_cert = true
expect = ["msproxy.lab.test", "never.lab.test"]
at_risk_after = 2
demoted_after = 3
"""
    )
    daemon = UmprobeProcess(["-c", str(config), "--listen", f"127.0.0.1:{http}", "--log-format", "json"])
    try:
        daemon.wait_running()
        socat_port = allocate_port()
        processes.append(socat_mtls_client(socat_port, tls, um01, ca_file, tmp_path).start())
        kamailio = kamailio_pinger(tls, msproxy, ca_file, server, tmp_path)
        processes.append(kamailio.start())
        sipp_tcp = sipp_pinger("sipp-tcp", ("127.0.0.1", tcp), scenario, tmp_path)
        sipp_tls = sipp_pinger("sipp-via-socat", ("127.0.0.1", socat_port), scenario, tmp_path)
        processes += [sipp_tcp.start(), sipp_tls.start()]
        callers = {
            ("um-tcp", "127.0.0.1"): SIPP_INTERVAL,
            ("teams-mtls", "um01.lab.test"): SIPP_INTERVAL,
            ("teams-mtls", "msproxy.lab.test"): KAMAILIO_INTERVAL,
        }

        # While they ping: every caller active, seen just now, at its own interval.
        def pinging() -> bool:
            _, m = scrape(daemon)
            return all(
                state(m, listen, identity) == "active"
                and (
                    value(m, "umprobe_inbound_options_total", listen=listen, identity=identity, status="200")
                    or 0
                )
                >= 5
                for listen, identity in callers
            )

        wait_for("every caller to be active with 5 OPTIONS", pinging, daemon)
        _, m = scrape(daemon)
        now = time.time()
        for (listen, identity), (low, high) in callers.items():
            labels = {"listen": listen, "identity": identity}
            last_seen = value(m, "umprobe_inbound_last_seen_timestamp_seconds", **labels)
            assert last_seen is not None and now - 2.0 < last_seen <= now + 0.5, (labels, last_seen, now)
            interval = value(m, "umprobe_inbound_interval_seconds", **labels)
            assert interval is not None and low <= interval <= high, (labels, interval)
            assert value(m, "umprobe_inbound_last_good_timestamp_seconds", **labels) == last_seen
        assert state(m, "teams-mtls", "never.lab.test") in ("waiting", "at_risk", "demoted")

        # From now on /metrics is read every 0.1 s and each caller's states are written down in order.
        seen: dict[tuple[str, str], list[str]] = {caller: [] for caller in callers}
        stop_watching = threading.Event()

        def watch() -> None:
            while not stop_watching.is_set():
                _, m = scrape(daemon)
                for (listen, identity), states in seen.items():
                    current = state(m, listen, identity)
                    if current is not None and (not states or states[-1] != current):
                        states.append(current)
                time.sleep(0.1)

        watcher = threading.Thread(target=watch, name="inbound-watch", daemon=True)
        watcher.start()
        try:
            # SIPp stops by itself after its calls, each answered 200 (exit status 0); Kamailio is stopped.
            for sipp in (sipp_tcp, sipp_tls):
                wait_for(f"{sipp.name} to finish", lambda sipp=sipp: not sipp.is_alive(), daemon)  # type: ignore[misc]
                assert sipp.returncode == 0, sipp.describe()
            kamailio.stop()
            wait_for(
                "every caller to be demoted",
                lambda: all(states and states[-1] == "demoted" for states in seen.values()),
                daemon,
            )
        finally:
            stop_watching.set()
            watcher.join(timeout=10)
        for caller, states in seen.items():
            assert states[-3:] == ["active", "at_risk", "demoted"], (caller, states)
        text, m = scrape(daemon)
        for listen, identity in [("um-tcp", "127.0.0.1"), ("teams-mtls", "um01.lab.test")]:
            total = value(m, "umprobe_inbound_options_total", listen=listen, identity=identity, status="200")
            assert total == SIPP_CALLS, (listen, identity, total)
        silence = value(m, "umprobe_inbound_silence_seconds", listen="um-tcp", identity="127.0.0.1")
        assert silence is not None and silence > 2.0
        assert state(m, "teams-mtls", "never.lab.test") == "demoted"
        assert (
            value(
                m,
                "umprobe_inbound_last_seen_timestamp_seconds",
                listen="teams-mtls",
                identity="never.lab.test",
            )
            is None
        )
        assert value(m, "umprobe_inbound_expected", listen="teams-mtls", identity="um01.lab.test") == 0.0
        assert value(m, "umprobe_inbound_expected", listen="teams-mtls", identity="msproxy.lab.test") == 1.0
        # Nobody else appeared: socat and Kamailio connected from 127.0.0.1 but carried certificates.
        identities = {dict(labels)["identity"] for labels in m["umprobe_inbound_expected"]}
        assert identities == {"127.0.0.1", "um01.lab.test", "msproxy.lab.test", "never.lab.test"}
        promtool_check(text.encode())

        status, page = daemon.get("/")
        assert status == 200 and "<h2>Inbound OPTIONS</h2>" in page
        assert '<td>msproxy.lab.test</td><td>yes</td><td class="fail">demoted</td>' in page
        assert "msproxy.lab.test" in page and "um01.lab.test" in page
        # The log says so too: one warning per caller (the log looks once a second, so allow it one more).
        for listen, identity in [*callers, ("teams-mtls", "never.lab.test")]:
            record = daemon.wait_for_record(
                lambda r, listen=listen, identity=identity: (  # type: ignore[misc]
                    r.get("msg") == "inbound OPTIONS state changed"
                    and (r.get("listen"), r.get("identity"), r.get("state")) == (listen, identity, "demoted")
                ),
                timeout=5,
            )
            assert record["level"] == "warning" and record["expected"] == (identity != "um01.lab.test")
    finally:
        daemon.kill()
