"""The agent's one door to NVML: the only module that imports pynvml.

`open_nvml()` starts NVML, finds the GPUs and probes once what each supports; the returned
`NvmlSource` then reads raw per-sample values (names and units of the `source` column of
gpufleet/metrics.csv) into plain `GpuReading`s, and hands XID / ECC events over from a background
thread. Rules, after nvitop's `libnvml` and Datadog's NVML check (shared/STYLE.md, 1 and 4):

* Unsupported is absent. NOT_SUPPORTED (or a missing function on an older driver) drops the
  reading for good, with one warning per GPU and reading; it is never reported as 0.
* One bad GPU never stops the others. GPU_IS_LOST marks that GPU lost: one `gpu_lost` event,
  and it is skipped from then on.
* A transient error (TIMEOUT, UNKNOWN, ...) on one call drops the readings of that call for that
  sample and counts them in `NvmlSource.error_counts`; nothing more.
* Cheap: everything that has an NVML field id is fetched with one nvmlDeviceGetFieldValues call
  per GPU per sample; unsupported readings cost nothing after the probe; static values
  (temperature thresholds) are read once. nvmlDeviceGetPcieThroughput, which sleeps ~20 ms in the
  driver, is never called: PCIe traffic comes from the byte counters.

NVML reference: https://docs.nvidia.com/deploy/nvml-api/ (function names below are those).
"""

from __future__ import annotations

import ctypes
import logging
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pynvml

from .readings import GpuEvent, GpuProcess, GpuReading

log = logging.getLogger(__name__)

Handle = Any  # pynvml.c_nvmlDevice_t: an opaque pointer
ReadFn = Callable[[Handle], dict[str, int]]


class NvmlUnavailable(RuntimeError):
    """NVML could not start (no driver, no library, no permission): the agent cannot read GPUs."""


def use_library(lib: object | None) -> None:
    """Make pynvml call the C functions of `lib` instead of loading libnvidia-ml.so.1.

    `lib` is anything with the NVML functions as attributes (agent/fakenvml.py passes its ctypes
    callbacks); None goes back to loading the real library at the next nvmlInit. pynvml resolves
    each function once by name and caches it, so the cache is emptied too.
    """
    with pynvml.libLoadLock:
        pynvml.nvmlLib = lib
        pynvml._nvmlGetFunctionPointer_cache.clear()
        pynvml._nvmlLib_refcount = 0


# --- what we read, and from which NVML entry ----------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Field:
    """One entry of the nvmlDeviceGetFieldValues batch. Entries with the same reading are summed."""

    reading: str
    field_id: int
    scope_id: int = 0
    scale: int = 1  # NVML unit -> reading unit

    @property
    def key(self) -> tuple[int, int]:
        return (self.field_id, self.scope_id)


_ALL_LINKS = 0xFFFF_FFFF  # scopeId UINT_MAX: "aggregate value summed up across all links"

_FIELDS: tuple[_Field, ...] = (
    # mJ since the driver was last loaded; resets to 0 on reload (the window's delta handles it)
    _Field("energy_mj", pynvml.NVML_FI_DEV_TOTAL_ENERGY_CONSUMPTION),
    _Field("temp_mem_c", pynvml.NVML_FI_DEV_MEMORY_TEMP),  # HBM temperature, C
    # ECC totals: single bit = corrected, double bit = uncorrected; volatile = since driver load
    _Field("ecc_corrected_volatile", pynvml.NVML_FI_DEV_ECC_SBE_VOL_TOTAL),
    _Field("ecc_uncorrected_volatile", pynvml.NVML_FI_DEV_ECC_DBE_VOL_TOTAL),
    _Field("ecc_corrected_aggregate", pynvml.NVML_FI_DEV_ECC_SBE_AGG_TOTAL),
    _Field("ecc_uncorrected_aggregate", pynvml.NVML_FI_DEV_ECC_DBE_AGG_TOTAL),
    # page retirement (before Ampere) ...
    _Field("retired_pages_sbe", pynvml.NVML_FI_DEV_RETIRED_SBE),
    _Field("retired_pages_dbe", pynvml.NVML_FI_DEV_RETIRED_DBE),
    _Field("retired_pages_pending", pynvml.NVML_FI_DEV_RETIRED_PENDING),
    # ... and row remapping (Ampere and newer); not readable while MIG instances exist
    _Field("remap_correctable", pynvml.NVML_FI_DEV_REMAPPED_COR),
    _Field("remap_uncorrectable", pynvml.NVML_FI_DEV_REMAPPED_UNC),
    _Field("remap_pending", pynvml.NVML_FI_DEV_REMAPPED_PENDING),
    _Field("remap_failure", pynvml.NVML_FI_DEV_REMAPPED_FAILURE),
    # PCIe byte counters (may wrap) and the replay counter: totals, the window takes deltas
    _Field("pcie_tx_bytes", pynvml.NVML_FI_DEV_PCIE_COUNT_TX_BYTES),
    _Field("pcie_rx_bytes", pynvml.NVML_FI_DEV_PCIE_COUNT_RX_BYTES),
    _Field("pcie_replays", pynvml.NVML_FI_DEV_PCIE_REPLAY_COUNTER),
    # NVLink data throughput counters are in KiB, summed over links by NVML itself
    _Field("nvlink_tx_bytes", pynvml.NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_TX, _ALL_LINKS, 1024),
    _Field("nvlink_rx_bytes", pynvml.NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_RX, _ALL_LINKS, 1024),
    # CRC errors: flow-control (FLIT) plus data CRC, each the "total for all lanes" counter
    _Field("nvlink_crc_errors", pynvml.NVML_FI_DEV_NVLINK_CRC_FLIT_ERROR_COUNT_TOTAL),
    _Field("nvlink_crc_errors", pynvml.NVML_FI_DEV_NVLINK_CRC_DATA_ERROR_COUNT_TOTAL),
)
_REMAP_READINGS = frozenset(f.reading for f in _FIELDS if f.reading.startswith("remap_"))

