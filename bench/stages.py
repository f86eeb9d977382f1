"""CPU cost per GPU-window of each stage of the collector's pure core, and bytes per GPU-window.

    python bench/stages.py [--nodes 50] [--windows 4] [--repeat 7]

Messages: 8 GPUs per node, every counter present, tenant rules from systemd/tenants.toml, two
fleets (bench/fleetdata.py): "dedicated", one Slurm job per GPU (a training cluster), and
"shared", 1-3 workloads per GPU (inference pods on the jobs' GPUs, the worst ordinary case). Costs are CPU time (time.process_time), the best of
--repeat passes over all messages, divided by the GPU-windows in them. Goals (issue 8): 25 µs per
GPU-window in total, at most 200 bytes per GPU-window on the wire.

Stages are measured by taking work away, so that they add up to what the collector's loop pays:
  zlib inflate     the payload's zlib stream (wire v2 compresses telemetry)
  msgpack decode   msgpack.unpackb of the inflated bytes, with wire's options
  validation       wire.decode_telemetry minus the two above
  attribution      Pipeline.handle with line formatting stubbed out, minus decode_telemetry
                   (per-GPU plans, tenant split, tenant rules, the pipeline's glue)
  line protocol    Pipeline.handle minus the same with line formatting stubbed out
With gpufleet._native built (gpufleet/native.c), most of validation (GPU rows, known
identities), the plan lookup, the `gpu` lines and the tenant split with its `tenant_usage` lines
run in C; the tenant lines are made in the same pass as the split, so their text counts under
attribution and "line protocol" is the `gpu` lines only. GPUFLEET_NATIVE=0 measures the Python.
  hand-off         WriteBuffer.extend of the lines, what the receive loop does with them
Prints figures, asserts nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import json
import time
import zlib
from collections.abc import Callable, Iterator

import fleetdata
import msgpack

from gpufleet import wire
from gpufleet.catalogue import gpu_window_field_by_name
from gpufleet.collector import lineproto, telemetry
from gpufleet.collector.buffer import WriteBuffer
from gpufleet.collector.pipeline import Pipeline

GOAL_US = 25.0
GOAL_BYTES = 200
# The formatting the pipeline does for telemetry, each with a stand-in of the same shape.
_LINE_STUBS = {
    (telemetry.TelemetryLines, "gpu_lines"): lambda self, tail, plans, fields, gpus: [tail] * len(plans),
    (telemetry, "_tenant_line"): lambda *args: "",
    (lineproto, "tenant_usage_line_with"): lambda *args, **kwargs: "",  # MIG GPUs' path
}


def best_cpu_us(run: Callable[[], None], repeat: int) -> float:
    """Best CPU time of `repeat` runs, in µs: the least disturbed by other work on a shared machine."""
    best = float("inf")
    for _ in range(repeat):
        start = time.process_time()
        run()
        best = min(best, time.process_time() - start)
    return best * 1e6


@contextlib.contextmanager
def lines_stubbed() -> Iterator[None]:
    saved = {(owner, name): getattr(owner, name) for owner, name in _LINE_STUBS}
    try:
        for (owner, name), stub in _LINE_STUBS.items():
            setattr(owner, name, stub)
        yield
    finally:
        for (owner, name), function in saved.items():
            setattr(owner, name, function)


def stage_costs(messages: list[tuple[str, bytes]], now_ms: int, repeat: int) -> dict[str, float]:
    """µs per GPU-window of each stage, over all messages (the pipeline's caches warm, as in service)."""
    rules = fleetdata.tenant_rules()
    topics = [(wire.parse_topic(topic), payload) for topic, payload in messages]
    gpu_windows = sum(len(wire.decode_telemetry(p, t, now_ms).gpus) for t, p in topics)
    pipeline = Pipeline(lambda: rules)

    def inflate() -> None:
        for _, payload in topics:
            zlib.decompress(payload)

    def unpack() -> None:
        for _, payload in topics:
            msgpack.unpackb(zlib.decompress(payload), raw=False, strict_map_key=True, use_list=True)

    def decode() -> None:
        for topic, payload in topics:
            wire.decode_telemetry(payload, topic, now_ms)

    def handle() -> None:
        for topic, payload in messages:
            pipeline.handle(topic, payload, now_ms)

    def hand_off() -> None:
        buffer = WriteBuffer(10_000_000)
        for topic, payload in messages:
            buffer.extend(pipeline.handle(topic, payload, now_ms)[0])

    handle()  # a collector sees the same GPUs every window: measure it warm
    inflate_us = best_cpu_us(inflate, repeat)
    unpack_us = best_cpu_us(unpack, repeat)
    decode_us = best_cpu_us(decode, repeat)
    total_us = best_cpu_us(handle, repeat)
    hand_off_us = best_cpu_us(hand_off, repeat)
    with lines_stubbed():
        no_lines_us = best_cpu_us(handle, repeat)
    per = 1 / gpu_windows
    return {
        "zlib inflate": inflate_us * per,
        "msgpack decode": (unpack_us - inflate_us) * per,
        "validation": (decode_us - unpack_us) * per,
        "attribution": (no_lines_us - decode_us) * per,
        "line protocol": (total_us - no_lines_us) * per,
        "hand-off": (hand_off_us - total_us) * per,
        "total": hand_off_us * per,
    }


# --------------------------------------------------------------------------------------- sizes


def message_dict(window: wire.TelemetryWindow) -> dict:
    """The telemetry message as a plain map: exactly what the compressed MessagePack payload holds."""
    return msgpack.unpackb(zlib.decompress(wire.encode_telemetry(window)), raw=False)


def compact_json(document: object) -> bytes:
    return json.dumps(document, separators=(",", ":")).encode()


def self_describing_json(window: wire.TelemetryWindow) -> bytes:
    """JSON as most telemetry sends it: field names repeated in every GPU's object."""
    gpus = [
        {
            "index": g.index, "uuid": g.uuid, "model": g.model,
            **{name: value for name, value in zip(window.fields, g.values) if value is not None},
            "holders": [[h.workload, h.sm_util_centi, h.mem_bytes] for h in g.holders], "owners": list(g.owners),
        }
        for g in window.gpus
    ]
    head = {"v": 1, "cluster": window.cluster, "node": window.node, "seq": window.seq, "t0": window.t0_ms, "t1": window.t1_ms}
    return compact_json({**head, "gpus": gpus, "workloads": window.workloads})


# dcgm-exporter's names where DCGM has the field (dcp-metrics-included.csv, DCGM field ids);
# the others get a DCGM-style name of the same length class.
_DCGM = {
    "power_w": "DCGM_FI_DEV_POWER_USAGE", "power_limit_w": "DCGM_FI_DEV_POWER_MGMT_LIMIT",
    "energy_j": "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION", "temp_gpu_c": "DCGM_FI_DEV_GPU_TEMP",
    "temp_mem_c": "DCGM_FI_DEV_MEMORY_TEMP", "temp_slowdown_c": "DCGM_FI_DEV_SLOWDOWN_TEMP",
    "temp_shutdown_c": "DCGM_FI_DEV_SHUTDOWN_TEMP", "fan_pct": "DCGM_FI_DEV_FAN_SPEED",
    "util_gpu_pct": "DCGM_FI_DEV_GPU_UTIL", "util_mem_pct": "DCGM_FI_DEV_MEM_COPY_UTIL",
    "util_enc_pct": "DCGM_FI_DEV_ENC_UTIL", "util_dec_pct": "DCGM_FI_DEV_DEC_UTIL",
    "mem_used_bytes": "DCGM_FI_DEV_FB_USED", "mem_total_bytes": "DCGM_FI_DEV_FB_TOTAL",
    "clock_sm_mhz": "DCGM_FI_DEV_SM_CLOCK", "clock_mem_mhz": "DCGM_FI_DEV_MEM_CLOCK",
    "ecc_corrected_volatile": "DCGM_FI_DEV_ECC_SBE_VOL_TOTAL", "ecc_uncorrected_volatile": "DCGM_FI_DEV_ECC_DBE_VOL_TOTAL",
    "ecc_corrected_aggregate": "DCGM_FI_DEV_ECC_SBE_AGG_TOTAL", "ecc_uncorrected_aggregate": "DCGM_FI_DEV_ECC_DBE_AGG_TOTAL",
    "retired_pages_sbe": "DCGM_FI_DEV_RETIRED_SBE", "retired_pages_dbe": "DCGM_FI_DEV_RETIRED_DBE",
    "retired_pages_pending": "DCGM_FI_DEV_RETIRED_PENDING", "remap_correctable": "DCGM_FI_DEV_CORRECTABLE_REMAPPED_ROWS",
    "remap_uncorrectable": "DCGM_FI_DEV_UNCORRECTABLE_REMAPPED_ROWS", "remap_pending": "DCGM_FI_DEV_ROW_REMAP_PENDING",
    "remap_failure": "DCGM_FI_DEV_ROW_REMAP_FAILURE", "clock_event_reasons": "DCGM_FI_DEV_CLOCK_THROTTLE_REASONS",
    "throttle_power_s": "DCGM_FI_DEV_POWER_VIOLATION", "throttle_thermal_s": "DCGM_FI_DEV_THERMAL_VIOLATION",
    "throttle_sync_boost_s": "DCGM_FI_DEV_SYNC_BOOST_VIOLATION", "throttle_idle_s": "DCGM_FI_DEV_LOW_UTIL_VIOLATION",
    "throttle_hw_slowdown_s": "DCGM_FI_DEV_RELIABILITY_VIOLATION", "pcie_tx_bytes": "DCGM_FI_DEV_PCIE_TX_THROUGHPUT",
    "pcie_rx_bytes": "DCGM_FI_DEV_PCIE_RX_THROUGHPUT", "pcie_replays": "DCGM_FI_DEV_PCIE_REPLAY_COUNTER",
    "nvlink_crc_errors": "DCGM_FI_DEV_NVLINK_CRC_FLIT_ERROR_COUNT_TOTAL",
}


def prometheus_text(window: wire.TelemetryWindow, driver: str = "550.54.15") -> bytes:
    """One scrape of the node as dcgm-exporter exposes it: HELP and TYPE once per metric, then one
    sample per GPU with dcgm-exporter's labels (pod labels from the GPU's first k8s holder)."""
    metrics = gpu_window_field_by_name()
    out = []
    for pos, name in enumerate(window.fields):
        metric = metrics[name]
        prom = _DCGM.get(name, "DCGM_FI_DEV_" + name.upper())
        out.append(f"# HELP {prom} {metric.description}.\n# TYPE {prom} gauge\n")
        for g in window.gpus:
            value = g.values[pos]
            if value is None:
                continue
            pod = next((window.workloads[h.workload] for h in g.holders if window.workloads[h.workload].get("kind") == "k8s_pod"), {})
            labels = (
                f'gpu="{g.index}",UUID="{g.uuid}",device="nvidia{g.index}",modelName="{g.model}",'
                f'Hostname="{window.node}",DCGM_FI_DRIVER_VERSION="{driver}",container="{pod.get("container", "")[:12]}",'
                f'namespace="{pod.get("namespace", "")}",pod="{pod.get("pod_uid", "")}"'
            )
            shown = value if metric.is_int else value * metric.wire_scale
            out.append(f"{prom}{{{labels}}} {shown!r}\n")
    return "".join(out).encode()


def sizes(windows: list[wire.TelemetryWindow]) -> dict[str, tuple[float, float]]:
    """(raw, gzip) bytes per GPU-window of each encoding, per message as it would be sent."""
    encoders = {
        "gpufleet wire v2 (zlib MessagePack)": wire.encode_telemetry,
        "gpufleet wire v2 before zlib": lambda w: msgpack.packb(message_dict(w), use_bin_type=True),
        "JSON, same layout": lambda w: compact_json(message_dict(w)),
        "JSON, names per GPU": self_describing_json,
        "Prometheus text, dcgm-exporter labels": prometheus_text,
    }
    gpu_windows = sum(len(w.gpus) for w in windows)
    result = {}
    for label, encode in encoders.items():
        payloads = [encode(w) for w in windows]
        raw = sum(map(len, payloads))
        packed = sum(len(gzip.compress(p, 6)) for p in payloads)
        result[label] = (raw / gpu_windows, packed / gpu_windows)
    return result


def wire_breakdown(windows: list[wire.TelemetryWindow]) -> dict[str, float]:
    """MessagePack bytes per GPU-window by part of the message: what a smaller wire would cut."""
    def size(obj: object) -> int:
        return len(msgpack.packb(obj, use_bin_type=True))

    parts: dict[str, int] = {}
    for window in windows:
        message = message_dict(window)
        rows = message.pop("gpus")
        per_message = {
            "field ids": message.pop("fields"), "models": message.pop("models"), "workload identities": message.pop("workloads"),
        }
        per_gpu = {"values": 3, "uuid": 1, "model": 2, "holders": 4, "owners": 5}
        for name, obj in per_message.items():
            parts[name] = parts.get(name, 0) + size(obj)
        for name, column in per_gpu.items():
            parts[name] = parts.get(name, 0) + sum(size(row[column]) for row in rows)
        parts["header, index, framing"] = parts.get("header, index, framing", 0) + size(message) + 2 * len(rows) + 4
    gpu_windows = sum(len(w.gpus) for w in windows)
    return {name: total / gpu_windows for name, total in parts.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=50)
    parser.add_argument("--gpus", type=int, default=8, help="GPUs per node")
    parser.add_argument("--windows", type=int, default=4, help="windows per node")
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()

    now_ms = int(time.time() * 1000)
    start_ms = now_ms - args.windows * 10_000 - 60_000
    for kind in ("dedicated", "shared"):
        windows = fleetdata.full_fleet(args.nodes, args.gpus, args.windows, start_ms, shared=kind == "shared")
        messages = [(wire.telemetry_topic(w.cluster, w.node), wire.encode_telemetry(w)) for w in windows]
        gpu_windows = sum(len(w.gpus) for w in windows)
        holders = sum(len(g.holders) for w in windows for g in w.gpus) / gpu_windows
        print(
            f"{kind}: {len(messages)} messages, {gpu_windows} GPU-windows ({args.gpus} GPUs a node, {len(windows[0].fields)} "
            f"fields all present, {holders:.2f} workloads per GPU), best of {args.repeat}, CPU time"
        )
        costs = stage_costs(messages, now_ms, args.repeat)
        for stage, us in costs.items():
            print(f"  {stage:<24} {us:8.2f} µs per GPU-window")
        total = costs["total"]
        print(f"  goal (issue 8)           {GOAL_US:8.2f} µs per GPU-window in total: {total / GOAL_US:.2f}x the goal")
        print(f"  => one core handles {1e6 / total:,.0f} GPU-windows/s in the pure core")

    print("bytes per GPU-window, one message per node-window (raw / gzip -6):")
    for label, (raw, packed) in sizes(windows).items():
        print(f"  {label:<38} {raw:7.0f} / {packed:5.0f}")
    print(f"  goal (issue 8)                         {GOAL_BYTES:7d} raw")
    print("MessagePack bytes per GPU-window before zlib, by part:")
    print("  " + ", ".join(f"{name} {size:.0f}" for name, size in wire_breakdown(windows).items()))


if __name__ == "__main__":
    main()
