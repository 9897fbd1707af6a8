"""Scale-out on Prometheus's own machinery, with real processes: two `umprobe run --shard` daemons and a
real Prometheus (2.42), and a `/probe` target list split across two scrape jobs with `hashmod` relabelling.

The SIP listeners are umprobe's own responder on twelve loopback ports (in a trio loop on a thread of this
test process); the daemons and Prometheus are subprocesses run by `tests.lab.proc.LabProcess` (logs in the
lab directory, stopped by PID). What is checked is what an operator relies on:

- `--shard 1/2` and `--shard 2/2` over one probes.toml: Prometheus stores exactly one
  `umprobe_probe_success` series per configured probe, from the daemon whose shard owns it
  (`umprobe.shard.shard_index`), each labelled with that daemon's `--vantage`.
- The documented hashmod setup (docs/operations.md, "Sharding /probe targets"): every target of the
  list is scraped by exactly one of the two jobs, and the jobs agree with Prometheus's own hash.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio

from tests.conftest import _LAB_PROCESSES
from tests.daemon_helpers import BackgroundService
from tests.integration.test_prometheus import _start_with_retry, wait_for
from tests.lab.ports import allocate_port
from tests.lab.proc import LabProcess
from tests.lab.prometheus import PrometheusServer
from umprobe.config import load_config
from umprobe.peer.sip_responder import serve_sip_responder
from umprobe.shard import shard_index

pytestmark = pytest.mark.lab

WAIT = 40.0
PORTS = 12


@pytest.fixture(scope="module")
def responder_ports() -> Iterator[list[int]]:
    async def serve(task_status: trio.TaskStatus[list[int]] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = [(await trio.open_tcp_listeners(0, host="127.0.0.1"))[0] for _ in range(PORTS)]
        async with trio.open_nursery() as nursery:
            await nursery.start(partial(serve_sip_responder, listeners, server_header="scale-out-test"))
            task_status.started([int(listener.socket.getsockname()[1]) for listener in listeners])

    service = BackgroundService("scale-out-responder", serve)
    ports: list[int] = service.start()
    try:
        yield ports
    finally:
        service.stop()


def _config_text(ports: list[int]) -> str:
    parts = ['[exporter]\nprobe_allow = ["127.0.0.1"]\n']
    for port in ports:
        parts.append(
            f'[[targets]]\nhost = "127.0.0.1"\nname = "pbx{port}"\nmodule = "sip_tcp"\nport = {port}\n'
            "interval = 1\ntimeout = 0.8\n"
        )
    return "\n".join(parts)


class Daemon:
    def __init__(self, process: LabProcess, port: int, shard: str, vantage: str) -> None:
        self.process = process
        self.port = port
        self.shard = shard
        self.vantage = vantage

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"


@pytest.fixture(scope="module")
def sharded(responder_ports: list[int], lab_dir: Path) -> Iterator[tuple[Path, list[Daemon]]]:
    workdir = lab_dir / "scale-out"
    workdir.mkdir(exist_ok=True)
    config = workdir / "probes.toml"
    config.write_text(_config_text(responder_ports))
    daemons: list[Daemon] = []
    try:
        for shard, vantage in (("1/2", "site-a"), ("2/2", "site-b")):

            def make(shard: str = shard, vantage: str = vantage) -> Daemon:
                port = allocate_port()
                argv = [sys.executable, "-m", "umprobe.cli", "run", "-c", str(config)]
                argv += ["--listen", f"127.0.0.1:{port}", "--shard", shard, "--vantage", vantage]
                name = f"umprobe-shard-{shard.replace('/', 'of')}"
                return Daemon(
                    LabProcess(name, argv, log_dir=workdir, ready=[("127.0.0.1", port)]), port, shard, vantage
                )

            daemon = _start_with_retry(make, lambda d: d.process.start())
            _LAB_PROCESSES.append(daemon.process)
            daemons.append(daemon)
        yield config, daemons
    finally:
        for daemon in daemons:
            daemon.process.stop()


def _hashmod_job(name: str, shard: int, daemon: Daemon, targets: list[str]) -> dict[str, Any]:
    """One of N Prometheus jobs (or servers) that scrape `/probe` for their share of one target list.

    The same relabelling as docs/operations.md: hash the target into __tmp_hash, keep one value."""
    return {
        "job_name": name,
        "metrics_path": "/probe",
        "params": {"module": ["sip_tcp"]},
        "static_configs": [{"targets": targets}],
        "relabel_configs": [
            {"source_labels": ["__address__"], "target_label": "__param_target"},
            {"source_labels": ["__param_target"], "target_label": "instance"},
            {
                "source_labels": ["__param_target"],
                "modulus": 2,
                "target_label": "__tmp_hash",
                "action": "hashmod",
            },
            {"source_labels": ["__tmp_hash"], "regex": str(shard), "action": "keep"},
            {"target_label": "__address__", "replacement": daemon.address},
        ],
    }


@pytest.fixture(scope="module")
def prometheus(
    sharded: tuple[Path, list[Daemon]], responder_ports: list[int], lab_dir: Path
) -> Iterator[PrometheusServer]:
    _, daemons = sharded
    targets = [f"127.0.0.1:{port}" for port in responder_ports]
    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [
            {"job_name": "umprobe", "static_configs": [{"targets": [d.address for d in daemons]}]},
            _hashmod_job("umprobe-probe-shard0", 0, daemons[0], targets),
            _hashmod_job("umprobe-probe-shard1", 1, daemons[1], targets),
        ],
    }
    server = _start_with_retry(
        lambda: PrometheusServer(
            config, port=allocate_port(), log_dir=lab_dir / "scale-out", name="prom-shards"
        ),
        PrometheusServer.start,
    )
    _LAB_PROCESSES.append(server.process)
    try:
        yield server
    finally:
        server.stop()


def test_two_sharded_daemons_scrape_every_probe_exactly_once(
    sharded: tuple[Path, list[Daemon]], prometheus: PrometheusServer
) -> None:
    config_path, daemons = sharded
    probes = load_config(config_path).probes
    expected_owner = {p.name: daemons[shard_index(p.id, 2) - 1] for p in probes}
    assert {d.shard for d in expected_owner.values()} == {"1/2", "2/2"}, "both shards own probes"
    processes = (*(d.process for d in daemons), prometheus.process)

    series = wait_for(
        f"one umprobe_probe_success series for each of the {len(probes)} probes",
        lambda: prometheus.query('umprobe_probe_success{job="umprobe"}'),
        lambda result: len(result) == len(probes) and all(v == 1.0 for _, v in result),
        processes=processes,
        timeout=WAIT,
    )
    by_probe: dict[str, list[dict[str, str]]] = {}
    for labels, _ in series:
        by_probe.setdefault(labels["probe"], []).append(labels)
    assert sorted(by_probe) == sorted(expected_owner), "every configured probe is scraped"
    for name, labelsets in by_probe.items():
        assert len(labelsets) == 1, f"{name} is scraped {len(labelsets)} times"
        owner = expected_owner[name]
        assert labelsets[0]["instance"] == owner.address, f"{name} runs on the daemon of its shard"
        assert labelsets[0]["vantage"] == owner.vantage
    # Counting by probe over the whole TSDB, as an operator's recording rule would.
    counts = prometheus.query('count by (probe) (umprobe_probe_success{job="umprobe"})')
    assert len(counts) == len(probes) and {v for _, v in counts} == {1.0}


def test_hashmod_jobs_split_probe_targets_without_overlap(
    sharded: tuple[Path, list[Daemon]], responder_ports: list[int], prometheus: PrometheusServer
) -> None:
    _, daemons = sharded
    targets = {f"127.0.0.1:{port}" for port in responder_ports}
    processes = (*(d.process for d in daemons), prometheus.process)
    result = wait_for(
        f"probe_success for all {len(targets)} /probe targets",
        lambda: prometheus.query('probe_success{job=~"umprobe-probe-shard.*"}'),
        lambda result: len(result) == len(targets),
        processes=processes,
        timeout=WAIT,
    )
    jobs_by_target: dict[str, list[str]] = {}
    for labels, value in result:
        assert value == 1.0, labels
        jobs_by_target.setdefault(labels["instance"], []).append(labels["job"])
    assert set(jobs_by_target) == targets, "every target is probed"
    assert all(len(jobs) == 1 for jobs in jobs_by_target.values()), jobs_by_target
    used = {jobs[0] for jobs in jobs_by_target.values()}
    assert used == {"umprobe-probe-shard0", "umprobe-probe-shard1"}, "both jobs take a share"
    # Prometheus's own view of the split: the kept targets per job add up to the list, no duplicates.
    active = prometheus.api("targets", state="active")["activeTargets"]
    kept = [t["labels"]["instance"] for t in active if t["labels"]["job"].startswith("umprobe-probe-shard")]
    assert sorted(kept) == sorted(targets)


def test_the_documented_hashmod_config_is_the_one_tested() -> None:
    doc = (Path(__file__).resolve().parents[2] / "docs" / "scale-out.md").read_text()
    job = _hashmod_job("umprobe-probe-shard0", 0, Daemon(None, 9874, "1/2", "x"), [])  # type: ignore[arg-type]
    steps = job["relabel_configs"]
    start = doc.index("job_name: umprobe-probe-shard0")
    block = doc[start : doc.index("```", start)]
    for step in steps[:-1]:  # the last step names the daemon's address, which differs by site
        for key, value in step.items():
            shown = f'"{value}"' if key == "regex" else str(value)
            if isinstance(value, list):
                shown = "[" + ", ".join(value) + "]"
            assert f"{key}: {shown}" in block, f"docs/scale-out.md lacks {key}: {shown}"
    assert block.count("- source_labels") + block.count("- target_label") == len(steps)
