"""A tenant's report as a tagged PDF, laid out here from the same document.build blocks as the HTML
report, with the same sizes and colours as the HTML's print stylesheet (A4, 14 mm margins).

Written directly, not printed by a browser: headless Chromium needed ~0.4 CPU-s a file, and a
month of 200 tenants' reports must take seconds. What the PDF keeps of the browser's:
  - every text in DejaVu Sans (and Mono for workload keys), embedded as a subset, any Unicode the
    font has; text can be searched and copied (ToUnicode);
  - tables laid out by the HTML's auto table layout (column widths from content), rows never cut
    across pages, the header row repeated on each page, long text wrapped;
  - `break-inside: avoid` for tiles, charts and tables that fit a page, and headings kept with
    what follows them;
  - tags (PDF 32000-1, 14.8): headings, paragraphs, lists, tables with header cells, charts as
    figures with their title as alternate text, in reading order; rules, borders and repeated
    headers are artifacts.
What it does not do: shaping (kerning, ligatures, right-to-left and complex scripts) and fallback
fonts; a character DejaVu lacks prints as a box, as it does in the HTML printed on a machine with
only DejaVu, and its text is still in the file. Pure but for the font files (fonts.py)."""

from __future__ import annotations

import hashlib
import re
from bisect import bisect_right
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from itertools import accumulate

from . import charts
from .document import Block, Bullets, Cell, Document, Figure, Heading, Inline, Note, Subtitle, Table, Tiles, build
from .fonts import IDENTITY_TO_UNICODE, Face, FontError, Subset, face
from .model import TenantReport
from .pdf_file import PdfFile, number, ref, stream, text_string

__all__ = ["FontError", "document_pdf", "load_fonts", "render"]

PX = 0.75  # one CSS pixel in points (96 px to the inch)
PAGE_WIDTH, PAGE_HEIGHT = 595.28, 841.89  # A4
MARGIN = 14 / 25.4 * 72  # 14 mm
CONTENT_WIDTH = PAGE_WIDTH - 2 * MARGIN
CONTENT_TOP, CONTENT_BOTTOM = PAGE_HEIGHT - MARGIN, MARGIN
PRODUCER = "gpufleet"

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


TILE_VALUE_STYLE = Style("bold", TILE_VALUE_SIZE, TEXT)
TILE_KEY_STYLE = Style("regular", NOTE_SIZE, MUTED)
SPAN_STYLES = {"bold": ("bold", None, None), "code": ("mono", CODE_SIZE, None), "example": ("bold", None, EXAMPLE)}


def span_style(piece: Inline, base: Style) -> tuple[str, Style]:
    if isinstance(piece, str):
        return piece, base
    face_name, size, colour = SPAN_STYLES[piece.style]
    return piece.text, Style(face_name, size or base.size, colour or base.colour)


def render(report: TenantReport) -> bytes:
    return document_pdf(build(report))


def load_fonts() -> dict[str, Face]:
    """The faces, and each one's subset of the usual characters (what most documents embed)."""
    faces = {name: face(name) for name in FACE_NAMES}
    for this_face in faces.values():
        this_face.subset(())
    return faces


def document_pdf(document: Document) -> bytes:
    faces = {name: face(name) for name in FACE_NAMES}
    layout = Layout(faces)
    layout.place(document.blocks)
    return write_file(document, layout)


# --- tags and pages ----------------------------------------------------------------------------


class Elem:
    """A structure element: a role, its kids, and where its content is marked (page, MCID)."""

    __slots__ = ("role", "parent", "kids", "page", "mcid", "entries", "number")

    def __init__(self, role: str, parent: Elem | None = None, entries: str = "") -> None:
        self.role = role
        self.parent = parent
        self.kids: list[Elem] = []
        self.page: Page | None = None
        self.mcid: int | None = None
        self.entries = entries  # more of its dictionary: /Alt, /A
        self.number = 0  # its object number, once written
        if parent is not None:
            parent.kids.append(self)


