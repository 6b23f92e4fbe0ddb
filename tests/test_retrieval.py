from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from ragserve.config import Settings
from ragserve.retrieval.hybrid import HybridRetriever, convex_fusion, reciprocal_rank_fusion
from ragserve.types import ProcessedQuery


@pytest.mark.fast
def test_rrf_rewards_agreement_between_rankings() -> None:
    fused = reciprocal_rank_fusion([["a", "b", "c"], ["b", "c", "a"]], k=60)
    assert [d for d, _ in fused][:1] == ["b"]
    assert fused[0][1] == pytest.approx(1 / 62 + 1 / 61)


@pytest.mark.fast
def test_rrf_single_ranking_keeps_order_and_limit() -> None:
    fused = reciprocal_rank_fusion([["x", "y", "z"]], limit=2)
    assert [d for d, _ in fused] == ["x", "y"]


@pytest.mark.fast
def test_rrf_weights() -> None:
    fused = reciprocal_rank_fusion([["a"], ["b"]], weights=[1.0, 2.0])
    assert fused[0][0] == "b"
    with pytest.raises(ValueError):
        reciprocal_rank_fusion([["a"]], weights=[1.0, 2.0])


@pytest.mark.fast
@given(st.lists(st.lists(st.sampled_from("abcdefgh"), unique=True), max_size=4))
def test_rrf_scores_sorted_and_cover_every_id(rankings: list[list[str]]) -> None:
    fused = reciprocal_rank_fusion(rankings)
    scores = [s for _, s in fused]
    assert scores == sorted(scores, reverse=True)
    assert {d for d, _ in fused} == {d for r in rankings for d in r}


@pytest.mark.fast
def test_convex_fusion_by_hand() -> None:
    dense = [[("a", 0.9), ("b", 0.5), ("c", 0.1)]]
    sparse = [[("b", 10.0), ("c", 5.0), ("d", 0.0)]]
    # normalised: dense a=1, b=.5, c=0; sparse b=1, c=.5, d=0
    fused = convex_fusion(dense, sparse, alpha=0.5)
    assert [d for d, _ in fused] == ["b", "a", "c", "d"]
    assert dict(fused) == pytest.approx({"b": 0.75, "a": 0.5, "c": 0.25, "d": 0.0})
    assert [d for d, _ in convex_fusion(dense, sparse, alpha=1.0, limit=2)] == ["a", "b"]
    assert [d for d, _ in convex_fusion(dense, sparse, alpha=0.0, limit=2)] == ["b", "c"]


@pytest.mark.fast
def test_convex_fusion_takes_each_sides_best_variant_and_handles_edges() -> None:
    # Two query variants on the dense side: "c" is best in the second one.
    fused = dict(convex_fusion([[("a", 2.0), ("c", 1.0)], [("c", 3.0), ("a", 0.0)]], [], alpha=0.5))
    assert fused == pytest.approx({"a": 0.5, "c": 0.5})
    assert convex_fusion([[("only", 0.3)]], [[]]) == [("only", 0.5)]
    assert convex_fusion([], []) == []
    with pytest.raises(ValueError):
        convex_fusion([], [], alpha=1.5)


@pytest.mark.fast
@given(
    st.lists(st.tuples(st.sampled_from("abcdefgh"), st.floats(-50, 50)), unique_by=lambda t: t[0]),
    st.lists(st.tuples(st.sampled_from("abcdefgh"), st.floats(0, 50)), unique_by=lambda t: t[0]),
    st.floats(0, 1),
)
def test_convex_scores_bounded_sorted_and_cover_every_id(
    dense: list[tuple[str, float]], sparse: list[tuple[str, float]], alpha: float
) -> None:
    fused = convex_fusion([dense], [sparse], alpha=alpha)
    scores = [s for _, s in fused]
    assert scores == sorted(scores, reverse=True)
    assert all(-1e-9 <= s <= 1 + 1e-9 for s in scores)
    assert {d for d, _ in fused} == {d for d, _ in dense + sparse}


@pytest.fixture(scope="module")
def scifact_index(tmp_path_factory: pytest.TempPathFactory, shared_datasets: Path, embedder):  # type: ignore[no-untyped-def]
    """The first 300 SciFact abstracts, ingested with the real embedder into real Chroma+BM25."""
    from ragserve.ingest.loaders import iter_beir_corpus
    from ragserve.ingest.pipeline import Ingestor
    from ragserve.stores.local import LocalIndex

    settings = Settings(data_dir=tmp_path_factory.mktemp("idx"), collection="scifact")
    index = LocalIndex.from_settings(settings)
    index.open(embedder.fingerprint, embedder.dimension)
    docs = []
    for i, doc in enumerate(iter_beir_corpus(shared_datasets / "scifact" / "corpus.jsonl")):
        if i >= 300:
            break
        docs.append(doc)
    Ingestor(settings, index, embedder).ingest_documents(docs, progress=False)
    yield index, docs
    index.close()


@pytest.mark.parametrize("fusion", ["convex", "rrf"])
def test_hybrid_finds_a_document_by_its_own_title(scifact_index, embedder, fusion: str) -> None:  # type: ignore[no-untyped-def]
    index, docs = scifact_index
    retriever = HybridRetriever(index, embedder, fusion=fusion)  # type: ignore[arg-type]
    found = 0
    for doc in docs[:20]:
        hits = retriever.retrieve(ProcessedQuery(original=doc.title, text=doc.title or ""), 5)
        assert hits and all({fusion} <= set(h.scores) for h in hits)
        assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
        found += hits[0].chunk.doc_id == doc.doc_id
    assert found >= 18


