"""The wire contract: exact topics, round trips, and one test per rejection reason."""

import zlib

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
    """The version 2 map of window(), changed; decode() sends it uncompressed, which is also read."""
    message = msgpack.unpackb(zlib.decompress(wire.encode_telemetry(window())))
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
    assert wire.subscription("g", "c7") == "$share/g/gpufleet/v1/c7/+/#"
    assert wire.parse_topic("gpufleet/v1/c1/n1/events") == wire.Topic("c1", "n1", "events")


def test_telemetry_round_trips_with_absent_values_kept_absent():
    decoded = wire.decode_telemetry(wire.encode_telemetry(window()), TOPIC, NOW)
    assert decoded == window()
    assert decoded.gpus[1].values[1] is None


def test_encoding_is_exact_bytes():
    small = window(fields=("power_w",), gpus=(GpuWindow(0, "GPU-a", "T4", (70000,)),), workloads={})
    encoded = wire.encode_telemetry(small)
    assert encoded[:1] == b"x"  # zlib, RFC 1950
    assert zlib.decompress(encoded) == (
        b"\x8a\xa1v\x02\xa7cluster\xa2c1\xa4node\xa2n1\xa3seq\x07"
        b"\xa2t0\xcf\x00\x00\x01\x9b\x76\xda\x80\xf0"  # uint64 1767225590000
        b"\xa2t1\xcf\x00\x00\x01\x9b\x76\xda\xa8\x00"  # uint64 1767225600000
        b"\xa6fields\x91\x01"  # power_w is wire_id 1
        b"\xa6models\x91\xa2T4\xa9workloads\x90"
        b"\xa4gpus\x91\x96\x00\xa5GPU-a\x00\x91\xce\x00\x01\x11\x70\x90\x90"  # [0, uuid, model#0, [70000], [], []]
    )


def test_version_1_is_still_read():
    """Windows an older agent spooled before an upgrade: field names, workloads by key, no zlib."""
    v1 = {
        "v": 1, "cluster": "c1", "node": "n1", "seq": 7, "t0": NOW - 10_000, "t1": NOW,
        "fields": ["power_w", "energy_j", "temp_gpu_c"],
        "gpus": [
            [0, "GPU-abc", "NVIDIA H100 80GB HBM3", [312460, 3124600, 61], [["slurm:1", 9500, 1 << 30]], []],
            [1, "GPU-def", "NVIDIA H100 80GB HBM3", [70000, None, 35], [], ["slurm:1"]],
        ],
        "workloads": {"slurm:1": {"kind": "slurm_job", "job": "1", "account": "lab-a"}},
    }
    assert wire.decode_telemetry(msgpack.packb(v1), TOPIC, NOW) == window()


def test_unknown_field_ids_decode_as_placeholders():
    decoded = decode(raw(fields=[1, 4, 999]))
    assert decoded.fields == ("power_w", "energy_j", "wire_id_999")


def test_field_ids_are_unique_and_every_window_field_has_one():
    from gpufleet.catalogue import gpu_window_fields

    ids = [m.wire_id for m in gpu_window_fields()]
    assert None not in ids and len(set(ids)) == len(ids)
    # Given out for good: a renumbered field would be read as another by older collectors.
    assert {m.name: m.wire_id for m in gpu_window_fields()}["power_w"] == 1
    assert {m.name: m.wire_id for m in gpu_window_fields()}["nvlink_crc_errors"] == 40


def test_a_zlib_bomb_is_refused_without_inflating_it():
    bomb = zlib.compress(b"\x00" * (wire.MAX_MESSAGE_BYTES * 4), 9)
    assert len(bomb) < 10_000
    with pytest.raises(Rejected) as caught:
        wire.decode_telemetry(bomb, TOPIC, NOW)
    assert caught.value.reason == "too_large"


@pytest.mark.parametrize("payload", [b"x\x9c", b"x\x9cgarbage", zlib.compress(b"\x80") + b"tail"])
def test_broken_zlib_is_malformed(payload):
    with pytest.raises(Rejected) as caught:
        wire.decode_telemetry(payload, TOPIC, NOW)
    assert caught.value.reason == "malformed"


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
    assert reason(raw(v=3)) == "version"
    assert reason(raw(v=True)) == "version"


def test_node_or_cluster_disagreeing_with_topic():
    assert reason(raw(node="n2")) == "topic_mismatch"
    assert reason(raw(cluster="c2")) == "topic_mismatch"


def row(values=(1, 2, 3), *, index=0, uuid="GPU-a", model=0, holders=(), owners=()) -> list:
    """A version 2 GPU row for window()'s three fields."""
    return [index, uuid, model, list(values), list(holders), list(owners)]


def test_a_valid_row_passes():
    """The rows below differ from this one in one place each: each rejection is for that reason."""
    assert decode(raw(gpus=[row(holders=[0, 100, 1 << 20], owners=[0])])).gpus[0].holders[0].workload == "slurm:1"


def test_schema_errors():
    assert reason(raw(seq="7")) == "schema"
    assert reason(raw(seq=True)) == "schema"
    assert reason(raw(t0=None)) == "schema"
    assert reason(raw(gpus=[row(values=[1, 2])])) == "schema"  # 2 values for 3 fields
    assert reason(raw(gpus=[row(index=999)])) == "schema"
    assert reason(raw(gpus=[row()[:4]])) == "schema"  # no holders, no owners
    assert reason(raw(gpus=[row(model=1)])) == "schema"  # one model only
    assert reason(raw(fields=[1, 1, 5])) == "schema"
    assert reason(raw(fields=[1, 4, "temp_gpu_c"])) == "schema"
    assert reason(raw(gpus=[row(holders=[1, None, None])])) == "schema"  # workload# 1 of 1
    assert reason(raw(gpus=[row(owners=[1])])) == "schema"
    assert reason(raw(gpus=[row(owners=["slurm:1"])])) == "schema"  # a key, not a position
    assert reason(raw(workloads=[["slurm:1", {}], ["slurm:1", {}]])) == "schema"
    assert reason(raw(workloads=[["slurm:1"]])) == "schema"


