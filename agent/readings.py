"""What a GPU source (real NVML or the simulator) hands the agent: plain values, no library types.

Raw reading names and units are the `source` column of gpufleet/metrics.csv (power_mw, energy_mj,
util_gpu_pct, ...). A reading that the GPU does not support, or that failed this sample, is
absent from `values` -- never zero.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True, slots=True)
class GpuProcess:
    pid: int
    used_memory_bytes: int | None  # None: the driver does not say (e.g. under MIG without access)
    sm_util_pct: float | None  # mean SM share of this process since the last sample; None: no samples


@dataclass(slots=True)
class GpuReading:
    index: int
    uuid: str
    model: str
    values: dict[str, int]  # raw reading name -> integer value in that reading's unit
    processes: list[GpuProcess] = field(default_factory=list)
    mig_instances: list["GpuReading"] = field(default_factory=list)  # index = GPU instance id


@dataclass(frozen=True, slots=True)
class GpuEvent:
    index: int
    uuid: str
    kind: str  # xid | ecc_dbe | remap_failure | gpu_lost
    code: int  # XID number, or the count of errors for ECC kinds, 0 for gpu_lost
    time_ms: int  # wall clock, ms since the epoch
    detail: str = ""


class GpuSource(Protocol):
    """One node's GPUs. `sample` never raises for one bad GPU: it skips lost GPUs and reports them."""

    def sample(self) -> list[GpuReading]: ...

    def poll_events(self) -> list[GpuEvent]: ...

    def close(self) -> None: ...
