"""The fake driver (agent/fakenvml.py) and the pynvml bindings against NVIDIA's own nvml.h.

nvml.h comes with the `nvidia-nvml-dev` wheel (a test dependency). A small C program compiled with
gcc against it prints the constants and struct layouts; prototypes are parsed from the header and
each parameter type is classified by the compiler. Whatever the fake puts in memory or returns
must match, or tests that pass against the fake would say nothing about the real driver.
"""

from __future__ import annotations

import ctypes
import re
import shutil
import subprocess
from functools import cache
from pathlib import Path

import pynvml
import pytest

from gpufleet import catalogue
from gpufleet.agent import capture, fakenvml, nvml

# the fake's struct -> the pynvml class the reader gets back
PYNVML_STRUCTS = {
    "nvmlValue_t": pynvml.c_nvmlValue_t,
    "nvmlFieldValue_t": pynvml.c_nvmlFieldValue_t,
    "nvmlMemory_t": pynvml.c_nvmlMemory_t,
    "nvmlMemory_v2_t": pynvml.c_nvmlMemory_v2_t,
    "nvmlUtilization_t": pynvml.c_nvmlUtilization_t,
    "nvmlTemperature_v1_t": pynvml.c_nvmlTemperature_v1_t,
    "nvmlProcessInfo_t": pynvml.c_nvmlProcessInfo_v3_t,  # what nvmlDeviceGetComputeRunningProcesses_v3 fills
    "nvmlProcessUtilizationSample_t": pynvml.c_nvmlProcessUtilizationSample_t,
    "nvmlEventData_t": pynvml.c_nvmlEventData_t,
}
SCALARS = (
    "NVML_VALUE_TYPE_DOUBLE", "NVML_VALUE_TYPE_UNSIGNED_INT", "NVML_VALUE_TYPE_UNSIGNED_LONG_LONG",
    "NVML_TEMPERATURE_GPU", "NVML_TEMPERATURE_THRESHOLD_SHUTDOWN", "NVML_TEMPERATURE_THRESHOLD_SLOWDOWN",
    "NVML_CLOCK_SM", "NVML_CLOCK_MEM", "NVML_DEVICE_MIG_ENABLE", "nvmlMemory_v2", "nvmlTemperature_v1",
)
# reason bits nvidia-smi names (agent/capture.py) -> nvml.h constant
REASON_CONSTANTS = {
    "gpu_idle": "nvmlClocksEventReasonGpuIdle",
    "applications_clocks_setting": "nvmlClocksEventReasonApplicationsClocksSetting",
    "sw_power_cap": "nvmlClocksEventReasonSwPowerCap",
    "hw_slowdown": "nvmlClocksThrottleReasonHwSlowdown",
    "sync_boost": "nvmlClocksEventReasonSyncBoost",
    "sw_thermal_slowdown": "nvmlClocksEventReasonSwThermalSlowdown",
    "hw_thermal_slowdown": "nvmlClocksThrottleReasonHwThermalSlowdown",
    "hw_power_brake_slowdown": "nvmlClocksThrottleReasonHwPowerBrakeSlowdown",
    "display_clocks_setting": "nvmlClocksEventReasonDisplayClockSetting",
}


@cache
def header() -> Path:
    import nvidia  # namespace package of the nvidia-* wheels

    found = sorted(p for root in nvidia.__path__ for p in Path(root).glob("*/include/nvml.h"))
    if not found:
        pytest.fail("nvml.h not found: install the test extra (nvidia-nvml-dev)", pytrace=False)
    return found[-1]


@cache
def header_text() -> str:
    text = header().read_text(encoding="utf-8", errors="replace")
    text = re.sub(r"/\*.*?\*/", " ", text, flags=re.S)
    return re.sub(r"//[^\n]*", " ", text)


@cache
def header_names() -> frozenset[str]:
    """Every #define and enumerator name in the header."""
    text = header_text()
    defines = re.findall(r"^\s*#\s*define\s+(\w+)", text, flags=re.M)
    enumerators = re.findall(r"^\s*(NVML_\w+)\s*=", text, flags=re.M)
    return frozenset(defines) | frozenset(enumerators)


