"""MQTT v5 packets as bytes: the few a subscriber sends and reads. Pure: no sockets, no clock.

Why our own and not paho's: a collector reads thousands of PUBLISH packets a second. paho reads
each one with several `recv` calls, builds a Properties object per message and sends each PUBACK
with its own system call; here a whole socket read is split into packets in one pass, and
acknowledgements are written together (gpufleet/mqtt.py's MqttSubscriber does the I/O).

Section numbers are those of OASIS MQTT Version 5.0. Only what a QoS 1 subscriber needs is here:
CONNECT/CONNACK, SUBSCRIBE/SUBACK, PUBLISH (QoS 0 and 1, both ways), PUBACK, PINGREQ/PINGRESP,
DISCONNECT. Anything else the broker sends is a protocol violation for such a client.
"""

from __future__ import annotations

from typing import NamedTuple

# Packet types, the high nibble of the first byte (2.1.2)
CONNECT, CONNACK, PUBLISH, PUBACK, SUBSCRIBE, SUBACK, PINGREQ, PINGRESP, DISCONNECT = 1, 2, 3, 4, 8, 9, 12, 13, 14

PINGREQ_PACKET = b"\xc0\x00"  # 3.12
DISCONNECT_PACKET = b"\xe0\x00"  # 3.14.2.1: no reason code means 0x00, normal disconnection
MAX_REMAINING_LENGTH = 268_435_455  # 1.5.5: four bytes of variable byte integer

# Property identifiers used here (2.2.2.2)
_SESSION_EXPIRY_INTERVAL = 0x11
_RECEIVE_MAXIMUM = 0x21

# Reason codes a broker answers with (2.4), for error messages people can read
REASONS = {
    0x80: "Unspecified error", 0x81: "Malformed Packet", 0x82: "Protocol Error",
    0x83: "Implementation specific error", 0x84: "Unsupported Protocol Version",
    0x85: "Client Identifier not valid", 0x86: "Bad User Name or Password", 0x87: "Not authorized",
    0x88: "Server unavailable", 0x89: "Server busy", 0x8A: "Banned", 0x8B: "Server shutting down",
    0x8C: "Bad authentication method", 0x8D: "Keep Alive timeout", 0x8E: "Session taken over",
    0x8F: "Topic Filter invalid", 0x90: "Topic Name invalid", 0x91: "Packet Identifier in use",
    0x93: "Receive Maximum exceeded", 0x94: "Topic Alias invalid", 0x95: "Packet too large",
    0x97: "Quota exceeded", 0x98: "Administrative action", 0x99: "Payload format invalid",
    0x9A: "Retain not supported", 0x9B: "QoS not supported", 0x9C: "Use another server",
    0x9D: "Server moved", 0x9E: "Shared Subscriptions not supported", 0x9F: "Connection rate exceeded",
    0xA0: "Maximum connect time", 0xA1: "Subscription Identifiers not supported",
    0xA2: "Wildcard Subscriptions not supported",
}


class ProtocolViolation(ValueError):
    """The byte stream is not MQTT v5 as this client speaks it: the connection must be closed."""


def reason_text(code: int) -> str:
    return f"0x{code:02X} {REASONS.get(code, 'Unknown reason')}"


# ------------------------------------------------------------------------------------- encoding


def variable_int(value: int) -> bytes:
    """1.5.5 Variable Byte Integer: 7 bits per byte, low first, high bit = more follows."""
    if not 0 <= value <= MAX_REMAINING_LENGTH:
        raise ValueError(f"{value} does not fit a variable byte integer")
    out = bytearray()
    while True:
        value, digit = divmod(value, 128)
        out.append(digit | (0x80 if value else 0))
        if not value:
            return bytes(out)


def utf8_string(text: str) -> bytes:
    """1.5.4 UTF-8 Encoded String: two-byte length, then the bytes."""
    data = text.encode()
    if len(data) > 0xFFFF:
        raise ValueError(f"string of {len(data)} bytes is longer than MQTT allows (65,535)")
    return len(data).to_bytes(2, "big") + data


def _packet(first_byte: int, body: bytes) -> bytes:
    return bytes([first_byte]) + variable_int(len(body)) + body


