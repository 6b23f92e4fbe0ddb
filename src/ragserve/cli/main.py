"""The ``ragserve`` command: ingest, ask, serve, mcp, list, delete, reindex, eval, migrate."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from ragserve.cli import migrate
from ragserve.cli.evaluate import app as eval_app
from ragserve.cli.support import configure_cli_logging, friendly_errors
from ragserve.config import Settings, load_settings

__all__ = ["app"]

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

app = typer.Typer(
    help="ragserve: grounded, cited answers over your documents.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)

CollectionOpt = Annotated[str | None, typer.Option(help="Collection (tenant) name.")]
DataDirOpt = Annotated[Path | None, typer.Option(help="Index directory (RAGSERVE_DATA_DIR).")]


def _open_for_write(settings: Settings) -> tuple[Any, Any]:
    from ragserve.embedding.embedder import SentenceTransformerEmbedder, open_index_with
    from ragserve.ingest.pipeline import Ingestor
    from ragserve.stores import open_index

    embedder = SentenceTransformerEmbedder.from_settings(settings)
    embedder.warm_up()
    index = open_index(settings)
    open_index_with(index, embedder)
    return index, Ingestor(settings, index, embedder)


@app.command()
@friendly_errors
def ingest(
    paths: Annotated[list[Path], typer.Argument(help="Files or directories to ingest.")],
    prune: Annotated[bool, typer.Option(help="Remove documents whose files disappeared.")] = False,
    chunker: Annotated[
        str | None, typer.Option(help="recursive | fixed | sentence | semantic")
    ] = None,
    chunk_size: Annotated[int | None, typer.Option(help="Chunk size in tokens.")] = None,
    chunk_overlap: Annotated[int | None, typer.Option(help="Overlap in tokens.")] = None,
    collection: CollectionOpt = None,
    data_dir: DataDirOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Ingest files (txt, md, html, pdf, docx, BEIR jsonl); unchanged files are skipped."""
    configure_cli_logging(verbose)
    settings = load_settings(
        chunker=chunker,
        chunk_size=chunk_size,
        chunk_overlap=chunk_overlap,
        collection=collection,
        data_dir=data_dir,
    )
    index, ingestor = _open_for_write(settings)
    try:
        summary = ingestor.ingest_paths(paths, prune=prune, progress=not as_json)
    finally:
        index.close()
    if as_json:
        typer.echo(json.dumps(summary.to_dict(), indent=2))
    else:
        _print_summary(summary)
    if summary.failed and not any(r.status in ("ingested", "unchanged") for r in summary.results):
        raise typer.Exit(1)


def _print_summary(summary: Any) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(stderr=True)
    failed = summary.failed
    if failed:
        table = Table(title="Failed files", show_lines=False)
        table.add_column("file")
        table.add_column("reason")
        for r in failed:
            table.add_row(r.path, r.error or "")
        console.print(table)
    console.print(
        f"[bold]{summary.count('ingested')}[/] ingested ({summary.chunks} chunks), "
        f"{summary.count('unchanged')} unchanged, {summary.count('deleted')} deleted, "
        f"{summary.count('skipped')} skipped, [red]{len(failed)}[/] failed "
        f"in {summary.seconds:.1f}s"
    )


