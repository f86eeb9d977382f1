"""Scale-out: K collectors in one MQTT v5 shared-subscription group split the fleet's load evenly.
Scale issue: "two or more collectors in a shared subscription split the load evenly (shown)".

    python bench/scaleout.py [--collectors 1,2,3] [--nodes 200] [--gpus 8] [--windows 20] [--interval 10] [--clients 16]

What runs: one gpufleet.localstack Mosquitto and InfluxDB 1.6 (+ nginx v2-write front) in a temp
dir for the whole run. For each K of --collectors in turn: a fresh database, K `gpufleet collector`
processes (localstack.collector_argv, as operators run it) in one shared-subscription group
(`$share/scaleout-k<K>/...`), client ids scaleout-k<K>-1 ... scaleout-k<K>-<K>, all subscribed
before the first publish. Then the same fleet load each time: windows made once beforehand by
bench/pipeline.py's make_messages (the simulator's readings, the agent's aggregation, encoded by
gpufleet.wire.encode_telemetry, whatever wire version that writes), published over --clients MQTT
connections at QoS 1 as fast as the broker acknowledges; then the `gpu` points in the database are
counted every 0.5 s until every published GPU-window is there (bounded by --timeout, and by
--stall seconds without a new point). Only the
count of stored points says "done", so nothing here reads the payloads.

Figures, per K, all from this one run (the machine is shared; compare ratios, not absolute numbers):
  per collector    GPU-windows and messages it handled: the final `gpu_windows` and `received` of the
                   `collector` point it writes about itself (tag collector=<client id>; cumulative,
                   written every 10 s and once more on SIGTERM: the collectors are stopped with
                   SIGTERM and waited for before it is read); its share of the sum, in %; its CPU
                   (utime+stime of all its threads, /proc/<pid>/stat read when it has exited and not
                   yet been reaped): "total" since the process started, "load" since the first
                   publish (total less start-up: imports, connecting)
  whole run        stored = count of `gpu` points in InfluxDB vs published GPU-windows (equal: 0
                   lost); handled twice = the collectors' sum less stored (redeliveries); max/min
                   share ratio (1.000 is a perfect split); aggregate GPU-windows per wall second
                   (first publish -> the count reached every GPU-window; up to 0.5 s late, and
                   the collectors flush every 1 s) and per collector CPU-second
                   (the collectors' "load" CPU summed), each against K=1; CPU of influxd+nginx and
                   mosquitto over the same span, and how many of the machine's cores were busy (all processes,
                   other users' included: /proc/stat)

Caveats: this machine has 2 cores, shared with other benchmarks. K collectors compete for them
with InfluxDB (which takes more CPU than the collectors here: every collector writes to the one
influxd), nginx, Mosquitto, the publishers and whatever else runs, so the wall-clock speed-up with
K is bounded here, and noisy: the "machine was busy N of 2 cores" figure says how much room there
was. On separate collector hosts it is not bounded by this. What this run shows is the split:
equal shares, nothing lost, nothing handled twice, and what each extra collector costs in CPU per
GPU-window (each process has its own fixed costs: event loop, MQTT keep-alive, flush timer,
HTTP connection). Mosquitto 2.0 hands a shared subscription's messages to its members in turn,
one message each, not by load (the counts differ by at most one message), so a slower member gets
as many as a fast one and sets the pace.
Prints figures; exits 1 if any K did not store every published GPU-window exactly once.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pipeline  # bench/pipeline.py (a sibling: `python bench/scaleout.py` puts bench/ on sys.path)
from publisher import publish_nodes

from gpufleet import localstack
from gpufleet.influxql import ident
from gpufleet.mqtt import BrokerAddress

START_TIMEOUT_S = 60.0  # K collectors importing at once on 2 cores
STOP_TIMEOUT_S = 90.0  # a collector drains its buffer on SIGTERM (its drain_timeout_s is 60 s)
POLL_S = 0.5  # how often the `gpu` points are counted while waiting


def proc_state(pid: int) -> str:
    """proc(5) field 3: R, S, D, Z (exited, not yet reaped), ...; "" once reaped."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return ""


