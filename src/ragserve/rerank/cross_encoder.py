"""Stage 3: cross-encoder re-ranking of the fused candidates only.

A cross-encoder reads query and passage together, so it judges relevance far better than the
bi-encoder that retrieved them, at a cost per pair; it therefore only sees the fused top-K.
The default model is ragserve's own MiniLM cross-encoder shipped inside the package
(``resources/reranker``, see its MODEL_CARD.md) as fp16 safetensors. It runs on onnxruntime,
int8 on CPUs with VNNI and fp32 elsewhere, from an export made once into the user cache and
checked against the original (``rerank_onnx``); PyTorch (fp32) when that fails or
``runtime="torch"``. Any sentence-transformers CrossEncoder can be named instead by local path
(or by hub name, for machines that reach a hub) and runs on PyTorch, and any directory holding
``model_int8.onnx`` or ``model.onnx`` with its tokenizer (``export_cross_encoder_onnx`` writes
one) runs on onnxruntime.
With ``window`` set, the cross-encoder reads the sentences of each passage around its best match
with the query instead of the passage's head: half the tokens, and the part that matters.
Scores are probabilities (sigmoid), which is what the refusal gate's threshold is set on.

A small in-house cross-encoder and first-stage retrieval make different mistakes, so the final
order can fuse the two instead of trusting the cross-encoder alone:
``fusion="interpolate"`` ranks by ``alpha * CE logit + (1 - alpha) * retrieval score``, each
min-max normalised over the candidates (the convex combination hybrid retrieval uses; it keeps
how far apart the candidates are, which matters when one side is confident); ``fusion="rrf"``
is reciprocal rank fusion of the two orders, which only sees ranks. ``fusion="probability"``
(the default) ranks by ``alpha * CE probability + (1 - alpha) * retrieval score``, only the
latter min-max normalised: where the cross-encoder finds every candidate answering (0.99 each),
its logits differ by noise that min-max would stretch into a full vote, and the probability
leaves retrieval's order standing. Either way the cross-encoder probability is what
``scores["rerank"]`` holds for the refusal gate.
"""

from __future__ import annotations

import copy
import json
import logging
import re
import threading
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol, get_args, runtime_checkable

import numpy as np

from ragserve.errors import EmptyQueryError
from ragserve.rerank.onnx_export import (
    ONNX_FILES,
    Precision,
    RerankRuntime,
    exported_model,
    preferred_precision,
)
from ragserve.retrieval.hybrid import convex_fusion, min_max, reciprocal_rank_fusion
from ragserve.runtime.cpu import INT8_FLAGS, cpu_flags, physical_cores
from ragserve.runtime.models import resolve_reranker_model
from ragserve.text.sentences import sentence_windows
from ragserve.types import Hit

if TYPE_CHECKING:
    from ragserve.config import Settings

__all__ = [
    "CrossEncoderReranker",
    "RerankFusion",
    "Reranker",
    "fuse_rerank",
    "probability_logits",
    "query_window",
    "rerank_order",
    "session_options",
]

log = logging.getLogger("ragserve.rerank.cross_encoder")

RerankFusion = Literal["none", "rrf", "interpolate", "probability"]


@runtime_checkable
class Reranker(Protocol):
    def rerank(self, query: str, hits: list[Hit], k: int) -> list[Hit]:
        """The ``k`` best of ``hits`` by relevance to ``query``, best first."""
        ...


CHECK_PAIRS = Path(__file__).resolve().parents[1] / "resources" / "rerank_check_pairs.json"
# Past this many characters per token of max_length, truncation would drop the rest anyway;
# cutting first bounds the tokenizer's time on a huge passage.
CHARS_PER_TOKEN_CAP = 16


class _PairScorer(Protocol):
    form: str

    def logits(self, query: str, texts: Sequence[str], batch_size: int) -> np.ndarray: ...

    def token_counts(self, texts: Sequence[str]) -> list[int]: ...


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

    def token_counts(self, texts: Sequence[str]) -> list[int]:
        enc = self.get()(list(texts), add_special_tokens=False)["input_ids"]
        return [len(ids) for ids in enc]


