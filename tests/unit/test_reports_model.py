"""Report figures from rows: exact numbers on a small hand-made fleet (gpufleet.reports.model)."""

from __future__ import annotations

import math

import pytest

from gpufleet.reports.model import (
    HOUR_NS,
    Incident,
    MeterRow,
    PriceList,
    UsageRow,
    attribute_hours,
    chargeback,
    figures,
    tenant_report,
)

S = 1_746_057_600_000_000_000  # 2025-05-01T00:00:00Z
E = S + 2 * HOUR_NS
SEC = 1_000_000_000
H100, A100 = "NVIDIA H100 80GB HBM3", "NVIDIA A100-SXM4-80GB"
PRICES = PriceList("prices", "test rates", "EUR", ((H100, 2.0), ("NVIDIA A100*", 1.0)), per_kwh=0.5)
CLOUD = PriceList("cloud", "EXAMPLE cloud", "USD", (("*H100*", 10.0),))


def usage(hour, node, gpu, model, tenant, gpu_s, busy, energy=None, peak=None, windows=360):
    return {
        "time": S + hour * HOUR_NS, "cluster": "c1", "node": node, "gpu": gpu, "model": model, "tenant": tenant,
        "gpu_s": gpu_s, "busy_gpu_s": busy, "idle_gpu_s": gpu_s - busy, "energy_j": energy, "peak_mem_bytes": peak,
        "windows": windows,
    }


def meter(hour, node, gpu, model, window_s=3600.0, energy=None, thermal=0.0, power=0.0):
    return {
        "time": S + hour * HOUR_NS, "cluster": "c1", "node": node, "gpu": gpu, "model": model, "window_s": window_s,
        "energy_j": energy, "throttle_thermal_s": thermal, "throttle_power_s": power, "throttle_hw_slowdown_s": None,
    }


USAGE = [
    # hour 0, GPU n1/0 (H100): lab-a half the hour, nobody the other half
    usage(0, "n1", "0", H100, "lab-a", 1800.0, 900.0, energy=3_600_000.0, peak=1000, windows=180),
    usage(0, "n1", "0", H100, "unallocated", 1800.0, 0.0, energy=1_800_000.0, windows=180),
    # hour 1, GPU n1/1 (A100, no energy counter): lab-b all hour; GPU n2/0 (H100): nobody
    usage(1, "n1", "1", A100, "lab-b", 3600.0, 3600.0, peak=5000),
    usage(1, "n2", "0", H100, "unallocated", 3600.0, 0.0, energy=720_000.0),
]
METERS = [
    meter(0, "n1", "0", H100, energy=5_400_000.0, thermal=360.0),
    meter(1, "n1", "1", A100, power=720.0),
    meter(1, "n2", "0", H100, energy=720_000.0, thermal=36.0),
]
WORKLOADS = [
    {"time": S, "cluster": "c1", "model": H100, "tenant": "lab-a", "distinct": '{"slurm:1":{"kind":"slurm_job","job":"1"}}'},
    {"time": S, "cluster": "c1", "model": H100, "tenant": "lab-a", "distinct": '{"slurm:2":{"kind":"slurm_job","job":"2"}}'},
    {"time": S + HOUR_NS, "cluster": "c1", "model": A100, "tenant": "lab-b", "distinct": '{"k8s:x":{"kind":"k8s_pod"}}'},
]
XID_AT = S + 1805 * SEC
EVENTS = [
    # in lab-a's 10 s window [S+1800 s, S+1810 s) on n1/0
    {"time": XID_AT, "cluster": "c1", "node": "n1", "gpu": "0", "kind": "xid", "code": 79, "detail": "fell off the bus"},
    # a GPU with no window at all: nobody held it, `unallocated` gets the incident
    {"time": S + 10 * SEC, "cluster": "c1", "node": "n3", "gpu": "7", "kind": "gpu_lost", "code": 0, "detail": ""},
    # after the period, but in lab-b's window that starts inside it: the window is faulted,
    # the incident belongs to the next period
    {"time": E + 5 * SEC, "cluster": "c1", "node": "n1", "gpu": "1", "kind": "ecc_dbe", "code": 1, "detail": ""},
]
WINDOWS = [
    {"time": S + 1790 * SEC, "cluster": "c1", "node": "n1", "gpu": "0", "model": H100, "tenant": "unallocated", "gpu_s": 10.0},
    {"time": S + 1800 * SEC, "cluster": "c1", "node": "n1", "gpu": "0", "model": H100, "tenant": "lab-a", "gpu_s": 10.0},
    {"time": E - 2 * SEC, "cluster": "c1", "node": "n1", "gpu": "1", "model": A100, "tenant": "lab-b", "gpu_s": 10.0},
]


