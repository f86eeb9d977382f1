"""The only module that talks to aiomqtt: broker URLs, one connection type, our own message type.

Everything is MQTT v5 at QoS 1. `publish` returns only once the broker acknowledged (PUBACK), which
is what lets `gpufleet simulate` exit 0 only when every window it published was accepted.
"""

from __future__ import annotations

import asyncio
import contextvars
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

QOS_AT_LEAST_ONCE = 1
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
    mid: int = 0  # packet id, for `MqttLink.ack` when the link acknowledges by hand
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
        manual_ack: bool = False,
    ) -> None:
        self.broker = broker
        self._ack_timeout_s = ack_timeout_s
        properties = Properties(PacketTypes.CONNECT)
        # A non-zero expiry keeps a subscriber's session (and its queued QoS 1 messages) at the
        # broker across a reconnect; agents use 0, collectors a longer one.
        properties.SessionExpiryInterval = session_expiry_s
        # How many unacknowledged QoS 1 messages the broker may send us at once (MQTT v5 3.1.2.11.3):
        # with acknowledgements held until data is durable, this is the collector's pipeline depth.
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
        if manual_ack:
            # aiomqtt has no switch for it; paho acknowledges on receipt unless told otherwise.
            self._client._client.manual_ack_set(True)  # noqa: SLF001

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

    def ack(self, message: Received) -> None:
        """PUBACK a message received with manual_ack: the broker may now forget it. Runs on the
        event loop thread, which is where aiomqtt drives paho's socket, so no lock is needed."""
        if message.qos > 0:
            self._client._client.ack(message.mid, message.qos)  # noqa: SLF001
