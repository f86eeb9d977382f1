"""agent/nvml.py under faults, through real pynvml and the fake driver: lost GPUs, time-outs,
readings that stop being supported, energy counter resets, events, call budget, no driver."""

from __future__ import annotations

import ctypes.util
import logging
import time

import pytest

from gpufleet.agent import fakenvml, nvml
from gpufleet.agent.readings import GpuEvent

FIELD_READINGS = (
    "energy_mj", "temp_mem_c", "ecc_corrected_volatile", "pcie_tx_bytes", "nvlink_rx_bytes", "remap_failure",
)


def wait_for_events(source: nvml.NvmlSource, count: int, timeout_s: float = 5.0) -> list[GpuEvent]:
    events: list[GpuEvent] = []
    deadline = time.monotonic() + timeout_s
    while len(events) < count and time.monotonic() < deadline:
        events += source.poll_events()
        time.sleep(0.01)
    return events


# --- lost GPUs ---------------------------------------------------------------------------------


def test_a_gpu_lost_mid_run_is_reported_once_and_the_others_keep_going(driver) -> None:
    fake = driver(fakenvml.load_profile("h100-sxm"))
    with nvml.open_nvml(watch_events=False) as source:
        before = {r.index: r.values for r in source.sample()}
        fake.gpu(3).fall_off_bus(xid=False)
        after = source.sample()
        assert [r.index for r in after] == [0, 1, 2, 4, 5, 6, 7]
        assert all(r.values == before[r.index] for r in after)
        (event,) = source.poll_events()
        assert (event.index, event.uuid, event.kind, event.code) == (3, fake.gpu(3).uuid, "gpu_lost", 0)
        calls = fake.calls_by_gpu.copy()
        assert len(source.sample()) == 7
        assert source.poll_events() == []  # once
        assert all(n == calls[(fn, i)] for (fn, i), n in fake.calls_by_gpu.items() if i == 3)  # not asked again
        assert not source.error_counts


def test_a_gpu_lost_before_start_is_skipped_and_reported(driver) -> None:
    fake = driver(fakenvml.load_profile("h100-sxm"))
    fake.gpu(0).fall_off_bus(xid=False)
    with nvml.open_nvml(watch_events=False) as source:
        assert [r.index for r in source.sample()] == [1, 2, 3, 4, 5, 6, 7]
        (event,) = source.poll_events()
    assert (event.index, event.uuid, event.kind, event.detail) == (0, "GPU-unknown-0", "gpu_lost", "lost before start")
    assert wire_uuid_ok(event.uuid)


def wire_uuid_ok(uuid: str) -> bool:
    from gpufleet import wire

    return wire._UUID.fullmatch(uuid) is not None


def test_a_gpu_lost_between_enumeration_and_probe_is_reported_with_its_uuid(driver) -> None:
    fake = driver(fakenvml.load_profile("t4"))
    fake.gpu(0).fail("nvmlDeviceGetMigMode", fakenvml.NVML_ERROR_GPU_IS_LOST)  # first probe call
    with nvml.open_nvml(watch_events=False) as source:
        assert source.sample() == []
        assert [(e.uuid, e.kind) for e in source.poll_events()] == [(fake.gpu(0).uuid, "gpu_lost")]


def test_falling_off_the_bus_also_delivers_xid_79(driver) -> None:
    fake = driver(fakenvml.load_profile("t4"))
    with nvml.open_nvml(event_wait_ms=50) as source:
        fake.gpu(0).fall_off_bus()
        assert source.sample() == []
        events = wait_for_events(source, 2)
    assert sorted((e.kind, e.code) for e in events) == [("gpu_lost", 0), ("xid", 79)]


# --- transient errors ----------------------------------------------------------------------------


@pytest.mark.parametrize("reading", FIELD_READINGS)
@pytest.mark.parametrize("code", [fakenvml.NVML_ERROR_TIMEOUT, fakenvml.NVML_ERROR_UNKNOWN])
def test_an_error_on_one_field_drops_it_for_that_sample_and_is_counted(driver, reading: str, code: int) -> None:
    fake = driver(fakenvml.load_profile("h100-sxm"))
    with nvml.open_nvml(watch_events=False) as source:
        fake.gpu(2).fail(reading, code)
        readings = source.sample()
        assert reading not in readings[2].values
        assert all(reading in r.values for r in readings if r.index != 2)
        assert len(readings[2].values) == len(readings[0].values) - 1  # nothing else lost
        assert source.error_counts == {reading: 1}
        assert reading in source.sample()[2].values  # back next sample
        assert reading not in source.unsupported[fake.gpu(2).uuid]


