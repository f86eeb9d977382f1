"""Tenants in the real database: the books balance per GPU-window, totals match the simulator's
ground truth, and hostile identity strings stay inside their field."""

from __future__ import annotations

import asyncio
import json
from collections import defaultdict
from fractions import Fraction

from gpufleet import wire
from gpufleet.mqtt import BrokerAddress, MqttLink

from .conftest import FleetDb, count_points, wait_until


def usage_rows(db: FleetDb) -> list[dict]:
    return db.influxdb.rows(f"SELECT * FROM tenant_usage WHERE cluster = '{db.cluster}'", db.bucket)


def gpu_rows(db: FleetDb) -> list[dict]:
    return db.influxdb.rows(f"SELECT * FROM gpu WHERE cluster = '{db.cluster}'", db.bucket)


def test_every_gpu_window_balances_to_the_millisecond_and_millijoule(fleet_db: FleetDb):
    held_ms, energy_mj = defaultdict(int), defaultdict(int)
    for row in usage_rows(fleet_db):
        key = (row["node"], row["gpu"], row["time"])
        held_ms[key] += round(row["gpu_s"] * 1000)
        energy_mj[key] += round(row["energy_j"] * 1000)
    gpus = gpu_rows(fleet_db)
    assert len(gpus) == len(held_ms) > 0
    for gpu in gpus:
        key = (gpu["node"], gpu["gpu"], gpu["time"])
        assert held_ms[key] == round(gpu["window_s"] * 1000), key
        assert energy_mj[key] == round(gpu["energy_j"] * 1000), key


def test_tenant_totals_match_the_simulators_ground_truth(fleet_db: FleetDb):
    truth_ms: dict[str, Fraction] = defaultdict(Fraction)
    for window in fleet_db.result.published():
        source = fleet_db.result.sources[window.node]
        for gpu in window.gpus:
            # one sample per window; sample 0 only primed the counters
            for tenant, share in source.truth[window.seq + 1][gpu.index].items():
                truth_ms[tenant] += share * (window.t1_ms - window.t0_ms)
    rows = fleet_db.influxdb.rows(
        f"SELECT sum(gpu_s) AS gpu_s FROM tenant_usage WHERE cluster = '{fleet_db.cluster}' GROUP BY tenant", fleet_db.bucket
    )
    stored = {row["tenant"]: row["gpu_s"] * 1000 for row in rows}
    assert set(stored) == set(truth_ms)
    assert len(stored) >= 3, "the simulator should have had several tenants and idle GPUs"
    windows = len(fleet_db.result.published()) * 8
    for tenant, ms in truth_ms.items():
        # SM shares cross the wire in 0.01 % steps: at most 1 ms of rounding per GPU-window
        assert abs(stored[tenant] - float(ms)) <= windows, (tenant, stored[tenant], float(ms))


def test_identities_are_stored_for_audit(fleet_db: FleetDb):
    rows = [row for row in usage_rows(fleet_db) if row["tenant"] != "unallocated"]
    assert rows
    for row in rows[:50]:
        workloads = json.loads(row["workloads"])
        assert workloads, row
        for identity in workloads.values():
            assert identity.get("account") == row["tenant"] or identity.get("namespace") == row["tenant"]


def test_idle_allocated_gpus_are_billed_as_waste(fleet_db: FleetDb):
    rows = fleet_db.influxdb.rows(
        f"SELECT sum(idle_gpu_s) AS idle, sum(gpu_s) AS held FROM tenant_usage "
        f"WHERE cluster = '{fleet_db.cluster}' AND tenant != 'unallocated'",
        fleet_db.bucket,
    )
    assert rows and 0 < rows[0]["idle"] < rows[0]["held"]


HOSTILE = {
    "comma,space equals=": "a,b c=d",
    "quotes": 'say "hi"',
    "backslash": "C:\\new\\",
    "non_ascii": "Zürich — 東京",
    "long": "x" * 250,
}


