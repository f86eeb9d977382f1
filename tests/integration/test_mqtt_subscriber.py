"""The collector's own MQTT v5 subscriber (gpufleet.mqtt.MqttSubscriber) against a real Mosquitto:
order and bytes kept, acknowledgements that really release the broker's in-flight window, a frozen
or vanished broker noticed, a refused subscription and a taken-over session named."""

from __future__ import annotations

import asyncio
import getpass
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from gpufleet import localstack
from gpufleet.mqtt import BrokerAddress, MqttError, MqttLink, MqttSubscriber, Received


async def publish_all(broker: BrokerAddress, topic: str, payloads: list[bytes]) -> None:
    async with MqttLink(broker, f"pub-{topic.replace('/', '-')}") as link:
        for payload in payloads:
            await link.publish(topic, payload)


async def take(messages, count: int, timeout_s: float = 10.0) -> list[Received]:
    out = []
    async with asyncio.timeout(timeout_s):
        async for message in messages:
            out.append(message)
            if len(out) == count:
                return out
    return out


async def nothing_more(messages, wait_s: float = 0.7) -> bool:
    """True if no message arrives within wait_s."""
    try:
        async with asyncio.timeout(wait_s):
            await anext(messages)
    except TimeoutError:
        return True
    return False


def test_messages_arrive_in_order_with_their_bytes(mosquitto: localstack.Mosquitto, unique_topic_prefix: str) -> None:
    broker, topic = BrokerAddress.parse(mosquitto.url), f"{unique_topic_prefix}/t"
    # sizes around read-buffer edges, and one of 300 kB that spans many socket reads
    payloads = [os.urandom(size) for size in (0, 1, 127, 128, 16_383, 16_384, 65_536, 300_000)] * 3

    async def scenario() -> list[Received]:
        async with MqttSubscriber(broker, f"sub-{unique_topic_prefix.replace('/', '-')}") as sub:
            await sub.subscribe(f"$share/g/{topic}")
            messages = sub.messages()
            await publish_all(broker, topic, payloads)
            received = await take(messages, len(payloads))
            for message in received:
                sub.ack(message)
            return received

    received = asyncio.run(scenario())
    assert [m.payload for m in received] == payloads
    assert {m.topic for m in received} == {topic}
    assert all(m.qos == 1 and m.mid > 0 for m in received)


def test_unacknowledged_messages_hold_the_broker_back_until_acknowledged(
    mosquitto: localstack.Mosquitto, unique_topic_prefix: str
) -> None:
    """Receive Maximum 5: the broker sends 5 and waits for PUBACKs; once they leave, the rest come."""
    broker, topic = BrokerAddress.parse(mosquitto.url), f"{unique_topic_prefix}/t"
    payloads = [str(i).encode() for i in range(12)]

    async def scenario() -> tuple[list[bytes], bool, list[bytes]]:
        async with MqttSubscriber(broker, f"sub-{unique_topic_prefix.replace('/', '-')}", receive_maximum=5) as sub:
            await sub.subscribe(topic)
            await publish_all(broker, topic, payloads)
            first = await take(sub.messages(), 5)
            # a new iterator each time: a timeout that cancels one ends it (nothing is lost)
            held_back = await nothing_more(sub.messages())
            for message in first:
                sub.ack(message)
            rest = await take(sub.messages(), 7)
            for message in rest:
                sub.ack(message)
        return [m.payload for m in first], held_back, [m.payload for m in rest]

    first, held_back, rest = asyncio.run(scenario())
    assert first == payloads[:5]
    assert held_back
    assert rest == payloads[5:]


def test_a_stopped_broker_ends_the_messages_with_an_error(tmp_path: Path) -> None:
    broker_process = localstack.Mosquitto(tmp_path).start()
    broker = BrokerAddress.parse(broker_process.url)

    async def scenario() -> str:
        async with MqttSubscriber(broker, "sub-stopped") as sub:
            await sub.subscribe("t/#")
            messages = sub.messages()
            broker_process.stop()
            with pytest.raises(MqttError) as caught:
                await take(messages, 1)
            return str(caught.value)

    try:
        assert "connection lost" in asyncio.run(scenario())
    finally:
        broker_process.stop()


