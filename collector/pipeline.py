"""The collector's core: (topic, payload) in, line-protocol lines out, every rejection counted.

Pure: no MQTT, no InfluxDB, no clock (the caller passes `now_ms`). The transport loop in
collector/main.py feeds it and writes what it returns.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from gpufleet import wire
from gpufleet.wire import Rejected

from . import lineproto


@dataclass
class PipelineCounters:
    received: int = 0
    accepted: int = 0
    gpu_windows: int = 0
    events: int = 0
    states: int = 0
    unknown_fields: int = 0  # field names this collector does not know (a newer agent): skipped, counted
    rejected: Counter[str] = field(default_factory=Counter)

    def as_fields(self) -> dict[str, int]:
        fields = {
            "received": self.received,
            "accepted": self.accepted,
            "gpu_windows": self.gpu_windows,
            "events": self.events,
            "states": self.states,
            "unknown_fields": self.unknown_fields,
        }
        fields.update({f"rejected_{reason}": self.rejected[reason] for reason in wire.REJECT_REASONS})
        return fields


class Pipeline:
    def __init__(self) -> None:
        self.counters = PipelineCounters()

    def handle(self, topic: str, payload: bytes, now_ms: int) -> tuple[list[str], Rejected | None]:
        """Lines to write for one message, or no lines and the rejection (already counted)."""
        self.counters.received += 1
        try:
            lines = self._lines(wire.parse_topic(topic), payload, now_ms)
        except Rejected as rejection:
            self.counters.rejected[rejection.reason] += 1
            return [], rejection
        self.counters.accepted += 1
        return lines, None

    def _lines(self, topic: wire.Topic, payload: bytes, now_ms: int) -> list[str]:
        if topic.kind == "telemetry":
            return self._telemetry_lines(wire.decode_telemetry(payload, topic, now_ms))
        if topic.kind == "events":
            self.counters.events += 1
            return [lineproto.event_line(wire.decode_event(payload, topic, now_ms))]
        self.counters.states += 1
        return [lineproto.state_line(wire.decode_state(payload, topic, now_ms), now_ms)]

    def _telemetry_lines(self, window: wire.TelemetryWindow) -> list[str]:
        plan, unknown = lineproto.field_plan(window.fields)
        self.counters.unknown_fields += len(unknown)
        self.counters.gpu_windows += len(window.gpus)
        return lineproto.gpu_lines(window, plan)