# nvmlValueType_t -> member of the nvmlValue_t union
_VALUE_MEMBER = {
    pynvml.NVML_VALUE_TYPE_DOUBLE: "dVal",
    pynvml.NVML_VALUE_TYPE_UNSIGNED_INT: "uiVal",
    pynvml.NVML_VALUE_TYPE_UNSIGNED_LONG: "ulVal",
    pynvml.NVML_VALUE_TYPE_UNSIGNED_LONG_LONG: "ullVal",
    pynvml.NVML_VALUE_TYPE_SIGNED_LONG_LONG: "sllVal",
    pynvml.NVML_VALUE_TYPE_SIGNED_INT: "siVal",
    pynvml.NVML_VALUE_TYPE_UNSIGNED_SHORT: "usVal",
}


def _power(h: Handle) -> dict[str, int]:  # mW; on Ampere (not GA100) and newer a 1 s average
    return {"power_mw": pynvml.nvmlDeviceGetPowerUsage(h)}


def _power_limit(h: Handle) -> dict[str, int]:  # mW, the limit actually enforced (all sources)
    return {"power_limit_mw": pynvml.nvmlDeviceGetEnforcedPowerLimit(h)}


def _temperature(h: Handle) -> dict[str, int]:  # C; nvmlDeviceGetTemperatureV (R535 and newer)
    return {"temp_gpu_c": pynvml.nvmlDeviceGetTemperatureV(h, pynvml.NVML_TEMPERATURE_GPU)}


def _temperature_legacy(h: Handle) -> dict[str, int]:  # C; deprecated in NVML 13
    return {"temp_gpu_c": pynvml.nvmlDeviceGetTemperature(h, pynvml.NVML_TEMPERATURE_GPU)}


def _temp_slowdown(h: Handle) -> dict[str, int]:  # C, static: nvidia-smi "GPU Slowdown Temp"
    return {"temp_slowdown_c": pynvml.nvmlDeviceGetTemperatureThreshold(h, pynvml.NVML_TEMPERATURE_THRESHOLD_SLOWDOWN)}


def _temp_shutdown(h: Handle) -> dict[str, int]:  # C, static: nvidia-smi "GPU Shutdown Temp"
    return {"temp_shutdown_c": pynvml.nvmlDeviceGetTemperatureThreshold(h, pynvml.NVML_TEMPERATURE_THRESHOLD_SHUTDOWN)}


def _fan(h: Handle) -> dict[str, int]:  # % of maximum; passively cooled boards: NOT_SUPPORTED
    return {"fan_pct": pynvml.nvmlDeviceGetFanSpeed(h)}


def _utilization(h: Handle) -> dict[str, int]:  # % of the last sample period (1/6 s to 1 s)
    util = pynvml.nvmlDeviceGetUtilizationRates(h)
    return {"util_gpu_pct": util.gpu, "util_mem_pct": util.memory}


def _encoder(h: Handle) -> dict[str, int]:  # %
    return {"util_enc_pct": pynvml.nvmlDeviceGetEncoderUtilization(h)[0]}


def _decoder(h: Handle) -> dict[str, int]:  # %
    return {"util_dec_pct": pynvml.nvmlDeviceGetDecoderUtilization(h)[0]}


def _memory(h: Handle) -> dict[str, int]:  # bytes; v2 keeps driver-reserved memory out of "used"
    mem = pynvml.nvmlDeviceGetMemoryInfo(h, version=pynvml.nvmlMemory_v2)
    return {"mem_used_bytes": mem.used, "mem_total_bytes": mem.total}


