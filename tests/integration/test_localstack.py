"""The local services behave like the production ones the product is written against."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiomqtt
import pytest
from influxdb_client import InfluxDBClient, WritePrecision
from influxdb_client.client.write_api import SYNCHRONOUS
from influxdb_client.rest import ApiException

from gpufleet.localstack import InfluxDB, InfluxQueryError, Mosquitto

T0_NS = 1_700_000_000_000_000_000
RECEIVE_TIMEOUT_S = 5.0


def _mqtt(broker: Mosquitto, identifier: str | None = None) -> aiomqtt.Client:
    return aiomqtt.Client(
        broker.host, broker.port, protocol=aiomqtt.ProtocolVersion.V5, identifier=identifier
    )


async def _first_message(client: aiomqtt.Client) -> aiomqtt.Message:
    async with asyncio.timeout(RECEIVE_TIMEOUT_S):
        async for message in client.messages:
            return message
    raise AssertionError("message iterator ended without a message")


def _write(
    influx: InfluxDB, bucket: str, record: str | list[str], precision: str = WritePrecision.NS
) -> None:
    with InfluxDBClient(url=influx.url, token="any", org="gpufleet") as client:
        client.write_api(write_options=SYNCHRONOUS).write(
            bucket=bucket, record=record, write_precision=precision
        )


def test_broker_round_trips_qos1_over_mqtt5(mosquitto: Mosquitto, unique_topic_prefix: str) -> None:
    topic = f"{unique_topic_prefix}/roundtrip"

    async def scenario() -> aiomqtt.Message:
        async with _mqtt(mosquitto) as client:
            await client.subscribe(topic, qos=1)
            await client.publish(topic, b"\x01\x02payload", qos=1)
            return await _first_message(client)

    message = asyncio.run(scenario())
    assert mosquitto.url == f"mqtt://127.0.0.1:{mosquitto.port}"
    assert (message.topic.value, message.payload, message.qos) == (topic, b"\x01\x02payload", 1)


def test_v2_write_through_nginx_is_queryable(influxdb: InfluxDB, bucket: str) -> None:
    _write(influxdb, bucket, [f"m,t=a f=1.5 {T0_NS}", f"m,t=b f=2.5 {T0_NS + 1}"])

    rows = influxdb.rows('SELECT last(f) FROM m GROUP BY t', db=bucket)

    assert rows == [
        {"t": "a", "time": T0_NS, "last": 1.5},
        {"t": "b", "time": T0_NS + 1, "last": 2.5},
    ]


def test_v2_precision_is_mapped_to_v1(influxdb: InfluxDB, bucket: str) -> None:
    _write(influxdb, bucket, "m f=1i 1700000000", precision=WritePrecision.S)
    _write(influxdb, bucket, "m f=2i 1700000001000", precision=WritePrecision.MS)
    _write(influxdb, bucket, "m f=3i 1700000002000000", precision=WritePrecision.US)

    times = [row["time"] for row in influxdb.rows("SELECT f FROM m", db=bucket)]

    assert times == [T0_NS, T0_NS + 1_000_000_000, T0_NS + 2_000_000_000]


def test_malformed_line_is_a_400_from_the_client(influxdb: InfluxDB, bucket: str) -> None:
    with pytest.raises(ApiException) as caught:
        _write(influxdb, bucket, "m,t=a f=")

    assert caught.value.status == 400
    assert "unable to parse" in caught.value.body


def test_bad_influxql_raises(influxdb: InfluxDB, bucket: str) -> None:
    with pytest.raises(InfluxQueryError, match="SELEKT"):
        influxdb.query("SELEKT 1", db=bucket)


def test_150k_values_for_one_tag_key_are_accepted(influxdb: InfluxDB, bucket: str) -> None:
    # The 1.x default, max-values-per-tag = 100000, would reject the batch crossing it.
    total, batch = 150_000, 50_000
    for start in range(0, total, batch):
        lines = [f"card,v=v{i:06d} f=1i {T0_NS}" for i in range(start, start + batch)]
        _write(influxdb, bucket, lines)

    assert influxdb.rows("SELECT count(f) FROM card", db=bucket)[0]["count"] == total


def test_broker_restart_keeps_port_and_retained_message(tmp_path: Path) -> None:
    topic = "test/retained"

    async def publish(broker: Mosquitto) -> None:
        async with _mqtt(broker) as client:
            await client.publish(topic, b"kept", qos=1, retain=True)

    async def read_retained(broker: Mosquitto) -> aiomqtt.Message:
        async with _mqtt(broker) as client:
            await client.subscribe(topic, qos=1)
            return await _first_message(client)

    with Mosquitto(tmp_path) as broker:
        asyncio.run(publish(broker))
        port = broker.port
        broker.restart()
        message = asyncio.run(read_retained(broker))

    assert broker.port == port
    assert (message.payload, message.retain) == (b"kept", True)


def test_influxdb_restart_keeps_ports_and_data(tmp_path: Path) -> None:
    with InfluxDB(tmp_path) as influx:
        influx.create_database("db")
        _write(influx, "db", f"m f=7i {T0_NS}")
        urls = (influx.url, influx.direct_url)
        influx.restart()

        assert (influx.url, influx.direct_url) == urls
        assert influx.rows("SELECT f FROM m", db="db") == [{"time": T0_NS, "f": 7}]
