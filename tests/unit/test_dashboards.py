"""The generated dashboards, provisioning files and alert rules, checked without Grafana or InfluxDB.

tests/integration/test_dashboard_queries.py runs every query against a real InfluxDB.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from gpufleet.catalogue import Metric, all_metrics
from gpufleet.dashboards import alerts, build, panels, provisioning, queries
from gpufleet.dashboards.queries import DATASOURCE_UID, format_variable, interpolate, regex_escape

BUILTINS = {"timeFilter", "__timeFilter", "__interval", "__interval_ms", "__from", "__to"}


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path]]:
    out = tmp_path_factory.mktemp("grafana")
    return out, build(out)


@pytest.fixture(scope="module")
def boards(built) -> dict[str, dict[str, Any]]:
    out, _ = built
    return {path.stem: json.loads(path.read_text()) for path in sorted((out / "dashboards").glob("*.json"))}


def _yaml(built, kind: str) -> dict[str, Any]:
    out, _ = built
    return provisioning.read_yaml((out / "provisioning" / kind / "gpufleet.yaml").read_text())


def _datasource_refs(node: Any, path: str = "") -> list[tuple[str, Any]]:
    """Every `datasource` value anywhere in a JSON document."""
    found = []
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "datasource":
                found.append((f"{path}/{key}", value))
            found.extend(_datasource_refs(value, f"{path}/{key}"))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            found.extend(_datasource_refs(value, f"{path}/{i}"))
    return found


# --- files -----------------------------------------------------------------------------------------


def test_build_writes_four_dashboards_and_three_provisioning_files(built):
    out, written = built
    assert sorted(p.relative_to(out).as_posix() for p in written) == [
        "dashboards/gpufleet-fleet.json",
        "dashboards/gpufleet-health.json",
        "dashboards/gpufleet-node.json",
        "dashboards/gpufleet-tenants.json",
        "provisioning/alerting/gpufleet.yaml",
        "provisioning/dashboards/gpufleet.yaml",
        "provisioning/datasources/gpufleet.yaml",
    ]
    assert all(p.is_file() for p in written)


def test_a_rebuild_writes_the_same_bytes(built, tmp_path):
    out, written = built
    again = build(tmp_path, dashboards_path=str((out / "dashboards").resolve()))
    for first, second in zip(written, again, strict=True):
        assert first.read_bytes() == second.read_bytes(), first.name


def test_dashboards_are_grafana_json_with_stable_uids(boards):
    assert set(boards) == {panels.FLEET_UID, panels.HEALTH_UID, panels.TENANTS_UID, panels.NODE_UID}
    for uid, board in boards.items():
        assert board["uid"] == uid
        assert board["title"].startswith("gpufleet / ")
        assert board["schemaVersion"] == panels.SCHEMA_VERSION
        assert panels.TAG in board["tags"]
        ids = [p["id"] for p in board["panels"]] + [p["id"] for p in panels.iter_panels(board)]
        assert all(isinstance(i, int) for i in ids)
        assert len(set(p["id"] for p in panels.iter_panels(board))) == len(list(panels.iter_panels(board)))


def test_panels_fit_the_grid_without_overlapping(boards):
    for uid, board in boards.items():
        cells: dict[tuple[int, int], str] = {}
        for panel in board["panels"]:
            pos = panel["gridPos"]
            assert 0 <= pos["x"] and pos["x"] + pos["w"] <= 24, (uid, panel["title"])
            for x in range(pos["x"], pos["x"] + pos["w"]):
                for y in range(pos["y"], pos["y"] + pos["h"]):
                    assert (x, y) not in cells, f"{uid}: {panel['title']} overlaps {cells[(x, y)]}"
                    cells[(x, y)] = panel["title"]


def test_every_panel_has_an_influxql_query(boards):
    for uid, board in boards.items():
        for panel in panels.iter_panels(board):
            assert panel["targets"], f"{uid}: {panel['title']} has no target"
            for target in panel["targets"]:
                query = target["query"]
                assert target["rawQuery"] is True
                assert re.match(r"^SELECT ", query), f"{uid}: {panel['title']}: {query}"
                assert "|>" not in query and "from(bucket" not in query  # no Flux
                if "$__interval" in query and "GROUP BY time(" in query:
                    # InfluxDB groups from the WHERE's time bounds; without them, from 1970.
                    assert "$timeFilter" in query, f"{uid}: {panel['title']}: {query}"


def test_every_datasource_reference_is_the_influxdb_uid(boards):
    for uid, board in boards.items():
        refs = _datasource_refs(board)
        assert refs
        for path, ref in refs:
            if ref is None:
                continue  # rows, and text box variables (prices), query nothing
            assert ref == {"type": "influxdb", "uid": DATASOURCE_UID}, f"{uid}{path}: {ref}"
        for panel in panels.iter_panels(board):
            assert panel["datasource"]["uid"] == DATASOURCE_UID
            assert all(t["datasource"]["uid"] == DATASOURCE_UID for t in panel["targets"])
        for variable in board["templating"]["list"]:
            if variable["type"] == "query":
                assert variable["datasource"]["uid"] == DATASOURCE_UID


def test_queries_use_only_defined_variables(boards):
    for uid, board in boards.items():
        defined = {v["name"] for v in board["templating"]["list"]} | BUILTINS
        texts = [t["query"] for p in panels.iter_panels(board) for t in p["targets"]]
        texts += [v["query"] for v in board["templating"]["list"] if v["type"] == "query"]
        for text in texts:
            assert queries.variables_in(text) <= defined, f"{uid}: {text}"


def test_every_variable_is_matched_as_a_regex(boards):
    for board in boards.values():
        names = {v["name"] for v in board["templating"]["list"] if v["type"] == "query"}
        for panel in panels.iter_panels(board):
            for target in panel["targets"]:
                for name in names & queries.variables_in(target["query"]):
                    assert f'=~ /^${name}$/' in target["query"], target["query"]


# --- catalogue-driven Node / GPU dashboard ---------------------------------------------------------


def test_every_catalogue_gpu_field_has_a_panel_on_the_node_dashboard(boards):
    board = boards[panels.NODE_UID]
    by_title = {p["title"]: p for p in panels.iter_panels(board)}
    for metric in (m for m in all_metrics() if m.measurement == "gpu"):
        panel = by_title[metric.name]
        [target] = panel["targets"]
        assert f'"{metric.name}"' in target["query"]
        assert 'FROM "gpu"' in target["query"]
        assert panel["fieldConfig"]["defaults"]["unit"] == queries.field_unit(metric)


def test_a_new_catalogue_field_gets_a_panel_without_code(boards):
    new = Metric("gpu", "util_jpeg_pct", "%", 0.01, 90, "util_jpeg_pct", 1, "mean", None, "Mean JPEG decoder utilisation")
    odd = Metric("gpu", "c2c_tx_bytes", "By", 1, 91, "c2c_tx_bytes", 1, "delta", None, "Bytes over the C2C link")
    board = json.loads(json.dumps(panels.node([*panels.gpu_metrics(), new, odd]).to_json_data(), cls=_encoder()))
    rows = [p for p in board["panels"] if p["type"] == "row"]
    by_title = {p["title"]: p for p in panels.iter_panels(board)}
    assert 'mean("util_jpeg_pct")' in by_title["util_jpeg_pct"]["targets"][0]["query"]
    assert 'sum("c2c_tx_bytes") / sum("window_s")' in by_title["c2c_tx_bytes"]["targets"][0]["query"]
    assert by_title["c2c_tx_bytes"]["fieldConfig"]["defaults"]["unit"] == "Bps"
    assert rows[-1]["title"] == panels.OTHER_ROW
    assert panels.row_of(new) == "Utilisation"


def _encoder():
    from grafanalib._gen import DashboardEncoder

    return DashboardEncoder


@pytest.mark.parametrize(
    ("name", "select", "unit"),
    [
        ("power_w", 'mean("power_w")', "watt"),
        ("temp_gpu_c", 'max("temp_gpu_c")', "celsius"),
        ("ecc_uncorrected_volatile", 'last("ecc_uncorrected_volatile")', "short"),
        ("throttle_thermal_s", 'sum("throttle_thermal_s") / sum("window_s")', "percentunit"),
        ("pcie_rx_bytes", 'sum("pcie_rx_bytes") / sum("window_s")', "Bps"),
        ("energy_j", 'sum("energy_j")', "joule"),
        ("clock_sm_mhz", 'mean("clock_sm_mhz")', "suffix: MHz"),
        ("clock_event_reasons", 'last("clock_event_reasons")', "none"),
        ("seq", 'last("seq")', "none"),
        ("window_s", 'mean("window_s")', "s"),
    ],
)
def test_field_aggregation_and_unit_follow_the_catalogue(name, select, unit):
    [metric] = [m for m in all_metrics() if m.measurement == "gpu" and m.name == name]
    assert queries.field_select(metric) == select
    assert queries.field_unit(metric) == unit


# --- the variables ---------------------------------------------------------------------------------


def test_dashboard_variables(boards):
    def variables(uid: str) -> dict[str, dict[str, Any]]:
        return {v["name"]: v for v in boards[uid]["templating"]["list"]}

    tenants = variables(panels.TENANTS_UID)
    assert tenants["tenant"]["query"].startswith('SHOW TAG VALUES FROM "tenant_usage" WITH KEY = "tenant"')
    assert tenants["tenant"]["includeAll"] and tenants["tenant"]["multi"] and tenants["tenant"]["allValue"] == ".*"
    assert tenants["price_gpu_hour"]["type"] == "textbox" and float(tenants["price_gpu_hour"]["current"]["value"]) > 0
    assert tenants["price_kwh"]["type"] == "textbox" and float(tenants["price_kwh"]["current"]["value"]) > 0
    node = variables(panels.NODE_UID)
    assert list(node) == ["cluster", "node", "gpu"]
    assert not node["node"]["multi"] and not node["node"]["includeAll"]
    assert node["gpu"]["includeAll"] and node["gpu"]["sort"] == 3  # numerical
    assert list(variables(panels.HEALTH_UID)) == ["cluster", "node"]
    assert list(variables(panels.FLEET_UID)) == ["cluster"]


# --- Grafana's substitution, emulated --------------------------------------------------------------


def test_interpolate_writes_macros_as_grafana_does():
    query = 'SELECT mean("x") FROM "gpu" WHERE $timeFilter AND time > ${__to}ms - 1m GROUP BY time($__interval) LIMIT $__interval_ms'
    assert interpolate(query, {}, time_from_ms=1000, time_to_ms=5000, interval_ms=10_000) == (
        'SELECT mean("x") FROM "gpu" WHERE time >= 1000ms and time <= 5000ms AND time > 5000ms - 1m '
        "GROUP BY time(10s) LIMIT 10000"
    )


@pytest.mark.parametrize(("ms", "text"), [(10_000, "10s"), (60_000, "1m"), (7_200_000, "2h"), (500, "500ms"), (90_000, "90s")])
def test_interval_text(ms, text):
    assert queries.interval_text(ms) == text


def test_interpolate_puts_in_variables_and_refuses_unknown_ones():
    query = 'SELECT 1 FROM "gpu" WHERE "node" =~ /^$node$/ AND "gpu" =~ /^${gpu}$/'
    assert interpolate(query, {"node": "(a|b)", "gpu": ".*"}, time_from_ms=0, time_to_ms=1, interval_ms=1000) == (
        'SELECT 1 FROM "gpu" WHERE "node" =~ /^(a|b)$/ AND "gpu" =~ /^.*$/'
    )
    with pytest.raises(KeyError, match=r"\$nod"):
        interpolate('WHERE "node" =~ /^$nod$/', {"node": "a"}, time_from_ms=0, time_to_ms=1, interval_ms=1000)


def test_format_variable_as_grafanas_influxdb_data_source():
    multi = {"name": "node", "multi": True, "includeAll": True, "allValue": ".*"}
    single = {"name": "node", "multi": False, "includeAll": False}
    no_all_value = {"name": "node", "multi": True, "includeAll": True, "allValue": None}
    assert format_variable(multi, None, ["a", "b"]) == ".*"
    assert format_variable(no_all_value, None, ["a", "b.c"]) == r"(a|b\.c)"
    assert format_variable(multi, ["gpu-01.rack/2"], []) == r"gpu-01\.rack\/2"
    assert format_variable(multi, ["a", "b"], []) == "(a|b)"
    assert format_variable(single, ["gpu-01.x"], []) == "gpu-01.x"  # single values go in as they are
    assert regex_escape("a+b(c)[d]{e}|f^$*?\\") == r"a\+b\(c\)\[d\]\{e\}\|f\^\$\*\?\\"


# --- provisioning ----------------------------------------------------------------------------------


def test_provisioning_files_are_yaml_grafana_reads(built):
    out, written = built
    for path in written:
        if path.suffix == ".yaml":
            text = path.read_text()
            assert text.startswith("# ")
            assert "\t" not in text  # YAML forbids tabs for indentation
            document = provisioning.read_yaml(text)
            assert document["apiVersion"] == 1


def test_datasource_provisioning(built):
    [source] = _yaml(built, "datasources")["datasources"]
    assert source["uid"] == DATASOURCE_UID
    assert source["type"] == "influxdb"
    assert source["url"] == "$GPUFLEET_INFLUX_URL"
    assert source["jsonData"]["version"] == "InfluxQL"
    assert source["jsonData"]["dbName"] == source["database"] == provisioning.DEFAULT_DATABASE
    assert source["jsonData"]["timeInterval"] == "10s"


def test_datasource_database_is_configurable(tmp_path):
    build(tmp_path, database="telemetry")
    [source] = provisioning.read_yaml((tmp_path / "provisioning/datasources/gpufleet.yaml").read_text())["datasources"]
    assert source["jsonData"]["dbName"] == "telemetry"


def test_dashboard_provider_points_at_the_dashboards_folder(built):
    out, _ = built
    [provider] = _yaml(built, "dashboards")["providers"]
    assert provider["type"] == "file"
    assert provider["options"]["path"] == str((out / "dashboards").resolve())


def test_alert_rules_query_influxql_and_reduce_then_threshold(built, boards):
    [group] = _yaml(built, "alerting")["groups"]
    assert group["folder"] and group["interval"] == "1m"
    panel_ids = {(b["uid"], p["id"]) for b in boards.values() for p in panels.iter_panels(b)}
    uids = set()
    for rule in group["rules"]:
        uids.add(rule["uid"])
        query, reduce, threshold = rule["data"]
        assert query["datasourceUid"] == DATASOURCE_UID
        assert query["model"]["rawQuery"] is True
        assert query["model"]["query"].startswith("SELECT ")
        assert query["relativeTimeRange"]["from"] > 0
        assert (reduce["model"]["type"], reduce["model"]["expression"]) == ("reduce", "A")
        assert (threshold["model"]["type"], threshold["model"]["expression"]) == ("threshold", "B")
        assert reduce["datasourceUid"] == threshold["datasourceUid"] == "__expr__"
        assert rule["condition"] == "C"
        assert rule["labels"]["severity"] == "page"
        assert (rule["dashboardUid"], rule["panelId"]) in panel_ids
        assert "$timeFilter" in query["model"]["query"] or rule["uid"] == "gpufleet-node-offline"
    assert len(uids) == len(group["rules"])


def test_alerts_cover_what_an_sre_is_paged_for():
    by_uid = {rule.uid: rule for rule in alerts.rules()}
    assert set(by_uid) == {
        "gpufleet-ecc-uncorrected",
        "gpufleet-xid-critical",
        "gpufleet-remap-failure",
        "gpufleet-gpu-lost",
        "gpufleet-node-offline",
        "gpufleet-thermal-throttling",
    }
    for code in (48, 63, 64, 74, 79, 94, 95):
        assert f'"code" = {code}' in by_uid["gpufleet-xid-critical"].query
    assert "throttle_thermal_s" in by_uid["gpufleet-thermal-throttling"].query
    assert by_uid["gpufleet-thermal-throttling"].for_ != "0s"  # sustained, not one hot window


# --- the README pictures ---------------------------------------------------------------------------


class _FakeInflux:
    """Answers every query with one series of three points, every variable query with two values."""

    def __init__(self) -> None:
        self.queries: list[str] = []

    def series(self, influxql: str) -> list[dict[str, Any]]:
        self.queries.append(influxql)
        rows = [[1_700_000_000_000 + i * 10_000, 40.0 + i] for i in range(3)]
        return [{"name": "gpu", "tags": {"node": "n1"}, "columns": ["time", "value"], "values": rows}]

    def tag_values(self, influxql: str) -> list[str]:
        return ["a", "b"]


def test_preview_draws_every_dashboard_from_its_queries(tmp_path, boards):
    # `make deps` installs the `docs` extra (matplotlib) with the test extras.
    from gpufleet.dashboards import preview  # noqa: PLC0415

    for uid, board in boards.items():
        influx = _FakeInflux()
        out = preview.render(
            board, influx, tmp_path / f"{uid}.png", time_from_ms=1_699_999_990_000, time_to_ms=1_700_000_030_000, node="a"
        )
        assert out.read_bytes().startswith(b"\x89PNG")
        assert len(influx.queries) == sum(len(p["targets"]) for p in panels.iter_panels(board))
        assert not [q for q in influx.queries if re.search(r"\$[\w{]", q)]  # every variable and macro was put in
