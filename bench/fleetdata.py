"""Realistic telemetry windows for the benchmarks, made without waiting for real intervals.

Shared by bench/pipeline.py and bench/stages.py (imported as a sibling module: `python bench/x.py`
puts bench/ on sys.path). Two kinds of fleet:

- `simulated_fleet`: what `gpufleet simulate` nodes would publish. The simulator's GPUs and
  tenants, aggregated into windows by the agent's own WindowAggregator and WorkloadResolver,
  driven by a fake clock so that an hour of windows takes seconds to make.
- `full_fleet`: the same, then every counter filled in (NVLink, fan, retired pages: an H100 SXM
  leaves some of these absent) and 1-3 workloads per GPU, so that cost and size are measured on
  the worst ordinary case, not on idle GPUs.
"""

from __future__ import annotations

import random
from dataclasses import replace
from pathlib import Path

from gpufleet import wire
from gpufleet.agent.identity import workload_key
from gpufleet.agent.simulate import SimulatedGpuSource
from gpufleet.agent.window import WindowAggregator
from gpufleet.agent.workloads import WorkloadResolver
from gpufleet.collector.tenants import TenantRules

REPO = Path(__file__).resolve().parent.parent
TENANTS_FILE = REPO / "systemd" / "tenants.toml"  # the shipped rules, written for the simulator's tenants


def tenant_rules() -> TenantRules:
    return TenantRules.from_toml(TENANTS_FILE.read_text(encoding="utf-8"))


class _Clock:
    """The simulator integrates energy over the time its clock says passed: we step it by hand."""

    def __init__(self, start_s: float) -> None:
        self.now = start_s

    def __call__(self) -> float:
        return self.now


def node_windows(
    cluster: str, node: str, gpus: int, windows: int, interval_ms: int, sample_ms: int, start_ms: int, seed: int
) -> list[wire.TelemetryWindow]:
    """One node's windows, as agent/node.py builds them (prime sample, then contiguous windows)."""
    clock = _Clock(start_ms / 1000)
    source = SimulatedGpuSource(node, gpus, seed=seed, clock=clock)
    aggregator = WindowAggregator(sample_ms)
    resolver = WorkloadResolver(source.identity_of, source.allocations)
    aggregator.add(start_ms, source.sample())  # the prime sample only sets counter baselines
    aggregator.close()
    out, t_ms = [], start_ms
    for seq in range(windows):
        t0_ms = t_ms
        for _ in range(interval_ms // sample_ms):
            t_ms += sample_ms
            clock.now = t_ms / 1000
            aggregator.add(t_ms, source.sample())
        source.poll_events()  # XID events go on another topic; not part of this benchmark
        gpu_windows, workloads = resolver.annotate(aggregator.close())
        out.append(wire.TelemetryWindow(cluster, node, seq, t0_ms, t_ms, aggregator.field_names, gpu_windows, workloads))
    return out


def simulated_fleet(
    cluster: str, nodes: int, gpus: int, windows: int, interval_ms: int, sample_ms: int, start_ms: int, seed: int = 0
) -> list[list[wire.TelemetryWindow]]:
    """Windows per node (node00000 ...), every node's clock starting at `start_ms`."""
    return [
        node_windows(cluster, f"node{i:05d}", gpus, windows, interval_ms, sample_ms, start_ms, seed * 1_000_003 + i)
        for i in range(nodes)
    ]


# ------------------------------------------------------------------------- the full counter set

# Wire units of the counters the simulator leaves absent (an H100 SXM has no fan, no page
# retirement; the simulator models no NVLink). Sizes as a busy 8-GPU node shows them.
_FILL = {
    "fan_pct": lambda rng, s: rng.randint(30, 80),
    "retired_pages_sbe": lambda rng, s: 0,
    "retired_pages_dbe": lambda rng, s: 0,
    "retired_pages_pending": lambda rng, s: 0,
    "nvlink_tx_bytes": lambda rng, s: int(rng.uniform(1e9, 40e9) * s),  # NVLink 4: up to 450 GB/s a way
    "nvlink_rx_bytes": lambda rng, s: int(rng.uniform(1e9, 40e9) * s),
    "nvlink_crc_errors": lambda rng, s: 0,
}


def _pod(rng: random.Random, tenant: str, job: int) -> dict:
    return {
        "kind": "k8s_pod", "pod_uid": f"{rng.getrandbits(32):08x}-{job:04x}-4000-8000-{rng.getrandbits(48):012x}",
        "container": f"{rng.getrandbits(256):064x}", "namespace": tenant,
    }


def _slurm(tenant: str, job: int) -> dict:
    return {"kind": "slurm_job", "job": str(job), "step": "0", "account": tenant, "user": f"{tenant}-user", "partition": "gpu"}


def _node_workloads(rng: random.Random, gpus: int, shared: bool) -> tuple[dict[str, dict], list[list[str]]]:
    """Two Slurm jobs splitting the node; with `shared`, inference pods share the GPUs too: 1-3
    holders per GPU. One tenant in five matches no rule, so the default tenant is exercised too."""
    tenants = ("lab-a", "lab-b", "lab-c", "lab-d", "lab-x")
    identities = [_slurm(rng.choice(tenants), rng.randint(100_000, 9_999_999)) for _ in range(2)]
    identities += [_pod(rng, rng.choice(tenants), rng.randint(0, 0xFFFF)) for _ in range(4 if shared else 0)]
    keys = [workload_key(identity) for identity in identities]
    pods = keys[2:]
    per_gpu = [[keys[0] if g < gpus // 2 else keys[1], *rng.sample(pods, rng.randint(0, min(2, len(pods))))] for g in range(gpus)]
    return dict(zip(keys, identities)), per_gpu


def full_counters(window: wire.TelemetryWindow, rng: random.Random, jobs: tuple[dict, list[list[str]]]) -> wire.TelemetryWindow:
    """Every field present; the node's jobs on its GPUs, with an SM share and memory for each."""
    seconds = (window.t1_ms - window.t0_ms) / 1000
    workloads, per_gpu = jobs
    gpus = []
    for gpu, keys in zip(window.gpus, per_gpu):
        values = tuple(
            value if value is not None else _FILL[name](rng, seconds) for name, value in zip(window.fields, gpu.values)
        )
        holders = tuple(wire.Holder(key, rng.randint(500, 9000), rng.randint(1, 40) << 30) for key in keys)
        gpus.append(gpu._replace(values=values, holders=holders, owners=tuple(keys)))
    return replace(window, gpus=tuple(gpus), workloads=workloads)


def full_fleet(
    nodes: int, gpus: int, windows: int, start_ms: int, seed: int = 0, *, shared: bool = True
) -> list[wire.TelemetryWindow]:
    """10 s windows of 1 s samples (the agent's defaults), every counter present, 1-3 workloads per
    GPU (`shared`, the worst ordinary case) or one job per GPU (a training cluster, the usual case).
    Jobs last longer than a window, so a node keeps its jobs for all its windows."""
    rng = random.Random(seed)
    fleet = simulated_fleet("bench", nodes, gpus, windows, 10_000, 1000, start_ms, seed)
    out = []
    for node in fleet:
        jobs = _node_workloads(rng, gpus, shared)
        out += [full_counters(window, rng, jobs) for window in node]
    return out
