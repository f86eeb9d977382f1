"""A tenant's report as JSON: every figure and list of the HTML report, as plain numbers.
Pure: a TenantReport in, a str out. Keys are sorted, so the same report gives the same bytes."""

from __future__ import annotations

import json
from typing import Any

from .model import Figures, PriceList, TenantReport

FORMAT_VERSION = 1


def figures_dict(f: Figures) -> dict[str, Any]:
    return {
        "gpu_hours": f.gpu_hours,
        "busy_gpu_hours": f.busy_gpu_hours,
        "idle_gpu_hours": f.idle_gpu_hours,
        "efficiency": f.efficiency,
        "energy_kwh": f.energy_kwh,
        "peak_mem_bytes": f.peak_mem_bytes,
        "throttle_thermal_hours": f.throttle_thermal_hours,
        "throttle_power_hours": f.throttle_power_hours,
        "throttle_hw_slowdown_hours": f.throttle_hw_slowdown_hours,
        "faulted_gpu_hours": f.faulted_gpu_hours,
        "availability": f.availability,
        "incidents": dict(f.incidents),
        "cost": {"gpu": f.cost.gpu, "energy": f.cost.energy, "total": f.cost.total, "unpriced_gpu_hours": f.cost.unpriced_gpu_hours},
        "reference_costs": {
            name: {"gpu": c.gpu, "energy": c.energy, "total": c.total, "unpriced_gpu_hours": c.unpriced_gpu_hours}
            for name, c in f.reference_costs.items()
        },
    }


def _prices(p: PriceList) -> dict[str, Any]:
    return {
        "name": p.name, "label": p.label, "currency": p.currency, "per_kwh": p.per_kwh,
        "per_gpu_hour": [list(item) for item in p.per_gpu_hour], "default_per_gpu_hour": p.default_per_gpu_hour,
    }


def report_dict(report: TenantReport) -> dict[str, Any]:
    return {
        "format_version": FORMAT_VERSION,
        "tenant": report.tenant,
        "from_ns": report.start_ns,
        "to_ns": report.end_ns,
        "cluster": report.cluster,
        "figures": figures_dict(report.figures),
        "models": [
            {"model": m.model, "gpu_hours": m.gpu_hours, "busy_gpu_hours": m.busy_gpu_hours, "energy_kwh": m.energy_kwh,
             "price_per_gpu_hour": m.price_per_gpu_hour, "cost": m.cost, "reference_price_per_gpu_hour": dict(m.reference)}
            for m in report.models
        ],
        "days": [
            {"date": d.date, "gpu_hours": d.gpu_hours, "busy_gpu_hours": d.busy_gpu_hours, "idle_gpu_hours": d.idle_gpu_hours,
             "energy_kwh": d.energy_kwh, "cost": d.cost}
            for d in report.days
        ],
        "workloads": [
            {"key": w.key, "identity": dict(w.identity), "first_hour_ns": w.first_hour_ns, "last_hour_ns": w.last_hour_ns, "hours": w.hours}
            for w in report.workloads
        ],
        "incidents": [
            {"time_ns": i.time_ns, "cluster": i.cluster, "node": i.node, "gpu": i.gpu, "kind": i.kind, "code": i.code, "detail": i.detail}
            for i in report.incidents
        ],
        "prices": _prices(report.prices),
        "references": [_prices(ref) for ref in report.references],
        "sources": report.sources,
    }


def render(report: TenantReport) -> str:
    return json.dumps(report_dict(report), indent=2, sort_keys=True, ensure_ascii=False) + "\n"
