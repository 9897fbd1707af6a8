"""Up/down thresholds (umprobe.updown, docs/thresholds.md): the state machine, its config keys and presets,
the store and /metrics, the status page and the log line, and a real `umprobe run` whose up gauge flips
only after N failures."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from tests.daemon_helpers import UmprobeProcess, sip_responders, starter, write_config
from tests.test_metrics import collect, probe_config, promtool_check, result
from umprobe.config import ConfigError, ProbeConfig, parse_config
from umprobe.exporter import _render_status
from umprobe.logs import ProbeStateLog
from umprobe.probes.result import Phase, Reason
from umprobe.store import ResultStore
from umprobe.updown import PRESETS, Thresholds, UpDown


@pytest.fixture
def start_umprobe() -> Iterator[Callable[..., UmprobeProcess]]:
    yield from starter(UmprobeProcess)


def run(machine: UpDown, pattern: str) -> list[str | None]:
    """Feed "1" (success) / "0" (failure) characters; return what each feed returned."""
    return [machine.feed(c == "1") for c in pattern]


# -- the state machine ------------------------------------------------------------------------------------


def test_default_thresholds_follow_every_result() -> None:
    m = UpDown()
    assert m.state == "unknown" and not m.judged
    assert run(m, "1") == ["up"]
    assert run(m, "0") == ["down"]
    assert run(m, "01") == [None, "up"]
    assert (m.down_transitions, m.up_transitions) == (1, 1)  # the first judgement is no transition


def test_thresholds_3_down_2_up() -> None:
    m = UpDown(Thresholds(failures_before_down=3, successes_before_up=2))
    assert run(m, "1") == [None]
    assert m.state == "unknown"
    assert run(m, "1") == ["up"]
    assert run(m, "00") == [None, None]
    assert m.state == "up" and m.failures == 2
    assert run(m, "0") == ["down"]
    assert (m.state, m.down_transitions, m.up_transitions) == ("down", 1, 0)
    assert run(m, "1") == [None]
    assert m.state == "down"
    assert run(m, "1") == ["up"]
    assert (m.down_transitions, m.up_transitions) == (1, 1)


def test_first_judgement_can_be_down() -> None:
    m = UpDown(Thresholds(3, 2))
    assert run(m, "000") == [None, None, "down"]
    assert (m.state, m.down_transitions, m.up_transitions) == ("down", 0, 0)


def test_flapping_keeps_the_state_under_thresholds_above_one() -> None:
    m = UpDown(Thresholds(3, 2))
    run(m, "11")
    assert run(m, "0101010010") == [None] * 10
    assert (m.state, m.down_transitions, m.up_transitions) == ("up", 0, 0)
    raw = UpDown()  # the same flapping with thresholds 1/1 moves on every result
    run(raw, "11")
    run(raw, "0101010010")
    assert (raw.down_transitions, raw.up_transitions) == (5, 4)


def test_new_thresholds_apply_from_the_next_result() -> None:
    m = UpDown(Thresholds(5, 1))
    run(m, "1000")
    assert m.state == "up"
    m.thresholds = Thresholds(3, 1)
    assert run(m, "0") == ["down"]


def test_thresholds_below_one_are_refused() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        Thresholds(0, 1)


def test_presets() -> None:
    assert set(PRESETS) == {"none", "audiocodes", "cisco-cube", "kamailio-dispatcher"}
    assert PRESETS["cisco-cube"] == Thresholds(5, 1)
    assert PRESETS["kamailio-dispatcher"] == Thresholds(1, 1)
    assert PRESETS["audiocodes"] == Thresholds(1, 1)
    assert PRESETS["none"] == Thresholds(1, 1)


# -- config -----------------------------------------------------------------------------------------------

TARGETS = """
[[targets]]
host = "192.0.2.10"
module = "a"

