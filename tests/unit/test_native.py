"""gpufleet._native (gpufleet/native.c) against the Python it speeds up, which stays the definition.

  gpu_rows    on valid rows returns what wire._decode_gpu_rows_in_python returns; on anything
              else it either returns the same (never something different) or declines with None,
              and it declines on every row the Python path rejects.
  LineFormat  writes what FieldFormat.fields writes between a line's head and tail, for every
              mix of present and absent values and the extremes of 64 bits; declines on values
              wire validation never lets through.
The build itself is tested: `make deps` builds the module, and a collector without it is twice as
slow, so its absence must fail here rather than show up as a slow fleet.
"""

from __future__ import annotations

import copy
import json
import os
import random
import subprocess
import sys
import zlib
from pathlib import Path
from typing import Any

import msgpack
import pytest
from gpufleet.collector import lineproto, telemetry
from hypothesis import given, settings
from hypothesis import strategies as st

from gpufleet import catalogue, wire
from tests.unit.test_telemetry import RULES_TOML

_native = wire._native  # what the collector uses: None if the import failed
FIELDS = ("power_w", "energy_j", "util_gpu_pct", "temp_gpu_c", "wire_id_999", "clock_sm_mhz")
KEYS = ["slurm:1", "k8s:p", "unit:x"]
MODELS = ["NVIDIA H100 80GB HBM3", "Tesla T4"]
INT64 = (1 << 63) - 1
NOW = 1_767_225_600_000


def test_the_native_core_is_built_and_shares_wire_limits() -> None:
    assert _native is not None, "gpufleet._native was not built: `make deps` needs gcc and the Python headers"
    assert (_native.MAX_GPUS, _native.MAX_HOLDERS, _native.MAX_ABS_INT) == (wire.MAX_GPUS, wire.MAX_HOLDERS, wire.MAX_ABS_INT)
    assert _native.MAX_HOLDER_MEMORY == wire.MAX_HOLDER_MEMORY
    assert _native.MAX_HOLDER_SM == 10_000
    assert _native.MAX_WORKLOADS == wire.MAX_WORKLOADS


def test_known_workloads_are_taken_only_when_each_equals_the_last_valid_identity() -> None:
    assert _native is not None
    job = {"kind": "slurm_job", "job": "1", "pid": 7, "gone": None}
    valid = {"slurm:1": dict(job), "k8s:p": {"kind": "k8s_pod"}}
    keys, workloads = _native.known_workloads([["slurm:1", job], ["k8s:p", {"kind": "k8s_pod"}]], valid)
    assert keys == ["slurm:1", "k8s:p"] and workloads == {"slurm:1": job, "k8s:p": {"kind": "k8s_pod"}}
    assert workloads["slurm:1"] is job  # what the Python path hands on, too
    assert _native.known_workloads([], valid) == ([], {})
    declined = {
        "a new job": [["slurm:2", job]],
        "a changed identity": [["slurm:1", {**job, "pid": 8}]],
        "1.0 where 1 was": [["k8s:p", {"kind": "k8s_pod"}], ["slurm:1", {**job, "pid": 7.0}]],
        "True where 1 was": [["slurm:1", {**job, "pid": True}]],
        "a key twice": [["slurm:1", job], ["slurm:1", job]],
        "an entry of three": [["slurm:1", job, 1]],
        "a tuple entry": [("slurm:1", job)],
        "not a list": {"slurm:1": job},
        "too many": [["slurm:1", job]] * (wire.MAX_WORKLOADS + 1),
    }
    for what, raw in declined.items():
        assert _native.known_workloads(raw, valid) is None, what


value = st.none() | st.integers(-INT64, INT64) | st.sampled_from([0, 1, -1, INT64, -INT64, 10**6])


