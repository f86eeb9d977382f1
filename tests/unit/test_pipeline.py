"""The collector core: messages in, lines out, every drop counted by reason."""

from gpufleet.collector.buffer import WriteBuffer
from gpufleet.collector.pipeline import Pipeline
from gpufleet import wire

NOW = 1_767_225_600_000


def telemetry(node="n1", gpus=2) -> bytes:
    return wire.encode_telemetry(
        wire.TelemetryWindow(
            "c1", node, 1, NOW - 1000, NOW, ("power_w", "mystery_field"),
            tuple(wire.GpuWindow(i, f"GPU-{i}", "T4", (70000, 5)) for i in range(gpus)),
        )
    )


def test_telemetry_becomes_one_line_per_gpu_and_unknown_fields_are_counted():
    pipeline = Pipeline()
    lines, rejection = pipeline.handle("gpufleet/v1/c1/n1/telemetry", telemetry(), NOW)
    assert rejection is None and len(lines) == 2
    assert "mystery_field" not in lines[0]
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
    batch = buffer.peek(2)
    buffer.extend(["c", "d", "e"])  # pushes out a, b while they are in flight
    assert buffer.dropped == 2
    buffer.commit(len(batch))
    assert buffer.peek(10) == ["c", "d", "e"]
