"""Renderers, config, rollup lines and the mail message of gpufleet.reports: pure, exact."""

from __future__ import annotations

import csv
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gpufleet.config import ConfigError
from gpufleet.reports import charts, mail, render_csv, render_html, render_json
from gpufleet.reports.main import ReportError, parse_time, run_rollup
from gpufleet.reports.model import HOUR_NS, Incident, MeterRow, PriceList, UsageRow, chargeback, tenant_report
from gpufleet.reports.rollup import _meter_row, _usage_row, live_spans, meter_line, usage_line
from gpufleet.reports.settings import EXAMPLE_PATH, EXAMPLE_REFERENCE, load_report_config

S = 1_746_057_600_000_000_000  # 2025-05-01T00:00:00Z
H100 = "NVIDIA H100 80GB HBM3"
PRICES = PriceList("prices", "test", "EUR", ((H100, 2.0),), per_kwh=0.5)
XID = Incident(S + 5, "c1", "n1", "0", "xid", 79, 'fell off "the" bus')
ROWS = [
    UsageRow(S, "c1", H100, "lab-a", 3600.0, 1800.0, 1800.0, 3_600_000.0, 1 << 30, 360, 36.0, 0.0, 0.0, 10.0,
             {"slurm:7": {"kind": "slurm_job", "job": "7"}}, (XID,)),
    UsageRow(S, "c1", H100, "lab-b", 1800.0, 1800.0, 0.0, 1_800_000.0, 2 << 30, 180, 0.0, 0.0, 0.0, 0.0,
             {"k8s:secret-project": {"kind": "k8s_pod", "namespace": "secret"}}, ()),
    UsageRow(S, "c1", H100, "unallocated", 1800.0, 0.0, 1800.0, None, None, 180),
]
METERS = [MeterRow(S, "c1", H100, 7200.0, 5_400_000.0, 36.0, 0.0, 0.0, 7200.0, 3600.0, 3600.0, 2 << 30, 1)]


def test_usage_line_is_exact_and_reads_back():
    line = usage_line(ROWS[0])
    assert line == (
        "tenant_usage_hourly,cluster=c1,model=NVIDIA\\ H100\\ 80GB\\ HBM3,tenant=lab-a "
        "gpu_s=3600.0,busy_gpu_s=1800.0,idle_gpu_s=1800.0,windows=360i,faulted_gpu_s=10.0,throttle_thermal_s=36.0,"
        "throttle_power_s=0.0,throttle_hw_slowdown_s=0.0,energy_j=3600000.0,peak_mem_bytes=1073741824i,"
        'workloads="{\\"slurm:7\\":{\\"job\\":\\"7\\",\\"kind\\":\\"slurm_job\\"}}",'
        'incidents="[[1746057600000000005,\\"c1\\",\\"n1\\",\\"0\\",\\"xid\\",79,\\"fell off \\\\\\"the\\\\\\" bus\\"]]" '
        "1746057600000000000"
    )
    # What InfluxDB gives back for that point (JSON numbers lose the .0), as a row again:
    back = {
        "time": S, "cluster": "c1", "model": H100, "tenant": "lab-a", "gpu_s": 3600, "busy_gpu_s": 1800, "idle_gpu_s": 1800,
        "windows": 360, "faulted_gpu_s": 10, "throttle_thermal_s": 36, "throttle_power_s": 0, "throttle_hw_slowdown_s": 0,
        "energy_j": 3600000, "peak_mem_bytes": 1 << 30, "workloads": json.dumps(dict(ROWS[0].workloads)),
        "incidents": json.dumps([XID.to_json()]), "workloads_dropped": None,
    }
    assert _usage_row(back) == ROWS[0]


def test_absent_energy_and_memory_stay_absent_in_the_rollup():
    line = usage_line(ROWS[2])
    assert "energy_j" not in line and "peak_mem_bytes" not in line


def test_meter_line_reads_back():
    line = meter_line(METERS[0])
    assert line.startswith("fleet_hourly,cluster=c1,model=NVIDIA\\ H100\\ 80GB\\ HBM3 window_s=7200.0,")
    back = {"time": S, "cluster": "c1", "model": H100, "window_s": 7200, "energy_j": 5400000, "throttle_thermal_s": 36,
            "throttle_power_s": 0, "throttle_hw_slowdown_s": 0, "gpu_s": 7200, "busy_gpu_s": 3600, "idle_gpu_s": 3600,
            "peak_mem_bytes": 2 << 30, "events": 1}
    assert _meter_row(back) == METERS[0]


