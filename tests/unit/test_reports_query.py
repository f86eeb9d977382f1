"""Reading InfluxDB's answers (gpufleet.reports.query): MessagePack or JSON, whole or in chunks,
and errors, also those that come after the first rows. No server: the HTTP answer is made here."""

from __future__ import annotations

import io
import json
import urllib.error
import urllib.request

import msgpack
import pytest

from gpufleet.reports.query import MSGPACK, InfluxError, InfluxQL

COLUMNS = ["time", "gpu_s", "workloads"]
FIRST = {"statement_id": 0, "series": [{"name": "u", "tags": {"tenant": "a"}, "columns": COLUMNS, "values": [[1, 2.0, "{}"]], "partial": True}], "partial": True}
SECOND = {"statement_id": 0, "series": [{"name": "u", "tags": {"tenant": "a"}, "columns": COLUMNS, "values": [[2, 3.5, '{"k":{}}']]}]}
ROWS = [{"tenant": "a", "time": 1, "gpu_s": 2.0, "workloads": "{}"}, {"tenant": "a", "time": 2, "gpu_s": 3.5, "workloads": '{"k":{}}'}]


class Answer(io.BytesIO):
    """An HTTP answer as urlopen gives it: a readable body with headers."""

    def __init__(self, body: bytes, content_type: str) -> None:
        super().__init__(body)
        self.headers = {"Content-Type": content_type}


def answering(monkeypatch: pytest.MonkeyPatch, body: bytes, content_type: str, asked: dict | None = None) -> InfluxQL:
    """An InfluxQL whose every request gets this answer; `asked` gets the Accept header sent."""

    def urlopen(request, timeout):
        (asked if asked is not None else {})["accept"] = request.get_header("Accept")
        return Answer(body, content_type)

    monkeypatch.setattr(urllib.request, "urlopen", urlopen)
    return InfluxQL("http://influx.invalid:8086", "db")


def msgpack_chunks(*answers: dict) -> bytes:
    return b"".join(msgpack.packb(answer) for answer in answers)


def test_rows_come_from_messagepack_chunks(monkeypatch):
    asked: dict = {}
    db = answering(monkeypatch, msgpack_chunks({"results": [FIRST]}, {"results": [SECOND]}), MSGPACK, asked)
    assert db.rows("SELECT *") == ROWS
    assert asked["accept"] == MSGPACK


def test_a_server_that_answers_json_is_read_as_json(monkeypatch):
    chunks = b"".join(json.dumps({"results": [answer]}).encode() + b"\n" for answer in (FIRST, SECOND))
    assert answering(monkeypatch, chunks, "application/json").rows("SELECT *") == ROWS
    whole = json.dumps({"results": [FIRST, SECOND]}).encode()
    assert answering(monkeypatch, whole, "application/json").results("SELECT 1") == [FIRST, SECOND]


def test_an_error_after_the_first_chunk_is_raised_with_influxdbs_words(monkeypatch):
    db = answering(monkeypatch, msgpack_chunks({"results": [FIRST]}, {"results": [{"statement_id": 0, "error": "max-select-point limit exceeded"}]}), MSGPACK)
    rows = db.stream_rows("SELECT *")
    assert next(rows) == ROWS[0]
    with pytest.raises(InfluxError, match="max-select-point limit exceeded"):
        next(rows)


def test_an_answer_that_is_neither_format_is_an_influx_error(monkeypatch):
    with pytest.raises(InfluxError, match="neither MessagePack nor JSON"):
        answering(monkeypatch, b"<html>502 Bad Gateway</html>", "text/html").rows("SELECT *")
    with pytest.raises(InfluxError, match="neither MessagePack nor JSON"):
        answering(monkeypatch, msgpack.packb([1, 2]), MSGPACK).rows("SELECT *")
    with pytest.raises(InfluxError, match="neither MessagePack nor JSON"):
        answering(monkeypatch, b"<html>", "text/html").results("DELETE FROM x")


def test_an_http_error_says_influxdbs_own_words(monkeypatch):
    body = msgpack.packb({"error": "error parsing query: found EOF"})

    def refuse(request, timeout):
        raise urllib.error.HTTPError(request.full_url, 400, "Bad Request", {"Content-Type": MSGPACK}, io.BytesIO(body))

    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    with pytest.raises(InfluxError, match="answered HTTP 400 to /query: error parsing query: found EOF$"):
        InfluxQL("http://influx.invalid:8086", "db").rows("SELECT")
