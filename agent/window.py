"""Samples in, one window of per-GPU fields out. Pure: the caller passes timestamps.

How each field aggregates is the `agg` column of metrics.csv: mean / max / last / or over the
window's samples; `delta` for counters (energy, PCIe and NVLink bytes), carried across windows so
that no joule falls between two windows; `bit_seconds` for the time a clock-event (throttle)
reason was set; `count` for the number of samples. A field no sample had stays absent.

MIG instances are windows of their own (keyed by their MIG UUID, with their parent's index and
their compute slices), so that each instance's holders are billed for that instance alone.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
import re
from dataclasses import dataclass, field

from gpufleet.catalogue import Metric, gpu_window_fields

from .readings import GpuReading


@dataclass(frozen=True, slots=True)
class ProcessWindow:
    pid: int
    sm_util_pct: float | None  # mean over the samples that had one
    mem_bytes: int | None  # peak


@dataclass(frozen=True, slots=True)
class GpuWindowValues:
    index: int
    uuid: str
    model: str
    values: tuple[int | None, ...]  # wire units, aligned with WindowAggregator.field_names
    processes: tuple[ProcessWindow, ...]
    mig: tuple[int, int, int] | None = None  # MIG instance: (GPU instance id, its slices, the GPU's slices)


@dataclass(slots=True)
class _Sample:
    dt_ms: int  # time this sample stands for: since the previous sample of this GPU
    values: dict[str, int]


@dataclass(slots=True)
class _GpuState:
    index: int
    model: str
    mig: tuple[int, int, int] | None = None
    last_t_ms: int | None = None
    counters: dict[str, int] = field(default_factory=dict)  # last counter values, across windows
    samples: list[_Sample] = field(default_factory=list)
    processes: dict[int, list[tuple[float | None, int | None]]] = field(default_factory=dict)


_MIG_SLICES = re.compile(r"MIG (\d+)g\.")


def mig_slices(instance_id: int, instance_name: str, gpu_model: str) -> tuple[int, int, int]:
    """(instance id, compute slices of the instance, slices of the whole GPU) from NVML's names:
    "NVIDIA A100-SXM4-80GB MIG 3g.40gb" has 3 of the A100's 7 slices (the A30 has 4)."""
    found = _MIG_SLICES.search(instance_name)
    total = 4 if "A30" in gpu_model else 7
    return instance_id, min(total, int(found.group(1))) if found else 1, total


def counter_delta(previous: int | None, current: int) -> int:
    """Increase of a monotonic counter. A smaller value means the counter restarted from zero
    (driver reload, GPU reset): count what it gathered since, never a negative amount."""
    if previous is None:
        return 0
    return current - previous if current >= previous else current


class WindowAggregator:
    def __init__(self, nominal_sample_ms: int, fields: Sequence[Metric] | None = None) -> None:
        self._nominal_sample_ms = nominal_sample_ms
        self._fields = tuple(fields if fields is not None else gpu_window_fields())
        self._gpus: dict[str, _GpuState] = {}
        self.field_names = tuple(m.name for m in self._fields)

    def add(self, t_ms: int, readings: Sequence[GpuReading]) -> None:
        for reading in readings:
            self._add_one(t_ms, reading, reading.index, None)
            for instance in reading.mig_instances:
                self._add_one(t_ms, instance, reading.index, mig_slices(instance.index, instance.model, reading.model))

    def _add_one(self, t_ms: int, reading: GpuReading, index: int, mig: tuple[int, int, int] | None) -> None:
        state = self._gpus.get(reading.uuid)
        if state is None:
            state = self._gpus[reading.uuid] = _GpuState(index, reading.model, mig)
        dt_ms = self._nominal_sample_ms if state.last_t_ms is None else max(0, t_ms - state.last_t_ms)
        state.last_t_ms = t_ms
        state.samples.append(_Sample(dt_ms, reading.values))
        for process in reading.processes:
            state.processes.setdefault(process.pid, []).append((process.sm_util_pct, process.used_memory_bytes))

    def close(self) -> list[GpuWindowValues]:
        """The window's values for every GPU that gave at least one sample; starts the next window."""
        windows = []
        for uuid, state in self._gpus.items():
            if not state.samples:
                continue  # a lost GPU stops appearing; its counters stay for when it returns
            windows.append(
                GpuWindowValues(
                    index=state.index,
                    uuid=uuid,
                    model=state.model,
                    values=tuple(self._aggregate(m, state) for m in self._fields),
                    processes=_process_windows(state.processes),
                    mig=state.mig,
                )
            )
            state.samples = []
            state.processes = {}
        return sorted(windows, key=lambda w: (w.index, w.mig or (-1,)))

    def _aggregate(self, metric: Metric, state: _GpuState) -> int | None:
        if metric.agg == "count":
            return len(state.samples)
        if metric.agg == "delta":
            return _to_wire(metric, _window_delta(metric.source, state))
        if metric.agg == "bit_seconds":
            ms = sum(s.dt_ms for s in state.samples if s.values.get(metric.source, 0) & (metric.arg or 0))
            return round(ms / 1000 / metric.wire_scale)
        present = [s.values[metric.source] for s in state.samples if metric.source in s.values]
        if not present:
            return None
        return _to_wire(metric, _REDUCERS[metric.agg](present))


def _window_delta(source: str, state: _GpuState) -> int | None:
    total, seen = 0, False
    previous = state.counters.get(source)
    for sample in state.samples:
        current = sample.values.get(source)
        if current is None:
            continue
        seen = True
        total += counter_delta(previous, current)
        previous = current
    if not seen:
        return None
    state.counters[source] = previous  # type: ignore[assignment]  # seen => previous is set
    return total


def _or_all(values: list[int]) -> int:
    result = 0
    for value in values:
        result |= value
    return result


_REDUCERS: dict[str, Callable[[list[int]], float | int]] = {
    "mean": lambda values: sum(values) / len(values),
    "max": max,
    "last": lambda values: values[-1],
    "or": _or_all,
}


def _to_wire(metric: Metric, value: float | int | None) -> int | None:
    if value is None:
        return None
    factor = metric.raw_scale / metric.wire_scale
    return int(value) if factor == 1 and isinstance(value, int) else round(value * factor)


def _process_windows(samples: dict[int, list[tuple[float | None, int | None]]]) -> tuple[ProcessWindow, ...]:
    windows = []
    for pid, points in sorted(samples.items()):
        utils = [u for u, _ in points if u is not None]
        mems = [m for _, m in points if m is not None]
        windows.append(
            ProcessWindow(pid, sum(utils) / len(utils) if utils else None, max(mems) if mems else None)
        )
    return tuple(windows)
