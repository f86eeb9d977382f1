"""Plays the fault scenarios against a simulated fleet and prints, per scenario, GPU-windows
published, stored, lost and duplicated (delivered more than once; InfluxDB keeps one copy).

    python bench/faults.py                 # 60 s outages, as the issue asks (about 8 minutes)
    python bench/faults.py --outage 5      # quicker

Each scenario gets fresh services (gpufleet.localstack) and a real `gpufleet collector` process.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from gpufleet import localstack
from gpufleet.agent.fleet import FleetPlan, FleetResult, run_fleet
from gpufleet.agent.node import Cadence
from gpufleet.mqtt import BrokerAddress

REPO = Path(__file__).resolve().parents[1]
DB, CLUSTER = "faults", "faults"


class Scenario:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.broker = localstack.Mosquitto(workdir).start()
        self.influx = localstack.InfluxDB(workdir).start()
        self.influx.create_database(DB)
        self.collectors: dict[str, subprocess.Popen] = {}

    def start_collector(self, name: str) -> None:
        log = (self.workdir / f"collector-{name}.log").open("ab")
        self.collectors[name] = subprocess.Popen(
            localstack.collector_argv(self.broker.url, self.influx.url, DB, f"collector-{name}", group="faults",
                                      tenants_file=REPO / "systemd" / "tenants.toml"),
            stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "GPUFLEET_INFLUX_TOKEN": "t"},
        )
        time.sleep(1.5)  # subscribed well before the fleet starts

    def kill_collector(self, name: str) -> None:
        self.collectors[name].send_signal(signal.SIGKILL)
        self.collectors[name].wait(10)

    def stored(self) -> int:
        rows = self.influx.rows(f"SELECT count(seq) FROM gpu WHERE cluster = '{CLUSTER}'", DB)
        return rows[0]["count"] if rows else 0

    def delivered(self) -> int:
        """GPU-windows the collectors turned into points, repeats included (their own counters)."""
        rows = self.influx.rows("SELECT last(gpu_windows) FROM collector GROUP BY collector", DB)
        return sum(row["last"] for row in rows)

    def close(self) -> None:
        for process in self.collectors.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                process.wait(60)
        self.influx.stop()
        self.broker.stop()


def run(name: str, fault: Callable[[Scenario], None], plan: FleetPlan, collectors: tuple[str, ...] = ("a",)) -> None:
    with tempfile.TemporaryDirectory(prefix="gpufleet-faults-") as tmp:
        scenario = Scenario(Path(tmp))
        try:
            for collector in collectors:
                scenario.start_collector(collector)

            async def play() -> FleetResult:
                fleet = asyncio.create_task(run_fleet(plan, BrokerAddress.parse(scenario.broker.url)))
                await asyncio.sleep(plan.cadence.publish_ms / 1000 * plan.windows / 4)
                await asyncio.to_thread(fault, scenario)
                return await fleet

            result = asyncio.run(play())
            published = result.gpu_windows_acknowledged
            deadline = time.monotonic() + 120
            while scenario.stored() < published and time.monotonic() < deadline:
                time.sleep(0.5)
            time.sleep(11)  # one more `collector` stats point after the last write
            stored = scenario.stored()
            print(f"{name:<40} {published:>9} {stored:>8} {published - stored:>6} {max(0, scenario.delivered() - stored):>10}")
        finally:
            scenario.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--outage", type=float, default=60.0, help="seconds a service stays away")
    parser.add_argument("--nodes", type=int, default=10)
    parser.add_argument("--gpus-per-node", type=int, default=8)
    parser.add_argument("--interval", type=float, default=1.0)
    args = parser.parse_args()
    windows = round((args.outage * 2 + 20) / args.interval)
    plan = FleetPlan(
        CLUSTER, args.nodes, args.gpus_per_node, Cadence(round(args.interval * 1000), round(args.interval * 1000)), windows,
        drain_timeout_s=args.outage * 3 + 120, until_stored=True, resend_after_s=max(5.0, args.interval * 5),
    )

    def broker_away(s: Scenario) -> None:
        s.broker.stop()
        time.sleep(args.outage)
        s.broker.start()

    def database_away(s: Scenario) -> None:
        s.influx.stop()
        time.sleep(args.outage)
        s.influx.start()

    def collector_killed(s: Scenario) -> None:
        s.kill_collector("a")
        time.sleep(2)
        s.start_collector("a")

    print(f"{args.nodes} nodes x {args.gpus_per_node} GPUs, {windows} windows of {args.interval:g} s, outages of {args.outage:g} s")
    print(f"{'scenario':<40} {'published':>9} {'stored':>8} {'lost':>6} {'duplicated':>10}")
    run(f"broker away {args.outage:g} s", broker_away, plan)
    run(f"InfluxDB away {args.outage:g} s", database_away, plan)
    run("collector SIGKILL + restart", collector_killed, plan)
    run("2 collectors, one SIGKILLed for good", lambda s: s.kill_collector("a"), plan, collectors=("a", "b"))


if __name__ == "__main__":
    main()
