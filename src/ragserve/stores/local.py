"""The embedded index: Chroma (dense) + bm25s (sparse) + a SQLite manifest, as one unit.

Consistency without a distributed transaction:

* The SQLite manifest is the source of truth: documents, chunk texts and metadata, the
  embedder identity and a version counter. A document's rows change in one SQLite transaction.
* Vectors are written to Chroma *before* that transaction and stale ones deleted *after* it,
  so a crash at any point leaves at worst orphan vectors, which ``open`` deletes.
* BM25 is derived from the manifest and stamped with its version; a stale stamp rebuilds it.

So after ``kill -9`` anywhere, the next open finds every manifest chunk searchable both ways and
nothing orphaned; documents whose transaction never committed are simply re-ingested.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ragserve.errors import EmbedderMismatchError, StoreError
from ragserve.sparse import BM25Index, Bm25Tokenizer
from ragserve.stores.base import IndexInfo, IndexWrite
from ragserve.types import Chunk, DocumentRecord

if TYPE_CHECKING:
    from ragserve.config import Settings

__all__ = ["LocalIndex"]

log = logging.getLogger("ragserve.stores.local")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS documents (
    doc_id TEXT PRIMARY KEY, source TEXT NOT NULL, content_hash TEXT NOT NULL,
    chunks INTEGER NOT NULL, title TEXT, ingested_at REAL NOT NULL, metadata TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS chunks (
    id TEXT PRIMARY KEY, doc_id TEXT NOT NULL, source TEXT NOT NULL, chunk_index INTEGER NOT NULL,
    text TEXT NOT NULL, char_start INTEGER NOT NULL, char_end INTEGER NOT NULL,
    content_hash TEXT NOT NULL, page INTEGER, section TEXT, title TEXT, metadata TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS chunks_doc ON chunks (doc_id);
"""

_CHUNK_COLUMNS = (
    "id, doc_id, source, chunk_index, text, char_start, char_end, content_hash, page, section,"
    " title, metadata"
)
_CHROMA_BATCH = 4000  # below Chroma's max batch size


