"""How text and tables take room on an A4 page, in points: the print stylesheet of the HTML report
(sizes, colours, margins) turned into numbers, text measured and broken into lines, and tables
given column widths as a browser's auto table layout gives them. Pure: fonts in, numbers out."""

from __future__ import annotations

import re
from bisect import bisect_right
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import accumulate

from .document import Cell, Inline, Table
from .fonts import Face

PX = 0.75  # one CSS pixel in points (96 px to the inch)
PAGE_WIDTH, PAGE_HEIGHT = 595.28, 841.89  # A4
MARGIN = 14 / 25.4 * 72  # 14 mm
CONTENT_WIDTH = PAGE_WIDTH - 2 * MARGIN
CONTENT_TOP, CONTENT_BOTTOM = PAGE_HEIGHT - MARGIN, MARGIN

TEXT, MUTED, EXAMPLE = "#222222", "#666666", "#a0522d"
TABLE_RULE, HEADING_RULE, TILE_BORDER = "#e5e5e5", "#cccccc", "#dddddd"
RULE_WIDTH = 1 * PX

BODY_SIZE = 16 * PX
TABLE_SIZE, TABLE_PAD_Y, TABLE_PAD_X, TABLE_MARGIN = 13 * PX, 4 * PX, 6 * PX, 8 * PX
NOTE_SIZE, CODE_SIZE = 12 * PX, 12 * PX
HEADING_SIZES = {1: 22 * PX, 2: 17 * PX, 3: 18.72 * PX}  # h3 keeps the browser's 1.17 em of 16 px
HEADING_MARGINS = {1: (0.67 * 22 * PX, 2 * PX), 2: (28 * PX, 0.83 * 17 * PX), 3: (18.72 * PX, 18.72 * PX)}
TILE_GAP, TILE_PAD_Y, TILE_PAD_X, TILE_RADIUS, TILE_MARGIN = 10 * PX, 8 * PX, 10 * PX, 6 * PX, 14 * PX
TILE_VALUE_SIZE, TILE_COLUMNS = 20 * PX, 4
LIST_INDENT = 40 * PX
FACE_NAMES = {"regular": "F1", "bold": "F2", "mono": "F3"}


@dataclass(frozen=True, slots=True)
class Style:
    face: str  # regular, bold, mono
    size: float
    colour: str


SUBTITLE_STYLE = Style("regular", 13 * PX, MUTED)
NOTE_STYLE = Style("regular", NOTE_SIZE, MUTED)
FOOTER_STYLE = Style("regular", 9 * PX, MUTED)  # the page numbers, which the HTML does not have
TILE_VALUE_STYLE = Style("bold", TILE_VALUE_SIZE, TEXT)
TILE_KEY_STYLE = NOTE_STYLE
HEAD_STYLE = Style("bold", TABLE_SIZE, TEXT)  # a table's header cells (th)
SPAN_STYLES = {"bold": ("bold", None, None), "code": ("mono", CODE_SIZE, None), "example": ("bold", None, EXAMPLE)}


def span_style(piece: Inline, base: Style) -> tuple[str, Style]:
    if isinstance(piece, str):
        return piece, base
    face_name, size, colour = SPAN_STYLES[piece.style]
    return piece.text, Style(face_name, size or base.size, colour or base.colour)


@dataclass(slots=True)
class TableLayout:
    widths: list[float]
    head: list[LaidCell]  # the header row
    head_height: float
    rows: list[tuple[float, list[LaidCell]]]  # (height, cells)


LaidCell = tuple[list[str], Style, list[float]]  # lines, style, each line's width (if it is needed)


def unbroken_height(laid: TableLayout) -> float:
    """What of a table must go on one page (break-inside: avoid): all of it if a page can hold it,
    else its header and first row."""
    total = laid.head_height + sum(height for height, _ in laid.rows)
    if total <= CONTENT_TOP - CONTENT_BOTTOM:
        return total
    return laid.head_height + (laid.rows[0][0] if laid.rows else 0.0)


