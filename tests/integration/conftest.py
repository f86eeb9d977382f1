"""Fixtures for end-to-end tests: the real `gpufleet collector` command as a subprocess."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from gpufleet import localstack


class CollectorProcess:
    """`gpufleet collector` run as operators run it; its log is kept for failure messages."""

    def __init__(self, args: list[str], log_path: Path, env: dict[str, str]) -> None:
        self.log_path = log_path
        self._log = log_path.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gpufleet.cli", "collector", *args], stdout=self._log, stderr=subprocess.STDOUT, env=env
        )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for_log(self, text: str, timeout_s: float = 20.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if text in self.log():
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError(f"collector never logged {text!r}:\n{self.log()[-3000:]}")

    def stop(self, timeout_s: float = 60.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout_s)
        finally:
            self._log.close()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._log.close()


@pytest.fixture
def start_collector(
    tmp_path: Path, mosquitto: localstack.Mosquitto, influxdb: localstack.InfluxDB, bucket: str, cluster_name: str
) -> Iterator[Callable[..., CollectorProcess]]:
    """Start a collector on this test's bucket; its shared-subscription group is unique to the test."""
    started: list[CollectorProcess] = []
    env = {**os.environ, "GPUFLEET_INFLUX_TOKEN": "test-token"}

    def start(name: str = "a", *extra: str) -> CollectorProcess:
        args = [
            "--broker", mosquitto.url, "--influx-url", influxdb.url, "--bucket", bucket,
            "--group", f"g{cluster_name}", "--client-id", f"collector-{cluster_name}-{name}", *extra,
        ]
        process = CollectorProcess(args, tmp_path / f"collector-{name}.log", env)
        started.append(process)
        process.wait_for_log("subscribed to")
        return process

    yield start
    for process in started:
        process.kill()


def wait_until(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
