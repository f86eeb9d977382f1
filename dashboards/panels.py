"""The four Grafana dashboards (Fleet, Health, Tenants, Node / GPU), built with grafanalib.

Every panel queries the one InfluxDB data source by uid (queries.DATASOURCE_UID) with raw InfluxQL
from queries.py. The Node / GPU dashboard has one panel per `gpu` row of the metric catalogue
(metrics.csv), so a new field gets a panel without an edit here.

    from gpufleet.dashboards.panels import all_dashboards
    for dashboard in all_dashboards():
        dashboard.to_json_data()
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import attr
from grafanalib import core as g
from grafanalib.influxdb import InfluxDBTarget

from gpufleet.catalogue import Metric, all_metrics

from . import queries as q
from .queries import DATASOURCE, RECENT_FILTER, UNALLOCATED, UNTIL_TO, either, equals, ident, match, not_equals, where

SCHEMA_VERSION = 36  # Grafana 9.x; panels carry gridPos, so no legacy-row migration applies
TAG = "gpufleet"

# Dashboard uids: stable, so links and bookmarks survive a rebuild.
FLEET_UID = "gpufleet-fleet"
HEALTH_UID = "gpufleet-health"
TENANTS_UID = "gpufleet-tenants"
NODE_UID = "gpufleet-node"

# XIDs an SRE is paged for (NVIDIA's XID catalogue, "XID Errors" in the GPU deployment guide).
CRITICAL_XIDS = (48, 63, 64, 74, 79, 94, 95)
XID_MEANING = {
    13: "graphics engine exception",
    31: "GPU memory page fault",
    43: "GPU stopped processing",
    45: "preemptive cleanup",
    48: "double-bit ECC error",
    61: "internal micro-controller breakpoint",
    62: "internal micro-controller halt",
    63: "ECC page retirement or row remap recorded",
    64: "ECC page retirement or row remap failed",
    74: "NVLink error",
    79: "GPU has fallen off the bus",
    92: "high single-bit ECC error rate",
    94: "contained ECC error",
    95: "uncontained ECC error",
    119: "GSP RPC timeout",
    120: "GSP error",
}

# Node / GPU dashboard rows, by the field name's first word; a new prefix lands in "Other".
_ROW_OF_PREFIX = {
    "power": "Power and energy",
    "energy": "Power and energy",
    "temp": "Temperature and cooling",
    "fan": "Temperature and cooling",
    "util": "Utilisation",
    "mem": "Memory",
    "clock": "Clocks and throttling",
    "throttle": "Clocks and throttling",
    "ecc": "ECC",
    "retired": "Retired pages and row remapping",
    "remap": "Retired pages and row remapping",
    "pcie": "PCIe",
    "nvlink": "NVLink",
    "samples": "Agent windows",
    "window": "Agent windows",
    "seq": "Agent windows",
}
OTHER_ROW = "Other"


def _node_link(*params: str) -> list[dict[str, Any]]:
    url = f"/d/{NODE_UID}/gpufleet-node-gpu?" + "&".join(["${__url_time_range}", *params])
    return [{"title": "Node / GPU view", "url": url}]


def node_link_from_fields() -> list[dict[str, Any]]:
    """Data link from a table row with cluster/node/gpu columns to the Node / GPU dashboard."""
    return _node_link(
        "var-cluster=${__data.fields.cluster}", "var-node=${__data.fields.node}", "var-gpu=${__data.fields.gpu}"
    )


def node_link_from_labels() -> list[dict[str, Any]]:
    """Data link from a series grouped by node to the Node / GPU dashboard, all of its GPUs."""
    return _node_link("${cluster:queryparam}", "var-node=${__field.labels.node}", "var-gpu=$__all")


# --- panel helpers ---------------------------------------------------------------------------------


def target(query: str, ref_id: str = "A", alias: str = "", table: bool = False) -> InfluxDBTarget:
    return InfluxDBTarget(
        query=query, refId=ref_id, alias=alias, format="table" if table else "time_series", datasource=DATASOURCE
    )


def targets(*specs: tuple[str, str]) -> list[InfluxDBTarget]:
    """(query, alias) pairs as targets A, B, C..."""
    return [target(query, chr(ord("A") + i), alias) for i, (query, alias) in enumerate(specs)]


def _thresholds(bad_from: float | None) -> list[dict[str, Any]]:
    if bad_from is None:
        return [{"color": "blue", "value": None}]
    return [{"color": "green", "value": None}, {"color": "red", "value": bad_from}]


def stat(
    title: str,
    query: str,
    description: str,
    unit: str = "none",
    *,
    bad_from: float | None = None,
    decimals: int | None = None,
    mappings: list[dict[str, Any]] | None = None,
) -> g.Stat:
    return g.Stat(
        title=title,
        description=description,
        dataSource=DATASOURCE,
        targets=[target(query)],
        format=unit,
        decimals=decimals,
        noValue="0",  # InfluxQL returns no row for a count of nothing
        reduceCalc="lastNotNull",
        graphMode="none",
        colorMode="value",
        mappings=mappings or [],
        thresholds=_thresholds(bad_from),
    )


def timeseries(
    title: str,
    specs: Sequence[tuple[str, str]],
    description: str,
    unit: str = "none",
    *,
    stack: bool = False,
    bars: bool = False,
    links: list[dict[str, Any]] | None = None,
    soft_max: int | None = None,
) -> g.TimeSeries:
    return g.TimeSeries(
        title=title,
        description=description,
        dataSource=DATASOURCE,
        targets=targets(*specs),
        unit=unit,
        drawStyle="bars" if bars else "line",
        fillOpacity=60 if (stack or bars) else 10,
        stacking={"mode": "normal", "group": "A"} if stack else {},
        showPoints="never",
        legendDisplayMode="table" if len(specs) > 1 or stack else "list",
        legendPlacement="bottom",
        legendCalcs=["mean", "max", "lastNotNull"],
        tooltipMode="multi",
        tooltipSort="desc",
        axisSoftMin=0,
        axisSoftMax=soft_max,
        extraJson={"fieldConfig": {"defaults": {"links": links}}} if links else None,
    )


def table(
    title: str,
    query: str,
    description: str,
    *,
    sort_by: str | None = None,
    links: list[dict[str, Any]] | None = None,
    transformations: list[dict[str, Any]] | None = None,
    overrides: list[dict[str, Any]] | None = None,
    show_time: bool = False,
) -> g.Table:
    """A table of one query. Its `time` column is hidden unless show_time: aggregates over the
    whole range carry time 0 there; event lists want it."""
    extra: dict[str, Any] = {}
    if sort_by:
        extra["options"] = {"sortBy": [{"displayName": sort_by, "desc": True}]}
    if links:
        extra["fieldConfig"] = {"defaults": {"links": links}}
    return g.Table(
        title=title,
        description=description,
        dataSource=DATASOURCE,
        targets=[target(query, table=True)],
        filterable=True,
        transformations=[*([] if show_time else [_HIDE_TIME]), *(transformations or [])],
        overrides=overrides or [],
        extraJson=extra or None,
    )


_HIDE_TIME = {"id": "organize", "options": {"excludeByName": {"Time": True}}}


def _heatmap(title: str, query: str, description: str, unit: str) -> g.Heatmap:
    return g.Heatmap(
        title=title,
        description=description,
        dataSource=DATASOURCE,
        targets=[target(query)],
        dataFormat="timeseries",
        hideZeroBuckets=True,
        # Grafana 9+ heatmap options; the legacy keys above are what grafanalib writes.
        extraJson={
            "options": {
                "calculate": True,
                "calculation": {"yBuckets": {"mode": "size", "value": "10"}},
                "color": {"mode": "scheme", "scheme": "Oranges", "steps": 64},
                "yAxis": {"unit": unit, "min": 0, "max": 100},
                "cellGap": 1,
                "tooltip": {"show": True, "yHistogram": True},
            }
        },
    )


def _bar_chart(title: str, query: str, description: str, unit: str) -> g.BarChart:
    return g.BarChart(
        title=title,
        description=description,
        dataSource=DATASOURCE,
        targets=[target(query, table=True)],
        orientation="horizontal",
        showLegend=False,
        transformations=[_HIDE_TIME],
        extraJson={"fieldConfig": {"defaults": {"unit": unit}}},
    )


class Grid:
    """Lays panels out left to right in Grafana's 24-column grid, under titled rows."""

    WIDTH = 24

    def __init__(self) -> None:
        self.panels: list[g.Panel] = []
        self._x = self._y = self._row_h = 0
        self._w, self._h = 12, 8

    def _newline(self) -> None:
        self._y += self._row_h
        self._x = self._row_h = 0

    def row(self, title: str, w: int = 12, h: int = 8) -> None:
        """A titled row; panels added after it are w columns by h units unless they say otherwise."""
        self._newline()
        self._w, self._h = w, h
        self.panels.append(g.RowPanel(title=title, gridPos=g.GridPos(h=1, w=self.WIDTH, x=0, y=self._y)))
        self._y += 1

    def add(self, panel: g.Panel, w: int | None = None, h: int | None = None) -> None:
        w, h = w or self._w, h or self._h
        if self._x + w > self.WIDTH:
            self._newline()
        self.panels.append(attr.evolve(panel, gridPos=g.GridPos(h=h, w=w, x=self._x, y=self._y)))
        self._x += w
        self._row_h = max(self._row_h, h)


