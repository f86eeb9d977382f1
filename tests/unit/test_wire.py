"""The wire contract: exact topics, round trips, and one test per rejection reason."""

import msgpack
import pytest

from gpufleet import wire
from gpufleet.wire import GpuWindow, Holder, Rejected, TelemetryWindow

NOW = 1_767_225_600_000  # 2026-01-01T00:00:00Z in ms
TOPIC = wire.Topic("c1", "n1", "telemetry")


def window(**changes) -> TelemetryWindow:
    base = dict(
        cluster="c1",
        node="n1",
        seq=7,
        t0_ms=NOW - 10_000,
        t1_ms=NOW,
        fields=("power_w", "energy_j", "temp_gpu_c"),
        gpus=(
            GpuWindow(0, "GPU-abc", "NVIDIA H100 80GB HBM3", (312460, 3124600, 61), (Holder("slurm:1", 9500, 1 << 30),)),
            GpuWindow(1, "GPU-def", "NVIDIA H100 80GB HBM3", (70000, None, 35), (), ("slurm:1",)),
        ),
        workloads={"slurm:1": {"kind": "slurm_job", "job": "1", "account": "lab-a"}},
    )
    base.update(changes)
    return TelemetryWindow(**base)


def raw(**changes) -> dict:
    message = msgpack.unpackb(wire.encode_telemetry(window()))
    message.update(changes)
    return message


def decode(message: dict, topic: wire.Topic = TOPIC) -> TelemetryWindow:
    return wire.decode_telemetry(msgpack.packb(message), topic, NOW)


def reason(message: dict, topic: wire.Topic = TOPIC) -> str:
    with pytest.raises(Rejected) as caught:
        decode(message, topic)
    return caught.value.reason


def test_topics_are_the_documented_contract():
    assert wire.telemetry_topic("c1", "n1") == "gpufleet/v1/c1/n1/telemetry"
    assert wire.state_topic("c1", "n1") == "gpufleet/v1/c1/n1/state"
    assert wire.events_topic("c1", "n1") == "gpufleet/v1/c1/n1/events"
    assert wire.subscription("g") == "$share/g/gpufleet/v1/+/+/#"
    assert wire.parse_topic("gpufleet/v1/c1/n1/events") == wire.Topic("c1", "n1", "events")


def test_telemetry_round_trips_with_absent_values_kept_absent():
    decoded = wire.decode_telemetry(wire.encode_telemetry(window()), TOPIC, NOW)
    assert decoded == window()
    assert decoded.gpus[1].values[1] is None


def test_encoding_is_exact_bytes():
    small = window(fields=("power_w",), gpus=(GpuWindow(0, "GPU-a", "T4", (70000,)),), workloads={})
    assert wire.encode_telemetry(small) == (
        b"\x88\xa1v\x01\xa7cluster\xa2c1\xa4node\xa2n1\xa3seq\x07"
        b"\xa2t0\xcf\x00\x00\x01\x9b\x76\xda\x80\xf0"  # uint64 1767225590000
        b"\xa2t1\xcf\x00\x00\x01\x9b\x76\xda\xa8\x00"  # uint64 1767225600000
        b"\xa6fields\x91\xa7power_w"
        b"\xa4gpus\x91\x96\x00\xa5GPU-a\xa2T4\x91\xce\x00\x01\x11\x70\x90\x90"  # [0, uuid, model, [70000], [], []]
    )


def test_event_and_state_round_trip():
    event = wire.GpuEventMessage("c1", "n1", NOW, 3, "GPU-abc", "xid", 79, "fallen off the bus")
    assert wire.decode_event(wire.encode_event(event), wire.Topic("c1", "n1", "events"), NOW) == event
    will = wire.NodeState("c1", "n1", "offline", None)
    assert wire.decode_state(wire.encode_state(will), wire.Topic("c1", "n1", "state"), NOW) == will


@pytest.mark.parametrize(
    "topic",
    ["gpufleet/v1/c1/n1", "gpufleet/v2/c1/n1/telemetry", "gpufleet/v1/c1/n1/other", "x/v1/c1/n1/telemetry"],
)
def test_bad_topics(topic):
    with pytest.raises(Rejected) as caught:
        wire.parse_topic(topic)
    assert caught.value.reason == "bad_topic"


