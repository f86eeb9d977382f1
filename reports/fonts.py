"""The fonts the PDF report embeds: DejaVu Sans (regular, bold) and DejaVu Sans Mono, the faces
the HTML report asks for first, from Debian's fonts-dejavu-core. The only font I/O.

A Face answers what layout asks millions of times per run (how wide is this text) from a plain
dict keyed by character, and encodes text as the PDF shows it: each character's code point, 2
bytes. What a PDF embeds is a subset of the font with only the glyphs a document uses, made with
fontTools, glyph ids kept (retain_gids) so that a map from code point to glyph is all the PDF
needs. Subsets are cached by character set, and each document's set is widened to a common base
(Latin, punctuation), so a run of many reports makes a handful of subsets instead of one per file
(fontTools takes ~0.1 s for one)."""

from __future__ import annotations

import io
import os
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from fontTools import subset
from fontTools.ttLib import TTFont

FONT_DIR = Path("/usr/share/fonts/truetype/dejavu")
REPLACEMENT = "\ufffd"  # what a character past U+FFFF prints as: a 2-byte code cannot name it
FACE_FILES = {"regular": "DejaVuSans.ttf", "bold": "DejaVuSans-Bold.ttf", "mono": "DejaVuSansMono.ttf"}
# Glyphs every subset carries, so that documents in Latin script share one subset: ASCII, Latin-1,
# Latin Extended-A and the punctuation the reports print (– · × … •).
BASE_CHARS = frozenset(
    [chr(c) for c in range(0x20, 0x7F)] + [chr(c) for c in range(0xA0, 0x180)] + [chr(c) for c in range(0x2010, 0x2027)]
    + ["×", "€", REPLACEMENT]
)
WORD_CACHE_SIZE = 200_000  # words whose widths a face keeps (~20 MB at most)
NOTDEF_GID = 0  # what a character the font lacks prints as: a box, as a browser shows it
_DROPPED_TABLES = ["GSUB", "GPOS", "GDEF", "kern", "FFTM", "MATH", "gasp"]  # no shaping: glyphs are drawn one by one


class FontError(RuntimeError):
    """A font the PDF report needs is missing or unreadable."""


class _Widths(dict[str, float]):
    """Character -> advance in 1/1000 em; a character the font lacks has .notdef's."""

    def __init__(self, table: dict[str, float], missing: float) -> None:
        super().__init__(table)
        self.missing = missing

    def __missing__(self, char: str) -> float:
        return self.missing


@dataclass(frozen=True, slots=True)
class Subset:
    """What one PDF embeds for a face: the font program and its tables in PDF form. Character
    codes are Unicode code points (2 bytes, UTF-16BE): CIDToGIDMap turns each into the font's
    glyph, so text is encoded by str.encode, and the ToUnicode map is the identity."""

    program: bytes  # a TrueType file with only the glyphs of `chars` (the others emptied)
    widths: str  # the CIDFont's /W array, by code point
    cid_to_gid: bytes  # 2 bytes a code point, from 0 to the highest one used