class Page:
    __slots__ = ("ops", "artifacts", "marks", "font", "colour", "used")

    def __init__(self) -> None:
        self.ops: list[str] = []  # the tagged content, in reading order
        self.artifacts: list[str] = []  # rules, borders, repeated headers: each sets its own state
        self.marks: list[Elem] = []  # MCID -> the element it belongs to
        self.font: tuple[str, float] | None = None  # the text state the ops have set so far
        self.colour: str | None = None

    def mark(self, elem: Elem) -> None:
        """Begin the marked content of `elem` (one run of content per element)."""
        elem.page, elem.mcid = self, len(self.marks)
        self.marks.append(elem)
        self.ops.append(f"/{elem.role} <</MCID {elem.mcid}>> BDC")

    def end_mark(self) -> None:
        self.ops.append("EMC")

    def set_text_state(self, face_name: str, size: float, colour: str) -> None:
        if self.font != (face_name, size):
            self.font = (face_name, size)
            self.ops.append(f"/{FACE_NAMES[face_name]} {number(size)} Tf")
        if self.colour != colour:
            self.colour = colour
            self.ops.append(f"{rgb(colour)} rg")


@lru_cache(maxsize=64)
def rgb(colour: str) -> str:
    """#rrggbb as PDF's three 0-1 components, with the digits to give each byte back exactly."""
    return " ".join(f"{int(colour[i:i + 2], 16) / 255:.4f}" for i in (1, 3, 5))


# --- layout --------------------------------------------------------------------------------------


@dataclass(slots=True)
class TableLayout:
    widths: list[float]
    head: list[list[str]]  # lines per header cell
    head_height: float
    rows: list[tuple[float, list[LaidCell]]]  # (height, cells)


LaidCell = tuple[list[str], Style, list[float]]  # lines, style, each line's width


