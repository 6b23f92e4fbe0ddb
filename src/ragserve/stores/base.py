"""The index contract.

A ``VectorStore`` protocol with BM25 beside it was the first sketch (docs/DESIGN-NOTES.md, 1). In
the code the unit that must stay consistent is bigger than a vector store: dense vectors, the sparse
index and the manifest change together or not at all. So the protocol here is the whole index; the
embedded backend composes Chroma + bm25s + a SQLite manifest, the PostgreSQL backend keeps all three
in one transactional database.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import numpy as np

from ragserve.types import Chunk, DocumentRecord

if TYPE_CHECKING:
    pass

__all__ = ["DocumentIndex", "IndexInfo", "IndexWrite"]


@dataclass(frozen=True, slots=True)
class IndexWrite:
    """One document's complete new state: its manifest record, chunks and their vectors."""

    record: DocumentRecord
    chunks: Sequence[Chunk]
    vectors: np.ndarray
    """Shape (len(chunks), dimension), L2-normalised float32."""


@dataclass(frozen=True, slots=True)
class IndexInfo:
    collection: str
    backend: str
    embedding_model: str | None
    dimension: int | None
    documents: int
    chunks: int
    version: int
    """Bumped on every committed change; caches key on it."""
    extra: dict[str, object] = field(default_factory=dict)


@runtime_checkable
class DocumentIndex(Protocol):
    """Dense + sparse search over chunks, with a manifest of documents.

    Writes are per document and atomic: after a crash at any point the index opens
    consistent (every manifest chunk is searchable both ways, nothing orphaned).
    """

    def open(self, embedding_model: str, dimension: int) -> None:
        """Create or open the collection; verify it was built with this embedder.

        Raises ``EmbedderMismatchError`` naming both models when it was not. ``open`` connects
        before it verifies, so after that error the index stays connected and
        ``reset_embedder`` may be called (that is how ``ragserve reindex`` starts).
        """
        ...

    def close(self) -> None: ...

    def info(self) -> IndexInfo: ...

    def version(self) -> int:
        """A counter bumped by every committed change; what caches key on.

        Cheap enough to call on every query (no counting, one keyed read at most), unlike
        ``info()``. Reflects writes by other processes too.
        """
        ...

    def document_hash(self, doc_id: str) -> str | None:
        """The content hash recorded for ``doc_id``, or None when it is not indexed."""
        ...

    def documents(self) -> list[DocumentRecord]: ...

    def write(self, batch: Sequence[IndexWrite]) -> None:
        """Replace each document in ``batch`` (its old chunks go) atomically per document."""
        ...

    def delete(self, doc_ids: Sequence[str]) -> int:
        """Remove documents and their chunks; returns how many documents existed."""
        ...

    def dense_search(self, vector: np.ndarray, k: int) -> list[tuple[str, float]]:
        """(chunk id, cosine similarity) best first."""
        ...

    def sparse_search(self, query: str, k: int) -> list[tuple[str, float]]:
        """(chunk id, lexical score) best first."""
        ...

    def get_chunks(self, ids: Sequence[str]) -> dict[str, Chunk]: ...

    def iter_chunks(self, batch_size: int = 1000) -> Iterator[list[Chunk]]:
        """Every chunk, in batches (used by reindex and migration)."""
        ...

    def get_vectors(self, ids: Sequence[str]) -> np.ndarray:
        """Stored vectors for ``ids`` in that order (dense feedback; migration copies them)."""
        ...

    def add_vectors(self, ids: Sequence[str], vectors: np.ndarray) -> None:
        """Store vectors for chunks already in the manifest (``reindex`` and repair)."""
        ...

    def reset_embedder(self, embedding_model: str, dimension: int) -> None:
        """Drop every vector and record the new embedder (``ragserve reindex`` re-embeds)."""
        ...
