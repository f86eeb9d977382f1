"""The collector core: messages in, lines out, every drop counted by reason."""

import re

import pytest

from gpufleet.collector.buffer import WriteBuffer
from gpufleet.collector.pipeline import Pipeline
from gpufleet.collector.tenants import TenantRules
from gpufleet import wire

NOW = 1_767_225_600_000


def telemetry(node="n1", gpus=2) -> bytes:
    return wire.encode_telemetry(
        wire.TelemetryWindow(
            "c1", node, 1, NOW - 1000, NOW, ("power_w", "wire_id_999"),
            tuple(wire.GpuWindow(i, f"GPU-{i}", "T4", (70000, 5)) for i in range(gpus)),
        )
    )


def test_telemetry_becomes_one_line_per_gpu_and_unknown_fields_are_counted():
    pipeline = Pipeline()
    lines, rejection = pipeline.handle("gpufleet/v1/c1/n1/telemetry", telemetry(), NOW)
    assert rejection is None
    assert [line.split(",")[0] for line in lines] == ["gpu", "gpu", "tenant_usage", "tenant_usage"]
    assert "wire_id_999" not in lines[0]
    assert pipeline.counters.gpu_windows == 2 and pipeline.counters.unknown_fields == 1


def test_every_rejection_is_counted_by_reason_and_nothing_raises():
    pipeline = Pipeline()
    cases = [
        ("gpufleet/v1/c1/n1/telemetry", b"not msgpack \xc1"),
        ("gpufleet/v1/c1/n2/telemetry", telemetry("n1")),
        ("gpufleet/v1/c1/n1/bogus", telemetry()),
        ("gpufleet/v1/c1/n1/telemetry", b"\x00" * (wire.MAX_MESSAGE_BYTES + 1)),
    ]
    for topic, payload in cases:
        assert pipeline.handle(topic, payload, NOW)[0] == []
    assert dict(pipeline.counters.rejected) == {"malformed": 1, "topic_mismatch": 1, "bad_topic": 1, "too_large": 1}
    fields = pipeline.counters.as_fields()
    assert fields["received"] == 4 and fields["accepted"] == 0 and fields["rejected_malformed"] == 1


def test_buffer_drops_oldest_past_its_bound_and_counts_it():
    buffer = WriteBuffer(max_lines=3)
    buffer.extend(["a", "b"])
    start, batch = buffer.lines_from(0, 2)
    buffer.extend(["c", "d", "e"])  # pushes out a, b while they are in flight
    assert buffer.dropped == 2 and buffer.removed == 2
    buffer.remove_until(start + len(batch))  # their write ends: nothing more to remove
    assert buffer.lines_from(0, 10) == (2, ["c", "d", "e"])


def test_buffer_batches_are_named_by_position_while_newer_lines_arrive():
    buffer = WriteBuffer(max_lines=10)
    buffer.extend(["a", "b", "c"])
    first = buffer.lines_from(0, 2)
    second = buffer.lines_from(2, 2)
    buffer.extend(["d", "e"])
    assert (first, second) == ((0, ["a", "b"]), (2, ["c"]))
    assert buffer.lines_from(3, 5) == (3, ["d", "e"])
    buffer.remove_until(2)
    assert (buffer.removed, len(buffer), buffer.lines_from(2, 1)) == (2, 3, (2, ["c"]))
    buffer.remove_until(2)  # already removed: nothing happens
    buffer.remove_until(5)
    assert (buffer.removed, len(buffer), buffer.lines_from(5, 1)) == (5, 0, (5, []))


RULES = TenantRules.from_toml(
    """
[[tenants.rule]]
tenant = "lab-a"
match = { slurm_account = "acct-a" }
[[tenants.rule]]
tenant = "lab-b"
match = { k8s_namespace = "team-b" }
"""
)


