"""InfluxQL for the dashboards and alert rules, and Grafana's variable and macro substitution.

Pure strings, no Grafana and no InfluxDB. Every query is InfluxQL that InfluxDB 1.6 runs (no Flux,
no `SHOW ... WHERE time`), written with Grafana's macros (`$timeFilter`, `$__interval`,
`$__interval_ms`, `${__to}`) and the dashboards' variables matched as regexes (`=~ /^$node$/`),
so one value, several (`(a|b)`) and All (`.*`) need no separate query.

`interpolate()` does what Grafana does to a query before sending it, so tests and the preview can
run the exact text of a panel against a real InfluxDB.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence

from gpufleet.catalogue import Metric
from gpufleet.influxql import ident
from gpufleet.influxql import literal as string

DATASOURCE_UID = "gpufleet-influxdb"
DATASOURCE = {"type": "influxdb", "uid": DATASOURCE_UID}

# What "now" means on a stat panel: the last minute of the dashboard's range (six windows at the
# agent's default 10 s interval). Anchored to the range's end (`${__to}`, epoch ms), not now(), so
# a dashboard opened on last Tuesday's incident shows last Tuesday's "now".
RECENT = "1m"
RECENT_FILTER = f"time > ${{__to}}ms - {RECENT} AND time <= ${{__to}}ms"
# Latest state at the range's end, however long ago it was written (no lower bound: a node that
# has been online for a month last said so a month ago).
UNTIL_TO = "time <= ${__to}ms"

# A GPU whose allocated time was busy less than this share of the last minute is "idle allocated".
IDLE_BUSY_SHARE = 0.05

UNALLOCATED = "unallocated"  # collector/tenants.py: the tenant of GPUs nobody holds

# Per-GPU series identity: the `gpu` tag is an index, unique only within a node.
GPU_KEYS = ('"cluster"', '"node"', '"gpu"')


def match(tag: str, variable: str) -> str:
    """`"node" =~ /^$node$/`: the tag equals one of the variable's values (Grafana makes it a regex)."""
    return f"{ident(tag)} =~ /^${variable}$/"


def equals(tag: str, value: str) -> str:
    return f"{ident(tag)} = {string(value)}"


def not_equals(tag: str, value: str) -> str:
    return f"{ident(tag)} != {string(value)}"


def where(*conditions: str) -> str:
    return " AND ".join(c for c in conditions if c)


def by_gpu() -> str:
    """GROUP BY keys that make one series per GPU."""
    return ", ".join(GPU_KEYS)


def either(field: str, values: Iterable[int]) -> str:
    """`("code" = 48 OR "code" = 79)`: InfluxQL has no IN."""
    return "(" + " OR ".join(f"{ident(field)} = {v}" for v in values) + ")"


# --- the per-field queries of the Node / GPU dashboard, from the catalogue ---------------------

# How one field's window values are summed up into one point per $__interval, by the catalogue's
# `agg` column: gauges keep their own aggregation, counters of bytes become a rate, bit_seconds a
# share of time, other per-window deltas a sum per interval.
_SELECT_BY_AGG = {
    "mean": "mean({f})",
    "max": "max({f})",
    "last": "last({f})",
    "or": "last({f})",  # a bit mask: an average of masks means nothing
    "count": "sum({f})",
    "bit_seconds": 'sum({f}) / sum("window_s")',
    "delta": "sum({f})",
}
_HEADER_SELECT = {"window_s": "mean({f})", "seq": "last({f})"}

# catalogue unit (UCUM-like) -> Grafana unit id
_UNITS = {"W": "watt", "J": "joule", "Cel": "celsius", "%": "percent", "By": "bytes", "s": "s", "1": "none"}


def field_select(metric: Metric) -> str:
    """The select expression for one `gpu` field, per interval and GPU."""
    f = ident(metric.name)
    if metric.agg == "delta" and metric.unit == "By":
        return f'sum({f}) / sum("window_s")'  # bytes per second over the GPU's own windows
    template = _HEADER_SELECT.get(metric.name) if metric.agg == "header" else _SELECT_BY_AGG.get(metric.agg)
    return (template or "last({f})").format(f=f)


def field_unit(metric: Metric) -> str:
    """The Grafana unit of what field_select() returns."""
    if metric.agg == "bit_seconds":
        return "percentunit"
    if metric.agg == "delta" and metric.unit == "By":
        return "Bps"
    if metric.unit in _UNITS:
        return _UNITS[metric.unit]
    if metric.unit.startswith("{") or not metric.unit:
        return "short"  # a count of things: {error}, {page}, {sample}
    return f"suffix: {metric.unit}"  # MHz and anything new: shown as is