@st.composite
def valid_rows(draw: st.DrawFn) -> list[list[Any]]:
    rows = []
    for index in draw(st.lists(st.integers(0, 255), max_size=8)):
        holders: list[Any] = []
        for _ in range(draw(st.integers(0, 3))):
            holders += [
                draw(st.integers(0, len(KEYS) - 1)),
                draw(st.none() | st.integers(0, 10_000)),
                draw(st.none() | st.integers(0, 1 << 48)),
            ]
        uuid = draw(st.from_regex(r"[A-Za-z0-9][A-Za-z0-9-]{0,95}", fullmatch=True))
        row = [index, uuid, draw(st.integers(0, len(MODELS) - 1)), [draw(value) for _ in FIELDS], holders,
               draw(st.lists(st.integers(0, len(KEYS) - 1), max_size=3))]
        if draw(st.booleans()):
            slices = draw(st.integers(1, 8))
            row.append([draw(st.integers(0, 63)), slices, draw(st.integers(slices, 8))])
        rows.append(row)
    return rows


def in_python(rows: list[Any]) -> tuple[wire.GpuWindow, ...] | wire.Rejected:
    try:
        return wire._decode_gpu_rows_in_python(rows, len(FIELDS), MODELS, KEYS)
    except wire.Rejected as rejection:
        return rejection


def in_c(rows: list[Any]) -> tuple[wire.GpuWindow, ...] | None:
    assert _native is not None
    return _native.gpu_rows(rows, len(FIELDS), MODELS, KEYS, wire.GpuWindow, wire.Holder)


def same_windows(ours: tuple[wire.GpuWindow, ...], theirs: tuple[wire.GpuWindow, ...]) -> bool:
    """Equal, and of the same types all the way down (1 == True, but True is not a reading)."""
    def shape(item: Any) -> Any:
        if isinstance(item, tuple):
            return (type(item), tuple(shape(part) for part in item))
        return (type(item), item)
    return shape(ours) == shape(theirs)


@settings(max_examples=400, deadline=None)
@given(valid_rows())
def test_valid_rows_make_the_same_gpu_windows(rows: list[list[Any]]) -> None:
    expected = in_python(rows)
    assert not isinstance(expected, wire.Rejected), expected
    made = in_c(copy.deepcopy(rows))
    assert made is not None, "the fast path declined rows the Python path accepts"
    assert same_windows(made, expected)


# What a hostile or broken agent may put anywhere in a row, near every limit.
JUNK = [None, True, False, 0, -1, 1, 2, 3, 7, 8, 63, 64, 255, 256, 9_999, 10_000, 10_001, 1 << 48, (1 << 48) + 1,
        INT64, -INT64, -INT64 - 1, INT64 + 1, 1 << 70, 1.0, 0.5, float("nan"), "", "x", "GPU-0", "GPU 0", "GPU-é",
        "a" * 96, "a" * 97, "-GPU", b"GPU-0", [], [0], [0, 1, 1], [0, 1, 1, 2], {}, (0,), {"a": 1}]


class _ListOfKind(list):  # a list subclass: msgpack never makes one, so the fast path declines it
    pass


def mutants(rows: list[list[Any]], rng: random.Random, count: int) -> list[list[Any]]:
    made = []
    for _ in range(count):
        mutant = copy.deepcopy(rows)
        row = rng.choice(mutant)
        where = rng.randrange(len(row) + 1)
        roll = rng.random()
        if where == len(row):  # the row's own shape
            if roll < 0.4:
                row.append(rng.choice(JUNK))
            elif roll < 0.8:
                row.pop()
            else:
                mutant[mutant.index(row)] = _ListOfKind(row)
        elif isinstance(row[where], list) and row[where] and roll < 0.7:  # inside values, holders, owners, mig
            inner = row[where]
            if roll < 0.5:
                inner[rng.randrange(len(inner))] = rng.choice(JUNK)
            elif roll < 0.6:
                inner.append(rng.choice(JUNK))
            else:
                inner.pop()
        else:
            row[where] = rng.choice(JUNK)
        made.append(mutant)
    return made


@settings(max_examples=200, deadline=None)
@given(valid_rows().filter(bool), st.randoms(use_true_random=False))
def test_hostile_rows_are_declined_or_made_exactly_as_in_python(rows: list[list[Any]], rng: random.Random) -> None:
    declined = 0
    for mutant in mutants(rows, rng, 30):
        expected = in_python(copy.deepcopy(mutant))
        made = in_c(mutant)
        if isinstance(expected, wire.Rejected):
            assert made is None, f"C accepted rows Python rejects ({expected}): {mutant!r}"
            declined += 1
        elif made is None:
            declined += 1  # allowed (the Python path then runs), e.g. for a list subclass
        else:
            assert same_windows(made, expected), mutant
    assert declined <= 30


