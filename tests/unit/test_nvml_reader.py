"""agent/nvml.py read through the real pynvml bindings against the fake driver (agent/fakenvml.py):
every reading of every bundled profile, units, absent-not-zero, processes and MIG instances."""

from __future__ import annotations

from typing import Any

import pytest

from gpufleet import catalogue
from gpufleet.agent import fakenvml, nvml
from gpufleet.agent.readings import GpuProcess

MiB = 1 << 20
GiB = 1 << 30
PROFILES = ("h100-sxm", "a100-mig", "t4", "geforce-rtx")
REMAP = {"remap_correctable", "remap_uncorrectable", "remap_pending", "remap_failure"}


def expected_values(spec: dict[str, Any]) -> dict[str, int]:
    """What the reader must report for a profile GPU: every value of the profile, except remapped
    rows while MIG instances exist (the driver cannot read them then)."""
    values = dict(spec["values"])
    mig = spec.get("mig") or {}
    if mig.get("current") == 1 and mig.get("instances"):
        values = {k: v for k, v in values.items() if k not in REMAP}
    return values


@pytest.mark.parametrize("name", PROFILES)
def test_every_reading_of_the_profile_comes_out_unchanged(driver, name: str) -> None:
    profile = fakenvml.load_profile(name)
    driver(profile)
    with nvml.open_nvml(watch_events=False) as source:
        readings = source.sample()
    assert [(r.index, r.uuid, r.model) for r in readings] == [
        (i, g["uuid"], g["name"]) for i, g in enumerate(profile["gpus"])
    ]
    for reading, spec in zip(readings, profile["gpus"]):
        assert reading.values == expected_values(spec)
        assert all(type(v) is int for v in reading.values.values())


@pytest.mark.parametrize("name", PROFILES)
def test_readings_are_catalogue_names(driver, name: str) -> None:
    driver(fakenvml.load_profile(name))
    with nvml.open_nvml(watch_events=False) as source:
        for reading in source.sample():
            assert set(reading.values) <= catalogue.raw_readings()


def test_the_profiles_together_cover_every_raw_reading_of_the_catalogue(driver) -> None:
    seen: set[str] = set()
    for name in PROFILES:
        driver(fakenvml.load_profile(name))
        with nvml.open_nvml(watch_events=False) as source:
            for reading in source.sample():
                seen |= set(reading.values)
    assert seen == catalogue.raw_readings()


def test_units_are_those_of_the_catalogue(driver) -> None:
    driver(fakenvml.load_profile("h100-sxm"))
    with nvml.open_nvml(watch_events=False) as source:
        v = source.sample()[0].values
    assert v["power_mw"] == 312_450  # nvmlDeviceGetPowerUsage: mW
    assert v["power_limit_mw"] == 700_000
    assert v["energy_mj"] == 9_876_543_210  # NVML_FI_DEV_TOTAL_ENERGY_CONSUMPTION: mJ
    assert v["mem_total_bytes"] == 81559 * MiB  # bytes, driver-reserved memory not "used"
    assert v["mem_used_bytes"] == 40 * GiB
    assert v["nvlink_tx_bytes"] == 5_000_000 * 1024  # NVML says KiB
    assert v["nvlink_crc_errors"] == 3  # flow-control + data CRC counters summed
    assert v["clock_event_reasons"] == 0x4  # nvmlClocksEventReasonSwPowerCap
    assert (v["temp_slowdown_c"], v["temp_shutdown_c"]) == (90, 92)


def test_unsupported_readings_are_absent_not_zero(driver) -> None:
    driver(fakenvml.load_profile("geforce-rtx"))
    with nvml.open_nvml(watch_events=False) as source:
        values = source.sample()[0].values
        unsupported = source.unsupported[source.gpus[0][1]]
    for reading in ("ecc_corrected_volatile", "ecc_uncorrected_aggregate", "energy_mj", "temp_mem_c",
                    "retired_pages_sbe", "remap_failure", "nvlink_tx_bytes", "pcie_tx_bytes"):
        assert reading not in values
        assert reading in unsupported
    assert values["fan_pct"] == 45


def test_consumer_card_lacks_what_a_real_one_lacks_and_data_centre_boards_have_no_fan(driver) -> None:
    driver(fakenvml.load_profile("t4"))
    with nvml.open_nvml(watch_events=False) as source:
        t4 = source.sample()[0].values
    assert "fan_pct" not in t4 and "temp_mem_c" not in t4 and "nvlink_tx_bytes" not in t4
    assert (t4["retired_pages_sbe"], t4["retired_pages_dbe"], t4["retired_pages_pending"]) == (1, 0, 0)
    assert not REMAP & set(t4)


