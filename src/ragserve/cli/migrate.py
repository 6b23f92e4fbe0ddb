"""``ragserve migrate --from chroma --to postgres``: copy an index without re-embedding."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from ragserve.cli.support import friendly_errors
from ragserve.stores.migrate import copy_index

if TYPE_CHECKING:
    from ragserve.config import Settings
    from ragserve.stores.base import DocumentIndex

__all__ = ["register"]


def register(app: typer.Typer) -> None:
    @app.command()
    def migrate(
        source: Annotated[str, typer.Option("--from", help="chroma | postgres")] = "chroma",
        target: Annotated[str, typer.Option("--to", help="chroma | postgres")] = "postgres",
        collection: Annotated[str | None, typer.Option(help="Collection to copy.")] = None,
    ) -> None:
        """Copy a collection between stores, vectors included (no re-embedding)."""
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
    from ragserve.embedding.embedder import SentenceTransformerEmbedder

    return SentenceTransformerEmbedder.from_settings(settings).dimension
