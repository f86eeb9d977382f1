"""A fleet too large to simulate agent by agent, sustained in real time: replayed windows.

    python bench/replay_soak.py --nodes 6000 --gpus-per-node 8 --interval 10 --duration 600 [--shared]

bench/soak.py runs the real agent code per node; on 2 cores that tops out near 16,000 GPUs, the
agents' own sampling taking the CPU. Here each node's window is made once (simulator readings,
every counter present, bench/fleetdata.full_fleet: one Slurm job per GPU, or 1-3 workloads per
GPU with --shared), and then re-sent in real time with its sequence number and timestamps
advanced, through wire.encode_telemetry: the bytes an agent sends, at the agents' cadence, with
the nodes' phases spread over the interval as real agents' start times are. --clients MQTT
connections carry the nodes at QoS 1. The real `gpufleet collector` writes into a real InfluxDB.

Measured, every minute: windows published and confirmed stored (the collector's confirmations on
gpufleet/ack/v1/<cluster>/<node>, which it sends only after InfluxDB has the lines), p50/p99 from
a window's end (its publish time) to its confirmation, the CPU of collector, InfluxDB (with
nginx), Mosquitto and this process over that minute, and the resident memory of the collector
and of InfluxDB (with nginx) at its end. Lag that does not grow: the last minutes'
p99 stays where the first minutes' was. At the end, after a drain of up to --drain s: published
vs stored (count of `gpu` points in InfluxDB). There are no resends here: what is not stored is lost.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import fleetdata
from pipeline import cpu_seconds
from soak import percentile

from gpufleet import localstack, wire
from gpufleet.mqtt import BrokerAddress, MqttLink

CLUSTER = "replay"
TEMPLATES = 64  # distinct node windows; each node takes one and its own node name and GPU UUIDs


def node_windows(nodes: int, gpus: int, shared: bool, now_ms: int) -> list[wire.TelemetryWindow]:
    """One window per node: a template's readings under the node's own name and GPU UUIDs."""
    templates = fleetdata.full_fleet(min(nodes, TEMPLATES), gpus, 1, now_ms - 60_000, shared=shared)
    windows = []
    for i in range(nodes):
        template = templates[i % len(templates)]
        own = tuple(g._replace(uuid=f"GPU-{i:08x}-{g.index:04x}-4000-8000-000000000000") for g in template.gpus)
        windows.append(wire.TelemetryWindow(CLUSTER, f"node{i:06d}", 0, 0, 1, template.fields, own, template.workloads))
    return windows


class Ledger:
    """Publish and confirmation times of every window; per-minute latency figures."""

    def __init__(self) -> None:
        self.published: dict[tuple[str, int], float] = {}  # (node, seq) -> window end, time.time()
        self.latencies_ms: list[float] = []
        self.confirmed = 0
        self._mark = 0

    def confirm(self, node: str, seqs: list[int], now: float) -> None:
        for seq in seqs:
            end = self.published.pop((node, seq), None)
            if end is not None:  # a duplicate confirmation (a resend by the broker) counts once
                self.confirmed += 1
                self.latencies_ms.append((now - end) * 1000)

    def minute(self) -> tuple[float, float]:
        fresh = self.latencies_ms[self._mark :]
        self._mark = len(self.latencies_ms)
        return percentile(fresh, 50), percentile(fresh, 99)


async def publish_nodes(
    link: MqttLink, windows: list[wire.TelemetryWindow], phases: list[float], args: argparse.Namespace,
    ledger: Ledger, start: float,
) -> int:
    """Each node's windows at start + phase + k * interval, k = 0.. until --duration; returns GPU-windows."""
    sent = 0
    rounds = round(args.duration / args.interval)
    for k in range(rounds):
        for window, phase in zip(windows, phases):
            due = start + phase + k * args.interval
            delay = due - time.time()
            if delay > 0:
                await asyncio.sleep(delay)
            end_ms = int(time.time() * 1000)
            window = replace(window, seq=k, t0_ms=end_ms - round(args.interval * 1000), t1_ms=end_ms)
            ledger.published[(window.node, k)] = end_ms / 1000
            await link.publish(wire.telemetry_topic(CLUSTER, window.node), wire.encode_telemetry(window))
            sent += len(window.gpus)
    return sent


async def listen(address: BrokerAddress, ledger: Ledger, ready: asyncio.Event) -> None:
    async with MqttLink(address, "replay-confirmations") as link:
        await link.subscribe(f"gpufleet/ack/v1/{CLUSTER}/#")
        ready.set()
        async for message in link.messages():
            ledger.confirm(message.topic.rsplit("/", 1)[1], wire.decode_stored(message.payload).seqs, time.time())