@pytest.mark.parametrize("reading", ["power_mw", "temp_gpu_c", "util_gpu_pct", "mem_used_bytes", "clock_event_reasons"])
def test_an_error_on_one_call_drops_its_readings_for_that_sample(driver, reading: str) -> None:
    fake = driver(fakenvml.load_profile("t4"))
    with nvml.open_nvml(watch_events=False) as source:
        full = source.sample()[0].values
        fake.gpu(0).fail(reading, fakenvml.NVML_ERROR_TIMEOUT)
        values = source.sample()[0].values
        assert reading not in values
        assert set(full) - set(values) <= {reading, "util_mem_pct", "mem_total_bytes"}  # same call
        assert source.error_counts[reading] == 1
        assert source.sample()[0].values == full


def test_a_failed_field_batch_drops_the_fields_only(driver) -> None:
    fake = driver(fakenvml.load_profile("t4"))
    with nvml.open_nvml(watch_events=False) as source:
        full = source.sample()[0].values
        fake.gpu(0).fail("nvmlDeviceGetFieldValues", fakenvml.NVML_ERROR_UNKNOWN)
        values = source.sample()[0].values
        assert "energy_mj" not in values and "ecc_corrected_volatile" not in values
        assert values["power_mw"] == full["power_mw"]
        assert source.error_counts["energy_mj"] == 1
        assert source.sample()[0].values == full


def test_a_failed_field_batch_at_start_is_not_taken_for_unsupported(driver) -> None:
    fake = driver(fakenvml.load_profile("t4"))
    fake.gpu(0).fail("nvmlDeviceGetFieldValues", fakenvml.NVML_ERROR_TIMEOUT)  # the probe's batch
    with nvml.open_nvml(watch_events=False) as source:
        values = source.sample()[0].values
        assert values["energy_mj"] == 123_456_789 and values["retired_pages_sbe"] == 1
        assert source.error_counts == {"nvmlDeviceGetFieldValues": 1}
        assert "nvlink_tx_bytes" not in values  # really unsupported fields drop at the first sample
        assert "nvlink_tx_bytes" in source.unsupported[fake.gpu(0).uuid]


def test_a_failed_process_query_costs_the_processes_of_one_sample(driver) -> None:
    fake = driver(fakenvml.load_profile("t4"))
    with nvml.open_nvml(watch_events=False) as source:
        fake.gpu(0).fail("nvmlDeviceGetComputeRunningProcesses_v3", fakenvml.NVML_ERROR_TIMEOUT)
        assert source.sample()[0].processes == []
        assert source.error_counts == {"processes": 1}
        assert [p.pid for p in source.sample()[0].processes] == [5762]


# --- unsupported ---------------------------------------------------------------------------------


def test_unsupported_readings_are_warned_once_per_gpu_and_cost_nothing_afterwards(driver, caplog) -> None:
    caplog.set_level(logging.WARNING, logger="gpufleet.agent.nvml")
    fake = driver(fakenvml.load_profile("h100-sxm"))
    with nvml.open_nvml(watch_events=False) as source:
        for _ in range(3):
            source.sample()
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 8  # one line per GPU at start, none while sampling
    assert all("fan_pct" in w and "retired_pages_sbe" in w for w in warnings)
    assert fake.calls_by_gpu["nvmlDeviceGetFanSpeed", 0] == 1  # the probe
    requested = {fid for fid, _scope in fake.field_requests[0]}
    assert fakenvml.NVML_FI_DEV_RETIRED_SBE not in requested
    assert fakenvml.NVML_FI_DEV_TOTAL_ENERGY_CONSUMPTION in requested


def test_a_reading_that_becomes_unsupported_is_dropped_with_one_warning(driver, caplog) -> None:
    caplog.set_level(logging.WARNING, logger="gpufleet.agent.nvml")
    fake = driver(fakenvml.load_profile("geforce-rtx"))
    with nvml.open_nvml(watch_events=False) as source:
        caplog.clear()
        fake.gpu(0).unset("fan_pct")
        fake.gpu(0).unset("pcie_replays")
        for _ in range(3):
            values = source.sample()[0].values
        assert "fan_pct" not in values and "pcie_replays" not in values
        assert not source.error_counts
    messages = [r.getMessage() for r in caplog.records]
    assert len([m for m in messages if "fan_pct" in m]) == 1
    assert len([m for m in messages if "pcie_replays" in m]) == 1
    assert fake.calls_by_gpu["nvmlDeviceGetFanSpeed", 0] == 2  # probe + the sample that found out


