"""Loses nothing: every GPU-window published is stored exactly once through a broker restart,
a database outage, a collector killed with SIGKILL, an agent killed and restarted, and a
collector of a shared group dying; events sent while no collector runs are stored once one does. Each test has its own Mosquitto and InfluxDB to break.

Outages here last a few seconds to keep CI short; `bench/faults.py` plays the same scenarios
with 60 s outages and prints published / stored / lost / duplicated GPU-windows.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gpufleet import localstack
from gpufleet.agent.fleet import FleetPlan, FleetResult, node_link, run_fleet
from gpufleet.agent.node import Cadence, NodeAgent
from gpufleet.agent.simulate import SimulatedGpuSource
from gpufleet.mqtt import BrokerAddress

from .conftest import CollectorProcess, collector_args, wait_until

OUTAGE_S = 4.0
DB = "faults"
CLUSTER = "faults"


class Stack:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.broker = localstack.Mosquitto(workdir).start()
        self.influx = localstack.InfluxDB(workdir).start()
        self.influx.create_database(DB)
        self.collectors: list[CollectorProcess] = []

    def collector(self, name: str = "a", group: str = "faults") -> CollectorProcess:
        args = collector_args(self.broker.url, self.influx.url, DB, group, f"collector-{name}")
        process = CollectorProcess(args, self.workdir / f"collector-{name}-{len(self.collectors)}.log",
                                   {**os.environ, "GPUFLEET_INFLUX_TOKEN": "t"})
        self.collectors.append(process)
        process.wait_for_log("subscribed to")
        return process

    def stored(self) -> list[tuple[str, str, int]]:
        rows = self.influx.rows(f"SELECT seq FROM gpu WHERE cluster = '{CLUSTER}' GROUP BY node, gpu", DB)
        return [(row["node"], row["gpu"], row["time"]) for row in rows]

    def close(self) -> None:
        for process in self.collectors:
            process.kill()
        self.influx.stop()
        self.broker.stop()


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    stack = Stack(tmp_path)
    yield stack
    stack.close()


def plan(windows: int, nodes: int = 3, gpus: int = 4) -> FleetPlan:
    # until_stored: the fleet ends only when collectors confirmed every window (resent after 2 s)
    return FleetPlan(
        CLUSTER, nodes, gpus, Cadence(200, 200), windows, seed=5, drain_timeout_s=90, until_stored=True, resend_after_s=2.0
    )


def published_keys(result: FleetResult) -> list[tuple[str, str, int]]:
    return [(w.node, str(g.index), w.t0_ms * 1_000_000) for w in result.published() for g in w.gpus]


def assert_exactly_once(stack: Stack, result: FleetResult) -> None:
    assert result.complete, result.failures
    expected = published_keys(result)
    assert len(set(expected)) == len(expected) == result.plan.nodes * result.plan.gpus_per_node * result.plan.windows
    wait_until(lambda: len(stack.stored()) >= len(expected), 90, "every GPU-window in InfluxDB")
    stored = stack.stored()
    assert sorted(stored) == sorted(expected), (len(stored), len(expected))


async def fleet_with(fault, fleet_plan: FleetPlan, broker_url: str, after_s: float = 1.5) -> FleetResult:
    """Run the fleet; `after_s` into it, run `fault` (blocking, in a thread) while agents go on."""
    fleet = asyncio.create_task(run_fleet(fleet_plan, BrokerAddress.parse(broker_url), record=True))
    await asyncio.sleep(after_s)
    await asyncio.to_thread(fault)
    return await fleet


def test_broker_away_agents_spool_and_deliver_in_order(stack: Stack):
    stack.collector()

    def outage() -> None:
        stack.broker.stop()
        time.sleep(OUTAGE_S)
        stack.broker.start()

    result = asyncio.run(fleet_with(outage, plan(windows=40), stack.broker.url))
    assert_exactly_once(stack, result)
    assert all(stats.connects >= 2 for stats in result.stats.values())  # every agent saw the outage


def test_database_away_collector_holds_and_writes_everything(stack: Stack):
    collector = stack.collector()

    def outage() -> None:
        stack.influx.stop()
        time.sleep(OUTAGE_S)
        stack.influx.start()

    result = asyncio.run(fleet_with(outage, plan(windows=40), stack.broker.url))
    assert_exactly_once(stack, result)
    assert "waiting for InfluxDB" in collector.log()


def test_collector_killed_under_load_loses_nothing(stack: Stack):
    first = stack.collector("a")

    def crash_and_restart() -> None:
        first.proc.send_signal(signal.SIGKILL)
        first.proc.wait(10)
        time.sleep(1.0)
        stack.collector("a")  # same client id: its session, with what was unacknowledged, is waiting

    result = asyncio.run(fleet_with(crash_and_restart, plan(windows=30, nodes=6), stack.broker.url, after_s=2.3))
    assert_exactly_once(stack, result)


def test_two_collectors_share_the_load_and_one_survives_the_other(stack: Stack):
    a = stack.collector("a")
    b = stack.collector("b")

    def a_dies() -> None:
        a.proc.send_signal(signal.SIGKILL)
        a.proc.wait(10)

    result = asyncio.run(fleet_with(a_dies, plan(windows=30), stack.broker.url, after_s=2.0))
    assert_exactly_once(stack, result)
    assert b.proc.poll() is None


def test_agent_killed_goes_offline_by_last_will_and_its_sequence_continues(stack: Stack, tmp_path: Path):
    stack.collector()
    state_dir = tmp_path / "agent-state"
    command = [
        sys.executable, "-m", "gpufleet.cli", "agent", "--simulate", "2", "--interval", "0.2",
        "--broker", stack.broker.url, "--cluster", CLUSTER, "--node", "n1", "--state-dir", str(state_dir),
    ]

    def states() -> list[str]:
        rows = stack.influx.rows("SELECT state FROM node_state WHERE node = 'n1'", DB)
        return [row["state"] for row in rows]

    agent = subprocess.Popen(command, stderr=subprocess.DEVNULL)
    wait_until(lambda: len(stack.stored()) >= 10, 30, "the agent's first windows")
    agent.send_signal(signal.SIGKILL)
    agent.wait(10)
    wait_until(lambda: states()[-1:] == ["offline"], 30, "the last will")
    agent = subprocess.Popen(command, stderr=subprocess.DEVNULL)
    wait_until(lambda: states()[-1:] == ["online"], 30, "the agent back online")
    time.sleep(1.5)
    agent.send_signal(signal.SIGTERM)
    assert agent.wait(30) == 0
    wait_until(lambda: states()[-1:] == ["offline"], 30, "the clean offline")
    seqs = sorted({row["seq"] for row in stack.influx.rows("SELECT seq FROM gpu WHERE node = 'n1'", DB)})
    assert seqs == list(range(len(seqs))) and len(seqs) > 10, seqs


def test_events_sent_while_no_collector_runs_are_stored_once_one_starts(stack: Stack):
    """The broker drops what no subscriber takes (collectors use clean sessions), so an event, like
    a window, stays in the agent's spool until a collector confirms it stored, and is sent again."""
    source = SimulatedGpuSource("n1", 2, seed=1, xid_rate_per_gpu_hour=3600 * 2.0)  # ~2 per GPU-second
    agent = NodeAgent(CLUSTER, "n1", source, Cadence(200, 200), resend_after_s=1.0)
    broker = BrokerAddress.parse(stack.broker.url)

    async def scenario() -> tuple[int, int, bool]:
        connect = lambda: node_link(broker, CLUSTER, "n1", None, "test")  # noqa: E731
        run = asyncio.create_task(agent.run(connect, max_windows=15, drain_timeout_s=60))
        await asyncio.sleep(2.0)  # windows and events reach the broker, which has no one to give them to
        published_before = agent.stats.events_published
        await asyncio.to_thread(stack.collector)
        complete = await run
        return published_before, agent.stats.events_published, complete

    published_before, published, complete = asyncio.run(scenario())
    assert complete and len(agent.spool) == 0
    assert published_before > 0  # the test made events while nothing could store them
    assert agent.stats.events_resent >= published_before
    assert agent.stats.events_stored == published
    rows = stack.influx.rows("SELECT count(code) FROM gpu_event WHERE node = 'n1'", DB)
    assert rows and rows[0]["count"] == published
