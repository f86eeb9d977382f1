"""Grafana alert rules for what an SRE is paged for, as alerting file provisioning (apiVersion 1).

Each rule is one InfluxQL query (refId A) against the data source uid, grouped by GPU or node so
every GPU or node is its own alert instance with its own labels, then Grafana server-side
expressions: B reduces each series to one number, C compares it with the threshold.
Grafana's alerting fills `$timeFilter` from the query's relativeTimeRange; the dashboards'
variables do not exist here.

Events are points only when something happened, so for the event rules "no data" means healthy
(noDataState OK).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .panels import CRITICAL_XIDS, FLEET_UID, HEALTH_UID, XID_MEANING
from .queries import DATASOURCE_UID, by_gpu, either, equals, where

FOLDER = "gpufleet"
GROUP_INTERVAL = "1m"
EXPRESSION_UID = "__expr__"  # Grafana's server-side expressions


@dataclass(frozen=True, slots=True)
class Rule:
    uid: str
    title: str
    query: str  # InfluxQL with $timeFilter, one series per alert instance
    reducer: str  # last | max | sum | ... (Grafana reduce expression)
    comparison: str  # gt | lt
    threshold: float
    range_s: int  # how far back $timeFilter reaches
    for_: str  # how long the condition must hold before the alert fires
    summary: str
    description: str
    panel: tuple[str, str]  # (dashboard uid, panel title) the alert links to
    no_data: str = "OK"


_GPU_LABELS = "{{ $labels.cluster }}/{{ $labels.node }} GPU {{ $labels.gpu }}"
_NODE_LABELS = "{{ $labels.cluster }}/{{ $labels.node }}"
_BY_GPU = by_gpu()


def rules() -> list[Rule]:
    critical = ", ".join(f"{code} ({XID_MEANING[code]})" for code in CRITICAL_XIDS)
    return [
        Rule(
            uid="gpufleet-ecc-uncorrected",
            title="Uncorrectable ECC errors increased",
            query=(
                'SELECT sum("d") AS "new_errors" FROM (SELECT non_negative_difference("ecc_uncorrected_volatile") AS "d" '
                f'FROM "gpu" WHERE $timeFilter GROUP BY {_BY_GPU}) GROUP BY {_BY_GPU}'
            ),
            reducer="last",
            comparison="gt",
            threshold=0,
            range_s=600,
            for_="0s",
            summary=f"{_GPU_LABELS}: uncorrectable ECC errors increased",
            description=(
                "The GPU's volatile uncorrected ECC counter went up in the last 10 minutes. Drain the node; "
                "the GPU may need a reset (row remap) or replacement."
            ),
            panel=(HEALTH_UID, "New uncorrected ECC errors"),
        ),
        Rule(
            uid="gpufleet-xid-critical",
            title="Critical XID event",
            query=(
                'SELECT count("code") AS "events" FROM "gpu_event" '
                f'WHERE {where(equals("kind", "xid"), either("code", CRITICAL_XIDS), "$timeFilter")} GROUP BY {_BY_GPU}'
            ),
            reducer="last",
            comparison="gt",
            threshold=0,
            range_s=600,
            for_="0s",
            summary=f"{_GPU_LABELS}: critical XID",
            description=f"The driver reported an XID that needs attention in the last 10 minutes: {critical}.",
            panel=(HEALTH_UID, "Critical XIDs"),
        ),
        Rule(
            uid="gpufleet-remap-failure",
            title="Row remap failed",
            query=f'SELECT last("remap_failure") AS "remap_failure" FROM "gpu" WHERE $timeFilter GROUP BY {_BY_GPU}',
            reducer="last",
            comparison="gt",
            threshold=0,
            range_s=600,
            for_="0s",
            summary=f"{_GPU_LABELS}: row remap failed",
            description="The GPU could not remap a memory row after uncorrectable errors; it needs service.",
            panel=(HEALTH_UID, "GPUs with a failed remap"),
        ),
        Rule(
            uid="gpufleet-gpu-lost",
            title="GPU lost",
            query=(
                'SELECT count("code") AS "events" FROM "gpu_event" '
                f'WHERE {where(equals("kind", "gpu_lost"), "$timeFilter")} GROUP BY {_BY_GPU}'
            ),
            reducer="last",
            comparison="gt",
            threshold=0,
            range_s=900,
            for_="0s",
            summary=f"{_GPU_LABELS}: GPU lost",
            description="The agent can no longer reach the GPU (fallen off the bus, or the driver lost it).",
            panel=(HEALTH_UID, "GPUs lost"),
        ),
        Rule(
            uid="gpufleet-node-offline",
            title="Node offline",
            # No time bound: the latest state may be weeks old. A retired node's series must be
            # dropped (DROP SERIES FROM "node_state" WHERE "node" = '...') or it stays offline.
            query='SELECT last("online") AS "online" FROM "node_state" GROUP BY "cluster", "node"',
            reducer="last",
            comparison="lt",
            threshold=1,
            range_s=600,
            for_="5m",
            summary=f"{_NODE_LABELS}: agent offline",
            description="The node's agent stopped or its MQTT last will fired; its GPUs are not monitored.",
            panel=(FLEET_UID, "Nodes offline"),
        ),
        Rule(
            uid="gpufleet-thermal-throttling",
            title="Sustained thermal throttling",
            query=(
                'SELECT sum("throttle_thermal_s") / sum("window_s") AS "thermal_share" FROM "gpu" '
                f"WHERE $timeFilter GROUP BY {_BY_GPU}"
            ),
            reducer="last",
            comparison="gt",
            threshold=0.5,
            range_s=900,
            for_="10m",
            summary=f"{_GPU_LABELS}: thermally throttled",
            description=(
                "The GPU's clocks were slowed for temperature more than half of the last 15 minutes, for 10 minutes: "
                "check cooling (airflow, fans, inlet temperature)."
            ),
            panel=(HEALTH_UID, "Throttling by node: thermal"),
        ),
    ]


def _rule_json(rule: Rule, panel_ids: Mapping[tuple[str, str], int]) -> dict[str, Any]:
    dashboard_uid, _ = rule.panel
    return {
        "uid": rule.uid,
        "title": rule.title,
        "condition": "C",
        "data": [
            {
                "refId": "A",
                "relativeTimeRange": {"from": rule.range_s, "to": 0},
                "datasourceUid": DATASOURCE_UID,
                "model": {
                    "refId": "A",
                    "query": rule.query,
                    "rawQuery": True,
                    "resultFormat": "time_series",
                    "intervalMs": 60000,
                    "maxDataPoints": 43200,
                },
            },
            {
                "refId": "B",
                "relativeTimeRange": {"from": 0, "to": 0},
                "datasourceUid": EXPRESSION_UID,
                "model": {
                    "refId": "B",
                    "type": "reduce",
                    "expression": "A",
                    "reducer": rule.reducer,
                    "settings": {"mode": "dropNN"},
                },
            },
            {
                "refId": "C",
                "relativeTimeRange": {"from": 0, "to": 0},
                "datasourceUid": EXPRESSION_UID,
                "model": {
                    "refId": "C",
                    "type": "threshold",
                    "expression": "B",
                    "conditions": [{"evaluator": {"type": rule.comparison, "params": [rule.threshold]}}],
                },
            },
        ],
        "noDataState": rule.no_data,
        "execErrState": "Error",
        "for": rule.for_,
        "annotations": {"summary": rule.summary, "description": rule.description},
        # Grafana links the alert to this panel and shows the alert's state on it.
        "dashboardUid": dashboard_uid,
        "panelId": panel_ids[rule.panel],
        "labels": {"severity": "page", "source": "gpufleet"},
        "isPaused": False,
    }


def provisioning(panel_ids: Mapping[tuple[str, str], int], org_id: int = 1) -> dict[str, Any]:
    """The alerting provisioning document (Grafana 9.1+ file format).

    `panel_ids` maps (dashboard uid, panel title) to the panel's id in the generated dashboards.
    """
    return {
        "apiVersion": 1,
        "groups": [
            {
                "orgId": org_id,
                "name": "gpufleet-paging",
                "folder": FOLDER,
                "interval": GROUP_INTERVAL,
                "rules": [_rule_json(rule, panel_ids) for rule in rules()],
            }
        ],
    }
