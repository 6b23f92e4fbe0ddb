"""PDF text keeps its words: the zlib man page (groff, justified) and the text-level repairs."""

from __future__ import annotations

import random
import re
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from ragserve.errors import IngestError
from ragserve.ingest.loaders import load_file
from ragserve.ingest.pdf_text import clean_text, join_hyphenated

REFERENCE = Path(__file__).resolve().parents[2] / "benchmarks" / "data" / "zlib.3.txt"


@pytest.fixture(scope="module")
def zlib_pdf(sample_corpus: Path) -> Path:
    return sample_corpus / "zlib" / "zlib.3.pdf"


def _page_text(doc, page: int) -> str:  # type: ignore[no-untyped-def]
    seg = next(s for s in doc.segments if s.page == page)
    return doc.text[seg.start : seg.end]


def _words(text: str) -> Counter[str]:
    return Counter(re.findall(r"[\w@./:-]+\w|\w", text.lower().replace("−", "-")))


def test_zlib_man_page_words_are_whole(zlib_pdf: Path) -> None:
    doc = load_file(zlib_pdf)[0]
    text = doc.text
    assert "Library Functions Manual" in text  # not "Libr ar yFunctions" / "Librar y"
    assert "checks the consistency of the compressed data" in text  # not "consistencyofthe"
    assert "reading and writing files in gzip(1)" in text  # not the "ﬁ" ligature
    assert "This version of the library" in text  # "ver-\nsion" re-joined
    assert "does not install any signal handler" in text  # positioned gap, not "anysignal"
    assert "compression method (deflation)" in text
    for broken in ("Librar y", "ﬁ", "ﬂ", "\ufffe", "library.The", "Java,Python"):
        assert broken not in text, broken


def test_zlib_pages_match_the_man_page_word_for_word(zlib_pdf: Path) -> None:
    doc = load_file(zlib_pdf)[0]
    reference = REFERENCE.read_text(encoding="utf-8").split("\f")
    assert [s.page for s in doc.segments] == [1, 2]
    for page, want in enumerate(reference, 1):
        got, expected = _words(_page_text(doc, page)), _words(want)
        missing, extra = expected - got, got - expected
        assert not missing and not extra, (page, dict(missing), dict(extra))


def test_paragraphs_end_sentences(zlib_pdf: Path) -> None:
    # The man page sets paragraphs apart by extra leading; without the blank line, the address
    # line above it would open the first sentence of the next paragraph.
    from ragserve.ingest.chunking import split_sentences

    doc = load_file(zlib_pdf)[0]
    assert "madler@alumni.caltech.edu\n\nThe deflate format" in doc.text
    assert "later with the same stream interface.\n\nCompression can be done" in doc.text
    assert "thread safe, assuming that the\nstandard library" in doc.text  # not within one
    sentences = [doc.text[a:b] for a, b in split_sentences(doc.text)]
    assert "The deflate format used by zlib was defined by Phil Katz." in sentences


def test_page_numbers_follow_the_text(zlib_pdf: Path) -> None:
    doc = load_file(zlib_pdf)[0]
    assert doc.segment_at(doc.text.index("compression/decompression library")).page == 1
    assert doc.segment_at(doc.text.index("before asking for help")).page == 1
    assert doc.segment_at(doc.text.index("AUTHORS AND LICENSE")).page == 2
    assert doc.segment_at(doc.text.index("defined by Phil Katz")).page == 2
    assert doc.metadata["pages"] == 2


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("the ﬁles and ﬂags", "the files and flags"),
        ("an eﬀect, eﬃcient, baﬄed", "an effect, efficient, baffled"),
        ("non\u00a0breaking\u200b space", "non breaking space"),
        ("x² ∈ ℝ", "x² ∈ ℝ"),  # mathematics is not NFKC-folded into "x2 ∈ R"
        ("line one  \r\nline two", "line one\nline two"),
    ],
)
def test_clean_text_unfolds_ligatures_only_where_safe(raw: str, clean: str) -> None:
    assert clean_text(raw) == clean


@pytest.mark.parametrize(
    ("pages", "joined"),
    [
        (["a docu-\nment here"], ["a document here"]),
        (["This ver\ufffesion of"], ["This version of"]),  # PDFium's line-end hyphen mark
        (["a long, hyphen\u00adated word"], ["a long, hyphenated word"]),
        (["it is in-\nmemory", "an in-memory cache"], ["it is in-memory", "an in-memory cache"]),
        (["an in-\nmemory cache, all inmemory"], ["an inmemory cache, all inmemory"]),
        (["Jean-\nLoup Gailly"], ["Jean-\nLoup Gailly"]),
        (
            ["see osapi-os-\nfilesys.h and SP0-\nvxWorks"],
            ["see osapi-os-filesys.h and SP0-vxWorks"],
        ),
        (["a list:\n- item\n- item"], ["a list:\n- item\n- item"]),
        (["page one ends docu-", "ment on page two"], ["page one ends docu-", "ment on page two"]),
    ],
)
def test_hyphenated_line_breaks(pages: list[str], joined: list[str]) -> None:
    assert join_hyphenated([clean_text(p) for p in pages]) == joined


def test_concurrent_loads_agree(zlib_pdf: Path) -> None:
    # PDFium is not thread-safe; the API ingests uploads from a thread pool.
    with ThreadPoolExecutor(max_workers=4) as pool:
        texts = list(pool.map(lambda _: load_file(zlib_pdf)[0].text, range(8)))
    assert len(set(texts)) == 1


@pytest.mark.parametrize("cut", [0.5, 0.05])
def test_truncated_pdf_gives_text_or_a_typed_error(
    zlib_pdf: Path, tmp_path: Path, cut: float
) -> None:
    data = zlib_pdf.read_bytes()
    path = tmp_path / "truncated.pdf"
    path.write_bytes(data[: int(len(data) * cut)])
    try:
        doc = load_file(path)[0]
    except IngestError as exc:
        assert "truncated.pdf" in str(exc)
    else:
        assert doc.segments and all(s.page >= 1 for s in doc.segments)


def test_mutated_pdfs_give_text_or_a_typed_error(zlib_pdf: Path, tmp_path: Path) -> None:
    # Random byte flips reach PDFium's document and page loaders (seeded: m14 and m25 fail to
    # load a page, which must surface as IngestError too, not as pypdfium2's own error).
    data = zlib_pdf.read_bytes()
    rng = random.Random(7)
    errors = []
    for k in range(40):
        mutant = bytearray(data)
        for _ in range(rng.choice([1, 10, 100])):
            mutant[rng.randrange(8, len(mutant))] = rng.randrange(256)
        path = tmp_path / f"m{k}.pdf"
        path.write_bytes(bytes(mutant))
        try:
            load_file(path)
        except IngestError as exc:
            errors.append(str(exc))
    assert any("Failed to load page" in e for e in errors), errors
