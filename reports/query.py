"""The only module of gpufleet.reports that talks to InfluxDB: InfluxQL over HTTP (`/query`) and
line-protocol writes (`/write`) of the InfluxDB 1.x API. Plain urllib, no client library:
influxdb-client speaks only Flux/v2 and cannot run InfluxQL.

Answers are asked for in MessagePack (InfluxDB >= 1.4): for a month of rollup rows with their
workload lists, InfluxDB spends about a quarter of the CPU it needs for JSON and the answer reads
here four times faster. A server that answers JSON anyway is read as JSON. Rows come chunked, so
that a long answer is turned into rows here while InfluxDB is still encoding the rest of it.

Also the report-side InfluxQL builders (`time_range`, `tag_is`); escaping itself is
gpufleet/influxql.py, shared with the dashboards.
"""

from __future__ import annotations

import base64
import http.client
import json
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Iterator
from typing import IO, Any

import msgpack

from gpufleet.influxql import answer_error, ident, literal, rows_of

__all__ = ["InfluxError", "InfluxQL", "ident", "literal", "tag_is", "time_range"]

HTTP_TIMEOUT_S = 120.0  # a month of a large fleet is aggregated server-side; give it time
WRITE_BATCH_LINES = 5000
MSGPACK = "application/x-msgpack"
# Rows per chunk of a streamed answer: a few MB with the rollup's workload lists, and never more
# than the MessagePack reader's buffer even at InfluxDB's 64 KiB per string.
CHUNK_ROWS = 1000
READ_BYTES = 1 << 20
MAX_CHUNK_BYTES = 1 << 30


class InfluxError(RuntimeError):
    """InfluxDB could not be reached or refused a statement; the message says which and why."""


# --- InfluxQL text ------------------------------------------------------------------------


def time_range(start_ns: int, end_ns: int) -> str:
    """`time >= start AND time < end`: half-open, so adjacent periods never count a point twice."""
    return f"time >= {int(start_ns)} AND time < {int(end_ns)}"


def tag_is(key: str, value: str | None) -> str:
    """` AND "key" = 'value'`, or nothing when value is None (no filter)."""
    return "" if value is None else f" AND {ident(key)} = {literal(value)}"


# --- HTTP ------------------------------------------------------------------------------------


