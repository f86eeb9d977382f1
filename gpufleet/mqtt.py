"""The only module that speaks MQTT: broker URLs, our own message type, and two connection types.

MqttLink wraps aiomqtt (agents, tools, tests). MqttSubscriber is the collector's lean subscriber
on our own framing (gpufleet/mqttcodec.py), for the thousands of messages a second it reads.

Everything is MQTT v5 at QoS 1. `publish` returns only once the broker acknowledged (PUBACK), which
is what lets `gpufleet simulate` exit 0 only when every window it published was accepted.
"""

from __future__ import annotations

import asyncio
import contextvars
import ssl
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from . import mqttcodec

QOS_AT_LEAST_ONCE = 1
# A node's window costs the collector ~0.3 ms (8 GPUs): 32 of them are ~10 ms of work at a time.
MESSAGES_PER_LOOP_VISIT = 32
MqttError = aiomqtt.MqttError  # re-exported so that callers need not import aiomqtt


class PublishRefused(aiomqtt.MqttError):
    """The broker answered PUBACK with a failure reason (MQTT v5 3.4.2.1), e.g. 0x87 Not authorized:
    the message was not taken. A configuration error (certificate, ACL), not a network one."""


# The packet id of the publish this task is doing: set by paho's publish, which aiomqtt calls
# synchronously inside `publish` before its first await, in the caller's context.
_publishing_mid: contextvars.ContextVar[int] = contextvars.ContextVar("gpufleet_publishing_mid", default=-1)


class _Client(aiomqtt.Client):
    """aiomqtt 2.x treats every PUBACK as success; this one remembers the refused ones."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.refused: dict[int, ReasonCode] = {}
        paho_publish = self._client.publish

        def publish(*p_args: Any, **p_kwargs: Any) -> Any:
            info = paho_publish(*p_args, **p_kwargs)
            _publishing_mid.set(info.mid)
            return info

        self._client.publish = publish  # type: ignore[method-assign]

    def _on_publish(self, client: Any, userdata: Any, mid: int, reason_code: ReasonCode, properties: Any) -> None:
        if reason_code.is_failure:
            self.refused[mid] = reason_code
        super()._on_publish(client, userdata, mid, reason_code, properties)

    def _on_message(self, client: Any, userdata: Any, message: Any) -> None:
        # Our Received straight into aiomqtt's queue, instead of aiomqtt's Message: that one builds
        # and checks a Topic object per message, which a collector pays thousands of times a second.
        # paho calls this on the event loop's thread (aiomqtt drives its socket from the loop).
        payload = message.payload
        received = Received(message.topic, payload if isinstance(payload, bytes) else bytes(payload), message.mid, message.qos)
        try:
            self._queue.put_nowait(received)
        except asyncio.QueueFull:
            self._logger.warning("Message queue is full. Discarding message.")


@dataclass(frozen=True, slots=True)
class BrokerAddress:
    host: str
    port: int
    tls: bool

    @classmethod
    def parse(cls, url: str) -> BrokerAddress:
        """`mqtt://HOST:PORT` or `mqtts://HOST:PORT` (ports default to 1883 / 8883)."""
        parts = urlsplit(url)
        if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname or parts.path not in ("", "/"):
            raise ValueError(f"broker must look like mqtt://HOST:PORT or mqtts://HOST:PORT, not {url!r}")
        tls = parts.scheme == "mqtts"
        try:
            port = parts.port or (8883 if tls else 1883)
        except ValueError:
            raise ValueError(f"broker port in {url!r} is not a number from 1 to 65535") from None
        return cls(parts.hostname, port, tls)

    def __str__(self) -> str:
        return f"{'mqtts' if self.tls else 'mqtt'}://{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class TlsFiles:
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None

    def context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=self.ca_file)
        if self.cert_file:
            context.load_cert_chain(self.cert_file, self.key_file)
        return context


@dataclass(frozen=True, slots=True)
class Received:
    topic: str
    payload: bytes
    mid: int = 0  # packet id, for `MqttSubscriber.ack`, which acknowledges by hand
    qos: int = 0


@dataclass(frozen=True, slots=True)
class LastWill:
    topic: str
    payload: bytes


class MqttLink:
    """One MQTT v5 connection. `async with MqttLink(...) as link:`; reusable, not re-entrant."""

    def __init__(
        self,
        broker: BrokerAddress,
        client_id: str,
        *,
        will: LastWill | None = None,
        tls: TlsFiles | None = None,
        keepalive_s: int = 30,
        session_expiry_s: int = 0,
        ack_timeout_s: float = 30.0,
    ) -> None:
        self.broker = broker
        self._ack_timeout_s = ack_timeout_s
        properties = Properties(PacketTypes.CONNECT)
        # A non-zero expiry keeps a subscriber's session (and its queued QoS 1 messages) at the
        # broker across a reconnect; agents use 0.
        properties.SessionExpiryInterval = session_expiry_s
        # How many unacknowledged QoS 1 messages the broker may send us at once (MQTT v5 3.1.2.11.3).
        properties.ReceiveMaximum = 65535
        self._client = _Client(
            broker.host,
            broker.port,
            identifier=client_id,
            protocol=aiomqtt.ProtocolVersion.V5,
            will=aiomqtt.Will(will.topic, will.payload, QOS_AT_LEAST_ONCE, retain=True) if will else None,
            keepalive=keepalive_s,
            clean_start=session_expiry_s == 0,
            properties=properties,
            tls_context=(tls or TlsFiles()).context() if broker.tls else None,
            timeout=ack_timeout_s,
        )

    async def __aenter__(self) -> MqttLink:
        await self._client.__aenter__()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._client.__aexit__(exc_type, exc, tb)

    async def publish(self, topic: str, payload: bytes, *, retain: bool = False, qos: int = QOS_AT_LEAST_ONCE) -> None:
        """Publish, by default at QoS 1, waiting for the broker's PUBACK; PublishRefused if it says no."""
        await self._client.publish(topic, payload, qos=qos, retain=retain, timeout=self._ack_timeout_s)
        refused = self._client.refused.pop(_publishing_mid.get(), None)
        if refused is not None:
            raise PublishRefused(f"broker refused the message on {topic}: {refused}")

    async def subscribe(self, topic_filter: str) -> None:
        await self._client.subscribe(topic_filter, qos=QOS_AT_LEAST_ONCE)

    async def messages(self) -> AsyncIterator[Received]:
        """Messages as they arrive; raises MqttError when the connection drops (never hangs)."""
        queue = self._client._queue  # noqa: SLF001
        async for message in self._client.messages:  # waits for one, or for the connection to drop
            yield message
            # Those already queued behind it are taken at once: aiomqtt's iterator makes a task
            # and an asyncio.wait for every message, which under load costs more than the message.
            while not queue.empty():
                yield queue.get_nowait()