def _memory_legacy(h: Handle) -> dict[str, int]:  # bytes; before R510 "used" includes reserved
    mem = pynvml.nvmlDeviceGetMemoryInfo(h)
    return {"mem_used_bytes": mem.used, "mem_total_bytes": mem.total}


def _clock_sm(h: Handle) -> dict[str, int]:  # MHz, current
    return {"clock_sm_mhz": pynvml.nvmlDeviceGetClockInfo(h, pynvml.NVML_CLOCK_SM)}


def _clock_mem(h: Handle) -> dict[str, int]:  # MHz, current
    return {"clock_mem_mhz": pynvml.nvmlDeviceGetClockInfo(h, pynvml.NVML_CLOCK_MEM)}


def _clock_reasons(h: Handle) -> dict[str, int]:  # nvmlClocksEventReason* bitmask (R535 and newer)
    return {"clock_event_reasons": pynvml.nvmlDeviceGetCurrentClocksEventReasons(h)}


def _clock_reasons_legacy(h: Handle) -> dict[str, int]:  # same bits, older name
    return {"clock_event_reasons": pynvml.nvmlDeviceGetCurrentClocksThrottleReasons(h)}


@dataclass(frozen=True, slots=True)
class _Call:
    """One NVML call giving one or more readings. `variants` go newest API first: an older driver
    lacks the function (FUNCTION_NOT_FOUND) or the struct version (ARGUMENT_VERSION_MISMATCH)."""

    name: str  # the NVML function, for logs
    readings: tuple[str, ...]
    variants: tuple[ReadFn, ...]
    static: bool = False  # read once at start: the value cannot change while the driver runs


_CALLS: tuple[_Call, ...] = (
    _Call("nvmlDeviceGetPowerUsage", ("power_mw",), (_power,)),
    _Call("nvmlDeviceGetEnforcedPowerLimit", ("power_limit_mw",), (_power_limit,)),
    _Call("nvmlDeviceGetTemperatureV", ("temp_gpu_c",), (_temperature, _temperature_legacy)),
    _Call("nvmlDeviceGetTemperatureThreshold", ("temp_slowdown_c",), (_temp_slowdown,), static=True),
    _Call("nvmlDeviceGetTemperatureThreshold", ("temp_shutdown_c",), (_temp_shutdown,), static=True),
    _Call("nvmlDeviceGetFanSpeed", ("fan_pct",), (_fan,)),
    _Call("nvmlDeviceGetUtilizationRates", ("util_gpu_pct", "util_mem_pct"), (_utilization,)),
    _Call("nvmlDeviceGetEncoderUtilization", ("util_enc_pct",), (_encoder,)),
    _Call("nvmlDeviceGetDecoderUtilization", ("util_dec_pct",), (_decoder,)),
    _Call("nvmlDeviceGetMemoryInfo_v2", ("mem_used_bytes", "mem_total_bytes"), (_memory, _memory_legacy)),
    _Call("nvmlDeviceGetClockInfo", ("clock_sm_mhz",), (_clock_sm,)),
    _Call("nvmlDeviceGetClockInfo", ("clock_mem_mhz",), (_clock_mem,)),
    _Call("nvmlDeviceGetCurrentClocksEventReasons", ("clock_event_reasons",), (_clock_reasons, _clock_reasons_legacy)),
)

# Errors that mean "this will never work here": drop the reading for good.
_UNSUPPORTED = (pynvml.NVMLError_NotSupported, pynvml.NVMLError_FunctionNotFound, pynvml.NVMLError_NoPermission)
# Errors that mean "try the older API".
_OLDER_API = (pynvml.NVMLError_FunctionNotFound, pynvml.NVMLError_ArgumentVersionMismatch)
_UNSUPPORTED_CODES = frozenset(
    {pynvml.NVML_ERROR_NOT_SUPPORTED, pynvml.NVML_ERROR_NO_PERMISSION, pynvml.NVML_ERROR_INVALID_ARGUMENT}
)  # INVALID_ARGUMENT: a field id this driver does not know

# Events watched: what an SRE must see at once (NVML "nvmlEventType*" bits).
_EVENT_KINDS = {
    pynvml.nvmlEventTypeXidCriticalError: "xid",  # eventData = the XID number
    pynvml.nvmlEventTypeDoubleBitEccError: "ecc_dbe",
    pynvml.nvmlEventTypeDramRetirementFailure: "remap_failure",  # a row could not be remapped
}
_WATCHED_EVENTS = sum(_EVENT_KINDS)
_NO_INSTANCE = 0xFFFF_FFFF  # gpuInstanceId / computeInstanceId when MIG does not apply
_MAX_QUEUED_EVENTS = 1024


class _GpuLost(Exception):
    """NVML said GPU_IS_LOST: stop reading this GPU."""