async def run(args: argparse.Namespace, broker: localstack.Mosquitto, pids: dict[str, list[int]]) -> tuple[int, Ledger]:
    windows = node_windows(args.nodes, args.gpus_per_node, args.shared, int(time.time() * 1000))
    address = BrokerAddress.parse(broker.url)
    ledger = Ledger()
    ready = asyncio.Event()
    listener = asyncio.create_task(listen(address, ledger, ready))
    await asyncio.wait_for(ready.wait(), 10)
    start = time.time() + 1
    phases = [args.interval * i / args.nodes for i in range(args.nodes)]

    async def client(i: int) -> int:
        async with MqttLink(address, f"replay-publisher-{i}") as link:
            return await publish_nodes(link, windows[i :: args.clients], phases[i :: args.clients], args, ledger, start)

    clients = asyncio.gather(*(client(i) for i in range(args.clients)))
    await report_minutes(clients, ledger, pids)
    published = sum(await clients)
    deadline = time.monotonic() + args.drain
    while ledger.published and time.monotonic() < deadline:
        await asyncio.sleep(1)
    listener.cancel()
    return published, ledger


async def report_minutes(clients: asyncio.Future, ledger: Ledger, pids: dict[str, list[int]]) -> None:
    before = {name: sum(map(cpu_seconds, group)) for name, group in pids.items()}
    began = time.monotonic()
    while not clients.done():
        tick = time.monotonic()
        await asyncio.wait([clients], timeout=60)
        span = time.monotonic() - tick
        now = {name: sum(map(cpu_seconds, group)) for name, group in pids.items()}
        cpu = ", ".join(f"{name} {(now[name] - before[name]) / span:.2f}" for name in now)
        rss = ", ".join(f"{name} {sum(map(resident_mib, pids[name])):,.0f}" for name in ("collector", "influxd+nginx"))
        before = now
        p50, p99 = ledger.minute()
        print(
            f"t={time.monotonic() - began:4.0f} s  confirmed {ledger.confirmed:>9,}  waiting {len(ledger.published):>6,}  "
            f"this minute p50 {p50:>6.0f} ms p99 {p99:>6.0f} ms  CPU cores: {cpu}  resident MiB: {rss}",
            flush=True,
        )


def resident_mib(pid: int) -> float:
    """VmRSS of a process (proc(5) status), in MiB; 0 once it is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0.0
    kib = next((int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:")), 0)
    return kib / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=6000)
    parser.add_argument("--gpus-per-node", type=int, default=8)
    parser.add_argument("--interval", type=float, default=10.0)
    parser.add_argument("--duration", type=float, default=600.0)
    parser.add_argument("--clients", type=int, default=8, help="MQTT connections publishing")
    parser.add_argument("--shared", action="store_true", help="1-3 workloads per GPU instead of one job")
    parser.add_argument("--drain", type=float, default=120.0, help="seconds to wait for the last confirmations")
    args = parser.parse_args()
    gpus = args.nodes * args.gpus_per_node
    with tempfile.TemporaryDirectory(prefix="gpufleet-replay-") as tmp:
        with localstack.Mosquitto(Path(tmp)) as broker, localstack.InfluxDB(Path(tmp)) as influx:
            influx.create_database("replay")
            log = (Path(tmp) / "collector.log").open("wb")
            collector = subprocess.Popen(
                localstack.collector_argv(broker.url, influx.url, "replay", "replay", tenants_file=fleetdata.TENANTS_FILE),
                stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "GPUFLEET_INFLUX_TOKEN": "t"},
            )
            time.sleep(2)
            pids = {
                "collector": [collector.pid],
                "influxd+nginx": [d.proc.pid for d in influx._daemons],  # noqa: SLF001 - as bench/pipeline.py
                "mosquitto": [broker.pid],
                "replay": [os.getpid()],
            }
            print(f"{args.nodes:,} nodes x {args.gpus_per_node} GPUs = {gpus:,} GPUs, {args.interval:g} s windows in real time "
                  f"for {args.duration:g} s ({gpus / args.interval:,.0f} GPU-windows/s), "
                  f"{'1-3 workloads' if args.shared else 'one job'} per GPU", flush=True)
            published, ledger = asyncio.run(run(args, broker, pids))
            collector.send_signal(signal.SIGTERM)
            collector.wait(120)
            rows = influx.rows("SELECT count(seq) AS n FROM gpu", "replay")
    stored = rows[0]["n"] if rows else 0
    print(f"published {published:,} GPU-windows, stored {stored:,} (lost {published - stored:,}); "
          f"windows never confirmed: {len(ledger.published):,}")
    print(f"window end -> confirmed stored, whole run: p50 {percentile(ledger.latencies_ms, 50):.0f} ms, "
          f"p99 {percentile(ledger.latencies_ms, 99):.0f} ms")


if __name__ == "__main__":
    main()
