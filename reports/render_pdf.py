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
What it adds: page numbers in the bottom margin. What it does not do: shaping (kerning, ligatures, right-to-left and complex scripts) and fallback
fonts; a character DejaVu lacks prints as a box, as it does in the HTML printed on a machine with
only DejaVu, and its text is still in the file. Pure but for the font files (fonts.py)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache

from . import charts
from .document import Block, Bullets, Document, Figure, Heading, Inline, Note, Subtitle, Table, Tiles, build
from .fonts import IDENTITY_TO_UNICODE, Face, FontError, Subset, face
from .model import TenantReport
from .pdf_file import PdfFile, number, ref, stream, text_string
from .pdf_layout import (
    BODY_SIZE, CONTENT_BOTTOM, CONTENT_TOP, CONTENT_WIDTH, FACE_NAMES, FOOTER_STYLE, HEADING_MARGINS, HEADING_RULE,
    HEADING_SIZES, LIST_INDENT, LaidCell, MARGIN, NOTE_SIZE, NOTE_STYLE, PAGE_HEIGHT, PAGE_WIDTH, PX,
    RULE_WIDTH, SUBTITLE_STYLE, Style, TABLE_MARGIN, TABLE_PAD_X, TABLE_PAD_Y, TABLE_RULE, TABLE_SIZE, TEXT,
    TILE_BORDER, TILE_COLUMNS, TILE_GAP, TILE_KEY_STYLE, TILE_MARGIN, TILE_PAD_X, TILE_PAD_Y, TILE_RADIUS,
    TILE_VALUE_STYLE, TableLayout, flow, table_layout, unbroken_height, wrap,
)

__all__ = ["FontError", "document_pdf", "load_fonts", "render"]

PRODUCER = "gpufleet"
FOOTER_BASELINE = CONTENT_BOTTOM / 2  # in the bottom margin


def render(report: TenantReport) -> bytes:
    return document_pdf(build(report))


def load_fonts() -> dict[str, Face]:
    """The faces, and each one's subset of the usual characters (what most documents embed)."""
    faces = {name: face(name) for name in FACE_NAMES}
    for this_face in faces.values():
        this_face.subset(())
    return faces


def document_pdf(document: Document) -> bytes:
    layout = Layout({name: face(name) for name in FACE_NAMES})
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
    __slots__ = ("ops", "artifacts", "marks", "font", "colour", "leading")

    def __init__(self) -> None:
        self.ops: list[str] = []  # the tagged content, in reading order
        self.artifacts: list[str] = []  # rules, borders, repeated headers: each sets its own state
        self.marks: list[Elem] = []  # MCID -> the element it belongs to
        self.font: tuple[str, float] | None = None  # the text state the ops have set so far
        self.colour: str | None = None
        self.leading = 0.0  # TL, for the ' operator

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


TABLE_RULE_START = f"{rgb(TABLE_RULE)} RG {number(RULE_WIDTH)} w {MARGIN:.2f} "  # a row's bottom border, but for its y
TABLE_RULE_END = MARGIN + CONTENT_WIDTH


