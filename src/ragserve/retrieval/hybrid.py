"""Stage 2: hybrid retrieval — dense and sparse each over-fetch, then one fused ranking.

Two fusions, chosen by ``settings.retrieval.fusion``:

* ``convex`` (default): each side's scores are min-max normalised over its candidates and
  combined as ``alpha * dense + (1 - alpha) * sparse``; a chunk one side did not return gets 0
  from it. Tuned on SciFact train and NFCorpus dev, it beat RRF on both (Bruch et al., 2023,
  "An Analysis of Fusion Functions for Hybrid Retrieval", found the same): the score gap
  between a strong and a weak match carries information that ranks throw away. Normalising
  needs enough candidates to find a meaningful minimum, hence ``fusion_depth``.
* ``rrf``: reciprocal rank fusion (Cormack et al., 2009), ``sum(w / (k + rank))``, needs no
  scores at all; the seed's choice and the ablation's reference.

Dense pseudo-relevance feedback (Rocchio on embeddings) follows the first fusion: the query
vector moves toward the mean vector of the best few fused chunks, dense search runs again and
the fusion is redone with it. The first fusion picks better feedback than dense alone, because
BM25 anchors it to the query's exact terms. It costs one more vector search.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Literal, Protocol, runtime_checkable

import numpy as np

from ragserve.config import setting_default
from ragserve.embedding.embedder import Embedder
from ragserve.errors import StoreError
from ragserve.stores.base import DocumentIndex
from ragserve.types import Hit, ProcessedQuery

if TYPE_CHECKING:
    from ragserve.config import Settings

__all__ = [
    "Fusion",
    "HybridRetriever",
    "RetrievalMode",
    "Retriever",
    "convex_fusion",
    "min_max",
    "reciprocal_rank_fusion",
]

log = logging.getLogger("ragserve.retrieval.hybrid")

RetrievalMode = Literal["hybrid", "dense", "sparse"]
Fusion = Literal["convex", "rrf"]
Scored = Sequence[tuple[str, float]]


def reciprocal_rank_fusion(
    rankings: Sequence[Sequence[str]],
    *,
    k: int = 60,
    weights: Sequence[float] | None = None,
    limit: int | None = None,
) -> list[tuple[str, float]]:
    """Fuse ranked id lists (best first) into one ranking; ties keep first-seen order."""
    if weights is not None and len(weights) != len(rankings):
        raise ValueError("one weight per ranking")
    scores: dict[str, float] = {}
    for i, ranking in enumerate(rankings):
        weight = 1.0 if weights is None else weights[i]
        for rank, doc_id in enumerate(ranking, start=1):
            scores[doc_id] = scores.get(doc_id, 0.0) + weight / (k + rank)
    fused = sorted(scores.items(), key=lambda item: -item[1])
    return fused[:limit] if limit is not None else fused


def min_max(results: Scored) -> dict[str, float]:
    if not results:
        return {}
    values = [score for _, score in results]
    low, high = min(values), max(values)
    span = high - low
    # One candidate, or all equal: they are all as good as this side can say.
    return {cid: (score - low) / span if span > 0 else 1.0 for cid, score in results}


def convex_fusion(
    dense: Sequence[Scored],
    sparse: Sequence[Scored],
    *,
    alpha: float = 0.5,
    limit: int | None = None,
) -> list[tuple[str, float]]:
    """``alpha * dense + (1 - alpha) * sparse`` over min-max normalised scores.

    Each side may hold several result lists (one per query variant); a chunk keeps its best
    normalised score per side. Ties keep first-seen order.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError("alpha must be between 0 and 1")
    fused: dict[str, float] = {}
    for weight, lists in ((alpha, dense), (1.0 - alpha, sparse)):
        side: dict[str, float] = {}
        for results in lists:
            for cid, value in min_max(results).items():
                side[cid] = max(value, side.get(cid, 0.0))
        for cid, value in side.items():
            fused[cid] = fused.get(cid, 0.0) + weight * value
    ranked = sorted(fused.items(), key=lambda item: -item[1])
    return ranked[:limit] if limit is not None else ranked


@runtime_checkable
class Retriever(Protocol):
    def retrieve(self, query: ProcessedQuery, k: int) -> list[Hit]:
        """The ``k`` best chunks for the query, best first."""
        ...


