"""InfluxQL text and answers, pure: the one escaping rule for every value that reaches a query
string (dashboards, reports, local services), and the one way to read InfluxDB's JSON answer."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any


def ident(name: str) -> str:
    """An InfluxQL identifier in double quotes, escaped."""
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def literal(value: str) -> str:
    """An InfluxQL string literal: single quotes, with `\\` and `'` escaped."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def rows_of(results: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every row of every series of a `/query` answer's `results` as one dict: the columns
    (with `time`) and the series' GROUP BY tags."""
    out: list[dict[str, Any]] = []
    for result in results:
        for series in result.get("series", []):
            tags = series.get("tags") or {}
            columns = series["columns"]
            for values in series.get("values", []):
                out.append({**tags, **dict(zip(columns, values))})
    return out


def answer_error(answer: Mapping[str, Any]) -> str | None:
    """InfluxDB's own message when a `/query` answer (or chunk) reports an error, at the top level
    or in any statement's result; None when it reports none."""
    if "error" in answer:
        return str(answer["error"])
    for result in answer.get("results", []):
        if "error" in result:
            return str(result["error"])
    return None
