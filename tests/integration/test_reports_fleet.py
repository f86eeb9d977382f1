"""Reports on the simulated fleet that ran through the real broker and collector (`fleet_db`):
the chargeback reconciles, and each tenant's hours are InfluxDB's own sum for that tenant."""

from __future__ import annotations

import csv

import pytest

from gpufleet.reports import main as reports
from gpufleet.reports.model import HOUR_NS, floor_hour
from gpufleet.reports.settings import InfluxSettings, ReportConfig

from .conftest import FleetDb


def test_reports_on_the_simulated_fleet_reconcile(fleet_db: FleetDb, tmp_path):
    db, bucket, cluster = fleet_db.influxdb, fleet_db.bucket, fleet_db.cluster
    [first] = db.rows(f"SELECT first(window_s) FROM gpu WHERE cluster = '{cluster}'", bucket)
    [last] = db.rows(f"SELECT last(window_s) FROM gpu WHERE cluster = '{cluster}'", bucket)
    start, end = floor_hour(first["time"]), floor_hour(last["time"]) + 2 * HOUR_NS  # the lost GPU's event comes after
    config = ReportConfig(influx=InfluxSettings(url=db.direct_url, database=bucket), cluster=cluster)

    run = reports.run_report(config, start=start, end=end, fmt="json", out=tmp_path / "out", all_tenants=True)

    assert run.reconciled is True
    lines = list(csv.reader((tmp_path / "out" / "chargeback.csv").read_text().splitlines()))
    header, *body, last_line = lines
    assert last_line[:2] == ["reconciliation", "OK"], last_line
    rows = {row[0]: dict(zip(header, row)) for row in body}
    sums = db.rows(
        f"SELECT sum(gpu_s) AS gpu_s, sum(busy_gpu_s) AS busy FROM tenant_usage WHERE cluster = '{cluster}' GROUP BY tenant", bucket
    )
    assert {r["tenant"] for r in sums} <= set(rows)
    for r in sums:
        assert float(rows[r["tenant"]]["gpu_hours"]) == pytest.approx(r["gpu_s"] / 3600, abs=1e-6), r["tenant"]
        assert float(rows[r["tenant"]]["busy_gpu_hours"]) == pytest.approx(r["busy"] / 3600, abs=1e-6), r["tenant"]
    [events] = db.rows(f"SELECT count(code) AS n FROM gpu_event WHERE cluster = '{cluster}'", bucket)
    assert int(rows["fleet total"]["incidents"]) == events["n"] > 0
    assert int(rows["unallocated"]["gpu_lost"]) == 1  # the lost GPU had no window left to belong to
