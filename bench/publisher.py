"""A lean QoS 1 publisher for the benchmarks: the agents' stand-in, costing this box little CPU.

In production every agent publishes from its own node; here one process publishes for hundreds of
nodes on the same two cores as the broker, the collector and InfluxDB, so what it spends is taken
from them. paho (under MqttLink) spends ~150 µs per message; this writes PUBLISH packets framed by
gpufleet.mqttcodec, as many unacknowledged as the broker's Receive Maximum allows, and reads the
PUBACKs in bulk. Still MQTT v5 at QoS 1: a message refused by the broker stops the benchmark.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

from gpufleet import mqttcodec
from gpufleet.mqtt import BrokerAddress


class _Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self._packets = mqttcodec.PacketReader()
        self._ready: list[mqttcodec.Packet] = []

    async def packets(self) -> list[mqttcodec.Packet]:
        """Every packet complete so far, waiting for at least one."""
        while not self._ready:
            data = await self.reader.read(1 << 16)
            if not data:
                raise SystemExit("the broker closed the publisher's connection")
            self._ready = self._packets.feed(data)
        ready, self._ready = self._ready, []
        return ready


async def publish_in_order(broker: BrokerAddress, client_id: str, messages: Iterable[tuple[str, bytes]]) -> int:
    """Publish (topic, payload) pairs at QoS 1 in this order; returns how many, all acknowledged."""
    connection = _Connection(*await asyncio.open_connection(broker.host, broker.port))
    connection.writer.write(
        mqttcodec.connect(client_id, keepalive_s=60, clean_start=True, session_expiry_s=0, receive_maximum=65535)
    )
    (connack,) = await connection.packets()
    answer = mqttcodec.read_connack(connack)
    if connack.kind != mqttcodec.CONNACK or answer.reason >= 0x80:
        raise SystemExit(f"the broker refused publisher {client_id}: {mqttcodec.reason_text(answer.reason)}")
    in_flight, sent = 0, 0
    for topic, payload in messages:
        while in_flight >= answer.receive_maximum:
            in_flight -= await _acknowledged(connection)
        sent += 1
        connection.writer.write(mqttcodec.publish(topic, payload, qos=1, packet_id=sent % 0xFFFF + 1))
        in_flight += 1
    while in_flight:
        in_flight -= await _acknowledged(connection)
    connection.writer.write(mqttcodec.DISCONNECT_PACKET)
    connection.writer.close()
    await connection.writer.wait_closed()
    return sent


async def _acknowledged(connection: _Connection) -> int:
    acknowledged = 0
    for packet in await connection.packets():
        if packet.kind != mqttcodec.PUBACK:
            raise SystemExit(f"the broker sent a packet of type {packet.kind} to a publisher")
        _, reason = mqttcodec.read_puback(packet)
        if reason >= 0x80:
            raise SystemExit(f"the broker refused a benchmark message: {mqttcodec.reason_text(reason)}")
        acknowledged += 1
    return acknowledged


async def publish_nodes(broker: BrokerAddress, per_node: list[list[tuple[str, bytes]]], clients: int, name: str) -> None:
    """Every node's messages from `clients` connections, each with every clients-th node: window 0
    of its nodes, then window 1, ... (a node's windows stay in order, as its agent sends them)."""

    async def publisher(i: int) -> None:
        nodes = per_node[i::clients]
        in_order = [node[k] for k in range(max(map(len, nodes))) for node in nodes if k < len(node)]
        await publish_in_order(broker, f"{name}-publisher-{i}", in_order)

    await asyncio.gather(*(publisher(i) for i in range(min(clients, len(per_node)))))
