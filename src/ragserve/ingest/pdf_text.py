"""PDF text per page that keeps its words, via PDFium (pypdfium2, Apache-2.0 / BSD-3).

Why PDFium: on the sample PDFs it had the best word precision and recall of pypdf (plain and
layout), pdfminer.six and PDFium against poppler's ``pdftotext`` and a hand-rendered zlib man
page, and its raw extraction is ~15x faster than pypdf and ~50x faster than pdfminer.six
(``benchmarks/bench_pdf_text.py`` prints the comparison). PyMuPDF was left out: it is AGPL,
which an Apache-2.0 project cannot ship.

PDFium's own word spacing still fails on groff's justified output (zlib.3.pdf): an inter-word
gap made by positioning rather than a space glyph reads as "anysignal", and a space glyph that
groff kerns back under the next letter reads as "Librar y". Both are fixed from the glyph
boxes, which also show where extra leading sets a paragraph apart (marked as a blank line).
Text-level repairs follow: hyphenated line breaks are re-joined and typographic ligatures
unfolded, so the words match what a user types (BM25 and the answer-support gate compare words).
"""

from __future__ import annotations

import ctypes
import itertools
import re
import statistics
import threading
import unicodedata
from dataclasses import dataclass
from pathlib import Path

from ragserve.errors import IngestError

__all__ = ["PdfText", "clean_text", "join_hyphenated", "read_pdf"]

# PDFium keeps global state and is not thread-safe, even across documents; the API ingests
# uploads from a thread pool, so every call into it goes through this lock.
_PDFIUM_LOCK = threading.Lock()

# A gap wider than this share of the glyph height between two glyphs on one line is a word
# break. Letters inside a word touch or overlap (kerning) in PDFium's advance-width boxes; the
# narrowest justified word gap in the samples is ~0.25 of the height.
_WORD_GAP = 0.15
# A step down to the next line this much taller than the page's usual line pitch starts a new
# paragraph (zlib.3.pdf: 16.8 pt between paragraphs, 12 pt between lines, 1.4x).
_PARAGRAPH_STEP = 1.25
# PDFium's marks for a hyphen it found at a line end (it drops the line break after it).
_LINE_END_HYPHENS = "\ufffe\x02"
_LIGATURES = {chr(c): unicodedata.normalize("NFKC", chr(c)) for c in range(0xFB00, 0xFB07)}
# Only these compatibility characters are unfolded: full NFKC would also rewrite mathematics
# ("x²" -> "x2", "ℝ" -> "R") and full-width text, changing what the page says.
_SAFE_NFKC = str.maketrans(
    {
        **_LIGATURES,
        "\u00a0": " ",
        "\u2002": " ",
        "\u2003": " ",
        "\u2009": " ",
        "\u202f": " ",
        "\u200b": "",
        "\ufeff": "",
        "\x00": "",
    }
)
_HYPHEN_BREAK = re.compile(r"([\w./-]*\w)-\n[ \t]*(\w+)")


@dataclass(frozen=True)
class PdfText:
    pages: list[str]  # one cleaned text per page, in page order ("" for a page without text)
    title: str | None


def read_pdf(path: Path) -> PdfText:
    """Cleaned text of every page; raises :class:`IngestError` for encrypted or corrupt files."""
    import pypdfium2 as pdfium

    with _PDFIUM_LOCK:
        try:
            doc = pdfium.PdfDocument(str(path))
        except pdfium.PdfiumError as exc:
            raise _open_error(path, exc) from exc
        try:
            raw_pages = [_page_text(doc, i) for i in range(len(doc))]
            title = (doc.get_metadata_value("Title") or "").strip() or None
        except pdfium.PdfiumError as exc:  # a page that cannot be loaded
            raise _open_error(path, exc) from exc
        finally:
            doc.close()
    pages = join_hyphenated([clean_text(p) for p in raw_pages])
    return PdfText(pages=[p.strip() for p in pages], title=title)


