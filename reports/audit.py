"""Re-run tenant rules over what was billed: the workload identities stored with every
`tenant_usage` point are matched against the rules as they are now, and every workload the
current rules would bill to another tenant is listed with the GPU-hours concerned.

The question behind it: "we changed the rules (or found a wrong one) -- what would move, from
whom to whom?". It changes nothing; InfluxDB keeps the bills as they were written.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from gpufleet.collector.tenants import TenantRules

from .query import InfluxQL, time_range


@dataclass(frozen=True, slots=True)
class Move:
    workload: str
    billed_to: str  # the tenant tag stored
    rules_say: str  # the tenant the current rules give
    gpu_hours: float  # of the points that billed it (shared evenly when a point holds several workloads)


def rebill(rows: Iterable[Mapping[str, Any]], rules: TenantRules) -> list[Move]:
    """Pure: rows with tenant, node, uuid, gpu_s and workloads (JSON) -> the workloads that move."""
    moved: dict[tuple[str, str, str], float] = defaultdict(float)
    for row in rows:
        workloads = json.loads(row.get("workloads") or "{}")
        for key, identity in workloads.items():
            now = rules.tenant_for(identity, row.get("uuid") or "", row["node"])
            if now != row["tenant"]:
                moved[(key, row["tenant"], now)] += (row.get("gpu_s") or 0.0) / len(workloads) / 3600
    return sorted((Move(k, old, new, hours) for (k, old, new), hours in moved.items()), key=lambda m: -m.gpu_hours)


def audit(db: InfluxQL, rules: TenantRules, start_ns: int, end_ns: int) -> tuple[int, list[Move]]:
    """(points read, moves) for the tenant_usage points of [start, end)."""
    rows = db.rows(f'SELECT "gpu_s", "uuid", "workloads" FROM "tenant_usage" WHERE {time_range(start_ns, end_ns)} GROUP BY "tenant", "node"')
    return len(rows), rebill(rows, rules)
