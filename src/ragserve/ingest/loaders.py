"""Loaders: a file on disk -> :class:`~ragserve.types.Document` with page and section structure.

Type is detected from the content first (PDF magic, a DOCX zip, HTML markup, binary bytes) and
the extension second, so a PDF named ``.txt`` is read as a PDF and a binary named ``.txt`` is
refused instead of indexing noise. Each format keeps what a citation needs:

* PDF: one segment per page (1-based ``page``), via PDFium (:mod:`ragserve.ingest.pdf_text`:
  word and paragraph breaks from glyph positions, hyphenated line breaks re-joined, ligatures
  unfolded); it reads LaTeX two-column pages column by column. A PDF with no text layer is refused
  ("no extractable text; OCR is not enabled").
* Markdown: the raw text is kept (offsets stay exact); headings, found by markdown-it-py,
  give each segment its heading path ("Clients > Timeouts").
* HTML: navigation, header, footer, aside, script and style are dropped (selectolax); headings
  give sections.
* DOCX: paragraphs via python-docx, "Heading N" styles give sections; the zip is checked for
  decompression bombs before anything is inflated.
* BEIR JSON Lines (``_id``, ``title``, ``text``): one document per line, ids kept.
"""

from __future__ import annotations

import bisect
import codecs
import json
import re
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

from ragserve.errors import IngestError, UnsupportedFileTypeError
from ragserve.ingest.pdf_text import read_pdf
from ragserve.types import Document, Segment

__all__ = ["SUPPORTED_SUFFIXES", "detect_type", "iter_beir_corpus", "load_file"]

SUPPORTED_SUFFIXES = frozenset(
    {".txt", ".text", ".md", ".markdown", ".html", ".htm", ".pdf", ".docx", ".jsonl"}
)
_MAX_UNZIPPED = 200 * 1024 * 1024
_MAX_RATIO = 200
_SNIFF = 8192


def detect_type(path: Path, head: bytes) -> str:
    """'pdf' | 'docx' | 'html' | 'markdown' | 'jsonl' | 'text'; raises for unknown or binary."""
    suffix = path.suffix.lower()
    if head.startswith(b"%PDF-"):
        return "pdf"
    if head.startswith(b"PK\x03\x04"):
        if suffix == ".docx" or _zip_has(path, "word/document.xml"):
            return "docx"
        raise UnsupportedFileTypeError(
            f"{path.name}: a zip archive, not a document.",
            hint="Unpack it and ingest the files inside.",
        )
    if suffix == ".pdf":
        raise IngestError(
            f"{path.name}: not a valid PDF (no %PDF header); the file is corrupt.",
            hint="Re-export or re-download the PDF.",
        )
    if suffix == ".docx":
        raise IngestError(
            f"{path.name}: not a valid DOCX (not a zip archive); the file is corrupt.",
            hint="Re-save it from your word processor.",
        )
    if _looks_binary(head):
        raise UnsupportedFileTypeError(
            f"{path.name}: binary content, not text.",
            hint="Only text, Markdown, HTML, PDF, DOCX and BEIR JSON Lines files are supported.",
        )
    if suffix in (".html", ".htm"):
        return "html"
    if suffix in (".md", ".markdown"):
        return "markdown"
    if suffix == ".jsonl":
        return "jsonl"
    if suffix in (".txt", ".text", ""):
        sniff = head.lstrip()[:200].lower()
        if sniff.startswith((b"<!doctype html", b"<html")):
            return "html"
        return "text"
    raise UnsupportedFileTypeError(
        f"{path.name}: unsupported file type '{suffix}'.",
        hint="Supported: " + ", ".join(sorted(SUPPORTED_SUFFIXES)) + ".",
    )


