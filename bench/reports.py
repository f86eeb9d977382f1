"""A month of hourly rollups for a large fleet: how long the reports of every tenant take.

    python bench/reports.py [--gpus 10000] [--tenants 200] [--days 30] [--no-pdf]

Starts a local InfluxDB 1.6 (gpufleet/localstack.py) and fills it with --days of the hourly
rollup exactly as `gpufleet rollup` stores it (tenant_usage_hourly, fleet_hourly and the hour
markers, made by reports/rollup.py's own usage_line, meter_line and marker_line). The fleet:
--gpus GPUs of four models in two clusters; --tenants tenants with Zipf-skewed quotas over one to
three GPU pools, some busy around the clock, some by day, some leaving allocated GPUs idle
(waste); Slurm jobs and Kubernetes pods that run for hours to days; energy from busy and idle
power; throttling; XID, ECC, row-remap and lost-GPU incidents, some in windows shared by two
tenants. The load is timed and printed apart: it is not part of the goal.

Then `gpufleet report --all` for the month, once per format (html, csv, json and, unless
--no-pdf, pdf), through reports.main.run_report, the call the CLI makes. Stages are timed by
wrapping the functions run_report calls, so the code path stays the CLI's:
  query    rollup.collect: the InfluxQL queries and the rows built from their answers
  figures  model.chargeback: every tenant's figures and the reconciliation with the fleet meter
  render   main.render_files: every tenant's file written (PDF: laid out by worker processes
           forked for it, one per core)
  other    the rest of run_report (chargeback.csv)
Each with wall seconds, CPU seconds of this process and CPU seconds of influxd (/proc/PID/stat).
The PDF run adds the CPU seconds of the workers (reaped children, os.times).

Last, the files are checked against what was loaded: every tenant's GPU-hours, busy, idle, energy
and incidents in the JSON, CSV and HTML files, and their sums against the fleet's totals; and
each PDF's GPU-hours tile as a PDF reader (pypdf) reads it.

Goal (scale issue): a month of hourly rollups for 10,000 GPUs and 200 tenants reports in 10 s or
less. Prints figures, asserts nothing. On a shared machine, CPU seconds say what the work cost
and wall seconds what it took beside whatever else ran.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import math
import os
import random
import re
import tempfile
import time
import urllib.parse
import urllib.request
import zlib
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pypdf import PdfReader

from gpufleet import localstack
from gpufleet.reports import main as report_main
from gpufleet.reports.model import DAY_NS, HOUR_NS, J_PER_KWH, UNALLOCATED, Incident, MeterRow, UsageRow
from gpufleet.reports.rollup import marker_line, meter_line, usage_line
from gpufleet.reports.settings import ReportConfig, load_report_config

GOAL_S = 10.0
DB = "bench"
MS_PER_HOUR = 3_600_000
WINDOW_MS = 10_000  # the agent's default window: a GPU held for an hour is 360 tenant_usage points
GPUS_PER_NODE = 8
QUOTA_SHARE = 0.95  # of the fleet handed out to tenants as quotas; the rest is never allocated
ZIPF_S = 1.1  # tenant quotas fall off as 1 / rank^s: a few big labs, many small teams
INCIDENTS_PER_GPU_MONTH = 0.3
SHARED_WINDOW_CHANCE = 0.05  # an incident in a window two tenants shared
BATCH_BYTES = 8 << 20  # per /write; InfluxDB parses one batch while the next is made
FORMATS = ("html", "csv", "json")  # and "pdf", unless --no-pdf


@dataclass(frozen=True)
class Model:
    name: str
    short: str  # in node names
    mem_bytes: int
    busy_w: int
    idle_w: int
    price_per_gpu_hour: float


H100 = Model("NVIDIA H100 80GB HBM3", "h100", 80 << 30, 620, 75, 2.50)
A100 = Model("NVIDIA A100-SXM4-80GB", "a100", 80 << 30, 330, 55, 1.60)
L40S = Model("NVIDIA L40S", "l40s", 48 << 30, 300, 35, 0.90)
T4 = Model("Tesla T4", "t4", 16 << 30, 60, 10, 0.30)
# (cluster, model, share of the fleet's GPUs)
POOL_SHARES = (("east", H100, 0.40), ("east", A100, 0.20), ("west", H100, 0.20), ("west", L40S, 0.12), ("west", T4, 0.08))

XIDS = (  # (code, detail, weight): application faults are common, hardware ones rare
    (13, "Graphics Engine Exception", 30), (31, "GPU memory page fault", 25), (43, "GPU stopped processing", 20),
    (45, "Preemptive cleanup, due to previous errors", 8), (48, "Double Bit ECC Error", 1),
    (63, "ECC page retirement or row remapping recording event", 3), (74, "NVLink Error", 4),
    (79, "GPU has fallen off the bus", 2), (94, "Contained ECC error", 2), (95, "Uncontained ECC error", 1),
    (119, "GSP RPC timeout", 4),
)
OTHER_KINDS = (("ecc_dbe", "double-bit ECC error", 3), ("remap_failure", "row remapping failure", 2), ("gpu_lost", "GPU is lost", 3))


# --- the fleet -------------------------------------------------------------------------------


@dataclass
class Pool:
    cluster: str
    model: Model
    gpus: int
    quotas: dict[str, int] = field(default_factory=dict)  # tenant -> GPUs it may hold

    @property
    def node_prefix(self) -> str:
        return f"{self.cluster}-{self.model.short}-"


@dataclass(frozen=True)
class Tenant:
    name: str
    usage: float  # mean share of its quota held
    by_day: bool  # holds GPUs in working hours, few at night and at weekends
    efficiency: float  # busy / held: low for the tenants that leave GPUs idle
    job_gpus: int
    job_hours: int
    k8s: bool  # Kubernetes pods rather than Slurm jobs


def plan_pools(gpus: int) -> list[Pool]:
    counts = [int(gpus * share) // GPUS_PER_NODE * GPUS_PER_NODE for _, _, share in POOL_SHARES]
    counts[0] += gpus - sum(counts)
    return [Pool(cluster, model, count) for (cluster, model, _), count in zip(POOL_SHARES, counts)]


def plan_tenants(count: int, gpus: int, pools: list[Pool], rng: random.Random) -> list[Tenant]:
    """Tenants with Zipf-skewed quotas, each spread over one to three pools."""
    weights = [1 / (rank + 1) ** ZIPF_S for rank in range(count)]
    tenants = []
    for i, weight in enumerate(weights):
        quota = max(1, round(QUOTA_SHARE * gpus * weight / sum(weights)))
        wasteful = rng.random() < 0.1
        tenant = Tenant(
            f"team-{i:03d}", rng.uniform(0.65, 0.98), rng.random() < 0.3,
            rng.uniform(0.1, 0.35) if wasteful else rng.uniform(0.5, 0.95),
            min(quota, _job_size(quota, rng)), rng.choice((1, 2, 6, 12, 24, 72)), rng.random() < 0.3,
        )
        tenants.append(tenant)
        homes = _pick_pools(pools, 1 if quota < 64 else 2 if quota < 512 else 3, rng)
        home_gpus = sum(pool.gpus for pool in homes)
        for pool in homes:
            pool.quotas[tenant.name] = max(1, round(quota * pool.gpus / home_gpus))
    for pool in pools:
        _fit_quotas(pool)
    return tenants


def _job_size(quota: int, rng: random.Random) -> int:
    if quota < 8:
        return 1
    return rng.choice((1, 2, 4, 8)) if quota < 64 else rng.choice((8, 16, 32, 64))


def _pick_pools(pools: list[Pool], n: int, rng: random.Random) -> list[Pool]:
    """n distinct pools, bigger pools more likely."""
    left = list(pools)
    picked = []
    for _ in range(min(n, len(left))):
        pool = rng.choices(left, weights=[p.gpus for p in left])[0]
        left.remove(pool)
        picked.append(pool)
    return picked


def _fit_quotas(pool: Pool) -> None:
    """Quotas scaled down where a pool is oversubscribed, so tenants never hold more than it has."""
    total = sum(pool.quotas.values())
    limit = int(pool.gpus * 0.95)
    if total <= limit:
        return
    for name, quota in pool.quotas.items():
        pool.quotas[name] = max(1, quota * limit // total)
    if sum(pool.quotas.values()) > pool.gpus:
        raise SystemExit(f"{pool.gpus} GPUs of {pool.model.name} in {pool.cluster} are too few for {len(pool.quotas)} tenants")


# --- one hour of rollup rows -----------------------------------------------------------------


@dataclass
class Draft:
    """A UsageRow under construction: incidents arrive after the usage."""

    tenant: str
    gpu_ms: int
    busy_ms: int
    energy_mj: int
    peak_mem_bytes: int | None
    throttle: tuple[float, float, float]
    workloads: dict[str, dict[str, str]]
    faulted_ms: int = 0
    incidents: list[Incident] = field(default_factory=list)


@dataclass
class Expected:
    """What was loaded, in exact integers: what the reports must show."""

    gpu_ms: dict[str, int] = field(default_factory=dict)
    busy_ms: dict[str, int] = field(default_factory=dict)
    energy_mj: dict[str, int] = field(default_factory=dict)
    incidents: dict[str, set[tuple[Any, ...]]] = field(default_factory=dict)
    events: int = 0
    tenant_rows: int = 0
    meter_rows: int = 0

    def add(self, draft: Draft) -> None:
        name = draft.tenant
        self.gpu_ms[name] = self.gpu_ms.get(name, 0) + draft.gpu_ms
        self.busy_ms[name] = self.busy_ms.get(name, 0) + draft.busy_ms
        self.energy_mj[name] = self.energy_mj.get(name, 0) + draft.energy_mj
        self.incidents.setdefault(name, set()).update(i.key for i in draft.incidents)


class Fleet:
    def __init__(self, gpus: int, tenants: int, start_ns: int, days: int, seed: int) -> None:
        self.rng = random.Random(seed)
        self.gpus = gpus
        self.start_ns = start_ns
        self.hours = days * 24
        self.pools = plan_pools(gpus)
        self.tenants = {t.name: t for t in plan_tenants(tenants, gpus, self.pools, self.rng)}
        self.jobs: dict[tuple[str, int, int, int], int] = {}  # (tenant, pool, slot, epoch) -> job id
        self.events_by_hour = self._plan_events(days)
        self.expected = Expected()

    def _plan_events(self, days: int) -> dict[int, list[tuple[int, int, int, int]]]:
        """hour -> (pool, node, gpu, ms into the hour) of every incident, drawn up front."""
        count = round(self.gpus * INCIDENTS_PER_GPU_MONTH * days / 30)
        by_hour: dict[int, list[tuple[int, int, int, int]]] = {}
        for _ in range(count):
            pool = self.rng.choices(range(len(self.pools)), weights=[p.gpus for p in self.pools])[0]
            gpu = self.rng.randrange(self.pools[pool].gpus)
            event = (pool, gpu // GPUS_PER_NODE, gpu % GPUS_PER_NODE, self.rng.randrange(MS_PER_HOUR))
            by_hour.setdefault(self.rng.randrange(self.hours), []).append(event)
        return by_hour

    def lines(self) -> Iterator[str]:
        """Every rollup line, an hour at a time, in the order `gpufleet rollup` writes them."""
        for hour in range(self.hours):
            hour_ns = self.start_ns + hour * HOUR_NS
            drafts = [self._pool_hour(pool, i, hour, hour_ns) for i, pool in enumerate(self.pools)]
            events = self._attach_incidents(drafts, hour, hour_ns)
            rows = 0
            for pool, pool_drafts, pool_events in zip(self.pools, drafts, events):
                for draft in pool_drafts:
                    self.expected.add(draft)
                    yield usage_line(_usage_row(hour_ns, pool, draft))
                rows += len(pool_drafts)
                yield meter_line(_meter_row(hour_ns, pool, pool_drafts, pool_events))
            self.expected.tenant_rows += rows
            self.expected.meter_rows += len(self.pools)
            yield marker_line(hour_ns, rows)

    def _pool_hour(self, pool: Pool, index: int, hour: int, hour_ns: int) -> list[Draft]:
        drafts = []
        for name, quota in pool.quotas.items():
            held = self._held_share(self.tenants[name], hour_ns)
            if held > 0:
                drafts.append(self._tenant_draft(self.tenants[name], pool, index, hour, round(quota * held * MS_PER_HOUR)))
        free_ms = pool.gpus * MS_PER_HOUR - sum(d.gpu_ms for d in drafts)
        # A GPU nobody holds: unallocated, idle, no memory reading (as the collector writes it).
        drafts.append(Draft(UNALLOCATED, free_ms, 0, free_ms * pool.model.idle_w, None, (0.0, 0.0, 0.0), {}))
        return drafts

    def _held_share(self, tenant: Tenant, hour_ns: int) -> float:
        """The share of its quota a tenant holds this hour; 0: none (no row)."""
        day, hour_of_day = divmod(hour_ns // HOUR_NS, 24)
        working = (day + 3) % 7 < 5 and 8 <= hour_of_day < 20  # 1970-01-01 was a Thursday
        if tenant.by_day and not working:
            share = self.rng.uniform(0.0, 0.4)
            return share if share >= 0.1 else 0.0
        return min(1.0, tenant.usage * self.rng.uniform(0.85, 1.15))

    def _tenant_draft(self, tenant: Tenant, pool: Pool, index: int, hour: int, gpu_ms: int) -> Draft:
        model = pool.model
        busy_ms = min(gpu_ms, round(gpu_ms * tenant.efficiency * self.rng.uniform(0.85, 1.1)))
        energy_mj = busy_ms * model.busy_w + (gpu_ms - busy_ms) * model.idle_w  # W x ms = mJ
        busy_s = busy_ms / 1000
        throttle = (
            busy_s * self.rng.choice((0.0, 0.0, 0.0, 0.002, 0.01)),
            busy_s * self.rng.uniform(0.0, 0.03 if model is H100 else 0.005),
            busy_s * 0.001 if self.rng.random() < 0.01 else 0.0,
        )
        peak = int(model.mem_bytes * self.rng.uniform(0.3, 0.98))
        return Draft(tenant.name, gpu_ms, busy_ms, energy_mj, peak, throttle, self._workloads(tenant, index, hour, gpu_ms))

    def _workloads(self, tenant: Tenant, pool: int, hour: int, gpu_ms: int) -> dict[str, dict[str, str]]:
        """The jobs holding the tenant's GPUs this hour: one per job_gpus held, each running for
        job_hours (staggered, so some end and others start every hour)."""
        jobs = max(1, math.ceil(gpu_ms / MS_PER_HOUR / tenant.job_gpus))
        found = {}
        for slot in range(jobs):
            epoch = (hour + slot * 7) // tenant.job_hours
            job = self.jobs.setdefault((tenant.name, pool, slot, epoch), 1_000_000 + len(self.jobs))
            key, identity = _identity(tenant, slot, job)
            found[key] = identity
        return found

    def _attach_incidents(self, drafts: list[list[Draft]], hour: int, hour_ns: int) -> list[int]:
        """Each incident to the holder of its GPU's window (weighted by GPU time held), now and
        then to two tenants sharing the window; the events of each pool, for the meter."""
        events = [0] * len(self.pools)
        for pool_index, node, gpu, ms in self.events_by_hour.get(hour, []):
            pool, pool_drafts = self.pools[pool_index], drafts[pool_index]
            incident = Incident(hour_ns + ms * 1_000_000, pool.cluster, f"{pool.node_prefix}{node:04d}", str(gpu), *self._kind())
            holder = self.rng.choices(pool_drafts, weights=[d.gpu_ms for d in pool_drafts])[0]
            holders = [holder]
            others = [d for d in pool_drafts if d is not holder and d.tenant != UNALLOCATED]
            if holder.tenant != UNALLOCATED and others and self.rng.random() < SHARED_WINDOW_CHANCE:
                holders.append(self.rng.choice(others))
            shares = [WINDOW_MS] if len(holders) == 1 else [WINDOW_MS * 6 // 10, WINDOW_MS * 4 // 10]
            for draft, faulted_ms in zip(holders, shares):
                draft.incidents.append(incident)
                draft.faulted_ms += faulted_ms
            events[pool_index] += 1
            self.expected.events += 1
        return events

    def _kind(self) -> tuple[str, int, str]:
        choices = [("xid", code, detail, weight) for code, detail, weight in XIDS] + [(k, 0, d, w) for k, d, w in OTHER_KINDS]
        kind, code, detail, _ = self.rng.choices(choices, weights=[c[3] for c in choices])[0]
        return kind, code, detail


def _identity(tenant: Tenant, slot: int, job: int) -> tuple[str, dict[str, str]]:
    """A workload key and identity as the agent makes them (agent/identity.py)."""
    if tenant.k8s:
        pod_uid = f"{job:08x}-{slot % 0xFFFF:04x}-4000-8000-{zlib.crc32(tenant.name.encode()):012x}"
        container = f"{job * 2654435761 % (1 << 256):064x}"
        return f"k8s:{pod_uid}/{container[:12]}", {"kind": "k8s_pod", "pod_uid": pod_uid, "container": container, "namespace": tenant.name}
    return f"slurm:{job}", {
        "kind": "slurm_job", "job": str(job), "step": "0", "account": tenant.name,
        "user": f"{tenant.name}-u{slot % 5}", "partition": "gpu",
    }


def _usage_row(hour_ns: int, pool: Pool, d: Draft) -> UsageRow:
    return UsageRow(
        hour_ns, pool.cluster, pool.model.name, d.tenant, d.gpu_ms / 1000, d.busy_ms / 1000, (d.gpu_ms - d.busy_ms) / 1000,
        d.energy_mj / 1000, d.peak_mem_bytes, math.ceil(d.gpu_ms / WINDOW_MS), *d.throttle, d.faulted_ms / 1000,
        dict(sorted(d.workloads.items())), tuple(sorted(d.incidents, key=lambda i: i.key)),
    )


def _meter_row(hour_ns: int, pool: Pool, drafts: list[Draft], events: int) -> MeterRow:
    """The fleet's own meter for the pool-hour: every GPU measured all hour."""
    gpu_ms = sum(d.gpu_ms for d in drafts)
    busy_ms = sum(d.busy_ms for d in drafts)
    peaks = [d.peak_mem_bytes for d in drafts if d.peak_mem_bytes is not None]
    return MeterRow(
        hour_ns, pool.cluster, pool.model.name, pool.gpus * MS_PER_HOUR / 1000, sum(d.energy_mj for d in drafts) / 1000,
        *(math.fsum(d.throttle[i] for d in drafts) for i in range(3)),
        gpu_ms / 1000, busy_ms / 1000, (gpu_ms - busy_ms) / 1000, max(peaks, default=None), events,
    )


