"""Bar charts for the reports. Pure: numbers in, a Chart out, a list of shapes in a fixed
960 x 300 box; `svg` writes it as inline SVG for the HTML report and the PDF report draws the same
shapes, so the two show the same chart. No JS, no external fonts or files."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape
from typing import Literal

WIDTH, HEIGHT = 960, 300
LEFT, RIGHT, TOP, BOTTOM = 64, 16, 36, 56
AXIS_COLOUR = "#555555"
GRID_COLOUR = "#dddddd"
TEXT_COLOUR = "#222222"

# Fixed colours: the screenshot tests look for them in the chart area.
BUSY_COLOUR = "#1f77b4"
IDLE_COLOUR = "#ff7f0e"
ENERGY_COLOUR = "#2ca02c"


@dataclass(frozen=True, slots=True)
class Bar:
    x: float
    y: float  # top edge; y grows downwards, as in SVG
    width: float
    height: float
    colour: str
    title: str = ""  # the tooltip: "2025-05-01 busy: 12 GPU-hours"


@dataclass(frozen=True, slots=True)
class Rule:
    x1: float
    y1: float
    x2: float
    y2: float
    colour: str


@dataclass(frozen=True, slots=True)
class Label:
    x: float
    y: float  # the baseline
    text: str
    size: float
    colour: str
    anchor: Literal["start", "middle", "end"] = "start"
    bold: bool = False
    upright: bool = False  # turned a quarter left about (x, y): the y axis's unit


Shape = Bar | Rule | Label


@dataclass(frozen=True, slots=True)
class Chart:
    chart_id: str
    title: str  # also the chart's accessible name
    shapes: tuple[Shape, ...]
    width: int = WIDTH
    height: int = HEIGHT


def nice_ceiling(value: float) -> float:
    """The smallest 1, 2, 2.5 or 5 x 10^n at or above value (an axis top people can read)."""
    if value <= 0 or not math.isfinite(value):
        return 1.0
    exponent = math.floor(math.log10(value))
    for step in (1, 2, 2.5, 5, 10):
        top = step * 10**exponent
        if top >= value * (1 - 1e-12):
            return float(top)
    return float(10 ** (exponent + 1))


def _fmt(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:,.2f}".rstrip("0").rstrip(".")


def stacked_bars(
    title: str,
    unit: str,
    labels: Sequence[str],
    series: Sequence[tuple[str, str, Sequence[float]]],
    *,
    chart_id: str,
) -> Chart:
    """Bars per label, one stacked segment per series (name, colour, values)."""
    n = len(labels)
    totals = [sum(values[i] for _, _, values in series) for i in range(n)]
    top = nice_ceiling(max(totals, default=0.0))
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    slot = plot_w / max(n, 1)
    bar_w = max(slot * 0.7, 1.0)
    shapes: list[Shape] = [Label(LEFT, 22, title, 15, TEXT_COLOUR, bold=True)]
    for i in range(5):  # grid lines and the axis labels
        y = TOP + plot_h - plot_h * i / 4
        shapes.append(Rule(LEFT, y, WIDTH - RIGHT, y, GRID_COLOUR))
        shapes.append(Label(LEFT - 6, y + 4, _fmt(top * i / 4), 11, AXIS_COLOUR, "end"))
    shapes.append(Label(14, TOP + plot_h / 2, unit, 11, AXIS_COLOUR, "middle", upright=True))
    every = max(1, math.ceil(n / 16))  # at most ~16 date labels
    for i, label in enumerate(labels):
        x = LEFT + slot * i + (slot - bar_w) / 2
        y = TOP + plot_h
        for name, colour, values in series:
            h = plot_h * values[i] / top if top else 0.0
            if h > 0:
                y -= h
                shapes.append(Bar(x, y, bar_w, h, colour, f"{label} {name}: {_fmt(values[i])} {unit}"))
        if i % every == 0:
            shapes.append(Label(LEFT + slot * i + slot / 2, TOP + plot_h + 16, label[5:] if len(label) == 10 else label,
                                11, AXIS_COLOUR, "middle"))
    shapes.append(Rule(LEFT, TOP + plot_h, WIDTH - RIGHT, TOP + plot_h, AXIS_COLOUR))
    x = LEFT
    for name, colour, _ in series:  # legend
        shapes.append(Bar(x, HEIGHT - 22, 12, 12, colour))
        shapes.append(Label(x + 16, HEIGHT - 12, name, 12, TEXT_COLOUR))
        x += 24 + 8 * len(name)
    return Chart(chart_id, title, tuple(shapes))


# --- as inline SVG ---------------------------------------------------------------------------


def _n(value: float) -> str:
    return f"{value:.1f}".removesuffix(".0")


def svg(chart: Chart) -> str:
    parts = [
        f'<svg id="{escape(chart.chart_id)}" class="chart" viewBox="0 0 {chart.width} {chart.height}" width="100%" '
        f'xmlns="http://www.w3.org/2000/svg" role="img" aria-label="{escape(chart.title)}">'
    ]
    for shape in chart.shapes:
        if isinstance(shape, Bar):
            box = f'x="{_n(shape.x)}" y="{_n(shape.y)}" width="{_n(shape.width)}" height="{_n(shape.height)}" fill="{shape.colour}"'
            parts.append(f"<rect {box}><title>{escape(shape.title)}</title></rect>" if shape.title else f"<rect {box}/>")
        elif isinstance(shape, Rule):
            parts.append(f'<line x1="{_n(shape.x1)}" y1="{_n(shape.y1)}" x2="{_n(shape.x2)}" y2="{_n(shape.y2)}" '
                         f'stroke="{shape.colour}" stroke-width="1"/>')
        else:
            parts.append(_svg_label(shape))
    parts.append("</svg>")
    return "".join(parts)


def _svg_label(label: Label) -> str:
    x, y = _n(label.x), _n(label.y)
    attrs = [f'x="{x}" y="{y}" font-size="{_n(label.size)}"']
    if label.bold:
        attrs.append('font-weight="bold"')
    if label.upright:
        attrs.append(f'transform="rotate(-90 {x} {y})"')
    if label.anchor != "start":
        attrs.append(f'text-anchor="{label.anchor}"')
    attrs.append(f'fill="{label.colour}"')
    return f"<text {' '.join(attrs)}>{escape(label.text)}</text>"