# --- variables -------------------------------------------------------------------------------------


def _query_variable(
    name: str, label: str, query: str, *, multi: bool = True, include_all: bool = True, numeric: bool = False
) -> g.Template:
    variable = g.Template(
        name=name,
        label=label,
        query=query,
        dataSource=DATASOURCE,
        multi=multi,
        includeAll=include_all,
        # All is `.*`, not every value joined: one regex however large the fleet.
        allValue=".*" if include_all else None,
        refresh=1,  # on dashboard load
        sort=3 if numeric else 1,  # numerical / alphabetical, ascending
    )
    if include_all:
        # Open on All; grafanalib writes `current` from `default` only as a plain value.
        variable._current = {"selected": True, "text": ["All"], "value": ["$__all"]}
    return variable


def cluster_variable() -> g.Template:
    return _query_variable("cluster", "Cluster", 'SHOW TAG VALUES FROM "gpu" WITH KEY = "cluster"')


def node_variable(*, multi: bool = True) -> g.Template:
    return _query_variable(
        "node",
        "Node",
        f'SHOW TAG VALUES FROM "gpu" WITH KEY = "node" WHERE {match("cluster", "cluster")}',
        multi=multi,
        include_all=multi,
    )


def gpu_variable() -> g.Template:
    return _query_variable(
        "gpu",
        "GPU",
        f'SHOW TAG VALUES FROM "gpu" WITH KEY = "gpu" WHERE {where(match("cluster", "cluster"), match("node", "node"))}',
        numeric=True,
    )