# --- loading ---------------------------------------------------------------------------------


class BulkWriter:
    """Lines to influxd's own /write in batches of BATCH_BYTES, two posts in flight, so that
    InfluxDB parses one batch on the other core while this one makes the next."""

    def __init__(self, url: str, database: str) -> None:
        self._url = f"{url}/write?{urllib.parse.urlencode({'db': database, 'precision': 'ns'})}"
        self._pool = ThreadPoolExecutor(2)
        self._pending: deque[Future[None]] = deque()
        self._batch: list[str] = []
        self._size = 0
        self.lines = self.bytes = 0

    def add(self, line: str) -> None:
        self._batch.append(line)
        self._size += len(line) + 1
        if self._size >= BATCH_BYTES:
            self._flush()

    def close(self) -> None:
        if self._batch:
            self._flush()
        while self._pending:
            self._pending.popleft().result()
        self._pool.shutdown()

    def _flush(self) -> None:
        body = "\n".join(self._batch).encode()
        self.lines += len(self._batch)
        self.bytes += len(body)
        self._batch, self._size = [], 0
        self._pending.append(self._pool.submit(self._post, body))
        if len(self._pending) > 2:
            self._pending.popleft().result()

    def _post(self, body: bytes) -> None:
        request = urllib.request.Request(self._url, data=body, method="POST")
        with urllib.request.urlopen(request, timeout=600) as response:
            if response.status != 204:
                raise RuntimeError(f"/write answered {response.status}: {response.read()[:500]!r}")


