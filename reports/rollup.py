"""Rows for a period: computed live from the raw measurements, or read from the hourly rollup.

Why a command (`gpufleet rollup`) and not an InfluxDB continuous query: a CQ aggregates one
measurement, but a report joins three (tenant_usage, gpu's throttle seconds, gpu_event) and
unions the workloads' JSON; InfluxQL has no join. So the rollup runs the same code as a live
report, an hour at a time, with the heavy summing done server-side by InfluxDB (GROUP BY
time(1h), GPU, tenant; Python sees one row per GPU and tenant per hour, never a window), and
stores the result, one point per (hour, cluster, model, tenant):

    tenant_usage_hourly,cluster,model,tenant  gpu_s busy_gpu_s idle_gpu_s energy_j peak_mem_bytes windows
        throttle_thermal_s throttle_power_s throttle_hw_slowdown_s faulted_gpu_s
        workloads (JSON object) incidents (JSON list) workloads_dropped
    fleet_hourly,cluster,model                window_s energy_j throttle_*_s gpu_s busy_gpu_s idle_gpu_s
        peak_mem_bytes events                 (the meter the tenant rows must add up to)
    tenant_usage_rollup                       version rows     (one per hour done: the marker)

A report reads the rollup for the whole hours that have a marker and computes the rest live
(the current hours, the clipped first and last hour of a period, hours never rolled up), so
a month of a large fleet is a few thousand small rows, whatever the number of GPUs. Run it
every hour (systemd timer); each run recomputes the last `lookback_hours` so that late data is
picked up. A run for an hour deletes that hour's marker first and writes it last: a crash in
between leaves the hour unmarked, and reports compute it live.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from gpufleet.collector.lineproto import string_field, tag

from .model import HOUR_NS, MAX_WINDOW_NS, THROTTLE_FIELDS, Incident, MeterRow, UsageRow, attribute_hours, floor_hour
from .query import InfluxQL, ident, literal, tag_is, time_range

log = logging.getLogger(__name__)

ROLLUP_VERSION = 1  # bump when the rows change meaning: older hours are then computed live
TENANT_HOURLY = "tenant_usage_hourly"
FLEET_HOURLY = "fleet_hourly"
MARKER = "tenant_usage_rollup"
MAX_STRING_FIELD = 60_000  # InfluxDB 1.x refuses string fields over 64 KiB
GPUS_PER_WINDOW_QUERY = 50  # OR-ed GPU conditions per query for the windows around events


def ceil_hour(time_ns: int) -> int:
    return -floor_hour(-time_ns)


# --- live ------------------------------------------------------------------------------------


def live_rows(
    db: InfluxQL,
    start_ns: int,
    end_ns: int,
    *,
    cluster: str | None = None,
    tenant: str | None = None,
    with_workloads: bool = True,
) -> tuple[list[UsageRow], list[MeterRow]]:
    """Rows of [start_ns, end_ns) computed from tenant_usage, gpu and gpu_event.

    Every tenant is computed (a throttling split needs all holders of a GPU); `tenant` only
    narrows the workload lists read, and without `with_workloads` none are (rows without them)."""
    if end_ns <= start_ns:
        return [], []
    where = time_range(start_ns, end_ns) + tag_is("cluster", cluster)
    by_hour = "GROUP BY time(1h), cluster, node, gpu, model"
    usage = db.rows(
        "SELECT sum(gpu_s) AS gpu_s, sum(busy_gpu_s) AS busy_gpu_s, sum(idle_gpu_s) AS idle_gpu_s, "
        "sum(energy_j) AS energy_j, max(peak_mem_bytes) AS peak_mem_bytes, count(gpu_s) AS windows "
        f"FROM tenant_usage WHERE {where} {by_hour}, tenant fill(none)"
    )
    throttle = ", ".join(f"sum({name}) AS {name}" for name in THROTTLE_FIELDS)
    meters = db.rows(
        f"SELECT sum(window_s) AS window_s, sum(energy_j) AS energy_j, {throttle} FROM gpu WHERE {where} {by_hour} fill(none)"
    )
    workloads = db.rows(
        f"SELECT distinct(workloads) FROM tenant_usage WHERE {where}{tag_is('tenant', tenant)} "
        "GROUP BY time(1h), cluster, model, tenant fill(none)"
    ) if with_workloads else []
    events = db.rows(
        f"SELECT code, detail FROM gpu_event WHERE {time_range(start_ns, end_ns + MAX_WINDOW_NS)}"
        f"{tag_is('cluster', cluster)} GROUP BY cluster, node, gpu, kind"
    )
    windows = _windows_around(db, events, start_ns - MAX_WINDOW_NS, end_ns + MAX_WINDOW_NS)
    return attribute_hours(start_ns, end_ns, usage, meters, workloads, events, windows)


def _windows_around(db: InfluxQL, events: Sequence[dict[str, Any]], start_ns: int, end_ns: int) -> list[dict[str, Any]]:
    """tenant_usage points (gpu_s per tenant) of the GPUs that had an event: events are rare, so
    this reads a few GPUs, not the fleet."""
    gpus = sorted({(e["cluster"], e["node"], e["gpu"]) for e in events})
    found: list[dict[str, Any]] = []
    for i in range(0, len(gpus), GPUS_PER_WINDOW_QUERY):
        which = " OR ".join(
            f"(cluster = {literal(c)} AND node = {literal(n)} AND gpu = {literal(g)})" for c, n, g in gpus[i : i + GPUS_PER_WINDOW_QUERY]
        )
        found += db.rows(
            f"SELECT gpu_s FROM tenant_usage WHERE {time_range(start_ns, end_ns)} AND ({which}) "
            "GROUP BY cluster, node, gpu, model, tenant"
        )
    return found


# --- writing the rollup ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RollupSummary:
    start_ns: int
    end_ns: int
    hours: int
    tenant_rows: int
    meter_rows: int


def rollup(db: InfluxQL, start_ns: int, end_ns: int, *, chunk_hours: int = 6) -> RollupSummary:
    """Compute and store the hours of [start_ns, end_ns) (widened to whole hours), a chunk at a time."""
    start_ns, end_ns = floor_hour(start_ns), ceil_hour(end_ns)
    tenant_rows = meter_rows = 0
    chunk = start_ns
    while chunk < end_ns:
        chunk_end = min(chunk + chunk_hours * HOUR_NS, end_ns)
        rows, meters = live_rows(db, chunk, chunk_end)
        _replace_hours(db, chunk, chunk_end, rows, meters)
        tenant_rows += len(rows)
        meter_rows += len(meters)
        log.info("rolled up %d h from %d: %d tenant rows", (chunk_end - chunk) // HOUR_NS, chunk, len(rows))
        chunk = chunk_end
    return RollupSummary(start_ns, end_ns, (end_ns - start_ns) // HOUR_NS, tenant_rows, meter_rows)


def _replace_hours(db: InfluxQL, start_ns: int, end_ns: int, rows: list[UsageRow], meters: list[MeterRow]) -> None:
    where = time_range(start_ns, end_ns)
    # Marker first: from here until the new marker is written, reports compute these hours live.
    db.results(f"DELETE FROM {ident(MARKER)} WHERE {where}")
    db.results(f"DELETE FROM {ident(TENANT_HOURLY)} WHERE {where}")
    db.results(f"DELETE FROM {ident(FLEET_HOURLY)} WHERE {where}")
    db.write([*map(usage_line, rows), *map(meter_line, meters)])
    counts: dict[int, int] = {}
    for row in rows:
        counts[row.start_ns] = counts.get(row.start_ns, 0) + 1
    db.write(marker_line(hour, counts.get(hour, 0)) for hour in range(start_ns, end_ns, HOUR_NS))


def marker_line(hour_ns: int, tenant_rows: int) -> str:
    """The point that says an hour's rollup is complete (written last, after its rows)."""
    return f"{MARKER} version={ROLLUP_VERSION}i,rows={tenant_rows}i {hour_ns}"


