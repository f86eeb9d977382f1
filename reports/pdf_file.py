"""A PDF file's bones (PDF 32000-1:2008, section 7): numbered objects, object streams, the
cross-reference stream and its trailer entries. Pure: object bodies in, bytes out. What the objects say is render_pdf's."""

from __future__ import annotations

import hashlib
import struct
import zlib
from itertools import accumulate

HEADER = b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n"  # the binary comment tells transfer tools the file is binary
COMPRESS_LEVEL = 1  # the fastest: 3 makes a report ~3 % smaller for ~10 % more time to write it, 6 ~10 % for twice
OBJECTS_PER_STREAM = 2000
XREF_ENTRY = struct.Struct(">BIH")  # /W [1 4 2]: type, offset or object stream, generation or index


class PdfFile:
    """Objects numbered from 1 in the order they are reserved; each body set exactly once."""

    def __init__(self) -> None:
        self._bodies: list[bytes | None] = []

    def reserve(self) -> int:
        """A number for an object whose body is written later (pages point at their parent)."""
        self._bodies.append(None)
        return len(self._bodies)

    def reserve_many(self, count: int) -> int:
        """Numbers for `count` objects in a row; the first."""
        first = len(self._bodies) + 1
        self._bodies.extend([None] * count)
        return first

    def set_many(self, first: int, bodies: list[str]) -> None:
        """Bodies of the objects numbered from `first` (reserved with reserve_many)."""
        if any(body is not None for body in self._bodies[first - 1:first - 1 + len(bodies)]):
            raise ValueError(f"objects from {first} are already written")
        self._bodies[first - 1:first - 1 + len(bodies)] = [body.encode("latin-1") for body in bodies]

    def set(self, number: int, body: bytes | str) -> int:
        if self._bodies[number - 1] is not None:
            raise ValueError(f"object {number} is already written")
        self._bodies[number - 1] = body.encode("latin-1") if isinstance(body, str) else body
        return number

    def add(self, body: bytes | str) -> int:
        return self.set(self.reserve(), body)

    def add_stream(self, data: bytes, entries: str = "", *, compress: bool = True) -> int:
        return self.add(stream(data, entries, compress=compress))

    def to_bytes(self, root: int, info: int) -> bytes:
        """The file. Streams stand alone; every other object goes into compressed object streams
        (7.5.7), which in a report are mostly its thousands of structure elements, and the
        cross-reference table is a compressed stream too (7.5.8): a third of the size."""
        missing = [n for n, body in enumerate(self._bodies, 1) if body is None]
        if missing:
            raise ValueError(f"objects reserved but never written: {missing[:10]}")
        bodies: list[bytes] = self._bodies  # type: ignore[assignment]  # none is None, checked above
        out = bytearray(HEADER)
        where: dict[int, tuple[int, int, int]] = {}  # number -> its cross-reference entry (type, field 2, field 3)
        packed = []
        for n, body in enumerate(bodies, 1):
            if body.endswith(b"endstream"):
                where[n] = (1, len(out), 0)
                out += b"%d 0 obj\n%s\nendobj\n" % (n, body)
            else:
                packed.append(n)
        number_next = len(bodies) + 1
        for start in range(0, len(packed), OBJECTS_PER_STREAM):
            chunk, holder = packed[start:start + OBJECTS_PER_STREAM], number_next
            number_next += 1
            members = [bodies[n - 1] for n in chunk]
            offsets = accumulate((len(body) + 1 for body in members), initial=0)  # each body and its newline
            head = " ".join(f"{n} {offset}" for n, offset in zip(chunk, offsets)).encode() + b"\n"
            where.update((n, (2, holder, index)) for index, n in enumerate(chunk))
            where[holder] = (1, len(out), 0)
            data = head + b"\n".join(members) + b"\n"
            out += b"%d 0 obj\n%s\nendobj\n" % (holder, stream(data, f"/Type /ObjStm /N {len(chunk)} /First {len(head)}"))
        xref = number_next
        where[xref] = (1, len(out), 0)
        table = b"\x00\x00\x00\x00\x00\xff\xff" + b"".join(XREF_ENTRY.pack(*where[n]) for n in range(1, xref + 1))
        file_id = hashlib.md5(out).hexdigest()  # the same file gets the same id
        entries = f"/Type /XRef /Size {xref + 1} /W [1 4 2] /Root {root} 0 R /Info {info} 0 R /ID [<{file_id}><{file_id}>]"
        out += b"%d 0 obj\n%s\nendobj\n" % (xref, stream(table, entries))
        out += b"startxref\n%d\n%%%%EOF\n" % where[xref][1]
        return bytes(out)


def stream(data: bytes, entries: str = "", *, compress: bool = True) -> bytes:
    """A stream object's body; `entries` are more dictionary entries (`/Subtype /Image`)."""
    if compress:
        data = zlib.compress(data, COMPRESS_LEVEL)
        entries = f"/Filter /FlateDecode {entries}"
    return b"<<%s /Length %d>>\nstream\n%s\nendstream" % (entries.encode("latin-1"), len(data), data)


def text_string(text: str) -> str:
    """Any text as a PDF text string (7.9.2.2): UTF-16BE with its byte order mark, in hex, so no
    character needs escaping."""
    return "<FEFF" + text.encode("utf-16-be").hex().upper() + ">"


def ref(number: int) -> str:
    return f"{number} 0 R"


def number(value: float) -> str:
    """A real as PDF writes it: no exponent, at most 2 decimals (1/7200 inch)."""
    text = f"{value:.2f}"
    return text.rstrip("0").rstrip(".") if "." in text else text
