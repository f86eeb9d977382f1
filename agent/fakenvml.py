"""A fake NVIDIA driver at the C-ABI level, driven by a device profile (JSON).

How it plugs in: pynvml resolves every C function by name through
`pynvml._nvmlGetFunctionPointer(name)` (cached in `_nvmlGetFunctionPointer_cache`), and
`nvmlInit` loads libnvidia-ml.so.1 only while `pynvml.nvmlLib` is None. `install(profile)` puts a
library object there whose attributes are ctypes callbacks (CFUNCTYPE) written in Python, one per
NVML function we implement. pynvml's own wrappers then call them exactly as they would call the
driver: they pass pointers to their own ctypes structs, which the callbacks fill following
nvml.h, and get NVML return codes back. A function we do not implement is missing from the
library, so pynvml raises NVMLError_FunctionNotFound, as it would against an older driver.

So the code under test (agent/nvml.py -> pynvml -> "C") runs unchanged. Prototypes, struct layouts,
field ids, enum values and return codes here are checked against NVIDIA's nvml.h by
tests/unit/test_fakenvml_abi.py.

This module lives in the product, not only in tests: `gpufleet agent --from-capture FILE.xml`
replays an `nvidia-smi -q -x` capture through it (agent/capture.py).

Profile format (see agent/profiles/*.json)::

    {
      "description": "free text",
      "driver_version": "550.90.07",              # nvmlSystemGetDriverVersion
      "gpus": [
        {
          "name": "NVIDIA H100 80GB HBM3",        # nvmlDeviceGetName
          "uuid": "GPU-...",                      # nvmlDeviceGetUUID
          "values": {"power_mw": 312000, ...},    # raw readings, names and units of the
                                                  #   `source` column of gpufleet/metrics.csv;
                                                  #   a reading absent here => NOT_SUPPORTED
          "memory_reserved_bytes": 0,             # optional: shows in nvmlMemory_v2_t.reserved;
                                                  #   the legacy v1 struct counts it as used
          "nvlink_links": 18,                     # optional: NVML_FI_DEV_NVLINK_LINK_COUNT
          "events": ["xid", "ecc_dbe"],           # optional: event kinds the GPU can report
                                                  #   (default: xid, plus ecc_dbe with ECC
                                                  #   counters, remap_failure with remap ones)
          "mig": {                                # optional: absent => not MIG capable
            "current": 1, "pending": 1,           # nvmlDeviceGetMigMode (1 = enabled)
            "max_devices": 7,                     # nvmlDeviceGetMaxMigDeviceCount
            "instances": [{"gpu_instance_id": 1, "compute_instance_id": 0,
                           "uuid": "MIG-...", "name": "...",
                           "values": {"mem_total_bytes": ..., "mem_used_bytes": ...}}]
          },
          "processes": [{"pid": 4242, "used_memory_bytes": 1073741824,  # null: not available
                         "type": "C",             # C (compute), G (graphics) or C+G
                         "gpu_instance_id": 1, "compute_instance_id": 0,   # MIG only
                         "sm_util_pct": 40}]      # optional: a utilisation sample per read
        }
      ]
    }

Value conventions: NVLink byte counters are exposed by NVML in KiB, so a profile's nvlink bytes
are truncated to whole KiB; nvlink_crc_errors is split between the flow-control (FLIT) and data
CRC counters, which the reader sums back. Utilisation (gpu and memory) and memory (used and
total) come from one NVML call each, so both halves must be present for either to be supported.

Test hooks (time-varying behaviour) are methods of `FakeGpu`: `set`, `unset`, `fall_off_bus`,
`fail`, `inject_xid`, `inject_event`, `set_processes`, `add_process_sample`, `reset_energy`;
and of `FakeNvml`: `tick`, `init_error`, and what tests check: `calls`, `calls_by_gpu`,
`field_requests`, `missing_functions`, `internal_errors`.
"""

from __future__ import annotations

import copy
import ctypes
import json
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from ctypes import (
    CFUNCTYPE,
    Structure,
    Union,
    c_char,
    c_double,
    c_int,
    c_longlong,
    c_uint,
    c_ulong,
    c_ulonglong,
    c_ushort,
    c_void_p,
)
from importlib import resources
from pathlib import Path
from typing import Any

# --- nvml.h constants (values checked against the header by test_fakenvml_abi.py) -------------

NVML_SUCCESS = 0
NVML_ERROR_UNINITIALIZED = 1
NVML_ERROR_INVALID_ARGUMENT = 2
NVML_ERROR_NOT_SUPPORTED = 3
NVML_ERROR_NO_PERMISSION = 4
NVML_ERROR_NOT_FOUND = 6
NVML_ERROR_INSUFFICIENT_SIZE = 7
NVML_ERROR_DRIVER_NOT_LOADED = 9
NVML_ERROR_TIMEOUT = 10
NVML_ERROR_FUNCTION_NOT_FOUND = 13
NVML_ERROR_GPU_IS_LOST = 15
NVML_ERROR_ARGUMENT_VERSION_MISMATCH = 25
NVML_ERROR_UNKNOWN = 999

ERROR_CODES = {
    name: value for name, value in globals().items() if name.startswith("NVML_ERROR_")
} | {"NVML_SUCCESS": NVML_SUCCESS}

NVML_VALUE_TYPE_DOUBLE = 0
NVML_VALUE_TYPE_UNSIGNED_INT = 1
NVML_VALUE_TYPE_UNSIGNED_LONG_LONG = 3

NVML_TEMPERATURE_GPU = 0  # nvmlTemperatureSensors_t
NVML_TEMPERATURE_THRESHOLD_SHUTDOWN = 0  # nvmlTemperatureThresholds_t
NVML_TEMPERATURE_THRESHOLD_SLOWDOWN = 1
NVML_CLOCK_SM = 1  # nvmlClockType_t
NVML_CLOCK_MEM = 2
NVML_DEVICE_MIG_ENABLE = 1

NVML_FI_DEV_ECC_SBE_VOL_TOTAL = 3
NVML_FI_DEV_ECC_DBE_VOL_TOTAL = 4
NVML_FI_DEV_ECC_SBE_AGG_TOTAL = 5
NVML_FI_DEV_ECC_DBE_AGG_TOTAL = 6
NVML_FI_DEV_RETIRED_SBE = 29
NVML_FI_DEV_RETIRED_DBE = 30
NVML_FI_DEV_RETIRED_PENDING = 31
NVML_FI_DEV_NVLINK_CRC_FLIT_ERROR_COUNT_TOTAL = 38
NVML_FI_DEV_NVLINK_CRC_DATA_ERROR_COUNT_TOTAL = 45
NVML_FI_DEV_MEMORY_TEMP = 82
NVML_FI_DEV_TOTAL_ENERGY_CONSUMPTION = 83
NVML_FI_DEV_NVLINK_LINK_COUNT = 91
NVML_FI_DEV_PCIE_REPLAY_COUNTER = 94
NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_TX = 138
NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_RX = 139
NVML_FI_DEV_REMAPPED_COR = 142
NVML_FI_DEV_REMAPPED_UNC = 143
NVML_FI_DEV_REMAPPED_PENDING = 144
NVML_FI_DEV_REMAPPED_FAILURE = 145
NVML_FI_DEV_PCIE_COUNT_TX_BYTES = 197
NVML_FI_DEV_PCIE_COUNT_RX_BYTES = 198