def _float(value: float) -> str:
    return repr(float(value))


def _capped_json(items: dict[str, Any]) -> tuple[str, int]:
    """The workloads as a JSON object under InfluxDB's string limit, and how many were left out."""
    text = json.dumps(items, separators=(",", ":"), sort_keys=True)
    if len(text) <= MAX_STRING_FIELD:
        return text, 0
    kept: dict[str, Any] = {}
    size = 2
    for key, value in sorted(items.items()):
        piece = len(json.dumps({key: value}, separators=(",", ":"))) - 1
        if size + piece > MAX_STRING_FIELD:
            break
        kept[key] = value
        size += piece
    return json.dumps(kept, separators=(",", ":"), sort_keys=True), len(items) - len(kept)


def usage_line(row: UsageRow) -> str:
    """One rollup point; absent energy and memory stay absent (never written as zero)."""
    fields = [
        f"gpu_s={_float(row.gpu_s)}", f"busy_gpu_s={_float(row.busy_gpu_s)}", f"idle_gpu_s={_float(row.idle_gpu_s)}",
        f"windows={row.windows}i", f"faulted_gpu_s={_float(row.faulted_gpu_s)}",
        *(f"{name}={_float(getattr(row, name))}" for name in THROTTLE_FIELDS),
    ]
    if row.energy_j is not None:
        fields.append(f"energy_j={_float(row.energy_j)}")
    if row.peak_mem_bytes is not None:
        fields.append(f"peak_mem_bytes={row.peak_mem_bytes}i")
    workloads, dropped = _capped_json(dict(row.workloads))
    fields.append(f"workloads={string_field(workloads)}")
    if dropped:
        fields.append(f"workloads_dropped={dropped}i")
    # Incidents per tenant-hour are few (a handful of XIDs); no cap needed beyond the wire's own.
    incidents = json.dumps([i.to_json() for i in row.incidents], separators=(",", ":"))
    fields.append(f"incidents={string_field(incidents)}")
    tags = f"cluster={tag(row.cluster)},model={tag(row.model)},tenant={tag(row.tenant)}"
    return f"{TENANT_HOURLY},{tags} {','.join(fields)} {row.start_ns}"