def test_a_row_of_each_fault_is_declined() -> None:
    good = [3, "GPU-3", 0, [1, None, 2, 3, 4, 5], [0, 50, 1 << 30], [1]]
    assert in_c([good]) is not None
    faults = {
        "index past 255": (0, 256),
        "bool index": (0, True),
        "uuid with a space": (1, "GPU 3"),
        "uuid too long": (1, "a" * 97),
        "model# past the list": (2, 2),
        "a value too few": (3, [1, None, 2, 3, 4]),
        "a float value": (3, [1.0, None, 2, 3, 4, 5]),
        "a value below -(2**63-1)": (3, [-INT64 - 1, None, 2, 3, 4, 5]),
        "a value past 64 bits": (3, [1 << 64, None, 2, 3, 4, 5]),
        "holders not triples": (4, [0, 50]),
        "holder workload# past the list": (4, [3, 50, 1]),
        "holder SM over 100 %": (4, [0, 10_001, 1]),
        "holder memory over 256 TiB": (4, [0, 1, (1 << 48) + 1]),
        "holder workload# None": (4, [None, 1, 1]),
        "owner workload# negative": (5, [-1]),
        "owners not a list": (5, (1,)),
    }
    for fault, (position, junk) in faults.items():
        row = copy.deepcopy(good)
        row[position] = junk
        assert isinstance(in_python([row]), wire.Rejected), fault
        assert in_c([row]) is None, fault
    assert in_c([good + [[1, 2, 9]]]) is None, "MIG slices past 8"
    assert in_c([good + [[1, 3, 2]]]) is None, "MIG instance larger than its GPU"


def field_format_and_plans(fields: tuple[str, ...], heads: list[str]) -> tuple[telemetry.FieldFormat, list]:
    return telemetry.FieldFormat(fields), [telemetry.GpuPlan(head, None, ()) for head in heads]  # type: ignore[arg-type]


@settings(max_examples=400, deadline=None)
@given(
    st.lists(st.tuples(*[value for _ in FIELDS]), min_size=1, max_size=8),
    st.permutations(FIELDS),
    st.sampled_from(["seq=3i,window_s=10.0 1767225600000000000", ""]),
)
def test_line_format_writes_what_the_python_format_writes(rows: list[tuple], fields: list[str], tail: str) -> None:
    fmt, plans = field_format_and_plans(tuple(fields), [f"gpu,gpu={i},node=n1 " for i in range(len(rows))])
    gpus = tuple(wire.GpuWindow(i, f"GPU-{i}", "T4", values) for i, values in enumerate(rows))
    assert fmt.native is not None
    expected = [f"{plan.gpu_head}{fmt.fields(gpu.values)}{tail}" for plan, gpu in zip(plans, gpus)]
    assert fmt.native.gpu_lines(plans, gpus, tail) == expected


def test_line_format_declines_what_validation_never_passes() -> None:
    fmt, plans = field_format_and_plans(FIELDS, ["gpu,node=n1 "])
    assert fmt.native is not None
    for junk in (True, 1.5, "1", INT64 + 1, -INT64 - 1):
        gpus = (wire.GpuWindow(0, "GPU-0", "T4", (junk, 1, 2, 3, 4, 5)),)
        assert fmt.native.gpu_lines(plans, gpus, " 1") is None, junk
    gpus = (wire.GpuWindow(0, "GPU-0", "T4", (1, 2, 3, 4, 5, 6)),)
    assert fmt.native.gpu_lines(plans, gpus, " 1") == ["gpu,node=n1 power_w=1e-3,energy_j=2e-3,util_gpu_pct=3e-2,temp_gpu_c=4i,clock_sm_mhz=6i, 1"]
    assert fmt.native.gpu_lines([telemetry.GpuPlan("gpu,node=né ", None, ())], gpus, " 1") is None  # type: ignore[arg-type]
    assert fmt.native.gpu_lines(plans, (wire.GpuWindow(0, "GPU-0", "T4", (1, 2)),), " 1") is None  # values too short
    with pytest.raises(TypeError):
        fmt.native.gpu_lines(plans, (), " 1")  # lengths differ: a caller's bug, not input


