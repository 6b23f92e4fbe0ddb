"""The embedded index: Chroma (dense) + bm25s (sparse) + a SQLite manifest, as one unit.

Consistency without a distributed transaction:

* The SQLite manifest is the source of truth: documents, chunk texts and metadata, the
  embedder identity and a version counter. A document's rows change in one SQLite transaction.
* Vectors are written to Chroma *before* that transaction and stale ones deleted *after* it,
  so a crash at any point leaves at worst orphan vectors, which ``open`` deletes.
* BM25 is derived from the manifest and stamped with its version; a stale stamp rebuilds it
  on open.

So after ``kill -9`` anywhere, the next open finds every manifest chunk searchable both ways and
nothing orphaned; documents whose transaction never committed are simply re-ingested.

Readers never wait for writers. Reads go through their own SQLite connections (WAL: each sees
the last commit), Chroma is read without any lock of ours, and BM25 is an immutable snapshot
swapped by reference. A write builds the next BM25 snapshot *before* its manifest transaction
(re-tokenising only the documents it changes) and publishes it right after the commit, so no
query ever pays for a rebuild, and a search that runs between the two sees the previous
snapshot, whose ids the manifest either still has or no longer returns.
"""

from __future__ import annotations

import json
import logging
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ragserve.errors import EmbedderMismatchError, StoreError
from ragserve.stores.base import IndexInfo, IndexWrite
from ragserve.stores.bm25 import BM25Index, Bm25Snapshot, Bm25Tokenizer
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


class _Readers:
    """A pool of read-only SQLite connections, one per concurrent reader.

    In WAL mode a reader on its own connection sees the last committed state and neither waits
    for nor blocks the one writer; one shared connection would serialise every read behind the
    writer's transaction.
    """

    def __init__(self, path: Path) -> None:
        self._path = path
        self._idle: queue.SimpleQueue[sqlite3.Connection] = queue.SimpleQueue()
        self._closed = False

    def _open(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self._path, check_same_thread=False, isolation_level=None)
        conn.execute("PRAGMA query_only=1")
        return conn

    @contextmanager
    def connection(self) -> Iterator[sqlite3.Connection]:
        if self._closed:
            raise StoreError("The index is not open.", hint="Call open() first.")
        try:
            conn = self._idle.get_nowait()
        except queue.Empty:
            conn = self._open()
        try:
            yield conn
        finally:
            if self._closed:
                conn.close()
            else:
                self._idle.put(conn)

    def close(self) -> None:
        self._closed = True
        while True:
            try:
                self._idle.get_nowait().close()
            except queue.Empty:
                return


@dataclass
class _PendingSparse:
    """What the writes of a ``deferred_sparse()`` run changed, for one BM25 derivation."""

    base_version: int | None
    remove: set[str] = field(default_factory=set)
    add: dict[str, str] = field(default_factory=dict)
    """Chunk id -> searchable text, in write order."""

    def record(self, removed: Sequence[str], added: Sequence[Chunk]) -> None:
        for cid in removed:
            self.add.pop(cid, None)
            self.remove.add(cid)
        for chunk in added:
            self.add[chunk.id] = chunk.searchable_text