@pytest.mark.parametrize("name", ["a b", "a,b", "a=b", 'a"b', "ä", "x" * 65, "", "-lead", "a\nb"])
def test_hostile_names_are_refused(name):
    with pytest.raises(Rejected) as caught:
        wire.parse_topic(f"gpufleet/v1/{name}/n1/telemetry")
    assert caught.value.reason in ("bad_name", "bad_topic")


def test_not_msgpack_is_malformed():
    with pytest.raises(Rejected) as caught:
        wire.decode_telemetry(b"\xc1garbage", TOPIC, NOW)
    assert caught.value.reason == "malformed"
    with pytest.raises(Rejected) as caught:
        wire.decode_telemetry(msgpack.packb([1, 2]), TOPIC, NOW)
    assert caught.value.reason == "malformed"


def test_too_large():
    with pytest.raises(Rejected) as caught:
        wire.decode_telemetry(b"\x00" * (wire.MAX_MESSAGE_BYTES + 1), TOPIC, NOW)
    assert caught.value.reason == "too_large"


def test_wrong_version():
    assert reason(raw(v=2)) == "version"


def test_node_or_cluster_disagreeing_with_topic():
    assert reason(raw(node="n2")) == "topic_mismatch"
    assert reason(raw(cluster="c2")) == "topic_mismatch"


def test_schema_errors():
    assert reason(raw(seq="7")) == "schema"
    assert reason(raw(seq=True)) == "schema"
    assert reason(raw(t0=None)) == "schema"
    assert reason(raw(gpus=[[0, "GPU-a", "T4", [1, 2]]])) == "schema"  # 2 values for 3 fields
    assert reason(raw(gpus=[[999, "GPU-a", "T4", [1, 2, 3]]])) == "schema"
    assert reason(raw(fields=["power_w", "power_w", "x"])) == "schema"
    holder_of_unknown = [[0, "GPU-a", "T4", [1, 2, 3], [["slurm:404", None, None]]]]
    assert reason(raw(gpus=holder_of_unknown)) == "schema"
    owner_of_unknown = [[0, "GPU-a", "T4", [1, 2, 3], [], ["slurm:404"]]]
    assert reason(raw(gpus=owner_of_unknown)) == "schema"


def test_timestamps():
    assert reason(raw(t0=NOW, t1=NOW)) == "timestamp"
    assert reason(raw(t0=NOW + 10 * 60_000, t1=NOW + 11 * 60_000)) == "timestamp"
    assert reason(raw(t0=NOW - 8 * 86_400_000, t1=NOW - 8 * 86_400_000 + 1)) == "timestamp"


def test_limits():
    assert reason(raw(gpus=[[0, "GPU-a", "T4", [1, 2, 3]]] * (wire.MAX_GPUS + 1))) == "limits"
    assert reason(raw(fields=[f"f{i}" for i in range(wire.MAX_FIELDS + 1)])) == "limits"


def test_values_must_be_64_bit_integers():
    assert reason(raw(gpus=[[0, "GPU-a", "T4", [1.5, 2, 3]]])) == "bad_value"
    assert reason(raw(gpus=[[0, "GPU-a", "T4", [1 << 63, 2, 3]]])) == "bad_value"
    assert reason(raw(gpus=[[0, "GPU-a", "T4", ["1", 2, 3]]])) == "bad_value"


def test_hostile_model_and_uuid_are_refused():
    assert reason(raw(gpus=[[0, "GPU-a", "T4\nx=1", [1, 2, 3]]])) == "bad_name"
    assert reason(raw(gpus=[[0, "GPU a,b=c", "T4", [1, 2, 3]]])) == "bad_name"
    assert reason(raw(gpus=[[0, "GPU-a", "T" * 200, [1, 2, 3]]])) == "bad_name"


def test_hostile_identity_values_are_refused():
    workloads = {"slurm:1": {"account": "a\nb"}}
    assert reason(raw(workloads=workloads)) == "bad_name"
    assert reason(raw(workloads={"slurm:1": {"account": "x" * 10_000}})) == "bad_name"


def test_every_rejection_reason_is_documented_once():
    assert len(set(wire.REJECT_REASONS)) == len(wire.REJECT_REASONS)