class _OnnxCrossEncoder:
    """An exported cross-encoder on onnxruntime: raw relevance logits for (query, text) pairs."""

    def __init__(self, model_file: Path, max_length: int, form: str = "onnx") -> None:
        import onnxruntime as ort

        self.form = form
        self.model_file = model_file
        self.tokenizer = _PerThreadTokenizer.from_directory(model_file.parent)
        # The tokenizer's saved model_max_length is whatever length training used; the model's
        # real limit is its position table.
        config = json.loads((model_file.parent / "config.json").read_text())
        self.max_length = min(max_length, int(config.get("max_position_embeddings", 512)))
        # An InferenceSession's run() is safe to call from several threads at once.
        self.session = ort.InferenceSession(
            str(model_file), session_options(), providers=["CPUExecutionProvider"]
        )
        self.inputs = {i.name for i in self.session.get_inputs()}

    def token_counts(self, texts: Sequence[str]) -> list[int]:
        return self.tokenizer.token_counts(texts)

    def logits(self, query: str, texts: Sequence[str], batch_size: int) -> np.ndarray:
        # Longest-first truncation cuts the passage before the query, and still fits a query
        # that alone is longer than max_length. Pairs run shortest first so a batch pads little.
        tok = self.tokenizer.get()
        enc = tok([query] * len(texts), list(texts), truncation=True, max_length=self.max_length)
        lengths = [len(ids) for ids in enc["input_ids"]]
        order = np.argsort(lengths, kind="stable")
        out = np.empty(len(texts), dtype=np.float32)
        for start in range(0, len(texts), batch_size):
            batch = order[start : start + batch_size]
            padded = tok.pad({k: [enc[k][i] for i in batch] for k in enc}, return_tensors="np")
            feed = {k: np.asarray(v, dtype=np.int64) for k, v in padded.items() if k in self.inputs}
            out[batch] = self.session.run(None, feed)[0].reshape(-1)
        return out


def session_options() -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3  # quantized graphs log harmless fusion notices
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = physical_cores()
    options.inter_op_num_threads = 1  # a BERT graph is one chain: nothing to run side by side
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return options


class _SentenceTransformersCrossEncoder:
    """Any sentence-transformers CrossEncoder (local directory or hub name)."""

    def __init__(self, path: str, max_length: int, *, fp16: bool = False) -> None:
        import torch
        from sentence_transformers import CrossEncoder

        # Checkpoints are often stored in fp16 (the shipped one is); CPUs run fp32 kernels much
        # faster, so load in fp32 (fp16 is kept only to measure that).
        self.model = CrossEncoder(
            path,
            device="cpu",
            max_length=max_length,
            local_files_only=True,
            model_kwargs={"dtype": torch.float16 if fp16 else torch.float32},
        )
        self.model.model.eval()
        self.form = "torch-fp16" if fp16 else "torch-fp32"
        self._input = self.model[0]
        self.tokenizers = _PerThreadTokenizer(self._input.processor)
        self._local = threading.local()

    def token_counts(self, texts: Sequence[str]) -> list[int]:
        return self.tokenizers.token_counts(texts)

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


def _check_pairs() -> tuple[list[str], list[str]]:
    data = json.loads(CHECK_PAIRS.read_text())
    pairs = [(q, p) for q in data["queries"] for p in data["passages"]]
    return [q for q, _ in pairs], [p for _, p in pairs]


def agreement(a: _PairScorer, b: _PairScorer) -> float:
    """Spearman correlation of two scorers' logits over the fixed check pairs."""
    from scipy.stats import spearmanr

    queries, passages = _check_pairs()
    xs: list[np.ndarray] = []
    ys: list[np.ndarray] = []
    for q in dict.fromkeys(queries):
        texts = [p for qq, p in zip(queries, passages, strict=True) if qq == q]
        xs.append(a.logits(q, texts, 32))
        ys.append(b.logits(q, texts, 32))
    return float(spearmanr(np.concatenate(xs), np.concatenate(ys)).statistic)


def _onnx_form(path: str, max_length: int, runtime: RerankRuntime) -> _PairScorer | None:
    """The cached ONNX export of a local checkpoint in the form ``runtime`` asks for (the CPU's
    faster one for "auto"), or None to run it on PyTorch."""
    if not runtime.startswith(("auto", "onnx-")) or not (Path(path) / "config.json").is_file():
        return None
    flags = cpu_flags()
    precision: Precision = (
        preferred_precision(flags) if runtime == "auto" else runtime.removeprefix("onnx-")  # type: ignore[assignment]
    )
    original: list[_PairScorer] = []

    def check(onnx_dir: Path) -> float:
        original.append(_SentenceTransformersCrossEncoder(path, max_length))
        exported = _OnnxCrossEncoder(_onnx_file(onnx_dir), max_length)
        return agreement(original[0], exported)

    model_file = exported_model(Path(path), precision, check)
    if model_file is None:
        return None
    vnni = ",".join(sorted(flags & INT8_FLAGS)) or "no VNNI"
    isa = vnni if precision == "int8" else f"{vnni}: fp32 chosen"
    if runtime != "auto":
        isa = f"{vnni}: asked for"
    return _OnnxCrossEncoder(model_file, max_length, form=f"onnx-{precision} ({isa})")


def _onnx_file(folder: Path) -> Path:
    return next(folder / f for f in ONNX_FILES if (folder / f).is_file())


