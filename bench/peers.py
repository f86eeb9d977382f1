"""Against peers: the same simulated fleet through gpufleet's collector and through the bridges
people use instead, each into a fresh InfluxDB database; GPU-windows stored per CPU-second of
the bridge process. Issue 8 ("Against peers"): gpufleet at least 5x each peer.

    python bench/peers.py [--nodes 100] [--gpus 8] [--windows 20] [--bridges gpufleet,mqtt2influxdb,node-red]

The peers are installed by this script when missing, pinned, into bench/peers/.cache/ (gitignored):
  mqtt2influxdb       `pip install mqtt2influxdb==M2I_VERSION` into a venv of its own. It maps a
                      topic filter plus JSONPath expressions on a JSON payload to one point per
                      `points:` entry per message and writes each point with its own synchronous
                      HTTP request (influxdb3-python, /api/v2/write: through localstack's nginx
                      front). Config generated here: one `points:` entry per GPU index.
  node-red            `npm install node-red node-red-contrib-influxdb`, run headless with
                      bench/peers/node-red/{settings.js,flows.json}: mqtt in (QoS 1) -> json ->
                      function (one point per GPU) -> "influxdb batch" node, InfluxDB 1.x mode
                      (node-influx, /write straight to influxd), one HTTP request per message.

The load: bench/fleetdata.full_fleet (simulator readings through the agent's WindowAggregator,
every counter present, 1-3 workloads per GPU), 10 s windows. gpufleet gets them as agents send
them (MessagePack, gpufleet/v1/<cluster>/<node>/telemetry); the peers get the same windows as
JSON, one message per node-window with one object per GPU, values already in InfluxDB units (the
collector's own conversion, lineproto.field_plan), on gpufleet-json/v1/<cluster>/<node>/telemetry.
The JSON also carries the holders, owners and workloads the MessagePack carries, which the peers
ignore (--lean-json leaves them out). Both are published at QoS 1 by --clients connections as fast as Mosquitto
acknowledges: Mosquitto queues what a bridge has not taken yet, so each bridge drains the
backlog at its own best pace (saturated, not a fixed rate). mqtt2influxdb needs ~17 ms of CPU per
GPU-window here, so by default (--short) it gets only the first --short-windows windows of each
node; its cost is per point (no batching), so its rate does not depend on the count.

Per bridge, in turn: a fresh Mosquitto and a fresh database on one InfluxDB 1.6, the bridge
started, one warm-up node-window (cluster "warmup") published until its points are counted, then
the measured load. "Stored" is `count(seq)` of `gpu` points with cluster "bench", polled every
POLL_S; the run ends when all are counted, or when the count has not moved for --stall seconds
after the last publish (a peer that drops). CPU is utime+stime of the bridge process and all its
descendants (/proc/<pid>/stat, reaped children included), from just before the first publish to
the poll that saw the final count. The machine is shared: compare the ratios within one run.
Exits 1 only if gpufleet itself did not store every GPU-window.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass, replace
from pathlib import Path

import fleetdata
from publisher import publish_nodes
from gpufleet.collector import lineproto
from gpufleet.collector.pipeline import Pipeline

from gpufleet import localstack, wire
from gpufleet.mqtt import BrokerAddress, MqttLink

HERE = Path(__file__).resolve().parent / "peers"
CACHE = HERE / ".cache"
M2I_VERSION = "2.0.6"  # newest on PyPI when written; 2.x writes through the v2 write API
NODE_RED_VERSION = "4.1.15"
NODE_RED_INFLUXDB_VERSION = "0.7.0"
INSTALL_TIMEOUT_S = 900
BRIDGES = ("gpufleet", "mqtt2influxdb", "node-red")

CLUSTER = "bench"
WARMUP_CLUSTER = "warmup"
JSON_ROOT = "gpufleet-json/v1"  # the peers' topics, beside gpufleet's own
JSON_FILTER = f"{JSON_ROOT}/+/+/telemetry"
POLL_S = 0.25
WARMUP_TIMEOUT_S = 60.0
WARMUP_REPUBLISH_S = 2.0
STOP_TIMEOUT_S = 10.0


# --------------------------------------------------------------------------------- installation


def _run(argv: list[str], log: Path, cwd: Path | None = None) -> None:
    with log.open("ab") as out:
        out.write(f"\n$ {' '.join(argv)}\n".encode())
        out.flush()
        done = subprocess.run(argv, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, timeout=INSTALL_TIMEOUT_S, check=False)
    if done.returncode != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-30:])
        raise SystemExit(f"{argv[0]} failed with code {done.returncode}; {log}:\n{tail}")


def install_mqtt2influxdb() -> Path:
    """The `mqtt2influxdb` command, from a venv of its own in the cache (made when missing)."""
    venv = CACHE / "mqtt2influxdb-venv"
    exe = venv / "bin" / "mqtt2influxdb"
    if exe.exists() and list(venv.glob(f"lib/python3*/site-packages/mqtt2influxdb-{M2I_VERSION}.dist-info")):
        return exe
    CACHE.mkdir(parents=True, exist_ok=True)
    log = CACHE / "install-mqtt2influxdb.log"
    print(f"installing mqtt2influxdb=={M2I_VERSION} into {venv} (log: {log})", flush=True)
    _run([sys.executable, "-m", "venv", "--clear", str(venv)], log)
    _run([str(venv / "bin" / "python"), "-m", "pip", "install", "--disable-pip-version-check", f"mqtt2influxdb=={M2I_VERSION}"], log)
    return exe


def _npm_version(home: Path, package: str) -> str | None:
    try:
        return json.loads((home / "node_modules" / package / "package.json").read_text())["version"]
    except (OSError, ValueError, KeyError):
        return None


def install_node_red() -> Path:
    """The Node-RED user folder (package.json + node_modules with node-red and the influxdb nodes)."""
    home = CACHE / "node-red"
    wanted = {"node-red": NODE_RED_VERSION, "node-red-contrib-influxdb": NODE_RED_INFLUXDB_VERSION}
    if all(_npm_version(home, name) == version for name, version in wanted.items()):
        return home
    for tool in ("node", "npm"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is not installed: Node-RED needs Node.js 18 or later and npm")
    home.mkdir(parents=True, exist_ok=True)
    (home / "package.json").write_text(json.dumps({"name": "gpufleet-peers-node-red", "private": True}) + "\n")
    log = CACHE / "install-node-red.log"
    print(f"installing node-red@{NODE_RED_VERSION} node-red-contrib-influxdb@{NODE_RED_INFLUXDB_VERSION} into {home} (log: {log})", flush=True)
    specs = [f"{name}@{version}" for name, version in wanted.items()]
    _run(["npm", "install", "--no-audit", "--no-fund", "--save-exact", *specs], log, cwd=home)
    return home


def installed_versions(bridges: list[str]) -> dict[str, str]:
    out = {}
    if "mqtt2influxdb" in bridges:
        python = CACHE / "mqtt2influxdb-venv" / "bin" / "python"
        probe = "import importlib.metadata as m, sys; print(' '.join(f'{p} {m.version(p)}' for p in sys.argv[1:]))"
        packages = ["mqtt2influxdb", "influxdb3-python", "paho-mqtt", "jsonpath-ng"]
        done = subprocess.run([str(python), "-c", probe, *packages], capture_output=True, text=True, check=False)
        version = subprocess.run([str(python), "--version"], capture_output=True, text=True, check=False)
        out["mqtt2influxdb"] = f"{done.stdout.strip()}, {version.stdout.strip()}"
    if "node-red" in bridges:
        home = CACHE / "node-red"
        node = subprocess.run(["node", "--version"], capture_output=True, text=True, check=False).stdout.strip()
        names = ["node-red", "node-red-contrib-influxdb", "influx", "mqtt"]
        out["node-red"] = ", ".join(f"{name} {_npm_version(home, name)}" for name in names) + f", Node.js {node}"
    return out


# ------------------------------------------------------------------------------------- the load


@dataclass(frozen=True)
class Load:
    """The same windows, per node, in both encodings: [(topic, payload), ...] per node."""

    msgpack: list[list[tuple[str, bytes]]]
    json: list[list[tuple[str, bytes]]]
    warmup_msgpack: tuple[str, bytes]
    warmup_json: tuple[str, bytes]
    fields: list[str]  # the per-GPU field names every peer point carries (plus seq, window_s)
    gpu_windows: int


def json_topic(cluster: str, node: str) -> str:
    return f"{JSON_ROOT}/{cluster}/{node}/telemetry"


def window_json(window: wire.TelemetryWindow, plan: list[tuple[int, str, int | None]], lean: bool = False) -> bytes:
    """A node-window as a generic bridge wants it: per-GPU objects whose `fields` are already in
    InfluxDB units, converted exactly as the collector converts (integers stay integers). With
    `lean`, without the holders, owners and workloads that only attribution uses."""
    gpus = []
    for gpu in window.gpus:
        values = gpu.values
        fields = {name: value if div is None else value / div for pos, name, div in plan if (value := values[pos]) is not None}
        doc = {"gpu": gpu.index, "uuid": gpu.uuid, "model": gpu.model, "fields": fields}
        if not lean:
            doc["holders"] = [[h.workload, h.sm_util_centi, h.mem_bytes] for h in gpu.holders]
            doc["owners"] = list(gpu.owners)
        gpus.append(doc)
    document = {
        "cluster": window.cluster, "node": window.node, "seq": window.seq,
        "t0": window.t0_ms, "timestamp": window.t0_ms / 1000,  # mqtt2influxdb reads `timestamp`, in s
        "window_s": (window.t1_ms - window.t0_ms) / 1000, "gpus": gpus,
    }
    if not lean:
        document["workloads"] = window.workloads
    return json.dumps(document, separators=(",", ":")).encode()


def make_load(nodes: int, gpus: int, windows: int, seed: int, lean_json: bool = False) -> Load:
    now_ms = int(time.time() * 1000)
    start_ms = now_ms - windows * 10_000 - 60_000  # all in the past: the collector refuses the future
    fleet = fleetdata.full_fleet(nodes + 1, gpus, windows, start_ms, seed=seed)
    warmup = replace(fleet[0], cluster=WARMUP_CLUSTER, node="warmup")
    fleet = fleet[windows:]  # node 0 was only the warm-up's source
    plan, unknown = lineproto.field_plan(fleet[0].fields)
    assert not unknown, unknown
    per_node: dict[str, list[wire.TelemetryWindow]] = defaultdict(list)
    for window in fleet:
        per_node[window.node].append(window)

    def both(window: wire.TelemetryWindow) -> tuple[tuple[str, bytes], tuple[str, bytes]]:
        return (
            (wire.telemetry_topic(window.cluster, window.node), wire.encode_telemetry(window)),
            (json_topic(window.cluster, window.node), window_json(window, plan, lean_json)),
        )

    pairs = [[both(w) for w in node] for node in per_node.values()]
    packed, as_json = both(warmup)
    return Load(
        msgpack=[[p[0] for p in node] for node in pairs], json=[[p[1] for p in node] for node in pairs],
        warmup_msgpack=packed, warmup_json=as_json, fields=[name for _, name, _ in plan],
        gpu_windows=nodes * gpus * windows,
    )


# ---------------------------------------------------------------------------------- measurement


def tree_cpu_seconds(root: int) -> float:
    """utime+stime+cutime+cstime (proc(5) fields 14-17) of `root` and its live descendants: what
    the process, its threads and any helpers it started have used so far."""
    parent_of, ticks = {}, {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            text = Path(entry.path, "stat").read_text()
        except OSError:
            continue  # gone meanwhile
        fields = text.rsplit(")", 1)[1].split()
        pid = int(entry.name)
        parent_of[pid] = int(fields[1])
        ticks[pid] = sum(int(f) for f in fields[11:15])
    children = defaultdict(list)
    for pid, ppid in parent_of.items():
        children[ppid].append(pid)
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        total += ticks.get(pid, 0)
        todo += children.get(pid, [])
    return total / os.sysconf("SC_CLK_TCK")


def count_stored(influx: localstack.InfluxDB, db: str, cluster: str, measurement: str = "gpu", field: str = "seq") -> int:
    rows = influx.rows(f"SELECT count(\"{field}\") FROM \"{measurement}\" WHERE \"cluster\" = '{cluster}'", db)
    return int(rows[0]["count"]) if rows else 0


def core_seconds(load: Load) -> float:
    """CPU seconds gpufleet's pure core (Pipeline.handle: decode, validate, attribute, line
    protocol) takes in this process for the load's messages: the part of the collector's cost
    that is neither MQTT nor HTTP nor asyncio."""
    rules = fleetdata.tenant_rules()
    pipeline = Pipeline(lambda: rules)
    now_ms = int(time.time() * 1000)
    messages = [m for node in load.msgpack for m in node]
    start = time.process_time()
    for topic, payload in messages:
        pipeline.handle(topic, payload, now_ms)
    return time.process_time() - start


async def publish(broker_url: str, per_node: list[list[tuple[str, bytes]]], clients: int) -> None:
    """QoS 1 from `clients` connections, each its share of the nodes, window 0 of each, then 1, ..."""
    await publish_nodes(BrokerAddress.parse(broker_url), per_node, clients, "peers")


@dataclass
class Result:
    bridge: str
    published: int
    stored: int
    wall_s: float
    cpu_s: float
    db_cpu_s: float  # influxd + nginx over the same span
    broker_cpu_s: float
    note: str = ""
    points: int = 0  # every point written for the load: gpu, plus gpufleet's tenant_usage

    @property
    def points_per_cpu_s(self) -> float:
        return self.points / self.cpu_s if self.cpu_s > 0 else float("inf")

    @property
    def per_cpu_s(self) -> float:
        return self.stored / self.cpu_s if self.cpu_s > 0 else float("inf")


class Running:
    """A started bridge: its process, its log, and how to stop it."""

    def __init__(self, name: str, proc: subprocess.Popen[bytes], log: Path, stop_timeout_s: float = STOP_TIMEOUT_S) -> None:
        self.name, self.proc, self.log, self.stop_timeout_s = name, proc, log, stop_timeout_s

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            raise SystemExit(f"{self.name} exited with code {self.proc.returncode}:\n{self.log_tail()}")

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(self.stop_timeout_s)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(STOP_TIMEOUT_S)


def _spawn(
    name: str, argv: list[str], log: Path, env: dict[str, str] | None = None, cwd: Path | None = None,
    stop_timeout_s: float = STOP_TIMEOUT_S,
) -> Running:
    # Own session: a Ctrl-C of the bench reaches us, and we stop the bridge ourselves.
    with log.open("wb") as out:
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})}, cwd=cwd, start_new_session=True,
        )
    return Running(name, proc, log, stop_timeout_s)


def start_gpufleet(broker: localstack.Mosquitto, influx: localstack.InfluxDB, db: str, run_dir: Path) -> Running:
    argv = [
        *localstack.collector_argv(
            broker.url, influx.url, db, "peers-collector", group="peers", tenants_file=fleetdata.TENANTS_FILE
        ),
    ]
    return _spawn("gpufleet", argv, run_dir / "gpufleet.log", {"GPUFLEET_INFLUX_TOKEN": "bench"})


def mqtt2influxdb_config(broker: localstack.Mosquitto, influx: localstack.InfluxDB, db: str, gpus: int, fields: list[str]) -> str:
    """mqtt2influxdb takes one value per JSONPath, so one `points:` entry per GPU index; all
    entries share the topic filter, and every message goes through each of them."""
    out = [
        "# Generated by bench/peers.py: one point per GPU of a gpufleet node-window (JSON).",
        "mqtt:", f"  host: {broker.host}", f"  port: {broker.port}",
        # influxdb3-python: `host:port` with a scheme; it writes to /api/v2/write (nginx front).
        "influxdb:", f"  host: http://{influx.host}", f"  port: {influx.nginx_port}",
        "  token: bench", "  org: gpufleet", f"  bucket: {db}",
        "points:",
    ]
    for i in range(gpus):
        out += ["  - measurement: gpu", f"    topic: '{JSON_FILTER}'", "    qos: 1", "    fields:"]
        out += [f"      {name}: '$.payload.gpus[{i}].fields.{name}'" for name in fields]
        out += ["      seq: '$.payload.seq'", "      window_s: '$.payload.window_s'", "    tags:"]
        out += ["      cluster: '$.payload.cluster'", "      node: '$.payload.node'"]
        out += [f"      {tag}: '$.payload.gpus[{i}].{key}'" for tag, key in (("gpu", "gpu"), ("model", "model"), ("uuid", "uuid"))]
    return "\n".join(out) + "\n"


def start_mqtt2influxdb(broker: localstack.Mosquitto, influx: localstack.InfluxDB, db: str, run_dir: Path, load: Load, gpus: int) -> Running:
    exe = install_mqtt2influxdb()
    config = run_dir / "mqtt2influxdb.yml"
    config.write_text(mqtt2influxdb_config(broker, influx, db, gpus, load.fields))
    shutil.copy(config, CACHE / "mqtt2influxdb.yml")  # the last one used, to read after the run
    # Its CLI loops back into a new bridge after SIGTERM (cli.py `while True`), so it never
    # exits by itself: it gets a short grace period before SIGKILL.
    return _spawn("mqtt2influxdb", [str(exe), "-c", str(config)], run_dir / "mqtt2influxdb.log", stop_timeout_s=2.0)


def start_node_red(broker: localstack.Mosquitto, influx: localstack.InfluxDB, db: str, run_dir: Path) -> Running:
    home = install_node_red()
    flows = run_dir / "flows.json"  # a copy: Node-RED may write beside its flow file
    shutil.copy(HERE / "node-red" / "flows.json", flows)
    argv = [
        shutil.which("node") or "node", str(home / "node_modules" / "node-red" / "red.js"),
        "--settings", str(HERE / "node-red" / "settings.js"), "--userDir", str(home), str(flows),
    ]
    env = {
        "GPUFLEET_PEERS_MQTT_PORT": str(broker.port), "GPUFLEET_PEERS_INFLUX_PORT": str(influx.http_port),
        "GPUFLEET_PEERS_DB": db, "GPUFLEET_PEERS_UI_PORT": str(localstack.free_port()),
    }
    return _spawn("node-red", argv, run_dir / "node-red.log", env, cwd=run_dir)


async def warm_up(bridge: Running, broker_url: str, influx: localstack.InfluxDB, db: str, message: tuple[str, bytes], gpus: int) -> None:
    """Publish one node-window until its points are counted: the bridge is then subscribed,
    connected to InfluxDB and past its first-message costs. Republished every few seconds in
    case the first copy came before the subscription (every copy is the same points)."""
    deadline = time.monotonic() + WARMUP_TIMEOUT_S
    async with MqttLink(BrokerAddress.parse(broker_url), "peers-warmup") as link:
        last = -WARMUP_REPUBLISH_S
        while time.monotonic() < deadline:
            bridge.check_alive()
            if time.monotonic() - last >= WARMUP_REPUBLISH_S:
                await link.publish(*message)
                last = time.monotonic()
            await asyncio.sleep(POLL_S)
            if await asyncio.to_thread(count_stored, influx, db, WARMUP_CLUSTER) >= gpus:
                return
    raise SystemExit(f"{bridge.name} stored no warm-up point in {WARMUP_TIMEOUT_S:.0f} s:\n{bridge.log_tail()}")


async def measure(
    bridge: Running, broker: localstack.Mosquitto, influx: localstack.InfluxDB, db: str,
    per_node: list[list[tuple[str, bytes]]], expected: int, args: argparse.Namespace,
) -> Result:
    influxd, nginx = (daemon.proc.pid for daemon in influx._daemons)  # CPU figures only

    def cpu() -> tuple[float, float, float]:
        assert broker.pid is not None
        return tree_cpu_seconds(bridge.proc.pid), tree_cpu_seconds(influxd) + tree_cpu_seconds(nginx), tree_cpu_seconds(broker.pid)

    cpu0, start = cpu(), time.perf_counter()
    sender = asyncio.create_task(publish(broker.url, per_node, args.clients), name="peers.publish")
    stored, at, cpu_at = 0, start, cpu0
    published_at: float | None = None
    note = ""
    while True:
        await asyncio.sleep(POLL_S)
        now = time.perf_counter()
        if sender.done() and published_at is None:
            sender.result()  # raises what the publisher raised
            published_at = now
        bridge.check_alive()
        count = await asyncio.to_thread(count_stored, influx, db, CLUSTER)
        if count != stored:
            stored, at, cpu_at = count, time.perf_counter(), cpu()
        if stored >= expected and published_at is not None:
            break
        if published_at is not None and now - max(at, published_at) > args.stall:
            note = f"stopped: no new point for {args.stall:g} s after the last publish"
            break
        if now - start > args.timeout:
            note = f"stopped: --timeout {args.timeout:g} s"
            break
    if not sender.done():
        sender.cancel()
    return Result(
        bridge.name, expected, stored, at - start, cpu_at[0] - cpu0[0], cpu_at[1] - cpu0[1], cpu_at[2] - cpu0[2], note
    )


def error_lines(bridge: Running, offset: int) -> list[str]:
    """Warnings and errors the bridge logged from `offset` (bytes) on: during the measured run."""
    # gpufleet and mqtt2influxdb log with Python's level names, Node-RED as "[error]"/"[warn]".
    pattern = re.compile(r"\b(ERROR|WARNING)\b|\[(error|warn)\]")
    with bridge.log.open("rb") as log:
        log.seek(offset)
        text = log.read().decode(errors="replace")
    return [line for line in text.splitlines() if pattern.search(line)]


def sample_point(influx: localstack.InfluxDB, db: str, node: str) -> dict:
    rows = influx.rows(f"SELECT * FROM \"gpu\" WHERE \"node\" = '{node}' AND \"gpu\" = '0' ORDER BY time LIMIT 1", db)
    return rows[0] if rows else {}


def field_types(influx: localstack.InfluxDB, db: str) -> dict[str, str]:
    """InfluxDB's type of each `gpu` field (the JSON of a query shows 41.0 as 41: no help there)."""
    return {row["fieldKey"]: row["fieldType"] for row in influx.rows('SHOW FIELD KEYS FROM "gpu"', db)}


