"""The only module that talks to aiomqtt: broker URLs, one connection type, our own message type.

Everything is MQTT v5 at QoS 1. `publish` returns only once the broker acknowledged (PUBACK), which
is what lets `gpufleet simulate` exit 0 only when every window it published was accepted.
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from types import TracebackType
from urllib.parse import urlsplit

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

QOS_AT_LEAST_ONCE = 1
MqttError = aiomqtt.MqttError  # re-exported so that callers need not import aiomqtt


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
        self._client = aiomqtt.Client(
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

    async def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        """Publish at QoS 1 and wait for the broker's PUBACK."""
        await self._client.publish(topic, payload, qos=QOS_AT_LEAST_ONCE, retain=retain, timeout=self._ack_timeout_s)

    async def subscribe(self, topic_filter: str) -> None:
        await self._client.subscribe(topic_filter, qos=QOS_AT_LEAST_ONCE)

    async def messages(self) -> AsyncIterator[Received]:
        """Messages as they arrive; raises MqttError when the connection drops (never hangs)."""
        async for message in self._client.messages:
            payload = message.payload
            payload = payload if isinstance(payload, bytes) else str(payload or "").encode()
            yield Received(message.topic.value, payload, message.mid, message.qos)

    def ack(self, message: Received) -> None:
        """PUBACK a message received with manual_ack: the broker may now forget it. Runs on the
        event loop thread, which is where aiomqtt drives paho's socket, so no lock is needed."""
        if message.qos > 0:
            self._client._client.ack(message.mid, message.qos)  # noqa: SLF001
