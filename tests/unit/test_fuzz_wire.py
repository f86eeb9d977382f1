"""Fuzzing the collector's front door: whatever arrives, Pipeline.handle neither raises nor lets
anything through that would break the InfluxDB write or its schema.

Hypothesis draws a valid message (and a seed); from each, a seeded random.Random makes a batch of
mutants: values replaced by junk of every msgpack type (huge and boundary ints, floats, NaN,
bytes, extension types, nested containers), keys deleted or added, lists cut or padded, control
characters, separators and non-ASCII text spliced into strings, timestamps moved, topics bent;
then raw bytes, random and bit-flipped valid payloads. Batches keep generation cheap: well over
100,000 messages in a few tens of seconds. A failure prints the topic and payload to replay.

For every message:
  * no exception escapes handle();
  * it is either accepted, or rejected and counted under exactly one of wire.REJECT_REASONS;
    the counters always satisfy received == accepted + sum(rejected);
  * every line of an accepted message is one line-protocol line (no newline), of a known
    measurement, with exactly that measurement's tag keys (sorted, values non-empty), fields
    that parse (ints with `i`, finite floats, quoted strings) and an integer timestamp.
"""

from __future__ import annotations

import copy
import math
import random
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgpack
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from gpufleet import wire
from gpufleet.catalogue import gpu_window_field_by_name, gpu_window_fields
from gpufleet.collector.pipeline import Pipeline
from gpufleet.collector.tenants import TenantRules

NOW = 1_767_225_600_000  # 2026-01-01T00:00:00Z in ms
REPO = Path(__file__).resolve().parents[2]

TAG_KEYS = {
    "gpu": ("cluster", "gpu", "model", "node", "uuid"),
    "tenant_usage": ("cluster", "gpu", "model", "node", "tenant"),
    "gpu_event": ("cluster", "gpu", "kind", "node", "uuid"),
    "node_state": ("cluster", "node"),
}

# Messages per test; the totals are asserted, so a change in settings cannot quietly shrink the run.
TELEMETRY_EXAMPLES, TELEMETRY_MUTANTS = 700, 60  # 42,000
EVENT_EXAMPLES, EVENT_MUTANTS = 300, 50  # 15,000
STATE_EXAMPLES, STATE_MUTANTS = 300, 50  # 15,000
BYTES_EXAMPLES, BYTES_MUTANTS = 400, 60  # 24,000
BINARY_EXAMPLES = 5_000  # hypothesis' own byte strings, one message each
MINIMUM_TOTAL = 100_000

# The shipped rules plus rules on every other match key, so attribution walks every matcher.
RULES = TenantRules.from_toml(
    (REPO / "systemd" / "tenants.toml").read_text()
    + """
[[tenants.rule]]
tenant = "by-uid"
match = { uid = [0, 1000] }
[[tenants.rule]]
tenant = "by-group"
match = { unix_group = "wheel*" }
[[tenants.rule]]
tenant = "by-unit"
match = { systemd_unit = "*.service" }
[[tenants.rule]]
tenant = "by-label"
match = { k8s_label = { team = "a*" } }
[[tenants.rule]]
tenant = "by-gpu"
match = { gpu_uuid = "GPU-9*", node = "n*" }
"""
)


# --------------------------------------------------------------------------- the invariants


class Checked:
    """Runs messages through one Pipeline and checks each outcome; counts what it checked."""

    def __init__(self) -> None:
        self.pipeline = Pipeline(lambda: RULES)
        self.messages = 0
        self.accepted = 0

    def __call__(self, topic: str, payload: bytes) -> None:
        counters = self.pipeline.counters
        accepted_before, rejected_before = counters.accepted, dict(counters.rejected)
        try:
            lines, rejection = self.pipeline.handle(topic, payload, NOW)
        except Exception as exc:  # noqa: BLE001 - the point: nothing may escape
            self.pipeline = Pipeline(lambda: RULES)  # its counters are off by this message now
            raise AssertionError(f"{type(exc).__name__}: {exc}\n{_replay(topic, payload)}") from exc
        self.messages += 1
        rejected_now = {k: v - rejected_before.get(k, 0) for k, v in counters.rejected.items()}
        rejected_now = {k: v for k, v in rejected_now.items() if v}
        if rejection is None:
            assert counters.accepted == accepted_before + 1 and not rejected_now, _replay(topic, payload)
            self.accepted += 1
            for line in lines:
                check_line(line, topic, payload)
        else:
            assert lines == [], _replay(topic, payload)
            assert rejection.reason in wire.REJECT_REASONS
            assert rejected_now == {rejection.reason: 1}, _replay(topic, payload)
            assert counters.accepted == accepted_before
        assert counters.received == counters.accepted + sum(counters.rejected.values())
        assert set(counters.rejected) <= set(wire.REJECT_REASONS)