FIELD_IDS = {name: value for name, value in globals().items() if name.startswith("NVML_FI_")}

nvmlEventTypeDoubleBitEccError = 0x2
nvmlEventTypeXidCriticalError = 0x8
nvmlEventTypeDramRetirementFailure = 0x800

EVENT_TYPES = {
    "nvmlEventTypeDoubleBitEccError": nvmlEventTypeDoubleBitEccError,
    "nvmlEventTypeXidCriticalError": nvmlEventTypeXidCriticalError,
    "nvmlEventTypeDramRetirementFailure": nvmlEventTypeDramRetirementFailure,
}
EVENT_KINDS = {
    "xid": nvmlEventTypeXidCriticalError,
    "ecc_dbe": nvmlEventTypeDoubleBitEccError,
    "remap_failure": nvmlEventTypeDramRetirementFailure,
}

NVML_VALUE_NOT_AVAILABLE_ULL = 0xFFFF_FFFF_FFFF_FFFF  # NVML_VALUE_NOT_AVAILABLE as unsigned long long
NO_INSTANCE = 0xFFFF_FFFF  # gpuInstanceId / computeInstanceId when MIG does not apply
XID_FALLEN_OFF_BUS = 79


# --- nvml.h structs we fill (layouts checked against the header by test_fakenvml_abi.py) -------


class nvmlValue_t(Union):
    _fields_ = [
        ("dVal", c_double),
        ("siVal", c_int),
        ("uiVal", c_uint),
        ("ulVal", c_ulong),
        ("ullVal", c_ulonglong),
        ("sllVal", c_longlong),
        ("usVal", c_ushort),
    ]


class nvmlFieldValue_t(Structure):
    _fields_ = [
        ("fieldId", c_uint),
        ("scopeId", c_uint),
        ("timestamp", c_longlong),  # CPU time of the value, us since 1970
        ("latencyUsec", c_longlong),
        ("valueType", c_uint),  # nvmlValueType_t
        ("nvmlReturn", c_uint),  # nvmlReturn_t
        ("value", nvmlValue_t),
    ]


class nvmlMemory_t(Structure):
    _fields_ = [("total", c_ulonglong), ("free", c_ulonglong), ("used", c_ulonglong)]


class nvmlMemory_v2_t(Structure):
    _fields_ = [
        ("version", c_uint),
        ("total", c_ulonglong),
        ("reserved", c_ulonglong),
        ("free", c_ulonglong),
        ("used", c_ulonglong),
    ]


nvmlMemory_v2 = ctypes.sizeof(nvmlMemory_v2_t) | (2 << 24)  # NVML_STRUCT_VERSION(Memory, 2)


class nvmlUtilization_t(Structure):
    _fields_ = [("gpu", c_uint), ("memory", c_uint)]


class nvmlTemperature_v1_t(Structure):
    _fields_ = [("version", c_uint), ("sensorType", c_uint), ("temperature", c_int)]


nvmlTemperature_v1 = ctypes.sizeof(nvmlTemperature_v1_t) | (1 << 24)


class nvmlProcessInfo_t(Structure):  # nvmlProcessInfo_v2_t
    _fields_ = [
        ("pid", c_uint),
        ("usedGpuMemory", c_ulonglong),
        ("gpuInstanceId", c_uint),
        ("computeInstanceId", c_uint),
    ]


class nvmlProcessUtilizationSample_t(Structure):
    _fields_ = [
        ("pid", c_uint),
        ("timeStamp", c_ulonglong),  # CPU time in us
        ("smUtil", c_uint),
        ("memUtil", c_uint),
        ("encUtil", c_uint),
        ("decUtil", c_uint),
    ]


class nvmlEventData_t(Structure):
    _fields_ = [
        ("device", c_void_p),  # nvmlDevice_t
        ("eventType", c_ulonglong),
        ("eventData", c_ulonglong),
        ("gpuInstanceId", c_uint),
        ("computeInstanceId", c_uint),
    ]


STRUCTS = {
    cls.__name__: cls
    for cls in (
        nvmlValue_t,
        nvmlFieldValue_t,
        nvmlMemory_t,
        nvmlMemory_v2_t,
        nvmlUtilization_t,
        nvmlTemperature_v1_t,
        nvmlProcessInfo_t,
        nvmlProcessUtilizationSample_t,
        nvmlEventData_t,
    )
}

# --- the C prototypes we implement: name -> (restype, argtypes) ------------------------------
# Pointers (including the opaque nvmlDevice_t / nvmlEventSet_t handles) are c_void_p so that
# whatever ctypes object pynvml passes (byref(struct), POINTER, array, None) is accepted as an
# address; enums are 32-bit unsigned like the C compiler makes them.

_P = c_void_p
PROTOTYPES: dict[str, tuple[Any, tuple[Any, ...]]] = {
    "nvmlInit_v2": (c_int, ()),
    "nvmlInitWithFlags": (c_int, (c_uint,)),
    "nvmlShutdown": (c_int, ()),
    "nvmlErrorString": (c_void_p, (c_uint,)),  # const char*; pynvml reads it as c_char_p
    "nvmlSystemGetDriverVersion": (c_int, (_P, c_uint)),
    "nvmlSystemGetNVMLVersion": (c_int, (_P, c_uint)),
    "nvmlDeviceGetCount_v2": (c_int, (_P,)),
    "nvmlDeviceGetHandleByIndex_v2": (c_int, (c_uint, _P)),
    "nvmlDeviceGetIndex": (c_int, (_P, _P)),
    "nvmlDeviceGetUUID": (c_int, (_P, _P, c_uint)),
    "nvmlDeviceGetName": (c_int, (_P, _P, c_uint)),
    "nvmlDeviceGetPowerUsage": (c_int, (_P, _P)),
    "nvmlDeviceGetEnforcedPowerLimit": (c_int, (_P, _P)),
    "nvmlDeviceGetTotalEnergyConsumption": (c_int, (_P, _P)),
    "nvmlDeviceGetTemperature": (c_int, (_P, c_uint, _P)),
    "nvmlDeviceGetTemperatureV": (c_int, (_P, _P)),
    "nvmlDeviceGetTemperatureThreshold": (c_int, (_P, c_uint, _P)),
    "nvmlDeviceGetFanSpeed": (c_int, (_P, _P)),
    "nvmlDeviceGetUtilizationRates": (c_int, (_P, _P)),
    "nvmlDeviceGetEncoderUtilization": (c_int, (_P, _P, _P)),
    "nvmlDeviceGetDecoderUtilization": (c_int, (_P, _P, _P)),
    "nvmlDeviceGetMemoryInfo": (c_int, (_P, _P)),
    "nvmlDeviceGetMemoryInfo_v2": (c_int, (_P, _P)),
    "nvmlDeviceGetClockInfo": (c_int, (_P, c_uint, _P)),
    "nvmlDeviceGetCurrentClocksEventReasons": (c_int, (_P, _P)),
    "nvmlDeviceGetCurrentClocksThrottleReasons": (c_int, (_P, _P)),
    "nvmlDeviceGetFieldValues": (c_int, (_P, c_int, _P)),
    "nvmlDeviceGetComputeRunningProcesses_v3": (c_int, (_P, _P, _P)),
    "nvmlDeviceGetProcessUtilization": (c_int, (_P, _P, _P, c_ulonglong)),
    "nvmlDeviceGetMigMode": (c_int, (_P, _P, _P)),
    "nvmlDeviceGetMaxMigDeviceCount": (c_int, (_P, _P)),
    "nvmlDeviceGetMigDeviceHandleByIndex": (c_int, (_P, c_uint, _P)),
    "nvmlDeviceIsMigDeviceHandle": (c_int, (_P, _P)),
    "nvmlDeviceGetGpuInstanceId": (c_int, (_P, _P)),
    "nvmlDeviceGetComputeInstanceId": (c_int, (_P, _P)),
    "nvmlDeviceGetDeviceHandleFromMigDeviceHandle": (c_int, (_P, _P)),
    "nvmlDeviceGetSupportedEventTypes": (c_int, (_P, _P)),
    "nvmlDeviceRegisterEvents": (c_int, (_P, c_ulonglong, _P)),
    "nvmlEventSetCreate": (c_int, (_P,)),
    "nvmlEventSetWait_v2": (c_int, (_P, _P, c_uint)),
    "nvmlEventSetFree": (c_int, (_P,)),
}

