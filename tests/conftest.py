"""Shared fixtures: one real Mosquitto and one InfluxDB (+ nginx v2 front) per test session.

Tests share the services, so each one gets its own database (`bucket`) and cluster name
(`cluster_name`, `unique_topic_prefix`) and never sees another test's data.
Everything under tests/integration/ is marked `services`: `pytest -m "not services"` runs
the unit tests alone.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

from gpufleet import localstack

_INTEGRATION = Path(__file__).parent / "integration"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if _INTEGRATION in item.path.parents:
            item.add_marker(pytest.mark.services)


def _require_binaries() -> None:
    # Fail, never skip: a green run without the integration tests would hide a broken setup.
    missing = localstack.missing_binaries()
    if missing:
        pytest.fail(f"not installed: {', '.join(missing)}; run `make deps` first", pytrace=False)


@pytest.fixture(scope="session")
def mosquitto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[localstack.Mosquitto]:
    """A running broker; `.url` is mqtt://127.0.0.1:PORT."""
    _require_binaries()
    with localstack.Mosquitto(tmp_path_factory.mktemp("services")) as broker:
        yield broker


@pytest.fixture(scope="session")
def influxdb(tmp_path_factory: pytest.TempPathFactory) -> Iterator[localstack.InfluxDB]:
    """A running InfluxDB 1.6; `.url` is the v2-speaking nginx front, `.direct_url` influxd."""
    _require_binaries()
    with localstack.InfluxDB(tmp_path_factory.mktemp("services")) as influx:
        yield influx


def _token() -> str:
    return secrets.token_hex(4)


@pytest.fixture
def bucket(request: pytest.FixtureRequest, influxdb: localstack.InfluxDB) -> Iterator[str]:
    """A fresh database for this test (name from the test name + a random token), dropped after."""
    stem = re.sub(r"[^a-z0-9_]+", "_", request.node.name.lower()).strip("_")[:40]
    name = f"{stem}_{_token()}"
    influxdb.create_database(name)
    yield name
    # Dropped so that a session of high-cardinality tests does not pile up series in memory.
    influxdb.drop_database(name)


@pytest.fixture
def cluster_name() -> str:
    """A cluster name no other test uses, e.g. "t3fa9c2d1" (letters and digits only)."""
    return "t" + _token()


@pytest.fixture
def unique_topic_prefix(cluster_name: str) -> str:
    """An MQTT topic prefix no other test uses: "test/<cluster_name>" (no trailing slash)."""
    return f"test/{cluster_name}"