def meter_line(m: MeterRow) -> str:
    fields = [
        f"window_s={_float(m.window_s)}", f"gpu_s={_float(m.gpu_s)}", f"busy_gpu_s={_float(m.busy_gpu_s)}",
        f"idle_gpu_s={_float(m.idle_gpu_s)}", f"events={m.events}i",
        *(f"{name}={_float(getattr(m, name))}" for name in THROTTLE_FIELDS),
    ]
    if m.energy_j is not None:
        fields.append(f"energy_j={_float(m.energy_j)}")
    if m.peak_mem_bytes is not None:
        fields.append(f"peak_mem_bytes={m.peak_mem_bytes}i")
    return f"{FLEET_HOURLY},cluster={tag(m.cluster)},model={tag(m.model)} {','.join(fields)} {m.start_ns}"


# --- reading the rollup ----------------------------------------------------------------------


def rolled_up_hours(db: InfluxQL, start_ns: int, end_ns: int) -> set[int]:
    """Whole hours inside [start_ns, end_ns) whose rollup is complete and of this version."""
    first, last = ceil_hour(start_ns), floor_hour(end_ns)
    if last <= first:
        return set()
    rows = db.rows(f"SELECT version FROM {ident(MARKER)} WHERE {time_range(first, last)}")
    return {row["time"] for row in rows if row.get("version") == ROLLUP_VERSION}


# The rollup's columns but `workloads`: what a report that shows no workloads (CSV) reads.
_WITHOUT_WORKLOADS = (
    "cluster", "model", "tenant", "gpu_s", "busy_gpu_s", "idle_gpu_s", "energy_j", "peak_mem_bytes", "windows",
    *THROTTLE_FIELDS, "faulted_gpu_s", "incidents",
)


def read_rollup(
    db: InfluxQL,
    hours: set[int],
    *,
    cluster: str | None = None,
    tenant: str | None = None,
    with_workloads: bool = True,
) -> tuple[list[UsageRow], list[MeterRow]]:
    """The rollup rows of `hours`; without `with_workloads`, rows without their workload lists,
    which are most of the bytes of a month."""
    if not hours:
        return [], []
    where = time_range(min(hours), max(hours) + HOUR_NS) + tag_is("cluster", cluster)
    columns = "*" if with_workloads else ", ".join(map(ident, _WITHOUT_WORKLOADS))
    usage = db.stream_rows(f"SELECT {columns} FROM {ident(TENANT_HOURLY)} WHERE {where}{tag_is('tenant', tenant)}")
    parsed = _ParsedJson()
    rows = [_usage_row(r, parsed) for r in usage if r["time"] in hours]
    meters = db.rows(f"SELECT * FROM {ident(FLEET_HOURLY)} WHERE {where}")
    return rows, [_meter_row(r) for r in meters if r["time"] in hours]