def differences(reference: dict, other: dict, fields: list[str]) -> list[str]:
    """Fields (and tags) of the same GPU-window whose stored values differ from gpufleet's."""
    out = []
    for name in [*fields, "seq", "window_s", "time", "uuid", "model", "cluster"]:
        a, b = reference.get(name), other.get(name)
        if a != b and not (isinstance(a, (int, float)) and isinstance(b, (int, float)) and float(a) == float(b)):
            out.append(f"{name}: {a!r} vs {b!r}")
    return out


# -------------------------------------------------------------------------------------- the run


def run_one(name: str, load: Load, influx: localstack.InfluxDB, tmp: Path, args: argparse.Namespace) -> tuple[Result, dict, list[str]]:
    run_dir = tmp / name
    run_dir.mkdir()
    db = name.replace("-", "_")
    influx.create_database(db)
    with localstack.Mosquitto(run_dir) as broker:
        if name == "gpufleet":
            bridge = start_gpufleet(broker, influx, db, run_dir)
        elif name == "mqtt2influxdb":
            bridge = start_mqtt2influxdb(broker, influx, db, run_dir, load, args.gpus)
        else:
            bridge = start_node_red(broker, influx, db, run_dir)
        try:
            warmup = load.warmup_msgpack if name == "gpufleet" else load.warmup_json
            per_node = load.msgpack if name == "gpufleet" else load.json
            if name in args.short:
                per_node = [node[: args.short_windows] for node in per_node]
            expected = sum(map(len, per_node)) * args.gpus
            asyncio.run(warm_up(bridge, broker.url, influx, db, warmup, args.gpus))
            log_offset = bridge.log.stat().st_size
            result = asyncio.run(measure(bridge, broker, influx, db, per_node, expected, args))
        finally:
            bridge.stop()
        shutil.copy(bridge.log, CACHE / f"{name}.log")  # the last run's, to read afterwards
    result.points = result.stored + count_stored(influx, db, CLUSTER, "tenant_usage", "gpu_s")
    return result, {"point": sample_point(influx, db, "node00001"), "types": field_types(influx, db)}, error_lines(bridge, log_offset)


