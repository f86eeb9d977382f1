"""Fixtures for end-to-end tests: the real `gpufleet collector` command as a subprocess."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from gpufleet import localstack, wire
from gpufleet.agent.fleet import FleetPlan, FleetResult, run_fleet
from gpufleet.agent.node import Cadence
from gpufleet.mqtt import BrokerAddress, MqttLink

REPO = Path(__file__).resolve().parents[2]
TENANTS_FILE = REPO / "systemd" / "tenants.toml"  # the rules shipped for the simulator's tenants


class CollectorProcess:
    """`gpufleet collector` run as operators run it; its log is kept for failure messages."""

    def __init__(self, args: list[str], log_path: Path, env: dict[str, str]) -> None:  # args: localstack.collector_argv
        self.log_path = log_path
        self._log = log_path.open("wb")
        self.proc = subprocess.Popen(
            args, stdout=self._log, stderr=subprocess.STDOUT, env=env
        )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for_log(self, text: str, timeout_s: float = 20.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if text in self.log():
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError(f"collector never logged {text!r}:\n{self.log()[-3000:]}")

    def stop(self, timeout_s: float = 60.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout_s)
        finally:
            self._log.close()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._log.close()


def collector_args(broker: str, influx_url: str, bucket: str, group: str, client_id: str) -> list[str]:
    return localstack.collector_argv(broker, influx_url, bucket, client_id, group=group, tenants_file=TENANTS_FILE)


@pytest.fixture
def start_collector(
    tmp_path: Path, mosquitto: localstack.Mosquitto, influxdb: localstack.InfluxDB, bucket: str, cluster_name: str
) -> Iterator[Callable[..., CollectorProcess]]:
    """Start a collector on this test's bucket; its shared-subscription group is unique to the test."""
    started: list[CollectorProcess] = []
    env = {**os.environ, "GPUFLEET_INFLUX_TOKEN": "test-token"}

    def start(name: str = "a", *extra: str) -> CollectorProcess:
        args = collector_args(mosquitto.url, influxdb.url, bucket, f"g{cluster_name}", f"collector-{cluster_name}-{name}")
        args += extra
        process = CollectorProcess(args, tmp_path / f"collector-{name}.log", env)
        started.append(process)
        process.wait_for_log("subscribed to")
        return process

    yield start
    for process in started:
        process.kill()


def wait_until(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


def count_points(influxdb: localstack.InfluxDB, bucket: str, measurement: str, cluster: str) -> int:
    rows = influxdb.rows(f"SELECT count(gpu_s) FROM {measurement} WHERE cluster = '{cluster}'", bucket) if (
        measurement == "tenant_usage"
    ) else influxdb.rows(f"SELECT count(seq) FROM {measurement} WHERE cluster = '{cluster}'", bucket)
    return rows[0]["count"] if rows else 0


class FleetDb:
    """A database after a simulated fleet with tenants, XID events and a lost GPU ran through the
    real broker and the real collector: what dashboards and reports are checked against."""

    def __init__(self, influxdb: localstack.InfluxDB, bucket: str, cluster: str, result: FleetResult) -> None:
        self.influxdb = influxdb
        self.bucket = bucket
        self.cluster = cluster
        self.result = result


FLEET_NODES, FLEET_GPUS, FLEET_WINDOWS = 4, 8, 30


@pytest.fixture(scope="session")
def fleet_db(
    tmp_path_factory: pytest.TempPathFactory, mosquitto: localstack.Mosquitto, influxdb: localstack.InfluxDB
) -> FleetDb:
    bucket, cluster = "fleet_" + os.urandom(4).hex(), "fleet"
    influxdb.create_database(bucket)
    log_dir = tmp_path_factory.mktemp("fleet_db")
    env = {**os.environ, "GPUFLEET_INFLUX_TOKEN": "test-token"}
    # Its own cluster only: the broker is shared by the session's tests, whose retained node
    # states would otherwise reach this bucket.
    args = [*collector_args(mosquitto.url, influxdb.url, bucket, f"g{bucket}", f"collector-{bucket}"), "--cluster", cluster]
    collector = CollectorProcess(args, log_dir / "collector.log", env)
    try:
        collector.wait_for_log("subscribed to")
        plan = FleetPlan(
            cluster, FLEET_NODES, FLEET_GPUS, Cadence(sample_ms=200, publish_ms=200), FLEET_WINDOWS,
            seed=11, xid_rate_per_gpu_hour=200.0,
        )
        result = asyncio.run(_fleet_with_a_lost_gpu(plan, BrokerAddress.parse(mosquitto.url)))
        assert result.complete, result.failures
        expected = FLEET_NODES * FLEET_GPUS * FLEET_WINDOWS
        wait_until(lambda: count_points(influxdb, bucket, "gpu", cluster) >= expected, 60, "the fleet's GPU points")
        assert collector.stop() == 0, collector.log()[-3000:]
    finally:
        collector.kill()
    return FleetDb(influxdb, bucket, cluster, result)


async def _fleet_with_a_lost_gpu(plan: FleetPlan, broker: BrokerAddress) -> FleetResult:
    """The fleet, plus the event an agent sends when a GPU falls off the bus (XID 79)."""
    result = await run_fleet(plan, broker, record=True)
    node = plan.node_names()[-1]
    lost = wire.GpuEventMessage(plan.cluster, node, int(time.time() * 1000), 3, "GPU-lost-3", "gpu_lost", 0, "GPU is lost")
    async with MqttLink(broker, f"test-{plan.cluster}-{node}-events") as link:
        await link.publish(wire.events_topic(plan.cluster, node), wire.encode_event(lost))
    return result