def connect(client_id: str, *, keepalive_s: int, clean_start: bool, session_expiry_s: int, receive_maximum: int) -> bytes:
    """3.1 CONNECT without will, user name or password (client certificates authenticate us)."""
    properties = (
        bytes([_SESSION_EXPIRY_INTERVAL]) + session_expiry_s.to_bytes(4, "big")
        + bytes([_RECEIVE_MAXIMUM]) + receive_maximum.to_bytes(2, "big")
    )
    flags = 0x02 if clean_start else 0x00
    variable_header = utf8_string("MQTT") + bytes([5, flags]) + keepalive_s.to_bytes(2, "big")
    return _packet(CONNECT << 4, variable_header + variable_int(len(properties)) + properties + utf8_string(client_id))


def subscribe(packet_id: int, topic_filter: str, qos: int) -> bytes:
    """3.8 SUBSCRIBE to one filter; options byte = maximum QoS (no local, retain flags off)."""
    return _packet((SUBSCRIBE << 4) | 0x02, packet_id.to_bytes(2, "big") + b"\x00" + utf8_string(topic_filter) + bytes([qos]))


def publish(topic: str, payload: bytes, *, qos: int = 0, packet_id: int = 0, retain: bool = False) -> bytes:
    """3.3 PUBLISH at QoS 0 or 1, no properties."""
    if qos not in (0, 1):
        raise ValueError(f"QoS {qos} is not spoken here (0 or 1)")
    first = (PUBLISH << 4) | (qos << 1) | (1 if retain else 0)
    packet_id_bytes = packet_id.to_bytes(2, "big") if qos else b""
    return _packet(first, utf8_string(topic) + packet_id_bytes + b"\x00" + payload)


def puback(packet_id: int) -> bytes:
    """3.4 PUBACK, reason 0x00 Success (omitted, 3.4.2.1)."""
    return b"\x40\x02" + packet_id.to_bytes(2, "big")


# ------------------------------------------------------------------------------------- decoding


class Publish(NamedTuple):
    topic: str
    payload: bytes
    packet_id: int  # 0 at QoS 0
    qos: int
    retain: bool


class Packet(NamedTuple):
    kind: int  # CONNACK, PUBLISH, ...
    flags: int  # the low nibble of the first byte
    body: bytes


class PacketReader:
    """Splits a byte stream into packets. `feed` what the socket gave; it returns the packets
    completed by it and keeps a partial one for the next read."""

    def __init__(self) -> None:
        self._pending = b""

    def feed(self, data: bytes) -> list[Packet]:
        buffer = self._pending + data if self._pending else data
        packets = []
        position, size = 0, len(buffer)
        while position < size:
            header = _fixed_header(buffer, position, size)
            if header is None:
                break  # the rest of this packet is still on its way
            body_start, body_length = header
            end = body_start + body_length
            if end > size:
                break
            first = buffer[position]
            packets.append(Packet(first >> 4, first & 0x0F, buffer[body_start:end]))
            position = end
        self._pending = buffer[position:]
        return packets

    @property
    def pending_bytes(self) -> int:
        return len(self._pending)


def _fixed_header(buffer: bytes, position: int, size: int) -> tuple[int, int] | None:
    """(where the body starts, its length) of the packet at `position`; None if incomplete."""
    length, multiplier = 0, 1
    for index in range(position + 1, min(position + 5, size)):
        digit = buffer[index]
        length += (digit & 0x7F) * multiplier
        if not digit & 0x80:
            return index + 1, length
        multiplier *= 128
    if size - position >= 5:
        raise ProtocolViolation("remaining length longer than four bytes (1.5.5)")
    return None


def read_publish(packet: Packet) -> Publish:
    """3.3: topic, packet identifier if QoS > 0, properties (skipped), payload."""
    body, flags = packet.body, packet.flags
    qos = (flags >> 1) & 0x03
    if qos > 1:
        raise ProtocolViolation(f"PUBLISH at QoS {qos}; this client subscribed at QoS 1 at most")
    topic_end = 2 + int.from_bytes(body[0:2], "big")
    if topic_end + (2 if qos else 0) >= len(body):  # a properties length byte must follow too
        raise ProtocolViolation("PUBLISH shorter than its topic and packet identifier")
    try:
        topic = body[2:topic_end].decode()
    except UnicodeDecodeError:
        raise ProtocolViolation("PUBLISH topic is not UTF-8") from None
    position = topic_end
    packet_id = 0
    if qos:
        packet_id = int.from_bytes(body[position : position + 2], "big")
        position += 2
    properties_length, position = read_variable_int(body, position)
    position += properties_length
    if position > len(body):
        raise ProtocolViolation("PUBLISH shorter than its properties")
    return Publish(topic, body[position:], packet_id, qos, bool(flags & 0x01))


