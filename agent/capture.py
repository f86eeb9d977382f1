"""`nvidia-smi -q -x` captures -> fake-driver profiles, and one sample of them through the reader.

`profile_from_capture(path)` turns what nvidia-smi showed into a profile for agent/fakenvml.py:
every value the capture shows becomes a raw reading (in the units of metrics.csv `source`:
"70.00 W" -> power_mw 70000, "1032 MiB" -> mem_used_bytes 1082130432), and what it shows as N/A,
or lacks, is left out, so the fake driver answers NOT_SUPPORTED for it. `one_sample_json(profile)`
then reads that fake driver through the real reader (agent/nvml.py -> pynvml -> "C") once:
`gpufleet agent --from-capture FILE.xml --once` shows what the agent would read on that machine.

Captures come from other machines, so they are parsed defensively: at most 16 MiB, and a document
type declaration may name an external DTD (nvidia-smi writes `<!DOCTYPE nvidia_smi_log SYSTEM
"nvsmi_device_v12.dtd">`, which is never fetched) but may not declare entities or carry an internal
subset (no billion laughs, no external entities).
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any
from xml.parsers import expat

from . import fakenvml, nvml
from .readings import GpuReading

MAX_CAPTURE_BYTES = 16 << 20
_MIB = 1 << 20


class CaptureError(ValueError):
    """The file is not a usable (or not a safe) nvidia-smi XML capture."""


# --- safe parsing --------------------------------------------------------------------------------


def _refuse(what: str) -> Any:
    def handler(*_args: Any) -> None:
        raise CaptureError(f"refused: the capture contains {what}")

    return handler


def _check_safe(data: bytes) -> None:
    """First pass with expat: refuse entity declarations, internal DTD subsets and entity
    references expat cannot resolve. The external DTD is never read (expat's default)."""

    def doctype(_name: str, _system: str | None, _public: str | None, internal_subset: int) -> None:
        if internal_subset:
            raise CaptureError("refused: the capture's DOCTYPE has an internal subset")

    parser = expat.ParserCreate()
    parser.StartDoctypeDeclHandler = doctype
    parser.EntityDeclHandler = _refuse("an entity declaration")
    parser.UnparsedEntityDeclHandler = _refuse("an unparsed entity declaration")
    parser.ExternalEntityRefHandler = _refuse("an external entity reference")
    parser.SkippedEntityHandler = _refuse("a reference to an undeclared entity")
    try:
        parser.Parse(data, True)
    except expat.ExpatError as err:
        raise CaptureError(f"not well-formed XML: {err}") from err


def parse_capture(path: str | Path) -> ET.Element:
    """The root element of a capture, after the safety checks."""
    path = Path(path)
    with path.open("rb") as f:
        data = f.read(MAX_CAPTURE_BYTES + 1)
    if len(data) > MAX_CAPTURE_BYTES:
        raise CaptureError(f"{path}: larger than {MAX_CAPTURE_BYTES >> 20} MiB")
    _check_safe(data)
    root = ET.fromstring(data)
    if root.tag != "nvidia_smi_log":
        raise CaptureError(f"{path}: not an nvidia-smi capture (root element <{root.tag}>)")
    return root


# --- reading values out of the XML ----------------------------------------------------------------


def _text(node: ET.Element, path: str) -> str | None:
    found = node.find(path)
    if found is None or found.text is None:
        return None
    return found.text.strip()


def _quantity(node: ET.Element, path: str, unit: str = "") -> Decimal | None:
    """'70.00 W' -> Decimal('70.00') when the unit matches; None for N/A, [N/A], 'Not Supported',
    'Requested functionality has been deprecated', a missing element, or anything else."""
    text = _text(node, path)
    if text is None:
        return None
    if unit:
        if not text.endswith(" " + unit):
            return None
        text = text[: -len(unit) - 1]
    try:
        value = Decimal(text)
    except InvalidOperation:
        return None
    return value if value.is_finite() else None


def _first(node: ET.Element, paths: tuple[str, ...], unit: str) -> Decimal | None:
    for path in paths:
        value = _quantity(node, path, unit)
        if value is not None:
            return value
    return None


def _yes_no(node: ET.Element, path: str) -> int | None:
    return {"Yes": 1, "No": 0}.get(_text(node, path) or "")


def _put(values: dict[str, int], reading: str, value: Decimal | int | None, scale: int = 1) -> None:
    if value is not None:
        values[reading] = int(Decimal(value) * scale)


# nvidia-smi v11 writes <power_readings>, v12+ <gpu_power_readings>; v13 has average and instant
# draw. nvmlDeviceGetPowerUsage is what "power_draw" showed (the 1 s average on Ampere and newer).
_POWER_DRAW = tuple(
    f"{group}/{name}"
    for name in ("power_draw", "average_power_draw", "instant_power_draw")
    for group in ("gpu_power_readings", "power_readings")
)
_POWER_LIMIT = ("gpu_power_readings/current_power_limit", "power_readings/enforced_power_limit")

# clocks_event_reason_<name> (v12+) or clocks_throttle_reason_<name> (older): nvmlClocksEventReason*
_REASON_BITS = {
    "gpu_idle": 0x1,
    "applications_clocks_setting": 0x2,
    "sw_power_cap": 0x4,
    "hw_slowdown": 0x8,
    "sync_boost": 0x10,
    "sw_thermal_slowdown": 0x20,
    "hw_thermal_slowdown": 0x40,
    "hw_power_brake_slowdown": 0x80,
    "display_clocks_setting": 0x100,
}


def _power(gpu: ET.Element, values: dict[str, int]) -> None:
    _put(values, "power_mw", _first(gpu, _POWER_DRAW, "W"), 1000)
    _put(values, "power_limit_mw", _first(gpu, _POWER_LIMIT, "W"), 1000)


def _temperatures(gpu: ET.Element, values: dict[str, int]) -> None:
    _put(values, "temp_gpu_c", _quantity(gpu, "temperature/gpu_temp", "C"))
    _put(values, "temp_mem_c", _quantity(gpu, "temperature/memory_temp", "C"))
    _put(values, "temp_slowdown_c", _quantity(gpu, "temperature/gpu_temp_slow_threshold", "C"))
    _put(values, "temp_shutdown_c", _quantity(gpu, "temperature/gpu_temp_max_threshold", "C"))
    _put(values, "fan_pct", _quantity(gpu, "fan_speed", "%"))


def _utilization(gpu: ET.Element, values: dict[str, int]) -> None:
    _put(values, "util_gpu_pct", _quantity(gpu, "utilization/gpu_util", "%"))
    _put(values, "util_mem_pct", _quantity(gpu, "utilization/memory_util", "%"))
    _put(values, "util_enc_pct", _quantity(gpu, "utilization/encoder_util", "%"))
    _put(values, "util_dec_pct", _quantity(gpu, "utilization/decoder_util", "%"))


def _memory(node: ET.Element, values: dict[str, int]) -> None:
    _put(values, "mem_used_bytes", _quantity(node, "fb_memory_usage/used", "MiB"), _MIB)
    _put(values, "mem_total_bytes", _quantity(node, "fb_memory_usage/total", "MiB"), _MIB)


def _clocks(gpu: ET.Element, values: dict[str, int]) -> None:
    _put(values, "clock_sm_mhz", _quantity(gpu, "clocks/sm_clock", "MHz"))
    _put(values, "clock_mem_mhz", _quantity(gpu, "clocks/mem_clock", "MHz"))
    _put(values, "pcie_replays", _quantity(gpu, "pci/replay_counter"))


def _ecc_total(scope: ET.Element | None, corrected: bool) -> int | None:
    """Sum of the corrected (or uncorrected) counters of <volatile> or <aggregate>: SRAM + DRAM
    (v11+) or single_bit/double_bit totals (older); None if any of them is N/A."""
    if scope is None:
        return None
    old = scope.find("single_bit/total" if corrected else "double_bit/total")
    if old is not None:
        return _int_or_none(old.text)
    parts = [
        child.text
        for child in scope
        if child.tag.endswith("correctable") or "_uncorrectable" in child.tag
        if ("_uncorrectable" not in child.tag) == corrected
    ]
    numbers = [_int_or_none(p) for p in parts]
    if not numbers or any(n is None for n in numbers):
        return None
    return sum(n for n in numbers if n is not None)


def _int_or_none(text: str | None) -> int | None:
    try:
        return int((text or "").strip())
    except ValueError:
        return None


def _ecc(gpu: ET.Element, values: dict[str, int]) -> None:
    if _text(gpu, "ecc_mode/current_ecc") != "Enabled":
        return  # counters are not kept (NVML: NOT_SUPPORTED) with ECC off or absent
    for scope in ("volatile", "aggregate"):
        node = gpu.find(f"ecc_errors/{scope}")
        _put(values, f"ecc_corrected_{scope}", _ecc_total(node, corrected=True))
        _put(values, f"ecc_uncorrected_{scope}", _ecc_total(node, corrected=False))


def _retired_pages(gpu: ET.Element, values: dict[str, int]) -> None:
    _put(values, "retired_pages_sbe", _quantity(gpu, "retired_pages/multiple_single_bit_retirement/retired_count"))
    _put(values, "retired_pages_dbe", _quantity(gpu, "retired_pages/double_bit_retirement/retired_count"))
    pending = _yes_no(gpu, "retired_pages/pending_retirement")
    if pending is None:  # older nvidia-smi
        pending = _yes_no(gpu, "retired_pages/pending_blacklist")
    _put(values, "retired_pages_pending", pending)


def _remapped_rows(gpu: ET.Element, values: dict[str, int]) -> None:
    _put(values, "remap_correctable", _quantity(gpu, "remapped_rows/remapped_row_corr"))
    _put(values, "remap_uncorrectable", _quantity(gpu, "remapped_rows/remapped_row_unc"))
    _put(values, "remap_pending", _yes_no(gpu, "remapped_rows/remapped_row_pending"))
    _put(values, "remap_failure", _yes_no(gpu, "remapped_rows/remapped_row_failure"))


def _clock_reasons(gpu: ET.Element, values: dict[str, int]) -> None:
    for container, prefix in (
        ("clocks_event_reasons", "clocks_event_reason_"),
        ("clocks_throttle_reasons", "clocks_throttle_reason_"),
    ):
        node = gpu.find(container)
        if node is None:
            continue
        states = {child.tag.removeprefix(prefix): (child.text or "").strip() for child in node}
        known = {name: state for name, state in states.items() if name in _REASON_BITS}
        if known and all(state in ("Active", "Not Active") for state in known.values()):
            values["clock_event_reasons"] = sum(_REASON_BITS[n] for n, s in known.items() if s == "Active")
        return


def _processes(gpu: ET.Element) -> list[dict[str, Any]]:
    out = []
    for proc in gpu.findall("processes/process_info"):
        pid = _int_or_none(_text(proc, "pid"))
        if pid is None:
            continue
        used = _quantity(proc, "used_memory", "MiB")
        out.append(
            {
                "pid": pid,
                "used_memory_bytes": None if used is None else int(used * _MIB),
                # Some captures (WDDM) name no type: count such a process as compute and graphics.
                "type": _text(proc, "type") or "C+G",
                "gpu_instance_id": _int_or_none(_text(proc, "gpu_instance_id")),
                "compute_instance_id": _int_or_none(_text(proc, "compute_instance_id")),
            }
        )
    return out


def _mig(gpu: ET.Element) -> dict[str, Any] | None:
    current = _text(gpu, "mig_mode/current_mig")
    if current not in ("Enabled", "Disabled"):
        return None  # N/A: not MIG capable
    instances = []
    for dev in gpu.findall("mig_devices/mig_device"):
        values: dict[str, int] = {}
        _memory(dev, values)
        instances.append(
            {
                "gpu_instance_id": int(_text(dev, "gpu_instance_id") or 0),
                "compute_instance_id": int(_text(dev, "compute_instance_id") or 0),
                "values": values,
            }
        )
    return {
        "current": int(current == "Enabled"),
        "pending": int(_text(gpu, "mig_mode/pending_mig") == "Enabled"),
        "max_devices": 7,  # A100 / H100; nvidia-smi does not show it
        "instances": instances,
    }


def _gpu_profile(gpu: ET.Element, index: int) -> dict[str, Any]:
    values: dict[str, int] = {}
    readers = (_power, _temperatures, _utilization, _memory, _clocks, _ecc, _retired_pages, _remapped_rows)
    for reader in (*readers, _clock_reasons):
        reader(gpu, values)
    spec: dict[str, Any] = {
        "name": _text(gpu, "product_name") or "NVIDIA GPU",
        "uuid": _text(gpu, "uuid") or f"GPU-capture-{index}",
        "values": values,
        "processes": _processes(gpu),
    }
    reserved = _quantity(gpu, "fb_memory_usage/reserved", "MiB")
    if reserved is not None:
        spec["memory_reserved_bytes"] = int(reserved * _MIB)
    mig = _mig(gpu)
    if mig is not None:
        spec["mig"] = mig
    return spec


def profile_from_capture(path: str | Path) -> dict[str, Any]:
    """A fake-driver profile showing exactly what the capture shows (see the module docstring)."""
    root = parse_capture(path)
    gpus = [_gpu_profile(gpu, i) for i, gpu in enumerate(root.findall("gpu"))]
    if not gpus:
        raise CaptureError(f"{path}: no <gpu> in the capture")
    return {
        "description": f"nvidia-smi capture {Path(path).name}",
        "driver_version": _text(root, "driver_version") or "unknown",
        "gpus": gpus,
    }


# --- one sample through the real reader ------------------------------------------------------------


def _process_json(reading: GpuReading) -> list[dict[str, Any]]:
    return [
        {"pid": p.pid, "used_memory_bytes": p.used_memory_bytes, "sm_util_pct": p.sm_util_pct}
        for p in reading.processes
    ]


def reading_json(reading: GpuReading) -> dict[str, Any]:
    return {
        "index": reading.index,
        "model": reading.model,
        "values": dict(sorted(reading.values.items())),
        "processes": _process_json(reading),
        "mig_instances": [
            {
                "gpu_instance_id": mig.index,
                "uuid": mig.uuid,
                "model": mig.model,
                "values": dict(sorted(mig.values.items())),
                "processes": _process_json(mig),
            }
            for mig in reading.mig_instances
        ],
    }


def one_sample_json(profile: dict[str, Any]) -> dict[str, Any]:
    """Install the fake driver with `profile`, open the real reader, take one sample: a JSON-able
    dict keyed by GPU UUID with the raw readings (and processes, MIG instances)."""
    with fakenvml.installed(profile):
        source = nvml.open_nvml(watch_events=False)
        try:
            readings = source.sample()
        finally:
            source.close()
    return {r.uuid: reading_json(r) for r in readings}


def sample_capture(path: str | Path) -> dict[str, Any]:
    """`gpufleet agent --from-capture FILE.xml --once`: one sample of a captured machine."""
    return one_sample_json(profile_from_capture(path))
