"""The PDF report, read back by a PDF library of its own (pypdf): what it shows, its tags, its
fonts, and a layout that keeps every text on the page. Pure: report in, bytes out, with the real
DejaVu fonts (fonts-dejavu-core)."""

from __future__ import annotations

import io
import re
from typing import Any

import pytest
from fontTools.ttLib import TTFont
from pypdf import PdfReader

from gpufleet.reports import charts, fonts, pdf_layout, render_pdf
from gpufleet.reports.document import Column, Document, Figure, Heading, Note, Span, Table, build
from gpufleet.reports.model import HOUR_NS, UsageRow, tenant_report
from gpufleet.reports.pdf_layout import CONTENT_BOTTOM, CONTENT_TOP, CONTENT_WIDTH, FACE_NAMES, MARGIN, NOTE_STYLE
from gpufleet.reports.render_pdf import Layout, document_pdf
from gpufleet.reports.settings import EXAMPLE_REFERENCE

from .test_reports_render import H100, PRICES, ROWS, S  # the same two tenants as the HTML's tests

# PDF syntax, markup, accents, Greek, CJK (no glyph in DejaVu), a character past U+FFFF, a tab.
HOSTILE = 'a (b) \\c <b>zoë Ωμέγα 日本 \U0001F600 d\te'


def read(data: bytes) -> PdfReader:
    return PdfReader(io.BytesIO(data))


def text_of(data: bytes) -> str:
    return "\n".join(page.extract_text() for page in read(data).pages)


def month(workloads: int = 3, identity: dict[str, str] | None = None, tenant: str = "lab-a") -> Any:
    """A tenant's month with `workloads` jobs, one a row, each seen for one hour."""
    rows = []
    for n in range(workloads):
        key = f"slurm:{1000 + n}"
        rows.append(UsageRow(S + (n % 720) * HOUR_NS, "c1", H100, tenant, 3600.0, 1800.0, 1800.0, 3_600_000.0, 1 << 30, 360,
                             workloads={key: identity or {"kind": "slurm_job", "job": str(1000 + n), "user": "ada"}}))
    return tenant_report(tenant, S, S + 720 * HOUR_NS, rows, PRICES)


def test_the_pdf_shows_what_the_html_shows_of_its_tenant_only():
    report = tenant_report("lab-a", S, S + 24 * HOUR_NS, ROWS, PRICES, [EXAMPLE_REFERENCE])
    data = render_pdf.render(report)
    pdf = read(data)
    assert data.startswith(b"%PDF-1.7") and data.rstrip().endswith(b"%%EOF")
    assert [(round(float(p.mediabox.width), 2), round(float(p.mediabox.height), 2)) for p in pdf.pages][0] == (595.28, 841.89)
    text = " ".join(text_of(data).split())  # lines wrap where the layout breaks them
    for shown in ("GPU usage report: lab-a", "2.50 EUR", "slurm:7", 'fell off "the" bus', "job=7, kind=slurm_job",
                  "GPU-hours per day (UTC)", "availability (fault-free share)", "EXAMPLE public-cloud"):
        assert shown in text, shown
    assert "lab-b" not in text and "secret" not in text
    assert pdf.metadata.title == "GPU usage: lab-a"
    assert render_pdf.render(report) == data  # the same report, the same bytes


def test_any_text_reads_back_as_it_was_given():
    report = month(1, {"kind": "slurm_job", "job": "1", "user": HOSTILE}, tenant=HOSTILE)
    data = render_pdf.render(report)
    text = text_of(data)
    # U+1F600 has no 2-byte code: it prints (and reads back) as U+FFFD; the rest comes back as sent.
    shown = HOSTILE.replace("\U0001F600", "\ufffd")
    assert f"GPU usage report: {shown}" in text
    assert f"user={shown}" in text.replace("\n", " ")
    # Greek is past the usual subset: the document's own subset carries its glyphs, at their code points.
    regular, cid_to_gid = embedded_font(data, "DejaVuSans")
    omega = int.from_bytes(cid_to_gid[2 * ord("Ω"):2 * ord("Ω") + 2], "big")
    assert omega == fonts.face("regular").gid_of_char["Ω"] and regular["glyf"][regular.getGlyphOrder()[omega]].numberOfContours > 0
    # DejaVu has a glyph for U+1F600, but a 2-byte code cannot name it: the map stops at U+FFFF, which U+FFFD is drawn with.
    assert len(cid_to_gid) <= 2 * 0x10000 and int.from_bytes(cid_to_gid[2 * 0xFFFD:2 * 0xFFFD + 2], "big") != 0