# --- which NVML entry serves which raw reading -----------------------------------------------

# reading -> [(field id, scope id, NVML value type, divisor from reading unit to NVML unit)]
_UINT_MAX = 0xFFFF_FFFF
_FIELDS_BY_READING: dict[str, tuple[tuple[int, int, int, int], ...]] = {
    "energy_mj": ((NVML_FI_DEV_TOTAL_ENERGY_CONSUMPTION, 0, NVML_VALUE_TYPE_UNSIGNED_LONG_LONG, 1),),
    "temp_mem_c": ((NVML_FI_DEV_MEMORY_TEMP, 0, NVML_VALUE_TYPE_UNSIGNED_INT, 1),),
    "ecc_corrected_volatile": ((NVML_FI_DEV_ECC_SBE_VOL_TOTAL, 0, NVML_VALUE_TYPE_UNSIGNED_LONG_LONG, 1),),
    "ecc_uncorrected_volatile": ((NVML_FI_DEV_ECC_DBE_VOL_TOTAL, 0, NVML_VALUE_TYPE_UNSIGNED_LONG_LONG, 1),),
    "ecc_corrected_aggregate": ((NVML_FI_DEV_ECC_SBE_AGG_TOTAL, 0, NVML_VALUE_TYPE_UNSIGNED_LONG_LONG, 1),),
    "ecc_uncorrected_aggregate": ((NVML_FI_DEV_ECC_DBE_AGG_TOTAL, 0, NVML_VALUE_TYPE_UNSIGNED_LONG_LONG, 1),),
    "retired_pages_sbe": ((NVML_FI_DEV_RETIRED_SBE, 0, NVML_VALUE_TYPE_UNSIGNED_LONG_LONG, 1),),
    "retired_pages_dbe": ((NVML_FI_DEV_RETIRED_DBE, 0, NVML_VALUE_TYPE_UNSIGNED_LONG_LONG, 1),),
    "retired_pages_pending": ((NVML_FI_DEV_RETIRED_PENDING, 0, NVML_VALUE_TYPE_UNSIGNED_INT, 1),),
    "remap_correctable": ((NVML_FI_DEV_REMAPPED_COR, 0, NVML_VALUE_TYPE_UNSIGNED_INT, 1),),
    "remap_uncorrectable": ((NVML_FI_DEV_REMAPPED_UNC, 0, NVML_VALUE_TYPE_UNSIGNED_INT, 1),),
    "remap_pending": ((NVML_FI_DEV_REMAPPED_PENDING, 0, NVML_VALUE_TYPE_UNSIGNED_INT, 1),),
    "remap_failure": ((NVML_FI_DEV_REMAPPED_FAILURE, 0, NVML_VALUE_TYPE_UNSIGNED_INT, 1),),
    "pcie_tx_bytes": ((NVML_FI_DEV_PCIE_COUNT_TX_BYTES, 0, NVML_VALUE_TYPE_UNSIGNED_LONG_LONG, 1),),
    "pcie_rx_bytes": ((NVML_FI_DEV_PCIE_COUNT_RX_BYTES, 0, NVML_VALUE_TYPE_UNSIGNED_LONG_LONG, 1),),
    "pcie_replays": ((NVML_FI_DEV_PCIE_REPLAY_COUNTER, 0, NVML_VALUE_TYPE_UNSIGNED_INT, 1),),
    "nvlink_tx_bytes": ((NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_TX, _UINT_MAX, NVML_VALUE_TYPE_UNSIGNED_LONG_LONG, 1024),),
    "nvlink_rx_bytes": ((NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_RX, _UINT_MAX, NVML_VALUE_TYPE_UNSIGNED_LONG_LONG, 1024),),
    "nvlink_crc_errors": (
        (NVML_FI_DEV_NVLINK_CRC_FLIT_ERROR_COUNT_TOTAL, 0, NVML_VALUE_TYPE_UNSIGNED_LONG_LONG, 1),
        (NVML_FI_DEV_NVLINK_CRC_DATA_ERROR_COUNT_TOTAL, 0, NVML_VALUE_TYPE_UNSIGNED_LONG_LONG, 1),
    ),
}
_REMAP_READINGS = ("remap_correctable", "remap_uncorrectable", "remap_pending", "remap_failure")
# field id -> (reading, NVML value type, divisor, part) ; part: which share of a split reading
_FIELD_TABLE: dict[int, tuple[str, int, int, int]] = {
    fid: (reading, vtype, div, part)
    for reading, entries in _FIELDS_BY_READING.items()
    for part, (fid, _scope, vtype, div) in enumerate(entries)
}

_SAMPLE_BUFFER = 100  # process utilisation samples the fake driver keeps per GPU


def _now_us() -> int:
    return time.time_ns() // 1000


def _put(ctype: Any, address: int, value: int) -> None:
    ctype.from_address(address).value = value


def _put_string(address: int | None, length: int, text: str) -> int:
    """Copy `text` NUL-terminated into a caller buffer, as NVML does (INSUFFICIENT_SIZE if short)."""
    data = text.encode()
    if not address:
        return NVML_ERROR_INVALID_ARGUMENT
    if len(data) + 1 > length:
        return NVML_ERROR_INSUFFICIENT_SIZE
    ctypes.memmove(address, data + b"\0", len(data) + 1)
    return NVML_SUCCESS