def test_a_frozen_broker_is_noticed_by_keep_alive(tmp_path: Path) -> None:
    """A broker that stops answering but keeps its socket open (a half-open connection)."""
    broker_process = localstack.Mosquitto(tmp_path).start()
    broker = BrokerAddress.parse(broker_process.url)

    async def scenario() -> tuple[str, float]:
        async with MqttSubscriber(broker, "sub-frozen", keepalive_s=2) as sub:
            await sub.subscribe("t/#")
            messages = sub.messages()
            os.kill(broker_process.pid, signal.SIGSTOP)
            started = time.monotonic()
            try:
                with pytest.raises(MqttError) as caught:
                    await take(messages, 1, timeout_s=20)
            finally:
                os.kill(broker_process.pid, signal.SIGCONT)
            return str(caught.value), time.monotonic() - started

    try:
        message, waited_s = asyncio.run(scenario())
    finally:
        broker_process.stop()
    assert "did not answer" in message
    assert waited_s < 6  # noticed within 1.5 keep-alives plus a ping period


def test_a_second_connection_with_the_same_id_ends_the_first(
    mosquitto: localstack.Mosquitto, unique_topic_prefix: str
) -> None:
    broker, client_id = BrokerAddress.parse(mosquitto.url), f"sub-{unique_topic_prefix.replace('/', '-')}"

    async def scenario() -> str:
        async with MqttSubscriber(broker, client_id) as first:
            await first.subscribe(f"{unique_topic_prefix}/#")
            messages = first.messages()
            async with MqttSubscriber(broker, client_id):
                with pytest.raises(MqttError) as caught:
                    await take(messages, 1)
            return str(caught.value)

    # MQTT 5 says DISCONNECT 0x8E Session taken over; Mosquitto 2.0.11 just closes the socket
    message = asyncio.run(scenario())
    assert "0x8E Session taken over" in message or "connection lost: closed by the broker" in message


def test_a_refused_connection_names_the_reason(tmp_path: Path) -> None:
    """A broker that lets no anonymous client in answers CONNACK 0x87 (or 0x86): said in words.
    Started by hand, as localstack's readiness probe would itself be refused."""
    port = localstack.free_port()
    conf = tmp_path / "refusing.conf"
    conf.write_text(f"user {getpass.getuser()}\nlistener {port} 127.0.0.1\nallow_anonymous false\n")
    process = subprocess.Popen(["mosquitto", "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    async def scenario() -> str:
        for _ in range(100):  # until it listens: at most 10 s
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.close()
                break
            except OSError:
                await asyncio.sleep(0.1)
        with pytest.raises(MqttError) as caught:
            async with MqttSubscriber(BrokerAddress("127.0.0.1", port, False), "sub-refused"):
                pass
        return str(caught.value)

    try:
        message = asyncio.run(scenario())
    finally:
        process.terminate()
        process.wait(10)
    assert "refused the connection: 0x87 Not authorized" in message or "0x86 Bad User Name or Password" in message


def test_qos0_publishes_reach_other_clients(mosquitto: localstack.Mosquitto, unique_topic_prefix: str) -> None:
    broker, topic = BrokerAddress.parse(mosquitto.url), f"{unique_topic_prefix}/stored"

    async def scenario() -> bytes:
        async with MqttLink(broker, f"listener-{unique_topic_prefix.replace('/', '-')}") as listener:
            await listener.subscribe(topic)
            async with MqttSubscriber(broker, f"sub-{unique_topic_prefix.replace('/', '-')}") as sub:
                await sub.publish(topic, b"seq 1..8")
                with pytest.raises(ValueError, match="QoS 0 only"):
                    await sub.publish(topic, b"x", qos=1)
            async with asyncio.timeout(10):
                async for message in listener.messages():
                    return message.payload
        return b""

    assert asyncio.run(scenario()) == b"seq 1..8"