[[targets]]
host = "192.0.2.11"
module = "b"
"""


def load(text: str) -> dict[str, Thresholds]:
    config = parse_config(text, source="probes.toml", check_files=False)
    return {probe.module: probe.thresholds for probe in config.probes}


def test_config_defaults_keys_presets_and_overrides() -> None:
    assert load("[modules.a]\n[modules.b]\n" + TARGETS) == {"a": Thresholds(1, 1), "b": Thresholds(1, 1)}
    got = load(
        '[modules.a]\npreset = "cisco-cube"\n'
        '[modules.b]\npreset = "cisco-cube"\nfailures_before_down = 2\nsuccesses_before_up = 3\n' + TARGETS
    )
    assert got == {"a": Thresholds(5, 1), "b": Thresholds(2, 3)}
    # [defaults] thresholds apply to every module; a module's preset wins over them, its own keys over both
    got = load(
        '[defaults]\nfailures_before_down = 4\n[modules.a]\n[modules.b]\npreset = "kamailio-dispatcher"\n'
        + TARGETS
    )
    assert got == {"a": Thresholds(4, 1), "b": Thresholds(1, 1)}
    got = load(
        '[defaults]\npreset = "cisco-cube"\n[modules.a]\nsuccesses_before_up = 2\n[modules.b]\n' + TARGETS
    )
    assert got == {"a": Thresholds(5, 2), "b": Thresholds(5, 1)}
    config = parse_config('[modules.a]\npreset = "cisco-cube"\n[modules.b]\n' + TARGETS, check_files=False)
    assert config.modules["a"].preset == "cisco-cube" and config.modules["b"].preset == "none"


@pytest.mark.parametrize(
    ("table", "line", "key", "message"),
    [
        ("failures_before_down = 0", 3, "modules.a.failures_before_down = 0", "from 1 to 1000"),
        ("successes_before_up = 2.5", 3, "modules.a.successes_before_up = 2.5", "from 1 to 1000"),
        ('failures_before_down = "3"', 3, 'modules.a.failures_before_down = "3"', "from 1 to 1000"),
        ("successes_before_up = true", 3, "modules.a.successes_before_up = true", "from 1 to 1000"),
        ('preset = "cisco"', 3, 'modules.a.preset = "cisco"', '"cisco-cube"'),
    ],
)
def test_bad_values_are_one_line_errors_with_file_line_key_and_value(
    table: str, line: int, key: str, message: str
) -> None:
    text = f"[modules.b]\n[modules.a]\n{table}\n" + TARGETS
    with pytest.raises(ConfigError) as info:
        parse_config(text, source="probes.toml", check_files=False)
    error = str(info.value)
    assert "\n" not in error
    assert error.startswith(f"probes.toml:{line}: {key}: "), error
    assert message in error
    assert info.value.line == line


def test_threshold_keys_belong_to_modules_not_targets() -> None:
    with pytest.raises(
        ConfigError, match=r'probes\.toml:4: targets\[0\]\.preset = "audiocodes": unknown key'
    ):
        parse_config(
            '[modules.a]\n[[targets]]\nhost = "192.0.2.10"\npreset = "audiocodes"\nmodule = "a"\n',
            source="probes.toml",
            check_files=False,
        )


# -- store, /metrics, status page, log --------------------------------------------------------------------


def thresholded(probe: ProbeConfig, down: int, up: int) -> ProbeConfig:
    return replace(probe, thresholds=Thresholds(down, up))


def thresholded_store(down: int, up: int) -> tuple[ProbeConfig, ResultStore]:
    """The default test probe with thresholds `down`/`up`, and a store that knows it."""
    probe = thresholded(probe_config(), down, up)
    store = ResultStore()
    store.set_probes([probe])
    return probe, store


def ok(probe: ProbeConfig) -> list:  # type: ignore[type-arg]
    return [result(probe)]


def failed(probe: ProbeConfig) -> list:  # type: ignore[type-arg]
    return [result(probe, reason=Reason.CONNECT_REFUSED, phase=Phase.CONNECT, status=None)]


def test_store_and_metrics_follow_the_thresholds() -> None:
    probe, store = thresholded_store(3, 2)
    page, raw = collect(store)
    assert page.get("umprobe_listener_up") == []
    # the pinned address-less key has its transition counters at 0 from the start
    assert {lab["to"]: v for lab, v in page.get("umprobe_listener_transitions_total")} == {"up": 0, "down": 0}

    changes = store.record(probe, ok(probe))
    assert changes == ()
    page, _ = collect(store)
    assert page.get("umprobe_listener_up") == []  # one good run of two: not judged yet
    assert page.value("umprobe_probe_success", address="192.0.2.10") == 1  # the raw result, as before
    assert page.value("umprobe_listener_transitions_total", address="192.0.2.10", to="up") == 0

    (change,) = store.record(probe, ok(probe))
    assert (change.address, change.previous, change.state, change.consecutive) == (
        "192.0.2.10",
        "unknown",
        "up",
        2,
    )
    page, _ = collect(store)
    assert page.value("umprobe_listener_up", address="192.0.2.10") == 1

    for expected_up in (1, 1, 0, 0):
        store.record(probe, failed(probe))
        page, raw = collect(store)
        assert page.value("umprobe_probe_success", address="192.0.2.10") == 0
        assert page.value("umprobe_listener_up", address="192.0.2.10") == expected_up
    assert page.value("umprobe_listener_transitions_total", address="192.0.2.10", to="down") == 1
    assert page.value("umprobe_listener_transitions_total", address="192.0.2.10", to="up") == 0
    promtool_check(raw)

    # a shortage of our own (local_resource_error) judges nothing
    store.record(probe, ok(probe))
    local = [result(probe, reason=Reason.LOCAL_RESOURCE_ERROR, phase=Phase.CONNECT, status=None)]
    assert store.record(probe, local) == ()
    (change,) = store.record(probe, ok(probe))
    assert (change.previous, change.state, change.consecutive) == ("down", "up", 2)
    page, _ = collect(store)
    assert page.value("umprobe_listener_transitions_total", address="192.0.2.10", to="up") == 1

    html = _render_status(store, lambda: None)  # type: ignore[arg-type,return-value]
    assert "state (thresholds)" in html
    assert (
        "up; in a row: 2 ok, 0 failed; transitions: 1 down, 1 up; thresholds: down after 3, up after 2"
        in html
    )


def test_threshold_changes_are_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    probe, store = thresholded_store(2, 1)
    log = ProbeStateLog()
    caplog.set_level(logging.INFO, logger="umprobe")

    def lines() -> list[logging.LogRecord]:
        return [r for r in caplog.records if r.getMessage() == "listener threshold state changed"]

    for results in (ok(probe), ok(probe), failed(probe), failed(probe), failed(probe), ok(probe), ok(probe)):
        log.threshold_changes(probe, store.record(probe, results))
    found = lines()
    # unknown -> up is the normal start and stays quiet; up -> down and down -> up are one line each
    assert [r.levelno for r in found] == [logging.WARNING, logging.INFO]
    fields = [r.umprobe_fields for r in found]  # type: ignore[attr-defined]
    assert [(f["previous"], f["threshold_state"], f["consecutive"]) for f in fields] == [
        ("up", "down", 2),
        ("down", "up", 1),
    ]
    assert fields[0]["failures_before_down"] == 2 and fields[0]["address"] == "192.0.2.10"


def test_thresholds_of_one_log_nothing_more_than_the_state_lines(caplog: pytest.LogCaptureFixture) -> None:
    probe, store = thresholded_store(1, 1)
    log = ProbeStateLog()
    caplog.set_level(logging.INFO, logger="umprobe")
    changes = []
    for results in (failed(probe), ok(probe), failed(probe)):
        changes += store.record(probe, results)
        log.threshold_changes(probe, changes[-1:])
    assert [c.state for c in changes] == ["down", "up", "down"], "the state machine still judges"
    assert not [r for r in caplog.records if r.getMessage() == "listener threshold state changed"]


# -- a real `umprobe run` ---------------------------------------------------------------------------------


def by_probe(metrics: dict[str, dict[tuple[tuple[str, str], ...], float]], name: str) -> dict[str, float]:
    """{probe: value} of one family, summed over its other labels."""
    out: dict[str, float] = {}
    for labels, value in metrics.get(name, {}).items():
        probe = dict(labels)["probe"]
        out[probe] = out.get(probe, 0.0) + value
    return out


def watch_until_down(umprobe: UmprobeProcess, probe: str, failures_before: float) -> None:
    """Scrape until `probe` is judged down, checking on every scrape (one consistent read of the store) that
    the up gauge says down only once 3 failures have been counted since `failures_before`."""
    deadline = time.monotonic() + 15.0
    while True:
        metrics = umprobe.metrics()
        failures = by_probe(metrics, "umprobe_probe_failures_total").get(probe, 0.0) - failures_before
        up = by_probe(metrics, "umprobe_listener_up").get(probe)
        if failures < 3:
            assert up != 0, (probe, failures, up)
        else:
            assert up == 0, (probe, failures, up)
            return
        assert time.monotonic() < deadline, f"{probe} never judged down; log:\n{umprobe.log()[-4000:]}"
        time.sleep(0.05)


def test_daemon_up_gauge_flips_only_after_n_failures(
    tmp_path: Path, closed_port: tuple[str, int], start_umprobe: Callable[..., UmprobeProcess]
) -> None:
    peers = sip_responders(1)
    (live,) = peers.start()
    stopped = False
    dead = closed_port[1]
    config = write_config(
        tmp_path / "probes.toml",
        [live, dead],
        interval=0.3,
        timeout=0.25,
        defaults="failures_before_down = 3\nsuccesses_before_up = 2\n",
    )
    try:
        umprobe = start_umprobe("-c", str(config), "--listen", "127.0.0.1:0", "--log-format", "json")
        umprobe.wait_running()
        live_name, dead_name = f"127.0.0.1:{live}/tcp", f"127.0.0.1:{dead}/tcp"

        # The closed port: no up gauge until its third failed run, then 0.
        watch_until_down(umprobe, dead_name, 0.0)
        record = umprobe.wait_for_record(
            lambda r: r.get("msg") == "listener threshold state changed" and r.get("probe") == dead_name
        )
        assert (record["previous"], record["threshold_state"], record["consecutive"]) == (
            "unknown",
            "down",
            3,
        )

        # The responder: up after two good runs; stopped, it stays up through two failures and goes down at
        # the third, counted as one transition and logged once.
        umprobe.wait_until(
            "live listener up", lambda: umprobe.by_probe("umprobe_listener_up").get(live_name) == 1
        )
        before = by_probe(umprobe.metrics(), "umprobe_probe_failures_total")[live_name]
        assert before == 0
        peers.stop()
        stopped = True
        watch_until_down(umprobe, live_name, before)
        record = umprobe.wait_for_record(
            lambda r: r.get("msg") == "listener threshold state changed" and r.get("probe") == live_name
        )
        assert (record["previous"], record["threshold_state"], record["consecutive"]) == ("up", "down", 3)
        transitions = {
            (dict(k)["probe"], dict(k)["to"]): v
            for k, v in umprobe.metrics()["umprobe_listener_transitions_total"].items()
        }
        assert transitions[(live_name, "down")] == 1
        assert transitions[(live_name, "up")] == 0
        assert transitions[(dead_name, "down")] == 0  # its first judgement was no transition
        status, page = umprobe.get("/")
        assert status == 200 and "thresholds: down after 3, up after 2" in page
        lines = [r for r in umprobe.records() if r.get("msg") == "listener threshold state changed"]
        assert len(lines) == 2, lines  # the live listener's first "up" is quiet; nothing repeats per run
    finally:
        if not stopped:
            peers.stop()
