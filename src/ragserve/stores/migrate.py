"""Copy an index between stores without re-embedding (``ragserve migrate``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ragserve.stores.base import DocumentIndex, IndexWrite

if TYPE_CHECKING:
    pass

__all__ = ["copy_index"]


def copy_index(
    src: DocumentIndex, dst: DocumentIndex, *, batch_docs: int = 200, progress: bool = True
) -> int:
    """Copy every document (manifest, chunks, stored vectors) from ``src`` into ``dst``."""
    from tqdm.auto import tqdm

    records = src.documents()
    by_doc: dict[str, list] = {}
    for batch in src.iter_chunks(2000):
        for chunk in batch:
            by_doc.setdefault(chunk.doc_id, []).append(chunk)
    writes: list[IndexWrite] = []
    copied = 0
    for rec in tqdm(records, desc="migrate", unit="doc", disable=not progress):
        chunks = sorted(by_doc.get(rec.doc_id, []), key=lambda c: c.chunk_index)
        if dst.document_hash(rec.doc_id) == rec.content_hash:
            continue  # already copied by an earlier, interrupted run
        writes.append(IndexWrite(rec, chunks, src.get_vectors([c.id for c in chunks])))
        if len(writes) >= batch_docs:
            dst.write(writes)
            copied += len(writes)
            writes = []
    dst.write(writes)
    return copied + len(writes)
