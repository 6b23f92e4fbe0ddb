"""Which PDF text extractor keeps the words? Word-level precision / recall per page against a
reference text, and the time each extractor takes, on the sample PDFs.

    apt-get install -y poppler-utils   # pdftotext, the reference
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/bench_pdf_text.py [--pdf-dir DIR] [--per-file]

Reference: ``pdftotext`` (poppler) per page, except zlib.3.pdf, whose reference is the zlib man
page source rendered by hand (``benchmarks/data/zlib.3.txt``): poppler itself reads its groff
kerning as "Librar y". The reference is NFKC-normalised (what a user types); extractor output is
only lower-cased and has typographic quotes and dashes mapped to ASCII, so a ligature left in
("ﬁles") or a word split or glued at a line break counts as a miss, as it does for BM25 and the
answer-support gate. Words are compared as bags per page, so text credited to the wrong page
counts as a miss too. Times are wall-clock for the whole file, best of --repeat runs.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import subprocess
import time
import unicodedata
from collections import Counter
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PDF_DIR = ROOT.parent / "shared" / "datasets" / "ingest-sample" / "pdf"
HAND_REFERENCES = {"zlib.3.pdf": ROOT / "benchmarks" / "data" / "zlib.3.txt"}
_ASCII = str.maketrans({"’": "'", "‘": "'", "“": '"', "”": '"', "−": "-", "–": "-", "—": "-"})
_EDGE_PUNCT = "\"'.,;:!?()[]{}<>*"

Extractor = Callable[[Path], list[str]]


def _pypdf(mode: str) -> Extractor:
    def run(path: Path) -> list[str]:
        from pypdf import PdfReader

        return [p.extract_text(extraction_mode=mode) or "" for p in PdfReader(path).pages]

    return run


def _pypdfium2(path: Path) -> list[str]:
    import pypdfium2 as pdfium

    doc = pdfium.PdfDocument(path)
    try:
        return [page.get_textpage().get_text_range() for page in doc]
    finally:
        doc.close()


def _pdfminer(path: Path) -> list[str]:
    from pdfminer.high_level import extract_pages
    from pdfminer.layout import LTTextContainer

    pages = []
    for layout in extract_pages(path):
        pages.append("\n".join(b.get_text() for b in layout if isinstance(b, LTTextContainer)))
    return pages


def _pypdfium2_text_fixes(path: Path) -> list[str]:
    """PDFium's own spacing with only the text-level repairs: what the glyph boxes add."""
    from ragserve.ingest.pdf_text import clean_text, join_hyphenated

    return join_hyphenated([clean_text(p) for p in _pypdfium2(path)])


def _ragserve(path: Path) -> list[str]:
    from ragserve.ingest.pdf_text import read_pdf

    return read_pdf(path).pages


EXTRACTORS: dict[str, Extractor] = {
    "pypdf (plain)": _pypdf("plain"),
    "pypdf (layout)": _pypdf("layout"),
    "pypdfium2 (get_text_range)": _pypdfium2,
    "pdfminer.six (LAParams defaults)": _pdfminer,
    "pypdfium2 + hyphen/ligature repair": _pypdfium2_text_fixes,
    "ragserve loader (pypdfium2, glyph-box spacing + repair)": _ragserve,
}


def words(text: str) -> Counter[str]:
    tokens = (t.strip(_EDGE_PUNCT) for t in text.lower().translate(_ASCII).split())
    return Counter(t for t in tokens if any(ch.isalnum() for ch in t))


def reference_pages(pdf: Path) -> list[str]:
    hand = HAND_REFERENCES.get(pdf.name)
    if hand is not None:
        text = hand.read_text(encoding="utf-8")
    else:
        out = subprocess.run(
            ["pdftotext", "-enc", "UTF-8", str(pdf), "-"], capture_output=True, check=True
        )
        text = out.stdout.decode("utf-8")
    pages = text.split("\f")
    if pages and not pages[-1].strip():
        pages.pop()  # pdftotext ends the last page with a form feed too
    return [unicodedata.normalize("NFKC", p) for p in pages]


def score(pages: list[str], reference: list[str]) -> tuple[int, int, int]:
    """(matched, extracted, reference) word counts, page by page."""
    matched = extracted = expected = 0
    for i in range(max(len(pages), len(reference))):
        got = words(pages[i]) if i < len(pages) else Counter()
        want = words(reference[i]) if i < len(reference) else Counter()
        matched += sum((got & want).values())
        extracted += sum(got.values())
        expected += sum(want.values())
    return matched, extracted, expected


def timed(extract: Extractor, pdf: Path, repeat: int) -> tuple[list[str], float]:
    best, pages = float("inf"), []
    for _ in range(repeat):
        t0 = time.perf_counter()
        pages = extract(pdf)
        best = min(best, time.perf_counter() - t0)
    return pages, best


def f1(p: float, r: float) -> float:
    return 2 * p * r / (p + r) if p + r else 0.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--pdf-dir", type=Path, default=PDF_DIR)
    ap.add_argument("--repeat", type=int, default=1, help="time each file this many times")
    ap.add_argument("--per-file", action="store_true", help="also print F1 per file")
    args = ap.parse_args()
    logging.disable(logging.WARNING)  # pypdf and pdfminer log every odd font and rotated line
    if shutil.which("pdftotext") is None:
        raise SystemExit("pdftotext not found: apt-get install -y poppler-utils")
    pdfs = sorted(args.pdf_dir.glob("*.pdf"))
    refs = {pdf: reference_pages(pdf) for pdf in pdfs}
    rows = []
    per_file: dict[str, dict[str, float]] = {}
    for name, extract in EXTRACTORS.items():
        totals = [0, 0, 0]
        seconds = 0.0
        for pdf in pdfs:
            pages, took = timed(extract, pdf, args.repeat)
            seconds += took
            m, e, x = score(pages, refs[pdf])
            totals = [totals[0] + m, totals[1] + e, totals[2] + x]
            per_file.setdefault(pdf.name, {})[name] = f1(m / max(e, 1), m / max(x, 1))
        m, e, x = totals
        p, r = m / max(e, 1), m / max(x, 1)
        rows.append((name, p, r, f1(p, r), per_file["zlib.3.pdf"].get(name, 0.0), seconds))
    n_pages = sum(len(r) for r in refs.values())
    print(f"{len(pdfs)} PDFs, {n_pages} reference pages, words compared page by page\n")
    print("| extractor | word precision | word recall | word F1 | zlib.3 F1 | seconds |")
    print("|---|---|---|---|---|---|")
    for name, p, r, f, z, s in rows:
        print(f"| {name} | {p:.4f} | {r:.4f} | {f:.4f} | {z:.4f} | {s:.2f} |")
    if args.per_file:
        names = list(EXTRACTORS)
        print("\n| file (word F1) | " + " | ".join(names) + " |")
        print("|---|" + "---|" * len(names))
        for pdf_name, scores in per_file.items():
            cells = " | ".join(f"{scores[n]:.4f}" for n in names)
            print(f"| {pdf_name} | {cells} |")


if __name__ == "__main__":
    main()
