"""The search cache: retrieval + re-ranking results per query and index version."""

from __future__ import annotations

import threading
from collections.abc import Hashable, Sequence
from dataclasses import replace

from cachetools import LRUCache

from ragserve.types import Hit

__all__ = ["SearchCache"]


def _copy(hits: Sequence[Hit]) -> list[Hit]:
    # Hits carry a mutable scores dict: a caller that annotates its copy (the answerability
    # judge adds a score) must not change what the next request gets.
    return [replace(h, scores=dict(h.scores)) for h in hits]


class SearchCache:
    """A thread-safe LRU of hit lists; every get and put copies, so no two requests share a Hit."""

    def __init__(self, maxsize: int = 1024) -> None:
        self._lru: LRUCache[Hashable, list[Hit]] = LRUCache(maxsize=maxsize)
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, key: Hashable) -> list[Hit] | None:
        with self._lock:
            found = self._lru.get(key)
            if found is None:
                self.misses += 1
                return None
            self.hits += 1
            return _copy(found)

    def put(self, key: Hashable, hits: Sequence[Hit]) -> None:
        with self._lock:
            self._lru[key] = _copy(hits)