def embedded_font(data: bytes, name: str) -> tuple[TTFont, bytes]:
    """The font program a PDF embeds for `name` (DejaVuSans, ...) and its CIDToGIDMap."""
    for font in read(data).pages[0]["/Resources"]["/Font"].values():
        font = font.get_object()
        if font["/BaseFont"].endswith("+" + name):
            descendant = font["/DescendantFonts"][0].get_object()
            program = descendant["/FontDescriptor"]["/FontFile2"].get_data()
            return TTFont(io.BytesIO(program)), descendant["/CIDToGIDMap"].get_data()
    raise AssertionError(f"no {name} in the PDF")


def struct_kids(elem: Any) -> list[Any]:
    kids = elem.get("/K")
    if kids is None:
        return []
    kids = kids.get_object()
    if not isinstance(kids, list):
        kids = [kids]
    return [k.get_object() for k in kids if not isinstance(k.get_object(), int)]


def walk(elem: Any) -> list[Any]:
    found = [elem]
    for kid in struct_kids(elem):
        if "/S" in kid:
            found += walk(kid)
    return found


def test_tags_give_the_reading_order_tables_and_figures():
    report = tenant_report("lab-a", S, S + 24 * HOUR_NS, ROWS, PRICES, [EXAMPLE_REFERENCE])
    pdf = read(render_pdf.render(report))
    root = pdf.trailer["/Root"]
    assert bool(root["/MarkInfo"]["/Marked"]) and root["/Lang"] == "en"
    assert bool(root["/ViewerPreferences"]["/DisplayDocTitle"])
    (document,) = struct_kids(root["/StructTreeRoot"])
    roles = [e["/S"] for e in struct_kids(document)]
    assert roles[:5] == ["/H1", "/P", "/Div", "/H2", "/Figure"] and roles.count("/Table") == 5 and roles[-2:] == ["/H2", "/L"]
    figures = [e for e in struct_kids(document) if e["/S"] == "/Figure"]
    assert [f["/Alt"] for f in figures] == ["GPU-hours per day (UTC)", "Energy per day (UTC)"]
    tables = [e for e in struct_kids(document) if e["/S"] == "/Table"]
    workloads = tables[-1]
    rows = struct_kids(workloads)
    assert [c["/S"] for c in struct_kids(rows[0])] == ["/TH"] * 5 and struct_kids(rows[0])[0]["/A"]["/Scope"] == "/Column"
    assert len(rows) == 2 and [c["/S"] for c in struct_kids(rows[1])] == ["/TD"] * 5


def test_every_marked_content_belongs_to_its_element_in_the_parent_tree():
    data = render_pdf.render(month(300))
    pdf = read(data)
    tree = pdf.trailer["/Root"]["/StructTreeRoot"]
    nums = tree["/ParentTree"]["/Nums"]
    by_page = {nums[i]: nums[i + 1] for i in range(0, len(nums), 2)}
    assert tree["/ParentTreeNextKey"] == len(pdf.pages) == len(by_page)
    for page in pdf.pages:
        content = page.get_contents().get_data().decode("latin-1")
        mcids = [int(m) for m in re.findall(r"<</MCID (\d+)>> BDC", content)]
        owners = by_page[page["/StructParents"]]
        assert mcids == list(range(len(owners)))
        for mcid, owner in enumerate(owners):
            owner = owner.get_object()
            assert owner["/K"] == mcid and owner["/Pg"].get_object() == page.get_object()