class Face:
    """One TrueType face: metrics in 1/1000 em (PDF's text space unit)."""

    def __init__(self, path: Path) -> None:
        try:
            font = TTFont(path, lazy=True)
            cmap = font.getBestCmap()
        except Exception as exc:  # fontTools raises many kinds (struct.error, KeyError, TTLibError) for a damaged file
            raise FontError(f"cannot read the font {path}: {exc}") from None
        self.path = path
        self.postscript_name = str(font["name"].getDebugName(6) or path.stem).replace(" ", "")
        scale = 1000 / font["head"].unitsPerEm
        gid_of = font.getReverseGlyphMap()
        metrics = font["hmtx"].metrics
        self.ascent = font["hhea"].ascent * scale
        self.descent = font["hhea"].descent * scale  # negative
        self.line_height = (font["hhea"].ascent - font["hhea"].descent + font["hhea"].lineGap) * scale / 1000  # em
        self.cap_height = font["glyf"]["H"].yMax * scale if "H" in gid_of else self.ascent * 0.7
        head = font["head"]
        self.bbox = tuple(round(v * scale) for v in (head.xMin, head.yMin, head.xMax, head.yMax))
        self.italic_angle = float(font["post"].italicAngle)
        self.fixed_pitch = bool(font["post"].isFixedPitch)
        notdef_width = metrics[font.getGlyphOrder()[NOTDEF_GID]][0] * scale
        self.widths = _Widths({chr(cp): metrics[name][0] * scale for cp, name in cmap.items()}, notdef_width)
        self.gid_of_char = {chr(cp): gid_of[name] for cp, name in cmap.items()}
        self._subsets: dict[frozenset[str], Subset] = {}
        self._word_widths: dict[str, float] = {}
        self._lock = threading.Lock()

    def width(self, text: str, size: float) -> float:
        """Width of `text` set at `size` pt, in pt (no kerning, as the glyphs are drawn)."""
        return sum(map(self.widths.__getitem__, text)) * size / 1000

    def word_width(self, word: str) -> float:
        """Width of a word at 1 pt: words repeat across a table's cells (`kind=slurm_job,`), so
        each is summed once per process."""
        found = self._word_widths.get(word)
        if found is None:
            if len(self._word_widths) >= WORD_CACHE_SIZE:
                self._word_widths.clear()
            found = self._word_widths[word] = sum(map(self.widths.__getitem__, word)) / 1000
        return found

    def encode(self, text: str) -> str:
        """`text` as a PDF hex string of 2-byte codes, one per character (its code point). A
        character past U+FFFF, which such a code cannot hold, prints as U+FFFD."""
        if not text.isascii() and max(text) > "\uffff":
            text = "".join(c if c <= "\uffff" else REPLACEMENT for c in text)
        return "<" + text.encode("utf-16-be").hex() + ">"

    def subset(self, chars: Iterable[str]) -> Subset:
        """The embedded font for a document that drew `chars`."""
        drawn = frozenset(c for c in BASE_CHARS.union(chars) if c <= "\uffff" and c in self.gid_of_char)  # encode() sends the rest to U+FFFD
        with self._lock:
            found = self._subsets.get(drawn)
            if found is None:
                found = self._subsets[drawn] = self._make_subset(drawn)
        return found

    def _make_subset(self, chars: frozenset[str]) -> Subset:
        font = TTFont(self.path)
        options = subset.Options()
        options.retain_gids = True  # CIDToGIDMap points at the full font's glyph ids
        options.notdef_outline = True
        options.hinting = False  # PDF viewers rasterise without the TrueType hints
        options.layout_features = []
        options.name_IDs = [1, 2, 6]  # family, style, PostScript name
        options.drop_tables = [*options.drop_tables, *_DROPPED_TABLES]
        subsetter = subset.Subsetter(options)
        subsetter.populate(gids=sorted({NOTDEF_GID, *(self.gid_of_char[c] for c in chars)}))
        subsetter.subset(font)
        out = io.BytesIO()
        font.save(out)
        codes = sorted(ord(c) for c in chars)
        cid_to_gid = bytearray(2 * (codes[-1] + 1))
        for code in codes:
            cid_to_gid[2 * code:2 * code + 2] = self.gid_of_char[chr(code)].to_bytes(2, "big")
        return Subset(out.getvalue(), self._w_array(codes), bytes(cid_to_gid))

    def _w_array(self, codes: list[int]) -> str:
        """/W [first [w w w] first [w] ...]: runs of consecutive code points, each with its advances."""
        runs: list[list[int]] = []
        for code in codes:
            if runs and runs[-1][-1] == code - 1:
                runs[-1].append(code)
            else:
                runs.append([code])
        return "[" + " ".join(f"{run[0]} [{' '.join(str(round(self.widths[chr(c)])) for c in run)}]" for run in runs) + "]"


# Codes are code points, so the text of code c is U+c: a range per high byte says it (a bfrange
# may not carry into the high byte, PDF 32000-1, 9.10.3), at most 100 to a block.
_RANGES = [f"<{high:02X}00> <{high:02X}FF> <{high:02X}00>" for high in range(256)]
IDENTITY_TO_UNICODE = (
    "/CIDInit /ProcSet findresource begin\n12 dict begin\nbegincmap\n"
    "/CIDSystemInfo <</Registry (Adobe) /Ordering (UCS) /Supplement 0>> def\n"
    "/CMapName /Adobe-Identity-UCS def\n/CMapType 2 def\n"
    "1 begincodespacerange\n<0000> <FFFF>\nendcodespacerange\n"
    + "".join(f"{len(_RANGES[i:i + 100])} beginbfrange\n" + "\n".join(_RANGES[i:i + 100]) + "\nendbfrange\n" for i in range(0, 256, 100))
    + "endcmap\nCMapName currentdict /CMap defineresource pop\nend\nend\n"
).encode("ascii")


_faces: dict[Path, Face] = {}
_faces_lock = threading.Lock()


def font_dir() -> Path:
    return Path(os.environ.get("GPUFLEET_FONT_DIR") or FONT_DIR)


def face(style: str) -> Face:
    """The face for `style` (regular, bold, mono) from font_dir(), read once per process."""
    path = font_dir() / FACE_FILES[style]
    with _faces_lock:
        found = _faces.get(path)
        if found is None:
            if not path.is_file():
                raise FontError(f"the PDF report needs {path}: apt-get install fonts-dejavu-core (or set GPUFLEET_FONT_DIR)")
            found = _faces[path] = Face(path)
        return found
