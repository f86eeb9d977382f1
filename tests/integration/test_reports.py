"""Tenant reports against the real InfluxDB 1.6: a small fleet written directly as line protocol,
shaped as the collector writes it (tenant_usage, gpu, gpu_event), then reports, the rollup and
the chargeback read back and checked against InfluxDB's own sums."""

from __future__ import annotations

import csv
import gc
import json
import multiprocessing
import random
import re
import urllib.request
from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest
from pypdf import PdfReader

from gpufleet.collector.lineproto import string_field, tag
from gpufleet.reports import main as reports
from gpufleet.reports.model import HOUR_NS, tenant_report
from gpufleet.reports.query import InfluxQL
from gpufleet.reports.rollup import collect, live_rows, rolled_up_hours, rollup
from gpufleet.reports.settings import load_report_config


S = 1_746_057_600_000_000_000  # 2025-05-01T00:00:00Z
SEC = 1_000_000_000
WINDOW_MS = 60_000
H100, A100 = "NVIDIA H100 80GB HBM3", "NVIDIA A100-SXM4-80GB"
GPUS = [("n1", "0", H100, True), ("n1", "1", H100, True), ("n2", "0", A100, False), ("n2", "1", A100, True)]  # energy counter?
HOLDERS = [("lab-a",), ("lab-b",), ("unallocated",), ("lab-a", "lab-b"), ("lab-c",)]
# Data from 30 min before S to 3.5 h after it; reports ask for S+15 min .. S+3 h 15 min.
DATA_FROM, DATA_TO = S - 30 * 60 * SEC, S + 210 * 60 * SEC
FROM, TO = S + 15 * 60 * SEC, S + 195 * 60 * SEC


@dataclass
class Fleet:
    lines: list[str] = field(default_factory=list)
    events: list[tuple[int, str, str, str]] = field(default_factory=list)  # (time, node, gpu, kind)


def _uuid(node: str, gpu: str) -> str:
    return f"GPU-{node}-{gpu}-0000"


