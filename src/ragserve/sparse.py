"""Sparse (lexical) retrieval: BM25 over chunk text with bm25s.

bm25s has no incremental insert, so the index is derived data: rebuilt from the manifest's
chunk texts and stamped with the manifest version it was built from. A stale or missing index
is rebuilt on open, which makes a crash between writing the manifest and saving BM25 harmless.
Rebuilding is cheap (SciFact's 5k abstracts index in well under a second).
"""

from __future__ import annotations

import json
import logging
import shutil
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["BM25Index", "Bm25Tokenizer"]

log = logging.getLogger("ragserve.sparse")


def _bm25s():  # type: ignore[no-untyped-def]
    import bm25s

    # bm25s sets its own logger to DEBUG on import, which floods any configured root handler.
    logging.getLogger("bm25s").setLevel(logging.WARNING)
    return bm25s


class Bm25Tokenizer:
    """Lower-case word tokens, English stop words removed, Snowball-stemmed (both switchable)."""

    def __init__(self, *, stemming: bool = True, stopwords: bool = True) -> None:
        self.stemming = stemming
        self.stopwords = stopwords
        self._stemmer: Any = None
        if stemming:
            import Stemmer

            self._stemmer = Stemmer.Stemmer("english")

    def tokenize(self, texts: Sequence[str]) -> Any:
        bm25s = _bm25s()
        return bm25s.tokenize(
            list(texts),
            stopwords="en" if self.stopwords else None,
            stemmer=self._stemmer,
            show_progress=False,
        )

    def describe(self) -> dict[str, bool]:
        return {"stemming": self.stemming, "stopwords": self.stopwords}


class BM25Index:
    """A bm25s index over chunk ids, persisted in one directory."""

    def __init__(self, tokenizer: Bm25Tokenizer | None = None) -> None:
        self.tokenizer = tokenizer or Bm25Tokenizer()
        self._retriever: Any = None
        self._ids: list[str] = []
        self.version: int | None = None
        self._lock = threading.RLock()

    def __len__(self) -> int:
        return len(self._ids)

    def build(self, ids: Sequence[str], texts: Sequence[str], version: int) -> None:
        bm25s = _bm25s()

        with self._lock:
            self._ids = list(ids)
            self.version = version
            if not self._ids:
                self._retriever = None
                return
            tokens = self.tokenizer.tokenize(texts)
            if not tokens.vocab:  # nothing but stop words: no lexical index to build
                self._retriever = None
                return
            retriever = bm25s.BM25()
            retriever.index(tokens, show_progress=False)
            self._retriever = retriever

    def search(self, query: str, k: int) -> list[tuple[str, float]]:
        with self._lock:
            if self._retriever is None or not self._ids:
                return []
            tokens = self.tokenizer.tokenize([query])
            if not tokens.vocab:
                return []
            k = min(k, len(self._ids))
            docs, scores = self._retriever.retrieve(tokens, k=k, show_progress=False, n_threads=1)
            out = []
            for idx, score in zip(docs[0], scores[0], strict=True):
                if score <= 0:
                    break
                out.append((self._ids[int(idx)], float(score)))
            return out

    def save(self, directory: Path) -> None:
        """Write to a temporary sibling and rename, so a crash never leaves half an index."""
        with self._lock:
            tmp = directory.with_name(directory.name + ".tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            if self._retriever is not None:
                self._retriever.save(str(tmp / "bm25"))
            meta = {
                "version": self.version,
                "ids": self._ids,
                "tokenizer": self.tokenizer.describe(),
            }
            (tmp / "meta.json").write_text(json.dumps(meta))
            old = directory.with_name(directory.name + ".old")
            shutil.rmtree(old, ignore_errors=True)
            if directory.exists():
                directory.rename(old)
            tmp.rename(directory)
            shutil.rmtree(old, ignore_errors=True)

    def load(self, directory: Path) -> bool:
        """Load a saved index; False when there is none or it was built differently."""
        bm25s = _bm25s()

        meta_path = directory / "meta.json"
        if not meta_path.exists():
            return False
        try:
            meta = json.loads(meta_path.read_text())
            if meta.get("tokenizer") != self.tokenizer.describe():
                return False
            retriever = bm25s.BM25.load(str(directory / "bm25")) if meta["ids"] else None
        except (OSError, ValueError, KeyError) as exc:
            log.warning("BM25 index at %s unreadable (%s); it will be rebuilt", directory, exc)
            return False
        with self._lock:
            self._ids = list(meta["ids"])
            self.version = meta["version"]
            self._retriever = retriever
        return True