def test_a_long_table_breaks_between_rows_and_repeats_its_header():
    data = render_pdf.render(month(300))
    pages = [page.extract_text() for page in read(data).pages]
    keys = [f"slurm:{1000 + n}" for n in range(300)]
    with_rows = [n for n, text in enumerate(pages) if "slurm:1" in text]
    assert len(with_rows) >= 3
    for n in with_rows:
        assert "workload\nidentity" in pages[n] or "workload identity" in pages[n].replace("\n", " "), n
    found = re.findall(r"slurm:1\d{3}", "\n".join(pages))
    assert found == keys  # each row once, in order, none cut across a page


def drawn_text(layout: Layout) -> list[tuple[int, float, float, float, str]]:
    """(page, x, baseline, width, text) of every line of text in the content, measured with the face it
    is set in: a small reader of the operators the layout writes (Tf, TL, Td, Tj, ')."""
    out = []
    for n, page in enumerate(layout.pages):
        face_name, size, leading = None, 0.0, 0.0
        for token in re.findall(r"/F\d [\d.]+ Tf|[\d.]+ TL|[\d.-]+ [\d.-]+ Td|<[0-9a-f]*> (?:Tj|')", " ".join([*page.artifacts, *page.ops])):
            if token.endswith("Tf"):
                font, font_size = token[1:].split()[:2]
                face_name, size = {v: k for k, v in FACE_NAMES.items()}[font], float(font_size)
            elif token.endswith("TL"):
                leading = float(token.split()[0])
            elif token.endswith("Td"):
                x, y = map(float, token.split()[:2])
            else:
                if token.endswith("'"):
                    y -= leading
                text = bytes.fromhex(token[1:token.index(">")]).decode("utf-16-be")
                out.append((n, x, y, layout.faces[face_name].width(text, size), text))
    return out


@pytest.mark.parametrize("identity", [
    {"kind": "slurm_job", "job": "1", "user": "ada", "comment": "word " * 80},  # wraps at spaces
    {"kind": "k8s_pod", "container": "0123456789abcdef" * 8, "pod_uid": "f" * 36},  # words wider than the page
    {"kind": "slurm_job", "job": "1", "comment": "x" * 40_000},  # a cell longer than a page: cut short
])
def test_every_text_stays_inside_the_margins(identity):
    layout = Layout(render_pdf.load_fonts())
    layout.place(build(month(60, identity)).blocks)
    texts = drawn_text(layout)
    assert len(texts) > 300
    footers = [(page, text) for page, _, y, _, text in texts if y < CONTENT_BOTTOM]
    assert footers == [(n, f"page {n + 1} of {len(layout.pages)}") for n in range(len(layout.pages))]  # in the bottom margin
    for page, x, y, width, text in texts:
        assert MARGIN - 0.01 <= x and x + width <= MARGIN + CONTENT_WIDTH + 0.01, (page, x, width)
        assert CONTENT_BOTTOM <= y <= CONTENT_TOP or (page, text) in footers, (page, y)


def test_column_widths_fill_the_page_and_narrow_columns_keep_their_text():
    faces = render_pdf.load_fonts()
    used = {name: set() for name in FACE_NAMES}
    long_word = "x" * 400
    table = Table((Column("key", False), Column("when", False), Column("n", True)), [[long_word, "2025-05-01 07h", "1"]] * 3)
    laid = pdf_layout.table_layout(faces, table, used)
    assert sum(laid.widths) == pytest.approx(CONTENT_WIDTH)
    assert [len(lines) for lines, _, _ in laid.rows[0][1]] [1:] == [1, 1]  # the date and the count are not broken
    assert len(laid.rows[0][1][0][0]) > 1  # the long word is cut


def test_wrap_breaks_at_spaces_then_cuts_long_words_after_a_separator():
    regular = render_pdf.load_fonts()["regular"]
    lines = pdf_layout.wrap(regular, "alpha beta gamma delta", 10, regular.width("gamma delta", 10) + 1)
    assert lines == ["alpha beta", "gamma delta"]
    cut = pdf_layout.wrap(regular, "pod_uid=0000001b-001b-4000-8000-0000c4e0a61f", 10, 100)
    assert "".join(cut) == "pod_uid=0000001b-001b-4000-8000-0000c4e0a61f" and all(regular.width(line, 10) <= 100 for line in cut)
    # cut where the line is full, or after the last separator if that is past the line's half
    assert cut == ["pod_uid=0000001b", "-001b-4000-8000-", "0000c4e0a61f"]


