"""Ingestion: files -> load -> chunk -> embed -> index, incrementally and crash-safely.

* A file whose bytes (and chunking settings) are unchanged is skipped before it is parsed.
* A changed file's chunks replace its old ones in one index write; ``prune`` removes the
  documents of files that disappeared under a directory that was ingested again.
* Documents are embedded and written in bounded batches, so a large corpus never holds more
  than ``batch_chunks`` vectors in memory.
* One bad file never stops the run: it is reported with its reason in the summary.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from ragserve.errors import IngestError, RagServeError, StoreError
from ragserve.stores.base import IndexWrite
from ragserve.types import Chunk, Document, DocumentRecord, content_hash

if TYPE_CHECKING:
    from ragserve.config import Settings
    from ragserve.embedding.embedder import SentenceTransformerEmbedder
    from ragserve.runtime.priority import ForegroundGate
    from ragserve.stores.base import DocumentIndex

__all__ = ["FileResult", "IngestSummary", "Ingestor", "document_id_for"]

log = logging.getLogger("ragserve.ingest")

# Chunks per embedding call in a server: few while an answer is in flight, so one that arrives
# shares the CPU with a short call; more when none is, because PyTorch pays per call (on this
# 2-core machine beside other jobs, 2-chunk calls embedded 2-3.5 chunks/s, 16-chunk ones 5.8).
_YIELD_BATCH = 2
_IDLE_BATCH = 16

Status = Literal["ingested", "unchanged", "failed", "deleted", "skipped"]


@dataclass(slots=True)
class FileResult:
    path: str
    status: Status
    chunks: int = 0
    documents: int = 0
    error: str | None = None


@dataclass(slots=True)
class IngestSummary:
    results: list[FileResult] = field(default_factory=list)
    seconds: float = 0.0

    def count(self, status: Status) -> int:
        return sum(1 for r in self.results if r.status == status)

    @property
    def chunks(self) -> int:
        return sum(r.chunks for r in self.results if r.status == "ingested")

    @property
    def failed(self) -> list[FileResult]:
        return [r for r in self.results if r.status == "failed"]

    def to_dict(self) -> dict[str, Any]:
        return {
            "ingested": self.count("ingested"),
            "unchanged": self.count("unchanged"),
            "deleted": self.count("deleted"),
            "skipped": self.count("skipped"),
            "failed": self.count("failed"),
            "chunks": self.chunks,
            "seconds": round(self.seconds, 3),
            "files": [{k: v for k, v in vars_(r).items() if v is not None} for r in self.results],
        }


def vars_(r: FileResult) -> dict[str, Any]:
    return {"path": r.path, "status": r.status, "chunks": r.chunks, "error": r.error}


def document_id_for(path: Path) -> str:
    """Path relative to the working directory when under it, else absolute (posix)."""
    resolved = path.resolve()
    try:
        return resolved.relative_to(Path.cwd().resolve()).as_posix()
    except ValueError:
        return resolved.as_posix()


class Ingestor:
    def __init__(
        self,
        settings: Settings,
        index: DocumentIndex,
        embedder: SentenceTransformerEmbedder,
        *,
        batch_chunks: int | None = None,
        foreground: ForegroundGate | None = None,
    ) -> None:
        self.settings = settings
        self.index = index
        self.embedder = embedder
        # None: the setting (RAGSERVE_INGEST_BATCH_CHUNKS); a default of 512 here hid it.
        self.batch_chunks = batch_chunks or settings.ingest.ingest_batch_chunks
        # The server's answers in flight (RagPipeline.foreground): embedding yields to them.
        self.foreground = foreground
        self._chunker: Any = None

    def warm_up(self) -> None:
        from ragserve.ingest.chunking import build_chunker

        self.embedder.warm_up()
        s = self.settings
        self._chunker = build_chunker(
            s.ingest.chunker,
            self.embedder.tokenizer,
            size=s.ingest.chunk_size,
            overlap=s.ingest.chunk_overlap,
            max_tokens=self.embedder.max_tokens,
            embed=self.embedder.embed,
            percentile=s.ingest.semantic_percentile,
        )

    @property
    def fingerprint(self) -> str:
        """Settings that change chunks: a change re-chunks files even if their bytes did not."""
        s = self.settings
        return f"{s.ingest.chunker}:{s.ingest.chunk_size}:{s.ingest.chunk_overlap}:{s.ingest.semantic_percentile}:v1"

    # --- public entry points ------------------------------------------------------------------

    def ingest_paths(
        self, paths: Sequence[Path], *, prune: bool = False, progress: bool = True
    ) -> IngestSummary:
        from ragserve.ingest.loaders import SUPPORTED_SUFFIXES

        started = time.perf_counter()
        summary = IngestSummary()
        files: list[tuple[Path, bool]] = []  # (path, named explicitly)
        walked_dirs: list[Path] = []
        for raw in paths:
            path = Path(raw)
            if not self._allowed(path):
                summary.results.append(
                    FileResult(
                        str(path),
                        "failed",
                        error=(
                            f"{path} is outside the allowed ingest root {self.settings.ingest.ingest_root}"
                        ),
                    )
                )
                continue
            if path.is_dir():
                walked_dirs.append(path)
                for p in sorted(path.rglob("*")):
                    if p.is_file() and not any(
                        part.startswith(".") for part in p.relative_to(path).parts
                    ):
                        files.append((p, False))
            elif path.exists():
                files.append((path, True))
            else:
                summary.results.append(
                    FileResult(str(path), "failed", error=f"{path}: no such file or directory")
                )
        jobs: list[Path] = []
        for path, explicit in files:
            if path.suffix.lower() not in SUPPORTED_SUFFIXES and not explicit:
                summary.results.append(
                    FileResult(str(path), "skipped", error=f"unsupported type '{path.suffix}'")
                )
                continue
            jobs.append(path)
        with self._write_lock(), self._bulk():
            self._run(jobs, summary, progress=progress)
            if prune:
                self._prune(walked_dirs, {document_id_for(p) for p, _ in files}, summary)
        summary.seconds = time.perf_counter() - started
        return summary

    def ingest_documents(
        self,
        documents: Iterable[Document],
        *,
        total: int | None = None,
        progress: bool = True,
        label: str = "documents",
    ) -> IngestSummary:
        """Ingest already-loaded documents (a BEIR corpus), skipping unchanged ones."""
        started = time.perf_counter()
        summary = IngestSummary()
        with self._write_lock(), self._bulk():
            bar = _progress(total, label, progress)
            pending: list[tuple[Document, str]] = []
            for doc in documents:
                bar.update(1)
                doc_hash = content_hash(f"{self.fingerprint}\x00{doc.title or ''}\x00{doc.text}")
                if self.index.document_hash(doc.doc_id) == doc_hash:
                    summary.results.append(FileResult(doc.doc_id, "unchanged"))
                    continue
                pending.append((doc, doc_hash))
                if len(pending) >= self.batch_chunks // 2:
                    self._flush_docs(pending, summary, bar)
                    pending = []
            self._flush_docs(pending, summary, bar)
            bar.close()
        summary.seconds = time.perf_counter() - started
        return summary

    def delete(self, sources: Sequence[str]) -> int:
        with self._write_lock():
            known = {r.doc_id: r for r in self.index.documents()}
            ids = []
            for source in sources:
                doc_id = source if source in known else document_id_for(Path(source))
                ids.extend(
                    d
                    for d in known
                    if d == doc_id
                    or d.startswith(doc_id.rstrip("/") + "/")
                    or known[d].metadata.get("file") == doc_id
                )
            return self.index.delete(sorted(set(ids)))

    def reindex(self, *, progress: bool = True) -> int:
        """Re-embed every stored chunk with the configured embedder (after a model change)."""
        self.embedder.warm_up()
        with self._write_lock():
            self.index.reset_embedder(self.embedder.fingerprint, self.embedder.dimension)
            total = self.index.info().chunks
            bar = _progress(total, "chunks", progress)
            done = 0
            for batch in self.index.iter_chunks(self.batch_chunks):
                vectors = self.embedder.embed([c.searchable_text for c in batch])
                self.index.add_vectors([c.id for c in batch], vectors)
                done += len(batch)
                bar.update(len(batch))
            bar.close()
            return done

    # --- internals ----------------------------------------------------------------------------

    def _allowed(self, path: Path) -> bool:
        root = self.settings.ingest.ingest_root
        if root is None:
            return True
        try:
            path.resolve().relative_to(Path(root).resolve())
        except ValueError:
            return False
        return True

    def _run(self, jobs: list[Path], summary: IngestSummary, *, progress: bool) -> None:
        from ragserve.ingest.loaders import load_file

        if self._chunker is None:
            self.warm_up()
        bar = _progress(len(jobs), "files", progress)
        pending: list[tuple[Document, str, FileResult]] = []
        pending_chunks = 0
        for path in jobs:
            doc_id = document_id_for(path)
            result = FileResult(doc_id, "ingested")
            summary.results.append(result)
            try:
                size = path.stat().st_size
                if size > self.settings.ingest.max_file_bytes:
                    raise IngestError(
                        f"{path.name} is {size / 1e6:.1f} MB, over the "
                        f"{self.settings.ingest.max_file_bytes / 1e6:.0f} MB limit.",
                        hint="Split the file or raise RAGSERVE_MAX_FILE_BYTES.",
                    )
                file_hash = content_hash(self.fingerprint.encode() + b"\x00" + path.read_bytes())
                if (
                    path.suffix.lower() != ".jsonl"
                    and self.index.document_hash(doc_id) == file_hash
                ):
                    result.status = "unchanged"
                    bar.update(1)
                    continue
                docs = load_file(
                    path,
                    root=Path.cwd() if not doc_id.startswith("/") else None,
                    max_bytes=self.settings.ingest.max_file_bytes,
                )
            except RagServeError as exc:
                result.status, result.error = "failed", str(exc)
                bar.update(1)
                continue
            except OSError as exc:
                result.status, result.error = "failed", f"{path}: cannot read ({exc.strerror})"
                bar.update(1)
                continue
            for doc in docs:
                if path.suffix.lower() == ".jsonl":
                    h = content_hash(f"{self.fingerprint}\x00{doc.title or ''}\x00{doc.text}")
                    if self.index.document_hash(doc.doc_id) == h:
                        continue
                    doc.metadata.setdefault("file", doc_id)
                else:
                    h = file_hash
                    # One id scheme for every path: the loader's relative id may differ.
                    if doc.doc_id != doc_id and len(docs) == 1:
                        doc = _with_id(doc, doc_id)
                pending.append((doc, h, result))
                result.documents += 1
                pending_chunks += max(1, len(doc.text) // 1500)
            if pending_chunks >= self.batch_chunks:
                self._flush_files(pending, bar)
                pending, pending_chunks = [], 0
            bar.update(1)
        self._flush_files(pending, bar)
        bar.close()
        for r in summary.results:
            if r.status == "ingested" and r.documents == 0 and r.error is None:
                r.status = "unchanged"

    def _chunk(self, doc: Document) -> list[Chunk]:
        if self._chunker is None:
            self.warm_up()
        chunks = self._chunker.split(doc)
        if not chunks:
            raise IngestError(
                f"{doc.source}: no text to index after chunking.",
                hint="Check that the file has extractable text.",
            )
        return chunks

    def _flush_files(self, pending: list[tuple[Document, str, FileResult]], bar: Any) -> None:
        if not pending:
            return
        writes: list[IndexWrite] = []
        owners: list[FileResult] = []
        for doc, h, result in pending:
            try:
                chunks = self._chunk(doc)
            except RagServeError as exc:
                result.status, result.error = "failed", str(exc)
                continue
            writes.append(self._record(doc, h, chunks))
            owners.append(result)
        self._embed_and_write(writes, bar)
        for w, result in zip(writes, owners, strict=True):
            if result.status == "ingested":
                result.chunks += len(w.chunks)

    def _flush_docs(
        self, pending: list[tuple[Document, str]], summary: IngestSummary, bar: Any
    ) -> None:
        writes = []
        for doc, h in pending:
            try:
                writes.append(self._record(doc, h, self._chunk(doc)))
                summary.results.append(FileResult(doc.doc_id, "ingested"))
                summary.results[-1].chunks = len(writes[-1].chunks)
            except RagServeError as exc:
                summary.results.append(FileResult(doc.doc_id, "failed", error=str(exc)))
        self._embed_and_write(writes, bar)

    def _record(self, doc: Document, doc_hash: str, chunks: list[Chunk]) -> IndexWrite:
        record = DocumentRecord(
            doc_id=doc.doc_id,
            source=doc.source,
            content_hash=doc_hash,
            chunks=len(chunks),
            title=doc.title,
            ingested_at=time.time(),
            metadata={k: v for k, v in doc.metadata.items() if _jsonable(v)},
        )
        return IndexWrite(record=record, chunks=chunks, vectors=np.zeros((0, 0), np.float32))

    def _embed_and_write(self, writes: list[IndexWrite], bar: Any) -> None:
        if self._chunker is None:
            self.warm_up()
        # Embed in bounded groups so memory stays at about batch_chunks vectors.
        group: list[IndexWrite] = []
        size = 0
        for w in [*writes, None]:
            if w is not None:
                group.append(w)
                size += len(w.chunks)
            if group and (w is None or size >= self.batch_chunks):
                texts = [c.searchable_text for g in group for c in g.chunks]
                t0 = time.perf_counter()
                vectors = self._embed(texts)
                rate = len(texts) / max(time.perf_counter() - t0, 1e-9)
                out, offset = [], 0
                for g in group:
                    n = len(g.chunks)
                    out.append(IndexWrite(g.record, g.chunks, vectors[offset : offset + n]))
                    offset += n
                try:
                    self.index.write(out)
                except StoreError:
                    raise
                if hasattr(bar, "set_postfix"):
                    bar.set_postfix(chunks=len(texts), rate=f"{rate:.0f} chunks/s", refresh=False)
                group, size = [], 0

    def _embed(self, texts: list[str]) -> np.ndarray:
        """Embed ``texts``; in a server, call by call, each started once no answer is in
        flight or after ``ingest_yield_seconds``, whichever comes first, and small if an
        answer still is."""
        wait = self.settings.ingest.ingest_yield_seconds
        if self.foreground is None or wait <= 0 or not texts:
            return self.embedder.embed(texts)
        parts, start = [], 0
        while start < len(texts):
            size = _IDLE_BATCH if self.foreground.wait_idle(wait) else _YIELD_BATCH
            parts.append(self.embedder.embed(texts[start : start + size]))
            start += size
        return np.concatenate(parts)

    def _prune(self, dirs: list[Path], seen: set[str], summary: IngestSummary) -> None:
        prefixes = [document_id_for(d).rstrip("/") + "/" for d in dirs]
        gone = []
        for rec in self.index.documents():
            key = rec.metadata.get("file", rec.doc_id)
            if any(key.startswith(p) for p in prefixes) and key not in seen:
                gone.append(rec.doc_id)
        if gone:
            self.index.delete(gone)
            summary.results.extend(FileResult(g, "deleted") for g in gone)

    def _bulk(self) -> contextlib.AbstractContextManager[Any]:
        """Batches of one run bring the sparse index up to date once, at the end, where the
        backend can (the embedded store rebuilds BM25 per change; PostgreSQL need not)."""
        deferred = getattr(self.index, "deferred_sparse", None)
        return deferred() if deferred is not None else contextlib.nullcontext()

    @contextlib.contextmanager
    def _write_lock(self) -> Iterator[None]:
        """One writer per collection across processes (the CLI and a running server)."""
        directory: Path = self.settings.index_dir
        try:
            directory.mkdir(parents=True, exist_ok=True)
            handle = open(directory / ".write.lock", "a+")  # noqa: SIM115
        except OSError as exc:
            raise StoreError(
                f"Cannot write to the index directory {directory}: {exc.strerror}",
                hint="Check permissions and free disk space.",
            ) from exc
        try:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                log.info("waiting for another writer on %s", directory)
                fcntl.flock(handle, fcntl.LOCK_EX)
            yield
        finally:
            with contextlib.suppress(OSError):
                fcntl.flock(handle, fcntl.LOCK_UN)
            handle.close()


def _with_id(doc: Document, doc_id: str) -> Document:
    from dataclasses import replace

    return replace(doc, doc_id=doc_id, source=doc_id)


def _jsonable(v: Any) -> bool:
    try:
        json.dumps(v)
    except (TypeError, ValueError):
        return False
    return True


class _NullBar:
    def update(self, n: int = 1) -> None: ...

    def close(self) -> None: ...


def _progress(total: int | None, unit: str, enabled: bool) -> Any:
    if not enabled or os.environ.get("RAGSERVE_NO_PROGRESS"):
        return _NullBar()
    from tqdm.auto import tqdm

    return tqdm(
        total=total,
        unit=unit[:-1] if unit.endswith("s") else unit,
        desc=f"ingest {unit}",
        dynamic_ncols=True,
        leave=True,
    )