def test_line_format_refuses_non_ascii_pieces() -> None:
    assert _native is not None
    with pytest.raises(ValueError):
        _native.LineFormat(("pöwer=",), ("i,",), (0,))
    with pytest.raises(ValueError):
        _native.LineFormat(("a=", "b="), ("i,",), (0, 1))
    assert lineproto.value_suffix(None) == "i"


def test_tenant_lines_leave_what_they_do_not_take_to_the_python_path_in_order() -> None:
    """A GPU with a text that is not ASCII, with MIG, or with a negative energy (which the Python
    path rejects) goes to `split`; its lines keep their place among the others."""
    assert _native is not None
    sharing = telemetry._make_sharing(("slurm:1",), {"slurm:1": ("lab-a", '"slurm:1":{}')})
    plain = telemetry.GpuPlan("gpu ", sharing, (("tenant_usage,gpu=0,tenant=", "lab-a ", 'uuid="G",workloads=', '"{}" '),))
    accented = plain._replace(tenant_lines=(("tenant_usage,gpu=0,tenant=", "läb-a ", 'uuid="G",workloads=', '"{}" '),))
    holder = (wire.Holder("slurm:1", 5000, 7),)
    gpus = (
        wire.GpuWindow(0, "G", "T4", (1_000, 5_000), holder),
        wire.GpuWindow(1, "G", "T4", (1_000, 5_000), holder),
        wire.GpuWindow(2, "G", "T4", (-1, 5_000), holder),
        wire.GpuWindow(3, "G", "T4", (1_000, 5_000), holder, (), (1, 1, 7)),
    )
    left: list[int] = []

    def split(plan: telemetry.GpuPlan, gpu: wire.GpuWindow) -> list[str]:
        left.append(gpu.index)
        return [f"python {gpu.index}"]

    lines = _native.tenant_lines([plain, accented, plain, plain], gpus, 10_000, 0, 1, "1", split)
    assert left == [1, 2, 3]
    assert lines == [
        (
            "tenant_usage,gpu=0,tenant=lab-a gpu_s=10000e-3,busy_gpu_s=5000e-3,idle_gpu_s=5000e-3,energy_j=1000e-3,"
            'peak_mem_bytes=7i,uuid="G",workloads="{}" 1'
        ),
        "python 1", "python 2", "python 3",
    ]


# ------------------------------------------------------------------ the whole pipeline, both ways

REPO = Path(__file__).resolve().parents[2]
IDENTITIES = {
    "slurm:1": {"kind": "slurm_job", "job": "1", "account": "acct-a", "user": 'x" y,z=1 \\'},
    "slurm:2": {"kind": "slurm_job", "job": "2", "account": "acct-u"},
    "k8s:p": {"kind": "k8s_pod", "namespace": "team-b", "pod_uid": "p", "container": "c"},
    "k8s:q": {"kind": "k8s_pod", "namespace": "tëam-ç", "pod_uid": "q"},  # JSON escapes it: still ASCII
    "unit:x": {"kind": "systemd_unit", "unit": "x\\x2dy.service"},
}
PIPELINE_SCRIPT = """
import json, sys
import msgpack
from gpufleet import catalogue, wire
from gpufleet.collector.pipeline import Pipeline
from gpufleet.collector.tenants import TenantRules
messages, rules, now = msgpack.unpackb(open(sys.argv[1], "rb").read()), TenantRules.from_toml(sys.argv[2]), int(sys.argv[3])
pipeline = Pipeline(lambda: rules)
out = []
for topic, payload in messages:
    lines, rejection = pipeline.handle(topic, payload, now)
    out.append([lines, None if rejection is None else [rejection.reason, rejection.detail]])
json.dump({"native": wire.NATIVE_CORE, "out": out}, sys.stdout)
"""


