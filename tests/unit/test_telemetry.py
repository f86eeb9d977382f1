"""The fast path (collector/telemetry.py, through Pipeline) writes exactly what the readable
definition writes: attribute.attribute + attribute.by_tenant + lineproto, on random windows,
cold and with its plans warm."""

import dataclasses
from fractions import Fraction

from gpufleet.collector import lineproto, telemetry
from gpufleet.collector.attribute import UNALLOCATED, attribute, by_tenant
from gpufleet.collector.pipeline import Pipeline
from gpufleet.collector.tenants import TenantRules
from hypothesis import given, settings
from hypothesis import strategies as st

from gpufleet import wire

NOW = 1_767_225_600_000
RULES_TOML = """
[tenants]
default = "nobody-matched"
[[tenants.rule]]
tenant = "lab-a"
match = { slurm_account = "acct-a" }
[[tenants.rule]]
tenant = "lab-b"
match = { k8s_namespace = "team-b" }
[[tenants.rule]]
tenant = "unallocated"
match = { slurm_account = "acct-u" }
"""
RULES = TenantRules.from_toml(RULES_TOML)
FIELDS = ("power_w", "energy_j", "util_gpu_pct", "temp_gpu_c", "wire_id_999")
IDENTITIES = {
    "slurm:1": {"kind": "slurm_job", "job": "1", "account": "acct-a"},
    "slurm:2": {"kind": "slurm_job", "job": "2", "account": "acct-a"},
    "slurm:3": {"kind": "slurm_job", "job": "3", "account": "acct-u"},  # billed to "unallocated" by rule
    "k8s:p": {"kind": "k8s_pod", "namespace": "team-b", "pod_uid": "p"},
    "unit:x": {"kind": "systemd_unit", "unit": "x.service"},  # matches no rule: the default tenant
}
KEYS = sorted(IDENTITIES)

values = st.tuples(
    st.none() | st.integers(0, 10**6),
    st.none() | st.integers(0, 10**7),
    st.none() | st.sampled_from([5, 15, 25, 50, 9_950]) | st.integers(0, 10_000),  # halves of a ms, with the windows below
    st.none() | st.integers(0, 120),
    st.none() | st.integers(-5, 5),
)
holders = st.lists(
    st.builds(wire.Holder, st.sampled_from(KEYS), st.none() | st.integers(0, 10_000), st.none() | st.integers(0, 1 << 40)),
    max_size=4,
)


@st.composite
def windows(draw: st.DrawFn) -> wire.TelemetryWindow:
    gpus = tuple(
        wire.GpuWindow(index, f"GPU-{index}", draw(st.sampled_from(["H100", "T4"])), draw(values), tuple(draw(holders)),
                       tuple(draw(st.lists(st.sampled_from(KEYS), max_size=2))))
        for index in range(draw(st.integers(1, 4)))
    )
    t1 = NOW - draw(st.integers(0, 10**6))
    window_ms = draw(st.sampled_from([1000, 10_000, 3]) | st.integers(1, 20_000))
    return wire.TelemetryWindow("c1", "n1", 3, t1 - window_ms, t1, FIELDS, gpus, dict(IDENTITIES))


def reference_lines(window: wire.TelemetryWindow) -> list[str]:
    """What the readable definition writes for a window without MIG instances."""
    plan, _ = lineproto.field_plan(window.fields)
    lines = lineproto.gpu_lines(window, plan)
    window_ms = window.t1_ms - window.t0_ms
    for gpu in window.gpus:
        energy, util = gpu.values[1], gpu.values[2]
        shares = attribute(window_ms, energy, None if util is None else Fraction(util, 100), list(gpu.holders), gpu.owners)
        tenant_of = {
            s.workload_key: RULES.tenant_for(window.workloads[s.workload_key], gpu.uuid, window.node)
            for s in shares
            if s.workload_key != UNALLOCATED
        }
        for share in by_tenant(shares, tenant_of.__getitem__):
            billed = {key: window.workloads[key] for key, tenant in tenant_of.items() if tenant == share.tenant}
            lines.append(lineproto.tenant_usage_line(window, gpu, share, billed))
    return lines


@settings(max_examples=300, deadline=None)
@given(windows())
def test_the_fast_path_writes_what_the_definition_writes(window: wire.TelemetryWindow) -> None:
    pipeline = Pipeline(lambda: RULES)
    payload = wire.encode_telemetry(window)
    expected = reference_lines(window)
    for _ in range(2):  # cold, then with every plan and format made
        lines, rejection = pipeline.handle(wire.telemetry_topic("c1", "n1"), payload, NOW)
        assert rejection is None
        assert lines == expected