class LocalIndex:
    backend = "chroma"

    def __init__(
        self, directory: Path, collection: str, *, bm25_tokenizer: Bm25Tokenizer | None = None
    ) -> None:
        self.directory = Path(directory)
        self.collection = collection
        self._bm25 = BM25Index(bm25_tokenizer)
        self._db: sqlite3.Connection | None = None
        """The writer's connection; used only under ``_write_lock``."""
        self._readers: _Readers | None = None
        self._chroma: Any = None
        self._client: Any = None
        # Writers and lifecycle only: no read path takes it, so chat never waits for an upload.
        self._write_lock = threading.RLock()
        self._refresh_lock = threading.Lock()  # one full BM25 rebuild at a time
        # Held from a background rebuild's start to its end: taken before the thread starts,
        # so searches that find BM25 stale together start one rebuild, not one each.
        self._refresh_started = threading.Lock()
        self._writing = False
        self._deferred: _PendingSparse | None = None
        self._missing: set[str] = set()
        self._opened = False

    @classmethod
    def from_settings(cls, settings: Settings) -> LocalIndex:
        tokenizer = Bm25Tokenizer(
            stemming=settings.retrieval.bm25_stemming, stopwords=settings.retrieval.bm25_stopwords
        )
        return cls(settings.index_dir, settings.index.collection, bm25_tokenizer=tokenizer)

    # --- lifecycle ----------------------------------------------------------------------------

    def open(self, embedding_model: str, dimension: int) -> None:
        with self._write_lock:
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
            # Current before the first search: no reader ever pays for a rebuild.
            self._refresh_bm25(load=True)
            self._opened = True

    def close(self) -> None:
        with self._write_lock:
            if self._db is None:
                return
            if self._opened:
                self._save_bm25()
            assert self._readers is not None
            self._readers.close()
            self._db.close()
            self._db = None
            self._readers = None
            self._chroma = None
            self._client = None
            self._opened = False

    def _connect(self) -> None:
        path = self.directory / "manifest.sqlite3"
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
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
        self._readers = _Readers(path)
        self._chroma = self._open_chroma()

    def _open_chroma(self) -> Any:
        import chromadb
        from chromadb.config import Settings as ChromaSettings

        try:
            self._client = chromadb.PersistentClient(
                path=str(self.directory / "chroma"),
                settings=ChromaSettings(anonymized_telemetry=False, allow_reset=False),
            )
            # embedding_function=None: Chroma's default function downloads a model, and we
            # always pass our own vectors anyway.
            return self._client.get_or_create_collection(
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
        """Consistency problems between manifest, vectors and BM25 (empty when consistent).

        Read-only. It holds the write lock so that no write of this process is half done
        while it looks (a write in progress legitimately has vectors ahead of the manifest).
        """
        with self._write_lock, self._read() as conn:
            version = int(_meta_of(conn, "version") or 0)
            manifest_ids = {row[0] for row in conn.execute("SELECT id FROM chunks")}
            counts = conn.execute(
                "SELECT d.doc_id, d.chunks, COUNT(c.id) FROM documents d "
                "LEFT JOIN chunks c ON c.doc_id = d.doc_id GROUP BY d.doc_id"
            ).fetchall()
            orphan_chunks = conn.execute(
                "SELECT COUNT(*) FROM chunks WHERE doc_id NOT IN (SELECT doc_id FROM documents)"
            ).fetchone()[0]
            stored = set(self._chroma.get(include=[])["ids"])
        problems: list[str] = []
        if stored - manifest_ids:
            problems.append(f"{len(stored - manifest_ids)} orphan vectors")
        if manifest_ids - stored:
            problems.append(f"{len(manifest_ids - stored)} chunks without vectors")
        problems += [f"{d}: manifest says {e} chunks, found {a}" for d, e, a in counts if e != a]
        if orphan_chunks:
            problems.append(f"{orphan_chunks} chunks of no document")
        bm25 = self._bm25.snapshot
        if bm25.version != version:
            problems.append(f"BM25 is of manifest version {bm25.version}, not {version}")
        if set(bm25.ids) != manifest_ids or len(bm25.ids) != len(manifest_ids):
            problems.append("BM25 index does not match the manifest")
        return problems

    def missing_vector_ids(self) -> set[str]:
        return set(self._missing)

    # --- manifest helpers ---------------------------------------------------------------------

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        """A read transaction: every statement in it sees the same committed state."""
        readers = self._readers
        if readers is None:
            raise StoreError("The index is not open.", hint="Call open() first.")
        with readers.connection() as conn:
            conn.execute("BEGIN")
            try:
                yield conn
            finally:
                conn.execute("COMMIT")

    def _sql(self, query: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        readers = self._readers
        if readers is None:
            raise StoreError("The index is not open.", hint="Call open() first.")
        with readers.connection() as conn:
            return conn.execute(query, params).fetchall()

    def _meta(self, key: str) -> str | None:
        rows = self._sql("SELECT value FROM meta WHERE key = ?", (key,))
        return rows[0][0] if rows else None

    def _set_meta(self, values: dict[str, str]) -> None:
        assert self._db is not None
        with self._write_lock:
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

    def version(self) -> int:
        """The manifest's change counter: one primary-key read, no counting."""
        return int(self._meta("version") or 0)

    # --- reads --------------------------------------------------------------------------------

    def info(self) -> IndexInfo:
        with self._read() as conn:
            docs, chunks = conn.execute(
                "SELECT (SELECT COUNT(*) FROM documents), (SELECT COUNT(*) FROM chunks)"
            ).fetchone()
            dim = _meta_of(conn, "dimension")
            model = _meta_of(conn, "embedding_model")
            version = int(_meta_of(conn, "version") or 0)
        return IndexInfo(
            collection=self.collection,
            backend=self.backend,
            embedding_model=model,
            dimension=int(dim) if dim else None,
            documents=int(docs),
            chunks=int(chunks),
            version=version,
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
        with self._read() as conn:
            for start in range(0, len(ids), 500):
                part = ids[start : start + 500]
                marks = ",".join("?" * len(part))
                for row in conn.execute(
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
        # Never waits: a BM25 behind the manifest (another process wrote) is rebuilt in the
        # background while this search answers from the last published one.
        if self._bm25.version != self.version() and not self._writing and not self._deferred:
            self._refresh_bm25_in_background()
        return self._bm25.search(query, k)

    # --- BM25, derived from the manifest ------------------------------------------------------

    def _refresh_bm25(self, *, load: bool = False) -> None:
        """Make BM25 match the manifest: load it from disk when its stamp is current, else
        rebuild it from the manifest's texts (outside any lock readers take) and publish."""
        with self._refresh_lock:
            version = self.version()
            if self._bm25.version == version:
                return
            bm25_dir = self.directory / "bm25"
            if load and self._bm25.load(bm25_dir, version):
                return
            started = time.perf_counter()
            with self._read() as conn:
                version = int(_meta_of(conn, "version") or 0)
                rows = conn.execute(f"SELECT {_CHUNK_COLUMNS} FROM chunks ORDER BY id")
                chunks = [_row_to_chunk(r) for r in rows]
            snapshot = self._bm25.prepare(
                [c.id for c in chunks], [c.searchable_text for c in chunks], version
            )
            self._bm25.publish(snapshot)
            log.info(
                "rebuilt BM25 over %d chunks in %.2fs", len(chunks), time.perf_counter() - started
            )
        self._save_bm25()

    def _refresh_bm25_in_background(self) -> None:
        if self._refresh_lock.locked() or not self._refresh_started.acquire(blocking=False):
            return  # one is under way

        def run() -> None:
            try:
                self._refresh_bm25()
            except Exception as exc:  # searches keep the previous index; the next one retries
                log.warning("background BM25 rebuild failed: %s", exc)
            finally:
                self._refresh_started.release()

        try:
            threading.Thread(target=run, name="ragserve-bm25-refresh", daemon=True).start()
        except BaseException:
            self._refresh_started.release()
            raise

    def _save_bm25(self) -> None:
        try:
            self._bm25.save(self.directory / "bm25")
        except OSError as exc:  # read-only or full disk: search still works from memory
            log.warning("could not save the BM25 index (%s); it stays in memory", exc)

    def _next_bm25(
        self, remove: Sequence[str], add: Sequence[Chunk] = ()
    ) -> tuple[Bm25Snapshot | None, int | None]:
        """The BM25 snapshot the manifest will need after a write, built before the write
        commits (so it can be published the moment it does), and the version it builds on."""
        base = self._bm25.snapshot
        if base.version is None or base.version != self.version():
            return None, None
        if not remove and not add:  # same texts: only the stamp moves on
            return replace(base, version=base.version + 1), base.version
        nxt = self._bm25.derive(
            base,
            remove=remove,
            add_ids=[c.id for c in add],
            add_texts=[c.searchable_text for c in add],
            version=base.version + 1,
        )
        return nxt, base.version

    def _publish_bm25(
        self, prepared: tuple[Bm25Snapshot | None, int | None], committed: tuple[int, int]
    ) -> None:
        """After a commit from version ``before`` to ``after``: publish the prepared snapshot if
        it was built on exactly ``before``, else rebuild from the manifest."""
        snapshot, base = prepared
        before, after = committed
        if snapshot is not None and base == before and snapshot.version == after:
            self._bm25.publish(snapshot)
        else:
            self._refresh_bm25()

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
        with self._write_lock:
            # 1. vectors first: a crash after this leaves only orphans, removed on open.
            ids = [c.id for item in batch for c in item.chunks]
            self._upsert_vectors(ids, batch)
            old_ids = self._chunk_ids_of([item.record.doc_id for item in batch])
            # 2. the manifest, atomically; 3. BM25 of exactly that manifest, swapped in.
            added = [c for item in batch for c in item.chunks]
            self._commit(lambda db: _replace_documents(db, batch), old_ids, added)
            # 4. vectors no document refers to any more.
            stale = sorted(set(old_ids) - set(ids))
            if stale:
                self._chroma_delete(stale)
            if self._deferred is None:
                self._save_bm25()

    def _upsert_vectors(self, ids: Sequence[str], batch: Sequence[IndexWrite]) -> None:
        if not ids:
            return
        vectors = np.concatenate([item.vectors for item in batch])
        try:
            for start in range(0, len(ids), _CHROMA_BATCH):
                self._chroma.upsert(
                    ids=list(ids[start : start + _CHROMA_BATCH]),
                    embeddings=vectors[start : start + _CHROMA_BATCH].tolist(),
                )
        except Exception as exc:  # chromadb raises its own and OS errors alike
            raise _write_error(self.directory, exc) from exc

    def _commit(
        self,
        change: Callable[[sqlite3.Connection], bool],
        removed: Sequence[str],
        added: Sequence[Chunk] = (),
    ) -> tuple[int, int]:
        """Commit a manifest change and bring BM25 along: at once (derived before the commit,
        published right after it), or inside ``deferred_sparse()`` once, at its end."""
        pending = self._deferred
        prepared = (None, None) if pending is not None else self._next_bm25(removed, added)
        self._writing = True
        try:
            committed = self._transaction(change)
            if committed[0] != committed[1]:
                if pending is not None:
                    pending.record(removed, added)
                else:
                    self._publish_bm25(prepared, committed)
        finally:
            self._writing = False
        return committed

    @contextmanager
    def deferred_sparse(self) -> Iterator[None]:
        """Writes inside bring BM25 up to date once, on exit, not once each: a bulk ingest
        pays one BM25 build instead of one per batch. Searches meanwhile answer from the BM25
        of before the first write (dense search sees the new chunks at once)."""
        with self._write_lock:
            if self._deferred is not None:  # nested: the outermost one catches up
                yield
                return
            base = self._bm25.version
            self._deferred = _PendingSparse(base if base == self.version() else None)
            try:
                yield
            finally:
                pending, self._deferred = self._deferred, None
                if pending.remove or pending.add:
                    self._catch_up(pending)

    def _catch_up(self, pending: _PendingSparse) -> None:
        """Publish BM25 for the writes of a deferred run. It comes with one more (empty)
        version bump: queries answered during the run were cached under versions whose BM25
        lagged behind, and must not be served from the cache once it has caught up."""
        base = self._bm25.snapshot
        version = self.version()
        nxt = None
        if pending.base_version is not None and base.version == pending.base_version:
            nxt = self._bm25.derive(
                base,
                remove=pending.remove,
                add_ids=list(pending.add),
                add_texts=list(pending.add.values()),
                version=version + 1,
            )
        self._writing = True
        try:
            committed = self._transaction(lambda db: True)
            self._publish_bm25((nxt, version), committed)
        except Exception as exc:  # searches notice the stale BM25 and rebuild it themselves
            log.warning("could not bring BM25 up to date after a bulk write: %s", exc)
            return
        finally:
            self._writing = False
        self._save_bm25()

    def _transaction(self, change: Callable[[sqlite3.Connection], bool]) -> tuple[int, int]:
        """Run ``change`` in one manifest transaction; bump the version when it returns True.
        Returns the version (before, after)."""
        assert self._db is not None
        db = self._db
        try:
            db.execute("BEGIN IMMEDIATE")
            before = int(_meta_of(db, "version") or 0)
            after = before
            if change(db):
                db.execute("UPDATE meta SET value = ? WHERE key = 'version'", (str(before + 1),))
                after = before + 1
            db.execute("COMMIT")
        except BaseException as exc:
            if db.in_transaction:
                db.execute("ROLLBACK")
            if isinstance(exc, sqlite3.Error | OSError):
                raise _write_error(self.directory, exc) from exc
            raise
        return before, after

    def delete(self, doc_ids: Sequence[str]) -> int:
        if not doc_ids:
            return 0
        with self._write_lock:
            old_ids = self._chunk_ids_of(doc_ids)
            existed = 0

            def change(db: sqlite3.Connection) -> bool:
                nonlocal existed
                existed = _delete_documents(db, doc_ids)
                return existed > 0

            self._commit(change, old_ids)
            if old_ids:
                self._chroma_delete(old_ids)
            if existed and self._deferred is None:
                self._save_bm25()
            return existed

    def reset_embedder(self, embedding_model: str, dimension: int) -> None:
        with self._write_lock:
            if self._db is None:
                self._connect()
            assert self._client is not None
            self._client.delete_collection(f"ragserve-{self.collection}")
            self._chroma = self._client.get_or_create_collection(
                name=f"ragserve-{self.collection}",
                metadata={"hnsw:space": "cosine"},
                embedding_function=None,
            )
            base = self._bm25.snapshot
            before = self.version()
            self._set_meta(
                {
                    "embedding_model": embedding_model,
                    "dimension": str(dimension),
                    "version": str(before + 1),
                }
            )
            # The texts did not change, so neither does BM25: only its stamp moves on.
            if base.version == before:
                self._bm25.publish(replace(base, version=before + 1))
            else:
                self._refresh_bm25(load=True)
            self._save_bm25()
            self._missing = {row[0] for row in self._sql("SELECT id FROM chunks")}
            self._opened = True

    def add_vectors(self, ids: Sequence[str], vectors: np.ndarray) -> None:
        """Store vectors for chunks already in the manifest (reindex and repair)."""
        with self._write_lock:
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


def _meta_of(conn: sqlite3.Connection, key: str) -> str | None:
    row = conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
    return row[0] if row else None


def _replace_documents(db: sqlite3.Connection, batch: Sequence[IndexWrite]) -> bool:
    for item in batch:
        rec = item.record
        db.execute("DELETE FROM chunks WHERE doc_id = ?", (rec.doc_id,))
        db.executemany(
            f"INSERT OR REPLACE INTO chunks ({_CHUNK_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
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
    return True


def _delete_documents(db: sqlite3.Connection, doc_ids: Sequence[str]) -> int:
    marks = ",".join("?" * len(doc_ids))
    existed = db.execute(
        f"SELECT COUNT(*) FROM documents WHERE doc_id IN ({marks})", list(doc_ids)
    ).fetchone()[0]
    db.execute(f"DELETE FROM chunks WHERE doc_id IN ({marks})", list(doc_ids))
    db.execute(f"DELETE FROM documents WHERE doc_id IN ({marks})", list(doc_ids))
    return int(existed)


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
