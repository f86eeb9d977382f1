"""Window aggregation: means, maxima, counter deltas across windows and resets, throttle seconds."""

from gpufleet.agent.readings import GpuProcess, GpuReading
from gpufleet.agent.window import WindowAggregator, counter_delta
from gpufleet.catalogue import gpu_window_fields

FIELDS = [m.name for m in gpu_window_fields()]


def reading(**values) -> GpuReading:
    return GpuReading(0, "GPU-a", "T4", values)


def values_of(window) -> dict:
    return {name: value for name, value in zip(FIELDS, window.values) if value is not None}


def test_counter_delta_handles_restart_from_zero():
    assert counter_delta(None, 500) == 0
    assert counter_delta(100, 250) == 150
    assert counter_delta(10_000, 300) == 300  # driver reload: counted since the reset, never negative


def test_a_short_power_spike_shows_in_the_max_and_the_mean_is_exact():
    agg = WindowAggregator(nominal_sample_ms=100)
    for i in range(100):  # 10 s at 100 ms; a 500 ms spike to 690 W
        agg.add(i * 100, [reading(power_mw=690_000 if 40 <= i < 45 else 300_000)])
    [window] = agg.close()
    values = values_of(window)
    assert values["power_max_w"] == 690_000
    assert values["power_w"] == round((95 * 300_000 + 5 * 690_000) / 100)
    assert values["samples"] == 100


def test_energy_is_exact_across_windows_and_survives_a_reset():
    agg = WindowAggregator(nominal_sample_ms=1000)
    agg.add(0, [reading(energy_mj=1_000_000)])  # baseline
    agg.close()
    agg.add(1000, [reading(energy_mj=1_300_000)])
    agg.add(2000, [reading(energy_mj=1_600_000)])
    assert values_of(agg.close()[0])["energy_j"] == 600_000  # mJ on the wire
    agg.add(3000, [reading(energy_mj=1_900_000)])
    agg.add(4000, [reading(energy_mj=250_000)])  # the driver reloaded
    assert values_of(agg.close()[0])["energy_j"] == 300_000 + 250_000


def test_unsupported_readings_stay_absent():
    agg = WindowAggregator(nominal_sample_ms=1000)
    agg.add(1000, [reading(power_mw=100_000)])
    values = values_of(agg.close()[0])
    assert "temp_mem_c" not in values and "energy_j" not in values and "ecc_corrected_volatile" not in values


def test_throttle_seconds_and_reason_bits():
    agg = WindowAggregator(nominal_sample_ms=1000)
    agg.add(0, [reading(clock_event_reasons=0)])
    agg.close()
    for t, bits in [(1000, 0x4), (2000, 0x4 | 0x20), (3000, 0x1), (4000, 0x40)]:
        agg.add(t, [reading(clock_event_reasons=bits)])
    values = values_of(agg.close()[0])
    assert values["clock_event_reasons"] == 0x4 | 0x20 | 0x1 | 0x40
    assert values["throttle_power_s"] == 2000  # ms on the wire
    assert values["throttle_thermal_s"] == 2000  # software (0x20) + hardware (0x40) thermal
    assert values["throttle_hw_slowdown_s"] == 1000
    assert values["throttle_idle_s"] == 1000


def test_utilisation_mean_in_hundredths():
    agg = WindowAggregator(nominal_sample_ms=1000)
    for t, util in [(1000, 90), (2000, 95), (3000, 96)]:
        agg.add(t, [reading(util_gpu_pct=util)])
    assert values_of(agg.close()[0])["util_gpu_pct"] == 9367


def test_processes_get_mean_sm_util_and_peak_memory():
    agg = WindowAggregator(nominal_sample_ms=1000)
    agg.add(1000, [GpuReading(0, "GPU-a", "T4", {}, [GpuProcess(7, 100, 50.0), GpuProcess(8, 10, None)])])
    agg.add(2000, [GpuReading(0, "GPU-a", "T4", {}, [GpuProcess(7, 300, 70.0)])])
    [window] = agg.close()
    assert [(p.pid, p.sm_util_pct, p.mem_bytes) for p in window.processes] == [(7, 60.0, 300), (8, None, 10)]


def test_a_lost_gpu_drops_out_and_others_continue():
    agg = WindowAggregator(nominal_sample_ms=1000)
    agg.add(1000, [reading(power_mw=1), GpuReading(1, "GPU-b", "T4", {"power_mw": 2})])
    agg.close()
    agg.add(2000, [GpuReading(1, "GPU-b", "T4", {"power_mw": 2})])
    assert [w.uuid for w in agg.close()] == ["GPU-b"]
