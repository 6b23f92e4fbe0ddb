"""Stage 2, hybrid retrieval: dense and BM25 fused with RRF (or convex fusion).
``HybridRetriever.retrieve(query, k) -> list[Hit]``."""
