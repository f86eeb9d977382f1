"""A bug inside the collector's receive path stops the collector (to be restarted by systemd),
instead of leaving a process that feeds the watchdog while it receives nothing."""

import asyncio
import logging
import time

import paho.mqtt.publish as publish
from gpufleet import wire
from gpufleet.collector.influx import InfluxWriter
from gpufleet.collector.service import Collector, CollectorOptions
from gpufleet.mqtt import BrokerAddress


def test_an_unexpected_error_in_receive_ends_the_run_with_the_failure(mosquitto, influxdb, bucket, caplog):
    def broken_rules():
        raise RuntimeError("a bug in the tenant rules")

    async def scenario() -> Collector:
        writer = InfluxWriter(influxdb.url, "", "org", bucket)
        options = CollectorOptions(client_id="failing", group="failing", flush_interval_s=0.2, drain_timeout_s=5)
        collector = Collector(BrokerAddress.parse(mosquitto.url), writer, options, tenant_rules=broken_rules)
        stop = asyncio.Event()
        run = asyncio.create_task(collector.run(stop))
        await asyncio.wait_for(collector.subscribed.wait(), 10)
        now = int(time.time() * 1000)
        gpu = wire.GpuWindow(0, "GPU-0", "T4", (70000,))
        payload = wire.encode_telemetry(wire.TelemetryWindow("c1", "n1", 0, now - 1000, now, ("power_w",), (gpu,)))
        port = int(mosquitto.url.rsplit(":", 1)[1])
        await asyncio.to_thread(publish.single, wire.telemetry_topic("c1", "n1"), payload, qos=1, hostname="127.0.0.1", port=port)
        await asyncio.wait_for(run, 20)  # ends by itself: nobody set `stop`
        writer.close()
        return collector

    with caplog.at_level(logging.CRITICAL, logger="gpufleet.collector.service"):
        collector = asyncio.run(scenario())
    assert isinstance(collector.failure, RuntimeError)
    assert "collector.receive stopped" in caplog.text
