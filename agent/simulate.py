"""Simulated GPUs: a GpuSource for machines without GPUs (demos, load tests, `--simulate N`).

Tenants' jobs come and go (Slurm jobs billed to a Slurm account, Kubernetes pods in a namespace
named after the tenant): jobs take 1-8 GPUs, some sit allocated without running anything (idle
waste, visible only through the job mapping), and small inference pods share busy GPUs. A GPU's
utilisation follows the phase of what runs on it (inference, training) or is 0; power follows
utilisation with noise and short spikes, temperature follows power with a lag, the energy counter
integrates the power actually drawn over the time that actually passed, and rare ECC corrections
and XID events occur. Seeded, so a run can be replayed.

`truth` records, per sample and GPU, which tenant should pay which fraction of that sample's
time: the ground truth that attribution in the collector is checked against.
"""

from __future__ import annotations

import random
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

from .readings import GpuEvent, GpuProcess, GpuReading

DEFAULT_TENANTS = ("lab-a", "lab-b", "lab-c", "lab-d")
UNALLOCATED = "unallocated"

# (model, power limit W, idle W, memory bytes, SM max MHz, memory MHz)
_MODELS = {
    "h100": ("NVIDIA H100 80GB HBM3", 700, 72, 80 * 1024**3, 1980, 2619),
    "a100": ("NVIDIA A100-SXM4-80GB", 400, 55, 80 * 1024**3, 1410, 1593),
}
# (name, utilisation range %, mean phase length s)
_PHASES = (("idle", (0, 0), 120.0), ("inference", (25, 70), 300.0), ("training", (88, 100), 900.0))
_XID_CODES = (13, 31, 43, 48, 63, 74, 79, 94)  # the ones an SRE sees most (NVIDIA XID catalogue)

# Clock-event reason bits (nvml.h nvmlClocksEventReason*)
_IDLE, _SW_POWER_CAP, _SW_THERMAL = 0x1, 0x4, 0x20


@dataclass
class _SimGpu:
    index: int
    uuid: str
    model: str
    limit_w: float
    idle_w: float
    mem_total: int
    sm_mhz: int
    mem_mhz: int
    phase: str = "idle"
    phase_until: float = 0.0
    holders: list[tuple[_Job, int]] = field(default_factory=list)  # (job, SM weight) of running jobs
    util: float = 0.0
    temp_c: float = 35.0
    energy_mj: int = 0
    ecc_corrected: int = 0
    pcie_tx: int = 0
    pcie_rx: int = 0
    last_t: float | None = None


@dataclass(eq=False)
class _Job:
    job_id: int
    tenant: str
    kind: str  # slurm_job | k8s_pod
    gpus: list[int]
    idle: bool  # allocated, nothing runs: the tenant pays for an idle GPU
    ends_after: int  # samples left
    pids: dict[int, int] = field(default_factory=dict)  # GPU index -> pid

    def identity(self, node: str) -> dict[str, Any]:
        if self.kind == "slurm_job":
            return {
                "kind": "slurm_job", "job": str(self.job_id), "step": "0",
                "account": self.tenant, "user": f"{self.tenant}-user", "partition": "gpu",
            }
        pod_uid = f"{zlib.crc32(f'{node}/{self.job_id}'.encode()):08x}-0000-4000-8000-{self.job_id:012x}"
        return {"kind": "k8s_pod", "pod_uid": pod_uid, "container": f"{self.job_id:064x}"[:64], "namespace": self.tenant}


class _Scheduler:
    """Tenants' jobs on one node's GPUs, changed once per sample."""

    def __init__(self, node: str, rng: random.Random, tenants: Sequence[str], gpu_count: int) -> None:
        self._node = node
        self._rng = rng
        self._tenants = tenants
        self._gpu_count = gpu_count
        self._next_job = zlib.crc32(node.encode()) % 100_000 * 1000
        self._next_pid = 10_000
        self.jobs: list[_Job] = []
        self.pids: dict[int, _Job] = {}

    def step(self) -> None:
        for job in list(self.jobs):
            job.ends_after -= 1
            if job.ends_after <= 0:
                self._end(job)
        if self._tenants:
            self._start_jobs()

    def _end(self, job: _Job) -> None:
        self.jobs.remove(job)
        for pid in job.pids.values():
            self.pids.pop(pid, None)

    def _start_jobs(self) -> None:
        allocated = {gpu for job in self.jobs for gpu in job.gpus}
        free = [g for g in range(self._gpu_count) if g not in allocated]
        if free and self._rng.random() < 0.3:
            size = min(len(free), self._rng.choice((1, 1, 2, 4, 8)))
            self._start(self._rng.sample(free, size), idle=self._rng.random() < 0.2)
        running_alone = [g for g in allocated if sum(1 for j in self.jobs if g in j.gpus and not j.idle) == 1]
        if running_alone and self._rng.random() < 0.1:
            self._start([self._rng.choice(running_alone)], idle=False, kind="k8s_pod")

    def _start(self, gpus: list[int], *, idle: bool, kind: str | None = None) -> None:
        self._next_job += 1
        job = _Job(
            self._next_job,
            self._rng.choice(self._tenants),
            kind or self._rng.choice(("slurm_job", "slurm_job", "k8s_pod")),
            sorted(gpus),
            idle,
            max(1, round(self._rng.expovariate(1 / 30))),
        )
        if not idle:
            for gpu in job.gpus:
                self._next_pid += 1
                job.pids[gpu] = self._next_pid
                self.pids[self._next_pid] = job
        self.jobs.append(job)

    def running_on(self, gpu: int) -> list[_Job]:
        return [job for job in self.jobs if gpu in job.pids]

    def allocated_to(self, gpu: int) -> list[_Job]:
        return [job for job in self.jobs if gpu in job.gpus]


