"""Index backends: the vector store, the sparse index and the manifest, kept as one unit."""

from ragserve.stores.base import DocumentIndex, IndexInfo, IndexWrite, open_index

__all__ = ["DocumentIndex", "IndexInfo", "IndexWrite", "open_index"]