def load_file(
    path: Path, *, root: Path | None = None, max_bytes: int | None = None
) -> list[Document]:
    path = Path(path)
    try:
        size = path.stat().st_size
        if max_bytes is not None and size > max_bytes:
            raise IngestError(
                f"{path.name} is {size / 1e6:.1f} MB, over the {max_bytes / 1e6:.0f} MB limit.",
                hint="Split the file or raise RAGSERVE_MAX_FILE_BYTES.",
            )
        if size == 0:
            raise IngestError(f"{path.name} is empty.", hint="Remove it or add content.")
        with path.open("rb") as fh:
            head = fh.read(_SNIFF)
    except PermissionError as exc:
        raise IngestError(
            f"{path}: permission denied.", hint="Check the file's permissions."
        ) from exc
    except IsADirectoryError as exc:
        raise IngestError(f"{path} is a directory.", hint="Pass a file.") from exc
    kind = detect_type(path, head)
    doc_id = _doc_id(path, root)
    if kind == "jsonl":
        return list(iter_beir_corpus(path))
    if kind == "pdf":
        return [_load_pdf(path, doc_id)]
    if kind == "docx":
        return [_load_docx(path, doc_id)]
    text = _decode(path.read_bytes(), path)
    if kind == "html":
        return [_load_html(text, path, doc_id)]
    if kind == "markdown":
        return [_load_markdown(text, doc_id)]
    return [
        _finish(
            Document(
                doc_id=doc_id,
                source=doc_id,
                text=text,
                title=None,
                segments=(Segment(0, len(text)),),
            ),
            path,
        )
    ]


def iter_beir_corpus(path: Path) -> Iterator[Document]:
    """Documents of a BEIR ``corpus.jsonl``; ``doc_id`` and ``source`` are the record ``_id``."""
    with Path(path).open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                doc_id = str(rec["_id"])
                text = str(rec.get("text") or "")
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                raise IngestError(
                    f"{path}:{lineno}: not a BEIR record ({exc}).",
                    hint='Each line must be {"_id": ..., "title": ..., "text": ...}.',
                ) from exc
            title = (rec.get("title") or "").strip() or None
            if not text.strip() and not title:
                continue
            if not text.strip():
                text = title or ""
            yield Document(
                doc_id=doc_id,
                source=doc_id,
                text=text,
                title=title,
                segments=(Segment(0, len(text)),),
                metadata={"file": str(path.name)},
            )


# --- formats -------------------------------------------------------------------------------------


def _load_pdf(path: Path, doc_id: str) -> Document:
    pdf = read_pdf(path)
    parts: list[str] = []
    segments: list[Segment] = []
    offset = 0
    for number, text in enumerate(pdf.pages, 1):
        if not text.strip():
            continue
        if parts:
            parts.append("\n\n")
            offset += 2
        segments.append(Segment(offset, offset + len(text), page=number))
        parts.append(text)
        offset += len(text)
    if not parts:
        raise IngestError(
            f"{path.name}: no extractable text; OCR is not enabled.",
            hint="The PDF looks scanned (images only). Run it through OCR first.",
        )
    return Document(
        doc_id=doc_id,
        source=doc_id,
        text="".join(parts),
        title=pdf.title,
        segments=tuple(segments),
        metadata={"pages": len(pdf.pages)},
    )


def _load_markdown(text: str, doc_id: str) -> Document:
    from markdown_it import MarkdownIt

    tokens = MarkdownIt("commonmark").parse(text)
    line_starts = [0]
    for m in re.finditer("\n", text):
        line_starts.append(m.end())
    headings: list[tuple[int, int, str]] = []  # (char offset, level, title)
    for i, tok in enumerate(tokens):
        if tok.type == "heading_open" and tok.map:
            level = int(tok.tag[1])
            inline = tokens[i + 1].content if i + 1 < len(tokens) else ""
            headings.append((line_starts[tok.map[0]], level, inline.strip()))
    title = next((h[2] for h in headings if h[1] == 1), None)
    return Document(
        doc_id=doc_id,
        source=doc_id,
        text=text,
        title=title,
        segments=_heading_segments(headings, len(text)),
    )


def _heading_segments(headings: list[tuple[int, int, str]], length: int) -> tuple[Segment, ...]:
    segments: list[Segment] = []
    stack: list[tuple[int, str]] = []
    start, section = 0, None
    for offset, level, title in headings:
        if offset > start:
            segments.append(Segment(start, offset, section=section))
        while stack and stack[-1][0] >= level:
            stack.pop()
        stack.append((level, title))
        start, section = offset, " > ".join(t for _, t in stack if t) or None
    segments.append(Segment(start, length, section=section))
    return tuple(s for s in segments if s.end > s.start)


_BLOCK_TAGS = frozenset(
    "p div li ul ol pre table tr td th dt dd dl blockquote section article "
    "h1 h2 h3 h4 h5 h6 br hr main figure figcaption caption".split()
)
_DROP_TAGS = (
    "script",
    "style",
    "nav",
    "header",
    "footer",
    "aside",
    "noscript",
    "form",
    "template",
    "svg",
    "iframe",
    "button",
)


