"""MQTT v5 framing (gpufleet/mqttcodec.py): literal bytes from the standard, and a stream cut anywhere."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gpufleet import mqttcodec
from gpufleet.mqttcodec import Packet, PacketReader, ProtocolViolation


@pytest.mark.parametrize(
    ("value", "encoded"),
    [  # the table of MQTT 5.0 section 1.5.5
        (0, b"\x00"), (127, b"\x7f"), (128, b"\x80\x01"), (16_383, b"\xff\x7f"), (16_384, b"\x80\x80\x01"),
        (2_097_151, b"\xff\xff\x7f"), (2_097_152, b"\x80\x80\x80\x01"), (268_435_455, b"\xff\xff\xff\x7f"),
    ],
)
def test_variable_byte_integers_are_those_of_the_standard(value: int, encoded: bytes) -> None:
    assert mqttcodec.variable_int(value) == encoded
    assert mqttcodec.read_variable_int(b"\xaa" + encoded, 1) == (value, 1 + len(encoded))


def test_a_variable_byte_integer_past_four_bytes_is_refused() -> None:
    with pytest.raises(ValueError, match="does not fit"):
        mqttcodec.variable_int(268_435_456)
    with pytest.raises(ProtocolViolation):
        mqttcodec.read_variable_int(b"\xff\xff\xff\xff\x01", 0)


def test_connect_is_byte_for_byte_mqtt_5() -> None:
    packet = mqttcodec.connect("c1", keepalive_s=30, clean_start=True, session_expiry_s=0, receive_maximum=65535)
    assert packet == (
        b"\x10\x17"  # CONNECT, remaining length 23
        b"\x00\x04MQTT\x05\x02\x00\x1e"  # protocol name, level 5, clean start, keep alive 30 s
        b"\x08\x11\x00\x00\x00\x00\x21\xff\xff"  # properties: session expiry 0, receive maximum 65535
        b"\x00\x02c1"  # client identifier
    )


def test_subscribe_puback_and_publish_bytes() -> None:
    assert mqttcodec.subscribe(1, "$share/g/t/#", 1) == b"\x82\x12\x00\x01\x00\x00\x0c$share/g/t/#\x01"
    assert mqttcodec.puback(0x1234) == b"\x40\x02\x12\x34"
    assert mqttcodec.publish("a/b", b"xy") == b"\x30\x08\x00\x03a/b\x00xy"
    assert mqttcodec.publish("a/b", b"xy", qos=1, packet_id=7, retain=True) == b"\x33\x0a\x00\x03a/b\x00\x07\x00xy"
    with pytest.raises(ValueError, match="QoS 2"):
        mqttcodec.publish("a/b", b"", qos=2)


def test_a_publish_with_properties_is_read_past_them() -> None:
    # QoS 1, packet id 9, properties: payload format indicator (0x01) = 1, message expiry (0x02) = 60
    body = b"\x00\x03a/b\x00\x09\x07\x01\x01\x02\x00\x00\x00\x3cpayload"
    publish = mqttcodec.read_publish(Packet(mqttcodec.PUBLISH, 0x02, body))
    assert publish == mqttcodec.Publish("a/b", b"payload", 9, 1, False)


@pytest.mark.parametrize(
    ("flags", "body", "message"),
    [
        (0x04, b"\x00\x01t\x00\x01\x00", "QoS 2"),
        (0x00, b"\x00\x02\xff\xfe\x00", "not UTF-8"),
        (0x02, b"\x00\x09short", "shorter"),
        (0x00, b"\x00\x01t\x10", "shorter"),  # 16 bytes of properties announced, none there
    ],
)
def test_a_malformed_publish_is_a_protocol_violation(flags: int, body: bytes, message: str) -> None:
    with pytest.raises(ProtocolViolation, match=message):
        mqttcodec.read_publish(Packet(mqttcodec.PUBLISH, flags, body))


def test_a_remaining_length_over_four_bytes_is_a_protocol_violation() -> None:
    with pytest.raises(ProtocolViolation, match="four bytes"):
        PacketReader().feed(b"\x30\xff\xff\xff\xff\x01")


def test_broker_answers_are_read() -> None:
    assert mqttcodec.read_connack(Packet(mqttcodec.CONNACK, 0, b"\x01\x87\x00")) == (True, 0x87, 65535)
    # Mosquitto's: receive maximum 20, maximum QoS 1, retain available, a user property, topic alias maximum 10
    body = b"\x00\x00\x12\x21\x00\x14\x24\x01\x25\x01\x26\x00\x01k\x00\x02vv\x22\x00\x0a"
    assert mqttcodec.read_connack(Packet(mqttcodec.CONNACK, 0, body)) == (False, 0x00, 20)
    assert mqttcodec.read_properties(b"\x08\x1f\x00\x02ok\x0b\x80\x01", 0) == {0x1F: b"ok", 0x0B: 128}
    with pytest.raises(ProtocolViolation, match="unknown property"):
        mqttcodec.read_properties(b"\x02\x7f\x00", 0)
    with pytest.raises(ProtocolViolation, match="past the end"):
        mqttcodec.read_properties(b"\x02\x11\x00\x00\x00\x00", 0)
    assert mqttcodec.read_puback(Packet(mqttcodec.PUBACK, 0, b"\x00\x07")) == (7, 0x00)
    assert mqttcodec.read_puback(Packet(mqttcodec.PUBACK, 0, b"\x00\x07\x87\x00")) == (7, 0x87)
    assert mqttcodec.read_suback(Packet(mqttcodec.SUBACK, 0, b"\x00\x01\x00\x01")) == (1, [0x01])
    assert mqttcodec.read_suback(Packet(mqttcodec.SUBACK, 0, b"\x00\x01\x03\x1f\x00\x00\x87")) == (1, [0x87])
    assert mqttcodec.read_disconnect(Packet(mqttcodec.DISCONNECT, 0, b"")) == 0x00
    assert mqttcodec.read_disconnect(Packet(mqttcodec.DISCONNECT, 0, b"\x8e\x00")) == 0x8E
    assert mqttcodec.reason_text(0x87) == "0x87 Not authorized"
    assert mqttcodec.reason_text(0xFE) == "0xFE Unknown reason"


messages = st.lists(
    st.tuples(st.text(min_size=1, max_size=40), st.binary(max_size=70_000), st.booleans(), st.integers(1, 0xFFFF)),
    min_size=1, max_size=6,
)


@given(messages, st.lists(st.integers(1, 9_000), max_size=30))
def test_a_stream_cut_anywhere_gives_back_every_publish(sent: list[tuple[str, bytes, bool, int]], cuts: list[int]) -> None:
    stream = b"".join(
        mqttcodec.publish(topic, payload, qos=1 if qos1 else 0, packet_id=packet_id if qos1 else 0)
        for topic, payload, qos1, packet_id in sent
    ) + mqttcodec.PINGREQ_PACKET
    reader, packets, position = PacketReader(), [], 0
    for cut in [*cuts, len(stream)]:
        packets += reader.feed(stream[position : position + cut])
        position += cut
    packets += reader.feed(stream[position:])
    assert reader.pending_bytes == 0
    assert [p.kind for p in packets] == [mqttcodec.PUBLISH] * len(sent) + [mqttcodec.PINGREQ]
    received = [mqttcodec.read_publish(p) for p in packets[:-1]]
    assert [(r.topic, r.payload, r.qos == 1, r.packet_id) for r in received] == [
        (topic, payload, qos1, packet_id if qos1 else 0) for topic, payload, qos1, packet_id in sent
    ]
