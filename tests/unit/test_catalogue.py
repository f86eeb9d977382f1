"""The catalogue and what is emitted must agree: a field nobody documented fails here."""

import re

from gpufleet.agent.simulate import SimulatedGpuSource
from gpufleet.agent.window import WindowAggregator
from gpufleet.collector import lineproto
from gpufleet.collector.pipeline import PipelineCounters
from gpufleet import catalogue, wire


def catalogued(measurement: str) -> set[str]:
    return {m.name for m in catalogue.all_metrics() if m.measurement == measurement}


def test_every_gpu_field_the_simulator_yields_is_catalogued_and_vice_versa():
    source = SimulatedGpuSource("n1", 2, seed=1)
    agg = WindowAggregator(1000)
    agg.add(0, source.sample())
    agg.add(1000, source.sample())
    window = wire.TelemetryWindow(
        "c1", "n1", 0, 0, 1000, agg.field_names,
        tuple(wire.GpuWindow(w.index, w.uuid, w.model, w.values) for w in agg.close()),
    )
    plan, unknown = lineproto.field_plan(window.fields)
    line = lineproto.gpu_lines(window, plan)[0]
    fields_part = re.split(r"(?<!\\) ", line)[1]  # measurement+tags, fields, time; spaces in tags are escaped
    written = {pair.split("=")[0] for pair in fields_part.split(",")}
    assert not unknown
    # the simulator models no NVLink, fan, video engines or pre-Ampere retired pages
    not_simulated = {"fan_pct", "nvlink_tx_bytes", "nvlink_rx_bytes", "nvlink_crc_errors"}
    not_simulated |= {"retired_pages_sbe", "retired_pages_dbe", "retired_pages_pending"}
    assert written == catalogued("gpu") - not_simulated


def test_collector_telemetry_fields_are_catalogued():
    fields = set(PipelineCounters().as_fields())
    fields |= {"points_written", "lines_refused", "write_retries", "buffered_lines", "dropped_lines"}
    assert fields == catalogued("collector")


def test_raw_readings_have_units_and_scales():
    for metric in catalogue.gpu_window_fields():
        assert metric.unit and metric.description
        if metric.source:
            assert metric.raw_scale is not None