@dataclass(eq=False)
class _Gpu:
    """What we know about one GPU after the probe, and its per-sample state."""

    index: int
    handle: Handle
    address: int  # the handle as an integer, to recognise it in event data
    uuid: str
    model: str
    calls: dict[str, tuple[_Call, ReadFn]] = field(default_factory=dict)  # key: first reading
    fields: list[_Field] = field(default_factory=list)
    static: dict[str, int] = field(default_factory=dict)
    unsupported: set[str] = field(default_factory=set)
    mig_enabled: bool = False
    mig_slots: int = 0
    mig_names: dict[int, tuple[int, str, str]] = field(default_factory=dict)  # address -> gi, uuid, name
    memory_fn: ReadFn = _memory
    processes: bool = True
    process_util: bool = True
    last_util_us: int = 0  # newest process-utilisation sample seen (driver CPU time, us)
    event_mask: int = 0  # event types registered with the event set
    previous: dict[str, int] = field(default_factory=dict)
    lost: bool = False


def _handle_address(handle: Handle) -> int:
    return ctypes.cast(handle, ctypes.c_void_p).value or 0


def _field_value(entry: Any) -> int:
    member = _VALUE_MEMBER.get(entry.valueType, "ullVal")
    return int(round(getattr(entry.value, member)))


def _init_message(err: pynvml.NVMLError) -> str:
    if isinstance(err, pynvml.NVMLError_LibraryNotFound):
        return "NVIDIA driver not loaded: libnvidia-ml.so.1 not found (is the NVIDIA driver installed?)"
    if isinstance(err, pynvml.NVMLError_DriverNotLoaded):
        return "NVIDIA driver not loaded: NVML found no running kernel module (nvidia-smi would fail too)"
    if isinstance(err, pynvml.NVMLError_NoPermission):
        return "NVML refused access: no permission to open the NVIDIA devices"
    if isinstance(err, pynvml.NVMLError_LibRmVersionMismatch):
        return "NVIDIA driver and NVML library versions differ: reboot or reload the driver after an upgrade"
    return f"NVML could not start: {err}"


def open_nvml(*, watch_events: bool = True, event_wait_ms: int = 500) -> NvmlSource:
    """Start NVML and probe every GPU. Raises NvmlUnavailable when there is no usable driver.

    `event_wait_ms` bounds each nvmlEventSetWait of the event thread, hence how long close() waits.
    """
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as err:
        raise NvmlUnavailable(_init_message(err)) from err
    try:
        return NvmlSource(watch_events=watch_events, event_wait_ms=event_wait_ms)
    except BaseException:
        pynvml.nvmlShutdown()
        raise