def tenant_variable() -> g.Template:
    return _query_variable(
        "tenant",
        "Tenant",
        f'SHOW TAG VALUES FROM "tenant_usage" WITH KEY = "tenant" WHERE {match("cluster", "cluster")}',
    )


def price_variable(name: str, label: str, default: str) -> g.Template:
    """A text box the reader can change; queries use the value as a number."""
    return g.Template(name=name, label=label, query=default, default=default, type="textbox")


def _dashboard(title: str, uid: str, description: str, grid: Grid, variables: list[g.Template]) -> g.Dashboard:
    return g.Dashboard(
        title=title,
        uid=uid,
        description=description,
        tags=[TAG],
        panels=grid.panels,
        templating=g.Templating(list=variables),
        links=[
            g.DashboardLink(
                title="gpufleet", type="dashboards", tags=[TAG], asDropdown=True, includeVars=True, keepTime=True
            )
        ],
        time=g.Time("now-6h", "now"),
        refresh="1m",
        timezone="browser",
        graphTooltip=1,  # shared crosshair
        schemaVersion=SCHEMA_VERSION,
    ).auto_panel_ids()


# --- shared query pieces ---------------------------------------------------------------------------


def _gpus_counted(cluster_filter: str, time_filter: str) -> str:
    """GPUs (by uuid) with at least one window in the time filter."""
    return (
        'SELECT count("seq") AS "gpus" FROM (SELECT last("seq") AS "seq" FROM "gpu" '
        f'WHERE {where(cluster_filter, time_filter)} GROUP BY "cluster", "node", "uuid")'
    )


def _gpus_lost(filters: str) -> str:
    return (
        'SELECT count("code") AS "lost" FROM (SELECT last("code") AS "code" FROM "gpu_event" '
        f"WHERE {where(filters, equals('kind', 'gpu_lost'), '$timeFilter')} "
        'GROUP BY "cluster", "node", "uuid")'
    )


def _sum_over_gpus(select: str, filters: str, alias: str) -> str:
    """Per interval, a per-GPU aggregate summed over GPUs (e.g. fleet power from each GPU's mean)."""
    return (
        f'SELECT sum("v") AS {ident(alias)} FROM (SELECT {select} AS "v" FROM "gpu" '
        f'WHERE {where(filters, "$timeFilter")} GROUP BY time($__interval), {q.by_gpu()}) '
        "WHERE $timeFilter GROUP BY time($__interval)"
    )


def _sum_of_last_flag(field: str, filters: str, alias: str) -> str:
    """GPUs whose latest value of a 0/1 flag in range is 1 (0, not no row, when none is)."""
    return (
        f'SELECT sum("flag") AS {ident(alias)} FROM (SELECT last({ident(field)}) AS "flag" FROM "gpu" '
        f"WHERE {where(filters, '$timeFilter')} GROUP BY {q.by_gpu()})"
    )


def _new_errors(field: str, filters: str, alias: str, *, per_interval: bool) -> str:
    """Increase of an error counter summed over GPUs; a reset (driver reload) counts as no increase."""
    if per_interval:
        return (
            f'SELECT sum("d") AS {ident(alias)} FROM (SELECT non_negative_difference(max({ident(field)})) AS "d" '
            f'FROM "gpu" WHERE {where(filters, "$timeFilter")} GROUP BY time($__interval), {q.by_gpu()}) '
            "WHERE $timeFilter GROUP BY time($__interval)"
        )
    return (
        f'SELECT sum("d") AS {ident(alias)} FROM (SELECT non_negative_difference({ident(field)}) AS "d" '
        f'FROM "gpu" WHERE {where(filters, "$timeFilter")} GROUP BY {q.by_gpu()})'
    )


def _throttle_fields() -> list[Metric]:
    """Clock-event reasons worth watching: every bit_seconds field but the idle one."""
    return [m for m in all_metrics() if m.measurement == "gpu" and m.agg == "bit_seconds" and m.name != "throttle_idle_s"]


def _throttle_label(metric: Metric) -> str:
    return metric.name.removeprefix("throttle_").removesuffix("_s").replace("_", " ")


def _xid_code_mappings() -> list[dict[str, Any]]:
    options = {str(code): {"text": f"{code}: {meaning}", "index": i} for i, (code, meaning) in enumerate(XID_MEANING.items())}
    return [{"type": "value", "options": options}]


def _column_override(column: str, **properties: Any) -> dict[str, Any]:
    return {
        "matcher": {"id": "byName", "options": column},
        "properties": [{"id": key, "value": value} for key, value in properties.items()],
    }


# Collector counters that are levels or trouble, not throughput: shown as their latest value.
_COLLECTOR_WRITE_PATH = {
    "buffered_lines": "buffered",
    "dropped_lines": "dropped",
    "lines_refused": "refused",
    "write_retries": "retries",
    "unknown_fields": "unknown fields",
}


# --- Fleet -----------------------------------------------------------------------------------------