@pytest.fixture(scope="module")
def attributed():
    return attribute_hours(S, E, USAGE, METERS, WORKLOADS, EVENTS, WINDOWS)


XID = Incident(XID_AT, "c1", "n1", "0", "xid", 79, "fell off the bus")
LOST = Incident(S + 10 * SEC, "c1", "n3", "7", "gpu_lost", 0, "")


def test_rows_per_hour_cluster_model_and_tenant(attributed):
    rows, _ = attributed
    assert rows == [
        UsageRow(S, "c1", H100, "lab-a", 1800.0, 900.0, 900.0, 3_600_000.0, 1000, 180, 180.0, 0.0, 0.0, 10.0,
                 {"slurm:1": {"kind": "slurm_job", "job": "1"}, "slurm:2": {"kind": "slurm_job", "job": "2"}}, (XID,)),
        UsageRow(S, "c1", H100, "unallocated", 1800.0, 0.0, 1800.0, 1_800_000.0, None, 180, 180.0, 0.0, 0.0, 0.0, {}, ()),
        UsageRow(S, "c1", "unknown", "unallocated", incidents=(LOST,)),
        UsageRow(S + HOUR_NS, "c1", A100, "lab-b", 3600.0, 3600.0, 0.0, None, 5000, 360, 0.0, 720.0, 0.0, 10.0,
                 {"k8s:x": {"kind": "k8s_pod"}}, ()),
        UsageRow(S + HOUR_NS, "c1", H100, "unallocated", 3600.0, 0.0, 3600.0, 720_000.0, None, 360, 36.0, 0.0, 0.0, 0.0, {}, ()),
    ]


def test_meter_rows_are_the_fleet_without_a_tenant_split(attributed):
    _, meters = attributed
    assert meters == [
        MeterRow(S, "c1", H100, 3600.0, 5_400_000.0, 360.0, 0.0, 0.0, 3600.0, 900.0, 2700.0, 1000, 1),
        MeterRow(S, "c1", "unknown", events=1),
        MeterRow(S + HOUR_NS, "c1", A100, 3600.0, None, 0.0, 720.0, 0.0, 3600.0, 3600.0, 0.0, 5000, 0),
        MeterRow(S + HOUR_NS, "c1", H100, 3600.0, 720_000.0, 36.0, 0.0, 0.0, 3600.0, 0.0, 3600.0, None, 0),
    ]


def test_throttling_is_split_by_share_of_the_gpu_in_the_hour():
    rows, _ = attribute_hours(
        S, S + HOUR_NS,
        [usage(0, "n1", "0", H100, "a", 2700.0, 0.0), usage(0, "n1", "0", H100, "b", 900.0, 0.0)],
        [meter(0, "n1", "0", H100, thermal=100.0, power=40.0)],
    )
    assert [(r.tenant, r.throttle_thermal_s, r.throttle_power_s) for r in rows] == [("a", 75.0, 30.0), ("b", 25.0, 10.0)]


