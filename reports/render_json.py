"""A tenant's report as JSON: every figure and list of the HTML report, as plain numbers.
Pure: a TenantReport in, a str out. Keys are sorted, so the same report gives the same bytes.

The text is json.dumps(report_dict(report), indent=2, sort_keys=True, ensure_ascii=False), made
faster: with an indent, json.dumps runs its pure-Python encoder, and a large tenant's month has
tens of thousands of workloads. `dumps` below hands every container of plain values to json's C
encoder, and the workload list, most of the text, is written from a template."""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Sequence
from json.encoder import c_make_encoder  # type: ignore[attr-defined]  # None without the C accelerator
from typing import Any

from .model import Figures, PriceList, TenantReport, Workload

FORMAT_VERSION = 1


def figures_dict(f: Figures) -> dict[str, Any]:
    return {
        "gpu_hours": f.gpu_hours,
        "busy_gpu_hours": f.busy_gpu_hours,
        "idle_gpu_hours": f.idle_gpu_hours,
        "efficiency": f.efficiency,
        "energy_kwh": f.energy_kwh,
        "peak_mem_bytes": f.peak_mem_bytes,
        "throttle_thermal_hours": f.throttle_thermal_hours,
        "throttle_power_hours": f.throttle_power_hours,
        "throttle_hw_slowdown_hours": f.throttle_hw_slowdown_hours,
        "faulted_gpu_hours": f.faulted_gpu_hours,
        "availability": f.availability,
        "incidents": dict(f.incidents),
        "cost": {"gpu": f.cost.gpu, "energy": f.cost.energy, "total": f.cost.total, "unpriced_gpu_hours": f.cost.unpriced_gpu_hours},
        "reference_costs": {
            name: {"gpu": c.gpu, "energy": c.energy, "total": c.total, "unpriced_gpu_hours": c.unpriced_gpu_hours}
            for name, c in f.reference_costs.items()
        },
    }


def _prices(p: PriceList) -> dict[str, Any]:
    return {
        "name": p.name, "label": p.label, "currency": p.currency, "per_kwh": p.per_kwh,
        "per_gpu_hour": [list(item) for item in p.per_gpu_hour], "default_per_gpu_hour": p.default_per_gpu_hour,
    }


def report_dict(report: TenantReport) -> dict[str, Any]:
    return _report_dict(report, [workload_dict(w) for w in report.workloads])


def workload_dict(w: Workload) -> dict[str, Any]:
    return {"key": w.key, "identity": dict(w.identity), "first_hour_ns": w.first_hour_ns, "last_hour_ns": w.last_hour_ns, "hours": w.hours}


def _report_dict(report: TenantReport, workloads: Any) -> dict[str, Any]:
    return {
        "format_version": FORMAT_VERSION,
        "tenant": report.tenant,
        "from_ns": report.start_ns,
        "to_ns": report.end_ns,
        "cluster": report.cluster,
        "figures": figures_dict(report.figures),
        "models": [
            {"model": m.model, "gpu_hours": m.gpu_hours, "busy_gpu_hours": m.busy_gpu_hours, "energy_kwh": m.energy_kwh,
             "price_per_gpu_hour": m.price_per_gpu_hour, "cost": m.cost, "reference_price_per_gpu_hour": dict(m.reference)}
            for m in report.models
        ],
        "days": [
            {"date": d.date, "gpu_hours": d.gpu_hours, "busy_gpu_hours": d.busy_gpu_hours, "idle_gpu_hours": d.idle_gpu_hours,
             "energy_kwh": d.energy_kwh, "cost": d.cost}
            for d in report.days
        ],
        "workloads": workloads,
        "incidents": [
            {"time_ns": i.time_ns, "cluster": i.cluster, "node": i.node, "gpu": i.gpu, "kind": i.kind, "code": i.code, "detail": i.detail}
            for i in report.incidents
        ],
        "prices": _prices(report.prices),
        "references": [_prices(ref) for ref in report.references],
        "sources": report.sources,
    }


def render(report: TenantReport) -> str:
    """dumps(report_dict(report)), with the workloads' text made directly (one level down)."""
    return dumps(_report_dict(report, _Json(_workloads_json(report.workloads, 1)))) + "\n"