class MqttSubscriber:
    """The collector's connection: MQTT v5, QoS 1 in with acknowledgements by hand, QoS 0 out.

    `async with MqttSubscriber(...) as link:` then `subscribe`, `messages()`, `ack` (PUBACK once the
    data is stored; paho would send it on receipt), `publish`. Its own framing (gpufleet/mqttcodec.py) instead of paho's:
    paho's read and acknowledge path cost a collector more CPU than decoding the telemetry did.
    Here each socket read is split into packets in one pass and the PUBACKs of a round of stored
    batches leave in one write. A clean session (what the collector wants: see collector/service.py).
    """

    def __init__(
        self,
        broker: BrokerAddress,
        client_id: str,
        *,
        tls: TlsFiles | None = None,
        keepalive_s: int = 30,
        ack_timeout_s: float = 30.0,
        receive_maximum: int = 65535,
        max_queued: int = 20_000,
    ) -> None:
        self.broker = broker
        self._client_id = client_id
        # Unacknowledged QoS 1 messages the broker may send at once (3.1.2.11.3): with PUBACKs held
        # until the data is stored, the collector's pipeline depth.
        self._receive_maximum = receive_maximum
        self._tls = tls
        self._keepalive_s = keepalive_s
        self._ack_timeout_s = ack_timeout_s
        self._max_queued = max_queued  # messages read but not yet taken: past it, stop reading
        self._protocol: _SubscriberProtocol | None = None
        self._pinger: asyncio.Task[None] | None = None

    async def __aenter__(self) -> MqttSubscriber:
        if self._protocol is not None:
            raise MqttError("MqttSubscriber is reusable but not re-entrant")
        loop = asyncio.get_running_loop()
        ssl_context = (self._tls or TlsFiles()).context() if self.broker.tls else None
        protocol = _SubscriberProtocol(self._max_queued)
        try:
            await asyncio.wait_for(
                loop.create_connection(lambda: protocol, self.broker.host, self.broker.port, ssl=ssl_context),
                self._ack_timeout_s,
            )
        except (OSError, TimeoutError) as exc:
            raise MqttError(f"cannot connect to {self.broker}: {exc or 'timed out'}") from None
        self._protocol = protocol
        try:
            protocol.send(mqttcodec.connect(
                self._client_id, keepalive_s=self._keepalive_s, clean_start=True, session_expiry_s=0, receive_maximum=self._receive_maximum
            ))
            packet = await self._answer(mqttcodec.CONNACK, "CONNACK")
            reason = mqttcodec.read_connack(packet).reason
            if reason >= 0x80:
                raise MqttError(f"{self.broker} refused the connection: {mqttcodec.reason_text(reason)}")
        except BaseException:
            protocol.close()
            self._protocol = None
            raise
        self._pinger = asyncio.create_task(self._keep_alive(protocol), name=f"mqtt[{self._client_id}].keepalive")
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        protocol, self._protocol = self._protocol, None
        if self._pinger is not None:
            self._pinger.cancel()
            self._pinger = None
        if protocol is not None:
            protocol.leave()

    async def subscribe(self, topic_filter: str) -> None:
        protocol = self._connected()
        protocol.send(mqttcodec.subscribe(1, topic_filter, QOS_AT_LEAST_ONCE))
        _, reasons = mqttcodec.read_suback(await self._answer(mqttcodec.SUBACK, "SUBACK"))
        if not reasons or reasons[0] >= 0x80:
            code = reasons[0] if reasons else 0x80
            raise MqttError(f"{self.broker} refused the subscription to {topic_filter}: {mqttcodec.reason_text(code)}")

    async def messages(self) -> AsyncIterator[Received]:
        """Messages as they arrive; raises MqttError when the connection drops (never hangs)."""
        protocol = self._connected()
        while True:
            # A few milliseconds of the collector's work between visits to the event loop, so
            # that a finished write is followed by the next at once (InfluxDB idles meanwhile)
            # and timers are not held up behind a deep queue.
            for _ in range(min(len(protocol.queue), MESSAGES_PER_LOOP_VISIT)):
                yield protocol.take()
            if protocol.queue:
                await asyncio.sleep(0)
            else:
                await protocol.wait_for_messages()

    def ack(self, message: Received) -> None:
        """PUBACK: the broker may forget the message. Sent with the others of this loop turn."""
        if message.qos > 0 and self._protocol is not None:
            self._protocol.send_soon(mqttcodec.puback(message.mid))

    async def publish(self, topic: str, payload: bytes, *, retain: bool = False, qos: int = 0) -> None:
        """QoS 0 only (the collector's stored confirmations): nothing comes back to wait for."""
        if qos != 0:
            raise ValueError("MqttSubscriber publishes at QoS 0 only; use MqttLink to wait for PUBACK")
        self._connected().send(mqttcodec.publish(topic, payload, retain=retain))

    def _connected(self) -> _SubscriberProtocol:
        if self._protocol is None:
            raise MqttError(f"not connected to {self.broker}")
        return self._protocol

    async def _answer(self, kind: int, name: str) -> mqttcodec.Packet:
        try:
            return await asyncio.wait_for(self._connected().control_answer(kind), self._ack_timeout_s)
        except TimeoutError:
            raise MqttError(f"{self.broker} sent no {name} within {self._ack_timeout_s:.0f} s") from None

    async def _keep_alive(self, protocol: _SubscriberProtocol) -> None:
        """PINGREQ every half keep-alive (3.1.2.10); a broker silent for a whole keep-alive after
        one is taken for gone, as a half-open TCP connection would otherwise never tell."""
        while True:
            await asyncio.sleep(self._keepalive_s / 2)
            try:
                protocol.send(mqttcodec.PINGREQ_PACKET)
            except MqttError:
                return  # the connection is gone: messages() says so
            if protocol.silent_for() > self._keepalive_s * 1.5:
                protocol.fail(MqttError(f"{self.broker} did not answer for {protocol.silent_for():.0f} s"))
                return