@dataclass(slots=True)
class Layout:
    """Places blocks top to bottom, page after page, drawing as it goes."""

    faces: dict[str, Face]
    pages: list[Page] = field(default_factory=list)
    root: Elem = field(default_factory=lambda: Elem("Document"))
    used: dict[str, set[str]] = field(default_factory=lambda: {name: set() for name in FACE_NAMES})
    y: float = CONTENT_TOP
    margin: float = 0.0  # the bottom margin of the block above, collapsed with the next one's top
    laid_tables: dict[int, TableLayout] = field(default_factory=dict)  # id(Table): the document keeps each alive

    @property
    def page(self) -> Page:
        return self.pages[-1]

    def new_page(self) -> None:
        self.pages.append(Page())
        self.y = CONTENT_TOP
        self.margin = 0.0

    def at_top(self) -> bool:
        return self.y >= CONTENT_TOP

    def room(self) -> float:
        return self.y - CONTENT_BOTTOM

    def start_block(self, margin_top: float, keep: float) -> None:
        """Move to the block's top: past the collapsed margin, or to a new page if the first
        `keep` points of it do not fit here (margins at the top of a page are dropped)."""
        gap = max(self.margin, margin_top)
        if not self.at_top() and gap + keep > self.room():
            self.new_page()
        elif not self.at_top():
            self.y -= gap

    def end_block(self, margin_bottom: float) -> None:
        self.margin = margin_bottom

    # text

    def line_height(self, style: Style) -> float:
        return self.faces[style.face].line_height * style.size

    def text(self, x: float, baseline: float, text: str, style: Style, page: Page | None = None) -> None:
        if not text:
            return
        page = page or self.page
        this_face = self.faces[style.face]
        self.used[style.face].update(text)
        page.set_text_state(style.face, style.size, style.colour)
        page.ops.append(f"BT {x:.2f} {baseline:.2f} Td {this_face.encode(text)} Tj ET")

    def artifact_text(self, x: float, baseline: float, text: str, style: Style) -> None:
        if not text:
            return
        self.used[style.face].update(text)
        self.page.artifacts.append(
            f"BT /{FACE_NAMES[style.face]} {number(style.size)} Tf {rgb(style.colour)} rg {x:.2f} {baseline:.2f} Td "
            f"{self.faces[style.face].encode(text)} Tj ET"
        )

    def rule(self, x1: float, y1: float, x2: float, y2: float, colour: str) -> None:
        self.page.artifacts.append(f"{rgb(colour)} RG {number(RULE_WIDTH)} w {x1:.2f} {y1:.2f} m {x2:.2f} {y2:.2f} l S")

    def wrap(self, text: str, style: Style, width: float) -> list[str]:
        return wrap(self.faces[style.face], text, style.size, width)

    # blocks

    def place(self, blocks: Sequence[Block]) -> None:
        self.new_page()
        for i, block in enumerate(blocks):
            if isinstance(block, Heading):
                following = blocks[i + 1] if i + 1 < len(blocks) else None
                self.heading(block, self.lead_height(following) if following is not None else 0.0)
            elif isinstance(block, Table):
                self.table(block)
            elif isinstance(block, Subtitle):
                self.paragraph((block.text,), Style("regular", TABLE_SIZE, MUTED), 0.0)
            elif isinstance(block, Note):
                self.paragraph(block.pieces, Style("regular", NOTE_SIZE, MUTED), NOTE_SIZE if block.paragraph else 0.0)
            elif isinstance(block, Tiles):
                self.tiles(block)
            elif isinstance(block, Figure):
                self.figure(block.chart)
            elif isinstance(block, Bullets):
                self.bullets(block)
            else:
                raise TypeError(f"no PDF layout for {type(block).__name__}")

    def lead_height(self, block: Block) -> float:
        """The height of what must follow a heading on its page: the whole block if it does not
        break, else its first piece (a table's header and first row)."""
        if isinstance(block, Table):
            return TABLE_MARGIN + unbroken_height(self.table_layout(block))
        if isinstance(block, Figure):
            return self.figure_height()
        if isinstance(block, Tiles):
            return TILE_MARGIN + self.tiles_height(block)
        if isinstance(block, Note):
            return NOTE_SIZE + self.line_height(Style("regular", NOTE_SIZE, MUTED))
        return 0.0

    def heading(self, block: Heading, keep: float) -> None:
        style = Style("bold", HEADING_SIZES[block.level], TEXT)
        top, bottom = HEADING_MARGINS[block.level]
        lines = self.wrap(block.text, style, CONTENT_WIDTH)
        height = len(lines) * self.line_height(style) + (RULE_WIDTH if block.level == 2 else 0.0)
        self.start_block(top, height + max(bottom, keep and TABLE_MARGIN) + keep)
        elem = Elem(f"H{block.level}", self.root)
        self.page.mark(elem)
        self.lines(MARGIN, lines, style)
        self.page.end_mark()
        if block.level == 2:
            self.y -= RULE_WIDTH / 2
            self.rule(MARGIN, self.y, MARGIN + CONTENT_WIDTH, self.y, HEADING_RULE)
            self.y -= RULE_WIDTH / 2
        self.end_block(bottom)

    def lines(self, x: float, lines: Iterable[str], style: Style) -> None:
        """Lines of one style from the current top, left-aligned at x; moves the top below them."""
        ascent = self.faces[style.face].ascent * style.size / 1000
        line_height = self.line_height(style)
        for line in lines:
            self.text(x, self.y - ascent, line, style)
            self.y -= line_height

    def paragraph(self, pieces: Sequence[Inline], base: Style, margin: float, x: float = MARGIN,
                  width: float = CONTENT_WIDTH, role: str = "P", parent: Elem | None = None) -> None:
        flowed = self.flow(pieces, base, width)
        line_height = self.line_height(base)
        self.start_block(margin, len(flowed) * line_height)
        elem = Elem(role, parent or self.root)
        self.page.mark(elem)
        ascent = self.faces[base.face].ascent * base.size / 1000
        for runs in flowed:
            for offset, text, style in runs:
                self.text(x + offset, self.y - ascent, text, style)
            self.y -= line_height
        self.page.end_mark()
        self.end_block(margin)

    def flow(self, pieces: Sequence[Inline], base: Style, width: float) -> list[list[tuple[float, str, Style]]]:
        """Mixed-style text broken into lines at spaces: each line a list of (x offset, text, style)."""
        lines: list[list[tuple[float, str, Style]]] = [[]]
        x = 0.0
        for piece in pieces:
            text, style = span_style(piece, base)
            this_face = self.faces[style.face]
            for i, word in enumerate(text.split(" ")):
                token = (" " if i else "") + word
                if not token:
                    continue
                w = this_face.width(token, style.size)
                if x > 0 and x + w > width and token.startswith(" "):
                    lines.append([])
                    x, token = 0.0, token[1:]
                    w = this_face.width(token, style.size)
                for part in wrap(this_face, token, style.size, width) if w > width else [token]:
                    if x > 0 and part is not token:
                        lines.append([])
                        x = 0.0
                    lines[-1].append((x, part, style))
                    x += this_face.width(part, style.size)
        return lines

    # tables

    def table_layout(self, table: Table) -> TableLayout:
        """Laid out once: a heading above it asks first (to keep itself with the first row)."""
        laid = self.laid_tables.get(id(table))
        if laid is None:
            laid = self.laid_tables[id(table)] = table_layout(self.faces, table, self.used)
        return laid

    def table(self, table: Table) -> None:
        laid = self.table_layout(table)
        self.start_block(TABLE_MARGIN, unbroken_height(laid))
        elem = Elem("Table", self.root)
        head_elem = Elem("TR", elem)
        xs = [MARGIN]
        for width in laid.widths[:-1]:
            xs.append(xs[-1] + width)
        numeric = [c.numeric for c in table.columns]
        head_style = Style("bold", TABLE_SIZE, TEXT)
        head = [(lines, head_style, [self.faces["bold"].width(line, TABLE_SIZE) for line in lines]) for lines in laid.head]
        self.table_row(laid.head_height, head, xs, laid.widths, numeric, head_elem, "TH")
        for height, cells in laid.rows:
            if height > self.room():
                self.new_page()
                self.artifact_row(laid, xs, numeric, head_style)
            self.table_row(height, cells, xs, laid.widths, numeric, Elem("TR", elem), "TD")
        self.end_block(0.0)

    def table_row(self, height: float, cells: list[LaidCell], xs: list[float], widths: list[float],
                  numeric: list[bool], row: Elem, role: str) -> None:
        """One row, each cell its own marked content. The hot loop of a long report: it writes
        the operators itself rather than through text()."""
        page, ops = self.page, self.page.ops
        top = self.y
        line_height = self.faces["regular"].line_height * TABLE_SIZE
        entries = "/A <</O /Table /Scope /Column>>" if role == "TH" else ""
        for (lines, style, line_widths), x, width, right in zip(cells, xs, widths, numeric):
            cell = Elem(role, row, entries)
            if len(lines) == 1 and not lines[0]:
                continue  # an empty cell: an element with no content
            this_face = self.faces[style.face]
            encode = this_face.encode
            if page.font != (style.face, style.size) or page.colour != style.colour:
                page.set_text_state(style.face, style.size, style.colour)
            cell.page, cell.mcid = page, len(page.marks)
            page.marks.append(cell)
            baseline = top - TABLE_PAD_Y - this_face.ascent * TABLE_SIZE / 1000  # the cell's strut: a smaller span sits on its baseline
            text = []
            for line, line_width in zip(lines, line_widths):
                at = x + width - TABLE_PAD_X - line_width if right else x + TABLE_PAD_X
                text.append(f"BT {at:.2f} {baseline:.2f} Td {encode(line)} Tj ET")
                baseline -= line_height
            ops.append(f"/{role} <</MCID {cell.mcid}>> BDC {' '.join(text)} EMC")
        self.y = top - height
        rule_y = self.y + RULE_WIDTH / 2
        self.rule(MARGIN, rule_y, MARGIN + CONTENT_WIDTH, rule_y, TABLE_RULE)

    def artifact_row(self, laid: TableLayout, xs: list[float], numeric: list[bool], style: Style) -> None:
        """The header row again at the top of a page the table went on to (a pagination artifact:
        read once, from the first page)."""
        this_face = self.faces[style.face]
        ascent = this_face.ascent * TABLE_SIZE / 1000
        line_height = self.line_height(style)
        for lines, x, width, right in zip(laid.head, xs, laid.widths, numeric):
            baseline = self.y - TABLE_PAD_Y - ascent
            for line in lines:
                at = x + width - TABLE_PAD_X - this_face.width(line, style.size) if right else x + TABLE_PAD_X
                self.artifact_text(at, baseline, line, style)
                baseline -= line_height
        self.y -= laid.head_height
        rule_y = self.y + RULE_WIDTH / 2
        self.rule(MARGIN, rule_y, MARGIN + CONTENT_WIDTH, rule_y, TABLE_RULE)

    # tiles

    def tile_widths(self, block: Tiles) -> list[float]:
        """Four equal columns (1fr), but none narrower than its longest word, as a CSS grid's."""
        room = CONTENT_WIDTH - (TILE_COLUMNS - 1) * TILE_GAP
        pad = 2 * (TILE_PAD_X + RULE_WIDTH)
        need = [0.0] * TILE_COLUMNS
        for i, (value, key) in enumerate(block.tiles):
            words = [(word, TILE_VALUE_STYLE) for word in value.split(" ")] + [(word, TILE_KEY_STYLE) for word in key.split(" ")]
            longest = max(self.faces[style.face].width(word, style.size) for word, style in words)
            need[i % TILE_COLUMNS] = max(need[i % TILE_COLUMNS], longest + pad)
        fixed: dict[int, float] = {}
        while True:
            share = (room - sum(fixed.values())) / max(TILE_COLUMNS - len(fixed), 1)
            more = {i: need[i] for i in range(TILE_COLUMNS) if i not in fixed and need[i] > share}
            if not more:
                return [fixed.get(i, share) for i in range(TILE_COLUMNS)]
            fixed.update(more)

    def tile_content(self, value: str, key: str, width: float) -> tuple[list[str], list[str], float]:
        inner = width - 2 * (TILE_PAD_X + RULE_WIDTH)
        values, keys = self.wrap(value, TILE_VALUE_STYLE, inner), self.wrap(key, TILE_KEY_STYLE, inner)
        height = len(values) * self.line_height(TILE_VALUE_STYLE) + len(keys) * self.line_height(TILE_KEY_STYLE)
        return values, keys, height + 2 * (TILE_PAD_Y + RULE_WIDTH)

    def tile_rows(self, block: Tiles) -> list[list[tuple[float, float, str, str]]]:
        """(x, width, value, key) of each tile, four to a row."""
        widths = self.tile_widths(block)
        xs = [MARGIN + sum(widths[:i]) + i * TILE_GAP for i in range(TILE_COLUMNS)]
        placed = [(xs[i % TILE_COLUMNS], widths[i % TILE_COLUMNS], value, key) for i, (value, key) in enumerate(block.tiles)]
        return [placed[i:i + TILE_COLUMNS] for i in range(0, len(placed), TILE_COLUMNS)]

    def tiles_height(self, block: Tiles) -> float:
        rows = self.tile_rows(block)
        heights = [max(self.tile_content(v, k, w)[2] for _, w, v, k in row) for row in rows]
        return sum(heights) + TILE_GAP * (len(rows) - 1)

    def tiles(self, block: Tiles) -> None:
        self.start_block(TILE_MARGIN, self.tiles_height(block))
        group = Elem("Div", self.root)
        for n, row in enumerate(self.tile_rows(block)):
            if n:
                self.y -= TILE_GAP
            laid = [(x, width, *self.tile_content(v, k, width)) for x, width, v, k in row]
            height = max(h for *_, h in laid)
            top = self.y
            for x, width, values, keys, _ in laid:
                self.page.artifacts.append(
                    f"{rgb(TILE_BORDER)} RG {number(RULE_WIDTH)} w "
                    + rounded_rect(x + RULE_WIDTH / 2, top - height + RULE_WIDTH / 2, width - RULE_WIDTH, height - RULE_WIDTH,
                                   TILE_RADIUS) + " S"
                )
                self.page.mark(Elem("P", group))
                self.y = top - RULE_WIDTH - TILE_PAD_Y
                self.lines(x + RULE_WIDTH + TILE_PAD_X, values, TILE_VALUE_STYLE)
                self.lines(x + RULE_WIDTH + TILE_PAD_X, keys, TILE_KEY_STYLE)
                self.page.end_mark()
            self.y = top - height
        self.end_block(0.0)

    # charts

    def figure_height(self) -> float:
        scale = CONTENT_WIDTH / charts.WIDTH
        return charts.HEIGHT * scale + self.faces["regular"].descent * -BODY_SIZE / 1000

    def figure(self, chart: charts.Chart) -> None:
        height = self.figure_height()
        self.start_block(0.0, height)
        scale = CONTENT_WIDTH / chart.width
        left, top = MARGIN, self.y
        bbox = " ".join(number(v) for v in (left, top - chart.height * scale, left + chart.width * scale, top))
        elem = Elem("Figure", self.root, f"/Alt {text_string(chart.title)} /A <</O /Layout /BBox [{bbox}]>>")
        page = self.page
        page.mark(elem)
        for shape in chart.shapes:
            if isinstance(shape, charts.Bar):
                page.ops.append(f"{rgb(shape.colour)} rg {left + shape.x * scale:.2f} {top - (shape.y + shape.height) * scale:.2f} "
                                f"{shape.width * scale:.2f} {shape.height * scale:.2f} re f")
                page.colour = None  # rg also sets the text colour
            elif isinstance(shape, charts.Rule):
                page.ops.append(f"{rgb(shape.colour)} RG {number(scale)} w {left + shape.x1 * scale:.2f} {top - shape.y1 * scale:.2f} m "
                                f"{left + shape.x2 * scale:.2f} {top - shape.y2 * scale:.2f} l S")
            else:
                self.chart_label(shape, left, top, scale)
        page.end_mark()
        self.y = top - height
        self.end_block(0.0)

    def chart_label(self, label: charts.Label, left: float, top: float, scale: float) -> None:
        style = Style("bold" if label.bold else "regular", label.size * scale, label.colour)
        this_face = self.faces[style.face]
        shift = {"start": 0.0, "middle": 0.5, "end": 1.0}[label.anchor] * this_face.width(label.text, style.size)
        x, y = left + label.x * scale, top - label.y * scale
        self.used[style.face].update(label.text)
        page = self.page
        page.set_text_state(style.face, style.size, style.colour)
        if label.upright:  # turned a quarter left: the text runs up the page from (x, y - shift)
            page.ops.append(f"BT 0 1 -1 0 {x:.2f} {y - shift:.2f} Tm {this_face.encode(label.text)} Tj ET")
        else:
            page.ops.append(f"BT {x - shift:.2f} {y:.2f} Td {this_face.encode(label.text)} Tj ET")

    # lists

    def bullets(self, block: Bullets) -> None:
        style = Style("regular", NOTE_SIZE, MUTED)
        line_height = self.line_height(style)
        ascent = self.faces["regular"].ascent * style.size / 1000
        items = [self.wrap(item, style, CONTENT_WIDTH - LIST_INDENT) for item in block.items]
        self.start_block(NOTE_SIZE, len(items[0]) * line_height if items else 0.0)
        listing = Elem("L", self.root)
        for lines in items:
            if len(lines) * line_height > self.room():
                self.new_page()
            item = Elem("LI", listing)
            label = Elem("Lbl", item)
            self.page.mark(label)
            self.text(MARGIN + LIST_INDENT - 11 * PX, self.y - ascent, "•", style)
            self.page.end_mark()
            self.page.mark(Elem("LBody", item))
            self.lines(MARGIN + LIST_INDENT, lines, style)
            self.page.end_mark()
        self.end_block(NOTE_SIZE)