class _Handle:
    """A few bytes of real memory whose address serves as an opaque nvmlDevice_t / nvmlEventSet_t."""

    def __init__(self) -> None:
        self._buffer = (c_char * 16)()
        self.address: int = ctypes.addressof(self._buffer)


# --- devices ----------------------------------------------------------------------------------


class FakeProcess:
    def __init__(self, spec: dict[str, Any]) -> None:
        self.pid = int(spec["pid"])
        self.used_memory_bytes: int | None = spec.get("used_memory_bytes")
        self.type: str = spec.get("type", "C")
        self.gpu_instance_id: int | None = spec.get("gpu_instance_id")
        self.compute_instance_id: int | None = spec.get("compute_instance_id")
        self.sm_util_pct: int | None = spec.get("sm_util_pct")

    @property
    def is_compute(self) -> bool:
        return "C" in self.type


class FakeMig:
    """One MIG device (a compute instance of a GPU instance), reachable by its own handle."""

    def __init__(self, parent: FakeGpu, spec: dict[str, Any]) -> None:
        self.parent = parent
        self.gpu_instance_id = int(spec["gpu_instance_id"])
        self.compute_instance_id = int(spec.get("compute_instance_id", 0))
        self.uuid: str = spec.get("uuid") or _mig_uuid(parent.uuid, self.gpu_instance_id)
        self.name: str = spec.get("name") or f"{parent.name} MIG {self.gpu_instance_id}"
        self.values: dict[str, int] = dict(spec.get("values", {}))
        self.handle = _Handle()

    @property
    def lost(self) -> bool:
        return self.parent.lost


def _mig_uuid(parent_uuid: str, gpu_instance_id: int) -> str:
    import uuid

    return "MIG-" + str(uuid.uuid5(uuid.NAMESPACE_OID, f"{parent_uuid}/{gpu_instance_id}"))


class FakeGpu:
    """One fake GPU: its profile values plus the hooks tests use to change them while running."""

    def __init__(self, driver: FakeNvml, index: int, spec: dict[str, Any]) -> None:
        self._driver = driver
        self.index = index
        self.name: str = spec["name"]
        self.uuid: str = spec["uuid"]
        self.values: dict[str, int] = {k: int(v) for k, v in spec.get("values", {}).items()}
        self.memory_reserved_bytes = int(spec.get("memory_reserved_bytes", 0))
        self.nvlink_links: int | None = spec.get("nvlink_links")
        self.event_mask = _event_mask(spec, self.values)
        mig = spec.get("mig")
        self.mig_capable = mig is not None
        self.mig_current = int(mig.get("current", 0)) if mig else 0
        self.mig_pending = int(mig.get("pending", self.mig_current)) if mig else 0
        self.mig_max_devices = int(mig.get("max_devices", 7)) if mig else 0
        self.migs = [FakeMig(self, m) for m in (mig or {}).get("instances", [])]
        self.processes = [FakeProcess(p) for p in spec.get("processes", [])]
        self.lost = False
        self.handle = _Handle()
        self.failures: dict[str, deque[int]] = {}
        self._samples: deque[tuple[int, int, int]] = deque(maxlen=_SAMPLE_BUFFER)  # pid, us, sm%
        self._last_sample_us = 0

    # -- hooks for tests --------------------------------------------------------------------

    def set(self, reading: str, value: int | None) -> None:
        """Change a raw reading (units of metrics.csv `source`); None makes it NOT_SUPPORTED."""
        with self._driver.lock:
            if value is None:
                self.values.pop(reading, None)
            else:
                self.values[reading] = int(value)

    def unset(self, reading: str) -> None:
        self.set(reading, None)

    def fall_off_bus(self, *, xid: bool = True) -> None:
        """GPU_IS_LOST from every call on this GPU's (and its MIG devices') handles from now on.
        A real driver also logs Xid 79 ("GPU has fallen off the bus"); `xid` delivers that event."""
        with self._driver.lock:
            self.lost = True
        if xid:
            self.inject_xid(XID_FALLEN_OFF_BUS)

    def fail(self, what: str, code: int = NVML_ERROR_TIMEOUT, times: int = 1) -> None:
        """Make the next `times` reads of `what` return `code`. `what` is a raw reading name (its
        NVML call, or its entry in nvmlDeviceGetFieldValues) or an NVML function name."""
        with self._driver.lock:
            self.failures.setdefault(what, deque()).extend([code] * times)

    def inject_xid(
        self, xid: int, *, gpu_instance_id: int = NO_INSTANCE, compute_instance_id: int = NO_INSTANCE
    ) -> None:
        """An XID error (eventData = the XID number; MIG instance ids when attributable)."""
        self.inject_event(nvmlEventTypeXidCriticalError, xid, gpu_instance_id, compute_instance_id)

    def inject_event(
        self, event_type: int, data: int = 0, gpu_instance_id: int = NO_INSTANCE, compute_instance_id: int = NO_INSTANCE
    ) -> None:
        """Queue an event for every event set this GPU registered `event_type` with."""
        self._driver._post_event(self, event_type, data, gpu_instance_id, compute_instance_id)

    def set_processes(self, processes: list[dict[str, Any]]) -> None:
        with self._driver.lock:
            self.processes = [FakeProcess(p) for p in processes]

    def add_process_sample(self, pid: int, sm_util_pct: int, time_us: int | None = None) -> None:
        """Add one sample to the driver's process-utilisation buffer."""
        with self._driver.lock:
            stamp = time_us if time_us is not None else self._next_sample_time()
            self._samples.append((pid, stamp, sm_util_pct))
            self._last_sample_us = max(self._last_sample_us, stamp)

    def reset_energy(self) -> None:
        """The total-energy counter restarts at 0 when the driver is reloaded."""
        self.set("energy_mj", 0)

    # -- driver side --------------------------------------------------------------------------

    @property
    def mig_enabled(self) -> bool:
        return self.mig_current == NVML_DEVICE_MIG_ENABLE

    def take_failure(self, key: str) -> int:
        queue = self.failures.get(key)
        return queue.popleft() if queue else NVML_SUCCESS

    def _next_sample_time(self) -> int:
        return max(_now_us(), self._last_sample_us + 1)

    def refresh_samples(self) -> None:
        """The driver samples running processes periodically: one new sample per process with a
        `sm_util_pct`, taken when the caller asks how many samples there are."""
        stamp = self._next_sample_time()
        for proc in self.processes:
            if proc.sm_util_pct is not None and proc.is_compute:
                self._samples.append((proc.pid, stamp, int(proc.sm_util_pct)))
                self._last_sample_us = stamp

    def samples_since(self, last_seen_us: int) -> list[tuple[int, int, int]]:
        return [s for s in self._samples if s[1] > last_seen_us]


def _event_mask(spec: dict[str, Any], values: dict[str, int]) -> int:
    if "events" in spec:
        return sum(EVENT_KINDS[kind] for kind in set(spec["events"]))
    mask = nvmlEventTypeXidCriticalError
    if "ecc_uncorrected_volatile" in values:
        mask |= nvmlEventTypeDoubleBitEccError
    if "remap_failure" in values:
        mask |= nvmlEventTypeDramRetirementFailure
    return mask