class HybridRetriever:
    """Dense (embedding) and sparse (BM25) search over one index, fused into one ranking.

    Each side fetches ``max(k * overfetch, depth)`` candidates. ``mode`` selects one side
    alone, which the evaluation ablation uses. ``feedback_docs`` > 0 turns on dense
    pseudo-relevance feedback (hybrid mode only).
    """

    def __init__(
        self,
        index: DocumentIndex,
        embedder: Embedder,
        *,
        mode: RetrievalMode = "hybrid",
        fusion: Fusion = "convex",
        alpha: float = 0.55,
        depth: int = 100,
        overfetch: int = 2,
        rrf_k: int = 60,
        feedback_docs: int = setting_default("dense_feedback_docs"),
        feedback_weight: float = 1.0,
    ) -> None:
        self.index = index
        self.embedder = embedder
        self.mode = mode
        self.fusion = fusion
        self.alpha = alpha
        self.depth = depth
        self.overfetch = overfetch
        self.rrf_k = rrf_k
        self.feedback_docs = feedback_docs
        self.feedback_weight = feedback_weight

    @classmethod
    def from_settings(
        cls,
        index: DocumentIndex,
        embedder: Embedder,
        settings: Settings,
        *,
        mode: RetrievalMode = "hybrid",
        fusion: Fusion | None = None,
        feedback: bool = True,
    ) -> HybridRetriever:
        return cls(
            index,
            embedder,
            mode=mode,
            fusion=fusion or settings.retrieval.fusion,
            alpha=settings.retrieval.fusion_alpha,
            depth=settings.retrieval.fusion_depth,
            overfetch=settings.retrieval.overfetch,
            rrf_k=settings.retrieval.rrf_k,
            feedback_docs=settings.retrieval.dense_feedback_docs if feedback else 0,
            feedback_weight=settings.retrieval.dense_feedback_weight,
        )

    def retrieve(self, query: ProcessedQuery, k: int) -> list[Hit]:
        depth = max(k * self.overfetch, self.depth, k)
        queries = [query.text, *query.expansions]
        dense: list[Scored] = []
        sparse: list[Scored] = []
        vectors: list[np.ndarray] = []
        pending: Future[list[Scored]] | None = None
        if self.mode == "hybrid":
            # BM25 runs while the query is embedded and searched: onnxruntime and Chroma
            # release the GIL, so the two sides overlap instead of adding up.
            pending = _side_pool().submit(
                lambda: [self.index.sparse_search(t, depth) for t in queries]
            )
        if self.mode in ("hybrid", "dense"):
            vectors = [self.embedder.embed_query(t) for t in queries]
            try:
                dense = [self.index.dense_search(v, depth) for v in vectors]
            except StoreError as exc:
                if self.mode == "dense":
                    raise
                # The lexical side still answers while the vector store cannot be read.
                log.warning("dense search failed, answering from BM25 alone: %s", exc)
        if pending is not None:
            sparse = pending.result()
        elif self.mode == "sparse":
            sparse = [self.index.sparse_search(t, depth) for t in queries]
        feedback = (
            self.mode == "hybrid"
            and bool(dense)
            and self.feedback_docs > 0
            and self.feedback_weight > 0
        )
        # The same feedback chunks whatever k is, so retrieve(q, 1) is retrieve(q, 10)[:1].
        fused = self._fuse(dense, sparse, max(k, self.feedback_docs) if feedback else k)
        # Hits keep the cosine to the query itself: the refusal gate is calibrated on it, and
        # a vector moved toward its own feedback chunks would look more confident than it is.
        raw = {"dense": _best(dense), "sparse": _best(sparse)}
        if feedback and fused:
            moved = self._feedback_search(vectors[0], fused, depth)
            if moved is not None:
                fused = self._fuse([moved, *dense[1:]], sparse, k)
                self._add_query_cosines(fused, vectors[0], raw["dense"])
        return self._hits(fused[:k], raw)

    def _fuse(self, dense: list[Scored], sparse: list[Scored], k: int) -> list[tuple[str, float]]:
        if self.fusion == "convex":
            return convex_fusion(dense, sparse, alpha=self.alpha, limit=k)
        rankings = [[cid for cid, _ in results] for results in (*dense, *sparse)]
        return reciprocal_rank_fusion(rankings, k=self.rrf_k, limit=k)

    def _feedback_search(
        self, vector: np.ndarray, fused: list[tuple[str, float]], depth: int
    ) -> Scored | None:
        """Dense search again from the query moved toward its best fused chunks."""
        try:
            top = self.index.get_vectors([cid for cid, _ in fused[: self.feedback_docs]])
        except StoreError:  # a chunk deleted since the search: answer without feedback
            return None
        if top.ndim != 2 or top.shape[0] == 0 or top.shape[1] != vector.shape[0]:
            return None
        moved = vector + self.feedback_weight * top.mean(axis=0)
        norm = float(np.linalg.norm(moved))
        if norm == 0.0:
            return None
        return self.index.dense_search((moved / norm).astype(np.float32), depth)

    def _add_query_cosines(
        self, fused: list[tuple[str, float]], vector: np.ndarray, cosines: dict[str, float]
    ) -> None:
        """Give chunks only the feedback search found their cosine to the question.

        Without it a final list made only of such chunks would carry no dense score, and the
        refusal gate, which reads the best one, would have nothing to check.
        """
        missing = [cid for cid, _ in fused if cid not in cosines]
        if not missing:
            return
        try:
            stored = self.index.get_vectors(missing)
        except StoreError:
            return
        if stored.ndim == 2 and stored.shape[1:] == vector.shape:
            cosines.update(zip(missing, map(float, stored @ vector), strict=True))

    def _hits(self, fused: list[tuple[str, float]], raw: dict[str, dict[str, float]]) -> list[Hit]:
        chunks = self.index.get_chunks([cid for cid, _ in fused])
        hits: list[Hit] = []
        for cid, score in fused:
            chunk = chunks.get(cid)
            if chunk is None:  # deleted between search and fetch
                continue
            scores = {self.fusion: score}
            scores |= {side: best[cid] for side, best in raw.items() if cid in best}
            hits.append(Hit(chunk=chunk, score=score, scores=scores))
        return hits


@functools.cache
def _side_pool() -> ThreadPoolExecutor:
    # Shared by every retriever: one BM25 search per in-flight query, bounded like the
    # request pool that calls it.
    return ThreadPoolExecutor(max_workers=4, thread_name_prefix="ragserve-bm25")


def _best(lists: Sequence[Scored]) -> dict[str, float]:
    best: dict[str, float] = {}
    for results in lists:
        for cid, score in results:
            best[cid] = max(score, best.get(cid, float("-inf")))
    return best
