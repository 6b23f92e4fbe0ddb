"""Ingestion as a whole: incremental sync, prune, delete, embedder change, and kill -9 safety."""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ragserve.config import Settings
from ragserve.errors import EmbedderMismatchError
from ragserve.ingest.pipeline import Ingestor
from ragserve.stores.local import LocalIndex


def _write_corpus(folder: Path, docs: list[dict[str, str]]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for d in docs:
        (folder / f"{d['_id']}.txt").write_text(f"{d['title']}\n\n{d['text']}\n", encoding="utf-8")


def _scifact(shared: Path, n: int, start: int = 0) -> list[dict[str, str]]:
    out = []
    with (shared / "scifact" / "corpus.jsonl").open(encoding="utf-8") as fh:
        for i, line in enumerate(fh):
            if i < start:
                continue
            if len(out) >= n:
                break
            out.append(json.loads(line))
    return out


@pytest.fixture()
def setup(tmp_path: Path, embedder):  # type: ignore[no-untyped-def]
    settings = Settings(data_dir=tmp_path / "index", collection="t")
    index = LocalIndex.from_settings(settings)
    index.open(embedder.fingerprint, embedder.dimension)
    yield settings, index, Ingestor(settings, index, embedder)
    index.close()


def test_incremental_sync_change_and_prune(
    setup, tmp_path: Path, shared_datasets: Path, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    _settings, index, ingestor = setup
    corpus = tmp_path / "docs"
    _write_corpus(corpus, _scifact(shared_datasets, 12))
    monkeypatch.chdir(tmp_path)

    first = ingestor.ingest_paths([corpus], progress=False)
    assert first.count("ingested") == 12 and not first.failed
    version = index.info().version

    again = ingestor.ingest_paths([corpus], progress=False)
    assert again.count("unchanged") == 12 and again.count("ingested") == 0
    assert index.info().version == version, "an unchanged re-run must not write"

    changed = sorted(corpus.iterdir())[0]
    changed.write_text("Completely new text about zebrafish fin regeneration.\n")
    (sorted(corpus.iterdir())[1]).unlink()
    third = ingestor.ingest_paths([corpus], prune=True, progress=False)
    assert third.count("ingested") == 1 and third.count("deleted") == 1
    assert index.info().documents == 11
    hits = index.sparse_search("zebrafish regeneration", 3)
    assert hits and index.get_chunks([hits[0][0]])[hits[0][0]].doc_id == "docs/" + changed.name
    assert index.check() == []


def test_one_bad_file_does_not_stop_the_rest(setup, tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    _settings, index, ingestor = setup
    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "mixed"
    folder.mkdir()
    (folder / "good.md").write_text("# Title\n\nZlib compresses data with deflate.\n")
    (folder / "empty.txt").write_text("")
    (folder / "binary.txt").write_bytes(bytes(range(256)) * 10)
    (folder / "broken.pdf").write_bytes(b"%PDF-1.4 this is not really a pdf")
    summary = ingestor.ingest_paths([folder], progress=False)
    statuses = {Path(r.path).name: r.status for r in summary.results}
    assert statuses["good.md"] == "ingested"
    assert {statuses[n] for n in ("empty.txt", "binary.txt", "broken.pdf")} == {"failed"}
    assert all(r.error for r in summary.failed)
    assert index.info().documents == 1 and index.check() == []


def test_delete_by_source(setup, tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    _settings, index, ingestor = setup
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a.md").write_text("# A\n\nAlpha text.\n")
    (tmp_path / "b.md").write_text("# B\n\nBeta text.\n")
    ingestor.ingest_paths([tmp_path / "a.md", tmp_path / "b.md"], progress=False)
    assert ingestor.delete(["a.md"]) == 1
    assert [d.doc_id for d in index.documents()] == ["b.md"]
    assert index.check() == []


def test_other_embedder_is_a_clear_error_and_reindex_fixes_it(
    setup, tmp_path: Path, monkeypatch, embedder
) -> None:  # type: ignore[no-untyped-def]
    settings, index, ingestor = setup
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a.md").write_text("# A\n\nAlpha text about compression.\n")
    ingestor.ingest_paths([tmp_path / "a.md"], progress=False)
    index.close()
    reopened = LocalIndex.from_settings(settings)
    with pytest.raises(EmbedderMismatchError) as err:
        reopened.open("some/other-model", 768)
    assert (
        "builtin:all-MiniLM-L6-v2" in err.value.message and "some/other-model" in err.value.message
    )
    assert "reindex" in (err.value.hint or "")
    # reindex under the (same-dimension) real embedder restores a searchable index
    reopened.reset_embedder(embedder.fingerprint, embedder.dimension)
    n = Ingestor(settings, reopened, embedder).reindex(progress=False)
    assert n == reopened.info().chunks and reopened.check() == []
    reopened.close()


def _manifest_version(db: Path) -> int:
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=0.2) as conn:
            row = conn.execute("SELECT value FROM meta WHERE key='version'").fetchone()
            return int(row[0]) if row else 0
    except sqlite3.Error:
        return 0


@pytest.mark.slow
def test_kill_9_at_random_points_leaves_a_consistent_index(
    tmp_path: Path, shared_datasets: Path, embedder
) -> None:  # type: ignore[no-untyped-def]
    corpus = tmp_path / "corpus"
    docs = _scifact(shared_datasets, 200)
    _write_corpus(corpus, docs)
    # Small batches make ~50 separate index writes, so every kill below lands between the
    # first write and the last one (asserted), not before the run started or after it ended.
    env = {
        **os.environ,
        "RAGSERVE_DATA_DIR": str(tmp_path / "index"),
        "RAGSERVE_COLLECTION": "k",
        "RAGSERVE_INGEST_BATCH_CHUNKS": "4",
        "RAGSERVE_NO_PROGRESS": "1",
    }
    cmd = [sys.executable, "-m", "ragserve.cli.main", "ingest", str(corpus)]
    db = tmp_path / "index" / "k" / "manifest.sqlite3"
    rng = random.Random(1234)
    settings = Settings(data_dir=tmp_path / "index", collection="k")
    for trial in range(4):
        proc = subprocess.Popen(
            cmd, env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        start_version = _manifest_version(db)
        target = start_version + rng.randint(1, 4)
        deadline = time.monotonic() + 180
        while (
            _manifest_version(db) < target and proc.poll() is None and time.monotonic() < deadline
        ):
            time.sleep(0.01)
        time.sleep(rng.random() * 0.3)  # land anywhere inside the next write
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert proc.returncode == -signal.SIGKILL, f"trial {trial}: ended before the kill"
        assert _manifest_version(db) > start_version, f"trial {trial}: killed before a write"
        index = LocalIndex.from_settings(settings)
        index.open(embedder.fingerprint, embedder.dimension)
        try:
            assert index.check() == [], f"trial {trial}: inconsistent after kill -9"
            assert index.info().documents < len(docs), f"trial {trial}: killed after the last write"
        finally:
            index.close()
    done = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    index = LocalIndex.from_settings(settings)
    index.open(embedder.fingerprint, embedder.dimension)
    try:
        assert index.info().documents == len(docs)
        assert index.check() == []
    finally:
        index.close()