def _load_cross_encoder(name: str, max_length: int, runtime: RerankRuntime = "auto") -> _PairScorer:
    if runtime not in get_args(RerankRuntime):
        raise ValueError(f"unknown re-ranker runtime {runtime!r}")
    path = resolve_reranker_model(name)
    if any((Path(path) / f).is_file() for f in ONNX_FILES):
        return _OnnxCrossEncoder(_onnx_file(Path(path)), max_length, form="onnx (given)")
    if runtime == "auto" and name != "builtin":
        # Only the shipped model is checked and known to quantise well; a model the user names
        # runs as given unless an ONNX form is asked for.
        runtime = "torch"
    if runtime == "torch-fp16":  # measurement only: the checkpoint's own precision
        return _SentenceTransformersCrossEncoder(path, max_length, fp16=True)
    scorer = _onnx_form(path, max_length, runtime)
    return scorer or _SentenceTransformersCrossEncoder(path, max_length)


class CrossEncoderReranker:
    def __init__(
        self,
        model: str = "builtin",
        *,
        max_length: int = 256,
        batch_size: int = 4,
        fusion: RerankFusion = "none",
        rrf_k: int = 60,
        alpha: float = 0.5,
        runtime: RerankRuntime = "auto",
        window: int = 0,
        sentences: int = 0,
    ) -> None:
        self.model_name = model
        self.max_length = max_length
        self.batch_size = batch_size
        self.fusion = fusion
        self.rrf_k = rrf_k
        self.alpha = alpha
        self.runtime = runtime
        # > 0: each passage is cut to the sentences around its best match with the query, so
        # that query and window together take about this many tokens.
        self.window = window
        # > 0: each passage is scored as runs of this many sentences and takes its best run's
        # score (MaxP): the candidate that answers holds one sentence that does, while a
        # passage that is only about the subject scores well as a whole but in no one place.
        self.sentences = sentences
        self._model: _PairScorer | None = None
        self._lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: Settings) -> CrossEncoderReranker:
        return cls(
            settings.rerank.reranker_model,
            max_length=settings.rerank.rerank_max_length,
            batch_size=settings.rerank.rerank_batch_size,
            fusion=settings.rerank.rerank_fusion,
            rrf_k=settings.retrieval.rrf_k,
            alpha=settings.rerank.rerank_alpha,
            runtime=settings.rerank.rerank_runtime,
            window=settings.rerank.rerank_window,
            sentences=settings.rerank.rerank_sentences,
        )

    @property
    def model(self) -> _PairScorer | None:
        """The loaded pair scorer (None before ``warm_up``), for benchmarks that time or swap
        its session."""
        return self._model

    @property
    def form(self) -> str:
        """How the model runs (e.g. "onnx-int8 (avx512_vnni)"), once loaded."""
        return self._model.form if self._model is not None else "not loaded"

    def warm_up(self) -> None:
        with self._lock:
            if self._model is not None:
                return
            self._model = _load_cross_encoder(self.model_name, self.max_length, self.runtime)
            log.info(
                "loaded re-ranker %s as %s (max length %d, %s)",
                self.model_name,
                self._model.form,
                self.max_length,
                f"best run of {self.sentences} sentences"
                if self.sentences
                else f"window {self.window or 'off'}",
            )

    def score(self, query: str, texts: Sequence[str]) -> np.ndarray:
        if not query.strip():
            raise EmptyQueryError()
        if not texts:
            return np.zeros(0, dtype=np.float32)
        if self._model is None:
            self.warm_up()
        model = self._model
        assert model is not None
        length = min(self.window, self.max_length) if self.window else self.max_length
        cap = length * CHARS_PER_TOKEN_CAP
        query = _clean(query[:cap])
        passages = [_clean(t) for t in texts]
        if self.sentences:
            logits = self._best_run_logits(model, query, passages, cap)
        else:
            if self.window:
                budget = max(32, length - model.token_counts([query])[0] - 3)
                passages = [query_window(query, t, budget, model.token_counts) for t in passages]
            logits = model.logits(query, [t[:cap] for t in passages], self.batch_size)
        return (1.0 / (1.0 + np.exp(-logits))).astype(np.float32)

    def _best_run_logits(
        self, model: _PairScorer, query: str, passages: Sequence[str], cap: int
    ) -> np.ndarray:
        """Each passage's best logit over its runs of ``self.sentences`` sentences, all runs
        scored in one batched call (a passage is searched only in its head, and at most
        MAX_RUNS runs are read: bounded work on a huge one)."""
        runs = [
            sentence_windows(p[:WINDOW_SEARCH_CHARS], self.sentences)[:MAX_RUNS] for p in passages
        ]
        owner = np.repeat(np.arange(len(passages)), [len(r) for r in runs])
        logits = model.logits(query, [w[:cap] for r in runs for w in r], self.batch_size)
        best = np.full(len(passages), -np.inf, dtype=np.float32)
        np.maximum.at(best, owner, logits)
        return best

    def rerank(self, query: str, hits: list[Hit], k: int) -> list[Hit]:
        if not hits:
            if not query.strip():
                raise EmptyQueryError()
            return []
        scores = self.score(query, [h.chunk.searchable_text for h in hits])
        return fuse_rerank(hits, scores, k, fusion=self.fusion, rrf_k=self.rrf_k, alpha=self.alpha)


