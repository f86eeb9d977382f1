"""`gpufleet demo`: the whole pipeline on this machine, on real services.

Starts Mosquitto, InfluxDB 1.6 and its nginx v2-write front on free loopback ports (data under
--workdir), runs a collector and a simulated fleet with tenants through them, then reads back
from InfluxDB what arrived and prints where the data is and how to look at it.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from gpufleet import localstack
from gpufleet.agent.fleet import FleetPlan, run_fleet
from gpufleet.agent.node import Cadence
from gpufleet.collector.influx import InfluxWriter
from gpufleet.collector.service import Collector, CollectorOptions
from gpufleet.collector.tenants import RulesFile
from gpufleet.mqtt import BrokerAddress

DATABASE = "gpufleet"
CLUSTER = "demo"


def run_demo(workdir: Path, nodes: int, gpus_per_node: int, interval_s: float, duration_s: float, serve: bool, tenants_file: Path) -> int:
    workdir.mkdir(parents=True, exist_ok=True)
    with localstack.Mosquitto(workdir) as broker, localstack.InfluxDB(workdir) as influx:
        influx.create_database(DATABASE)
        print(f"broker   {broker.url}\ninfluxdb {influx.url} (database {DATABASE!r}, data in {influx.dir})")
        plan = FleetPlan(
            CLUSTER, nodes, gpus_per_node, Cadence(round(interval_s * 1000), round(interval_s * 1000)),
            max(1, round(duration_s / interval_s)), xid_rate_per_gpu_hour=20.0,
        )
        print(f"simulating {nodes} nodes x {gpus_per_node} GPUs for {plan.windows} windows of {interval_s:g} s ...")
        published, points, elapsed = asyncio.run(_pipeline(plan, broker.url, influx.url, tenants_file))
        print(f"published {published} GPU-windows; collector wrote {points} points in {elapsed:.1f} s\n")
        _summary(influx)
        _reports(influx, workdir / "reports")
        _how_to_look(influx)
        if serve:
            print("\nserving until Ctrl-C ...")
            _wait_for_interrupt()
    return 0 if published else 1


async def _pipeline(plan: FleetPlan, broker_url: str, influx_url: str, tenants_file: Path) -> tuple[int, int, float]:
    broker = BrokerAddress.parse(broker_url)
    writer = InfluxWriter(influx_url, "demo-token", "gpufleet", DATABASE)
    collector = Collector(
        broker, writer, CollectorOptions(client_id="gpufleet-demo-collector", stats_interval_s=2.0),
        tenant_rules=RulesFile(tenants_file).current,
    )
    stop = asyncio.Event()
    started = time.monotonic()
    collecting = asyncio.create_task(collector.run(stop), name="demo.collector")
    await asyncio.wait_for(collector.subscribed.wait(), 20)
    result = await run_fleet(plan, broker)
    deadline = time.monotonic() + 30
    while collector.pipeline.counters.gpu_windows < result.gpu_windows_acknowledged and time.monotonic() < deadline:
        await asyncio.sleep(0.1)  # the last messages are still on their way from the broker
    stop.set()
    await collecting
    writer.close()
    return result.gpu_windows_acknowledged, collector.points_written, time.monotonic() - started


def _summary(influx: localstack.InfluxDB) -> None:
    [gpu] = influx.rows("SELECT count(power_w) AS windows, mean(power_w) AS power, sum(energy_j) AS energy FROM gpu", DATABASE)
    print(f"gpu:          {gpu['windows']} GPU-windows, mean power {gpu['power']:.0f} W, energy {gpu['energy'] / 3.6e6:.3f} kWh")
    tenants = influx.rows(
        "SELECT sum(gpu_s) AS held, sum(busy_gpu_s) AS busy, sum(energy_j) AS energy FROM tenant_usage GROUP BY tenant",
        DATABASE,
    )
    print("tenant_usage: tenant        GPU-hours   busy %   energy kWh")
    for row in sorted(tenants, key=lambda r: -r["held"]):
        busy = 100 * row["busy"] / row["held"] if row["held"] else 0.0
        print(f"              {row['tenant']:<12} {row['held'] / 3600:9.4f}   {busy:5.1f}   {row['energy'] / 3.6e6:10.5f}")
    events = influx.rows("SELECT count(code) AS n FROM gpu_event GROUP BY kind", DATABASE)
    print("gpu_event:    " + (", ".join(f"{r['n']} {r['kind']}" for r in events) or "none"))
    states = influx.rows("SELECT last(state) AS state FROM node_state GROUP BY node", DATABASE)
    print(f"node_state:   {sum(r['state'] == 'offline' for r in states)} of {len(states)} nodes offline (the fleet has stopped)")


def _reports(influx: localstack.InfluxDB, out: Path) -> None:
    """Every tenant's HTML report and the fleet chargeback for the day, read back from InfluxDB."""
    from datetime import UTC, datetime, timedelta  # noqa: PLC0415

    from gpufleet.reports.main import run_report  # noqa: PLC0415
    from gpufleet.reports.settings import load_report_config  # noqa: PLC0415

    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    config = load_report_config(None, {"influx": {"url": influx.direct_url, "database": DATABASE}})
    run = run_report(
        config, start=today.isoformat(), end=(today + timedelta(days=1)).isoformat(), fmt="html", out=out,
        all_tenants=True, use_rollup=False,
    )
    print(f"\nreports:      {len(run.files) - 1} tenant reports (HTML) and chargeback.csv in {out}")
    print(f"              chargeback reconciles with the fleet totals: {'yes' if run.reconciled else 'NO'}")


def _how_to_look(influx: localstack.InfluxDB) -> None:
    print(
        "\nLook at it (while it runs, with --serve):\n"
        f"  curl -G '{influx.direct_url}/query' --data-urlencode db={DATABASE} \\\n"
        "       --data-urlencode \"q=SELECT sum(gpu_s)/3600 FROM tenant_usage GROUP BY tenant\"\n"
        "  gpufleet dashboards build --out out/dashboards   # Grafana JSON + provisioning for this schema\n"
        f"  gpufleet report --tenant lab-a --from 2026-01-01 --to 2027-01-01 --influx-url {influx.direct_url} \\\n"
        f"       --database {DATABASE} --format pdf --out out/lab-a.pdf\n"
        f"  InfluxDB data files: {influx.dir}"
    )


def _wait_for_interrupt() -> None:
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
