"""Report figures from rows. Pure: InfluxDB rows (plain dicts) in, figures out; no I/O, no clock.

Two steps:

1. `attribute_hours` joins one period's server-side aggregates (tenant_usage per GPU and tenant,
   gpu per GPU, the distinct workloads, the gpu_event points and, for GPUs that had an event,
   their tenant_usage windows) into one `UsageRow` per (hour, cluster, model, tenant) and one
   `MeterRow` per (hour, cluster, model). The rollup stores exactly these rows; a report of
   recent hours computes them live. Same code, same numbers.
2. `tenant_figures` / `chargeback` turn rows into what a tenant reads and pays.

Attribution rules (each keeps the books balanced: summed over all tenants with `unallocated`, a
figure equals the fleet's own total):

- gpu_s, busy, idle, energy, peak memory: as the collector split them (tenant_usage).
- throttling seconds (gpu.throttle_*_s): split per GPU and hour in proportion to the tenants'
  gpu_s on that GPU in that hour. Seconds of a GPU with no tenant_usage go to `unallocated`.
- an incident (gpu_event) belongs to every tenant that held its GPU in the window containing the
  event (t0 <= t < t0 + window), and to `unallocated` when no window contains it. It is counted in
  the hour of the event. Shared windows make the per-tenant counts add up to more than the
  fleet's events; the chargeback reconciles incidents as distinct events instead.
- faulted GPU-seconds: the gpu_s of every window that contains an incident, in the hour the
  window starts. Availability = 1 - faulted / allocated.
"""

from __future__ import annotations

import bisect
import fnmatch
import functools
import json
import math
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from operator import attrgetter
from typing import Any

UNALLOCATED = "unallocated"
UNKNOWN_MODEL = "unknown"
HOUR_NS = 3_600_000_000_000
DAY_NS = 24 * HOUR_NS
# The longest window an agent publishes (config: interval <= 3600 s): how far before and after a
# period we look for the window an event falls in.
MAX_WINDOW_NS = HOUR_NS
S_PER_HOUR = 3600.0
J_PER_KWH = 3_600_000.0
INCIDENT_KINDS = ("xid", "ecc_dbe", "remap_failure", "gpu_lost")
THROTTLE_FIELDS = ("throttle_thermal_s", "throttle_power_s", "throttle_hw_slowdown_s")

GpuKey = tuple[str, str, str]  # (cluster, node, gpu)


def floor_hour(time_ns: int) -> int:
    return time_ns - time_ns % HOUR_NS


@functools.lru_cache(maxsize=1 << 14)  # rows are hours: a year of them, each formatted once
def day_of(time_ns: int) -> str:
    """The UTC date of a timestamp, as `YYYY-MM-DD`."""
    return datetime.fromtimestamp(time_ns / 1e9, UTC).strftime("%Y-%m-%d")


# --- rows ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Incident:
    """One gpu_event as a tenant sees it."""

    time_ns: int
    cluster: str
    node: str
    gpu: str
    kind: str  # xid | ecc_dbe | remap_failure | gpu_lost
    code: int | None
    detail: str

    @property
    def key(self) -> tuple[int, str, str, str, str, int | None]:
        """What makes two incidents the same event (one event, several tenants)."""
        return (self.time_ns, self.cluster, self.node, self.gpu, self.kind, self.code)

    def to_json(self) -> list[Any]:
        return [self.time_ns, self.cluster, self.node, self.gpu, self.kind, self.code, self.detail]

    @classmethod
    def from_json(cls, item: Sequence[Any]) -> Incident:
        time_ns, cluster, node, gpu, kind, code, detail = item
        return cls(int(time_ns), cluster, node, gpu, kind, code, detail)


@dataclass(frozen=True, slots=True)
class UsageRow:
    """One tenant on one GPU model of one cluster during one hour (or the part of it in the period)."""

    start_ns: int
    cluster: str
    model: str
    tenant: str
    gpu_s: float = 0.0  # GPU-seconds held
    busy_gpu_s: float = 0.0
    idle_gpu_s: float = 0.0
    energy_j: float | None = None  # None: no GPU of this row has an energy counter
    peak_mem_bytes: int | None = None
    windows: int = 0  # tenant_usage points (GPU-windows)
    throttle_thermal_s: float = 0.0
    throttle_power_s: float = 0.0
    throttle_hw_slowdown_s: float = 0.0
    faulted_gpu_s: float = 0.0  # gpu_s in windows that had an incident
    workloads: Mapping[str, Any] = field(default_factory=dict)  # workload key -> identity
    incidents: tuple[Incident, ...] = ()