def gpu_field_query(metric: Metric) -> str:
    """One series per GPU of the selected node, one point per $__interval."""
    return (
        f'SELECT {field_select(metric)} AS {ident(metric.name)} FROM "gpu" '
        f"WHERE {where(match('cluster', 'cluster'), match('node', 'node'), match('gpu', 'gpu'), '$timeFilter')} "
        f'GROUP BY time($__interval), "gpu" fill(none)'
    )


# --- Grafana's substitution ----------------------------------------------------------------------

_REGEX_SPECIAL = re.compile(r"[\\^$*+?.()|\[\]{}/]")
_VARIABLE = re.compile(r"\$\{(\w+)(?::[^}]*)?\}|\$(\w+)|\[\[(\w+)\]\]")


def regex_escape(value: str) -> str:
    """Grafana's `escapeRegex` (@grafana/data), which its InfluxDB data source applies to values."""
    return _REGEX_SPECIAL.sub(lambda m: "\\" + m.group(0), value)


def format_variable(variable: Mapping[str, object], selected: Sequence[str] | None, options: Sequence[str]) -> str:
    """The text Grafana's InfluxDB data source puts in place of `$name` (interpolateQueryExpr).

    `variable` is the variable's dashboard JSON; `selected` the chosen values, or None for All;
    `options` every value the variable's query returned (what All means without an allValue).
    A variable that is neither multi nor includeAll is put in as is; otherwise each value is
    regex-escaped and several are joined as `(a|b)`. All is the allValue, verbatim, if it has one.
    """
    if selected is None:
        if variable.get("allValue"):
            return str(variable["allValue"])
        selected = options
    if not variable.get("multi") and not variable.get("includeAll"):
        if len(selected) != 1:
            raise ValueError(f"variable {variable['name']} takes one value, not {list(selected)}")
        return selected[0]
    escaped = [regex_escape(v) for v in selected]
    return escaped[0] if len(escaped) == 1 else "(" + "|".join(escaped) + ")"


def interval_text(interval_ms: int) -> str:
    """`$__interval` as Grafana writes it: 10s, 1m, 2h, 500ms (the largest whole unit)."""
    for unit, ms in (("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1000)):
        if interval_ms % ms == 0:
            return f"{interval_ms // ms}{unit}"
    return f"{interval_ms}ms"


def interpolate(
    query: str, variables: Mapping[str, str], *, time_from_ms: int, time_to_ms: int, interval_ms: int
) -> str:
    """The query as Grafana sends it: macros, global variables and the formatted `variables`.

    `$timeFilter` becomes `time >= FROMms and time <= TOms`, as Grafana's InfluxDB data source
    writes it. A variable that is neither given nor built in raises KeyError, so a typo in a
    panel's query fails here instead of returning nothing in Grafana.
    """
    builtins = {
        "timeFilter": f"time >= {time_from_ms}ms and time <= {time_to_ms}ms",
        "__timeFilter": f"time >= {time_from_ms}ms and time <= {time_to_ms}ms",
        "__interval": interval_text(interval_ms),
        "__interval_ms": str(interval_ms),
        "__from": str(time_from_ms),
        "__to": str(time_to_ms),
    }

    def value(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2) or m.group(3)
        if name in variables:
            return variables[name]
        if name in builtins:
            return builtins[name]
        raise KeyError(f"unknown variable ${name} in {query!r}")

    return _VARIABLE.sub(value, query)


def variables_in(query: str) -> set[str]:
    """Names of the variables and macros a query uses."""
    return {m.group(1) or m.group(2) or m.group(3) for m in _VARIABLE.finditer(query)}


def resolve_variables(
    variables: Sequence[Mapping[str, object]],
    tag_values: Callable[[str], list[str]],
    pick: Callable[[str, list[str]], Sequence[str] | None],
    *,
    time_from_ms: int,
    time_to_ms: int,
    interval_ms: int,
) -> dict[str, str]:
    """A dashboard's variables (its templating list) as Grafana resolves them on load, in order.

    `tag_values(influxql)` runs a variable's query (already interpolated with the variables before
    it) and returns its values; `pick(name, values)` chooses values, None meaning All (or, for a
    variable without All, the first value). Text boxes and constants keep their current value.
    Returns each variable's text, formatted as Grafana puts it into queries.
    """
    formatted: dict[str, str] = {}
    for variable in variables:
        name = str(variable["name"])
        if variable["type"] in ("textbox", "constant", "custom"):
            current = variable["current"]
            assert isinstance(current, Mapping)
            formatted[name] = str(current["value"])
            continue
        query = interpolate(
            str(variable["query"]), formatted, time_from_ms=time_from_ms, time_to_ms=time_to_ms, interval_ms=interval_ms
        )
        options = tag_values(query)
        if not options:
            raise LookupError(f"variable ${name} has no values: {query}")
        picked = pick(name, options)
        if picked is None and not variable.get("includeAll"):
            picked = options[:1]
        formatted[name] = format_variable(variable, picked, options)
    return formatted