class _EventSet:
    def __init__(self) -> None:
        self.handle = _Handle()
        self.registered: dict[int, int] = {}  # device handle address -> event mask
        self.pending: deque[tuple[int, int, int, int, int]] = deque()


# --- the driver -------------------------------------------------------------------------------


class _Library:
    """Stands in for ctypes.CDLL("libnvidia-ml.so.1"): one CFUNCTYPE attribute per function.
    Asking for another function raises AttributeError (pynvml: FUNCTION_NOT_FOUND) and is noted."""

    def __init__(self, functions: dict[str, Any], missing: Counter[str]) -> None:
        self.__dict__.update(functions)
        self._missing = missing

    def __getattr__(self, name: str) -> Any:
        if not name.startswith("_"):
            self._missing[name] += 1
        raise AttributeError(name)


class FakeNvml:
    """The fake driver's state. Create with a profile, then `install()` it into pynvml."""

    def __init__(self, profile: dict[str, Any]) -> None:
        self.profile = copy.deepcopy(profile)
        self.lock = threading.RLock()
        self._events = threading.Condition(self.lock)
        self.driver_version: str = profile.get("driver_version", "999.99")
        self.gpus = [FakeGpu(self, i, spec) for i, spec in enumerate(profile["gpus"])]
        self.init_error: int = NVML_SUCCESS  # set e.g. NVML_ERROR_DRIVER_NOT_LOADED to fail nvmlInit
        self.init_count = 0
        self.calls: Counter[str] = Counter()  # NVML function name -> calls
        self.calls_by_gpu: Counter[tuple[str, int]] = Counter()  # (function, GPU index) -> calls
        self.internal_errors: list[BaseException] = []  # bugs in the fake; tests assert empty
        self.missing_functions: Counter[str] = Counter()  # asked for, not implemented
        self.field_requests: dict[int, list[tuple[int, int]]] = {}  # GPU index -> last batch
        self._event_sets: dict[int, _EventSet] = {}
        self._error_strings: dict[int, ctypes.Array[c_char]] = {}
        self._devices: dict[int, FakeGpu | FakeMig] = {}
        for gpu in self.gpus:
            self._devices[gpu.handle.address] = gpu
            for mig in gpu.migs:
                self._devices[mig.handle.address] = mig
        self.lib = _Library({name: self._callback(name) for name in PROTOTYPES}, self.missing_functions)

    def gpu(self, index: int) -> FakeGpu:
        return self.gpus[index]

    def tick(self, seconds: float) -> None:
        """Let time pass: the energy counter grows by power x time (mW x s = mJ)."""
        with self.lock:
            for gpu in self.gpus:
                if "energy_mj" in gpu.values and "power_mw" in gpu.values:
                    gpu.values["energy_mj"] += int(gpu.values["power_mw"] * seconds)

    # -- plumbing -------------------------------------------------------------------------------

    def _callback(self, name: str) -> Any:
        restype, argtypes = PROTOTYPES[name]
        impl: Callable[..., int] = getattr(self, "_" + name)

        def call(*args: Any) -> int:
            # An exception must not cross back into C: ctypes would print it and return garbage
            # (often 0 = NVML_SUCCESS). Record it for the tests and answer NVML_ERROR_UNKNOWN.
            try:
                self.calls[name] += 1
                return impl(*args)
            except BaseException as exc:  # noqa: BLE001 - see above
                self.internal_errors.append(exc)
                return 0 if restype is c_void_p else NVML_ERROR_UNKNOWN

        return CFUNCTYPE(restype, *argtypes)(call)

    def _device(self, handle: int | None, function: str, *readings: str) -> tuple[Any, int]:
        """Resolve a handle and apply the common NVML checks, in the driver's order: library
        initialised, valid handle, GPU on the bus, injected failures, reading supported."""
        if self.init_count == 0:
            return None, NVML_ERROR_UNINITIALIZED
        dev = self._devices.get(handle or 0)
        if dev is None:
            return None, NVML_ERROR_INVALID_ARGUMENT
        gpu = dev.parent if isinstance(dev, FakeMig) else dev
        self.calls_by_gpu[function, gpu.index] += 1
        if dev.lost:
            return dev, NVML_ERROR_GPU_IS_LOST
        for key in (function, *readings):
            code = gpu.take_failure(key)
            if code != NVML_SUCCESS:
                return dev, code
        if any(r not in dev.values for r in readings):
            return dev, NVML_ERROR_NOT_SUPPORTED
        return dev, NVML_SUCCESS

    def _gpu_only(self, handle: int | None, function: str, *readings: str) -> tuple[Any, int]:
        """Like _device, but MIG device handles do not support the query (board-level readings)."""
        dev, rc = self._device(handle, function, *readings)
        if rc == NVML_SUCCESS and isinstance(dev, FakeMig):
            return dev, NVML_ERROR_NOT_SUPPORTED
        return dev, rc

    def _read_uint(self, function: str, handle: int, out: int, reading: str) -> int:
        with self.lock:
            dev, rc = self._gpu_only(handle, function, reading)
            if rc != NVML_SUCCESS:
                return rc
            if not out:
                return NVML_ERROR_INVALID_ARGUMENT
            _put(c_uint, out, dev.values[reading])
            return NVML_SUCCESS

    def _post_event(self, gpu: FakeGpu, event_type: int, data: int, gi: int, ci: int) -> None:
        with self._events:
            for event_set in self._event_sets.values():
                if event_set.registered.get(gpu.handle.address, 0) & event_type:
                    event_set.pending.append((gpu.handle.address, event_type, data, gi, ci))
            self._events.notify_all()

    # -- library ----------------------------------------------------------------------------------

    def _nvmlInit_v2(self) -> int:
        return self._nvmlInitWithFlags(0)

    def _nvmlInitWithFlags(self, flags: int) -> int:
        if self.init_error != NVML_SUCCESS:
            return self.init_error
        self.init_count += 1
        return NVML_SUCCESS

    def _nvmlShutdown(self) -> int:
        if self.init_count == 0:
            return NVML_ERROR_UNINITIALIZED
        self.init_count -= 1
        return NVML_SUCCESS

    def _nvmlErrorString(self, result: int) -> int:
        names = {v: k for k, v in ERROR_CODES.items()}
        if result not in self._error_strings:
            text = names.get(result, f"Unknown Error {result}").encode()
            self._error_strings[result] = ctypes.create_string_buffer(text)
        return ctypes.addressof(self._error_strings[result])

    def _nvmlSystemGetDriverVersion(self, buf: int, length: int) -> int:
        return _put_string(buf, length, self.driver_version)

    def _nvmlSystemGetNVMLVersion(self, buf: int, length: int) -> int:
        return _put_string(buf, length, "13." + self.driver_version)

    def _nvmlDeviceGetCount_v2(self, out: int) -> int:
        if self.init_count == 0:
            return NVML_ERROR_UNINITIALIZED
        _put(c_uint, out, len(self.gpus))
        return NVML_SUCCESS

    def _nvmlDeviceGetHandleByIndex_v2(self, index: int, out: int) -> int:
        if self.init_count == 0:
            return NVML_ERROR_UNINITIALIZED
        if index >= len(self.gpus) or not out:
            return NVML_ERROR_INVALID_ARGUMENT
        if self.gpus[index].lost:
            return NVML_ERROR_GPU_IS_LOST
        _put(c_void_p, out, self.gpus[index].handle.address)
        return NVML_SUCCESS

    # -- identity ---------------------------------------------------------------------------------

    def _nvmlDeviceGetIndex(self, handle: int, out: int) -> int:
        dev, rc = self._gpu_only(handle, "nvmlDeviceGetIndex")
        if rc == NVML_SUCCESS:
            _put(c_uint, out, dev.index)
        return rc

    def _nvmlDeviceGetUUID(self, handle: int, buf: int, length: int) -> int:
        dev, rc = self._device(handle, "nvmlDeviceGetUUID")
        return rc if rc != NVML_SUCCESS else _put_string(buf, length, dev.uuid)

    def _nvmlDeviceGetName(self, handle: int, buf: int, length: int) -> int:
        dev, rc = self._device(handle, "nvmlDeviceGetName")
        return rc if rc != NVML_SUCCESS else _put_string(buf, length, dev.name)

    # -- simple readings --------------------------------------------------------------------------

    def _nvmlDeviceGetPowerUsage(self, handle: int, out: int) -> int:
        return self._read_uint("nvmlDeviceGetPowerUsage", handle, out, "power_mw")

    def _nvmlDeviceGetEnforcedPowerLimit(self, handle: int, out: int) -> int:
        return self._read_uint("nvmlDeviceGetEnforcedPowerLimit", handle, out, "power_limit_mw")

    def _nvmlDeviceGetFanSpeed(self, handle: int, out: int) -> int:
        return self._read_uint("nvmlDeviceGetFanSpeed", handle, out, "fan_pct")

    def _nvmlDeviceGetTotalEnergyConsumption(self, handle: int, out: int) -> int:
        with self.lock:
            dev, rc = self._gpu_only(handle, "nvmlDeviceGetTotalEnergyConsumption", "energy_mj")
            if rc == NVML_SUCCESS:
                _put(c_ulonglong, out, dev.values["energy_mj"])
            return rc

    def _nvmlDeviceGetTemperature(self, handle: int, sensor: int, out: int) -> int:
        if sensor != NVML_TEMPERATURE_GPU:
            return NVML_ERROR_INVALID_ARGUMENT
        return self._read_uint("nvmlDeviceGetTemperature", handle, out, "temp_gpu_c")

    def _nvmlDeviceGetTemperatureV(self, handle: int, out: int) -> int:
        with self.lock:
            if not out:
                return NVML_ERROR_INVALID_ARGUMENT
            temp = nvmlTemperature_v1_t.from_address(out)
            if temp.version != nvmlTemperature_v1:
                return NVML_ERROR_ARGUMENT_VERSION_MISMATCH
            if temp.sensorType != NVML_TEMPERATURE_GPU:
                return NVML_ERROR_INVALID_ARGUMENT
            dev, rc = self._gpu_only(handle, "nvmlDeviceGetTemperatureV", "temp_gpu_c")
            if rc == NVML_SUCCESS:
                temp.temperature = dev.values["temp_gpu_c"]
            return rc

    def _nvmlDeviceGetTemperatureThreshold(self, handle: int, kind: int, out: int) -> int:
        reading = {
            NVML_TEMPERATURE_THRESHOLD_SHUTDOWN: "temp_shutdown_c",
            NVML_TEMPERATURE_THRESHOLD_SLOWDOWN: "temp_slowdown_c",
        }.get(kind)
        if reading is None:
            # other thresholds (GPU max, memory max, ...) are not in the profile
            return NVML_ERROR_NOT_SUPPORTED
        return self._read_uint("nvmlDeviceGetTemperatureThreshold", handle, out, reading)

    def _nvmlDeviceGetUtilizationRates(self, handle: int, out: int) -> int:
        with self.lock:
            dev, rc = self._gpu_only(handle, "nvmlDeviceGetUtilizationRates", "util_gpu_pct", "util_mem_pct")
            if rc == NVML_SUCCESS:
                util = nvmlUtilization_t.from_address(out)
                util.gpu, util.memory = dev.values["util_gpu_pct"], dev.values["util_mem_pct"]
            return rc

    def _codec_utilization(self, function: str, reading: str, handle: int, util: int, period: int) -> int:
        with self.lock:
            dev, rc = self._gpu_only(handle, function, reading)
            if rc == NVML_SUCCESS:
                _put(c_uint, util, dev.values[reading])
                _put(c_uint, period, 167_000)  # us; what drivers typically report
            return rc

    def _nvmlDeviceGetEncoderUtilization(self, handle: int, util: int, period: int) -> int:
        return self._codec_utilization("nvmlDeviceGetEncoderUtilization", "util_enc_pct", handle, util, period)

    def _nvmlDeviceGetDecoderUtilization(self, handle: int, util: int, period: int) -> int:
        return self._codec_utilization("nvmlDeviceGetDecoderUtilization", "util_dec_pct", handle, util, period)

    def _nvmlDeviceGetMemoryInfo(self, handle: int, out: int) -> int:
        # The legacy struct counts memory reserved by the driver as used.
        with self.lock:
            dev, rc = self._device(handle, "nvmlDeviceGetMemoryInfo", "mem_used_bytes", "mem_total_bytes")
            if rc == NVML_SUCCESS:
                mem = nvmlMemory_t.from_address(out)
                reserved = getattr(dev, "memory_reserved_bytes", 0)
                mem.total = dev.values["mem_total_bytes"]
                mem.used = dev.values["mem_used_bytes"] + reserved
                mem.free = max(0, mem.total - mem.used)
            return rc

    def _nvmlDeviceGetMemoryInfo_v2(self, handle: int, out: int) -> int:
        with self.lock:
            if not out:
                return NVML_ERROR_INVALID_ARGUMENT
            mem = nvmlMemory_v2_t.from_address(out)
            if mem.version != nvmlMemory_v2:
                return NVML_ERROR_ARGUMENT_VERSION_MISMATCH
            dev, rc = self._device(handle, "nvmlDeviceGetMemoryInfo_v2", "mem_used_bytes", "mem_total_bytes")
            if rc == NVML_SUCCESS:
                mem.total = dev.values["mem_total_bytes"]
                mem.reserved = getattr(dev, "memory_reserved_bytes", 0)
                mem.used = dev.values["mem_used_bytes"]
                mem.free = max(0, mem.total - mem.used - mem.reserved)
            return rc

    def _nvmlDeviceGetClockInfo(self, handle: int, clock: int, out: int) -> int:
        reading = {NVML_CLOCK_SM: "clock_sm_mhz", NVML_CLOCK_MEM: "clock_mem_mhz"}.get(clock)
        if reading is None:
            return NVML_ERROR_NOT_SUPPORTED
        return self._read_uint("nvmlDeviceGetClockInfo", handle, out, reading)

    def _clock_reasons(self, function: str, handle: int, out: int) -> int:
        with self.lock:
            dev, rc = self._gpu_only(handle, function, "clock_event_reasons")
            if rc == NVML_SUCCESS:
                _put(c_ulonglong, out, dev.values["clock_event_reasons"])
            return rc

    def _nvmlDeviceGetCurrentClocksEventReasons(self, handle: int, out: int) -> int:
        return self._clock_reasons("nvmlDeviceGetCurrentClocksEventReasons", handle, out)

    def _nvmlDeviceGetCurrentClocksThrottleReasons(self, handle: int, out: int) -> int:
        return self._clock_reasons("nvmlDeviceGetCurrentClocksThrottleReasons", handle, out)

    # -- field values -----------------------------------------------------------------------------

    def _nvmlDeviceGetFieldValues(self, handle: int, count: int, values: int) -> int:
        with self.lock:
            dev, rc = self._gpu_only(handle, "nvmlDeviceGetFieldValues")
            if rc != NVML_SUCCESS:
                return rc
            if count < 0 or not values:
                return NVML_ERROR_INVALID_ARGUMENT
            array = (nvmlFieldValue_t * count).from_address(values)
            self.field_requests[dev.index] = [(e.fieldId, e.scopeId) for e in array]
            stamp = _now_us()
            for entry in array:
                entry.timestamp, entry.latencyUsec = stamp, 0
                entry.nvmlReturn = self._field_value(dev, entry)
            return NVML_SUCCESS

    def _field_value(self, gpu: FakeGpu, entry: nvmlFieldValue_t) -> int:
        """Fill one nvmlFieldValue_t and return its own nvmlReturn."""
        if entry.fieldId == NVML_FI_DEV_NVLINK_LINK_COUNT:
            if gpu.nvlink_links is None:
                return NVML_ERROR_NOT_SUPPORTED
            entry.valueType, entry.value.uiVal = NVML_VALUE_TYPE_UNSIGNED_INT, gpu.nvlink_links
            return NVML_SUCCESS
        known = _FIELD_TABLE.get(entry.fieldId)
        if known is None:
            return NVML_ERROR_NOT_SUPPORTED
        reading, vtype, divisor, part = known
        code = gpu.take_failure(reading)
        if code != NVML_SUCCESS:
            return code
        if reading not in gpu.values:
            return NVML_ERROR_NOT_SUPPORTED
        if reading in _REMAP_READINGS and gpu.mig_enabled and gpu.migs:
            return NVML_ERROR_NOT_SUPPORTED  # remapped rows are not readable with MIG instances active
        value = _field_share(reading, gpu.values[reading], part) // divisor
        entry.valueType = vtype
        if vtype == NVML_VALUE_TYPE_UNSIGNED_INT:
            entry.value.uiVal = value
        else:
            entry.value.ullVal = value
        return NVML_SUCCESS

    # -- processes --------------------------------------------------------------------------------

    def _nvmlDeviceGetComputeRunningProcesses_v3(self, handle: int, count_p: int, infos: int) -> int:
        with self.lock:
            dev, rc = self._device(handle, "nvmlDeviceGetComputeRunningProcesses_v3")
            if rc != NVML_SUCCESS:
                return rc
            if not count_p:
                return NVML_ERROR_INVALID_ARGUMENT
            procs = _compute_processes(dev)
            room = c_uint.from_address(count_p)
            if not procs:
                room.value = 0
                return NVML_SUCCESS
            if not infos or room.value < len(procs):
                room.value = len(procs)
                return NVML_ERROR_INSUFFICIENT_SIZE
            array = (nvmlProcessInfo_t * len(procs)).from_address(infos)
            for slot, proc in zip(array, procs):
                _fill_process(slot, proc)
            room.value = len(procs)
            return NVML_SUCCESS

    def _nvmlDeviceGetProcessUtilization(self, handle: int, samples: int, count_p: int, last_seen_us: int) -> int:
        with self.lock:
            dev, rc = self._gpu_only(handle, "nvmlDeviceGetProcessUtilization")
            if rc != NVML_SUCCESS:
                return rc
            if dev.mig_enabled:
                return NVML_ERROR_NOT_SUPPORTED  # "On MIG-enabled GPUs ... not currently supported"
            if not count_p:
                return NVML_ERROR_INVALID_ARGUMENT
            if not samples:
                dev.refresh_samples()
            found = dev.samples_since(last_seen_us)
            if not found:
                return NVML_ERROR_NOT_FOUND
            room = c_uint.from_address(count_p)
            if not samples or room.value < len(found):
                room.value = len(found)
                return NVML_ERROR_INSUFFICIENT_SIZE
            array = (nvmlProcessUtilizationSample_t * len(found)).from_address(samples)
            for slot, (pid, stamp, sm) in zip(array, found):
                slot.pid, slot.timeStamp, slot.smUtil = pid, stamp, sm
                slot.memUtil = slot.encUtil = slot.decUtil = 0
            room.value = len(found)
            return NVML_SUCCESS

    # -- MIG --------------------------------------------------------------------------------------

    def _nvmlDeviceGetMigMode(self, handle: int, current: int, pending: int) -> int:
        with self.lock:
            dev, rc = self._gpu_only(handle, "nvmlDeviceGetMigMode")
            if rc == NVML_SUCCESS and not dev.mig_capable:
                return NVML_ERROR_NOT_SUPPORTED
            if rc == NVML_SUCCESS:
                _put(c_uint, current, dev.mig_current)
                _put(c_uint, pending, dev.mig_pending)
            return rc

    def _nvmlDeviceGetMaxMigDeviceCount(self, handle: int, out: int) -> int:
        with self.lock:
            dev, rc = self._gpu_only(handle, "nvmlDeviceGetMaxMigDeviceCount")
            if rc == NVML_SUCCESS and not dev.mig_capable:
                return NVML_ERROR_NOT_SUPPORTED
            if rc == NVML_SUCCESS:
                _put(c_uint, out, dev.mig_max_devices)
            return rc

    def _nvmlDeviceGetMigDeviceHandleByIndex(self, handle: int, index: int, out: int) -> int:
        with self.lock:
            dev, rc = self._gpu_only(handle, "nvmlDeviceGetMigDeviceHandleByIndex")
            if rc != NVML_SUCCESS:
                return rc
            if not dev.mig_capable:
                return NVML_ERROR_NOT_SUPPORTED
            if not dev.mig_enabled:
                return NVML_ERROR_INVALID_ARGUMENT
            if index >= len(dev.migs):
                return NVML_ERROR_NOT_FOUND
            _put(c_void_p, out, dev.migs[index].handle.address)
            return NVML_SUCCESS

    def _nvmlDeviceIsMigDeviceHandle(self, handle: int, out: int) -> int:
        dev, rc = self._device(handle, "nvmlDeviceIsMigDeviceHandle")
        if rc == NVML_SUCCESS:
            _put(c_uint, out, int(isinstance(dev, FakeMig)))
        return rc

    def _mig_attribute(self, function: str, handle: int, out: int, attribute: str) -> int:
        dev, rc = self._device(handle, function)
        if rc == NVML_SUCCESS and not isinstance(dev, FakeMig):
            return NVML_ERROR_INVALID_ARGUMENT
        if rc == NVML_SUCCESS:
            _put(c_uint, out, getattr(dev, attribute))
        return rc

    def _nvmlDeviceGetGpuInstanceId(self, handle: int, out: int) -> int:
        return self._mig_attribute("nvmlDeviceGetGpuInstanceId", handle, out, "gpu_instance_id")

    def _nvmlDeviceGetComputeInstanceId(self, handle: int, out: int) -> int:
        return self._mig_attribute("nvmlDeviceGetComputeInstanceId", handle, out, "compute_instance_id")

    def _nvmlDeviceGetDeviceHandleFromMigDeviceHandle(self, handle: int, out: int) -> int:
        dev, rc = self._device(handle, "nvmlDeviceGetDeviceHandleFromMigDeviceHandle")
        if rc == NVML_SUCCESS and not isinstance(dev, FakeMig):
            return NVML_ERROR_INVALID_ARGUMENT
        if rc == NVML_SUCCESS:
            _put(c_void_p, out, dev.parent.handle.address)
        return rc

    # -- events -----------------------------------------------------------------------------------

    def _nvmlDeviceGetSupportedEventTypes(self, handle: int, out: int) -> int:
        dev, rc = self._gpu_only(handle, "nvmlDeviceGetSupportedEventTypes")
        if rc == NVML_SUCCESS:
            _put(c_ulonglong, out, dev.event_mask)
        return rc

    def _nvmlEventSetCreate(self, out: int) -> int:
        if self.init_count == 0:
            return NVML_ERROR_UNINITIALIZED
        if not out:
            return NVML_ERROR_INVALID_ARGUMENT
        with self.lock:
            event_set = _EventSet()
            self._event_sets[event_set.handle.address] = event_set
            _put(c_void_p, out, event_set.handle.address)
            return NVML_SUCCESS

    def _nvmlDeviceRegisterEvents(self, handle: int, types: int, set_handle: int) -> int:
        with self.lock:
            dev, rc = self._gpu_only(handle, "nvmlDeviceRegisterEvents")
            if rc != NVML_SUCCESS:
                return rc
            event_set = self._event_sets.get(set_handle or 0)
            if event_set is None:
                return NVML_ERROR_INVALID_ARGUMENT
            if types & ~dev.event_mask:
                return NVML_ERROR_NOT_SUPPORTED  # "... or some of requested event types"
            address = dev.handle.address
            event_set.registered[address] = event_set.registered.get(address, 0) | types
            return NVML_SUCCESS

    def _nvmlEventSetWait_v2(self, set_handle: int, data: int, timeout_ms: int) -> int:
        # Called from the reader's event thread; the Condition wait releases the lock (and the GIL).
        with self._events:
            event_set = self._event_sets.get(set_handle or 0)
            if event_set is None or not data:
                return NVML_ERROR_INVALID_ARGUMENT
            deadline = time.monotonic() + timeout_ms / 1000
            while not event_set.pending:
                left = deadline - time.monotonic()
                if left <= 0 or set_handle not in self._event_sets:
                    return NVML_ERROR_TIMEOUT
                self._events.wait(left)
            device, event_type, event_data, gi, ci = event_set.pending.popleft()
            out = nvmlEventData_t.from_address(data)
            out.device, out.eventType, out.eventData = device, event_type, event_data
            out.gpuInstanceId, out.computeInstanceId = gi, ci
            return NVML_SUCCESS

    def _nvmlEventSetFree(self, set_handle: int) -> int:
        with self._events:
            if self._event_sets.pop(set_handle or 0, None) is None:
                return NVML_ERROR_INVALID_ARGUMENT
            self._events.notify_all()
            return NVML_SUCCESS