def test_a_changed_identity_or_rule_set_finds_no_stale_plan() -> None:
    gpu = wire.GpuWindow(0, "GPU-0", "H100", (1000, 5000, 5000, 50, None), (wire.Holder("slurm:1", 100, None),))
    window = wire.TelemetryWindow("c1", "n1", 3, NOW - 10_000, NOW, FIELDS, (gpu,), {"slurm:1": IDENTITIES["slurm:1"]})
    moved = wire.TelemetryWindow(
        "c1", "n1", 4, NOW - 10_000, NOW, FIELDS, (gpu,), {"slurm:1": {**IDENTITIES["slurm:1"], "account": "acct-u"}}
    )
    rules = [RULES]
    pipeline = Pipeline(lambda: rules[0])
    topic = wire.telemetry_topic("c1", "n1")

    def tenants(w: wire.TelemetryWindow) -> list[str]:
        lines = pipeline.handle(topic, wire.encode_telemetry(w), NOW)[0]
        return [line.split("tenant=")[1].split(" ")[0] for line in lines if line.startswith("tenant_usage")]

    assert tenants(window) == ["lab-a"]
    assert tenants(moved) == ["unallocated"]  # same job key, new account: a new plan
    rules[0] = TenantRules.from_toml('[[tenants.rule]]\ntenant = "lab-z"\nmatch = { slurm_account = "acct-a" }\n')
    assert tenants(window) == ["lab-z"]  # reloaded rules: new tenants at once


@st.composite
def changing_identities(draw: st.DrawFn) -> dict[str, dict]:
    """IDENTITIES with some accounts and namespaces changed: the same keys, other tenants or JSON."""
    identities = {key: dict(identity) for key, identity in IDENTITIES.items()}
    for key in ("slurm:1", "slurm:3"):
        identities[key]["account"] = draw(st.sampled_from(["acct-a", "acct-u", "acct-z"]))
    identities["k8s:p"]["namespace"] = draw(st.sampled_from(["team-b", "team-c"]))
    return identities


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(windows(), changing_identities()), min_size=2, max_size=6))
def test_plans_kept_across_windows_follow_changed_and_returning_identities(sequence: list) -> None:
    pipeline = Pipeline(lambda: RULES)  # one for all the node's windows, its plans kept between them
    for window, identities in sequence:
        window = dataclasses.replace(window, workloads=identities)
        lines, rejection = pipeline.handle(wire.telemetry_topic("c1", "n1"), wire.encode_telemetry(window), NOW)
        assert rejection is None
        assert lines == reference_lines(window)


def test_a_node_whose_jobs_come_and_go_starts_over_alone_and_keeps_writing_the_same() -> None:
    """Ended jobs' plans must not pile up until the global bound empties every node's plans (at
    200,000 GPUs that bound is near): a node past KEPT_PER_GPU plans a GPU starts over alone."""
    pipeline = Pipeline(lambda: RULES)
    steady_gpu = wire.GpuWindow(0, "GPU-s", "H100", (1000, 5000, 5000, 50, None), (wire.Holder("slurm:1", 100, None),))
    steady = wire.TelemetryWindow("c1", "steady", 1, NOW - 10_000, NOW, FIELDS, (steady_gpu,), {"slurm:1": IDENTITIES["slurm:1"]})
    pipeline.handle(wire.telemetry_topic("c1", "steady"), wire.encode_telemetry(steady), NOW)
    kept = pipeline._telemetry
    steady_plans = kept._nodes[("c1", "steady")]
    for job in range(10 * telemetry.KEPT_PER_GPU):  # a new job on the churning node's GPU every window
        key = f"slurm:{100 + job}"
        gpu = steady_gpu._replace(uuid="GPU-c", holders=(wire.Holder(key, 100, None),))
        window = wire.TelemetryWindow(
            "c1", "churn", job, NOW - 10_000, NOW, FIELDS, (gpu,), {key: {"kind": "slurm_job", "job": str(100 + job), "account": "acct-a"}}
        )
        lines, rejection = pipeline.handle(wire.telemetry_topic("c1", "churn"), wire.encode_telemetry(window), NOW)
        assert rejection is None and lines == reference_lines(window)
        churn = kept._nodes[("c1", "churn")]
        assert len(churn.plans) <= telemetry.KEPT_PER_GPU + 1 and len(churn.identities) <= telemetry.KEPT_PER_GPU + 1
    assert kept._nodes[("c1", "steady")] is steady_plans
    assert kept._kept == sum(node.kept() for node in kept._nodes.values())
