"""Loaders on the real sample files in shared/datasets/ingest-sample, and on bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ragserve.errors import IngestError, UnsupportedFileTypeError
from ragserve.ingest.loaders import iter_beir_corpus, load_file


@pytest.fixture(scope="module")
def sample(shared_datasets: Path) -> Path:
    return shared_datasets / "ingest-sample"


def _segment_containing(doc, phrase: str):  # type: ignore[no-untyped-def]
    at = doc.text.index(phrase)
    return doc.segment_at(at)


def test_pdf_pages_are_numbered(sample: Path) -> None:
    doc = load_file(sample / "pdf" / "zlib.3.pdf")[0]
    assert [s.page for s in doc.segments] == [1, 2]
    assert _segment_containing(doc, "compression/decompression library").page == 1
    assert _segment_containing(doc, "AUTHORS AND LICENSE").page == 2
    for seg in doc.segments:  # segments index the text exactly and do not overlap
        assert 0 <= seg.start < seg.end <= len(doc.text)


def test_pdf_long_document_pages(sample: Path) -> None:
    doc = load_file(sample / "pdf" / "nasa-cfe-6.6.0-version-description.pdf")[0]
    pages = [s.page for s in doc.segments]
    assert pages == sorted(pages) and pages[-1] <= doc.metadata["pages"] == 14


def test_two_column_pdf_reads_column_by_column(sample: Path) -> None:
    doc = load_file(sample / "pdf" / "multicolumn.pdf")[0]
    first_page = doc.text[doc.segments[0].start : doc.segments[0].end]
    # Column text flows line to line: a hyphenated word is re-joined within its column.
    assert "adipiscing elit" in first_page
    assert "Two-Column Document" in first_page.split("\n")[0]


def test_markdown_sections_are_heading_paths(sample: Path) -> None:
    doc = load_file(sample / "markdown" / "httpx-docs" / "advanced" / "timeouts.md")[0]
    seg = _segment_containing(doc, "You can set timeouts for an individual request")
    assert seg.section == "Setting and disabling timeouts"
    doc = load_file(sample / "markdown" / "httpx-docs" / "quickstart.md")[0]
    assert doc.title == "QuickStart"
    seg = _segment_containing(doc, "HTTPX will automatically handle decoding")
    assert seg is not None and seg.section and seg.section.startswith("QuickStart > ")


def test_html_drops_boilerplate_and_keeps_sections(sample: Path) -> None:
    folder = sample / "html" / "boost-filesystem-docs"
    doc = load_file(folder / "faq.htm")[0]
    assert doc.title == "Filesystem FAQ"
    assert "Home Tutorial Reference FAQ Releases" not in doc.text, "navigation bar kept"
    assert "<" not in doc.text[:2000]
    seg = _segment_containing(doc, "Portability is one of the most important requirements")
    assert seg.section == "Frequently Asked Questions > General questions"


@pytest.mark.fast
def test_html_scripts_and_styles_are_dropped(tmp_path: Path) -> None:
    page = tmp_path / "p.html"
    page.write_text(
        "<html><head><title>T</title><style>.x{color:red}</style></head><body>"
        "<nav><a href=/>Home</a></nav><script>var secret=1;</script>"
        "<h1>Intro</h1><p>Body text here.</p><footer>(c) footer</footer></body></html>"
    )
    doc = load_file(page)[0]
    assert "secret" not in doc.text and "color:red" not in doc.text
    assert "footer" not in doc.text and "Home" not in doc.text
    assert "Body text here." in doc.text


@pytest.mark.fast
def test_docx_headings(tmp_path: Path) -> None:
    import docx

    d = docx.Document()
    d.add_heading("Guide", level=1)
    d.add_heading("Install", level=2)
    d.add_paragraph("Run the installer and follow the prompts.")
    path = tmp_path / "guide.docx"
    d.save(str(path))
    doc = load_file(path)[0]
    assert doc.title == "Guide"
    assert _segment_containing(doc, "Run the installer").section == "Guide > Install"


def test_beir_jsonl_keeps_ids(shared_datasets: Path) -> None:
    docs = []
    for doc in iter_beir_corpus(shared_datasets / "scifact" / "corpus.jsonl"):
        docs.append(doc)
        if len(docs) == 3:
            break
    first = json.loads((shared_datasets / "scifact" / "corpus.jsonl").open().readline())
    assert docs[0].doc_id == first["_id"] and docs[0].title == first["title"]
    assert docs[0].text == first["text"]


def test_type_is_detected_by_content(tmp_path: Path, sample: Path) -> None:
    disguised = tmp_path / "manual.txt"
    disguised.write_bytes((sample / "pdf" / "zlib.3.pdf").read_bytes())
    assert load_file(disguised)[0].segments[0].page == 1


@pytest.mark.parametrize(
    ("name", "content", "error", "words"),
    [
        ("empty.txt", b"", IngestError, "empty"),
        ("binary.txt", bytes(range(256)) * 8, UnsupportedFileTypeError, "binary"),
        ("corrupt.pdf", b"%PDF-1.4\ngarbage", IngestError, "PDF"),
        ("fake.pdf", b"hello", IngestError, "not a valid PDF"),
        ("data.xyz", b"hello", UnsupportedFileTypeError, "unsupported"),
        ("bad.jsonl", b'{"_id": 1\n', IngestError, "BEIR"),
    ],
)
def test_bad_files_raise_clear_errors(
    tmp_path: Path, name: str, content: bytes, error: type[Exception], words: str
) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(error) as exc:
        load_file(path)
    assert words.lower() in str(exc.value).lower()
    assert name in str(exc.value)


@pytest.mark.fast
def test_scanned_pdf_is_reported_not_ingested(tmp_path: Path) -> None:
    from pypdf import PdfWriter

    writer = PdfWriter()
    writer.add_blank_page(width=300, height=300)
    path = tmp_path / "scan.pdf"
    with path.open("wb") as fh:
        writer.write(fh)
    with pytest.raises(IngestError, match="no extractable text; OCR is not enabled"):
        load_file(path)


@pytest.mark.fast
def test_encrypted_pdf(tmp_path: Path) -> None:
    from pypdf import PdfWriter

    writer = PdfWriter()
    writer.add_blank_page(width=300, height=300)
    writer.encrypt(user_password="pw", owner_password="owner")
    path = tmp_path / "locked.pdf"
    with path.open("wb") as fh:
        writer.write(fh)
    with pytest.raises(IngestError, match="encrypted"):
        load_file(path)


@pytest.mark.fast
@pytest.mark.parametrize("encoding", ["latin-1", "utf-16", "utf-8-sig", "cp1252"])
def test_text_encodings(tmp_path: Path, encoding: str) -> None:
    path = tmp_path / "notes.txt"
    path.write_bytes(
        "Crème brûlée, déjà vu, naïve café: the menu of the little bistro on the corner.".encode(
            encoding
        )
    )
    assert "brûlée" in load_file(path)[0].text


@pytest.mark.fast
def test_size_limit(tmp_path: Path) -> None:
    path = tmp_path / "big.txt"
    path.write_bytes(b"word " * 300_000)
    with pytest.raises(IngestError, match="MB"):
        load_file(path, max_bytes=1_000_000)
