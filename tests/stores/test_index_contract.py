"""The DocumentIndex contract: one suite, run against every backend (``chroma``, ``postgres``).

Small synthetic unit vectors and hand-made chunks: the contract is about storage and search
semantics, not about any model.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from ragserve.config import Settings
from ragserve.errors import EmbedderMismatchError
from ragserve.stores import DocumentIndex, IndexWrite, open_index
from ragserve.types import Chunk, DocumentRecord, content_hash

DIM = 8
BACKENDS = ["chroma", pytest.param("postgres", marks=pytest.mark.postgres)]

Factory = Callable[..., DocumentIndex]


def _vec(i: int) -> np.ndarray:
    """A unit vector near axis ``i``: _vec(i) is the nearest neighbour of itself."""
    v = np.full(DIM, 0.01, dtype=np.float32)
    v[i % DIM] = 1.0
    v[(i + 1) % DIM] = 0.2
    return v / np.linalg.norm(v)


def _write(doc_id: str, texts: list[str], base: int = 0) -> IndexWrite:
    chunks = [
        Chunk(
            id=Chunk.make_id(doc_id, i, content_hash(t)),
            doc_id=doc_id,
            source=f"docs/{doc_id}.md",
            text=t,
            chunk_index=i,
            char_start=i * 100,
            char_end=i * 100 + len(t),
            content_hash=content_hash(t),
            page=i + 1 if i % 2 == 0 else None,
            section=f"Intro > Part {i}" if i else None,
            title=f"Title of {doc_id}",
            metadata={"k": i, "tags": ["x", "y"], "nested": {"ok": True}},
        )
        for i, t in enumerate(texts)
    ]
    record = DocumentRecord(
        doc_id,
        f"docs/{doc_id}.md",
        content_hash("\n".join(texts)),
        len(texts),
        title=f"Title of {doc_id}",
        ingested_at=1_700_000_000.25,
        metadata={"lang": "en"},
    )
    return IndexWrite(record, chunks, np.stack([_vec(base + i) for i in range(len(texts))]))


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture()
def make_index(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Factory]:
    """Opens indexes of this backend; collection names are unique per test (one PG server)."""
    dsn = request.getfixturevalue("pg_primary_dsn") if backend == "postgres" else None
    suffix = uuid.uuid4().hex[:8]
    opened: list[DocumentIndex] = []

    def make(
        collection: str = "c", model: str = "model-a", dim: int = DIM, *, open: bool = True
    ) -> DocumentIndex:
        settings = Settings(
            data_dir=tmp_path,
            collection=f"{collection}_{suffix}",
            store=backend,  # type: ignore[arg-type]
            postgres_dsn=dsn,  # type: ignore[arg-type]
        )
        index = open_index(settings)
        opened.append(index)
        if open:
            index.open(model, dim)
        return index

    yield make
    for index in opened:
        index.close()


@pytest.fixture()
def index(make_index: Factory) -> DocumentIndex:
    return make_index()


def test_satisfies_the_protocol(index: DocumentIndex, backend: str) -> None:
    assert isinstance(index, DocumentIndex)
    info = index.info()
    assert info.backend == backend and info.embedding_model == "model-a"
    assert (info.dimension, info.documents, info.chunks) == (DIM, 0, 0)


def test_write_then_dense_and_sparse_search(index: DocumentIndex) -> None:
    a = _write("a", ["zebra stripes pattern on the savanna", "lion mane colour"])
    b = _write("b", ["emperor penguin colony on the ice"], base=5)
    index.write([a, b])
    dense = index.dense_search(_vec(0), 2)
    assert next(cid for cid, _ in dense) == a.chunks[0].id
    assert dense[0][1] == pytest.approx(1.0, abs=1e-4) and dense[0][1] >= dense[1][1]
    assert index.dense_search(_vec(5), 1)[0][0] == b.chunks[0].id
    # A long question: only some words occur in the corpus, yet the keyword chunk is found.
    sparse = index.sparse_search("Which animals form a colony of penguins in winter?", 3)
    assert sparse and sparse[0][0] == b.chunks[0].id and sparse[0][1] > 0
    assert index.sparse_search("xylophone", 3) == []
    assert index.sparse_search("", 3) == [] and index.dense_search(_vec(0), 0) == []


def test_get_chunks_round_trips_every_field(index: DocumentIndex) -> None:
    w = _write("a", ["first chunk text", "second chunk text", "third"])
    index.write([w])
    got = index.get_chunks([c.id for c in w.chunks] + ["no-such-id"])
    assert set(got) == {c.id for c in w.chunks}
    for chunk in w.chunks:
        assert got[chunk.id] == chunk  # dataclass equality: every field, metadata included


def test_manifest_hash_and_documents(index: DocumentIndex) -> None:
    w = _write("a", ["alpha text"])
    index.write([w])
    assert index.document_hash("a") == w.record.content_hash
    assert index.document_hash("missing") is None
    (rec,) = index.documents()
    assert (rec.doc_id, rec.source, rec.chunks, rec.title) == ("a", "docs/a.md", 1, "Title of a")
    assert rec.metadata == {"lang": "en"} and rec.ingested_at == pytest.approx(1_700_000_000.25)


def test_replace_delete_and_version_bumps(index: DocumentIndex) -> None:
    v0 = index.info().version
    index.write([_write("a", ["old words one", "old words two"])])
    v1 = index.info().version
    assert v1 > v0
    new = _write("a", ["brand new text"], base=3)
    index.write([new])
    info = index.info()
    assert info.version > v1 and (info.documents, info.chunks) == (1, 1)
    assert index.sparse_search("old words", 5) == []
    assert [cid for cid, _ in index.dense_search(_vec(0), 5)] == [new.chunks[0].id]
    assert index.document_hash("a") == new.record.content_hash
    assert index.delete(["a", "never-there"]) == 1
    v3 = index.info().version
    assert v3 > info.version
    assert index.delete(["a"]) == 0 and index.info().version == v3  # no change, no bump
    assert index.info().chunks == 0 and index.dense_search(_vec(3), 5) == []
    assert index.sparse_search("brand", 5) == [] and index.get_chunks([new.chunks[0].id]) == {}


def test_version_is_the_committed_change_counter(index: DocumentIndex) -> None:
    # version() is what the query cache keys on: it must move with every committed change,
    # agree with info(), and stay put when nothing changed.
    v0 = index.version()
    assert v0 == index.info().version
    index.write([_write("a", ["counted words"])])
    v1 = index.version()
    assert v1 > v0 and v1 == index.info().version
    assert index.delete(["missing"]) == 0 and index.version() == v1
    assert index.delete(["a"]) == 1 and index.version() > v1


def test_iter_chunks_and_get_vectors(index: DocumentIndex) -> None:
    writes = [_write(f"d{i}", [f"text {i} a", f"text {i} b"], base=i) for i in range(5)]
    index.write(writes)
    seen = [c for batch in index.iter_chunks(batch_size=3) for c in batch]
    assert len(seen) == 10 and {c.id for c in seen} == {c.id for w in writes for c in w.chunks}
    ids = [writes[3].chunks[1].id, writes[0].chunks[0].id]
    vecs = index.get_vectors(ids)
    assert vecs.shape == (2, DIM) and vecs.dtype == np.float32
    np.testing.assert_allclose(vecs[0], writes[3].vectors[1], atol=1e-6)
    np.testing.assert_allclose(vecs[1], writes[0].vectors[0], atol=1e-6)


def test_embedder_mismatch_is_a_clear_error(make_index: Factory) -> None:
    first = make_index("mm", model="model-a")
    first.write([_write("a", ["x y z"])])
    first.close()
    with pytest.raises(EmbedderMismatchError) as err:
        make_index("mm", model="model-b", dim=16)
    assert "'model-a'" in err.value.message and "'model-b'" in err.value.message
    assert "ragserve reindex" in (err.value.hint or "")


def test_reset_embedder_then_add_vectors(make_index: Factory) -> None:
    first = make_index("re", model="model-a")
    w = _write("a", ["reindex me please", "and me too"])
    first.write([w])
    first.close()
    # What `ragserve reindex` does: open fails on the mismatch but stays connected, then reset.
    again = make_index("re", open=False)
    with pytest.raises(EmbedderMismatchError):
        again.open("model-b", 16)
    again.reset_embedder("model-b", 16)
    info = again.info()
    assert (info.embedding_model, info.dimension, info.chunks) == ("model-b", 16, 2)
    new = np.eye(16, dtype=np.float32)[:2]
    again.add_vectors([c.id for c in w.chunks], new)
    np.testing.assert_allclose(again.get_vectors([w.chunks[1].id])[0], new[1], atol=1e-6)
    assert again.dense_search(new[0], 1)[0][0] == w.chunks[0].id
    assert again.sparse_search("reindex", 2)[0][0] == w.chunks[0].id


def test_collections_are_isolated(make_index: Factory) -> None:
    a = make_index("alpha")
    b = make_index("beta")
    wa = _write("shared-id", ["only in alpha zebra"])
    a.write([wa])
    assert b.info().documents == 0 and b.document_hash("shared-id") is None
    assert b.sparse_search("zebra", 5) == [] and b.dense_search(_vec(0), 5) == []
    assert b.get_chunks([wa.chunks[0].id]) == {}
    # The same document id in both collections: each keeps its own version.
    wb = _write("shared-id", ["beta has its own text"], base=4)
    b.write([wb])
    assert a.document_hash("shared-id") == wa.record.content_hash
    assert b.document_hash("shared-id") == wb.record.content_hash
    assert b.delete(["shared-id"]) == 1 and a.info().documents == 1
    assert a.sparse_search("zebra", 5)[0][0] == wa.chunks[0].id