def _replay(topic: str, payload: bytes) -> str:
    return f"replay: Pipeline().handle({topic!r}, bytes.fromhex({payload.hex()!r}), {NOW})"


def _read_token(line: str, i: int, stops: str) -> tuple[str, int]:
    """Up to the first unescaped character of `stops`; backslash escapes the next character."""
    out = []
    while i < len(line) and line[i] not in stops:
        if line[i] == "\\" and i + 1 < len(line):
            i += 1
        out.append(line[i])
        i += 1
    return "".join(out), i


def _read_field_value(line: str, i: int) -> tuple[str, int]:
    if line[i] != '"':
        return _read_token(line, i, ", ")
    i += 1
    out = []
    while i < len(line) and line[i] != '"':
        if line[i] == "\\" and i + 1 < len(line) and line[i + 1] in '"\\':
            i += 1
        out.append(line[i])
        i += 1
    assert i < len(line), "unterminated string field"
    return '"' + "".join(out) + '"', i + 1


def parse_line(line: str) -> tuple[str, list[tuple[str, str]], list[tuple[str, str]], str]:
    """(measurement, tags, fields, timestamp) of one line-protocol line; AssertionError if malformed."""
    measurement, i = _read_token(line, 0, ", ")
    tags = []
    while i < len(line) and line[i] == ",":
        key, i = _read_token(line, i + 1, "=, ")
        assert i < len(line) and line[i] == "=", f"tag {key!r} has no '='"
        value, i = _read_token(line, i + 1, ", ")
        tags.append((key, value))
    assert i < len(line) and line[i] == " ", "no space after the tags"
    i += 1
    fields = []
    while True:
        key, i = _read_token(line, i, "= ")
        assert i < len(line) and line[i] == "=", f"field {key!r} has no '='"
        value, i = _read_field_value(line, i + 1)
        fields.append((key, value))
        assert i < len(line), "no timestamp"
        if line[i] == " ":
            break
        assert line[i] == ",", f"unexpected {line[i]!r} after field {key!r}"
        i += 1
    return measurement, tags, fields, line[i + 1 :]


def check_line(line: str, topic: str, payload: bytes) -> None:
    where = f"\nline: {line!r}\n{_replay(topic, payload)}"
    assert "\n" not in line and "\r" not in line, "newline inside a line" + where
    measurement, tags, fields, timestamp = parse_line(line)
    assert measurement in TAG_KEYS, f"unexpected measurement {measurement!r}" + where
    assert tuple(key for key, _ in tags) == TAG_KEYS[measurement], f"tag keys {tags}" + where
    assert all(value for _, value in tags), "empty tag value (InfluxDB refuses the batch)" + where
    assert fields, "no fields" + where
    for key, value in fields:
        assert key and key not in dict(tags), f"bad field key {key!r}" + where
        if value.startswith('"'):
            continue
        if value.endswith("i"):
            assert -(2**63) <= int(value[:-1]) < 2**63, f"field {key} out of int64" + where
        else:
            assert math.isfinite(float(value)), f"field {key}={value} not finite" + where
    assert timestamp.lstrip("-").isdigit() and -(2**63) <= int(timestamp) < 2**63, "bad timestamp" + where


# ---------------------------------------------------------------------- valid messages


_ALNUM = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
names = st.text(_ALNUM, min_size=1, max_size=6)
name_with_punct = st.builds(lambda a, b: a + b, names, st.text(_ALNUM + "._-", max_size=8))
KNOWN_FIELDS = sorted(gpu_window_field_by_name())
field_lists = st.builds(
    lambda fields, attribution: fields + [f for f in ("energy_j", "util_gpu_pct") if attribution and f not in fields],
    st.lists(
        st.one_of(st.sampled_from(KNOWN_FIELDS), st.from_regex(r"[a-z][a-z0-9_]{0,10}", fullmatch=True)),
        max_size=12,
        unique=True,
    ),
    st.booleans(),  # the fields tenant attribution reads
)
wire_ints = st.one_of(
    st.none(), st.integers(0, 10**7), st.integers(-(2**63) + 1, 2**63 - 1), st.sampled_from([0, 1, 2**63 - 1])
)
identities = st.one_of(
    st.fixed_dictionaries({"kind": st.just("slurm_job"), "job": names, "account": name_with_punct, "user": names}),
    st.fixed_dictionaries({"kind": st.just("k8s_pod"), "namespace": names, "pod": name_with_punct}),
    st.fixed_dictionaries({"kind": st.just("systemd_unit"), "unit": name_with_punct.map(lambda s: s + ".service")}),
    st.fixed_dictionaries({"kind": st.just("process"), "uid": st.integers(0, 70000), "group": names}),
)