def random_window(rng: random.Random, seq: int) -> wire.TelemetryWindow:
    """A node-window with what a fleet sends: absent values, extremes, shared GPUs, idle owners,
    MIG instances now and then, and a field this collector does not know."""
    names = [metric.name for metric in catalogue.gpu_window_fields()]
    fields = tuple(rng.sample(names, rng.randint(0, 12))) + (("wire_id_999",) if rng.random() < 0.2 else ())
    for wanted in ("energy_j", "util_gpu_pct"):
        if wanted not in fields and rng.random() < 0.8:
            fields += (wanted,)
    keys = list(IDENTITIES)

    def number() -> int | None:
        return rng.choice([None, 0, 1, 7, 10_000, 123_456, INT64, -INT64, rng.randint(0, 10**9), rng.randint(-10**6, 10**12)])

    def value(name: str) -> int | None:
        if name == "energy_j":
            return rng.choice([None, 0, rng.randint(0, 10**7), INT64])
        if name == "util_gpu_pct":  # 0.05 % of 1 s is half a ms: the rounding of busy time shows
            return rng.choice([None, 0, 5, 15, 25, 50, 9_950, 10_000, rng.randint(0, 10_000), -3, 20_000])
        return number()

    def holders() -> tuple[wire.Holder, ...]:
        return tuple(
            wire.Holder(rng.choice(keys), rng.choice([None, 0, rng.randint(0, 10_000)]), rng.choice([None, 0, rng.randint(0, 1 << 48)]))
            for _ in range(rng.choice([0, 1, 1, 2, 3, 5]))
        )

    gpus = []
    for index in range(rng.randint(1, 8)):
        gpus.append(wire.GpuWindow(index, f"GPU-{seq % 7}-{index}", rng.choice(["H100", "A100"]), tuple(value(n) for n in fields),
                                   holders(), tuple(rng.sample(keys, rng.randint(0, 2)))))
        if rng.random() < 0.1:  # in MIG mode: instances of 1-3 of its 7 slices
            for instance in range(rng.randint(1, 2)):
                gpus.append(wire.GpuWindow(index, f"MIG-{index}-{instance}", "A100 MIG", tuple(value(n) for n in fields),
                                           holders(), (), (instance, rng.randint(1, 3), 7)))
    t1 = NOW - rng.randint(0, 10**6)
    window_ms = rng.choice([1000, 10_000, 3, rng.randint(1, 20_000)])
    return wire.TelemetryWindow("c1", f"n{seq % 5}", seq, t1 - window_ms, t1, fields, tuple(gpus), dict(IDENTITIES))


def run_pipeline(path: Path, native: bool) -> dict:
    env = {**os.environ, "GPUFLEET_NATIVE": "1" if native else "0"}
    done = subprocess.run([sys.executable, "-c", PIPELINE_SCRIPT, str(path), RULES_TOML, str(NOW)],
                          env=env, capture_output=True, check=True, timeout=300)
    return json.loads(done.stdout)


def test_the_pipeline_writes_and_rejects_the_same_with_and_without_the_c_paths(tmp_path: Path) -> None:
    """GPUFLEET_NATIVE=0 (or a collector installed without a compiler) must write every line and
    name every rejection exactly as the C paths do, on valid and broken messages alike."""
    rng = random.Random(8)
    messages = []
    for seq in range(400):
        payload = wire.encode_telemetry(random_window(rng, seq))
        if rng.random() < 0.3:  # a bit flipped inside the compressed stream: malformed, or another message
            plain = bytearray(zlib.decompress(payload))
            plain[rng.randrange(len(plain))] ^= 1 << rng.randrange(8)
            payload = zlib.compress(bytes(plain))
        messages.append([wire.telemetry_topic("c1", f"n{seq % 5}"), payload])
    path = tmp_path / "messages.msgpack"
    path.write_bytes(msgpack.packb(messages))
    with_c, without_c = run_pipeline(path, native=True), run_pipeline(path, native=False)
    assert (with_c["native"], without_c["native"]) == (True, False)
    accepted = sum(1 for _, rejection in with_c["out"] if rejection is None)
    assert 150 < accepted < 390, accepted  # both kinds well represented
    for message, ours, theirs in zip(messages, with_c["out"], without_c["out"]):
        assert ours == theirs, message
