"""What a tenant's report shows, before it is HTML or PDF: a list of blocks (headings, tiles,
charts, tables, notes) made from one TenantReport. render_html and render_pdf each only lay these
out, so the two formats can not show different things. Pure: a TenantReport in, a Document out;
every text is plain (each renderer escapes it its own way)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

from . import charts
from .model import INCIDENT_KINDS, PriceList, TenantReport

MAX_INCIDENT_ROWS = 200
MAX_WORKLOAD_ROWS = 500
LANGUAGE = "en"


@dataclass(frozen=True, slots=True)
class Span:
    """Text set apart from the plain text around it."""

    text: str
    style: Literal["bold", "code", "example"]  # example: a price list marked as an example


Inline = str | Span
Cell = str | Span  # a table cell holds one piece: most are plain numbers


@dataclass(frozen=True, slots=True)
class Heading:
    text: str
    level: Literal[1, 2, 3]


@dataclass(frozen=True, slots=True)
class Subtitle:
    text: str


@dataclass(frozen=True, slots=True)
class Tiles:
    tiles: tuple[tuple[str, str], ...]  # (value, what it is), four to a row


@dataclass(frozen=True, slots=True)
class Figure:
    chart: charts.Chart


@dataclass(frozen=True, slots=True)
class Column:
    title: str
    numeric: bool  # right-aligned


@dataclass(frozen=True, slots=True)
class Table:
    columns: tuple[Column, ...]
    rows: Sequence[Sequence[Cell]]


@dataclass(frozen=True, slots=True)
class Note:
    pieces: tuple[Inline, ...]
    paragraph: bool = False  # a paragraph of its own (spaced), not a line under the block above


@dataclass(frozen=True, slots=True)
class Bullets:
    items: tuple[str, ...]


Block = Heading | Subtitle | Tiles | Figure | Table | Note | Bullets


@dataclass(frozen=True, slots=True)
class Document:
    title: str
    blocks: tuple[Block, ...]
    language: str = LANGUAGE


def fmt_time(time_ns: int) -> str:
    return datetime.fromtimestamp(time_ns / 1e9, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def fmt_hours(value: float | None) -> str:
    return "–" if value is None else f"{value:,.2f}"


def fmt_money(value: float | None, currency: str) -> str:
    return "–" if value is None else f"{value:,.2f} {currency}"


def fmt_pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f} %"


def fmt_bytes(value: int | None) -> str:
    if value is None:
        return "–"
    for unit, size in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if value >= size:
            return f"{value / size:,.1f} {unit}"
    return f"{value} B"


def build(report: TenantReport) -> Document:
    f = report.figures
    cur = report.prices.currency
    scope = f"cluster {report.cluster}" if report.cluster else "all clusters"
    blocks: list[Block] = [
        Heading(f"GPU usage report: {report.tenant}", 1),
        Subtitle(f"{fmt_time(report.start_ns)} to {fmt_time(report.end_ns)} · {scope}"),
        Tiles((
            (fmt_hours(f.gpu_hours), "GPU-hours allocated"),
            (fmt_hours(f.busy_gpu_hours), "GPU-hours busy"),
            (fmt_pct(f.efficiency), "efficiency (busy / allocated)"),
            (fmt_hours(f.idle_gpu_hours), "idle allocated GPU-hours (waste)"),
            ("–" if f.energy_kwh is None else f"{f.energy_kwh:,.2f} kWh", "energy"),
            (fmt_money(f.cost.total, cur), "cost"),
            (fmt_bytes(f.peak_mem_bytes), "peak memory (one GPU)"),
            (fmt_pct(f.availability), "availability (fault-free share)"),
        )),
        Heading("Daily use", 2),
        *_daily_charts(report),
        Heading("Cost", 2),
        *_cost_section(report),
        Heading("Stability", 2),
        *_stability_section(report),
        Heading("Workloads", 2),
        *_workloads_section(report),
        Heading("How these figures are made", 2),
        _method_notes(report),
    ]
    return Document(f"GPU usage: {report.tenant}", tuple(blocks))


def _daily_charts(report: TenantReport) -> list[Block]:
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
    return [Figure(use), Figure(energy)]


def _price_label(prices: PriceList) -> Cell:
    return Span(prices.label, "example") if "EXAMPLE" in prices.label.upper() else prices.label


def _cost_section(report: TenantReport) -> list[Block]:
    f, cur = report.figures, report.prices.currency
    rows: list[list[Cell]] = [
        [m.model, fmt_hours(m.gpu_hours), fmt_hours(m.busy_gpu_hours),
         "–" if m.price_per_gpu_hour is None else fmt_money(m.price_per_gpu_hour, cur),
         "not priced" if m.cost is None else fmt_money(m.cost, cur)]
        for m in report.models
    ]
    energy_kwh = f.energy_kwh or 0.0
    rows.append(["energy", "", "", f"{fmt_money(report.prices.per_kwh, cur)} / kWh × {energy_kwh:,.2f} kWh", fmt_money(f.cost.energy, cur)])
    rows.append([Span("total", "bold"), Span(fmt_hours(f.gpu_hours), "bold"), "", "", Span(fmt_money(f.cost.total, cur), "bold")])
    out: list[Block] = [
        Note(("Prices: ", _price_label(report.prices))),
        Table((Column("GPU model", False), Column("GPU-hours", True), Column("busy", True), Column("price / GPU-hour", True),
               Column("cost", True)), rows),
    ]
    if f.cost.unpriced_gpu_hours:
        out.append(Note((f"{fmt_hours(f.cost.unpriced_gpu_hours)} GPU-hours are of models without a price.",)))
    if report.references:
        ref_rows = []
        for ref in report.references:
            cost = f.reference_costs[ref.name]
            ref_rows.append([
                _price_label(ref), fmt_money(cost.total, ref.currency),
                fmt_hours(cost.unpriced_gpu_hours) if cost.unpriced_gpu_hours else "0",
            ])
        out.append(Heading("The same GPU-hours at reference prices", 3))
        out.append(Table((Column("reference", False), Column("cost there", True), Column("GPU-hours without a reference price", True)), ref_rows))
    return out


def _stability_section(report: TenantReport) -> list[Block]:
    f = report.figures
    summary = Table(
        (Column("", False), Column("value", True)),
        [
            *([kind, str(f.incidents.get(kind, 0))] for kind in INCIDENT_KINDS),
            ["throttled for temperature (GPU-hours)", fmt_hours(f.throttle_thermal_hours)],
            ["held at the power cap (GPU-hours)", fmt_hours(f.throttle_power_hours)],
            ["hardware slowdown (GPU-hours)", fmt_hours(f.throttle_hw_slowdown_hours)],
            ["allocated GPU-hours in windows with an incident", fmt_hours(f.faulted_gpu_hours)],
            ["availability: share of allocated GPU-hours free of incidents", fmt_pct(f.availability)],
        ],
    )
    if not report.incidents:
        return [summary, Note(("No XID, ECC, row-remap or lost-GPU event on the GPUs while you held them.",), paragraph=True)]
    shown = report.incidents[:MAX_INCIDENT_ROWS]
    table = Table(
        (Column("time", False), Column("node", False), Column("GPU", False), Column("kind", False), Column("code", True),
         Column("detail", False)),
        [[fmt_time(i.time_ns), i.node, i.gpu, i.kind, "" if i.code is None else str(i.code), i.detail] for i in shown],
    )
    out: list[Block] = [summary, Heading("Incidents on your GPUs", 3), table]
    more = len(report.incidents) - len(shown)
    if more > 0:
        out.append(Note((f"… and {more} more (see the JSON report).",), paragraph=True))
    return out


def identity_text(identity: dict) -> str:
    return ", ".join(f"{k}={json.dumps(v) if not isinstance(v, str) else v}" for k, v in sorted(identity.items()))


def _workloads_section(report: TenantReport) -> list[Block]:
    if not report.workloads:
        return [Note(("No workload was seen (the GPUs were allocated but ran nothing, or the agent could not name the processes).",),
                     paragraph=True)]
    shown = report.workloads[:MAX_WORKLOAD_ROWS]
    table = Table(
        (Column("workload", False), Column("identity", False), Column("first hour", False), Column("last hour", False),
         Column("hours seen", True)),
        [[Span(w.key, "code"), identity_text(dict(w.identity)), fmt_time(w.first_hour_ns)[:13] + "h",
          fmt_time(w.last_hour_ns)[:13] + "h", str(w.hours)] for w in shown],
    )
    more = len(report.workloads) - len(shown)
    return [table, Note((f"… and {more} more (see the JSON report).",), paragraph=True)] if more > 0 else [table]


def _method_notes(report: TenantReport) -> Bullets:
    return Bullets((
        "Allocated GPU-hours: time your workloads held a GPU (or it was allocated to you), split between "
        "co-located workloads by their SM or memory use. Busy: the part of it the GPU was running kernels.",
        "Energy: the GPU's own energy counter, split like the time. GPUs without a counter add none.",
        "Throttling hours: each GPU's throttled seconds in an hour, split by your share of that GPU in that hour.",
        "Incidents: XID, double-bit ECC, row-remap failures and lost GPUs in a window you held; availability "
        "counts the allocated hours of those windows as lost.",
        f"Days are UTC. Source: {report.sources or 'InfluxDB'}.",
    ))