def make_fleet(cluster: str, seed: int = 5) -> Fleet:
    """tenant_usage, gpu and gpu_event lines for GPUS, one 60 s window after another."""
    rng = random.Random(seed)
    fleet = Fleet()
    for node, gpu, model, has_energy in GPUS:
        gtags = f"cluster={cluster},gpu={gpu},model={tag(model)},node={node}"
        for t_ms in range(DATA_FROM // 1_000_000, DATA_TO // 1_000_000, WINDOW_MS):
            t = t_ms * 1_000_000
            holders = rng.choice(HOLDERS)
            util = rng.choice([0, 35, 90, 100])
            busy_ms = WINDOW_MS * util // 100
            energy_mj = rng.randrange(5_000_000, 40_000_000) if has_energy else None
            thermal_ms = rng.choice([0, 0, 0, 15_000])
            power_ms = rng.choice([0, 0, 30_000])
            fields = [f"window_s={WINDOW_MS / 1000!r}", f"util_gpu_pct={float(util)!r}", f"throttle_thermal_s={thermal_ms / 1000!r}",
                      f"throttle_power_s={power_ms / 1000!r}", "throttle_hw_slowdown_s=0.0", "seq=1i"]
            if energy_mj is not None:
                fields.append(f"energy_j={energy_mj / 1000!r}")
            fleet.lines.append(f"gpu,{gtags},uuid={_uuid(node, gpu)} {','.join(fields)} {t}")
            first = WINDOW_MS // 3 if len(holders) == 2 else WINDOW_MS
            splits = [(holders[0], first, busy_ms * first // WINDOW_MS)]
            if len(holders) == 2:
                splits.append((holders[1], WINDOW_MS - first, busy_ms - splits[0][2]))
            energy_left = energy_mj
            for i, (tenant, gpu_ms, tenant_busy_ms) in enumerate(splits):
                share = None
                if energy_mj is not None:
                    share = energy_left if i == len(splits) - 1 else energy_mj * gpu_ms // WINDOW_MS
                    energy_left -= share
                workloads = {} if tenant == "unallocated" else {f"slurm:{tenant}-{t_ms // 3_600_000 % 3}": {"kind": "slurm_job", "account": tenant}}
                f = [f"gpu_s={gpu_ms / 1000!r}", f"busy_gpu_s={tenant_busy_ms / 1000!r}", f"idle_gpu_s={(gpu_ms - tenant_busy_ms) / 1000!r}",
                     f"peak_mem_bytes={rng.randrange(1 << 30, 80 << 30)}i", f"workloads={string_field(json.dumps(workloads))}",
                     f"uuid={string_field(_uuid(node, gpu))}"]
                if share is not None:
                    f.append(f"energy_j={share / 1000!r}")
                fleet.lines.append(f"tenant_usage,{gtags},tenant={tenant} {','.join(f)} {t}")
    # Incidents: inside windows (one of them shared by two tenants when the draw says so), one
    # on a GPU that has no windows at all (lost), one just before FROM whose window overlaps it.
    for t, node, gpu, kind, code in [
        (S + 20 * 60 * SEC + 7 * SEC, "n1", "0", "xid", 79), (S + 61 * 60 * SEC, "n1", "1", "ecc_dbe", 1),
        (S + 150 * 60 * SEC + 59 * SEC, "n2", "1", "xid", 13), (S + 100 * 60 * SEC, "n9", "3", "gpu_lost", 0),
        (FROM - 30 * SEC, "n2", "0", "remap_failure", 1), (TO + 10 * SEC, "n2", "0", "xid", 31),
    ]:
        fleet.lines.append(
            f"gpu_event,cluster={cluster},gpu={gpu},kind={kind},node={node},uuid={_uuid(node, gpu)} code={code}i,detail={string_field('test ' + kind)} {t}"
        )
        fleet.events.append((t, node, gpu, kind))
    return fleet


def write_lines(influxdb, bucket: str, lines: list[str]) -> None:
    for i in range(0, len(lines), 5000):
        request = urllib.request.Request(
            f"{influxdb.direct_url}/write?db={bucket}&precision=ns", data="\n".join(lines[i : i + 5000]).encode(), method="POST"
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            assert response.status == 204


@pytest.fixture
def fleet(influxdb, bucket, cluster_name) -> Fleet:
    data = make_fleet(cluster_name)
    write_lines(influxdb, bucket, data.lines)
    return data


@pytest.fixture
def config(influxdb, bucket, tmp_path):
    path = tmp_path / "report.toml"
    path.write_text(
        f"""
[influx]
url = "{influxdb.direct_url}"
database = "{bucket}"

[prices]
label = "test rates"
currency = "EUR"
per_kwh = 0.25
[prices.per_gpu_hour]
"NVIDIA H100 80GB HBM3" = 2.5
"NVIDIA A100*" = 1.5

[[reference]]
name = "cloud"
label = "EXAMPLE cloud on-demand (test)"
currency = "USD"
[reference.per_gpu_hour]
"*H100*" = 12.0
""",
        encoding="utf-8",
    )
    return load_report_config(path)


def _one(influxdb, bucket, query: str, column: str = "v") -> float:
    rows = influxdb.rows(query, bucket)
    return rows[0][column] if rows else 0


def _where(cluster: str) -> str:
    return f"time >= {FROM} AND time < {TO} AND cluster = '{cluster}'"


def test_a_tenant_report_matches_influxdb_sums(fleet, influxdb, bucket, cluster_name, config):
    db = InfluxQL(influxdb.direct_url, bucket)
    got = collect(db, FROM, TO, tenant="lab-a")
    report = tenant_report("lab-a", FROM, TO, got.rows, config.price_list(), config.reference_lists())
    where = _where(cluster_name) + " AND tenant = 'lab-a'"
    f = report.figures
    assert f.gpu_hours == pytest.approx(_one(influxdb, bucket, f"SELECT sum(gpu_s) AS v FROM tenant_usage WHERE {where}") / 3600, rel=1e-12)
    assert f.busy_gpu_hours == pytest.approx(_one(influxdb, bucket, f"SELECT sum(busy_gpu_s) AS v FROM tenant_usage WHERE {where}") / 3600, rel=1e-12)
    assert f.energy_kwh == pytest.approx(_one(influxdb, bucket, f"SELECT sum(energy_j) AS v FROM tenant_usage WHERE {where}") / 3.6e6, rel=1e-12)
    assert f.peak_mem_bytes == _one(influxdb, bucket, f"SELECT max(peak_mem_bytes) AS v FROM tenant_usage WHERE {where}")
    assert 0 < f.efficiency < 1 and f.cost.total > 0
    assert {w.key for w in report.workloads} == {"slurm:lab-a-0", "slurm:lab-a-1", "slurm:lab-a-2"}
    assert got.rollup_hours == 0 and got.live_spans == ((FROM, TO),)
    # Incidents only on GPU-windows lab-a held; the one before FROM and after TO never count.
    for incident in report.incidents:
        assert FROM <= incident.time_ns < TO
        held = influxdb.rows(
            f"SELECT gpu_s FROM tenant_usage WHERE cluster = '{cluster_name}' AND node = '{incident.node}' AND gpu = '{incident.gpu}' "
            f"AND tenant = 'lab-a' AND time <= {incident.time_ns} AND time > {incident.time_ns - WINDOW_MS * 1_000_000}",
            bucket,
        )
        assert held, incident


def test_rollup_gives_the_same_figures_as_live_and_reports_mix_them(fleet, influxdb, bucket, config):
    db = InfluxQL(influxdb.direct_url, bucket)
    live = collect(db, FROM, TO, use_rollup=False)
    summary = rollup(db, S, S + 2 * HOUR_NS)  # hours 0 and 1; hour 2 and the clipped edges stay live
    assert (summary.hours, summary.tenant_rows > 0) == (2, True)
    assert rolled_up_hours(db, FROM, TO) == {S + HOUR_NS}  # hour 0 is clipped by FROM: not whole
    assert rolled_up_hours(db, S, TO) == {S, S + HOUR_NS}
    mixed = collect(db, FROM, TO)
    assert mixed.rollup_hours == 1
    assert mixed.live_spans == ((FROM, S + HOUR_NS), (S + 2 * HOUR_NS, TO))
    prices, refs = config.price_list(), config.reference_lists()
    for tenant in ("lab-a", "lab-b", "lab-c", "unallocated"):
        a = tenant_report(tenant, FROM, TO, live.rows, prices, refs)
        b = tenant_report(tenant, FROM, TO, mixed.rows, prices, refs)
        for name in ("gpu_hours", "busy_gpu_hours", "idle_gpu_hours", "energy_kwh", "throttle_thermal_hours",
                     "throttle_power_hours", "faulted_gpu_hours"):
            assert getattr(b.figures, name) == pytest.approx(getattr(a.figures, name), rel=1e-12, abs=1e-12), (tenant, name)
        assert b.figures.peak_mem_bytes == a.figures.peak_mem_bytes
        assert b.incidents == a.incidents and b.workloads == a.workloads
    # Running it again replaces, never adds.
    rollup(db, S, S + 2 * HOUR_NS)
    again = collect(db, FROM, TO)
    assert sum(r.gpu_s for r in again.rows) == pytest.approx(sum(r.gpu_s for r in live.rows), rel=1e-12)


def test_all_tenants_chargeback_reconciles_against_influxdb(fleet, influxdb, bucket, cluster_name, config, tmp_path):
    rollup(InfluxQL(influxdb.direct_url, bucket), S, S + HOUR_NS * 2)
    run = reports.run_report(config, start=FROM, end=TO, fmt="json", out=tmp_path / "out", all_tenants=True)
    assert run.reconciled is True
    assert sorted(p.name for p in run.files) == ["chargeback.csv", "lab-a.json", "lab-b.json", "lab-c.json", "unallocated.json"]
    lines = list(csv.reader((tmp_path / "out" / "chargeback.csv").read_text().splitlines()))
    header, *body, last = lines
    assert last[:2] == ["reconciliation", "OK"], last
    rows = {row[0]: dict(zip(header, row)) for row in body}
    tenants = [rows[t] for t in ("lab-a", "lab-b", "lab-c", "unallocated")]
    total = rows["fleet total"]
    where = _where(cluster_name)
    # The fleet, read straight from InfluxDB's own measurements, without the report's code.
    fleet_gpu_h = _one(influxdb, bucket, f"SELECT sum(window_s) AS v FROM gpu WHERE {where}") / 3600
    fleet_kwh = _one(influxdb, bucket, f"SELECT sum(energy_j) AS v FROM gpu WHERE {where}") / 3.6e6
    fleet_thermal_h = _one(influxdb, bucket, f"SELECT sum(throttle_thermal_s) AS v FROM gpu WHERE {where}") / 3600
    fleet_events = _one(influxdb, bucket, f"SELECT count(code) AS v FROM gpu_event WHERE {where}")
    for column, fleet_value in (("gpu_hours", fleet_gpu_h), ("energy_kwh", fleet_kwh), ("throttle_thermal_hours", fleet_thermal_h)):
        assert float(total[column]) == pytest.approx(fleet_value, abs=1e-6), column
        # Each row is rounded to 6 decimals in the file: the column adds up to that rounding.
        assert sum(float(t[column]) for t in tenants) == pytest.approx(fleet_value, abs=1e-6 * len(tenants)), column
    assert int(total["incidents"]) == fleet_events == 4  # two XIDs, the ECC and the lost GPU inside the period
    assert float(total["cost_EUR"]) == pytest.approx(sum(float(t["cost_EUR"]) for t in tenants), abs=1e-4 * len(tenants))
    assert float(rows["fleet meter"]["gpu_hours"]) == pytest.approx(fleet_gpu_h, abs=1e-6)
    lab_a = json.loads((tmp_path / "out" / "lab-a.json").read_text())
    assert lab_a["tenant"] == "lab-a" and lab_a["figures"]["gpu_hours"] == pytest.approx(float(rows["lab-a"]["gpu_hours"]), abs=1e-6)


def test_a_gpu_window_without_tenant_usage_breaks_reconciliation(fleet, influxdb, bucket, cluster_name, config, tmp_path):
    write_lines(influxdb, bucket, [f"gpu,cluster={cluster_name},gpu=5,model=x,node=n7,uuid=GPU-x window_s=60.0 {S + HOUR_NS}"])
    run = reports.run_report(config, start=FROM, end=TO, fmt="csv", out=tmp_path / "out", all_tenants=True)
    assert run.reconciled is False
    last = (tmp_path / "out" / "chargeback.csv").read_text().splitlines()[-1]
    assert last.startswith("reconciliation,MISMATCH,") and "gpu_hours" in last


def test_a_csv_report_reads_no_workload_lists_and_shows_the_same_figures(fleet, influxdb, bucket):
    db = InfluxQL(influxdb.direct_url, bucket)
    rollup(db, S, S + 2 * HOUR_NS)  # hour 1 from the rollup, the rest live
    full, lean = collect(db, FROM, TO), collect(db, FROM, TO, with_workloads=False)
    assert any(row.workloads for row in full.rows) and not any(row.workloads for row in lean.rows)
    assert lean.rows == [replace(row, workloads={}) for row in full.rows] and lean.meters == full.meters


def test_live_rows_of_an_empty_period_are_empty(influxdb, bucket):
    assert live_rows(InfluxQL(influxdb.direct_url, bucket), S, S + HOUR_NS) == ([], [])


def test_influxdb_errors_name_the_server(config, tmp_path):
    from gpufleet import localstack

    bad = config.model_copy(update={"influx": config.influx.model_copy(update={"url": f"http://127.0.0.1:{localstack.free_port()}"})})
    with pytest.raises(reports.ReportError, match="unreachable"):
        reports.run_report(bad, start=FROM, end=TO, fmt="json", out=tmp_path / "x.json", tenant="lab-a")
    assert gc.isenabled()  # a report pauses Python's cycle collector, and gives it back on errors too


def pdf_text(path: Path) -> str:
    return " ".join("\n".join(page.extract_text() for page in PdfReader(path).pages).split())


def test_pdf_report_shows_the_tenant(fleet, config, tmp_path):
    run = reports.run_report(config, start=FROM, end=TO, fmt="pdf", out=tmp_path / "lab-a.pdf", tenant="lab-a")
    html = reports.run_report(config, start=FROM, end=TO, fmt="html", out=tmp_path / "lab-a.html", tenant="lab-a")
    text = pdf_text(run.files[0])
    gpu_hours = re.search(r'<div class="v">([0-9,.]+)</div><div class="k">GPU-hours allocated', html.files[0].read_text())
    assert gpu_hours and f"{gpu_hours.group(1)} GPU-hours allocated" in text and "GPU usage report: lab-a" in text


def test_all_tenants_pdf_are_laid_out_by_worker_processes(fleet, config, tmp_path, monkeypatch):
    monkeypatch.setattr(reports, "PDF_WORKERS", 2)  # forked workers even on a one-core runner
    run = reports.run_report(config, start=FROM, end=TO, fmt="pdf", out=tmp_path / "out", all_tenants=True)
    assert [p.name for p in run.files] == ["chargeback.csv", "lab-a.pdf", "lab-b.pdf", "lab-c.pdf", "unallocated.pdf"]
    for path in run.files[1:]:
        assert f"GPU usage report: {path.stem}" in pdf_text(path), path.name
    assert not multiprocessing.active_children()  # the workers are gone


def test_without_fonts_a_pdf_run_is_a_report_error_saying_what_to_install(fleet, config, tmp_path, monkeypatch):
    monkeypatch.setenv("GPUFLEET_FONT_DIR", str(tmp_path / "no-fonts"))
    with pytest.raises(reports.ReportError, match=r"no-fonts/DejaVuSans.ttf: apt-get install fonts-dejavu-core"):
        reports.run_report(config, start=FROM, end=TO, fmt="pdf", out=tmp_path / "out", all_tenants=True)
    assert not (tmp_path / "out" / "lab-a.pdf").exists()


def test_a_month_of_a_large_fleet_reads_from_the_rollup(influxdb, bucket, config, tmp_path):
    """30 tenants on 2 000 GPUs of two models for 30 days: the report reads 43 200 hourly rows,
    whatever the number of GPUs and windows behind them. (How fast: bench/reports.py.)"""
    from gpufleet.reports.model import MeterRow, UsageRow
    from gpufleet.reports.rollup import MARKER, ROLLUP_VERSION, meter_line, usage_line

    tenants, hours, gpus_per_tenant_model = [f"team-{i:02d}" for i in range(30)], 30 * 24, 33
    lines = []
    for hour in range(hours):
        t = S + hour * HOUR_NS
        for model in (H100, A100):
            for tenant in tenants:
                gpu_s = gpus_per_tenant_model * 3600.0
                lines.append(usage_line(UsageRow(
                    t, "big", model, tenant, gpu_s, gpu_s * 0.75, gpu_s * 0.25, gpu_s * 500.0, 70 << 30, 11_880,
                    60.0, 120.0, 0.0, 0.0, {f"slurm:{tenant}-{hour // 24}": {"kind": "slurm_job"}},
                )))
            total = len(tenants) * gpus_per_tenant_model * 3600.0
            lines.append(meter_line(MeterRow(t, "big", model, total, total * 500.0, 60.0 * 30, 120.0 * 30, 0.0, total,
                                             total * 0.75, total * 0.25, 70 << 30, 0)))
        lines.append(f"{MARKER} version={ROLLUP_VERSION}i,rows=60i {t}")
    write_lines(influxdb, bucket, lines)

    run = reports.run_report(config, start=S, end=S + hours * HOUR_NS, fmt="json", out=tmp_path / "one.json", tenant="team-07")
    everyone = reports.run_report(config, start=S, end=S + hours * HOUR_NS, fmt="csv", out=tmp_path / "all", all_tenants=True)

    assert run.sources == "rollup 720 h, live 0 h" and everyone.reconciled is True
    report = json.loads((tmp_path / "one.json").read_text())
    assert report["figures"]["gpu_hours"] == pytest.approx(2 * 33 * 720)
    assert len(report["days"]) == 30 and len(report["workloads"]) == 30
