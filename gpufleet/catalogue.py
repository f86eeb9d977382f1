"""The metric catalogue: every field gpufleet writes, from one checked-in table (metrics.csv).

The agent aggregates samples into window fields by the `source`/`agg` columns, the wire carries
the `gpu` fields as integers in "wire units" (value / wire_scale), the collector turns them back,
and the dashboards are generated from the same rows. A test fails when emitted fields and this
table differ.
"""

from __future__ import annotations

import csv
from functools import cache
from importlib import resources
from typing import NamedTuple


class Metric(NamedTuple):
    measurement: str
    name: str
    unit: str
    wire_scale: float | None  # field value = wire integer * wire_scale; None: not carried per GPU
    wire_id: int | None  # the field's number in wire v2 messages: fixed for good once given out
    source: str  # raw per-sample reading the window field is built from
    raw_scale: float | None  # one raw unit in field units (power_mw -> W: 0.001)
    agg: str  # mean | max | last | delta | or | bit_seconds | count | header | event | state | stat
    arg: int | None  # bit mask for bit_seconds
    description: str

    @property
    def is_int(self) -> bool:
        """Integer field in InfluxDB (`42i`) when the wire unit is the field unit."""
        return self.wire_scale == 1


def _parse_row(row: dict[str, str]) -> Metric:
    return Metric(
        measurement=row["measurement"],
        name=row["name"],
        unit=row["unit"],
        wire_scale=float(row["wire_scale"]) if row["wire_scale"] else None,
        wire_id=int(row["wire_id"]) if row["wire_id"] else None,
        source=row["source"],
        raw_scale=float(row["raw_scale"]) if row["raw_scale"] else None,
        agg=row["agg"],
        arg=int(row["arg"], 0) if row["arg"] else None,
        description=row["description"],
    )


@cache
def all_metrics() -> tuple[Metric, ...]:
    text = resources.files("gpufleet").joinpath("metrics.csv").read_text(encoding="utf-8")
    return tuple(_parse_row(row) for row in csv.DictReader(text.splitlines()))


@cache
def gpu_window_fields() -> tuple[Metric, ...]:
    """The per-GPU fields an agent computes for each window and puts on the wire, in table order."""
    return tuple(m for m in all_metrics() if m.measurement == "gpu" and m.wire_scale is not None)


@cache
def gpu_window_field_by_name() -> dict[str, Metric]:
    return {m.name: m for m in gpu_window_fields()}


@cache
def raw_readings() -> frozenset[str]:
    """Names of the raw per-sample readings a GPU source (NVML or simulator) may produce."""
    return frozenset(m.source for m in gpu_window_fields() if m.source)


@cache
def gpu_window_field_by_wire_id() -> dict[int, Metric]:
    return {m.wire_id: m for m in gpu_window_fields() if m.wire_id is not None}
