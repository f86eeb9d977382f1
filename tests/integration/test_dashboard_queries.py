"""Every query of the generated dashboards and alert rules, sent as Grafana would send it, against
the real InfluxDB 1.6 holding a simulated fleet's data (the `fleet_db` fixture).

For each dashboard the variables are resolved in order from their own queries, as Grafana does,
then each panel's InfluxQL gets Grafana's macros and the variables' formatting
(gpufleet.dashboards.queries.interpolate) and must parse and return at least one series. Two
selections are tried: every multi-value variable on All (`.*`), and two values picked by hand
(`(a|b)`, regex-escaped). A panel may be empty only where the data can't fill it; ALLOWED_EMPTY
says why, with a witness query that must then find nothing either.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

from gpufleet import localstack
from gpufleet.dashboards import alerts, panels, provisioning, queries
from gpufleet.dashboards.queries import interpolate

INTERVAL_MS = 1000  # several intervals over the fleet's few seconds of data
MARGIN_MS = 5 * 60_000  # the range starts this long before the first window: "last 5 minutes"


@dataclass(frozen=True)
class TimeRange:
    from_ms: int
    to_ms: int


@dataclass(frozen=True)
class Result:
    dashboard: str
    panel: str
    ref_id: str
    selection: str
    query: str
    series: list[dict[str, Any]]
    error: str | None = None  # InfluxDB's own message when it refused the statement

    @property
    def has_data(self) -> bool:
        """A series with a value: a ratio over a field nobody has gives rows of nulls (Grafana shows nothing)."""
        return any(v is not None for s in self.series for row in s["values"] for v in row[1:])


def _rows_exist(influxql: str) -> Callable[[localstack.InfluxDB, str], bool]:
    def witness(influxdb: localstack.InfluxDB, bucket: str) -> bool:
        return bool(influxdb.rows(influxql, bucket))

    return witness


def _collector_reports_in_two_intervals(influxdb: localstack.InfluxDB, bucket: str) -> bool:
    """non_negative_derivative needs points in two GROUP BY intervals (aligned to the epoch)."""
    rows = influxdb.rows('SELECT "received" FROM "collector"', bucket, epoch="ms")
    return len({row["time"] // INTERVAL_MS for row in rows}) >= 2


_CRITICAL = " OR ".join(f'"code" = {code}' for code in panels.CRITICAL_XIDS)
_IDLE_ALLOCATED = "an idle allocated GPU needs a tenant's GPU busy < 5 % of the last minute"

# (dashboard uid, panel title) -> (why it may be empty, a query that must then be empty too or a
# check that must then fail). Catalogue fields a GPU lacks are handled in _field_witness().
ALLOWED_EMPTY: dict[tuple[str, str], tuple[str, Callable[[localstack.InfluxDB, str], bool] | None]] = {
    (panels.FLEET_UID, "Idle allocated GPUs"): (_IDLE_ALLOCATED, None),
    (panels.FLEET_UID, "Collector throughput"): (
        "a rate needs collector reports in two intervals",
        _collector_reports_in_two_intervals,
    ),
    (panels.FLEET_UID, "Messages rejected"): (
        "a rate needs collector reports in two intervals",
        _collector_reports_in_two_intervals,
    ),
    (panels.HEALTH_UID, "Critical XIDs"): (
        "the simulator's XIDs are random; none may be a paging one",
        _rows_exist(f"SELECT count(\"code\") FROM \"gpu_event\" WHERE \"kind\" = 'xid' AND ({_CRITICAL})"),
    ),
    ("alerts", "Critical XID event"): (
        "the simulator's XIDs are random; none may be a paging one",
        _rows_exist(f"SELECT count(\"code\") FROM \"gpu_event\" WHERE \"kind\" = 'xid' AND ({_CRITICAL})"),
    ),
}


def _field_witness(dashboard_uid: str, title: str) -> tuple[str, Callable[[localstack.InfluxDB, str], bool]] | None:
    """Node / GPU panels of fields the simulated GPUs do not have (fan, NVLink, page retirement)."""
    fields = {m.name for m in panels.gpu_metrics()}
    if dashboard_uid != panels.NODE_UID or title not in fields:
        return None
    return (f"no GPU in the fleet reports {title}", _rows_exist(f'SELECT count("{title}") FROM "gpu"'))


# --- Grafana, emulated -----------------------------------------------------------------------------


def _time_range(fleet_db) -> TimeRange:
    where = f"WHERE \"cluster\" = '{fleet_db.cluster}'"
    first = fleet_db.influxdb.rows(f'SELECT first("seq") FROM "gpu" {where}', fleet_db.bucket, epoch="ms")
    last = fleet_db.influxdb.rows(f'SELECT last("seq") FROM "gpu" {where}', fleet_db.bucket, epoch="ms")
    assert first and last, "the fleet wrote no GPU points"
    # Grafana's range ends at "now": just after the last window and the events that followed it.
    return TimeRange(first[0]["time"] - MARGIN_MS, last[0]["time"] + 10_000)


def _run(influxdb: localstack.InfluxDB, bucket: str, query: str) -> list[dict[str, Any]]:
    """The series of a query; raises InfluxQueryError when InfluxDB refuses it."""
    series = []
    for result in influxdb.query(query, bucket, epoch="ms"):
        series.extend(result.get("series", []))
    return series


def _result(fleet_db, dashboard: str, panel: str, ref_id: str, selection: str, query: str) -> Result:
    try:
        series = _run(fleet_db.influxdb, fleet_db.bucket, query)
    except localstack.InfluxQueryError as exc:
        return Result(dashboard, panel, ref_id, selection, query, [], str(exc))
    return Result(dashboard, panel, ref_id, selection, query, series)


def _tag_values(series: list[dict[str, Any]]) -> list[str]:
    return sorted({row[1] for s in series for row in s["values"]})


Pick = Callable[[str, list[str]], "list[str] | None"]  # (variable, its values) -> values picked, None: All


def resolve_variables(dashboard: dict[str, Any], fleet_db, span: TimeRange, pick: Pick) -> dict[str, str]:
    def tag_values(query: str) -> list[str]:
        return _tag_values(_run(fleet_db.influxdb, fleet_db.bucket, query))

    return queries.resolve_variables(
        dashboard["templating"]["list"], tag_values, pick,
        time_from_ms=span.from_ms, time_to_ms=span.to_ms, interval_ms=INTERVAL_MS,
    )


def _interesting(fleet_db) -> dict[str, list[str]]:
    """Values a reader would pick: the node and GPU with the lost GPU, and busy tenants."""
    db, bucket, cluster = fleet_db.influxdb, fleet_db.bucket, fleet_db.cluster
    lost = db.rows(f"SELECT \"code\", \"node\", \"gpu\" FROM \"gpu_event\" WHERE \"kind\" = 'gpu_lost' AND \"cluster\" = '{cluster}'", bucket)
    nodes = _tag_values(_run(db, bucket, f"SHOW TAG VALUES FROM \"gpu\" WITH KEY = \"node\" WHERE \"cluster\" = '{cluster}'"))
    tenants = _tag_values(_run(db, bucket, 'SHOW TAG VALUES FROM "tenant_usage" WITH KEY = "tenant"'))
    lost_node = lost[0]["node"] if lost else nodes[-1]
    lost_gpu = lost[0]["gpu"] if lost else "0"
    other_node = next(n for n in nodes if n != lost_node)
    return {
        "cluster": [cluster],
        "node": [lost_node, other_node],
        "node_single": [lost_node],
        "gpu": sorted({lost_gpu, "0"}) if lost_gpu != "0" else ["0", "1"],
        "tenant": [t for t in tenants if t != "unallocated"][:2] or tenants[:1],
    }


# --- the test ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dashboards() -> dict[str, dict[str, Any]]:
    return {board["uid"]: board for board in provisioning.dashboards_json().values()}


def _picker(selection: str, dashboard_uid: str, picks: dict[str, list[str]]) -> Pick:
    """All: every multi-value variable on All. picked: the values in `picks`, as far as offered.
    The Node dashboard's node takes one value: the lost GPU's node in both."""

    def pick(name: str, options: list[str]) -> list[str] | None:
        if name == "node" and dashboard_uid == panels.NODE_UID:
            return picks["node_single"]
        if selection == "All" or name not in picks:
            return None
        return [v for v in picks[name] if v in options] or options[:1]

    return pick


@pytest.fixture(scope="module")
def results(fleet_db, dashboards) -> list[Result]:
    span = _time_range(fleet_db)
    picks = _interesting(fleet_db)
    out = []
    for selection in ("All", "picked"):
        for uid, board in dashboards.items():
            variables = resolve_variables(board, fleet_db, span, _picker(selection, uid, picks))
            for panel in panels.iter_panels(board):
                for target in panel["targets"]:
                    query = interpolate(
                        target["query"], variables, time_from_ms=span.from_ms, time_to_ms=span.to_ms, interval_ms=INTERVAL_MS
                    )
                    out.append(_result(fleet_db, uid, panel["title"], target["refId"], selection, query))
    for rule in alerts.provisioning(provisioning.panel_ids(dashboards))["groups"][0]["rules"]:
        [query_data] = [d for d in rule["data"] if d["refId"] == "A"]
        window_ms = query_data["relativeTimeRange"]["from"] * 1000
        query = interpolate(
            query_data["model"]["query"], {}, time_from_ms=span.to_ms - window_ms, time_to_ms=span.to_ms, interval_ms=60_000
        )
        out.append(_result(fleet_db, "alerts", rule["title"], "A", "alert", query))
    return out


def test_the_fleet_data_has_what_the_dashboards_show(fleet_db):
    """Guards the test itself: tenants, XIDs and a lost GPU are in the data."""
    db, bucket = fleet_db.influxdb, fleet_db.bucket
    for measurement, field in (("gpu", "seq"), ("tenant_usage", "gpu_s"), ("gpu_event", "code"), ("node_state", "online")):
        assert db.rows(f'SELECT count("{field}") FROM "{measurement}"', bucket), f"no {measurement} points"
    assert db.rows("SELECT count(\"code\") FROM \"gpu_event\" WHERE \"kind\" = 'gpu_lost'", bucket)
    assert db.rows("SELECT count(\"code\") FROM \"gpu_event\" WHERE \"kind\" = 'xid'", bucket)


def test_influxdb_runs_every_query(results):
    refused = [f"{r.dashboard} / {r.panel} [{r.ref_id}, {r.selection}]: {r.error}" for r in results if r.error]
    assert not refused, "InfluxDB refused:\n" + "\n".join(refused)


def test_every_query_returns_data(fleet_db, results):
    assert results
    empty = []
    for result in results:
        if result.has_data or result.error:
            continue
        allowance = ALLOWED_EMPTY.get((result.dashboard, result.panel)) or _field_witness(result.dashboard, result.panel)
        if allowance is None:
            empty.append(f"{result.dashboard} / {result.panel} [{result.ref_id}, {result.selection}]: {result.query}")
            continue
        reason, witness = allowance
        if witness is not None and witness(fleet_db.influxdb, fleet_db.bucket):
            empty.append(f"{result.dashboard} / {result.panel} [{result.selection}] is empty ({reason}?) but the data has it: {result.query}")
    assert not empty, "queries that returned no series:\n" + "\n".join(empty)


def test_every_panel_and_alert_was_queried(dashboards, results):
    queried = {(r.dashboard, r.panel) for r in results}
    for uid, board in dashboards.items():
        for panel in panels.iter_panels(board):
            assert (uid, panel["title"]) in queried
    assert {r.panel for r in results if r.dashboard == "alerts"} == {rule.title for rule in alerts.rules()}


def _value(results: list[Result], dashboard: str, panel: str, selection: str = "All") -> Any:
    [result] = [r for r in results if (r.dashboard, r.panel, r.selection) == (dashboard, panel, selection)]
    [series] = result.series
    return series["values"][-1][1]


def test_fleet_counts_match_the_raw_data(fleet_db, results):
    db, bucket, cluster = fleet_db.influxdb, fleet_db.bucket, fleet_db.cluster
    uuids = _tag_values(_run(db, bucket, f"SHOW TAG VALUES FROM \"gpu\" WITH KEY = \"uuid\" WHERE \"cluster\" = '{cluster}'"))
    lost = _tag_values(_run(db, bucket, "SHOW TAG VALUES FROM \"gpu_event\" WITH KEY = \"uuid\" WHERE \"kind\" = 'gpu_lost'"))
    # By cluster and node, as the panels count: the broker is shared with other tests, whose
    # retained node states reach this bucket too, and node names repeat across clusters.
    states = db.rows('SELECT last("online") AS "online" FROM "node_state" GROUP BY "cluster", "node"', bucket)
    assert _value(results, panels.FLEET_UID, "GPUs") == len(uuids)
    assert _value(results, panels.FLEET_UID, "GPUs reporting") == len(uuids)
    assert _value(results, panels.FLEET_UID, "GPUs lost") == len(lost)
    assert _value(results, panels.HEALTH_UID, "GPUs lost") == len(lost)
    assert _value(results, panels.FLEET_UID, "Nodes online") == sum(row["online"] for row in states)
    assert _value(results, panels.FLEET_UID, "Nodes offline") == sum(1 - row["online"] for row in states)


def test_tenant_accounting_adds_up(fleet_db, results):
    db, bucket = fleet_db.influxdb, fleet_db.bucket
    [raw] = db.rows("SELECT sum(\"gpu_s\") AS \"gpu_s\" FROM \"tenant_usage\" WHERE \"tenant\" != 'unallocated'", bucket)
    assert _value(results, panels.TENANTS_UID, "GPU-hours") == pytest.approx(raw["gpu_s"] / 3600)
    [table] = [r for r in results if (r.dashboard, r.panel, r.selection) == (panels.TENANTS_UID, "Usage and cost by tenant", "All")]
    rows = {s["tags"]["tenant"]: dict(zip(s["columns"], s["values"][0])) for s in table.series}
    for row in rows.values():
        assert row["GPU-time cost"] == pytest.approx(row["GPU-hours"] * 2.00)
        assert 0 <= row["busy share"] <= 1


def _firing(result: Result, rule: alerts.Rule) -> set[tuple[str, ...]]:
    """Alert instances whose reduced (last) value passes the threshold, as Grafana's B and C do."""
    fired = set()
    for series in result.series:
        values = [row[1] for row in series["values"] if row[1] is not None]
        if not values:
            continue
        value = values[-1]
        if (rule.comparison == "gt" and value > rule.threshold) or (rule.comparison == "lt" and value < rule.threshold):
            fired.add(tuple(sorted(series.get("tags", {}).items())))
    return fired