def table_layout(faces: dict[str, Face], table: Table, used: dict[str, set[str]]) -> TableLayout:
    """Column widths, then each cell's lines and each row's height. Notes the characters used.
    The hot path of a long report: cells are measured a column at a time."""
    columns = [measure_column(faces, [row[i] for row in table.rows], used) for i in range(len(table.columns))]
    used["bold"].update("".join(c.title for c in table.columns))
    widths = column_widths(faces, table, columns)
    pad = 2 * TABLE_PAD_X
    line_height = faces["regular"].line_height * TABLE_SIZE
    extra = 2 * TABLE_PAD_Y + RULE_WIDTH
    head_lines = [wrap(faces["bold"], c.title, TABLE_SIZE, w - pad) for c, w in zip(table.columns, widths)]
    head = [(lines, HEAD_STYLE, [faces["bold"].width(line, TABLE_SIZE) for line in lines]) for lines in head_lines]
    head_height = max(len(lines) for lines in head_lines) * line_height + extra
    most_lines = max(1, int((CONTENT_TOP - CONTENT_BOTTOM - head_height - extra) // line_height))  # a row a page can hold
    laid_columns = [lay_column(faces, column, width - pad, most_lines, c.numeric)
                    for column, width, c in zip(columns, widths, table.columns)]
    rows = [(max(len(lines) for lines, _, _ in cells) * line_height + extra, list(cells)) for cells in zip(*laid_columns)]
    return TableLayout(widths, head, head_height, rows)


def column_widths(faces: dict[str, Face], table: Table, columns: list[MeasuredColumn]) -> list[float]:
    """As a browser's auto table layout at width 100 %: each column's widest cell, and the room
    left shared in proportion to that; if the widest cells do not fit, each column's longest
    word first, and the rest in proportion to what each column would still take."""
    pad = 2 * TABLE_PAD_X
    head_widths = [faces["bold"].width(c.title, TABLE_SIZE) for c in table.columns]
    most = [max(head, max(measured, default=0.0)) + pad for head, (_, _, measured) in zip(head_widths, columns)]
    if sum(most) <= CONTENT_WIDTH:
        spare = CONTENT_WIDTH - sum(most)
        return [w + spare * w / sum(most) for w in most]
    least = [longest_word(faces, [(c.title, HEAD_STYLE), *zip(texts, styles)], [0.0, *measured]) + pad
             for c, (texts, styles, measured) in zip(table.columns, columns)]
    if sum(least) > CONTENT_WIDTH:
        return squeezed_widths(most, least)
    stretch = [m - n for m, n in zip(most, least)]
    spare = CONTENT_WIDTH - sum(least)
    return [n + spare * s / sum(stretch) if sum(stretch) else n for n, s in zip(least, stretch)]


BASE_CELL = Style("regular", TABLE_SIZE, TEXT)


MeasuredColumn = tuple[list[str], list[Style], list[float]]  # a column's texts, styles and widths


def measure_column(faces: dict[str, Face], cells: list[Cell], used: dict[str, set[str]]) -> MeasuredColumn:
    """A column's texts, styles and widths. Most columns are plain text in one style: those are
    measured without a call per cell."""
    if all(type(cell) is str for cell in cells):
        texts: list[str] = cells  # type: ignore[assignment]  # checked just above
        regular = faces["regular"].widths.__getitem__
        scale = TABLE_SIZE / 1000
        used["regular"].update("".join(texts))
        return texts, [BASE_CELL] * len(texts), [sum(map(regular, text)) * scale for text in texts]
    styled = [span_style(cell, BASE_CELL) for cell in cells]
    for text, style in styled:
        used[style.face].update(text)
    return [t for t, _ in styled], [s for _, s in styled], [faces[s.face].width(t, s.size) for t, s in styled]


def lay_column(faces: dict[str, Face], column: MeasuredColumn, inner: float, most_lines: int, right: bool) -> list[LaidCell]:
    """Each cell's lines at the column's inner width, and their widths if they are set
    right-aligned. A cell longer than a page is cut short with an ellipsis (the JSON report has
    it whole): rows never break across pages."""
    texts, styles, measured = column
    laid: list[LaidCell] = []
    for text, style, w in zip(texts, styles, measured):
        if w <= inner:
            laid.append(([text], style, [w]))
            continue
        this_face = faces[style.face]
        lines = wrap(this_face, text, style.size, inner, w)
        if len(lines) > most_lines:
            lines = [*lines[:most_lines - 1], ellipsized(this_face, lines[most_lines - 1], style.size, inner)]
        laid.append((lines, style, [this_face.width(line, style.size) for line in lines] if right else []))
    return laid


def ellipsized(this_face: Face, line: str, size: float, width: float) -> str:
    """The line with "…" at its end, shortened to fit `width`."""
    while line and this_face.width(line + "…", size) > width:
        line = line[:-1]
    return line + "…"


def squeezed_widths(most: list[float], least: list[float]) -> list[float]:
    """Widths when some column's longest word alone is too wide (a 64-hex-digit container id):
    the browser would let the table run off the page. Here the narrow columns keep their whole
    text, narrowest first while each fits its fair share of what is left; the rest share the
    remainder in proportion to their longest words, which are cut."""
    widths = [0.0] * len(most)
    remaining, left = CONTENT_WIDTH, sorted(range(len(most)), key=most.__getitem__)
    while left and most[left[0]] <= remaining / len(left):
        column = left.pop(0)
        widths[column] = most[column]
        remaining -= most[column]
    for column in left:
        widths[column] = remaining * least[column] / sum(least[c] for c in left)
    return widths


def longest_word(faces: dict[str, Face], cells: Sequence[tuple[str, Style]], widths: Sequence[float]) -> float:
    """The widest word of a column: its min-content width. Widest cells first, and none narrower
    than the widest word so far can hold a wider one."""
    best = 0.0
    for w, (text, style) in sorted(zip(widths, cells), key=lambda pair: pair[0], reverse=True):
        if w and w <= best:
            break
        this_face = faces[style.face]
        best = max(best, max(map(this_face.word_width, text.split(" "))) * style.size)
    return best


def wrap(this_face: Face, text: str, size: float, width: float, text_width: float | None = None) -> list[str]:
    """`text` in lines no wider than `width`: each line ends at its last space that fits (the
    space dropped), or, in a word wider than the line, where the line is full (after a separator
    such as - / = if there is one in the line's second half): the browser's overflow-wrap:
    anywhere. `text_width`: the text's width if the caller has measured it.
    One pass sums the characters' widths; each line is then a binary search in those sums."""
    if (this_face.width(text, size) if text_width is None else text_width) <= width:
        return [text]
    ends = list(accumulate(map(this_face.widths.__getitem__, text)))  # ends[i]: width of text[:i + 1], 1/1000 em
    limit = width * 1000 / size
    lines: list[str] = []
    start, length = 0, len(text)
    while start < length:
        before = ends[start - 1] if start else 0.0
        end = max(bisect_right(ends, before + limit, start), start + 1)  # text[start:end] fits
        if end >= length:
            lines.append(text[start:])
            break
        space = text.rfind(" ", start, end + 1)  # a space just past the edge may end the line too
        if space > start:
            lines.append(text[start:space])
            start = space + 1
            continue
        found = UP_TO_SOFT_BREAK.match(text, start, end)
        cut = found.end() if found is not None and found.end() - start > (end - start) // 2 else end
        lines.append(text[start:cut])
        start = cut
    return lines


UP_TO_SOFT_BREAK = re.compile(r"[^ ]*[-/=:,._]")  # a long identifier is cut after one of these if near the edge


def flow(faces: dict[str, Face], pieces: Sequence[Inline], base: Style, width: float) -> list[list[tuple[float, str, Style]]]:
    """Mixed-style text broken into lines at spaces: each line a list of runs (x offset, text,
    style). A space between two styles ends the first run; a word wider than a line is cut."""
    lines: list[list[tuple[float, str, Style]]] = [[]]
    x, space_before = 0.0, False
    for piece in pieces:
        text, style = span_style(piece, base)
        this_face = faces[style.face]
        space = this_face.width(" ", style.size)
        for i, word in enumerate(text.split(" ")):
            space_before = space_before or i > 0
            if not word:
                continue
            w = this_face.width(word, style.size)
            gap = space if space_before and x > 0 else 0.0
            if x > 0 and x + gap + w > width:
                lines.append([])
                x, gap = 0.0, 0.0
            parts = wrap(this_face, word, style.size, width) if w > width else [word]
            for n, part in enumerate(parts):
                if n:
                    lines.append([])
                    x, gap = 0.0, 0.0
                line = lines[-1]
                if line and line[-1][2] == style and gap:
                    start, joined, _ = line[-1]
                    line[-1] = (start, f"{joined} {part}", style)
                else:
                    if gap:  # the space goes with the run before, which has another style
                        start, joined, before = line[-1]
                        line[-1] = (start, joined + " ", before)
                    line.append((x + gap, part, style))
                x += gap + this_face.width(part, style.size)
            space_before = False
    return lines