@cache
def prototypes() -> dict[str, tuple[str, tuple[str, ...]]]:
    """name -> (return type, parameter types) for every DECLDIR function of the header."""
    out = {}
    pattern = (
        r"^[ \t]*(?:DEPRECATED\([^)]*\)\s*)?"  # optional DEPRECATED(13.0)
        r"([\w \t\*]*?)\bDECLDIR\b\s*([\w \t\*]*?)"  # return type, around DECLDIR
        r"\b(nvml\w+)\s*\(([^;{}]*?)\)\s*;"  # name (parameters);
    )
    for pre, mid, name, args in re.findall(pattern, header_text(), flags=re.M):
        ret = " ".join(f"{pre} {mid}".replace("*", " * ").split())
        params = [] if args.strip() in ("", "void") else [_param_type(a) for a in args.split(",")]
        out[name] = (ret, tuple(params))
    return out


def _param_type(param: str) -> str:
    match = re.fullmatch(r"\s*(.*?[\s\*])(\w+)\s*", param.replace("\n", " "))
    assert match, param
    return " ".join(match.group(1).replace("*", " * ").split())


@cache
def compiled(tmp_dir: Path) -> dict[str, str]:
    """Compile and run one C program that prints `KEY VALUE` lines for everything checked here."""
    gcc = shutil.which("gcc") or shutil.which("cc")
    if gcc is None:
        pytest.fail("no C compiler (gcc) to check the fake against nvml.h", pytrace=False)
    lines = [_print_value(n) for n in sorted(_constant_names())]
    for cname, cls in fakenvml.STRUCTS.items():
        lines.append(f'printf("sizeof:{cname} %zu\\n", sizeof({cname}));')
        for fname, *_ in cls._fields_:
            lines.append(f'printf("offset:{cname}.{fname} %zu\\n", offsetof({cname}, {fname}));')
            lines.append(f'printf("size:{cname}.{fname} %zu\\n", sizeof((({cname}*)0)->{fname}));')
    for i, ctype in enumerate(sorted({t for _r, ps in _faked_prototypes().values() for t in ps} | _return_types())):
        lines.append(
            f'printf("type:{i} %d %zu %d\\n", __builtin_classify_type(({ctype})0), sizeof({ctype}), '
            f"(int)(({ctype})-1 < ({ctype})0));"
        )
    source = "\n".join(
        ["#include <stdio.h>", "#include <stddef.h>", '#include "nvml.h"', "int main(void) {", *lines, "return 0; }"]
    )
    (tmp_dir / "abi.c").write_text(source)
    command = [gcc, "-w", "-I", str(header().parent), "-o", str(tmp_dir / "abi"), str(tmp_dir / "abi.c")]
    subprocess.run(command, check=True)
    out = subprocess.run([str(tmp_dir / "abi")], check=True, capture_output=True, text=True).stdout
    values = dict(line.split(" ", 1) for line in out.splitlines())
    types = sorted({t for _r, ps in _faked_prototypes().values() for t in ps} | _return_types())
    return values | {f"ctype:{t}": values[f"type:{i}"] for i, t in enumerate(types)}


def _print_value(name: str) -> str:
    return f'printf("{name} %lld\\n", (long long)({name}));'


def _constant_names() -> set[str]:
    ours = set(fakenvml.ERROR_CODES) | set(fakenvml.FIELD_IDS) | set(fakenvml.EVENT_TYPES) | set(SCALARS)
    ours |= set(REASON_CONSTANTS.values()) | {"NVML_VALUE_NOT_AVAILABLE"}
    theirs = {
        n for n in dir(pynvml)
        if re.match(r"(NVML_ERROR_|NVML_FI_|nvmlClocks(Event|Throttle)Reason|nvmlEventType|NVML_VALUE_TYPE_)", n)
        and isinstance(getattr(pynvml, n), int)
    }
    return ours | (theirs & header_names())


def _faked_prototypes() -> dict[str, tuple[str, tuple[str, ...]]]:
    return {name: prototypes()[name] for name in fakenvml.PROTOTYPES if name in prototypes()}


def _return_types() -> set[str]:
    return {ret.replace("const ", "") for ret, _ in _faked_prototypes().values()}