def box_busy_seconds() -> float:
    """CPU-seconds every core of the machine spent not idle so far, all processes, other users' too
    (proc(5) /proc/stat, first line: user nice system idle iowait irq softirq steal ...)."""
    ticks = [int(t) for t in Path("/proc/stat").read_text().splitlines()[0].split()[1:9]]
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")


def start_collectors(broker_url: str, influx: localstack.InfluxDB, db: str, group: str, ids: list[str], logdir: Path) -> dict[str, subprocess.Popen]:
    """K collectors in one group, all started at once; returns when every one has subscribed."""
    processes = {
        client_id: pipeline.launch_collector(broker_url, influx, db, logdir / f"{client_id}.log", client_id=client_id, group=group)
        for client_id in ids
    }
    try:
        for client_id, process in processes.items():
            pipeline.wait_subscribed(process, logdir / f"{client_id}.log", START_TIMEOUT_S)
    except SystemExit:
        stop_all(processes)
        raise
    return processes


def stop_all(processes: dict[str, subprocess.Popen]) -> tuple[dict[str, float], list[str]]:
    """SIGTERM every collector (they drain together), read each one's CPU once it has exited (a
    zombie's /proc/<pid>/stat still holds its final utime+stime), then reap it. ({id: CPU s}, notes)"""
    for process in processes.values():
        if process.poll() is None:
            process.terminate()
    cpu: dict[str, float] = {}
    deadline = time.monotonic() + STOP_TIMEOUT_S
    for client_id, process in processes.items():
        while process.returncode is None and time.monotonic() < deadline:
            state = proc_state(process.pid)
            if state == "Z":
                cpu[client_id] = pipeline.cpu_seconds(process.pid)
                break
            if not state:
                break
            cpu[client_id] = pipeline.cpu_seconds(process.pid)  # the last reading, should it vanish
            time.sleep(0.02)
    notes = []
    for client_id, process in processes.items():
        # Reaps it; SIGKILL if it is somehow still running (then its CPU is the last reading).
        note = pipeline.stop_collector(process, grace_s=1.0)
        if note:
            notes.append(f"{client_id}: {note}")
    return cpu, notes


def collector_counters(influx: localstack.InfluxDB, db: str) -> dict[str, dict[str, int]]:
    """Each collector's last `collector` point (cumulative counters): {client id: {field: value}}."""
    rows = influx.rows(
        f"SELECT {ident('gpu_windows')}, {ident('received')} FROM {ident('collector')} "
        f"GROUP BY {ident('collector')} ORDER BY time DESC LIMIT 1",
        db,
    )
    return {row["collector"]: {"gpu_windows": row["gpu_windows"] or 0, "received": row["received"] or 0} for row in rows}


async def publish(broker_url: str, per_node: list[list[tuple[str, bytes]]], clients: int) -> None:
    """Every window at QoS 1 from `clients` connections (bench/publisher.py), each node's in order."""
    await publish_nodes(BrokerAddress.parse(broker_url), per_node, clients, "scaleout")


def wait_stored(influx: localstack.InfluxDB, db: str, expected: int, timeout_s: float, stall_s: float) -> tuple[int, float | None]:
    """(`gpu` points in the database, perf_counter() when they reached `expected` or None): polled
    every POLL_S, so the time is late by up to POLL_S (the collectors flush every 1 s anyway).
    Gives up after `timeout_s`, or after `stall_s` without a new point."""
    deadline = time.monotonic() + timeout_s
    last, last_change = -1, time.monotonic()
    while True:
        stored = pipeline.count(influx, db, "gpu", "seq")
        now = time.monotonic()
        if stored >= expected:
            return stored, time.perf_counter()
        if stored != last:
            last, last_change = stored, now
        if now > deadline or now - last_change > stall_s:
            return stored, None
        time.sleep(POLL_S)