def fleet() -> g.Dashboard:
    c = match("cluster", "cluster")
    allocated = not_equals("tenant", UNALLOCATED)
    grid = Grid()

    grid.row("Now", w=3, h=4)
    grid.add(stat("GPUs", _gpus_counted(c, "$timeFilter"), "GPUs (by uuid) with at least one window in the time range."))
    grid.add(
        stat(
            "GPUs reporting",
            _gpus_counted(c, RECENT_FILTER),
            f"GPUs with a window in the last {q.RECENT} of the time range.",
        ),
    )
    grid.add(stat("GPUs lost", _gpus_lost(c), "GPUs with a gpu_lost event in the time range.", bad_from=1))
    grid.add(
        stat(
            "GPUs allocated",
            f'SELECT count(distinct("uuid")) AS "allocated" FROM "tenant_usage" WHERE {where(c, allocated, RECENT_FILTER)}',
            f"GPUs held by a tenant (not `{UNALLOCATED}`) in the last {q.RECENT} of the time range.",
        ),
    )
    grid.add(
        stat(
            "Idle allocated GPUs",
            'SELECT count("share") AS "idle" FROM (SELECT sum("busy_gpu_s") / sum("gpu_s") AS "share" '
            f'FROM "tenant_usage" WHERE {where(c, allocated, RECENT_FILTER)} GROUP BY {q.by_gpu()}) '
            f'WHERE "share" < {q.IDLE_BUSY_SHARE}',
            f"Allocated GPUs busy less than {q.IDLE_BUSY_SHARE:.0%} of the last {q.RECENT}: held, not used.",
            bad_from=1,
        ),
    )
    last_state = (
        'FROM (SELECT last("online") AS "online" FROM "node_state" '
        f'WHERE {where(c, UNTIL_TO)} GROUP BY "cluster", "node")'
    )
    grid.add(
        stat("Nodes online", f'SELECT sum("online") AS "online" {last_state}', "Nodes whose latest state is online."),
    )
    grid.add(
        stat(
            "Nodes offline",
            f'SELECT count("online") - sum("online") AS "offline" {last_state}',
            "Nodes whose latest state is offline (clean stop or MQTT last will).",
            bad_from=1,
        ),
    )
    grid.add(
        stat(
            "Fleet power now",
            f'SELECT sum("power_w") AS "power" FROM (SELECT mean("power_w") AS "power_w" FROM "gpu" '
            f"WHERE {where(c, RECENT_FILTER)} GROUP BY {q.by_gpu()})",
            f"Board power of all GPUs, each averaged over the last {q.RECENT}.",
            "watt",
        ),
    )

    grid.row("Power, energy and utilisation", w=12, h=8)
    grid.add(
        timeseries(
            "Fleet power",
            [
                (_sum_over_gpus('mean("power_w")', c, "power"), "power"),
                (_sum_over_gpus('last("power_limit_w")', c, "limit"), "power limit"),
            ],
            "Sum over GPUs of each GPU's mean board power per interval, and of their power limits.",
            "watt",
        ),
    )
    grid.add(
        timeseries(
            "Fleet energy per interval",
            [(f'SELECT sum("energy_j") / 3600000 AS "energy" FROM "gpu" WHERE {where(c, "$timeFilter")} '
              "GROUP BY time($__interval) fill(none)", "energy")],
            "Energy used by all GPUs per interval, from their total-energy counters.",
            "kwatth",
            bars=True,
        ),
        w=8,
        h=8,
    )
    grid.add(
        stat(
            "Fleet energy in range",
            f'SELECT sum("energy_j") / 3600000 AS "energy" FROM "gpu" WHERE {where(c, "$timeFilter")}',
            "Energy used by all GPUs over the time range.",
            "kwatth",
            decimals=1,
        ),
        w=4,
        h=8,
    )
    grid.add(
        _heatmap(
            "GPU utilisation",
            f'SELECT mean("util_gpu_pct") AS "util" FROM "gpu" WHERE {where(c, "$timeFilter")} '
            f"GROUP BY time($__interval), {q.by_gpu()} fill(none)",
            "How many GPUs ran kernels how much of the time: one cell per interval and 10 % band.",
            "percent",
        ),
    )
    grid.add(
        timeseries(
            "Allocation",
            [
                (f'SELECT count(distinct("uuid")) AS "allocated" FROM "tenant_usage" WHERE {where(c, allocated, "$timeFilter")} '
                 "GROUP BY time($__interval) fill(none)", "allocated"),
                (f'SELECT count(distinct("uuid")) AS "unallocated" FROM "tenant_usage" '
                 f'WHERE {where(c, equals("tenant", UNALLOCATED), "$timeFilter")} '
                 "GROUP BY time($__interval) fill(none)", "unallocated"),
            ],
            "GPUs held by a tenant and GPUs nobody holds, per interval.",
            "none",
            stack=True,
        ),
    )

    grid.row("Hot and throttled", w=8, h=9)
    grid.add(
        table(
            "Hottest GPUs",
            'SELECT top("temp", "cluster", "node", "gpu", 10) AS "temp_gpu_c" FROM (SELECT max("temp_gpu_c") AS "temp" '
            f'FROM "gpu" WHERE {where(c, "$timeFilter")} GROUP BY {q.by_gpu()})',
            "The ten GPUs with the highest core temperature in the time range. Click a row for the GPU's view.",
            sort_by="temp_gpu_c",
            links=node_link_from_fields(),
            overrides=[_column_override("temp_gpu_c", unit="celsius", displayName="max GPU temperature")],
        ),
    )
    throttle = ", ".join(
        f'sum({ident(m.name)}) / sum("window_s") AS {ident(_throttle_label(m))}' for m in _throttle_fields()
    )
    grid.add(
        timeseries(
            "Throttling share",
            [(f'SELECT {throttle} FROM "gpu" WHERE {where(c, "$timeFilter")} GROUP BY time($__interval) fill(none)', "$col")],
            "Share of GPU-time with clocks held back, by reason (clock-event reasons, idle excluded).",
            "percentunit",
        ),
        w=16,
        h=9,
    )

    grid.row("Collector", w=8, h=8)
    collector_fields = [m.name for m in all_metrics() if m.measurement == "collector"]
    flows = [n for n in collector_fields if not n.startswith("rejected_") and n not in _COLLECTOR_WRITE_PATH]
    counters = ", ".join(f"non_negative_derivative(max({ident(n)}), 1s) AS {ident(n)}" for n in flows)
    grid.add(
        timeseries(
            "Collector throughput",
            [(f'SELECT {counters} FROM "collector" WHERE $timeFilter GROUP BY time($__interval), "collector" fill(none)',
              "$tag_collector $col")],
            "Per second and collector: messages received and accepted, points made and written (catalogue counters).",
            "ops",
        ),
    )
    rejected = [n for n in collector_fields if n.startswith("rejected_")]
    grid.add(
        timeseries(
            "Messages rejected",
            [(
                "SELECT "
                + ", ".join(f'non_negative_derivative(max({ident(n)}), 1s) AS {ident(n.removeprefix("rejected_"))}' for n in rejected)
                + ' FROM "collector" WHERE $timeFilter GROUP BY time($__interval), "collector" fill(none)',
                "$tag_collector $col",
            )],
            "Messages dropped by the collector per second, by reason (the collector log names the sender).",
            "ops",
        ),
    )
    grid.add(
        table(
            "Collector write path",
            "SELECT "
            + ", ".join(f"last({ident(n)}) AS {ident(label)}" for n, label in _COLLECTOR_WRITE_PATH.items())
            + ' FROM "collector" WHERE $timeFilter GROUP BY "collector"',
            "Latest counters per collector: lines waiting, dropped on overflow, refused by InfluxDB; write retries.",
        ),
    )
    return _dashboard(
        "gpufleet / Fleet",
        FLEET_UID,
        "The whole fleet at a glance: GPUs and nodes, allocation, power, utilisation, heat, collector.",
        grid,
        [cluster_variable()],
    )


