"""Structural checks of the Grafana dashboards in dashboards/: importable JSON, one Prometheus datasource
input used everywhere, a sane grid, template variables that are used, and a query in every panel.

The queries themselves are run against a real Prometheus in tests/integration/test_dashboard_queries.py.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

DASHBOARDS = Path(__file__).resolve().parent.parent / "dashboards"
NAMES = ["umprobe-overview.json", "umprobe-listener.json"]
DS = {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}
REQUIRED_VARIABLES = {"job", "target", "listener", "peer"}


def load(name: str) -> dict[str, Any]:
    return json.loads((DASHBOARDS / name).read_text())  # type: ignore[no-any-return]


def all_panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])  # a collapsed row carries its panels


def query_panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    return (p for p in all_panels(dashboard) if p["type"] != "row")


@pytest.fixture(params=NAMES)
def dashboard(request: pytest.FixtureRequest) -> dict[str, Any]:
    return load(request.param)


def test_dashboard_files_are_the_expected_ones() -> None:
    assert sorted(p.name for p in DASHBOARDS.glob("*.json")) == sorted(NAMES)


def test_importable_header(dashboard: dict[str, Any]) -> None:
    assert dashboard["schemaVersion"] >= 38
    assert dashboard["id"] is None
    assert re.fullmatch(r"[a-z0-9-]{1,40}", dashboard["uid"])
    assert dashboard["title"].startswith("umprobe")
    inputs = dashboard["__inputs"]
    assert inputs == [
        {
            "name": "DS_PROMETHEUS",
            "label": "Prometheus",
            "description": inputs[0]["description"],
            "type": "datasource",
            "pluginId": "prometheus",
            "pluginName": "Prometheus",
        }
    ]
    grafana = [r for r in dashboard["__requires"] if r["id"] == "grafana"]
    assert grafana and int(grafana[0]["version"].split(".")[0]) >= 10


def test_uids_are_distinct() -> None:
    assert len({load(n)["uid"] for n in NAMES}) == len(NAMES)


def test_every_datasource_is_the_input(dashboard: dict[str, Any]) -> None:
    """No datasource but the input (the built-in annotation aside): the JSON holds no instance's uid."""
    text = json.dumps(dashboard)
    for panel in query_panels(dashboard):
        assert panel["datasource"] == DS, panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == DS, (panel["title"], target)
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            assert variable["datasource"] == DS, variable["name"]
    uids = set(re.findall(r'"uid": "([^"]*)"', text))
    assert uids == {"${DS_PROMETHEUS}", "-- Grafana --", dashboard["uid"]}


def test_panel_ids_are_unique(dashboard: dict[str, Any]) -> None:
    ids = [p["id"] for p in all_panels(dashboard)]
    assert all(isinstance(i, int) and i > 0 for i in ids)
    assert len(ids) == len(set(ids))


def test_grid_fits_24_columns_without_overlap(dashboard: dict[str, Any]) -> None:
    cells: dict[tuple[int, int], str] = {}
    for panel in dashboard["panels"]:
        pos = panel["gridPos"]
        x, y, w, h = pos["x"], pos["y"], pos["w"], pos["h"]
        assert x >= 0 and y >= 0 and w >= 1 and h >= 1, panel["title"]
        assert x + w <= 24, panel["title"]
        for cx in range(x, x + w):
            for cy in range(y, y + h):
                assert (cx, cy) not in cells, f"{panel['title']!r} overlaps {cells[cx, cy]!r}"
                cells[cx, cy] = panel["title"]


def test_every_panel_has_a_query(dashboard: dict[str, Any]) -> None:
    panels = list(query_panels(dashboard))
    assert len(panels) >= 10
    for panel in panels:
        assert panel["title"].strip()
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["expr"].strip(), panel["title"]
        assert len({t["refId"] for t in panel["targets"]}) == len(panel["targets"]), panel["title"]