@pytest.fixture(scope="module")
def c_abi(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return compiled(tmp_path_factory.mktemp("abi"))


# --- constants ---------------------------------------------------------------------------------


def test_the_fakes_constants_are_nvidias(c_abi) -> None:
    ours = fakenvml.ERROR_CODES | fakenvml.FIELD_IDS | fakenvml.EVENT_TYPES
    ours |= {name: getattr(fakenvml, name) for name in SCALARS}
    assert {name: int(c_abi[name]) for name in ours} == ours
    assert int(c_abi["NVML_VALUE_NOT_AVAILABLE"]) == -1
    assert fakenvml.NVML_VALUE_NOT_AVAILABLE_ULL == ctypes.c_ulonglong(-1).value


# Differences between pynvml and nvml.h that are known and harmless (neither is used by the reader).
# Anything else that differs fails the test below.
PYNVML_KNOWN_DIFFERENCES = {
    "NVML_FI_MAX",  # a sentinel: the header has field ids pynvml does not know yet
    "nvmlClocksEventReasonAll",  # pynvml's "all" leaves out the newer BoardLimit and Reliability bits
}


def test_pynvmls_constants_are_nvidias(c_abi) -> None:
    names = [n for n in _constant_names() if hasattr(pynvml, n) and isinstance(getattr(pynvml, n), int)]
    assert len([n for n in names if n.startswith("NVML_FI_")]) > 200
    wrong = {n: (getattr(pynvml, n), int(c_abi[n])) for n in names if getattr(pynvml, n) != int(c_abi[n])}
    assert set(wrong) <= PYNVML_KNOWN_DIFFERENCES, wrong


# raw reading -> the nvml.h fields it is read from (agent/nvml.py and the fake must agree)
READER_FIELDS = {
    "energy_mj": ["NVML_FI_DEV_TOTAL_ENERGY_CONSUMPTION"],
    "temp_mem_c": ["NVML_FI_DEV_MEMORY_TEMP"],
    "ecc_corrected_volatile": ["NVML_FI_DEV_ECC_SBE_VOL_TOTAL"],
    "ecc_uncorrected_volatile": ["NVML_FI_DEV_ECC_DBE_VOL_TOTAL"],
    "ecc_corrected_aggregate": ["NVML_FI_DEV_ECC_SBE_AGG_TOTAL"],
    "ecc_uncorrected_aggregate": ["NVML_FI_DEV_ECC_DBE_AGG_TOTAL"],
    "retired_pages_sbe": ["NVML_FI_DEV_RETIRED_SBE"],
    "retired_pages_dbe": ["NVML_FI_DEV_RETIRED_DBE"],
    "retired_pages_pending": ["NVML_FI_DEV_RETIRED_PENDING"],
    "remap_correctable": ["NVML_FI_DEV_REMAPPED_COR"],
    "remap_uncorrectable": ["NVML_FI_DEV_REMAPPED_UNC"],
    "remap_pending": ["NVML_FI_DEV_REMAPPED_PENDING"],
    "remap_failure": ["NVML_FI_DEV_REMAPPED_FAILURE"],
    "pcie_tx_bytes": ["NVML_FI_DEV_PCIE_COUNT_TX_BYTES"],
    "pcie_rx_bytes": ["NVML_FI_DEV_PCIE_COUNT_RX_BYTES"],
    "pcie_replays": ["NVML_FI_DEV_PCIE_REPLAY_COUNTER"],
    "nvlink_tx_bytes": ["NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_TX"],
    "nvlink_rx_bytes": ["NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_RX"],
    "nvlink_crc_errors": [
        "NVML_FI_DEV_NVLINK_CRC_FLIT_ERROR_COUNT_TOTAL",
        "NVML_FI_DEV_NVLINK_CRC_DATA_ERROR_COUNT_TOTAL",
    ],
}


def test_the_reader_and_the_fake_use_nvidias_field_ids(c_abi) -> None:
    expected = {reading: [int(c_abi[n]) for n in names] for reading, names in READER_FIELDS.items()}
    reader: dict[str, list[int]] = {}
    for f in nvml._FIELDS:
        reader.setdefault(f.reading, []).append(f.field_id)
    fake = {reading: [fid for fid, *_ in entries] for reading, entries in fakenvml._FIELDS_BY_READING.items()}
    assert reader == expected
    assert fake == expected
    # NVLink throughput: scopeId UINT_MAX sums all links (nvml.h), in KiB
    throughput = {(f.scope_id, f.scale) for f in nvml._FIELDS if f.reading in ("nvlink_tx_bytes", "nvlink_rx_bytes")}
    assert throughput == {(0xFFFF_FFFF, 1024)}


def test_clock_event_reason_bits_match_the_header_and_the_catalogue(c_abi) -> None:
    bits = {name: int(c_abi[const]) for name, const in REASON_CONSTANTS.items()}
    assert capture._REASON_BITS == bits
    masks = {m.name: m.arg for m in catalogue.gpu_window_fields() if m.agg == "bit_seconds"}
    assert masks["throttle_idle_s"] == bits["gpu_idle"]
    assert masks["throttle_power_s"] == bits["sw_power_cap"]
    assert masks["throttle_sync_boost_s"] == bits["sync_boost"]
    hardware = bits["hw_slowdown"] | bits["hw_thermal_slowdown"] | bits["hw_power_brake_slowdown"]
    assert masks["throttle_hw_slowdown_s"] == hardware
    assert masks["throttle_thermal_s"] == bits["sw_thermal_slowdown"] | bits["hw_thermal_slowdown"]


# --- structs -------------------------------------------------------------------------------------


def c_member(c_abi: dict[str, str], cname: str, fname: str) -> tuple[int, int]:
    return int(c_abi[f"offset:{cname}.{fname}"]), int(c_abi[f"size:{cname}.{fname}"])


@pytest.mark.parametrize("cname", sorted(fakenvml.STRUCTS))
def test_the_fakes_structs_have_nvidias_layout(c_abi, cname: str) -> None:
    cls = fakenvml.STRUCTS[cname]
    assert ctypes.sizeof(cls) == int(c_abi[f"sizeof:{cname}"])
    for fname, *_ in cls._fields_:
        member = getattr(cls, fname)
        assert (member.offset, member.size) == c_member(c_abi, cname, fname), fname


@pytest.mark.parametrize("cname", sorted(PYNVML_STRUCTS))
def test_pynvmls_structs_have_nvidias_layout(c_abi, cname: str) -> None:
    """pynvml's class may be longer than the header's struct (newer fields after the end, e.g.
    c_nvmlMemory_v2_t): NVML writes no further than the struct version it was given says."""
    cls = PYNVML_STRUCTS[cname]
    assert ctypes.sizeof(cls) >= int(c_abi[f"sizeof:{cname}"])
    for fname, *_ in fakenvml.STRUCTS[cname]._fields_:
        member = getattr(cls, fname)
        assert (member.offset, member.size) == c_member(c_abi, cname, fname), fname


# --- prototypes ----------------------------------------------------------------------------------

_CTYPES_CLASS = {  # ctypes type -> (__builtin_classify_type class, size, signed)
    ctypes.c_void_p: ("pointer", ctypes.sizeof(ctypes.c_void_p), None),
    ctypes.c_uint: ("integer", 4, 0),
    ctypes.c_int: ("integer", 4, 1),
    ctypes.c_ulonglong: ("integer", 8, 0),
}


def _c_class(c_abi: dict[str, str], ctype: str) -> tuple[str, int, int | None]:
    klass, size, signed = c_abi[f"ctype:{ctype}"].split()
    kind = {"1": "integer", "3": "integer", "5": "pointer"}[klass]  # GCC: integer, enumeral, pointer
    return kind, int(size), None if kind == "pointer" else int(signed)


def test_every_faked_function_is_declared_in_the_header() -> None:
    missing = sorted(set(fakenvml.PROTOTYPES) - set(prototypes()))
    assert missing == []
    assert len(prototypes()) > 300  # the parser found the header's functions


@pytest.mark.parametrize("name", sorted(fakenvml.PROTOTYPES))
def test_each_callback_takes_the_c_arguments_of_the_prototype(c_abi, name: str) -> None:
    restype, argtypes = fakenvml.PROTOTYPES[name]
    c_ret, c_params = prototypes()[name]
    assert len(argtypes) == len(c_params), (argtypes, c_params)
    for ours, theirs in zip(argtypes, c_params):
        assert _CTYPES_CLASS[ours] == _c_class(c_abi, theirs), (name, theirs)
    # return: nvmlReturn_t (an enum, values 0..999) or const char*; compare kind and size
    assert _CTYPES_CLASS[restype][:2] == _c_class(c_abi, c_ret.replace("const ", ""))[:2]


def test_pynvml_finds_every_function_the_reader_needs_in_the_fake() -> None:
    for name in fakenvml.bundled_profiles():
        fake = fakenvml.install(fakenvml.load_profile(name))
        try:
            with nvml.open_nvml(event_wait_ms=20) as source:
                source.sample()
                source.sample()
        finally:
            fakenvml.uninstall()
        assert dict(fake.missing_functions) == {}, name
        assert fake.internal_errors == []
