"""A simulated fleet sustained in real time: does everything arrive, and does the lag stay flat?

N simulated nodes (each its own MQTT client: the real agent code, the simulator in place of NVML)
publish windows in real time through a real Mosquitto and a real `gpufleet collector` into a real
InfluxDB for --duration seconds. Every minute it prints the windows confirmed stored so far and
the latency from window end to stored (p50/p99 of the windows confirmed that minute); at the end,
published vs stored GPU-windows counted in InfluxDB. Lag that does not grow: the last minutes'
p99 stays where the first minutes' was.

    python bench/soak.py --nodes 2000 --gpus-per-node 8 --interval 10 --duration 600
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
from gpufleet.agent.fleet import FleetPlan, FleetResult, run_fleet
from gpufleet.agent.node import Cadence
from gpufleet.mqtt import BrokerAddress

REPO = Path(__file__).resolve().parents[1]


def percentile(values: list[int], p: float) -> int:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))] if ordered else -1


class MinuteReport:
    """Latencies of the windows confirmed since the last report, read from each agent's stats."""

    def __init__(self, result: FleetResult, start: float) -> None:
        self._result = result
        self._start = start
        self._seen: dict[str, int] = {}

    def print(self) -> None:
        fresh: list[int] = []
        for node, stats in self._result.stats.items():
            new = stats.windows_stored - self._seen.get(node, 0)
            if new > 0:
                fresh.extend(list(stats.stored_latency_ms)[-new:])
            self._seen[node] = stats.windows_stored
        stored = sum(self._seen.values())
        print(
            f"t={time.monotonic() - self._start:5.0f} s  windows stored {stored:>8}  "
            f"this minute: p50 {percentile(fresh, 50):>6} ms  p99 {percentile(fresh, 99):>6} ms",
            flush=True,
        )


async def soak(plan: FleetPlan, broker_url: str) -> tuple[FleetResult, float]:
    result = FleetResult(plan)
    start = time.monotonic()
    fleet = asyncio.create_task(run_fleet(plan, BrokerAddress.parse(broker_url), result=result))
    report = MinuteReport(result, start)
    while not fleet.done():
        await asyncio.wait([fleet], timeout=60)
        report.print()
    return await fleet, time.monotonic() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=2000)
    parser.add_argument("--gpus-per-node", type=int, default=8)
    parser.add_argument("--interval", type=float, default=10.0)
    parser.add_argument("--duration", type=float, default=600.0)
    args = parser.parse_args()
    windows = round(args.duration / args.interval)
    ms = round(args.interval * 1000)
    plan = FleetPlan("soak", args.nodes, args.gpus_per_node, Cadence(ms, ms), windows, seed=3,
                     until_stored=True, resend_after_s=120, drain_timeout_s=300)
    gpus = args.nodes * args.gpus_per_node
    with tempfile.TemporaryDirectory(prefix="gpufleet-soak-") as tmp:
        with localstack.Mosquitto(Path(tmp)) as broker, localstack.InfluxDB(Path(tmp)) as influx:
            influx.create_database("soak")
            log = (Path(tmp) / "collector.log").open("wb")
            collector = subprocess.Popen(
                localstack.collector_argv(broker.url, influx.url, "soak", "soak", tenants_file=REPO / "systemd/tenants.toml"),
                stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "GPUFLEET_INFLUX_TOKEN": "t"},
            )
            time.sleep(2)
            print(f"{args.nodes} nodes x {args.gpus_per_node} GPUs = {gpus} GPUs, {windows} windows of "
                  f"{args.interval:g} s in real time ({gpus / args.interval:,.0f} GPU-windows/s)", flush=True)
            result, took = asyncio.run(soak(plan, broker.url))
            collector.send_signal(signal.SIGTERM)
            collector.wait(120)
            rows = influx.rows("SELECT count(seq) AS n FROM gpu", "soak")
    stored = rows[0]["n"] if rows else 0
    published = result.gpu_windows_acknowledged
    latencies = [ms for s in result.stats.values() for ms in s.stored_latency_ms]
    print(f"published {published} GPU-windows, stored {stored} (lost {published - stored}) in {took:.0f} s; "
          f"agents that gave up: {len(result.failures)}")
    print(f"window end -> stored, whole run: p50 {percentile(latencies, 50)} ms, p99 {percentile(latencies, 99)} ms")


if __name__ == "__main__":
    main()
