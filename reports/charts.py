"""Inline SVG bar charts for the HTML report. Pure: numbers in, an <svg> string out; no JS, no
external fonts or files, so the report stays one self-contained file that prints as it shows."""

from __future__ import annotations

import math
from collections.abc import Sequence
from html import escape

WIDTH, HEIGHT = 960, 300
LEFT, RIGHT, TOP, BOTTOM = 64, 16, 36, 56
AXIS_COLOUR = "#555555"
GRID_COLOUR = "#dddddd"

# Fixed colours: the screenshot test looks for them in the chart area.
BUSY_COLOUR = "#1f77b4"
IDLE_COLOUR = "#ff7f0e"
ENERGY_COLOUR = "#2ca02c"


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
) -> str:
    """Bars per label, one stacked segment per series (name, colour, values)."""
    n = len(labels)
    totals = [sum(values[i] for _, _, values in series) for i in range(n)]
    top = nice_ceiling(max(totals, default=0.0))
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    slot = plot_w / max(n, 1)
    bar_w = max(slot * 0.7, 1.0)
    parts = [
        (
            f'<svg id="{escape(chart_id)}" class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" width="100%" '
            f'xmlns="http://www.w3.org/2000/svg" role="img" aria-label="{escape(title)}">'
        ),
        f'<text x="{LEFT}" y="22" font-size="15" font-weight="bold" fill="#222">{escape(title)}</text>',
    ]
    for i in range(5):  # grid lines and the axis labels
        value = top * i / 4
        y = TOP + plot_h - plot_h * i / 4
        parts.append(f'<line x1="{LEFT}" y1="{y:.1f}" x2="{WIDTH - RIGHT}" y2="{y:.1f}" stroke="{GRID_COLOUR}" stroke-width="1"/>')
        parts.append(f'<text x="{LEFT - 6}" y="{y + 4:.1f}" font-size="11" text-anchor="end" fill="{AXIS_COLOUR}">{_fmt(value)}</text>')
    parts.append(
        f'<text x="14" y="{TOP + plot_h / 2:.1f}" font-size="11" fill="{AXIS_COLOUR}" '
        f'transform="rotate(-90 14 {TOP + plot_h / 2:.1f})" text-anchor="middle">{escape(unit)}</text>'
    )
    every = max(1, math.ceil(n / 16))  # at most ~16 date labels
    for i, label in enumerate(labels):
        x = LEFT + slot * i + (slot - bar_w) / 2
        y = TOP + plot_h
        for name, colour, values in series:
            h = plot_h * values[i] / top if top else 0.0
            if h > 0:
                y -= h
                parts.append(
                    f'<rect x="{x:.1f}" y="{y:.1f}" width="{bar_w:.1f}" height="{h:.1f}" fill="{colour}">'
                    f"<title>{escape(label)} {escape(name)}: {_fmt(values[i])} {escape(unit)}</title></rect>"
                )
        if i % every == 0:
            cx = LEFT + slot * i + slot / 2
            parts.append(
                f'<text x="{cx:.1f}" y="{TOP + plot_h + 16}" font-size="11" text-anchor="middle" fill="{AXIS_COLOUR}">'
                f"{escape(label[5:] if len(label) == 10 else label)}</text>"
            )
    parts.append(
        f'<line x1="{LEFT}" y1="{TOP + plot_h}" x2="{WIDTH - RIGHT}" y2="{TOP + plot_h}" stroke="{AXIS_COLOUR}" stroke-width="1"/>'
    )
    x = LEFT
    for name, colour, _ in series:  # legend
        parts.append(f'<rect x="{x}" y="{HEIGHT - 22}" width="12" height="12" fill="{colour}"/>')
        parts.append(f'<text x="{x + 16}" y="{HEIGHT - 12}" font-size="12" fill="#222">{escape(name)}</text>')
        x += 24 + 8 * len(name)
    parts.append("</svg>")
    return "".join(parts)
