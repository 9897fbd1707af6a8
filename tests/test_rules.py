"""The Prometheus rules in dashboards/: promtool accepts them, their unit tests pass, every alert is tested.

Both files are written in the JSON subset of YAML, so Prometheus reads them as YAML and this module reads
them with `json` (no YAML library needed). promtool is a real binary; a missing one fails, it does not skip.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "dashboards" / "umprobe.rules.yml"
RULE_TESTS = ROOT / "dashboards" / "tests" / "umprobe.rules.test.yml"
DOC = ROOT / "docs" / "dashboards.md"


def load(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:  # pragma: no cover - the message is the point
        pytest.fail(f"{path.relative_to(ROOT)} must stay in the JSON subset of YAML: {exc}")


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("promtool")
    assert binary, "promtool is not installed (Debian: apt-get install prometheus)"
    return subprocess.run([binary, *args], capture_output=True, text=True, timeout=120, check=False, cwd=ROOT)


def rules() -> list[dict[str, Any]]:
    return [rule for group in load(RULES)["groups"] for rule in group["rules"]]


def alert_names() -> list[str]:
    return sorted({rule["alert"] for rule in rules() if "alert" in rule})


def alert_evals() -> list[dict[str, Any]]:
    return [case for test in load(RULE_TESTS)["tests"] for case in test.get("alert_rule_test", [])]


def test_promtool_check_rules() -> None:
    out = promtool("check", "rules", str(RULES))
    assert out.returncode == 0, out.stdout + out.stderr


def test_promtool_test_rules() -> None:
    out = promtool("test", "rules", str(RULE_TESTS))
    assert out.returncode == 0, out.stdout + out.stderr


def test_rule_tests_load_the_rules_file() -> None:
    files = [(RULE_TESTS.parent / name).resolve() for name in load(RULE_TESTS)["rule_files"]]
    assert files == [RULES.resolve()]


def test_there_are_alerts_and_recording_rules() -> None:
    assert len(alert_names()) >= 15
    assert any("record" in rule for rule in rules())


@pytest.mark.parametrize("alertname", alert_names())
def test_every_alert_has_a_firing_and_a_silent_case(alertname: str) -> None:
    evals = [case for case in alert_evals() if case["alertname"] == alertname]
    assert any(case.get("exp_alerts") for case in evals), f"{alertname}: no test case where it fires"
    silent = [case for case in evals if "exp_alerts" in case and case["exp_alerts"] == []]
    assert silent, f"{alertname}: no test case (exp_alerts: []) where it stays silent"


def test_every_alerting_rule_fires_in_a_test() -> None:
    """An alert name can have several rules (severities, scopes): each must fire somewhere."""
    fired = [
        (case["alertname"], expected.get("exp_labels", {}))
        for case in alert_evals()
        for expected in case.get("exp_alerts") or []
    ]
    for rule in rules():
        if "alert" in rule:
            assert any(
                name == rule["alert"] and all(labels.get(k) == v for k, v in rule.get("labels", {}).items())
                for name, labels in fired
            ), f"{rule['alert']} {rule.get('labels')}: no test case where this rule fires"


def test_every_alert_is_runbook_style() -> None:
    for rule in rules():
        if "alert" in rule:
            assert rule["labels"].get("severity") in {"warning", "critical"}, rule["alert"]
            assert set(rule["annotations"]) >= {"summary", "description", "runbook"}, rule["alert"]
            assert rule.get("for"), f"{rule['alert']}: alerts wait before firing"


def test_recording_rules_follow_naming_and_are_documented() -> None:
    doc = DOC.read_text().partition("## Alert rules")[2]
    for rule in rules():
        if "record" in rule:
            name = rule["record"]
            assert name.startswith("umprobe:") and name.count(":") == 2, name
            assert f"`{name}`" in doc, f"{name} is not listed in docs/dashboards.md, Alert rules"
            assert f"`{rule['expr']}`" in doc, f"{name}: docs/dashboards.md shows another expression"


def test_every_alert_is_documented() -> None:
    doc = DOC.read_text().partition("## Alert rules")[2]
    for name in alert_names():
        assert f"`{name}`" in doc, f"{name} is not described in docs/dashboards.md, Alert rules"