@dataclass(frozen=True, slots=True)
class MeterRow:
    """The fleet's own totals for one hour, cluster and model, read without any tenant split:
    what the tenant rows must add up to."""

    start_ns: int
    cluster: str
    model: str
    window_s: float = 0.0  # gpu.window_s: GPU-seconds measured
    energy_j: float | None = None  # gpu.energy_j
    throttle_thermal_s: float = 0.0
    throttle_power_s: float = 0.0
    throttle_hw_slowdown_s: float = 0.0
    gpu_s: float = 0.0  # tenant_usage over all tenants
    busy_gpu_s: float = 0.0
    idle_gpu_s: float = 0.0
    peak_mem_bytes: int | None = None
    events: int = 0  # gpu_event points in the hour


def _add(a: float | None, b: float | None) -> float | None:
    """A sum where None means "no reading": absent plus absent stays absent."""
    if a is None:
        return b
    return a if b is None else a + b


def _max(a: int | None, b: int | None) -> int | None:
    if a is None:
        return b
    return a if b is None else max(a, b)


def _num(value: Any) -> float:
    """InfluxDB's JSON writes 10.0 as 10 and an absent field as null."""
    return 0.0 if value is None else float(value)


def _opt_num(value: Any) -> float | None:
    return None if value is None else float(value)


def _opt_int(value: Any) -> int | None:
    return None if value is None else int(value)


class _Acc:
    """Mutable sums for one UsageRow while a period is attributed."""

    __slots__ = ("busy", "energy", "faulted", "gpu_s", "idle", "incidents", "peak", "throttle", "windows", "workloads")

    def __init__(self) -> None:
        self.gpu_s = self.busy = self.idle = self.faulted = 0.0
        self.energy: float | None = None
        self.peak: int | None = None
        self.windows = 0
        self.throttle = [0.0, 0.0, 0.0]
        self.workloads: dict[str, Any] = {}
        self.incidents: list[Incident] = []


# --- step 1: one period's rows ---------------------------------------------------------------