def _field_share(reading: str, value: int, part: int) -> int:
    """nvlink_crc_errors is served by two counters (flow-control and data CRC): split it."""
    if reading != "nvlink_crc_errors":
        return value
    flit = value // 2
    return flit if part == 0 else value - flit


def _compute_processes(dev: FakeGpu | FakeMig) -> list[FakeProcess]:
    if isinstance(dev, FakeMig):
        procs = dev.parent.processes
        return [p for p in procs if p.is_compute and p.gpu_instance_id == dev.gpu_instance_id]
    return [p for p in dev.processes if p.is_compute]


def _fill_process(slot: nvmlProcessInfo_t, proc: FakeProcess) -> None:
    slot.pid = proc.pid
    used = proc.used_memory_bytes
    slot.usedGpuMemory = NVML_VALUE_NOT_AVAILABLE_ULL if used is None else used
    gi, ci = proc.gpu_instance_id, proc.compute_instance_id
    slot.gpuInstanceId = NO_INSTANCE if gi is None else gi
    slot.computeInstanceId = NO_INSTANCE if ci is None else ci


# --- installing into pynvml ---------------------------------------------------------------------

_installed: FakeNvml | None = None


def install(profile: dict[str, Any]) -> FakeNvml:
    """Make pynvml talk to a fake driver built from `profile` (until `uninstall()`)."""
    from gpufleet.agent import nvml  # the one module that touches pynvml

    global _installed
    fake = FakeNvml(profile)
    nvml.use_library(fake.lib)
    _installed = fake
    return fake


