"""The collector's core: (topic, payload) in, line-protocol lines out, every rejection counted.

Pure: no MQTT, no InfluxDB, no clock (the caller passes `now_ms`). The transport loop in
collector/main.py feeds it and writes what it returns.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from gpufleet import wire
from gpufleet.wire import Rejected

from . import lineproto
from .attribute import UNALLOCATED, attribute, by_tenant
from .tenants import TenantRules


@dataclass
class PipelineCounters:
    received: int = 0
    accepted: int = 0
    gpu_windows: int = 0
    tenant_points: int = 0
    events: int = 0
    states: int = 0
    unknown_fields: int = 0  # field names this collector does not know (a newer agent): skipped, counted
    rejected: Counter[str] = field(default_factory=Counter)

    def as_fields(self) -> dict[str, int]:
        fields = {
            "received": self.received,
            "accepted": self.accepted,
            "gpu_windows": self.gpu_windows,
            "tenant_points": self.tenant_points,
            "events": self.events,
            "states": self.states,
            "unknown_fields": self.unknown_fields,
        }
        fields.update({f"rejected_{reason}": self.rejected[reason] for reason in wire.REJECT_REASONS})
        return fields


class Pipeline:
    def __init__(self, tenant_rules: Callable[[], TenantRules] = TenantRules) -> None:
        """`tenant_rules` is asked once per message, so that reloaded rules apply at once."""
        self.counters = PipelineCounters()
        self._tenant_rules = tenant_rules

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
        usage = self._tenant_usage_lines(window)  # first: it may still reject the message
        self.counters.unknown_fields += len(unknown)
        self.counters.gpu_windows += len(window.gpus)
        self.counters.tenant_points += len(usage)
        return lineproto.gpu_lines(window, plan) + usage

    def _tenant_usage_lines(self, window: wire.TelemetryWindow) -> list[str]:
        position = {name: pos for pos, name in enumerate(window.fields)}
        energy_at, util_at = position.get("energy_j"), position.get("util_gpu_pct")
        rules = self._tenant_rules()
        lines = []
        for gpu in window.gpus:
            energy_mj = gpu.values[energy_at] if energy_at is not None else None
            util_centi = gpu.values[util_at] if util_at is not None else None
            if energy_mj is not None and energy_mj < 0:
                raise Rejected("bad_value", f"GPU {gpu.index} energy_j {energy_mj} is negative")
            lines.extend(_split_gpu_window(window, gpu, energy_mj, util_centi, rules))
        return lines


def _split_gpu_window(
    window: wire.TelemetryWindow, gpu: wire.GpuWindow, energy_mj: int | None, util_centi: int | None, rules: TenantRules
) -> list[str]:
    """The GPU-window split among tenants: exact ms and mJ, one line per tenant."""
    holders = [(h.workload, None if h.sm_util_centi is None else h.sm_util_centi / 100, h.mem_bytes) for h in gpu.holders]
    util = None if util_centi is None else util_centi / 100
    shares = attribute(window.t1_ms - window.t0_ms, energy_mj, util, holders, gpu.owners)
    tenant_of_key = {
        s.workload_key: rules.tenant_for(window.workloads[s.workload_key], gpu.uuid, window.node)
        for s in shares
        if s.workload_key != UNALLOCATED
    }
    lines = []
    for share in by_tenant(shares, tenant_of_key.__getitem__):
        keys = [key for key, tenant in tenant_of_key.items() if tenant == share.tenant]
        lines.append(lineproto.tenant_usage_line(window, gpu, share, {key: window.workloads[key] for key in keys}))
    return lines