def attribute_hours(
    start_ns: int,
    end_ns: int,
    usage: Iterable[Mapping[str, Any]],
    meters: Iterable[Mapping[str, Any]],
    workloads: Iterable[Mapping[str, Any]] = (),
    events: Iterable[Mapping[str, Any]] = (),
    windows: Iterable[Mapping[str, Any]] = (),
) -> tuple[list[UsageRow], list[MeterRow]]:
    """UsageRows and MeterRows of [start_ns, end_ns), per hour (the first and last clipped).

    Inputs are InfluxDB rows (see rollup.py for the queries), each with `time` = its hour bucket:
      usage:     cluster node gpu model tenant | gpu_s busy_gpu_s idle_gpu_s energy_j peak_mem_bytes windows
      meters:    cluster node gpu model | window_s energy_j throttle_thermal_s throttle_power_s throttle_hw_slowdown_s
      workloads: cluster model tenant | distinct (a tenant_usage `workloads` JSON object)
      events:    cluster node gpu kind | code detail; time = the event's; from MAX_WINDOW_NS either side
      windows:   cluster node gpu model tenant | gpu_s; time = window start; GPUs with events only,
                 from MAX_WINDOW_NS before start to MAX_WINDOW_NS after end
    """

    def bucket(time_ns: int) -> int:
        return max(floor_hour(time_ns), start_ns)

    accs: dict[tuple[int, str, str, str], _Acc] = defaultdict(_Acc)
    meter_accs: dict[tuple[int, str, str], dict[str, Any]] = {}
    per_gpu: dict[tuple[int, str, str, str], dict[tuple[str, str], float]] = defaultdict(lambda: defaultdict(float))
    model_of: dict[GpuKey, str] = {}

    def meter(hour: int, cluster: str, model: str) -> dict[str, Any]:
        return meter_accs.setdefault((hour, cluster, model), {"energy_j": None, "peak_mem_bytes": None})

    for row in usage:
        hour, cluster, model, tenant = bucket(row["time"]), row["cluster"], row["model"], row["tenant"]
        acc = accs[(hour, cluster, model, tenant)]
        gpu_s = _num(row.get("gpu_s"))
        acc.gpu_s += gpu_s
        acc.busy += _num(row.get("busy_gpu_s"))
        acc.idle += _num(row.get("idle_gpu_s"))
        acc.energy = _add(acc.energy, _opt_num(row.get("energy_j")))
        acc.peak = _max(acc.peak, _opt_int(row.get("peak_mem_bytes")))
        acc.windows += int(row.get("windows") or 0)
        per_gpu[(hour, cluster, row["node"], row["gpu"])][(model, tenant)] += gpu_s
        model_of[(cluster, row["node"], row["gpu"])] = model
        m = meter(hour, cluster, model)
        for name, value in (("gpu_s", gpu_s), ("busy_gpu_s", row.get("busy_gpu_s")), ("idle_gpu_s", row.get("idle_gpu_s"))):
            m[name] = m.get(name, 0.0) + _num(value)
        m["peak_mem_bytes"] = _max(m["peak_mem_bytes"], _opt_int(row.get("peak_mem_bytes")))

    for row in meters:
        hour, cluster, node, gpu, model = bucket(row["time"]), row["cluster"], row["node"], row["gpu"], row["model"]
        model_of.setdefault((cluster, node, gpu), model)
        m = meter(hour, cluster, model)
        m["window_s"] = m.get("window_s", 0.0) + _num(row.get("window_s"))
        m["energy_j"] = _add(m["energy_j"], _opt_num(row.get("energy_j")))
        throttle = [_num(row.get(name)) for name in THROTTLE_FIELDS]
        for name, value in zip(THROTTLE_FIELDS, throttle):
            m[name] = m.get(name, 0.0) + value
        if not any(throttle):
            continue
        holders = per_gpu.get((hour, cluster, node, gpu))
        total = math.fsum(holders.values()) if holders else 0.0
        if total <= 0:
            holders, total = {(model, UNALLOCATED): 1.0}, 1.0
        for (held_model, tenant), gpu_s in holders.items():
            acc = accs[(hour, cluster, held_model, tenant)]
            for i, value in enumerate(throttle):
                acc.throttle[i] += value * gpu_s / total

    for row in workloads:
        text = row.get("distinct") or row.get("workloads")
        if not text:
            continue
        try:
            found = json.loads(text)
        except ValueError:
            continue  # a damaged string must not stop a bill; the figures do not depend on it
        if isinstance(found, dict):
            accs[(bucket(row["time"]), row["cluster"], row["model"], row["tenant"])].workloads.update(found)

    _attribute_events(start_ns, end_ns, bucket, events, windows, model_of, accs, meter)

    rows = [
        UsageRow(
            hour, cluster, model, tenant, acc.gpu_s, acc.busy, acc.idle, acc.energy, acc.peak, acc.windows,
            *acc.throttle, acc.faulted, dict(sorted(acc.workloads.items())),
            tuple(sorted(acc.incidents, key=lambda i: i.key)),
        )
        for (hour, cluster, model, tenant), acc in sorted(accs.items())
    ]
    meter_rows = [
        MeterRow(
            hour, cluster, model, m.get("window_s", 0.0), m["energy_j"],
            *(m.get(name, 0.0) for name in THROTTLE_FIELDS),
            m.get("gpu_s", 0.0), m.get("busy_gpu_s", 0.0), m.get("idle_gpu_s", 0.0), m["peak_mem_bytes"], m.get("events", 0),
        )
        for (hour, cluster, model), m in sorted(meter_accs.items())
    ]
    return rows, meter_rows


