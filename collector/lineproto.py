"""InfluxDB line protocol for gpufleet's measurements. Pure functions, no I/O.

Rules (as influxdb-client's Point, see STYLE.md section 5): tags sorted by key and escaped by table,
absent values skipped (never written as zero), integers get `i`, strings quoted with `"` and `\\`
escaped. Timestamps are nanoseconds. Floats that are whole numbers of a decimal unit (312460 mW,
a window's 10000 ms) are written as that integer and a decimal exponent: `power_w=312460e-3`.
InfluxDB 1.x and 2.x (Go's ParseFloat) and 3.x (its Rust parser's "exponential, no decimal"
form) read that as the float 312.46, the same double as `312.46`, rounded once from the exact
decimal; and formatting an integer costs a third of a float repr.
Every tag value here has already passed wire validation; escaping is the second line of defence.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from functools import cache, lru_cache

from gpufleet.collector.attribute import TenantShare

from gpufleet.catalogue import gpu_window_field_by_name
from gpufleet.wire import GpuEventMessage, GpuWindow, NodeState, TelemetryWindow

_ESCAPE_TAG = str.maketrans({",": r"\,", "=": r"\=", " ": r"\ ", "\\": "\\\\", "\n": r"\n"})
_ESCAPE_STRING = str.maketrans({'"': r"\"", "\\": "\\\\"})
_NS_PER_MS = 1_000_000


def tag(value: str) -> str:
    # The escapes of _ESCAPE_TAG by str.replace: translate() looks up every character in a dict,
    # replace() scans in C and hands back the string itself when there is nothing to escape.
    # `\` goes first, so that no escape added after it is escaped again.
    return value.replace("\\", "\\\\").replace(",", r"\,").replace("=", r"\=").replace(" ", r"\ ").replace("\n", r"\n")


# Models, clusters and tenants are few and come back in every message; GPU UUIDs and node names
# are too many for a small cache and go through tag() itself.
tag_few = lru_cache(maxsize=1024)(tag)


def string_field(value: str) -> str:
    # The escapes of _ESCAPE_STRING by str.replace (see tag): ten times faster on a long JSON text.
    return '"' + value.replace("\\", "\\\\").replace('"', r"\"") + '"'


def _tags(pairs: Iterable[tuple[str, str]]) -> str:
    return "".join(f",{key}={tag(value)}" for key, value in sorted(pairs))


@cache
def _divisor(field_name: str) -> int | None:
    """None for integer fields; else what a wire integer is divided by to give the field value:
    a power of ten (metrics.csv wire_scale is 1, 0.1, 0.01 or 0.001)."""
    metric = gpu_window_field_by_name()[field_name]
    return None if metric.is_int else round(1 / metric.wire_scale)


_EXPONENTS = {10: "e-1", 100: "e-2", 1000: "e-3"}


def value_suffix(divisor: int | None) -> str:
    """What follows a wire integer in a line: `i`, or the decimal exponent that scales it."""
    if divisor is None:
        return "i"
    exponent = _EXPONENTS.get(divisor)
    if exponent is None:
        raise ValueError(f"wire scale 1/{divisor} is not 0.1, 0.01 or 0.001")
    return exponent


def thousandths(value: int) -> str:
    """A float field from an integer count of thousandths (ms -> s, mJ -> J)."""
    return f"{value}e-3"


def field_plan(fields: Sequence[str]) -> tuple[list[tuple[int, str, int | None]], list[str]]:
    """Per message: (position, name, divisor) of each known field, and the unknown names skipped."""
    known = gpu_window_field_by_name()
    plan = [(pos, name, _divisor(name)) for pos, name in enumerate(fields) if name in known]
    unknown = [name for name in fields if name not in known]
    return plan, unknown


def gpu_lines(window: TelemetryWindow, plan: list[tuple[int, str, int | None]]) -> list[str]:
    """One `gpu` point per GPU of the window, stamped with the window's start."""
    timestamp = window.t0_ms * _NS_PER_MS
    window_s = (window.t1_ms - window.t0_ms) / 1000
    head = f"gpu,cluster={tag_few(window.cluster)},gpu="
    node = f",node={tag(window.node)},uuid="
    trailer = f"seq={window.seq}i,window_s={window_s!r} {timestamp}"
    # The readable definition; collector/telemetry.py makes the same bytes faster.
    named = [(f"{name}=", pos, value_suffix(div)) for pos, name, div in plan]
    lines = []
    for gpu in window.gpus:
        values = gpu.values
        fields = [f"{name}{value}{suffix}" for name, pos, suffix in named if (value := values[pos]) is not None]
        fields.append(trailer)
        lines.append(f"{head}{gpu.tag},model={tag_few(gpu.model)}{node}{tag(gpu.uuid)} {','.join(fields)}")
    return lines


