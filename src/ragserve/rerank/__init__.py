"""Stage 3, cross-encoder re-ranking. ``Reranker.rerank(query, hits, k) -> list[Hit]``."""