def run_k(k: int, args: argparse.Namespace, per_node: list, broker: localstack.Mosquitto, influx: localstack.InfluxDB, workdir: Path) -> dict:
    db, group = f"scaleout_k{k}", f"scaleout-k{k}"
    ids = [f"scaleout-k{k}-{i}" for i in range(1, k + 1)]
    expected = args.nodes * args.gpus * args.windows
    influx.create_database(db)
    influxd, nginx = (daemon.proc.pid for daemon in influx._daemons)  # private; for CPU figures only
    processes = start_collectors(broker.url, influx, db, group, ids, workdir)
    try:
        cpu0 = {client_id: pipeline.cpu_seconds(p.pid) for client_id, p in processes.items()}
        influx_cpu0 = pipeline.cpu_seconds(influxd) + pipeline.cpu_seconds(nginx)
        broker_cpu0 = pipeline.cpu_seconds(broker.pid)
        publisher_cpu0 = time.process_time()
        box0 = box_busy_seconds()
        start = time.perf_counter()
        asyncio.run(publish(broker.url, per_node, args.clients))
        published = time.perf_counter()
        publisher_cpu = time.process_time() - publisher_cpu0
        stored, done = wait_stored(influx, db, expected, args.timeout, args.stall)
        influx_cpu = pipeline.cpu_seconds(influxd) + pipeline.cpu_seconds(nginx) - influx_cpu0
        broker_cpu = pipeline.cpu_seconds(broker.pid) - broker_cpu0
        box = box_busy_seconds() - box0
    finally:
        cpu_exit, notes = stop_all(processes)
    for client_id in ids:  # a collector that did not exit cleanly says why in its log
        if any(note.startswith(f"{client_id}:") for note in notes):
            notes.append(f"--- {client_id} log ---\n" + (workdir / f"{client_id}.log").read_text(errors="replace")[-1500:])
    counters = collector_counters(influx, db)
    missing = [client_id for client_id in ids if client_id not in counters]
    if missing:
        notes.append(f"no `collector` point from {', '.join(missing)}")
    if done is None:
        notes.append(f"only {stored:,} of {expected:,} GPU-windows stored (gave up: --timeout {args.timeout:g} s "
                     f"or --stall {args.stall:g} s without a new point)")
        for client_id in ids:
            notes.append(f"--- {client_id} log ---\n" + (workdir / f"{client_id}.log").read_text(errors="replace")[-1500:])
    return {
        "k": k, "ids": ids, "stored": stored, "expected": expected, "counters": counters,
        "cpu_total": cpu_exit, "cpu_load": {c: cpu_exit.get(c, cpu0[c]) - cpu0[c] for c in ids},
        "wall": (done - start) if done is not None else None, "publish": published - start,
        "influx_cpu": influx_cpu, "broker_cpu": broker_cpu, "publisher_cpu": publisher_cpu, "box": box, "notes": notes,
    }


