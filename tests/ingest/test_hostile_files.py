"""A folder of hostile files, built at run time: each is refused with a reason, the rest ingest."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import pytest

from ragserve.config import Settings
from ragserve.ingest.pipeline import Ingestor
from ragserve.stores.local import LocalIndex


def _zip_bomb_docx(path: Path) -> None:
    # ~1 GB of zeros compresses to ~1 MB: a loader must refuse before inflating it.
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("[Content_Types].xml", "<Types/>")
        with z.open("word/document.xml", "w", force_zip64=True) as member:
            block = b"\0" * (1 << 20)
            for _ in range(1024):
                member.write(block)
    path.write_bytes(buf.getvalue())


def _encrypted_pdf(path: Path) -> None:
    from pypdf import PdfWriter

    writer = PdfWriter()
    writer.add_blank_page(width=200, height=200)
    writer.encrypt(user_password="secret", owner_password="owner")
    with path.open("wb") as fh:
        writer.write(fh)


@pytest.fixture()
def hostile(tmp_path: Path) -> Path:
    d = tmp_path / "hostile"
    d.mkdir()
    (d / "good.md").write_text("# Kept\n\nThe good file is about lighthouse keepers.\n")
    (d / "good-latin1.txt").write_bytes("Café crème brûlée recipe notes.\n".encode("latin-1"))
    (d / "corrupt.pdf").write_bytes(b"%PDF-1.7\n1 0 obj << /Type /Catalog >> garbage\n")
    _encrypted_pdf(d / "encrypted.pdf")
    _zip_bomb_docx(d / "bomb.docx")
    (d / "binary.txt").write_bytes(bytes(range(256)) * 64)
    (d / "empty.md").write_bytes(b"")
    (d / "huge.txt").write_bytes(b"a" * (3 * 1024 * 1024))
    (d / "bad-utf16.txt").write_bytes(b"\xff\xfe" + b"\x00\xd8" * 50)  # lone surrogates
    return d


def test_hostile_folder(hostile: Path, tmp_path: Path, embedder, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.chdir(tmp_path)
    settings = Settings(data_dir=tmp_path / "idx", max_file_bytes=2 * 1024 * 1024)
    index = LocalIndex.from_settings(settings)
    index.open(embedder.fingerprint, embedder.dimension)
    try:
        summary = Ingestor(settings, index, embedder).ingest_paths([hostile], progress=False)
        by_name = {Path(r.path).name: r for r in summary.results}
        assert by_name["good.md"].status == "ingested"
        assert by_name["good-latin1.txt"].status == "ingested"
        for name in (
            "corrupt.pdf",
            "encrypted.pdf",
            "bomb.docx",
            "binary.txt",
            "empty.md",
            "huge.txt",
            "bad-utf16.txt",
        ):
            assert by_name[name].status == "failed", (name, by_name[name])
            assert by_name[name].error, name
        assert "MB" in (by_name["huge.txt"].error or "")
        assert index.info().documents == 2
        assert index.check() == []
    finally:
        index.close()


def test_path_outside_the_allowed_root_is_refused(tmp_path: Path, embedder) -> None:  # type: ignore[no-untyped-def]
    root = tmp_path / "allowed"
    root.mkdir()
    outside = tmp_path / "secret.md"
    outside.write_text("# Secret\n\nnot for the index\n")
    settings = Settings(data_dir=tmp_path / "idx", ingest_root=root)
    index = LocalIndex.from_settings(settings)
    index.open(embedder.fingerprint, embedder.dimension)
    try:
        summary = Ingestor(settings, index, embedder).ingest_paths([outside], progress=False)
        assert summary.results[0].status == "failed"
        assert "outside the allowed ingest root" in (summary.results[0].error or "")
        assert index.info().documents == 0
    finally:
        index.close()
