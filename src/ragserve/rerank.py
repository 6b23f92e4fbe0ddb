"""Stage 3: cross-encoder re-ranking of the fused candidates only.

A cross-encoder reads query and passage together, so it judges relevance far better than the
bi-encoder that retrieved them, at a cost per pair; it therefore only sees the fused top-K.
The default model is ragserve's own MiniLM cross-encoder shipped inside the package
(``resources/reranker``, see its MODEL_CARD.md) as fp16 safetensors, run in fp32 on PyTorch;
any sentence-transformers CrossEncoder can be named instead by local path (or by hub name, for
machines that reach a hub), and any directory holding ``model_int8.onnx`` or ``model.onnx`` with
its tokenizer (``export_cross_encoder_onnx`` writes one) runs on onnxruntime.
Scores are probabilities (sigmoid), which is what the refusal gate's threshold is set on.

A small in-house cross-encoder and first-stage retrieval make different mistakes, so the final
order can fuse the two instead of trusting the cross-encoder alone:
``fusion="interpolate"`` ranks by ``alpha * CE logit + (1 - alpha) * retrieval score``, each
min-max normalised over the candidates (the convex combination hybrid retrieval uses; it keeps
how far apart the candidates are, which matters when one side is confident); ``fusion="rrf"``
is reciprocal rank fusion of the two orders, which only sees ranks. Either way the
cross-encoder probability is what ``scores["rerank"]`` holds for the refusal gate.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Protocol, runtime_checkable

import numpy as np

from ragserve.errors import EmptyQueryError
from ragserve.models import resolve_reranker_model
from ragserve.onnx_utils import export_onnx, input_names, ort_session, quantize_int8
from ragserve.retrieval import convex_fusion, reciprocal_rank_fusion
from ragserve.types import Hit

if TYPE_CHECKING:
    from ragserve.config import Settings

__all__ = [
    "CrossEncoderReranker",
    "RerankFusion",
    "Reranker",
    "export_cross_encoder_onnx",
    "fuse_rerank",
    "rerank_order",
]

log = logging.getLogger("ragserve.rerank")

RerankFusion = Literal["none", "rrf", "interpolate"]


@runtime_checkable
class Reranker(Protocol):
    def rerank(self, query: str, hits: list[Hit], k: int) -> list[Hit]:
        """The ``k`` best of ``hits`` by relevance to ``query``, best first."""
        ...


ONNX_FILES = ("model_int8.onnx", "model.onnx")


class _PairScorer(Protocol):
    def logits(self, query: str, texts: Sequence[str], batch_size: int) -> np.ndarray: ...


class _OnnxCrossEncoder:
    """An exported cross-encoder on onnxruntime: raw relevance logits for (query, text) pairs."""

    def __init__(self, model_file: Path, max_length: int) -> None:
        from transformers import AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(
            str(model_file.parent), local_files_only=True
        )
        # The tokenizer's saved model_max_length is whatever length training used; the model's
        # real limit is its position table.
        config = json.loads((model_file.parent / "config.json").read_text())
        self.max_length = min(max_length, int(config.get("max_position_embeddings", 512)))
        self.session = ort_session(model_file)
        self.inputs = set(input_names(self.session))

    def logits(self, query: str, texts: Sequence[str], batch_size: int) -> np.ndarray:
        # Longest-first truncation cuts the passage before the query, and still fits a query
        # that alone is longer than max_length. Pairs run shortest first so a batch pads little.
        enc = self.tokenizer(
            [query] * len(texts), list(texts), truncation=True, max_length=self.max_length
        )
        lengths = [len(ids) for ids in enc["input_ids"]]
        order = np.argsort(lengths, kind="stable")
        out = np.empty(len(texts), dtype=np.float32)
        for start in range(0, len(texts), batch_size):
            batch = order[start : start + batch_size]
            padded = self.tokenizer.pad(
                {k: [enc[k][i] for i in batch] for k in enc}, return_tensors="np"
            )
            feed = {k: np.asarray(v, dtype=np.int64) for k, v in padded.items() if k in self.inputs}
            out[batch] = self.session.run(None, feed)[0].reshape(-1)
        return out


class _SentenceTransformersCrossEncoder:
    """Any sentence-transformers CrossEncoder (local directory or hub name)."""

    def __init__(self, path: str, max_length: int) -> None:
        import torch
        from sentence_transformers import CrossEncoder

        self.model = CrossEncoder(path, device="cpu", max_length=max_length, local_files_only=True)
        # Checkpoints are often stored in fp16; CPUs run fp32 kernels much faster.
        self.model.model.to(torch.float32)
        self.model.model.eval()

    def logits(self, query: str, texts: Sequence[str], batch_size: int) -> np.ndarray:
        import torch

        # CrossEncoder.predict batches in the order given; by length (characters stand in for
        # tokens) each batch pads to similar lengths, as the ONNX runner does.
        order = np.argsort([len(t) for t in texts], kind="stable")
        scores = self.model.predict(
            [(query, texts[i]) for i in order],
            batch_size=batch_size,
            show_progress_bar=False,
            convert_to_numpy=True,
            activation_fn=torch.nn.Identity(),
        )
        out = np.empty(len(texts), dtype=np.float32)
        out[order] = np.asarray(scores, dtype=np.float32).reshape(-1)
        return out


def _load_cross_encoder(name: str, max_length: int) -> _PairScorer:
    path = resolve_reranker_model(name)
    onnx = [Path(path) / f for f in ONNX_FILES if (Path(path) / f).is_file()]
    if onnx:
        return _OnnxCrossEncoder(onnx[0], max_length)
    return _SentenceTransformersCrossEncoder(path, max_length)


class CrossEncoderReranker:
    def __init__(
        self,
        model: str = "builtin",
        *,
        max_length: int = 256,
        batch_size: int = 32,
        fusion: RerankFusion = "none",
        rrf_k: int = 60,
        alpha: float = 0.5,
    ) -> None:
        self.model_name = model
        self.max_length = max_length
        self.batch_size = batch_size
        self.fusion = fusion
        self.rrf_k = rrf_k
        self.alpha = alpha
        self._model: _PairScorer | None = None
        self._lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: Settings) -> CrossEncoderReranker:
        return cls(
            settings.reranker_model,
            max_length=settings.rerank_max_length,
            batch_size=settings.rerank_batch_size,
            fusion=settings.rerank_fusion,
            rrf_k=settings.rrf_k,
            alpha=settings.rerank_alpha,
        )

    def warm_up(self) -> None:
        with self._lock:
            if self._model is not None:
                return
            self._model = _load_cross_encoder(self.model_name, self.max_length)
            log.info("loaded re-ranker %s (max length %d)", self.model_name, self.max_length)

    def score(self, query: str, texts: Sequence[str]) -> np.ndarray:
        if not query.strip():
            raise EmptyQueryError()
        if not texts:
            return np.zeros(0, dtype=np.float32)
        if self._model is None:
            self.warm_up()
        logits = self._model.logits(query, texts, self.batch_size)
        return (1.0 / (1.0 + np.exp(-logits))).astype(np.float32)

    def rerank(self, query: str, hits: list[Hit], k: int) -> list[Hit]:
        if not hits:
            if not query.strip():
                raise EmptyQueryError()
            return []
        scores = self.score(query, [h.chunk.searchable_text for h in hits])
        return fuse_rerank(hits, scores, k, fusion=self.fusion, rrf_k=self.rrf_k, alpha=self.alpha)


def rerank_order(
    scores: np.ndarray,
    k: int,
    *,
    fusion: RerankFusion,
    rrf_k: int = 60,
    retrieval_scores: Sequence[float] | None = None,
    alpha: float = 0.5,
) -> list[tuple[int, float]]:
    """(position in the retrieval order, final score) of the ``k`` best candidates: by
    cross-encoder probabilities ``scores`` alone, by RRF of the retrieval order and the CE
    order, or by a convex combination of the CE logits and ``retrieval_scores``."""
    if fusion == "interpolate":
        if retrieval_scores is None or len(retrieval_scores) != len(scores):
            raise ValueError("fusion='interpolate' needs one retrieval score per candidate")
        p = np.clip(scores.astype(np.float64), 1e-7, 1 - 1e-7)
        # Logits, not probabilities: the sigmoid flattens exactly the confident end that
        # should weigh most against the retrieval score.
        logits = np.log(p / (1 - p))
        fused = convex_fusion(
            [[(str(i), float(x)) for i, x in enumerate(logits)]],
            [[(str(i), float(x)) for i, x in enumerate(retrieval_scores)]],
            alpha=alpha,
            limit=max(k, 0),
        )
        return [(int(i), s) for i, s in fused]
    order = [int(i) for i in np.argsort(-scores, kind="stable")]
    if fusion == "none":
        return [(i, float(scores[i])) for i in order[: max(k, 0)]]
    fused = reciprocal_rank_fusion(
        [[str(i) for i in range(len(scores))], [str(i) for i in order]], k=rrf_k, limit=max(k, 0)
    )
    return [(int(i), s) for i, s in fused]


def fuse_rerank(
    hits: Sequence[Hit],
    scores: np.ndarray,
    k: int,
    *,
    fusion: RerankFusion,
    rrf_k: int = 60,
    alpha: float = 0.5,
) -> list[Hit]:
    """Order ``hits`` (given in retrieval order) by cross-encoder ``scores``, or fuse both."""
    # Keep the CE probability under "rerank" (the refusal gate reads it); rank by the final score.
    return [
        replace(hits[i], score=final, scores={**hits[i].scores, "rerank": float(scores[i])})
        for i, final in rerank_order(
            scores,
            k,
            fusion=fusion,
            rrf_k=rrf_k,
            retrieval_scores=[h.score for h in hits],
            alpha=alpha,
        )
    ]


def export_cross_encoder_onnx(
    checkpoint: str | Path, out: str | Path, *, quantize: bool = True
) -> Path:
    """Write a sentence-transformers / Hugging Face cross-encoder ``checkpoint`` as ONNX, with
    its tokenizer and config, into ``out`` (which ``RAGSERVE_RERANKER_MODEL`` can then name).

    With ``quantize`` the weights become int8 (dynamic quantization, per channel): a quarter of
    the size, faster on CPUs with int8 dot-product instructions (VNNI), at a small cost in
    agreement with the original that the caller should measure. Needs the ``onnx`` package
    (``pip install ragserve[train]``).
    """
    import tempfile

    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    out = Path(out)
    model = AutoModelForSequenceClassification.from_pretrained(
        str(checkpoint), dtype=torch.float32, local_files_only=True
    ).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(checkpoint), local_files_only=True)
    names = [
        n
        for n in ("input_ids", "attention_mask", "token_type_ids")
        if n in tokenizer.model_input_names
    ]
    example = tokenizer(["query"], ["a passage"], return_tensors="pt")
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = Path(tmp) / "model.onnx" if quantize else out / ONNX_FILES[1]
        export_onnx(
            model,
            {n: example[n] for n in names},
            fp32,
            output_name="logits",
            output_axes={0: "batch"},
        )
        target = quantize_int8(fp32, out / ONNX_FILES[0]) if quantize else fp32
    # Saved as the model's own limit, not the length it happened to be trained at.
    tokenizer.model_max_length = model.config.max_position_embeddings
    tokenizer.save_pretrained(str(out))
    model.config.save_pretrained(str(out))
    return target
