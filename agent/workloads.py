"""Who holds each GPU in a window: processes resolved to workloads, plus scheduler allocations.

Turns the window's per-process figures into the wire's holders (one per workload and GPU, its
processes added up), the owners the job mapping names, and the identities they stand for.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from gpufleet import wire

from .identity import workload_key
from .window import GpuWindowValues, ProcessWindow

Identity = dict[str, Any]


def _public(identity: Mapping[str, Any]) -> dict[str, str | int | None]:
    """What the collector stores and bills by: the identity without the pid (a pid is per process,
    a workload has many), and only wire-safe values."""
    return {k: v for k, v in identity.items() if k != "pid" and (v is None or isinstance(v, (str, int)))}


class WorkloadResolver:
    def __init__(
        self,
        identify: Callable[[int], Identity],
        allocations: Callable[[], Mapping[int, Sequence[Identity]]] = dict,
    ) -> None:
        self._identify = identify
        self._allocations = allocations
        self._known: dict[int, Identity] = {}  # pid -> identity, kept while the pid stays on a GPU

    def annotate(self, gpus: Sequence[GpuWindowValues]) -> tuple[tuple[wire.GpuWindow, ...], dict[str, dict]]:
        allocations = self._allocations()
        workloads: dict[str, dict] = {}
        seen: dict[int, Identity] = {}
        annotated = []
        for gpu in gpus:
            holders = self._holders(gpu.processes, workloads, seen)
            # The job mapping names whole GPUs; under MIG they own the slices no instance uses.
            allocated = allocations.get(gpu.index, ()) if gpu.mig is None else ()
            owners = tuple(dict.fromkeys(self._key(i, workloads) for i in allocated))
            annotated.append(wire.GpuWindow(gpu.index, gpu.uuid, gpu.model, gpu.values, holders, owners, gpu.mig))
        self._known = seen  # pids that left the GPUs are forgotten (and may be reused by the OS)
        return tuple(annotated), workloads

    def _holders(
        self, processes: Sequence[ProcessWindow], workloads: dict[str, dict], seen: dict[int, Identity]
    ) -> tuple[wire.Holder, ...]:
        merged: dict[str, tuple[float | None, int | None]] = {}
        for process in processes:
            identity = seen.get(process.pid) or self._known.get(process.pid) or self._identify(process.pid)
            seen[process.pid] = identity
            key = self._key(identity, workloads)
            sm, mem = merged.get(key, (None, None))
            merged[key] = (_add(sm, process.sm_util_pct), _add(mem, process.mem_bytes))
        return tuple(
            wire.Holder(key, None if sm is None else round(sm * 100), mem) for key, (sm, mem) in merged.items()
        )

    @staticmethod
    def _key(identity: Identity, workloads: dict[str, dict]) -> str:
        key = workload_key(identity)
        workloads.setdefault(key, _public(identity))
        return key


def _add(a: float | int | None, b: float | int | None) -> Any:
    if a is None:
        return b
    return a if b is None else a + b