def _workloads_json(workloads: Sequence[Workload], level: int) -> str:
    """_dump([workload_dict(w) for w in workloads], level) without the dicts: their keys in
    sorted order, each value as _dump writes it."""
    if not workloads:
        return "[]"
    item = "\n" + _INDENT * (level + 1)
    key = ",\n" + _INDENT * (level + 2)
    end = "\n" + _INDENT * (level + 1) + "}"
    items = [
        "{" + key[1:] + '"first_hour_ns": ' + _dump(w.first_hour_ns, level + 2) + key + '"hours": ' + _dump(w.hours, level + 2)
        + key + '"identity": ' + _dump(dict(w.identity), level + 2) + key + '"key": ' + _dump(w.key, level + 2)
        + key + '"last_hour_ns": ' + _dump(w.last_hour_ns, level + 2) + end
        for w in workloads
    ]
    return "[" + item + ("," + item).join(items) + "\n" + _INDENT * level + "]"


# --- json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False), faster ---------------------

_INDENT = "  "
_SCALARS = frozenset({str, int, float, bool, type(None)})
_LITERALS = {True: "true", False: "false", None: "null"}
_string = json.encoder.encode_basestring  # json.dumps's own string encoder for ensure_ascii=False (C)
_flat_encoders: dict[int, Callable[[Any], str]] = {}


class _Json(str):
    """Text that is JSON already, made for its place: `_dump` writes it as it is."""


def dumps(obj: Any) -> str:
    """The same text as json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False)."""
    return _dump(obj, 0)


def _dump(obj: Any, level: int) -> str:
    kind = type(obj)
    if kind is str:
        return _string(obj)
    if kind is _Json:
        return obj
    if kind is dict:
        return _dump_dict(obj, level)
    if kind is list or kind is tuple:
        return _dump_list(obj, level)
    if kind is int:
        return int.__repr__(obj)
    if kind is float:
        return _flat_encoder(level)(obj)  # repr, or NaN / Infinity as json writes them
    if kind is bool or obj is None:
        return _LITERALS[obj]
    return _json_dumps(obj, level)


def _json_dumps(obj: Any, level: int) -> str:
    """What this module does not handle (subclasses, keys that are not strings, types json cannot
    encode): json's own text, shifted to `level`, or json's own error."""
    return json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False).replace("\n", "\n" + _INDENT * level)


def _dump_dict(obj: dict[Any, Any], level: int) -> str:
    if not obj:
        return "{}"
    flat = True
    for key, value in obj.items():
        if type(key) is not str:
            return _json_dumps(obj, level)
        if flat and type(value) not in _SCALARS:
            flat = False
    if flat:
        return _flat(obj, level)
    inner = "\n" + _INDENT * (level + 1)
    items = [_string(key) + ": " + _dump(value, level + 1) for key, value in sorted(obj.items())]
    return "{" + inner + ("," + inner).join(items) + "\n" + _INDENT * level + "}"


def _dump_list(obj: list[Any] | tuple[Any, ...], level: int) -> str:
    if not obj:
        return "[]"
    for item in obj:
        if type(item) not in _SCALARS:
            inner = "\n" + _INDENT * (level + 1)
            return "[" + inner + ("," + inner).join([_dump(item, level + 1) for item in obj]) + "\n" + _INDENT * level + "]"
    return _flat(obj, level)


def _flat(obj: dict[str, Any] | list[Any] | tuple[Any, ...], level: int) -> str:
    """A container of plain values through json's C encoder, whose item separator carries the
    newline and indent (`{"a": 1,\n    "b": 2}`); only the brackets' own lines are added here."""
    text = _flat_encoder(level)(obj)
    inner = "\n" + _INDENT * (level + 1)
    return text[0] + inner + text[1:-1] + "\n" + _INDENT * level + text[-1]


def _flat_encoder(level: int) -> Callable[[Any], str]:
    """json's encoder for plain values and containers of them at `level`, made once: JSONEncoder
    would make a new C encoder at every call."""
    encoder = _flat_encoders.get(level)
    if encoder is None:
        separator = ",\n" + _INDENT * (level + 1)
        if c_make_encoder is None:  # a Python without json's C accelerator
            encoder = json.JSONEncoder(ensure_ascii=False, sort_keys=True, separators=(separator, ": ")).encode
        else:
            # The arguments JSONEncoder.iterencode gives it: no circular check (plain values),
            # json's string encoder, no indent, the separators, sort_keys, skipkeys, allow_nan.
            encode = c_make_encoder(None, _unsupported, _string, None, ": ", separator, True, False, True)
            encoder = functools.partial(_joined, encode)
        _flat_encoders[level] = encoder
    return encoder


def _joined(encode: Callable[[Any, int], Sequence[str]], obj: Any) -> str:
    return "".join(encode(obj, 0))


def _unsupported(obj: Any) -> Any:
    raise TypeError(f"Object of type {type(obj).__name__} is not JSON serializable")