def test_hostile_identity_strings_reach_influxdb_intact_and_add_no_tag_or_field(
    mosquitto, influxdb, bucket, cluster_name, start_collector
):
    collector = start_collector()
    identity = {"kind": "slurm_job", "job": "7", "account": "lab-a"}
    identity.update({f"k{i}": value for i, value in enumerate(HOSTILE.values())})
    now = wire_now()
    window = wire.TelemetryWindow(
        cluster_name, "n1", 0, now - 1000, now, ("energy_j", "util_gpu_pct"),
        (wire.GpuWindow(0, "GPU-h", "H100", (1234, 5000), (wire.Holder("slurm:7", 5000, 1),)),),
        {"slurm:7": identity},
    )

    async def publish() -> None:
        async with MqttLink(BrokerAddress.parse(mosquitto.url), f"hostile-{cluster_name}") as link:
            await link.publish(wire.telemetry_topic(cluster_name, "n1"), wire.encode_telemetry(window))

    asyncio.run(publish())
    wait_until(lambda: count_points(influxdb, bucket, "tenant_usage", cluster_name) >= 1, 30, "the tenant point")
    assert collector.stop() == 0
    [row] = influxdb.rows(f"SELECT * FROM tenant_usage WHERE cluster = '{cluster_name}'", bucket)
    assert json.loads(row["workloads"]) == {"slurm:7": identity}
    assert row["tenant"] == "lab-a" and row["gpu_s"] == 1.0 and row["energy_j"] == 1.234
    tag_keys = {r["tagKey"] for r in influxdb.rows("SHOW TAG KEYS FROM tenant_usage", bucket)}
    field_keys = {r["fieldKey"] for r in influxdb.rows("SHOW FIELD KEYS FROM tenant_usage", bucket)}
    assert tag_keys == {"cluster", "gpu", "model", "node", "tenant"}
    assert field_keys == {"gpu_s", "busy_gpu_s", "idle_gpu_s", "energy_j", "peak_mem_bytes", "uuid", "workloads"}


def wire_now() -> int:
    import time

    return int(time.time() * 1000)


def test_no_node_has_a_sequence_gap(fleet_db: FleetDb):
    """The Health dashboard's gap query (spread + 1 - distinct count per node) says 0 for every node."""
    rows = fleet_db.influxdb.rows(
        'SELECT spread("seq") + 1 - count(distinct("seq")) AS missing, count(distinct("seq")) AS windows '
        f"FROM gpu WHERE cluster = '{fleet_db.cluster}' GROUP BY node",
        fleet_db.bucket,
    )
    assert len(rows) == 4 and all(row["missing"] == 0 and row["windows"] == 30 for row in rows), rows


def test_the_billing_can_be_audited_and_rerun_with_other_rules(fleet_db: FleetDb, tmp_path):
    """`gpufleet tenants audit`: with the rules that billed, nothing moves; rename lab-a's rules and
    exactly lab-a's GPU-hours move, workload by workload, to the new name."""
    import subprocess
    import sys

    from .conftest import TENANTS_FILE

    renamed = tmp_path / "tenants.toml"
    renamed.write_text(TENANTS_FILE.read_text().replace('tenant = "lab-a"', 'tenant = "lab-z"'))
    common = ["--from", "2000-01-01", "--to", "2100-01-01", "--influx-url", fleet_db.influxdb.direct_url,
              "--database", fleet_db.bucket]

    def run(rules) -> str:
        done = subprocess.run([sys.executable, "-m", "gpufleet.cli", "tenants", "audit", *common, "--tenants-file", str(rules)],
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        return done.stdout

    assert ": 0 workloads would move" in run(TENANTS_FILE)
    out = run(renamed)
    moved = [line.split() for line in out.splitlines()[1:]]
    assert moved and all(m[1] == "lab-a" and m[3] == "lab-z" for m in moved)
    [lab_a] = fleet_db.influxdb.rows(
        f"SELECT sum(gpu_s) AS s FROM tenant_usage WHERE tenant = 'lab-a' AND cluster = '{fleet_db.cluster}'", fleet_db.bucket
    )
    assert abs(sum(float(m[4]) for m in moved) - lab_a["s"] / 3600) < 1e-3