class NvmlSource:
    """A GpuSource over NVML. Use `open_nvml()`; `close()` (or `with`) stops the event thread and
    shuts NVML down.

    Attributes:
        driver_version: as nvmlSystemGetDriverVersion says.
        gpus: (index, uuid, model) of every GPU found at start, lost ones included.
        error_counts: reading (or "processes", "process_utilization", "mig", "mig<id>:memory",
            "events", "nvmlDeviceGetFieldValues" at start, "internal") -> number of reads that
            failed with a transient error (TIMEOUT, UNKNOWN, ...) and were dropped.
        unsupported: GPU uuid -> the readings that GPU does not support (found at start or later).
    """

    def __init__(self, *, watch_events: bool = True, event_wait_ms: int = 500) -> None:
        self.error_counts: Counter[str] = Counter()
        self._counts_lock = threading.Lock()
        self._events: deque[GpuEvent] = deque()
        self._crashed: set[str] = set()  # GPUs whose read raised unexpectedly (logged once)
        self._closed = False
        self.driver_version = self._driver_version()
        self._gpus = self._find_gpus()
        for gpu in self._gpus:
            self._probe(gpu)
        self._watcher = _EventWatcher(self, self._gpus, event_wait_ms) if watch_events else None

    # -- the GpuSource protocol ---------------------------------------------------------------

    def sample(self) -> list[GpuReading]:
        """One reading per GPU that is still on the bus. Never raises for one bad GPU."""
        readings = []
        for gpu in self._gpus:
            if gpu.lost:
                continue
            try:
                readings.append(self._read_gpu(gpu))
            except _GpuLost:
                self._mark_lost(gpu)
            except Exception:  # noqa: BLE001 - a bug here must not cost the other GPUs their sample
                self._count("internal")
                if gpu.uuid not in self._crashed:
                    self._crashed.add(gpu.uuid)
                    log.exception("GPU %d (%s): reading failed; skipped this sample", gpu.index, gpu.uuid)
        return readings

    def poll_events(self) -> list[GpuEvent]:
        """Events queued since the last call (the event thread appends; we only pop here)."""
        out = []
        while self._events:
            out.append(self._events.popleft())
        return out

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._watcher is not None:
            self._watcher.stop()
        try:
            pynvml.nvmlShutdown()
        except pynvml.NVMLError as err:
            log.warning("nvmlShutdown failed: %s", err)

    def __enter__(self) -> NvmlSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def gpus(self) -> tuple[tuple[int, str, str], ...]:
        return tuple((g.index, g.uuid, g.model) for g in self._gpus)

    @property
    def unsupported(self) -> dict[str, frozenset[str]]:
        return {g.uuid: frozenset(g.unsupported) for g in self._gpus}

    # -- start: find and probe ------------------------------------------------------------------

    @staticmethod
    def _driver_version() -> str:
        try:
            return pynvml.nvmlSystemGetDriverVersion()
        except pynvml.NVMLError:
            return ""

    def _find_gpus(self) -> list[_Gpu]:
        try:
            count = pynvml.nvmlDeviceGetCount()
        except pynvml.NVMLError as err:
            raise NvmlUnavailable(f"NVML cannot count the GPUs: {err}") from err
        gpus = []
        for index in range(count):
            try:
                handle = pynvml.nvmlDeviceGetHandleByIndex(index)
                uuid, model = pynvml.nvmlDeviceGetUUID(handle), pynvml.nvmlDeviceGetName(handle)
            except pynvml.NVMLError as err:
                # e.g. GPU_IS_LOST or NO_PERMISSION for one GPU: read the others
                log.error("GPU %d is not usable and will not be read: %s", index, err)
                if isinstance(err, pynvml.NVMLError_GpuIsLost):
                    # its UUID cannot be read any more: name it by index (wire needs a UUID)
                    self._queue(GpuEvent(index, f"GPU-unknown-{index}", "gpu_lost", 0, _now_ms(), "lost before start"))
                else:
                    self._count("gpu_open")
                continue
            gpus.append(_Gpu(index, handle, _handle_address(handle), uuid, model))
        if not gpus:
            log.warning("NVML found no usable GPU")
        return gpus

    def _probe(self, gpu: _Gpu) -> None:
        """Find once what this GPU supports, so that unsupported readings cost nothing later."""
        try:
            self._probe_mig(gpu)
            for call in _CALLS:
                self._probe_call(gpu, call)
            self._probe_fields(gpu)
        except _GpuLost:
            self._mark_lost(gpu)
            return
        if gpu.unsupported:
            log.warning(
                "GPU %d (%s, %s): not supported, not reported: %s",
                gpu.index, gpu.model, gpu.uuid, ", ".join(sorted(gpu.unsupported)),
            )

    def _probe_call(self, gpu: _Gpu, call: _Call) -> None:
        for fn in call.variants:
            try:
                values = fn(gpu.handle)
            except pynvml.NVMLError_GpuIsLost as err:
                raise _GpuLost from err
            except _OLDER_API:
                continue
            except _UNSUPPORTED:
                break
            except pynvml.NVMLError as err:
                # transient (e.g. TIMEOUT): assume supported, the samples will tell
                self._transient(gpu, call.readings, err)
                values = {}
            self._adopt_call(gpu, call, fn, values)
            return
        gpu.unsupported.update(call.readings)

    def _adopt_call(self, gpu: _Gpu, call: _Call, fn: ReadFn, values: dict[str, int]) -> None:
        if "mem_used_bytes" in call.readings:
            gpu.memory_fn = fn  # MIG devices are read with the same variant
        if call.static and values:
            gpu.static.update(values)
        else:  # per sample; also a static value that failed transiently at start
            gpu.calls[call.readings[0]] = (call, fn)

    def _probe_fields(self, gpu: _Gpu) -> None:
        # Remapped rows cannot be probed while MIG instances exist: keep them, the samples will tell.
        mig_active = self._mig_active(gpu)
        candidates = [f for f in _FIELDS if not (mig_active and f.reading in _REMAP_READINGS)]
        supported = set()
        try:
            entries = pynvml.nvmlDeviceGetFieldValues(gpu.handle, [f.key for f in candidates])
        except pynvml.NVMLError_GpuIsLost as err:
            raise _GpuLost from err
        except _UNSUPPORTED:  # no batch at all on this driver / device
            entries = []
        except pynvml.NVMLError as err:  # transient: keep every field, the samples will tell
            self._transient(gpu, ("nvmlDeviceGetFieldValues",), err)
            entries, supported = [], set(candidates)
        for f, entry in zip(candidates, entries):
            if entry.nvmlReturn == pynvml.NVML_ERROR_GPU_IS_LOST:
                raise _GpuLost
            if entry.nvmlReturn not in _UNSUPPORTED_CODES:
                supported.add(f)  # SUCCESS, or transient: the samples will tell
        gpu.fields = [f for f in _FIELDS if f in supported or f not in candidates]
        readable = {f.reading for f in gpu.fields}
        gpu.unsupported.update({f.reading for f in _FIELDS} - readable)

    def _probe_mig(self, gpu: _Gpu) -> None:
        try:
            current, _pending = pynvml.nvmlDeviceGetMigMode(gpu.handle)
            gpu.mig_enabled = current == pynvml.NVML_DEVICE_MIG_ENABLE
            if gpu.mig_enabled:
                gpu.mig_slots = pynvml.nvmlDeviceGetMaxMigDeviceCount(gpu.handle)
        except pynvml.NVMLError_GpuIsLost as err:
            raise _GpuLost from err
        except pynvml.NVMLError:
            gpu.mig_enabled = False  # not MIG capable (NOT_SUPPORTED) or older driver
        if gpu.mig_enabled:
            gpu.process_util = False  # "On MIG-enabled GPUs, querying process utilization is not supported"

    def _mig_active(self, gpu: _Gpu) -> bool:
        return gpu.mig_enabled and bool(self._mig_devices(gpu))

    # -- sampling ----------------------------------------------------------------------------

    def _read_gpu(self, gpu: _Gpu) -> GpuReading:
        values = dict(gpu.static)
        migs = self._mig_devices(gpu) if gpu.mig_enabled else []
        values.update(self._read_fields(gpu, mig_active=bool(migs)))
        for key in list(gpu.calls):
            call, fn = gpu.calls[key]
            values.update(self._attempt(gpu, call.readings, call.name, fn, gpu.handle) or {})
        # Under MIG, processes are listed under their instance (the parent query needs privileges).
        processes = self._processes(gpu, gpu.handle) if not gpu.mig_enabled else []
        instances = [self._read_mig(gpu, m) for m in migs]
        self._derived_events(gpu, values)
        return GpuReading(gpu.index, gpu.uuid, gpu.model, values, processes, instances)

    def _read_fields(self, gpu: _Gpu, *, mig_active: bool) -> dict[str, int]:
        """The one nvmlDeviceGetFieldValues call of this GPU's sample. Each entry has its own
        nvmlReturn: a failed entry drops its reading (and a summed reading as a whole)."""
        batch = [f for f in gpu.fields if not (mig_active and f.reading in _REMAP_READINGS)]
        if not batch:
            return {}
        readings = tuple(sorted({f.reading for f in batch}))
        keys = [f.key for f in batch]
        batch_read = pynvml.nvmlDeviceGetFieldValues
        entries = self._attempt(gpu, readings, "nvmlDeviceGetFieldValues", batch_read, gpu.handle, keys)
        if entries is None:
            return {}
        values: dict[str, int] = {}
        failed: set[str] = set()
        for f, entry in zip(batch, entries):
            rc = entry.nvmlReturn
            if rc == pynvml.NVML_SUCCESS:
                values[f.reading] = values.get(f.reading, 0) + _field_value(entry) * f.scale
            elif rc == pynvml.NVML_ERROR_GPU_IS_LOST:
                raise _GpuLost
            elif rc in _UNSUPPORTED_CODES:
                self._drop_field(gpu, f)
                failed.add(f.reading)
            else:
                self._transient(gpu, (f.reading,), pynvml.NVMLError(rc))
                failed.add(f.reading)
        return {k: v for k, v in values.items() if k not in failed}

    def _drop_field(self, gpu: _Gpu, dropped: _Field) -> None:
        gpu.fields = [f for f in gpu.fields if f != dropped]
        if dropped.reading not in {f.reading for f in gpu.fields}:
            self._now_unsupported(gpu, (dropped.reading,), "nvmlDeviceGetFieldValues")

    def _attempt(self, gpu: _Gpu, readings: tuple[str, ...], what: str, fn: Callable[..., Any], *args: Any) -> Any:
        """Run the NVML call `what` for `readings`; None if it failed (and why is dealt with here)."""
        try:
            return fn(*args)
        except pynvml.NVMLError_GpuIsLost as err:
            raise _GpuLost from err
        except _UNSUPPORTED:
            self._now_unsupported(gpu, readings, what)
        except pynvml.NVMLError as err:
            self._transient(gpu, readings, err)
        return None

    def _now_unsupported(self, gpu: _Gpu, readings: tuple[str, ...], what: str) -> None:
        """A reading that worked at start is no longer supported: stop asking, warn once."""
        fresh = [r for r in readings if r not in gpu.unsupported]
        gpu.unsupported.update(readings)
        for r in readings:
            gpu.calls.pop(r, None)
        if what == "nvmlDeviceGetFieldValues":
            gpu.fields = [f for f in gpu.fields if f.reading not in readings]
        if "processes" in readings:
            gpu.processes = False
        if "process_utilization" in readings:
            gpu.process_util = False
        if fresh:
            log.warning(
                "GPU %d (%s): %s no longer supported, not reported: %s", gpu.index, gpu.uuid, what, ", ".join(fresh)
            )

    def _transient(self, gpu: _Gpu, readings: tuple[str, ...], err: pynvml.NVMLError) -> None:
        log.debug("GPU %d: %s failed this sample: %s", gpu.index, ", ".join(readings), err)
        for r in readings:
            self._count(r)

    def _count(self, key: str) -> None:
        with self._counts_lock:  # the event thread counts too
            self.error_counts[key] += 1

    # -- processes -----------------------------------------------------------------------------

    def _processes(self, gpu: _Gpu, handle: Handle, *, utilization: bool = True) -> list[GpuProcess]:
        if not gpu.processes:
            return []
        query = pynvml.nvmlDeviceGetComputeRunningProcesses  # _v3: pid, memory, MIG instance
        procs = self._attempt(gpu, ("processes",), "nvmlDeviceGetComputeRunningProcesses", query, handle)
        if procs is None:
            return []
        sm = self._process_sm_util(gpu) if utilization and gpu.process_util else {}
        # usedGpuMemory is None where the driver cannot tell (WDDM, MIG without privileges)
        return [GpuProcess(p.pid, p.usedGpuMemory, sm.get(p.pid)) for p in procs]

    def _process_sm_util(self, gpu: _Gpu) -> dict[int, float]:
        """Mean SM share per pid over the driver's samples since the last read (CPU time, us)."""
        try:
            samples = pynvml.nvmlDeviceGetProcessUtilization(gpu.handle, gpu.last_util_us)
        except pynvml.NVMLError_NotFound:
            return {}  # no sample since the last read: nothing ran, or too soon
        except pynvml.NVMLError_GpuIsLost as err:
            raise _GpuLost from err
        except _UNSUPPORTED:
            self._now_unsupported(gpu, ("process_utilization",), "nvmlDeviceGetProcessUtilization")
            return {}
        except pynvml.NVMLError as err:
            self._transient(gpu, ("process_utilization",), err)
            return {}
        per_pid: dict[int, list[int]] = {}
        for s in samples:
            per_pid.setdefault(s.pid, []).append(s.smUtil)
            gpu.last_util_us = max(gpu.last_util_us, s.timeStamp)
        return {pid: sum(v) / len(v) for pid, v in per_pid.items()}

    # -- MIG -----------------------------------------------------------------------------------

    def _mig_devices(self, gpu: _Gpu) -> list[tuple[Handle, int, str, str]]:
        """The MIG devices that exist now: (handle, GPU instance id, uuid, name)."""
        found = []
        for slot in range(gpu.mig_slots):
            try:
                handle = pynvml.nvmlDeviceGetMigDeviceHandleByIndex(gpu.handle, slot)
                found.append((handle, *self._mig_identity(gpu, handle)))
            except pynvml.NVMLError_NotFound:
                continue  # an empty slot
            except pynvml.NVMLError_GpuIsLost as err:
                raise _GpuLost from err
            except pynvml.NVMLError as err:
                self._transient(gpu, ("mig",), err)
        return found

    @staticmethod
    def _mig_identity(gpu: _Gpu, handle: Handle) -> tuple[int, str, str]:
        address = _handle_address(handle)
        if address not in gpu.mig_names:  # identities do not change while the instance exists
            gi = pynvml.nvmlDeviceGetGpuInstanceId(handle)
            gpu.mig_names[address] = (gi, pynvml.nvmlDeviceGetUUID(handle), pynvml.nvmlDeviceGetName(handle))
        return gpu.mig_names[address]

    def _read_mig(self, gpu: _Gpu, mig: tuple[Handle, int, str, str]) -> GpuReading:
        handle, gi, uuid, name = mig
        values = {}
        key = f"mig{gi}:memory"  # its own key: the GPU's own memory reading is not affected
        if key not in gpu.unsupported:
            values = self._attempt(gpu, (key,), "nvmlDeviceGetMemoryInfo", gpu.memory_fn, handle) or {}
        processes = self._processes(gpu, handle, utilization=False)
        return GpuReading(gi, uuid, name, values, processes)

    # -- events ------------------------------------------------------------------------------

    def _queue(self, event: GpuEvent) -> None:
        if len(self._events) >= _MAX_QUEUED_EVENTS:
            self._count("events_dropped")  # nobody polls: keep memory bounded
            return
        self._events.append(event)

    def _mark_lost(self, gpu: _Gpu) -> None:
        if gpu.lost:
            return
        gpu.lost = True
        log.error("GPU %d (%s) is lost (fell off the bus?): no longer read", gpu.index, gpu.uuid)
        self._queue(GpuEvent(gpu.index, gpu.uuid, "gpu_lost", 0, _now_ms(), "NVML_ERROR_GPU_IS_LOST"))

    def _derived_events(self, gpu: _Gpu, values: dict[str, int]) -> None:
        """Where the GPU cannot report DBE or remap-failure events, infer them from the counters."""
        prev = dict(gpu.previous)
        # a reading missing from one sample keeps its previous value as the baseline
        gpu.previous.update({k: values[k] for k in ("ecc_uncorrected_volatile", "remap_failure") if k in values})
        if not gpu.event_mask & pynvml.nvmlEventTypeDoubleBitEccError:
            now, before = values.get("ecc_uncorrected_volatile"), prev.get("ecc_uncorrected_volatile")
            if now is not None and before is not None and now > before:
                self._queue(GpuEvent(gpu.index, gpu.uuid, "ecc_dbe", now - before, _now_ms(), "from ECC counter"))
        if not gpu.event_mask & pynvml.nvmlEventTypeDramRetirementFailure:
            if values.get("remap_failure") and prev.get("remap_failure") == 0:
                self._queue(GpuEvent(gpu.index, gpu.uuid, "remap_failure", 1, _now_ms(), "from remap counter"))

    def _on_event(self, data: Any) -> None:
        """Called on the event thread with an nvmlEventData_t."""
        address = _handle_address(data.device)
        gpu = next((g for g in self._gpus if g.address == address), None)
        kind = _EVENT_KINDS.get(data.eventType)
        if gpu is None or kind is None:
            log.debug("ignored NVML event type 0x%x for device 0x%x", data.eventType, address)
            return
        code = int(data.eventData) if kind == "xid" else 1  # eventData is 0 for non-XID events
        detail = ""
        if data.gpuInstanceId != _NO_INSTANCE:
            detail = f"gpu_instance={data.gpuInstanceId} compute_instance={data.computeInstanceId}"
        self._queue(GpuEvent(gpu.index, gpu.uuid, kind, code, _now_ms(), detail))


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class _EventWatcher:
    """Waits for NVML events on its own thread so that sample() never blocks on them.

    Thread hop: nvmlEventSetWait blocks inside the driver for up to `wait_ms`; the thread hands
    events to NvmlSource._on_event, which only appends to a deque that poll_events() pops on the
    agent's thread (deque append/popleft are atomic). stop() sets a flag and joins: bounded by
    one wait.
    """

    def __init__(self, source: NvmlSource, gpus: list[_Gpu], wait_ms: int) -> None:
        self._source = source
        self._wait_ms = wait_ms
        self._stop = threading.Event()
        self._set = self._create_set(gpus)
        self._thread = threading.Thread(target=self._run, name="gpufleet-nvml-events", daemon=True)
        if self._set is not None:
            self._thread.start()

    def _create_set(self, gpus: list[_Gpu]) -> Any:
        try:
            event_set = pynvml.nvmlEventSetCreate()
        except pynvml.NVMLError as err:
            log.warning("NVML events unavailable (%s): XID errors will not be reported", err)
            return None
        for gpu in gpus:
            if not gpu.lost:
                self._register(gpu, event_set)
        return event_set

    def _register(self, gpu: _Gpu, event_set: Any) -> None:
        try:
            mask = pynvml.nvmlDeviceGetSupportedEventTypes(gpu.handle) & _WATCHED_EVENTS
            if mask:
                pynvml.nvmlDeviceRegisterEvents(gpu.handle, mask, event_set)
            gpu.event_mask = mask
        except pynvml.NVMLError as err:
            log.warning("GPU %d (%s): no NVML events (%s)", gpu.index, gpu.uuid, err)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data = pynvml.nvmlEventSetWait_v2(self._set, self._wait_ms)
            except pynvml.NVMLError_Timeout:
                continue
            except pynvml.NVMLError as err:
                # e.g. GPU_IS_LOST or UNKNOWN: count, pause one wait so a broken set cannot spin
                log.debug("nvmlEventSetWait failed: %s", err)
                self._source._count("events")
                self._stop.wait(self._wait_ms / 1000)
                continue
            try:
                self._source._on_event(data)
            except Exception:  # noqa: BLE001 - the watcher must survive a bad event
                log.exception("could not handle an NVML event")

    def stop(self) -> None:
        self._stop.set()
        if self._set is None:
            return
        self._thread.join(timeout=self._wait_ms / 1000 + 2)
        if self._thread.is_alive():
            log.warning("NVML event thread did not stop; leaving its event set allocated")
            return
        try:
            pynvml.nvmlEventSetFree(self._set)
        except pynvml.NVMLError as err:
            log.debug("nvmlEventSetFree failed: %s", err)
