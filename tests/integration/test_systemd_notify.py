"""The agent and the collector talk to systemd as their Type=notify units expect: READY=1 once
running, then WATCHDOG=1 while their loops make progress (a real AF_UNIX datagram socket stands
in for systemd's $NOTIFY_SOCKET)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

from gpufleet import localstack


def notifications(command: list[str], tmp_path: Path, seconds: float = 3.0) -> list[str]:
    path = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        sock.settimeout(0.2)
        env = {**os.environ, "NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "1000000", "GPUFLEET_INFLUX_TOKEN": "t"}
        process = subprocess.Popen(command, env=env, stderr=subprocess.DEVNULL)
        received, deadline = [], time.monotonic() + seconds
        try:
            while time.monotonic() < deadline:
                try:
                    received.append(sock.recv(256).decode())
                except TimeoutError:
                    pass
        finally:
            process.terminate()
            assert process.wait(30) == 0
    return received


def test_agent_says_ready_then_feeds_the_watchdog(mosquitto, tmp_path):
    command = [
        sys.executable, "-m", "gpufleet.cli", "agent", "--simulate", "1", "--interval", "0.2",
        "--broker", mosquitto.url, "--state-dir", str(tmp_path / "state"),
    ]
    received = notifications(command, tmp_path)
    assert received[0] == "READY=1"
    assert received.count("WATCHDOG=1") >= 4  # every 0.5 s (half of WATCHDOG_USEC)


def test_collector_says_ready_then_feeds_the_watchdog(mosquitto, influxdb, bucket, tmp_path):
    command = localstack.collector_argv(mosquitto.url, influxdb.url, bucket, f"notify-{bucket}")
    received = notifications(command, tmp_path)
    assert received[0] == "READY=1"
    assert received.count("WATCHDOG=1") >= 4