def test_a_field_batch_that_becomes_unsupported_is_no_longer_asked_for(driver) -> None:
    fake = driver(fakenvml.load_profile("t4"))
    with nvml.open_nvml(watch_events=False) as source:
        fake.gpu(0).fail("nvmlDeviceGetFieldValues", fakenvml.NVML_ERROR_NOT_SUPPORTED)
        values = source.sample()[0].values
        assert "energy_mj" not in values and values["power_mw"] == 26_780
        calls = fake.calls["nvmlDeviceGetFieldValues"]
        source.sample()
        assert fake.calls["nvmlDeviceGetFieldValues"] == calls


def test_a_mig_device_failing_its_memory_query_leaves_the_gpus_own_memory_alone(driver) -> None:
    fake = driver(fakenvml.load_profile("a100-mig"))
    with nvml.open_nvml(watch_events=False) as source:
        fake.gpu(0).fail("nvmlDeviceGetMemoryInfo_v2", fakenvml.NVML_ERROR_TIMEOUT)  # the GPU's own query
        gpu = source.sample()[0]
        assert "mem_used_bytes" not in gpu.values and all(m.values for m in gpu.mig_instances)
        assert source.error_counts == {"mem_used_bytes": 1, "mem_total_bytes": 1}
        fake.gpu(0).migs[1].values.clear()  # this MIG device stops answering memory queries
        gpu = source.sample()[0]
        assert gpu.values["mem_used_bytes"] == 50 * (1 << 20)
        assert [bool(m.values) for m in gpu.mig_instances] == [True, False, True]


def test_older_driver_without_the_newer_functions_falls_back(driver) -> None:
    fake = driver(fakenvml.load_profile("t4"))
    for name in ("nvmlDeviceGetTemperatureV", "nvmlDeviceGetCurrentClocksEventReasons", "nvmlDeviceGetMemoryInfo_v2"):
        delattr(fake.lib, name)  # an R470-era libnvidia-ml lacks them
    with nvml.open_nvml(watch_events=False) as source:
        values = source.sample()[0].values
    spec = fake.gpu(0)
    assert values["temp_gpu_c"] == spec.values["temp_gpu_c"]
    assert values["clock_event_reasons"] == spec.values["clock_event_reasons"]
    # the legacy struct counts reserved memory as used: that is what such a driver tells
    assert values["mem_used_bytes"] == spec.values["mem_used_bytes"] + spec.memory_reserved_bytes
    assert fake.calls["nvmlDeviceGetTemperature"] > 0


# --- counters ------------------------------------------------------------------------------------


def test_energy_counter_grows_and_restarts_at_zero_after_a_driver_reload(driver) -> None:
    fake = driver(fakenvml.load_profile("t4"))
    with nvml.open_nvml(watch_events=False) as source:
        e0 = source.sample()[0].values["energy_mj"]
        fake.tick(10.0)  # 26.78 W for 10 s
        e1 = source.sample()[0].values["energy_mj"]
        fake.gpu(0).reset_energy()
        e2 = source.sample()[0].values["energy_mj"]
        fake.tick(1.0)
        e3 = source.sample()[0].values["energy_mj"]
        assert (e1 - e0, e2, e3) == (267_800, 0, 26_780)  # raw totals; the window takes deltas
        assert not source.error_counts


# --- events --------------------------------------------------------------------------------------


def test_an_xid_is_delivered_without_blocking_sample(driver) -> None:
    fake = driver(fakenvml.load_profile("h100-sxm"))
    with nvml.open_nvml(event_wait_ms=1000) as source:
        t0 = time.monotonic()
        for _ in range(5):
            source.sample()
        assert time.monotonic() - t0 < 0.5  # the event thread waits, sample() does not
        assert source.poll_events() == []
        fake.gpu(5).inject_xid(48)
        fake.gpu(6).inject_xid(94, gpu_instance_id=2, compute_instance_id=0)
        events = wait_for_events(source, 2)
    assert [(e.index, e.uuid, e.kind, e.code) for e in events] == [
        (5, fake.gpu(5).uuid, "xid", 48),
        (6, fake.gpu(6).uuid, "xid", 94),
    ]
    assert events[1].detail == "gpu_instance=2 compute_instance=0"
    assert all(abs(e.time_ms - time.time() * 1000) < 10_000 for e in events)


