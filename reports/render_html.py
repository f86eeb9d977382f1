"""A tenant's report as one self-contained HTML file: inline CSS, inline SVG charts, no script,
no external resource, so it opens offline, travels as one mail attachment and prints as the PDF.
Pure: a TenantReport in, a str out. Everything shown comes from that one tenant's report."""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import UTC, datetime
from html import escape

from . import charts
from .model import INCIDENT_KINDS, PriceList, TenantReport

MAX_INCIDENT_ROWS = 200
MAX_WORKLOAD_ROWS = 500

_CSS = """
body { font-family: "DejaVu Sans", Helvetica, Arial, sans-serif; color: #222; margin: 24px auto; max-width: 1000px; }
h1 { font-size: 22px; margin-bottom: 2px; } h2 { font-size: 17px; margin-top: 28px; border-bottom: 1px solid #ccc; }
.sub { color: #666; font-size: 13px; }
.tiles { display: grid; grid-template-columns: repeat(4, 1fr); gap: 10px; margin-top: 14px; }
.tile { border: 1px solid #ddd; border-radius: 6px; padding: 8px 10px; }
.tile .v { font-size: 20px; font-weight: bold; } .tile .k { font-size: 12px; color: #666; }
table { border-collapse: collapse; width: 100%; font-size: 13px; margin-top: 8px; }
th, td { border-bottom: 1px solid #e5e5e5; padding: 4px 6px; text-align: left; vertical-align: top; }
td.n, th.n { text-align: right; font-variant-numeric: tabular-nums; }
.note { font-size: 12px; color: #666; } .example { color: #a0522d; font-weight: bold; }
code { font-size: 12px; }
@media print { body { margin: 0; max-width: none; } h2, h3 { break-after: avoid; } svg, table, .tiles { break-inside: avoid; } }
@page { size: A4; margin: 14mm; }
"""


def fmt_time(time_ns: int) -> str:
    return datetime.fromtimestamp(time_ns / 1e9, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def fmt_hours(value: float | None) -> str:
    return "–" if value is None else f"{value:,.2f}"


def fmt_money(value: float | None, currency: str) -> str:
    return "–" if value is None else f"{value:,.2f} {escape(currency)}"


def fmt_pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f} %"


def fmt_bytes(value: int | None) -> str:
    if value is None:
        return "–"
    for unit, size in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if value >= size:
            return f"{value / size:,.1f} {unit}"
    return f"{value} B"


def _tile(key: str, value: str) -> str:
    return f'<div class="tile"><div class="v">{value}</div><div class="k">{escape(key)}</div></div>'


def _table(head: Iterable[tuple[str, bool]], rows: Iterable[Iterable[str]]) -> str:
    """head: (title, numeric); cells are already-escaped HTML."""
    head = list(head)
    out = ["<table><thead><tr>", *(f'<th{" class=n" if num else ""}>{escape(t)}</th>' for t, num in head), "</tr></thead><tbody>"]
    for row in rows:
        out.append("<tr>" + "".join(f'<td{" class=n" if num else ""}>{cell}</td>' for cell, (_, num) in zip(row, head)) + "</tr>")
    out.append("</tbody></table>")
    return "".join(out)


def _price_label(prices: PriceList) -> str:
    cls = ' class="example"' if "EXAMPLE" in prices.label.upper() else ""
    return f"<span{cls}>{escape(prices.label)}</span>"


def render(report: TenantReport) -> str:
    f = report.figures
    cur = report.prices.currency
    scope = f"cluster {escape(report.cluster)}" if report.cluster else "all clusters"
    parts = [
        "<!DOCTYPE html><html lang=en><head><meta charset=utf-8>",
        f"<title>GPU usage: {escape(report.tenant)}</title><style>{_CSS}</style></head><body>",
        f"<h1>GPU usage report: {escape(report.tenant)}</h1>",
        f'<div class="sub">{fmt_time(report.start_ns)} to {fmt_time(report.end_ns)} · {scope}</div>',
        '<div class="tiles">',
        _tile("GPU-hours allocated", fmt_hours(f.gpu_hours)),
        _tile("GPU-hours busy", fmt_hours(f.busy_gpu_hours)),
        _tile("efficiency (busy / allocated)", fmt_pct(f.efficiency)),
        _tile("idle allocated GPU-hours (waste)", fmt_hours(f.idle_gpu_hours)),
        _tile("energy", "–" if f.energy_kwh is None else f"{f.energy_kwh:,.2f} kWh"),
        _tile("cost", fmt_money(f.cost.total, cur)),
        _tile("peak memory (one GPU)", fmt_bytes(f.peak_mem_bytes)),
        _tile("availability (fault-free share)", fmt_pct(f.availability)),
        "</div>",
        "<h2>Daily use</h2>",
        _daily_charts(report),
        "<h2>Cost</h2>",
        _cost_section(report),
        "<h2>Stability</h2>",
        _stability_section(report),
        "<h2>Workloads</h2>",
        _workloads_section(report),
        "<h2>How these figures are made</h2>",
        _method_notes(report),
        "</body></html>",
    ]
    return "\n".join(parts)


def _daily_charts(report: TenantReport) -> str:
    labels = [day.date for day in report.days]
    use = charts.stacked_bars(
        "GPU-hours per day (UTC)", "GPU-hours", labels,
        [
            ("busy", charts.BUSY_COLOUR, [d.busy_gpu_hours for d in report.days]),
            ("idle (allocated, unused)", charts.IDLE_COLOUR, [d.idle_gpu_hours for d in report.days]),
        ],
        chart_id="chart-gpu-hours",
    )
    energy = charts.stacked_bars(
        "Energy per day (UTC)", "kWh", labels,
        [("energy", charts.ENERGY_COLOUR, [d.energy_kwh or 0.0 for d in report.days])],
        chart_id="chart-energy",
    )
    return use + energy