def _load_html(html: str, path: Path, doc_id: str) -> Document:
    from selectolax.lexbor import LexborHTMLParser as HTMLParser

    tree = HTMLParser(html)
    title_node = tree.css_first("title")
    title = title_node.text(strip=True) if title_node is not None else None
    for node in tree.css(",".join(_DROP_TAGS)):
        node.decompose()
    for node in tree.css(
        '[role="navigation"], [role="banner"], [role="contentinfo"], [aria-hidden="true"]'
    ):
        node.decompose()
    _drop_link_lists(tree)
    body = tree.body or tree.root
    parts: list[str] = []
    headings: list[tuple[int, int, str]] = []
    length = 0

    def emit(s: str) -> None:
        nonlocal length
        parts.append(s)
        length += len(s)

    def newline(n: int = 1) -> None:
        tail = "".join(parts[-3:])
        have = len(tail) - len(tail.rstrip("\n"))
        if length and have < n:
            emit("\n" * (n - have))

    def walk(node, in_pre: bool) -> None:  # type: ignore[no-untyped-def]
        child = node.child
        while child is not None:
            tag = child.tag
            if tag == "-text":
                raw = child.text_content or ""
                txt = raw if in_pre else re.sub(r"\s+", " ", raw)
                if not in_pre and (not parts or parts[-1].endswith(("\n", " "))):
                    txt = txt.lstrip()
                if txt:
                    emit(txt)
            elif tag in ("h1", "h2", "h3", "h4", "h5", "h6"):
                newline(2)
                heading = re.sub(r"\s+", " ", child.text(deep=True)).strip()
                if heading:
                    headings.append((length, int(tag[1]), heading))
                    emit(heading)
                newline(2)
            elif tag in _BLOCK_TAGS:
                newline(2 if tag in ("p", "pre", "table", "blockquote") else 1)
                walk(child, in_pre or tag == "pre")
                newline(2 if tag in ("p", "pre", "table", "blockquote") else 1)
            elif tag not in ("-comment", "head", "title", "meta", "link"):
                walk(child, in_pre)
            child = child.next

    walk(body, False)
    text = "".join(parts)
    # Trailing spaces and runs of blank lines add nothing; trim them while keeping offsets
    # consistent by cleaning before segments are computed.
    cleaned, mapping = _squeeze(text)
    headings = [(mapping(o), lvl, t) for o, lvl, t in headings]
    if not title:
        title = next((h[2] for h in headings if h[1] == 1), None)
    doc = Document(
        doc_id=doc_id,
        source=doc_id,
        text=cleaned,
        title=title,
        segments=_heading_segments(headings, len(cleaned)),
    )
    return _finish(doc, path)


def _drop_link_lists(tree) -> None:  # type: ignore[no-untyped-def]
    """Remove navigation bars written as plain tables or lists: blocks that are mostly links."""
    for node in tree.css("table, ul, ol, div, p, td"):
        text = node.text(deep=True, strip=True)
        if not text:
            continue
        links = node.css("a")
        if len(links) < 3:
            continue
        linked = sum(len(a.text(deep=True, strip=True)) for a in links)
        if linked / len(text) > 0.8 and len(text) < 400:
            node.decompose()


def _squeeze(text: str) -> tuple[str, Callable[[int], int]]:
    """Drop line-end spaces and collapse 3+ newlines; also map old offsets to new ones."""
    pieces: list[str] = []
    anchors: list[tuple[int, int]] = []  # (old offset, new offset) where a kept run starts
    pos = new = 0
    for m in re.finditer(r"[ \t]+(?=\n)|\n{3,}", text):
        anchors.append((pos, new))
        pieces.append(text[pos : m.start()])
        new += m.start() - pos
        repl = "" if m.group(0)[0] in " \t" else "\n\n"
        pieces.append(repl)
        new += len(repl)
        pos = m.end()
    anchors.append((pos, new))
    pieces.append(text[pos:])
    cleaned = "".join(pieces)
    olds = [a for a, _ in anchors]

    def mapping(offset: int) -> int:
        i = bisect.bisect_right(olds, offset) - 1
        old, mapped = anchors[max(i, 0)]
        return min(mapped + max(offset - old, 0), len(cleaned))

    return cleaned, mapping


