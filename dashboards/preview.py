"""Pictures of the dashboards from real query results, for the README (no Grafana needed).

Runs every panel's query exactly as Grafana would (queries.interpolate) against an InfluxDB 1.x
that holds gpufleet data, and draws each panel where Grafana would put it (its gridPos): stats
as numbers, time series as lines or bars, tables as tables, the heatmap as a heatmap.

    python -m gpufleet.dashboards.preview --influx http://127.0.0.1:8086 --db gpufleet --out docs/img

needs matplotlib (the `docs` extra). The time range ends just after the newest `gpu` point or
event and reaches --minutes back (not before the first point); multi-value variables are on All,
the Node dashboard shows the node with the most events.
"""

from __future__ import annotations

import argparse
import io
import json
import urllib.parse
import urllib.request
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from . import panels, provisioning
from .queries import interpolate, resolve_variables

Series = list[dict[str, Any]]
Results = list[tuple[dict[str, Any], Series]]  # (target, what its query returned) per target
Span = tuple[datetime, datetime]
GRID_W, ROW_UNIT_IN, WIDTH_IN = 24, 0.42, 22.0
# Grafana's dark theme, roughly
BACKGROUND, PANEL, TEXT, MUTED = "#111217", "#181b1f", "#ccccdc", "#8e8e9e"
PALETTE = ["#73bf69", "#f2cc0c", "#8ab8ff", "#ff780a", "#f2495c", "#5794f2", "#b877d9", "#705da0", "#37872d", "#fade2a"]


class Influx:
    """InfluxDB 1.x `/query`, the one thing the preview needs."""

    def __init__(self, url: str, db: str) -> None:
        self.url, self.db = url.rstrip("/"), db

    def series(self, influxql: str) -> Series:
        body = urllib.parse.urlencode({"q": influxql, "db": self.db, "epoch": "ms"}).encode()
        with urllib.request.urlopen(urllib.request.Request(self.url + "/query", data=body), timeout=30) as response:
            answer = json.load(response)
        out: Series = []
        for result in answer.get("results", []):
            if "error" in result:
                raise RuntimeError(f"{influxql!r}: {result['error']}")
            out.extend(result.get("series", []))
        return out

    def tag_values(self, influxql: str) -> list[str]:
        return sorted({row[1] for s in self.series(influxql) for row in s["values"]})


def _busiest_node(influx: Influx) -> str | None:
    counts = influx.series('SELECT count("code") FROM "gpu_event" GROUP BY "node"')
    if not counts:
        return None
    return max(counts, key=lambda s: s["values"][0][1])["tags"]["node"]


def _label(series: dict[str, Any], column: str, alias: str, multi_column: bool) -> str:
    tags = series.get("tags") or {}
    if alias:
        text = alias.replace("$col", column)
        for key, value in tags.items():
            text = text.replace(f"$tag_{key}", value)
        return text
    name = " ".join(tags.values()) or column
    return f"{name} {column}" if multi_column else name


def _number(value: float | None, unit: str) -> str:
    if value is None:
        return "0"
    if unit == "percentunit":
        return f"{value * 100:.1f} %"
    suffix = {"watt": "W", "kwatth": "kWh", "celsius": "°C", "percent": "%", "joule": "J", "bytes": "B"}.get(unit, "")
    if suffix in ("W", "J", "B") and abs(value) >= 1e4:
        for div, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
            if abs(value) >= div:
                return f"{value / div:.1f} {prefix}{suffix}"
    text = f"{value:.2f}".rstrip("0").rstrip(".") if isinstance(value, float) else str(value)
    return f"{text} {suffix}".strip()


