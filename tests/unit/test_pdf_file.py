"""The PDF file writer (reports/pdf_file.py): objects, object streams, the cross-reference stream.
Read back by pypdf, which resolves every object through that stream."""

from __future__ import annotations

import io
import zlib

import pytest
from pypdf import PdfReader

from gpufleet.reports import pdf_file
from gpufleet.reports.pdf_file import PdfFile, number, stream, text_string


TITLE = "Ω (x) \\ é"  # PDF string syntax and characters past Latin-1


def one_page_file(extra_objects: int = 0) -> bytes:
    pdf = PdfFile()
    catalog, pages = pdf.reserve(), pdf.reserve()
    content = pdf.add_stream(b"0 0 1 rg 10 10 50 50 re f")
    page = pdf.add(f"<</Type /Page /Parent {pages} 0 R /MediaBox [0 0 200 100] /Contents {content} 0 R>>")
    pdf.set(pages, f"<</Type /Pages /Kids [{page} 0 R] /Count 1>>")
    pdf.set(catalog, f"<</Type /Catalog /Pages {pages} 0 R>>")
    first = pdf.reserve_many(extra_objects)
    pdf.set_many(first, [f"<</Value {n}>>" for n in range(extra_objects)])
    info = pdf.add("<</Title " + text_string(TITLE) + ">>")
    return pdf.to_bytes(catalog, info)


def test_every_object_reads_back_through_object_streams():
    extra = pdf_file.OBJECTS_PER_STREAM + 5  # two object streams
    data = one_page_file(extra)
    reader = PdfReader(io.BytesIO(data))
    assert len(reader.pages) == 1 and reader.metadata.title == TITLE
    assert reader.pages[0].get_contents().get_data() == b"0 0 1 rg 10 10 50 50 re f"
    values = [reader.get_object(n)["/Value"] for n in range(5, 5 + extra)]
    assert values == list(range(extra))
    assert data.count(b"/Type /ObjStm") == 2 and b"/Type /XRef" in data and b"\nxref\n" not in data


def test_the_same_objects_make_the_same_bytes():
    assert one_page_file(3) == one_page_file(3)


def test_an_object_reserved_and_never_written_is_an_error():
    pdf = PdfFile()
    root = pdf.reserve()
    with pytest.raises(ValueError, match=r"never written: \[1\]"):
        pdf.to_bytes(root, root)
    pdf.set(root, "<<>>")
    with pytest.raises(ValueError, match="already written"):
        pdf.set(root, "<<>>")


def test_streams_numbers_and_text_strings():
    body = stream(b"abc", "/Subtype /X")
    assert body.startswith(b"<</Filter /FlateDecode /Subtype /X /Length ") and body.endswith(b"\nendstream")
    assert zlib.decompress(body.split(b"stream\n", 1)[1].rsplit(b"\nendstream", 1)[0]) == b"abc"
    assert [number(v) for v in (1.0, 0.125, -2.5, 595.276)] == ["1", "0.12", "-2.5", "595.28"]
    assert text_string("A)") == "<FEFF00410029>"


def stream_data(data: bytes, number: int) -> tuple[bytes, bytes]:
    """(dictionary, decoded data) of the stream object `number`, found by its header in the file."""
    at = data.index(b"\n%d 0 obj\n" % number) + 1
    head, rest = data[at:].split(b"stream\n", 1)
    length = int(head.split(b"/Length ")[1].split(b">>")[0])
    return head, zlib.decompress(rest[:length])


def test_the_cross_reference_stream_points_at_each_object():
    """Each entry of type 2 names an object stream and an index, and the index-th pair in that
    stream's header is that object's number: readers that look objects up by index rely on it."""
    data = one_page_file(pdf_file.OBJECTS_PER_STREAM + 5)
    xref_at = int(data.rsplit(b"startxref\n", 1)[1].split(b"\n")[0])
    xref_number = int(data[xref_at:].split(b" ", 1)[0])
    head, table = stream_data(data, xref_number)
    assert b"/Type /XRef" in head and len(table) == 7 * (xref_number + 1)
    entries = [(table[i], int.from_bytes(table[i + 1:i + 5], "big"), int.from_bytes(table[i + 5:i + 7], "big"))
               for i in range(0, len(table), 7)]
    assert entries[0] == (0, 0, 0xFFFF)
    headers: dict[int, list[int]] = {}
    for number_, (kind, field2, field3) in enumerate(entries[1:], 1):
        if kind == 1:
            assert data[field2:].startswith(b"%d 0 obj\n" % number_)
            continue
        assert kind == 2
        if field2 not in headers:
            objstm_head, objects = stream_data(data, field2)
            first = int(objstm_head.split(b"/First ")[1].split()[0].rstrip(b">"))
            headers[field2] = [int(v) for v in objects[:first].split()[0::2]]
        assert headers[field2][field3] == number_