def _load_docx(path: Path, doc_id: str) -> Document:
    _check_zip(path)
    try:
        import docx

        d = docx.Document(str(path))
    except Exception as exc:  # python-docx raises many types for broken packages
        raise IngestError(
            f"{path.name}: corrupt or unreadable DOCX ({type(exc).__name__}).",
            hint="Re-save it from your word processor.",
        ) from exc
    parts: list[str] = []
    headings: list[tuple[int, int, str]] = []
    length = 0
    for para in d.paragraphs:
        text = para.text.strip()
        if not text:
            continue
        style = (para.style.name if para.style is not None else "") or ""
        m = re.match(r"Heading (\d)", style)
        if parts:
            parts.append("\n\n")
            length += 2
        if m or style == "Title":
            headings.append((length, int(m.group(1)) if m else 1, text))
        parts.append(text)
        length += len(text)
    for table in d.tables:
        for row in table.rows:
            cells = " | ".join(c.text.strip() for c in row.cells if c.text.strip())
            if cells:
                parts.append("\n" + cells)
                length += len(cells) + 1
    text = "".join(parts)
    title = (d.core_properties.title or "").strip() or next((h[2] for h in headings), None)
    return _finish(
        Document(
            doc_id=doc_id,
            source=doc_id,
            text=text,
            title=title,
            segments=_heading_segments(headings, len(text)),
        ),
        path,
    )


# --- helpers -------------------------------------------------------------------------------------


def _finish(doc: Document, path: Path) -> Document:
    if not doc.text.strip():
        raise IngestError(f"{path.name}: no text content.", hint="The file has no readable text.")
    return doc


def _doc_id(path: Path, root: Path | None) -> str:
    if root is not None:
        try:
            return path.resolve().relative_to(Path(root).resolve()).as_posix()
        except ValueError:
            pass
    return path.name


def _looks_binary(head: bytes) -> bool:
    if head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE, codecs.BOM_UTF8)):
        return False
    if b"\x00" in head:
        return True
    if not head:
        return False
    control = sum(1 for b in head if b < 32 and b not in (9, 10, 12, 13, 27))
    return control / len(head) > 0.05


def _decode(data: bytes, path: Path) -> str:
    for bom, enc in (
        (codecs.BOM_UTF8, "utf-8-sig"),
        (codecs.BOM_UTF16_LE, "utf-16"),
        (codecs.BOM_UTF16_BE, "utf-16"),
    ):
        if data.startswith(bom):
            try:
                return _normalise(data.decode(enc))
            except UnicodeDecodeError as exc:
                raise IngestError(
                    f"{path.name}: invalid {enc} text ({exc.reason}).",
                    hint="Re-save the file as UTF-8.",
                ) from exc
    try:
        return _normalise(data.decode("utf-8"))
    except UnicodeDecodeError:
        pass
    ascii_share = sum(1 for b in data[:_SNIFF] if b < 128) / max(1, min(len(data), _SNIFF))
    text: str | None = None
    if ascii_share > 0.9:
        # Mostly-ASCII text with a few accented letters is almost always Western (cp1252);
        # statistical detectors guess wildly on so little evidence.
        try:
            text = data.decode("cp1252")
        except UnicodeDecodeError:
            text = None
    if text is None:
        from charset_normalizer import from_bytes

        best = from_bytes(data[: 1 << 20]).best()
        try:
            text = data.decode(best.encoding if best is not None else "latin-1")
        except (UnicodeDecodeError, LookupError):
            text = data.decode("latin-1")
    control = sum(1 for ch in text[:_SNIFF] if ord(ch) < 32 and ch not in "\t\n\r\f")
    if control / max(1, min(len(text), _SNIFF)) > 0.05:
        raise UnsupportedFileTypeError(
            f"{path.name}: binary content, not text.", hint="Only text documents can be ingested."
        )
    return _normalise(text)


def _normalise(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\r", "\n").replace("\x00", "")


def _zip_has(path: Path, member: str) -> bool:
    try:
        with zipfile.ZipFile(path) as z:
            return member in z.namelist()
    except (zipfile.BadZipFile, OSError):
        return False


def _check_zip(path: Path) -> None:
    try:
        with zipfile.ZipFile(path) as z:
            infos = z.infolist()
    except (zipfile.BadZipFile, OSError) as exc:
        raise IngestError(
            f"{path.name}: corrupt DOCX (bad zip archive).",
            hint="Re-save it from your word processor.",
        ) from exc
    total = sum(i.file_size for i in infos)
    packed = sum(i.compress_size for i in infos) or 1
    if total > _MAX_UNZIPPED or total / packed > _MAX_RATIO:
        raise IngestError(
            f"{path.name}: refused as a likely zip bomb ({total / 1e6:.0f} MB uncompressed from "
            f"{packed / 1e6:.1f} MB).",
            hint="A real document never expands this much.",
        )