def test_double_bit_ecc_and_remap_failure_events(driver) -> None:
    fake = driver(fakenvml.load_profile("h100-sxm"))
    with nvml.open_nvml(event_wait_ms=50) as source:
        fake.gpu(1).inject_event(fakenvml.nvmlEventTypeDoubleBitEccError)
        fake.gpu(2).inject_event(fakenvml.nvmlEventTypeDramRetirementFailure)
        events = wait_for_events(source, 2)
    assert sorted((e.index, e.kind, e.code) for e in events) == [(1, "ecc_dbe", 1), (2, "remap_failure", 1)]


def test_without_driver_events_dbe_and_remap_failure_come_from_the_counters(driver) -> None:
    profile = fakenvml.load_profile("h100-sxm")
    profile["gpus"][0]["events"] = ["xid"]  # this GPU cannot report ECC / remap events
    fake = driver(profile)
    with nvml.open_nvml(event_wait_ms=50) as source:
        source.sample()
        fake.gpu(0).set("ecc_uncorrected_volatile", 3)
        fake.gpu(0).set("remap_failure", 1)
        fake.gpu(1).set("ecc_uncorrected_volatile", 3)  # GPU 1 reports a driver event instead
        source.sample()
        source.sample()
        events = source.poll_events()
    assert sorted((e.index, e.kind, e.code) for e in events) == [(0, "ecc_dbe", 3), (0, "remap_failure", 1)]


def test_close_stops_the_event_thread_and_shuts_nvml_down(driver) -> None:
    fake = driver(fakenvml.load_profile("t4"))
    source = nvml.open_nvml(event_wait_ms=100)
    assert fake.init_count == 1
    t0 = time.monotonic()
    source.close()
    assert time.monotonic() - t0 < 1.0  # bounded by one wait
    assert fake.init_count == 0
    assert fake.calls["nvmlEventSetFree"] == 1
    source.close()  # idempotent


# --- call budget ---------------------------------------------------------------------------------


def test_one_field_values_call_per_gpu_per_sample(driver) -> None:
    fake = driver(fakenvml.load_profile("h100-sxm"))
    with nvml.open_nvml(watch_events=False) as source:
        fake.calls.clear()
        fake.calls_by_gpu.clear()
        for _ in range(5):
            source.sample()
    assert fake.calls["nvmlDeviceGetFieldValues"] == 5 * 8
    assert all(fake.calls_by_gpu["nvmlDeviceGetFieldValues", i] == 5 for i in range(8))
    # static values are read at start only; PCIe throughput (which sleeps in the driver) never
    assert fake.calls["nvmlDeviceGetTemperatureThreshold"] == 0
    assert "nvmlDeviceGetPcieThroughput" not in fake.missing_functions
    assert "nvmlDeviceGetPcieThroughput" not in fake.calls


def test_nvml_calls_per_gpu_per_sample_stay_few(driver) -> None:
    fake = driver(fakenvml.load_profile("h100-sxm"))
    with nvml.open_nvml(watch_events=False) as source:
        fake.calls.clear()
        source.sample()
        # 1 field batch + 10 single readings + 2 process queries + 2 process-utilisation queries
        assert sum(fake.calls.values()) == 15 * 8


# --- no driver -------------------------------------------------------------------------------------


def test_driver_not_loaded_raises_a_clear_error(driver) -> None:
    fake = driver(fakenvml.load_profile("t4"))
    fake.init_error = fakenvml.NVML_ERROR_DRIVER_NOT_LOADED
    with pytest.raises(nvml.NvmlUnavailable, match=r"^NVIDIA driver not loaded: "):
        nvml.open_nvml()


@pytest.mark.skipif(ctypes.util.find_library("nvidia-ml") is not None, reason="this machine has an NVIDIA driver")
def test_no_nvml_library_raises_a_clear_error() -> None:
    nvml.use_library(None)
    with pytest.raises(nvml.NvmlUnavailable, match=r"libnvidia-ml\.so\.1 not found"):
        nvml.open_nvml()
