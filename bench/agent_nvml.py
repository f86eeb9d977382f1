"""CPU time per sample of the NVML reader: 8 GPUs with processes, through pynvml and the fake driver.

    python bench/agent_nvml.py [--samples 500] [--processes 4]

Prints figures, asserts nothing. The fake driver's callbacks are Python, so the time includes
the "driver" as well: a real libnvidia-ml costs the reader less CPU, but more wall time (each
NVML call is a kernel round trip). Resident memory is the whole process's (VmRSS).
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

from gpufleet.agent import fakenvml, nvml


def vm_rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def node_profile(gpus: int, processes: int) -> dict:
    profile = fakenvml.replicate(fakenvml.load_profile("h100-sxm"), gpus)
    for i, gpu in enumerate(profile["gpus"]):
        gpu["processes"] = [
            {"pid": 10_000 + 100 * i + p, "used_memory_bytes": (p + 1) << 30, "type": "C", "sm_util_pct": 10 + p}
            for p in range(processes)
        ]
    return profile


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=500)
    parser.add_argument("--gpus", type=int, default=8)
    parser.add_argument("--processes", type=int, default=4, help="compute processes per GPU")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)

    rss_start = vm_rss_kib()
    fake = fakenvml.install(node_profile(args.gpus, args.processes))
    try:
        with nvml.open_nvml(event_wait_ms=200) as source:
            source.sample()  # warm-up: first process-utilisation read returns the whole buffer
            fake.calls.clear()
            cpu0, wall0 = time.process_time(), time.perf_counter()
            for _ in range(args.samples):
                readings = source.sample()
            cpu = time.process_time() - cpu0
            wall = time.perf_counter() - wall0
            calls = sum(fake.calls.values()) / args.samples
            assert len(readings) == args.gpus
    finally:
        fakenvml.uninstall()
    rss_end = vm_rss_kib()

    per_sample_ms = cpu / args.samples * 1000
    print(f"GPUs: {args.gpus}, compute processes per GPU: {args.processes}, samples: {args.samples}")
    print(f"CPU time per sample: {per_sample_ms:.3f} ms ({per_sample_ms / args.gpus:.3f} ms per GPU)")
    print(f"wall time per sample: {wall / args.samples * 1000:.3f} ms")
    print(f"NVML calls per sample: {calls:.0f} ({calls / args.gpus:.1f} per GPU)")
    print(f"at 1 sample/s: {per_sample_ms / 10:.3f} % of one core")
    print(f"resident memory (VmRSS): {rss_end / 1024:.1f} MiB (at start {rss_start / 1024:.1f} MiB)")


if __name__ == "__main__":
    main()