def test_live_spans_are_what_the_rollup_does_not_cover():
    start, end = S + 900 * 10**9, S + 5 * HOUR_NS
    assert live_spans(start, end, set()) == [(start, end)]
    assert live_spans(start, end, {S + HOUR_NS, S + 2 * HOUR_NS, S + 4 * HOUR_NS}) == [
        (start, S + HOUR_NS), (S + 3 * HOUR_NS, S + 4 * HOUR_NS)
    ]


def test_parse_time():
    assert parse_time("2025-05-01") == S
    assert parse_time("2025-05-01T02:00:00+02:00") == S
    assert parse_time("2025-05-01T00:00:00.000001Z") == S + 1000
    with pytest.raises(ReportError, match="ISO 8601"):
        parse_time("yesterday")


def test_html_report_is_self_contained_and_only_about_its_tenant():
    report = tenant_report("lab-a", S, S + 24 * HOUR_NS, ROWS, PRICES, [EXAMPLE_REFERENCE])
    html = render_html.render(report)
    assert "<script" not in html and "<link" not in html and "src=" not in html
    assert html.count("<svg") == 2 and charts.BUSY_COLOUR in html and charts.IDLE_COLOUR in html
    assert "lab-b" not in html and "secret" not in html and "unallocated" not in html
    assert "slurm:7" in html and "fell off &quot;the&quot; bus" in html
    assert 'class="example"' in html  # the example reference prices are marked as such
    assert "2.50 EUR" in html and report.figures.cost.total == 2.5  # 1 GPU-hour x 2.0 + 1 kWh x 0.5


def test_html_escapes_what_the_agents_sent():
    rows = [UsageRow(S, "c1", "<b>model</b>", "t", 3600.0, workloads={"<img src=x>": {"kind": "<script>"}})]
    html = render_html.render(tenant_report("t", S, S + HOUR_NS, rows, PRICES))
    assert "<img" not in html and "<script" not in html and "&lt;b&gt;model&lt;/b&gt;" in html


def test_tenant_csv_has_days_and_a_total():
    report = tenant_report("lab-a", S, S + 48 * HOUR_NS, ROWS, PRICES)
    assert render_csv.render_tenant(report) == (
        "date,gpu_hours,busy_gpu_hours,idle_gpu_hours,energy_kwh,cost_EUR\n"
        "2025-05-01,1.000000,0.500000,0.500000,1.000000,2.5000\n"
        "2025-05-02,0.000000,0.000000,0.000000,,0.0000\n"
        "total,1.000000,0.500000,0.500000,1.000000,2.5000\n"
    )


def test_chargeback_csv_ends_with_the_reconciliation():
    cb = chargeback(S, S + HOUR_NS, ROWS, METERS, PRICES)
    rows = list(csv.reader(render_csv.render_chargeback(cb).splitlines()))
    assert [row[0] for row in rows] == ["tenant", "lab-a", "lab-b", "unallocated", "fleet total", "fleet meter", "reconciliation"]
    assert rows[-1][:2] == ["reconciliation", "OK"]
    header = rows[0]
    total = dict(zip(header, rows[4]))
    assert (total["gpu_hours"], total["energy_kwh"], total["cost_EUR"], total["incidents"]) == ("2.000000", "1.500000", "4.7500", "1")


def test_json_report_round_trips_its_numbers():
    report = tenant_report("lab-a", S, S + HOUR_NS, ROWS, PRICES)
    data = json.loads(render_json.render(report))
    assert data["tenant"] == "lab-a" and data["figures"]["gpu_hours"] == 1.0 and data["figures"]["efficiency"] == 0.5
    assert data["incidents"][0]["detail"] == 'fell off "the" bus'
    assert data["workloads"] == [{"key": "slurm:7", "identity": {"kind": "slurm_job", "job": "7"}, "first_hour_ns": S, "last_hour_ns": S, "hours": 1}]


