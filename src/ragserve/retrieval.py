"""Stage 2: hybrid retrieval — dense and sparse each over-fetch, fused by reciprocal rank.

RRF (Cormack et al., 2009) scores a candidate by ``sum(w / (k + rank))`` over the rankings it
appears in. It needs no score calibration between cosine similarities and BM25 scores, which
live on unrelated scales; that is why the seed prefers it to a weighted linear combination.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Literal, Protocol, runtime_checkable

from ragserve.embedding import Embedder
from ragserve.stores.base import DocumentIndex
from ragserve.types import Hit, ProcessedQuery

__all__ = ["HybridRetriever", "RetrievalMode", "Retriever", "reciprocal_rank_fusion"]

log = logging.getLogger("ragserve.retrieval")

RetrievalMode = Literal["hybrid", "dense", "sparse"]


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


@runtime_checkable
class Retriever(Protocol):
    def retrieve(self, query: ProcessedQuery, k: int) -> list[Hit]:
        """The ``k`` best chunks for the query, best first."""
        ...


class HybridRetriever:
    """Dense (embedding) and sparse (BM25) search over one index, fused with RRF.

    ``mode`` selects one side alone, which the evaluation ablation uses.
    """

    def __init__(
        self,
        index: DocumentIndex,
        embedder: Embedder,
        *,
        mode: RetrievalMode = "hybrid",
        overfetch: int = 2,
        rrf_k: int = 60,
    ) -> None:
        self.index = index
        self.embedder = embedder
        self.mode = mode
        self.overfetch = overfetch
        self.rrf_k = rrf_k

    def retrieve(self, query: ProcessedQuery, k: int) -> list[Hit]:
        depth = max(k * self.overfetch, k)
        queries = [query.text, *query.expansions]
        rankings: list[list[str]] = []
        dense_scores: dict[str, float] = {}
        sparse_scores: dict[str, float] = {}
        if self.mode in ("hybrid", "dense"):
            for text in queries:
                results = self.index.dense_search(self.embedder.embed_query(text), depth)
                rankings.append([cid for cid, _ in results])
                for cid, score in results:
                    dense_scores[cid] = max(score, dense_scores.get(cid, float("-inf")))
        if self.mode in ("hybrid", "sparse"):
            for text in queries:
                results = self.index.sparse_search(text, depth)
                rankings.append([cid for cid, _ in results])
                for cid, score in results:
                    sparse_scores[cid] = max(score, sparse_scores.get(cid, float("-inf")))
        fused = reciprocal_rank_fusion(rankings, k=self.rrf_k, limit=k)
        chunks = self.index.get_chunks([cid for cid, _ in fused])
        hits: list[Hit] = []
        for cid, score in fused:
            chunk = chunks.get(cid)
            if chunk is None:  # deleted between search and fetch
                continue
            scores = {"rrf": score}
            if cid in dense_scores:
                scores["dense"] = dense_scores[cid]
            if cid in sparse_scores:
                scores["sparse"] = sparse_scores[cid]
            hits.append(Hit(chunk=chunk, score=score, scores=scores))
        return hits
