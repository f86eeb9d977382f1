"""The collector's core: (topic, payload) in, line-protocol lines out, every rejection counted.

Pure: no MQTT, no InfluxDB, no clock (the caller passes `now_ms`). The transport loop in
collector/service.py feeds it and writes what it returns. Telemetry of GPUs without MIG goes
through collector/telemetry.py's cached plans; MIG instances through attribute() here.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple

from gpufleet import wire
from gpufleet.wire import Rejected

from . import lineproto
from .attribute import UNALLOCATED, apportion, attribute, by_tenant
from .telemetry import FieldFormat, GpuPlan, TelemetryLines, window_tail
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


class Accepted(NamedTuple):
    """A message its agent waits to hear is stored: a window (by seq) or an event (by digest)."""

    cluster: str
    node: str
    seq: int | None
    event_digest: int | None


class Pipeline:
    def __init__(self, tenant_rules: Callable[[], TenantRules] = TenantRules) -> None:
        """`tenant_rules` is asked once per message, so that reloaded rules apply at once."""
        self.counters = PipelineCounters()
        self._tenant_rules = tenant_rules
        self._tenants = _TenantCache()
        self._telemetry = TelemetryLines()
        # What the collector confirms to the agent once the last message's lines are stored: an
        # accepted window or event. None after anything else.
        self.accepted: Accepted | None = None

    def handle(self, topic: str, payload: bytes, now_ms: int) -> tuple[list[str], Rejected | None]:
        """Lines to write for one message, or no lines and the rejection (already counted)."""
        self.counters.received += 1
        self.accepted = None
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
            event = wire.decode_event(payload, topic, now_ms)
            self.counters.events += 1
            self.accepted = Accepted(topic.cluster, topic.node, None, wire.event_digest(payload))
            return [lineproto.event_line(event)]
        self.counters.states += 1
        return [lineproto.state_line(wire.decode_state(payload, topic, now_ms), now_ms)]

    def _telemetry_lines(self, window: wire.TelemetryWindow) -> list[str]:
        fields = self._telemetry.field_format(window.fields)
        rules = self._tenant_rules()
        if rules is not self._tenants.rules:
            self._telemetry.forget()
        memo = _MessageMemo(window, self._tenants.using(rules))
        plans = self._telemetry.plans(window, memo.party)
        usage = self._tenant_usage_lines(window, plans, fields, memo)  # first: it may still reject the message
        tail = window_tail(window)
        lines = self._telemetry.gpu_lines(tail, plans, fields, window.gpus)
        self.counters.unknown_fields += len(fields.unknown)
        self.counters.gpu_windows += len(window.gpus)
        self.counters.tenant_points += len(usage)
        self.accepted = Accepted(window.cluster, window.node, window.seq, None)
        lines += usage
        return lines

    def _tenant_usage_lines(
        self, window: wire.TelemetryWindow, plans: list[GpuPlan], fields: FieldFormat, memo: _MessageMemo
    ) -> list[str]:
        instances: dict[int, list[wire.GpuWindow]] = {}
        for gpu in window.gpus:
            if gpu.mig is not None:
                instances.setdefault(gpu.index, []).append(gpu)
        window_ms = window.t1_ms - window.t0_ms
        stamp = str(window.t0_ms * 1_000_000)
        if not instances:  # no MIG on the node: the usual case
            return self._telemetry.tenant_usage_lines(plans, window.gpus, window_ms, fields, stamp)
        energy_at, util_at = fields.energy_at, fields.util_at
        lines = []
        for plan, gpu in zip(plans, window.gpus):
            if gpu.mig is not None:
                continue  # split with its GPU below
            energy_mj = gpu.values[energy_at] if energy_at is not None else None
            util_centi = gpu.values[util_at] if util_at is not None else None
            if gpu.index in instances:
                if energy_mj is not None and energy_mj < 0:
                    raise Rejected("bad_value", f"GPU {gpu.index} energy_j {energy_mj} is negative")
                lines.extend(_split_mig_gpu(window, gpu, instances[gpu.index], energy_mj, memo))
            else:
                lines.extend(self._telemetry.tenant_lines(plan, gpu, window_ms, energy_mj, util_centi, stamp))
        return lines


class _TenantCache:
    """A workload's tenant and JSON, kept across messages: the same jobs come back in every window,
    and the rules are a pure function of (identity, GPU UUID, node). Keyed by node, workload key and
    identity; emptied when the rules object changes (a reload) and when full. Not used when a rule
    reads the GPU's UUID."""

    MAX_ENTRIES = 1 << 18  # a workload or two per GPU of a 200,000-GPU fleet

    def __init__(self) -> None:
        self.rules: TenantRules | None = None
        self.reads_gpu = True
        self.tenants: dict[tuple[str, str, tuple[tuple[str, object], ...]], tuple[str, str]] = {}

    def using(self, rules: TenantRules) -> _TenantCache:
        if rules is not self.rules:
            self.rules, self.reads_gpu, self.tenants = rules, _rules_read_gpu(rules), {}
        elif len(self.tenants) >= self.MAX_ENTRIES:
            self.tenants = {}
        return self


