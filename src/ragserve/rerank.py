"""Stage 3: cross-encoder re-ranking of the fused candidates only.

A cross-encoder reads query and passage together, so it judges relevance far better than the
bi-encoder that retrieved them, at a cost per pair; it therefore only sees the fused top-K.
The default model is ragserve's own MiniLM cross-encoder shipped inside the package
(``resources/reranker``, see its MODEL_CARD.md); any sentence-transformers CrossEncoder can be
named instead by local path (or by hub name, for machines that reach a hub).
Scores are probabilities (sigmoid), which is what the refusal gate's threshold is set on.

With ``fusion="rrf"`` the final order is reciprocal rank fusion of the cross-encoder's ranking
and the retrieval ranking it was given. A small in-house cross-encoder and first-stage retrieval
make different mistakes, so fusing the two is steadier than trusting either alone; the
cross-encoder probability is still what ``scores["rerank"]`` holds for the refusal gate.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

import numpy as np

from ragserve.errors import EmptyQueryError
from ragserve.models import resolve_reranker_model
from ragserve.retrieval import reciprocal_rank_fusion
from ragserve.types import Hit

if TYPE_CHECKING:
    from ragserve.config import Settings

__all__ = ["CrossEncoderReranker", "RerankFusion", "Reranker", "fuse_rerank", "rerank_order"]

log = logging.getLogger("ragserve.rerank")

RerankFusion = Literal["none", "rrf"]


@runtime_checkable
class Reranker(Protocol):
    def rerank(self, query: str, hits: list[Hit], k: int) -> list[Hit]:
        """The ``k`` best of ``hits`` by relevance to ``query``, best first."""
        ...


class CrossEncoderReranker:
    def __init__(
        self,
        model: str = "builtin",
        *,
        max_length: int = 256,
        batch_size: int = 32,
        fusion: RerankFusion = "none",
        rrf_k: int = 60,
    ) -> None:
        self.model_name = model
        self.max_length = max_length
        self.batch_size = batch_size
        self.fusion = fusion
        self.rrf_k = rrf_k
        self._model: Any = None
        self._lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: Settings) -> CrossEncoderReranker:
        return cls(
            settings.reranker_model,
            max_length=settings.rerank_max_length,
            batch_size=settings.rerank_batch_size,
            fusion=settings.rerank_fusion,
            rrf_k=settings.rrf_k,
        )

    def warm_up(self) -> None:
        with self._lock:
            if self._model is not None:
                return
            import torch
            from sentence_transformers import CrossEncoder

            path = resolve_reranker_model(self.model_name)
            model = CrossEncoder(
                path, device="cpu", max_length=self.max_length, local_files_only=True
            )
            # Shipped in fp16 to halve the package; CPUs run fp32 kernels much faster.
            model.model.to(torch.float32)
            model.model.eval()
            self._model = model
            log.info("loaded re-ranker %s (max length %d)", self.model_name, self.max_length)

    def score(self, query: str, texts: Sequence[str]) -> np.ndarray:
        if not query.strip():
            raise EmptyQueryError()
        if not texts:
            return np.zeros(0, dtype=np.float32)
        if self._model is None:
            self.warm_up()
        import torch

        # Long passages are cut by the tokenizer at max_length (query first, so the query is
        # never the part that is lost).
        scores = self._model.predict(
            [(query, t) for t in texts],
            batch_size=self.batch_size,
            show_progress_bar=False,
            convert_to_numpy=True,
            activation_fn=torch.nn.Sigmoid(),
        )
        return np.asarray(scores, dtype=np.float32).reshape(-1)

    def rerank(self, query: str, hits: list[Hit], k: int) -> list[Hit]:
        if not hits:
            if not query.strip():
                raise EmptyQueryError()
            return []
        scores = self.score(query, [h.chunk.searchable_text for h in hits])
        return fuse_rerank(hits, scores, k, fusion=self.fusion, rrf_k=self.rrf_k)


def rerank_order(
    scores: np.ndarray, k: int, *, fusion: RerankFusion, rrf_k: int = 60
) -> list[tuple[int, float]]:
    """(position in the retrieval order, final score) of the ``k`` best candidates: by
    cross-encoder ``scores`` alone, or by RRF of the retrieval order and the CE order."""
    order = [int(i) for i in np.argsort(-scores, kind="stable")]
    if fusion == "none":
        return [(i, float(scores[i])) for i in order[: max(k, 0)]]
    fused = reciprocal_rank_fusion(
        [[str(i) for i in range(len(scores))], [str(i) for i in order]], k=rrf_k, limit=max(k, 0)
    )
    return [(int(i), s) for i, s in fused]


def fuse_rerank(
    hits: Sequence[Hit], scores: np.ndarray, k: int, *, fusion: RerankFusion, rrf_k: int = 60
) -> list[Hit]:
    """Order ``hits`` (given in retrieval order) by cross-encoder ``scores``, or by RRF of both."""
    # Keep the CE probability under "rerank" (the refusal gate reads it); rank by the final score.
    return [
        replace(hits[i], score=final, scores={**hits[i].scores, "rerank": float(scores[i])})
        for i, final in rerank_order(scores, k, fusion=fusion, rrf_k=rrf_k)
    ]
