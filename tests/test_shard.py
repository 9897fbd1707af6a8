"""`--shard K/N` and `vantage`: N daemons split one config without overlap; sites label their series.

The integration test with two real daemons and a real Prometheus is tests/integration/test_scale_out.py.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from click.testing import CliRunner
from prometheus_client.parser import text_string_to_metric_families

from umprobe.commands.run_cmd import run_command
from umprobe.config import ConfigError, parse_config
from umprobe.daemon import Daemon
from umprobe.metrics import CONTENT_TYPE, UmprobeCollector, render_metrics
from umprobe.probes.result import ProbeResult, Reason, Timings
from umprobe.shard import ALL, MAX_SHARDS, Shard, parse_shard, shard_index, valid_vantage


def test_shard_index_is_sha256_of_the_id_mod_n_counted_from_one() -> None:
    probe_id = "cas01|call_router|tcp|5060|sip_tcp"
    expected = int.from_bytes(hashlib.sha256(probe_id.encode()).digest(), "big") % 4 + 1
    assert shard_index(probe_id, 4) == expected
    assert shard_index(probe_id, 1) == 1
    # Stable: the same answer every time, and every index in range.
    ids = [f"mbx{i:03d}|um_service|tls|5063|mtls" for i in range(500)]
    for n in (1, 2, 3, 7):
        assert all(1 <= shard_index(i, n) <= n for i in ids)
        assert [shard_index(i, n) for i in ids] == [shard_index(i, n) for i in ids]


@pytest.mark.parametrize("n", [2, 3, 5])
def test_shards_partition_the_probes_and_stay_balanced(n: int) -> None:
    ids = [f"host{i}|custom|tcp|{5060 + i % 7}|sip_tcp" for i in range(1000)]

    class Job:
        def __init__(self, id: str) -> None:
            self.id = id

    jobs = [Job(i) for i in ids]
    shares = [Shard(k, n).select(jobs) for k in range(1, n + 1)]
    seen = [job.id for share in shares for job in share]
    assert sorted(seen) == sorted(ids), "every probe runs on exactly one shard"
    for share in shares:  # SHA-256 spreads 1,000 ids within +-30 % of the fair share
        assert 0.7 * 1000 / n <= len(share) <= 1.3 * 1000 / n
    assert ALL.select(jobs) == tuple(jobs)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("1/1", Shard(1, 1)), ("2/3", Shard(2, 3)), (" 4 / 4 ", Shard(4, 4)), (f"1/{MAX_SHARDS}", None)],
)
def test_parse_shard_accepts_k_of_n(text: str, expected: Shard | None) -> None:
    shard = parse_shard(text)
    if expected is not None:
        assert shard == expected
    assert str(shard) == text.replace(" ", "")


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("0/2", "K must be 1 to N"),
        ("3/2", "K must be 1 to N (2)"),
        ("1/0", "N must be 1 to"),
        (f"1/{MAX_SHARDS + 1}", "N must be 1 to"),
        ("1of2", "is not K/N"),
        ("", "is not K/N"),
        ("-1/2", "is not K/N"),
    ],
)
def test_parse_shard_rejects_with_a_message_that_teaches(text: str, fragment: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_shard(text)
    assert fragment in str(info.value)


@pytest.mark.parametrize(
    ("name", "ok"),
    [
        ("dublin", True),
        ("dc2-gw.site_1", True),
        ("9lives", True),
        ("", False),
        ("-x", False),
        ("a b", False),
        ('x"y', False),
        ("x" * 63, True),
        ("x" * 64, False),
        ("ümlaut", False),
    ],
)
def test_vantage_names_are_plain_bounded_label_values(name: str, ok: bool) -> None:
    assert valid_vantage(name) is ok


def _config_text(ports: range) -> str:
    targets = "".join(
        f'[[targets]]\nhost = "127.0.0.1"\nname = "pbx{p}"\nmodule = "sip_tcp"\nport = {p}\n\n' for p in ports
    )
    return f'[exporter]\nvantage = "dublin"\n\n{targets}'


CONFIG = _config_text(range(15060, 15068))


def test_config_vantage_key_and_its_error() -> None:
    config = parse_config(CONFIG, source="probes.toml")
    assert config.exporter.vantage == "dublin"
    assert parse_config("[[targets]]\nhost = 'a.test'\nmodule = 'sip_tcp'\n").exporter.vantage is None
    with pytest.raises(ConfigError) as info:
        parse_config('[exporter]\nvantage = "two words"\n', source="probes.toml")
    message = str(info.value)
    assert message.startswith('probes.toml:2: exporter.vantage = "two words": must be 1-63 letters')


def _result(probe_port: int) -> ProbeResult:
    return ProbeResult(
        target="127.0.0.1",
        address="127.0.0.1",
        family="ipv4",
        port=probe_port,
        transport="tcp",
        listener="custom",
        success=True,
        alive=True,
        reason=Reason.OK,
        phase=None,
        detail="200 OK",
        timings=Timings(resolve=0.0, connect=0.001, tls=None, sip=0.002, total=0.003),
        status_code=200,
    )


def test_daemon_runs_only_its_shard_and_labels_series_with_the_vantage(tmp_path: Path) -> None:
    config = parse_config(CONFIG, source="probes.toml")
    owned: list[set[str]] = []
    for k in (1, 2):
        daemon = Daemon.from_config(config, listen="127.0.0.1:0", load=lambda: config, shard=Shard(k, 2))
        assert daemon.vantage == "dublin"
        scheduled = {job.id for job in daemon.scheduler.probes()}
        assert {p.id for p in daemon.store.probes()} == scheduled
        owned.append(scheduled)
    assert owned[0].isdisjoint(owned[1])
    assert owned[0] | owned[1] == {p.id for p in config.probes}
    assert owned[0] and owned[1], "8 probes split into two non-empty shards"

    # The vantage label reaches /metrics: record one result per owned probe and render.
    daemon = Daemon.from_config(config, listen="127.0.0.1:0", load=lambda: config, vantage="cork")
    assert daemon.vantage == "cork", "the command line wins over exporter.vantage"
    for probe in daemon.store.probes():
        daemon.store.record(probe, [_result(probe.spec.port)])
    page = render_metrics(UmprobeCollector(daemon.store, vantage=daemon.vantage)).decode()
    assert CONTENT_TYPE
    success = [
        s
        for f in text_string_to_metric_families(page)
        for s in f.samples
        if s.name == "umprobe_probe_success"
    ]
    assert len(success) == 8
    assert {s.labels["vantage"] for s in success} == {"cork"}


async def test_reload_keeps_the_shard(tmp_path: Path) -> None:
    config = parse_config(CONFIG, source="probes.toml")
    bigger = parse_config(_config_text(range(15060, 15072)), source="p")
    current = [config]
    daemon = Daemon.from_config(config, listen="127.0.0.1:0", load=lambda: current[0], shard=Shard(2, 2))
    current[0] = bigger
    assert await daemon.reload() is True
    expected = {p.id for p in bigger.probes if shard_index(p.id, 2) == 2}
    assert {job.id for job in daemon.scheduler.probes()} == expected
    assert {p.id for p in daemon.store.probes()} == expected


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--shard", "3/2"], "K must be 1 to N (2)"),
        (["--shard", "half"], "is not K/N"),
        (["--vantage", "two words"], "'two words'"),
    ],
)
def test_run_rejects_bad_shard_and_vantage_options(tmp_path: Path, args: list[str], fragment: str) -> None:
    config = tmp_path / "probes.toml"
    config.write_text(CONFIG)
    result = CliRunner().invoke(run_command, ["-c", str(config), *args])
    assert result.exit_code == 2
    assert fragment in result.output


def test_run_help_mentions_shard_and_vantage() -> None:
    result = CliRunner().invoke(run_command, ["--help"], terminal_width=110)
    assert result.exit_code == 0
    for needle in ("--shard K/N", "UMPROBE_SHARD", "--vantage NAME", "UMPROBE_VANTAGE"):
        assert needle in result.output