# --- Health ----------------------------------------------------------------------------------------


def health() -> g.Dashboard:
    cn = where(match("cluster", "cluster"), match("node", "node"))
    xid = equals("kind", "xid")
    grid = Grid()

    grid.row("In the time range", w=4, h=4)
    grid.add(
        stat(
            "XID events",
            f'SELECT count("code") AS "xid" FROM "gpu_event" WHERE {where(cn, xid, "$timeFilter")}',
            "All XID events reported by the driver.",
        ),
    )
    grid.add(
        stat(
            "Critical XIDs",
            f'SELECT count("code") AS "critical" FROM "gpu_event" WHERE {where(cn, xid, either("code", CRITICAL_XIDS), "$timeFilter")}',
            "XIDs that page: " + ", ".join(f"{c} ({XID_MEANING[c]})" for c in CRITICAL_XIDS) + ".",
            bad_from=1,
        ),
    )
    grid.add(stat("GPUs lost", _gpus_lost(cn), "GPUs with a gpu_lost event.", bad_from=1))
    grid.add(
        stat(
            "New uncorrected ECC errors",
            _new_errors("ecc_uncorrected_volatile", cn, "uncorrected", per_interval=False),
            "Increase of the volatile uncorrected ECC counters, summed over GPUs.",
            bad_from=1,
        ),
    )
    grid.add(
        stat(
            "GPUs with a pending remap",
            _sum_of_last_flag("remap_pending", cn, "pending"),
            "GPUs whose latest window says a row remap waits for a GPU reset.",
            bad_from=1,
        ),
    )
    grid.add(
        stat(
            "GPUs with a failed remap",
            _sum_of_last_flag("remap_failure", cn, "failed"),
            "GPUs whose latest window says a row remap failed: the GPU needs service.",
            bad_from=1,
        ),
    )

    grid.row("XID events", w=12, h=8)
    grid.add(
        timeseries(
            "XID events by node",
            [(f'SELECT count("code") AS "xid" FROM "gpu_event" WHERE {where(cn, xid, "$timeFilter")} '
              'GROUP BY time($__interval), "node" fill(none)', "$tag_node")],
            "XID events per interval and node. Click a bar for the node's view.",
            bars=True,
            stack=True,
            links=node_link_from_labels(),
        ),
    )
    grid.add(
        table(
            "XID events by code",
            f'SELECT "code", "detail" FROM "gpu_event" WHERE {where(cn, xid, "$timeFilter")}',
            "How often each XID code occurred in the time range.",
            sort_by="events",
            transformations=[
                {
                    "id": "groupBy",
                    "options": {
                        "fields": {
                            "code": {"aggregations": [], "operation": "groupby"},
                            "detail": {"aggregations": ["count"], "operation": "aggregate"},
                        }
                    },
                },
                {"id": "organize", "options": {"renameByName": {"detail (count)": "events"}}},
            ],
            overrides=[_column_override("code", mappings=_xid_code_mappings())],
        ),
    )
    grid.add(
        table(
            "GPU events",
            'SELECT "kind", "code", "detail", "cluster", "node", "gpu", "uuid" FROM "gpu_event" '
            f"WHERE {where(cn, '$timeFilter')} ORDER BY time DESC LIMIT 500",
            "The latest 500 events of every kind (xid, ecc_dbe, remap_failure, gpu_lost). Click a row for the GPU's view.",
            links=node_link_from_fields(),
            overrides=[_column_override("code", mappings=_xid_code_mappings())],
            show_time=True,
        ),
        w=24,
        h=8,
    )

    grid.row("ECC and row remapping", w=12, h=8)
    grid.add(
        timeseries(
            "New ECC errors",
            [
                (_new_errors("ecc_uncorrected_volatile", cn, "uncorrected", per_interval=True), "uncorrected"),
                (_new_errors("ecc_corrected_volatile", cn, "corrected", per_interval=True), "corrected"),
            ],
            "Increase of the volatile ECC counters per interval, summed over GPUs; uncorrected first.",
            bars=True,
        ),
    )
    grid.add(
        timeseries(
            "Row remapping",
            [
                (_sum_over_gpus('last("remap_pending")', cn, "pending"), "GPUs with a pending remap"),
                (_sum_over_gpus('last("remap_failure")', cn, "failed"), "GPUs with a failed remap"),
                (_sum_over_gpus('last("remap_uncorrectable")', cn, "rows"), "rows remapped (uncorrectable)"),
            ],
            "Pending and failed row remaps, and rows remapped for uncorrectable errors, over the fleet.",
        ),
    )
    ecc_columns = (
        ("ecc_uncorrected_volatile", "uncorrected (volatile)"),
        ("ecc_uncorrected_aggregate", "uncorrected (lifetime)"),
        ("ecc_corrected_volatile", "corrected (volatile)"),
        ("ecc_corrected_aggregate", "corrected (lifetime)"),
        ("remap_uncorrectable", "rows remapped (uncorrectable)"),
        ("remap_correctable", "rows remapped (correctable)"),
        ("remap_pending", "remap pending"),
        ("remap_failure", "remap failed"),
        ("retired_pages_dbe", "pages retired (DBE)"),
        ("retired_pages_pending", "retirement pending"),
    )
    grid.add(
        table(
            "ECC and remapping by GPU",
            "SELECT "
            + ", ".join(f"last({ident(field)}) AS {ident(label)}" for field, label in ecc_columns)
            + f' FROM "gpu" WHERE {where(cn, "$timeFilter")} GROUP BY {q.by_gpu()}',
            "Latest ECC, row-remap and page-retirement counters per GPU, worst first. Click a row for the GPU's view.",
            sort_by="uncorrected (volatile)",
            links=node_link_from_fields(),
        ),
        w=24,
        h=9,
    )

    grid.row("Throttling", w=12, h=8)
    for metric in _throttle_fields():
        grid.add(
            timeseries(
                f"Throttling by node: {_throttle_label(metric)}",
                [(f'SELECT sum({ident(metric.name)}) / sum("window_s") AS "share" FROM "gpu" '
                  f'WHERE {where(cn, "$timeFilter")} GROUP BY time($__interval), "node" fill(none)', "$tag_node")],
                f"{metric.description}, as a share of the node's GPU-time.",
                "percentunit",
                links=node_link_from_labels(),
            ),
            12,
            8,
        )

    grid.row("GPUs lost", w=24, h=6)
    grid.add(
        table(
            "Lost GPUs",
            'SELECT "code", "detail", "cluster", "node", "gpu", "uuid" FROM "gpu_event" '
            f"WHERE {where(cn, equals('kind', 'gpu_lost'), '$timeFilter')} ORDER BY time DESC",
            "GPUs the agent could no longer reach (fallen off the bus, driver lost it). Click a row for the GPU's view.",
            links=node_link_from_fields(),
            show_time=True,
        ),
    )
    grid.row("Delivery", w=24, h=6)
    grid.add(
        table(
            "Missing windows per node (sequence gaps)",
            'SELECT spread("seq") + 1 - count(distinct("seq")) AS "missing windows", count(distinct("seq")) AS "windows" '
            f'FROM "gpu" WHERE {where(cn, "$timeFilter")} GROUP BY "cluster", "node"',
            "Each node numbers its windows; a number that never arrived is a lost window (the agent resends until a "
            "collector confirms it stored, so a gap that stays means data loss). A node whose numbering restarted "
            "(its state directory was lost) shows a negative or large count.",
            sort_by="missing windows",
        ),
    )
    return _dashboard(
        "gpufleet / Health",
        HEALTH_UID,
        "What breaks GPUs: XID events, ECC and row remapping, throttling, lost GPUs. Rows link to the node view.",
        grid,
        [cluster_variable(), node_variable()],
    )