def uninstall() -> None:
    """Forget the fake: the next nvmlInit loads the real libnvidia-ml.so.1 again."""
    from gpufleet.agent import nvml

    global _installed
    nvml.use_library(None)
    _installed = None


@contextmanager
def installed(profile: dict[str, Any]) -> Iterator[FakeNvml]:
    fake = install(profile)
    try:
        yield fake
    finally:
        uninstall()


def load_profile(name: str | Path) -> dict[str, Any]:
    """A bundled profile by name ("h100-sxm", "a100-mig", "t4", "geforce-rtx") or a JSON path."""
    path = Path(name)
    if path.suffix == ".json":
        return json.loads(path.read_text(encoding="utf-8"))
    text = resources.files(__package__).joinpath("profiles", f"{name}.json").read_text(encoding="utf-8")
    return json.loads(text)


def bundled_profiles() -> list[str]:
    folder = resources.files(__package__).joinpath("profiles")
    return sorted(p.name.removesuffix(".json") for p in folder.iterdir() if p.name.endswith(".json"))


def replicate(profile: dict[str, Any], count: int) -> dict[str, Any]:
    """A profile with `count` GPUs copied round-robin from `profile`, each with its own UUID."""
    import uuid

    out = copy.deepcopy(profile)
    gpus = []
    for i in range(count):
        gpu = copy.deepcopy(profile["gpus"][i % len(profile["gpus"])])
        gpu["uuid"] = "GPU-" + str(uuid.uuid5(uuid.NAMESPACE_OID, f"{gpu['uuid']}/{i}"))
        for mig in gpu.get("mig", {}).get("instances", []):
            mig["uuid"] = _mig_uuid(gpu["uuid"], mig["gpu_instance_id"])
        gpus.append(gpu)
    out["gpus"] = gpus
    return out
