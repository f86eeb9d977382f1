"""MIG end to end without services: the real reader (through the fake driver, A100 in MIG mode)
-> window -> workloads -> wire -> collector: every instance billed on its own, the GPU balanced."""

from collections import defaultdict

from gpufleet import wire
from gpufleet.agent import fakenvml, nvml
from gpufleet.agent.window import WindowAggregator, mig_slices
from gpufleet.agent.workloads import WorkloadResolver
from gpufleet.collector.pipeline import Pipeline
from gpufleet.collector.tenants import TenantRules

NOW = 1_767_225_600_000
RULES = TenantRules.from_toml('[[tenants.rule]]\ntenant = "lab-a"\nmatch = { slurm_account = "acct-a" }\n')


def test_mig_slices_from_nvml_names():
    assert mig_slices(1, "NVIDIA A100-SXM4-80GB MIG 3g.40gb", "NVIDIA A100-SXM4-80GB") == (1, 3, 7)
    assert mig_slices(2, "NVIDIA A30 MIG 2g.12gb", "NVIDIA A30") == (2, 2, 4)
    assert mig_slices(3, "something unexpected", "NVIDIA H100 80GB HBM3") == (3, 1, 7)


def test_a_mig_gpu_read_through_the_driver_is_billed_per_instance_and_balances():
    profile = fakenvml.load_profile("a100-mig")
    with fakenvml.installed(profile):
        source = nvml.open_nvml(watch_events=False)
        try:
            aggregator = WindowAggregator(1000)
            aggregator.add(NOW - 2000, source.sample())
            aggregator.close()  # the baseline sample
            aggregator.add(NOW - 1000, source.sample())
            aggregator.add(NOW, source.sample())
            closed = aggregator.close()
        finally:
            source.close()
    instances = [w for w in closed if w.mig is not None]
    assert sorted(w.mig for w in instances) == [(1, 3, 7), (5, 2, 7), (13, 1, 7)]
    assert {w.index for w in instances} == {0}
    pids_in_instances = {p.pid for w in instances for p in w.processes}
    identity = {"kind": "slurm_job", "job": "7", "account": "acct-a"}
    resolver = WorkloadResolver(lambda pid: {"pid": pid, **identity})
    gpus, workloads = resolver.annotate(closed)
    window = wire.TelemetryWindow("c1", "n1", 0, NOW - 2000, NOW, aggregator.field_names, gpus, workloads)
    lines, rejection = Pipeline(lambda: RULES).handle(
        "gpufleet/v1/c1/n1/telemetry", wire.encode_telemetry(window), NOW
    )
    assert rejection is None
    held_ms = defaultdict(int)
    tags = set()
    for line in lines:
        if line.startswith("tenant_usage"):
            gpu_tag = line.split(",gpu=")[1].split(",")[0]
            tags.add(gpu_tag)
            gpu_s = line.split(" gpu_s=")[1].split(",")[0]
            held_ms[gpu_tag.split("-")[0]] += round(float(gpu_s) * 1000)
    assert held_ms == {"0": 2000, "1": 2000}  # every GPU's window is accounted for exactly
    assert {"0-mig1", "0-mig5", "0-mig13"} <= tags or not pids_in_instances
    assert any(",gpu=0-mig" in line and "tenant=lab-a" in line for line in lines) == bool(pids_in_instances)