def unbroken_height(laid: TableLayout) -> float:
    """What of a table must go on one page (break-inside: avoid): all of it if a page can hold it,
    else its header and first row."""
    total = laid.head_height + sum(height for height, _ in laid.rows)
    if total <= CONTENT_TOP - CONTENT_BOTTOM:
        return total
    return laid.head_height + (laid.rows[0][0] if laid.rows else 0.0)


def table_layout(faces: dict[str, Face], table: Table, used: dict[str, set[str]]) -> TableLayout:
    """Column widths as the browser's auto table layout gives them (each column's widest cell,
    then the room left shared in proportion; if that does not fit, each column's longest word
    first), then each cell's lines and each row's height. Notes the characters used.
    The hot path of a long report: cells are measured a column at a time."""
    head_style = Style("bold", TABLE_SIZE, TEXT)
    columns = [measure_column(faces, [row[i] for row in table.rows], used) for i in range(len(table.columns))]
    used["bold"].update("".join(c.title for c in table.columns))
    pad = 2 * TABLE_PAD_X
    head_widths = [faces["bold"].width(c.title, TABLE_SIZE) for c in table.columns]
    most = [max(head, max(measured, default=0.0)) + pad for head, (_, _, measured) in zip(head_widths, columns)]
    if sum(most) <= CONTENT_WIDTH:
        spare = CONTENT_WIDTH - sum(most)
        widths = [w + spare * w / sum(most) for w in most]
    else:
        least = [longest_word(faces, [(c.title, head_style), *zip(texts, styles)], [0.0, *measured]) + pad
                 for c, (texts, styles, measured) in zip(table.columns, columns)]
        if sum(least) <= CONTENT_WIDTH:
            stretch = [m - n for m, n in zip(most, least)]
            spare = CONTENT_WIDTH - sum(least)
            widths = [n + spare * s / sum(stretch) if sum(stretch) else n for n, s in zip(least, stretch)]
        else:
            widths = squeezed_widths(most, least)
    laid_columns = [lay_column(faces, column, width - pad) for column, width in zip(columns, widths)]
    line_height = faces["regular"].line_height * TABLE_SIZE
    extra = 2 * TABLE_PAD_Y + RULE_WIDTH
    rows = []
    for cells in zip(*laid_columns):
        rows.append((max(len(lines) for lines, _, _ in cells) * line_height + extra, list(cells)))
    head_lines = [wrap(faces["bold"], c.title, TABLE_SIZE, w - pad) for c, w in zip(table.columns, widths)]
    head_height = max(len(lines) for lines in head_lines) * line_height + extra
    return TableLayout(widths, head_lines, head_height, rows)