# --- layout --------------------------------------------------------------------------------------


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

    def text(self, x: float, baseline: float, text: str, style: Style) -> None:
        if not text:
            return
        page = self.page
        this_face = self.faces[style.face]
        self.used[style.face].update(text)
        page.set_text_state(style.face, style.size, style.colour)
        page.ops.append(f"BT {x:.2f} {baseline:.2f} Td {this_face.encode(text)} Tj ET")

    def artifact_text(self, page: Page, x: float, baseline: float, text: str, style: Style) -> None:
        """Text outside the tags (it sets its own text state: artifacts are drawn apart)."""
        if not text:
            return
        self.used[style.face].update(text)
        page.artifacts.append(
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
                self.paragraph((block.text,), SUBTITLE_STYLE, 0.0)
            elif isinstance(block, Note):
                self.paragraph(block.pieces, NOTE_STYLE, NOTE_SIZE if block.paragraph else 0.0)
            elif isinstance(block, Tiles):
                self.tiles(block)
            elif isinstance(block, Figure):
                self.figure(block.chart)
            elif isinstance(block, Bullets):
                self.bullets(block)
            else:
                raise TypeError(f"no PDF layout for {type(block).__name__}")
        self.number_pages()

    def number_pages(self) -> None:
        """"page 3 of 69" in the bottom margin, right-aligned: a pagination artifact (a printed
        bill must say where its pages go; the HTML has no pages)."""
        this_face = self.faces[FOOTER_STYLE.face]
        for n, page in enumerate(self.pages, 1):
            text = f"page {n} of {len(self.pages)}"
            x = MARGIN + CONTENT_WIDTH - this_face.width(text, FOOTER_STYLE.size)
            self.artifact_text(page, x, FOOTER_BASELINE, text, FOOTER_STYLE)

    def lead_height(self, block: Block) -> float:
        """The height of what must follow a heading on its page: the whole block if it does not
        break, else its first piece (a table's header and first row, a note's first line)."""
        if isinstance(block, Table):
            return unbroken_height(self.table_layout(block))
        if isinstance(block, Figure):
            return self.figure_height(block.chart)
        if isinstance(block, Tiles):
            return self.tiles_height(block)
        if isinstance(block, Note | Bullets):
            return self.line_height(NOTE_STYLE)
        return 0.0

    def heading(self, block: Heading, keep: float) -> None:
        style = Style("bold", HEADING_SIZES[block.level], TEXT)
        top, bottom = HEADING_MARGINS[block.level]
        lines = self.wrap(block.text, style, CONTENT_WIDTH)
        height = len(lines) * self.line_height(style) + (RULE_WIDTH if block.level == 2 else 0.0)
        self.start_block(top, height + bottom + keep)
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

    def paragraph(self, pieces: Sequence[Inline], base: Style, margin: float) -> None:
        flowed = flow(self.faces, pieces, base, CONTENT_WIDTH)
        line_height = self.line_height(base)
        self.start_block(margin, len(flowed) * line_height)
        self.page.mark(Elem("P", self.root))
        ascent = self.faces[base.face].ascent * base.size / 1000
        for runs in flowed:
            for offset, text, style in runs:
                self.text(MARGIN + offset, self.y - ascent, text, style)
            self.y -= line_height
        self.page.end_mark()
        self.end_block(margin)

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
        xs = [MARGIN]
        for width in laid.widths[:-1]:
            xs.append(xs[-1] + width)
        numeric = [c.numeric for c in table.columns]
        # (x, width, right-aligned, the x of a left-aligned line as written): the same for every row
        places = [(x, width, right, f"{x + TABLE_PAD_X:.2f}") for x, width, right in zip(xs, laid.widths, numeric)]
        self.table_row(laid.head_height, laid.head, places, Elem("TR", elem), "TH")
        for height, cells in laid.rows:
            if height > self.room():
                self.new_page()
                self.artifact_row(laid, xs, numeric)
            self.table_row(height, cells, places, Elem("TR", elem), "TD")
        self.end_block(0.0)

    def table_row(self, height: float, cells: list[LaidCell], places: list[tuple[float, float, bool, str]], row: Elem,
                  role: str) -> None:
        """One row, each cell its own marked content. The hot loop of a long report: it writes
        the operators itself, the lines of a left-aligned cell in one text object (' moves to the
        next line by the leading, TL)."""
        page, ops = self.page, self.page.ops
        top = self.y
        line_height = self.faces["regular"].line_height * TABLE_SIZE
        if page.leading != line_height:
            page.leading = line_height
            ops.append(f"{line_height:.2f} TL")
        first_baseline = top - TABLE_PAD_Y - self.faces["regular"].ascent * TABLE_SIZE / 1000  # the row's strut
        baseline_text = f"{first_baseline:.2f}"
        entries = "/A <</O /Table /Scope /Column>>" if role == "TH" else ""
        for (lines, style, line_widths), (x, width, right, left_x) in zip(cells, places):
            cell = Elem(role, row, entries)
            if len(lines) == 1 and not lines[0]:
                continue  # an empty cell: an element with no content
            if page.font != (style.face, style.size) or page.colour != style.colour:
                page.set_text_state(style.face, style.size, style.colour)
            cell.page, cell.mcid = page, len(page.marks)
            page.marks.append(cell)
            if len(lines) == 1:  # most cells: one line, and no list to make
                line = lines[0]
                code = f"<{line.encode('utf-16-be').hex()}>" if line.isascii() else self.faces[style.face].encode(line)
                at = f"{x + width - TABLE_PAD_X - line_widths[0]:.2f}" if right else left_x
                ops.append(f"/{role} <</MCID {cell.mcid}>> BDC BT {at} {baseline_text} Td {code} Tj ET EMC")
                continue
            codes = [f"<{line.encode('utf-16-be').hex()}>" if line.isascii() else self.faces[style.face].encode(line)
                     for line in lines]
            if right:
                text = " ".join(f"BT {x + width - TABLE_PAD_X - w:.2f} {first_baseline - n * line_height:.2f} Td {code} Tj ET"
                                for n, (code, w) in enumerate(zip(codes, line_widths)))
            else:
                more = "".join(f" {code} '" for code in codes[1:])  # ': the next line (TL lower), then show
                text = f"BT {left_x} {baseline_text} Td {codes[0]} Tj{more} ET"
            ops.append(f"/{role} <</MCID {cell.mcid}>> BDC {text} EMC")
        self.y = top - height
        self.row_rule()

    def artifact_row(self, laid: TableLayout, xs: list[float], numeric: list[bool]) -> None:
        """The header row again at the top of a page the table went on to (a pagination artifact:
        read once, from the first page)."""
        line_height = self.faces["regular"].line_height * TABLE_SIZE
        first_baseline = self.y - TABLE_PAD_Y - self.faces["regular"].ascent * TABLE_SIZE / 1000
        for (lines, style, line_widths), x, width, right in zip(laid.head, xs, laid.widths, numeric):
            for n, (line, line_width) in enumerate(zip(lines, line_widths)):
                at = x + width - TABLE_PAD_X - line_width if right else x + TABLE_PAD_X
                self.artifact_text(self.page, at, first_baseline - n * line_height, line, style)
        self.y -= laid.head_height
        self.row_rule()

    def row_rule(self) -> None:
        """A row's bottom border, along the current top (the hot path: one format, made once)."""
        y = self.y + RULE_WIDTH / 2
        self.page.artifacts.append(f"{TABLE_RULE_START}{y:.2f} m {TABLE_RULE_END:.2f} {y:.2f} l S")

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

    def figure_height(self, chart: charts.Chart) -> float:
        """The chart at the content's width, and below it the descent of the line an inline SVG sits on."""
        return chart.height * CONTENT_WIDTH / chart.width - self.faces["regular"].descent * BODY_SIZE / 1000

    def figure(self, chart: charts.Chart) -> None:
        height = self.figure_height(chart)
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
        style = NOTE_STYLE
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
    """A Type 0 font over a CIDFontType2 (PDF 32000-1, 9.7): a 2-byte code is a Unicode code
    point (Identity-H), CIDToGIDMap turns it into the glyph, ToUnicode back into the text."""
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


@lru_cache(maxsize=32)
def subset_tag(subset: Subset) -> str:
    """Six capitals naming the subset (PDF 32000-1, 9.6.4): the same glyphs, the same tag."""
    digest = hashlib.sha1(subset.program).digest()
    return "".join(chr(65 + b % 26) for b in digest[:6])