def clean_text(text: str) -> str:
    """Line ends, PDFium's line-end hyphen marks, ligatures and odd spaces made plain."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    for mark in _LINE_END_HYPHENS:
        text = text.replace(mark, "-\n")
    text = re.sub(r"\u00ad\n?", "-\n", text)  # a soft hyphen only ever shows at a line break
    text = text.translate(_SAFE_NFKC)
    return re.sub(r"[ \t]+\n", "\n", text)


def join_hyphenated(pages: list[str]) -> list[str]:
    """Re-join words hyphenated at a line break ("docu-\\nment" -> "document").

    A line-end hyphen may also be a real one. It is kept (and the line break dropped) when the
    document writes the hyphenated form elsewhere and never the joined one ("in-memory"), and
    in identifiers, whose parts carry digits, hyphens, slashes or inner capitals
    ("osapi-os-filesys.h", "SP0-vxWorks"). A capitalised second part ("Jean-\\nLoup") is left
    as it is: joins there are more often wrong than right.
    """
    vocabulary = _vocabulary(pages)

    def repl(m: re.Match[str]) -> str:
        head, tail = m.group(1), m.group(2)
        if not tail[0].islower():
            return m.group(0)
        hyphenated, joined = f"{head}-{tail}".lower(), f"{head}{tail}".lower()
        if _identifier_like(head, tail) or (hyphenated in vocabulary and joined not in vocabulary):
            return f"{head}-{tail}"
        return head + tail

    return [_HYPHEN_BREAK.sub(repl, page) for page in pages]


def _identifier_like(head: str, tail: str) -> bool:
    return bool(re.search(r"[\d_/.-]", head) or re.search(r"[\d_A-Z]", tail))


def _vocabulary(pages: list[str]) -> set[str]:
    """Every word the document writes, and every pair joined by a hyphen within a line."""
    vocabulary: set[str] = set()
    for token in re.findall(r"\w+(?:-\w+)*", "\n".join(pages).lower()):
        parts = token.split("-")
        vocabulary.update(parts)
        vocabulary.update(f"{a}-{b}" for a, b in itertools.pairwise(parts))
    return vocabulary


def _open_error(path: Path, exc: Exception) -> IngestError:
    import pypdfium2.raw as pdfium_c

    if getattr(exc, "err_code", None) == pdfium_c.FPDF_ERR_PASSWORD:
        return IngestError(
            f"{path.name}: the PDF is encrypted with a password.",
            hint="Remove the password and ingest it again.",
        )
    return IngestError(
        f"{path.name}: corrupt or unreadable PDF ({str(exc)[:120]}).",
        hint="Re-export the PDF and try again.",
    )


def _page_text(doc, index: int) -> str:  # type: ignore[no-untyped-def]
    page = doc[index]
    textpage = page.get_textpage()
    try:
        return _respaced(textpage)
    finally:
        textpage.close()
        page.close()


def _respaced(textpage) -> str:  # type: ignore[no-untyped-def]
    """The page text with word and paragraph breaks taken from glyph positions."""
    text = textpage.get_text_range()
    count = textpage.count_chars()
    if len(text) != count:  # characters beyond the BMP shift indices; keep PDFium's text
        return text
    boxes = _loose_boxes(textpage.raw, count)
    paragraph_ends = _paragraph_ends(text, boxes)
    out: list[str] = []
    for i, ch in enumerate(text[:-1]):
        nxt = text[i + 1]
        if ch == " " and not nxt.isspace() and _kerned_space(textpage, boxes, i):
            continue
        out.append(ch)
        if i in paragraph_ends:
            out.append("\n")
        elif not ch.isspace() and not nxt.isspace() and _is_word_gap(boxes[i], boxes[i + 1]):
            out.append(" ")
    out.append(text[-1:])
    return "".join(out)


def _paragraph_ends(text: str, boxes: list[tuple[float, float, float, float]]) -> set[int]:
    """Indices of the line breaks ("\\n" of PDFium's "\\r\\n") that also end a paragraph.

    Paragraphs are set apart by extra leading: a step down to the next line clearly taller than
    the page's usual line pitch is a paragraph break. Marking it as a blank line lets the
    sentence splitter and the chunker end there, so an address line or a heading is not read
    as the start of the sentence that follows it.
    """
    steps: dict[int, float] = {}
    for m in re.finditer(r"(\S)[ \t]*\r(\n)[ \t]*(?=\S)", text):
        step = boxes[m.start(1)][2] - boxes[m.end()][2]  # bottoms in points, y grows upwards
        if step > 0:
            steps[m.start(2)] = step
    if len(steps) < 3:
        return set()
    # The lower quartile, not the median: a page of short paragraphs (a man page) has about as
    # many paragraph steps as line steps.
    pitch = statistics.quantiles(steps.values(), n=4)[0]
    return {i for i, step in steps.items() if step > _PARAGRAPH_STEP * pitch}


def _kerned_space(textpage, boxes: list[tuple[float, float, float, float]], i: int) -> bool:  # type: ignore[no-untyped-def]
    """A space glyph with the next letter drawn over it is groff's kerning, not a word break."""
    import pypdfium2.raw as pdfium_c

    space, nxt = boxes[i], boxes[i + 1]
    if not (_same_line(space, nxt) and nxt[0] < (space[0] + space[1]) / 2):
        return False
    return not pdfium_c.FPDFText_IsGenerated(textpage.raw, i)


def _loose_boxes(textpage_raw, count: int) -> list[tuple[float, float, float, float]]:  # type: ignore[no-untyped-def]
    """(left, right, bottom, top) from each glyph's advance width and the font's ascent."""
    import pypdfium2.raw as pdfium_c

    rect = pdfium_c.FS_RECTF()
    ref = ctypes.byref(rect)
    boxes = []
    for i in range(count):
        pdfium_c.FPDFText_GetLooseCharBox(textpage_raw, i, ref)
        boxes.append((rect.left, rect.right, rect.bottom, rect.top))
    return boxes


def _same_line(a: tuple[float, ...], b: tuple[float, ...]) -> bool:
    overlap = min(a[3], b[3]) - max(a[2], b[2])
    return overlap > 0.5 * min(a[3] - a[2], b[3] - b[2])


def _is_word_gap(a: tuple[float, ...], b: tuple[float, ...]) -> bool:
    height = min(a[3] - a[2], b[3] - b[2])
    return height > 0 and _same_line(a, b) and b[0] - a[1] > _WORD_GAP * height
