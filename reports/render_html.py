"""A tenant's report as one self-contained HTML file: inline CSS, inline SVG charts, no script,
no external resource, so it opens offline and travels as one mail attachment. Pure: a
TenantReport in, a str out; what it shows is document.build's, laid out by the browser."""

from __future__ import annotations

from html import escape

from . import charts
from .document import Block, Bullets, Cell, Column, Document, Figure, Heading, Inline, Note, Span, Subtitle, Table, Tiles, build
from .model import TenantReport

_CSS = """
body { font-family: "DejaVu Sans", Helvetica, Arial, sans-serif; color: #222; margin: 24px auto; max-width: 1000px; }
h1 { font-size: 22px; margin-bottom: 2px; } h2 { font-size: 17px; margin-top: 28px; border-bottom: 1px solid #ccc; }
.sub { color: #666; font-size: 13px; }
.tiles { display: grid; grid-template-columns: repeat(4, 1fr); gap: 10px; margin-top: 14px; }
.tile { border: 1px solid #ddd; border-radius: 6px; padding: 8px 10px; }
.tile .v { font-size: 20px; font-weight: bold; } .tile .k { font-size: 12px; color: #666; }
table { border-collapse: collapse; width: 100%; font-size: 13px; margin-top: 8px; }
th, td { border-bottom: 1px solid #e5e5e5; padding: 4px 6px; text-align: left; vertical-align: top; }
td.n, th.n { text-align: right; font-variant-numeric: tabular-nums; }
.note { font-size: 12px; color: #666; } .example { color: #a0522d; font-weight: bold; }
code { font-size: 12px; }
@media print { body { margin: 0; max-width: none; } h2, h3 { break-after: avoid; } svg, table, .tiles { break-inside: avoid; } }
@page { size: A4; margin: 14mm; }
"""

_SPAN_TAGS = {"bold": ("<b>", "</b>"), "code": ("<code>", "</code>"), "example": ('<span class="example">', "</span>")}


def render(report: TenantReport) -> str:
    return document_html(build(report))


def document_html(document: Document) -> str:
    parts = [
        f"<!DOCTYPE html><html lang={escape(document.language)}><head><meta charset=utf-8>",
        f"<title>{escape(document.title)}</title><style>{_CSS}</style></head><body>",
        *(_block(block) for block in document.blocks),
        "</body></html>",
    ]
    return "\n".join(parts)


def _block(block: Block) -> str:
    if isinstance(block, Table):
        return _table(block.columns, block.rows)
    if isinstance(block, Heading):
        return f"<h{block.level}>{escape(block.text)}</h{block.level}>"
    if isinstance(block, Subtitle):
        return f'<div class="sub">{escape(block.text)}</div>'
    if isinstance(block, Tiles):
        tiles = "".join(f'<div class="tile"><div class="v">{escape(v)}</div><div class="k">{escape(k)}</div></div>' for v, k in block.tiles)
        return f'<div class="tiles">{tiles}</div>'
    if isinstance(block, Figure):
        return charts.svg(block.chart)
    if isinstance(block, Note):
        tag = "p" if block.paragraph else "div"
        return f'<{tag} class="note">{"".join(map(_inline, block.pieces))}</{tag}>'
    if isinstance(block, Bullets):
        return '<ul class="note">' + "".join(f"<li>{escape(item)}</li>" for item in block.items) + "</ul>"
    raise TypeError(f"no HTML for {type(block).__name__}")


def _inline(piece: Inline) -> str:
    if isinstance(piece, Span):
        start, end = _SPAN_TAGS[piece.style]
        return f"{start}{escape(piece.text)}{end}"
    return escape(piece)


def _table(columns: tuple[Column, ...], rows: list[list[Cell]] | tuple) -> str:
    numeric = [c.numeric for c in columns]
    out = ["<table><thead><tr>", *(f'<th{" class=n" if c.numeric else ""}>{escape(c.title)}</th>' for c in columns), "</tr></thead><tbody>"]
    for row in rows:
        out.append("<tr>" + "".join(f'<td{" class=n" if num else ""}>{_inline(cell)}</td>' for cell, num in zip(row, numeric)) + "</tr>")
    out.append("</tbody></table>")
    return "".join(out)
