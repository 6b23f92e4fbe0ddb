"""How informative a word is in this corpus: the IDF of its BM25 token, scaled to [0, 1].

The subject of a conversation is carried into a follow-up only through words some document
is about. Chit-chat ("Oh", "thank", "informing", "amazing") is in no or nearly every document
of a knowledge base, so its weight is near 0 and it never reaches the standalone query.

Built once from the index's chunks (warm-up), through the same tokenizer as BM25, and rebuilt
when the index's version moves on (an ingest), so a new document's words count at once.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from ragserve.stores.base import DocumentIndex
from ragserve.stores.bm25 import Bm25Tokenizer

if TYPE_CHECKING:
    from ragserve.config import Settings

__all__ = ["CorpusTermWeights", "TermWeight", "idf_weights"]

log = logging.getLogger("ragserve.query.term_weights")

_MEMO_LIMIT = 50_000


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
    """A :class:`TermWeight` over one index, kept in step with its version.

    The first call builds the table (warm-up's priming search pays it); after an ingest the
    next one is built in the background while the old one keeps answering, so no request
    waits for a pass over the corpus. The index version is read at most once a second: a
    turn asks about dozens of words.
    """

    def __init__(
        self,
        index: DocumentIndex,
        tokenizer: Bm25Tokenizer | None = None,
        *,
        check_every_s: float = 1.0,
    ) -> None:
        self.index = index
        self.tokenizer = tokenizer or Bm25Tokenizer()
        self.check_every_s = check_every_s
        # (IDF per token, weight per word asked): swapped together, one reference.
        self._table: tuple[dict[str, float], dict[str, float]] | None = None
        self._version: int | None = None
        self._checked = 0.0
        self._lock = threading.Lock()
        self._building = False

    @classmethod
    def from_settings(
        cls, index: DocumentIndex, settings: Settings, *, build: bool = True
    ) -> CorpusTermWeights:
        """Tokenised as the index's BM25 is, so a word's weight is its BM25 token's IDF.

        ``build`` reads the corpus now (warm-up), not on the first follow-up a user asks.
        """
        r = settings.retrieval
        weights = cls(index, Bm25Tokenizer(stemming=r.bm25_stemming, stopwords=r.bm25_stopwords))
        if build:
            weights.refresh()
        return weights

    def refresh(self) -> None:
        """Build the table now if the index changed since the last build."""
        version = self.index.version()
        if version != self._version:
            self._build(version)

    def _build(self, version: int) -> None:
        with self._lock:
            if version == self._version:
                return
            texts = (c.searchable_text for batch in self.index.iter_chunks() for c in batch)
            weights, _ = idf_weights(texts, self.tokenizer.tokenize)
            self._table, self._version = (weights, {}), version

    def _maybe_rebuild(self) -> None:
        now = time.monotonic()
        if now - self._checked < self.check_every_s:
            return
        self._checked = now
        version = self.index.version()
        if version == self._version or self._building:
            return
        if self._table is not None and not self._table[0]:
            # Built over an empty index (warm-up before the first ingest): there is no old
            # table worth answering from, and every word would weigh 0 until the rebuild.
            self._build(version)
            return
        self._building = True

        def run() -> None:
            try:
                self._build(version)
            except Exception as exc:  # the old table keeps answering
                log.warning("term weights not rebuilt: %s", exc)
            finally:
                self._building = False

        threading.Thread(target=run, name="ragserve-term-weights", daemon=True).start()

    def __call__(self, term: str) -> float:
        if self._table is None:
            self.refresh()
        else:
            self._maybe_rebuild()
        weights, memo = self._table or ({}, {})
        key = term.lower()
        if key not in memo:
            if len(memo) > _MEMO_LIMIT:  # users' vocabulary is unbounded; a table's is not
                memo.clear()
            tokens = self.tokenizer.tokenize([key])[0]
            # A stop word has no BM25 token: nothing a search could match on.
            memo[key] = max((weights.get(t, 0.0) for t in tokens), default=0.0)
        return memo[key]