def test_a_cell_longer_than_a_page_is_cut_short_with_an_ellipsis():
    faces = render_pdf.load_fonts()
    table = Table((Column("key", False), Column("comment", False)), [["a", "word " * 20_000]])
    laid = pdf_layout.table_layout(faces, table, {name: set() for name in FACE_NAMES})
    (height, cells), = laid.rows
    assert laid.head_height + height <= CONTENT_TOP - CONTENT_BOTTOM
    assert cells[1][0][-1].endswith("…") and cells[1][0][0] .startswith("word word")


def test_flow_keeps_styles_apart_and_breaks_between_words():
    faces = render_pdf.load_fonts()
    pieces = ("Prices: ", Span("EXAMPLE rates", "example"), " and more words here " * 4)
    lines = pdf_layout.flow(faces, pieces, NOTE_STYLE, 200)
    assert len(lines) > 1
    words = " ".join(" ".join(text for _, text, _ in line) for line in lines).split()
    assert words == " ".join(p if isinstance(p, str) else p.text for p in pieces).split()
    first = lines[0]
    assert [style.face for _, _, style in first][:2] == ["regular", "bold"] and first[0][1] == "Prices: "
    for line in lines:
        for (x, text, style), after in zip(line, [*line[1:], None]):
            end = x + faces[style.face].width(text.rstrip(), style.size)
            assert end <= 200 + 0.01 and (after is None or end <= after[0] + 0.01)


def test_fonts_are_embedded_subsets_with_their_widths():
    data = render_pdf.render(tenant_report("lab-a", S, S + 24 * HOUR_NS, ROWS, PRICES))
    pdf = read(data)
    fonts_seen = {}
    for font in pdf.pages[0]["/Resources"]["/Font"].values():
        font = font.get_object()
        descendant = font["/DescendantFonts"][0].get_object()
        program = descendant["/FontDescriptor"]["/FontFile2"].get_data()
        fonts_seen[font["/BaseFont"].split("+")[1]] = TTFont(io.BytesIO(program))
        assert re.fullmatch(r"/[A-Z]{6}\+DejaVuSans(-Bold|Mono)?", font["/BaseFont"])
        assert font["/Encoding"] == "/Identity-H" and "/ToUnicode" in font
    assert set(fonts_seen) == {"DejaVuSans", "DejaVuSans-Bold", "DejaVuSansMono"}
    regular = fonts_seen["DejaVuSans"]
    full = fonts.face("regular")
    glyf = regular["glyf"]
    order = regular.getGlyphOrder()
    assert glyf[order[full.gid_of_char["A"]]].numberOfContours > 0  # drawn: kept
    assert glyf[order[full.gid_of_char["Ж"]]].numberOfContours == 0  # never drawn: emptied
    assert len(data) < (fonts.font_dir() / "DejaVuSans.ttf").stat().st_size


def test_a_document_with_every_block_lays_out_without_fonts_left_unused():
    document = Document("t", (
        Heading("A title", 1), Note(("Prices: ", Span("EXAMPLE", "example"), " and ", Span("code", "code"))),
        Figure(charts.stacked_bars("c", "u", ["2025-05-01"], [("s", charts.BUSY_COLOUR, [1.0])], chart_id="c")),
        Table((Column("a", False),), [[Span("total", "bold")], [""]]),
    ))
    text = text_of(document_pdf(document))
    assert "Prices: EXAMPLE and code" in text and "total" in text


def test_without_the_fonts_the_error_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setenv("GPUFLEET_FONT_DIR", str(tmp_path))
    with pytest.raises(fonts.FontError, match="apt-get install fonts-dejavu-core"):
        render_pdf.render(month(1))