def _json_dumps(value):
    return json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False)


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    | st.dictionaries(st.integers(), inner, max_size=3) | st.tuples(inner, inner),
    max_leaves=24,
)


@given(JSON_VALUES)
def test_dumps_writes_what_json_dumps_writes(value):
    assert render_json.dumps(value) == _json_dumps(value)


def test_json_report_is_json_dumps_of_its_dict():
    """render writes the workload list from a template: the text must stay json.dumps's."""
    workloads = {
        "slurm:7": {"kind": "slurm_job", "job": "7", "user": "zoë \"q\"\n"},
        "k8s:a/b": {"kind": "k8s_pod", "labels": {"app": ["x", 1, None]}, "namespace": "lab-a"},
        "pid:3": {},
        "odd": 5,  # not an object: shown as {"value": 5}
    }
    rows = [UsageRow(S, "c1", H100, "lab-a", 3600.0, 1800.0, 1800.0, workloads=workloads, incidents=(XID,)),
            UsageRow(S + 2 * HOUR_NS, "c1", H100, "lab-a", 60.0, workloads={"slurm:7": {"job": "7"}})]
    for report in (tenant_report("lab-a", S, S + 3 * HOUR_NS, rows, PRICES), tenant_report("nobody", S, S + HOUR_NS, rows, PRICES)):
        assert render_json.render(report) == _json_dumps(render_json.report_dict(report)) + "\n"


def test_nice_ceiling():
    assert [charts.nice_ceiling(v) for v in (0, 0.7, 1, 3, 7.5, 12, 260, 999)] == [1.0, 1.0, 1.0, 5.0, 10.0, 20.0, 500.0, 1000.0]
    assert charts.nice_ceiling(2.2) == 2.5


def test_mail_message_carries_one_tenant_and_its_recipients():
    report = tenant_report("lab-a", S, S + HOUR_NS, ROWS, PRICES)
    message = mail.tenant_message(report, ["pi@example.org"], "gpu@example.org", mail.Attachment("lab-a.json", b'{"x": "\xc3\xa9"}'))
    assert message["To"] == "pi@example.org" and "lab-a" in message["Subject"]
    [attachment] = list(message.iter_attachments())
    assert attachment.get_content_type() == "application/json" and attachment.get_content() == '{"x": "é"}'.encode()
    assert "lab-b" not in message.as_string()
    with pytest.raises(ValueError):
        mail.tenant_message(report, [], "gpu@example.org", mail.Attachment("a.json", b"{}"))


def test_example_config_loads_and_labels_its_prices_as_examples():
    config = load_report_config(EXAMPLE_PATH)
    assert "EXAMPLE" in config.prices.label and all("EXAMPLE" in ref.label for ref in config.reference)
    assert config.price_list().gpu_hour_price("NVIDIA A100-SXM4-80GB") == 1.4
    assert config.mail.recipients["lab-b"] == ["pi-b@example.org", "admin-b@example.org"]


def test_defaults_use_the_labelled_example_reference():
    config = load_report_config(None)
    assert config.reference_lists() == (EXAMPLE_REFERENCE,)
    assert "EXAMPLE" in EXAMPLE_REFERENCE.label and "EXAMPLE" in config.price_list().label


def test_config_errors_name_the_key(tmp_path):
    path = tmp_path / "r.toml"
    path.write_text('[prices]\nper_kwh = -1\n[prices.per_gpu_hour]\n"H100" = "cheap"\n[mail]\nhots = "x"\n')
    with pytest.raises(ConfigError) as err:
        load_report_config(path)
    text = str(err.value)
    assert "prices -> per_kwh" in text and "prices -> per_gpu_hour -> H100" in text and "mail -> hots" in text


def test_rollup_defaults_to_the_last_complete_hours(monkeypatch):
    seen = {}
    monkeypatch.setattr("gpufleet.reports.main.rollup", lambda db, start, end: seen.update(start=start, end=end))
    now = S + 10 * HOUR_NS + 4 * 60 * 10**9  # 10:04, lag 5 min: 09:00-10:00 is not complete yet
    run_rollup(load_report_config(None), now_ns=now)
    assert (seen["start"], seen["end"]) == (S + 3 * HOUR_NS, S + 9 * HOUR_NS)
