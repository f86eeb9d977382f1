"""End to end: a simulated fleet through Mosquitto and the real collector into InfluxDB, beside
InfluxDB's own bulk-load rate for the same lines (the ceiling). Issue 3, item 9.

    python bench/pipeline.py [--nodes 200] [--gpus 8] [--windows 40] [--interval 10] [--clients 16]

What runs: gpufleet.localstack's Mosquitto, InfluxDB 1.6 and nginx v2-write front, in a temp dir,
and `python -m gpufleet.cli collector` as a subprocess, as operators run it.

How the fleet publishes faster than real time: every window is made first (the simulator's
readings, aggregated by the agent's WindowAggregator, encoded by gpufleet.wire, on a fake clock),
then --clients MQTT connections publish them at QoS 1 as fast as the broker takes them (as many
unacknowledged as its Receive Maximum allows, bench/publisher.py), each connection sending its
nodes' windows in order. So the rate is the pipeline's, not the fleet's.

Figures, all from this one run (the machine is shared; compare ratios, not absolute numbers):
  end to end       GPU-windows / (first publish -> the collector confirmed every window stored,
                   that is written to InfluxDB with HTTP 204; the counts are checked afterwards)
  collector CPU    the collector process's utime+stime (/proc/<pid>/stat, all its threads) over
                   that same span, per 1,000 GPU-windows; beside it, the CPU its pure core
                   (Pipeline.handle) took in this process on the same messages
  wire             MQTT payload bytes per GPU-window (and with PUBLISH framing)
  ceiling          the exact lines the collector writes, made beforehand by the same Pipeline,
                   POSTed in batches of 5000 to the same nginx front, on two connections at once
                   (the collector keeps two batches in flight), into a fresh
                   database; measured first, so the collector's run pays any compaction it leaves
Prints figures; exits 1 only if the collector did not store every point.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import os
import signal
import subprocess
import sys
import tempfile
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import fleetdata
import msgpack
from publisher import publish_nodes

from gpufleet import localstack, wire
from gpufleet.collector.pipeline import Pipeline
from gpufleet.mqtt import BrokerAddress, MqttSubscriber

BATCH_LINES = 5000  # the collector's default batch_lines and parallel_writes, so both sides write alike
PARALLEL_WRITES = 2
CLUSTER = "bench"


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process and all its threads so far (proc(5), fields 14 and 15)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def make_messages(args: argparse.Namespace, now_ms: int) -> list[list[tuple[str, bytes]]]:
    """Per node, its windows encoded as an agent sends them; all in the past, so none is refused."""
    interval_ms = round(args.interval * 1000)
    start_ms = now_ms - args.windows * interval_ms - 60_000
    fleet = fleetdata.simulated_fleet(
        CLUSTER, args.nodes, args.gpus, args.windows, interval_ms, min(1000, interval_ms), start_ms, seed=args.seed
    )
    return [[(wire.telemetry_topic(w.cluster, w.node), wire.encode_telemetry(w)) for w in node] for node in fleet]


def expected_lines(messages: list[tuple[str, bytes]], now_ms: int) -> tuple[list[str], float]:
    """The lines the collector will write (same Pipeline, same rules), and the CPU it took here."""
    rules = fleetdata.tenant_rules()
    pipeline = Pipeline(lambda: rules)
    lines: list[str] = []
    start = time.process_time()
    for topic, payload in messages:
        out, rejection = pipeline.handle(topic, payload, now_ms)
        if rejection is not None:
            raise SystemExit(f"the bench made a message the collector refuses: {rejection}")
        lines += out
    return lines, time.process_time() - start


def bulk_load(influx: localstack.InfluxDB, db: str, lines: list[str]) -> float:
    """Seconds to POST `lines` in batches through the nginx front, on PARALLEL_WRITES keep-alive
    connections at once (as many as the collector keeps in flight), each taking every n-th batch."""
    bodies = ["\n".join(lines[i : i + BATCH_LINES]).encode() for i in range(0, len(lines), BATCH_LINES)]
    path = f"/api/v2/write?org=gpufleet&bucket={db}&precision=ns"

    def post_every(offset: int) -> None:
        connection = http.client.HTTPConnection(influx.host, influx.nginx_port, timeout=60)
        for body in bodies[offset::PARALLEL_WRITES]:
            connection.request("POST", path, body, {"Content-Type": "text/plain; charset=utf-8"})
            response = connection.getresponse()
            answer = response.read()
            if response.status != 204:
                raise SystemExit(f"InfluxDB refused a batch: HTTP {response.status} {answer[:300]!r}")
        connection.close()

    start = time.perf_counter()
    with ThreadPoolExecutor(PARALLEL_WRITES) as pool:
        list(pool.map(post_every, range(PARALLEL_WRITES)))
    return time.perf_counter() - start


def count(influx: localstack.InfluxDB, db: str, measurement: str, field: str) -> int:
    rows = influx.rows(f'SELECT count("{field}") FROM "{measurement}"', db)
    return rows[0]["count"] if rows else 0


async def publish_and_wait(
    broker: str, per_node: list[list[tuple[str, bytes]]], clients: int, timeout_s: float
) -> tuple[float, float | None]:
    """Publish every window; (perf_counter() at the last PUBACK, at the collector's confirmation
    that every window is stored, or None on timeout).

    The collector confirms on gpufleet/ack/v1/<cluster>/<node> the windows whose lines InfluxDB
    has accepted (HTTP 204), so "all points stored" is timed without polling InfluxDB, whose
    count queries would cost it more CPU than the writes being measured."""
    address = BrokerAddress.parse(broker)
    pending = {wire.parse_topic(node[0][0]).node: {msgpack.unpackb(zlib.decompress(p))["seq"] for _, p in node} for node in per_node}

    async def confirmed(link: MqttSubscriber) -> float:
        async for message in link.messages():
            node = message.topic.rsplit("/", 1)[1]
            pending[node].difference_update(wire.decode_stored(message.payload).seqs)
            if not pending[node]:
                del pending[node]
                if not pending:
                    return time.perf_counter()
        raise AssertionError("unreachable: messages() ends only by raising")

    async with MqttSubscriber(address, "bench-confirmations") as link:
        await link.subscribe(wire.stored_topic(CLUSTER, "+"))
        waiter = asyncio.create_task(confirmed(link))
        await publish_nodes(address, per_node, clients, "bench")
        published = time.perf_counter()
        try:
            return published, await asyncio.wait_for(waiter, timeout_s)
        except TimeoutError:
            return published, None


def start_collector(
    broker: str, influx: localstack.InfluxDB, db: str, log_path: Path, profile: str | None = None
) -> subprocess.Popen:
    process = launch_collector(broker, influx, db, log_path, profile=profile)
    wait_subscribed(process, log_path)
    return process


def launch_collector(
    broker: str, influx: localstack.InfluxDB, db: str, log_path: Path, *,
    client_id: str = "bench-collector", group: str = "bench", profile: str | None = None,
) -> subprocess.Popen:
    """`gpufleet collector` as operators run it, writing like the ceiling (BATCH_LINES, PARALLEL_WRITES)."""
    args = localstack.collector_argv(
        broker, influx.url, db, client_id, group=group, tenants_file=fleetdata.TENANTS_FILE,
        extra=("--batch-lines", str(BATCH_LINES), "--parallel-writes", str(PARALLEL_WRITES)),
    )
    if profile:  # cProfile of the event loop's thread (InfluxDB writes run in a worker thread)
        args = [args[0], "-m", "cProfile", "-o", profile, *args[1:]]
    env = {**os.environ, "GPUFLEET_INFLUX_TOKEN": "bench"}
    with log_path.open("wb") as log:  # the child has its own copy
        return subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env)


def wait_subscribed(process: subprocess.Popen, log_path: Path, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while "subscribed to" not in log_path.read_text(errors="replace"):
        if process.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"collector did not start:\n{log_path.read_text(errors='replace')[-2000:]}")
        time.sleep(0.05)


def stop_collector(collector: subprocess.Popen, grace_s: float = 5.0) -> str:
    """SIGTERM, then SIGKILL after `grace_s`: its figures are taken already, only the wall clock waits."""
    collector.send_signal(signal.SIGTERM)
    try:
        code = collector.wait(grace_s)
    except subprocess.TimeoutExpired:
        collector.kill()
        collector.wait()
        return f"note: the collector had not stopped {grace_s:g} s after SIGTERM; killed"
    return "" if code == 0 else f"note: the collector exited with code {code}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=200)
    parser.add_argument("--gpus", type=int, default=8, help="GPUs per node")
    parser.add_argument("--windows", type=int, default=40, help="windows per node")
    parser.add_argument("--interval", type=float, default=10.0, help="seconds per window (1 s samples)")
    parser.add_argument("--clients", type=int, default=16, help="MQTT connections publishing")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=600, help="seconds to wait for every point")
    parser.add_argument("--profile", metavar="FILE", help="run the collector under cProfile, stats to FILE")
    args = parser.parse_args()

    now_ms = int(time.time() * 1000)
    per_node = make_messages(args, now_ms)
    # Window-major, the order the collector receives them in (every node sends window k at about the
    # same time): each batch then touches every series, as in production, and so does the ceiling's.
    messages = [node[k] for k in range(args.windows) for node in per_node]
    gpu_windows = args.nodes * args.gpus * args.windows
    lines, core_cpu_s = expected_lines(messages, now_ms)
    usage_points = sum(1 for line in lines if line.startswith("tenant_usage,"))
    expect = {"gpu": gpu_windows, "tenant_usage": usage_points}
    payload_bytes = sum(len(payload) for _, payload in messages)
    # MQTT v5 PUBLISH at QoS 1: fixed header 1 + remaining length (2-3) + topic length 2 + topic
    # + packet id 2 + properties length 1.
    framed_bytes = sum(len(p) + len(t) + 6 + (3 if len(p) + len(t) + 5 > 16383 else 2) for t, p in messages)

    with tempfile.TemporaryDirectory(prefix="gpufleet-bench-") as tmp:
        with localstack.Mosquitto(tmp) as broker, localstack.InfluxDB(tmp) as influx:
            influxd, nginx = (daemon.proc.pid for daemon in influx._daemons)  # noqa: SLF001  # for CPU figures only
            influx.create_database("ceiling")
            influx_cpu0 = cpu_seconds(influxd) + cpu_seconds(nginx)
            ceiling_s = bulk_load(influx, "ceiling", lines)
            ceiling_influx_cpu = cpu_seconds(influxd) + cpu_seconds(nginx) - influx_cpu0
            ceiling_stored = count(influx, "ceiling", "gpu", "seq")
            assert ceiling_stored == gpu_windows, f"ceiling stored {ceiling_stored} of {gpu_windows} gpu points"

            influx.create_database("collector")
            collector = start_collector(broker.url, influx, "collector", Path(tmp) / "collector.log", args.profile)
            try:
                cpu0 = cpu_seconds(collector.pid)
                influx_cpu0 = cpu_seconds(influxd) + cpu_seconds(nginx)
                broker_cpu0 = cpu_seconds(broker.pid)
                bench_cpu0 = time.process_time()
                start = time.perf_counter()
                published, done = asyncio.run(publish_and_wait(broker.url, per_node, args.clients, args.timeout))
                publisher_cpu = time.process_time() - bench_cpu0
                collector_cpu = cpu_seconds(collector.pid) - cpu0
                influx_cpu = cpu_seconds(influxd) + cpu_seconds(nginx) - influx_cpu0
                broker_cpu = cpu_seconds(broker.pid) - broker_cpu0
            finally:
                stop_note = stop_collector(collector)
            stored = {m: count(influx, "collector", m, field) for m, field in (("gpu", "seq"), ("tenant_usage", "gpu_s"))}
            if done is None or stored != expect:
                print(f"not all stored after {args.timeout} s: {stored}, expected {expect}")
                print((Path(tmp) / "collector.log").read_text(errors="replace")[-3000:])
                return 1

    e2e_s = done - start
    rate, ceiling_rate = gpu_windows / e2e_s, gpu_windows / ceiling_s
    us = 1e6 / gpu_windows
    print(
        f"fleet: {args.nodes} nodes x {args.gpus} GPUs x {args.windows} windows of {args.interval:g} s = "
        f"{gpu_windows:,} GPU-windows in {len(messages):,} messages; {len(lines):,} lines ({usage_points:,} tenant_usage)"
    )
    print(
        f"publishing: pre-encoded windows (simulator readings, gpufleet.wire), {min(args.clients, args.nodes)} MQTT "
        f"clients, QoS 1, as fast as the broker takes them: done in {published - start:.2f} s"
    )
    print(f"end to end         {rate:9,.0f} GPU-windows/s  (first publish -> all stored: {e2e_s:.2f} s)")
    print(
        f"collector CPU      {collector_cpu * 1000 / gpu_windows:9.3f} s per 1,000 GPU-windows = {collector_cpu * us:.0f} µs "
        f"each, of which Pipeline.handle {core_cpu_s * us:.0f} µs (the rest: MQTT, asyncio, HTTP writes)"
    )
    print(f"wire               {payload_bytes / gpu_windows:9.0f} bytes per GPU-window of MQTT payload ({framed_bytes / gpu_windows:.0f} with PUBLISH framing)")
    print(
        f"ceiling            {ceiling_rate:9,.0f} GPU-windows/s = {len(lines) / ceiling_s:,.0f} lines/s  (the same lines "
        f"bulk-loaded in batches of {BATCH_LINES}: {ceiling_s:.2f} s)"
    )
    print(f"collector/ceiling  {rate / ceiling_rate:9.2f}")
    print(
        f"CPU seconds while the collector ran: collector {collector_cpu:.2f}, influxd+nginx {influx_cpu:.2f} (bulk load of "
        f"the same lines: {ceiling_influx_cpu:.2f}), mosquitto {broker_cpu:.2f}, publishers {publisher_cpu:.2f}; {os.cpu_count()} CPUs"
    )
    if stop_note:
        print(stop_note)
    return 0


if __name__ == "__main__":
    sys.exit(main())