def test_template_variables(dashboard: dict[str, Any]) -> None:
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert set(variables) >= REQUIRED_VARIABLES
    for name, variable in variables.items():
        assert variable["type"] == "query"
        assert variable["query"]["query"].startswith("label_values(")
        assert variable["definition"] == variable["query"]["query"]
        if variable.get("includeAll"):
            assert variable["allValue"] == ".*", name  # regex matchers below accept it
        # used by a panel query (or by another variable's query): $name not followed by a word character
        other = [v["query"]["query"] for n, v in variables.items() if n != name]
        panel_text = json.dumps(list(all_panels(dashboard)))
        assert re.search(rf"\${name}(?!\w)", panel_text + json.dumps(other)), f"${name} is unused"
    # Multi-value variables must be matched with =~ (Grafana joins the values with |).
    for panel in query_panels(dashboard):
        for target in panel["targets"]:
            for name, variable in variables.items():
                if variable.get("multi") or variable.get("includeAll"):
                    assert not re.search(rf'[^=!~]="\${name}"', target["expr"]), (panel["title"], name)


def test_only_raw_umprobe_metrics(dashboard: dict[str, Any]) -> None:
    """The dashboards query raw metrics only (no recording rules), all of them documented ones."""
    metrics_md = (DASHBOARDS.parent / "docs" / "metrics.md").read_text()
    documented = set(re.findall(r"^\| `(\w+)` \|", metrics_md, re.M))
    for panel in query_panels(dashboard):
        for target in panel["targets"]:
            for name in re.findall(r"\b(umprobe_\w+)", target["expr"]):
                base = re.sub(r"_(bucket|sum|count)$", "", name)
                assert name in documented or base in documented, (panel["title"], name)
            bare = re.sub(r'"[^"]*"|\[[^\]]*\]', "", target["expr"])  # no strings, no ranges
            assert ":" not in bare, f"a recording rule in {panel['title']!r}: {target['expr']}"


def test_collapsed_rows_lay_out_their_panels() -> None:
    """A collapsed row keeps its panels inside it, laid out for when it is opened: below the row, within
    24 columns, without overlap among them."""
    for name in NAMES:
        for row in load(name)["panels"]:
            if row["type"] != "row" or not row.get("collapsed"):
                assert not row.get("panels"), f"{name}: {row['title']!r} is open but holds panels"
                continue
            assert row["panels"], f"{name}: collapsed row {row['title']!r} is empty"
            cells: dict[tuple[int, int], str] = {}
            for panel in row["panels"]:
                assert panel["type"] != "row", panel["title"]
                pos = panel["gridPos"]
                x, y, w, h = pos["x"], pos["y"], pos["w"], pos["h"]
                assert x >= 0 and w >= 1 and h >= 1 and x + w <= 24, panel["title"]
                assert y > row["gridPos"]["y"], f"{panel['title']!r} is above its row {row['title']!r}"
                for cx in range(x, x + w):
                    for cy in range(y, y + h):
                        assert (cx, cy) not in cells, f"{panel['title']!r} overlaps {cells[cx, cy]!r}"
                        cells[cx, cy] = panel["title"]


# Metrics that a working set-up may lack: the policy gauges (profile targets only), the inbound series
# ([[listen]] only) and the threshold state (absent until judged, never on a /probe job).
OPTIONAL = re.compile(r"\bumprobe_(policy_|inbound_|listener_up\b|listener_transitions_total\b)")
OPTIONAL_SECTION = re.compile(r"\bumprobe_(policy_|inbound_)")


def test_optional_panels_say_why_they_are_empty(dashboard: dict[str, Any]) -> None:
    """An Exchange-only set-up sees text, not a bare "No data", where a feature it does not use would show;
    and the policy and inbound panels sit in collapsed rows, out of its way."""
    collapsed = {
        panel["id"]
        for row in dashboard["panels"]
        if row["type"] == "row" and row.get("collapsed")
        for panel in row["panels"]
    }
    found = 0
    for panel in query_panels(dashboard):
        exprs = " ".join(target["expr"] for target in panel["targets"])
        if OPTIONAL.search(exprs):
            found += 1
            no_value = panel["fieldConfig"]["defaults"].get("noValue", "")
            assert len(no_value.split()) >= 3, f"{panel['title']!r} needs a noValue text saying why"
        if OPTIONAL_SECTION.search(exprs):
            assert panel["id"] in collapsed, f"{panel['title']!r} belongs in a collapsed row"
    assert found >= 3