BASE_CELL = Style("regular", TABLE_SIZE, TEXT)


def measure_column(faces: dict[str, Face], cells: list[Cell], used: dict[str, set[str]]) -> tuple[list[str], list[Style], list[float]]:
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


def lay_column(faces: dict[str, Face], column: tuple[list[str], list[Style], list[float]], inner: float) -> list[LaidCell]:
    """Each cell's lines at the column's inner width."""
    texts, styles, measured = column
    laid: list[LaidCell] = []
    for text, style, w in zip(texts, styles, measured):
        if w <= inner:
            laid.append(([text], style, [w]))
        else:
            this_face = faces[style.face]
            lines = wrap(this_face, text, style.size, inner)
            laid.append((lines, style, [this_face.width(line, style.size) for line in lines]))
    return laid


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


def wrap(this_face: Face, text: str, size: float, width: float) -> list[str]:
    """`text` in lines no wider than `width`, broken at spaces; a word wider than a line is cut
    where it reaches the edge (the browser's overflow-wrap: anywhere)."""
    if this_face.width(text, size) <= width:
        return [text]
    space = this_face.width(" ", size)
    lines: list[str] = []
    line, line_width = "", 0.0
    for word in text.split(" "):
        w = this_face.word_width(word) * size
        if line and line_width + space + w <= width:
            line, line_width = f"{line} {word}", line_width + space + w
            continue
        if line:
            lines.append(line)
        while w > width and len(word) > 1:
            cut = soft_break(word, fits(this_face, word, size, width))
            lines.append(word[:cut])
            word = word[cut:]
            w = this_face.width(word, size)
        line, line_width = word, w
    lines.append(line)
    return lines


