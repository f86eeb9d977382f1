"""Simulated GPUs: a GpuSource for machines without GPUs (demos, load tests, `--simulate N`).

Each GPU runs a workload that changes phase now and then (idle, inference, training); power
follows utilisation with noise and short spikes, temperature follows power with a lag, the energy
counter integrates the power actually drawn over the time that actually passed, and rare ECC
corrections and XID events occur. Seeded, so a run can be replayed.
"""

from __future__ import annotations

import random
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass

from .readings import GpuEvent, GpuReading

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
    util: float = 0.0
    temp_c: float = 35.0
    energy_mj: int = 0
    ecc_corrected: int = 0
    pcie_tx: int = 0
    pcie_rx: int = 0
    last_t: float | None = None


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
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._rng = random.Random(seed if seed is not None else zlib.crc32(node.encode()))
        self._clock = clock
        self._xid_rate_per_s = xid_rate_per_gpu_hour / 3600
        name, limit, idle, mem, sm, memclk = _MODELS[model]
        self._gpus = [_SimGpu(i, _uuid_for(node, i), name, limit, idle, mem, sm, memclk) for i in range(gpu_count)]
        self._events: list[GpuEvent] = []

    def sample(self) -> list[GpuReading]:
        now = self._clock()
        return [self._sample_gpu(gpu, now) for gpu in self._gpus]

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
        return GpuReading(gpu.index, gpu.uuid, gpu.model, self._values(gpu, power_w))

    def _advance_phase(self, gpu: _SimGpu, now: float) -> None:
        if now >= gpu.phase_until:
            name, (low, high), mean_s = self._rng.choice(_PHASES)
            gpu.phase, gpu.phase_until = name, now + self._rng.expovariate(1 / mean_s)
            gpu.util = self._rng.uniform(low, high)
        if gpu.phase != "idle":
            gpu.util = min(100.0, max(0.0, gpu.util + self._rng.gauss(0, 3)))

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