def _uuid_for(node: str, index: int) -> str:
    digest = f"{zlib.crc32(node.encode()):08x}{index:04x}{zlib.crc32(f'{node}/{index}'.encode()):08x}"
    return f"GPU-{digest[:8]}-{digest[8:12]}-{digest[12:16]}-{digest[16:20]}-{digest[:12]}"


class SimulatedGpuSource:
    def __init__(
        self,
        node: str,
        gpu_count: int,
        *,
        seed: int | None = None,
        model: str = "h100",
        xid_rate_per_gpu_hour: float = 0.5,
        tenants: Sequence[str] = DEFAULT_TENANTS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.node = node
        self._rng = random.Random(seed if seed is not None else zlib.crc32(node.encode()))
        self._scheduler = _Scheduler(node, self._rng, tuple(tenants), gpu_count)
        self.truth: list[dict[int, dict[str, Fraction]]] = []  # per sample: GPU -> tenant -> share
        self._clock = clock
        self._xid_rate_per_s = xid_rate_per_gpu_hour / 3600
        name, limit, idle, mem, sm, memclk = _MODELS[model]
        self._gpus = [_SimGpu(i, _uuid_for(node, i), name, limit, idle, mem, sm, memclk) for i in range(gpu_count)]
        self._events: list[GpuEvent] = []

    def sample(self) -> list[GpuReading]:
        now = self._clock()
        self._scheduler.step()
        readings = [self._sample_gpu(gpu, now) for gpu in self._gpus]
        self.truth.append({gpu.index: self._truth(gpu.index) for gpu in self._gpus})
        return readings

    def identity_of(self, pid: int) -> dict[str, Any]:
        """What /proc would say of a simulated process (the agent's identity resolver)."""
        job = self._scheduler.pids.get(pid)
        if job is None:
            return {"pid": pid, "kind": None, "error": "no such process"}
        return {"pid": pid, **job.identity(self.node)}

    def allocations(self) -> dict[int, list[dict[str, Any]]]:
        """What a job-mapping directory would say: GPU index -> identities of the jobs holding it."""
        return {
            gpu.index: [{"pid": None, **job.identity(self.node)} for job in jobs]
            for gpu in self._gpus
            if (jobs := self._scheduler.allocated_to(gpu.index))
        }

    def _truth(self, index: int) -> dict[str, Fraction]:
        running = self._scheduler.running_on(index)
        if running:
            weights = {job: weight for job, weight in self._gpus[index].holders}
            total = sum(weights.values())
            shares: dict[str, Fraction] = {}
            for job in running:
                shares[job.tenant] = shares.get(job.tenant, Fraction(0)) + Fraction(weights[job], total)
            return shares
        owners = self._scheduler.allocated_to(index)
        if owners:  # allocated, idle: split equally among the jobs holding it
            shares = {}
            for job in owners:
                shares[job.tenant] = shares.get(job.tenant, Fraction(0)) + Fraction(1, len(owners))
            return shares
        return {UNALLOCATED: Fraction(1)}

    def poll_events(self) -> list[GpuEvent]:
        events, self._events = self._events, []
        return events

    def close(self) -> None:
        pass

    def _sample_gpu(self, gpu: _SimGpu, now: float) -> GpuReading:
        dt = 0.0 if gpu.last_t is None else max(0.0, now - gpu.last_t)
        gpu.last_t = now
        self._advance_phase(gpu, now)
        power_w = self._power(gpu)
        gpu.energy_mj += round(power_w * dt * 1000)
        # first-order thermal lag towards the temperature this power settles at
        settle = 28 + power_w * 0.075
        gpu.temp_c += (settle - gpu.temp_c) * min(1.0, dt / 30) if dt else 0
        gpu.pcie_tx += int(gpu.util * dt * 2e7 * self._rng.random())
        gpu.pcie_rx += int(gpu.util * dt * 4e7 * self._rng.random())
        self._rare_errors(gpu, dt, now)
        return GpuReading(gpu.index, gpu.uuid, gpu.model, self._values(gpu, power_w), self._processes(gpu))

    def _processes(self, gpu: _SimGpu) -> list[GpuProcess]:
        total = sum(weight for _, weight in gpu.holders)
        return [
            GpuProcess(job.pids[gpu.index], int(gpu.mem_total * 0.8 * weight / total), gpu.util * weight / total)
            for job, weight in gpu.holders
        ]

    def _advance_phase(self, gpu: _SimGpu, now: float) -> None:
        if self._scheduler._tenants:
            self._follow_jobs(gpu)
        if now >= gpu.phase_until:
            name, (low, high), mean_s = self._rng.choice(_PHASES)
            if self._scheduler._tenants:  # with tenants, what runs decides whether the GPU is busy
                name, (low, high), mean_s = (_PHASES[2] if len(gpu.holders) == 1 else _PHASES[1]) if gpu.holders else _PHASES[0]
            gpu.phase, gpu.phase_until = name, now + self._rng.expovariate(1 / mean_s)
            gpu.util = self._rng.uniform(low, high)
        if gpu.phase != "idle":
            gpu.util = min(100.0, max(1.0, gpu.util + self._rng.gauss(0, 3)))

    def _follow_jobs(self, gpu: _SimGpu) -> None:
        """Keep the GPU's holders (and SM weights) in step with the jobs running on it."""
        running = self._scheduler.running_on(gpu.index)
        before = {job for job, _ in gpu.holders}
        if set(running) != before:
            gpu.holders = [(job, self._rng.randint(1, 4)) for job in running]
            gpu.phase_until = 0.0  # what runs changed: pick a new phase now

    def _power(self, gpu: _SimGpu) -> float:
        power = gpu.idle_w + (gpu.limit_w - gpu.idle_w) * (gpu.util / 100) ** 1.3 * self._rng.uniform(0.9, 1.02)
        if gpu.phase == "training" and self._rng.random() < 0.05:
            power *= 1.08  # optimizer steps draw short spikes that the window's max must show
        return min(power, gpu.limit_w)

    def _rare_errors(self, gpu: _SimGpu, dt: float, now: float) -> None:
        if self._rng.random() < dt / 1800:
            gpu.ecc_corrected += 1
        if self._rng.random() < dt * self._xid_rate_per_s:
            code = self._rng.choice(_XID_CODES)
            self._events.append(GpuEvent(gpu.index, gpu.uuid, "xid", code, int(now * 1000), f"simulated XID {code}"))

    def _values(self, gpu: _SimGpu, power_w: float) -> dict[str, int]:
        busy = gpu.util > 0
        reasons = (0 if busy else _IDLE) | (_SW_POWER_CAP if power_w >= gpu.limit_w * 0.98 else 0)
        reasons |= _SW_THERMAL if gpu.temp_c > 83 else 0
        used = int(gpu.mem_total * (0.05 + 0.85 * gpu.util / 100)) if busy else 512 * 1024**2
        return {
            "power_mw": round(power_w * 1000),
            "power_limit_mw": int(gpu.limit_w * 1000),
            "energy_mj": gpu.energy_mj,
            "temp_gpu_c": round(gpu.temp_c),
            "temp_mem_c": round(gpu.temp_c + 6),
            "temp_slowdown_c": 87,
            "temp_shutdown_c": 92,
            "util_gpu_pct": round(gpu.util),
            "util_mem_pct": round(gpu.util * 0.6),
            "util_enc_pct": 0,
            "util_dec_pct": 0,
            "mem_used_bytes": used,
            "mem_total_bytes": gpu.mem_total,
            "clock_sm_mhz": gpu.sm_mhz if busy else 345,
            "clock_mem_mhz": gpu.mem_mhz,
            "ecc_corrected_volatile": gpu.ecc_corrected,
            "ecc_uncorrected_volatile": 0,
            "ecc_corrected_aggregate": gpu.ecc_corrected,
            "ecc_uncorrected_aggregate": 0,
            "remap_correctable": 0,
            "remap_uncorrectable": 0,
            "remap_pending": 0,
            "remap_failure": 0,
            "clock_event_reasons": reasons,
            "pcie_tx_bytes": gpu.pcie_tx,
            "pcie_rx_bytes": gpu.pcie_rx,
            "pcie_replays": 0,
        }