def _draw_stat(ax, panel: dict[str, Any], results: Results, span: Span) -> None:
    values = [row[1] for _, series in results for s in series for row in s["values"] if row[1] is not None]
    unit = panel["fieldConfig"]["defaults"].get("unit", "none")
    steps = panel["fieldConfig"]["defaults"].get("thresholds", {}).get("steps", [])
    value = values[-1] if values else None
    color = "#73bf69"
    for step in steps:
        if step["value"] is None or (value is not None and value >= step["value"]):
            color = {"green": "#73bf69", "red": "#f2495c", "blue": "#8ab8ff"}.get(step["color"], step["color"])
    mappings = panel["fieldConfig"]["defaults"].get("mappings") or []
    text = _number(value, unit)
    for mapping in mappings:
        option = mapping.get("options", {}).get(str(value))
        if option:
            text, color = option["text"], {"green": "#73bf69", "red": "#f2495c"}.get(option.get("color"), color)
    ax.text(0.5, 0.42, text, ha="center", va="center", fontsize=20, color=color, weight="bold", transform=ax.transAxes)
    ax.set_axis_off()


def _draw_timeseries(ax, panel: dict[str, Any], results: Results, span: Span) -> None:
    custom = panel["fieldConfig"]["defaults"]["custom"]
    bars = custom.get("drawStyle") == "bars"
    stacked = custom.get("stacking", {}).get("mode") == "normal"
    lines: list[tuple[str, dict[int, float]]] = []
    for target, series in results:
        for s in series:
            columns = s["columns"][1:]
            for i, column in enumerate(columns, start=1):
                points = {r[0]: r[i] for r in s["values"] if r[i] is not None}
                if points:
                    lines.append((_label(s, column, target.get("alias", ""), len(columns) > 1), points))
    ax.set_xlim(*span)
    ax.tick_params(labelsize=6, colors=MUTED)
    ax.xaxis.set_major_formatter(_time_formatter())
    if not lines:
        ax.text(0.5, 0.5, "No data", ha="center", va="center", color=MUTED, transform=ax.transAxes)
        return
    times_ms = sorted({t for _, points in lines for t in points})
    times = [datetime.fromtimestamp(t / 1000, UTC) for t in times_ms]
    step_days = (min(b - a for a, b in zip(times_ms, times_ms[1:])) if len(times_ms) > 1 else 1000) / 86_400_000
    bottom = [0.0] * len(times_ms)
    for i, (name, points) in enumerate(lines):
        color = PALETTE[i % len(PALETTE)]
        if stacked or bars:
            values = [points.get(t, 0.0) for t in times_ms]
            base = bottom if stacked else [0.0] * len(values)
            if bars:
                ax.bar(times, values, bottom=base, width=step_days * 0.8, color=color, label=name, alpha=0.85)
            else:
                top = [b + v for b, v in zip(base, values)]
                ax.fill_between(times, base, top, color=color, label=name, alpha=0.7, linewidth=0)
            if stacked:
                bottom = [b + v for b, v in zip(bottom, values)]
        else:
            ts = sorted(points)
            ax.plot([datetime.fromtimestamp(t / 1000, UTC) for t in ts], [points[t] for t in ts], color=color, label=name, linewidth=1.2)
    if len(lines) <= 8:
        ax.legend(fontsize=6, loc="upper left", frameon=False, labelcolor=TEXT, ncol=2)
    if panel["fieldConfig"]["defaults"].get("unit") == "percentunit":
        ax.yaxis.set_major_formatter(lambda v, _: f"{v * 100:.0f}%")


def _time_formatter():
    from matplotlib.dates import DateFormatter  # noqa: PLC0415

    return DateFormatter("%H:%M:%S")


def _draw_table(ax, panel: dict[str, Any], results: Results, span: Span) -> None:
    columns: list[str] = []
    rows: list[dict[str, Any]] = []
    for _, series in results:
        for s in series:
            tags = s.get("tags") or {}
            for values in s["values"]:
                row = {**tags, **dict(zip(s["columns"], values))}
                # Grafana calls InfluxDB's `time` column Time; the dashboards hide it where it means nothing.
                row = {"Time": datetime.fromtimestamp(row.pop("time") / 1000, UTC).strftime("%H:%M:%S"), **row}
                rows.append(row)
                columns += [c for c in row if c not in columns]
    columns, rows = _transform(panel.get("transformations", []), columns, rows)
    if not rows:
        ax.text(0.5, 0.5, "No data", ha="center", va="center", color=MUTED, transform=ax.transAxes)
        ax.set_axis_off()
        return
    sort = (panel.get("options", {}).get("sortBy") or [{}])[0].get("displayName")
    if sort in columns:
        rows.sort(key=lambda r: (r.get(sort) is None, -(r.get(sort) or 0) if isinstance(r.get(sort), int | float) else 0))
    shown = rows[:10]
    cells = [[_cell(r.get(c)) for c in columns] for r in shown]
    table = ax.table(cellText=cells, colLabels=columns, loc="upper center", cellLoc="left", colLoc="left")
    table.auto_set_font_size(False)
    table.set_fontsize(6)
    for cell in table.get_celld().values():
        cell.set_facecolor(PANEL)
        cell.set_edgecolor("#2c3235")
        cell.get_text().set_color(TEXT)
    ax.set_axis_off()


