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

import copy
import json
import logging
import threading
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

import numpy as np

from ragserve.errors import EmptyQueryError
from ragserve.models import resolve_reranker_model
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


class _PerThreadTokenizer:
    """One Hugging Face tokenizer per thread, each a copy of one private prototype.

    A fast tokenizer is a single Rust object behind a borrow check: while one thread encodes
    through it, another that sets truncation or padding on it fails with ``RuntimeError:
    Already borrowed`` (or, worse, encodes under the other's settings). Re-ranking runs in the
    server's worker threads, so none may share one. Copies, not fresh loads from the files,
    keep any setting made after loading (sentence-transformers keeps ``max_length`` on it).
    """

    def __init__(self, prototype: Any) -> None:
        # Nothing ever encodes with the prototype: copying it only reads it.
        self._prototype = copy.deepcopy(prototype)
        self._copying = threading.Lock()
        self._local = threading.local()

    @classmethod
    def from_directory(cls, directory: str | Path) -> _PerThreadTokenizer:
        from transformers import AutoTokenizer

        return cls(AutoTokenizer.from_pretrained(str(directory), local_files_only=True))

    def get(self) -> Any:
        tokenizer = getattr(self._local, "tokenizer", None)
        if tokenizer is None:
            with self._copying:
                tokenizer = self._local.tokenizer = copy.deepcopy(self._prototype)
        return tokenizer


class _OnnxCrossEncoder:
    """An exported cross-encoder on onnxruntime: raw relevance logits for (query, text) pairs."""

    def __init__(self, model_file: Path, max_length: int) -> None:
        import onnxruntime as ort

        self.tokenizers = _PerThreadTokenizer.from_directory(model_file.parent)
        # The tokenizer's saved model_max_length is whatever length training used; the model's
        # real limit is its position table.
        config = json.loads((model_file.parent / "config.json").read_text())
        self.max_length = min(max_length, int(config.get("max_position_embeddings", 512)))
        options = ort.SessionOptions()
        options.log_severity_level = 3  # quantized graphs log harmless fusion notices
        # An InferenceSession's run() is safe to call from several threads at once.
        self.session = ort.InferenceSession(
            str(model_file), options, providers=["CPUExecutionProvider"]
        )
        self.inputs = {i.name for i in self.session.get_inputs()}

    def logits(self, query: str, texts: Sequence[str], batch_size: int) -> np.ndarray:
        tokenizer = self.tokenizers.get()
        # Longest-first truncation cuts the passage before the query, and still fits a query
        # that alone is longer than max_length. Pairs run shortest first so a batch pads little.
        enc = tokenizer(
            [query] * len(texts), list(texts), truncation=True, max_length=self.max_length
        )
        lengths = [len(ids) for ids in enc["input_ids"]]
        order = np.argsort(lengths, kind="stable")
        out = np.empty(len(texts), dtype=np.float32)
        for start in range(0, len(texts), batch_size):
            batch = order[start : start + batch_size]
            padded = tokenizer.pad(
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
        self._input = self.model[0]
        self.tokenizers = _PerThreadTokenizer(self._input.processor)
        self._local = threading.local()

    def _input_module(self) -> Any:
        """This thread's view of the model's input module: a shallow copy that shares every
        weight and differs only in its tokenizer (``predict`` would use the shared one)."""
        module = getattr(self._local, "module", None)
        if module is None:
            module = copy.copy(self._input)
            module.processor = self.tokenizers.get()
            self._local.module = module
        return module

    def logits(self, query: str, texts: Sequence[str], batch_size: int) -> np.ndarray:
        import torch

        # By length (characters stand in for tokens) each batch pads to similar lengths, as
        # the ONNX runner does; CrossEncoder.predict's own loop, minus its shared tokenizer.
        order = np.argsort([len(t) for t in texts], kind="stable")
        module = self._input_module()
        out = np.empty(len(texts), dtype=np.float32)
        with torch.inference_mode():
            for start in range(0, len(texts), batch_size):
                batch = order[start : start + batch_size]
                features = module.preprocess([(query, texts[i]) for i in batch])
                scores = self.model(features)["scores"]
                out[batch] = scores.float().reshape(-1).cpu().numpy()
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
        fp32 = Path(tmp) / "model.onnx" if quantize else out / "model.onnx"
        torch.onnx.export(
            model,
            tuple(example[n] for n in names),
            str(fp32),
            input_names=names,
            output_names=["logits"],
            dynamic_axes={
                **{n: {0: "batch", 1: "sequence"} for n in names},
                "logits": {0: "batch"},
            },
            opset_version=17,
            dynamo=False,  # the TorchScript exporter needs no onnxscript and handles BERT fully
        )
        target = out / (ONNX_FILES[0] if quantize else ONNX_FILES[1])
        if quantize:
            from onnxruntime.quantization import QuantType, quantize_dynamic

            quantize_dynamic(str(fp32), str(target), weight_type=QuantType.QInt8, per_channel=True)
    # Saved as the model's own limit, not the length it happened to be trained at.
    tokenizer.model_max_length = model.config.max_position_embeddings
    tokenizer.save_pretrained(str(out))
    model.config.save_pretrained(str(out))
    return target