@pytest.mark.parametrize("mode", ["dense", "sparse"])
def test_single_side_modes_only_use_their_side(scifact_index, embedder, mode: str) -> None:  # type: ignore[no-untyped-def]
    index, docs = scifact_index
    retriever = HybridRetriever(index, embedder, mode=mode)  # type: ignore[arg-type]
    hits = retriever.retrieve(ProcessedQuery(original="x", text=docs[3].title or ""), 5)
    assert hits
    other = "sparse" if mode == "dense" else "dense"
    assert all(mode in h.scores and other not in h.scores for h in hits)


def _spy_dense(index, calls):  # type: ignore[no-untyped-def]
    """Record (vector, k) of every dense search; ``del index.dense_search`` undoes it."""
    original = index.dense_search

    def spy(vector, k):  # type: ignore[no-untyped-def]
        calls.append((np.array(vector, dtype=np.float32), k))
        return original(vector, k)

    index.dense_search = spy


def test_overfetch_depth(scifact_index, embedder) -> None:  # type: ignore[no-untyped-def]
    index, _docs = scifact_index
    calls: list[tuple[np.ndarray, int]] = []
    _spy_dense(index, calls)
    try:
        # One dense search per retrieval: feedback (a second, moved search) is off here.
        HybridRetriever(index, embedder, overfetch=3, depth=1, feedback_docs=0).retrieve(
            ProcessedQuery(original="q", text="cancer"), 7
        )
        HybridRetriever(index, embedder, overfetch=3, feedback_docs=0).retrieve(
            ProcessedQuery(original="q", text="cancer"), 7
        )
    finally:
        del index.dense_search
    # k x overfetch, unless the fusion depth (default 100) asks for more
    assert [k for _, k in calls] == [21, 100]


def test_dense_feedback_searches_again_from_the_query_moved_toward_the_best_chunks(
    scifact_index,  # type: ignore[no-untyped-def]
    embedder,
) -> None:
    index, _docs = scifact_index
    query = ProcessedQuery(original="q", text="vitamin D deficiency and bone fractures")
    plain = HybridRetriever(index, embedder, feedback_docs=0).retrieve(query, 10)
    calls: list[tuple[np.ndarray, int]] = []
    _spy_dense(index, calls)
    try:
        hits = HybridRetriever(index, embedder, feedback_docs=2, feedback_weight=1.0).retrieve(
            query, 10
        )
    finally:
        del index.dense_search
    q = embedder.embed_query(query.text)
    moved = q + index.get_vectors([h.chunk.id for h in plain[:2]]).mean(axis=0)
    assert len(calls) == 2
    np.testing.assert_allclose(calls[0][0], q, atol=1e-6)
    np.testing.assert_allclose(calls[1][0], moved / np.linalg.norm(moved), atol=1e-5)
    # The refusal gate reads "dense" as the cosine to the question, never to the moved vector.
    # Every hit has it, including chunks that only the feedback search found.
    for hit in hits:
        cosine = float(index.get_vectors([hit.chunk.id])[0] @ q)
        assert hit.scores["dense"] == pytest.approx(cosine, abs=1e-4)
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)


def test_dense_feedback_is_skipped_when_a_feedback_chunk_vanished(scifact_index, embedder) -> None:  # type: ignore[no-untyped-def]
    from ragserve.errors import StoreError

    index, _docs = scifact_index
    query = ProcessedQuery(original="q", text="cancer immunotherapy")
    plain = HybridRetriever(index, embedder, feedback_docs=0).retrieve(query, 10)

    def gone(ids):  # type: ignore[no-untyped-def]
        raise StoreError("deleted meanwhile")

    index.get_vectors = gone
    try:
        hits = HybridRetriever(index, embedder, feedback_docs=2).retrieve(query, 10)
    finally:
        del index.get_vectors
    assert [h.chunk.id for h in hits] == [h.chunk.id for h in plain]


def test_dense_feedback_does_not_depend_on_how_many_hits_are_asked_for(
    scifact_index,  # type: ignore[no-untyped-def]
    embedder,
) -> None:
    index, _docs = scifact_index
    retriever = HybridRetriever(index, embedder, feedback_docs=3)
    query = ProcessedQuery(original="q", text="gene expression in stem cells")
    assert [h.chunk.id for h in retriever.retrieve(query, 1)] == [
        h.chunk.id for h in retriever.retrieve(query, 10)[:1]
    ]


def test_hybrid_answers_from_bm25_when_the_vector_store_cannot_be_read(
    scifact_index,  # type: ignore[no-untyped-def]
    embedder,
) -> None:
    from ragserve.errors import StoreError

    index, docs = scifact_index

    def unreadable(vector, k):  # type: ignore[no-untyped-def]
        raise StoreError("The vector store could not be read")

    index.dense_search = unreadable
    try:
        query = ProcessedQuery(original="q", text=docs[5].title or "")
        hits = HybridRetriever(index, embedder, feedback_docs=2).retrieve(query, 5)
        assert hits and hits[0].chunk.doc_id == docs[5].doc_id
        assert all("dense" not in h.scores for h in hits)
        with pytest.raises(StoreError):
            HybridRetriever(index, embedder, mode="dense").retrieve(query, 5)
    finally:
        del index.dense_search
