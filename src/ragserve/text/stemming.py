"""The one Snowball stemmer scheme every tokenizer shares: one PyStemmer instance per thread.

PyStemmer documents its ``Stemmer`` objects as unsafe to call from several threads at once
(the C stemmer keeps its working state in the object), and request threads stem questions,
sources and BM25 queries concurrently. So nothing holds a stemmer of its own: BM25's
tokenizer and the sentence-support scorer both ask :func:`stemmer` for this thread's.
"""

from __future__ import annotations

import threading
from typing import Any

__all__ = ["stem_words", "stemmer"]

_local = threading.local()


def stemmer(language: str = "english") -> Any:
    """This thread's ``Stemmer.Stemmer`` for ``language``, made on the thread's first call
    (ImportError when PyStemmer is missing)."""
    cache: dict[str, Any] | None = getattr(_local, "stemmers", None)
    if cache is None:
        cache = _local.stemmers = {}
    found = cache.get(language)
    if found is None:
        import Stemmer

        found = cache[language] = Stemmer.Stemmer(language)
    return found


def stem_words(words: list[str], language: str = "english") -> list[str]:
    """``words`` stemmed by this thread's stemmer."""
    return stemmer(language).stemWords(words)  # type: ignore[no-any-return]