def _transform(steps: list[dict[str, Any]], columns: list[str], rows: list[dict[str, Any]]) -> tuple[list[str], list[dict[str, Any]]]:
    """The two Grafana table transformations the dashboards use: groupBy (with count) and organize."""
    for step in steps:
        options = step.get("options", {})
        if step["id"] == "groupBy":
            fields = options["fields"]
            keys = [name for name, how in fields.items() if how["operation"] == "groupby"]
            counted = [name for name, how in fields.items() if how["operation"] == "aggregate"]
            groups: dict[tuple, int] = {}
            for row in rows:
                key = tuple(row.get(k) for k in keys)
                groups[key] = groups.get(key, 0) + 1
            columns = keys + [f"{name} (count)" for name in counted]
            rows = [{**dict(zip(keys, key)), **{f"{name} (count)": n for name in counted}} for key, n in groups.items()]
        elif step["id"] == "organize":
            renames = options.get("renameByName", {})
            columns = [renames.get(c, c) for c in columns if not options.get("excludeByName", {}).get(c)]
            rows = [{renames.get(k, k): v for k, v in row.items()} for row in rows]
    return columns, rows


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    text = "" if value is None else str(value)
    return text if len(text) <= 28 else text[:26] + "…"


def _draw_heatmap(ax, panel: dict[str, Any], results: Results, span: Span) -> None:
    points = [(r[0], r[1]) for _, series in results for s in series for r in s["values"] if r[1] is not None]
    if not points:
        ax.text(0.5, 0.5, "No data", ha="center", va="center", color=MUTED, transform=ax.transAxes)
        return
    times = sorted({t for t, _ in points})
    index = {t: i for i, t in enumerate(times)}
    grid = [[0] * len(times) for _ in range(10)]
    for t, value in points:
        grid[min(9, max(0, int(value // 10)))][index[t]] += 1
    ax.imshow(grid, aspect="auto", origin="lower", cmap="Oranges", extent=(0, len(times), 0, 100))
    ax.set_ylabel("%", fontsize=6, color=MUTED)
    ax.set_xticks([])
    ax.tick_params(labelsize=6, colors=MUTED)


def _draw_bars(ax, panel: dict[str, Any], results: Results, span: Span) -> None:
    rows = [(r[2], r[1]) for _, series in results for s in series for r in s["values"] if len(r) > 2]
    if not rows:
        ax.text(0.5, 0.5, "No data", ha="center", va="center", color=MUTED, transform=ax.transAxes)
        return
    rows.sort(key=lambda r: r[1])
    ax.barh([name for name, _ in rows], [value for _, value in rows], color=PALETTE[0])
    ax.tick_params(labelsize=6, colors=MUTED)


_DRAW: dict[str, Callable[[Any, dict[str, Any], Results, Span], None]] = {
    "stat": _draw_stat,
    "timeseries": _draw_timeseries,
    "table": _draw_table,
    "heatmap": _draw_heatmap,
    "barchart": _draw_bars,
}


def render(board: dict[str, Any], influx: Influx, out: Path, *, time_from_ms: int, time_to_ms: int, node: str | None) -> Path:
    """One PNG of one dashboard's JSON, drawn from `influx`'s answers to its panels' queries."""
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    interval_ms = max(1000, (time_to_ms - time_from_ms) // 200 // 1000 * 1000)
    span = (datetime.fromtimestamp(time_from_ms / 1000, UTC), datetime.fromtimestamp(time_to_ms / 1000, UTC))

    def pick(name: str, options: list[str]) -> list[str] | None:
        if name == "node" and board["uid"] == panels.NODE_UID and node in options:
            return [node]
        return None

    variables = resolve_variables(
        board["templating"]["list"], influx.tag_values, pick,
        time_from_ms=time_from_ms, time_to_ms=time_to_ms, interval_ms=interval_ms,
    )
    height_units = max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in board["panels"])
    fig = plt.figure(figsize=(WIDTH_IN, height_units * ROW_UNIT_IN + 0.6), facecolor=BACKGROUND)
    total_h = height_units + 1.4
    subtitle = ", ".join(f"{k}={v}" for k, v in variables.items() if not k.startswith("price"))
    fig.text(0.005, 1 - 0.6 / total_h, f"{board['title']}    ({subtitle})", color=TEXT, fontsize=12, weight="bold", va="center")

    for panel in board["panels"]:
        pos = panel["gridPos"]
        left, width = pos["x"] / GRID_W, pos["w"] / GRID_W
        bottom = 1 - (pos["y"] + 1.4 + pos["h"]) / total_h
        height = pos["h"] / total_h
        if panel["type"] == "row":
            fig.text(left + 0.004, bottom + height / 2, panel["title"], color=TEXT, fontsize=10, weight="bold", va="center")
            continue
        ax = fig.add_axes((left + 0.003, bottom + 0.004 * 24 / total_h, width - 0.006, height - 0.012 * 24 / total_h))
        ax.set_facecolor(PANEL)
        for spine in ax.spines.values():
            spine.set_color("#2c3235")
        ax.set_title(panel["title"], fontsize=7.5, color=TEXT, loc="left")
        results = []
        for target in panel["targets"]:
            query = interpolate(
                target["query"], variables, time_from_ms=time_from_ms, time_to_ms=time_to_ms, interval_ms=interval_ms
            )
            results.append((target, influx.series(query)))
        _DRAW.get(panel["type"], _draw_table)(ax, panel, results, span)
    _save(fig, out)
    plt.close(fig)
    return out


def _save(fig, out: Path) -> None:
    """A 256-colour PNG: a quarter of the size of matplotlib's, for pictures kept in git."""
    from PIL import Image  # noqa: PLC0415  # matplotlib's own dependency

    buffer = io.BytesIO()
    fig.savefig(buffer, dpi=72, facecolor=BACKGROUND)
    buffer.seek(0)
    out.parent.mkdir(parents=True, exist_ok=True)
    Image.open(buffer).convert("RGB").quantize(colors=256).save(out, optimize=True)


def render_all(influx: Influx, out_dir: Path, minutes: float) -> list[Path]:
    """Every dashboard, over the last `minutes` of data (or all of it, if there is less)."""
    first, last = influx.series('SELECT first("seq") FROM "gpu"'), influx.series('SELECT last("seq") FROM "gpu"')
    if not last:
        raise SystemExit("no `gpu` points in that database")
    events = influx.series('SELECT last("code") FROM "gpu_event"')
    to_ms = max([last[0]["values"][0][0]] + [s["values"][0][0] for s in events]) + 1000
    from_ms = max(first[0]["values"][0][0] - 1000, to_ms - int(minutes * 60_000))
    node = _busiest_node(influx)
    return [
        render(board, influx, out_dir / f"{board['uid']}.png", time_from_ms=from_ms, time_to_ms=to_ms, node=node)
        for board in provisioning.dashboards_json().values()
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gpufleet.dashboards.preview", description=__doc__.split("\n\n")[0])
    parser.add_argument("--influx", required=True, help="InfluxDB 1.x URL, e.g. http://127.0.0.1:8086")
    parser.add_argument("--db", default=provisioning.DEFAULT_DATABASE, help="database (the collector's bucket)")
    parser.add_argument("--out", type=Path, default=Path("docs/img"), help="folder for the PNG files")
    parser.add_argument("--minutes", type=float, default=5.0, help="time range, ending at the newest point")
    args = parser.parse_args(argv)
    for path in render_all(Influx(args.influx, args.db), args.out, args.minutes):
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