# --- Tenants ---------------------------------------------------------------------------------------


def tenants() -> g.Dashboard:
    ct = where(match("cluster", "cluster"), match("tenant", "tenant"))
    held = where(ct, not_equals("tenant", UNALLOCATED))
    gpu_cost = 'sum("gpu_s") / 3600 * $price_gpu_hour'
    energy_cost = 'sum("energy_j") / 3600000 * $price_kwh'
    grid = Grid()

    grid.row("Selected tenants", w=4, h=4)
    grid.add(
        stat(
            "GPUs held now",
            f'SELECT count(distinct("uuid")) AS "gpus" FROM "tenant_usage" WHERE {where(held, RECENT_FILTER)}',
            f"GPUs the selected tenants held in the last {q.RECENT} of the time range (a shared GPU counts once).",
        ),
    )
    grid.add(
        stat(
            "GPU-hours",
            f'SELECT sum("gpu_s") / 3600 AS "gpu_hours" FROM "tenant_usage" WHERE {where(held, "$timeFilter")}',
            "GPU-hours held in the time range.",
            decimals=1,
        ),
    )
    grid.add(
        stat(
            "Busy share",
            f'SELECT sum("busy_gpu_s") / sum("gpu_s") AS "busy" FROM "tenant_usage" WHERE {where(held, "$timeFilter")}',
            "Share of the held GPU-time in which a kernel ran.",
            "percentunit",
        ),
    )
    grid.add(
        stat(
            "Idle allocated GPU-hours",
            f'SELECT sum("idle_gpu_s") / 3600 AS "idle_gpu_hours" FROM "tenant_usage" WHERE {where(held, "$timeFilter")}',
            "GPU-hours held but idle: the waste.",
            decimals=1,
            bad_from=1,
        ),
    )
    grid.add(
        stat(
            "Energy",
            f'SELECT sum("energy_j") / 3600000 AS "energy" FROM "tenant_usage" WHERE {where(held, "$timeFilter")}',
            "Energy of the held GPUs, split between their holders (absent where GPUs have no energy counter).",
            "kwatth",
            decimals=1,
        ),
    )
    grid.add(
        stat(
            "GPU-time cost",
            f'SELECT {gpu_cost} AS "cost" FROM "tenant_usage" WHERE {where(held, "$timeFilter")}',
            "GPU-hours times $price_gpu_hour (a dashboard variable).",
            decimals=2,
        ),
    )

    grid.row("Over time", w=12, h=8)
    grid.add(
        timeseries(
            "GPUs held by tenant",
            [(f'SELECT sum("gpu_s") / ($__interval_ms / 1000) AS "gpus" FROM "tenant_usage" WHERE {where(ct, "$timeFilter")} '
              'GROUP BY time($__interval), "tenant" fill(0)', "$tag_tenant")],
            f"GPU-equivalents held per interval, stacked; `{UNALLOCATED}` is capacity nobody holds.",
            stack=True,
        ),
    )
    grid.add(
        timeseries(
            "Busy share by tenant",
            [(f'SELECT sum("busy_gpu_s") / sum("gpu_s") AS "busy" FROM "tenant_usage" WHERE {where(held, "$timeFilter")} '
              'GROUP BY time($__interval), "tenant" fill(none)', "$tag_tenant")],
            "Share of each tenant's GPU-time in which a kernel ran.",
            "percentunit",
            soft_max=1,
        ),
    )
    grid.add(
        timeseries(
            "Idle allocated GPU-hours by tenant",
            [(f'SELECT sum("idle_gpu_s") / 3600 AS "idle" FROM "tenant_usage" WHERE {where(held, "$timeFilter")} '
              'GROUP BY time($__interval), "tenant" fill(none)', "$tag_tenant")],
            "GPU-hours held but idle per interval: the waste, by tenant.",
            bars=True,
            stack=True,
        ),
    )
    grid.add(
        timeseries(
            "Energy by tenant",
            [(f'SELECT sum("energy_j") / 3600000 AS "energy" FROM "tenant_usage" WHERE {where(ct, "$timeFilter")} '
              'GROUP BY time($__interval), "tenant" fill(none)', "$tag_tenant")],
            "kWh per interval, by tenant.",
            "kwatth",
            bars=True,
            stack=True,
        ),
    )

    grid.row("Accounting", w=16, h=9)
    grid.add(
        table(
            "Usage and cost by tenant",
            'SELECT sum("gpu_s") / 3600 AS "GPU-hours", sum("busy_gpu_s") / sum("gpu_s") AS "busy share", '
            'sum("idle_gpu_s") / 3600 AS "idle GPU-hours", sum("energy_j") / 3600000 AS "kWh", '
            'max("peak_mem_bytes") AS "peak memory", '
            f'{gpu_cost} AS "GPU-time cost", {energy_cost} AS "energy cost" '
            f'FROM "tenant_usage" WHERE {where(ct, "$timeFilter")} GROUP BY "tenant"',
            "Per tenant over the time range. Cost = GPU-hours × $price_gpu_hour + kWh × $price_kwh.",
            sort_by="GPU-hours",
            transformations=[
                {
                    "id": "calculateField",
                    "options": {
                        "mode": "reduceRow",
                        "reduce": {"include": ["GPU-time cost", "energy cost"], "reducer": "sum"},
                        "alias": "total cost",
                    },
                }
            ],
            overrides=[
                _column_override("busy share", unit="percentunit"),
                _column_override("peak memory", unit="bytes"),
                _column_override("kWh", unit="kwatth", decimals=2),
                _column_override("GPU-hours", decimals=2),
                _column_override("idle GPU-hours", decimals=2),
                _column_override("GPU-time cost", decimals=2),
                _column_override("energy cost", decimals=2),
                _column_override("total cost", decimals=2),
            ],
        ),
    )
    grid.add(
        _bar_chart(
            "Top tenants by GPU-hours",
            'SELECT top("gpu_hours", "tenant", 10) AS "GPU-hours" FROM (SELECT sum("gpu_s") / 3600 AS "gpu_hours" '
            f'FROM "tenant_usage" WHERE {where(held, "$timeFilter")} GROUP BY "tenant")',
            "The ten tenants that held the most GPU-hours in the time range.",
            "none",
        ),
        w=8,
        h=9,
    )
    return _dashboard(
        "gpufleet / Tenants",
        TENANTS_UID,
        "Who holds the GPUs, how busy they keep them, what it costs. Prices are dashboard variables.",
        grid,
        [
            cluster_variable(),
            tenant_variable(),
            price_variable("price_gpu_hour", "Price per GPU-hour", "2.00"),
            price_variable("price_kwh", "Price per kWh", "0.20"),
        ],
    )


