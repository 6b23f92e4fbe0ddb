"""``ragserve migrate --from chroma --to postgres``: copy an index without re-embedding."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from ragserve.stores.base import DocumentIndex, IndexWrite

if TYPE_CHECKING:
    from ragserve.config import Settings

__all__ = ["copy_index", "register"]


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


def register(app: typer.Typer) -> None:
    @app.command()
    def migrate(
        source: Annotated[str, typer.Option("--from", help="chroma | postgres")] = "chroma",
        target: Annotated[str, typer.Option("--to", help="chroma | postgres")] = "postgres",
        collection: Annotated[str | None, typer.Option(help="Collection to copy.")] = None,
    ) -> None:
        """Copy a collection between stores, vectors included (no re-embedding)."""
        from ragserve.cli_support import friendly_errors
        from ragserve.config import load_settings
        from ragserve.stores import open_index

        @friendly_errors
        def run() -> None:
            base: Settings = load_settings(collection=collection)
            if source == target or {source, target} - {"chroma", "postgres"}:
                raise typer.BadParameter(
                    "--from and --to must be 'chroma' and 'postgres', different."
                )
            src = open_index(base.replace(store=source))
            dst = open_index(base.replace(store=target))
            src.open(base.ingest.embedding_model, _dimension(src, base))
            info = src.info()
            dst.open(info.embedding_model or base.ingest.embedding_model, info.dimension or 0)
            try:
                n = copy_index(src, dst)
            finally:
                src.close()
                dst.close()
            typer.echo(
                f"copied {n} documents ({info.chunks} chunks in source) from {source} to "
                f"{target}, collection '{base.index.collection}'",
                err=True,
            )

        run()


def _dimension(index: DocumentIndex, settings: Settings) -> int:
    from ragserve.embedding import SentenceTransformerEmbedder

    return SentenceTransformerEmbedder.from_settings(settings).dimension