# --- measuring -------------------------------------------------------------------------------


def influxd_pid(influx: localstack.InfluxDB) -> int:
    """The influxd started for `influx`: the process whose command line names its config file."""
    config = str(influx.influxd_conf).encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if config in argv and argv[0].endswith(b"influxd"):
            return int(entry.name)
    raise SystemExit("cannot find the influxd this benchmark started")


def process_cpu_s(pid: int) -> float:
    """utime + stime of a process (fields 14 and 15 of /proc/PID/stat, after the command name)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Cost:
    wall_s: float = 0.0
    cpu_s: float = 0.0  # this process, all threads
    influx_cpu_s: float = 0.0
    children_cpu_s: float = 0.0  # reaped child processes: the PDF run's workers

    def __add__(self, other: Cost) -> Cost:
        return Cost(self.wall_s + other.wall_s, self.cpu_s + other.cpu_s, self.influx_cpu_s + other.influx_cpu_s,
                    self.children_cpu_s + other.children_cpu_s)

    def __sub__(self, other: Cost) -> Cost:
        return Cost(self.wall_s - other.wall_s, self.cpu_s - other.cpu_s, self.influx_cpu_s - other.influx_cpu_s,
                    self.children_cpu_s - other.children_cpu_s)

    def text(self) -> str:
        children = f"  reaped children CPU {self.children_cpu_s:6.2f} s" if self.children_cpu_s else ""
        return f"wall {self.wall_s:6.2f} s  CPU {self.cpu_s:6.2f} s  influxd CPU {self.influx_cpu_s:6.2f} s{children}"


class Meter:
    def __init__(self, influx_pid: int) -> None:
        self._pid = influx_pid

    def now(self) -> Cost:
        times = os.times()
        return Cost(time.perf_counter(), time.process_time(), process_cpu_s(self._pid), times.children_user + times.children_system)

    @contextlib.contextmanager
    def measure(self) -> Iterator[Cost]:
        """A Cost filled in when the block ends."""
        cost = Cost()
        before = self.now()
        try:
            yield cost
        finally:
            spent = self.now() - before
            cost.wall_s, cost.cpu_s, cost.influx_cpu_s, cost.children_cpu_s = (
                spent.wall_s, spent.cpu_s, spent.influx_cpu_s, spent.children_cpu_s)

    def wait_idle(self, quiet_s: float = 2.0, limit_s: float = 300.0) -> float:
        """Wait until influxd has used under 5 % of a core for quiet_s (its compactions after a
        bulk load would otherwise land in the report's figures); the seconds waited."""
        began = time.monotonic()
        while time.monotonic() - began < limit_s:
            before = process_cpu_s(self._pid)
            time.sleep(quiet_s)
            if process_cpu_s(self._pid) - before < 0.05 * quiet_s:
                break
        return time.monotonic() - began


STAGES = {"query": "collect", "figures": "chargeback", "render": "render_files"}  # stage -> what run_report calls


@contextlib.contextmanager
def stages_timed(meter: Meter) -> Iterator[dict[str, Cost]]:
    """Time the functions run_report calls, summed per stage, while the block runs."""
    costs = {stage: Cost() for stage in STAGES}
    originals = {name: getattr(report_main, name) for name in STAGES.values()}

    def timed(stage: str, function: Callable[..., Any]) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            with meter.measure() as cost:
                result = function(*args, **kwargs)
            costs[stage] += cost
            return result
        return call

    try:
        for stage, name in STAGES.items():
            setattr(report_main, name, timed(stage, originals[name]))
        yield costs
    finally:
        for name, function in originals.items():
            setattr(report_main, name, function)


# --- the run ---------------------------------------------------------------------------------


def report_config(url: str) -> ReportConfig:
    prices = {m.name: m.price_per_gpu_hour for m in (H100, A100, L40S, T4)}
    return load_report_config(None, {
        "influx": {"url": url, "database": DB},
        "prices": {"label": "bench rates", "currency": "EUR", "per_kwh": 0.25, "per_gpu_hour": prices},
    })


def run_formats(config: ReportConfig, meter: Meter, start: str, end: str, out: Path, formats: tuple[str, ...]) -> None:
    """`gpufleet report --all` once per format."""
    print(f"gpufleet report --all --from {start} --to {end} (reports.main.run_report), per format:")
    totals = {}
    for fmt in formats:
        with stages_timed(meter) as costs, meter.measure() as total:
            run = report_main.run_report(config, start=start, end=end, fmt=fmt, out=out / fmt, all_tenants=True)  # type: ignore[arg-type]
        totals[fmt] = total
        other = total - costs["query"] - costs["figures"] - costs["render"]
        print(f"  --format {fmt:<4} {len(run.files) - 1} reports + chargeback.csv, {run.sources}, reconciled: {run.reconciled}")
        for stage, cost in (*costs.items(), ("other", other)):
            print(f"    {stage:<8} {cost.text()}")
        print(f"    total    {total.text()}   {total.wall_s / GOAL_S:.2f} x the goal")
        if fmt == "pdf":
            files = [path for path in run.files if path.suffix == ".pdf"]
            print(f"    {sum(path.stat().st_size for path in files) / len(files) / 1000:,.0f} kB a file on average, "
                  f"largest {max(path.stat().st_size for path in files) / 1000:,.0f} kB")
    slowest = max(totals, key=lambda fmt: totals[fmt].wall_s)
    verdict = "met" if totals[slowest].wall_s <= GOAL_S else "NOT met"
    print(f"  goal {GOAL_S:g} s per run: {verdict} (slowest: --format {slowest}, {totals[slowest].wall_s:.2f} s wall, "
          f"{totals[slowest].cpu_s:.2f} s CPU here + {totals[slowest].influx_cpu_s:.2f} s influxd)")


def run_one_tenant(config: ReportConfig, meter: Meter, start: str, end: str, tenant: str, out: Path) -> None:
    with meter.measure() as cost:
        report_main.run_report(config, start=start, end=end, fmt="json", out=out / f"{tenant}.json", tenant=tenant)
    print(f"  --tenant {tenant} (the largest) --format json: {cost.text()}")


# --- checking the files ----------------------------------------------------------------------


def _close(got: float, want: float) -> bool:
    """Float sums of exact milliseconds and millijoules: equal to the last bits, not more."""
    return math.isclose(got, want, rel_tol=1e-12, abs_tol=1e-12)


def _shown(text: str, want: float, decimals: int) -> bool:
    """A figure printed with `decimals` decimals is the loaded one, rounded."""
    return abs(float(text) - want) <= 0.5 * 10**-decimals + 1e-9


def check_json(folder: Path, expected: Expected) -> list[str]:
    bad = []
    total = 0.0
    for tenant, gpu_ms in sorted(expected.gpu_ms.items()):
        f = json.loads((folder / f"{tenant}.json").read_text())["figures"]
        total += f["gpu_hours"]
        want = {
            "gpu_hours": gpu_ms / MS_PER_HOUR, "busy_gpu_hours": expected.busy_ms[tenant] / MS_PER_HOUR,
            "idle_gpu_hours": (gpu_ms - expected.busy_ms[tenant]) / MS_PER_HOUR,
            "energy_kwh": expected.energy_mj[tenant] / 1000 / J_PER_KWH,
        }
        bad += [f"{tenant} {name}: {f[name]} != {value}" for name, value in want.items() if not _close(f[name], value)]
        if sum(f["incidents"].values()) != len(expected.incidents[tenant]):
            bad.append(f"{tenant} incidents: {f['incidents']} != {len(expected.incidents[tenant])}")
    fleet = sum(expected.gpu_ms.values()) / MS_PER_HOUR
    print(f"  JSON: sum of GPU-hours over {len(expected.gpu_ms)} tenants {total:,.6f}, loaded {fleet:,.6f}: "
          f"{'OK' if _close(total, fleet) else 'MISMATCH'}")
    return bad if _close(total, fleet) else [*bad, f"sum of GPU-hours {total} != {fleet}"]


def check_csv(folder: Path, expected: Expected) -> list[str]:
    with (folder / report_main.CHARGEBACK_FILE).open() as file:
        rows = list(csv.reader(file))
    by_name = {row[0]: row for row in rows[1:]}
    bad = [f"chargeback.csv {row[0]} gpu_hours {row[1]}, loaded {expected.gpu_ms[row[0]] / MS_PER_HOUR}" for row in rows[1:]
           if row[0] in expected.gpu_ms and not _shown(row[1], expected.gpu_ms[row[0]] / MS_PER_HOUR, 6)]
    for tenant, gpu_ms in expected.gpu_ms.items():
        with (folder / f"{tenant}.csv").open() as file:
            last = list(csv.reader(file))[-1]
        if last[0] != "total" or not _shown(last[1], gpu_ms / MS_PER_HOUR, 6):
            bad.append(f"{tenant}.csv total {last[:2]}, loaded {gpu_ms / MS_PER_HOUR}")
    incidents = int(by_name["fleet total"][15])
    print(f"  CSV: chargeback.csv fleet total {float(by_name['fleet total'][1]):,.6f} GPU-h, fleet meter "
          f"{float(by_name['fleet meter'][1]):,.6f}, incidents {incidents} (loaded {expected.events}); "
          f"last line: {rows[-1][0]} {rows[-1][1]}")
    if incidents != expected.events or rows[-1][1] != "OK":
        bad.append(f"chargeback.csv: incidents {incidents} vs {expected.events}, {rows[-1][:2]}")
    return bad


_TILE = re.compile(r'<div class="v">([0-9,.]+)</div><div class="k">GPU-hours allocated</div>')


def check_html(folder: Path, expected: Expected) -> list[str]:
    bad = []
    for tenant, gpu_ms in expected.gpu_ms.items():
        found = _TILE.search((folder / f"{tenant}.html").read_text())
        if not found or not _shown(found.group(1).replace(",", ""), gpu_ms / MS_PER_HOUR, 2):
            bad.append(f"{tenant}.html shows {found and found.group(1)} GPU-hours, loaded {gpu_ms / MS_PER_HOUR}")
    return bad


_PDF_TILE = re.compile(r"^([0-9,.]+)\nGPU-hours allocated$", re.MULTILINE)


def check_pdf(folder: Path, expected: Expected) -> list[str]:
    """The GPU-hours tile as a PDF reader (pypdf) extracts the text of the first page."""
    bad = []
    for tenant, gpu_ms in expected.gpu_ms.items():
        found = _PDF_TILE.search(PdfReader(folder / f"{tenant}.pdf").pages[0].extract_text())
        if not found or not _shown(found.group(1).replace(",", ""), gpu_ms / MS_PER_HOUR, 2):
            bad.append(f"{tenant}.pdf shows {found and found.group(1)} GPU-hours, loaded {gpu_ms / MS_PER_HOUR}")
    return bad


def check(out: Path, expected: Expected) -> None:
    print("check against what was loaded (GPU-hours, busy, idle, energy, incidents of every tenant):")
    bad = check_json(out / "json", expected) + check_csv(out / "csv", expected) + check_html(out / "html", expected)
    shown = "JSON figures, CSV totals, HTML tile"
    if (out / "pdf").is_dir():
        bad += check_pdf(out / "pdf", expected)
        shown += ", PDF tile"
    tenants = len(expected.gpu_ms)
    print(f"  {tenants} tenants x ({shown}): {'all as loaded' if not bad else f'{len(bad)} MISMATCHES'}")
    for line in bad[:10]:
        print(f"    {line}")


# --- main ------------------------------------------------------------------------------------


def load(fleet: Fleet, influx: localstack.InfluxDB, meter: Meter) -> None:
    writer = BulkWriter(influx.direct_url, DB)
    with meter.measure() as cost:
        for line in fleet.lines():
            writer.add(line)
        writer.close()
    e = fleet.expected
    print(f"load: {writer.lines:,} points ({e.tenant_rows:,} tenant rows, {e.meter_rows:,} fleet rows, {fleet.hours} markers), "
          f"{writer.bytes / 1e6:,.0f} MB of line protocol, {len(fleet.jobs):,} jobs, {e.events:,} incidents")
    print(f"      {cost.text()}  ({writer.lines / cost.wall_s:,.0f} points/s; not part of the goal)")
    print(f"      InfluxDB idle again after {meter.wait_idle():.0f} s (compactions)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gpus", type=int, default=10_000)
    parser.add_argument("--tenants", type=int, default=200)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--start", default="2026-10-01", help="first day (UTC)")
    parser.add_argument("--no-pdf", action="store_true", help="skip --format pdf")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()

    start_ns = report_main.parse_time(args.start)
    start, end = args.start, time.strftime("%Y-%m-%d", time.gmtime((start_ns + args.days * DAY_NS) // 1_000_000_000))
    fleet = Fleet(args.gpus, args.tenants, start_ns, args.days, args.seed)
    quotas = sorted((sum(p.quotas.get(t, 0) for p in fleet.pools) for t in fleet.tenants), reverse=True)
    print(f"{args.gpus:,} GPUs in {len(fleet.pools)} pools ({', '.join(f'{p.cluster}/{p.model.name} {p.gpus}' for p in fleet.pools)}), "
          f"{args.tenants} tenants (quotas {quotas[0]} ... {quotas[len(quotas) // 2]} ... {quotas[-1]} GPUs), "
          f"{args.days} days of hourly rollup; load average {os.getloadavg()[0]:.2f}, {os.cpu_count()} cores")
    with tempfile.TemporaryDirectory(prefix="gpufleet-bench-reports-") as tmp, localstack.InfluxDB(Path(tmp)) as influx:
        influx.create_database(DB)
        meter = Meter(influxd_pid(influx))
        load(fleet, influx, meter)
        config = report_config(influx.direct_url)
        out = Path(tmp) / "reports"
        run_formats(config, meter, start, end, out, FORMATS if args.no_pdf else (*FORMATS, "pdf"))
        largest = max(fleet.expected.gpu_ms, key=lambda t: (t != UNALLOCATED, fleet.expected.gpu_ms[t]))
        run_one_tenant(config, meter, start, end, largest, out)
        check(out, fleet.expected)
    print(f"load average at the end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