class LocalIndex:
    backend = "chroma"

    def __init__(
        self, directory: Path, collection: str, *, bm25_tokenizer: Bm25Tokenizer | None = None
    ) -> None:
        self.directory = Path(directory)
        self.collection = collection
        self._bm25 = BM25Index(bm25_tokenizer)
        self._db: sqlite3.Connection | None = None
        self._chroma: Any = None
        self._client: Any = None
        self._lock = threading.RLock()
        self._opened = False

    @classmethod
    def from_settings(cls, settings: Settings) -> LocalIndex:
        tokenizer = Bm25Tokenizer(
            stemming=settings.bm25_stemming, stopwords=settings.bm25_stopwords
        )
        return cls(settings.index_dir, settings.collection, bm25_tokenizer=tokenizer)

    # --- lifecycle ----------------------------------------------------------------------------

    def open(self, embedding_model: str, dimension: int) -> None:
        with self._lock:
            if self._db is None:
                self._connect()
            stored_model = self._meta("embedding_model")
            stored_dim = self._meta("dimension")
            if stored_model is None:
                self._set_meta(
                    {
                        "embedding_model": embedding_model,
                        "dimension": str(dimension),
                        "version": self._meta("version") or "0",
                    }
                )
            elif stored_model != embedding_model or int(stored_dim or 0) != dimension:
                raise EmbedderMismatchError(
                    f"Collection '{self.collection}' was built with embedding model "
                    f"'{stored_model}' (dimension {stored_dim}), but the configured model is "
                    f"'{embedding_model}' (dimension {dimension}).",
                    hint=f"Run `ragserve reindex` to re-embed the stored chunks with "
                    f"'{embedding_model}', or set RAGSERVE_EMBEDDING_MODEL='{stored_model}'.",
                )
            self._reconcile()
            self._opened = True

    def close(self) -> None:
        with self._lock:
            if self._db is None:
                return
            if self._opened:
                self._ensure_bm25()
            self._db.close()
            self._db = None
            self._chroma = None
            self._client = None
            self._opened = False

    def _connect(self) -> None:
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(
                self.directory / "manifest.sqlite3", check_same_thread=False, isolation_level=None
            )
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            db.executescript(_SCHEMA)
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(
                f"Cannot open the index at {self.directory}: {exc}",
                hint="Check that the directory exists, is writable and the disk is not full "
                "(RAGSERVE_DATA_DIR sets where it lives).",
            ) from exc
        self._db = db
        import chromadb
        from chromadb.config import Settings as ChromaSettings

        try:
            self._client = chromadb.PersistentClient(
                path=str(self.directory / "chroma"),
                settings=ChromaSettings(anonymized_telemetry=False, allow_reset=False),
            )
            # embedding_function=None: Chroma's default function downloads a model, and we
            # always pass our own vectors anyway.
            self._chroma = self._client.get_or_create_collection(
                name=f"ragserve-{self.collection}",
                metadata={"hnsw:space": "cosine"},
                embedding_function=None,
            )
        except Exception as exc:
            raise StoreError(
                f"Cannot open the Chroma store at {self.directory / 'chroma'}: {exc}",
                hint="Check permissions and free disk space; the manifest is intact.",
            ) from exc

    def _reconcile(self) -> None:
        """Delete vectors the manifest does not know (left by a crash between the steps)."""
        manifest_ids = {row[0] for row in self._sql("SELECT id FROM chunks")}
        stored = set(self._chroma.get(include=[])["ids"])
        orphans = sorted(stored - manifest_ids)
        missing = manifest_ids - stored
        if orphans:
            log.warning("removing %d orphan vectors left by an interrupted write", len(orphans))
            self._chroma_delete(orphans)
        if missing:
            # Only a damaged Chroma directory gets here; re-embedding needs the embedder, so
            # the ingest pipeline repairs these (see missing_vector_ids).
            log.warning("%d chunks have no vector; `ragserve reindex` repairs them", len(missing))
        self._missing = missing

    def check(self) -> list[str]:
        """Consistency problems between manifest, vectors and BM25 (empty when consistent)."""
        problems: list[str] = []
        manifest_ids = {row[0] for row in self._sql("SELECT id FROM chunks")}
        stored = set(self._chroma.get(include=[])["ids"])
        if stored - manifest_ids:
            problems.append(f"{len(stored - manifest_ids)} orphan vectors")
        if manifest_ids - stored:
            problems.append(f"{len(manifest_ids - stored)} chunks without vectors")
        for doc_id, expected, actual in self._sql(
            "SELECT d.doc_id, d.chunks, COUNT(c.id) FROM documents d "
            "LEFT JOIN chunks c ON c.doc_id = d.doc_id GROUP BY d.doc_id"
        ):
            if expected != actual:
                problems.append(f"{doc_id}: manifest says {expected} chunks, found {actual}")
        orphan_chunks = self._sql(
            "SELECT COUNT(*) FROM chunks WHERE doc_id NOT IN (SELECT doc_id FROM documents)"
        )[0][0]
        if orphan_chunks:
            problems.append(f"{orphan_chunks} chunks of no document")
        self._ensure_bm25()
        if set(self._bm25._ids) != manifest_ids:
            problems.append("BM25 index does not match the manifest")
        return problems

    def missing_vector_ids(self) -> set[str]:
        return set(self._missing)

    # --- manifest helpers ---------------------------------------------------------------------

    def _sql(self, query: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        if self._db is None:
            raise StoreError("The index is not open.", hint="Call open() first.")
        with self._lock:
            return self._db.execute(query, params).fetchall()

    def _meta(self, key: str) -> str | None:
        rows = self._sql("SELECT value FROM meta WHERE key = ?", (key,))
        return rows[0][0] if rows else None

    def _set_meta(self, values: dict[str, str]) -> None:
        assert self._db is not None
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.executemany(
                    "INSERT INTO meta (key, value) VALUES (?, ?) "
                    "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                    list(values.items()),
                )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    @property
    def version(self) -> int:
        return int(self._meta("version") or 0)

    # --- reads --------------------------------------------------------------------------------

    def info(self) -> IndexInfo:
        docs, chunks = self._sql(
            "SELECT (SELECT COUNT(*) FROM documents), (SELECT COUNT(*) FROM chunks)"
        )[0]
        dim = self._meta("dimension")
        return IndexInfo(
            collection=self.collection,
            backend=self.backend,
            embedding_model=self._meta("embedding_model"),
            dimension=int(dim) if dim else None,
            documents=int(docs),
            chunks=int(chunks),
            version=self.version,
            extra={"path": str(self.directory)},
        )

    def document_hash(self, doc_id: str) -> str | None:
        rows = self._sql("SELECT content_hash FROM documents WHERE doc_id = ?", (doc_id,))
        return rows[0][0] if rows else None

    def documents(self) -> list[DocumentRecord]:
        rows = self._sql(
            "SELECT doc_id, source, content_hash, chunks, title, ingested_at, metadata "
            "FROM documents ORDER BY doc_id"
        )
        return [
            DocumentRecord(
                doc_id=r[0],
                source=r[1],
                content_hash=r[2],
                chunks=r[3],
                title=r[4],
                ingested_at=r[5],
                metadata=json.loads(r[6]),
            )
            for r in rows
        ]

    def get_chunks(self, ids: Sequence[str]) -> dict[str, Chunk]:
        out: dict[str, Chunk] = {}
        ids = list(ids)
        for start in range(0, len(ids), 500):
            part = ids[start : start + 500]
            marks = ",".join("?" * len(part))
            for row in self._sql(
                f"SELECT {_CHUNK_COLUMNS} FROM chunks WHERE id IN ({marks})", part
            ):
                out[row[0]] = _row_to_chunk(row)
        return out

    def iter_chunks(self, batch_size: int = 1000) -> Iterator[list[Chunk]]:
        last = ""
        while True:
            rows = self._sql(
                f"SELECT {_CHUNK_COLUMNS} FROM chunks WHERE id > ? ORDER BY id LIMIT ?",
                (last, batch_size),
            )
            if not rows:
                return
            yield [_row_to_chunk(r) for r in rows]
            last = rows[-1][0]

    def get_vectors(self, ids: Sequence[str]) -> np.ndarray:
        ids = list(ids)
        if not ids:
            return np.zeros((0, int(self._meta("dimension") or 0)), dtype=np.float32)
        with _vector_read():
            got = self._chroma.get(ids=ids, include=["embeddings"])
        by_id = dict(zip(got["ids"], got["embeddings"], strict=True))
        missing = [i for i in ids if i not in by_id]
        if missing:
            raise StoreError(
                f"{len(missing)} chunks have no stored vector (e.g. {missing[0]}).",
                hint="Run `ragserve reindex` to re-embed them.",
            )
        return np.asarray([by_id[i] for i in ids], dtype=np.float32)

    def dense_search(self, vector: np.ndarray, k: int) -> list[tuple[str, float]]:
        with _vector_read():
            count = self._chroma.count()
            if count == 0 or k <= 0:
                return []
            res = self._chroma.query(
                query_embeddings=[np.asarray(vector, dtype=np.float32).tolist()],
                n_results=min(k, count),
                include=["distances"],
            )
        # Chroma's cosine "distance" is 1 - cosine similarity.
        return [
            (cid, 1.0 - float(d)) for cid, d in zip(res["ids"][0], res["distances"][0], strict=True)
        ]

    def sparse_search(self, query: str, k: int) -> list[tuple[str, float]]:
        self._ensure_bm25()
        return self._bm25.search(query, k)

    def _ensure_bm25(self) -> None:
        with self._lock:
            version = self.version
            if self._bm25.version == version:
                return
            bm25_dir = self.directory / "bm25"
            if self._bm25.load(bm25_dir) and self._bm25.version == version:
                return
            started = time.perf_counter()
            ids: list[str] = []
            texts: list[str] = []
            for batch in self.iter_chunks(5000):
                ids.extend(c.id for c in batch)
                texts.extend(c.searchable_text for c in batch)
            self._bm25.build(ids, texts, version)
            try:
                self._bm25.save(bm25_dir)
            except OSError as exc:  # read-only or full disk: search still works from memory
                log.warning("could not save the BM25 index (%s); it stays in memory", exc)
            log.info(
                "rebuilt BM25 over %d chunks in %.2fs", len(ids), time.perf_counter() - started
            )

    # --- writes -------------------------------------------------------------------------------

    def write(self, batch: Sequence[IndexWrite]) -> None:
        if not batch:
            return
        dim = int(self._meta("dimension") or 0)
        for item in batch:
            if item.vectors.shape != (len(item.chunks), dim):
                raise StoreError(
                    f"Vectors for '{item.record.doc_id}' have shape {item.vectors.shape}, "
                    f"expected ({len(item.chunks)}, {dim}).",
                    hint="The embedder does not match the index; run `ragserve reindex`.",
                )
        with self._lock:
            # 1. vectors first: a crash after this leaves only orphans, removed on open.
            ids = [c.id for item in batch for c in item.chunks]
            vectors = np.concatenate([item.vectors for item in batch]) if ids else None
            try:
                for start in range(0, len(ids), _CHROMA_BATCH):
                    assert vectors is not None
                    part = ids[start : start + _CHROMA_BATCH]
                    self._chroma.upsert(
                        ids=part, embeddings=vectors[start : start + _CHROMA_BATCH].tolist()
                    )
            except Exception as exc:  # chromadb raises its own and OS errors alike
                raise _write_error(self.directory, exc) from exc
            # 2. the manifest, atomically.
            doc_ids = [item.record.doc_id for item in batch]
            old_ids = self._chunk_ids_of(doc_ids)
            assert self._db is not None
            db = self._db
            try:
                db.execute("BEGIN IMMEDIATE")
                for item in batch:
                    rec = item.record
                    db.execute("DELETE FROM chunks WHERE doc_id = ?", (rec.doc_id,))
                    db.executemany(
                        f"INSERT OR REPLACE INTO chunks ({_CHUNK_COLUMNS}) "
                        "VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                        [_chunk_to_row(c) for c in item.chunks],
                    )
                    db.execute(
                        "INSERT OR REPLACE INTO documents (doc_id, source, content_hash, chunks,"
                        " title, ingested_at, metadata) VALUES (?,?,?,?,?,?,?)",
                        (
                            rec.doc_id,
                            rec.source,
                            rec.content_hash,
                            len(item.chunks),
                            rec.title,
                            rec.ingested_at or time.time(),
                            json.dumps(rec.metadata),
                        ),
                    )
                db.execute(
                    "UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'version'"
                )
                db.execute("COMMIT")
            except BaseException as exc:
                db.execute("ROLLBACK")
                if isinstance(exc, sqlite3.Error | OSError):
                    raise _write_error(self.directory, exc) from exc
                raise
            # 3. vectors no document refers to any more.
            stale = sorted(set(old_ids) - set(ids))
            if stale:
                self._chroma_delete(stale)

    def delete(self, doc_ids: Sequence[str]) -> int:
        if not doc_ids:
            return 0
        with self._lock:
            old_ids = self._chunk_ids_of(doc_ids)
            assert self._db is not None
            db = self._db
            marks = ",".join("?" * len(doc_ids))
            db.execute("BEGIN IMMEDIATE")
            try:
                existed = db.execute(
                    f"SELECT COUNT(*) FROM documents WHERE doc_id IN ({marks})", list(doc_ids)
                ).fetchone()[0]
                db.execute(f"DELETE FROM chunks WHERE doc_id IN ({marks})", list(doc_ids))
                db.execute(f"DELETE FROM documents WHERE doc_id IN ({marks})", list(doc_ids))
                if existed:
                    db.execute(
                        "UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'version'"
                    )
                db.execute("COMMIT")
            except BaseException as exc:
                db.execute("ROLLBACK")
                if isinstance(exc, sqlite3.Error | OSError):
                    raise _write_error(self.directory, exc) from exc
                raise
            if old_ids:
                self._chroma_delete(old_ids)
            return int(existed)

    def reset_embedder(self, embedding_model: str, dimension: int) -> None:
        with self._lock:
            if self._db is None:
                self._connect()
            assert self._client is not None
            self._client.delete_collection(f"ragserve-{self.collection}")
            self._chroma = self._client.get_or_create_collection(
                name=f"ragserve-{self.collection}",
                metadata={"hnsw:space": "cosine"},
                embedding_function=None,
            )
            self._set_meta(
                {
                    "embedding_model": embedding_model,
                    "dimension": str(dimension),
                    "version": str(self.version + 1),
                }
            )
            self._missing = {row[0] for row in self._sql("SELECT id FROM chunks")}
            self._opened = True

    def add_vectors(self, ids: Sequence[str], vectors: np.ndarray) -> None:
        """Store vectors for chunks already in the manifest (reindex and repair)."""
        with self._lock:
            for start in range(0, len(ids), _CHROMA_BATCH):
                self._chroma.upsert(
                    ids=list(ids[start : start + _CHROMA_BATCH]),
                    embeddings=vectors[start : start + _CHROMA_BATCH].tolist(),
                )
            self._missing -= set(ids)

    def _chunk_ids_of(self, doc_ids: Sequence[str]) -> list[str]:
        out: list[str] = []
        for start in range(0, len(doc_ids), 500):
            part = list(doc_ids[start : start + 500])
            marks = ",".join("?" * len(part))
            out.extend(
                r[0] for r in self._sql(f"SELECT id FROM chunks WHERE doc_id IN ({marks})", part)
            )
        return out

    def _chroma_delete(self, ids: Sequence[str]) -> None:
        # Runs after the manifest committed: a failure only leaves orphan vectors, which no
        # search returns (chunks are fetched from the manifest) and the next open removes.
        try:
            for start in range(0, len(ids), _CHROMA_BATCH):
                self._chroma.delete(ids=list(ids[start : start + _CHROMA_BATCH]))
        except Exception as exc:
            log.warning(
                "could not delete %d stale vectors now (%s); they go on next open", len(ids), exc
            )


@contextmanager
def _vector_read() -> Iterator[None]:
    """Chroma's own read failures (a vanished or unreadable directory) as a typed StoreError."""
    from chromadb.errors import ChromaError

    try:
        yield
    except ChromaError as exc:
        raise StoreError(
            f"The vector store could not be read: {exc}",
            hint="Check that the data directory is still mounted and readable.",
        ) from exc


def _write_error(directory: Path, exc: BaseException) -> StoreError:
    text = str(exc).lower()
    if "full" in text or "no space" in text or getattr(exc, "errno", None) == 28:
        what, hint = "the disk is full", "Free disk space, then run the ingest again."
    elif "read-only" in text or "readonly" in text or getattr(exc, "errno", None) in (13, 30):
        what, hint = "the index directory is read-only", "Make it writable, then retry."
    else:
        what, hint = f"{type(exc).__name__}: {str(exc)[:200]}", "Check disk space and permissions."
    return StoreError(
        f"Cannot write to the index at {directory}: {what}. Nothing already indexed was changed.",
        hint=hint,
    )


def _chunk_to_row(c: Chunk) -> tuple[Any, ...]:
    return (
        c.id,
        c.doc_id,
        c.source,
        c.chunk_index,
        c.text,
        c.char_start,
        c.char_end,
        c.content_hash,
        c.page,
        c.section,
        c.title,
        json.dumps(c.metadata),
    )


def _row_to_chunk(r: Sequence[Any]) -> Chunk:
    return Chunk(
        id=r[0],
        doc_id=r[1],
        source=r[2],
        chunk_index=r[3],
        text=r[4],
        char_start=r[5],
        char_end=r[6],
        content_hash=r[7],
        page=r[8],
        section=r[9],
        title=r[10],
        metadata=json.loads(r[11]),
    )
