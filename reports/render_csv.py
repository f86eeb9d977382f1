"""CSV: a tenant's daily figures, and the fleet chargeback (one row per tenant, the total, the
fleet meter and, as its last line, whether they reconcile). Pure: reports in, str out.

Numbers are written with a fixed number of decimals (hours 6, money 4, kWh 6) so that a
spreadsheet sum of the column matches the total row to the last digit shown, give or take the
rounding of each row."""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence

from .model import INCIDENT_KINDS, Chargeback, Figures, TenantReport


def _n(value: float | None, decimals: int) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return f"{value:.{decimals}f}"


def _rows_to_text(rows: Sequence[Sequence[str]]) -> str:
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerows(rows)
    return out.getvalue()


def render_tenant(report: TenantReport) -> str:
    """date,gpu_hours,busy_gpu_hours,idle_gpu_hours,energy_kwh,cost per UTC day, then `total`."""
    cur = report.prices.currency
    rows = [["date", "gpu_hours", "busy_gpu_hours", "idle_gpu_hours", "energy_kwh", f"cost_{cur}"]]
    for d in report.days:
        rows.append([d.date, _n(d.gpu_hours, 6), _n(d.busy_gpu_hours, 6), _n(d.idle_gpu_hours, 6), _n(d.energy_kwh, 6), _n(d.cost, 4)])
    f = report.figures
    rows.append(["total", _n(f.gpu_hours, 6), _n(f.busy_gpu_hours, 6), _n(f.idle_gpu_hours, 6), _n(f.energy_kwh, 6), _n(f.cost.total, 4)])
    return _rows_to_text(rows)


def chargeback_header(cb: Chargeback) -> list[str]:
    cur = cb.prices.currency
    return [
        "tenant", "gpu_hours", "busy_gpu_hours", "idle_gpu_hours", "efficiency", "energy_kwh",
        f"cost_gpu_{cur}", f"cost_energy_{cur}", f"cost_{cur}",
        *(f"reference_cost_{ref.name}_{ref.currency}" for ref in cb.references),
        "throttle_thermal_hours", "throttle_power_hours", "throttle_hw_slowdown_hours",
        "faulted_gpu_hours", "availability", "incidents", *INCIDENT_KINDS, "peak_mem_bytes",
    ]


def _figure_cells(name: str, f: Figures, cb: Chargeback, incidents: int | None) -> list[str]:
    return [
        name, _n(f.gpu_hours, 6), _n(f.busy_gpu_hours, 6), _n(f.idle_gpu_hours, 6), _n(f.efficiency, 6), _n(f.energy_kwh, 6),
        _n(f.cost.gpu, 4), _n(f.cost.energy, 4), _n(f.cost.total, 4),
        *(_n(f.reference_costs[ref.name].total, 4) for ref in cb.references),
        _n(f.throttle_thermal_hours, 6), _n(f.throttle_power_hours, 6), _n(f.throttle_hw_slowdown_hours, 6),
        _n(f.faulted_gpu_hours, 6), _n(f.availability, 6), "" if incidents is None else str(incidents),
        *(str(f.incidents[kind]) if kind in f.incidents else "" for kind in INCIDENT_KINDS),
        "" if f.peak_mem_bytes is None else str(f.peak_mem_bytes),
    ]


def reconciliation_line(cb: Chargeback) -> list[str]:
    if cb.reconciled:
        detail = "; ".join(f"{c.figure} = {c.fleet:.6f} ({c.how})" if c.fleet is not None else f"{c.figure}: none" for c in cb.checks)
        return ["reconciliation", "OK", f"tenant rows (with unallocated) add up to the fleet meter: {detail}"]
    bad = "; ".join(f"{c.figure}: tenants {c.tenants} != fleet {c.fleet} ({c.how})" for c in cb.checks if not c.ok)
    return ["reconciliation", "MISMATCH", bad]


def render_chargeback(cb: Chargeback) -> str:
    """One row per tenant, `fleet total` (the rows summed; incidents as distinct events), `fleet
    meter` (gpu, gpu_event and all of tenant_usage, read without any tenant split), and last the
    `reconciliation` line: OK when every figure of the two agrees, else MISMATCH and which."""
    rows = [chargeback_header(cb)]
    for report in cb.tenants:
        rows.append(_figure_cells(report.tenant, report.figures, cb, report.figures.incident_count))
    rows.append(_figure_cells("fleet total", cb.total, cb, cb.total.incident_count))
    rows.append(_figure_cells("fleet meter", cb.meter, cb, cb.meter.incidents.get("all")))
    rows.append(reconciliation_line(cb))
    return _rows_to_text(rows)