def _attribute_events(
    start_ns: int,
    end_ns: int,
    bucket: Callable[[int], int],
    events: Iterable[Mapping[str, Any]],
    windows: Iterable[Mapping[str, Any]],
    model_of: dict[GpuKey, str],
    accs: dict[tuple[int, str, str, str], _Acc],
    meter: Callable[[int, str, str], dict[str, Any]],
) -> None:
    # Each GPU's windows: start -> {(model, tenant): gpu_s}; a window lasts the sum of its gpu_s.
    by_gpu: dict[GpuKey, dict[int, dict[tuple[str, str], float]]] = defaultdict(lambda: defaultdict(dict))
    for row in windows:
        gpu_key = (row["cluster"], row["node"], row["gpu"])
        held = by_gpu[gpu_key][row["time"]]
        held[(row["model"], row["tenant"])] = held.get((row["model"], row["tenant"]), 0.0) + _num(row.get("gpu_s"))
        model_of.setdefault(gpu_key, row["model"])
    starts = {gpu_key: sorted(found) for gpu_key, found in by_gpu.items()}

    faulted: set[tuple[GpuKey, int]] = set()
    seen: set[tuple[Any, ...]] = set()
    for row in events:
        gpu_key = (row["cluster"], row["node"], row["gpu"])
        incident = Incident(
            int(row["time"]), *gpu_key, row["kind"], _opt_int(row.get("code")), str(row.get("detail") or "")
        )
        if incident.key in seen:  # one event read twice (a series split by another tag)
            continue
        seen.add(incident.key)
        window = _window_at(starts.get(gpu_key, []), by_gpu.get(gpu_key, {}), incident.time_ns)
        if window is not None and start_ns <= window < end_ns:
            faulted.add((gpu_key, window))
        if not start_ns <= incident.time_ns < end_ns:
            continue
        hour = bucket(incident.time_ns)
        holders = by_gpu[gpu_key][window] if window is not None else {}
        if not holders:
            holders = {(model_of.get(gpu_key, UNKNOWN_MODEL), UNALLOCATED): 0.0}
        for model, tenant in holders:
            accs[(hour, gpu_key[0], model, tenant)].incidents.append(incident)
        event_meter = meter(hour, gpu_key[0], model_of.get(gpu_key, UNKNOWN_MODEL))
        event_meter["events"] = event_meter.get("events", 0) + 1

    for gpu_key, window in faulted:
        for (model, tenant), gpu_s in by_gpu[gpu_key][window].items():
            accs[(bucket(window), gpu_key[0], model, tenant)].faulted += gpu_s


def _window_at(starts: list[int], held: Mapping[int, Mapping[Any, float]], time_ns: int) -> int | None:
    """Start of the window that contains time_ns (t0 <= t < t0 + its gpu_s), or None."""
    i = bisect.bisect_right(starts, time_ns) - 1
    if i < 0:
        return None
    t0 = starts[i]
    length_ns = round(math.fsum(held[t0].values()) * 1e9)
    return t0 if time_ns < t0 + length_ns else None


# --- prices ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PriceList:
    """Per GPU-hour by model (exact name or shell glob, first match in order) and per kWh."""

    name: str
    label: str
    currency: str
    per_gpu_hour: tuple[tuple[str, float], ...]
    per_kwh: float = 0.0
    default_per_gpu_hour: float | None = None  # a model that matches nothing; None: not priced

    def gpu_hour_price(self, model: str) -> float | None:
        for pattern, price in self.per_gpu_hour:
            if pattern == model:
                return price
        for pattern, price in self.per_gpu_hour:
            if fnmatch.fnmatchcase(model, pattern):
                return price
        return self.default_per_gpu_hour


# --- step 2: figures -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Cost:
    gpu: float  # GPU-hours x price per GPU-hour
    energy: float  # kWh x price per kWh
    unpriced_gpu_hours: float  # hours of models the list has no price for (not in `gpu`)

    @property
    def total(self) -> float:
        return self.gpu + self.energy


@dataclass(frozen=True, slots=True)
class Figures:
    """What one tenant (or the fleet) used in a period. Hours are GPU-hours."""

    gpu_hours: float
    busy_gpu_hours: float
    idle_gpu_hours: float  # allocated but idle: waste
    energy_kwh: float | None
    peak_mem_bytes: int | None
    throttle_thermal_hours: float
    throttle_power_hours: float
    throttle_hw_slowdown_hours: float
    faulted_gpu_hours: float
    incidents: Mapping[str, int]  # kind -> distinct events
    cost: Cost
    reference_costs: Mapping[str, Cost]  # PriceList.name -> cost at those prices

    @property
    def efficiency(self) -> float | None:
        """busy / allocated; None when nothing was allocated."""
        return self.busy_gpu_hours / self.gpu_hours if self.gpu_hours > 0 else None

    @property
    def availability(self) -> float | None:
        """Share of the allocated GPU-hours in windows free of incidents."""
        return 1 - self.faulted_gpu_hours / self.gpu_hours if self.gpu_hours > 0 else None

    @property
    def incident_count(self) -> int:
        return sum(self.incidents.values())