WRITES = {
    "gpufleet": "batches of 5000 lines",
    "mqtt2influxdb": "1 request per point",
    "node-red": "1 request per message",
}


def report(results: list[Result], load: Load, args: argparse.Namespace, samples: dict[str, dict], errors: dict[str, list[str]]) -> None:
    gpufleet = next((r for r in results if r.bridge == "gpufleet"), None)
    messages = sum(map(len, load.msgpack))
    msgpack_bytes = sum(len(p) for node in load.msgpack for _, p in node)
    json_bytes = sum(len(p) for node in load.json for _, p in node)
    print(
        f"\nload: {args.nodes} nodes x {args.gpus} GPUs x {args.windows} windows of 10 s = {load.gpu_windows:,} GPU-windows "
        f"in {messages:,} node-window messages (every counter, 1-3 workloads per GPU; seed {args.seed})\n"
        f"payload per GPU-window: MessagePack {msgpack_bytes / load.gpu_windows:.0f} B (gpufleet), JSON {json_bytes / load.gpu_windows:.0f} B "
        f"(peers; {'without' if args.lean_json else 'with'} holders, owners, workloads)\n"
        f"published at QoS 1 by {args.clients} connections as fast as Mosquitto acknowledges; each bridge drains the backlog\n"
    )
    header = (
        f"{'bridge':<14} {'InfluxDB writes':<22} {'stored/published':>17} {'wall s':>7} {'CPU s':>7} {'GPU-win/CPU-s':>13} "
        f"{'gpufleet/peer':>13} {'points/CPU-s':>12} {'influxd+nginx CPU s':>19} {'broker CPU s':>12}"
    )
    print(header)
    print("-" * len(header))
    for r in results:
        if r is gpufleet:
            ratio = "-"
        else:
            ratio = f"{gpufleet.per_cpu_s / r.per_cpu_s:.1f}x" if gpufleet and r.stored else "n/a"
        flag = "" if r.stored == r.published else " !"
        print(
            f"{r.bridge:<14} {WRITES[r.bridge]:<22} {f'{r.stored:,}/{r.published:,}{flag}':>17} {r.wall_s:7.2f} {r.cpu_s:7.2f} "
            f"{r.per_cpu_s:13,.0f} {ratio:>13} {r.points_per_cpu_s:12,.0f} {r.db_cpu_s:19.2f} {r.broker_cpu_s:12.2f}"
        )
    print()
    for r in results:
        if r.bridge in args.short and r.published < load.gpu_windows:
            print(
                f"{r.bridge}: given the first {args.short_windows} windows of each node ({r.published:,} GPU-windows; --short): "
                f"it writes every point with its own request, so its cost per GPU-window does not depend on the count"
            )
        if r.stored != r.published:
            print(
                f"{r.bridge}: {r.published - r.stored:,} of {r.published:,} GPU-windows NOT STORED when the run ended "
                f"({r.note or 'incomplete'}); its rate counts the stored ones only"
            )
        elif r.note:
            print(f"{r.bridge}: {r.note}")
    if gpufleet:
        core = core_seconds(load)
        print(
            f"gpufleet wrote {gpufleet.points:,} points ({gpufleet.points - gpufleet.stored:,} tenant_usage from attribution), "
            f"{gpufleet.points / max(gpufleet.stored, 1):.2f} per GPU-window; the peers 1. Collector CPU "
            f"{gpufleet.cpu_s / load.gpu_windows * 1e6:.0f} µs per GPU-window, of which its pure core (Pipeline.handle, "
            f"timed here) {core / load.gpu_windows * 1e6:.0f} µs"
        )
    for name, lines in errors.items():
        if lines:
            print(f"{name}: {len(lines)} warning/error lines in its log during the run ({CACHE / (name + '.log')}), e.g. {lines[-1][:160]}")
    reference = samples.get("gpufleet")
    for name, sample in samples.items():
        if name == "gpufleet" or not reference:
            continue
        diffs = differences(reference["point"], sample["point"], load.fields)
        same = "same values" if not diffs else f"{len(diffs)} differences, e.g. {'; '.join(diffs[:3])}"
        typed = [f for f, kind in reference["types"].items() if sample["types"].get(f) == kind]
        print(
            f"{name}: a stored GPU-window beside gpufleet's: {same}; "
            f"{len(typed)} of {len(reference['types'])} fields of the same InfluxDB type"
            + ("" if len(typed) == len(reference["types"]) else f" ({', '.join(sorted(set(sample['types'].values())))} only)")
        )
    for name, versions in installed_versions([r.bridge for r in results]).items():
        print(f"{name} versions: {versions}")
    if gpufleet and gpufleet.stored == gpufleet.published:
        peers = [r for r in results if r is not gpufleet and r.stored]
        if peers:
            worst = min(gpufleet.per_cpu_s / r.per_cpu_s for r in peers)
            verdict = "met" if worst >= 5 else "NOT met"
            print(f"goal (gpufleet >= 5x each peer's GPU-windows per CPU-second): {verdict}, smallest ratio {worst:.1f}x")
    print(f"CPU: utime+stime of each bridge's process tree over its own span; {os.cpu_count()} CPUs, shared machine: compare ratios")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=100)
    parser.add_argument("--gpus", type=int, default=8, help="GPUs per node")
    parser.add_argument("--windows", type=int, default=20, help="10 s windows per node")
    parser.add_argument("--clients", type=int, default=16, help="MQTT connections publishing")
    parser.add_argument("--bridges", default=",".join(BRIDGES), help=f"comma-separated, from {','.join(BRIDGES)}")
    parser.add_argument(
        "--short", default="mqtt2influxdb",
        help="comma-separated bridges that get only the first --short-windows windows of each node: mqtt2influxdb "
        "takes ~17 ms of CPU per GPU-window, the full default load ~11 minutes here ('' for the full load everywhere)",
    )
    parser.add_argument("--short-windows", type=int, default=3, help="windows per node for the --short bridges")
    parser.add_argument(
        "--lean-json", action="store_true",
        help="JSON without the holders, owners and workloads (the peers store none of them; by default it carries "
        "what the MessagePack carries)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--stall", type=float, default=30.0, help="seconds without a new point (after the last publish) that end a run")
    parser.add_argument("--timeout", type=float, default=1200.0, help="seconds one bridge may take in all")
    parser.add_argument("--install-only", action="store_true", help="install the peers into bench/peers/.cache and exit")
    args = parser.parse_args()
    bridges = [b.strip() for b in args.bridges.split(",") if b.strip()]
    args.short = {b.strip() for b in args.short.split(",") if b.strip()}
    if unknown := (set(bridges) | args.short) - set(BRIDGES):
        parser.error(f"unknown bridges: {', '.join(sorted(unknown))}")

    if "mqtt2influxdb" in bridges:
        install_mqtt2influxdb()
    if "node-red" in bridges:
        install_node_red()
    if args.install_only:
        return 0
    if missing := localstack.missing_binaries():
        raise SystemExit(f"not installed: {', '.join(missing)} (make deps)")

    load = make_load(args.nodes, args.gpus, args.windows, args.seed, args.lean_json)
    results, samples, errors = [], {}, {}
    with tempfile.TemporaryDirectory(prefix="gpufleet-peers-") as tmp, localstack.InfluxDB(tmp) as influx:
        for name in bridges:
            print(f"{name}: running", flush=True)
            result, samples[name], errors[name] = run_one(name, load, influx, Path(tmp), args)
            print(f"{name}: {result.stored:,}/{result.published:,} GPU-windows in {result.wall_s:.1f} s, {result.cpu_s:.2f} CPU s", flush=True)
            results.append(result)
        shutil.copy(influx.dir / "influxd.log", CACHE / "influxd.log")
    report(results, load, args, samples, errors)
    gpufleet = next((r for r in results if r.bridge == "gpufleet"), None)
    return 1 if gpufleet and gpufleet.stored != gpufleet.published else 0


if __name__ == "__main__":
    sys.exit(main())
