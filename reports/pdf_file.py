"""A PDF file's bones (PDF 32000-1:2008, section 7): numbered objects, streams, the cross-reference
table and the trailer. Pure: object bodies in, bytes out. What the objects say is render_pdf's."""

from __future__ import annotations

import hashlib
import zlib

HEADER = b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n"  # the binary comment tells transfer tools the file is binary
COMPRESS_LEVEL = 3  # 6 makes the files ~10 % smaller and costs twice the time


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
        missing = [n for n, body in enumerate(self._bodies, 1) if body is None]
        if missing:
            raise ValueError(f"objects reserved but never written: {missing[:10]}")
        out = bytearray(HEADER)
        offsets = []
        for number, body in enumerate(self._bodies, 1):
            offsets.append(len(out))
            out += b"%d 0 obj\n" % number
            out += body  # type: ignore[operator]  # none is None, checked above
            out += b"\nendobj\n"
        xref_at = len(out)
        out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(offsets) + 1)
        out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
        file_id = hashlib.md5(out).hexdigest().encode()  # the same file gets the same id
        out += b"trailer\n<</Size %d /Root %d 0 R /Info %d 0 R /ID [<%s><%s>]>>\n" % (len(offsets) + 1, root, info, file_id, file_id)
        out += b"startxref\n%d\n%%%%EOF\n" % xref_at
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