def report(r: dict) -> bool:
    """Prints one K's block; True if every published GPU-window was stored exactly once."""
    handled = {c: r["counters"].get(c, {}).get("gpu_windows", 0) for c in r["ids"]}
    received = {c: r["counters"].get(c, {}).get("received", 0) for c in r["ids"]}
    total = sum(handled.values())
    print(f"\nK={r['k']}: {r['k']} collector{'s' if r['k'] > 1 else ''} in group $share/scaleout-k{r['k']}/...")
    print(f"  {'collector':<16} {'GPU-windows':>11} {'messages':>9} {'share %':>8} {'CPU s total':>12} {'CPU s load':>11}")
    for c in r["ids"]:
        share = 100 * handled[c] / total if total else 0.0
        print(f"  {c:<16} {handled[c]:>11,} {received[c]:>9,} {share:>8.1f} {r['cpu_total'].get(c, float('nan')):>12.2f} {r['cpu_load'][c]:>11.2f}")
    lost, twice = r["expected"] - r["stored"], total - r["stored"]
    r["ratio"] = max(handled.values()) / min(handled.values()) if min(handled.values()) else float("inf")
    print(f"  stored {r['stored']:,} of {r['expected']:,} published GPU-windows: lost {lost}, handled twice {twice}; "
          f"max/min share {r['ratio']:.3f}")
    r["load_cpu"] = sum(r["cpu_load"].values())
    if r["wall"] is not None:
        print(f"  all published in {r['publish']:.2f} s, all stored in {r['wall']:.2f} s; CPU s over that span: "
              f"collectors {r['load_cpu']:.2f} (to their exit), influxd+nginx {r['influx_cpu']:.2f}, mosquitto {r['broker_cpu']:.2f}, "
              f"publishers {r['publisher_cpu']:.2f} (and their count queries); the whole machine was busy "
              f"{r['box'] / r['wall']:.2f} of {os.cpu_count()} cores (all processes, anyone's)")
    for note in r["notes"]:
        print(f"  note: {note}")
    return lost == 0 and twice == 0 and r["wall"] is not None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--collectors", default="1,2,3", help="comma-separated K values, each run in turn")
    parser.add_argument("--nodes", type=int, default=200)
    parser.add_argument("--gpus", type=int, default=8, help="GPUs per node")
    parser.add_argument("--windows", type=int, default=20, help="windows per node")
    parser.add_argument("--interval", type=float, default=10.0, help="seconds per window (1 s samples)")
    parser.add_argument("--clients", type=int, default=16, help="MQTT connections publishing")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=300, help="seconds to wait for every point, per K")
    parser.add_argument("--stall", type=float, default=60, help="give up a K after this many seconds without a new point")
    args = parser.parse_args()
    ks = [int(k) for k in args.collectors.split(",") if k.strip()]
    if not ks or min(ks) < 1:
        parser.error("--collectors: positive integers, e.g. 1,2,3")

    made = time.perf_counter()
    per_node = pipeline.make_messages(args, int(time.time() * 1000))
    made = time.perf_counter() - made
    gpu_windows = args.nodes * args.gpus * args.windows
    print(
        f"fleet: {args.nodes} nodes x {args.gpus} GPUs x {args.windows} windows of {args.interval:g} s = {gpu_windows:,} "
        f"GPU-windows in {args.nodes * args.windows:,} messages (made in {made:.1f} s), the same for every K; "
        f"{min(args.clients, args.nodes)} MQTT clients publish at QoS 1 as fast as acknowledged; {os.cpu_count()} CPUs"
    )
    results, ok = [], True
    with (
        tempfile.TemporaryDirectory(prefix="gpufleet-scaleout-") as tmp,
        localstack.Mosquitto(tmp) as broker,
        localstack.InfluxDB(tmp) as influx,
    ):
        for k in ks:
            workdir = Path(tmp) / f"k{k}"
            workdir.mkdir()
            result = run_k(k, args, per_node, broker, influx, workdir)
            ok = report(result) and ok
            results.append(result)
            sys.stdout.flush()

    print("\nsummary (ratios within this run)")
    print(f"  {'K':>2} {'wall s':>7} {'GPU-win/s':>10} {'vs K=1':>7} {'coll. CPU s':>12} {'GPU-win/CPU-s':>14} {'vs K=1':>7} "
          f"{'max/min share':>14} {'lost':>5}")
    base = results[0]
    for r in results:
        if r["wall"] is None:
            print(f"  {r['k']:>2} (timed out)")
            continue
        rate, per_cpu = gpu_windows / r["wall"], gpu_windows / r["load_cpu"]
        rate0 = gpu_windows / base["wall"] if base["wall"] else float("nan")
        per_cpu0 = gpu_windows / base["load_cpu"]
        print(f"  {r['k']:>2} {r['wall']:>7.2f} {rate:>10,.0f} {rate / rate0:>7.2f} {r['load_cpu']:>12.2f} {per_cpu:>14,.0f} "
              f"{per_cpu / per_cpu0:>7.2f} {r['ratio']:>14.3f} {r['expected'] - r['stored']:>5}")
    if base["k"] != 1:
        print("  (\"vs K=1\" is against the first K given)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