UP_TO_SOFT_BREAK = re.compile(r".*[-/=:,._]", re.DOTALL)  # a long identifier is cut after one of these if near the edge


def soft_break(word: str, cut: int) -> int:
    """`cut`, or earlier: just after the last soft break before it, if that is past cut's half."""
    found = UP_TO_SOFT_BREAK.match(word, 0, cut)
    return found.end() if found is not None and found.end() > cut // 2 else cut


def fits(this_face: Face, word: str, size: float, width: float) -> int:
    """How many of word's first characters fit in `width` (at least one)."""
    edges = list(accumulate(map(this_face.widths.__getitem__, word)))
    return max(bisect_right(edges, width * 1000 / size), 1)


def rounded_rect(x: float, y: float, w: float, h: float, r: float) -> str:
    """A path: the rectangle with its corners rounded by cubic Béziers (k: a quarter circle's)."""
    k = 0.5523 * r
    return (
        f"{x + r:.2f} {y:.2f} m {x + w - r:.2f} {y:.2f} l "
        f"{x + w - r + k:.2f} {y:.2f} {x + w:.2f} {y + r - k:.2f} {x + w:.2f} {y + r:.2f} c "
        f"{x + w:.2f} {y + h - r:.2f} l {x + w:.2f} {y + h - r + k:.2f} {x + w - r + k:.2f} {y + h:.2f} {x + w - r:.2f} {y + h:.2f} c "
        f"{x + r:.2f} {y + h:.2f} l {x + r - k:.2f} {y + h:.2f} {x:.2f} {y + h - r + k:.2f} {x:.2f} {y + h - r:.2f} c "
        f"{x:.2f} {y + r:.2f} l {x:.2f} {y + r - k:.2f} {x + r - k:.2f} {y:.2f} {x + r:.2f} {y:.2f} c h"
    )


