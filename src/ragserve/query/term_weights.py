"""How informative a word is in this corpus: the IDF of its BM25 token, scaled to [0, 1].

The subject of a conversation is carried into a follow-up only through words some document
is about. Chit-chat ("Oh", "thank", "informing", "amazing") is in no or nearly every document
of a knowledge base, so its weight is near 0 and it never reaches the standalone query.

Built once from the index's chunks (warm-up), through the same tokenizer as BM25, and rebuilt
when the index's version moves on (an ingest), so a new document's words count at once.
"""

from __future__ import annotations

import math
import threading
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Protocol, runtime_checkable

from ragserve.stores.base import DocumentIndex
from ragserve.stores.bm25 import Bm25Tokenizer

__all__ = ["CorpusTermWeights", "TermWeight", "idf_weights"]


@runtime_checkable
class TermWeight(Protocol):
    def __call__(self, term: str) -> float:
        """0 (no document is about it, or every one is) to 1 (the rarest word in the corpus)."""
        ...


def idf_weights(
    texts: Iterable[str], tokenize: Callable[[list[str]], list[list[str]]]
) -> tuple[dict[str, float], int]:
    """Per token, BM25's IDF ``ln(1 + (N - df + 0.5) / (df + 0.5))`` over the largest one."""
    df: Counter[str] = Counter()
    n = 0
    batch: list[str] = []
    for text in texts:
        batch.append(text)
        if len(batch) == 512:
            n += _count(batch, tokenize, df)
            batch = []
    n += _count(batch, tokenize, df)
    if not df:
        return {}, n
    idf = {t: math.log(1 + (n - f + 0.5) / (f + 0.5)) for t, f in df.items()}
    top = max(idf.values())
    return {t: v / top for t, v in idf.items()}, n


def _count(
    batch: list[str], tokenize: Callable[[list[str]], list[list[str]]], df: Counter[str]
) -> int:
    if batch:
        for tokens in tokenize(batch):
            df.update(set(tokens))
    return len(batch)


class CorpusTermWeights:
    """A :class:`TermWeight` over one index, kept in step with its version."""

    def __init__(self, index: DocumentIndex, tokenizer: Bm25Tokenizer | None = None) -> None:
        self.index = index
        self.tokenizer = tokenizer or Bm25Tokenizer()
        self._weights: dict[str, float] = {}
        self._version: int | None = None
        self._lock = threading.Lock()

    def refresh(self) -> None:
        """(Re)build the table if the index changed since the last build."""
        version = self.index.version()
        if version == self._version:
            return
        with self._lock:
            if version == self._version:
                return
            texts = (c.searchable_text for batch in self.index.iter_chunks() for c in batch)
            self._weights, _ = idf_weights(texts, self.tokenizer.tokenize)
            self._version = version

    def __call__(self, term: str) -> float:
        self.refresh()
        tokens = self.tokenizer.tokenize([term])[0]
        # A stop word has no BM25 token: nothing a search could match on.
        return max((self._weights.get(t, 0.0) for t in tokens), default=0.0)