# --- Node / GPU ------------------------------------------------------------------------------------


def gpu_metrics() -> list[Metric]:
    """Every field of the `gpu` measurement in the catalogue, in table order."""
    return [m for m in all_metrics() if m.measurement == "gpu"]


def row_of(metric: Metric) -> str:
    return _ROW_OF_PREFIX.get(metric.name.split("_", 1)[0], OTHER_ROW)


def field_panel(metric: Metric) -> g.TimeSeries:
    return timeseries(
        metric.name,
        [(q.gpu_field_query(metric), "GPU $tag_gpu")],
        f"{metric.description}. Field `{metric.name}` ({metric.unit or 'text'}, {metric.agg}).",
        q.field_unit(metric),
    )


def node(metrics: Iterable[Metric] | None = None) -> g.Dashboard:
    """One node's GPUs; `metrics` defaults to the catalogue's `gpu` rows (a test passes others)."""
    metrics = gpu_metrics() if metrics is None else list(metrics)
    cn = where(match("cluster", "cluster"), match("node", "node"))
    cng = where(cn, match("gpu", "gpu"))
    grid = Grid()

    grid.row("Node", w=4, h=4)
    grid.add(
        stat(
            "Node state",
            f'SELECT last("online") AS "online" FROM "node_state" WHERE {where(cn, UNTIL_TO)}',
            "The node's latest state message (online, or offline by clean stop or MQTT last will).",
            mappings=[
                {"type": "value", "options": {"0": {"text": "offline", "color": "red"}, "1": {"text": "online", "color": "green"}}}
            ],
        ),
    )
    grid.add(
        stat(
            "GPUs reporting",
            _gpus_counted(cn, RECENT_FILTER),
            f"GPUs of this node with a window in the last {q.RECENT} of the time range.",
        ),
    )
    grid.add(
        stat(
            "Node GPU power",
            f'SELECT sum("power_w") AS "power" FROM (SELECT mean("power_w") AS "power_w" FROM "gpu" '
            f"WHERE {where(cng, RECENT_FILTER)} GROUP BY {q.by_gpu()})",
            f"Board power of the selected GPUs, each averaged over the last {q.RECENT}.",
            "watt",
        ),
    )
    grid.add(
        stat(
            "GPU events",
            f'SELECT count("code") AS "events" FROM "gpu_event" WHERE {where(cng, "$timeFilter")}',
            "Events of every kind on the selected GPUs in the time range.",
            bad_from=1,
        ),
    )
    grid.add(
        timeseries(
            "Tenants on this node",
            [(f'SELECT sum("gpu_s") / ($__interval_ms / 1000) AS "gpus" FROM "tenant_usage" WHERE {where(cng, "$timeFilter")} '
              'GROUP BY time($__interval), "tenant" fill(0)', "$tag_tenant")],
            "GPU-equivalents of the selected GPUs held per tenant.",
            stack=True,
        ),
        w=8,
        h=8,
    )
    grid.add(
        table(
            "GPUs",
            'SELECT last("mem_total_bytes") AS "memory", last("power_limit_w") AS "power limit", '
            'last("temp_slowdown_c") AS "slowdown at", last("seq") AS "last window" '
            f'FROM "gpu" WHERE {where(cng, "$timeFilter")} GROUP BY "gpu", "model", "uuid"',
            "The node's GPUs: model, uuid, memory, enforced power limit, slowdown temperature.",
            overrides=[
                _column_override("memory", unit="bytes"),
                _column_override("power limit", unit="watt"),
                _column_override("slowdown at", unit="celsius"),
            ],
        ),
        w=12,
        h=6,
    )
    grid.add(
        table(
            "Events",
            f'SELECT "kind", "code", "detail", "gpu", "uuid" FROM "gpu_event" WHERE {where(cng, "$timeFilter")} '
            "ORDER BY time DESC LIMIT 200",
            "The latest 200 events on the selected GPUs.",
            overrides=[_column_override("code", mappings=_xid_code_mappings())],
            show_time=True,
        ),
        w=12,
        h=6,
    )

    rows: dict[str, list[Metric]] = {}
    for metric in metrics:
        rows.setdefault(row_of(metric), []).append(metric)
    for title, members in rows.items():
        grid.row(title, w=8, h=7)
        for metric in members:
            grid.add(field_panel(metric))
    return _dashboard(
        "gpufleet / Node / GPU",
        NODE_UID,
        "Every counter of one node's GPUs, one panel per field of the metric catalogue.",
        grid,
        [cluster_variable(), node_variable(multi=False), gpu_variable()],
    )


def all_dashboards() -> list[g.Dashboard]:
    return [fleet(), health(), tenants(), node()]


# --- walking a dashboard's JSON (for tests and the preview) ----------------------------------------


def iter_panels(dashboard_json: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel that is not a row, collapsed rows' panels included."""
    for panel in dashboard_json.get("panels", []):
        if panel.get("type") == "row":
            yield from panel.get("panels", [])
        else:
            yield panel