class _ParsedJson:
    """The rollup's JSON texts, each parsed once: a tenant's workload list that did not change
    from one hour to the next, and every empty list, come back many times in a month. Rows that
    share a text share the parsed value (rows are read, never changed)."""

    def __init__(self) -> None:
        self._workloads: dict[str, dict[str, Any]] = {}
        self._incidents: dict[str, tuple[Incident, ...]] = {}

    def workloads(self, text: str | None) -> dict[str, Any]:
        text = text or "{}"
        found = self._workloads.get(text)
        if found is None:
            found = self._workloads[text] = json.loads(text)
        return found

    def incidents(self, text: str | None) -> tuple[Incident, ...]:
        text = text or "[]"
        found = self._incidents.get(text)
        if found is None:
            found = self._incidents[text] = tuple(Incident.from_json(item) for item in json.loads(text))
        return found


def _f(row: dict[str, Any], name: str) -> float:
    value = row.get(name)
    return 0.0 if value is None else float(value)


def _usage_row(r: dict[str, Any], parsed: _ParsedJson | None = None) -> UsageRow:
    parsed = parsed or _ParsedJson()
    energy, peak = r.get("energy_j"), r.get("peak_mem_bytes")
    return UsageRow(
        r["time"], r["cluster"], r["model"], r["tenant"], _f(r, "gpu_s"), _f(r, "busy_gpu_s"), _f(r, "idle_gpu_s"),
        None if energy is None else float(energy), None if peak is None else int(peak), int(r.get("windows") or 0),
        *(_f(r, name) for name in THROTTLE_FIELDS), _f(r, "faulted_gpu_s"),
        parsed.workloads(r.get("workloads")), parsed.incidents(r.get("incidents")),
    )


def _meter_row(r: dict[str, Any]) -> MeterRow:
    return MeterRow(
        r["time"], r["cluster"], r["model"], _f(r, "window_s"),
        None if r.get("energy_j") is None else float(r["energy_j"]),
        *(_f(r, name) for name in THROTTLE_FIELDS), _f(r, "gpu_s"), _f(r, "busy_gpu_s"), _f(r, "idle_gpu_s"),
        None if r.get("peak_mem_bytes") is None else int(r["peak_mem_bytes"]), int(r.get("events") or 0),
    )


# --- a period ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Collected:
    rows: list[UsageRow]
    meters: list[MeterRow]
    rollup_hours: int
    live_spans: tuple[tuple[int, int], ...]

    @property
    def sources(self) -> str:
        live_h = sum(end - start for start, end in self.live_spans) / HOUR_NS
        return f"rollup {self.rollup_hours} h, live {live_h:g} h"


def live_spans(start_ns: int, end_ns: int, rolled: set[int]) -> list[tuple[int, int]]:
    """The parts of [start_ns, end_ns) not covered by rolled-up hours, as maximal spans."""
    spans: list[tuple[int, int]] = []
    cursor = start_ns
    for hour in sorted(rolled):
        if hour > cursor:
            spans.append((cursor, hour))
        cursor = max(cursor, hour + HOUR_NS)
    if cursor < end_ns:
        spans.append((cursor, end_ns))
    return spans


def collect(
    db: InfluxQL,
    start_ns: int,
    end_ns: int,
    *,
    cluster: str | None = None,
    tenant: str | None = None,
    use_rollup: bool = True,
    with_workloads: bool = True,
) -> Collected:
    """All rows of [start_ns, end_ns): the rollup where it is complete, live elsewhere.
    With `tenant`, only that tenant's usage rows come back (meters are always the fleet's);
    without `with_workloads`, rows without their workload lists."""
    rolled = rolled_up_hours(db, start_ns, end_ns) if use_rollup else set()
    rows, meters = read_rollup(db, rolled, cluster=cluster, tenant=tenant, with_workloads=with_workloads)
    spans = live_spans(start_ns, end_ns, rolled)
    for span_start, span_end in spans:
        more, more_meters = live_rows(db, span_start, span_end, cluster=cluster, tenant=tenant, with_workloads=with_workloads)
        rows += more
        meters += more_meters
    if tenant is not None:
        rows = [row for row in rows if row.tenant == tenant]
    rows.sort(key=lambda r: (r.start_ns, r.cluster, r.model, r.tenant))
    meters.sort(key=lambda m: (m.start_ns, m.cluster, m.model))
    return Collected(rows, meters, len(rolled), tuple(spans))


def tenants_in(rows: Iterable[UsageRow]) -> list[str]:
    return sorted({row.tenant for row in rows})