def _cost_section(report: TenantReport) -> str:
    f, cur = report.figures, report.prices.currency
    rows = [
        [escape(m.model), fmt_hours(m.gpu_hours), fmt_hours(m.busy_gpu_hours),
         "–" if m.price_per_gpu_hour is None else fmt_money(m.price_per_gpu_hour, cur),
         "not priced" if m.cost is None else fmt_money(m.cost, cur)]
        for m in report.models
    ]
    energy_kwh = f.energy_kwh or 0.0
    rows.append(["energy", "", "", f"{fmt_money(report.prices.per_kwh, cur)} / kWh × {energy_kwh:,.2f} kWh", fmt_money(f.cost.energy, cur)])
    rows.append(["<b>total</b>", f"<b>{fmt_hours(f.gpu_hours)}</b>", "", "", f"<b>{fmt_money(f.cost.total, cur)}</b>"])
    out = [
        f'<div class="note">Prices: {_price_label(report.prices)}</div>',
        _table([("GPU model", False), ("GPU-hours", True), ("busy", True), ("price / GPU-hour", True), ("cost", True)], rows),
    ]
    if f.cost.unpriced_gpu_hours:
        out.append(f'<div class="note">{fmt_hours(f.cost.unpriced_gpu_hours)} GPU-hours are of models without a price.</div>')
    if report.references:
        ref_rows = []
        for ref in report.references:
            cost = f.reference_costs[ref.name]
            ref_rows.append([
                _price_label(ref), fmt_money(cost.total, ref.currency),
                fmt_hours(cost.unpriced_gpu_hours) if cost.unpriced_gpu_hours else "0",
            ])
        out.append("<h3>The same GPU-hours at reference prices</h3>")
        out.append(_table([("reference", False), ("cost there", True), ("GPU-hours without a reference price", True)], ref_rows))
    return "".join(out)


def _stability_section(report: TenantReport) -> str:
    f = report.figures
    counts = [[escape(kind), str(f.incidents.get(kind, 0))] for kind in INCIDENT_KINDS]
    summary = _table(
        [("", False), ("value", True)],
        [
            *counts,
            ["throttled for temperature (GPU-hours)", fmt_hours(f.throttle_thermal_hours)],
            ["held at the power cap (GPU-hours)", fmt_hours(f.throttle_power_hours)],
            ["hardware slowdown (GPU-hours)", fmt_hours(f.throttle_hw_slowdown_hours)],
            ["allocated GPU-hours in windows with an incident", fmt_hours(f.faulted_gpu_hours)],
            ["availability: share of allocated GPU-hours free of incidents", fmt_pct(f.availability)],
        ],
    )
    if not report.incidents:
        return summary + '<p class="note">No XID, ECC, row-remap or lost-GPU event on the GPUs while you held them.</p>'
    shown = report.incidents[:MAX_INCIDENT_ROWS]
    table = _table(
        [("time", False), ("node", False), ("GPU", False), ("kind", False), ("code", True), ("detail", False)],
        ([fmt_time(i.time_ns), escape(i.node), escape(i.gpu), escape(i.kind), "" if i.code is None else str(i.code), escape(i.detail)] for i in shown),
    )
    more = len(report.incidents) - len(shown)
    tail = f'<p class="note">… and {more} more (see the JSON report).</p>' if more > 0 else ""
    return summary + "<h3>Incidents on your GPUs</h3>" + table + tail


def _identity(identity: dict) -> str:
    return escape(", ".join(f"{k}={json.dumps(v) if not isinstance(v, str) else v}" for k, v in sorted(identity.items())))


def _workloads_section(report: TenantReport) -> str:
    if not report.workloads:
        return '<p class="note">No workload was seen (the GPUs were allocated but ran nothing, or the agent could not name the processes).</p>'
    shown = report.workloads[:MAX_WORKLOAD_ROWS]
    table = _table(
        [("workload", False), ("identity", False), ("first hour", False), ("last hour", False), ("hours seen", True)],
        ([f"<code>{escape(w.key)}</code>", _identity(dict(w.identity)), fmt_time(w.first_hour_ns)[:13] + "h",
          fmt_time(w.last_hour_ns)[:13] + "h", str(w.hours)] for w in shown),
    )
    more = len(report.workloads) - len(shown)
    return table + (f'<p class="note">… and {more} more (see the JSON report).</p>' if more > 0 else "")


def _method_notes(report: TenantReport) -> str:
    return (
        '<ul class="note">'
        "<li>Allocated GPU-hours: time your workloads held a GPU (or it was allocated to you), split between "
        "co-located workloads by their SM or memory use. Busy: the part of it the GPU was running kernels.</li>"
        "<li>Energy: the GPU's own energy counter, split like the time. GPUs without a counter add none.</li>"
        "<li>Throttling hours: each GPU's throttled seconds in an hour, split by your share of that GPU in that hour.</li>"
        "<li>Incidents: XID, double-bit ECC, row-remap failures and lost GPUs in a window you held; availability "
        "counts the allocated hours of those windows as lost.</li>"
        f"<li>Days are UTC. Source: {escape(report.sources or 'InfluxDB')}.</li>"
        "</ul>"
    )