def _clean(text: str) -> str:
    # Lone surrogates (text decoded with errors="surrogateescape") cannot be encoded as UTF-8,
    # which the Rust tokenizer needs; they become U+FFFD.
    return text.encode("utf-8", "replace").decode("utf-8") if not text.isascii() else text


_SENTENCE_END = re.compile(r"(?<=[.!?;:])\s+|\n+")
_WORD = re.compile(r"\w+")
_STOP = frozenset(
    "a an and are as at be by can do does for from has have how in is it its of on or that the "
    "their this to was were what when where which who why will with".split()
)
# Passages longer than this are searched only in their head: bounds the work on a huge one.
WINDOW_SEARCH_CHARS = 20_000
# Runs of sentences scored per passage at most. A chunk (<= 256 tokens) has fewer; a passage
# handed to ``score`` directly may not.
MAX_RUNS = 16


def _terms(text: str) -> set[str]:
    # A 5-letter prefix stands in for a stemmer: "mutations" and "mutated" meet at "mutat".
    return {w[:5] for w in _WORD.findall(text.lower()) if w not in _STOP and len(w) > 1}


def query_window(
    query: str, text: str, budget: int, token_counts: Callable[[Sequence[str]], list[int]]
) -> str:
    """The sentences of ``text`` around its best match with ``query``, within ``budget``
    tokens, after the first sentence when that is short (usually a title or lead). A passage
    that fits already is returned as it is."""
    text = text[:WINDOW_SEARCH_CHARS]
    sentences = [s for s in _SENTENCE_END.split(text) if s.strip()]
    if len(sentences) <= 1:
        return text
    sizes = token_counts(sentences)
    if sum(sizes) <= budget:
        return text
    wanted = _terms(query)
    overlap = [len(wanted & _terms(s)) for s in sentences]
    best = int(np.argmax(overlap))
    # A short first sentence (a title, a lead) says what the passage is about: keep room for it.
    lead = sizes[0] if best > 0 and sizes[0] <= budget // 4 else 0
    lo, hi, used = best, best + 1, sizes[best] + lead
    first = 1 if lead else 0  # the lead is added after, not grown into
    while True:
        # Grow toward the neighbour that shares more of the query; on a tie, read on.
        left = overlap[lo - 1] if lo > first and used + sizes[lo - 1] <= budget else -1
        right = overlap[hi] if hi < len(sentences) and used + sizes[hi] <= budget else -1
        if left < 0 and right < 0:
            break
        if right >= left:
            used, hi = used + sizes[hi], hi + 1
        else:
            used, lo = used + sizes[lo - 1], lo - 1
    span = sentences[lo:hi]
    if lead and lo > 0:
        span = [sentences[0], *span]
    return " ".join(s.strip() for s in span)


def probability_logits(probabilities: np.ndarray | Sequence[float]) -> np.ndarray:
    """The logits of cross-encoder probabilities (clipped, so 0 and 1 stay finite)."""
    p = np.clip(np.asarray(probabilities, dtype=np.float64), 1e-7, 1 - 1e-7)
    return np.log(p / (1 - p))


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
    order, or by a convex combination of ``retrieval_scores`` with the CE logits
    ("interpolate") or probabilities ("probability")."""
    if fusion in ("interpolate", "probability"):
        if retrieval_scores is None or len(retrieval_scores) != len(scores):
            raise ValueError(f"fusion={fusion!r} needs one retrieval score per candidate")
        if fusion == "probability":
            return _probability_fusion(scores, retrieval_scores, alpha, k)
        # Logits: the sigmoid flattens the confident end that should weigh most against the
        # retrieval score (the price: min-max stretches a spread of near-equal logits too).
        logits = probability_logits(scores)
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


def _probability_fusion(
    probs: np.ndarray, retrieval_scores: Sequence[float], alpha: float, k: int
) -> list[tuple[int, float]]:
    """``alpha * probability + (1 - alpha) * min-max(retrieval score)``, best first (ties keep
    the retrieval order)."""
    unit = min_max([(str(i), float(x)) for i, x in enumerate(retrieval_scores)])
    fused = [alpha * float(p) + (1 - alpha) * unit[str(i)] for i, p in enumerate(probs)]
    order = sorted(range(len(fused)), key=lambda i: -fused[i])
    return [(i, fused[i]) for i in order[: max(k, 0)]]


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