def shared_window() -> bytes:
    """GPU 0 shared 3:1 by SM between a Slurm job of lab-a and a pod of lab-b; GPU 1 allocated
    to the job but idle; GPU 2 nobody's. 10 s windows, 3001 J on GPU 0 (odd on purpose).
    The job's user name is hostile: it must stay inside one string field."""
    workloads = {
        "slurm:42": {"kind": "slurm_job", "job": "42", "account": "acct-a", "user": 'x" y,z=1 \\'},
        "k8s:p-1/c": {"kind": "k8s_pod", "pod_uid": "p-1", "container": "c", "namespace": "team-b"},
    }
    gpus = (
        wire.GpuWindow(0, "GPU-0", "H100", (3_001_000, 9000), (wire.Holder("slurm:42", 6000, 10), wire.Holder("k8s:p-1/c", 2000, 5))),
        wire.GpuWindow(1, "GPU-1", "H100", (700_000, 0), (), ("slurm:42",)),
        wire.GpuWindow(2, "GPU-2", "H100", (700_000, 0)),
    )
    return wire.encode_telemetry(
        wire.TelemetryWindow("c1", "n1", 1, NOW - 10_000, NOW, ("energy_j", "util_gpu_pct"), gpus, workloads)
    )


JOB_JSON = r'"{\"slurm:42\":{\"account\":\"acct-a\",\"job\":\"42\",\"kind\":\"slurm_job\",\"user\":\"x\\\" y,z=1 \\\\\"}}"'
POD_JSON = r'"{\"k8s:p-1/c\":{\"container\":\"c\",\"kind\":\"k8s_pod\",\"namespace\":\"team-b\",\"pod_uid\":\"p-1\"}}"'


def test_a_gpu_window_is_split_among_tenants_to_the_last_millisecond_and_millijoule():
    lines, rejection = Pipeline(lambda: RULES).handle("gpufleet/v1/c1/n1/telemetry", shared_window(), NOW)
    assert rejection is None
    usage = [line for line in lines if line.startswith("tenant_usage")]
    ts = f" {(NOW - 10_000) * 1_000_000}"
    assert usage == [
        "tenant_usage,cluster=c1,gpu=0,model=H100,node=n1,tenant=lab-a gpu_s=7500e-3,busy_gpu_s=6750e-3,idle_gpu_s=750e-3,"
        f'energy_j=2250750e-3,peak_mem_bytes=10i,uuid="GPU-0",workloads={JOB_JSON}{ts}',
        "tenant_usage,cluster=c1,gpu=0,model=H100,node=n1,tenant=lab-b gpu_s=2500e-3,busy_gpu_s=2250e-3,idle_gpu_s=250e-3,"
        f'energy_j=750250e-3,peak_mem_bytes=5i,uuid="GPU-0",workloads={POD_JSON}{ts}',
        "tenant_usage,cluster=c1,gpu=1,model=H100,node=n1,tenant=lab-a gpu_s=10000e-3,busy_gpu_s=0e-3,idle_gpu_s=10000e-3,"
        f'energy_j=700000e-3,uuid="GPU-1",workloads={JOB_JSON}{ts}',
        "tenant_usage,cluster=c1,gpu=2,model=H100,node=n1,tenant=unallocated gpu_s=10000e-3,busy_gpu_s=0e-3,idle_gpu_s=10000e-3,"
        f'energy_j=700000e-3,uuid="GPU-2",workloads="{{}}"{ts}',
    ]


@pytest.mark.parametrize("holders", [(), (wire.Holder("slurm:1", 10, None), wire.Holder("k8s:p", 20, None))], ids=["nobody", "two tenants"])
def test_negative_energy_rejects_the_message(holders):
    workloads = {"slurm:1": {"kind": "slurm_job", "job": "1", "account": "acct-a"}, "k8s:p": {"kind": "k8s_pod", "namespace": "team-b", "pod_uid": "p"}}
    gpus = (wire.GpuWindow(0, "GPU-0", "T4", (7,)), wire.GpuWindow(1, "GPU-1", "T4", (-5,), holders))
    window = wire.TelemetryWindow("c1", "n1", 1, NOW - 1000, NOW, ("energy_j",), gpus, workloads)
    lines, rejection = Pipeline(lambda: RULES).handle("gpufleet/v1/c1/n1/telemetry", wire.encode_telemetry(window), NOW)
    assert lines == [] and rejection.reason == "bad_value"
    assert rejection.detail == "GPU 1 energy_j -5 is negative"


