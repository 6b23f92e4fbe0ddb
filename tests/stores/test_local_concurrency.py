"""The embedded index under concurrent readers and a writer: reads never wait for a write, and
no query pays for a BM25 rebuild."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from ragserve.stores import IndexWrite
from ragserve.stores.local import LocalIndex
from ragserve.types import Chunk, DocumentRecord, content_hash

DIM = 8


def _write(doc_id: str, texts: list[str]) -> IndexWrite:
    chunks = [
        Chunk(
            id=Chunk.make_id(doc_id, i, content_hash(t)),
            doc_id=doc_id,
            source=f"{doc_id}.md",
            text=t,
            chunk_index=i,
            char_start=0,
            char_end=len(t),
            content_hash=content_hash(t),
        )
        for i, t in enumerate(texts)
    ]
    rng = np.random.default_rng(abs(hash(doc_id)) % 2**32)
    vectors = rng.normal(size=(len(texts), DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    record = DocumentRecord(doc_id, f"{doc_id}.md", content_hash("".join(texts)), len(texts))
    return IndexWrite(record, chunks, vectors)


class _SlowUpserts:
    """A Chroma collection whose upserts take ``delay`` seconds: a slow disk, made repeatable."""

    def __init__(self, inner: Any, delay: float) -> None:
        self._inner, self.delay = inner, delay
        self.upserting = threading.Event()

    def upsert(self, **kwargs: Any) -> Any:
        self.upserting.set()
        time.sleep(self.delay)
        return self._inner.upsert(**kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def _reads(index: LocalIndex, chunk_id: str) -> None:
    assert index.get_chunks([chunk_id])
    assert index.sparse_search("zebra", 3)
    assert index.dense_search(np.ones(DIM, dtype=np.float32) / np.sqrt(DIM), 3)
    assert index.info().documents == 1
    assert [d.doc_id for d in index.documents()] == ["a"]


def test_reads_do_not_wait_for_a_write(tmp_path: Path) -> None:
    index = LocalIndex(tmp_path, "c")
    index.open("m", DIM)
    first = _write("a", ["zebra stripes on the savanna", "lions rest in the shade"])
    index.write([first])
    slow = _SlowUpserts(index._chroma, delay=1.5)
    index._chroma = slow
    writer = threading.Thread(target=index.write, args=([_write("b", ["penguin zebra ice"])],))
    writer.start()
    assert slow.upserting.wait(5)
    started = time.perf_counter()
    _reads(index, first.chunks[0].id)
    waited = time.perf_counter() - started
    writer.join()
    # Old code held the index lock across the whole write: these reads took the full 1.5 s.
    assert waited < 0.5, f"reads waited {waited:.2f}s for the write"
    assert index.sparse_search("penguin", 1)
    index._chroma = slow._inner
    assert index.check() == []
    index.close()


def test_the_first_search_after_a_write_rebuilds_nothing(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    index = LocalIndex(tmp_path, "c")
    index.open("m", DIM)
    index.write([_write(f"d{i}", [f"zebra number {i}", f"lion number {i}"]) for i in range(20)])
    rebuilds: list[int] = []
    original = index._bm25.prepare

    def counting(*args: Any, **kwargs: Any) -> Any:
        rebuilds.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(index._bm25, "prepare", counting)
    index.write([_write("new", ["a penguin arrives"])])
    assert index.delete(["d3"]) == 1
    # The write published BM25 of the committed manifest itself, re-tokenising only "new".
    assert index._bm25.version == index.version()
    hits = index.sparse_search("penguin", 1)
    assert hits and hits[0][0] == _write("new", ["a penguin arrives"]).chunks[0].id
    gone = {c.id for c in _write("d3", ["zebra number 3", "lion number 3"]).chunks}
    assert not gone & {cid for cid, _ in index.sparse_search("zebra number 3", 40)}
    assert rebuilds == [], "writes must derive BM25 incrementally, not rebuild it"
    assert index.check() == []
    index.close()


def test_concurrent_readers_during_many_writes_stay_consistent(tmp_path: Path) -> None:
    index = LocalIndex(tmp_path, "c")
    index.open("m", DIM)
    index.write([_write("base", ["zebra base document"])])
    stop = threading.Event()
    errors: list[BaseException] = []

    def reader() -> None:
        try:
            while not stop.is_set():
                ids = [cid for cid, _ in index.sparse_search("zebra", 50)]
                got = index.get_chunks(ids)
                # A chunk BM25 returns is in the manifest, or was just deleted (never half).
                assert all(c.doc_id in {"base"} or c.doc_id.startswith("w") for c in got.values())
                index.version()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=reader) for _ in range(4)]
    for t in threads:
        t.start()
    for i in range(30):
        index.write([_write(f"w{i}", [f"zebra write {i}", f"more text {i}"])])
        if i % 3 == 2:
            index.delete([f"w{i - 1}"])
    stop.set()
    for t in threads:
        t.join()
    assert not errors, errors[:3]
    assert index.check() == []
    assert index.info().documents == 1 + 30 - 10
    index.close()


def test_reopen_after_writes_loads_the_saved_bm25(tmp_path: Path) -> None:
    index = LocalIndex(tmp_path, "c")
    index.open("m", DIM)
    index.write([_write("a", ["zebra"]), _write("b", ["penguin"])])
    index.delete(["b"])
    index.close()
    again = LocalIndex(tmp_path, "c")
    again.open("m", DIM)
    assert again._bm25.snapshot.tokens is None, "the saved index should have been loaded"
    assert again.check() == [] and again.sparse_search("zebra", 1)
    again.write([_write("c", ["giraffe"])])  # first write after a load: full build, then on
    assert again.check() == [] and again.sparse_search("giraffe", 1)
    again.close()


def test_deferred_sparse_builds_bm25_once_for_many_writes(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    index = LocalIndex(tmp_path, "c")
    index.open("m", DIM)
    index.write([_write("old", ["zebra from before"]), _write("gone", ["penguin to delete"])])
    derives: list[int] = []
    original = index._bm25.derive

    def counting(*args: Any, **kwargs: Any) -> Any:
        derives.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(index._bm25, "derive", counting)
    with index.deferred_sparse():
        for i in range(5):
            index.write([_write(f"d{i}", [f"giraffe number {i}"])])
        index.write([_write("d0", ["giraffe rewritten"])])
        index.delete(["gone"])
        # Searches meanwhile use the BM25 of before the run; nothing rebuilds it behind it.
        assert index.sparse_search("giraffe", 5) == []
        assert index.sparse_search("penguin", 5)
    assert len(derives) == 1
    assert index._bm25.version == index.version() and index.check() == []
    hits = {cid for cid, _ in index.sparse_search("giraffe", 10)}
    assert len(hits) == 5 and index.sparse_search("penguin", 5) == []
    assert index.get_chunks(list(hits))[_write("d0", ["giraffe rewritten"]).chunks[0].id]
    index.close()