def test_the_legacy_memory_struct_would_count_reserved_memory_as_used(driver) -> None:
    # Why the reader asks for nvmlMemory_v2_t: v1 reports reserved + allocated as "used".
    import pynvml

    fake = driver(fakenvml.load_profile("t4"))
    pynvml.nvmlInit()
    try:
        handle = pynvml.nvmlDeviceGetHandleByIndex(0)
        v1 = pynvml.nvmlDeviceGetMemoryInfo(handle)
        v2 = pynvml.nvmlDeviceGetMemoryInfo(handle, version=pynvml.nvmlMemory_v2)
    finally:
        pynvml.nvmlShutdown()
    assert v1.used - v2.used == v2.reserved == fake.gpu(0).memory_reserved_bytes == 388 * MiB


# --- processes ---------------------------------------------------------------------------------


def test_compute_processes_with_memory_and_sm_utilisation(driver) -> None:
    driver(fakenvml.load_profile("geforce-rtx"))
    with nvml.open_nvml(watch_events=False) as source:
        processes = source.sample()[0].processes
    # pid 1481 is graphics-only: nvmlDeviceGetComputeRunningProcesses does not list it
    assert processes == [
        GpuProcess(7001, 8800 * MiB, 64.0),
        GpuProcess(7002, None, None),  # NVML_VALUE_NOT_AVAILABLE memory; no utilisation samples
    ]


def test_sm_utilisation_is_the_mean_of_the_samples_since_the_last_read(driver) -> None:
    fake = driver(fakenvml.load_profile("geforce-rtx"))
    gpu = fake.gpu(0)
    gpu.set_processes([{"pid": 11, "used_memory_bytes": GiB, "type": "C"}])
    with nvml.open_nvml(watch_events=False) as source:
        gpu.add_process_sample(11, 20)
        gpu.add_process_sample(11, 40)
        assert source.sample()[0].processes == [GpuProcess(11, GiB, 30.0)]
        # nothing new since: the driver answers NOT_FOUND, which is "no samples", not an error
        assert source.sample()[0].processes == [GpuProcess(11, GiB, None)]
        gpu.add_process_sample(11, 90)
        assert source.sample()[0].processes == [GpuProcess(11, GiB, 90.0)]
        assert not source.error_counts


# --- MIG ---------------------------------------------------------------------------------------


def test_mig_instances_with_memory_and_processes(driver) -> None:
    profile = fakenvml.load_profile("a100-mig")
    driver(profile)
    with nvml.open_nvml(watch_events=False) as source:
        mig_gpu, full_gpu = source.sample()
    instances = profile["gpus"][0]["mig"]["instances"]
    assert [(m.index, m.uuid, m.model) for m in mig_gpu.mig_instances] == [
        (i["gpu_instance_id"], i["uuid"], i["name"]) for i in instances
    ]
    assert [m.values for m in mig_gpu.mig_instances] == [i["values"] for i in instances]
    assert [m.processes for m in mig_gpu.mig_instances] == [
        [GpuProcess(5001, 20 * GiB - 13 * MiB, None)],
        [],
        [GpuProcess(5002, 4 * GiB - 13 * MiB, None)],
    ]
    assert mig_gpu.processes == []  # under MIG, processes are listed under their instance
    # no device utilisation under MIG, and remapped rows are not readable with instances active
    assert not {"util_gpu_pct", "util_mem_pct"} & set(mig_gpu.values)
    assert not REMAP & set(mig_gpu.values)
    # the same board without MIG reads all of it
    assert REMAP <= set(full_gpu.values) and full_gpu.values["util_gpu_pct"] == 62
    assert full_gpu.mig_instances == [] and full_gpu.processes == [GpuProcess(5101, 30 * GiB - 50 * MiB, 60.0)]


def test_remapped_rows_are_not_requested_while_mig_instances_exist(driver) -> None:
    fake = driver(fakenvml.load_profile("a100-mig"))
    with nvml.open_nvml(watch_events=False) as source:
        source.sample()
        requested = {fid for fid, _scope in fake.field_requests[0]}
        assert not requested & {fakenvml.NVML_FI_DEV_REMAPPED_COR, fakenvml.NVML_FI_DEV_REMAPPED_FAILURE}
        # the instances go away: the rows can be read again, with no warning or error
        fake.gpu(0).migs.clear()
        values = source.sample()[0].values
        assert REMAP <= set(values)
        assert not source.error_counts