class _SubscriberProtocol(asyncio.Protocol):
    """The socket side of MqttSubscriber, run by the event loop: packets in, bytes out."""

    def __init__(self, max_queued: int) -> None:
        self.queue: deque[Received] = deque()
        self._reader = mqttcodec.PacketReader()
        self._max_queued = max_queued
        self._transport: asyncio.Transport | None = None
        self._paused = False
        self._failure: MqttError | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._control: dict[int, asyncio.Future[mqttcodec.Packet]] = {}  # CONNACK/SUBACK awaited
        self._outgoing: list[bytes] = []
        self._last_heard = time.monotonic()

    # asyncio.Protocol callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self._last_heard = time.monotonic()
        try:
            packets = self._reader.feed(data)
            for packet in packets:
                if packet.kind == mqttcodec.PUBLISH:
                    publish = mqttcodec.read_publish(packet)
                    self.queue.append(Received(publish.topic, publish.payload, publish.packet_id, publish.qos))
                else:
                    self._control_packet(packet)
        except mqttcodec.ProtocolViolation as exc:
            self.fail(MqttError(f"protocol violation by the broker: {exc}"))
            return
        if self.queue:
            self._wake()
            if len(self.queue) >= self._max_queued and not self._paused and self._transport is not None:
                self._paused = True  # the consumer is behind: let TCP hold the broker back
                self._transport.pause_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.fail(MqttError(f"connection lost: {exc or 'closed by the broker'}"))

    # for MqttSubscriber

    def take(self) -> Received:
        message = self.queue.popleft()
        if self._paused and len(self.queue) <= self._max_queued // 2 and self._transport is not None:
            self._paused = False
            self._transport.resume_reading()
        return message

    async def wait_for_messages(self) -> None:
        if self._failure is not None:
            raise self._failure
        self._waiter = asyncio.get_running_loop().create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None

    async def control_answer(self, kind: int) -> mqttcodec.Packet:
        if self._failure is not None:
            raise self._failure
        future = self._control[kind] = asyncio.get_running_loop().create_future()
        try:
            return await future
        finally:
            self._control.pop(kind, None)

    def send(self, data: bytes) -> None:
        if self._transport is None or self._transport.is_closing():
            raise self._failure or MqttError("connection closed")
        self._transport.write(data)

    def send_soon(self, data: bytes) -> None:
        """Queue bytes to leave with everything else queued in this turn of the event loop."""
        if not self._outgoing:
            asyncio.get_running_loop().call_soon(self._send_queued)
        self._outgoing.append(data)

    def silent_for(self) -> float:
        return 0.0 if self._paused else time.monotonic() - self._last_heard

    def fail(self, failure: MqttError) -> None:
        if self._failure is None:
            self._failure = failure
        self._wake()
        for future in self._control.values():
            if not future.done():
                future.set_exception(self._failure)
        self.close()

    def leave(self) -> None:
        """DISCONNECT (normal) if the connection still stands, then close it."""
        if self._failure is None and self._transport is not None and not self._transport.is_closing():
            self._send_queued()  # acknowledgements of this turn first
            self._transport.write(mqttcodec.DISCONNECT_PACKET)
        self.close()

    def close(self) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.close()

    # inside

    def _send_queued(self) -> None:
        data, self._outgoing = b"".join(self._outgoing), []
        if self._transport is not None and not self._transport.is_closing():
            self._transport.write(data)
        # else: the connection is gone, and with it what these acknowledged; the broker resends

    def _control_packet(self, packet: mqttcodec.Packet) -> None:
        if packet.kind == mqttcodec.DISCONNECT:
            reason = mqttcodec.read_disconnect(packet)
            raise mqttcodec.ProtocolViolation(f"broker disconnected us: {mqttcodec.reason_text(reason)}")
        if packet.kind == mqttcodec.PINGRESP:
            return
        future = self._control.get(packet.kind)
        if future is None or future.done():
            raise mqttcodec.ProtocolViolation(f"unexpected packet of type {packet.kind}")
        future.set_result(packet)

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)