@st.composite
def telemetry_messages(draw: st.DrawFn) -> dict[str, Any]:
    cluster, node = draw(names), draw(name_with_punct)
    fields = draw(field_lists)
    workloads = draw(st.dictionaries(st.builds(lambda k, n: f"{k}:{n}", st.sampled_from(["slurm", "k8s", "unit", "pid"]), names), identities, max_size=4))
    keys = sorted(workloads)
    t1 = NOW - draw(st.integers(0, 3_600_000))
    gpus = []

    def gpu(index: int, uuid: str, model: str, *mig: int) -> list[Any]:
        values = [draw(wire_ints) for _ in fields]
        # holder SM share (0.01 %) and memory are bounded on the wire; mutants try the rest
        sm_util = st.none() | st.integers(0, 10_000)
        memory = st.none() | st.integers(0, wire.MAX_HOLDER_MEMORY)
        holders = [[k, draw(sm_util), draw(memory)] for k in draw(st.lists(st.sampled_from(keys), max_size=3))] if keys else []
        owners = draw(st.lists(st.sampled_from(keys), max_size=2)) if keys else []
        return [index, uuid, model, values, holders, owners, *([list(mig)] if mig else [])]

    for index in range(draw(st.integers(0, 4))):
        model = draw(st.sampled_from(["NVIDIA H100 80GB HBM3", "Tesla T4", "A100-SXM4-40GB"]))
        gpus.append(gpu(index, f"GPU-{draw(names)}", model))
        free = 7
        for instance in range(draw(st.integers(0, 3))):  # MIG instances: same index, [id, slices, 7]
            slices = draw(st.integers(1, 7))
            if slices > free:
                break
            free -= slices
            gpus.append(gpu(index, f"MIG-{draw(names)}", model, instance, slices, 7))
    message = {
        "v": 1, "cluster": cluster, "node": node, "seq": draw(st.integers(0, 2**40)),
        "t0": t1 - draw(st.integers(1, 120_000)), "t1": t1, "fields": fields, "gpus": gpus,
    }
    if workloads:
        message["workloads"] = workloads
    return message


def as_v2(message: dict[str, Any]) -> dict[str, Any]:
    """The same telemetry in version 2's form: field ids, models and workloads by position."""
    ids = {m.name: m.wire_id for m in gpu_window_fields()}
    keys = list(message.get("workloads", {}))
    models = sorted({gpu[2] for gpu in message["gpus"]})
    rows = []
    for gpu in message["gpus"]:
        holders = [x for key, sm, mem in gpu[4] for x in (keys.index(key), sm, mem)]
        rows.append([gpu[0], gpu[1], models.index(gpu[2]), gpu[3], holders, [keys.index(k) for k in gpu[5]], *gpu[6:]])
    return {
        **message, "v": 2, "fields": [ids.get(name, 1000 + n) for n, name in enumerate(message["fields"])],
        "models": models, "workloads": [[key, message["workloads"][key]] for key in keys], "gpus": rows,
    }


@st.composite
def event_messages(draw: st.DrawFn) -> dict[str, Any]:
    return {
        "v": 1, "cluster": draw(names), "node": draw(name_with_punct), "t": NOW - draw(st.integers(0, 10**6)),
        "gpu": draw(st.integers(0, 7)), "uuid": f"GPU-{draw(names)}", "kind": draw(st.sampled_from(sorted(wire.EVENT_KINDS))),
        "code": draw(st.integers(-(2**31), 2**31)), "detail": draw(st.text(st.characters(blacklist_categories=("Cc", "Cs")), max_size=40)),
    }


@st.composite
def state_messages(draw: st.DrawFn) -> dict[str, Any]:
    message = {"v": 1, "cluster": draw(names), "node": draw(name_with_punct), "state": draw(st.sampled_from(["online", "offline"]))}
    if draw(st.booleans()):
        message["t"] = NOW - draw(st.integers(-1000, 10**9))
    return message


