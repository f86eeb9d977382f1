"""Latency from a window's end to its points being stored (queryable) in InfluxDB.

A simulated fleet publishes in real time (one sample per 1 s window) through the real broker and a
real `gpufleet collector` into InfluxDB. Each agent notes when a collector's stored confirmation
for a window arrives; InfluxDB 1.x answers a write only once its points are queryable, and the
collector confirms only after that answer. Prints the percentiles, beside the goal (p99 <= 2 s).

    python bench/latency.py --nodes 100 --gpus-per-node 8 --duration 60
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from gpufleet import localstack
from gpufleet.agent.fleet import FleetPlan, run_fleet
from gpufleet.agent.node import Cadence
from gpufleet.mqtt import BrokerAddress

REPO = Path(__file__).resolve().parents[1]


def percentile(values: list[int], p: float) -> int:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=100)
    parser.add_argument("--gpus-per-node", type=int, default=8)
    parser.add_argument("--interval", type=float, default=1.0)
    parser.add_argument("--duration", type=float, default=60.0)
    parser.add_argument("--flush-interval", type=float, default=1.0, help="collector's flush interval, s (product default 1)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="gpufleet-latency-") as tmp:
        with localstack.Mosquitto(Path(tmp)) as broker, localstack.InfluxDB(Path(tmp)) as influx:
            influx.create_database("latency")
            log = (Path(tmp) / "collector.log").open("wb")
            collector = subprocess.Popen(
                localstack.collector_argv(broker.url, influx.url, "latency", "latency", tenants_file=REPO / "systemd/tenants.toml"),
                stdout=log, stderr=subprocess.STDOUT,
                env={**os.environ, "GPUFLEET_INFLUX_TOKEN": "t", "GPUFLEET_FLUSH_INTERVAL": str(args.flush_interval)},
            )
            time.sleep(2)
            windows = round(args.duration / args.interval)
            ms = round(args.interval * 1000)
            plan = FleetPlan("latency", args.nodes, args.gpus_per_node, Cadence(ms, ms), windows,
                             until_stored=True, resend_after_s=30, drain_timeout_s=60)
            result = asyncio.run(run_fleet(plan, BrokerAddress.parse(broker.url)))
            collector.send_signal(signal.SIGTERM)
            collector.wait(60)
    latencies = [ms for stats in result.stats.values() for ms in stats.stored_latency_ms]
    print(f"{args.nodes} nodes x {args.gpus_per_node} GPUs, {windows} windows of {args.interval:g} s in real time; "
          f"collector flush interval {args.flush_interval:g} s")
    print(f"windows confirmed stored: {len(latencies)} of {args.nodes * windows}")
    print("window end -> stored in InfluxDB, ms:  " + "  ".join(
        f"p{p}={percentile(latencies, p)}" for p in (50, 90, 99, 100)) + "   (goal: p99 <= 2000)")


if __name__ == "__main__":
    main()
