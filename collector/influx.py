"""The only module that talks to influxdb_client: synchronous batch writes of ready-made lines.

The collector batches and retries itself (collector/buffer.py), so the client's own background
batching is not used: a write either succeeds, fails for good (InfluxDB refused the lines), or
fails for now (network, 5xx, timeout) and is retried with the same lines.
"""

from __future__ import annotations

import logging
from pathlib import Path

from influxdb_client import InfluxDBClient, WritePrecision
from influxdb_client.client.write_api import SYNCHRONOUS
from influxdb_client.rest import ApiException
from urllib3.exceptions import HTTPError

log = logging.getLogger(__name__)


class WriteFailed(Exception):
    def __init__(self, message: str, *, retryable: bool) -> None:
        super().__init__(message)
        self.retryable = retryable


def read_token(token: str | None, token_file: Path | None) -> str:
    """The token from GPUFLEET_INFLUX_TOKEN or a file; InfluxDB 1.x without auth takes any."""
    if token_file is not None:
        return token_file.read_text(encoding="utf-8").strip()
    return token or ""


class InfluxWriter:
    def __init__(self, url: str, token: str, org: str, bucket: str, *, timeout_ms: int = 30_000) -> None:
        self.url = url
        self.bucket = bucket
        self._org = org
        self._client = InfluxDBClient(url=url, token=token, org=org, timeout=timeout_ms, enable_gzip=False)
        self._write_api = self._client.write_api(write_options=SYNCHRONOUS)

    def write(self, lines: list[str]) -> None:
        """Write lines (nanosecond timestamps); raise WriteFailed saying whether a retry can help."""
        try:
            self._write_api.write(
                bucket=self.bucket, org=self._org, record="\n".join(lines), write_precision=WritePrecision.NS
            )
        except ApiException as exc:
            # 4xx: the lines themselves were refused (a retry would fail again), except 429 (busy)
            retryable = exc.status is None or exc.status >= 500 or exc.status in (408, 429)
            raise WriteFailed(f"InfluxDB answered {exc.status}: {_body(exc)}", retryable=retryable) from None
        except (HTTPError, OSError) as exc:
            raise WriteFailed(f"InfluxDB at {self.url} unreachable: {exc}", retryable=True) from None

    def ping(self) -> bool:
        try:
            return bool(self._client.ping())
        except Exception:  # ping must answer yes or no, whatever the client raises
            return False

    def close(self) -> None:
        self._client.close()


def _body(exc: ApiException) -> str:
    body = exc.body.decode(errors="replace") if isinstance(exc.body, bytes) else str(exc.body or exc.reason)
    return body.strip()[:300]