def topic_of(message: dict[str, Any], kind: str) -> str:
    return f"gpufleet/v1/{message['cluster']}/{message['node']}/{kind}"


# ------------------------------------------------------------------------------ mutations


JUNK: list[Any] = [
    None, True, False, 0, -1, 1, 255, 2**31, 2**32, 2**53 + 1, 2**63 - 1, 2**63, 2**64 - 1, -(2**63), -(2**63) + 1,
    0.0, -0.0, 0.5, 1e-320, 1e308, float("nan"), float("inf"), float("-inf"),
    "", " ", "x" * 70, "y" * 600, "\x00", "a\nb", "a\rb", "tab\there", "a,b=c d", "\\", '"', "\\n", "ü", "🙂",
    "\u202e", "\u2028", "\ufeff", "GPU-\x7f", "+", "#", "$SYS", "../..",
    b"", b"\xff\x00", b"bytes",
    [], {}, [[]], [None] * 7, {"k": {"k": [1, {"k": None}]}}, [[[[[[[[[[1]]]]]]]]]],
    msgpack.ExtType(5, b"x"), msgpack.Timestamp(1, 0),
]
JUNK_KEYS: list[Any] = ["", "extra", "v", "gpus", "x" * 300, "\x00", 1, -1, b"key", None, True, 1.5]
SPLICE = ["\x00", "\n", "\r", "\t", "\x1b", "\x7f", ",", " ", "=", "\\", '"', "/", "+", "#", "$", "\u0085", "\u2028", "é", "🙂", "\ufeff"]
INT_EDGES = [0, 1, -1, 2**63 - 1, 2**63, -(2**63), -(2**63) - 1, 2**64 - 1, 2**64, 10**30, -(10**30)]
NODE_TOPIC_TWISTS: list[Callable[[str], str]] = [
    lambda t: t.replace("/v1/", "/v2/"),
    lambda t: t + "/extra",
    lambda t: t.rsplit("/", 1)[0],
    lambda t: t.rsplit("/", 1)[0] + "/stored",
    lambda t: t.rsplit("/", 1)[0] + "/events",
    lambda t: t.rsplit("/", 1)[0] + "/state",
    lambda t: t.replace("gpufleet/v1/", "gpufleet/v1/other-", 1),
    lambda t: t.replace("gpufleet/v1/", "gpufleet/v1/+/", 1),
    lambda t: t.replace("/", "//", 2),
    lambda t: "/" + t,
    lambda t: t.replace("gpufleet", "$share/g/gpufleet"),
    lambda t: t[: len(t) // 2],
    lambda t: "",
    lambda t: t.upper(),
    lambda t: t.replace("/", "\x00", 1),
    lambda t: "gpufleet/v1/" + "a" * 70 + "/n/telemetry",
    lambda t: "gpufleet/v1/c\u00e9/n/telemetry",
]


def junk(rng: random.Random) -> Any:
    return copy.deepcopy(rng.choice(JUNK))  # later changes must not alter the JUNK list itself


def _slots(obj: Any, out: list[tuple[Any, Any]]) -> list[tuple[Any, Any]]:
    """Every (container, key) in the tree, containers first."""
    if isinstance(obj, dict):
        for key, value in obj.items():
            out.append((obj, key))
            _slots(value, out)
    elif isinstance(obj, list):
        for index, value in enumerate(obj):
            out.append((obj, index))
            _slots(value, out)
    return out


def _twist_string(rng: random.Random, value: str) -> str:
    choice = rng.randrange(4)
    if choice == 0:
        at = rng.randrange(len(value) + 1)
        return value[:at] + rng.choice(SPLICE) + value[at:]
    if choice == 1:
        return value * rng.choice([2, 20, 200])
    if choice == 2:
        return value[: rng.randrange(len(value) + 1)]
    return "".join(rng.choice(SPLICE) if rng.random() < 0.3 else c for c in value)


def _twist_value(rng: random.Random, value: Any) -> Any:
    if isinstance(value, bool) or value is None:
        return junk(rng)
    if isinstance(value, int):
        return rng.choice(
            [value + 1, value - 1, -value, value * 2**32, float(value), str(value), rng.choice(INT_EDGES), True]
        )
    if isinstance(value, str):
        return rng.choice([_twist_string(rng, value), value.encode(), [value], None])
    if isinstance(value, list):
        return rng.choice([tuple(value), {str(i): v for i, v in enumerate(value)}, value[: len(value) // 2], value * 3, []])
    if isinstance(value, dict):
        return rng.choice([list(value.items()), list(value), {}])
    return junk(rng)


def mutate(rng: random.Random, message: dict[str, Any]) -> dict[str, Any]:
    """One to three random changes, in place."""
    for _ in range(rng.choice([1, 1, 1, 2, 3])):
        slots = _slots(message, [])
        if not slots:
            break
        parent, key = rng.choice(slots)
        op = rng.randrange(7)
        if op == 0:
            parent[key] = junk(rng)
        elif op == 1:
            parent[key] = _twist_value(rng, parent[key])
        elif op == 2:
            del parent[key]
        elif op == 3 and isinstance(parent, dict):
            parent[rng.choice(JUNK_KEYS)] = junk(rng)
        elif op == 3:
            parent.insert(rng.randrange(len(parent) + 1), copy.deepcopy(rng.choice(parent)) if rng.random() < 0.5 else junk(rng))
        elif op == 4 and isinstance(parent, dict) and "t1" in parent:
            parent[rng.choice(["t0", "t1"])] = NOW + rng.choice([wire.MAX_FUTURE_MS + 1, -wire.MAX_PAST_MS - 1, 0, 1, -1])
        elif op == 5:
            copy_of = copy.deepcopy(parent[key])
            parent[key] = [copy_of] * rng.choice([2, 300]) if rng.random() < 0.2 else copy_of
        else:
            parent[key] = _twist_value(rng, parent[key])
    return message


def pack(message: Any) -> bytes | None:
    try:
        return msgpack.packb(message, use_bin_type=True)
    except (OverflowError, TypeError, ValueError):  # ints beyond 64 bits: not sendable at all
        return None


def run_mutants(checked: Checked, base: dict[str, Any], kind: str, seed: int, count: int) -> None:
    rng = random.Random(seed)
    base_topic = topic_of(base, kind)
    base_bytes = msgpack.packb(base, use_bin_type=True)
    checked(base_topic, base_bytes)  # the unmutated message: must pass the invariants too
    sent = 1
    while sent < count:
        message = mutate(rng, msgpack.unpackb(base_bytes, raw=False, strict_map_key=False))
        payload = pack(message)
        if payload is None:
            continue
        topic = rng.choice(NODE_TOPIC_TWISTS)(base_topic) if rng.random() < 0.1 else base_topic
        checked(topic, payload)
        sent += 1


# ----------------------------------------------------------------------------------- tests

# No shrinking: a failure already prints the exact topic and payload to replay, and shrinking a
# batch of mutants takes minutes. No example database: every run explores afresh.
FUZZ = settings(
    deadline=None, database=None, phases=[Phase.explicit, Phase.generate], report_multiple_bugs=False,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def test_valid_messages_of_every_kind_are_accepted() -> None:
    """The generators make valid messages: otherwise the mutants would test only the first check."""
    checked = Checked()

    @settings(FUZZ, max_examples=200)
    @given(telemetry_messages(), event_messages(), state_messages())
    def run(telemetry: dict[str, Any], event: dict[str, Any], state: dict[str, Any]) -> None:
        for message, kind in ((telemetry, "telemetry"), (event, "events"), (state, "state")):
            lines, rejection = checked.pipeline.handle(topic_of(message, kind), msgpack.packb(message), NOW)
            if kind == "telemetry" and rejection is None:
                v2 = zlib.compress(msgpack.packb(as_v2(message)))
                assert checked.pipeline.handle(topic_of(message, kind), v2, NOW)[0] == lines
            if rejection is not None and not (kind == "telemetry" and rejection.reason == "bad_value"):
                raise AssertionError(f"{kind} rejected: {rejection}\n{message}")

    run()
    # Negative energy or huge values legitimately fail attribution; most must pass.
    assert checked.pipeline.counters.accepted >= 0.9 * checked.pipeline.counters.received


def test_mutated_telemetry_never_escapes_and_is_counted_once() -> None:
    checked = Checked()

    @settings(FUZZ, max_examples=TELEMETRY_EXAMPLES)
    @given(telemetry_messages(), st.integers(0, 2**32 - 1))
    def run(base: dict[str, Any], seed: int) -> None:
        # Both versions: 2 is what agents send, 1 what an upgraded collector still reads from spools.
        run_mutants(checked, as_v2(base) if seed % 2 else base, "telemetry", seed, TELEMETRY_MUTANTS)

    run()
    assert checked.messages >= TELEMETRY_EXAMPLES * TELEMETRY_MUTANTS
    assert checked.accepted > 0


def test_mutated_events_never_escape_and_are_counted_once() -> None:
    checked = Checked()

    @settings(FUZZ, max_examples=EVENT_EXAMPLES)
    @given(event_messages(), st.integers(0, 2**32 - 1))
    def run(base: dict[str, Any], seed: int) -> None:
        run_mutants(checked, base, "events", seed, EVENT_MUTANTS)

    run()
    assert checked.messages >= EVENT_EXAMPLES * EVENT_MUTANTS


def test_mutated_states_never_escape_and_are_counted_once() -> None:
    checked = Checked()

    @settings(FUZZ, max_examples=STATE_EXAMPLES)
    @given(state_messages(), st.integers(0, 2**32 - 1))
    def run(base: dict[str, Any], seed: int) -> None:
        run_mutants(checked, base, "state", seed, STATE_MUTANTS)

    run()
    assert checked.messages >= STATE_EXAMPLES * STATE_MUTANTS


def _byte_mutant(rng: random.Random, valid: list[bytes]) -> bytes:
    data = bytearray(rng.choice(valid))
    op = rng.randrange(6)
    if op == 0 and data:  # flip bits
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
    elif op == 1 and data:  # overwrite bytes with msgpack type markers
        for _ in range(rng.randint(1, 3)):
            data[rng.randrange(len(data))] = rng.choice([0xC0, 0xC1, 0xC2, 0xC3, 0xC4, 0xC7, 0xCF, 0xD3, 0xD9, 0xDB, 0xDC, 0xDD, 0xDE, 0xDF, 0xFF, 0x7F, 0x80, 0x90, 0xA0])
    elif op == 2:  # truncate
        del data[rng.randrange(len(data) + 1) :]
    elif op == 3:  # splice two payloads
        other = rng.choice(valid)
        data = data[: rng.randrange(len(data) + 1)] + other[rng.randrange(len(other) + 1) :]
    elif op == 4:  # random bytes, sometimes after a map header
        data = bytearray(rng.choice([b"", b"\x89", b"\xde\xff\xff", b"\xdf\x7f\xff\xff\xff"])) + rng.randbytes(rng.randrange(200))
    else:  # duplicate a chunk
        at = rng.randrange(len(data) + 1)
        data[at:at] = data[: rng.randrange(len(data) + 1)]
    return bytes(data)


def test_raw_and_bit_flipped_bytes_never_escape() -> None:
    checked = Checked()

    @settings(FUZZ, max_examples=BYTES_EXAMPLES)
    @given(telemetry_messages(), event_messages(), state_messages(), st.integers(0, 2**32 - 1))
    def run(telemetry: dict[str, Any], event: dict[str, Any], state: dict[str, Any], seed: int) -> None:
        rng = random.Random(seed)
        kinds = [(telemetry, "telemetry"), (event, "events"), (state, "state")]
        valid = [msgpack.packb(message) for message, _ in kinds]
        valid.append(zlib.compress(msgpack.packb(as_v2(telemetry))))  # what agents send: inflated first
        for _ in range(BYTES_MUTANTS):
            message, kind = rng.choice(kinds)
            checked(topic_of(message, kind), _byte_mutant(rng, valid))

    run()
    assert checked.messages >= BYTES_EXAMPLES * BYTES_MUTANTS


def test_hypothesis_byte_strings_never_escape() -> None:
    checked = Checked()
    topics = [f"gpufleet/v1/c1/n1/{kind}" for kind in ("telemetry", "events", "state")]

    @settings(FUZZ, max_examples=BINARY_EXAMPLES)
    @given(st.sampled_from(topics), st.binary(max_size=300))
    def run(topic: str, payload: bytes) -> None:
        checked(topic, payload)

    run()
    assert checked.messages >= BINARY_EXAMPLES


def test_the_run_is_at_least_a_hundred_thousand_messages() -> None:
    planned = (
        TELEMETRY_EXAMPLES * TELEMETRY_MUTANTS + EVENT_EXAMPLES * EVENT_MUTANTS + STATE_EXAMPLES * STATE_MUTANTS
        + BYTES_EXAMPLES * BYTES_MUTANTS + BINARY_EXAMPLES
    )
    assert planned >= MINIMUM_TOTAL  # each test above asserts it ran its share