def mig_window() -> bytes:
    """GPU 0 in MIG mode (7 slices): a 3g instance running a lab-a job, a 2g instance idle, 2
    slices free; 10 s, 7001 J (odd on purpose)."""
    workloads = {"slurm:42": {"kind": "slurm_job", "job": "42", "account": "acct-a"}}
    gpus = (
        wire.GpuWindow(0, "GPU-0", "A100", (7_001_000, None)),
        wire.GpuWindow(0, "MIG-a", "A100 MIG 3g.40gb", (None, None), (wire.Holder("slurm:42", None, 5),), (), (1, 3, 7)),
        wire.GpuWindow(0, "MIG-b", "A100 MIG 2g.20gb", (None, None), (), (), (2, 2, 7)),
    )
    return wire.encode_telemetry(
        wire.TelemetryWindow("c1", "n1", 1, NOW - 10_000, NOW, ("energy_j", "util_gpu_pct"), gpus, workloads)
    )


def test_a_mig_gpu_is_split_by_slices_then_by_holders_and_still_balances():
    lines, rejection = Pipeline(lambda: RULES).handle("gpufleet/v1/c1/n1/telemetry", mig_window(), NOW)
    assert rejection is None
    held = {}
    for line in lines:
        if line.startswith("tenant_usage"):
            tags, fields = re.split(r"(?<!\\) ", line)[:2]
            values = dict(pair.split("=", 1) for pair in fields.split(",") if "=" in pair and not pair.startswith(("uuid", "workloads")))
            held[tags] = (float(values["gpu_s"]), float(values["energy_j"]))
    assert held == {
        # 7001 J by 3:2:2 slices: quotas 3000.42857, 2000.28571 (x2); the two largest remainders
        # (.714 each) get the last millijoules. 10 s the same way: 4.28571 gets the last ms.
        "tenant_usage,cluster=c1,gpu=0,model=A100,node=n1,tenant=unallocated": (2.857, 2000.286),
        r"tenant_usage,cluster=c1,gpu=0-mig1,model=A100\ MIG\ 3g.40gb,node=n1,tenant=lab-a": (4.286, 3000.428),
        r"tenant_usage,cluster=c1,gpu=0-mig2,model=A100\ MIG\ 2g.20gb,node=n1,tenant=unallocated": (2.857, 2000.286),
    }
    assert round(sum(s for s, _ in held.values()) * 1000) == 10_000
    assert round(sum(e for _, e in held.values()) * 1000) == 7_001_000
    gpu_tags = sorted(line.split(",")[2] for line in lines if line.startswith("gpu,"))
    assert gpu_tags == ["gpu=0", "gpu=0-mig1", "gpu=0-mig2"]


def test_mig_instances_that_do_not_fit_their_gpu_are_refused():
    window = wire.TelemetryWindow(
        "c1", "n1", 1, NOW - 1000, NOW, ("energy_j",),
        (
            wire.GpuWindow(0, "GPU-0", "A100", (1,)),
            wire.GpuWindow(0, "MIG-a", "A100 MIG 4g", (None,), (), (), (1, 4, 7)),
            wire.GpuWindow(0, "MIG-b", "A100 MIG 4g", (None,), (), (), (2, 4, 7)),
        ),
    )
    lines, rejection = Pipeline().handle("gpufleet/v1/c1/n1/telemetry", wire.encode_telemetry(window), NOW)
    assert lines == [] and rejection.reason == "schema"


def test_what_the_agent_is_told_once_stored_is_the_window_seq_or_the_event_digest():
    pipeline = Pipeline()
    pipeline.handle("gpufleet/v1/c1/n1/telemetry", telemetry(), NOW)
    assert pipeline.accepted == ("c1", "n1", 1, None)
    event = wire.encode_event(wire.GpuEventMessage("c1", "n1", NOW, 0, "GPU-0", "xid", 79, ""))
    pipeline.handle("gpufleet/v1/c1/n1/events", event, NOW)
    assert pipeline.accepted == ("c1", "n1", None, wire.event_digest(event))
    pipeline.handle("gpufleet/v1/c1/n1/events", b"\xc1", NOW)  # refused: nothing to confirm
    assert pipeline.accepted is None
