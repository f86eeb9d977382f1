"""A simulated fleet through the real broker and the real collector into the real InfluxDB:
every published GPU-window arrives exactly once, with the published values."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time

from gpufleet import localstack
from gpufleet.agent.fleet import FleetPlan, run_fleet
from gpufleet.agent.node import Cadence
from gpufleet.catalogue import gpu_window_field_by_name
from gpufleet.mqtt import BrokerAddress

from .conftest import wait_until

NODES, GPUS, WINDOWS = 5, 8, 10


def expected_points(published) -> dict[tuple[str, str, int], dict]:
    """(node, gpu, time ns) -> the field values as InfluxDB must return them."""
    metrics = gpu_window_field_by_name()
    points = {}
    for window in published:
        for gpu in window.gpus:
            fields = {"seq": window.seq, "window_s": (window.t1_ms - window.t0_ms) / 1000}
            for name, value in zip(window.fields, gpu.values):
                if value is not None:
                    metric = metrics[name]
                    fields[name] = value if metric.is_int else value / round(1 / metric.wire_scale)
            key = (window.node, str(gpu.index), window.t0_ms * 1_000_000)
            assert key not in points, f"the simulator published {key} twice"
            points[key] = {"uuid": gpu.uuid, "model": gpu.model, **fields}
    return points


def stored_points(influxdb: localstack.InfluxDB, bucket: str, cluster: str) -> dict[tuple[str, str, int], dict]:
    rows = influxdb.rows(f"SELECT * FROM gpu WHERE cluster = '{cluster}'", bucket)
    points = {}
    for row in rows:
        key = (row.pop("node"), row.pop("gpu"), row.pop("time"))
        row.pop("cluster")
        points[key] = {name: value for name, value in row.items() if value is not None}
    return points


def count_gpu_points(influxdb: localstack.InfluxDB, bucket: str, cluster: str) -> int:
    rows = influxdb.rows(f"SELECT count(seq) FROM gpu WHERE cluster = '{cluster}'", bucket)
    return rows[0]["count"] if rows else 0


def test_every_published_gpu_window_arrives_exactly_once_with_its_values(
    mosquitto, influxdb, bucket, cluster_name, start_collector
):
    collector = start_collector()
    plan = FleetPlan(cluster_name, NODES, GPUS, Cadence(sample_ms=100, publish_ms=200), WINDOWS, seed=7)

    result = asyncio.run(run_fleet(plan, BrokerAddress.parse(mosquitto.url), record=True))

    assert result.complete, result.failures
    expected = expected_points(result.published())
    assert len(expected) == NODES * GPUS * WINDOWS
    wait_until(lambda: count_gpu_points(influxdb, bucket, cluster_name) >= len(expected), 30, "all GPU points")
    assert collector.stop() == 0, collector.log()[-3000:]
    assert stored_points(influxdb, bucket, cluster_name) == expected


def test_node_state_and_collector_telemetry_are_written(mosquitto, influxdb, bucket, cluster_name, start_collector):
    collector = start_collector()
    plan = FleetPlan(cluster_name, 2, 1, Cadence(sample_ms=100, publish_ms=100), 3)
    assert asyncio.run(run_fleet(plan, BrokerAddress.parse(mosquitto.url))).complete
    wait_until(lambda: count_gpu_points(influxdb, bucket, cluster_name) >= 6, 30, "GPU points")
    assert collector.stop() == 0
    states = influxdb.rows(f"SELECT online, state FROM node_state WHERE cluster = '{cluster_name}' GROUP BY node", bucket)
    assert {(row["node"], row["state"]) for row in states} >= {("node00000", "online"), ("node00001", "offline")}
    [stats] = influxdb.rows("SELECT last(gpu_windows) AS gpu_windows, last(accepted) AS accepted FROM collector", bucket)
    assert stats["gpu_windows"] >= 6


def test_bad_messages_are_counted_by_reason_and_good_ones_still_land(
    mosquitto, influxdb, bucket, cluster_name, start_collector
):
    import paho.mqtt.publish as publish  # a raw client: the agent code cannot send garbage

    collector = start_collector()
    topic = f"gpufleet/v1/{cluster_name}/n1/telemetry"
    # (An oversized payload never reaches us: Mosquitto's max_packet_size refuses it; wire tests cover it.)
    for payload in (b"\xc1 not msgpack", b"\x81\xa1v\x09"):
        publish.single(topic, payload, qos=1, hostname="127.0.0.1", port=int(mosquitto.url.rsplit(":", 1)[1]))
    plan = FleetPlan(cluster_name, 1, 2, Cadence(sample_ms=100, publish_ms=100), 2)
    assert asyncio.run(run_fleet(plan, BrokerAddress.parse(mosquitto.url))).complete
    wait_until(lambda: count_gpu_points(influxdb, bucket, cluster_name) >= 4, 30, "GPU points")
    assert collector.stop() == 0
    [stats] = influxdb.rows(
        "SELECT last(rejected_malformed) AS malformed, last(rejected_version) AS version FROM collector", bucket
    )
    assert (stats["malformed"], stats["version"]) == (1, 1)
    assert "dropped message on" in collector.log()


def test_simulate_command_exits_zero_when_all_windows_are_acknowledged(mosquitto, cluster_name):
    done = subprocess.run(
        [
            sys.executable, "-m", "gpufleet.cli", "simulate", "--nodes", "3", "--gpus-per-node", "2",
            "--interval", "0.2", "--duration", "1", "--broker", mosquitto.url, "--cluster", cluster_name,
        ],
        capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "acknowledged 15/15 windows (30 GPU-windows) from 3 nodes" in done.stdout


def test_simulate_exits_non_zero_when_the_broker_is_unreachable(cluster_name):
    done = subprocess.run(
        [
            sys.executable, "-m", "gpufleet.cli", "simulate", "--nodes", "1", "--gpus-per-node", "1",
            "--interval", "0.2", "--duration", "0.2", "--drain-timeout", "2",
            "--broker", f"mqtt://127.0.0.1:{localstack.free_port()}",
        ],
        capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 1
    assert "acknowledged 0/1 windows" in done.stdout


def test_a_collector_of_one_cluster_takes_only_that_clusters_windows(
    mosquitto, influxdb, bucket, cluster_name, start_collector
):
    """Sharding past one database: a collector group per cluster, each writing its own bucket."""
    other = f"{cluster_name}x"
    collector = start_collector("a", "--cluster", cluster_name)
    for name in (cluster_name, other):
        plan = FleetPlan(name, 1, 2, Cadence(sample_ms=100, publish_ms=100), 2, until_stored=name == cluster_name)
        assert asyncio.run(run_fleet(plan, BrokerAddress.parse(mosquitto.url))).complete or name == other
    wait_until(lambda: count_gpu_points(influxdb, bucket, cluster_name) >= 4, 30, "GPU points")
    time.sleep(1.5)  # a flush interval and more: the other cluster's windows would have landed by now
    assert count_gpu_points(influxdb, bucket, other) == 0
    assert collector.stop() == 0