class _MessageMemo:
    """What one message asks for again and again: a workload's tenant and JSON (a job on 8 GPUs is
    looked up once), and the workloads field of each set of workloads a tenant line bills."""

    def __init__(self, window: wire.TelemetryWindow, cache: _TenantCache) -> None:
        self._window = window
        self._cache = cache
        self._known: dict[str, tuple[str, str]] = {}  # workload key -> (tenant, JSON piece)
        self._texts: dict[tuple[str, ...], str] = {}

    def party(self, key: str, gpu_uuid: str) -> tuple[str, str]:
        """(tenant, JSON piece) of a workload on this GPU, for telemetry.GpuPlan."""
        if self._cache.reads_gpu:
            identity = self._window.workloads[key]
            return self._cache.rules.tenant_for(identity, gpu_uuid, self._window.node), lineproto.workload_json(key, identity)
        return self._workload(key, gpu_uuid)

    def tenant(self, key: str, gpu_uuid: str) -> str:
        if self._cache.reads_gpu:
            return self._cache.rules.tenant_for(self._window.workloads[key], gpu_uuid, self._window.node)
        return self._workload(key, gpu_uuid)[0]

    def _workload(self, key: str, gpu_uuid: str) -> tuple[str, str]:
        known = self._known.get(key)
        if known is None:
            identity, node, cache = self._window.workloads[key], self._window.node, self._cache
            # Identity values are str, int or None (wire validation), so the items can be a dict key.
            content = (node, key, tuple(identity.items()))
            known = cache.tenants.get(content)
            if known is None:
                tenant = cache.rules.tenant_for(identity, gpu_uuid, node)
                known = cache.tenants[content] = (tenant, lineproto.workload_json(key, identity))
            self._known[key] = known
        return known

    def workloads_text(self, keys: tuple[str, ...]) -> str:
        """The workloads field for `keys` (sorted): pieces from the cache, joined once per message."""
        text = self._texts.get(keys)
        if text is None:
            if self._cache.reads_gpu:
                workloads = self._window.workloads
                text = lineproto.workloads_field({key: workloads[key] for key in keys})
            else:
                text = lineproto.workloads_json_field([self._known[key][1] for key in sorted(keys)])
            self._texts[keys] = text
        return text


def _rules_read_gpu(rules: TenantRules) -> bool:
    """Whether a rule matches on the GPU's UUID; True when it cannot be told (rules of another type)."""
    try:
        return any(rule.match.gpu_uuid is not None for rule in rules.rules)
    except AttributeError:
        return True


def _split_mig_gpu(
    window: wire.TelemetryWindow, gpu: wire.GpuWindow, parts: list[wire.GpuWindow], energy_mj: int | None, memo: _MessageMemo
) -> list[str]:
    """A GPU in MIG mode: its window and energy go to its instances by compute slices (what each
    instance can use, busy or not), the slices no instance holds to the GPU's owners or
    `unallocated`; each instance's part is then split among that instance's holders."""
    total = parts[0].mig[2]  # type: ignore[index]  # parts are MIG instances
    weights = {f"mig{part.mig[0]}": part.mig[1] for part in parts}  # type: ignore[index]
    free = total - sum(weights.values())
    if free < 0 or any(part.mig[2] != total for part in parts) or len(weights) != len(parts):  # type: ignore[index]
        raise Rejected("schema", f"GPU {gpu.index}: MIG instances do not fit its {total} slices")
    weights["free"] = free
    ms = apportion(window.t1_ms - window.t0_ms, weights)
    energy = apportion(energy_mj, weights) if energy_mj is not None else None
    lines = _split_gpu_window(window, gpu, ms["free"], energy["free"] if energy else None, None, memo, holders=False)
    for part in parts:
        key = f"mig{part.mig[0]}"  # type: ignore[index]
        lines.extend(_split_gpu_window(window, part, ms[key], energy[key] if energy else None, None, memo))
    return lines


def _split_gpu_window(
    window: wire.TelemetryWindow,
    gpu: wire.GpuWindow,
    window_ms: int,
    energy_mj: int | None,
    util_centi: int | None,
    memo: _MessageMemo,
    *,
    holders: bool = True,
) -> list[str]:
    """`window_ms` of the GPU (or MIG instance) split among tenants: exact ms and mJ, a line each."""
    if window_ms == 0:
        return []
    used_by = [(h.workload, None if h.sm_util_centi is None else h.sm_util_centi / 100, h.mem_bytes) for h in gpu.holders]
    util = None if util_centi is None else util_centi / 100
    shares = attribute(window_ms, energy_mj, util, used_by if holders else [], gpu.owners)
    tenant_of_key = {s.workload_key: memo.tenant(s.workload_key, gpu.uuid) for s in shares if s.workload_key != UNALLOCATED}
    lines = []
    for share in by_tenant(shares, tenant_of_key.__getitem__):
        keys = tuple(key for key, tenant in tenant_of_key.items() if tenant == share.tenant)
        lines.append(lineproto.tenant_usage_line_with(window, gpu, share, memo.workloads_text(keys)))
    return lines