class InfluxQL:
    """One InfluxDB 1.x database. `base_url` is InfluxDB's HTTP address (http://host:8086)."""

    def __init__(
        self,
        base_url: str,
        database: str,
        *,
        username: str | None = None,
        password: str | None = None,
        timeout_s: float = HTTP_TIMEOUT_S,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.database = database
        self._timeout_s = timeout_s
        self._auth = None
        if username is not None:
            token = base64.b64encode(f"{username}:{password or ''}".encode()).decode()
            self._auth = f"Basic {token}"

    def rows(self, influxql: str) -> list[dict[str, Any]]:
        """Every row of every series as one dict: the columns (with `time` in ns) and the GROUP BY tags."""
        return list(self.stream_rows(influxql))

    def stream_rows(self, influxql: str) -> Iterator[dict[str, Any]]:
        """`rows`, one chunk of the answer at a time, as InfluxDB sends them; raises InfluxError on
        any error (also one that InfluxDB reports after the first chunks)."""
        form = {"q": influxql, "db": self.database, "epoch": "ns", "chunked": "true", "chunk_size": str(CHUNK_ROWS)}
        body = urllib.parse.urlencode(form).encode()
        with self._open("/query", body, "application/x-www-form-urlencoded", accept=MSGPACK) as response:
            for answer in _answers(response, response.headers.get("Content-Type", "")):
                yield from rows_of(_checked(answer, influxql))

    def results(self, influxql: str) -> list[dict[str, Any]]:
        """InfluxDB's `results` list for one or more statements; raises InfluxError on any error.

        POST, because 1.x refuses SELECT ... INTO, DELETE and CREATE over GET."""
        form = urllib.parse.urlencode({"q": influxql, "db": self.database, "epoch": "ns"}).encode()
        answer, answer_type = self._post("/query", form, "application/x-www-form-urlencoded", accept=MSGPACK)
        parsed = _decode(answer, answer_type)
        if parsed is None:
            raise InfluxError(f"InfluxDB answered something that is neither MessagePack nor JSON to {influxql[:200]!r}")
        return _checked(parsed, influxql)

    def write(self, lines: Iterable[str]) -> int:
        """Write line-protocol lines (ns timestamps) in batches; the number of lines written."""
        batch: list[str] = []
        written = 0
        for line in lines:
            batch.append(line)
            if len(batch) >= WRITE_BATCH_LINES:
                written += self._write_batch(batch)
                batch = []
        if batch:
            written += self._write_batch(batch)
        return written

    def _write_batch(self, batch: list[str]) -> int:
        query = urllib.parse.urlencode({"db": self.database, "precision": "ns"})
        self._post(f"/write?{query}", "\n".join(batch).encode(), "text/plain; charset=utf-8")
        return len(batch)

    def _post(self, path: str, body: bytes, content_type: str, *, accept: str | None = None) -> tuple[bytes, str]:
        """The answer's body and Content-Type."""
        with self._open(path, body, content_type, accept=accept) as response:
            try:
                return response.read(), response.headers.get("Content-Type", "")
            except (OSError, http.client.HTTPException) as exc:
                raise InfluxError(f"InfluxDB at {self.base_url} broke off its answer: {exc!r}") from None

    def _open(self, path: str, body: bytes, content_type: str, *, accept: str | None = None) -> Any:
        """The HTTP response (a context manager), or InfluxError."""
        request = urllib.request.Request(self.base_url + path, data=body, method="POST")
        request.add_header("Content-Type", content_type)
        if accept:
            request.add_header("Accept", accept)
        if self._auth:
            request.add_header("Authorization", self._auth)
        try:
            return urllib.request.urlopen(request, timeout=self._timeout_s)
        except urllib.error.HTTPError as exc:
            detail = _error_text(exc.read(), exc.headers.get("Content-Type", ""))
            raise InfluxError(f"InfluxDB at {self.base_url} answered HTTP {exc.code} to {path.split('?')[0]}: {detail}") from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise InfluxError(f"InfluxDB at {self.base_url} unreachable: {reason}") from None


def _checked(answer: dict[str, Any], influxql: str) -> list[dict[str, Any]]:
    """The `results` of one answer (or chunk), or InfluxError with InfluxDB's message."""
    error = answer_error(answer)
    if error is not None:
        raise InfluxError(f"InfluxDB refused {influxql[:200]!r}: {error}")
    return answer.get("results", [])


def _answers(stream: IO[bytes], content_type: str) -> Iterator[dict[str, Any]]:
    """The objects of a chunked answer, each as soon as it has arrived: MessagePack objects one
    after another, or JSON objects one a line."""
    try:
        if content_type.startswith(MSGPACK):
            objects: Iterator[Any] = msgpack.Unpacker(stream, raw=False, read_size=READ_BYTES, max_buffer_size=MAX_CHUNK_BYTES)
        else:
            objects = (json.loads(line) for line in stream if line.strip())
        for answer in objects:
            if not isinstance(answer, dict):
                raise TypeError(f"a {type(answer).__name__} where an object belongs")
            yield answer
    except (OSError, http.client.HTTPException) as exc:
        raise InfluxError(f"InfluxDB broke off its answer: {exc!r}") from None
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        raise InfluxError(f"InfluxDB answered something that is neither MessagePack nor JSON: {exc}") from None


def _decode(answer: bytes, content_type: str) -> dict[str, Any] | None:
    """A /query answer as InfluxDB's JSON shape, from MessagePack or JSON; None when it is neither."""
    try:
        if content_type.startswith(MSGPACK):
            parsed = msgpack.unpackb(answer, raw=False)
        else:
            parsed = json.loads(answer)
    except (ValueError, TypeError, msgpack.UnpackException):  # the ways either says "not mine"
        return None
    return parsed if isinstance(parsed, dict) else None


def _error_text(body: bytes, content_type: str) -> str:
    """InfluxDB's own message from an error answer (`{"error": ...}` in the format asked for)."""
    parsed = _decode(body, content_type)
    if parsed is not None and isinstance(parsed.get("error"), str):
        return parsed["error"][:500]
    return body.decode("utf-8", "replace").strip()[:500]