def test_alerts_fire_for_the_lost_gpu_and_the_offline_nodes(fleet_db, results):
    db, bucket = fleet_db.influxdb, fleet_db.bucket
    by_title = {r.panel: r for r in results if r.dashboard == "alerts"}
    rules = {rule.title: rule for rule in alerts.rules()}

    lost = db.rows("SELECT \"code\", \"cluster\", \"node\", \"gpu\" FROM \"gpu_event\" WHERE \"kind\" = 'gpu_lost'", bucket)
    expected_lost = {(("cluster", r["cluster"]), ("gpu", r["gpu"]), ("node", r["node"])) for r in lost}
    assert _firing(by_title["GPU lost"], rules["GPU lost"]) == expected_lost

    states = db.rows('SELECT last("online") AS "online" FROM "node_state" GROUP BY "cluster", "node"', bucket)
    offline = {(("cluster", r["cluster"]), ("node", r["node"])) for r in states if r["online"] == 0}
    assert _firing(by_title["Node offline"], rules["Node offline"]) == offline

    # A healthy simulated fleet: no ECC increase, no failed remap, no sustained thermal throttling.
    for quiet in ("Uncorrectable ECC errors increased", "Row remap failed"):
        assert by_title[quiet].series, f"{quiet}: no series to evaluate"
        assert _firing(by_title[quiet], rules[quiet]) == set()


def test_results_are_json_serialisable_for_the_preview(results):
    json.dumps([r.series for r in results])