def test_throttling_of_a_gpu_without_usage_goes_to_unallocated():
    rows, _ = attribute_hours(S, S + HOUR_NS, [], [meter(0, "n9", "0", H100, power=60.0)])
    assert [(r.model, r.tenant, r.throttle_power_s, r.gpu_s) for r in rows] == [(H100, "unallocated", 60.0, 0.0)]


def test_an_event_at_the_end_of_a_window_belongs_to_the_next_one():
    windows = [
        {"time": S, "cluster": "c1", "node": "n1", "gpu": "0", "model": H100, "tenant": "a", "gpu_s": 10.0},
        {"time": S + 10 * SEC, "cluster": "c1", "node": "n1", "gpu": "0", "model": H100, "tenant": "b", "gpu_s": 10.0},
    ]
    event = {"time": S + 10 * SEC, "cluster": "c1", "node": "n1", "gpu": "0", "kind": "xid", "code": 13, "detail": ""}
    rows, _ = attribute_hours(S, S + HOUR_NS, [], [], [], [event], windows)
    assert [(r.tenant, len(r.incidents), r.faulted_gpu_s) for r in rows] == [("b", 1, 10.0)]


def test_a_shared_window_gives_the_incident_to_every_holder_and_the_chargeback_counts_it_once():
    windows = [
        {"time": S, "cluster": "c1", "node": "n1", "gpu": "0", "model": H100, "tenant": t, "gpu_s": 5.0} for t in ("a", "b")
    ]
    event = {"time": S + 1 * SEC, "cluster": "c1", "node": "n1", "gpu": "0", "kind": "xid", "code": 13, "detail": ""}
    rows, meters = attribute_hours(S, S + HOUR_NS, [], [], [], [event], windows)
    assert [(r.tenant, len(r.incidents), r.faulted_gpu_s) for r in rows] == [("a", 1, 5.0), ("b", 1, 5.0)]
    cb = chargeback(S, S + HOUR_NS, rows, meters, PRICES)
    assert [r.figures.incident_count for r in cb.tenants] == [1, 1, 0]
    assert cb.total.incident_count == 1 and cb.reconciled


def test_tenant_figures_are_exact(attributed):
    rows, _ = attributed
    report = tenant_report("lab-a", S, E, rows, PRICES, [CLOUD])
    f = report.figures
    assert (f.gpu_hours, f.busy_gpu_hours, f.idle_gpu_hours, f.efficiency) == (0.5, 0.25, 0.25, 0.5)
    assert (f.energy_kwh, f.peak_mem_bytes, f.throttle_thermal_hours, f.throttle_power_hours) == (1.0, 1000, 0.05, 0.0)
    assert f.faulted_gpu_hours == 10 / 3600
    assert f.availability == 1 - (10 / 3600) / 0.5
    assert dict(f.incidents) == {"xid": 1, "ecc_dbe": 0, "remap_failure": 0, "gpu_lost": 0}
    assert (f.cost.gpu, f.cost.energy, f.cost.total) == (1.0, 0.5, 1.5)  # 0.5 h x 2.0 + 1 kWh x 0.5
    assert f.reference_costs["cloud"].total == 5.0
    assert [(m.model, m.gpu_hours, m.price_per_gpu_hour, m.cost) for m in report.models] == [(H100, 0.5, 2.0, 1.0)]
    assert [(d.date, d.gpu_hours, d.cost) for d in report.days] == [("2025-05-01", 0.5, 1.5)]
    assert [(w.key, w.hours) for w in report.workloads] == [("slurm:1", 1), ("slurm:2", 1)]
    assert report.incidents == (XID,)


def test_a_tenant_report_holds_nothing_of_other_tenants(attributed):
    rows, _ = attributed
    report = tenant_report("lab-b", S, E, rows, PRICES)
    assert report.figures.gpu_hours == 1.0
    assert [w.key for w in report.workloads] == ["k8s:x"]
    assert report.incidents == ()  # the ecc_dbe after the period is not in it; lab-a's XID never is
    assert report.figures.energy_kwh is None  # no energy counter: absent, not zero
    assert report.figures.cost.total == 1.0