def cost_of(gpu_s_by_model: Mapping[str, float], energy_j: float | None, prices: PriceList) -> Cost:
    gpu = unpriced = 0.0
    for model, gpu_s in sorted(gpu_s_by_model.items()):
        price = prices.gpu_hour_price(model)
        if price is None:
            unpriced += gpu_s / S_PER_HOUR
        else:
            gpu += gpu_s / S_PER_HOUR * price
    energy = (energy_j or 0.0) / J_PER_KWH * prices.per_kwh
    return Cost(gpu, energy, unpriced)


def _hours(rows: list[UsageRow], seconds: Callable[[UsageRow], float]) -> float:
    # map with an attrgetter runs in C: a month of 200 tenants sums millions of row fields here.
    return math.fsum(map(seconds, rows)) / S_PER_HOUR


def figures(rows: Iterable[UsageRow], prices: PriceList, references: Sequence[PriceList] = ()) -> Figures:
    rows = list(rows)
    by_model: dict[str, float] = defaultdict(float)
    for row in rows:
        by_model[row.model] += row.gpu_s
    energy_j = _sum_opt(map(attrgetter("energy_j"), rows))
    incidents = distinct_incidents(rows)
    counts = {kind: sum(1 for i in incidents if i.kind == kind) for kind in INCIDENT_KINDS}
    return Figures(
        gpu_hours=_hours(rows, attrgetter("gpu_s")),
        busy_gpu_hours=_hours(rows, attrgetter("busy_gpu_s")),
        idle_gpu_hours=_hours(rows, attrgetter("idle_gpu_s")),
        energy_kwh=None if energy_j is None else energy_j / J_PER_KWH,
        peak_mem_bytes=_max_opt(map(attrgetter("peak_mem_bytes"), rows)),
        throttle_thermal_hours=_hours(rows, attrgetter("throttle_thermal_s")),
        throttle_power_hours=_hours(rows, attrgetter("throttle_power_s")),
        throttle_hw_slowdown_hours=_hours(rows, attrgetter("throttle_hw_slowdown_s")),
        faulted_gpu_hours=_hours(rows, attrgetter("faulted_gpu_s")),
        incidents=counts,
        cost=cost_of(by_model, energy_j, prices),
        reference_costs={ref.name: cost_of(by_model, energy_j, ref) for ref in references},
    )


