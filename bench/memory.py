"""How much memory the collector needs for a fleet: its core's state per GPU, and its write buffer.

    python bench/memory.py [--nodes 25000] [--gpus-per-node 8] [--windows 3] [--shared]

The collector keeps state per node (the plans of its GPUs, keyed by workload identity; the
validated identities and topics wire.py caches) and a bounded write buffer. Both grow with the
fleet, so a fleet of 200,000 GPUs is fed to one Pipeline, as one collector would see it: every
node's window --windows times over (sequence numbers and times advancing), each node with its own
name, GPU UUIDs and jobs (job ids and pod UIDs made distinct per node from 64 simulated
templates, bench/fleetdata.full_fleet). Messages are encoded one at a time and dropped after use,
so what stays is the pipeline's own.

Figures:
  core state     resident memory (RSS, /proc/self/statm) after the windows minus before the
                 Pipeline existed, after a full garbage collection; per GPU. RSS also counts
                 freed pages the allocator keeps: it is what the machine must have
  write buffer   the lines one window of the fleet makes, their mean size, and what the buffer
                 holds at its default bound (CollectorOptions.max_buffer_lines) of such lines:
                 the most a collector holds while InfluxDB is away
Prints figures, asserts nothing.
"""

from __future__ import annotations

import argparse
import gc
from dataclasses import replace
import os
import sys
import time

import fleetdata

from gpufleet import wire
from gpufleet.agent.identity import workload_key
from gpufleet.collector.pipeline import Pipeline
from gpufleet.collector.service import CollectorOptions

TEMPLATES = 64
CLUSTER = "mem"
WINDOW_MS = 10_000
MIB = 1 << 20
PAGE = os.sysconf("SC_PAGE_SIZE")
STR_OVERHEAD = sys.getsizeof("")  # what CPython adds to an ASCII str's characters


def rss_bytes() -> int:
    with open("/proc/self/statm", encoding="ascii") as statm:
        return int(statm.read().split()[1]) * PAGE


def distinct_identity(identity: dict, node: int) -> dict:
    """The template's workload made this node's own: another job id or pod UID."""
    own = dict(identity)
    if own["kind"] == "slurm_job":
        own["job"] = f"{own['job']}{node:06d}"
    elif own["kind"] == "k8s_pod":
        own["pod_uid"] = f"{node:08x}{own['pod_uid'][8:]}"
    return own


def node_window(template: wire.TelemetryWindow, node: int) -> wire.TelemetryWindow:
    """A template's readings under node `node`'s name, GPU UUIDs and workloads."""
    identities = {key: distinct_identity(identity, node) for key, identity in template.workloads.items()}
    rekey = {key: workload_key(identity) for key, identity in identities.items()}
    gpus = tuple(
        gpu._replace(
            uuid=f"GPU-{node:08x}-{gpu.index:04x}-4000-8000-000000000000",
            holders=tuple(holder._replace(workload=rekey[holder.workload]) for holder in gpu.holders),
            owners=tuple(rekey[key] for key in gpu.owners),
        )
        for gpu in template.gpus
    )
    workloads = {rekey[key]: identity for key, identity in identities.items()}
    return wire.TelemetryWindow(CLUSTER, f"node{node:06d}", 0, 0, 1, template.fields, gpus, workloads)


def feed(pipeline: Pipeline, windows: list[wire.TelemetryWindow], rounds: int, start_ms: int) -> tuple[int, int]:
    """Every node's window `rounds` times, as its agent would send them; the lines and their
    characters of the last round (one window of the whole fleet)."""
    lines = chars = 0
    for round_ in range(rounds):
        t0 = start_ms + round_ * WINDOW_MS
        lines = chars = 0
        for window in windows:
            sent = replace(window, seq=round_ + 1, t0_ms=t0, t1_ms=t0 + WINDOW_MS)
            out, rejection = pipeline.handle(wire.telemetry_topic(CLUSTER, window.node), wire.encode_telemetry(sent), t0 + WINDOW_MS + 500)
            if rejection is not None:
                raise SystemExit(f"the pipeline rejected {window.node}: {rejection}")
            lines += len(out)
            chars += sum(map(len, out))
    return lines, chars


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=25_000)
    parser.add_argument("--gpus-per-node", type=int, default=8)
    parser.add_argument("--windows", type=int, default=3, help="windows per node (the first fills the caches)")
    parser.add_argument("--shared", action="store_true", help="1-3 workloads per GPU instead of one job")
    args = parser.parse_args()
    gpus = args.nodes * args.gpus_per_node
    start_ms = (int(time.time()) - 3600) * 1000
    templates = fleetdata.full_fleet(min(args.nodes, TEMPLATES), args.gpus_per_node, 1, start_ms, shared=args.shared)
    windows = [node_window(templates[i % len(templates)], i) for i in range(args.nodes)]
    print(f"{args.nodes:,} nodes x {args.gpus_per_node} GPUs = {gpus:,} GPUs, "
          f"{'1-3 workloads' if args.shared else 'one job'} per GPU, {args.windows} windows each", flush=True)

    gc.collect()
    before = rss_bytes()
    rules = fleetdata.tenant_rules()
    pipeline = Pipeline(lambda: rules)  # the same object until the file changes, as in the collector
    started = time.process_time()
    lines, chars = feed(pipeline, windows, args.windows, start_ms)
    cpu_s = time.process_time() - started
    pause_started = time.perf_counter()
    gc.collect()
    pause_s = time.perf_counter() - pause_started
    grown = rss_bytes() - before
    print(f"core state: RSS +{grown / MIB:,.0f} MiB = {grown / gpus:,.0f} B per GPU "
          f"(encode + handle: {cpu_s / (gpus * args.windows) * 1e6:,.1f} µs CPU per GPU-window)")
    print(f"a full garbage collection over it: {pause_s * 1000:,.0f} ms, {len(gc.get_objects()):,} objects tracked "
          f"(the collector's loop stands still that long, every few hundred thousand new plans)")

    bound = CollectorOptions(client_id="bench").max_buffer_lines
    line_bytes = chars / lines + STR_OVERHEAD
    print(f"one window of the fleet: {lines:,} lines, mean {chars / lines:,.0f} characters")
    print(f"write buffer at its bound ({bound:,} lines, {bound / lines:,.1f} windows of this fleet): "
          f"~{bound * line_bytes / MIB:,.0f} MiB ({line_bytes:,.0f} B a line as a Python str)")


if __name__ == "__main__":
    main()