# --- the file ------------------------------------------------------------------------------------


def write_file(document: Document, layout: Layout) -> bytes:
    pdf = PdfFile()
    catalog, pages_ref, tree_ref = pdf.reserve(), pdf.reserve(), pdf.reserve()
    fonts = {name: font_objects(pdf, layout.faces[name], layout.faces[name].subset(chars))
             for name, chars in layout.used.items() if chars}
    resources = "<</Font <<" + " ".join(f"/{FACE_NAMES[name]} {ref(n)}" for name, n in fonts.items()) + ">> >>"
    page_refs = []
    for index, page in enumerate(layout.pages):
        content = "q\n/Artifact BMC\n" + "\n".join(page.artifacts) + "\nEMC\nQ\n" + "\n".join(page.ops) + "\n"
        contents = pdf.add_stream(content.encode("latin-1"))
        page_refs.append(pdf.add(
            f"<</Type /Page /Parent {ref(pages_ref)} /MediaBox [0 0 {number(PAGE_WIDTH)} {number(PAGE_HEIGHT)}] "
            f"/Resources {resources} /Contents {ref(contents)} /StructParents {index} /Tabs /S>>"
        ))
    pdf.set(pages_ref, f"<</Type /Pages /Kids [{' '.join(map(ref, page_refs))}] /Count {len(page_refs)}>>")
    write_elems(pdf, layout.root, tree_ref, page_refs, layout.pages)
    parent_tree = pdf.add(
        "<</Nums [" + " ".join(f"{i} [{' '.join(ref(e.number) for e in page.marks)}]" for i, page in enumerate(layout.pages)) + "]>>"
    )
    pdf.set(tree_ref, f"<</Type /StructTreeRoot /K [{ref(layout.root.number)}] /ParentTree {ref(parent_tree)} "
                      f"/ParentTreeNextKey {len(layout.pages)}>>")
    pdf.set(catalog, f"<</Type /Catalog /Pages {ref(pages_ref)} /StructTreeRoot {ref(tree_ref)} /MarkInfo <</Marked true>> "
                     f"/Lang {text_string(document.language)} /ViewerPreferences <</DisplayDocTitle true>>>>")
    info = pdf.add(f"<</Title {text_string(document.title)} /Producer {text_string(PRODUCER)} /Creator {text_string(PRODUCER)}>>")
    return pdf.to_bytes(catalog, info)