def _sum_opt(values: Iterable[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return math.fsum(present) if present else None


def _max_opt(values: Iterable[int | None]) -> int | None:
    present = [v for v in values if v is not None]
    return max(present) if present else None


def distinct_incidents(rows: Iterable[UsageRow]) -> list[Incident]:
    found: dict[tuple[Any, ...], Incident] = {}
    for row in rows:
        for incident in row.incidents:
            found.setdefault(incident.key, incident)
    return [found[key] for key in sorted(found)]


@dataclass(frozen=True, slots=True)
class ModelLine:
    """One invoice line: a GPU model's hours and their price."""

    model: str
    gpu_hours: float
    busy_gpu_hours: float
    energy_kwh: float | None
    price_per_gpu_hour: float | None
    cost: float | None  # gpu_hours x price; None when the model has no price
    reference: Mapping[str, float | None]  # PriceList.name -> price per GPU-hour there


@dataclass(frozen=True, slots=True)
class Day:
    date: str  # YYYY-MM-DD, UTC
    gpu_hours: float
    busy_gpu_hours: float
    idle_gpu_hours: float
    energy_kwh: float | None
    cost: float


@dataclass(frozen=True, slots=True)
class Workload:
    key: str
    identity: Mapping[str, Any]
    first_hour_ns: int
    last_hour_ns: int
    hours: int  # hour buckets it was seen in


@dataclass(frozen=True, slots=True)
class TenantReport:
    tenant: str
    start_ns: int
    end_ns: int
    cluster: str | None  # None: every cluster
    figures: Figures
    models: tuple[ModelLine, ...]
    days: tuple[Day, ...]
    workloads: tuple[Workload, ...]
    incidents: tuple[Incident, ...]
    prices: PriceList
    references: tuple[PriceList, ...]
    sources: str = ""  # where the rows came from, e.g. "rollup 720 h, live 3 h"


def tenant_report(
    tenant: str,
    start_ns: int,
    end_ns: int,
    rows: Iterable[UsageRow],
    prices: PriceList,
    references: Sequence[PriceList] = (),
    *,
    cluster: str | None = None,
    sources: str = "",
) -> TenantReport:
    """One tenant's report from rows; rows of other tenants are ignored, never shown."""
    mine = [row for row in rows if row.tenant == tenant]
    return TenantReport(
        tenant, start_ns, end_ns, cluster, figures(mine, prices, references),
        tuple(_model_lines(mine, prices, references)), tuple(_days(mine, start_ns, end_ns, prices)),
        tuple(_workloads(mine)), tuple(distinct_incidents(mine)), prices, tuple(references), sources,
    )


def _model_lines(rows: list[UsageRow], prices: PriceList, references: Sequence[PriceList]) -> Iterable[ModelLine]:
    by_model: dict[str, list[UsageRow]] = defaultdict(list)
    for row in rows:
        by_model[row.model].append(row)
    for model, group in sorted(by_model.items()):
        gpu_hours = math.fsum(row.gpu_s for row in group) / S_PER_HOUR
        if gpu_hours == 0:
            continue  # incident-only rows (a GPU lost outside any window)
        energy = _sum_opt(row.energy_j for row in group)
        price = prices.gpu_hour_price(model)
        yield ModelLine(
            model, gpu_hours, math.fsum(row.busy_gpu_s for row in group) / S_PER_HOUR,
            None if energy is None else energy / J_PER_KWH, price, None if price is None else gpu_hours * price,
            {ref.name: ref.gpu_hour_price(model) for ref in references},
        )


def _days(rows: list[UsageRow], start_ns: int, end_ns: int, prices: PriceList) -> Iterable[Day]:
    """Every UTC day of the period, with zeros for days without use (a chart shows the gaps)."""
    by_day: dict[str, list[UsageRow]] = defaultdict(list)
    for row in rows:
        by_day[day_of(row.start_ns)].append(row)
    day = start_ns - start_ns % DAY_NS
    while day < end_ns:
        date = day_of(day)
        group = by_day.get(date, [])
        f = figures(group, prices)
        yield Day(date, f.gpu_hours, f.busy_gpu_hours, f.idle_gpu_hours, f.energy_kwh, f.cost.total)
        day += DAY_NS


def _workloads(rows: list[UsageRow]) -> Iterable[Workload]:
    """Each workload with its identity as first seen, its first and last hour and the hours it
    was seen in. In time order, an hour is new to a workload when it differs from its last."""
    seen: dict[str, list[Any]] = {}  # key -> [identity, first hour, last hour, hours]
    for row in sorted(rows, key=lambda r: r.start_ns):
        hour = row.start_ns
        for key, identity in row.workloads.items():
            entry = seen.get(key)
            if entry is None:
                seen[key] = [identity, hour, hour, 1]
            elif entry[2] != hour:
                entry[2] = hour
                entry[3] += 1
    for key, (identity, first, last, hours) in sorted(seen.items()):
        yield Workload(key, identity if isinstance(identity, dict) else {"value": identity}, first, last, hours)


# --- the fleet chargeback and its reconciliation ---------------------------------------------

# Absolute slack for comparing a sum of tenant figures with the fleet meter: float sums of
# millisecond-exact values differ in the last bits, never by a millisecond.
RELATIVE_TOLERANCE = 1e-9
ABSOLUTE_TOLERANCE = 1e-6


@dataclass(frozen=True, slots=True)
class Check:
    figure: str
    tenants: float | None  # sum (or max, or distinct count) over the tenant rows
    fleet: float | None  # the fleet's own total
    ok: bool
    how: str  # where the fleet figure comes from


@dataclass(frozen=True, slots=True)
class Chargeback:
    start_ns: int
    end_ns: int
    cluster: str | None
    tenants: tuple[TenantReport, ...]  # sorted by tenant, `unallocated` included
    total: Figures  # over every tenant row
    meter: Figures  # from the MeterRows alone
    checks: tuple[Check, ...]
    prices: PriceList
    references: tuple[PriceList, ...]

    @property
    def reconciled(self) -> bool:
        return all(check.ok for check in self.checks)


def meter_figures(meters: Iterable[MeterRow], prices: PriceList, references: Sequence[PriceList] = ()) -> Figures:
    """The fleet's figures from its own meters (gpu, gpu_event and all of tenant_usage)."""
    meters = list(meters)
    by_model: dict[str, float] = defaultdict(float)
    for m in meters:
        by_model[m.model] += m.window_s
    energy_j = _sum_opt(m.energy_j for m in meters)
    return Figures(
        gpu_hours=math.fsum(m.window_s for m in meters) / S_PER_HOUR,
        busy_gpu_hours=math.fsum(m.busy_gpu_s for m in meters) / S_PER_HOUR,
        idle_gpu_hours=math.fsum(m.idle_gpu_s for m in meters) / S_PER_HOUR,
        energy_kwh=None if energy_j is None else energy_j / J_PER_KWH,
        peak_mem_bytes=_max_opt(m.peak_mem_bytes for m in meters),
        throttle_thermal_hours=math.fsum(m.throttle_thermal_s for m in meters) / S_PER_HOUR,
        throttle_power_hours=math.fsum(m.throttle_power_s for m in meters) / S_PER_HOUR,
        throttle_hw_slowdown_hours=math.fsum(m.throttle_hw_slowdown_s for m in meters) / S_PER_HOUR,
        faulted_gpu_hours=math.nan,  # no meter outside the tenant join
        incidents={"all": sum(m.events for m in meters)},
        cost=cost_of(by_model, energy_j, prices),
        reference_costs={ref.name: cost_of(by_model, energy_j, ref) for ref in references},
    )


def _close(a: float | None, b: float | None) -> bool:
    if a is None or b is None:
        return (a is None or a == 0) and (b is None or b == 0)
    return math.isclose(a, b, rel_tol=RELATIVE_TOLERANCE, abs_tol=ABSOLUTE_TOLERANCE)


def chargeback(
    start_ns: int,
    end_ns: int,
    rows: Sequence[UsageRow],
    meters: Sequence[MeterRow],
    prices: PriceList,
    references: Sequence[PriceList] = (),
    *,
    cluster: str | None = None,
    sources: str = "",
) -> Chargeback:
    """Every tenant's report (with `unallocated`), their total, and the checks against the meter."""
    by_tenant: dict[str, list[UsageRow]] = {UNALLOCATED: []}
    for row in rows:  # once, rather than every tenant's report reading every row
        by_tenant.setdefault(row.tenant, []).append(row)
    reports = tuple(
        tenant_report(name, start_ns, end_ns, by_tenant[name], prices, references, cluster=cluster, sources=sources)
        for name in sorted(by_tenant)
    )
    total = figures(rows, prices, references)
    meter = meter_figures(meters, prices, references)

    def sum_of(attr: str) -> float:
        return math.fsum(getattr(r.figures, attr) for r in reports)

    energy = _sum_opt(r.figures.energy_kwh for r in reports)
    checks = [
        Check("gpu_hours", sum_of("gpu_hours"), meter.gpu_hours, False, "sum of gpu.window_s"),
        Check("busy_gpu_hours", sum_of("busy_gpu_hours"), meter.busy_gpu_hours, False, "sum of tenant_usage.busy_gpu_s"),
        Check("idle_gpu_hours", sum_of("idle_gpu_hours"), meter.idle_gpu_hours, False, "sum of tenant_usage.idle_gpu_s"),
        Check("energy_kwh", energy, meter.energy_kwh, False, "sum of gpu.energy_j"),
        Check("throttle_thermal_hours", sum_of("throttle_thermal_hours"), meter.throttle_thermal_hours, False, "sum of gpu.throttle_thermal_s"),
        Check("throttle_power_hours", sum_of("throttle_power_hours"), meter.throttle_power_hours, False, "sum of gpu.throttle_power_s"),
        Check("throttle_hw_slowdown_hours", sum_of("throttle_hw_slowdown_hours"), meter.throttle_hw_slowdown_hours, False, "sum of gpu.throttle_hw_slowdown_s"),
        Check("cost", math.fsum(r.figures.cost.total for r in reports), meter.cost.total, False, "gpu.window_s by model and gpu.energy_j at [prices]"),
        *(
            Check(f"reference_cost[{ref.name}]", math.fsum(r.figures.reference_costs[ref.name].total for r in reports),
                  meter.reference_costs[ref.name].total, False, "as cost, at the reference prices")
            for ref in references
        ),
        Check("peak_mem_bytes", _max_opt(r.figures.peak_mem_bytes for r in reports), meter.peak_mem_bytes, False,
              "max of tenant_usage.peak_mem_bytes (a maximum, not a sum)"),
        Check("incidents", len(distinct_incidents(rows)), meter.incidents["all"], False,
              "count of gpu_event; each event counted once however many tenants shared its GPU"),
    ]
    checks = [replace(check, ok=_close(check.tenants, check.fleet)) for check in checks]
    return Chargeback(start_ns, end_ns, cluster, reports, total, meter, tuple(checks), prices, tuple(references))