def test_a_workload_counts_each_hour_once_and_shows_its_identity_as_first_seen():
    rows = [
        UsageRow(S + HOUR_NS, "c1", A100, "a", 3600.0, workloads={"slurm:9": {"job": "9", "step": "1"}}),
        UsageRow(S, "c1", H100, "a", 3600.0, workloads={"slurm:9": {"job": "9", "step": "0"}}),
        UsageRow(S, "c2", A100, "a", 3600.0, workloads={"slurm:9": {"job": "9", "step": "x"}}),  # the same hour, elsewhere
        UsageRow(S + 3 * HOUR_NS, "c1", H100, "a", 3600.0, workloads={"slurm:9": {"job": "9"}}),
    ]
    [job] = tenant_report("a", S, S + 4 * HOUR_NS, rows, PRICES).workloads
    assert (job.first_hour_ns, job.last_hour_ns, job.hours) == (S, S + 3 * HOUR_NS, 3)
    assert job.identity == {"job": "9", "step": "0"}


def test_days_without_use_are_zero_days():
    rows = [UsageRow(S + 2 * 24 * HOUR_NS, "c1", H100, "a", gpu_s=3600.0, busy_gpu_s=3600.0)]
    report = tenant_report("a", S, S + 3 * 24 * HOUR_NS, rows, PRICES)
    assert [(d.date, d.gpu_hours) for d in report.days] == [("2025-05-01", 0.0), ("2025-05-02", 0.0), ("2025-05-03", 1.0)]


def test_chargeback_reconciles_with_the_meter(attributed):
    rows, meters = attributed
    cb = chargeback(S, E, rows, meters, PRICES, [CLOUD])
    assert [r.tenant for r in cb.tenants] == ["lab-a", "lab-b", "unallocated"]
    assert cb.reconciled, [c for c in cb.checks if not c.ok]
    assert cb.total.gpu_hours == cb.meter.gpu_hours == 3.0
    assert cb.total.energy_kwh == cb.meter.energy_kwh == 1.7
    assert cb.total.cost.total == cb.meter.cost.total == 2 * 2.0 + 1.0 + 1.7 * 0.5
    assert cb.total.throttle_thermal_hours == math.fsum([180.0, 180.0, 36.0]) / 3600
    assert cb.meter.incidents == {"all": 2} and cb.total.incident_count == 2


def test_chargeback_says_which_figure_does_not_reconcile(attributed):
    rows, meters = attributed
    # A GPU-hour measured by `gpu` that no tenant_usage point accounts for.
    extra = MeterRow(S, "c1", H100, window_s=3600.0)
    cb = chargeback(S, E, rows, [*meters, extra], PRICES)
    assert not cb.reconciled
    assert {c.figure for c in cb.checks if not c.ok} == {"gpu_hours", "cost"}


def test_prices_exact_name_first_then_globs_in_order_then_default():
    prices = PriceList("p", "", "EUR", (("*A100*", 1.0), ("NVIDIA A100-SXM4-80GB", 3.0), ("*", 0.5)), default_per_gpu_hour=9.0)
    assert prices.gpu_hour_price("NVIDIA A100-SXM4-80GB") == 3.0
    assert prices.gpu_hour_price("NVIDIA A100-PCIE-40GB") == 1.0
    assert prices.gpu_hour_price("Tesla T4") == 0.5
    assert PriceList("p", "", "EUR", (), default_per_gpu_hour=9.0).gpu_hour_price("x") == 9.0
    assert PriceList("p", "", "EUR", ()).gpu_hour_price("x") is None


def test_unpriced_models_are_counted_not_billed():
    rows = [UsageRow(S, "c1", "Tesla T4", "a", gpu_s=7200.0)]
    f = figures(rows, PRICES)
    assert (f.cost.total, f.cost.unpriced_gpu_hours) == (0.0, 2.0)