@app.command()
@friendly_errors
def ask(
    question: Annotated[str, typer.Argument(help="Your question.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the full answer as JSON.")] = False,
    generator: Annotated[str | None, typer.Option(help="extractive | llama | openai")] = None,
    collection: CollectionOpt = None,
    data_dir: DataDirOpt = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Answer a question from the indexed documents, with sources."""
    configure_cli_logging(verbose)
    settings = load_settings(generator=generator, collection=collection, data_dir=data_dir)
    from ragserve.pipeline import RagPipeline
    from ragserve.serving.api.schemas import ChatResponse

    pipeline = RagPipeline(settings)
    try:
        answer = pipeline.answer(question)
    finally:
        pipeline.close()
    if as_json:
        typer.echo(ChatResponse.from_answer(answer).model_dump_json(indent=2))
        return
    typer.echo(answer.text)
    if answer.sources and not answer.refused:
        typer.echo("")
        cited = {c.number for c in answer.citations}
        for i, hit in enumerate(answer.sources, 1):
            c = hit.chunk
            where = f", p.{c.page}" if c.page else (f", {c.section}" if c.section else "")
            mark = "*" if i in cited else " "
            typer.echo(f"{mark}[{i}] {c.source}{where}  (score {hit.score:.3f})")
    typer.echo(f"\n({', '.join(f'{k} {v:.0f} ms' for k, v in answer.timings.items())})", err=True)


@app.command()
@friendly_errors
def serve(
    host: Annotated[str | None, typer.Option(help="Bind address.")] = None,
    port: Annotated[int | None, typer.Option(help="Port.")] = None,
    collection: CollectionOpt = None,
    data_dir: DataDirOpt = None,
) -> None:
    """Serve the HTTP API, the chat widget and its demo page."""
    settings = load_settings(host=host, port=port, collection=collection, data_dir=data_dir)
    import uvicorn

    from ragserve.serving.api.app import create_app
    from ragserve.serving.api.logs import configure_logging

    configure_logging()
    typer.echo(
        f"ragserve: serving collection '{settings.index.collection}' on "
        f"http://{settings.api.host}:{settings.api.port} (chat page at /, API docs at /docs)",
        err=True,
    )
    uvicorn.run(
        create_app(settings),
        host=settings.api.host,
        port=settings.api.port,
        log_config=None,
        timeout_graceful_shutdown=10,
    )


@app.command("mcp")
@friendly_errors
def mcp_stdio(
    generator: Annotated[str | None, typer.Option(help="extractive | llama | openai")] = None,
    collection: CollectionOpt = None,
    data_dir: DataDirOpt = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Serve the documents to an assistant over MCP on stdin/stdout (tools: search, ask,
    list_documents; each document is a resource). Logs go to stderr."""
    configure_cli_logging(verbose)
    from ragserve.serving.mcp import run_stdio

    run_stdio(load_settings(generator=generator, collection=collection, data_dir=data_dir))


@app.command("list")
@friendly_errors
def list_documents(
    collection: CollectionOpt = None,
    data_dir: DataDirOpt = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """List the indexed documents."""
    settings = load_settings(collection=collection, data_dir=data_dir)
    from ragserve.embedding.embedder import SentenceTransformerEmbedder, open_index_with
    from ragserve.stores import open_index

    index = open_index(settings)

    embedder = SentenceTransformerEmbedder.from_settings(settings)
    open_index_with(index, embedder)
    try:
        docs = index.documents()
        info = index.info()
    finally:
        index.close()
    if as_json:
        typer.echo(
            json.dumps(
                [
                    {"id": d.doc_id, "source": d.source, "chunks": d.chunks, "title": d.title}
                    for d in docs
                ],
                indent=2,
            )
        )
        return
    for d in docs:
        typer.echo(f"{d.doc_id}\t{d.chunks} chunks")
    typer.echo(
        f"{info.documents} documents, {info.chunks} chunks in collection "
        f"'{info.collection}' ({info.backend}, {info.embedding_model})",
        err=True,
    )


@app.command()
@friendly_errors
def delete(
    sources: Annotated[
        list[str],
        typer.Argument(help="Document ids or paths (a directory deletes everything under it)."),
    ],
    collection: CollectionOpt = None,
    data_dir: DataDirOpt = None,
) -> None:
    """Delete documents and their chunks from the index."""
    settings = load_settings(collection=collection, data_dir=data_dir)
    index, ingestor = _open_for_write(settings)
    try:
        n = ingestor.delete(sources)
    finally:
        index.close()
    typer.echo(f"deleted {n} document(s)", err=True)
    if n == 0:
        raise typer.Exit(1)


@app.command()
@friendly_errors
def reindex(collection: CollectionOpt = None, data_dir: DataDirOpt = None) -> None:
    """Re-embed every stored chunk with the configured embedding model."""
    settings = load_settings(collection=collection, data_dir=data_dir)
    from ragserve.embedding.embedder import SentenceTransformerEmbedder, open_index_with
    from ragserve.errors import EmbedderMismatchError
    from ragserve.ingest.pipeline import Ingestor
    from ragserve.stores import open_index

    embedder = SentenceTransformerEmbedder.from_settings(settings)
    embedder.warm_up()
    index = open_index(settings)
    try:
        # No adopting: re-embedding is how an index moves to the configured runtime.
        open_index_with(index, embedder, adopt=False)
    except EmbedderMismatchError as exc:
        typer.echo(f"re-embedding: {exc.message}", err=True)
    try:
        n = Ingestor(settings, index, embedder).reindex()
    finally:
        index.close()
    typer.echo(f"re-embedded {n} chunks with {embedder.fingerprint}", err=True)


# Sub-apps live next to the code they drive. Imported, not discovered: a broken one must fail
# loudly here rather than vanish from ``ragserve --help``.
app.add_typer(eval_app, name="eval")
migrate.register(app)


def main() -> None:  # pragma: no cover
    app(prog_name="ragserve")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