def workloads_field(workloads: dict[str, dict]) -> str:
    """The `workloads` string field of a tenant_usage point: the billed identities as JSON,
    json.dumps(workloads, sort_keys=True, separators=(",", ":")), made of workload_json pieces."""
    return workloads_json_field([workload_json(key, workloads[key]) for key in sorted(workloads)])


# json.dumps with options makes a new encoder on every call; a collector calls it for every new job.
_COMPACT_SORTED = json.JSONEncoder(sort_keys=True, separators=(",", ":"))


def workload_json(key: str, identity: dict) -> str:
    """`"key":{identity}` as json.dumps writes one item of a map: a piece of workloads_field."""
    return json.dumps(key) + ":" + _COMPACT_SORTED.encode(identity)


def workloads_json_field(pieces: list[str]) -> str:
    """workloads_field from pieces already made, given in key order (a job comes back every window)."""
    return string_field("{" + ",".join(pieces) + "}")


def tenant_usage_line(
    window: TelemetryWindow, gpu: GpuWindow, share: TenantShare, workloads: dict[str, dict]
) -> str:
    """One tenant's part of one GPU-window; ms and mJ become s and J exactly (`n e-3`)."""
    return tenant_usage_line_with(window, gpu, share, workloads_field(workloads))


def tenant_usage_line_with(window: TelemetryWindow, gpu: GpuWindow, share: TenantShare, workloads_text: str) -> str:
    """tenant_usage_line with the workloads field made beforehand: a job on 8 GPUs has one text."""
    tags = (
        f",cluster={tag_few(window.cluster)},gpu={gpu.tag},model={tag_few(gpu.model)},node={tag(window.node)}"
        f",tenant={tag_few(share.tenant)}"
    )
    fields = [f"gpu_s={thousandths(share.gpu_ms)}"]
    if share.busy_ms is not None:
        fields.append(f"busy_gpu_s={thousandths(share.busy_ms)},idle_gpu_s={thousandths(share.gpu_ms - share.busy_ms)}")
    if share.energy_mj is not None:
        fields.append(f"energy_j={thousandths(share.energy_mj)}")
    if share.peak_mem_bytes is not None:
        fields.append(f"peak_mem_bytes={share.peak_mem_bytes}i")
    fields.append(f"uuid={string_field(gpu.uuid)}")
    fields.append(f"workloads={workloads_text}")
    return f"tenant_usage{tags} {','.join(fields)} {window.t0_ms * _NS_PER_MS}"


def event_line(event: GpuEventMessage) -> str:
    tags = _tags(
        [("cluster", event.cluster), ("node", event.node), ("gpu", str(event.gpu)), ("uuid", event.uuid), ("kind", event.kind)]
    )
    return f"gpu_event{tags} code={event.code}i,detail={string_field(event.detail)} {event.time_ms * _NS_PER_MS}"


def state_line(state: NodeState, received_ms: int) -> str:
    time_ms = state.time_ms if state.time_ms is not None else received_ms
    online = 1 if state.state == "online" else 0
    tags = _tags([("cluster", state.cluster), ("node", state.node)])
    return f"node_state{tags} online={online}i,state={string_field(state.state)} {time_ms * _NS_PER_MS}"


def stats_line(measurement: str, tags: dict[str, str], counters: dict[str, int], time_ms: int) -> str:
    fields = ",".join(f"{name}={value}i" for name, value in sorted(counters.items()))
    return f"{measurement}{_tags(tags.items())} {fields} {time_ms * _NS_PER_MS}"