def write_elems(pdf: PdfFile, root: Elem, tree_ref: int, page_refs: list[int], pages: list[Page]) -> None:
    """Every structure element as an object (thousands in a long report: one per table cell)."""
    page_number = {id(page): n for page, n in zip(pages, page_refs)}
    order = [root]
    for elem in order:  # breadth first: the list grows as it is read
        order.extend(elem.kids)
    first = pdf.reserve_many(len(order))
    for n, elem in enumerate(order, first):
        elem.number = n
    bodies = []
    for elem in order:
        parent = elem.parent.number if elem.parent is not None else tree_ref
        if elem.kids:
            kids = "/K [" + " ".join([f"{kid.number} 0 R" for kid in elem.kids]) + "]"
        elif elem.page is not None:
            kids = f"/Pg {page_number[id(elem.page)]} 0 R /K {elem.mcid}"
        else:
            kids = ""  # an empty table cell
        bodies.append(f"<</Type /StructElem /S /{elem.role} /P {parent} 0 R {kids} {elem.entries}>>")
    pdf.set_many(first, bodies)


def font_objects(pdf: PdfFile, this_face: Face, subset: Subset) -> int:
    """A Type 0 font over a CIDFontType2 (PDF 32000-1, 9.7): 2-byte codes are glyph ids."""
    tag = subset_tag(subset)
    name = f"{tag}+{this_face.postscript_name}"
    program = pdf.add(font_program(subset))
    flags = 32 | (1 if this_face.fixed_pitch else 0)  # nonsymbolic, fixed pitch
    descriptor = pdf.add(
        f"<</Type /FontDescriptor /FontName /{name} /Flags {flags} /FontBBox [{' '.join(map(str, this_face.bbox))}] "
        f"/ItalicAngle {number(this_face.italic_angle)} /Ascent {round(this_face.ascent)} /Descent {round(this_face.descent)} "
        f"/CapHeight {round(this_face.cap_height)} /StemV 80 /FontFile2 {ref(program)}>>"
    )
    cid_font = pdf.add(
        f"<</Type /Font /Subtype /CIDFontType2 /BaseFont /{name} "
        f"/CIDSystemInfo <</Registry (Adobe) /Ordering (Identity) /Supplement 0>> /FontDescriptor {ref(descriptor)} "
        f"/DW {round(this_face.widths.missing)} /W {subset.widths} /CIDToGIDMap {ref(pdf.add(cid_to_gid_map(subset)))}>>"
    )
    to_unicode = pdf.add(IDENTITY_CMAP)
    return pdf.add(f"<</Type /Font /Subtype /Type0 /BaseFont /{name} /Encoding /Identity-H "
                   f"/DescendantFonts [{ref(cid_font)}] /ToUnicode {ref(to_unicode)}>>")


@lru_cache(maxsize=32)
def font_program(subset: Subset) -> bytes:
    """The compressed font file, once per subset for all the documents of a run."""
    return stream(subset.program, f"/Length1 {len(subset.program)}")


@lru_cache(maxsize=32)
def cid_to_gid_map(subset: Subset) -> bytes:
    return stream(subset.cid_to_gid)


IDENTITY_CMAP = stream(IDENTITY_TO_UNICODE)


def subset_tag(subset: Subset) -> str:
    """Six capitals naming the subset (PDF 32000-1, 9.6.4): the same glyphs, the same tag."""
    digest = hashlib.sha1(subset.program).digest()
    return "".join(chr(65 + b % 26) for b in digest[:6])