def read_variable_int(data: bytes, position: int) -> tuple[int, int]:
    """(value, position after it)."""
    value, multiplier = 0, 1
    for index in range(position, min(position + 4, len(data))):
        digit = data[index]
        value += (digit & 0x7F) * multiplier
        if not digit & 0x80:
            return value, index + 1
        multiplier *= 128
    raise ProtocolViolation("truncated or over-long variable byte integer")


class Connack(NamedTuple):
    session_present: bool
    reason: int
    receive_maximum: int  # QoS 1 publishes the broker takes unacknowledged at once (3.2.2.3.3)


def read_connack(packet: Packet) -> Connack:
    """3.2: session present, reason code, and the broker's Receive Maximum (65,535 if not sent)."""
    if len(packet.body) < 2:
        raise ProtocolViolation("CONNACK shorter than 2 bytes")
    properties = read_properties(packet.body, 2) if len(packet.body) > 2 else {}
    return Connack(bool(packet.body[0] & 0x01), packet.body[1], properties.get(_RECEIVE_MAXIMUM, 65535))


# 2.2.2.2: how long each property's value is, by identifier
_BYTE_PROPERTIES = {0x01, 0x17, 0x19, 0x24, 0x25, 0x28, 0x29, 0x2A}
_TWO_BYTE_PROPERTIES = {0x13, 0x21, 0x22, 0x23}
_FOUR_BYTE_PROPERTIES = {0x02, 0x11, 0x18, 0x27}
_STRING_PROPERTIES = {0x03, 0x08, 0x09, 0x12, 0x15, 0x16, 0x1A, 0x1C, 0x1F}  # UTF-8 strings and binary data
_VARIABLE_INT_PROPERTIES = {0x0B}
_USER_PROPERTY = 0x26  # a string pair, and the only property that may repeat


def read_properties(data: bytes, position: int) -> dict[int, int | bytes]:
    """The properties at `position` (length first): integers as int, strings as raw bytes; user
    properties are skipped (nothing here reads them)."""
    length, position = read_variable_int(data, position)
    end = position + length
    if end > len(data):
        raise ProtocolViolation("properties longer than their packet")
    found: dict[int, int | bytes] = {}
    while position < end:
        identifier = data[position]
        position += 1
        if identifier in _BYTE_PROPERTIES:
            found[identifier], position = data[position], position + 1
        elif identifier in _TWO_BYTE_PROPERTIES:
            found[identifier], position = int.from_bytes(data[position : position + 2], "big"), position + 2
        elif identifier in _FOUR_BYTE_PROPERTIES:
            found[identifier], position = int.from_bytes(data[position : position + 4], "big"), position + 4
        elif identifier in _VARIABLE_INT_PROPERTIES:
            found[identifier], position = read_variable_int(data, position)
        elif identifier in _STRING_PROPERTIES:
            size = int.from_bytes(data[position : position + 2], "big")
            found[identifier], position = data[position + 2 : position + 2 + size], position + 2 + size
        elif identifier == _USER_PROPERTY:
            for _ in range(2):
                position += 2 + int.from_bytes(data[position : position + 2], "big")
        else:
            raise ProtocolViolation(f"unknown property 0x{identifier:02X}")
    if position != end:
        raise ProtocolViolation("a property runs past the end of its properties")
    return found


def read_puback(packet: Packet) -> tuple[int, int]:
    """3.4: (packet identifier, reason code; 0x00 Success when omitted)."""
    if len(packet.body) < 2:
        raise ProtocolViolation("PUBACK shorter than 2 bytes")
    return int.from_bytes(packet.body[0:2], "big"), packet.body[2] if len(packet.body) > 2 else 0x00


def read_suback(packet: Packet) -> tuple[int, list[int]]:
    """3.9: (packet identifier, one reason code per filter)."""
    body = packet.body
    if len(body) < 3:
        raise ProtocolViolation("SUBACK shorter than 3 bytes")
    properties_length, position = read_variable_int(body, 2)
    return int.from_bytes(body[0:2], "big"), list(body[position + properties_length :])


def read_disconnect(packet: Packet) -> int:
    """3.14: the broker's reason code (0x00 when it sent none)."""
    return packet.body[0] if packet.body else 0x00