def test_timestamps():
    assert reason(raw(t0=NOW, t1=NOW)) == "timestamp"
    assert reason(raw(t0=NOW + 10 * 60_000, t1=NOW + 11 * 60_000)) == "timestamp"
    assert reason(raw(t0=NOW - 8 * 86_400_000, t1=NOW - 8 * 86_400_000 + 1)) == "timestamp"


def test_limits():
    assert reason(raw(gpus=[row()] * (wire.MAX_GPUS + 1))) == "limits"
    assert reason(raw(fields=list(range(1, wire.MAX_FIELDS + 2)))) == "limits"
    assert reason(raw(gpus=[row(holders=[0, None])])) == "limits"  # not whole triples
    assert reason(raw(gpus=[row(owners=[0] * (wire.MAX_HOLDERS + 1))])) == "limits"
    assert reason(raw(workloads={"slurm:1": {}})) == "limits"  # a map: version 1's form


def test_values_must_be_64_bit_integers():
    assert reason(raw(gpus=[row(values=[1.5, 2, 3])])) == "bad_value"
    assert reason(raw(gpus=[row(values=[1 << 63, 2, 3])])) == "bad_value"
    assert reason(raw(gpus=[row(values=["1", 2, 3])])) == "bad_value"
    assert reason(raw(gpus=[row(holders=[0, 10_001, None])])) == "bad_value"
    assert reason(raw(gpus=[row(holders=[0, None, -1])])) == "bad_value"


def test_hostile_model_and_uuid_are_refused():
    assert reason(raw(models=["T4\nx=1"])) == "bad_name"
    assert reason(raw(models=["T" * 200])) == "bad_name"
    assert reason(raw(gpus=[row(uuid="GPU a,b=c")])) == "bad_name"


def test_hostile_identity_values_are_refused():
    assert reason(raw(workloads=[["slurm:1", {"account": "a\nb"}]])) == "bad_name"
    assert reason(raw(workloads=[["slurm:1", {"account": "x" * 10_000}]])) == "bad_name"
    assert reason(raw(workloads=[["slurm 1", {}]])) == "bad_name"


def test_every_rejection_reason_is_documented_once():
    assert len(set(wire.REJECT_REASONS)) == len(wire.REJECT_REASONS)


def test_a_cached_valid_identity_does_not_let_an_equal_value_of_another_type_through():
    decode(raw(workloads=[["slurm:1", {"uid": 1}]]))  # valid, and now remembered
    assert reason(raw(workloads=[["slurm:1", {"uid": True}]])) == "bad_value"
    assert reason(raw(workloads=[["slurm:1", {"uid": 1.0}]])) == "bad_value"


def test_a_cached_valid_uuid_is_still_checked_in_another_type():
    decode(raw(gpus=[row(uuid="GPU-1")]))
    assert reason(raw(gpus=[row(uuid=b"GPU-1")])) == "bad_name"


def test_a_cached_valid_model_is_still_checked_in_another_type():
    decode(raw(models=["T4"]))
    assert reason(raw(models=[b"T4"])) == "bad_name"


def test_a_cached_valid_identity_still_has_its_changes_checked():
    decode(raw(workloads=[["slurm:1", {"account": "a", "uid": 1}]]))  # valid, and now remembered
    assert reason(raw(workloads=[["slurm:1", {"account": "a\nb", "uid": 1}]])) == "bad_name"
    assert reason(raw(workloads=[["slurm:1", {"account": b"a", "uid": 1}]])) == "bad_value"
    assert reason(raw(workloads=[["slurm:1", {"account": "a", "uid": 1, "Bad-Key": 1}]])) == "bad_name"
    assert reason(raw(workloads=[["slurm:1", {"account": "a", "uid": [1]}]])) == "bad_value"
    assert decode(raw(workloads=[["slurm:1", {"account": "a", "uid": 1}]])).workloads == {"slurm:1": {"account": "a", "uid": 1}}


def test_a_topic_parsed_before_comes_back_the_same_and_a_bad_one_is_still_refused():
    assert wire.parse_topic("gpufleet/v1/c1/n1/telemetry") == wire.parse_topic("gpufleet/v1/c1/n1/telemetry")
    for _ in range(2):
        with pytest.raises(Rejected):
            wire.parse_topic("gpufleet/v1/c1/n 1/telemetry")


def test_stored_confirmations_carry_window_seqs_and_event_digests():
    event = wire.encode_event(wire.GpuEventMessage("c1", "n1", NOW, 3, "GPU-abc", "xid", 79, "fallen off the bus"))
    digest = wire.event_digest(event)
    assert digest == wire.event_digest(bytes(event)) and 0 <= digest < 1 << 64  # a resend: the same name
    assert digest != wire.event_digest(event.replace(b"xid", b"dbe"))
    assert wire.decode_stored(wire.encode_stored([3, 1], [digest])) == wire.Stored([1, 3], [digest])
    # without events the message is what collectors sent before events were confirmed
    assert wire.encode_stored([1]) == msgpack.packb({"v": 1, "seqs": [1]})
    assert wire.decode_stored(msgpack.packb({"v": 1, "seqs": [1]})) == wire.Stored([1], [])
    for bad in ([-1], [1.5], ["x"], "x"):
        with pytest.raises(Rejected, match="64-bit event digests"):
            wire.decode_stored(msgpack.packb({"v": 1, "seqs": [], "events": bad}))
